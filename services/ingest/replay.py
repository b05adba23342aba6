"""Replay: read a JSONL file of X API v2 tweets (or any items) at a steady rate."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


async def paced_lines(
    path: Path,
    rate_per_s: float,
    limit: int | None = None,
    done: Callable[[bytes], bool] = lambda _: False,
) -> AsyncIterator[tuple[int, bytes]]:
    """Yield ``(line number, raw line)`` for non-blank lines, ``rate_per_s`` per second.

    The schedule is absolute (line n is due at start + n / rate), so slow consumers of the
    iterator do not slow the average rate down, and nothing drifts over a long replay. Lines
    for which ``done`` is true (already published before a restart) are passed over at once:
    they count towards ``limit`` but take no time. ``done`` is asked of every line: one that
    was never published (a retweet, a bad line) may come before others that were.
    """
    started = time.monotonic()
    sent = 0
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if limit is not None and sent >= limit:
                return
            if not line.strip():
                continue
            if done(line):
                started -= 1 / rate_per_s  # the schedule moves on without it
                sent += 1
                continue
            delay = started + sent / rate_per_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            sent += 1
            yield number, line.rstrip(b"\r\n")


async def paced(
    items: Iterable[T], rate_per_s: float, limit: int | None = None
) -> AsyncIterator[T]:
    """Yield ``items`` at ``rate_per_s`` per second on the same absolute schedule."""
    started = time.monotonic()
    for sent, item in enumerate(items):
        if limit is not None and sent >= limit:
            return
        delay = started + sent / rate_per_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        yield item
