"""Shared by the end-to-end tests that run a whole stack of their own."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from switchboard.cli.stack import Stack, StackOptions
from tests.conftest import CONFIG_FILE


@pytest.fixture
def own_stack(stack_of: Callable[[Path], Stack]) -> Stack:
    """A stack (not started) with its own broker and inbox: the faults a test injects (kills,
    outages, bursts) must not reach a shared cluster, nor kill another test's services."""
    return stack_of(CONFIG_FILE)


@pytest.fixture
def stack_of(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[Path], Stack]:
    """``stack_of(config_file)``: an own stack (see ``own_stack``) reading that file."""
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "SMTP_HOST", "SMTP_PORT"):
        monkeypatch.delenv(name, raising=False)

    def build(config_file: Path) -> Stack:
        return Stack(StackOptions(workdir=tmp_path / "run", config_file=config_file,
                                  replay_file=None))  # fmt: skip

    return build


async def wait_until(done: Callable[[], bool], seconds: float, stack: Stack,
                     sent: set[str]) -> None:  # fmt: skip
    """Poll ``done`` until it holds; fail with what a reader needs to tell a stuck service from a
    stuck observer after ``seconds``: the whole tally, the deliveries still awaited, whether the
    observer still reads, and the end of each service's log."""
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() >= deadline:
            pytest.fail(stuck_report(stack, sent), pytrace=False)
        await asyncio.sleep(0.5)


def stuck_report(stack: Stack, sent: set[str]) -> str:
    tally = stack.tally
    observing = stack._observing
    observer = "not started" if observing is None else (
        "reading" if not observing.done() else f"stopped: {observing!r}"
    )  # fmt: skip
    settled = sum(tally.deliveries.values()) + sum(tally.failed_deliveries.values())
    parts = [
        json.dumps(tally.summary(sent), indent=1),
        f"unaccounted: {sorted(tally.unaccounted(sent))[:10]}",
        f"deliveries settled {settled} of {tally.expected_deliveries}; observer {observer}",
    ]
    exits = {name: process.poll() for name, process in stack.processes.items()}
    parts.append(f"exit codes (None: running): {exits}")
    for service in [*stack.processes, "broker"]:
        parts.append(f"--- {service}.log, aiokafka's connection errors left out")
        parts.append(stack.log_tail(service, 15, leave_out='"logger": "aiokafka'))
    return "\n".join(parts)


async def wait_settled(stack: Stack, sent: set[str], seconds: float) -> None:
    """Until every tweet of ``sent`` is accounted for and every delivery settled."""
    await wait_until(
        lambda: not stack.tally.unaccounted(sent) and stack.tally.deliveries_settled(),
        seconds,
        stack,
        sent,
    )
