"""Retries, circuit breakers and signatures of notify, as pure logic."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from switchboard.notify.channels import adf, webhook_signature
from switchboard.notify.resilience import CircuitBreaker, DeliveryError, http_error, with_retries


@pytest.mark.parametrize(
    ("status", "retryable"), [(500, True), (503, True), (429, True), (400, False), (404, False)]
)
def test_5xx_and_429_are_retryable_other_4xx_are_not(status, retryable):
    assert http_error(status, "x", None).retryable is retryable


def test_retry_after_seconds_are_read_and_dates_fall_back_to_backoff():
    assert http_error(429, "", "2").retry_after_s == 2.0
    assert http_error(429, "", "Wed, 21 Oct 2026 07:28:00 GMT").retry_after_s is None


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
