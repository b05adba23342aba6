"""The shipped model on the held-out test split: the targets, the baselines, calibration.

The test split was written separately from the training data and is never used for training or
model selection (the card's hashes prove which files the artifact saw).
"""

from __future__ import annotations

import pytest

from switchboard.classify.data import read_tweets
from switchboard.classify.evaluation import headline
from switchboard.classify.offline import evaluate_file, predict_rows
from tests.conftest import LABELED

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def held_out(classifier) -> dict:
    return evaluate_file(classifier, read_tweets(LABELED / "test.jsonl"), LABELED / "train.jsonl")


def test_the_held_out_split_meets_the_quality_targets(held_out):
    figures = headline(held_out)
    assert figures["n"] >= 600
    assert figures["department_macro_f1"] >= 0.90, figures
    assert figures["urgency_macro_f1"] >= 0.80, figures
    assert figures["critical_recall"] >= 0.95, figures


def test_the_model_beats_both_baselines(held_out):
    for name, baseline in held_out["baselines"].items():
        for metric in ("department_macro_f1", "urgency_macro_f1"):
            assert held_out[metric] > baseline[metric], (name, metric, baseline[metric])


def test_confidence_means_what_it_says(classifier):
    """Expected calibration error of the department confidence on held-out tweets."""
    rows = read_tweets(LABELED / "test.jsonl")
    predictions = predict_rows(classifier, rows)
    bins: dict[int, list[tuple[float, bool]]] = {}
    for row, prediction in zip(rows, predictions, strict=True):
        bucket = min(int(prediction.confidence * 10), 9)
        bins.setdefault(bucket, []).append(
            (prediction.confidence, prediction.department == row.department)
        )
    ece = sum(
        abs(sum(c for c, _ in items) / len(items) - sum(ok for _, ok in items) / len(items))
        * len(items)
        for items in bins.values()
    ) / len(rows)
    assert ece < 0.08, ece
