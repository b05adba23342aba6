"""Company replies, and deletions, read before the tweets they concern.

A company's reply goes from ingest straight to ``switchboard.tweets.brand``, while the tweet it
answers goes through classify first: when classify lags (a burst, a restart), route reads the
reply first, with no conversation to mark answered. Without a note of it, the tweet read later
would wait for a reply already given and raise an SLA alert for an answered conversation.
``EarlyReplies`` keeps that note, whom the reply answered and when; a conversation route holds
keeps its own (``ConversationState.replied_at`` and ``replied_to``). A deletion skips classify
the same way: ``EarlyDeletions`` notes the tweets deleted before route read them, which route
then drops instead of routing.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

import faust

from switchboard.route.conversations import bounded, with_reply
from switchboard.shared.events import BrandTweet
from switchboard.shared.streams import TtlMemory


class EarlyReplies:
    """Whom a company handle answered, and when, in a conversation route did not hold, by
    conversation id (``conversations.replies_of``'s form: author id, ``@username`` or
    ``EVERYONE``, to X's time), kept for one to two conversation TTLs (``TtlMemory``) with its
    partition's owner. The TTL is the one route started with. A table of its own name: the
    one of versions that noted a single time per conversation (``early-replies``) holds
    values those versions read, and a rolling upgrade runs both."""

    def __init__(self, app: faust.App, partitions: int, ttl_hours: float) -> None:
        self.memory = TtlMemory(
            app, "early-replies-by-author", partitions, ttl_hours * 3600, default=dict,
            help="whom a company handle answered in a conversation route did not hold, and when",
        )  # fmt: skip

    def get(self, conversation_id: str) -> dict[str, datetime]:
        found = self.memory.get(conversation_id) or {}
        return {author: datetime.fromisoformat(written) for author, written in found.items()}

    def add(self, conversation_id: str, reply: BrandTweet, company: Collection[str]) -> None:
        """Note it (the latest per addressee wins); must run inside the stream of the reply."""
        known = self.get(conversation_id)
        noted = bounded(with_reply(known, reply, company))
        if noted != known:
            self.memory.put(conversation_id, {a: w.isoformat() for a, w in noted.items()})


EARLY_DELETIONS_KEPT = 32  # per conversation: deletions read before their tweets


class EarlyDeletions:
    """The tweets deleted before route read them, by conversation id, kept as EarlyReplies
    are (one to two conversation TTLs, with the partition's owner)."""

    def __init__(self, app: faust.App, partitions: int, ttl_hours: float) -> None:
        self.memory = TtlMemory(
            app, "early-deletions", partitions, ttl_hours * 3600, default=list,
            help="tweets deleted before route read them, by conversation",
        )  # fmt: skip

    def deleted(self, conversation_id: str, tweet_id: str, edit_of: str | None = None) -> bool:
        """Whether this tweet, or the post it is a version of, was deleted."""
        found = self.memory.get(conversation_id) or []
        return tweet_id in found or (edit_of is not None and edit_of in found)

    def add(self, conversation_id: str, tweet_id: str) -> None:
        """Note it; must run inside the stream of a record of the conversation's partition."""
        found = list(self.memory.get(conversation_id) or [])
        if tweet_id not in found:
            self.memory.put(conversation_id, [*found, tweet_id][-EARLY_DELETIONS_KEPT:])
