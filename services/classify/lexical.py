"""The lexical half of the classifier: word and character n-gram TF-IDF with a logistic
regression per label, blended with the encoder's probabilities.

Why: on real tweets the encoder and a TF-IDF model make different mistakes. The encoder reads
meaning; the n-grams keep what the encoder's tokenization and token window blur: product and
handle names, hashtags, misspellings, ticker symbols. A weighted mean of their calibrated
probabilities routes more real tweets right than either alone, at a fraction of the encoder's
cost per tweet (docs/classifier.md has the figures).

What is stored (beside the adapter and heads, no pickle): ``lexical.json`` (the vectorizers'
settings and vocabularies, the label orders) and ``lexical.safetensors`` (inverse document
frequencies, coefficients and intercepts). The blend weights and the two temperatures live in
the card (``lexical``); the dev split chooses them (``fit_blend``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file
from scipy.sparse import hstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from switchboard.classify.data import LabeledTweet
from switchboard.shared.labels import Department, Urgency

VECTORIZERS: dict[str, dict[str, Any]] = {
    "words": {"ngram_range": (1, 2), "min_df": 2, "sublinear_tf": True},
    "chars": {"analyzer": "char_wb", "ngram_range": (2, 5), "min_df": 2, "sublinear_tf": True},
}
LABELS: dict[str, list[str]] = {
    "department": [d.value for d in Department],
    "urgency": [u.value for u in Urgency],
}
REGULARIZATION_C = 10.0
WEIGHTS = tuple(step / 10 for step in range(11))  # the blend weights dev chooses from: 0 to 1


@dataclass(frozen=True, slots=True)
class Blend:
    """How much of each label's probability comes from the lexical model; the temperatures
    that calibrate its logits; and those that calibrate the blend (a mean of two calibrated
    distributions is less confident than it is right). All fitted on dev."""

    department_weight: float = 0.0
    urgency_weight: float = 0.0
    lexical_department_temperature: float = 1.0
    lexical_urgency_temperature: float = 1.0
    department_temperature: float = 1.0
    urgency_temperature: float = 1.0

    @classmethod
    def from_card(cls, card: dict) -> Blend | None:
        section = card.get("lexical")
        return None if section is None else cls(**section["blend"])


@dataclass(frozen=True, slots=True)
class _Part:
    """One vectorizer as served: its n-gram ids of a text, its idf, its first column."""

    ids: Callable[[str], list[int]]
    idf: np.ndarray
    offset: int

    @classmethod
    def of(cls, vectorizer: TfidfVectorizer, offset: int) -> _Part:
        analyze, vocabulary = vectorizer.build_analyzer(), vectorizer.vocabulary_

        def ids(text: str) -> list[int]:
            return [i for i in map(vocabulary.get, analyze(text)) if i is not None]

        if vectorizer.analyzer == "char_wb":
            # char_wb n-grams never cross a word: a text's are its words' in turn, and tweets
            # repeat their words, so each word's ids are worked out once.
            word_ids = lru_cache(maxsize=1 << 16)(ids)

            def by_word(text: str) -> list[int]:
                return [i for word in text.split() for i in word_ids(word)]

            return cls(by_word, vectorizer.idf_.astype(np.float32), offset)
        return cls(ids, vectorizer.idf_.astype(np.float32), offset)


class LexicalModel:
    """Word (1-2) and character (2-5, within words) n-gram TF-IDF, one multinomial logistic
    regression per label; logits in ``LABELS`` order."""

    JSON, TENSORS = "lexical.json", "lexical.safetensors"

    def __init__(
        self,
        vectorizers: dict[str, TfidfVectorizer],
        coefficients: dict[str, np.ndarray],
        intercepts: dict[str, np.ndarray],
    ) -> None:
        self.vectorizers = vectorizers
        self.coefficients = coefficients
        self.intercepts = intercepts
        # Serving: each vectorizer's analyzer, vocabulary, idf and column offset, and each
        # label's coefficients by column (a tweet gathers the rows of its few hundred columns).
        self._parts: list[_Part] = []
        offset = 0
        for vectorizer in vectorizers.values():
            self._parts.append(_Part.of(vectorizer, offset))
            offset += len(vectorizer.vocabulary_)
        self._columns = {label: np.ascontiguousarray(c.T) for label, c in coefficients.items()}

    @classmethod
    def fit(
        cls, texts: Sequence[str], labels: dict[str, Sequence[str]], weights: Sequence[float],
        seed: int = 13,
    ) -> LexicalModel:  # fmt: skip
        """Fitted on prepared ``texts`` with their ``labels`` (by label name) and loss weights."""
        vectorizers = {name: TfidfVectorizer(**kw) for name, kw in VECTORIZERS.items()}
        features = hstack([v.fit_transform(texts) for v in vectorizers.values()]).tocsr()
        coefficients, intercepts = {}, {}
        for label, names in LABELS.items():
            present = [name for name in names if name in set(labels[label])]
            regression = LogisticRegression(
                C=REGULARIZATION_C, max_iter=3000, class_weight="balanced", random_state=seed
            )
            regression.fit(features, labels[label], sample_weight=np.asarray(weights))
            # A class absent from the training rows gets a logit it can never win with.
            coefficient = np.zeros((len(names), features.shape[1]), np.float32)
            intercept = np.full(len(names), -1e4, np.float32)
            for row, name in enumerate(regression.classes_):
                coefficient[names.index(name)] = regression.coef_[row]
                intercept[names.index(name)] = regression.intercept_[row]
            assert set(present) == set(regression.classes_)
            coefficients[label], intercepts[label] = coefficient, intercept
        return cls(vectorizers, coefficients, intercepts)

    def features(self, texts: Sequence[str]) -> Any:
        """The TF-IDF matrix of prepared ``texts``, as scikit-learn computes it (for fitting)."""
        return hstack([v.transform(texts) for v in self.vectorizers.values()]).tocsr()

    def logits(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Each label's logits for prepared ``texts``, one row per text.

        The same figures as ``features(texts) @ coefficients.T`` (test_lexical.py), computed a
        tweet at a time from scikit-learn's own analyzers: its ``transform`` has a fixed cost
        per call larger than the encoder's per tweet, and classify serves micro-batches of a
        few tweets (docs/classifier.md)."""
        rows = {label: np.empty((len(texts), len(names)), np.float32)
                for label, names in LABELS.items()}  # fmt: skip
        for i, text in enumerate(texts):
            columns, values = self._tweet_features(text)
            for label, out in rows.items():
                out[i] = values @ self._columns[label][columns] + self.intercepts[label]
        return rows

    def _tweet_features(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """One tweet's non-zero TF-IDF columns and values: sublinear term frequency times the
        inverse document frequency, each vectorizer's part scaled to unit length."""
        columns: list[np.ndarray] = []
        values: list[np.ndarray] = []
        for part in self._parts:
            counts = Counter(part.ids(text))
            if not counts:
                continue
            index = np.fromiter(counts.keys(), np.int64, len(counts))
            weight = 1.0 + np.log(np.fromiter(counts.values(), np.float32, len(counts)))
            weight *= part.idf[index]
            columns.append(index + part.offset)
            values.append(weight / np.linalg.norm(weight))
        if not columns:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        return np.concatenate(columns), np.concatenate(values)

    def save(self, folder: Path) -> None:
        settings = {
            name: {
                "settings": VECTORIZERS[name],
                "vocabulary": {term: int(i) for term, i in v.vocabulary_.items()},
            }
            for name, v in self.vectorizers.items()
        }
        (folder / self.JSON).write_text(json.dumps({"vectorizers": settings, "labels": LABELS}))
        tensors = {f"idf.{name}": v.idf_.astype(np.float32) for name, v in self.vectorizers.items()}
        for label in LABELS:
            tensors[f"coefficients.{label}"] = self.coefficients[label]
            tensors[f"intercepts.{label}"] = self.intercepts[label]
        save_file(tensors, str(folder / self.TENSORS))

    @classmethod
    def load(cls, folder: Path) -> LexicalModel:
        stored = json.loads((folder / cls.JSON).read_text())
        if stored["labels"] != LABELS:
            raise ValueError(f"{folder / cls.JSON}: labels {stored['labels']} are not {LABELS}")
        tensors = load_file(str(folder / cls.TENSORS))
        vectorizers = {}
        for name, entry in stored["vectorizers"].items():
            settings = {**entry["settings"], "ngram_range": tuple(entry["settings"]["ngram_range"])}
            vectorizer = TfidfVectorizer(**settings, vocabulary=entry["vocabulary"])
            vectorizer.idf_ = tensors[f"idf.{name}"].astype(np.float64)
            vectorizers[name] = vectorizer
        return cls(
            vectorizers,
            {label: tensors[f"coefficients.{label}"] for label in LABELS},
            {label: tensors[f"intercepts.{label}"] for label in LABELS},
        )


def log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """Logs that stay finite where a probability is zero (what temperature scaling fits on)."""
    return np.log(np.maximum(probabilities, 1e-12))


def blended(
    encoder: np.ndarray, lexical: np.ndarray, weight: float, temperature: float = 1.0
) -> np.ndarray:
    """The weighted mean of two rows-of-probabilities arrays, its log scaled by 1/temperature
    and renormalized."""
    if weight == 0:
        return encoder
    mean = (1 - weight) * encoder + weight * lexical
    if temperature == 1.0:
        return mean
    scaled = log_probabilities(mean) / temperature
    exp = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


def card_section(blend: Blend, model: LexicalModel) -> dict:
    return {
        "kind": "TF-IDF word 1-2 and character 2-5 grams, logistic regression per label "
        f"(C={REGULARIZATION_C:g}, balanced classes)",
        "features": sum(len(v.vocabulary_) for v in model.vectorizers.values()),
        "blend": asdict(blend),
        "chosen_from": list(WEIGHTS),
    }


def training_labels(rows: Sequence[LabeledTweet]) -> dict[str, list[str]]:
    return {
        "department": [r.department.value for r in rows],
        "urgency": [r.urgency.value for r in rows],
    }
