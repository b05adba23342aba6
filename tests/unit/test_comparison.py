"""Live against candidate (pure): agreement, accuracy on corrected tweets, critical recall and
precision, the disagreements (shared/comparison.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from switchboard.shared.comparison import compare
from switchboard.shared.events import ClassifiedTweet, Correction
from tests.factories import a_classified_tweet

T0 = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)


def labelled(tweet_id: str, department: str, urgency: str, version: str) -> ClassifiedTweet:
    event = a_classified_tweet(department, 0.8, urgency, id=tweet_id, conversation_id=tweet_id,
                               text=f"text of {tweet_id}")  # fmt: skip
    c = event.classification.model_copy(update={"model_version": version})
    return event.model_copy(update={"classification": c})


def corrected(tweet_id: str, department: str | None, urgency: str | None, minutes: int = 0):
    return Correction(
        correction_id=f"ops:{tweet_id}:{minutes}", conversation_id=tweet_id, tweet_id=tweet_id,
        source="ops", by="ana", made_at=T0 + timedelta(minutes=minutes), outcome="rerouted",
        department=department, urgency=urgency, model_version="live-v1",
    )  # fmt: skip


def test_the_candidate_is_judged_against_the_live_model_and_the_corrections():
    live = [labelled("1", "sales", "normal", "live-v1"),
            labelled("2", "sales", "critical", "live-v1"),
            labelled("3", "legal", "low", "live-v1"),
            labelled("4", "marketing", "low", "live-v1")]  # fmt: skip
    shadow = [
        labelled("1", "customer_service", "normal", "cand-v2"),
        labelled("2", "sales", "critical", "cand-v2"),
        labelled("3", "legal", "critical", "cand-v2"),
        labelled("5", "community", "low", "cand-v2"),
    ]  # only the candidate saw 5
    corrections = [corrected("1", "sales", None), corrected("1", "customer_service", None, 5),
                   corrected("3", None, "critical"), corrected("2", None, "high")]  # fmt: skip
    report = compare(live, shadow, corrections, examples=2)
    assert report["corrected_tweets"] == 3 and report["live"]["tweets"] == 4
    (candidate,) = report["candidates"]
    assert (candidate["model_version"], candidate["tweets"], candidate["compared"]) == (
        "cand-v2", 4, 3)  # fmt: skip
    assert candidate["department_agreement"] == round(2 / 3, 4)
    assert candidate["urgency_agreement"] == round(2 / 3, 4)
    live_scores, candidate_scores = (candidate["on_corrected"][k] for k in ("live", "candidate"))
    # tweet 1: the latest correction (customer_service) wins: the candidate is right, live not
    assert (live_scores["department_accuracy"], candidate_scores["department_accuracy"]) == (0, 1)
    # tweet 3 is critical (the candidate said so, live did not); tweet 2 is high (both said
    # critical: a false alarm each)
    assert (live_scores["critical_recall"], live_scores["critical_precision"]) == (0, 0)
    assert (candidate_scores["critical_recall"], candidate_scores["critical_precision"]) == (
        1, 0.5)  # fmt: skip
    assert candidate["disagreements"] == [
        {"live": "sales", "candidate": "customer_service", "count": 1,
         "examples": [{"tweet_id": "1", "text": "text of 1"}]}
    ]  # fmt: skip


def test_without_candidate_labels_or_corrections_nothing_is_made_up():
    report = compare([labelled("1", "sales", "normal", "live-v1")], [], [])
    assert report["candidates"] == [] and report["corrected_tweets"] == 0
    assert report["live"]["on_corrected"]["department_accuracy"] is None
