"""One tweet, one event: the same tweet id arriving twice (stream, polling, webhook, replay,
or again after a restart) is published once.

The memory is bounded twice: ids older than the retention window are forgotten, and at most
``capacity`` ids are kept. It is durable without a store of its own: at start, ingest refills it
from what it already published on the raw and brand topics within the window (service.py), so
the topics themselves are the record of what was seen.

It also keeps each published tweet's conversation: Account Activity's v1.1 tweets carry no
conversation id, so a reply delivered that way joins the conversation of the tweet it answers
when that tweet was seen (else the tweet it answers stands in, as before).
"""

from __future__ import annotations

import time
from collections import OrderedDict


class SeenTweets:
    def __init__(self, capacity: int, window_s: float = float("inf")) -> None:
        self.capacity = capacity
        self.window_s = window_s
        self._seen_at: OrderedDict[str, float] = OrderedDict()  # oldest first
        self._conversations: dict[str, str] = {}  # tweet id: its conversation, when known

    def __len__(self) -> int:
        return len(self._seen_at)

    def first_time(self, tweet_id: str, now: float | None = None) -> bool:
        """True the first time an id is offered within the window, False for a repeat."""
        now = time.time() if now is None else now
        self._expire(now)
        if tweet_id in self._seen_at:
            return False
        self.remember(tweet_id, now)
        return True

    def remember(self, tweet_id: str, seen_at: float, conversation: str | None = None) -> None:
        """Record an id as seen at ``seen_at`` (epoch seconds), e.g. while restoring, and the
        conversation it belongs to, if known."""
        self._seen_at[tweet_id] = seen_at
        self._seen_at.move_to_end(tweet_id)
        if conversation is not None:
            self._conversations[tweet_id] = conversation
        while len(self._seen_at) > self.capacity:
            oldest, _ = self._seen_at.popitem(last=False)
            self._conversations.pop(oldest, None)

    def in_conversation(self, tweet_id: str, conversation: str) -> None:
        """The conversation of a tweet seen (published)."""
        if tweet_id in self._seen_at:
            self._conversations[tweet_id] = conversation

    def conversation_of(self, tweet_id: str) -> str | None:
        """The conversation of a tweet seen within the window, if known."""
        return self._conversations.get(tweet_id) if tweet_id in self else None

    def __contains__(self, tweet_id: object) -> bool:
        """Seen within the window (no side effect: the id is not remembered by asking)."""
        if tweet_id not in self._seen_at:
            return False
        return self._seen_at[tweet_id] >= time.time() - self.window_s  # type: ignore[index]

    def forget(self, tweet_id: str) -> None:
        self._seen_at.pop(tweet_id, None)
        self._conversations.pop(tweet_id, None)

    def _expire(self, now: float) -> None:
        horizon = now - self.window_s
        while self._seen_at:
            oldest_id, seen_at = next(iter(self._seen_at.items()))
            if seen_at >= horizon:
                return
            del self._seen_at[oldest_id]
            self._conversations.pop(oldest_id, None)
