"""Spike and crisis detection: counts per fixed window for each department, handle and
configured keyword, compared with the mean of the trailing windows.

A key spikes when its current window holds at least ``min_count`` tweets and at least
``factor`` times its baseline (a baseline below one tweet per window counts as one). One alert
per episode: the key stays in its episode, silent, until a whole window ends below the bar.
Nothing is reported until the detector has seen one full baseline period (``baseline_windows``
windows since its first tweet): right after a start every baseline is zero and every busy
department would look like a spike. Pure logic with an injected clock; route feeds it every
routed tweet. Counts live in memory: with several route replicas each watches its partitions.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime

from switchboard.shared.config import SpikeConfig
from switchboard.shared.events import Tweet
from switchboard.shared.labels import Department

Dimension = str  # "department" | "handle" | "keyword"


@dataclass(frozen=True, slots=True)
class Spike:
    dimension: Dimension
    value: str
    count: int
    baseline: float
    samples: list[Tweet]


@dataclass(slots=True)
class _Series:
    window: int  # index of the current window
    count: int = 0
    samples: list[Tweet] = field(default_factory=list)
    closed: deque[int] = field(default_factory=deque)  # counts of the trailing windows
    in_episode: bool = False


class SpikeDetector:
    def __init__(self, config: SpikeConfig) -> None:
        self.config = config
        self._series: dict[tuple[Dimension, str], _Series] = {}
        self._first_window: int | None = None
        self._keywords = [
            (k, re.compile(rf"(?<!\w){re.escape(k)}(?!\w)", re.IGNORECASE)) for k in config.keywords
        ]

    def keys(self, tweet: Tweet, department: Department) -> list[tuple[Dimension, str]]:
        wanted = set(self.config.dimensions)
        found: list[tuple[Dimension, str]] = []
        if "department" in wanted:
            found.append(("department", department.value))
        if "handle" in wanted:
            found += [("handle", h) for h in tweet.addressed_handles]
        if "keyword" in wanted:
            found += [("keyword", k) for k, pattern in self._keywords if pattern.search(tweet.text)]
        return found

    def observe(self, tweet: Tweet, department: Department, now: datetime) -> list[Spike]:
        window = self._window(now)
        if self._first_window is None:
            self._first_window = window
        warm = window - self._first_window >= self.config.baseline_windows
        spikes = []
        for key in self.keys(tweet, department):
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series(window)
            self._roll(series, window)
            series.count += 1
            if len(series.samples) < self.config.samples:
                series.samples.append(tweet)
            baseline = self._baseline(series)
            if warm and not series.in_episode and series.count >= self._bar(baseline):
                series.in_episode = True
                spikes.append(Spike(*key, series.count, baseline, list(series.samples)))
        return spikes

    def _window(self, now: datetime) -> int:
        return int(now.timestamp() // (self.config.window_minutes * 60))  # window index

    def _roll(self, series: _Series, window: int) -> None:
        """Close the windows that ended since the last tweet (empty ones count as zero)."""
        while series.window < window:
            if series.in_episode and series.count < self._bar(self._baseline(series)):
                series.in_episode = False  # a whole window below the bar ends the episode
            series.closed.append(series.count)
            while len(series.closed) > self.config.baseline_windows:
                series.closed.popleft()
            series.window += 1
            series.count, series.samples = 0, []
            if series.window < window - self.config.baseline_windows:
                series.closed.extend([0] * self.config.baseline_windows)  # a long quiet gap
                series.window = window - self.config.baseline_windows

    def _baseline(self, series: _Series) -> float:
        history = list(series.closed)[-self.config.baseline_windows :]
        # Windows before the key was first seen count as empty.
        return sum(history) / self.config.baseline_windows

    def _bar(self, baseline: float) -> float:
        return max(self.config.min_count, self.config.factor * max(baseline, 1.0))
