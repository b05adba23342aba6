"""The broker gone for 30 seconds in the middle of a stream: the services wait for it, reconnect
without restarting, and nothing is lost."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from switchboard.cli.load import write_load
from switchboard.cli.stack import Stack, StackOptions
from tests.conftest import CONFIG_FILE, SAMPLES

pytestmark = pytest.mark.e2e
TWEETS, RATE, OUTAGE_S = 400, 20.0, 30.0


async def test_a_broker_gone_for_thirty_seconds_loses_nothing(monkeypatch, tmp_path: Path):
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "SMTP_HOST", "SMTP_PORT"):  # its own broker
        monkeypatch.delenv(name, raising=False)
    load = tmp_path / "tweets.jsonl"
    sent = write_load(SAMPLES, TWEETS, load, 5_000_000_000_000_000_000 + time.time_ns() // 1000)
    stack = Stack(StackOptions(workdir=tmp_path / "run", config_file=CONFIG_FILE,
                               replay_file=None))  # fmt: skip
    try:
        await stack.start()
        await stack.replay(load, RATE)
        pids = stack.pids()
        await asyncio.sleep(5)
        assert stack.broker is not None
        await asyncio.to_thread(stack.broker.stop)  # same port and data when it comes back
        await asyncio.sleep(OUTAGE_S)
        await stack.broker.start()
        deadline = time.monotonic() + 240
        while not (stack.tally.accounted(sent) == sent and stack.tally.deliveries_settled()):
            assert time.monotonic() < deadline, stack.tally.summary(sent)
            await asyncio.sleep(0.5)
        # no crash loop: every service is the process that was running before the outage
        assert {k: v for k, v in stack.pids().items() if k != "broker"} == {
            k: v for k, v in pids.items() if k != "broker"
        }
    finally:
        await stack.stop()
    summary = stack.tally.summary(sent)
    assert summary["lost"] == 0 and summary["deadletter"] == 0
    assert all(len(set(found)) == 1 for found in stack.tally.primary.values())
