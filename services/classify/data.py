"""Labeled tweets on disk and eval/predict inputs.

Training data is one or more folders of ``{train,dev,test}.jsonl``: the tweets written for the
project (``data/labeled``), real tweets labeled by the project (``data/labeled/real``), and a
company's own (``make train DATA=...``). A line is ``{"id"?, "text", "department"?,
"urgency"?, "handle"?, "lang"?, "source"?, "licence"?}`` plus any provenance fields (industry,
segment, review), which are kept but not used for training.

``licence`` is the licence of the tweet's text as its source states it; a line without one was
written for the project and is under the project's own licence. It decides which rows may
train a model meant for commercial use (``commercial_use``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from switchboard.shared.labels import Department, Urgency

DATA_DIR = Path("data/labeled")
REAL_DATA_DIR = DATA_DIR / "real"
DEFAULT_DATA = (DATA_DIR, REAL_DATA_DIR)

# Licences that allow training a model for commercial use, by SPDX-like name in lower case with
# hyphens (as the real pool states them: "MIT (upstream: ...)"): permissive ones, and Creative
# Commons' attribution-only licences. Anything else (non-commercial, no-derivatives,
# share-alike, unknown) stays out of such a model.
PERMISSIVE_LICENCES = frozenset({
    "mit", "mit-0", "apache-2.0", "bsd-2-clause", "bsd-3-clause", "isc", "0bsd", "unlicense",
    "cc0", "cc0-1.0", "cc-by-2.0", "cc-by-3.0", "cc-by-4.0",
})  # fmt: skip
PROJECT_LICENCE = "Apache-2.0 (written for the project)"
REAL_WEIGHT = 2.0  # a real tweet's loss weight against a written one's (chosen on real dev)


@dataclass(frozen=True, slots=True)
class DataFolder:
    """A folder of ``train.jsonl``, ``dev.jsonl`` and ``test.jsonl`` (each optional but train),
    and the loss weight of its training rows."""

    path: Path
    weight: float = 1.0
    overrides: bool = False  # its rows replace other folders' rows of the same text (corrections)

    @classmethod
    def parse(cls, spec: str) -> DataFolder:
        """``DIR`` or ``DIR:WEIGHT`` (the command line's ``--data``)."""
        path, _, weight = spec.rpartition(":") if ":" in spec else (spec, "", "")
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"--data {spec!r}: the weight after ':' must be a number") from None
        if value <= 0:
            raise ValueError(f"--data {spec!r}: the weight must be positive")
        return cls(Path(path), value)

    @property
    def name(self) -> str:
        return self.path.name

    def split(self, name: str) -> Path:
        return self.path / f"{name}.jsonl"


def default_data() -> list[DataFolder]:
    """The written tweets, then the real ones (weighted, and last: their dev split selects)."""
    written, real = DEFAULT_DATA
    return [DataFolder(written), DataFolder(real, REAL_WEIGHT)]


class DataError(ValueError):
    """A line of a data file that cannot be used, with its file and line number."""


@dataclass(frozen=True, slots=True)
class TweetText:
    id: str
    text: str
    handle: str | None = None
    lang: str | None = None
    department: Department | None = None
    urgency: Urgency | None = None
    extra: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class LabeledTweet:
    text: str
    department: Department
    urgency: Urgency
    licence: str = PROJECT_LICENCE
    source: str | None = None
    # read because a model or keyword pointed at it as likely critical or hard, not drawn as
    # traffic is: kept out of the critical threshold's fit (train.py, threshold_rows)
    sought: bool = False


def commercial_use(licence: str) -> bool:
    """Whether text under ``licence`` may train a model that is used commercially."""
    return licence == PROJECT_LICENCE or spdx_name(licence_family(licence)) in PERMISSIVE_LICENCES


def spdx_name(family: str) -> str:
    """A licence family as a lower-case SPDX-like name: "CC BY 4.0" -> "cc-by-4.0", "MIT
    License" -> "mit", "CC0 1.0 Universal" -> "cc0-1.0"."""
    words = [w for w in family.lower().split() if w not in ("license", "licence", "universal")]
    return "-".join(words)


def licence_of(row: TweetText) -> str:
    """A row's ``licence`` field; a row without one is the project's own (docs/classifier.md)."""
    return row.extra.get("licence") or PROJECT_LICENCE


def licence_family(licence: str) -> str:
    """The licence without the provenance remarks the pool adds after it."""
    if licence == PROJECT_LICENCE:
        return "Apache-2.0"
    return licence.split(" (")[0].split(";")[0].strip()


def read_tweets(path: Path) -> list[TweetText]:
    """One JSON object a line (``text``, optional ``id``, labels, anything else kept as
    ``extra``); a line that is none raises DataError naming the file and the line."""
    rows = []
    with Path(path).open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{number}: not UTF-8 text ({exc.reason} at column "
                                f"{exc.start + 1})") from None  # fmt: skip
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError(f"a JSON object is needed, not {type(record).__name__}")
                text = record.pop("text")
                if not isinstance(text, str) or not text.strip():
                    raise ValueError("text must be a non-empty string")
                department = record.pop("department", None)
                urgency = record.pop("urgency", None)
                rows.append(
                    TweetText(
                        id=str(record.pop("id", number)),
                        text=text,
                        handle=record.pop("handle", None),
                        lang=record.pop("lang", None),
                        department=Department(department) if department else None,
                        urgency=Urgency(urgency) if urgency else None,
                        extra=record,
                    )
                )
            except (KeyError, ValueError, TypeError, AttributeError) as exc:
                raise DataError(f"{path}:{number}: {type(exc).__name__}: {exc}") from None
    return rows


def load_labeled(path: Path) -> list[LabeledTweet]:
    """Rows that carry both labels; a row missing either is an error naming its line."""
    labeled = []
    for number, row in enumerate(read_tweets(path), start=1):
        if row.department is None or row.urgency is None:
            raise DataError(f"{path}: row {number} (id {row.id}) lacks department or urgency")
        labeled.append(
            LabeledTweet(
                row.text,
                row.department,
                row.urgency,
                licence=licence_of(row),
                source=row.extra.get("source"),
                sought=row.extra.get("sought") is True,
            )
        )
    return labeled


def content_sha256(path: Path) -> str:
    """Hash of what training reads from a file (text and labels, in order).

    Provenance fields (batch, industry, review notes) can change without invalidating a model
    card; any change to a text or a label changes the hash."""
    digest = hashlib.sha256()
    for row in load_labeled(path):
        digest.update(json.dumps([row.text, row.department, row.urgency]).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def near_duplicates(
    queries: list[str], corpus: list[str], threshold: float = 0.75
) -> list[tuple[int, int, float]]:
    """(query index, corpus index, cosine) for pairs whose character n-grams nearly coincide.

    Cosine similarity of binary character 3-5-gram vectors: a paraphrase of the same complaint
    scores about 0.5, a copy with another order number or a dropped apostrophe about 0.8.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    from switchboard.classify.tokens import prepare_text

    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), use_idf=False, binary=True)
    vectors = vectorizer.fit_transform([prepare_text(t) for t in (*queries, *corpus)])
    similarity = (vectors[: len(queries)] @ vectors[len(queries) :].T).tocoo()
    # Most pairs share some n-gram: keep the near ones before leaving numpy.
    near = similarity.data >= threshold
    rows, cols, scores = similarity.row[near], similarity.col[near], similarity.data[near]
    return sorted(
        (int(q), int(c), round(float(s), 3)) for q, c, s in zip(rows, cols, scores, strict=True)
    )
