"""Ingest against X as X behaves when things go wrong: server errors and dropped connections,
an incident at start, per-app rate limits, rules X refuses, a flapping stream, Account Activity
events with nothing to route, and tweets missed while the stream was down.

The stand-in X API (tests/standins/x_api.py) answers as X documents: problem bodies, the
``x-rate-limit-*`` headers counted per token, DuplicateRule and invalid-rule errors, 429 past the
connection budget, ``backfill_minutes``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from switchboard.ingest import metrics as ingest_metrics
from switchboard.ingest.rules import desired_rules
from switchboard.ingest.service import IngestService
from switchboard.ingest.stream import ALIVE_CHECKPOINT, snowflake_at
from switchboard.shared import topics
from switchboard.shared.events import DeadLetter, RawTweet, utc_now
from tests.conftest import SWITCHBOARD, X_APP_TOKEN, X_USER_TOKEN, published, wait_for
from tests.integration.conftest import HELP_ID, ids_on, new_id, signed
from tests.standins.x_api import RULES_PATH, STREAM_PATH, USAGE_CAPPED

X_DOCS = Path(__file__).resolve().parents[1] / "standins" / "x_docs"
MENTIONS = f"/2/users/{HELP_ID}/mentions"


def value(metric, *labels: str) -> float:
    return (metric.labels(*labels) if labels else metric)._value.get()


async def test_server_errors_and_dropped_connections_never_stop_a_poller(
    x_api, customers, ingest_settings, running, read
):
    """A 503, two connections dropped without an answer and a body cut short are retried; a
    401 (not retried: waiting will not fix it) makes the poller fail and report it, and it
    carries on when X answers again."""
    ana, _ = customers
    first, second = new_id(), new_id()
    x_api.add_mention(HELP_ID, x_api.make_tweet(first, "@AcmeHelp my card is blocked", ana["id"]))
    x_api.fail_next(MENTIONS, 503)
    x_api.drop_next(MENTIONS, count=2)
    x_api.garble_next(MENTIONS)
    errors = {kind: value(ingest_metrics.X_API_ERRORS, "mentions", kind)
              for kind in ("http_503", "malformed", "network")}  # fmt: skip
    service = IngestService(ingest_settings(mentions=True))

    async with running(service):
        await read([topics.RAW], lambda rs: ids_on(rs, topics.RAW, RawTweet, [first]))
        health = service.health.of("mentions", "@AcmeHelp")
        await wait_for(lambda: health.state == "ok")
        x_api.fail_next(MENTIONS, 401, count=2)  # refused: not retried, the poll fails
        await wait_for(lambda: health.state == "failing")
        failing = service.readiness_detail()
        x_api.add_mention(HELP_ID, x_api.make_tweet(second, "@AcmeHelp still blocked", ana["id"]))
        records = await read([topics.RAW], lambda rs: ids_on(rs, topics.RAW, RawTweet, [second]))
        await wait_for(lambda: health.state == "ok")
        recovered = service.readiness_detail()

    assert ids_on(records, topics.RAW, RawTweet, [second]) == [second]
    # each failure counted by its kind (aiohttp retries one of the two drops by itself)
    for kind, before in errors.items():
        assert value(ingest_metrics.X_API_ERRORS, "mentions", kind) > before, kind
    assert failing["degraded"] is True
    report = failing["sources"]["mentions:@AcmeHelp"]
    assert report["state"] == "failing" and "HTTP 401" in report["last_error"]
    assert recovered["sources"]["mentions:@AcmeHelp"]["state"] == "ok"
    assert recovered["degraded"] is False


async def test_an_error_page_in_front_of_x_is_read_by_its_status(
    x_api, customers, ingest_settings, running, read
):
    """An edge or a proxy in front of X answers with an HTML page, not X's JSON: a 429 page
    still spends the rate window and is waited out (not retried at once as a network
    error), and a 403 page is a refusal, not a failure to retry."""
    ana, _ = customers
    sent = new_id()
    x_api.page_next(MENTIONS, 429, retry_after_s=1)
    limited = value(ingest_metrics.RATE_LIMITED, "mentions")
    network = value(ingest_metrics.X_API_ERRORS, "mentions", "network")
    forbidden = value(ingest_metrics.X_API_ERRORS, "mentions", "http_403")
    service = IngestService(ingest_settings(mentions=True))

    async with running(service):
        x_api.add_mention(HELP_ID, x_api.make_tweet(sent, "@AcmeHelp card blocked", ana["id"]))
        await read([topics.RAW], lambda rs: ids_on(rs, topics.RAW, RawTweet, [sent]))
        health = service.health.of("mentions", "@AcmeHelp")
        x_api.page_next(MENTIONS, 403)
        await wait_for(lambda: health.state == "failing")
        refused = service.readiness_detail()["sources"]["mentions:@AcmeHelp"]["last_error"]

    assert value(ingest_metrics.RATE_LIMITED, "mentions") == limited + 1
    assert value(ingest_metrics.X_API_ERRORS, "mentions", "http_403") == forbidden + 1
    assert value(ingest_metrics.X_API_ERRORS, "mentions", "network") == network
    assert "HTTP 403" in refused


async def test_a_user_x_cannot_serve_and_a_spent_usage_cap_fail_the_poll_and_say_why(
    x_api, customers, ingest_settings, running, read
):
    """X answers a mentions request for a user it cannot serve (unknown, suspended, protected)
    with HTTP 200 and only ``errors``, and a spent usage cap with a 429 that the rate window's
    reset does not lift. Neither is "ok, nothing found" nor waited out as a rate limit: the
    poll fails, health says why, and polling carries on when X serves the user again."""
    ana, _ = customers
    sent = new_id()
    helper = x_api.users.pop(HELP_ID)
    service = IngestService(ingest_settings(mentions=True))
    problems = value(ingest_metrics.X_API_ERRORS, "mentions", "problem")
    capped = value(ingest_metrics.X_API_ERRORS, "mentions", "usage_capped")

    async with running(service):
        health = service.health.of("mentions", "@AcmeHelp")
        await wait_for(lambda: health.state == "failing")
        unknown_user = service.readiness_detail()["sources"]["mentions:@AcmeHelp"]["last_error"]
        x_api.users[HELP_ID] = helper
        await wait_for(lambda: health.state == "ok")
        x_api.fail_next(MENTIONS, USAGE_CAPPED, count=3)
        await wait_for(lambda: health.state == "failing")
        usage_cap = service.readiness_detail()["sources"]["mentions:@AcmeHelp"]["last_error"]
        x_api.add_mention(
            HELP_ID, x_api.make_tweet(sent, "@AcmeHelp my card is blocked", ana["id"])
        )
        await read([topics.RAW], lambda rs: ids_on(rs, topics.RAW, RawTweet, [sent]))
        await wait_for(lambda: health.state == "ok")

    assert f"Could not find user with id: [{HELP_ID}]" in unknown_user
    assert value(ingest_metrics.X_API_ERRORS, "mentions", "problem") > problems
    assert "usage cap spent (Monthly, Product)" in usage_cap
    assert value(ingest_metrics.X_API_ERRORS, "mentions", "usage_capped") >= capped + 3
    assert x_api.rate_limited == []  # no rate window was spent or waited for


async def test_rules_past_the_plans_rule_cap_stay_uncovered_and_the_stream_connects(
    x_api, ingest_settings, running, tmp_path, caplog
):
    """X refuses an addition past the plan's rule cap with a problem tied to none of its rules:
    ingest names it, counts the rules X did not create as uncovered and reads the stream with
    the rules X holds, instead of asking again for ever."""
    x_api.max_rules = 0
    settings = ingest_settings(stream=True)
    caplog.set_level("ERROR", logger="switchboard.ingest.stream")

    async with running(IngestService(settings)):
        await wait_for(lambda: x_api.stream_connections >= 1)

    additions = [r for r in x_api.requests if r["path"] == RULES_PATH and r["method"] == "POST"]
    assert len(additions) == 1 and x_api.rules == {}
    [refused] = [r for r in caplog.records if r.getMessage().startswith("X refused the stream")]
    assert refused.reason == "RulesCapExceeded: Rule cap of 0 exceeded"
    for handle in ("@AcmeHelp", "@AcmeIR"):
        assert value(ingest_metrics.STREAM_RULE_PROBLEMS, handle, "uncovered") >= 1
    shown = await _switchboard(tmp_path, settings, x_api, "ingest", "rules", "--sync")
    assert shown.returncode == 1
    assert "X refused the rules: RulesCapExceeded: Rule cap of 0 exceeded" in shown.stdout


async def test_rule_sync_waits_out_an_x_incident_at_start(
    x_api, customers, ingest_settings, running, read
):
    """X answers 503 to the rules endpoint for a while: ingest waits and retries instead of
    exiting, then synchronizes the rules and streams."""
    ana, _ = customers
    x_api.fail_next(RULES_PATH, 503, count=7)  # three attempts per sync: two syncs and a bit
    tweet = new_id()
    service = IngestService(ingest_settings(stream=True))

    async with running(service):
        await wait_for(lambda: x_api.stream_connections >= 1)
        x_api.push_stream(x_api.make_tweet(tweet, "@AcmeHelp is the app down?", ana["id"]))
        records = await read([topics.RAW], lambda rs: ids_on(rs, topics.RAW, RawTweet, [tweet]))
        detail = service.readiness_detail()["sources"]["filtered_stream:app:main"]

    assert ids_on(records, topics.RAW, RawTweet, [tweet]) == [tweet]
    wanted = {(r.value, r.tag) for r in desired_rules(service.config)}
    assert {(r["value"], r["tag"]) for r in x_api.rules.values()} == wanted
    rule_calls = [r for r in x_api.requests if r["path"] == RULES_PATH]
    assert len(rule_calls) >= 9  # 7 refused, then a read and an add
    assert detail["state"] == "ok" and detail["rules"]["created"] == len(wanted)


async def test_pollers_of_one_app_take_turns_in_its_rate_window(
    x_api, customers, ingest_settings, running, read
):
    """Ten handles polled with one app's token share X's per-app window on mentions (four
    requests per second here): they take turns, and no poller collects a 429, at the reset or
    ever; each handle's mention is published."""
    ana, _ = customers
    handles, wanted = [], []
    for n in range(8):
        user_id = str(2_200_000_000_000_000_000 + n)
        x_api.add_user(user_id, f"AcmeShop{n}")
        handles.append({"handle": f"@AcmeShop{n}", "user_id": user_id, "brand": "Acme",
                        "segment": "retail", "default_department": "customer_service",
                        "app": "main"})  # fmt: skip
        tweet = new_id()
        wanted.append(tweet)
        x_api.add_mention(user_id, x_api.make_tweet(tweet, f"@AcmeShop{n} refund?", ana["id"]))
    x_api.set_rate_limit("/2/users/", 4, 1.0)
    settings = ingest_settings(mentions=True, handles=handles)

    async with running(IngestService(settings)):
        records = await read(
            [topics.RAW], lambda rs: len(ids_on(rs, topics.RAW, RawTweet, wanted)) == 8, 60
        )
        await asyncio.sleep(2)  # two more windows of polling

    assert sorted(ids_on(records, topics.RAW, RawTweet, wanted)) == sorted(wanted)
    polls = [r for r in x_api.requests if "/mentions" in r["path"]]
    assert len(polls) >= 10  # every handle polled, some twice
    assert x_api.rate_limited == []  # never asked past the window, never a herd at the reset


