"""Ingest replays X API v2 JSONL: each tweet once, by conversation; bad lines dead-lettered."""

from __future__ import annotations

import json

from switchboard.ingest.service import IngestService
from switchboard.ingest.settings import IngestSettings
from switchboard.shared import topics
from switchboard.shared.events import DeadLetter, RawTweet, decode
from tests.conftest import CONFIG_FILE, key_of, readable


def v2(
    tweet_id: str, conversation_id: str, text: str, created_at: str = "2026-11-20T08:00:00.000Z"
) -> str:
    return json.dumps(
        {
            "data": {
                "id": tweet_id,
                "text": text,
                "author_id": "77",
                "conversation_id": conversation_id,
                "created_at": created_at,
                "lang": "en",
                "entities": {"mentions": [{"username": "ParceloHelp"}]},
            },
            "includes": {"users": [{"id": "77", "username": "sam", "name": "Sam"}]},
        }
    )


async def test_replay_publishes_each_tweet_once(kafka, read, running, tmp_path):
    replay = tmp_path / "tweets.jsonl"
    lines = [
        v2("i-1", "i-1", "@ParceloHelp where is my order"),
        v2("i-2", "i-1", "@ParceloHelp hello??"),
        v2("i-1", "i-1", "@ParceloHelp where is my order"),  # the same tweet again
        "",
        '{"data": {"id": "i-bad"',
        v2("i-3", "i-3", "@ParceloHelp thanks!"),
        v2("i-4", "i-4", "@ParceloHelp from a clock gone wrong", "2099-01-01T00:00:00.000Z"),
    ]
    replay.write_text("\n".join(lines) + "\n")
    settings = IngestSettings.load(
        config_file=CONFIG_FILE, kafka=kafka, replay_file=replay, replay_rate_per_s=1000
    )

    async with running(IngestService(settings)):
        records = await read(
            [topics.RAW, topics.DEADLETTER],
            lambda rs: (
                sum(r.topic == topics.RAW and key_of(r).startswith("i-") for r in rs) >= 4
                and any(b"i-bad" in (r.value or b"") for r in rs)
            ),
        )

    raw = [
        (r.key, event)
        for r, event in readable(records, RawTweet)
        if r.topic == topics.RAW and key_of(r).startswith("i-")
    ]
    # each once, keyed by conversation: in order within one (a partition), in any across
    assert sorted(event.tweet.id for _, event in raw) == ["i-1", "i-2", "i-3", "i-4"]
    assert [event.tweet.id for key, event in raw if key == b"i-1"] == ["i-1", "i-2"]
    assert {event.tweet.id: key for key, event in raw} == {
        "i-1": b"i-1", "i-2": b"i-1", "i-3": b"i-3", "i-4": b"i-4"
    }  # fmt: skip
    # a time from the future is a bad input's: published as written when it came in
    [future] = [event for _, event in raw if event.tweet.id == "i-4"]
    assert future.tweet.created_at == future.trace.ingested_at
    assert raw[0][1].tweet.addressed_handles == ["@ParceloHelp"]
    assert raw[0][1].trace.ingested_at is not None
    [letter] = [
        decode(DeadLetter, r.value)
        for r in records
        if r.topic == topics.DEADLETTER and b"i-bad" in r.value
    ]
    assert letter.stage == "ingest" and letter.reason == "invalid_json"
    assert letter.original() == b'{"data": {"id": "i-bad"'
