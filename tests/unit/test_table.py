"""What a changelog table holds in memory: compressed values, and beside them only what sweeps
need (expiry times, the SLA index), kept in step with every change."""

from __future__ import annotations

import gc
import tracemalloc
from datetime import UTC, datetime, timedelta

from switchboard.route import conversations
from switchboard.route.rules import evaluate
from switchboard.shared import topics
from switchboard.shared.config import SwitchboardConfig
from switchboard.shared.events import ConversationState, RouteDecision
from switchboard.shared.labels import Urgency
from switchboard.shared.settings import KafkaSettings
from switchboard.shared.table import ChangelogTable
from tests.factories import a_classified_tweet

NOW = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
TEXT = (
    "@SkylarkHelp my bag never arrived at LHR, booking QX7H2P, 3 days now and I have a "
    "conference tomorrow"
)
CONFIG = SwitchboardConfig.model_validate(
    {"handles": [{"handle": "@SkylarkHelp", "user_id": "1", "brand": "Skylark",
                  "segment": "support", "default_department": "customer_service"}]}
)  # fmt: skip


def conversations_table() -> ChangelogTable[ConversationState, tuple[datetime, Urgency]]:
    return ChangelogTable(KafkaSettings(), topics.ROUTE_CONVERSATIONS, ConversationState,
                          index=conversations.awaiting_due)  # fmt: skip


def awaiting_state(conversation: str, urgency: str = "high") -> ConversationState:
    """A first tweet routed the way route routes it: it now awaits a reply, with an SLA."""
    event = a_classified_tweet("customer_service", 0.8, urgency, id=f"t-{conversation}",
                               conversation_id=conversation, text=TEXT)  # fmt: skip
    outcome = evaluate(event, CONFIG, None, NOW)
    decision = RouteDecision(
        destination=outcome.destination, department=outcome.department,
        topic=topics.department_topic(outcome.department), copies=outcome.copies,
        escalated=outcome.escalated, reasons=outcome.reasons, confidence_threshold=0.45,
        rules_version="rules-0123456789ab", owner=outcome.owner, priority=outcome.priority,
        sla_due_at=outcome.sla_due_at,
    )  # fmt: skip
    state = conversations.after_routing(None, event, outcome, decision, NOW)
    assert state is not None and state.awaiting is not None and state.awaiting.tweet is not None
    return state


def held_bytes(make: object, n: int) -> float:
    """Bytes per item still allocated after ``make(i)`` for ``n`` items (and their sources
    dropped)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = make(n)  # type: ignore[operator]  # alive until measured
        gc.collect()
        held = (tracemalloc.get_traced_memory()[0] - before) / n
        del kept
        return held
    finally:
        tracemalloc.stop()


def test_a_conversation_costs_route_about_a_kilobyte():
    """Route remembers every active conversation for ``ttl_hours`` (72 by default): at 8 KB
    each, as objects, a busy brand's few million conversations would not fit in memory."""

    def as_objects(n: int) -> dict[str, ConversationState]:
        return {str(i): awaiting_state(str(i)) for i in range(n)}

    def in_table(n: int) -> ChangelogTable:
        table = conversations_table()
        for i in range(n):
            table.put(str(i), awaiting_state(str(i)))
        return table

    objects, table = held_bytes(as_objects, 1000), held_bytes(in_table, 1000)
    assert table < 1300, f"{table:.0f} bytes per conversation"
    assert objects > 3 * table, (objects, table)


def test_values_come_back_as_they_were_put_and_the_index_follows_them():
    table = conversations_table()
    state = awaiting_state("c1", "critical")
    table.put("c1", state)
    assert table.get("c1") == state and "c1" in table and len(table) == 1
    assert state.awaiting is not None and state.awaiting.due_at is not None
    assert table.indexed() == [("c1", (state.awaiting.due_at, Urgency.CRITICAL))]

    alerted = state.awaiting.model_copy(update={"breach_alerted": True})
    table.put("c1", state.model_copy(update={"awaiting": alerted}))
    assert table.indexed() == []  # alerted once: no sweep looks at it again
    assert table.get("missing") is None


def test_expiry_uses_each_values_last_update_and_forgets_its_index_too():
    table = conversations_table()
    old = awaiting_state("old")
    fresh = awaiting_state("fresh").model_copy(update={"updated_at": NOW + timedelta(hours=80)})
    table.put("old", old)
    table.put("fresh", fresh)
    tombstones = table.expire(NOW + timedelta(hours=72))
    assert [(t.key, t.value) for t in tombstones] == [(b"old", None)]
    assert "old" not in table and [key for key, _ in table.indexed()] == ["fresh"]
