"""Demo accounting: lost, duplicates, deliveries and latency percentiles."""

from __future__ import annotations

import base64
import json

from switchboard.cli.tally import Tally, delivered_intact, percentile
from switchboard.notify.config import Subscription
from switchboard.shared import topics
from switchboard.shared.events import DeadLetter, DecodeError
from tests.factories import a_routed_tweet


def routed(tweet_id: str, department: str = "customer_service", urgency: str = "high"):
    return a_routed_tweet(department, urgency, id=tweet_id)


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99
    assert percentile([7.0], 99) == 7.0 and percentile([], 50) is None


def test_lost_and_duplicates():
    tally = Tally()
    tally.observe_routed("switchboard.dept.customer_service", routed("1"))
    tally.observe_routed("switchboard.dept.customer_service", routed("2"))
    tally.observe_routed(topics.TRIAGE, routed("2"))
    summary = tally.summary({"1", "2", "3"})
    assert summary["lost"] == 1 and summary["duplicates"] == 1
    # each tweet counts where it was first published; the second publication is the duplicate
    assert summary["routed"] == {"customer_service": 2} and summary["triage"] == 0
    assert not delivered_intact(summary)  # the demo exits 1
    assert not delivered_intact({**summary, "lost": 0})
    assert not delivered_intact({**summary, "duplicates": 0})
    assert delivered_intact({**summary, "lost": 0, "duplicates": 0})


def test_a_dead_lettered_tweet_is_accounted_for():
    tally = Tally()
    original = json.dumps({"data": {"id": "9", "text": None}}).encode()
    tally.observe_dead_letter(DeadLetter.of("ingest", DecodeError("invalid_tweet", "x"), original))
    assert tally.summary({"9"})["lost"] == 0
    garbage = DeadLetter(
        stage="ingest",
        reason="invalid_json",
        error="x",
        original_base64=base64.b64encode(b"{").decode(),
        original_preview="{",
    )
    tally.observe_dead_letter(garbage)
    assert tally.summary({"9"})["deadletter"] == 2


def test_unaccounted_shrinks_as_tweets_are_routed_or_dead_lettered():
    tally = Tally()
    waiting = tally.unaccounted({"1", "2", "9"})
    assert waiting == {"1", "2", "9"}
    tally.observe_routed("switchboard.dept.customer_service", routed("1"))
    original = json.dumps({"data": {"id": "9", "text": None}}).encode()
    tally.observe_dead_letter(DeadLetter.of("ingest", DecodeError("invalid_tweet", "x"), original))
    assert tally.unaccounted(waiting) == {"2"}


def test_deliveries_are_expected_per_matching_subscription():
    tally = Tally(
        subscriptions=[
            Subscription(name="a", departments=["customer_service"], to=["a@example.com"]),
            Subscription(
                name="b", departments=["customer_service"], urgencies=["high"], to=["b@example.com"]
            ),
            Subscription(name="c", departments=["legal"], to=["c@example.com"]),
        ]
    )
    tally.observe_routed("switchboard.dept.customer_service", routed("1"))
    tally.observe_routed(topics.TRIAGE, routed("2"))  # triage notifies nobody yet
    assert tally.expected_deliveries == 2 and not tally.deliveries_settled()


def test_rule_copies_and_drops_are_not_duplicates_or_losses():
    tally = Tally(subscriptions=[Subscription(name="press", departments=["communications"],
                                              to=["p@example.com"])])  # fmt: skip
    copied = routed("1")
    copied = copied.model_copy(
        update={"route": copied.route.model_copy(update={"copies": ["communications"]})}
    )
    tally.observe_routed("switchboard.dept.customer_service", copied)
    tally.observe_routed("switchboard.dept.communications", copied)
    dropped = routed("2")
    dropped = dropped.model_copy(
        update={"route": dropped.route.model_copy(
            update={"destination": "dropped", "topic": topics.DROPPED})}
    )  # fmt: skip
    tally.observe_routed(topics.DROPPED, dropped)
    summary = tally.summary({"1", "2"})
    assert (summary["lost"], summary["duplicates"], summary["copies"], summary["dropped"]) == (
        0, 0, 1, 1,
    )  # fmt: skip
    assert tally.expected_deliveries == 1  # the copy reaches the press subscription


def test_a_tweet_republished_after_a_crash_is_a_duplicate_and_expects_no_more_deliveries():
    tally = Tally(subscriptions=[Subscription(name="a", departments=["customer_service"],
                                              to=["a@example.com"])])  # fmt: skip
    event = routed("7")
    tally.observe_routed("switchboard.dept.customer_service", event)
    tally.observe_routed("switchboard.dept.customer_service", event)
    assert tally.expected_deliveries == 1 and tally.duplicates() == 1
    assert tally.routed["customer_service"] == 1 and len(tally.routed_ms) == 1


def test_the_live_view_shows_urgency_and_confidence_in_an_80_column_terminal():
    from rich.console import Console

    from switchboard.cli.live import summary_view

    tally = Tally()
    long_text = "my bag never arrived and nobody answers the phone, " * 4
    event = routed("77", "customer_service", "critical")
    event = event.model_copy(update={"tweet": event.tweet.model_copy(update={"text": long_text})})
    tally.observe_routed(event.route.topic, event)
    console = Console(width=80, record=True, color_system=None)
    console.print(summary_view(tally, {"classify": True}, None))
    row = next(line for line in console.export_text().splitlines() if "critical" in line)
    assert "0.90" in row and "my bag never" in row


def test_the_live_view_shows_the_duplicates_ingest_dropped():
    """A second run of the same samples routes nothing new: the view says why."""
    from rich.console import Console

    from switchboard.cli.live import summary_view

    console = Console(width=80, record=True, color_system=None)
    console.print(summary_view(Tally(), {"ingest": True}, None, duplicates=400))
    console.print(summary_view(Tally(), {"ingest": False}, None, duplicates=None))
    rows = [line for line in console.export_text().splitlines() if "duplicates dropped" in line]
    assert "400" in rows[0] and "n/a" in rows[1]