async def test_a_duplicate_of_a_foreign_rule_is_adopted_under_a_distinct_value(
    x_api, ingest_settings, running, tmp_path
):
    """Another team's rule has the very value of @AcmeIR's rule: X refuses ours as a
    DuplicateRule. Ingest reports it (log, metric, `switchboard ingest rules`), keeps the handle
    covered by a rule of its own with a distinct value, and does not churn at the next start."""
    settings = ingest_settings(stream=True)
    ir_rule = next(r for r in desired_rules(settings.config) if r.tag.endswith("@AcmeIR"))
    x_api.rules["7"] = {"id": "7", "value": ir_rule.value, "tag": "social-team"}

    async with running(IngestService(settings)):
        await wait_for(lambda: x_api.stream_connections >= 1)
    adds_at_first_start = _rule_adds(x_api)
    async with running(IngestService(ingest_settings(stream=True))):
        await wait_for(lambda: x_api.stream_connections >= 2)

    ours = [r for r in x_api.rules.values() if r["tag"] == ir_rule.tag]
    assert [r["value"] for r in ours] == [f"({ir_rule.value})"]
    assert x_api.rules["7"]["value"] == ir_rule.value  # the foreign rule untouched
    assert value(ingest_metrics.STREAM_RULE_PROBLEMS, "@AcmeIR", "foreign_duplicate") == 1
    assert value(ingest_metrics.STREAM_RULE_PROBLEMS, "@AcmeIR", "uncovered") == 0
    assert _rule_adds(x_api) == adds_at_first_start  # the adopted value is kept, not re-added
    shown = await _switchboard(tmp_path, settings, x_api, "ingest", "rules")
    assert shown.returncode == 0, shown.stderr
    [line] = [line for line in shown.stdout.splitlines() if "@AcmeIR" in line]
    assert "adopted_variant" in line and "7 (social-team)" in line


