"""The labeled data in the repository: sizes, label coverage, provenance, and test splits kept
apart from everything that trains (written and real tweets alike)."""

from __future__ import annotations

from collections import Counter

import pytest

from switchboard.classify.data import DataError, near_duplicates, read_tweets
from switchboard.shared.labels import Department, Urgency
from tests.conftest import LABELED, REAL, jsonl_rows

SPLITS = ("train", "dev", "test")
# What the real data reached (data/labeled/real/README.md); a change that loses rows fails here.
REAL_ROWS = 10_000
REAL_PER_DEPARTMENT: dict[Department, int] = {}  # 250 unless the pool had fewer
REAL_CRITICAL = 400
REAL_CRITICAL_PER_SPLIT = 50


@pytest.fixture(scope="module")
def splits():
    return {split: read_tweets(LABELED / f"{split}.jsonl") for split in SPLITS}


@pytest.fixture(scope="module")
def real():
    return {split: read_tweets(REAL / f"{split}.jsonl") for split in SPLITS}


def test_there_is_enough_data_and_every_label_is_well_covered(splits):
    assert sum(len(rows) for rows in splits.values()) >= 3000
    assert len(splits["test"]) >= 600
    assert len(splits["dev"]) >= 300
    for name, rows in splits.items():
        departments = Counter(r.department for r in rows)
        urgencies = Counter(r.urgency for r in rows)
        assert set(departments) == set(Department), name
        assert set(urgencies) == set(Urgency), name
        assert min(departments.values()) >= 0.05 * len(rows), (name, departments)
        assert min(urgencies.values()) >= 0.07 * len(rows), (name, urgencies)


def test_about_a_fifth_of_tweets_address_a_handle_of_another_segment(splits):
    rows = splits["train"] + splits["dev"]
    mismatched = sum(r.extra.get("hard_case") == "segment_mismatch" or _mismatch(r) for r in rows)
    assert 0.15 * len(rows) <= mismatched <= 0.35 * len(rows), mismatched / len(rows)


SEGMENT_DEPARTMENT = {
    "support": Department.CUSTOMER_SERVICE,
    "promotions": Department.MARKETING,
    "investor": Department.INVESTOR_RELATIONS,
    "news": Department.COMMUNICATIONS,
}


def _mismatch(row) -> bool:
    expected = SEGMENT_DEPARTMENT.get(row.extra.get("segment"))
    return expected is not None and expected != row.department


def test_no_text_appears_twice(splits, real):
    every = [r for group in (splits, real) for rows in group.values() for r in rows]
    texts = Counter(r.text.strip().lower() for r in every)
    repeated = [t for t, n in texts.items() if n > 1]
    assert not repeated, repeated[:5]


def test_no_test_tweet_is_a_near_duplicate_of_a_training_or_dev_tweet(splits, real):
    seen = [r.text for r in splits["train"] + splits["dev"] + real["train"] + real["dev"]]
    tested = splits["test"] + real["test"]
    pairs = near_duplicates([r.text for r in tested], seen, threshold=0.75)
    assert not pairs, [(tested[q].text, seen[c], s) for q, c, s in pairs[:5]]


def test_no_real_dev_tweet_is_a_near_duplicate_of_a_training_tweet(splits, real):
    """The real dev split chooses the epoch and the thresholds: a near-copy of a training tweet
    there would reward memorizing. (The written dev split only reports figures now.)"""
    trained = [r.text for r in splits["train"] + real["train"]]
    pairs = near_duplicates([r.text for r in real["dev"]], trained, threshold=0.75)
    assert not pairs, [(real["dev"][q].text, trained[c], s) for q, c, s in pairs[:5]]


def test_a_label_outside_the_taxonomy_fails_to_load(tmp_path):
    path = tmp_path / "split.jsonl"
    path.write_text('{"text": "@AcmeHelp where is my order", "department": "support", '
                    '"urgency": "normal"}\n')  # fmt: skip
    with pytest.raises(DataError, match="'support' is not a valid Department"):
        read_tweets(path)


def test_there_are_enough_real_tweets_in_every_department_and_urgency(real):
    rows = [r for part in real.values() for r in part]
    assert len(rows) >= REAL_ROWS, len(rows)
    assert len(real["test"]) >= 800 and len(real["dev"]) >= 600
    departments = Counter(r.department for r in rows)
    short = {d: n for d, n in departments.items() if n < REAL_PER_DEPARTMENT.get(d, 250)}
    assert set(departments) == set(Department) and not short, departments
    urgencies = Counter(r.urgency for r in rows)
    assert urgencies[Urgency.CRITICAL] >= REAL_CRITICAL, urgencies
    for split in ("dev", "test"):  # enough critical tweets to set and to check the threshold
        critical = sum(r.urgency is Urgency.CRITICAL for r in real[split])
        assert critical >= REAL_CRITICAL_PER_SPLIT, (split, critical)


def test_every_real_tweet_names_its_source_and_licence_and_was_reviewed(real):
    notes = {}
    for note in jsonl_rows(REAL / "annotations.jsonl"):
        notes[note["id"]] = note
    for split, rows in real.items():
        for row in rows:
            assert row.extra.get("source") and row.extra.get("licence"), (split, row.id)
            note = notes[row.id]
            assert note["reviewed"] is True, row.id  # a second reader checked every label
            if note.get("proposals"):  # readers disagreed: a deciding reader settled it
                assert note["decision"]["label"] == f"{row.department}/{row.urgency}", row.id
            else:
                assert note["first"] == f"{row.department}/{row.urgency}", row.id
    kept = [n for n in notes.values() if not n.get("left_out")]
    assert len(kept) == sum(len(rows) for rows in real.values())


def test_the_near_duplicate_check_catches_a_lightly_edited_copy():
    original = "@ParceloHelp my order #88231 never arrived and the app won't refund me, 2 weeks!!"
    edited = "@ParceloEats my order #90412 never arrived and the app wont refund me, 2 weeks!"
    other = "@ParceloHelp is there a student discount on the annual Parcelo Plus plan?"
    assert [q for q, _, _ in near_duplicates([edited, other], [original])] == [0]
