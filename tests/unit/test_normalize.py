"""X API v2 tweets become raw tweet events; repeats are recognised within a bounded memory."""

from __future__ import annotations

import pytest

from switchboard.ingest.normalize import NormalizeError, tweet_from_v2

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


def test_long_posts_use_the_note_tweet_text(config):
    full = "a" * 600
    assert tweet_from_v2(message(note_tweet={"text": full}), config).text == full


@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        ([1, 2], "not_a_tweet"),
        (
            {"data": {"id": "1", "text": "hi", "created_at": "2026-11-20T08:00:00Z"}},
            "missing_field",
        ),
        (
            {
                "data": {
                    "id": "1",
                    "text": "hi",
                    "author_id": "5",
                    "created_at": "2026-11-20T08:00:00Z",
                }
            },
            "missing_author",
        ),
        (message(created_at="yesterday"), "invalid_tweet"),
    ],
)
def test_what_is_not_a_tweet_is_refused_with_a_reason(config, broken, reason):
    with pytest.raises(NormalizeError) as caught:
        tweet_from_v2(broken, config)
    assert caught.value.reason == reason
