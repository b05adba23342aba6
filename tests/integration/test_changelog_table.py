"""Changelog tables forget what is past its age, in memory and on the compacted topic."""

from __future__ import annotations

import uuid
from datetime import timedelta

from switchboard.shared import topics
from switchboard.shared.events import ConversationState, utc_now
from switchboard.shared.kafka import make_producer, publish
from switchboard.shared.table import ChangelogTable


def a_state(conversation: str, hours_ago: float) -> ConversationState:
    updated_at = utc_now() - timedelta(hours=hours_ago)
    return ConversationState(conversation_id=conversation, department="legal",
                             max_urgency="high", tweets=1, updated_at=updated_at)  # fmt: skip


async def test_expired_entries_leave_memory_and_do_not_come_back_on_restore(kafka):
    run = uuid.uuid4().hex[:8]
    old, fresh = f"{run}-old", f"{run}-fresh"
    table = ChangelogTable(kafka, topics.ROUTE_CONVERSATIONS, ConversationState)
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

    restored = ChangelogTable(kafka, topics.ROUTE_CONVERSATIONS, ConversationState)
    await restored.restore()
    assert old not in restored and restored.get(fresh) == table.get(fresh)
