"""Quality figures for department and urgency labels, and the baselines they must beat.

``report`` gives what ``switchboard classify eval --json`` prints: accuracy, macro-F1,
per-label precision/recall/F1, confusion matrices (rows gold, columns predicted) and the
critical-urgency recall and precision. The baselines are a TF-IDF logistic regression and a
nearest-centroid classifier over the frozen backbone's embeddings, both fitted on the same
training split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from switchboard.classify.data import LabeledTweet
from switchboard.shared.labels import Department, Urgency

DEPARTMENTS = [d.value for d in Department]
URGENCIES = [u.value for u in Urgency]


def per_label(gold: Sequence[str], predicted: Sequence[str], labels: list[str]) -> dict:
    scores = {}
    for label in labels:
        tp = sum(g == p == label for g, p in zip(gold, predicted, strict=True))
        fp = sum(p == label != g for g, p in zip(gold, predicted, strict=True))
        fn = sum(g == label != p for g, p in zip(gold, predicted, strict=True))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        scores[label] = {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1": round(f1, 4),
            "support": tp + fn,
        }
    return scores


def macro_f1(gold: Sequence[str], predicted: Sequence[str], labels: list[str]) -> float:
    """Mean F1 over the labels present in gold (absent labels would only add noise)."""
    present = [label for label in labels if label in set(gold)]
    scores = per_label(gold, predicted, present)
    return sum(s["f1"] for s in scores.values()) / len(scores) if scores else 0.0


def confusion(gold: Sequence[str], predicted: Sequence[str], labels: list[str]) -> dict:
    matrix = {g: dict.fromkeys(labels, 0) for g in labels}
    for g, p in zip(gold, predicted, strict=True):
        matrix[g][p] += 1
    return {
        "labels": labels,
        "rows_gold_columns_predicted": [list(matrix[g].values()) for g in labels],
    }


def report(gold: Sequence[LabeledTweet], predicted: Sequence[tuple[str, str]]) -> dict:
    """Every figure ``classify eval`` reports, for (department, urgency) predictions."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold rows but {len(predicted)} predictions")
    if not gold:
        raise ValueError("nothing to evaluate: no labeled rows")
    gold_departments = [g.department.value for g in gold]
    gold_urgencies = [g.urgency.value for g in gold]
    departments = [str(p[0]) for p in predicted]
    urgencies = [str(p[1]) for p in predicted]
    n = len(gold)
    urgency_scores = per_label(gold_urgencies, urgencies, URGENCIES)
    return {
        "n": n,
        "department_accuracy": _accuracy(gold_departments, departments),
        "department_macro_f1": round(macro_f1(gold_departments, departments, DEPARTMENTS), 4),
        "urgency_accuracy": _accuracy(gold_urgencies, urgencies),
        "urgency_macro_f1": round(macro_f1(gold_urgencies, urgencies, URGENCIES), 4),
        "critical_recall": urgency_scores["critical"]["recall"],
        "critical_precision": urgency_scores["critical"]["precision"],
        "departments": per_label(gold_departments, departments, DEPARTMENTS),
        "urgencies": urgency_scores,
        "department_confusion": confusion(gold_departments, departments, DEPARTMENTS),
        "urgency_confusion": confusion(gold_urgencies, urgencies, URGENCIES),
    }


def expected_calibration_error(
    confidences: Sequence[float], correct: Sequence[bool], bins: int = 10
) -> float:
    """Mean gap between confidence and accuracy over equal-width confidence bins, weighted by
    each bin's share of rows: 0.05 means the confidences are 5 points off on average."""
    if not confidences:
        return 0.0
    binned: dict[int, list[tuple[float, bool]]] = {}
    for confidence, ok in zip(confidences, correct, strict=True):
        binned.setdefault(min(int(confidence * bins), bins - 1), []).append((confidence, ok))
    gap = sum(
        abs(sum(c for c, _ in items) - sum(ok for _, ok in items)) for items in binned.values()
    )
    return round(gap / len(confidences), 4)


def by_group(
    gold: Sequence[LabeledTweet], predicted: Sequence[tuple[str, str]], groups: Sequence[str]
) -> dict[str, dict]:
    """The headline figures for each group's rows (a source, drawn or sought), largest first."""
    rows_of: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        rows_of.setdefault(group, []).append(index)
    return {
        group: headline(report([gold[i] for i in rows], [predicted[i] for i in rows]))
        for group, rows in sorted(rows_of.items(), key=lambda item: (-len(item[1]), item[0]))
    }


