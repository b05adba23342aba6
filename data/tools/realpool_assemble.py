"""Builds data/labeled/real/{train,dev,test}.jsonl from the real pool and the annotations.

Usage: ``.venv/bin/python data/tools/realpool_assemble.py ../shared/data/realpool/pool.jsonl``

``data/labeled/real/annotations.jsonl`` holds, for every tweet read, the first reader's label,
the labels other readers proposed instead (the reviewer who checked every line, the critical
pass over high and critical labels) and the deciding reader's decision. The final label is the
first reader's unless another reader proposed a different one; then it is the decision. The
text, source and licence come from the pool, verbatim.

Splits: near-duplicates (character n-gram cosine >= 0.75, as ``near_duplicates``) are grouped
and a group goes to one split whole, so no dev or test tweet has a near-copy in training. Groups
are dealt to test, dev and train by department and urgency (critical tweets, rare, get a larger
share in dev and test, where they set and check the alert threshold). A real tweet that nearly
copies a written test tweet is not trained on: it goes to the real test split; one that nearly
copies a written training or dev tweet is not tested on: it trains; one that nearly copies both
is left out (and marked ``left_out`` in the annotations). Seeded: the same inputs give the same
files.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from pathlib import Path

from switchboard.classify.data import near_duplicates, read_tweets

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT / "data" / "labeled" / "real"
WRITTEN = ROOT / "data" / "labeled"
SEED = 17
SHARES = {"test": 0.14, "dev": 0.11}  # the rest trains
CRITICAL_SHARES = {"test": 0.25, "dev": 0.20}
KEPT = ("id", "text", "department", "urgency", "source", "licence", "to", "created_at")


def final_label(note: dict) -> tuple[str, str]:
    if note.get("proposals"):
        if "decision" not in note:
            raise ValueError(f"{note['id']}: readers disagreed and nobody decided")
        department, urgency = note["decision"]["label"].split("/")
    else:
        department, urgency = note["first"].split("/")
    return department, urgency


def groups_of_near_duplicates(texts: list[str]) -> list[list[int]]:
    parent = list(range(len(texts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b, _ in near_duplicates(texts, texts):
        if a != b:
            parent[root(a)] = root(b)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(texts)):
        groups[root(i)].append(i)
    return list(groups.values())


def deal(rows: list[dict], groups: list[list[int]], rng: random.Random) -> dict[int, str]:
    """Split of each row: groups dealt per stratum (department, critical or not)."""
    strata: dict[tuple[str, bool], list[list[int]]] = defaultdict(list)
    for group in groups:
        first = rows[group[0]]
        strata[(first["department"], first["urgency"] == "critical")].append(group)
    split_of: dict[int, str] = {}
    for (_, critical), members in sorted(strata.items()):
        rng.shuffle(members)
        shares = CRITICAL_SHARES if critical else SHARES
        total = sum(len(g) for g in members)
        wanted = {name: round(share * total) for name, share in shares.items()}
        filled = dict.fromkeys(wanted, 0)
        for group in members:
            name = next((n for n in wanted if filled[n] < wanted[n]), "train")
            filled[name] = filled.get(name, 0) + len(group)
            for i in group:
                split_of[i] = name
    return split_of


def near_written(texts: list[str], splits: tuple[str, ...]) -> set[int]:
    """Real rows that nearly copy a tweet of the written ``splits``."""
    written = [r.text for s in splits for r in read_tweets(WRITTEN / f"{s}.jsonl")]
    return {q for q, _, _ in near_duplicates(texts, written)}


def mark_left_out(folder: Path, ids: set[str]) -> None:
    path = folder / "annotations.jsonl"
    notes = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    with path.open("w", encoding="utf-8") as out:
        for note in notes:
            note.pop("left_out", None)
            if note["id"] in ids:
                note["left_out"] = "nearly copies both a written training and a held-out tweet"
            out.write(json.dumps(note, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pool", type=Path)
    parser.add_argument("--folder", type=Path, default=REAL, help="annotations in, splits out")
    args = parser.parse_args()
    pool = {}
    for line in args.pool.open(encoding="utf-8"):
        tweet = json.loads(line)
        pool[tweet["id"]] = tweet
    with (args.folder / "annotations.jsonl").open(encoding="utf-8") as lines:
        notes = [json.loads(line) for line in lines]
    rows = []
    for note in sorted(notes, key=lambda n: n["id"]):
        department, urgency = final_label(note)
        tweet = pool[note["id"]]
        row = {k: tweet[k] for k in KEPT if k in tweet} | {
            "department": department,
            "urgency": urgency,
            "selected_for": note["selected_for"],
        }
        if note.get("proposals"):
            row["review"] = {
                "first": note["first"],
                "proposed": [p["label"] for p in note["proposals"]],
                "decided": note["decision"]["label"],
                "reason": note["decision"]["reason"],
            }
        rows.append(row)
    rng = random.Random(SEED)
    split_of = deal(rows, groups_of_near_duplicates([r["text"] for r in rows]), rng)
    texts = [r["text"] for r in rows]
    near_train = near_written(texts, ("train", "dev"))  # the written dev split only reports
    near_held_out = near_written(texts, ("test",))
    for i in near_train:
        split_of[i] = "train"
    for i in near_held_out:  # never train on a near-copy of a held-out tweet
        split_of[i] = "test"
    left_out = near_train & near_held_out
    for i in left_out:
        split_of[i] = "left out"
    mark_left_out(args.folder, {rows[i]["id"] for i in left_out})
    for split in ("train", "dev", "test"):
        chosen = [r for i, r in enumerate(rows) if split_of[i] == split]
        with (args.folder / f"{split}.jsonl").open("w", encoding="utf-8") as out:
            for row in chosen:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{split}: {len(chosen)} rows")


if __name__ == "__main__":
    main()
