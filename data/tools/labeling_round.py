"""Runs a labeling round of real tweets: batches for first readers, every label to a second
reader, disagreements to a deciding reader, and the round's notes into
``data/labeled/real/annotations.jsonl``.

The second reader either checks the first reader's labels (``reviews``: rounds 6-7) or, blind,
labels the same batch without seeing them (``--blind``, round 8 on: answers in
``batchK.second.jsonl``), so that the agreement rate measures two independent readings.

    .venv/bin/python data/tools/realpool_select.py POOL PREDICTIONS SELECTION --round 7 ...
    .venv/bin/python data/tools/labeling_round.py batches --selection SELECTION \\
        --first-batch 20 --batches 4 --work /work/label/round7
    (first readers: instructions/LABELING.md; answers in batchK.labels.jsonl)
    .venv/bin/python data/tools/labeling_round.py reviews --work /work/label/round7
    (second readers: instructions/REVIEW.md; disagreements in reviewK.review.jsonl)
    .venv/bin/python data/tools/labeling_round.py disagreements --deciders 2 --work ...
    (or, with blind second readers, who labeled batchK.jsonl into batchK.second.jsonl:
    labeling_round.py disagreements --blind --deciders 2 --work ...)
    (deciding readers: instructions/ADJUDICATION.md; answers in adjK.decided.jsonl)
    .venv/bin/python data/tools/labeling_round.py apply --selection SELECTION --work ...
    .venv/bin/python data/tools/realpool_assemble.py POOL --append-round 7

Every step checks the answers it reads: one line per tweet asked, labels in the taxonomy, no
tweet annotated twice. A reader sees a tweet's handle, its dataset's context and its text.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from consistency_pass import reader_line
from realpool_assemble import REAL, lines_of, write_jsonl

from switchboard.shared.labels import DEPARTMENTS, URGENCIES


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in lines_of(path)]


def label_of(answer: dict, where: str) -> str:
    if answer["department"] not in DEPARTMENTS or answer["urgency"] not in URGENCIES:
        raise ValueError(f"{where}: {answer['department']}/{answer['urgency']} is not a label")
    return f"{answer['department']}/{answer['urgency']}"


def answers(asked_path: Path, answer_path: Path) -> dict[str, dict]:
    """The first reader's labels of one batch, by id: exactly one per tweet asked."""
    asked = read_jsonl(asked_path)
    given = {a["id"]: a for a in read_jsonl(answer_path) if not a.get("summary")}
    missing = [t["id"] for t in asked if t["id"] not in given]
    if missing or len(given) != len(asked):
        raise ValueError(f"{answer_path}: {len(missing)} tweets unlabeled, {len(given)} answers")
    return given


def batches(selection: Path, work: Path, first_batch: int, count: int) -> None:
    tweets = read_jsonl(selection)
    work.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        batch = [reader_line(n, t) for n, t in enumerate(tweets[k::count], start=1)]
        write_jsonl(work / f"batch{first_batch + k}.jsonl", batch)
    print(f"{len(tweets)} tweets in batches {first_batch}-{first_batch + count - 1} under {work}")


def first_batches(work: Path) -> list[tuple[int, Path]]:
    paths = [p for p in work.glob("batch*.jsonl") if p.stem[len("batch") :].isdigit()]
    return sorted((int(p.stem[len("batch") :]), p) for p in paths)


def reviews(work: Path) -> None:
    for number, path in first_batches(work):
        given = answers(path, work / f"batch{number}.labels.jsonl")
        rows = []
        for tweet in read_jsonl(path):
            department, urgency = label_of(given[tweet["id"]], tweet["id"]).split("/")
            rows.append(tweet | {"department": department, "urgency": urgency})
        write_jsonl(work / f"review{number}.jsonl", rows)
    print(f"review files for batches {[n for n, _ in first_batches(work)]} under {work}")


def first_labels(work: Path) -> list[tuple[int, dict, str]]:
    """(batch, tweet, the first reader's label) of every tweet of the round, in batch order."""
    rows = []
    for number, path in first_batches(work):
        given = answers(path, work / f"batch{number}.labels.jsonl")
        rows += [(number, t, label_of(given[t["id"]], t["id"])) for t in read_jsonl(path)]
    return rows