def errors(
    gold: Sequence[LabeledTweet],
    predicted: Sequence[tuple[str, str]],
    ids: Sequence[str],
    limit: int,
) -> list[dict]:
    """Up to ``limit`` rows whose department or urgency is wrong: gold, predicted and the text,
    the misrouted ones (wrong department) first."""
    wrong = [
        {
            "id": row_id,
            "gold": f"{g.department.value}/{g.urgency.value}",
            "predicted": f"{p[0]}/{p[1]}",
            "department_wrong": g.department.value != p[0],
            "text": g.text,
        }
        for row_id, g, p in zip(ids, gold, predicted, strict=True)
        if g.department.value != p[0] or g.urgency.value != p[1]
    ]
    wrong.sort(key=lambda e: not e["department_wrong"])  # stable: input order within each
    return wrong[:limit]


def _accuracy(gold: Sequence[str], predicted: Sequence[str]) -> float:
    return round(sum(g == p for g, p in zip(gold, predicted, strict=True)) / len(gold), 4)


def headline(figures: dict) -> dict:
    """The summary figures of a report, without the per-label tables."""
    keys = (
        "n",
        "department_accuracy",
        "department_macro_f1",
        "urgency_accuracy",
        "urgency_macro_f1",
        "critical_recall",
        "critical_precision",
    )
    return {k: figures[k] for k in keys}


def tfidf_logreg(
    train: Sequence[LabeledTweet], texts: Sequence[str], seed: int = 13
) -> list[tuple[str, str]]:
    """Baseline: word and character n-gram TF-IDF with one logistic regression per label."""
    from switchboard.classify.tokens import prepare_text

    features, models = _fitted_tfidf(train, seed)
    x = features.transform([prepare_text(t) for t in texts])
    predictions = [models[label].predict(x).tolist() for label in ("department", "urgency")]
    return list(zip(*predictions, strict=True))


_TFIDF: dict[str, Any] = {}


def _fitted_tfidf(train: Sequence[LabeledTweet], seed: int) -> tuple[Any, dict[str, Any]]:
    """The TF-IDF baseline fitted on ``train``, once per process and training set (as the
    embeddings below): evaluating several splits against the same rows fits it once."""
    key = hashlib.sha256(
        "\n".join(f"{t.text}\t{t.department.value}\t{t.urgency.value}" for t in train).encode()
        + str(seed).encode()
    ).hexdigest()
    if key not in _TFIDF:
        import numpy as np
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import FeatureUnion

        from switchboard.classify.tokens import prepare_text

        # Single precision: the logistic regressions converge in half the time of double's,
        # to figures within a few tenths of a point (sparse features, weak regularization).
        features = FeatureUnion([
            ("words", TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True,
                                      dtype=np.float32)),
            ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2,
                                      sublinear_tf=True, dtype=np.float32)),
        ])  # fmt: skip
        x_train = features.fit_transform([prepare_text(t.text) for t in train])
        models = {}
        for label in ("department", "urgency"):
            model = LogisticRegression(
                C=10.0, max_iter=2000, class_weight="balanced", random_state=seed
            )
            models[label] = model.fit(x_train, [getattr(t, label).value for t in train])
        _TFIDF.clear()  # one training set at a time: it is held in memory
        _TFIDF[key] = (features, models)
    return _TFIDF[key]


_TRAIN_EMBEDDINGS: dict[tuple[str, str], Any] = {}


def _train_embeddings(encoder: Any, backbone: Any, texts: list[str]) -> Any:
    """The frozen backbone's normalized embeddings of the training texts, computed once per
    process: evaluating several splits against the same training rows (``classify eval`` of a
    dev and a test split, the quality tests) embeds those ten thousand texts once."""
    import torch

    key = (str(backbone), hashlib.sha256("\n".join(texts).encode()).hexdigest())
    if key not in _TRAIN_EMBEDDINGS:
        from switchboard.classify.train import embed

        _TRAIN_EMBEDDINGS.clear()  # one training set at a time: it is held in memory
        _TRAIN_EMBEDDINGS[key] = torch.nn.functional.normalize(embed(encoder, texts), dim=-1)
    return _TRAIN_EMBEDDINGS[key]


def nearest_centroid(
    train: Sequence[LabeledTweet], texts: Sequence[str], backbone=None
) -> list[tuple[str, str]]:
    """Baseline: cosine nearest centroid per label over the frozen backbone's embeddings."""
    import torch

    from switchboard.classify.model import default_backbone
    from switchboard.classify.network import Encoder
    from switchboard.classify.train import embed

    encoder = Encoder(backbone or default_backbone()).eval()
    train_x = _train_embeddings(encoder, backbone, [t.text for t in train])
    x = torch.nn.functional.normalize(embed(encoder, list(texts)), dim=-1)
    predictions = []
    for label, names in (("department", DEPARTMENTS), ("urgency", URGENCIES)):
        gold = [getattr(t, label).value for t in train]
        present = [name for name in names if name in gold]
        centroids = torch.stack(
            [train_x[[i for i, g in enumerate(gold) if g == name]].mean(0) for name in present]
        )
        centroids = torch.nn.functional.normalize(centroids, dim=-1)
        predictions.append([present[i] for i in (x @ centroids.T).argmax(-1).tolist()])
    return list(zip(*predictions, strict=True))
