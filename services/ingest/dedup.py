"""One tweet, one event: the same tweet id arriving twice (stream, polling, webhook, replay,
or again after a restart) is published once.

The memory is bounded twice: ids older than the retention window are forgotten, and at most
``capacity`` ids are kept. Above ``capacity / window`` tweets a second the second bound comes
first and the window is shorter than configured: that is counted and logged, since a repeat of
a tweet forgotten early is published again.

It is durable without a store of its own: at start, ingest refills it from what it already
published on the raw and brand topics within the window (service.py), so
the topics themselves are the record of what was seen.

It also keeps each published tweet's conversation: Account Activity's v1.1 tweets carry no
conversation id, so a reply delivered that way joins the conversation of the tweet it answers
when that tweet was seen (else the tweet it answers stands in, as before).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

from switchboard.ingest import metrics

log = logging.getLogger(__name__)
WARN_EVERY_S = 3600.0  # the log line about ids forgotten early, at most once an hour


class SeenTweets:
    def __init__(self, capacity: int, window_s: float = float("inf")) -> None:
        self.capacity = capacity
        self.window_s = window_s
        self._seen_at: OrderedDict[str, float] = OrderedDict()  # oldest first
        self._conversations: dict[str, str] = {}  # tweet id: its conversation, when known
        self._warned_at = float("-inf")

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

    def remember(
        self, tweet_id: str, seen_at: float, conversation: str | None = None, counted: bool = True
    ) -> None:
        """Record an id as seen at ``seen_at`` (epoch seconds), e.g. while restoring, and the
        conversation it belongs to, if known. A refill at start passes ``counted=False``: the
        ids it cannot hold were counted by the process that first saw them."""
        self._seen_at[tweet_id] = seen_at
        self._seen_at.move_to_end(tweet_id)
        if conversation is not None:
            self._conversations[tweet_id] = conversation
        while len(self._seen_at) > self.capacity:
            oldest, oldest_seen_at = self._seen_at.popitem(last=False)
            self._conversations.pop(oldest, None)
            if counted and oldest_seen_at >= seen_at - self.window_s:
                self._forgotten_early(seen_at - oldest_seen_at)

    def _forgotten_early(self, kept_s: float) -> None:
        metrics.DEDUP_FORGOTTEN_EARLY.inc()
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            log.warning(
                "the duplicate filter is full: tweet ids are forgotten before their window ends",
                extra={"capacity": self.capacity, "kept_hours": round(kept_s / 3600, 2),
                       "window_hours": round(self.window_s / 3600, 2),
                       "fix": "raise ingest.dedup_capacity (about 0.3 KB of memory an id) "
                              "or lower ingest.dedup_window_hours"},
            )  # fmt: skip

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