async def test_rules_added_whose_answer_was_lost_are_ours_not_foreign_duplicates(
    x_api, ingest_settings, running
):
    """X creates the rules, and the connection drops before its answer: the retry is refused
    as a DuplicateRule of the rules just created, which carry our tags. They are ours: no
    foreign duplicate reported, no second value added beside them."""
    settings = ingest_settings(stream=True)
    x_api.lose_answer_next("POST", "/2/tweets/search/stream/rules")

    async with running(IngestService(settings)):
        await wait_for(lambda: x_api.stream_connections >= 1)

    wanted = {(r.value, r.tag) for r in desired_rules(settings.config)}
    assert sorted((r["value"], r["tag"]) for r in x_api.rules.values()) == sorted(wanted)
    for handle in ("@AcmeHelp", "@AcmeIR"):
        assert value(ingest_metrics.STREAM_RULE_PROBLEMS, handle, "foreign_duplicate") == 0
        assert value(ingest_metrics.STREAM_RULE_PROBLEMS, handle, "uncovered") == 0


async def test_a_keyword_x_refuses_is_named_and_the_handle_stays_covered(
    x_api, ingest_settings, running, tmp_path, caplog
):
    """`status:down` reads to X as an operator that does not exist: X refuses the whole
    request. Ingest finds the term in a dry run, names the handle and the keyword, and adds the
    handle's rule without it."""

    def add_keyword(config: dict) -> None:
        config["handles"][0]["listen"]["keywords"].append("status:down")

    settings = ingest_settings(stream=True, edit=add_keyword)
    caplog.set_level("ERROR", logger="switchboard.ingest.stream")

    async with running(IngestService(settings)):
        await wait_for(lambda: x_api.stream_connections >= 1)

    help_rule = next(r for r in x_api.rules.values() if r["tag"] == "switchboard:@AcmeHelp")
    assert "status:down" not in help_rule["value"] and '"acme outage"' in help_rule["value"]
    assert "@AcmeHelp" in help_rule["value"]
    [named] = [r for r in caplog.records if getattr(r, "keyword", None) == "status:down"]
    assert named.handle == "@AcmeHelp" and "invalid operator 'status'" in named.reason
    assert value(ingest_metrics.STREAM_RULE_PROBLEMS, "@AcmeHelp", "invalid_term") == 1
    shown = await _switchboard(tmp_path, settings, x_api, "ingest", "rules", "--sync")
    assert shown.returncode == 1  # a keyword could not be added
    assert "X refused the keyword 'status:down'" in shown.stdout


