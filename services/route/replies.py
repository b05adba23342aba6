"""Company replies read before the conversation they answer.

A company's reply goes from ingest straight to ``switchboard.tweets.brand``, while the tweet it
answers goes through classify first: when classify lags (a burst, a restart), route reads the
reply first, with no conversation to mark answered. Without a note of it, the tweet read later
would wait for a reply already given and raise an SLA alert for an answered conversation.
``EarlyReplies`` keeps that note; a conversation route holds keeps its own
(``ConversationState.replied_at``).
"""

from __future__ import annotations

import time
from datetime import datetime

import faust
from faust.windows import TumblingWindow

from switchboard.shared.streams import STORE_OPTIONS


class EarlyReplies:
    """When a company handle last wrote in a conversation route did not hold, by conversation
    id, in a windowed faust table: each note is kept for one to two conversation TTLs (tumbling
    windows of one TTL, the current and the previous one read), with its partition's owner; faust
    drops older windows. The TTL is the one route started with."""

    def __init__(self, app: faust.App, partitions: int, ttl_hours: float) -> None:
        self.window_s = float(max(1, round(ttl_hours * 3600)))
        self.windows = TumblingWindow(self.window_s, expires=2 * self.window_s)
        # By the wall clock, not the stream's: the same reading inside the stream and outside.
        self.table = app.Table(
            "early-replies", default=str, key_type=str, value_type=str, partitions=partitions,
            options=STORE_OPTIONS,
            help="when a company handle last wrote in a conversation route did not hold",
        ).using_window(self.windows).relative_to(lambda _event: time.time())  # fmt: skip

    def get(self, conversation_id: str) -> datetime | None:
        windows = self.table[conversation_id]
        found = windows.value() or windows[self.windows.current(time.time() - self.window_s)]
        return datetime.fromisoformat(found) if found else None

    def add(self, conversation_id: str, written: datetime) -> None:
        """Note it (the latest wins); must run inside the stream of the reply (its partition's
        changelog)."""
        known = self.get(conversation_id)
        if known is None or written > known:
            self.table[conversation_id] = written.isoformat()
