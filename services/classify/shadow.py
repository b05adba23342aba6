"""A shadow classify's live comparison: how often its candidate model agrees with the live one.

A shadow classify labels the raw tweets into ``switchboard.tweets.shadow``; it also reads the
live labels on ``switchboard.tweets.classified`` and pairs the two by tweet id as they arrive
(either may come first), counting agreement per head in ``switchboard_shadow_compared_total``.
Unpaired labels wait in bounded memory: a tweet the other side never labels (before the shadow
started, or after it lagged far behind) is forgotten, oldest first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from switchboard.classify import metrics
from switchboard.shared.events import Classification

WAITING = 50_000  # labels kept per side while their pair has not arrived


@dataclass(frozen=True, slots=True)
class Labels:
    department: str
    urgency: str
    model_version: str

    @classmethod
    def of(cls, classification: Classification) -> Labels:
        c = classification
        return cls(c.department.value, c.urgency.value, c.model_version)


class ShadowComparison:
    def __init__(self, waiting: int = WAITING) -> None:
        self.waiting = waiting
        self._live: OrderedDict[str, Labels] = OrderedDict()
        self._candidate: OrderedDict[str, Labels] = OrderedDict()

    def live(self, tweet_id: str, labels: Labels) -> None:
        self._pair(tweet_id, labels, self._candidate, self._live, live_first=True)

    def candidate(self, tweet_id: str, labels: Labels) -> None:
        self._pair(tweet_id, labels, self._live, self._candidate, live_first=False)

    def _pair(
        self,
        tweet_id: str,
        labels: Labels,
        other: OrderedDict[str, Labels],
        mine: OrderedDict[str, Labels],
        *,
        live_first: bool,
    ) -> None:
        found = other.pop(tweet_id, None)
        if found is None:
            mine[tweet_id] = labels
            mine.move_to_end(tweet_id)
            while len(mine) > self.waiting:
                mine.popitem(last=False)
            return
        live, candidate = (labels, found) if live_first else (found, labels)
        versions = (live.model_version, candidate.model_version)
        for head in ("department", "urgency"):
            agreed = getattr(live, head) == getattr(candidate, head)
            metrics.SHADOW_COMPARED.labels(*versions, head, str(agreed).lower()).inc()
