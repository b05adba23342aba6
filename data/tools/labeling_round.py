"""Runs a labeling round of real tweets: batches for first readers, every label to a second
reader, disagreements to a deciding reader, and the round's notes into
``data/labeled/real/annotations.jsonl``.

    .venv/bin/python data/tools/realpool_select.py POOL PREDICTIONS SELECTION --round 7 ...
    .venv/bin/python data/tools/labeling_round.py batches --selection SELECTION \\
        --first-batch 20 --batches 4 --work /work/label/round7
    (first readers: instructions/LABELING.md; answers in batchK.labels.jsonl)
    .venv/bin/python data/tools/labeling_round.py reviews --work /work/label/round7
    (second readers: instructions/REVIEW.md; disagreements in reviewK.review.jsonl)
    .venv/bin/python data/tools/labeling_round.py disagreements --deciders 2 --work ...
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


def disagreements(work: Path, deciders: int) -> None:
    disputed = []
    for number, _ in first_batches(work):
        read = {r["id"]: r for r in read_jsonl(work / f"review{number}.jsonl")}
        for change in read_jsonl(work / f"review{number}.review.jsonl"):
            if change.get("summary"):
                continue
            tweet = read[change["id"]]
            first = f"{tweet['department']}/{tweet['urgency']}"
            label = label_of(change, change["id"])
            if label != first:
                proposal = {"label": label, "reason": change["reason"], "by": "reviewer"}
                disputed.append(
                    {k: tweet[k] for k in ("id", "to", "context", "text")}
                    | {"first": first, "proposals": [proposal]}
                )
    for k in range(deciders):
        share = [{"n": n} | d for n, d in enumerate(disputed[k::deciders], start=1)]
        write_jsonl(work / f"adj{k + 1}.jsonl", share)
    print(f"{len(disputed)} disagreements in {deciders} files under {work}")


def apply(folder: Path, selection: Path, work: Path) -> None:
    chosen = {t["id"]: t["selected_for"] for t in read_jsonl(selection)}
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
    for number, _ in first_batches(work):
        for tweet in read_jsonl(work / f"review{number}.jsonl"):
            if tweet["id"] in annotated:
                raise ValueError(f"{tweet['id']} is annotated already")
            note = {
                "id": tweet["id"],
                "batch": number,
                "selected_for": chosen[tweet["id"]],
                "first": f"{tweet['department']}/{tweet['urgency']}",
                "reviewed": True,
            }
            if tweet["id"] in decided:
                asked, decision = decided.pop(tweet["id"])
                note["proposals"] = asked["proposals"]
                note["decision"] = {
                    "label": label_of(decision, tweet["id"]),
                    "chose": decision["chose"],
                    "reason": decision["reason"],
                }
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
    args = parser.parse_args()
    if args.step == "batches":
        batches(args.selection, args.work, args.first_batch, args.batches)
    elif args.step == "reviews":
        reviews(args.work)
    elif args.step == "disagreements":
        disagreements(args.work, args.deciders)
    else:
        apply(args.folder, args.selection, args.work)


if __name__ == "__main__":
    main()
