"""Pure parts of the X sources: reconnect waits, webhook signatures, v1.1 and DM shapes, secrets."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from switchboard.cli.config import SwitchboardConfig
from switchboard.ingest.config import ReconnectConfig
from switchboard.ingest.normalize import (
    deletion_from_activity,
    deletion_from_compliance,
    dm_from_activity,
    dm_from_v2,
    origin,
    tweet_from_v1,
    tweet_from_v2,
)
from switchboard.ingest.stream import ReconnectPolicy
from switchboard.ingest.webhook import signature
from switchboard.shared.config import SecretRef
from switchboard.shared.settings import ConfigError, read_secret

SKYLARK_HELP_ID = "1500000000000000002"


def test_reconnect_waits_follow_x_documented_policy():
    policy = ReconnectPolicy(ReconnectConfig())
    assert [policy.after_network_error() for _ in range(3)] == [0.0, 0.25, 0.5]
    assert [policy.after_http_error() for _ in range(8)] == [5, 10, 20, 40, 80, 160, 320, 320]
    assert [policy.after_rate_limit() for _ in range(3)] == [60, 120, 240]
    policy.connected()
    assert policy.after_network_error() == 0.0 and policy.after_http_error() == 5


def test_network_backoff_stops_growing_at_its_maximum():
    policy = ReconnectPolicy(ReconnectConfig())
    waits = [policy.after_network_error() for _ in range(100)]
    assert max(waits) == 16.0 and waits[-1] == 16.0


def test_rate_limit_backoff_stops_growing_at_a_window():
    """A spent usage cap answers 429 until its period ends (a day or a month, unsaid): doubling
    without a ceiling would leave the stream down for days after the cap reset."""
    policy = ReconnectPolicy(ReconnectConfig())
    waits = [policy.after_rate_limit() for _ in range(30)]
    assert waits[:5] == [60, 120, 240, 480, 900] and max(waits) == 900 == waits[-1]


def test_a_rate_limit_reset_later_than_the_backoff_wins():
    policy = ReconnectPolicy(ReconnectConfig(rate_limit_initial_s=1))
    assert policy.after_rate_limit(reset_in_s=30) == 30


def test_webhook_signature_is_base64_hmac_sha256_with_prefix():
    # RFC 4231 test case 2: HMAC-SHA256(key "Jefe", "what do ya want for nothing?")
    expected = "sha256=W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM="
    assert signature(b"Jefe", b"what do ya want for nothing?") == expected


def v1_status(**extra: object) -> dict:
    status = {
        "id_str": "555",
        "created_at": "Wed Oct 10 20:19:24 +0000 2018",
        "text": "@SkylarkHelp bag lost again",
        "lang": "en",
        "in_reply_to_status_id_str": None,
        "user": {"id_str": "42", "screen_name": "ana", "followers_count": 7, "verified": False},
        "entities": {"user_mentions": [{"screen_name": "SkylarkHelp", "id_str": SKYLARK_HELP_ID}]},
    }
    status.update(extra)
    return status


def test_a_v1_webhook_tweet_is_normalized(config):
    tweet = tweet_from_v1(v1_status(), config, "webhook")
    assert tweet.id == "555" and tweet.author.username == "ana"
    assert tweet.created_at == datetime(2018, 10, 10, 20, 19, 24, tzinfo=UTC)
    assert tweet.addressed_handles == ["@SkylarkHelp"] and tweet.source == "webhook"


def test_a_v1_extended_tweet_uses_its_full_text(config):
    full = "@SkylarkHelp " + "x" * 300
    tweet = tweet_from_v1(v1_status(extended_tweet={"full_text": full}), config, "webhook")
    assert tweet.text == full


def test_a_v1_reply_joins_the_conversation_it_answers(config):
    tweet = tweet_from_v1(v1_status(in_reply_to_status_id_str="500"), config, "webhook")
    assert tweet.conversation_id == "500"
    assert [(r.type, r.id) for r in tweet.referenced_tweets] == [("replied_to", "500")]


def test_a_v1_edit_names_the_post_it_edits(config):
    """Account Activity posts carry X's edit metadata: an edit is linked to the original (route
    edits its alert rather than paging twice); the original, or a post never edited, is not."""
    history = {"initial_tweet_id": "555", "edit_tweet_ids": ["555", "556"]}
    edit = tweet_from_v1(v1_status(id_str="556", edit_history=history), config, "webhook")
    original = tweet_from_v1(v1_status(edit_history=history), config, "webhook")
    assert (
        edit.edit_of,
        original.edit_of,
        tweet_from_v1(v1_status(), config, "webhook").edit_of,
    ) == (
        "555",
        None,
        None,
    )


def test_the_company_own_tweets_are_brand_tweets_and_retweets_are_skipped(config):
    own = v1_status(user={"id_str": SKYLARK_HELP_ID, "screen_name": "SkylarkHelp"})
    kind, handle = origin(tweet_from_v1(own, config, "webhook"), config)
    assert kind == "brand" and handle is not None and handle.handle == "@SkylarkHelp"
    retweet = v1_status(retweeted_status={"id_str": "1"})
    assert origin(tweet_from_v1(retweet, config, "webhook"), config)[0] == "retweet"
    assert origin(tweet_from_v1(v1_status(), config, "webhook"), config)[0] == "inbound"


def test_stream_rule_tags_address_the_handle_of_a_keyword_match(config):
    message = {
        "data": {
            "id": "9",
            "text": "skylark is down again",
            "author_id": "42",
            "created_at": "2026-11-20T08:00:00Z",
        },
        "includes": {"users": [{"id": "42", "username": "ana"}]},
        "matching_rules": [{"id": "1", "tag": "switchboard:@SkylarkHelp#2"}],
    }
    tweet = tweet_from_v2(message, config, "filtered_stream")
    assert tweet.addressed_handles == ["@SkylarkHelp"]
    assert tweet.matched_rules == ["switchboard:@SkylarkHelp#2"]


def test_a_v2_dm_event_addresses_the_receiving_handle(config):
    handle = config.handles[1]
    event = {
        "id": "777",
        "event_type": "MessageCreate",
        "text": "my card was charged twice",
        "sender_id": "42",
        "dm_conversation_id": f"42-{handle.user_id}",
        "created_at": "2026-11-20T08:00:00.000Z",
    }
    tweet = dm_from_v2(event, {"42": {"id": "42", "username": "ana"}}, handle, config)
    assert tweet.kind == "direct_message" and tweet.addressed_handles == [handle.handle]
    assert tweet.conversation_id == f"42-{handle.user_id}"
    # A sender X left out of includes.users: its id stands in for the user name.
    assert dm_from_v2(event, {}, handle, config).author.username == "42"


def test_an_account_activity_dm_is_normalized(config):
    event = {
        "type": "message_create",
        "id": "888",
        "created_timestamp": "1732521600000",
        "message_create": {
            "target": {"recipient_id": SKYLARK_HELP_ID},
            "sender_id": "42",
            "message_data": {"text": "hello?"},
        },
    }
    tweet = dm_from_activity(event, {"42": {"id": "42", "screen_name": "ana"}}, config)
    assert tweet.addressed_handles == ["@SkylarkHelp"] and tweet.author.username == "ana"
    assert tweet.conversation_id == f"42-{SKYLARK_HELP_ID}"


def test_deletions_from_webhooks_and_the_compliance_stream(config):
    deletion = deletion_from_activity(
        {"status": {"id": "123", "user_id": "42"}, "timestamp_ms": "1732521600000"}
    )
    assert (deletion.tweet_id, deletion.user_id) == ("123", "42")
    message = {
        "data": {
            "delete": {
                "tweet": {"id": "124", "author_id": "42"},
                "event_at": "2026-11-20T08:00:00Z",
            }
        }
    }
    assert deletion_from_compliance(message).tweet_id == "124"
    assert deletion_from_compliance({"data": {"id": "1"}}) is None


def test_a_secret_comes_from_its_variable_or_file(tmp_path, monkeypatch):
    monkeypatch.setenv("X_TEST_TOKEN", "abc")
    assert read_secret(SecretRef(env="X_TEST_TOKEN"), "k").get_secret_value() == "abc"
    (tmp_path / "token").write_text("from-file\n")
    assert read_secret(SecretRef(file=tmp_path / "token"), "k").get_secret_value() == "from-file"


def test_a_missing_secret_names_its_key_but_not_a_value(monkeypatch):
    monkeypatch.delenv("X_ABSENT", raising=False)
    with pytest.raises(ConfigError, match=r"ingest\.x\.apps\.main\.bearer_token\.env: .*X_ABSENT"):
        read_secret(SecretRef(env="X_ABSENT"), "ingest.x.apps.main.bearer_token")


def test_sources_need_the_apps_they_name(config):
    data = config.model_dump(mode="json")
    data["ingest"]["x"] = {"mentions": {"enabled": True}}
    with pytest.raises(ValueError, match=r"handles\[0\]\.app: no app 'default'"):
        SwitchboardConfig.model_validate(data)


def test_direct_messages_need_a_user_token(config):
    data = config.model_dump(mode="json")
    data["handles"][0]["direct_messages"] = True
    with pytest.raises(ValueError, match="user_token"):
        SwitchboardConfig.model_validate(data)


def test_a_quote_of_a_company_tweet_addresses_its_handle(config):
    message = {
        "data": {
            "id": "11",
            "text": "lol look at this",
            "author_id": "42",
            "created_at": "2026-11-20T08:00:00Z",
            "referenced_tweets": [{"type": "quoted", "id": "10"}],
        },
        "includes": {
            "users": [{"id": "42", "username": "ana"}],
            "tweets": [{"id": "10", "author_id": SKYLARK_HELP_ID, "text": "we're sorry"}],
        },
    }
    tweet = tweet_from_v2(message, config, "filtered_stream")
    assert tweet.addressed_handles == ["@SkylarkHelp"] and tweet.quoted_tweet_id == "10"
    # The same quote as Account Activity delivers it (v1.1, the quoted tweet with its user).
    quoted = {"id_str": "10", "user": {"id_str": SKYLARK_HELP_ID, "screen_name": "SkylarkHelp"}}
    status = v1_status(
        text="lol look at this", entities={}, quoted_status_id_str="10", quoted_status=quoted
    )
    tweet = tweet_from_v1(status, config, "webhook")
    assert tweet.addressed_handles == ["@SkylarkHelp"] and tweet.quoted_tweet_id == "10"
    mentioned_too = tweet_from_v1(
        {**status, "entities": v1_status()["entities"]}, config, "webhook"
    )
    assert mentioned_too.addressed_handles == ["@SkylarkHelp"]


def test_webhook_events_past_their_age_are_too_old():
    from datetime import UTC, datetime, timedelta

    from switchboard.ingest.webhook import too_old

    now = datetime(2026, 11, 25, 12, tzinfo=UTC)
    assert not too_old(now - timedelta(hours=71, minutes=59), 72, now)
    assert too_old(now - timedelta(hours=72, seconds=1), 72, now)
    assert not too_old(now + timedelta(minutes=5), 72, now)  # a clock a little ahead is fine
