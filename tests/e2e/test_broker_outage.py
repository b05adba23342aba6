"""The broker unreachable for 30 seconds in the middle of a stream, frozen or stopped and
restarted: the services wait for it, carry on without restarting when it answers again, and
nothing is lost or routed two ways."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from switchboard.cli.load import write_load
from switchboard.cli.stack import Stack
from tests.conftest import SAMPLES
from tests.e2e.conftest import wait_settled

TWEETS, RATE, OUTAGE_S = 400, 20.0, 30.0


@pytest.mark.parametrize("outage", ["frozen", "stopped"])
async def test_a_broker_unreachable_for_thirty_seconds_loses_nothing(
    own_stack: Stack, tmp_path: Path, outage: str
):
    """Frozen (SIGSTOP), the broker holds every connection open and answers nothing, as behind a
    network partition: requests time out, heartbeats fail, the groups' sessions expire, and the
    clients must find their way back on their own. Stopped, it refuses connections for 30 s and
    comes back on the same port with the topics it saved (a broker restart, a rolling upgrade)."""
    stack = own_stack
    load = tmp_path / "tweets.jsonl"
    sent = write_load(SAMPLES, TWEETS, load, 5_000_000_000_000_000_000 + time.time_ns() // 1000)
    try:
        await stack.start()
        await stack.replay(load, RATE)
        pids = stack.pids()
        await asyncio.sleep(5)
        broker = stack.broker
        assert broker is not None
        if outage == "frozen":
            broker.freeze()
            await asyncio.sleep(OUTAGE_S)
            broker.freeze(False)
        else:
            await asyncio.to_thread(broker.stop)
            await asyncio.sleep(OUTAGE_S)
            await broker.start()
        await wait_settled(stack, sent, 240)
        # no crash loop: every service is the process that was running before the outage
        assert {k: v for k, v in stack.pids().items() if k != "broker"} == {
            k: v for k, v in pids.items() if k != "broker"
        }
    finally:
        await stack.stop()
    summary = stack.tally.summary(sent)
    assert summary["lost"] == 0 and summary["deadletter"] == 0
    # Settled counts a parked delivery too: none may be parked, every one was made.
    assert stack.tally.undelivered() == set(), stack.tally.failed_deliveries
    assert sum(stack.tally.deliveries.values()) >= stack.tally.expected_deliveries
    assert all(len(set(found)) == 1 for found in stack.tally.primary.values())
