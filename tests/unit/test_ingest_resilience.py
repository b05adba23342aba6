"""The pure parts of how ingest copes with X: rate windows, the connection budget, rule
variants after a DuplicateRule, X's answers to rule changes, poll backoff, snowflake times."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

from switchboard.ingest.config import PollingConfig
from switchboard.ingest.polling import MentionsPoller
from switchboard.ingest.ratelimit import DEFAULT_WAIT_S, RateWindow, seconds_to_reset
from switchboard.ingest.rules import StreamRule, plan_sync, rule_status, variants
from switchboard.ingest.stream import ConnectionBudget, moment_of, snowflake_at
from switchboard.ingest.xapi import RulesAnswer
from switchboard.shared.config import HandleConfig

X_DOCS = Path(__file__).resolve().parents[1] / "standins" / "x_docs"


async def _callers(window: RateWindow, n: int, answer: dict[str, str], hold_s: float = 0.05):
    """``n`` concurrent calls; returns the most that were in flight at once."""
    in_flight, most = 0, 0

    async def call() -> None:
        nonlocal in_flight, most
        async with window.turn() as turn:
            in_flight += 1
            most = max(most, in_flight)
            await asyncio.sleep(hold_s)
            in_flight -= 1
            turn.answered(answer)

    await asyncio.gather(*(call() for _ in range(n)))
    return most


async def test_with_nothing_known_one_call_probes_alone():
    window = RateWindow("app:main", "mentions")
    assert await _callers(window, 5, {}) == 1  # no headers: they take turns one by one


async def test_calls_go_together_while_x_says_requests_remain():
    window = RateWindow("app:main", "mentions")
    reset = str(int(time.time()) + 60)
    answer = {"x-rate-limit-remaining": "100", "x-rate-limit-reset": reset}
    await _callers(window, 1, answer)
    assert await _callers(window, 6, answer) == 6


async def test_a_window_spent_without_a_reset_waits_rather_than_spins():
    now = [1000.0]
    window = RateWindow("app:main", "mentions", clock=lambda: now[0])
    async with window.turn() as turn:
        turn.answered({"x-rate-limit-remaining": "0"})  # X named no reset
    assert window.reset_at == 1000.0 + DEFAULT_WAIT_S
    waiting = asyncio.create_task(_callers(window, 1, {}))
    await asyncio.sleep(0.2)
    assert not waiting.done()  # a caller waits for the reset
    now[0] += DEFAULT_WAIT_S
    async with window._changed:  # noqa: SLF001 - wake the waiter as an answer would
        window._changed.notify_all()  # noqa: SLF001
    assert await asyncio.wait_for(waiting, 5) == 1


async def test_an_answer_that_comes_back_late_does_not_raise_what_remains():
    window = RateWindow("app:main", "mentions")
    reset = str(int(time.time()) + 60)

    async def call(remaining: int, answered_after_s: float) -> None:
        async with window.turn() as turn:
            await asyncio.sleep(answered_after_s)
            turn.answered({"x-rate-limit-remaining": str(remaining), "x-rate-limit-reset": reset})

    await call(10, 0)
    await asyncio.gather(call(9, 0.1), call(8, 0))  # X counted the slow one first
    assert window.remaining == 8
    await call(449, 0)  # the same reset: an answer out of order, not a new window
    assert window.remaining == 8
    async with window.turn() as turn:
        turn.answered(
            {"x-rate-limit-remaining": "449", "x-rate-limit-reset": str(int(reset) + 900)}
        )
    assert window.remaining == 449


async def test_a_spent_window_waits_for_the_reset_then_one_probes_first():
    window = RateWindow("app:main", "mentions")
    reset = time.time() + 0.4
    async with window.turn() as turn:
        turn.answered({"x-rate-limit-remaining": "5"}, limited=True)
        turn.reset_at = reset  # a 429 whose reset is 0.4 s away
    started: list[float] = []

    async def call() -> None:
        async with window.turn() as turn:
            started.append(time.time())
            await asyncio.sleep(0.05)
            turn.answered({"x-rate-limit-remaining": "50", "x-rate-limit-reset": str(reset + 60)})

    await asyncio.gather(*(call() for _ in range(4)))
    assert min(started) >= reset  # nobody went before the reset
    first, *rest = sorted(started)
    assert all(t >= first + 0.05 for t in rest)  # the others waited for the probe's answer


def test_x_reset_is_read_by_x_clock_from_the_same_answer():
    recorded = {"date": "Fri, 07 Oct 2022 22:43:18 UTC", "x-rate-limit-reset": "1665183228"}
    assert seconds_to_reset(recorded, received_at=time.time()) == 630  # whatever our clock says
    assert seconds_to_reset({"x-rate-limit-reset": "1000"}, received_at=970.0) == 30
    assert seconds_to_reset({"x-rate-limit-reset": "1000"}, received_at=1070.0) == 0
    assert seconds_to_reset({"date": "Fri, 07 Oct 2022 22:43:18 UTC"}, time.time()) is None


async def test_a_429_waits_for_x_reset_even_when_this_clock_is_ahead_of_x():
    window = RateWindow("app:main", "mentions")
    x_now = time.time() - 120  # this machine's clock two minutes ahead of X's
    headers = {"date": format_datetime(datetime.fromtimestamp(x_now, UTC), usegmt=True),
               "x-rate-limit-reset": str(int(x_now) + 2)}  # fmt: skip
    async with window.turn() as turn:
        turn.answered(headers, limited=True)
    answered = time.time()
    async with window.turn() as turn:  # by this clock the reset passed two minutes ago
        waited = time.time() - answered
        turn.answered({"x-rate-limit-remaining": "5"})
    # X's reset, two seconds after its date (whole seconds): not at once, not the 60 s of a 429
    # whose reset is unknown
    assert 1.0 <= waited < 30


async def test_a_429_whose_reset_has_come_still_waits_a_second():
    window = RateWindow("app:main", "mentions")
    now = time.time()
    headers = {"date": format_datetime(datetime.fromtimestamp(now, UTC), usegmt=True),
               "x-rate-limit-reset": str(int(now))}  # fmt: skip
    async with window.turn() as turn:
        turn.answered(headers, limited=True)
    answered = time.time()
    async with window.turn() as turn:
        waited = time.time() - answered
        turn.answered({"x-rate-limit-remaining": "5"})
    assert waited >= 0.95  # not straight back into the limit


def test_the_connection_budget_holds_attempts_within_its_window():
    budget = ConnectionBudget(limit=3, window_s=10.0)
    for now in (0.0, 1.0, 2.0):
        assert budget.wait_s(now) == 0.0
        budget.attempted(now)
    assert budget.wait_s(3.0) == 7.0  # until the first attempt leaves the window
    assert budget.wait_s(10.0) == 0.0


def test_the_connection_budget_keeps_a_margin_for_arrival_delays():
    """X counts attempts as they arrive: one sent at the window's edge must not be its sixth."""
    budget = ConnectionBudget(limit=3, window_s=10.0, margin_s=0.5)
    for now in (0.0, 1.0, 2.0):
        budget.attempted(now)
    assert budget.wait_s(10.0) == 0.5
    assert budget.wait_s(10.5) == 0.0


