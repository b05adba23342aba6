"""Company replies read before the conversation they answer.

A company's reply goes from ingest straight to ``switchboard.tweets.brand``, while the tweet it
answers goes through classify first: when classify lags (a burst, a restart), route reads the
reply first, with no conversation to mark answered. Without a note of it, the tweet read later
would wait for a reply already given and raise an SLA alert for an answered conversation.
``EarlyReplies`` keeps that note; a conversation route holds keeps its own
(``ConversationState.replied_at``).
"""

from __future__ import annotations

from datetime import datetime

import faust

from switchboard.shared.streams import TtlMemory


class EarlyReplies:
    """When a company handle last wrote in a conversation route did not hold, by conversation
    id, kept for one to two conversation TTLs (``TtlMemory``) with its partition's owner. The
    TTL is the one route started with."""

    def __init__(self, app: faust.App, partitions: int, ttl_hours: float) -> None:
        self.memory = TtlMemory(
            app, "early-replies", partitions, ttl_hours * 3600, default=str,
            help="when a company handle last wrote in a conversation route did not hold",
        )  # fmt: skip

    def get(self, conversation_id: str) -> datetime | None:
        found = self.memory.get(conversation_id)
        return datetime.fromisoformat(found) if found else None

    def add(self, conversation_id: str, written: datetime) -> None:
        """Note it (the latest wins); must run inside the stream of the reply."""
        known = self.get(conversation_id)
        if known is None or written > known:
            self.memory.put(conversation_id, written.isoformat())
