"""Ingest against a stand-in X API v2 on loopback and the embedded broker.

Covers rule synchronization, the stream's reconnects (disconnect, stall, HTTP errors, 429),
mentions polling with durable checkpoints across a restart, DMs, webhooks (CRC, signatures,
body limits), duplicates across sources, brand replies, deletions and archive backfill.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import zipfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from switchboard.ingest import metrics as ingest_metrics
from switchboard.ingest.rules import desired_rules
from switchboard.ingest.service import IngestService
from switchboard.ingest.webhook import SIGNATURE_HEADER
from switchboard.shared import topics
from switchboard.shared.broker import EmbeddedBroker
from switchboard.shared.events import (
    MAX_ORIGINAL_BYTES,
    BrandTweet,
    ComplianceEvent,
    DeadLetter,
    RawTweet,
    utc_now,
)
from switchboard.shared.kafka import ensure_topics
from switchboard.shared.settings import ConfigError
from tests.conftest import X_APP_TOKEN, X_USER_TOKEN, published, read_topics, wait_for
from tests.factories import Poison
from tests.integration.conftest import (
    CONSUMER_SECRET,
    HELP_ID,
    activity_tweet,
    ids_on,
    new_id,
    signed,
)
from tests.standins.x_api import TOO_MANY_CONNECTIONS, USAGE_CAPPED, iso_now

X_DOCS = Path(__file__).parents[1] / "standins" / "x_docs"


async def test_rules_are_synchronized_without_touching_foreign_ones(
    x_api, ingest_settings, running
):
    x_api.rules["1"] = {"id": "1", "value": "@Old", "tag": "switchboard:@AcmeOld"}
    x_api.rules["2"] = {"id": "2", "value": "cats", "tag": "social-team"}
    settings = ingest_settings(stream=True)
    service = IngestService(settings)

    async with running(service):
        await wait_for(lambda: x_api.stream_connections >= 1)

    assert service.stream.last_sync.deleted == 1  # X's count: the stale owned rule
    values = {(r["value"], r["tag"]) for r in x_api.rules.values()}
    wanted = {(r.value, r.tag) for r in desired_rules(settings.config)}
    assert values == wanted | {("cats", "social-team")}
    assert all(r["auth"] == f"Bearer {X_APP_TOKEN}" for r in x_api.requests)


async def test_rules_on_later_pages_are_seen_and_not_added_again(x_api, ingest_settings, running):
    """X returns an app's rules a page at a time (at most 1,000; an Enterprise app holds
    many more, other teams' among them): ingest reads every page, so its own rules on a later
    page are kept as they are, not added again as if missing."""
    settings = ingest_settings(stream=True)
    for n in range(5):
        x_api.rules[str(n)] = {"id": str(n), "value": f"cats {n}", "tag": "social-team"}
    for n, rule in enumerate(desired_rules(settings.config), start=100):
        x_api.rules[str(n)] = {"id": str(n), "value": rule.value, "tag": rule.tag}
    before = dict(x_api.rules)
    x_api.rules_page_limit = 2

    async with running(IngestService(settings)):
        await wait_for(lambda: x_api.stream_connections >= 1)

    assert x_api.rules == before
    changes = [r for r in x_api.requests if r["method"] == "POST"]
    assert changes == []
    pages = [r for r in x_api.requests if r["path"] == "/2/tweets/search/stream/rules"]
    assert len(pages) >= 4 and pages[1]["query"]["pagination_token"]


async def test_stream_survives_disconnects_stalls_and_errors_without_loss(
    x_api, customers, ingest_settings, running, read
):
    ana, _ = customers
    settings = ingest_settings(stream=True)
    sent = [new_id() for _ in range(6)]
    before = {
        r: ingest_metrics.STREAM_RECONNECTS.labels(r)._value.get()
        for r in ("stall", "rate_limited", "usage_capped", "too_many_connections")
    }

    async with running(IngestService(settings)):
        await wait_for(lambda: x_api.stream_connections >= 1)
        x_api.disconnect_stream_after(1)
        x_api.push_stream(x_api.make_tweet(sent[0], "@AcmeHelp my bill is wrong", ana["id"]))
        x_api.push_stream(x_api.make_tweet(sent[1], "@AcmeHelp still wrong", ana["id"]))
        await wait_for(lambda: x_api.stream_connections >= 2)
        x_api.fail_next("/2/tweets/search/stream", 503)
        x_api.fail_next("/2/tweets/search/stream", 429, retry_after_s=0)
        x_api.fail_next("/2/tweets/search/stream", USAGE_CAPPED)  # a 429 of another kind
        x_api.fail_next("/2/tweets/search/stream", TOO_MANY_CONNECTIONS)  # and a third
        x_api.stall_stream(3.0)
        x_api.push_stream(x_api.make_tweet(sent[2], "acme outage in Leeds?", ana["id"]),
                          matching_tags=["switchboard:@AcmeHelp"])  # fmt: skip
        x_api.push_stream(x_api.make_tweet(sent[3], "$ACME down 4% on the outage", ana["id"]),
                          matching_tags=["switchboard:@AcmeIR"])  # fmt: skip
        x_api.push_stream(x_api.make_tweet(sent[4], "@AcmeHelp hello", ana["id"]))
        x_api.push_stream(x_api.make_tweet(sent[5], "@AcmeHelp anyone?", ana["id"]))
        records = await read(
            [topics.RAW], lambda rs: len(ids_on(rs, topics.RAW, RawTweet, sent)) >= 6, 60
        )

    raw = {e.tweet.id: e.tweet for e in published(records, topics.RAW, RawTweet)}
    assert sorted(ids_on(records, topics.RAW, RawTweet, sent)) == sorted(sent)  # each once
    assert raw[sent[2]].addressed_handles == ["@AcmeHelp"]  # a keyword match, by its rule tag
    assert raw[sent[3]].addressed_handles == ["@AcmeIR"]
    assert raw[sent[0]].author.followers_count == 812
    assert ingest_metrics.STREAM_RECONNECTS.labels("stall")._value.get() > before["stall"]
    assert (
        ingest_metrics.STREAM_RECONNECTS.labels("rate_limited")._value.get()
        > before["rate_limited"]
    )
    assert (
        ingest_metrics.STREAM_RECONNECTS.labels("usage_capped")._value.get()
        > before["usage_capped"]
    )
    assert (
        ingest_metrics.STREAM_RECONNECTS.labels("too_many_connections")._value.get()
        > before["too_many_connections"]
    )


async def test_a_regenerated_app_token_is_read_again_when_the_stream_refuses_the_old_one(
    x_api, customers, ingest_settings, running, read, tmp_path
):
    """Regenerating the app's bearer token revokes the old one: the stream drops and X answers
    the old token 401. Ingest reads the token's file again and reconnects with the new one at
    once, without a restart or a missed tweet (before, only the REST calls read it again, and
    a stream alone kept retrying the old token until restarted)."""
    ana, _ = customers
    token_file = tmp_path / "app-token"
    token_file.write_text(X_APP_TOKEN)

    def app_token_in_file(config: dict) -> None:
        config["ingest"]["x"]["apps"]["main"]["bearer_token"] = {"file": str(token_file)}

    sent = [new_id(), new_id()]
    renewed = ingest_metrics.STREAM_RECONNECTS.labels("token_renewed")._value.get()
    async with running(IngestService(ingest_settings(stream=True, edit=app_token_in_file))):
        await wait_for(lambda: x_api.stream_connections >= 1)
        x_api.bearer_tokens.discard(X_APP_TOKEN)  # regenerated in the developer console
        x_api.bearer_tokens.add("regenerated-app-token")
        token_file.write_text("regenerated-app-token\n")
        x_api.disconnect_stream_after(1)
        x_api.push_stream(x_api.make_tweet(sent[0], "@AcmeHelp my bill is wrong", ana["id"]))
        x_api.push_stream(x_api.make_tweet(sent[1], "@AcmeHelp still wrong", ana["id"]))
        records = await read(
            [topics.RAW], lambda rs: len(ids_on(rs, topics.RAW, RawTweet, sent)) >= 2
        )

    assert sorted(ids_on(records, topics.RAW, RawTweet, sent)) == sorted(sent)
    streams = [r["auth"] for r in x_api.requests if r["path"] == "/2/tweets/search/stream"]
    assert streams[0] == f"Bearer {X_APP_TOKEN}" and streams[-1] == "Bearer regenerated-app-token"
    assert ingest_metrics.STREAM_RECONNECTS.labels("token_renewed")._value.get() == renewed + 1


async def test_mentions_resume_after_a_restart_with_no_loss_and_no_repeat(
    x_api, customers, ingest_settings, running, read
):
    ana, bo = customers
    # A handle no other test polled: on a cluster shared between tests, checkpoints outlive a
    # test, and this test starts from none.
    handle_id = x_api.add_user(new_id(), "AcmeHelp")["id"]

    def settings():  # noqa: ANN202
        return ingest_settings(mentions=True, edit=lambda c: c["handles"][0].update(
            user_id=handle_id))  # fmt: skip

    first = [new_id() for _ in range(12)]  # three pages of five
    last_year = (datetime.now(UTC) - timedelta(days=300)).isoformat().replace("+00:00", "Z")
    for n, tweet_id in enumerate(first):
        written = {"created_at": last_year} if n == 8 else {}  # on the latest page: history
        x_api.add_mention(handle_id, x_api.make_tweet(tweet_id, "@AcmeHelp hi", ana["id"],
                                                      **written))  # fmt: skip
    skipped = ingest_metrics.TWEETS_SKIPPED.labels("mentions", "before_first_poll")._value.get()

    async with running(IngestService(settings())):
        await read([topics.RAW], lambda rs: len(ids_on(rs, topics.RAW, RawTweet, first)) >= 4)

    # The first poll of a handle takes the latest page only; the rest is backfill's job.
    second = [new_id() for _ in range(7)]
    for tweet_id in second:
        x_api.add_mention(handle_id, x_api.make_tweet(tweet_id, "@AcmeHelp again", bo["id"]))
    async with running(IngestService(settings())):
        await read([topics.RAW], lambda rs: len(ids_on(rs, topics.RAW, RawTweet, second)) >= 7)
        records = await read([topics.RAW], lambda rs: False, timeout_s=1.5)  # let polls repeat
        # Every answer carries the app's window (450 mention reads per 15 minutes, both
        # handles' polls and both runs): between polls, what ingest reports left is X's count.
        await wait_for(lambda: mention_reads_left() == 450 - len(mention_reads(x_api)))

    seen = ids_on(records, topics.RAW, RawTweet, first + second)
    # Each once, nothing from before the restart (partitions interleave, so compare sorted),
    # and of the first page only what was written lately: a handle just added does not route
    # last year's mentions as new work
    assert sorted(seen) == sorted([*first[7:8], *first[9:], *second])
    assert ingest_metrics.TWEETS_SKIPPED.labels("mentions", "before_first_poll")._value.get() \
        == skipped + 1  # fmt: skip
    polls = [r for r in x_api.requests if r["path"] == f"/2/users/{handle_id}/mentions"]
    assert any(r["query"].get("since_id") == first[-1] for r in polls)


async def test_mentions_past_xs_reach_are_said_to_be_lost(
    x_api, customers, ingest_settings, running, read
):
    """X keeps a handle's latest 800 mentions: a poll that finds that many since its
    checkpoint (a long outage of ingest) says the older ones cannot be read, and counts it."""
    ana, _ = customers
    handle_id = x_api.add_user(new_id(), "AcmeHelp")["id"]
    settings = ingest_settings(mentions=True, edit=lambda c: c["handles"][0].update(
        user_id=handle_id))  # fmt: skip
    first = new_id()
    x_api.add_mention(handle_id, x_api.make_tweet(first, "@AcmeHelp hi", ana["id"]))
    beyond = ingest_metrics.MENTIONS_BEYOND_REACH.labels("@AcmeHelp")._value.get()
    async with running(IngestService(settings)):
        await read([topics.RAW], lambda rs: ids_on(rs, topics.RAW, RawTweet, [first]))
    during_outage = [new_id() for _ in range(805)]
    for tweet_id in during_outage:
        x_api.add_mention(handle_id, x_api.make_tweet(tweet_id, "@AcmeHelp down?", ana["id"]))
    async with running(IngestService(settings)):
        records = await read(
            [topics.RAW],
            lambda rs: len(ids_on(rs, topics.RAW, RawTweet, during_outage)) >= 800,
            120,
        )
        await wait_for(lambda: ingest_metrics.MENTIONS_BEYOND_REACH.labels(
            "@AcmeHelp")._value.get() == beyond + 1)  # fmt: skip

    assert sorted(ids_on(records, topics.RAW, RawTweet, during_outage)) == during_outage[5:]


def mention_reads(x_api) -> list[dict]:
    return [r for r in x_api.requests if r["path"].endswith("/mentions")]


def mention_reads_left() -> float:
    return ingest_metrics.RATE_LIMIT_REMAINING.labels("app:main", "mentions")._value.get()


async def test_a_rate_limited_poll_waits_for_the_reset_and_carries_on(
    x_api, customers, ingest_settings, running, read
):
    ana, _ = customers
    tweet_id = new_id()
    x_api.add_mention(HELP_ID, x_api.make_tweet(tweet_id, "@AcmeHelp ping", ana["id"]))
    x_api.fail_next(f"/2/users/{HELP_ID}/mentions", 429, retry_after_s=1)
    waits = ingest_metrics.RATE_LIMIT_WAITS.labels("mentions")._value.get()

    async with running(IngestService(ingest_settings(mentions=True))):
        await read([topics.RAW], lambda rs: ids_on(rs, topics.RAW, RawTweet, [tweet_id]))

    assert ingest_metrics.RATE_LIMIT_WAITS.labels("mentions")._value.get() > waits


async def test_direct_messages_in_and_out(x_api, customers, ingest_settings, running, read):
    ana, _ = customers
    inbound, reply = new_id(), new_id()
    conversation = f"42-{HELP_ID}"
    lately = (datetime.now(UTC) - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    for event_id, sender, text in ((inbound, "42", "charged twice"), (reply, HELP_ID, "on it")):
        x_api.add_dm_event({"id": event_id, "event_type": "MessageCreate", "text": text,
                            "sender_id": sender, "dm_conversation_id": conversation,
                            "participant_ids": ["42", HELP_ID],
                            "created_at": lately})  # fmt: skip

    async with running(IngestService(ingest_settings(dms=True))):
        records = await read(
            [topics.RAW, topics.BRAND],
            lambda rs: (
                ids_on(rs, topics.RAW, RawTweet, [inbound])
                and ids_on(rs, topics.BRAND, BrandTweet, [reply])
            ),
        )

    [dm] = [e.tweet for e in published(records, topics.RAW, RawTweet) if e.tweet.id == inbound]
    assert dm.kind == "direct_message" and dm.addressed_handles == ["@AcmeHelp"]
    assert dm.conversation_id == conversation and dm.author.username == "ana_flies"
    dm_calls = [r for r in x_api.requests if r["path"] == "/2/dm_events"]
    assert dm_calls and all(r["auth"] == f"Bearer {X_USER_TOKEN}" for r in dm_calls)


async def test_a_user_token_rotated_in_its_file_is_read_again_after_x_refuses_it(
    x_api, customers, ingest_settings, running, read, tmp_path
):
    """A user's OAuth 2.0 access token lasts two hours; whatever refreshes it writes the new one
    to the secret's file. When X refuses the old one (401), ingest reads the file again and
    goes on with the new token, without a restart or a missed DM."""
    token_file = tmp_path / "help-user-token"
    token_file.write_text(X_USER_TOKEN)

    def user_token_in_file(config: dict) -> None:
        config["handles"][0]["user_token"] = {"file": str(token_file)}

    before, after = new_id(), new_id()
    conversation = f"42-{HELP_ID}"

    def dm(event_id: str) -> dict:
        return {"id": event_id, "event_type": "MessageCreate", "text": "charged twice",
                "sender_id": "42", "dm_conversation_id": conversation,
                "participant_ids": ["42", HELP_ID],
                "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z")}  # fmt: skip

    x_api.add_dm_event(dm(before))
    service = IngestService(ingest_settings(dms=True, edit=user_token_in_file))
    async with running(service):
        await read([topics.RAW], lambda rs: ids_on(rs, topics.RAW, RawTweet, [before]))
        x_api.bearer_tokens.discard(X_USER_TOKEN)  # expired
        x_api.bearer_tokens.add("refreshed-user-token")
        x_api.user_tokens.add("refreshed-user-token")  # a user's, as the one it replaces
        token_file.write_text("refreshed-user-token\n")
        x_api.add_dm_event(dm(after))
        await read([topics.RAW], lambda rs: ids_on(rs, topics.RAW, RawTweet, [after]))
        health = service.health.of("direct_message", "@AcmeHelp")

    assert health.state == "ok"
    calls = [r["auth"] for r in x_api.requests if r["path"] == "/2/dm_events"]
    assert calls[0] == f"Bearer {X_USER_TOKEN}" and calls[-1] == "Bearer refreshed-user-token"


async def test_webhook_checks_crc_signatures_and_size(ingest_settings):
    service = IngestService(ingest_settings(webhook=True))
    transport = httpx.ASGITransport(app=service.http_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
        crc = await client.get("/webhooks/x", params={"crc_token": "challenge-123"})
        body = json.dumps({"for_user_id": HELP_ID}).encode()
        unsigned = await client.post("/webhooks/x", content=body)
        forged = await client.post(
            "/webhooks/x", content=body, headers={SIGNATURE_HEADER: "sha256=AAAA"}
        )
        huge = b'{"pad": "' + b"x" * 5000 + b'"}'
        too_large = await client.post("/webhooks/x", content=huge, headers=signed(huge))
        # Not started: what it published before is not remembered yet, so X is asked to resend
        early = await client.post("/webhooks/x", content=body, headers=signed(body))

    assert crc.status_code == 200
    # X's formula, computed apart from ingest's code: "sha256=" and the base64 of
    # HMAC-SHA256(consumer secret, crc_token) (`openssl dgst -sha256 -hmac ... -binary | base64`)
    assert CONSUMER_SECRET == "test-consumer-secret"
    assert crc.json() == {"response_token": "sha256=tkNEg0seEcYQ8M3405Unns/xCXZPr0AfN2Yx77Yg+c8="}
    assert (unsigned.status_code, forged.status_code, too_large.status_code) == (401, 401, 413)
    assert early.status_code == 503


async def test_a_streamed_tweet_only_another_teams_rule_matched_is_not_ours(
    x_api, customers, ingest_settings, running, read
):
    """The app's one stream carries every rule on the app: a tweet matched only by a rule
    another team added (another tag) is skipped, not routed as a message to the company."""
    ana, _ = customers
    theirs, ours = new_id(), new_id()
    skipped = ingest_metrics.TWEETS_SKIPPED.labels("filtered_stream", "foreign_rule")
    before = skipped._value.get()

    async with running(IngestService(ingest_settings(stream=True))):
        await wait_for(lambda: x_api.stream_connections >= 1)
        x_api.push_stream(x_api.make_tweet(theirs, "look at my cat", ana["id"]),
                          matching_tags=["growth-team:cats"])  # fmt: skip
        x_api.push_stream(x_api.make_tweet(ours, "acme outage and my cat", ana["id"]),
                          matching_tags=["growth-team:cats", "switchboard:@AcmeHelp"])  # fmt: skip
        records = await read([topics.RAW], lambda rs: ids_on(rs, topics.RAW, RawTweet, [ours]))
        await wait_for(lambda: skipped._value.get() > before)

    assert ids_on(records, topics.RAW, RawTweet, [theirs, ours]) == [ours]
    assert skipped._value.get() == before + 1


async def test_xs_operational_disconnect_notice_is_counted_not_dead_lettered(
    x_api, customers, ingest_settings, running, read
):
    """X's documented body for an operational disconnect, sent on the stream, is counted by
    its disconnect type (switchboard_x_api_errors_total) and logged; it is not a tweet gone
    bad, and the stream's next tweet is published."""
    ana, _ = customers
    documented = json.loads((X_DOCS / "account_activity.json").read_text())
    notice = documented["handling_disconnections/Operational disconnect"]["json"]
    counted = ingest_metrics.X_API_ERRORS.labels("filtered_stream", "UpstreamOperationalDisconnect")
    before = counted._value.get()
    after, started = new_id(), utc_now()

    async with running(IngestService(ingest_settings(stream=True))):
        await wait_for(lambda: x_api.stream_connections >= 1)
        x_api.push_stream_line(json.dumps(notice).encode() + b"\r\n")
        x_api.push_stream(x_api.make_tweet(after, "@AcmeHelp hello?", ana["id"]),
                          matching_tags=["switchboard:@AcmeHelp"])  # fmt: skip
        records = await read(
            [topics.RAW, topics.DEADLETTER], lambda rs: ids_on(rs, topics.RAW, RawTweet, [after])
        )

    assert counted._value.get() == before + 1
    letters = [x for x in published(records, topics.DEADLETTER, DeadLetter)
               if x.source == "filtered_stream" and x.failed_at >= started]  # fmt: skip
    assert letters == []


