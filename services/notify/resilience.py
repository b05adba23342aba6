"""How a delivery survives a flaky target: retries, a circuit breaker and a rate limit per
channel (pure logic plus asyncio; the channels raise, this decides).

- Timeouts, connection errors, HTTP 5xx, 408, 409, 423, 425, 429 and any refusal that asks
  for a wait are retried with exponential backoff and full jitter (tenacity), honouring the
  wait the target asks for (``Retry-After``, or the vendor's own rate-limit headers) exactly;
  any other 4xx is permanent and not retried. After the last attempt the delivery is parked on
  the DLQ.
- A wait longer than ``max_wait_s`` is not slept through (it would hold the partition and every
  delivery behind it): the delivery is parked at once with ``retry_at``, and notify redrives it
  by itself when that time comes (service.py).
- A channel whose target fails ``circuit_failures`` times in a row opens its circuit: for
  ``circuit_cooldown_s`` its deliveries are parked at once instead of piling up, then one trial
  goes through (half-open) and its outcome closes or reopens the circuit. Other channels are
  not affected. A failure counts when the target did not answer (timeouts, connection errors,
  5xx) or refused the channel's credentials (401, 403, 407); a refusal of one request (a bad
  project, a hot record) or a wait it asked for is an answer: it is up.
- A delivery parked after its last attempt or by an open circuit is redriven by itself
  (``next_redrive``): after ``redrive_after_s``, twice as long each time it is parked again,
  never more than ``redrive_max_wait_s``, jittered so that a target coming back is not met by
  every parked delivery at once; for ``redrive_for_hours`` after it was first parked. A
  rejection (any other 4xx) waits for a person.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from switchboard.notify import metrics
from switchboard.shared.logs import masked

T = TypeVar("T")


class DeliveryError(Exception):
    """A delivery that failed; ``retryable`` says whether trying again may help. The message
    goes to logs, the DLQ and ``switchboard dlq list``: a secret in it (a vendor echoing a
    token) is masked."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        retry_after_s: float | None = None,
        answered: bool | None = False,
        body: str = "",
    ):
        super().__init__(masked(message))
        # The vendor's whole answer, for what its error codes say (the message keeps only its
        # head, and is what logs and the DLQ show); never logged.
        self.body = body[:MAX_ERROR_BODY]
        self.retryable = retryable
        # A wait asked for past a week (a Retry-After of inf, or of the year 9999) is a week:
        # a redrive time past what dates hold parked nothing and lost the input's deliveries.
        self.retry_after_s = None if retry_after_s is None else min(retry_after_s, LONGEST_WAIT_S)
        # True: the target answered (a refusal of this request, or a wait it asked for): it is
        # up, so the failure says nothing against the channel's circuit. False: it did not
        # answer, or refused the channel's credentials. None: it was not reached (a template
        # or a local error): nothing either way.
        self.answered = answered
        self.attempts = 0
        self.retry_at: float | None = None  # Unix time: parked for a wait past max_wait_s
        self.delivered_to: list[str] | None = None  # email: those the relay took it for


MAX_ERROR_BODY = 65_536  # of a vendor's error answer kept on the error


class CircuitOpen(DeliveryError):
    def __init__(self, channel: str) -> None:
        super().__init__(f"circuit open for {channel}: parked without trying", retryable=False)


# Refusals of the moment, not of the request (RFC 9110, RFC 6585; the vendors' error pages):
# a timeout, a conflict with a concurrent update (Zendesk's 409), a record locked by one
# (HubSpot's 423: "Locks will last for 2 seconds"), too early, too many requests.
TRANSIENT_STATUSES = frozenset({408, 409, 423, 425, 429})
# 4xx that say the channel, not the request, is broken: a timeout at the target, and refused
# credentials (a revoked token fails every delivery: the circuit and its alert must open)
UNANSWERED = frozenset({401, 403, 407, 408})


def http_error(
    status: int,
    body: str,
    retry_after: str | None,
    wait_s: float | None = None,
    unanswered: frozenset[int] = UNANSWERED,
) -> DeliveryError:
    """The DeliveryError for an HTTP answer that is not a success. ``retry_after`` is the
    ``Retry-After`` header (seconds or an HTTP date); ``wait_s`` a wait the vendor's own terms
    ask for, used when there is no ``Retry-After``. A refusal that asks for a wait either way
    is retried, whatever its status (Salesforce's spent request limit is a 403, HubSpot's
    migration in progress a 477 with Retry-After). ``unanswered``: the statuses by which this
    vendor says the channel itself is broken (``UNANSWERED`` unless its API says otherwise)."""
    wait = retry_after_seconds(retry_after) if retry_after is not None else None
    retryable = (
        status in TRANSIENT_STATUSES or status >= 500 or wait_s is not None or wait is not None
    )
    return DeliveryError(
        f"HTTP {status}: {body[:300]}",
        retryable=retryable,
        retry_after_s=wait if wait is not None else wait_s,
        answered=status < 500
        and (status not in unanswered or wait is not None or wait_s is not None),
        body=body,
    )


LONGEST_WAIT_S = 7 * 24 * 3600.0  # the longest wait a vendor's answer is taken at its word for


