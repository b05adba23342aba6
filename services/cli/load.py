"""Load for ``switchboard bench`` and ``soak``: the sample tweets, copied under fresh ids.

Ingest drops a tweet id it has seen (dedup window), so a long run cannot replay the 200 samples
over and over. Each copy of a sample gets new tweet and conversation ids, consistently within
the copy, so replies still belong to their conversation and routing sees the same mix of
departments, urgencies and conversations as in the samples.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import count as numbers
from pathlib import Path
from typing import Any


def _renumbered(tweet: dict[str, Any], new_id: dict[str, str]) -> dict[str, Any]:
    data = dict(tweet["data"])
    data["id"] = new_id[data["id"]]
    data["conversation_id"] = new_id.get(data.get("conversation_id", ""), data["id"])
    if data.get("referenced_tweets"):
        data["referenced_tweets"] = [
            {**ref, "id": new_id.get(ref["id"], ref["id"])} for ref in data["referenced_tweets"]
        ]
    return {**tweet, "data": data}


def copies(samples: list[dict[str, Any]], first_id: int) -> Iterator[dict[str, Any]]:
    """The samples over and over, every copy under ids from ``first_id`` upwards (endless)."""
    ids = numbers(first_id)
    while True:
        new_id = {sample["data"]["id"]: str(next(ids)) for sample in samples}
        for sample in samples:
            yield _renumbered(sample, new_id)


def write_load(samples: Path, tweets: int, out: Path, first_id: int) -> set[str]:
    """Write ``tweets`` renumbered copies of the replay file ``samples`` to ``out``; their ids."""
    originals = [json.loads(line) for line in samples.read_text().splitlines() if line.strip()]
    written: set[str] = set()
    with out.open("w", encoding="utf-8") as lines:
        for tweet, _ in zip(copies(originals, first_id), range(tweets), strict=False):
            lines.write(json.dumps(tweet, separators=(",", ":")) + "\n")
            written.add(tweet["data"]["id"])
    return written
