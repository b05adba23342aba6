"""Chooses which tweets of the real pool get labeled (issue 17), reproducibly.

Usage: ``python data/tools/realpool_select.py POOL PREDICTIONS OUT [--total N]``

POOL is ``../shared/data/realpool/pool.jsonl``; PREDICTIONS is what the model shipped before
real data (``minilm-lora-v1`` of Nov 2026) said of every pool tweet
(``switchboard classify predict --input POOL``). A uniform sample of real traffic is mostly
customer service and chatter, so the selection mixes:

- a base sample of every source, allocated by ``count ** 0.6`` so that large sources lead but
  small ones are still read;
- for each department the old model rarely predicts, extra tweets it predicted for that
  department (a prediction is only a pointer here: every tweet is read and labeled by people);
- extra tweets the old model called critical, and keyword hits for sales, legal, press and
  security terms, where the pool's README says the rare material is.

Round 2 (``--round 2 --exclude ROUND1.jsonl``): round 1 found too few sales, legal and critical
tweets (about 3 %, 3 % and 1 % of what was read), so round 2 reads only tweets that keyword
groups or the old model point at for those three, from what round 1 did not take.

Round 3 (``--round 3 --exclude ROUND1.jsonl --exclude ROUND2.jsonl``): rounds 1 and 2 still
had too few sales and critical tweets, and round 2's keywords mostly hit financial news ("buy
rating"). Round 3 reads keyword hits for purchase intent and for harm, hacking and danger in
the sources of consumer traffic only (airlines, customer support, utilities, brands, scandals).

Round 4 (``--round 4``, excluding rounds 1-3): 400 more of round 3's purchase-intent hits, to
bring real sales tweets above 250.

The evaluation set ``../shared/data/realworld/`` is never read: the pool was already cleaned of
its near-duplicates by whoever built the pool.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import defaultdict
from pathlib import Path

SEED = 17
TARGETED_DEPARTMENTS = {
    "sales": 330,
    "legal": 300,
    "communications": 220,
    "it_security": 260,
    "investor_relations": 160,
    "marketing": 160,
    "community": 120,
}
PREDICTED_CRITICAL = 320
KEYWORDS = {
    "sales": r"\b(price|pricing|quote|how much|buy|purchase|in stock|available in|discount code"
    r"|bulk|wholesale|reseller|demo|trial|upgrade to|switch(ing)? to)\b",
    "legal": r"\b(lawsuit|sue|suing|sued|lawyer|attorney|court|legal action|class action|gdpr"
    r"|ccpa|trademark|copyright|patent|counterfeit|fake (shoes|product)|regulator|ftc|fcc|cfpb"
    r"|ombudsman|better business bureau|bbb|defamation|settlement)\b",
    "press": r"\b(journalist|reporter|comment on|press|media inquiry|statement|spokesperson"
    r"|interview|story on|for a piece)\b",
    "security": r"\b(hacked|hack|phishing|scam|fraud|breach|leak(ed)?|vulnerabilit\w*|exploit"
    r"|fake account|impersonat\w*|compromised|stolen (card|account)|unauthori[sz]ed)\b",
}
ROUND2 = {
    "sales": (
        r"\b(price|pricing|quote|how much|buy|purchase|in stock|available|discount|bulk"
        r"|wholesale|reseller|demo|trial|upgrade|switch(ing)? to|where can i (get|find)"
        r"|do you (fly|sell|ship|have)|fares?|pre-?order|for sale|coupon)\b",
        450,
    ),
    "legal": (
        r"\b(lawsuit|sue|suing|sued|lawyer|attorney|court|legal|class action|gdpr|ccpa"
        r"|trademark|copyright|patent|counterfeit|fake|regulator|ftc|fcc|cfpb|sec|ombudsman"
        r"|bbb|defamation|settlement|fined?|investigation|judge|illegal|consumer protection"
        r"|complaint filed|report(ed)? you to)\b",
        450,
    ),
    "critical": (
        r"\b(fire|smoke|injur\w*|hurt|hospital|ambulance|sick|food poisoning|allerg\w*"
        r"|burn(ed|t)?|explo\w*|spark\w*|live wire|downed (line|wire)s?|dead|died|death"
        r"|emergency|911|danger\w*|unsafe|safety|oxygen|medical|freez\w*|hacked|breach"
        r"|stolen|identity theft|threat\w*|kill|gun|bomb|suicid\w*|evacuat\w*|crash\w*"
        r"|leak(ed|ing)?)\b",
        500,
    ),
}
ROUND3_SOURCES = (
    "Anuragiitk/", "S0l0m4n/", "monalisapatra26/", "kechtel/", "Yosingh1/", "DongyuanZhou/",
    "AlvinKN/", "RahmaAnwer/", "fco-parga/", "saraso2014/", "officinadata/", "zfz/",
)  # fmt: skip
ROUND3 = {
    "sales": (
        r"(do you (guys )?(fly|have|sell|offer|ship|carry|deliver)|how much|\bprices?\b"
        r"|\bfares?\b|book(ing)? a (flight|ticket|trip)|\bbuy\b|purchase|pre-?order|in stock"
        r"|\bavailable\b|upgrade to|\bdeals?\b|discount|coupon|promo code"
        r"|where can i (get|buy|find)|gift card|membership|subscribe"
        r"|when (will|does|do|is) .{0,30}(launch|release|come out|available|go on sale))",
        500,
    ),
    "critical": (
        r"(\bsick\b|poison|vomit|allerg|hospital|(?-i:\bER\b)|injur|\bhurt\b|bleed|\bfire\b|smoke"
        r"|\bburn|spark|explo|live wire|downed|carbon monoxide|gas leak|oxygen|ventilator"
        r"|dialysis|\bmedical|insulin|emergency|\b911\b|ambulance|unsafe|danger|\bdied\b"
        r"|\bdead\b|death|\bkill|threat|\bgun\b|\bbomb|hacked|breach|stolen"
        r"|unauthori[sz]ed|identity theft|fraud|scam|phish)",
        500,
    ),
}
ROUND2_CONFIDENT = 0.6  # the old model's department confidence that counts as a pointer
PER_KEYWORD = 110
BASE = 3300
# Customer Support on Twitter is the closest thing in the pool to a company's inbound traffic
# (every tweet addressed to a brand's support handle): read more of it than its share.
SUPPORT_TRAFFIC = ("Customer Support on Twitter", 400)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pool", type=Path)
    parser.add_argument("predictions", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--round", type=int, choices=(1, 2, 3, 4), default=1)
    parser.add_argument(
        "--exclude", type=Path, action="append", default=[], help="what earlier rounds selected"
    )
    args = parser.parse_args()
    rng = random.Random(SEED + args.round - 1)
    pool = [json.loads(line) for line in args.pool.open(encoding="utf-8")]
    predicted = {}
    for line in args.predictions.open(encoding="utf-8"):
        row = json.loads(line)
        predicted[row["id"]] = (row["department"], row["urgency"], row["confidence"])
    chosen: dict[str, str] = {}  # id -> why it was chosen
    excluded = {
        json.loads(line)["id"] for path in args.exclude for line in path.open(encoding="utf-8")
    }

    def take(candidates: list[dict], count: int, why: str) -> None:
        fresh = [t for t in candidates if t["id"] not in chosen and t["id"] not in excluded]
        for tweet in rng.sample(fresh, min(count, len(fresh))):
            chosen[tweet["id"]] = why

    if args.round == 2:
        for group, (pattern, count) in ROUND2.items():
            regex = re.compile(pattern, re.IGNORECASE)
            pointed = [
                t
                for t in pool
                if regex.search(t["text"])
                or (predicted[t["id"]][0] == group and predicted[t["id"]][2] > ROUND2_CONFIDENT)
                or (group == "critical" and predicted[t["id"]][1] == "critical")
            ]
            take(pointed, count, f"round2:{group}")
        write(pool, chosen, rng, args.out)
        return
    if args.round in (3, 4):
        consumer = [t for t in pool if t["source"].startswith(ROUND3_SOURCES)]
        groups = ROUND3 if args.round == 3 else {"sales": (ROUND3["sales"][0], 400)}
        for group, (pattern, count) in groups.items():
            regex = re.compile(pattern, re.IGNORECASE)
            hits = [t for t in consumer if regex.search(t["text"])]
            take(hits, count, f"round{args.round}:{group}")
        write(pool, chosen, rng, args.out)
        return

    by_repository = defaultdict(list)
    for tweet in pool:
        by_repository[tweet["source"].split(":")[0]].append(tweet)
    weights = {repo: len(rows) ** 0.6 for repo, rows in by_repository.items()}
    for repo, rows in sorted(by_repository.items()):
        take(rows, round(BASE * weights[repo] / sum(weights.values())), f"base:{repo}")
    support = [t for t in pool if SUPPORT_TRAFFIC[0] in t["licence"]]
    take(support, SUPPORT_TRAFFIC[1], "base:support-traffic")
    for department, count in TARGETED_DEPARTMENTS.items():
        candidates = [t for t in pool if predicted[t["id"]][0] == department]
        take(candidates, count, f"predicted:{department}")
    critical = [t for t in pool if predicted[t["id"]][1] == "critical"]
    take(critical, PREDICTED_CRITICAL, "predicted:critical")
    for group, pattern in KEYWORDS.items():
        regex = re.compile(pattern, re.IGNORECASE)
        take([t for t in pool if regex.search(t["text"])], PER_KEYWORD, f"keyword:{group}")

    write(pool, chosen, rng, args.out)


def write(pool: list[dict], chosen: dict[str, str], rng: random.Random, out_path: Path) -> None:
    selected = [dict(t, selected_for=chosen[t["id"]]) for t in pool if t["id"] in chosen]
    rng.shuffle(selected)
    with out_path.open("w", encoding="utf-8") as out:
        for tweet in selected:
            out.write(json.dumps(tweet, ensure_ascii=False) + "\n")
    print(f"{len(selected)} tweets -> {out_path}")


if __name__ == "__main__":
    main()
