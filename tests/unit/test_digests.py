"""What a digest holds: every tweet kept and counted, when it is due, and what is left when
tweets arrived while it was being sent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from switchboard.notify.config import Subscription
from switchboard.notify.digest import after_sent, counted, digest_id, due_at, item_key
from switchboard.shared.events import PendingDigest
from tests.factories import a_routed_tweet

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def pending_of(count: int, start: PendingDigest | None = None) -> PendingDigest:
    pending = start
    for _ in range(count):
        pending = counted(pending, "chatter", NOW)
    assert pending is not None
    return pending


def routed(n: int):  # noqa: ANN201
    return a_routed_tweet("community", "low", id=f"t-{n}")


def test_every_tweet_is_kept_under_its_number_and_counted():
    pending = pending_of(PendingDigest.SHOWN + 5)
    assert pending.count == PendingDigest.SHOWN + 5
    assert (pending.first, pending.next, pending.kept) == (0, PendingDigest.SHOWN + 5, 105)
    assert pending.since == NOW


def test_what_arrived_while_a_digest_was_sent_waits_for_the_next():
    sent = pending_of(3)
    current = pending_of(2, sent)  # two more while the email was on its way
    later = NOW + timedelta(minutes=1)
    left = after_sent(current, sent, later)
    assert left is not None and left.since == later
    assert (left.count, left.first, left.next) == (2, 3, 5)  # tweets 3 and 4 wait
    assert after_sent(sent, sent, later) is None  # nothing arrived: nothing left


def test_a_digest_kept_by_an_earlier_version_keeps_its_count_of_unkept_tweets():
    # Before every tweet was kept, those beyond the hundred listed were only counted.
    earlier = PendingDigest(subscription="chatter", count=105, first=0, next=100, since=NOW)
    current = pending_of(1, earlier)
    assert (current.count, current.kept) == (106, 101)
    left = after_sent(current, earlier, NOW)
    assert left is not None and (left.count, left.first, left.next) == (1, 100, 101)


def test_items_sort_by_their_number_within_a_subscription():
    keys = [item_key("chatter", n) for n in (2, 10, 1)]
    assert sorted(keys) == [item_key("chatter", n) for n in (1, 2, 10)]
    assert item_key("chatter", 1) != item_key("chatter-2", 1)


def test_a_digest_is_due_a_period_after_its_first_tweet_at_once_when_full_or_at_its_retry():
    subscription = Subscription(name="chatter", departments=["community"], to=["a@b.example"],
                                digest_minutes=60)  # fmt: skip
    pending = pending_of(1)
    assert due_at(pending, subscription) == NOW + timedelta(minutes=60)
    assert due_at(pending_of(PendingDigest.FULL - 1), subscription) == NOW + timedelta(minutes=60)
    assert due_at(pending_of(PendingDigest.FULL), subscription) == NOW  # full: at once
    retry = NOW + timedelta(minutes=90)
    for waiting in (pending, pending_of(PendingDigest.FULL)):  # the relay is not asked sooner
        assert due_at(waiting.model_copy(update={"retry_at": retry}), subscription) == retry


def test_the_same_tweets_give_the_same_message_id_and_others_another():
    three = [routed(n) for n in range(3)]
    assert digest_id(pending_of(3), three) == digest_id(pending_of(3), three)
    assert digest_id(pending_of(3), three) != digest_id(pending_of(4), [*three, routed(3)])
    assert digest_id(pending_of(3), three) != digest_id(pending_of(4), three)  # one more counted