async def test_a_quote_of_a_company_post_addresses_its_handle_a_missing_reference_is_no_error(
    x_api, customers, ingest_settings, running, read
):
    """A post matched by @AcmeIR's rule quotes @AcmeHelp's post: X shows the quoted post in
    includes.tweets, and its author makes the quote addressed to @AcmeHelp too. A reply to a
    post X cannot show comes with X's not-found error beside it and is published all the same."""
    ana, _ = customers
    ours, quote, reply = new_id(), new_id(), new_id()
    x_api.posts[ours] = x_api.make_tweet(ours, "Our spring schedule is out", HELP_ID)
    quoting = x_api.make_tweet(quote, "is this real? $ACME", ana["id"],
                               referenced_tweets=[{"type": "quoted", "id": ours}])  # fmt: skip
    gone = [{"type": "replied_to", "id": new_id()}]  # a post X cannot show
    replying = x_api.make_tweet(reply, "@AcmeIR still waiting", ana["id"], referenced_tweets=gone)

    async with running(IngestService(ingest_settings(stream=True))):
        await wait_for(lambda: x_api.stream_connections >= 1)
        x_api.push_stream(quoting, matching_tags=["switchboard:@AcmeIR#$ACME"])
        x_api.push_stream(replying, matching_tags=["switchboard:@AcmeIR"])
        records = await read(
            [topics.RAW], lambda rs: len(ids_on(rs, topics.RAW, RawTweet, [quote, reply])) == 2
        )

    by_id = {t.tweet.id: t.tweet for t in published(records, topics.RAW, RawTweet)}
    assert "@AcmeHelp" in by_id[quote].addressed_handles
    assert "@AcmeIR" in by_id[quote].addressed_handles
    assert by_id[reply].addressed_handles == ["@AcmeIR"]


