"""Writes data/unlabeled/tweets.jsonl: unlabeled, real-style variants of the training tweets.

Distillation (``switchboard classify train --teacher ... --unlabeled ...``) teaches a student
the teacher's logits on texts without labels. Real inbound tweets are messier than the written
training split: lower case, dropped apostrophes, typos, texting shorthand, emoji, hashtags,
links, extra mentions, sarcastic or polite framings, two complaints in one tweet. Each training
tweet gets one variant with one to three such edits, drawn from a fixed seed, so the file is
reproducible: ``python data/tools/unlabeled.py``.

Only ``data/labeled/train.jsonl`` is read: never dev (it chooses the epoch), never test, never
the real-world evaluation set. The variants carry no labels; the teacher labels them.
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "data" / "labeled" / "train.jsonl"
TARGET = ROOT / "data" / "unlabeled" / "tweets.jsonl"
SEED = 8

SHORTHAND = {
    "you": "u", "your": "ur", "you're": "ur", "please": "pls", "thanks": "thx",
    "because": "bc", "with": "w/", "people": "ppl", "really": "rly", "though": "tho",
    "before": "b4", "tomorrow": "tmrw", "tonight": "2nite", "for": "4", "to": "2",
    "are": "r", "why": "y", "okay": "ok", "message": "msg", "minutes": "mins",
}  # fmt: skip
LINK_CHARACTERS = "abcdefghkmnpqrstuvwxyzABCDEFGH23456789"
EMOJI = ["😡", "🙄", "😂", "🤦", "💀", "😤", "🙏", "❤️", "👏", "🔥", "😭", "🤡", "👍", "😬", "🤔"]
HASHTAGS = ["#fail", "#help", "#customerservice", "#neveragain", "#annoyed", "#love", "#why",
            "#scam", "#thankyou", "#mondays", "#fixit", "#news", "#question"]  # fmt: skip
PREFIXES = ["wow. ", "so ", "hey ", "hi there, ", "quick question: ", "ugh ", "lol ",
            "not gonna lie, ", "honestly ", "PSA: ", "yo ", "sooo ", "update: ", "again?? ",
            "great job guys. ", "love this for me. ", "thanks for nothing. ", "just wondering, ",
            "serious question ", "day 3 and ", "can someone explain why "]  # fmt: skip
SUFFIXES = [" smh", " lol", " unreal", " again.", " thanks", " pls help", " ???", "!!!",
            " great service 👏", " love that for me", " cheers", " asap", " fr", " ...",
            " just saying", " or whatever", " 10/10", " thanks in advance", " wtf",
            " still waiting"]  # fmt: skip


def lower(text: str, rng: random.Random) -> str:
    return text.lower()


def shout(text: str, rng: random.Random) -> str:
    return text.upper() if len(text) < 90 else text


def no_apostrophes(text: str, rng: random.Random) -> str:
    return text.replace("'", "").replace("’", "")


def no_final_punctuation(text: str, rng: random.Random) -> str:
    return text.rstrip(".!?")


def typos(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if w.isalpha() and len(w) > 3]
    for i in rng.sample(candidates, min(len(candidates), rng.randint(1, 2))):
        w, j = words[i], rng.randrange(1, len(words[i]) - 1)
        edits = [w[:j] + w[j + 1 :], w[:j] + w[j + 1] + w[j] + w[j + 2 :], w[:j] + w[j] + w[j:]]
        words[i] = rng.choice(edits)
    return " ".join(words)


def shorthand(text: str, rng: random.Random) -> str:
    def swap(match: re.Match[str]) -> str:
        word = match.group(0)
        short = SHORTHAND.get(word.lower())
        return short if short and rng.random() < 0.7 else word

    return re.sub(r"[A-Za-z']+", swap, text)


def emoji(text: str, rng: random.Random) -> str:
    return f"{text} {rng.choice(EMOJI) * rng.randint(1, 3)}"


def hashtag(text: str, rng: random.Random) -> str:
    return f"{text} {rng.choice(HASHTAGS)}"


def link(text: str, rng: random.Random) -> str:
    return f"{text} https://t.co/{''.join(rng.choices(LINK_CHARACTERS, k=10))}"


def mentions(text: str, rng: random.Random) -> str:
    extra = rng.choice(["@user", "@user @user", "@someone_else"])
    return f"{extra} {text}" if rng.random() < 0.5 else f"{text} cc {extra}"


def framing(text: str, rng: random.Random) -> str:
    body = _after_mentions(text)
    head = text[: len(text) - len(body)]
    if rng.random() < 0.5:
        return head + rng.choice(PREFIXES) + body[:1].lower() + body[1:]
    return text + rng.choice(SUFFIXES)


def truncate(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    if len(words) < 8:
        return text
    return " ".join(words[: rng.randint(len(words) * 6 // 10, len(words) - 1)])


Edit = Callable[[str, random.Random], str]
EDITS: list[Edit] = [lower, no_apostrophes, no_final_punctuation, typos, shorthand, emoji,
                     hashtag, link, mentions, framing, framing, truncate, shout]  # fmt: skip


def _after_mentions(text: str) -> str:
    return re.sub(r"^(\s*@\w+\s*)+", "", text)


def variant(text: str, other: str, rng: random.Random) -> tuple[str, list[str]]:
    """One real-style variant of ``text``; one time in eight it is joined with ``other``."""
    applied = []
    if rng.random() < 0.125:
        text = f"{text.rstrip()} {_after_mentions(other)}"
        applied.append("joined")
    for edit in rng.sample(EDITS, rng.randint(1, 3)):
        text = edit(text, rng)
        applied.append(edit.__name__)
    return re.sub(r"\s+", " ", text).strip(), applied


def main() -> int:
    rng = random.Random(SEED)
    rows = [json.loads(line) for line in SOURCE.read_text(encoding="utf-8").splitlines() if line]
    seen = {r["text"].strip().lower() for r in rows}
    lines = []
    for row in rows:
        for _ in range(5):  # an edit can leave a text as it was (no apostrophe to drop)
            text, applied = variant(row["text"], rng.choice(rows)["text"], rng)
            if text.strip().lower() not in seen:
                break
        else:
            continue
        seen.add(text.strip().lower())
        record = {"id": f"unlabeled-{row['id']}", "text": text, "from": row["id"], "edits": applied}
        lines.append(json.dumps(record, ensure_ascii=False))
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{len(lines)} texts -> {TARGET.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
