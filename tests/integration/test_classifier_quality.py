"""The shipped model on the held-out test splits: real tweets first, then the written ones.

Neither test split is ever trained on or used to choose anything (the card's hashes prove which
files the artifact saw). The floors for real tweets are what the shipped model reached on
``data/labeled/real/test.jsonl`` less a small margin, so that no later change (to the data, the
recipe or the runtime) can quietly undo them; docs/classifier.md has the figures.
"""

from __future__ import annotations

import json

import pytest

from switchboard.classify.data import load_labeled, read_tweets
from switchboard.classify.evaluation import headline
from switchboard.classify.model import COMMERCIAL_ARTIFACT_NAME, TweetClassifier
from switchboard.classify.offline import baseline_figures, evaluate_file
from tests.conftest import LABELED, MODEL_THREADS, REAL, data_versions

TRAINED_ON = (LABELED / "train.jsonl", REAL / "train.jsonl")  # the baselines fit the same rows
MARGIN = 0.02
# Reached by the shipped default artifact on the real held-out split (docs/classifier.md).
REAL_REACHED = {
    "department_accuracy": 0.808,
    "department_macro_f1": 0.765,
    "urgency_macro_f1": 0.732,
    "critical_recall": 0.643,
    "critical_precision": 0.480,
}
# Reached by the commercial artifact (trained without non-commercial or unknown-licence rows).
COMMERCIAL_REACHED = {"department_accuracy": 0.577, "critical_recall": 0.714}
# Reached by the 4-layer student of the previous default (the faster choice; docs/classifier.md).
STUDENT_ARTIFACT_NAME = "minilm4-real-v1"
STUDENT_REACHED = {
    "department_accuracy": 0.786,
    "urgency_macro_f1": 0.728,
    "critical_recall": 0.571,
    "critical_precision": 0.478,
}
# The written split's department macro-F1 target (0.90) is not met since the model learns real
# tweets, whose readers drew marketing/community and customer_service/sales where the writers did
# not (docs/classifier.md, error analysis); this guards what the real-trained model reached.
WRITTEN_DEPARTMENT_MACRO_F1_REACHED = 0.866
ECE_BOUND = 0.08


@pytest.fixture(scope="module")
def real_held_out(classifier) -> dict:
    return evaluate_file(classifier, read_tweets(REAL / "test.jsonl"), baselines=False)


@pytest.fixture(scope="module")
def written_held_out(classifier) -> dict:
    return evaluate_file(classifier, read_tweets(LABELED / "test.jsonl"), baselines=False)


@pytest.fixture(scope="module")
def tfidf_baseline() -> dict[str, dict]:
    """Each held-out split's figures for the TF-IDF baseline, fitted on the model's training
    rows. The other baseline of ``classify eval``, the nearest centroid, is not run here: it
    stays far below the floors above (0.62 department accuracy on the real split, 0.44
    department macro-F1 on the written one), so a model it beat would fail them first, and it
    embeds all 12,700 training rows on the fp32 backbone, four minutes of a shared core."""
    return {
        split: baseline_figures(load_labeled(path), TRAINED_ON, ["tfidf_logreg"])["tfidf_logreg"]
        for split, path in (("real", REAL / "test.jsonl"), ("written", LABELED / "test.jsonl"))
    }


def test_real_tweets_keep_the_figures_the_shipped_model_reached(real_held_out):
    figures = headline(real_held_out)
    assert figures["n"] >= 800
    for metric, reached in REAL_REACHED.items():
        assert figures[metric] >= reached - MARGIN, (metric, figures)


def test_real_tweets_are_better_served_than_by_the_tfidf_baseline(real_held_out, tfidf_baseline):
    baseline = tfidf_baseline["real"]
    for metric in ("department_accuracy", "department_macro_f1", "urgency_macro_f1"):
        assert real_held_out[metric] > baseline[metric], (metric, baseline[metric])


def test_confidence_means_what_it_says_on_real_tweets(real_held_out):
    """Expected calibration error of the department confidence on held-out real tweets."""
    assert real_held_out["department_ece"] < ECE_BOUND, real_held_out["department_ece"]


def test_every_source_of_real_tweets_is_reported(real_held_out):
    sources = real_held_out["by_source"]
    assert sum(s["n"] for s in sources.values()) == real_held_out["n"]
    assert len(sources) >= 10  # one row per public dataset the test split draws on


