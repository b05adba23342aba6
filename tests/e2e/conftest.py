"""Shared by the end-to-end tests that run a whole stack of their own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from switchboard.cli.stack import Stack, StackOptions
from tests.conftest import CONFIG_FILE


@pytest.fixture
def own_stack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Stack:
    """A stack (not started) with its own broker and inbox: the faults a test injects (kills,
    outages, bursts) must not reach the session's broker, which never expires a dead member."""
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "SMTP_HOST", "SMTP_PORT"):
        monkeypatch.delenv(name, raising=False)
    return Stack(StackOptions(workdir=tmp_path / "run", config_file=CONFIG_FILE,
                              replay_file=None))  # fmt: skip


async def wait_until(done: Callable[[], bool], seconds: float, stack: Stack,
                     sent: set[str]) -> None:  # fmt: skip
    """Poll ``done`` until it holds; fail with the tally's summary after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, stack.tally.summary(sent)
        await asyncio.sleep(0.5)


async def wait_settled(stack: Stack, sent: set[str], seconds: float) -> None:
    """Until every tweet of ``sent`` is accounted for and every delivery settled."""
    await wait_until(
        lambda: not stack.tally.unaccounted(sent) and stack.tally.deliveries_settled(),
        seconds,
        stack,
        sent,
    )
