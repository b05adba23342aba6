"""The whole pipeline under load: fixed offered rates, then the highest rate it sustains.

One stack (embedded broker, loopback inbox, classify, route, notify) stays up for the whole
measurement; each step restarts ingest on a fresh load file (renumbered samples, load.py) at
one offered rate and waits until every tweet is accounted for. Per step: the rate achieved
(tweets routed per second from the first ingested to the last routed), latency percentiles from
ingested to routed and to delivered (email on the loopback inbox), and each process's CPU.

A rate is *sustained* when the pipeline keeps up with it: it achieves at least 95 % of the
offered rate and 99 % of the tweets are routed within a second. Above its capacity the backlog,
and with it the latency, grows for as long as the step lasts, so both tests fail together.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from switchboard.cli.load import write_load
from switchboard.cli.resources import ResourceSampler
from switchboard.cli.stack import Stack
from switchboard.cli.tally import Tally, percentile

SUSTAINED_SHARE = 0.95
SUSTAINED_P99_MS = 1000.0
FIRST_ID = 2_000_000_000_000_000_000  # far above the samples' ids


@dataclass
class Step:
    offered_per_s: float
    sent: int
    achieved_per_s: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    delivered_p50_ms: float | None
    delivered_p95_ms: float | None
    delivered_p99_ms: float | None
    lost: int
    duplicates: int
    cpu_percent: dict[str, float] = field(default_factory=dict)  # 100 = one core

    @property
    def sustained(self) -> bool:
        return (
            self.lost == 0
            and self.achieved_per_s is not None
            and self.achieved_per_s >= SUSTAINED_SHARE * self.offered_per_s
            and self.p99_ms is not None
            and self.p99_ms <= SUSTAINED_P99_MS
        )

    def report(self) -> dict:
        return {**asdict(self), "sustained": self.sustained}


def _ms(values: list[float], q: float) -> float | None:
    found = percentile(values, q)
    return None if found is None else round(found, 1)


@dataclass
class LoadRun:
    """Steps of offered load against one running stack."""

    stack: Stack
    sampler: ResourceSampler
    samples: Path
    seconds: float = 20.0
    drain_s: float = 30.0
    progress: Callable[[str], None] = lambda _: None
    next_id: int = FIRST_ID

    async def step(self, rate: float) -> Step:
        count = max(1, round(rate * self.seconds))
        load = self.stack.options.workdir / f"load-{rate:g}-{self.next_id}.jsonl"
        sent = write_load(self.samples, count, load, self.next_id)
        self.next_id += count + 1000
        tally = Tally(subscriptions=self.stack.tally.subscriptions)
        self.stack.tally = tally
        self.progress(f"offering {count} tweets at {rate:g}/s")
        await self.stack.replay(load, rate)
        cpu_before, started = self.sampler.cpu_seconds(), time.monotonic()
        deadline = started + self.seconds + self.drain_s
        waiting = set(sent)
        while time.monotonic() < deadline:
            waiting = tally.unaccounted(waiting)
            if not waiting and tally.deliveries_settled():
                break
            await asyncio.sleep(0.2)
        cpu_after, elapsed = self.sampler.cpu_seconds(), time.monotonic() - started
        achieved = tally.routed_per_s()
        step = Step(
            offered_per_s=rate,
            sent=len(sent),
            achieved_per_s=None if achieved is None else round(achieved, 1),
            p50_ms=_ms(tally.routed_ms, 50),
            p95_ms=_ms(tally.routed_ms, 95),
            p99_ms=_ms(tally.routed_ms, 99),
            delivered_p50_ms=_ms(tally.delivered_ms, 50),
            delivered_p95_ms=_ms(tally.delivered_ms, 95),
            delivered_p99_ms=_ms(tally.delivered_ms, 99),
            lost=len(tally.unaccounted(sent)),
            duplicates=tally.duplicates(),
            cpu_percent={
                name: round(100 * (cpu_after[name] - cpu_before.get(name, 0.0)) / elapsed, 1)
                for name in sorted(cpu_after)
            },
        )
        load.unlink(missing_ok=True)
        return step

    async def highest_sustained(self, start: float, factor: float = 1.25,
                                most: int = 6) -> tuple[float | None, list[Step]]:  # fmt: skip
        """Raise the rate from ``start`` by ``factor`` until a step is not sustained."""
        best: float | None = None
        steps: list[Step] = []
        rate = start
        for _ in range(most):
            step = await self.step(rate)
            steps.append(step)
            if not step.sustained:
                break
            best = rate
            rate = round(rate * factor)
        return best, steps

    async def bisect(self, sustained: float, failed: float,
                     most: int = 2) -> tuple[float, list[Step]]:  # fmt: skip
        """Narrow the highest sustained rate between a sustained and a failed one."""
        steps: list[Step] = []
        for _ in range(most):
            rate = round((sustained + failed) / 2)
            if rate in (round(sustained), round(failed)):
                break
            step = await self.step(rate)
            steps.append(step)
            sustained, failed = (rate, failed) if step.sustained else (sustained, rate)
        return sustained, steps
