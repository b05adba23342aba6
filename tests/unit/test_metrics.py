"""Shared metrics: the consumer lag series follow the partitions a consumer holds."""

from __future__ import annotations

from prometheus_client import REGISTRY

from switchboard.shared.metrics import LagReport
from switchboard.shared.runtime import track_readiness


def lag(group: str, topic: str, partition: int) -> float | None:
    labels = {"group": group, "topic": topic, "partition": str(partition)}
    return REGISTRY.get_sample_value("switchboard_consumer_lag", labels)


def test_a_partition_given_away_stops_reporting_its_lag_here():
    report = LagReport("switchboard-unit-lag")
    report.report({("t", 0), ("t", 1), ("t", 2)}, {("t", 0): 5, ("t", 1): 7, ("t", 2): 0})
    assert [lag("switchboard-unit-lag", "t", p) for p in (0, 1, 2)] == [5, 7, 0]
    # A rebalance: partition 1 went to another replica, whose report is the one that counts;
    # partition 2's lag could not be read this time, and its last value stands.
    report.report({("t", 0), ("t", 2)}, {("t", 0): 3})
    assert [lag("switchboard-unit-lag", "t", p) for p in (0, 1, 2)] == [3, None, 0]
    report.report(set(), {})
    assert [lag("switchboard-unit-lag", "t", p) for p in (0, 1, 2)] == [None, None, None]


class _Starting:
    """A service as run_service sees it: ``ready`` changes as it starts and rebalances."""

    name = "readiness-test"
    ready = False


def test_ready_follows_the_service_at_each_scrape_not_only_at_start_and_stop():
    service = _Starting()
    track_readiness(service)  # type: ignore[arg-type]

    def ready() -> float | None:
        return REGISTRY.get_sample_value("switchboard_ready", {"service": service.name})

    assert ready() == 0.0  # starting: the series is there, and says so
    service.ready = True
    assert ready() == 1.0
    service.ready = False  # a rebalance: /readyz answers 503, the gauge says 0 with it
    assert ready() == 0.0
