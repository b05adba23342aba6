"""How much would more real labels help? The lexical model's learning curve on real tweets.

Usage: ``python data/tools/learning_curve.py [--fractions 0.25,0.5,0.75,1] [--shuffles 3]
[--real-weight 2] [--no-written]``

Fits the lexical half of the blend (services/classify/lexical.py: n-gram TF-IDF and logistic
regression, seconds per fit where the encoder takes most of an hour) on all written training
tweets plus a growing share of the real training split, each real row weighted 2 as
``make train`` weighs it (``--real-weight``; ``--no-written`` leaves the written tweets out),
and reports department accuracy and urgency macro-F1 on the real dev split, averaged over
shuffles of the real rows. The slope between the last two points says
what another round of labels of the same kind is worth before anyone reads it. The held-out
splits are never read.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from statistics import mean

import numpy as np
from sklearn.metrics import f1_score

from switchboard.classify.data import load_labeled
from switchboard.classify.lexical import LABELS, LexicalModel, training_labels
from switchboard.classify.tokens import prepare_text

LABELED = Path(__file__).resolve().parents[1] / "labeled"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fractions", default="0.25,0.5,0.75,1")
    parser.add_argument("--shuffles", type=int, default=3)
    parser.add_argument("--real-weight", type=float, default=2.0)
    parser.add_argument("--no-written", action="store_true")
    args = parser.parse_args()
    written = [] if args.no_written else load_labeled(LABELED / "train.jsonl")
    real = load_labeled(LABELED / "real" / "train.jsonl")
    dev = load_labeled(LABELED / "real" / "dev.jsonl")
    dev_texts = [prepare_text(row.text) for row in dev]
    print("real rows  department accuracy  urgency macro-F1   (real dev, mean of shuffles)")
    for fraction in (float(f) for f in args.fractions.split(",")):
        accuracy, macro_f1 = [], []
        for shuffle in range(args.shuffles):
            rows = random.Random(shuffle).sample(real, int(len(real) * fraction))
            model = LexicalModel.fit(
                [prepare_text(row.text) for row in written + rows],
                training_labels(written + rows),
                [1.0] * len(written) + [args.real_weight] * len(rows),
            )
            logits = model.logits(dev_texts)
            department = [LABELS["department"][i] for i in logits["department"].argmax(1)]
            urgency = [LABELS["urgency"][i] for i in logits["urgency"].argmax(1)]
            right = [p == r.department.value for p, r in zip(department, dev, strict=True)]
            accuracy.append(np.mean(right))
            macro_f1.append(f1_score([r.urgency.value for r in dev], urgency, average="macro"))
            if fraction == 1:
                break  # every real row: shuffling changes nothing
        print(f"{int(len(real) * fraction):>9}  {mean(accuracy):>19.3f}  {mean(macro_f1):>16.3f}")


if __name__ == "__main__":
    main()