async def test_a_flapping_stream_backs_off_within_the_connection_budget(
    x_api, customers, ingest_settings, running, read
):
    """X accepts each connection and closes it at once. Short-lived connections count as
    failed attempts, so the waits grow, and attempts never exceed the budget (3 per 5 s here,
    X's 50 per 15 minutes scaled down, so that it binds whatever a loaded machine adds to each
    attempt): X never answers 429. When X recovers, tweets flow."""
    ana, _ = customers
    x_api.flap_stream(10_000)
    x_api.limit_stream_connections(3, 5.0)
    # Waits of 0, 0.2, 0.4 s...: steps wide enough to tell apart from a loaded machine's noise.
    stream = {"healthy_after_s": 1.0, "max_connections": 3, "connection_window_s": 5.0,
              "reconnect": {"network_step_s": 0.2}}  # fmt: skip
    settings = ingest_settings(stream=True, x={"filtered_stream": stream})
    budget_waits = value(ingest_metrics.STREAM_BUDGET_WAITS)
    tweet = new_id()

    async with running(IngestService(settings)):
        await wait_for(lambda: len(x_api.stream_attempts) >= 4, timeout_s=30)
        flapping = list(x_api.stream_attempts)
        x_api.flap_stream(-x_api._flaps)  # X recovers
        await wait_for(lambda: x_api._open_streams != [], timeout_s=20)
        x_api.push_stream(x_api.make_tweet(tweet, "@AcmeHelp back?", ana["id"]))
        records = await read([topics.RAW], lambda rs: ids_on(rs, topics.RAW, RawTweet, [tweet]))

    assert ids_on(records, topics.RAW, RawTweet, [tweet]) == [tweet]
    assert max(sum(t <= a < t + 5.0 for a in flapping) for t in flapping) <= 3
    assert x_api.rate_limited == []
    gaps = [b - a for a, b in zip(flapping, flapping[1:], strict=False)]
    assert gaps[1] >= 0.2  # the backoff grows: a closed-at-once connection is a failure
    assert gaps[2] >= 5.0 - gaps[0] - gaps[1]  # the fourth waited for the budget's window
    assert value(ingest_metrics.STREAM_BUDGET_WAITS) > budget_waits


