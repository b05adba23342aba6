"""How run_service starts a service: a stop asked while it starts is not made to wait."""

from __future__ import annotations

import asyncio

from switchboard.shared.runtime import until_stopped


class _Restoring:
    """A start that waits for its tables for as long as they take."""

    name = "restoring"
    ready = False

    def __init__(self) -> None:
        self.cancelled = False

    async def start(self) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise


class _Quick:
    name = "quick"
    ready = True

    async def start(self) -> None:
        return None


async def test_a_stop_while_starting_gives_the_start_up_at_once():
    service, stop = _Restoring(), asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, stop.set)
    started = await asyncio.wait_for(until_stopped(service.start(), stop), 1)  # type: ignore[arg-type]
    assert started is False and service.cancelled


async def test_a_start_that_ends_first_is_a_start():
    assert await until_stopped(_Quick().start(), asyncio.Event())  # type: ignore[arg-type]
