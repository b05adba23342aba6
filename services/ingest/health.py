"""How each ingest source is doing, for /readyz, metrics and logs.

A source never stops ingest by failing: it retries and says so here. ``/readyz`` stays ready
while a source fails (the webhook and the other sources still work) and lists each source's
state; ``switchboard_ingest_source_up`` is 0 for a failing source, for alerting.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from switchboard.ingest import metrics

State = Literal["starting", "ok", "failing", "waiting", "done"]  # done: a backfill


@dataclass
class SourceHealth:
    source: str  # filtered_stream, mentions, direct_message
    handle: str  # a handle, or the app for the stream
    state: State = "starting"
    failures: int = 0  # in a row
    last_error: str | None = None
    last_ok_at: float | None = None
    retry_at: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def ok(self, state: State = "ok") -> None:
        self.state, self.failures, self.retry_at = state, 0, None
        self.last_ok_at = time.time()
        metrics.SOURCE_UP.labels(self.source, self.handle).set(1)

    def failed(self, error: str, retry_in_s: float) -> None:
        self.state = "failing"
        self.failures += 1
        self.last_error = error[:300]
        self.retry_at = time.time() + retry_in_s
        metrics.SOURCE_UP.labels(self.source, self.handle).set(0)

    def waiting(self, why: str, retry_in_s: float) -> None:
        """Not failing, but not working either: a rate limit or a connection budget."""
        self.state = "waiting"
        self.detail["waiting_for"] = why
        self.retry_at = time.time() + retry_in_s

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state, "failures_in_a_row": self.failures}
        if self.last_error:
            out["last_error"] = self.last_error
        if self.last_ok_at:
            out["last_ok_at"] = round(self.last_ok_at, 3)
        if self.retry_at and self.state != "ok":
            out["retry_in_s"] = round(max(0.0, self.retry_at - time.time()), 3)
        return out | self.detail


class Health:
    """Every source's ``SourceHealth``, by ``source:handle``."""

    def __init__(self) -> None:
        self.sources: dict[str, SourceHealth] = {}

    def of(self, source: str, handle: str) -> SourceHealth:
        key = f"{source}:{handle}"
        if key not in self.sources:
            self.sources[key] = SourceHealth(source, handle)
        return self.sources[key]

    def report(self) -> dict[str, Any]:
        return {key: health.report() for key, health in sorted(self.sources.items())}
