"""X's rate limits, shared the way X counts them.

X counts app-only limits per app and user-context limits per user, per endpoint: every handle
polled with one app's token draws on the same window. So there is one ``RateWindow`` per
credential and endpoint (``XApi`` holds one per endpoint), and every caller of that endpoint
with that credential takes its turn from it:

- while X's last answer said requests remain (``x-rate-limit-remaining``), callers go, at most
  as many at once as remain;
- when none remain, or X answered 429, callers wait for ``x-rate-limit-reset``;
- when nothing is known (the first call, or a window that has just reset) one caller goes
  alone and the others wait for its answer, so a reset does not release every poller at once
  into a fresh 429 (the thundering herd).

``x-rate-limit-reset`` is a moment by X's clock. It is read against the ``date`` of the same
answer (how long until the reset, by X), not against this machine's clock: a clock a minute
ahead of X's would find every reset past and retry a 429 at once, one a minute behind would
wait a minute too long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from email.utils import parsedate_to_datetime

from switchboard.ingest import metrics

log = logging.getLogger(__name__)

# X's documented minimum wait after a 429 that carries no reset time.
DEFAULT_WAIT_S = 60.0
# The least wait after a 429 whose reset has come (X's reset is in whole seconds).
MIN_WAIT_S = 1.0


def seconds_to_reset(headers: Mapping[str, str], received_at: float) -> float | None:
    """How long after ``received_at`` X's rate window resets, by X's own clock (the answer's
    ``date``; this machine's clock where X sent none). None: X named no reset."""
    try:
        reset = float(headers["x-rate-limit-reset"])
    except (KeyError, ValueError):
        return None
    try:
        now_at_x = parsedate_to_datetime(headers["date"]).timestamp()
    except (KeyError, TypeError, ValueError, IndexError):
        now_at_x = received_at
    return max(0.0, reset - now_at_x)


class RateWindow:
    """One credential's window on one endpoint (see the module docstring)."""

    def __init__(
        self, credential: str, endpoint: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.credential = credential
        self.endpoint = endpoint
        self.clock = clock
        self.remaining: int | None = None  # None: unknown, one probe at a time
        self.reset_at = 0.0  # when the window resets, by this machine's clock
        self.window: float | None = None  # X's x-rate-limit-reset: names the window
        self.in_flight = 0
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[Turn]:
        """Wait for a turn, make one request in it, report X's answer with ``Turn.answered``."""
        await self._acquire()
        turn = Turn(self.clock)
        try:
            yield turn
        finally:
            await self._release(turn)

    async def _acquire(self) -> None:
        async with self._changed:
            while True:
                now = self.clock()
                if self.reset_at and now >= self.reset_at:
                    self.remaining, self.reset_at = None, 0.0  # a new window: unknown again
                if self.remaining is None and self.in_flight == 0:
                    break  # the probe
                if self.remaining is not None and self.remaining > self.in_flight:
                    break
                wait = self.reset_at - now if self.remaining == 0 and not self.in_flight else None
                await self._wait(wait)
            self.in_flight += 1

    async def _wait(self, seconds: float | None) -> None:
        """Until another caller's answer changes the state, or the window resets."""
        if seconds is not None and seconds > 0:
            metrics.RATE_LIMIT_WAITS.labels(self.endpoint).inc()
            metrics.RATE_LIMIT_WAIT_SECONDS.labels(self.endpoint).inc(seconds)
            log.info(
                "waiting for the rate limit",
                extra={"endpoint": self.endpoint, "credential": self.credential,
                       "seconds": round(seconds, 3)},
            )  # fmt: skip
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), seconds if seconds else None)

    async def _release(self, turn: Turn) -> None:
        async with self._changed:
            self.in_flight -= 1
            if turn.limited:
                now = self.clock()
                self.remaining, self.window = 0, turn.window
                reset_at = now + DEFAULT_WAIT_S if turn.reset_at is None else turn.reset_at
                self.reset_at = max(reset_at, now + MIN_WAIT_S)
                metrics.RATE_LIMITED.labels(self.endpoint).inc()
            elif turn.remaining is not None:
                # Answers in one window can come back out of order: the fewest left is the
                # latest count, and an earlier answer arriving last must not raise it again.
                same_window = self.remaining is not None and turn.window == self.window
                self.remaining = (
                    min(self.remaining, turn.remaining) if same_window else turn.remaining
                )
                self.window = turn.window if turn.window is not None else self.window
                self.reset_at = turn.reset_at or self.reset_at
                if self.remaining == 0 and not self.reset_at:
                    # spent, and X named no reset: wait as for a 429 without one (a wait of
                    # "until 0" would be no wait, and callers would spin)
                    self.reset_at = self.clock() + DEFAULT_WAIT_S
            elif self.remaining is None and turn.answered_at is None:
                pass  # no answer (a network error): the next caller probes again
            if self.remaining is not None:
                metrics.RATE_LIMIT_REMAINING.labels(self.credential, self.endpoint).set(
                    self.remaining
                )
            self._changed.notify_all()


class Turn:
    """What X said about the window in its answer to one request."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.remaining: int | None = None
        self.window: float | None = None  # X's x-rate-limit-reset, as sent
        self.reset_at: float | None = None  # when that is, by this machine's clock
        self.limited = False
        self.answered_at: float | None = None

    def answered(self, headers: Mapping[str, str], *, limited: bool = False) -> None:
        self.answered_at = self.clock()
        self.limited = limited
        with contextlib.suppress(KeyError, ValueError):
            self.remaining = int(headers["x-rate-limit-remaining"])
        with contextlib.suppress(KeyError, ValueError):
            self.window = float(headers["x-rate-limit-reset"])
        reset_in = seconds_to_reset(headers, self.answered_at)
        if reset_in is not None:
            self.reset_at = self.answered_at + reset_in
