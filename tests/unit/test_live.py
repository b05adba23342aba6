"""``switchboard run`` stops when asked, even while the stack is still starting."""

from __future__ import annotations

import asyncio

import pytest

from switchboard.shared.runtime import until_stopped


async def test_a_stop_while_starting_cancels_the_start():
    stop, reached = asyncio.Event(), []

    async def slow_start() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            reached.append("cleaned up")

    asyncio.get_running_loop().call_later(0.01, stop.set)
    assert await until_stopped(slow_start(), stop) is False
    assert reached == ["cleaned up"]


async def test_a_start_that_finishes_first_is_reported_started():
    async def start() -> None:
        await asyncio.sleep(0)

    assert await until_stopped(start(), asyncio.Event()) is True


async def test_a_start_that_fails_raises_its_error():
    async def start() -> None:
        raise RuntimeError("broker would not start")

    with pytest.raises(RuntimeError, match="broker would not start"):
        await until_stopped(start(), asyncio.Event())
