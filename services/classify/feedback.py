"""Training on corrections: what people said a tweet's department and urgency were, as rows
``switchboard classify train --feedback`` learns from.

Corrections come from ``switchboard.feedback`` (route publishes one per correction, with the
tweet) or from a JSONL export of it (``switchboard classify export-feedback``). The latest
correction of a tweet wins; a correction without the tweet's text (route had forgotten the
tweet and the caller did not send it) or without both labels cannot teach anything and is
counted, not used. The rows go into ``<artifact>/feedback/train.jsonl``, so the artifact keeps
what it learnt from, and replace any training row of the same text.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from switchboard.shared import topics
from switchboard.shared.comparison import read_since
from switchboard.shared.events import Correction
from switchboard.shared.settings import KafkaSettings

FEEDBACK_WEIGHT = 3.0  # a person's correction of the company's own traffic outweighs a dataset row


def training_rows(corrections: Iterable[Correction]) -> tuple[list[dict[str, Any]], dict]:
    """One labelled row per corrected tweet (the latest correction wins), and what was left out
    and why."""
    latest: dict[str, Correction] = {}
    seen = 0
    for c in corrections:
        seen += 1
        if c.tweet_id and (c.tweet_id not in latest or c.made_at >= latest[c.tweet_id].made_at):
            latest[c.tweet_id] = c
    rows, left_out = [], Counter[str]()
    for c in latest.values():
        if c.tweet is None:
            left_out["no tweet text"] += 1
        elif c.department is None or c.urgency is None:
            left_out["one label only"] += 1
        else:
            rows.append({
                "id": c.tweet_id, "text": c.tweet.text, "department": c.department.value,
                "urgency": c.urgency.value, "source": f"feedback:{c.source}",
                "correction_id": c.correction_id, "by": c.by, "made_at": c.made_at.isoformat(),
                "model_version": c.model_version,
            })  # fmt: skip
    summary = {"corrections": seen, "tweets": len(latest), "rows": len(rows),
               "left_out": dict(left_out)}  # fmt: skip
    return rows, summary


def read_file(path: Path) -> list[Correction]:
    """Corrections exported as JSON lines; a line that is not one is an error naming it."""
    corrections = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            corrections.append(Correction.model_validate_json(line))
        except ValidationError as error:
            raise ValueError(f"{path}: line {number} is not a correction: {error}") from None
    return corrections


async def read_topic(kafka: KafkaSettings, since: datetime | None = None) -> list[Correction]:
    """Every correction on ``switchboard.feedback`` (since ``since``) but those of tweets their
    authors deleted since (``switchboard.compliance``): a deleted tweet is not trained on."""
    start = since or datetime.fromtimestamp(0, UTC)
    found = await read_since(kafka, start, names=(topics.FEEDBACK, topics.COMPLIANCE),
                             limit=10_000_000)  # fmt: skip
    deleted = {event.tweet_id for event in found[topics.COMPLIANCE]}
    return [c for c in found[topics.FEEDBACK] if c.tweet_id not in deleted]


def write_rows(rows: list[dict[str, Any]], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path
