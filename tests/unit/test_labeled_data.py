"""The labeled data in the repository: sizes, label coverage, and a test split kept apart."""

from __future__ import annotations

from collections import Counter

import pytest

from switchboard.classify.data import near_duplicates, read_tweets
from switchboard.shared.labels import Department, Urgency
from tests.conftest import LABELED


@pytest.fixture(scope="module")
def splits():
    return {split: read_tweets(LABELED / f"{split}.jsonl") for split in ("train", "dev", "test")}


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


def test_no_text_appears_twice(splits):
    texts = Counter(r.text.strip().lower() for rows in splits.values() for r in rows)
    repeated = [t for t, n in texts.items() if n > 1]
    assert not repeated, repeated[:5]


def test_no_test_tweet_is_a_near_duplicate_of_a_training_or_dev_tweet(splits):
    seen = [r.text for r in splits["train"] + splits["dev"]]
    pairs = near_duplicates([r.text for r in splits["test"]], seen, threshold=0.75)
    assert not pairs, [(splits["test"][q].text, seen[c], s) for q, c, s in pairs[:5]]


def test_the_near_duplicate_check_catches_a_lightly_edited_copy():
    original = "@ParceloHelp my order #88231 never arrived and the app won't refund me, 2 weeks!!"
    edited = "@ParceloEats my order #90412 never arrived and the app wont refund me, 2 weeks!"
    other = "@ParceloHelp is there a student discount on the annual Parcelo Plus plan?"
    assert [q for q, _, _ in near_duplicates([edited, other], [original])] == [0]
