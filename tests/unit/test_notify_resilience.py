"""Retries, circuit breakers and signatures of notify, as pure logic."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest

from switchboard.notify.channels import (
    TRANSCRIPT_SEPARATOR,
    JiraChannel,
    _closed,
    _lost_a_race,
    _wants_a_stage,
    adf,
    hubspot_batch_error,
    hubspot_upserted,
    json_of,
    salesforce_codes,
    transcript,
    until_midnight,
    until_reset,
    webhook_signature,
)
from switchboard.notify.dlq import ParkedIndex
from switchboard.notify.resilience import (
    CircuitBreaker,
    CircuitOpen,
    DeliveryError,
    RedrivePolicy,
    http_error,
    next_redrive,
    retry_after_seconds,
    with_retries,
)
from switchboard.notify.service import (
    DELIVERIES_KEPT,
    TRANSCRIPT_TWEETS,
    transcript_kept,
    with_delivery,
)
from switchboard.shared.events import LedgerEntry, ParkedDelivery, encode
from switchboard.shared.labels import Department
from switchboard.shared.settings import KafkaSettings
from tests.factories import a_classified_tweet, routed_from


@pytest.mark.parametrize(
    ("reset", "seconds"),
    [
        ("2026-12-06T10:32Z", 90.0),  # Jira's form, to the minute
        ("2026-12-06T10:32:30+00:00", 120.0),
        ("2026-12-06T10:30Z", None),  # passed: the backoff decides
        ("", None),
        ("soon", None),
        (None, None),
    ],
)
def test_a_jiras_reset_time_is_a_wait_until_then(reset, seconds):
    now = datetime(2026, 12, 6, 10, 30, 30, tzinfo=UTC)
    assert until_reset(reset, now) == seconds


@pytest.mark.parametrize(
    ("now", "zone", "hours"),
    [
        ("2026-12-06T03:00:00+00:00", "UTC", 21),
        ("2026-12-06T03:00:00+00:00", "America/New_York", 2),  # 22:00 there, the day before
        ("2026-12-06T03:00:00+00:00", "Asia/Tokyo", 12),  # noon there
        # The day New York's clocks go back lasts 25 hours (midnight to midnight)
        ("2026-11-01T04:00:00+00:00", "America/New_York", 25),
    ],
)
def test_hubspots_daily_limit_resets_at_midnight_in_the_accounts_time_zone(now, zone, hours):
    assert until_midnight(datetime.fromisoformat(now), ZoneInfo(zone)) == hours * 3600


@pytest.mark.parametrize(
    ("status", "retryable", "answered"),
    [
        (500, True, False),
        (503, True, False),
        (408, True, False),  # the request timed out at the target
        (409, True, True),  # a concurrent update of the same record (Zendesk)
        (423, True, True),  # a record locked by a burst of upserts (HubSpot)
        (429, True, True),
        (400, False, True),
        (404, False, True),
        (401, False, False),  # credentials refused: every delivery of the channel fails
        (403, False, False),
    ],
)
def test_refusals_of_the_moment_are_retried_and_only_a_target_not_answering_counts_as_down(
    status, retryable, answered
):
    error = http_error(status, "x", None)
    assert (error.retryable, error.answered) == (retryable, answered)


def test_jiras_403_is_one_projects_missing_permission_and_its_401_refused_credentials():
    assert http_error(403, "x", None, unanswered=JiraChannel.unanswered).answered
    assert not http_error(401, "x", None, unanswered=JiraChannel.unanswered).answered


def test_a_refusal_that_asks_for_a_wait_is_retried_whatever_its_status():
    migrating = http_error(477, "Migration in progress", "3600")  # HubSpot, with Retry-After
    assert migrating.retryable and migrating.retry_after_s == 3600.0
    spent = http_error(403, "REQUEST_LIMIT_EXCEEDED", None, 3600.0)  # Salesforce's own wait
    assert spent.retryable and spent.answered  # the org's limit, not refused credentials


@pytest.mark.parametrize(
    ("errors", "retryable"),
    [
        ([{"status": "423", "category": "LOCKED", "message": "locked"}], True),
        ([{"status": "409", "category": "CONFLICT", "message": "conflict"}], True),
        ([{"status": "error", "category": "RATE_LIMITS", "message": "ten secondly"}], True),
        ([{"status": "400", "category": "VALIDATION_ERROR", "message": "bad value"}], False),
        ([{"status": "423", "category": "LOCKED"}, {"status": "400", "category": "X"}], False),
    ],
)
def test_a_hubspot_batch_item_of_the_moment_is_retried_a_refused_one_is_not(errors, retryable):
    error = hubspot_batch_error({"status": "COMPLETE", "results": [], "errors": errors})
    assert (error.retryable, error.answered) == (retryable, True)


def test_a_rate_limited_hubspot_batch_item_waits_out_the_window_a_lock_two_seconds():
    limited = [{"status": "error", "category": "RATE_LIMITS", "message": "ten secondly"}]
    locked = [{"status": "423", "category": "LOCKED", "message": "locked"}]
    answer = {"status": "COMPLETE", "results": []}
    assert hubspot_batch_error({**answer, "errors": limited}, 10.0).retry_after_s == 10.0
    assert hubspot_batch_error({**answer, "errors": locked}, 10.0).retry_after_s == 2.0


def test_an_answer_that_is_not_json_is_a_failure_to_try_again():
    page = httpx.Response(200, text="<html>gateway</html>", headers={"content-type": "text/html"})
    with pytest.raises(DeliveryError, match="unreadable answer: HTTP 200 text/html") as raised:
        json_of(page)
    assert raised.value.retryable and not raised.value.answered
    assert json_of(httpx.Response(201, json={"id": "7"})) == {"id": "7"}


def test_retry_after_is_read_as_seconds_or_as_an_http_date():
    assert http_error(429, "", "2").retry_after_s == 2.0
    now = datetime(2026, 10, 21, 7, 27, 30, tzinfo=UTC).timestamp()
    assert retry_after_seconds("Wed, 21 Oct 2026 07:28:00 GMT", now=now) == 30.0
    assert retry_after_seconds("Wed, 21 Oct 2026 07:28:00 GMT", now=now + 60) == 0.0
    assert retry_after_seconds("soon") is None
    # Without Retry-After, the wait the vendor's own headers ask for (HubSpot's window).
    assert http_error(429, "", None, wait_s=10.0).retry_after_s == 10.0


async def test_a_wait_asked_past_what_dates_hold_parks_for_a_week():
    """Retry-After: inf, or a date in the year 9999, from a webhook receiver: the delivery is
    parked a week on (a redrive time past what dates hold raised, and lost its input)."""
    for retry_after in ("inf", "1e12", "Fri, 31 Dec 9999 23:59:59 GMT"):
        refused = http_error(503, "", retry_after)

        async def attempt(refused: DeliveryError = refused) -> None:
            raise refused

        with pytest.raises(DeliveryError) as parked:
            await with_retries(attempt, "webhook", attempts=3, max_wait_s=60.0)
        at = next_redrive(parked.value, 1, NOW, NOW, POLICY)
        assert at is not None and timedelta(days=6) < at - datetime.now(UTC) < timedelta(days=7.01)


async def test_a_wait_longer_than_max_wait_is_parked_with_its_time_not_slept():
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        raise DeliveryError("HTTP 429", retryable=True, retry_after_s=90.0)

    started = time.time()
    with pytest.raises(DeliveryError) as parked:
        await with_retries(attempt, "zendesk", attempts=4, max_wait_s=30.0)
    assert calls == 1 and time.time() - started < 1.0
    assert parked.value.retry_at == pytest.approx(started + 90.0, abs=1.0)


async def test_a_wait_within_max_wait_is_honoured_exactly():
    answers: list = [DeliveryError("HTTP 429", retryable=True, retry_after_s=0.3), "ok"]

    async def attempt() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    started = time.monotonic()
    assert await with_retries(attempt, "zendesk", attempts=2, max_wait_s=0.5) == ("ok", 2)
    assert time.monotonic() - started >= 0.3  # not cut short by a cap


NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
POLICY = RedrivePolicy(after_s=60.0, max_wait_s=3600.0, for_hours=24.0)


def _waits(error: DeliveryError, parks: int, first: datetime = NOW, jitter: float = 0.0) -> float:
    at = next_redrive(error, parks, first, NOW, POLICY, jitter=lambda: jitter)
    assert at is not None
    return (at - NOW).total_seconds()


def test_a_failed_delivery_is_redriven_later_each_time_it_is_parked_again():
    down = DeliveryError("HTTP 503", retryable=True)
    assert [_waits(down, parks) for parks in (1, 2, 3, 4)] == [60.0, 120.0, 240.0, 480.0]
    assert _waits(down, 40) == 3600.0  # never longer than redrive_max_wait_s
    assert _waits(down, 1, jitter=0.999) == pytest.approx(30.0, abs=0.1)  # at most half sooner
    assert _waits(CircuitOpen("jira"), 1) == 60.0  # an open circuit: the target may come back


def test_a_rejection_or_a_delivery_parked_too_long_ago_waits_for_a_person():
    rejected = DeliveryError("HTTP 400: bad field", retryable=False)
    assert next_redrive(rejected, 1, NOW, NOW, POLICY) is None
    down = DeliveryError("HTTP 503", retryable=True)
    a_day_ago = NOW - timedelta(hours=24)
    assert next_redrive(down, 30, a_day_ago, NOW, POLICY) is None
    never = POLICY._replace(for_hours=0.0)
    assert next_redrive(down, 1, NOW, NOW, never) is None


def test_a_vendors_own_wait_is_honoured_whatever_the_count():
    limited = DeliveryError("HTTP 429", retryable=True, retry_after_s=7200.0)
    limited.retry_at = (NOW + timedelta(hours=2)).timestamp()
    long_ago = NOW - timedelta(days=3)
    reset = NOW + timedelta(hours=2)
    assert next_redrive(limited, 50, long_ago, NOW, POLICY, jitter=lambda: 0.0) == reset
    # spread over a few seconds after the reset: what one limit parked does not all come back
    # at once, and nothing comes back before the reset
    spread = next_redrive(limited, 50, long_ago, NOW, POLICY, jitter=lambda: 0.5)
    assert spread == reset + timedelta(seconds=2.5)


async def test_retries_until_success_and_counts_attempts():
    answers = [DeliveryError("503", retryable=True, retry_after_s=0.01), "ok"]

    async def attempt() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert await with_retries(attempt, "test", attempts=3, max_wait_s=0.05) == ("ok", 2)


async def test_a_permanent_error_is_not_retried():
    calls = 0

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        raise DeliveryError("HTTP 400", retryable=False)

    with pytest.raises(DeliveryError) as caught:
        await with_retries(attempt, "test", attempts=5, max_wait_s=0.01)
    assert calls == 1 and caught.value.attempts == 1


async def test_the_last_retryable_error_is_raised_after_the_last_attempt():
    async def attempt() -> None:
        raise DeliveryError("timeout", retryable=True, retry_after_s=0.0)

    with pytest.raises(DeliveryError) as caught:
        await with_retries(attempt, "test", attempts=3, max_wait_s=0.01)
    assert caught.value.attempts == 3


def test_the_circuit_opens_after_failures_in_a_row_then_lets_one_trial_through():
    breaker = CircuitBreaker("test", failures=3, cooldown_s=10)
    for _ in range(2):
        breaker.record(False, now=0)
    assert breaker.allow(now=0)  # two failures: still closed
    breaker.record(False, now=1)
    assert not breaker.allow(now=5)  # open during the cooldown
    assert breaker.allow(now=12)  # half-open: one trial...
    assert not breaker.allow(now=12)  # ...and only one
    breaker.record(False, now=12)
    assert not breaker.allow(now=13)  # the trial failed: open again
    assert breaker.allow(now=23)
    breaker.record(True, now=23)
    assert breaker.allow(now=23) and breaker.allow(now=23)  # closed


def test_a_try_that_never_reached_the_target_neither_closes_nor_opens_the_circuit():
    """A broken template or a local error in the half-open trial: the circuit stays half-open
    and lets the next try through, which decides."""
    breaker = CircuitBreaker("test", failures=1, cooldown_s=10)
    breaker.record(False, now=0)
    assert breaker.allow(now=11)  # the trial
    breaker.release()
    assert breaker.state == breaker.HALF_OPEN and breaker.allow(now=11)  # the next one goes


def test_a_success_resets_the_count_of_failures():
    breaker = CircuitBreaker("test", failures=2, cooldown_s=10)
    breaker.record(False, now=0)
    breaker.record(True, now=0)
    breaker.record(False, now=0)
    assert breaker.allow(now=0)


def test_webhook_signature_covers_timestamp_and_body():
    expected = hmac.new(b"k", b"1700000000.{}", hashlib.sha256).hexdigest()
    assert webhook_signature("k", "1700000000", b"{}") == "sha256=" + expected
    assert webhook_signature("k", "1700000001", b"{}") != "sha256=" + expected


def test_adf_has_a_paragraph_per_line():
    doc = adf("one\n\ntwo")
    assert doc["type"] == "doc" and doc["version"] == 1
    assert [p["content"] for p in doc["content"]] == [
        [{"type": "text", "text": "one"}],
        [],
        [{"type": "text", "text": "two"}],
    ]


def test_a_tickets_transcript_keeps_the_first_complaint_and_the_latest_tweets_to_fit():
    parts = ["first " * 10, "second " * 10, "third " * 10, "fourth " * 10]
    whole = transcript(parts, 10_000)
    assert whole == TRANSCRIPT_SEPARATOR.join(parts)
    sep = len(TRANSCRIPT_SEPARATOR)
    fits_three = len(parts[0]) + len(parts[2]) + len(parts[3]) + 2 * sep
    # the first and the latest; of those between, the latest that fit
    assert transcript(parts, fits_three) == TRANSCRIPT_SEPARATOR.join([parts[0], *parts[2:]])
    fits_two = len(parts[0]) + sep + len(parts[3])
    assert transcript(parts, fits_two) == TRANSCRIPT_SEPARATOR.join([parts[0], parts[3]])
    assert transcript(parts, fits_two - 1) == parts[3]  # the latest stays, whatever its size
    assert transcript(parts, 5) == parts[3] and transcript([], 100) == ""


def _id(name: str) -> str:
    return f"t-{name}:jira:legal-board"


def _parked(name: str, retry_at: datetime | None, parked_at: datetime) -> ParkedDelivery:
    routed = routed_from(a_classified_tweet("legal", 0.9, conversation_id=f"c-{name}"))
    return ParkedDelivery(
        delivery_id=_id(name), channel="jira", subscription="legal-board",
        department=Department.LEGAL,
        routed=routed, retry_at=retry_at, parks=1, first_parked_at=parked_at, parked_at=parked_at,
    )  # fmt: skip


def test_the_parked_index_hands_each_due_delivery_over_once_per_state():
    index, week = ParkedIndex(), timedelta(days=7)
    index.rebuild([_parked("soon", NOW + timedelta(seconds=5), NOW),
                   _parked("later", NOW + timedelta(hours=1), NOW),
                   _parked("rejected", None, NOW)])  # fmt: skip
    assert index.due(NOW, week) == ([], []) and len(index) == 3
    assert index.due(NOW + timedelta(seconds=6), week) == ([(_id("soon"), "c-soon")], [])
    assert index.due(NOW + timedelta(seconds=7), week) == ([], [])  # asked once...
    index.track(_parked("soon", NOW + timedelta(minutes=2), NOW + timedelta(seconds=8)))
    again = index.due(NOW + timedelta(minutes=3), week)
    assert again == ([(_id("soon"), "c-soon")], [])  # ...per state
    index.forget(_id("soon"))
    assert index.due(NOW + timedelta(days=8), week) == (
        [(_id("later"), "c-later")],
        [(_id("rejected"), "c-rejected")],  # a person's, past the retention
    )
    assert index.by_channel() == {"jira": 2}
    index.clear()
    assert len(index) == 0


UPSERT = "https://acme.my.salesforce.com/services/data/v60.0/sobjects/Lead/Author_Id__c/7300"


@pytest.mark.parametrize(
    ("message", "fields", "race"),
    [
        ("duplicate value found: Author_Id__c duplicates value on record with id: 00Q1", [], True),
        ("duplicate value found: author_id__c duplicates value on record with id: 00Q1", [], True),
        ("duplicate value found: <unknown> duplicates value on record with id: <unknown>", [],
         True),
        ("duplicate value found", ["AUTHOR_ID__C"], True),
        ("duplicate value found: Company duplicates value on record with id: 00Q1", ["Company"],
         False),
        ("duplicate value found: Old_Author_Id__c duplicates value on record with id: 00Q1", [],
         False),
    ],
)  # fmt: skip
def test_only_a_duplicate_of_the_upserted_external_id_is_a_race(message, fields, race):
    """A race for the external id is tried again (the retry updates the winner's record); a
    duplicate on another field the org made Unique repeats whatever is tried."""
    request = httpx.Request("PATCH", UPSERT)
    errors = [{"errorCode": "DUPLICATE_VALUE", "message": message, "fields": fields}]
    response = httpx.Response(400, json=errors, request=request)
    assert _lost_a_race(response, errors) is race


def test_a_long_threads_transcript_keeps_its_first_complaint_and_its_latest_tweets():
    parts = [f"tweet {n}" for n in range(1, 26)]
    kept = transcript_kept(parts)
    assert len(kept) == TRANSCRIPT_TWEETS
    assert kept == ["tweet 1", *parts[-(TRANSCRIPT_TWEETS - 1) :]]
    assert transcript_kept(parts[:3]) == parts[:3]
    assert transcript_kept(transcript_kept(parts) + ["tweet 26"])[0] == "tweet 1"  # kept on


def test_a_vendors_error_code_is_read_however_long_its_answer():
    """What a vendor's error means is read from its whole answer, not from the head that logs
    and the DLQ show: several errors, or a long description, may push the code past it."""
    filler = {"description": "x" * 400, "error": "InvalidValue"}
    zendesk = json.dumps(
        {
            "error": "RecordInvalid",
            "description": "Record validation errors",
            "details": {
                "subject": [filler],
                "status": [{"description": "Statut : fermé", "error": "ClosedPreventsUpdate"}],
            },
        }
    )
    closed = http_error(422, zendesk, None)
    assert "ClosedPreventsUpdate" not in str(closed) and _closed(closed)
    assert not _closed(http_error(422, json.dumps({"details": {"subject": [filler]}}), None))
    salesforce = json.dumps([{"errorCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                              "message": "y" * 400, "fields": []},
                             {"errorCode": "REQUIRED_FIELD_MISSING", "message": "Required fields "
                              "are missing: [LastName]", "fields": ["LastName"]}])  # fmt: skip
    refused = http_error(400, salesforce, None)
    assert "REQUIRED_FIELD_MISSING" not in str(refused)
    assert salesforce_codes(refused) == {
        "FIELD_CUSTOM_VALIDATION_EXCEPTION", "REQUIRED_FIELD_MISSING"}  # fmt: skip
    assert salesforce_codes(http_error(502, "<html>bad gateway</html>", None)) == set()
    hubspot = json.dumps({"status": "error", "category": "VALIDATION_ERROR", "message":
                          "Property values were not valid: " + "z" * 400 + json.dumps(
                              [{"error": "REQUIRED", "name": "hs_pipeline_stage"}])})  # fmt: skip
    assert _wants_a_stage(http_error(400, hubspot, None))


async def test_an_inputs_deliveries_all_end_before_one_failure_is_raised():
    """A delivery that raises a bug (not a DeliveryError) fails its input, which is then
    dead-lettered and acknowledged: the input's other deliveries must have ended first, or
    their effects would be made after it, and recorded nowhere."""
    import asyncio

    from switchboard.notify.service import NotifyService

    finished: list[str] = []

    async def slow() -> object:
        await asyncio.sleep(0.2)
        finished.append("slow")
        return object()

    async def broken() -> object:
        raise ZeroDivisionError("a bug")

    tasks = [asyncio.create_task(broken()), asyncio.create_task(slow())]
    with pytest.raises(ZeroDivisionError):
        await NotifyService._deliveries(None, tasks, [])  # type: ignore[arg-type]  # no state used
    assert finished == ["slow"]


@pytest.mark.parametrize(
    "answer",
    [
        {"status": "PENDING", "results": []},
        {"status": "CANCELED", "results": []},
        {"status": "COMPLETE", "results": []},
        {"status": "PROCESSING", "results": [{"id": "7", "properties": {}}]},
        {"results": [{"id": "7"}]},
    ],
)
def test_a_hubspot_batch_answer_not_complete_or_without_its_record_is_tried_again(answer):
    """An upsert counted as done without its record would leave the ticket unknown to the
    ledger, and the next tweet would open it again (HubSpot's batch ``status``: COMPLETE)."""
    with pytest.raises(DeliveryError) as refused:
        hubspot_upserted(answer)
    assert refused.value.retryable


def test_a_complete_hubspot_batch_answer_gives_its_one_record():
    record = {"id": "7", "new": True, "properties": {"subject": "x"}}
    assert hubspot_upserted({"status": "COMPLETE", "results": [record]}) == record


def test_the_ledger_entry_of_a_viral_thread_fits_the_smallest_record_a_cluster_takes():
    """Every tweet of a long thread delivered to three subscriptions of the longest names: the
    conversation's entry keeps the latest deliveries, still one record any cluster takes (a
    changelog write refused crash-looped notify, re-sending every email at each restart)."""
    deliveries: dict[str, str | None] = {}
    name = "s" * 100
    for n in range(3 * DELIVERIES_KEPT):
        deliveries = with_delivery(deliveries, f"{2**63 - n}:salesforce:{name}{n % 3}", "x" * 64)
    assert len(deliveries) == DELIVERIES_KEPT
    assert f"{2**63 - 1}:salesforce:{name}1" not in deliveries  # the oldest went first
    assert f"{2**63 - 3 * DELIVERIES_KEPT + 1}:salesforce:{name}2" in deliveries
    transcripts = {f"hubspot:{name}{n}": ["t" * 2000] * TRANSCRIPT_TWEETS for n in range(5)}
    entry = LedgerEntry(conversation_id="9" * 19, deliveries=deliveries, transcripts=transcripts)
    [floor] = [m.ge for m in KafkaSettings.model_fields["max_message_bytes"].metadata]
    assert len(encode(entry)) < floor