async def test_a_streamed_post_x_withholds_says_where_and_whether_its_text_is_xs_notice(
    x_api, customers, ingest_settings, running, read
):
    """Ingest asks X for `withheld`: a post withheld in Germany keeps its text and says where;
    X's recorded post of an account withheld in India, read from there, is marked as X's
    notice (route sends it to triage rather than route the notice's words)."""
    ana, _ = customers
    readable, notice = new_id(), new_id()
    recorded = json.loads((X_DOCS / "withheld.json").read_text())["withheld_account_notice"]
    withheld_in_de = {**x_api.make_tweet(readable, "acme outage in Berlin", ana["id"]),
                      "withheld": {"copyright": False, "country_codes": ["DE"]}}  # fmt: skip
    tag = ["switchboard:@AcmeHelp"]

    async with running(IngestService(ingest_settings(stream=True))):
        await wait_for(lambda: x_api.stream_connections >= 1)
        x_api.push_stream(withheld_in_de, matching_tags=tag)
        x_api.push_stream({**recorded, "id": notice, "conversation_id": notice,
                           "created_at": iso_now()}, matching_tags=tag)  # fmt: skip
        records = await read(
            [topics.RAW], lambda rs: len(ids_on(rs, topics.RAW, RawTweet, [readable, notice])) == 2
        )

    by_id = {t.tweet.id: t.tweet for t in published(records, topics.RAW, RawTweet)}
    kept, replaced = by_id[readable], by_id[notice]
    assert kept.withheld is not None and kept.withheld.country_codes == ["DE"]
    assert not kept.withheld.notice and kept.text == "acme outage in Berlin"
    assert replaced.withheld is not None and replaced.withheld.notice
    assert (replaced.withheld.scope, replaced.addressed_handles) == ("user", ["@AcmeHelp"])