async def test_account_activity_events_x_documents_are_skipped_not_dead_lettered(
    ingest_settings, running, read
):
    """X's own examples: a revoke (`user_event`, a body without `for_user_id`), typing
    indicators, read receipts, follows and likes. None is a tweet to route; each is counted by
    kind and answered 200, none is dead-lettered; the revoke marks the handle's webhook until
    X delivers the handle's events again (the user authorized the app again)."""
    examples = json.loads((X_DOCS / "account_activity.json").read_text())
    revoke = examples["account_activity/user_event"]["json"]
    revoke["user_event"]["revoke"]["source"]["user_id"] = HELP_ID  # one of our handles
    bodies = {
        "user_event": revoke,
        "direct_message_indicate_typing_events": examples[
            "account_activity/direct_message_indicate_typing_events"]["json"],
        "direct_message_mark_read_events": examples[
            "account_activity/direct_message_mark_read_events"]["json"],
        "follow_events": _filled(examples["account_activity/follow_events"]["raw"]),
        "favorite_events": _filled(examples["account_activity/favorite_events"]["raw"]),
    }  # fmt: skip
    before = {kind: value(ingest_metrics.WEBHOOK_EVENTS_SKIPPED, kind) for kind in bodies}
    started = utc_now()
    service = IngestService(ingest_settings(webhook=True))

    async with running(service):
        transport = httpx.ASGITransport(app=service.http_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            answers = []
            for body in bodies.values():
                raw = json.dumps(body).encode()
                answers.append(await client.post("/webhooks/x", content=raw, headers=signed(raw)))
            ready = (await client.get("/readyz")).json()
            skipped = {kind: value(ingest_metrics.WEBHOOK_EVENTS_SKIPPED, kind) for kind in bodies}
            again = json.dumps(bodies["favorite_events"] | {"for_user_id": HELP_ID}).encode()
            await client.post("/webhooks/x", content=again, headers=signed(again))
            authorized_again = (await client.get("/readyz")).json()
        records = await read([topics.DEADLETTER], lambda rs: False, timeout_s=1.5)

    assert [(a.status_code, a.json()) for a in answers] == [(200, {"published": 0})] * 5
    for kind in bodies:
        assert skipped[kind] == before[kind] + 1, kind
    letters = [x for x in published(records, topics.DEADLETTER, DeadLetter)
               if x.stage == "ingest" and x.failed_at >= started]  # fmt: skip
    assert letters == []
    assert ready["sources"]["webhook:@AcmeHelp"]["last_error"] == "access revoked by the user"
    assert ready["sources"]["webhook:@AcmeHelp"]["state"] == "failing"
    assert authorized_again["sources"]["webhook:@AcmeHelp"]["state"] == "ok"


async def test_mentions_missed_while_ingest_was_down_are_recovered(
    x_api, customers, ingest_settings, running, read
):
    """X does not queue a stream for a client that is away. After ingest was stopped, the
    mentions the stream missed are read back for the gap and published, even when X fails the
    first reading past its retries (it is tried again); a keyword match that mentions no handle
    cannot be read back below Enterprise access (no backfill)."""
    ana, _ = customers
    x_api.lose_tweets_while_disconnected()
    settings = ingest_settings(stream=True)
    missed_mention, missed_keyword = new_id(), new_id()
    recovered = value(ingest_metrics.STREAM_GAP_RECOVERED, "@AcmeHelp")

    first, since = IngestService(settings), time.time()
    async with running(first):
        await alive_saved(first, since)
    started = time.time()  # the next process's first connection ends its gap
    mention = x_api.make_tweet(missed_mention, "@AcmeHelp charged twice", ana["id"])
    x_api.push_stream(mention)
    x_api.add_mention(HELP_ID, mention)
    x_api.push_stream(x_api.make_tweet(missed_keyword, "acme outage again", ana["id"]),
                      matching_tags=["switchboard:@AcmeHelp"])  # fmt: skip
    # written after the reconnection (the stream's to deliver, here not streamed): not the
    # gap's, so the backstop leaves it, though it reads up to now to know X's reach
    later = new_id()
    after_the_gap = (datetime.now(UTC) + timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    x_api.add_mention(HELP_ID, x_api.make_tweet(later, "@AcmeHelp and now?", ana["id"],
                                                created_at=after_the_gap))  # fmt: skip
    x_api.fail_next(MENTIONS, 503, count=3)  # every try of the first reading (retry.attempts)
    async with running(IngestService(ingest_settings(stream=True))):
        records = await read(
            [topics.RAW], lambda rs: ids_on(rs, topics.RAW, RawTweet, [missed_mention])
        )
        await wait_for(
            lambda: value(ingest_metrics.STREAM_GAP_RECOVERED, "@AcmeHelp") == recovered + 1
        )
        records = await read([topics.RAW], lambda rs: False, timeout_s=1.0)  # all, once more

    assert ids_on(records, topics.RAW, RawTweet, [missed_mention]) == [missed_mention]
    assert ids_on(records, topics.RAW, RawTweet, [missed_keyword, later]) == []
    backstop = [r for r in x_api.requests if r["path"] == MENTIONS]
    # from the gap's start (to the second): X's reach is counted up to now
    reconnected = min(a for a in x_api.stream_attempts if a > started)
    starts = {datetime.fromisoformat(r["query"]["start_time"]).timestamp() for r in backstop}
    assert backstop and all(start <= reconnected for start in starts)


async def alive_saved(service: IngestService, since: float) -> None:
    """Until the service's stream saved its alive checkpoint after ``since`` (a cluster
    shared between tests may hold one from an earlier test)."""
    key = ALIVE_CHECKPOINT + service.config.ingest.x.filtered_stream.app
    await wait_for(lambda: int(service.checkpoints.get(key) or 0) >= snowflake_at(since))


async def a_mention_missed_while_away(x_api, settings, running, author_id: str) -> str:  # noqa: ANN001
    """A first ingest's stream is alive (checkpointed), then ingest stops: a mention posted
    meanwhile is lost to the stream (X does not queue it) and kept by the mentions endpoint.
    Returns its id, once past the stall window (1 s) and start_time's whole seconds, so that a
    gap starting from a later process's alive checkpoint begins after it."""
    missed = new_id()
    first, since = IngestService(settings), time.time()
    async with running(first):
        await alive_saved(first, since)
    mention = x_api.make_tweet(missed, "@AcmeHelp charged twice", author_id)
    x_api.push_stream(mention)
    x_api.add_mention(HELP_ID, mention)
    await asyncio.sleep(2.5)
    return missed


async def test_a_gap_the_backstop_could_not_read_back_is_read_after_a_restart(
    x_api, customers, ingest_settings, running, read
):
    """The stream's alive checkpoint moves on as soon as it reconnects; a gap whose mentions X
    would not give back before ingest stopped again is checkpointed apart and read back by the
    next process, not lost with the first."""
    ana, _ = customers
    x_api.lose_tweets_while_disconnected()
    missed = await a_mention_missed_while_away(
        x_api, ingest_settings(stream=True), running, ana["id"]
    )
    x_api.fail_next(MENTIONS, 503, count=10_000)
    async with running(IngestService(ingest_settings(stream=True))):
        await wait_for(lambda: len([r for r in x_api.requests if r["path"] == MENTIONS]) >= 6)
    x_api.stop_failing(MENTIONS)
    async with running(IngestService(ingest_settings(stream=True))):
        records = await read([topics.RAW], lambda rs: ids_on(rs, topics.RAW, RawTweet, [missed]))

    assert ids_on(records, topics.RAW, RawTweet, [missed]) == [missed]


async def test_each_apps_stream_keeps_its_own_gap(x_api, customers, ingest_settings, running, read):
    """Each ingest process streams with an app of its own. Another process's stream, alive
    while this one was down, does not shorten this one's gap: its mentions are read back."""
    ana, _ = customers
    x_api.lose_tweets_while_disconnected()

    def other_app(config: dict) -> None:  # the investor handle, streamed by its own app
        x = config["ingest"]["x"]
        x["apps"]["investors"] = x["apps"]["main"]
        x["filtered_stream"]["app"] = "investors"
        config["handles"] = [h | {"app": "investors"} for h in config["handles"]
                             if h["handle"] == "@AcmeIR"]  # fmt: skip

    missed = await a_mention_missed_while_away(
        x_api, ingest_settings(stream=True), running, ana["id"]
    )
    investors, since = IngestService(ingest_settings(stream=True, edit=other_app)), time.time()
    async with running(investors):
        await alive_saved(investors, since)  # the other app's stream: its own checkpoint
    async with running(IngestService(ingest_settings(stream=True))):
        records = await read([topics.RAW], lambda rs: ids_on(rs, topics.RAW, RawTweet, [missed]))

    assert ids_on(records, topics.RAW, RawTweet, [missed]) == [missed]


async def test_backfill_minutes_recovers_every_missed_match_where_x_allows_it(
    x_api, customers, ingest_settings, running, read
):
    """With Enterprise access (``backfill_minutes``), the reconnection asks X for the minutes
    it missed: keyword matches come back too, and the mentions backstop is not needed."""
    ana, _ = customers
    x_api.lose_tweets_while_disconnected()
    app = f"backfill{new_id()}"  # an app of its own: its first connection ever asks no backfill

    def own_app(config: dict) -> None:
        config["ingest"]["x"]["apps"][app] = config["ingest"]["x"]["apps"]["main"]
        config["handles"] = [h | {"app": app} for h in config["handles"]]

    settings = ingest_settings(
        stream=True, x={"filtered_stream": {"backfill_minutes": 2, "app": app}}, edit=own_app
    )
    missed = new_id()

    alive = ALIVE_CHECKPOINT + settings.config.ingest.x.filtered_stream.app
    first, since = IngestService(settings), time.time()
    async with running(first):
        await alive_saved(first, since)
    x_api.push_stream(x_api.make_tweet(missed, "acme outage again", ana["id"]),
                      matching_tags=["switchboard:@AcmeHelp"])  # fmt: skip
    second = IngestService(settings)
    async with running(second):
        records = await read([topics.RAW], lambda rs: ids_on(rs, topics.RAW, RawTweet, [missed]))
        held = second.checkpoints.get(alive)

    assert ids_on(records, topics.RAW, RawTweet, [missed]) == [missed]
    # while the resent minutes may still be coming, a crash must find the gap as it was
    assert held == first.checkpoints.get(alive)
    connections = [r for r in x_api.requests if r["path"] == STREAM_PATH]
    assert connections[-1]["query"]["backfill_minutes"] == "1"  # the gap, in whole minutes
    assert not [r for r in x_api.requests if r["path"] == MENTIONS]


async def test_backfill_minutes_x_refuses_leaves_the_gap_to_the_backstop(
    x_api, customers, ingest_settings, running, read
):
    """``backfill_minutes`` set on an app below Enterprise access: X refuses the connection
    that asks for it (403, client-forbidden). The stream reconnects at once without it, and the
    mentions backstop reads the gap back, instead of the stream staying down."""
    ana, _ = customers
    x_api.enterprise = False
    x_api.lose_tweets_while_disconnected()
    settings = ingest_settings(stream=True, x={"filtered_stream": {"backfill_minutes": 2}})
    missed = await a_mention_missed_while_away(x_api, settings, running, ana["id"])
    live = new_id()
    service, first_request = IngestService(settings), len(x_api.requests)

    async with running(service):
        await wait_for(lambda: x_api.stream_connections >= 2)
        x_api.push_stream(x_api.make_tweet(live, "@AcmeHelp still there?", ana["id"]))
        records = await read(
            [topics.RAW], lambda rs: len(ids_on(rs, topics.RAW, RawTweet, [missed, live])) == 2
        )
        [health] = [h for name, h in service.readiness_detail()["sources"].items()
                    if name.startswith("filtered_stream")]  # fmt: skip

    connections = [r["query"] for r in x_api.requests[first_request:] if r["path"] == STREAM_PATH]
    [asked] = [n for n, query in enumerate(connections) if "backfill_minutes" in query]
    assert connections[asked]["backfill_minutes"] == "1"  # refused, once
    assert len(connections) > asked + 1  # and at once without it
    assert [r for r in x_api.requests if r["path"] == MENTIONS]  # the backstop read the gap
    assert health["backfill"].startswith("refused by X")
    assert sorted(ids_on(records, topics.RAW, RawTweet, [missed, live])) == sorted([missed, live])


def _rule_adds(x_api) -> int:
    return sum(
        1
        for r in x_api.requests
        if r["path"] == RULES_PATH and r["method"] == "POST" and (r["json"] or {}).get("add")
    )


def _filled(raw: str) -> dict:
    """X's example with its placeholders (<User Object>, <Tweet Object>) filled minimally."""
    text = raw.replace("<User Object>", '"id": "42"')
    return json.loads(text.replace("<Tweet Object>", '"id": "1", "text": "nice"'))


async def _switchboard(tmp_path, settings, x_api, *args: str):
    """Run the CLI in a process of its own, with the test's config, broker and stand-in."""
    env = os.environ | {
        "SWITCHBOARD_CONFIG_FILE": str(settings.config_file),
        "SWITCHBOARD_X_API_BASE_URL": x_api.base_url,
        "COLUMNS": "400",  # one table row per line
    }
    process = await asyncio.create_subprocess_exec(
        *SWITCHBOARD, *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    return subprocess.CompletedProcess(args, process.returncode, stdout.decode(), stderr.decode())


async def test_an_ingest_with_no_source_says_so_on_readyz(ingest_settings, running):
    """A configuration with every X source off and nothing to replay is valid, and reads
    nothing: ingest says so (degraded, the source metric at 0) instead of idling in silence."""
    service = IngestService(ingest_settings())
    async with running(service):
        await wait_for(lambda: "sources:none" in service.readiness_detail()["sources"])
        detail = service.readiness_detail()

    assert detail["degraded"] is True
    assert detail["sources"]["sources:none"]["state"] == "failing"
    assert value(ingest_metrics.SOURCE_UP, "sources", "none") == 0


async def test_each_endpoint_takes_the_kinds_of_token_x_documents_for_it(x_api):
    """The stand-in holds ingest to X's OpenAPI ``security`` lists: the stream and its rules
    take the app's bearer token only, DM events a user's only (else 403 Unsupported
    Authentication), so a token sent to the wrong endpoint fails the tests as it would fail
    against X."""
    user, app = (
        {"Authorization": f"Bearer {X_USER_TOKEN}"},
        {"Authorization": f"Bearer {X_APP_TOKEN}"},
    )
    async with httpx.AsyncClient(base_url=x_api.base_url) as client:
        rules_as_user = await client.get(RULES_PATH, headers=user)
        dms_as_app = await client.get("/2/dm_events", headers=app)
        rules_as_app = await client.get(RULES_PATH, headers=app)

    for refused in (rules_as_user, dms_as_app):
        assert refused.status_code == 403
        assert refused.json()["type"].endswith("/problems/unsupported-authentication")
    assert rules_as_app.status_code == 200
