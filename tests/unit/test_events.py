"""Event contracts: the exported JSON Schemas match the code; decoding explains every failure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from switchboard.shared.events import (
    DEAD_LETTER_REASONS,
    EVENT_TYPES,
    MAX_ORIGINAL_BYTES,
    MAX_TEXT_CHARS,
    DeadLetter,
    DecodeError,
    RawTweet,
    decode,
    encode,
    json_schemas,
    render_schema,
)
from tests.factories import a_raw_tweet

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_exported_schema_files_match_the_code():
    expected = json_schemas()
    on_disk = {p.name for p in SCHEMAS.glob("*.schema.json")}
    assert on_disk == set(expected), "run `make schemas` and commit schemas/"
    for name, schema in expected.items():
        assert (SCHEMAS / name).read_text() == render_schema(schema), (
            f"{name} is stale: make schemas"
        )


def test_every_event_carries_a_schema_version_and_type():
    for event_type in EVENT_TYPES:
        schema = event_type.model_json_schema()
        assert schema["properties"]["schema_version"]["const"] == 1
        assert "event_type" in schema["properties"]


def test_round_trip_keeps_every_field():
    event = a_raw_tweet(mentions=["SkylarkHelp"], addressed_handles=["@SkylarkHelp"])
    assert decode(RawTweet, encode(event)) == event


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe not utf-8", "invalid_utf8"),
        (b"{not json", "invalid_json"),
        (b'{"schema_version": 2, "event_type": "tweet.raw"}', "unsupported_schema_version"),
        (b'{"schema_version": 1, "event_type": "tweet.raw", "trace": {}}', "missing_field"),
        (b'{"schema_version": 1, "event_type": "tweet.raw", "tweet": null}', "missing_field"),
        (b'{"schema_version": 1, "event_type": "tweet.raw", "tweet": 7}', "invalid_event"),
        (b'{"schema_version": 1, "event_type": "dead_letter"}', "wrong_event_type"),
        (b"null", "invalid_event"),
        (b"", "empty_message"),
        (None, "empty_message"),
    ],
)
def test_decode_names_what_is_wrong(payload, reason):
    with pytest.raises(DecodeError) as caught:
        decode(RawTweet, payload)
    assert caught.value.reason == reason


def test_a_text_longer_than_x_allows_is_too_large():
    event = json.loads(encode(a_raw_tweet()))
    event["tweet"]["text"] = "x" * (MAX_TEXT_CHARS + 1)
    with pytest.raises(DecodeError) as caught:
        decode(RawTweet, json.dumps(event).encode())
    assert caught.value.reason == "too_large" and "tweet.text" in caught.value.detail


def test_invalid_event_lists_the_missing_fields():
    with pytest.raises(DecodeError) as caught:
        decode(RawTweet, b'{"schema_version": 1, "event_type": "tweet.raw"}')
    assert "tweet" in caught.value.detail and "trace" in caught.value.detail


def test_dead_letter_keeps_the_original_bytes():
    original = b"\xff" + b"x" * 3000
    letter = DeadLetter.of("route", DecodeError("invalid_utf8", "bad byte"), original, offset=7)
    assert letter.original() == original
    assert len(letter.original_preview) == 500
    assert json.loads(encode(letter))["reason"] == "invalid_utf8"
    assert (letter.original_size, letter.original_truncated) == (3001, False)


def test_a_dead_letter_keeps_only_the_head_of_a_huge_original():
    original = b"y" * (MAX_ORIGINAL_BYTES + 10)
    letter = DeadLetter.of("route", DecodeError("too_large", "big"), original)
    assert letter.original() == original[:MAX_ORIGINAL_BYTES]
    assert (letter.original_size, letter.original_truncated) == (len(original), True)


def test_the_docs_list_every_dead_letter_reason():
    architecture = (SCHEMAS.parent / "docs" / "architecture.md").read_text()
    assert [r for r in DEAD_LETTER_REASONS if f"`{r}`" not in architecture] == []