def second_labels(work: Path, blind: bool) -> dict[str, tuple[str, str]]:
    """The second reader's label and reason, by id: every tweet when blind, otherwise only
    where the reviewer changed something."""
    second = {}
    for number, path in first_batches(work):
        if blind:
            given = answers(path, work / f"batch{number}.second.jsonl")
            reason = "the blind second reader's label"
            second |= {i: (label_of(a, i), reason) for i, a in given.items()}
            continue
        for change in read_jsonl(work / f"review{number}.review.jsonl"):
            if not change.get("summary"):
                second[change["id"]] = (label_of(change, change["id"]), change["reason"])
    return second


def disagreements(work: Path, deciders: int, blind: bool) -> None:
    second = second_labels(work, blind)
    rows = first_labels(work)
    disputed = []
    for _, tweet, first in rows:
        label, reason = second.get(tweet["id"], (first, ""))
        if label != first:
            by = "second reader" if blind else "reviewer"
            disputed.append(
                {k: tweet[k] for k in ("id", "to", "context", "text")}
                | {"first": first, "proposals": [{"label": label, "reason": reason, "by": by}]}
            )
    for k in range(deciders):
        share = [{"n": n} | d for n, d in enumerate(disputed[k::deciders], start=1)]
        write_jsonl(work / f"adj{k + 1}.jsonl", share)
    agreed = 1 - len(disputed) / len(rows)
    print(
        f"{len(disputed)} disagreements of {len(rows)} ({agreed:.1%} agreement) "
        f"in {deciders} files under {work}"
    )


def apply(folder: Path, selection: Path, work: Path, blind: bool) -> None:
    chosen = {t["id"]: t["selected_for"] for t in read_jsonl(selection)}
    second_labels_of = second_labels(work, blind) if blind else {}
    decided = {}
    for path in sorted(work.glob("adj*.decided.jsonl")):
        asked = {r["n"]: r for r in read_jsonl(work / path.name.replace(".decided", ""))}
        if len(read_jsonl(path)) != len(asked):
            raise ValueError(f"{path}: {len(asked)} asked, {len(read_jsonl(path))} decided")
        for decision in read_jsonl(path):
            decided[decision["id"]] = (asked[decision["n"]], decision)
    notes = read_jsonl(folder / "annotations.jsonl")
    annotated = {n["id"] for n in notes}
    added = []
    for number, tweet, first in first_labels(work):
        if tweet["id"] in annotated:
            raise ValueError(f"{tweet['id']} is annotated already")
        note = {
            "id": tweet["id"],
            "batch": number,
            "selected_for": chosen[tweet["id"]],
            "first": first,
            "reviewed": True,
        }
        if blind:
            note["second"] = second_labels_of[tweet["id"]][0]
        if tweet["id"] in decided:
            asked, decision = decided.pop(tweet["id"])
            note["proposals"] = asked["proposals"]
            note["decision"] = {
                "label": label_of(decision, tweet["id"]),
                "chose": decision["chose"],
                "reason": decision["reason"],
            }
        elif blind and note["second"] != first:
            raise ValueError(f"{tweet['id']}: the readers disagree and nobody decided")
        added.append(note)
    if decided:
        raise ValueError(f"decisions for tweets of no batch: {sorted(decided)[:5]}")
    write_jsonl(folder / "annotations.jsonl", notes + added)
    print(f"{len(added)} notes added; append the round with realpool_assemble.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("batches", "reviews", "disagreements", "apply"))
    parser.add_argument("--work", type=Path, required=True, help="batches and answers")
    parser.add_argument("--folder", type=Path, default=REAL, help="annotations")
    parser.add_argument("--selection", type=Path, help="realpool_select.py's output")
    parser.add_argument("--first-batch", type=int, help="number of the round's first batch")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--deciders", type=int, default=2)
    parser.add_argument(
        "--blind", action="store_true", help="second readers labeled the batches themselves"
    )
    args = parser.parse_args()
    if args.step == "batches":
        batches(args.selection, args.work, args.first_batch, args.batches)
    elif args.step == "reviews":
        reviews(args.work)
    elif args.step == "disagreements":
        disagreements(args.work, args.deciders, args.blind)
    else:
        apply(args.folder, args.selection, args.work, args.blind)


if __name__ == "__main__":
    main()
