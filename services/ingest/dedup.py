"""One tweet, one event: the same tweet id arriving twice (stream, polling, webhook, replay,
or again after a restart) is published once.

The memory is bounded twice: ids older than the retention window are forgotten, and at most
``capacity`` ids are kept. It is durable without a store of its own: at start, ingest refills it
from what it already published on the raw and brand topics within the window (service.py), so
the topics themselves are the record of what was seen.
"""

from __future__ import annotations

import time
from collections import OrderedDict


class SeenTweets:
    def __init__(self, capacity: int, window_s: float = float("inf")) -> None:
        self.capacity = capacity
        self.window_s = window_s
        self._seen_at: OrderedDict[str, float] = OrderedDict()  # oldest first

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

    def remember(self, tweet_id: str, seen_at: float) -> None:
        """Record an id as seen at ``seen_at`` (epoch seconds), e.g. while restoring."""
        self._seen_at[tweet_id] = seen_at
        self._seen_at.move_to_end(tweet_id)
        while len(self._seen_at) > self.capacity:
            self._seen_at.popitem(last=False)

    def __contains__(self, tweet_id: object) -> bool:
        """Seen within the window (no side effect: the id is not remembered by asking)."""
        if tweet_id not in self._seen_at:
            return False
        return self._seen_at[tweet_id] >= time.time() - self.window_s  # type: ignore[index]

    def forget(self, tweet_id: str) -> None:
        self._seen_at.pop(tweet_id, None)

    def _expire(self, now: float) -> None:
        horizon = now - self.window_s
        while self._seen_at:
            oldest_id, seen_at = next(iter(self._seen_at.items()))
            if seen_at >= horizon:
                return
            del self._seen_at[oldest_id]
