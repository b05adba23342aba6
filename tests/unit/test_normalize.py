"""X API v2 tweets become raw tweet events; repeats are recognised within a bounded memory."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from switchboard.ingest import xapi
from switchboard.ingest.normalize import (
    CLOCK_SKEW,
    NormalizeError,
    deletion_from_activity,
    dm_from_activity,
    tweet_from_v1,
    tweet_from_v2,
    written_by_now,
)
from switchboard.ingest.replay import messages_of
from switchboard.shared.events import MAX_TEXT_CHARS
from tests.factories import a_tweet

AUTHOR = {
    "id": "42",
    "username": "ana_flies",
    "name": "Ana",
    "verified": True,
    "public_metrics": {"followers_count": 5120},
}


def message(**data: object) -> dict:
    tweet = {
        "id": "100",
        "text": "@SkylarkDeals my refund??",
        "author_id": "42",
        "created_at": "2026-11-20T08:00:00.000Z",
        "lang": "en",
        "entities": {"mentions": [{"start": 0, "end": 13, "username": "SkylarkDeals"}]},
    }
    tweet.update(data)
    return {"data": tweet, "includes": {"users": [AUTHOR]}}


def test_a_mention_addresses_the_configured_handle(config):
    tweet = tweet_from_v2(message(), config)
    assert tweet.addressed_handles == ["@SkylarkDeals"]
    assert tweet.conversation_id == "100"  # a new thread is its own conversation
    assert tweet.author.followers_count == 5120 and tweet.author.verified
    assert tweet.url == "https://x.com/ana_flies/status/100"


def test_a_reply_addresses_the_handle_it_replies_to(config):
    tweet = tweet_from_v2(
        message(
            id="101",
            text="still waiting",
            entities={},
            conversation_id="7",
            in_reply_to_user_id="1500000000000000002",
            referenced_tweets=[{"type": "replied_to", "id": "99"}],
        ),
        config,
    )
    assert tweet.addressed_handles == ["@SkylarkHelp"]
    assert tweet.conversation_id == "7"
    assert tweet.referenced_tweets[0].id == "99"


def test_unknown_mentions_are_kept_but_do_not_address(config):
    tweet = tweet_from_v2(
        message(entities={"mentions": [{"username": "someone_else"}, {"username": "PARCELOHELP"}]}),
        config,
    )
    assert tweet.mentions == ["someone_else", "PARCELOHELP"]
    assert tweet.addressed_handles == ["@ParceloHelp"]


def test_an_edit_names_the_post_it_edits(config):
    """X gives an edited post an id of its own; its edit history starts with the first."""
    assert tweet_from_v2(message(edit_history_tweet_ids=["100"]), config).edit_of is None
    edit = tweet_from_v2(message(id="102", edit_history_tweet_ids=["100", "102"]), config)
    assert edit.edit_of == "100"


def test_long_posts_use_the_note_tweet_text(config):
    full = "a" * 600
    assert tweet_from_v2(message(note_tweet={"text": full}), config).text == full


def test_a_long_posts_mentions_past_its_first_280_characters_are_read(config):
    """X gives a long post's mentions past the cut only in note_tweet.entities: a handle named
    there is addressed, and each mention is listed once."""
    late = {"start": 590, "end": 602, "username": "SkylarkHelp"}
    first = {"start": 0, "end": 13, "username": "SkylarkDeals"}
    note = {
        "text": "@SkylarkDeals " + "a" * 576 + "@SkylarkHelp",
        "entities": {"mentions": [first, late]},
    }
    tweet = tweet_from_v2(message(note_tweet=note), config)
    assert tweet.mentions == ["SkylarkDeals", "SkylarkHelp"]
    assert tweet.addressed_handles == ["@SkylarkDeals", "@SkylarkHelp"]


def test_a_tweet_whose_author_x_left_out_of_includes_is_still_routed(config):
    # X's shape for a withheld author (recorded: xapi-reference/twarc-csv/withheld.jsonl): the
    # tweet carries author_id, includes.users has no such user, and `errors` says nothing.
    withheld = {"copyright": False, "country_codes": ["IN"], "scope": "user"}
    tweet = tweet_from_v2({**message(withheld=withheld), "includes": {"users": []}}, config)
    assert tweet.addressed_handles == ["@SkylarkDeals"]
    assert (tweet.author.id, tweet.author.username) == ("42", "42")
    assert tweet.url == "https://x.com/i/web/status/100"


X_DOCS = Path(__file__).parents[1] / "standins" / "x_docs"


def test_a_post_x_withholds_carries_where_and_x_notice_in_place_of_a_text_is_marked(config):
    """Recorded by X: a post withheld in India read from elsewhere keeps its text; a post of an
    account withheld in India, read from there, comes with X's notice as its text and no
    mentions. Both say where X withholds them; only the second is marked a notice."""
    recorded = json.loads((X_DOCS / "withheld.json").read_text())
    kept = tweet_from_v2({"data": recorded["withheld_post"]}, config)
    assert kept.withheld is not None and not kept.withheld.notice
    assert (kept.withheld.country_codes, kept.withheld.scope) == (["IN"], None)
    assert kept.text.startswith("When the pandemic first hit")
    notice = tweet_from_v2({"data": recorded["withheld_account_notice"]}, config)
    assert notice.withheld is not None and notice.withheld.notice
    assert (notice.withheld.country_codes, notice.withheld.scope) == (["IN"], "user")
    assert tweet_from_v2(message(), config).withheld is None


def test_a_page_of_tweets_on_a_replay_line_is_replayed_tweet_by_tweet_with_its_author(config):
    """twarc2 writes X's search and lookup answers a page per line (``data`` a list, one
    ``includes`` for the page; recorded: xapi-reference/twarc-csv/withheld.jsonl): each tweet
    of it is replayed with its own author, not dead-lettered as no tweet."""
    recorded = json.loads((X_DOCS / "withheld.json").read_text())
    post, notice = recorded["withheld_post"], recorded["withheld_account_notice"]
    writer = {**AUTHOR, "id": post["author_id"], "username": "writer"}
    page = {"data": [post, notice], "includes": {"users": [AUTHOR, writer]},
            "meta": {"result_count": 2}, "__twarc": {"version": "2.14.0"}}  # fmt: skip
    messages = [json.loads(m) for m in messages_of(json.dumps(page).encode() + b"\r\n")]
    assert [m["data"] for m in messages] == [post, notice]
    assert messages[0]["includes"]["users"] == [writer]  # its author alone, not the page's
    tweets = [tweet_from_v2(m, config) for m in messages]
    assert tweets[0].author.username == "writer" and tweets[1].withheld.notice
    one = json.dumps(message()).encode()
    assert messages_of(one + b"\n") == [one] and messages_of(b"  \n") == []
    assert messages_of(b"{not json") == [b"{not json"]  # dead-lettered by the reader, as it is


def test_a_v1_post_x_withholds_says_where(config):
    status = {"id_str": "7", "text": "@SkylarkDeals hello",
              "created_at": "Fri Nov 20 08:00:00 +0000 2026",
              "user": {"id_str": "42", "screen_name": "ana_flies"},
              "withheld_in_countries": ["DE", "FR"], "withheld_scope": "status"}  # fmt: skip
    withheld = tweet_from_v1(status, config, "webhook").withheld
    assert withheld is not None and not withheld.notice
    assert (withheld.country_codes, withheld.scope) == (["DE", "FR"], "tweet")


def test_ingest_asks_x_only_for_fields_and_expansions_x_documents():
    """A name X does not know makes X refuse every stream connection and every poll."""
    documented = json.loads((X_DOCS / "fields.json").read_text())
    assert set(xapi.TWEET_FIELDS) <= set(documented["tweet.fields"])
    assert set(xapi.USER_FIELDS) <= set(documented["user.fields"])
    assert set(xapi.EXPANSIONS) <= set(documented["expansions"])
    assert "withheld" in xapi.TWEET_FIELDS


@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        ([1, 2], "not_a_tweet"),
        (
            {"data": {"id": "1", "text": "hi", "created_at": "2026-11-20T08:00:00Z"}},
            "missing_field",
        ),
        (message(created_at="yesterday"), "invalid_tweet"),
    ],
)
def test_what_is_not_a_tweet_is_refused_with_a_reason(config, broken, reason):
    with pytest.raises(NormalizeError) as caught:
        tweet_from_v2(broken, config)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda c: tweet_from_v2({**message(), "includes": {"users": [None]}}, c), "not_a_tweet"),
        (lambda c: tweet_from_v2({**message(), "matching_rules": "x"}, c), "not_a_tweet"),
        (lambda c: tweet_from_v2(message(entities={"mentions": [7]}), c), "invalid_tweet"),
        (lambda c: tweet_from_v2(message(referenced_tweets=[None]), c), "not_a_tweet"),
        (lambda c: tweet_from_v2(message(text="x" * (MAX_TEXT_CHARS + 1)), c), "too_large"),
        (lambda c: tweet_from_v1(None, c, "webhook"), "invalid_tweet"),  # type: ignore[arg-type]
        (lambda c: dm_from_activity(None, {}, c), "not_a_dm"),  # type: ignore[arg-type]
        (
            lambda c: deletion_from_activity({"status": {"id": 1}, "timestamp_ms": "x"}),
            "not_a_deletion",
        ),
    ],  # fmt: skip
)
def test_x_objects_of_any_shape_are_refused_with_a_reason(config, build, reason):
    """Untrusted JSON: a null or a wrong type anywhere is a NormalizeError, never a crash."""
    with pytest.raises(NormalizeError) as caught:
        build(config)
    assert caught.value.reason == reason


def test_a_tweet_from_the_future_is_published_as_written_now():
    """A time further ahead of ingest's clock than clocks differ is a bad input's: route would
    keep such a tweet awaited whatever the company replied. Within the skew, X's time stands."""
    now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    ahead = a_tweet(created_at=now + CLOCK_SKEW + timedelta(seconds=1))
    assert written_by_now(ahead, now).created_at == now
    close = a_tweet(created_at=now + timedelta(seconds=30))
    assert written_by_now(close, now) is close
    past = a_tweet(created_at=now - timedelta(days=3))
    assert written_by_now(past, now) is past