def test_a_duplicated_rule_tries_distinct_values_that_match_the_same_tweets():
    rule = StreamRule("(@AcmeIR OR $ACME) -is:retweet", "switchboard:@AcmeIR", "@AcmeIR",
                      ("@AcmeIR", "$ACME"), " -is:retweet")  # fmt: skip
    first = rule.variant()
    assert first is not None and first.value == f"({rule.value})" and first.tag == rule.tag
    second = first.variant()
    assert second is not None and second.value == f"{rule.value} -is:nullcast"
    assert second.variant() is None


def test_a_rule_without_a_refused_term_keeps_the_others():
    rule = StreamRule("(@AcmeHelp OR status:down) -is:retweet", "t", "@AcmeHelp",
                      ("@AcmeHelp", "status:down"), " -is:retweet")  # fmt: skip
    fixed = rule.without({"status:down"})
    assert fixed is not None and fixed.value == "@AcmeHelp -is:retweet"
    assert rule.without({"@AcmeHelp", "status:down"}) is None


def test_an_adopted_variant_is_the_rule_and_is_not_churned():
    rule = StreamRule("@AcmeIR", "switchboard:@AcmeIR")
    existing = [
        {"id": "7", "value": "@AcmeIR", "tag": "social-team"},
        {"id": "8", "value": variants("@AcmeIR")[0], "tag": "switchboard:@AcmeIR"},
    ]
    changes = plan_sync(existing, [rule], "switchboard:")
    assert (changes.add, changes.delete_ids) == ([], [])
    [status] = rule_status(existing, [rule], "switchboard:")
    assert status.state == "adopted_variant" and status.foreign == "7 (social-team)"


