"""An idle consumer's pause between empty fetches: it grows while the broker has nothing, to a
bound, and a fetch that brings records ends it (kafka.pause_when_idle)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from switchboard.shared import kafka
from switchboard.shared.kafka import IDLE_PAUSE_GROWTH, IDLE_STREAK, pause_when_idle


def scripted_consumer(answers: list[bool]) -> SimpleNamespace:
    """A consumer whose fetcher answers ``answers`` in turn (True: records came)."""
    replies = iter(answers)

    async def fetch(assignment: object, node_id: int, request: object) -> bool:
        return next(replies)

    return SimpleNamespace(_fetcher=SimpleNamespace(_proc_fetch_request=fetch))


async def pauses_after(answers: list[bool], monkeypatch: pytest.MonkeyPatch,
                       node_of: list[int] | None = None) -> list[float]:  # fmt: skip
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(round(seconds, 6))

    monkeypatch.setattr(kafka.asyncio, "sleep", sleep)
    consumer = scripted_consumer(answers)
    pause_when_idle(consumer, 0.02)  # type: ignore[arg-type]
    for node in node_of or [0] * len(answers):
        await consumer._fetcher._proc_fetch_request(None, node, None)
    return slept


async def test_the_pause_grows_only_once_nothing_came_for_a_while_and_to_a_bound(monkeypatch):
    slept = await pauses_after([False] * (IDLE_STREAK + 500), monkeypatch)
    assert slept == [0.02] * IDLE_STREAK + [0.04, 0.08] + [0.1] * 498
    assert max(slept) == pytest.approx(IDLE_PAUSE_GROWTH * 0.02)


async def test_records_end_the_pause_and_the_next_empty_fetch_starts_from_the_first(monkeypatch):
    idle = [False] * (IDLE_STREAK + 2)
    slept = await pauses_after([*idle, True, True, *idle], monkeypatch)
    grown = [0.02] * IDLE_STREAK + [0.04, 0.08]
    assert slept == grown + grown  # no pause after a fetch with records, then the first again


async def test_each_broker_is_paused_on_its_own(monkeypatch):
    """aiokafka fetches from each broker apart: one broker's silence does not slow another's."""
    idle = [False] * (IDLE_STREAK + 1)
    slept = await pauses_after([*idle, False, True], monkeypatch,
                               node_of=[1] * len(idle) + [2, 1])  # fmt: skip
    assert slept == [0.02] * IDLE_STREAK + [0.04, 0.02]


async def test_no_pause_when_it_is_off(monkeypatch):
    consumer = scripted_consumer([False])
    original = consumer._fetcher._proc_fetch_request
    pause_when_idle(consumer, 0)  # type: ignore[arg-type]
    assert consumer._fetcher._proc_fetch_request is original