@contextlib.asynccontextmanager
async def a_broker_of_its_own(tmp_path: Path, **kafka: object) -> AsyncIterator[tuple]:
    """An embedded broker this test alone freezes, its topics made; yields it and its settings
    (``kafka`` changes them)."""
    broker = EmbeddedBroker(tmp_path / "broker")
    await broker.start()
    try:
        settings = broker.settings().model_copy(update=kafka)
        await ensure_topics(settings, topics.ALL, 1, 1)
        yield broker, settings
    finally:
        await asyncio.to_thread(broker.stop)


def a_delivery_of_one_tweet() -> tuple[str, bytes]:
    """An Account Activity delivery of one new customer tweet: its id and the body."""
    tweet = new_id()
    user = {"id_str": "42", "screen_name": "ana_flies"}
    event = activity_tweet(tweet, "@AcmeHelp my card was charged twice", user)
    return tweet, json.dumps({"for_user_id": HELP_ID, "tweet_create_events": [event]}).encode()


async def sent_and_resent_while_frozen(broker, post, meanwhile):  # noqa: ANN001, ANN201
    """A delivery posted while the broker is frozen, and X's resend of it a second later;
    ``meanwhile(first)`` runs before the broker thaws. Returns the two posts' tasks and what
    ``meanwhile`` returned."""
    broker.freeze(True)
    try:
        first = asyncio.create_task(post())
        await asyncio.sleep(1.0)
        resent = asyncio.create_task(post())
        seen = await meanwhile(first, resent)
    finally:
        broker.freeze(False)
    return first, resent, seen


async def test_a_webhook_resent_while_its_first_copy_awaits_the_broker_waits_for_it(
    customers, ingest_settings, running, tmp_path
):
    """X resends a delivery it had no answer to within seconds. The resent copy of a tweet
    whose first copy is still on its way to the broker is answered only once that copy is
    stored: answered at once, X would not send it again if the first then failed."""
    async with a_broker_of_its_own(tmp_path) as (broker, kafka):
        settings = ingest_settings(webhook=True).model_copy(update={"kafka": kafka})
        _, body = a_delivery_of_one_tweet()
        service = IngestService(settings)
        async with running(service):
            transport = httpx.ASGITransport(app=service.http_app())
            async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
                post = lambda: client.post("/webhooks/x", content=body, headers=signed(body))  # noqa: E731

                async def meanwhile(_first: asyncio.Task, resent: asyncio.Task) -> bool:
                    await asyncio.sleep(1.0)
                    return not resent.done()

                first, resent, waiting = await sent_and_resent_while_frozen(broker, post, meanwhile)
                answers = [(await first).json(), (await resent).json()]

    assert waiting  # the resent copy waited for the first copy's acknowledgement
    assert answers == [{"published": 1}, {"published": 0}]


