"""Accounting for ``switchboard run`` and ``demo``: where did every tweet end up? (pure logic)"""

from __future__ import annotations

import base64
import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from switchboard.notify.config import Subscription
from switchboard.shared import topics
from switchboard.shared.events import Alert, DeadLetter, Delivery, RoutedTweet, SpikeAlert
from switchboard.shared.labels import Department


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile, ``q`` in [0, 100]."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def tweet_id_of_dead_letter(letter: DeadLetter) -> str | None:
    """Best effort: the tweet id inside a dead-lettered message, if it has one."""
    try:
        original = json.loads(base64.b64decode(letter.original_base64))
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(original, dict):
        for holder in (original.get("data"), original.get("tweet")):
            if isinstance(holder, dict) and isinstance(holder.get("id"), str):
                return holder["id"]
    return None


@dataclass
class Tally:
    """Everything observed on the output topics since the run began."""

    subscriptions: list[Subscription] = field(default_factory=list)
    primary: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    routed: Counter[str] = field(default_factory=Counter)
    triage: int = 0
    dropped: int = 0
    copies: int = 0
    copied: set[tuple[str, str]] = field(default_factory=set)  # (tweet id, copy topic)
    alerts: int = 0
    dead_letters: int = 0
    dead_letters_by_stage: Counter[str] = field(default_factory=Counter)
    dead_lettered_ids: set[str] = field(default_factory=set)
    deliveries: Counter[str] = field(default_factory=Counter)
    delivery_ids: set[tuple[str, str]] = field(default_factory=set)
    failed_deliveries: Counter[str] = field(default_factory=Counter)
    expected_deliveries: int = 0
    routed_ms: list[float] = field(default_factory=list)
    delivered_ms: list[float] = field(default_factory=list)
    recent: list[RoutedTweet] = field(default_factory=list)
    first_ingested: datetime | None = None  # of the tweets seen routed; with last_routed...
    last_routed: datetime | None = None  # ...the span over which they went through

    def observe_routed(self, topic: str, event: RoutedTweet) -> None:
        # A tweet republished after a crash (at least once) is a duplicate and expects nothing.
        copy_topics = {topics.department_topic(d) for d in event.route.copies}
        if topic != event.route.topic and topic in copy_topics:  # a rule's copy_to
            if (event.tweet.id, topic) not in self.copied:
                self.copied.add((event.tweet.id, topic))
                self.copies += 1
                self._expect_deliveries(topic.removeprefix(topics.DEPARTMENT_PREFIX), event)
            return
        again = event.tweet.id in self.primary
        self.primary[event.tweet.id].append(topic)
        if again:
            return
        if topic == topics.TRIAGE:
            self.triage += 1
        elif topic == topics.DROPPED:
            self.dropped += 1
        else:
            self.routed[event.route.department.value] += 1
            self._expect_deliveries(event.route.department.value, event)
        if event.trace.routed_at is not None:
            elapsed = event.trace.routed_at - event.trace.ingested_at
            self.routed_ms.append(elapsed.total_seconds() * 1000)
            self._span(event.trace.ingested_at, event.trace.routed_at)
        self.recent = [*self.recent[-9:], event]

    def _expect_deliveries(self, department: str, event: RoutedTweet) -> None:
        urgency = event.classification.urgency
        self.expected_deliveries += sum(
            s.matches(Department(department), urgency) and not s.digests(urgency)
            for s in self.subscriptions
        )

    def _span(self, ingested: datetime, routed: datetime) -> None:
        if self.first_ingested is None or ingested < self.first_ingested:
            self.first_ingested = ingested
        if self.last_routed is None or routed > self.last_routed:
            self.last_routed = routed

    def routed_per_s(self) -> float | None:
        """Tweets routed per second, from the first ingested to the last routed."""
        if self.first_ingested is None or self.last_routed is None or len(self.routed_ms) < 2:
            return None
        span = (self.last_routed - self.first_ingested).total_seconds()
        return len(self.routed_ms) / span if span > 0 else None

    def observe_alert(self, event: Alert | SpikeAlert) -> None:
        self.alerts += 1

    def observe_dead_letter(self, letter: DeadLetter) -> None:
        self.dead_letters += 1
        self.dead_letters_by_stage[letter.stage] += 1
        tweet_id = tweet_id_of_dead_letter(letter)
        if tweet_id is not None:
            self.dead_lettered_ids.add(tweet_id)

    def observe_delivery(self, delivery: Delivery) -> None:
        seen = (delivery.delivery_id, delivery.outcome)
        if seen in self.delivery_ids:  # republished after a crash
            return
        self.delivery_ids.add(seen)
        if delivery.outcome == "delivered":
            self.deliveries[delivery.channel] += 1
            if delivery.trace.delivered_at is not None:
                elapsed = delivery.trace.delivered_at - delivery.trace.ingested_at
                self.delivered_ms.append(elapsed.total_seconds() * 1000)
        else:
            self.failed_deliveries[delivery.channel] += 1

    def undelivered(self) -> set[str]:
        """Delivery ids that failed (parked) and were not delivered since (e.g. by a redrive)."""
        failed = {d for d, outcome in self.delivery_ids if outcome == "failed"}
        return failed - {d for d, outcome in self.delivery_ids if outcome == "delivered"}

    def unaccounted(self, ids: set[str]) -> set[str]:
        """Those of ``ids`` neither routed nor dead-lettered yet. A wait loop passes what the
        last call returned, so each poll costs the tweets in flight, not all those sent."""
        return {i for i in ids if i not in self.primary and i not in self.dead_lettered_ids}

    def deliveries_settled(self) -> bool:
        done = sum(self.deliveries.values()) + sum(self.failed_deliveries.values())
        return done >= self.expected_deliveries

    def duplicates(self) -> int:
        """Tweets published more than once on primary topics (same topic twice included)."""
        return sum(1 for found in self.primary.values() if len(found) > 1)

    def summary(self, sent: set[str]) -> dict:
        return {
            "sent": len(sent),
            "routed": dict(sorted(self.routed.items())),
            "triage": self.triage,
            "dropped": self.dropped,
            "copies": self.copies,
            "alerts": self.alerts,
            "deadletter": self.dead_letters,
            "lost": len(self.unaccounted(sent)),
            "duplicates": self.duplicates(),
            "deliveries": dict(sorted(self.deliveries.items())),
            "failed_deliveries": dict(sorted(self.failed_deliveries.items())),
            "p50_ms": _round(percentile(self.routed_ms, 50)),
            "p95_ms": _round(percentile(self.routed_ms, 95)),
            "p99_ms": _round(percentile(self.routed_ms, 99)),
            "delivered_p50_ms": _round(percentile(self.delivered_ms, 50)),
            "delivered_p95_ms": _round(percentile(self.delivered_ms, 95)),
            "delivered_p99_ms": _round(percentile(self.delivered_ms, 99)),
        }


def delivered_intact(summary: dict) -> bool:
    """The demo's verdict on a ``Tally.summary``: no tweet lost, none published twice."""
    return not (summary["lost"] or summary["duplicates"])


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
