"""Offline use of the model: ``switchboard classify predict`` and ``switchboard classify eval``."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from switchboard.classify.data import LabeledTweet, TweetText, load_labeled
from switchboard.classify.evaluation import (
    by_group,
    errors,
    expected_calibration_error,
    nearest_centroid,
    report,
    tfidf_logreg,
)
from switchboard.classify.language import detect
from switchboard.classify.model import Prediction, TweetClassifier


def _chunks(rows: Sequence[TweetText], size: int) -> Iterator[Sequence[TweetText]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def predict_rows(
    model: TweetClassifier, rows: Sequence[TweetText], batch_size: int = 64
) -> list[Prediction]:
    predictions: list[Prediction] = []
    # Sorted by length so that each batch pads little; the input order is restored.
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].text))
    ordered = [rows[i] for i in order]
    for chunk in _chunks(ordered, batch_size):
        predictions += model.predict([row.text for row in chunk])
    restored: list[Prediction] = [None] * len(rows)  # type: ignore[list-item]
    for position, index in enumerate(order):
        restored[index] = predictions[position]
    return restored


def prediction_record(row: TweetText, prediction: Prediction, model: TweetClassifier) -> dict:
    lang = row.lang or detect(row.text)
    return {
        "id": row.id,
        "department": prediction.department.value,
        "urgency": prediction.urgency.value,
        "confidence": round(prediction.confidence, 4),
        "urgency_confidence": round(prediction.urgency_confidence, 4),
        "top_departments": [[d.value, round(p, 4)] for d, p in prediction.top_departments(2)],
        "department_scores": {
            d.value: round(p, 4) for d, p in prediction.department_scores.items()
        },
        "urgency_scores": {u.value: round(p, 4) for u, p in prediction.urgency_scores.items()},
        "lang": lang,
        "language_supported": model.supports(lang),
        "handle": row.handle,
        "model_version": model.version,
    }


REPOSITORY_FILE = re.compile(r"([\w.-]+/[\w.-]+):\S")  # "owner/repo:path/file.csv"


def source_group(source: object) -> str:
    """The group a row's ``source`` counts in: a repository's files as one (``owner/repo:
    path``), any other source (a URL, a system's name) as it is."""
    if not source:
        return "(none)"
    text = str(source)
    match = REPOSITORY_FILE.match(text)
    return match.group(1) if match and not text.startswith(("http:", "https:")) else text


def evaluate_file(
    model: TweetClassifier,
    rows: Sequence[TweetText],
    train_files: Sequence[Path] = (),
    baselines: bool = True,
    error_rows: int = 0,
) -> dict:
    """The model's figures on labeled rows, with the baselines fitted on ``train_files``.

    Also the calibration error of the department confidence; a per-source breakdown when the
    rows carry a ``source``; the figures of the rows drawn as traffic is and of those sought
    out as likely critical or hard (``sought``), when some are; and with ``error_rows`` the
    first that many mistakes."""
    gold = [
        LabeledTweet(r.text, r.department, r.urgency)
        for r in rows
        if r.department is not None and r.urgency is not None
    ]
    if len(gold) != len(rows):
        missing = next(r.id for r in rows if r.department is None or r.urgency is None)
        raise ValueError(f"row {missing} lacks a department or urgency: eval needs both")
    predictions = predict_rows(model, rows)
    labels = [(p.department.value, p.urgency.value) for p in predictions]
    figures = report(gold, labels)
    figures["model_version"] = model.version
    figures["department_ece"] = expected_calibration_error(
        [p.confidence for p in predictions],
        [p.department == r.department for p, r in zip(predictions, rows, strict=True)],
    )
    sources = [r.extra.get("source") for r in rows]
    if any(sources):
        groups = [source_group(s) for s in sources]
        figures["by_source"] = by_group(gold, labels, groups)
    sought = [r.extra.get("sought") is True for r in rows]
    if any(sought):  # dev's rows a model or keyword sought out flatter the model: apart
        figures["by_selection"] = by_group(
            gold, labels, ["sought" if s else "drawn" for s in sought]
        )
    if error_rows:
        figures["errors"] = errors(gold, labels, [r.id for r in rows], error_rows)
    if baselines and train_files:
        figures["baselines"] = baseline_figures(gold, train_files)
    return figures


BASELINES = {"tfidf_logreg": tfidf_logreg, "nearest_centroid": nearest_centroid}


def baseline_figures(
    gold: Sequence[LabeledTweet],
    train_files: Sequence[Path],
    names: Sequence[str] = tuple(BASELINES),
) -> dict[str, dict]:
    """The figures of the baselines ``names``, each fitted on the rows of ``train_files``, on
    the labeled rows ``gold``."""
    train = [row for path in train_files for row in load_labeled(path)]
    texts = [r.text for r in gold]
    return {name: report(gold, BASELINES[name](train, texts)) for name in names}