async def test_a_webhook_resent_after_its_first_copy_failed_publishes_the_tweet_once(
    customers, ingest_settings, running, tmp_path
):
    """The broker does not acknowledge a delivery's tweet: X is answered 503 (and resends), a
    copy resent meanwhile, waiting for the first, publishes the tweet itself once the first
    failed, and the tweet is counted as ingested once, when it is stored."""
    async with a_broker_of_its_own(tmp_path, delivery_timeout_ms=3000) as (broker, kafka):
        settings = ingest_settings(webhook=True).model_copy(update={"kafka": kafka})
        tweet, body = a_delivery_of_one_tweet()
        service = IngestService(settings)
        ingested = ingest_metrics.TWEETS_INGESTED.labels("webhook", "@AcmeHelp")
        async with running(service):
            before = ingested._value.get()
            transport = httpx.ASGITransport(app=service.http_app())
            async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
                post = lambda: client.post("/webhooks/x", content=body, headers=signed(body))  # noqa: E731

                async def meanwhile(first: asyncio.Task, _resent: asyncio.Task) -> float:
                    await wait_for(first.done, timeout_s=60)
                    return ingested._value.get() - before

                first, resent, counted_while_refused = await sent_and_resent_while_frozen(
                    broker, post, meanwhile
                )
                answers = [(await first).status_code, (await resent).json()]
            counted = ingested._value.get() - before
        records = await read_topics(kafka, [topics.RAW], lambda rs: False, timeout_s=5)

    assert answers == [503, {"published": 1}]
    assert [e.tweet.id for e in published(records, topics.RAW, RawTweet)] == [tweet]
    assert (counted_while_refused, counted) == (0, 1)


