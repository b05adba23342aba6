"""What a digest holds: the first tweets listed, every tweet counted, and what is left when
tweets arrived while it was being sent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from switchboard.notify.digest import after_sent, digest_id, due_at, with_item
from switchboard.shared.config import Subscription
from switchboard.shared.events import DigestItem, PendingDigest
from tests.factories import a_classified_tweet, routed_from

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def item(n: int) -> DigestItem:
    routed = routed_from(a_classified_tweet("community", 0.9, "low", id=f"t-{n}"))
    return DigestItem(subscription="chatter", routed=routed)


def pending_of(count: int) -> PendingDigest:
    pending = None
    for n in range(count):
        pending = with_item(pending, item(n), NOW)
    assert pending is not None
    return pending


def test_tweets_are_listed_up_to_shown_and_all_are_counted():
    pending = pending_of(PendingDigest.SHOWN + 5)
    assert pending.count == PendingDigest.SHOWN + 5
    assert [r.tweet.id for r in pending.tweets] == [f"t-{n}" for n in range(PendingDigest.SHOWN)]
    assert pending.since == NOW


def test_what_arrived_while_a_digest_was_sent_waits_for_the_next():
    sent = pending_of(3)
    current = with_item(with_item(sent, item(3), NOW), item(4), NOW)
    later = NOW + timedelta(minutes=1)
    left = after_sent(current, sent, later)
    assert left is not None and left.count == 2 and left.since == later
    assert [r.tweet.id for r in left.tweets] == ["t-3", "t-4"]
    assert after_sent(sent, sent, later) is None  # nothing arrived: nothing left


def test_counted_but_unlisted_tweets_stay_counted_after_a_full_digest():
    sent = pending_of(PendingDigest.SHOWN)
    current = with_item(sent, item(PendingDigest.SHOWN), NOW)  # counted, not listed
    left = after_sent(current, sent, NOW)
    assert left is not None and left.count == 1 and left.tweets == []


def test_a_digest_is_due_a_period_after_its_first_tweet_or_at_its_retry():
    subscription = Subscription(name="chatter", departments=["community"], to=["a@b.example"],
                                digest_minutes=60)  # fmt: skip
    pending = pending_of(1)
    assert due_at(pending, subscription) == NOW + timedelta(minutes=60)
    retry = NOW + timedelta(minutes=90)
    assert due_at(pending.model_copy(update={"retry_at": retry}), subscription) == retry


def test_the_same_tweets_give_the_same_message_id_and_others_another():
    assert digest_id(pending_of(3)) == digest_id(pending_of(3))
    assert digest_id(pending_of(3)) != digest_id(pending_of(4))
    more = pending_of(PendingDigest.SHOWN + 1)  # same listed tweets, one more counted
    assert digest_id(more) != digest_id(pending_of(PendingDigest.SHOWN))