def retry_after_seconds(value: str, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds: a number of seconds, or an HTTP date (RFC 9110)."""
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


class _WaitRetryAfter:
    """The wait the target asked for, exactly, else exponential backoff with jitter. (A wait
    longer than ``max_wait_s`` is never slept: ``with_retries`` parks it instead.)"""

    def __init__(self, max_wait_s: float) -> None:
        self.backoff = wait_random_exponential(multiplier=0.5, max=max_wait_s)

    def __call__(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, DeliveryError) and error.retry_after_s is not None:
            return error.retry_after_s
        return self.backoff(state)


async def with_retries(
    attempt: Callable[[], Awaitable[T]], channel: str, attempts: int, max_wait_s: float
) -> tuple[T, int]:
    """The result of ``attempt`` and how many tries it took; raises the last DeliveryError."""
    tries = 0
    try:
        async for retrying in AsyncRetrying(
            stop=stop_after_attempt(attempts),
            wait=_WaitRetryAfter(max_wait_s),
            retry=retry_if_exception(lambda e: _worth_waiting(e, max_wait_s)),
            reraise=True,
        ):
            with retrying:
                tries += 1
                metrics.DELIVERY_ATTEMPTS.labels(channel).inc()
                if tries > 1:
                    metrics.DELIVERY_RETRIES.labels(channel).inc()
                result = await attempt()
    except DeliveryError as error:
        error.attempts = tries
        if error.retryable and (error.retry_after_s or 0.0) > max_wait_s:
            error.retry_at = time.time() + (error.retry_after_s or 0.0)
        raise
    return result, tries


def _worth_waiting(error: BaseException, max_wait_s: float) -> bool:
    """Retry now: retryable, and the target does not ask for a wait past ``max_wait_s``."""
    if not isinstance(error, DeliveryError) or not error.retryable:
        return False
    return error.retry_after_s is None or error.retry_after_s <= max_wait_s


# Deliveries parked for a vendor's wait come back over this many seconds after it ends
VENDOR_WAIT_SPREAD_S = 5.0


class RedrivePolicy(NamedTuple):
    """notify.delivery's ``redrive_after_s``, ``redrive_max_wait_s`` and ``redrive_for_hours``."""

    after_s: float
    max_wait_s: float
    for_hours: float


def next_redrive(
    error: DeliveryError,
    parks: int,
    first_parked_at: datetime,
    now: datetime,
    policy: RedrivePolicy,
    jitter: Callable[[], float] = random.random,
) -> datetime | None:
    """When a delivery parked for the ``parks``-th time (since ``first_parked_at``) is tried
    again by itself, or None when it waits for a person. The vendor's own wait is honoured
    whatever the count; other failures back off from ``after_s``, doubling, jittered down by up
    to a half (``jitter`` in [0, 1)); after a vendor's wait, up to ``VENDOR_WAIT_SPREAD_S``
    later, so that what was parked for one rate limit does not all come back at its reset
    (the channel then holds its requests if the first of them meets the limit again)."""
    if error.retry_at is not None:
        spread = min(policy.after_s, VENDOR_WAIT_SPREAD_S) * jitter()
        return datetime.fromtimestamp(error.retry_at, UTC) + timedelta(seconds=spread)
    if not (error.retryable or isinstance(error, CircuitOpen)):
        return None
    if now - first_parked_at >= timedelta(hours=policy.for_hours):
        return None
    wait = min(policy.max_wait_s, policy.after_s * 2 ** min(parks - 1, 32))
    return now + timedelta(seconds=wait * (1.0 - jitter() / 2))


class CircuitBreaker:
    CLOSED, OPEN, HALF_OPEN = 0, 1, 2

    def __init__(self, channel: str, failures: int, cooldown_s: float) -> None:
        self.channel = channel
        self.failures = failures
        self.cooldown_s = cooldown_s
        self.state = self.CLOSED
        self._failed_in_a_row = 0
        self._opened_at = 0.0
        self._trial_in_flight = False
        self._publish()

    def allow(self, now: float | None = None) -> bool:
        """Whether a delivery may try now (a half-open circuit lets one trial through)."""
        now = time.monotonic() if now is None else now
        if self.state == self.OPEN and now - self._opened_at >= self.cooldown_s:
            self.state = self.HALF_OPEN
            self._publish()
        if self.state == self.HALF_OPEN:
            if self._trial_in_flight:
                return False
            self._trial_in_flight = True
            return True
        return self.state == self.CLOSED

    def release(self) -> None:
        """A try that never reached the target: it counts neither way, and a half-open
        circuit lets the next one through."""
        self._trial_in_flight = False

    def record(self, success: bool, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._trial_in_flight = False
        if success:
            self._failed_in_a_row = 0
            self.state = self.CLOSED
        else:
            self._failed_in_a_row += 1
            if self.state == self.HALF_OPEN or self._failed_in_a_row >= self.failures:
                self.state, self._opened_at = self.OPEN, now
        self._publish()

    def _publish(self) -> None:
        metrics.CIRCUIT_STATE.labels(self.channel).set(self.state)


class RateLimiter:
    """At most ``rate_per_s`` starts per second (evenly spaced); None: no limit."""

    def __init__(self, rate_per_s: float | None) -> None:
        self.interval = 1.0 / rate_per_s if rate_per_s else 0.0
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self._lock:
            now = time.monotonic()
            delay = self._next - now
            self._next = max(now, self._next) + self.interval
        if delay > 0:
            await asyncio.sleep(delay)
