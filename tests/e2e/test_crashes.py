"""kill -9 of each service in the middle of a stream, then a restart: nothing is lost, nothing
is routed two ways, every email delivery arrives under one Message-ID."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from switchboard.cli.load import write_load
from switchboard.cli.stack import Stack
from tests.conftest import SAMPLES
from tests.e2e.conftest import wait_settled

pytestmark = pytest.mark.e2e
TWEETS, RATE = 600, 40.0  # 15 seconds of stream


async def test_kill_9_of_each_service_mid_stream_loses_nothing(own_stack: Stack, tmp_path: Path):
    # Its own broker and inbox: the embedded broker keeps a killed member in its group for good,
    # so the session's broker must not see these crashes (the stack uses static membership).
    stack = own_stack
    load = tmp_path / "tweets.jsonl"
    sent = write_load(SAMPLES, TWEETS, load, 4_000_000_000_000_000_000 + time.time_ns() // 1000)
    try:
        await stack.start()
        await stack.replay(load, RATE)
        for service in ("classify", "route", "notify", "ingest"):
            await asyncio.sleep(2.5)
            await stack.crash_and_restart(service)  # ingest starts the file over
        await wait_settled(stack, sent, 180)
        await asyncio.sleep(2)  # anything republished late is counted too
    finally:
        await stack.stop()

    # What the killed route and notify could not remove stays in the run's folder, not in /tmp;
    # the replicas stopped at the end removed theirs.
    left = sorted(folder.name.rsplit("-", 1)[0] for folder in stack.temporary.iterdir())
    assert left == ["switchboard-notify", "switchboard-route"]

    tally = stack.tally
    assert tally.summary(sent)["lost"] == 0
    # At least once: a batch in flight at a crash may be published again, always the same way.
    routed_two_ways = {i: t for i, t in tally.primary.items() if len(set(t)) > 1}
    assert routed_two_ways == {}
    assert tally.duplicates() <= 2 * 100  # at most a batch per crash of route or classify
    # Every email delivery made, once per delivery as the mailbox sees it: SMTP has no
    # idempotency key, so an email accepted just before notify died (not yet on the ledger) is
    # sent again on restart, with the same Message-ID, which mail systems deduplicate by.
    assert stack.inbox is not None
    messages = stack.inbox.messages()
    by_delivery: dict[str, set[str]] = {}
    for message in messages:
        by_delivery.setdefault(message["X-Switchboard-Delivery-Id"], set()).add(
            message["Message-ID"]
        )
    assert all(len(ids) == 1 for ids in by_delivery.values())  # one Message-ID per delivery
    assert len(by_delivery) == tally.deliveries["email"]  # every delivery arrived
    assert len(messages) - len(by_delivery) <= 5  # resent: only what was in flight at the kill