def test_the_written_held_out_split_keeps_its_figures_and_its_met_targets(written_held_out):
    """Urgency macro-F1 and critical recall meet their targets (0.80, 0.95); department
    macro-F1 does not meet its 0.90 since the model learnt real tweets, and is held at what it
    reached (docs/classifier.md says why)."""
    figures = headline(written_held_out)
    assert figures["n"] >= 600
    assert figures["department_macro_f1"] >= WRITTEN_DEPARTMENT_MACRO_F1_REACHED - MARGIN, figures
    assert figures["urgency_macro_f1"] >= 0.80, figures
    assert figures["critical_recall"] >= 0.95, figures
    assert written_held_out["department_ece"] < ECE_BOUND, written_held_out["department_ece"]


def test_the_model_beats_the_tfidf_baseline_on_written_tweets(written_held_out, tfidf_baseline):
    """The baseline is fitted on the same training rows as the model (written and real)."""
    baseline = tfidf_baseline["written"]
    for metric in ("department_macro_f1", "urgency_macro_f1"):
        assert written_held_out[metric] > baseline[metric], (metric, baseline[metric])


@pytest.fixture(scope="module")
def commercial() -> TweetClassifier:
    return TweetClassifier.load(COMMERCIAL_ARTIFACT_NAME, threads=MODEL_THREADS)


def test_the_commercial_artifact_keeps_its_figures_and_its_licence(commercial):
    model = commercial
    assert model.licence["commercial_use"] is True
    figures = evaluate_file(model, read_tweets(REAL / "test.jsonl"), baselines=False)
    for metric, reached in COMMERCIAL_REACHED.items():
        assert figures[metric] >= reached - MARGIN, (metric, headline(figures))


def test_the_faster_student_keeps_its_figures_and_its_teachers_licence():
    """A student learns its teacher's logits on the teacher's rows and on real pool tweets: it
    is no freer to use than they are."""
    model = TweetClassifier.load(STUDENT_ARTIFACT_NAME, threads=MODEL_THREADS)
    assert model.card["options"]["layers"] == 4 and model.lexical is not None
    assert model.licence["commercial_use"] is False
    figures = evaluate_file(model, read_tweets(REAL / "test.jsonl"), baselines=False)
    for metric, reached in STUDENT_REACHED.items():
        assert figures[metric] >= reached - MARGIN, (metric, headline(figures))


def test_each_artifact_states_the_licence_its_training_data_allows(classifier, commercial):
    """The default learnt from CC BY-NC-SA 4.0 and unlicensed tweets: non-commercial. The
    commercial one learnt only from rows whose licence allows it, and its card shows which."""
    assert classifier.licence["commercial_use"] is False
    assert classifier.licence["spdx"].startswith("CC-BY-NC-SA-4.0")
    assert "Non-commercial" in classifier.licence["terms"]
    card = commercial.card
    assert card["options"]["licences"] == "commercial"
    assert set(card["licence"]["training_rows_by_licence"]) <= {"Apache-2.0", "MIT"}
    assert json.dumps(card["licence"]).count("NC") == 0


def test_the_blend_is_what_the_real_dev_split_chooses(classifier, tmp_path):
    """The card's blend (weights, temperatures) and critical threshold are what ``fit_blend``
    chooses on the real dev split the card names (the current one, or the version before rounds
    of labels appended since), chosen again here: none is set by hand."""
    from switchboard.classify.train import fit_blend

    assert classifier.lexical is not None and classifier.blend.department_weight > 0
    card = classifier.card
    named = card["lexical"].get("data", card["data"])["real"]["dev"]["sha256"]
    dev = data_versions(REAL / "dev.jsonl", tmp_path)[named]
    rows = classifier.calibration.critical_threshold_rows  # "all" on cards before round 9
    blend, threshold = fit_blend(classifier, load_labeled(dev), rows)
    shipped = classifier.blend
    assert (blend.department_weight, blend.urgency_weight) == (
        shipped.department_weight, shipped.urgency_weight,
    )  # fmt: skip
    assert threshold == classifier.calibration.critical_threshold
    for name in ("lexical_department_temperature", "lexical_urgency_temperature",
                 "department_temperature", "urgency_temperature"):  # fmt: skip
        assert getattr(blend, name) == pytest.approx(getattr(shipped, name), rel=1e-3), name
