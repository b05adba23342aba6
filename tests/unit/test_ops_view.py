"""The ops page's comparison of live and shadow labels, with the reading of Kafka and the
comparison replaced (pure scheduling logic): how often route does the work, whatever is asked."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from switchboard.route import ops
from switchboard.shared.settings import KafkaSettings


async def test_the_comparison_is_made_at_most_once_per_period_whatever_the_hours(monkeypatch):
    made: list[float] = []

    async def read_since(*_args: Any, **_kwargs: Any) -> dict[str, list]:
        return {topic: [] for topic in (ops.topics.CLASSIFIED, ops.topics.SHADOW,
                                        ops.topics.FEEDBACK)}  # fmt: skip

    def compare(*_args: Any, **_kwargs: Any) -> dict[str, Any]:
        made.append(time.monotonic())
        return {}

    monkeypatch.setattr(ops, "read_since", read_since)
    monkeypatch.setattr(ops, "compare", compare)
    monkeypatch.setattr(ops, "COMPARE_EVERY_S", 0.5)
    view = ops.OpsView(KafkaSettings(bootstrap_servers="127.0.0.1:9"))
    await asyncio.gather(*(view.comparison(hours) for hours in (1, 2, 3)))
    assert len(made) == 3
    gaps = [b - a for a, b in zip(made, made[1:], strict=False)]
    assert all(gap >= 0.45 for gap in gaps), gaps
    await view.comparison(3)  # within the period: the report made, not another
    assert len(made) == 3