def test_rule_status_names_missing_foreign_duplicates_and_stale_rules():
    rules = [StreamRule("@A", "switchboard:@A"), StreamRule("@B", "switchboard:@B")]
    existing = [
        {"id": "1", "value": "@B", "tag": "other"},
        {"id": "2", "value": "@Old", "tag": "switchboard:@Old"},
    ]
    states = {s.tag: s.state for s in rule_status(existing, rules, "switchboard:")}
    assert states == {"switchboard:@A": "missing", "switchboard:@B": "foreign_duplicate",
                      "switchboard:@Old": "stale"}  # fmt: skip


def test_x_recorded_duplicate_rule_answer_is_understood():
    recorded = json.loads((X_DOCS / "duplicate-rule.json").read_text())["response"]
    answer = RulesAnswer.of(recorded)
    value = "from:twitterdev from:twitterapi has:links"
    assert answer.duplicates() == {value: "1518831215612096512"}
    assert answer.invalid() == {} and answer.created == {}
    assert answer.summary["not_created"] == 1


def test_an_invalid_rule_answer_keeps_x_explanation():
    answer = RulesAnswer.of({
        "meta": {"sent": "2026-01-01T00:00:00Z", "summary": {"created": 0, "invalid": 1}},
        "errors": [{"value": "status:down", "details": ["Reference to invalid operator 'status'"],
                    "title": "UnprocessableEntity",
                    "type": "https://api.twitter.com/2/problems/invalid-rules"}],
    })  # fmt: skip
    assert answer.invalid() == {"status:down": "Reference to invalid operator 'status'"}
    # X's OpenAPI: an InvalidRuleProblem is a Problem (type, title, detail), with no details;
    # a duplicate is told by its type
    openapi_shaped = RulesAnswer.of({"meta": {"summary": {"created": 0}}, "errors": [
        {"value": "lang:zz", "title": "UnprocessableEntity", "detail": "Unknown language: zz",
         "type": "https://api.twitter.com/2/problems/invalid-rules"},
        {"value": "@A", "id": "9", "title": "Conflict",
         "type": "https://api.twitter.com/2/problems/duplicate-rules"}]})  # fmt: skip
    assert openapi_shaped.invalid() == {"lang:zz": "Unknown language: zz"}
    assert openapi_shaped.duplicates() == {"@A": "9"}


def test_failed_polls_back_off_doubling_up_to_the_maximum():
    handle = HandleConfig.model_validate(
        {
            "handle": "@A",
            "user_id": "1",
            "brand": "A",
            "segment": "s",
            "default_department": "legal",
        }
    )
    settings = PollingConfig(interval_s=60, max_backoff_s=900)
    poller = MentionsPoller(handle, None, None, settings)  # type: ignore[arg-type]
    assert [poller.backoff(n) for n in (1, 2, 3, 4, 5)] == [120, 240, 480, 900, 900]


def test_a_snowflake_id_carries_its_time():
    # The rule id X gave in its recorded answer of 2022-04-26.
    written = datetime.fromtimestamp(moment_of(1518831215612096512), UTC)
    assert written.isoformat(timespec="seconds") == "2022-04-26T05:55:54+00:00"
    now = time.time()
    assert abs(moment_of(snowflake_at(now)) - now) < 0.001


def test_tweepy_warns_only_of_parameters_ingest_does_not_send_on_purpose(caplog):
    tweepy_log = logging.getLogger("tweepy.client")
    with caplog.at_level(logging.WARNING, logger="tweepy.client"):
        for name in ("max_results", "pagination_token", "dry_run", "since_idd"):
            tweepy_log.warning(f"Unexpected parameter: {name}")
    assert [r.getMessage() for r in caplog.records] == ["Unexpected parameter: since_idd"]


def test_gaps_that_touch_are_read_back_as_one_and_gaps_days_apart_stay_apart():
    """A flapping stream's gaps join into one read-back; a gap of days ago and one of now do
    not, or the days between, which the stream delivered, would be read back and published
    again once the dedup window forgot them."""
    from switchboard.ingest.stream import JOIN_S, MAX_GAPS, Gap, _with

    day = 86_400.0
    flapping = _with([Gap(0, 10)], Gap(9, 20), Gap(20 + JOIN_S / 2, 40))
    assert flapping == [Gap(0, 40)]
    apart = _with([Gap(0, 10)], Gap(4 * day, 4 * day + 10))
    assert apart == [Gap(0, 10), Gap(4 * day, 4 * day + 10)]
    many = _with([], *(Gap(n * day, n * day + 1) for n in range(MAX_GAPS + 3)))
    assert len(many) == MAX_GAPS and many[0].start == 0 and many[-1].end > many[-2].end
    assert sum(g.end - g.start for g in many) < 4 * day  # the nearest joined, not all