async def test_a_thread_delivered_by_webhooks_stays_one_conversation(
    customers, ingest_settings, running, read
):
    """Account Activity's v1.1 tweets carry no conversation id: a reply joins the conversation
    of the tweet it answers, so a customer's follow-up to the company's answer stays in the
    thread's conversation (its root, as X's v2 sources name it), not one of its own."""
    root, answer, follow_up = new_id(), new_id(), new_id()
    ana = {"id_str": "42", "screen_name": "ana_flies"}
    company = {"id_str": HELP_ID, "screen_name": "AcmeHelp"}
    thread = [
        activity_tweet(root, "@AcmeHelp my card was charged twice", ana),
        activity_tweet(answer, "@ana_flies sorry! DM us", company,
                       in_reply_to_status_id_str=root, in_reply_to_user_id_str="42"),
        activity_tweet(follow_up, "@AcmeHelp done, still waiting", ana,
                       in_reply_to_status_id_str=answer, in_reply_to_user_id_str=HELP_ID),
    ]  # fmt: skip

    async def deliver(service: IngestService, events: list[dict]) -> None:
        transport = httpx.ASGITransport(app=service.http_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            for event in events:  # one delivery each, as X sends them
                raw = json.dumps({"for_user_id": HELP_ID, "tweet_create_events": [event]}).encode()
                answer = await client.post("/webhooks/x", content=raw, headers=signed(raw))
                assert answer.json() == {"published": 1}

    first = IngestService(ingest_settings(webhook=True))
    async with running(first):
        await deliver(first, thread[:2])
    # restarted: what it remembers of conversations is read back from the topics
    second = IngestService(ingest_settings(webhook=True))
    async with running(second):
        await deliver(second, thread[2:])
        records = await read([topics.RAW, topics.BRAND], lambda rs: len(
            ids_on(rs, topics.RAW, RawTweet, [root, follow_up])
            + ids_on(rs, topics.BRAND, BrandTweet, [answer])) == 3)  # fmt: skip

    tweets = [e.tweet for e in published(records, topics.RAW, RawTweet)]
    tweets += [e.tweet for e in published(records, topics.BRAND, BrandTweet)]
    conversations = {t.id: t.conversation_id for t in tweets if t.id in (root, answer, follow_up)}
    assert conversations == {root: root, answer: root, follow_up: root}
    keys = {r.key for r in records if r.topic in (topics.RAW, topics.BRAND)
            and any(i.encode() in r.value for i in (root, answer, follow_up))}  # fmt: skip
    assert keys == {root.encode()}  # one partition: one owner of the conversation


async def test_a_replayed_webhook_delivery_takes_effect_once(
    customers, ingest_settings, running, read
):
    """X signs the body only, so a captured body verifies forever: replays are deduplicated,
    and events older than max_event_age_hours refused (webhook.py)."""
    fresh, old, deleted = new_id(), new_id(), new_id()
    user = {"id_str": "42", "screen_name": "ana_flies"}
    payload = {
        "for_user_id": HELP_ID,
        "tweet_create_events": [
            activity_tweet(fresh, "@AcmeHelp my card was charged twice", user),
            activity_tweet(
                old, "@AcmeHelp an old one", user, written=datetime.now(UTC) - timedelta(hours=73)
            ),
        ],
        "tweet_delete_events": [
            {"status": {"id": deleted, "user_id": "42"}, "timestamp_ms": "1700000000000"}
        ],
    }
    body = json.dumps(payload).encode()
    service = IngestService(ingest_settings(webhook=True))

    async with running(service):
        transport = httpx.ASGITransport(app=service.http_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            answers = [
                (await client.post("/webhooks/x", content=body, headers=signed(body))).json()
                for _ in range(3)
            ]
        records = await read([topics.RAW, topics.COMPLIANCE], lambda rs: False, timeout_s=1.5)

    assert answers == [{"published": 2}, {"published": 0}, {"published": 0}]
    assert ids_on(records, topics.RAW, RawTweet, [fresh, old]) == [fresh]
    deletions = [e for e in published(records, topics.COMPLIANCE, ComplianceEvent)
                 if e.tweet_id == deleted]  # fmt: skip
    assert len(deletions) == 1  # an old deletion is still honoured, once
    restarted = IngestService(ingest_settings(webhook=True))  # remembers across a restart
    async with running(restarted):
        transport = httpx.ASGITransport(app=restarted.http_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            again = await client.post("/webhooks/x", content=body, headers=signed(body))
    assert again.json() == {"published": 0}


async def test_one_tweet_from_three_sources_is_published_once(
    x_api, customers, ingest_settings, running, read
):
    ana, _ = customers
    shared = new_id()
    tweet = x_api.make_tweet(shared, "@AcmeHelp router dead since Monday", ana["id"])
    x_api.add_mention(HELP_ID, tweet)
    service = IngestService(ingest_settings(stream=True, mentions=True, webhook=True))
    user = {"id_str": "42", "screen_name": "ana_flies", "followers_count": 812}
    body = json.dumps(
        {
            "for_user_id": HELP_ID,
            "tweet_create_events": [activity_tweet(shared, tweet["text"], user)],
        }
    ).encode()
    sources = ("filtered_stream", "webhook", "mentions")
    dropped = lambda: sum(ingest_metrics.DUPLICATES_DROPPED.labels(s)._value.get() for s in sources)  # noqa: E731
    before = dropped()

    async with running(service):
        await wait_for(lambda: x_api.stream_connections >= 1)
        x_api.push_stream(tweet)
        transport = httpx.ASGITransport(app=service.http_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            response = await client.post("/webhooks/x", content=body, headers=signed(body))
        polls = f"/2/users/{HELP_ID}/mentions"
        await wait_for(lambda: sum(r["path"] == polls for r in x_api.requests) >= 2)
        await wait_for(lambda: dropped() - before >= 2)  # each source delivered it
        records = await read([topics.RAW], lambda rs: False, timeout_s=1.5)

    assert response.status_code == 200 and response.json()["published"] in (0, 1)
    assert ids_on(records, topics.RAW, RawTweet, [shared]) == [shared]
    assert dropped() - before == 2  # the two copies after the first


async def test_brand_replies_and_deletions_land_on_their_own_topics(
    x_api, customers, ingest_settings, running, read
):
    reply, deleted = new_id(), new_id()
    service = IngestService(ingest_settings(webhook=True))
    help_user = {"id_str": HELP_ID, "screen_name": "AcmeHelp"}
    payload = {
        "for_user_id": HELP_ID,
        "tweet_create_events": [
            activity_tweet(
                reply,
                "@ana_flies sorry! DM us",
                help_user,
                in_reply_to_status_id_str="17",
                in_reply_to_user_id_str="42",
            ),
        ],  # fmt: skip
        "tweet_delete_events": [
            {"status": {"id": deleted, "user_id": "42"}, "timestamp_ms": "1764057600000"}
        ],
    }
    body = json.dumps(payload).encode()
    async with running(service):
        transport = httpx.ASGITransport(app=service.http_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            assert (
                await client.post("/webhooks/x", content=body, headers=signed(body))
            ).json() == {"published": 2}
            # the reply deleted in turn: ingest saw it, so its deletion names its conversation
            gone = {
                "for_user_id": HELP_ID,
                "tweet_delete_events": [
                    {"status": {"id": reply, "user_id": HELP_ID}, "timestamp_ms": "1764057660000"}
                ],
            }
            body = json.dumps(gone).encode()
            assert (
                await client.post("/webhooks/x", content=body, headers=signed(body))
            ).json() == {"published": 1}  # fmt: skip
        records = await read(
            [topics.BRAND, topics.COMPLIANCE],
            lambda rs: (
                ids_on(rs, topics.BRAND, BrandTweet, [reply])
                and any(r.topic == topics.COMPLIANCE and deleted.encode() in r.value for r in rs)
                and any(r.topic == topics.COMPLIANCE and r.key == reply.encode() for r in rs)
            ),
        )

    [brand] = [e for e in published(records, topics.BRAND, BrandTweet) if e.tweet.id == reply]
    assert brand.handle == "@AcmeHelp"
    assert [(r.type, r.id) for r in brand.tweet.referenced_tweets] == [("replied_to", "17")]
    [deletion] = [
        e for e in published(records, topics.COMPLIANCE, ComplianceEvent) if e.tweet_id == deleted
    ]
    assert deletion.user_id == "42" and deletion.source == "webhook"
    assert deletion.conversation_id is None  # never seen here
    [own] = [
        e for e in published(records, topics.COMPLIANCE, ComplianceEvent) if e.tweet_id == reply
    ]
    assert own.conversation_id == brand.tweet.conversation_id


def write_archive(path: Path, tweets: list[dict], conversations: list[dict]) -> Path:
    def ytd(name: str, items: list) -> str:
        return f"window.YTD.{name}.part0 = {json.dumps(items, indent=2)}"

    account = [{"account": {"accountId": HELP_ID, "username": "AcmeHelp",
                            "accountDisplayName": "Acme Support"}}]  # fmt: skip
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data/account.js", ytd("account", account))
        archive.writestr("data/tweets.js", ytd("tweets", [{"tweet": t} for t in tweets]))
        archive.writestr(
            "data/direct-messages.js",
            ytd("direct_messages", [{"dmConversation": c} for c in conversations]),
        )
    return path


def dm_create(event_id: str, sender: str, recipient: str, text: str, clock: str) -> dict:
    return {
        "messageCreate": {
            "id": event_id,
            "senderId": sender,
            "recipientId": recipient,
            "text": text,
            "createdAt": f"2026-11-24T{clock}:00.000Z",
        }
    }


async def test_an_archive_export_backfills_brand_replies_and_received_dms(
    ingest_settings, running, read, tmp_path
):
    reply, inbound_dm, own_dm = new_id(), new_id(), new_id()
    archive = write_archive(
        tmp_path / "twitter-archive.zip",
        tweets=[{"id_str": reply, "full_text": "@ana_flies refund sent",
                 "created_at": "Tue Nov 24 10:00:00 +0000 2026",
                 "in_reply_to_status_id_str": "99", "in_reply_to_user_id_str": "42",
                 "entities": {"user_mentions": [{"screen_name": "ana_flies", "id_str": "42"}]}}],
        conversations=[{"conversationId": f"42-{HELP_ID}", "messages": [
            dm_create(inbound_dm, "42", HELP_ID, "where is my refund", "09:00"),
            dm_create(own_dm, HELP_ID, "42", "checking now", "09:05"),
        ]}],
    )  # fmt: skip
    service = IngestService(ingest_settings(archive=archive, replay_rate_per_s=1000))

    async with running(service):
        records = await read(
            [topics.RAW, topics.BRAND],
            lambda rs: (
                ids_on(rs, topics.RAW, RawTweet, [inbound_dm])
                and len(ids_on(rs, topics.BRAND, BrandTweet, [reply, own_dm])) == 2
            ),
        )

    [dm] = [e.tweet for e in published(records, topics.RAW, RawTweet) if e.tweet.id == inbound_dm]
    assert dm.addressed_handles == ["@AcmeHelp"] and dm.source == "archive"
    brand = {e.tweet.id: e for e in published(records, topics.BRAND, BrandTweet)}
    assert brand[reply].tweet.referenced_tweets[0].id == "99"


async def test_an_archive_with_unreadable_parts_backfills_the_rest_and_dead_letters_them(
    ingest_settings, running, read, tmp_path
):
    """A data file cut short and an item that is not an object are dead-lettered with the
    reason and the file named; the readable tweets are backfilled, and /readyz says the
    backfill is done (one that fails leaves the live sources running: tested below). A path
    that is no archive fails at start."""
    good, started = new_id(), datetime.now(UTC)
    path = write_archive(tmp_path / "archive.zip", tweets=[], conversations=[])
    account = zipfile.ZipFile(path).read("data/account.js")
    tweet = {
        "id_str": good,
        "full_text": "@ana_flies sorted",
        "created_at": "Tue Nov 24 10:00:00 +0000 2026",
    }
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data/account.js", account)
        archive.writestr(
            "data/tweets.js", "window.YTD.tweets.part0 = " + json.dumps([{"tweet": tweet}, 7])
        )
        archive.writestr("data/direct-messages.js", 'window.YTD.direct_messages.part0 = [{"dmConv')
    not_an_archive = tmp_path / "notes.txt"
    not_an_archive.write_text("hello")
    service = IngestService(ingest_settings(archive=path, replay_rate_per_s=1000, webhook=True))

    async with running(service):
        await wait_for(service.finished_backfill.is_set)
        records = await read([topics.BRAND, topics.DEADLETTER],
                             lambda rs: ids_on(rs, topics.BRAND, BrandTweet, [good]))  # fmt: skip
        backfill = service.readiness_detail()["sources"]["archive:archive.zip"]

    letters = [x for x in published(records, topics.DEADLETTER, DeadLetter)
               if x.source == "archive" and x.failed_at >= started]  # fmt: skip
    named = sorted((x.reason, x.error) for x in letters)
    assert [reason for reason, _ in named] == ["invalid_event", "invalid_json"]
    assert "data/tweets.js[1]: not an object" in named[0][1]
    assert "data/direct-messages.js: not an archive data file" in named[1][1]
    assert ids_on(records, topics.BRAND, BrandTweet, [good]) == [good]
    assert backfill["state"] == "done"
    with pytest.raises(
        ConfigError, match="SWITCHBOARD_ARCHIVE: .*notes.txt: neither a folder nor a zip"
    ):
        IngestService(ingest_settings(archive=not_an_archive))


async def test_compliance_messages_x_documents_are_followed_or_skipped_never_dead_lettered(
    ingest_settings, running, read, tmp_path
):
    """X's compliance kinds (TweetComplianceData): a post dropped from public view is to be
    removed downstream as a deleted one is; withheld, undropped and edited posts ask nothing
    of copies already routed and are counted and skipped."""
    dropped, started = new_id(), datetime.now(UTC)
    at, author = "2026-12-01T08:00:00Z", "42"

    def post(**extra: object) -> dict:
        return {"tweet": {"id": new_id(), "author_id": author}, "event_at": at} | extra

    lines = [
        {"data": {"drop": {"tweet": {"id": dropped, "author_id": author}, "event_at": at}}},
        {"data": {"withheld": post(withheld_in_countries=["DE"])}},
        {"data": {"undrop": post()}},
        {"data": {"tweet_edit": post(initial_tweet_id="1", edit_tweet_ids=["1", "2"])}},
    ]
    replay = tmp_path / "compliance.jsonl"
    replay.write_text("".join(json.dumps(line) + "\n" for line in lines))
    skipped = {kind: ingest_metrics.TWEETS_SKIPPED.labels("replay", f"compliance_{kind}")
               for kind in ("withheld", "undrop", "tweet_edit")}  # fmt: skip
    before = {kind: counter._value.get() for kind, counter in skipped.items()}
    service = IngestService(ingest_settings(replay_file=replay, replay_rate_per_s=1000))

    async with running(service):
        await wait_for(service.finished_backfill.is_set)
        removed = lambda rs: [e for e in published(rs, topics.COMPLIANCE, ComplianceEvent)  # noqa: E731
                              if e.tweet_id == dropped]  # fmt: skip
        records = await read([topics.COMPLIANCE, topics.DEADLETTER], removed)

    [removal] = removed(records)

    assert (removal.user_id, removal.source) == (author, "replay")
    letters = [x for x in published(records, topics.DEADLETTER, DeadLetter)
               if x.stage == "ingest" and x.failed_at >= started]  # fmt: skip
    assert letters == []
    assert {kind: c._value.get() - before[kind] for kind, c in skipped.items()} == {
        "withheld": 1,
        "undrop": 1,
        "tweet_edit": 1,
    }


async def test_a_backfill_that_fails_is_reported_and_the_live_sources_run_on(
    ingest_settings, running, read, tmp_path
):
    """A replay file ingest cannot read fails its backfill, on /readyz, and only it: the
    webhook keeps publishing (a backfill used to take ingest down, into a restart loop)."""
    unreadable = tmp_path / "replay.jsonl"
    unreadable.mkdir()  # a folder where the file should be
    live = new_id()
    user = {"id_str": "42", "screen_name": "ana_flies"}
    raw = json.dumps({"for_user_id": HELP_ID, "tweet_create_events": [
        activity_tweet(live, "@AcmeHelp still charged twice", user)]}).encode()  # fmt: skip
    service = IngestService(ingest_settings(webhook=True, replay_file=unreadable))

    async with running(service):
        await wait_for(service.finished_backfill.is_set)
        backfill = service.readiness_detail()["sources"]["replay:replay.jsonl"]
        transport = httpx.ASGITransport(app=service.http_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            answer = await client.post("/webhooks/x", content=raw, headers=signed(raw))
        records = await read([topics.RAW], lambda rs: ids_on(rs, topics.RAW, RawTweet, [live]))

    assert backfill["state"] == "failing" and "IsADirectoryError" in backfill["last_error"]
    assert answer.json() == {"published": 1}
    assert ids_on(records, topics.RAW, RawTweet, [live]) == [live]


async def test_a_missing_token_fails_at_start_naming_the_key(ingest_settings, monkeypatch):
    settings = ingest_settings(stream=True)
    monkeypatch.delenv("X_APP_TOKEN")
    with pytest.raises(ConfigError, match=r"ingest\.x\.apps\.main\.bearer_token\.env"):
        IngestService(settings)


async def test_a_restarted_ingest_does_not_republish_what_it_already_published(
    ingest_settings, running, read, tmp_path
):
    ids = [new_id() for _ in range(3)]
    replay = tmp_path / "again.jsonl"
    replay.write_text(
        "".join(
            json.dumps({
                "data": {"id": i, "text": "@AcmeHelp hi", "author_id": "42",
                         "created_at": "2026-11-25T08:00:00Z"},
                "includes": {"users": [{"id": "42", "username": "ana_flies"}]},
            }) + "\n"
            for i in ids
        )
    )  # fmt: skip
    dropped = ingest_metrics.DUPLICATES_DROPPED.labels("replay")._value.get()

    async with running(IngestService(ingest_settings(replay_file=replay, replay_rate_per_s=500))):
        await read([topics.RAW], lambda rs: len(ids_on(rs, topics.RAW, RawTweet, ids)) == 3)
    second = IngestService(ingest_settings(replay_file=replay, replay_rate_per_s=500))
    async with running(second):  # a new process: its memory comes from the raw topic
        await wait_for(second.finished_backfill.is_set)
        records = await read([topics.RAW], lambda rs: False, timeout_s=1.0)

    assert sorted(ids_on(records, topics.RAW, RawTweet, ids)) == sorted(ids)
    assert ingest_metrics.DUPLICATES_DROPPED.labels("replay")._value.get() == dropped + 3


# --- poison -------------------------------------------------------------------------------------

MEGABYTE = "x" * 1_000_000


def line_poison(good: dict) -> list[Poison]:
    """Bad lines of a replay file or the filtered stream, made from ``good``, a v2 message."""
    data = good["data"]
    without_text = {k: v for k, v in data.items() if k != "text"}
    return [
        Poison("invalid_json", b'{"data": {"id": "' + data["id"].encode(), "invalid_json"),
        Poison("schema_v99", _dumps(schema_version=99, event_type="tweet.raw", tweet=data),
               "not_a_tweet"),
        Poison("missing_fields", _dumps(**{**good, "data": without_text}), "missing_field"),
        Poison("null_fields", _dumps(**{**good, "data": {**data, "author_id": None}}),
               "missing_field"),
        Poison("nested_nulls", _dumps(**{**good, "includes": {"users": [None]}}), "not_a_tweet"),
        Poison("json_null", b"null", "not_a_tweet"),
        Poison("megabyte_text", _dumps(**{**good, "data": {**data, "text": MEGABYTE}}),
               "too_large"),
        Poison("invalid_utf8", b'{"data": {"text": "caf\xe9 \xff"}}', "invalid_utf8"),
    ]  # fmt: skip


def webhook_poison(good: dict) -> list[Poison]:
    """Bad signed Account Activity bodies, made from ``good``, a v1.1 tweet object."""
    without_text = {k: v for k, v in good.items() if k != "text"}

    def body(*statuses: object) -> bytes:
        return _dumps(for_user_id=HELP_ID, tweet_create_events=list(statuses))

    return [
        Poison("invalid_json", b'{"for_user_id": "' + HELP_ID.encode(), "invalid_json"),
        Poison("schema_v99", _dumps(schema_version=99, event_type="tweet.raw", tweet=good),
               "invalid_event"),
        Poison("missing_fields", body(without_text), "missing_field"),
        Poison("null_fields", body({**good, "user": None}), "not_a_tweet"),
        Poison("null_event", body(None), "invalid_tweet"),
        Poison("null_dm", _dumps(for_user_id=HELP_ID, direct_message_events=[None]), "not_a_dm"),
        # a DM between two accounts neither of which is a handle: nobody's to route
        Poison("others_dm", _dumps(for_user_id=HELP_ID, direct_message_events=[{
            "type": "message_create", "id": "7", "message_create": {
                "sender_id": "42", "target": {"recipient_id": "43"},
                "message_data": {"text": "see you at 8"}}}]), "unaddressed"),
        Poison("json_null", b"null", "invalid_event"),
        Poison("megabyte_text", body({**good, "text": MEGABYTE}), "too_large"),
        Poison("invalid_utf8", b'{"for_user_id": "\xff"}', "invalid_utf8"),
        Poison("empty_body", b"", "empty_message"),
    ]  # fmt: skip


def _dumps(**fields: object) -> bytes:
    return json.dumps(fields).encode()


@pytest.mark.parametrize("source", ["replay", "filtered_stream", "webhook"])
async def test_ingest_dead_letters_poison_and_goes_on(
    source, x_api, customers, ingest_settings, running, read, tmp_path
):
    """Each bad line or body is dead-lettered with a reason, where it came from and its exact
    bytes (the head, when too large to copy); a good tweet after them is published."""
    ana, _ = customers
    started, good_id = utc_now(), new_id()
    if source == "webhook":
        user = {"id_str": "42", "screen_name": "ana_flies"}
        cases = webhook_poison(activity_tweet(new_id(), "@AcmeHelp hi", user))
        status = activity_tweet(good_id, "@AcmeHelp my router died", user)
        good = _dumps(for_user_id=HELP_ID, tweet_create_events=[status])
    else:
        message = {"data": x_api.make_tweet(new_id(), "@AcmeHelp hi", ana["id"]),
                   "includes": {"users": [ana]}}  # fmt: skip
        cases = line_poison(message)
        tweet = x_api.make_tweet(good_id, "@AcmeHelp my router died", ana["id"])
        good = _dumps(**{**message, "data": tweet})
    inputs = [*(case.value or b"" for case in cases), good]
    replay = tmp_path / "poison.jsonl"
    replay.write_bytes(b"\n".join(inputs))
    service = IngestService(
        ingest_settings(replay_file=replay, replay_rate_per_s=1000)
        if source == "replay"
        else ingest_settings(stream=True)
        if source == "filtered_stream"
        else ingest_settings(webhook=True, max_body_bytes=2_000_000)
    )

    def ours(records: list) -> list[DeadLetter]:
        letters = published(records, topics.DEADLETTER, DeadLetter)
        return [x for x in letters if x.stage == "ingest" and x.failed_at >= started]

    def done(records: list) -> bool:
        good_published = ids_on(records, topics.RAW, RawTweet, [good_id])
        return bool(good_published) and len(ours(records)) >= len(cases)

    async with running(service):
        if source == "filtered_stream":
            await wait_for(lambda: x_api.stream_connections >= 1)
            for line in inputs:
                x_api.push_stream_line(line)
        elif source == "webhook":
            transport = httpx.ASGITransport(app=service.http_app())
            async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
                for body in inputs:
                    response = await client.post("/webhooks/x", content=body, headers=signed(body))
                    assert response.status_code == 200, body[:60]
        records = await read([topics.RAW, topics.DEADLETTER], done, timeout_s=60)

    assert ids_on(records, topics.RAW, RawTweet, [good_id]) == [good_id]
    letters = ours(records)
    for line, case in enumerate(cases, start=1):
        original = case.value or b""
        [letter] = [x for x in letters if x.original() == original[:MAX_ORIGINAL_BYTES]]
        assert letter.reason == case.reason, case.case
        assert letter.source == (f"replay poison.jsonl:{line}" if source == "replay" else source)
        assert letter.original_size == len(original), case.case
        assert letter.original_truncated == (len(original) > MAX_ORIGINAL_BYTES), case.case
    if source == "filtered_stream":  # read through, not dropped and reconnected
        assert x_api.stream_connections == 1


async def test_a_polled_mention_ingest_cannot_read_is_dead_lettered_and_polling_goes_on(
    x_api, customers, ingest_settings, running, read
):
    """A mention of a page X sent without its author (a field ingest needs) is dead-lettered
    with the reason and its source, and the good mention beside it is published."""
    ana, _ = customers
    handle_id = x_api.add_user(new_id(), "AcmeHelp")["id"]
    settings = ingest_settings(mentions=True, edit=lambda c: c["handles"][0].update(
        user_id=handle_id))  # fmt: skip
    broken, good = new_id(), new_id()
    authorless = x_api.make_tweet(broken, "@AcmeHelp refund?", ana["id"])
    del authorless["author_id"]
    x_api.add_mention(handle_id, authorless)
    x_api.add_mention(handle_id, x_api.make_tweet(good, "@AcmeHelp refund please", ana["id"]))
    started = utc_now()

    def ours(records: list) -> list[DeadLetter]:
        letters = published(records, topics.DEADLETTER, DeadLetter)
        return [x for x in letters if x.stage == "ingest" and x.failed_at >= started
                and broken.encode() in x.original()]  # fmt: skip

    async with running(IngestService(settings)):
        records = await read(
            [topics.RAW, topics.DEADLETTER],
            lambda rs: ids_on(rs, topics.RAW, RawTweet, [good]) and ours(rs),
        )

    [letter] = ours(records)
    assert (letter.reason, letter.source) == ("missing_field", "mentions")
    assert ids_on(records, topics.RAW, RawTweet, [broken, good]) == [good]


async def test_each_source_started_reports_from_the_start_not_from_its_first_tweet(
    customers, ingest_settings, running
):
    """After a restart, a source that never delivers (its rules gone) must still raise
    SourceSilent: the last-event time of each source started begins at the start. DM polling
    enabled with no handle reading DMs starts nothing, and reports nothing."""
    from prometheus_client import REGISTRY

    def last(source: str) -> float:
        found = REGISTRY.get_sample_value(
            "switchboard_ingest_last_event_timestamp_seconds", {"source": source}
        )
        return found or 0.0

    before = time.time()
    settings = ingest_settings(mentions=True, x={"direct_messages": {"enabled": True}})
    async with running(IngestService(settings)):
        await wait_for(lambda: last("mentions") >= before)
    assert last("direct_message") < before and last("filtered_stream") < before
