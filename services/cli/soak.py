"""``switchboard soak``: the whole pipeline at a steady rate for minutes; does anything grow?

The stack of ``run`` and ``bench`` (embedded broker, loopback inbox, four service processes)
takes renumbered sample tweets at ``--rate`` for ``--minutes``. Every few seconds it records
each process's resident memory and each consumer group's lag, read from the broker (committed
offsets against the ends of the partitions), so a stuck service cannot hide its lag.

Every tweet of the load is new: its id, its conversation. What Switchboard remembers about
them is bounded by time, not by count: ingest's duplicate filter (``dedup_window_hours``, 72 h),
route's conversations (``ttl_hours``, 72 h), notify's ledger (``ledger_retention_hours``, a
week) and its pending digests (``digest_minutes``, an hour). The soak runs on a copy of the
configuration where all of these last an eighth of the run, so that it reaches within minutes
the steady state production reaches after days, and shows that memory then stays flat. With
``--faults``, what keeps each tweet once lasts longer: long enough to outlast a restart
(``soak_config``). Its
notify redrives parked deliveries by itself after 10 seconds at first (``redrive_after_s``;
a minute in production), at most a minute apart, and a channel's open circuit tries again
after 5 seconds (``circuit_cooldown_s``; 30 in production), so that a short run sees them
through.

Verdicts, after the first quarter of the run (model loading, caches and the JIT warm up):
- memory is stable when no service's median RSS in the last quarter exceeds its median in the
  second quarter by more than ``MEMORY_GROWTH_LIMIT`` (the embedded broker is reported, not
  judged: it holds the topics' data in memory, so it grows with what is retained);
- lag is stable when the lag at the end of the run is no more than a few seconds of traffic and
  the last quarter's median lag is not above the second quarter's by more than that.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from switchboard.cli.load import write_load
from switchboard.cli.resources import ResourceSampler, sampling
from switchboard.cli.stack import Stack, StackOptions
from switchboard.cli.tally import percentile
from switchboard.cli.throughput import FIRST_ID
from switchboard.route.config import SlaConfig
from switchboard.shared.kafka import client_options
from switchboard.shared.settings import KafkaSettings

MEMORY_GROWTH_LIMIT = 0.10  # 10 % between the second and the last quarter
LAG_SECONDS_LIMIT = 5.0  # of traffic: lag above rate * this means the pipeline fell behind
GROUP_PREFIX = "switchboard-"
# With faults: the least a tweet's decision and an effect's record are kept. A restart on a
# loaded machine takes some 15 s (classify loads its model) before the records are read again.
FAULT_MEMORY_MINUTES = 2.0


async def group_lag(kafka: KafkaSettings) -> dict[str, int]:
    """Messages each ``switchboard-*`` consumer group has yet to commit, from the broker."""
    admin = AIOKafkaAdminClient(**client_options(kafka))
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **client_options(kafka))
    await admin.start()
    await consumer.start()
    try:
        groups = [g[0] for g in await admin.list_consumer_groups() if g[0].startswith(GROUP_PREFIX)]
        lag: dict[str, int] = {}
        for group in sorted(groups):
            committed = await admin.list_consumer_group_offsets(group)
            if not committed:
                continue
            ends = await consumer.end_offsets(list(committed))
            lag[group] = sum(
                max(0, ends[tp] - max(0, meta.offset)) for tp, meta in committed.items()
            )
        return lag
    finally:
        await consumer.stop()
        await admin.close()


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def quarters(values: list[float]) -> tuple[float, float]:
    """Median of the second quarter and of the last quarter of ``values``."""
    n = len(values)
    return _median(values[n // 4 : n // 2]), _median(values[3 * n // 4 :])


@dataclass
class SoakRecord:
    rss: dict[str, list[float]] = field(default_factory=dict)  # MB per sample
    lag: list[int] = field(default_factory=list)  # per sample, over groups but the digests
    lag_by_group: dict[str, int] = field(default_factory=dict)  # the largest seen
    end_lag: int | None = None  # once every tweet is through

    def memory_stable(self) -> bool:
        growth = self.memory_growth()
        return all(g <= MEMORY_GROWTH_LIMIT for name, g in growth.items() if name != "broker")

    def memory_growth(self) -> dict[str, float]:
        """Per process: last-quarter median RSS over second-quarter median, minus one."""
        growth = {}
        for name, values in sorted(self.rss.items()):
            early, late = quarters(values)
            growth[name] = round(late / early - 1, 3) if early else 0.0
        return growth

    def lag_stable(self, rate: float) -> bool:
        allowed = rate * LAG_SECONDS_LIMIT
        early, late = quarters([float(v) for v in self.lag])
        end = self.end_lag if self.end_lag is not None else (self.lag or [None])[-1]
        return end is not None and end <= allowed and late <= early + allowed


def soak_passed(summary: dict, faults: bool) -> bool:
    """The soak's verdict: nothing lost, routed two ways, left undelivered or dead-lettered
    after ingest, memory and lag flat, and nothing republished that no fault explains.
    Restarted processes start their memory over: with faults, memory is reported, not judged.
    Dead letters of ingest are the samples' own (a tweet addressed to no handle, a line that
    is no tweet); every later stage reads what the one before it wrote, so a dead letter there
    is a tweet the pipeline failed, with or without faults."""
    healthy = (faults or summary["memory_stable"]) and summary["lag_stable"]
    failed_after_ingest = sum(
        n for stage, n in summary["deadletter_by_stage"].items() if stage != "ingest"
    )
    intact = not (
        summary["lost"] or summary["duplicates"] or summary["undelivered"] or failed_after_ingest
    )
    explained = faults or not summary["republished"]
    return bool(healthy and intact and explained)


FAULTED_SERVICES = ("classify", "route", "notify", "ingest")


async def soak(
    config_file: Path,
    samples: Path,
    minutes: float,
    rate: float,
    say: Callable[[str], None],
    every_s: float = 5.0,
    faults: bool = False,
) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="switchboard-soak-"))
    expiry_hours = minutes / 60 / 8
    soaked = soak_config(config_file, workdir / "switchboard.yaml", expiry_hours, faults)
    stack = Stack(StackOptions(workdir=workdir, config_file=soaked, replay_file=None))
    sampler = ResourceSampler(stack.pids)
    record = SoakRecord()
    count = max(1, round(rate * minutes * 60))
    load = workdir / "load.jsonl"
    sent = write_load(samples, count, load, FIRST_ID)
    injected: list[str] = []
    try:
        async with sampling(sampler):
            await stack.start(progress=say)
            say(f"offering {count} tweets at {rate:g}/s for {minutes:g} min")
            await stack.replay(load, rate)
            chaos = asyncio.create_task(
                inject_faults(stack, minutes * 60, say, injected) if faults else asyncio.sleep(0)
            )
            await _watch(stack, sampler, record, sent, minutes * 60, every_s, say)
            await chaos
            redriven = await _until_parked_are_delivered(stack, say)
            # measured once the faults are over: a restart or the mail server's outage still
            # under way when the load is through leaves a backlog that is not the soak's end
            record.end_lag = await settled_lag(stack.kafka)
        summary = _summary(stack, sampler, record, sent, rate, minutes)
    finally:
        await stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    kept_minutes = decisions_kept_hours(expiry_hours, faults) * 60
    summary.update(expiry_minutes=round(expiry_hours * 60, 2),
                   conversations_and_ledger_minutes=round(kept_minutes, 2),
                   faults=injected, redriven=redriven)  # fmt: skip
    return summary


async def inject_faults(stack: Stack, seconds: float, say: Callable[[str], None],
                        injected: list[str]) -> None:  # fmt: skip
    """Spread over the load: kill -9 and restart each service in turn, then the mail server
    down for a while (notify retries, then parks what it cannot send). Each fault is due at a
    fixed share of the load from its start, so slow restarts do not push the later faults
    past its end (a fault overdue starts at once)."""
    gap = seconds / (len(FAULTED_SERVICES) + 2)
    started = time.monotonic()

    async def until_fault(number: int) -> None:
        await asyncio.sleep(max(0.0, started + number * gap - time.monotonic()))

    for number, service in enumerate(FAULTED_SERVICES, start=1):
        await until_fault(number)
        say(f"fault: kill -9 {service}, restart")
        await stack.crash_and_restart(service)
        injected.append(f"kill -9 {service}")
    assert stack.inbox is not None
    await until_fault(len(FAULTED_SERVICES) + 1)
    outage = min(60.0, gap)
    say(f"fault: the mail server down for {outage:.0f} s")
    stack.inbox.stop()
    await asyncio.sleep(outage)
    stack.inbox.restart()
    injected.append(f"mail server down {outage:.0f} s")


async def _until_parked_are_delivered(stack: Stack, say: Callable[[str], None],
                                      within_s: float = 180.0) -> int:  # fmt: skip
    """Wait for notify to redrive what it parked (nobody redrives by hand here); returns how
    many parked deliveries were delivered in the end."""
    deadline = time.monotonic() + within_s
    if stack.tally.undelivered():
        say(f"waiting for notify to redrive {len(stack.tally.undelivered())} parked deliveries")
    while stack.tally.undelivered() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.5)
    failed = {d for d, outcome in stack.tally.delivery_ids if outcome == "failed"}
    return len(failed - stack.tally.undelivered())


def decisions_kept_hours(expiry_hours: float, faults: bool) -> float:
    """How long route's conversations and notify's ledger last in the soak (``soak_config``)."""
    return max(expiry_hours, FAULT_MEMORY_MINUTES / 60) if faults else expiry_hours


def soak_config(original: Path, out: Path, expiry_hours: float, faults: bool = False) -> Path:
    """A copy of the configuration where everything remembered expires after ``expiry_hours``
    (conversations checked at least every 10 seconds), and every SLA ends within half of the
    conversations' expiry (an alerting SLA must end before its conversation is forgotten).

    With ``faults``, what keeps each tweet going one way and each effect once must outlast a
    restart and the reading again that follows it: ingest restarts its replay from the top, so
    its duplicate filter keeps the configured window; route's conversations (which hold each
    tweet's decision) and notify's ledger last at least ``FAULT_MEMORY_MINUTES``. A follow-up
    read again after its conversation was forgotten would be routed by the model alone, which
    may send it elsewhere than its owner did the first time."""
    config = yaml.safe_load(original.read_text(encoding="utf-8"))
    once_hours = decisions_kept_hours(expiry_hours, faults)
    ingest = config.setdefault("ingest", {})
    if not faults:
        ingest["dedup_window_hours"] = expiry_hours
        webhook = ingest.setdefault("x", {}).setdefault("webhook", {})
        webhook["max_event_age_hours"] = min(webhook.get("max_event_age_hours", 1), expiry_hours)
    route = config.setdefault("route", {})
    route.setdefault("conversations", {})["ttl_hours"] = once_hours
    sla = route.setdefault("sla", {})
    sla["check_interval_s"] = min(float(sla.get("check_interval_s", 30)), 10.0)
    # an alerting SLA must end before its conversation is forgotten: half the expiry at most
    half = once_hours * 60 / 2
    defaults = {urgency.value: given for urgency, given in SlaConfig().minutes.items()}
    minutes = sla.setdefault("minutes", defaults)
    minutes.update({urgency: min(float(given), half) for urgency, given in minutes.items()})
    for then in (rule.get("then", {}) for rule in route.get("rules", [])):
        if then.get("sla_minutes"):
            then["sla_minutes"] = min(float(then["sla_minutes"]), half)
    notify = config.setdefault("notify", {})
    notify["ledger_retention_hours"] = once_hours
    delivery = notify.setdefault("delivery", {})
    delivery["redrive_after_s"] = min(float(delivery.get("redrive_after_s", 60)), 10.0)
    delivery["redrive_max_wait_s"] = min(float(delivery.get("redrive_max_wait_s", 3600)), 60.0)
    # a circuit open longer than the first redrive's wait parks that redrive again
    delivery["circuit_cooldown_s"] = min(float(delivery.get("circuit_cooldown_s", 30)), 5.0)
    for subscription in notify.get("subscriptions", []):
        if subscription.get("digest_minutes"):
            subscription["digest_minutes"] = expiry_hours * 60
    out.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return out


async def _watch(stack: Stack, sampler: ResourceSampler, record: SoakRecord, sent: set[str],
                 seconds: float, every_s: float, say: Callable[[str], None]) -> None:  # fmt: skip
    started = time.monotonic()
    deadline = started + seconds + 60  # the last tweets need a moment after the load ends
    waiting = set(sent)
    while time.monotonic() < deadline:
        await asyncio.sleep(every_s)
        with contextlib.suppress(Exception):  # the broker busy for a moment is not a verdict
            lags = await group_lag(stack.kafka)
            record.lag.append(sum(lags.values()))
            for group, behind in lags.items():
                record.lag_by_group[group] = max(record.lag_by_group.get(group, 0), behind)
        for name, values in sampler.rss.items():
            record.rss[name] = [v / 2**20 for v in values]
        waiting = stack.tally.unaccounted(waiting)
        elapsed = time.monotonic() - started
        routed = len(sent) - len(waiting)
        say(f"{elapsed:5.0f} s: {routed}/{len(sent)} routed, lag {record.lag[-1:]}")
        if elapsed >= seconds and not waiting and stack.tally.deliveries_settled():
            break


async def settled_lag(kafka: KafkaSettings, within_s: float = 10.0) -> int | None:
    """The lag once the load is through: consumers commit just after publishing, so give
    them a moment; what is left after ``within_s`` is real."""
    deadline, left = time.monotonic() + within_s, None
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            lags = await group_lag(kafka)
            left = sum(lags.values())
            if left == 0:
                break
        await asyncio.sleep(0.5)
    return left


def _summary(stack: Stack, sampler: ResourceSampler, record: SoakRecord, sent: set[str],
             rate: float, minutes: float) -> dict:  # fmt: skip
    tally = stack.tally
    growth = record.memory_growth()
    p99 = percentile(tally.routed_ms, 99)
    return {
        "minutes": minutes,
        "rate_per_s": rate,
        "sent": len(sent),
        "routed": len(tally.primary),
        "deadletter": tally.dead_letters,
        "deadletter_by_stage": dict(sorted(tally.dead_letters_by_stage.items())),
        "delivered": sum(tally.deliveries.values()),
        "parked": len({d for d, outcome in tally.delivery_ids if outcome == "failed"}),
        "undelivered": len(tally.undelivered()),
        "lost": len(tally.unaccounted(sent)),
        # Routed two different ways: never acceptable. Republished the same way after a crash
        # (at least once; consumers deduplicate by tweet id): reported apart.
        "duplicates": sum(1 for found in tally.primary.values() if len(set(found)) > 1),
        "republished": tally.duplicates(),
        "p99_ms": None if p99 is None else round(p99, 1),
        "max_lag": max(record.lag, default=0),
        "max_lag_by_group": record.lag_by_group,
        "end_lag": record.end_lag,
        "peak_rss_mb": sampler.peak_rss_mb(),
        "memory_growth": growth,
        "memory_stable": record.memory_stable(),
        "lag_stable": record.lag_stable(rate),
    }
