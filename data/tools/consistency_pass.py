"""Runs a consistency pass over real labels: batches for readers, proposals for the deciding
reader, decisions back into ``data/labeled/real/annotations.jsonl``.

A consistency pass re-reads every real tweet of some departments under one written rule
(``instructions/CONSISTENCY-PASS-2.md``); readers propose a new label where the current one
breaks it, a deciding reader decides each proposal, and the decision becomes the label. The
splits are then rebuilt by ``realpool_assemble.py`` (a tweet keeps its split: splits are dealt
by the label before any consistency pass, ``consistency.was``).

    .venv/bin/python data/tools/consistency_pass.py batches --departments marketing community \\
        --readers 8 --work /work/label/consist2
    .venv/bin/python data/tools/consistency_pass.py proposals --deciders 3 \\
        --work /work/label/consist2
    .venv/bin/python data/tools/consistency_pass.py apply --by "consistency pass 2" \\
        --work /work/label/consist2
    .venv/bin/python data/tools/realpool_assemble.py ../shared/data/realpool/pool.jsonl

Batches are shuffled across splits (seeded) so no reader knows a tweet's split.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from realpool_assemble import REAL, SPLITS, final_label, lines_of, write_jsonl

SEED = 29
CONTEXT = {  # what a reader is told about where a tweet comes from, by repository
    "AhsanM71/COMPSCI-4NL3-Project": "tweets about the top companies, 2015-2020",
    "AlvinKN/Phase4Project": "tweets from SXSW 2011 about Apple and Google",
    "Anuragiitk/Twitter-US-Sentiment-Analysis": "airline customers, 2015",
    "BotAlchemist/Stock-Sentimeter": "Indian company hashtags, 2022",
    "DanYurystovskyi/Bachelor-Thesis-code": "financial news, 2020s",
    "DongyuanZhou/MA615-Brand-Analysis": "tweets at @Starbucks and @DunkinDonuts, 2017",
    "RahmaAnwer/MacBook-Neo-Twitter-Sentiment-Analysis": "tweets about Apple's MacBook Neo, 2026",
    "S0l0m4n/aie3-twitter-customer-support": "customer support on Twitter, 2017",
    "fco-parga/EIT---Adidas": "tweets about adidas, 2021",
    "kechtel/ericsson": "customer support on Twitter, 2017",
    "monalisapatra26/data_visualization": "customer support on Twitter, 2017",
    "officinadata/2022_Scandalist": "tweets about company scandals, 2016-2022",
    "saraso2014/identifying-utility-outages": "tweets about power outages, 2019",
    "zfz/twitter_corpus": "tweets about Apple, Google, Microsoft and Twitter, 2011",
    "Yosingh1/Machine_Learning": "customer support on Twitter, 2017",
}


def reader_line(n: int, tweet: dict) -> dict:
    """What a reader sees of a pool tweet: its handle, its dataset's context and its text."""
    context = CONTEXT[tweet["source"].split(":")[0]]
    return {
        "n": n,
        "id": tweet["id"],
        "to": tweet.get("to"),
        "context": context,
        "text": tweet["text"],
    }


def split_rows(folder: Path) -> list[dict]:
    return [json.loads(line) for split in SPLITS for line in lines_of(folder / f"{split}.jsonl")]


def batches(
    folder: Path, work: Path, departments: list[str], sources: list[str], readers: int
) -> None:
    rows = [
        r
        for r in split_rows(folder)
        if r["department"] in departments or r["source"].split(":")[0] in sources
    ]
    random.Random(SEED).shuffle(rows)
    work.mkdir(parents=True, exist_ok=True)
    for k in range(readers):
        batch = [
            reader_line(n, r) | {"department": r["department"], "urgency": r["urgency"]}
            for n, r in enumerate(rows[k::readers], start=1)
        ]
        write_jsonl(work / f"consist{k + 1}.jsonl", batch)
    print(f"{len(rows)} tweets in {readers} batches under {work}")


def proposals(work: Path, deciders: int) -> None:
    read = {}
    for path in sorted(work.glob("consist[0-9]*.jsonl")):
        if not path.name.endswith(".out.jsonl"):
            read |= {r["id"]: r for r in map(json.loads, lines_of(path))}
    proposed = []
    for path in sorted(work.glob("consist*.out.jsonl")):  # a reader's proposed changes
        for change in map(json.loads, lines_of(path)):
            if change.get("summary"):
                continue
            tweet = read[change["id"]]
            first = f"{tweet['department']}/{tweet['urgency']}"
            label = f"{change['department']}/{change['urgency']}"
            if label != first:
                proposed.append(
                    {
                        "id": tweet["id"],
                        "to": tweet["to"],
                        "context": tweet["context"],
                        "text": tweet["text"],
                        "first": first,
                        "proposals": [
                            {"label": label, "reason": change["reason"], "by": path.stem}
                        ],
                    }
                )
    for k in range(deciders):
        share = [{"n": n} | p for n, p in enumerate(proposed[k::deciders], start=1)]
        write_jsonl(work / f"adj{k + 1}.jsonl", share)
    print(f"{len(proposed)} proposals in {deciders} files under {work}")


def apply(folder: Path, work: Path, by: str) -> None:
    decided = {}
    for path in sorted(work.glob("adj*.decided.jsonl")):
        questions = lines_of(work / path.name.replace(".decided", ""))
        asked = {r["n"]: r for r in map(json.loads, questions)}
        for decision in map(json.loads, lines_of(path)):
            decided[decision["id"]] = (asked[decision["n"]], decision)
    notes = [json.loads(line) for line in lines_of(folder / "annotations.jsonl")]
    changed = 0
    for note in notes:
        if note["id"] not in decided:
            continue
        asked, decision = decided.pop(note["id"])
        current = "/".join(final_label(note))
        if current != asked["first"]:
            raise ValueError(f"{note['id']}: read as {asked['first']}, annotated {current}")
        label = f"{decision['department']}/{decision['urgency']}"
        note.setdefault("consistency", {"was": current})  # the label splits were dealt by
        note.setdefault("proposals", []).extend(p | {"by": by} for p in asked["proposals"])
        note["decision"] = {
            "label": label,
            "chose": decision["chose"],
            "reason": decision["reason"],
            "by": f"{by}: deciding reader",
        }
        changed += label != current
    if decided:
        raise ValueError(f"decisions for tweets never annotated: {sorted(decided)[:5]}")
    write_jsonl(folder / "annotations.jsonl", notes)
    print(f"{changed} labels changed; rebuild the splits with realpool_assemble.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("batches", "proposals", "apply"))
    parser.add_argument("--work", type=Path, required=True, help="batches and answers")
    parser.add_argument("--folder", type=Path, default=REAL, help="splits and annotations")
    parser.add_argument("--departments", nargs="+", default=[], help="every tweet so labeled")
    parser.add_argument("--sources", nargs="+", default=[], help="every tweet of a repository")
    parser.add_argument("--readers", type=int, default=8)
    parser.add_argument("--deciders", type=int, default=4)
    parser.add_argument("--by", default="consistency pass")
    args = parser.parse_args()
    if args.step == "batches":
        batches(args.folder, args.work, args.departments, args.sources, args.readers)
    elif args.step == "proposals":
        proposals(args.work, args.deciders)
    else:
        apply(args.folder, args.work, args.by)


if __name__ == "__main__":
    main()
