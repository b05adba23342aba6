"""Builds data/labeled/real/{train,dev,test}.jsonl from the real pool and the annotations.

Usage: ``.venv/bin/python data/tools/realpool_assemble.py ../shared/data/realpool/pool.jsonl``
rebuilds every split (rounds 1-4 dealt, then each round of ``APPENDED_ROUNDS`` appended);
``... pool.jsonl --append-round 5`` redoes only round 5's append on the current files.

``data/labeled/real/annotations.jsonl`` holds, for every tweet read, the first reader's label,
the labels other readers proposed instead (the reviewer who checked every line, the critical
pass over high and critical labels, the consistency passes: communications and critical labels,
marketing and community, power outages) and the deciding reader's decision. The final label is
the first reader's unless another reader proposed a different one; then it is the last
decision. The text, source and licence come from the pool, verbatim.

Splits of rounds 1-4: near-duplicates (character n-gram cosine >= 0.75, as ``near_duplicates``)
are grouped and a group goes to one split whole, so no dev or test tweet has a near-copy in
training. Groups are dealt to test, dev and train by department and urgency (critical tweets,
rare, get a larger share in dev and test, where they set and check the alert threshold). A real
tweet that nearly copies a written test tweet is not trained on: it goes to the real test split;
one that nearly copies a written training or dev tweet is not tested on: it trains; one that
nearly copies both is left out (and marked ``left_out`` in the annotations).

Rounds read after that (``APPENDED_ROUNDS``, notes whose ``selected_for`` starts ``round<N>:``,
already in the annotations) are appended and never re-deal what is there: the held-out test
split does not change, and dev and train keep every row and its line, with the round's rows
added at the end (by id). A tweet of the round that nearly copies a real test tweet or a written
test tweet, or repeats a text already there, is left out (marked ``left_out``); one that nearly
copies a real dev tweet goes to dev; one that nearly copies a real training tweet or a written
training or dev tweet trains (nearly copying a dev tweet as well, it is left out).
Near-duplicate groups within the round stay in one split whole; the free groups are dealt per
department and critical or not, ``APPEND_CRITICAL_SHARES`` of the critical ones and
``APPEND_SHARES`` of the rest to dev, the remainder to train (``DRAWN_ROUND_SHARES`` of both
for a round drawn as the held-out split was).

Splits are dealt by each tweet's label before the consistency pass (``dealt_label``): that pass
relabeled tweets across all rounds where they were, and a new label never moves a tweet to
another split.

Seeded (``SEED``; ``SEED + N`` for appended round N): the same inputs give the same files.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter, defaultdict
from pathlib import Path

from switchboard.classify.data import near_duplicates, read_tweets

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT / "data" / "labeled" / "real"
WRITTEN = ROOT / "data" / "labeled"
SEED = 17
SHARES = {"test": 0.14, "dev": 0.11}  # the rest trains
CRITICAL_SHARES = {"test": 0.25, "dev": 0.20}
APPENDED_ROUNDS = (5, 6, 7, 8, 9)  # read after the splits were fixed: appended, in this order
APPEND_SHARES = {"dev": 0.10}  # of an appended round's free tweets; the rest trains
APPEND_CRITICAL_SHARES = {"dev": 0.20}  # more critical tweets to choose the threshold on
# Round 9 was drawn as the held-out split's base rows were (no model or keyword pointer): half
# of it goes to dev, whose rows drawn that way were too few to set the critical threshold on.
DRAWN_ROUND_SHARES = {9: {"dev": 0.50}}
# Rounds that read what a model or keyword groups pointed at among the tweets left unread after
# the held-out split was drawn (likely critical, or a department the model was unsure of): such
# a row carries ``"sought": true``. The held-out split has no row like them, and dev's sought
# critical tweets are ones the model already scored critical: classify fits the critical
# threshold on dev's other rows (docs/classifier.md).
SOUGHT_ROUNDS = (5, 6, 7, 8)
KEPT = ("id", "text", "department", "urgency", "source", "licence", "to", "created_at")
SPLITS = ("train", "dev", "test")
BOTH_WRITTEN = "nearly copies both a written training and a held-out tweet"


def final_label(note: dict) -> tuple[str, str]:
    if note.get("proposals"):
        if "decision" not in note:
            raise ValueError(f"{note['id']}: readers disagreed and nobody decided")
        department, urgency = note["decision"]["label"].split("/")
    else:
        department, urgency = note["first"].split("/")
    return department, urgency


def dealt_label(note: dict) -> tuple[str, str]:
    """The label a tweet's split was dealt by: its label before the consistency pass, which
    relabeled tweets where they were (a label must not move a tweet between splits)."""
    if "consistency" in note:
        department, urgency = note["consistency"]["was"].split("/")
        return department, urgency
    return final_label(note)


def in_round(note_or_row: dict, number: int) -> bool:
    return note_or_row["selected_for"].startswith(f"round{number}:")


def appended(note_or_row: dict) -> bool:
    return any(in_round(note_or_row, n) for n in APPENDED_ROUNDS)


def lines_of(path: Path) -> list[str]:
    """JSON Lines end at "\\n" only: tweets may hold U+2028, which ``splitlines`` would split."""
    return [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")


def read_pool(path: Path) -> dict[str, dict]:
    pool = {}
    for line in lines_of(path):
        tweet = json.loads(line)
        pool[tweet["id"]] = tweet
    return pool


def row_of(note: dict, pool: dict[str, dict]) -> dict:
    department, urgency = final_label(note)
    tweet = pool[note["id"]]
    row = {k: tweet[k] for k in KEPT if k in tweet} | {
        "department": department,
        "urgency": urgency,
        "selected_for": note["selected_for"],
    }
    if any(in_round(note, number) for number in SOUGHT_ROUNDS):
        row["sought"] = True
    if note.get("proposals"):
        row["review"] = {
            "first": note["first"],
            "proposed": [p["label"] for p in note["proposals"]],
            "decided": note["decision"]["label"],
            "reason": note["decision"]["reason"],
        }
    return row


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


def deal(
    labels: list[tuple[str, str]],
    groups: list[list[int]],
    rng: random.Random,
    shares: dict[str, float] = SHARES,
    critical_shares: dict[str, float] = CRITICAL_SHARES,
) -> dict[int, str]:
    """Split of each row: groups dealt per stratum (department, critical or not) of the
    ``labels`` (``dealt_label``) of their first row."""
    strata: dict[tuple[str, bool], list[list[int]]] = defaultdict(list)
    for group in groups:
        department, urgency = labels[group[0]]
        strata[(department, urgency == "critical")].append(group)
    split_of: dict[int, str] = {}
    for (_, critical), members in sorted(strata.items()):
        rng.shuffle(members)
        share_of = critical_shares if critical else shares
        total = sum(len(g) for g in members)
        wanted = {name: round(share * total) for name, share in share_of.items()}
        filled = dict.fromkeys(wanted, 0)
        for group in members:
            name = next((n for n in wanted if filled[n] < wanted[n]), "train")
            filled[name] = filled.get(name, 0) + len(group)
            for i in group:
                split_of[i] = name
    return split_of


def written_texts(splits: tuple[str, ...]) -> list[str]:
    return [r.text for s in splits for r in read_tweets(WRITTEN / f"{s}.jsonl")]


def near(texts: list[str], corpus: list[str]) -> set[int]:
    """Indices of ``texts`` that nearly copy a tweet of ``corpus``."""
    return {q for q, _, _ in near_duplicates(texts, corpus)} if corpus else set()


def near_written(texts: list[str], splits: tuple[str, ...]) -> set[int]:
    """Real rows that nearly copy a tweet of the written ``splits``."""
    return near(texts, written_texts(splits))


def mark_left_out(folder: Path, reasons: dict[str, str], owns) -> None:
    """Set ``left_out`` on the notes ``owns`` selects (cleared where no reason); other lines
    are kept as they are."""
    path = folder / "annotations.jsonl"
    lines = lines_of(path)
    with path.open("w", encoding="utf-8") as out:
        for line in lines:
            note = json.loads(line)
            if owns(note):
                note.pop("left_out", None)
                if note["id"] in reasons:
                    note["left_out"] = reasons[note["id"]]
                line = json.dumps(note, ensure_ascii=False)
            out.write(line + "\n")


def assemble(pool: dict[str, dict], folder: Path) -> None:
    """Rounds 1-4 (every note not of an appended round): all three splits dealt anew."""
    notes = [json.loads(line) for line in lines_of(folder / "annotations.jsonl")]
    dealt = sorted((n for n in notes if not appended(n)), key=lambda n: n["id"])
    rows = [row_of(n, pool) for n in dealt]
    rng = random.Random(SEED)
    split_of = deal(
        [dealt_label(n) for n in dealt], groups_of_near_duplicates([r["text"] for r in rows]), rng
    )
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
    mark_left_out(
        folder, {rows[i]["id"]: BOTH_WRITTEN for i in left_out}, lambda n: not appended(n)
    )
    for split in SPLITS:
        chosen = [r for i, r in enumerate(rows) if split_of[i] == split]
        write_jsonl(folder / f"{split}.jsonl", chosen)
        print(f"{split}: {len(chosen)} rows")


def append_round(pool: dict[str, dict], folder: Path, number: int) -> None:
    """Round ``number`` appended to train and dev; test is read, never written."""
    notes = [json.loads(line) for line in lines_of(folder / "annotations.jsonl")]
    dealt = sorted((n for n in notes if in_round(n, number)), key=lambda n: n["id"])
    rows = [row_of(n, pool) for n in dealt]
    if not rows:
        raise SystemExit(f"no notes of round {number} in {folder / 'annotations.jsonl'}")
    later = [n for n in APPENDED_ROUNDS if n > number]
    kept: dict[str, list[str]] = {}  # the lines already there, minus an earlier run of this round
    for split in SPLITS:
        kept[split] = []
        for line in lines_of(folder / f"{split}.jsonl"):
            row = json.loads(line)
            if split == "test" and appended(row):
                raise SystemExit(f"{row['id']} of an appended round is in test.jsonl")
            if any(in_round(row, n) for n in later):
                raise SystemExit(f"round {later} already appended: rebuild without --append-round")
            if not in_round(row, number):
                kept[split].append(line)
    real = {s: [json.loads(line)["text"] for line in kept[s]] for s in SPLITS}
    texts = [r["text"] for r in rows]
    seen = {t.strip().lower() for s in SPLITS for t in real[s] + written_texts((s,))}

    reasons: dict[int, str] = {}
    for i in near(texts, written_texts(("test",))):
        reasons[i] = "nearly copies a written test tweet"
    for i in near(texts, real["test"]):  # the held-out split is fixed: no near-copy beside it
        reasons[i] = "nearly copies a real test tweet"
    for i, text in enumerate(texts):
        if i not in reasons and text.strip().lower() in seen:
            reasons[i] = "same text as a row already in the splits"
    to_dev = near(texts, real["dev"])
    to_train = near(texts, real["train"]) | near_written(texts, ("train", "dev"))

    split_of: dict[int, str] = {}
    free = []
    for group in groups_of_near_duplicates(texts):
        members = [i for i in group if i not in reasons]
        dev_bound = [i for i in members if i in to_dev]
        train_bound = [i for i in members if i in to_train]
        if dev_bound and train_bound:  # the group trains; its near-copies of dev tweets cannot
            for i in dev_bound:
                reasons[i] = "nearly copies a real dev tweet and a training tweet"
            members = [i for i in members if i not in to_dev]
        if not members:
            continue
        if dev_bound and not train_bound:
            split_of.update(dict.fromkeys(members, "dev"))
        elif train_bound:
            split_of.update(dict.fromkeys(members, "train"))
        else:
            free.append(members)
    rng = random.Random(SEED + number)
    labels = [dealt_label(n) for n in dealt]
    shares = DRAWN_ROUND_SHARES.get(number)
    split_of.update(
        deal(labels, free, rng, shares or APPEND_SHARES, shares or APPEND_CRITICAL_SHARES)
    )

    mark_left_out(
        folder, {rows[i]["id"]: r for i, r in reasons.items()}, lambda n: in_round(n, number)
    )
    for split in ("train", "dev"):
        added = [r for i, r in enumerate(rows) if split_of.get(i) == split]
        with (folder / f"{split}.jsonl").open("w", encoding="utf-8") as out:
            for line in kept[split]:
                out.write(line + "\n")
            for row in added:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        critical = sum(r["urgency"] == "critical" for r in added)
        print(f"round {number} -> {split}: {len(added)} rows ({critical} critical)")
    for reason, count in sorted(Counter(reasons.values()).items()):
        print(f"round {number} left out: {count} ({reason})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pool", type=Path)
    parser.add_argument("--folder", type=Path, default=REAL, help="annotations in, splits out")
    parser.add_argument(
        "--append-round",
        type=int,
        choices=APPENDED_ROUNDS,
        help="only (re)append this round to the current train and dev; test is never written",
    )
    args = parser.parse_args()
    pool = read_pool(args.pool)
    if args.append_round is None:
        assemble(pool, args.folder)
        rounds = APPENDED_ROUNDS
    else:
        rounds = (args.append_round,)
    for number in rounds:
        append_round(pool, args.folder, number)


if __name__ == "__main__":
    main()
