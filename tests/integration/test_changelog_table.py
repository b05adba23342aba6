"""Changelog tables forget what is past its age, in memory and on the compacted topic."""

from __future__ import annotations

import uuid
from datetime import timedelta

from switchboard.route import conversations
from switchboard.shared import topics
from switchboard.shared.events import AwaitingReply, ConversationState, utc_now
from switchboard.shared.kafka import make_producer, publish
from switchboard.shared.table import ChangelogTable


def a_state(conversation: str, hours_ago: float) -> ConversationState:
    """A conversation last updated ``hours_ago``, awaiting a reply due an hour after that."""
    updated_at = utc_now() - timedelta(hours=hours_ago)
    awaiting = AwaitingReply(tweet_id=f"t-{conversation}", handle="@AcmeLegal", department="legal",
                             urgency="high", received_at=updated_at,
                             due_at=updated_at + timedelta(hours=1))  # fmt: skip
    return ConversationState(conversation_id=conversation, department="legal", max_urgency="high",
                             tweets=1, updated_at=updated_at, awaiting=awaiting)  # fmt: skip


def a_table(kafka) -> ChangelogTable:
    return ChangelogTable(kafka, topics.ROUTE_CONVERSATIONS, ConversationState,
                          index=conversations.awaiting_due)  # fmt: skip


async def test_expired_entries_leave_memory_and_do_not_come_back_on_restore(kafka):
    run = uuid.uuid4().hex[:8]
    old, fresh = f"{run}-old", f"{run}-fresh"
    table = a_table(kafka)
    producer = make_producer(kafka, client_id="test-table")
    await producer.start()
    try:
        await publish(producer, [table.put(old, a_state(old, 80)),
                                 table.put(fresh, a_state(fresh, 1))], "test")  # fmt: skip
        tombstones = table.expire(utc_now() - timedelta(hours=72))
        assert [(t.key, t.value) for t in tombstones] == [(old.encode(), None)]
        assert old not in table and fresh in table
        await publish(producer, tombstones, "test")
    finally:
        await producer.stop()

    restored = a_table(kafka)
    await restored.restore()
    assert old not in restored and restored.get(fresh) == table.get(fresh)
    # what route's SLA sweep looks at is rebuilt with the values
    assert dict(restored.indexed())[fresh] == dict(table.indexed())[fresh]
