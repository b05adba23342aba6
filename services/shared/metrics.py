"""The Prometheus metrics every service exports (prefix ``switchboard_``): readiness, Kafka
traffic and lag, batches, table sizes and end-to-end latency. Each service defines its own in
its ``metrics.py``; a process exposes the shared ones and its own on ``GET /metrics``.
"""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)

READY = Gauge("switchboard_ready", "1 when the service is ready to process", ["service"])
CONFIG_REJECTED = Gauge(
    "switchboard_config_rejected",
    "1 while the YAML file on disk is rejected and the service keeps what it read before: "
    "its next restart would fail on it",
    ["service"],
)

CONSUMED = Counter(
    "switchboard_messages_consumed_total", "Messages read from Kafka", ["service", "topic"]
)
PRODUCED = Counter(
    "switchboard_messages_produced_total",
    "Messages published to Kafka and acknowledged",
    ["service", "topic"],
)
DEAD_LETTERS = Counter(
    "switchboard_deadletter_total",
    "Messages sent to switchboard.deadletter, by stage and reason",
    ["service", "reason"],
)
CONSUMER_LAG = Gauge(
    "switchboard_consumer_lag",
    "Messages between a consumer group's position and the end of a partition",
    ["group", "topic", "partition"],
)


class LagReport:
    """``switchboard_consumer_lag`` of one consumer in ``group``: each report sets the lag of
    the partitions it holds and removes the series of those it held before and no longer
    does. A series left behind would go on reporting its last value beside the new owner's,
    and the dashboards and the lag alert sum by group."""

    def __init__(self, group: str) -> None:
        self.group = group
        self._held: set[tuple[str, int]] = set()

    def report(self, held: set[tuple[str, int]], lags: dict[tuple[str, int], int]) -> None:
        """``held``: the (topic, partition) the consumer holds now; ``lags``: those read."""
        for topic, partition in self._held - held:
            with contextlib.suppress(KeyError):
                CONSUMER_LAG.remove(self.group, topic, str(partition))
        for (topic, partition), lag in lags.items():
            CONSUMER_LAG.labels(self.group, topic, str(partition)).set(lag)
        self._held = set(held)


TIMER_FAILURES = Counter(
    "switchboard_timer_failures_total",
    "Runs of a faust timer (sweep) whose outputs the broker could not take; the next run asks "
    "again",
    ["service", "timer"],
)
TABLE_ENTRIES = Gauge(
    "switchboard_table_entries",
    "Entries held in memory by a changelog table (route conversations, notify ledger)",
    ["service", "table"],
)
BATCH_SECONDS = Histogram(
    "switchboard_batch_processing_seconds",
    "Time to process one consumed batch, publish its outputs and commit",
    ["service"],
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "switchboard_batch_size",
    "Records per consumed batch",
    ["service"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)

E2E_LATENCY = Histogram(
    "switchboard_e2e_latency_seconds",
    "Time from ingest to the end of a stage (classified, routed, delivered)",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
