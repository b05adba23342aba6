"""Demo accounting: lost, duplicates, deliveries and latency percentiles."""

from __future__ import annotations

import base64
import json

from switchboard.cli.tally import Tally, percentile
from switchboard.route.decide import route
from switchboard.shared import topics
from switchboard.shared.config import RouteConfig, Subscription
from switchboard.shared.events import DeadLetter, DecodeError
from tests.factories import a_classified_tweet as classified


def routed(tweet_id: str, department: str = "customer_service", urgency: str = "high"):
    event = classified(department, 0.9, urgency)
    event = event.model_copy(update={"tweet": event.tweet.model_copy(update={"id": tweet_id})})
    return route(event, RouteConfig())[0]


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
    assert summary["routed"] == {"customer_service": 2} and summary["triage"] == 1


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
