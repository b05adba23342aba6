"""classify's Batcher: many tweets through one model call, and a text that breaks the model
fails alone."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from switchboard.classify.service import Batcher


class Model:
    """Stands in for the classifier: a text's 'prediction' is its upper case; 'boom' breaks
    any batch it is in."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def predict(self, texts: list[str]) -> list[str]:
        self.calls.append(list(texts))
        if "boom" in texts:
            raise ValueError("the model cannot read this")
        return [t.upper() for t in texts]


@contextlib.asynccontextmanager
async def batching(model: Model, size: int, wait_s: float) -> AsyncIterator[Batcher]:
    batcher = Batcher(model.predict, size, wait_s)  # type: ignore[arg-type]
    task = asyncio.create_task(batcher.run())
    try:
        yield batcher
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_texts_that_arrive_together_share_one_model_call_of_at_most_size():
    model = Model()
    async with batching(model, size=4, wait_s=0.2) as batcher:
        texts = [f"t{i}" for i in range(10)]
        predictions = await asyncio.gather(*(batcher.predict(t) for t in texts))
    assert predictions == [t.upper() for t in texts]  # each caller gets its own text's
    assert [len(c) for c in model.calls] == [4, 4, 2]
    assert [t for call in model.calls for t in call] == texts  # in arrival order


async def test_a_batch_waits_for_late_texts_only_until_wait_s_after_its_first():
    model = Model()
    async with batching(model, size=100, wait_s=0.05) as batcher:
        first = asyncio.create_task(batcher.predict("early"))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(batcher.predict("within"))
        await asyncio.gather(first, second)
        await batcher.predict("later")
    assert model.calls == [["early", "within"], ["later"]]


async def test_a_text_that_breaks_the_model_fails_alone():
    model = Model()
    async with batching(model, size=8, wait_s=0.05) as batcher:
        results = await asyncio.gather(
            *(batcher.predict(t) for t in ("a", "boom", "c")), return_exceptions=True
        )
    assert results[0] == "A" and results[2] == "C"
    assert isinstance(results[1], ValueError)
    assert model.calls[0] == ["a", "boom", "c"] and sorted(model.calls[1:]) == [
        ["a"],
        ["boom"],
        ["c"],
    ]


async def test_a_caller_that_gave_up_is_not_waited_for():
    """An input whose handler was cancelled (a rebalance, a stop) leaves the batch running for
    the others."""
    model = Model()
    async with batching(model, size=8, wait_s=0.05) as batcher:
        gone = asyncio.create_task(batcher.predict("gone"))
        await asyncio.sleep(0)
        gone.cancel()
        assert await batcher.predict("kept") == "KEPT"
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert all("gone" not in call for call in model.calls) and ["kept"] in model.calls
