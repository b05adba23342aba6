"""Writes data/unlabeled/realpool.jsonl: real pool tweets nobody labeled, for self-training.

A student distilled from the shipped model (``switchboard classify train --teacher ...
--unlabeled data/unlabeled/realpool.jsonl``) learns the teacher's distributions on real tweets
it has no label for: the teacher's knowledge spread over more of the language people write.

Left out: every tweet of the pool that was labeled (any split: its label is known, and dev and
test must not be seen at all), and every tweet that nearly copies a tweet of the real or the
written dev or test split (the same check as the splits' own, ``near_duplicates``), so neither
selecting on dev nor reporting on test sees a text the student learnt. The pool itself was
cleared of the real-world evaluation set when it was assembled. A fixed seed draws
``COUNT`` of the rest: ``.venv/bin/python data/tools/realpool_unlabeled.py`` rewrites it
identically.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from switchboard.classify.data import near_duplicates

ROOT = Path(__file__).resolve().parents[2]

POOL = ROOT.parent / "shared" / "data" / "realpool" / "pool.jsonl"
REAL = ROOT / "data" / "labeled" / "real"
WRITTEN = ROOT / "data" / "labeled"
TARGET = ROOT / "data" / "unlabeled" / "realpool.jsonl"
COUNT = 8000
SEED = 17
CHUNK = 2000  # pool tweets compared with the held-out splits at once (bounds memory)


def held_out_texts() -> list[str]:
    return [
        json.loads(line)["text"]
        for folder in (REAL, WRITTEN)
        for split in ("dev", "test")
        for line in (folder / f"{split}.jsonl").open(encoding="utf-8")
        if line.strip()
    ]


def main() -> None:
    labeled = {
        json.loads(line)["id"]
        for line in (REAL / "annotations.jsonl").open(encoding="utf-8")
        if line.strip()
    }
    pool = [json.loads(line) for line in POOL.open(encoding="utf-8") if line.strip()]
    candidates = [row for row in pool if row["id"] not in labeled and row["text"].strip()]
    random.Random(SEED).shuffle(candidates)
    held_out = held_out_texts()
    kept: list[dict] = []
    near = 0
    for start in range(0, len(candidates), CHUNK):
        chunk = candidates[start : start + CHUNK]
        copies = {q for q, _, _ in near_duplicates([r["text"] for r in chunk], held_out)}
        near += len(copies)
        kept += [row for i, row in enumerate(chunk) if i not in copies]
        if len(kept) >= COUNT:
            break
    kept = kept[:COUNT]
    with TARGET.open("w", encoding="utf-8") as out:
        for row in kept:
            fields = {k: row[k] for k in ("id", "text", "source", "licence")}
            out.write(json.dumps(fields, ensure_ascii=False) + "\n")
    print(
        f"{len(kept)} of {len(candidates)} unlabeled pool tweets written to {TARGET}; "
        f"{len(labeled)} labeled left out, {near} near copies of dev or test left out"
    )


if __name__ == "__main__":
    main()
