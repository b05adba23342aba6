"""Spike and crisis detection: counts per tumbling window for each department, handle and
configured keyword, compared with the mean of the trailing windows.

A key spikes when its current window holds at least ``min_count`` tweets and at least
``factor`` times its baseline (a baseline below one tweet per window counts as one). One alert
per episode: the key stays in its episode, silent, until a whole window ends below the bar.
Nothing is reported until a baseline period (``baseline_windows`` windows) has passed since the
replica started: a key it was just given may come with no history (a first start, windows
expired while no replica ran), and every busy department would look like a spike. A key that
a reload of the configuration starts to watch (a keyword added, a dimension, spikes enabled)
has no history either: it warms up from that reload (``newly_watched``).

route tallies the spike keys of the tweets it routes (``SpikeTally``) and publishes, a few
times a second, one ``SpikeObservation`` per key and window with its count on
``switchboard.route.spikes``, keyed by the spike key, so every count of a key reaches the one
replica that owns the key's partition, whichever replica routed the tweet. (One record per
tweet and key made route consume four times what it routed.) The counts live in faust windowed
tables (``SpikeWindows``); ``judge`` is the decision, pure.

A tweet counts in the window of when ingest received it, not of when route routed it: after an
outage or a restart upstream, the backlog that arrives at once is spread over the windows its
tweets came in, instead of making one window look like a spike. Each observation carries that
time as its Kafka timestamp, which places it in the windowed tables.

A tweet deleted by its author is taken out of its window's samples
(``SpikeSampleWithdrawn``, published by the conversation's owner to the key's owner after the
counts it may still be in), so no later alert shows it; it stays counted. The conversation
keeps the keys and time each of its recent tweets was counted by (``SpikeCount``).

An observation read again after a crash (its offset was not committed) is counted once: each
window's count is kept with the offset of the last observation it counted, and of the one that
raised an alert, in one changelog record. That observation, read again, publishes the alert
again with the same id: the window's record may have reached the changelog and the alert not
(faust's buffer and route's producer are apart). The episode's mark is another table's record:
kept without the window's, it marks an episode begun in a window whose record names no
observation that raised it, and the next observation of that window raises the alert again.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import faust

from switchboard.route import metrics
from switchboard.route.config import SpikeConfig
from switchboard.shared.events import SpikeCount, SpikeObservation, SpikeSampleWithdrawn, Tweet
from switchboard.shared.kafka import Output
from switchboard.shared.labels import Department
from switchboard.shared.streams import CHANGELOG_CONFIG, STORE_OPTIONS
from switchboard.shared.topics import ROUTE_SPIKES

Dimension = str  # "department" | "handle" | "keyword"


@dataclass(frozen=True, slots=True)
class Spike:
    dimension: Dimension
    value: str
    count: int
    baseline: float
    samples: list[Tweet]
    started: datetime  # the start of the window its episode started in
    again: bool = False  # raised before, by the same observation read again after a crash


class SpikeKeys:
    """Which spike keys a routed tweet counts for (the configured dimensions and keywords)."""

    def __init__(self, config: SpikeConfig) -> None:
        self.config = config
        self._keywords = [
            (k, re.compile(rf"(?<!\w){re.escape(k)}(?!\w)", re.IGNORECASE)) for k in config.keywords
        ]

    def of(self, tweet: Tweet, department: Department) -> list[tuple[Dimension, str]]:
        wanted = set(self.config.dimensions)
        found: list[tuple[Dimension, str]] = []
        if "department" in wanted:
            found.append(("department", department.value))
        if "handle" in wanted:
            found += [("handle", h) for h in tweet.addressed_handles]
        if "keyword" in wanted:
            found += [("keyword", k) for k, pattern in self._keywords if pattern.search(tweet.text)]
        return found


def newly_watched(before: SpikeConfig, after: SpikeConfig) -> set[str]:
    """What ``after`` watches that ``before`` did not: dimensions by name, keywords as their
    spike key's name in lower case (``keyword:outage``, matched without regard to case)."""
    if not after.enabled:
        return set()
    was = set(before.dimensions) if before.enabled else set()
    added: set[str] = set(after.dimensions) - was
    if "keyword" in after.dimensions and "keyword" not in added:
        known = {k.lower() for k in before.keywords}
        added |= {spike_key("keyword", k.lower()) for k in after.keywords if k.lower() not in known}
    return added


def watched_since(key: str, started: float, since: dict[str, float]) -> float:
    """When ``key`` began to be watched: the replica's start, or the reload that added its
    dimension or its keyword (``since``, from ``newly_watched``), whichever came last."""
    dimension, _ = spike_key_parts(key)
    return max(started, since.get(dimension, started), since.get(key.lower(), started))


def spike_key(dimension: Dimension, value: str) -> str:
    """A spike key's name (``dimension:value``): the key of its records and of its alerts."""
    return f"{dimension}:{value}"


def spike_key_parts(key: str) -> tuple[Dimension, str]:
    """The dimension and value a spike key's name stands for (a value may hold a colon)."""
    dimension, _, value = key.partition(":")
    return dimension, value


# The samples of one key's window together, at most: an observation, the table's record and
# the alert each carry them, and must stay within the smallest message size allowed (1 MiB)
# however many samples are configured and however long the tweets (25,000 characters).
SAMPLE_BYTES = 256 * 1024


def _sample_bytes(sample: Tweet | dict[str, Any]) -> int:
    """A sample's size as faust's JSON writes it to the table (non-ASCII escaped: 6 or 12 bytes
    a character), never less than its UTF-8 size in an observation or an alert."""
    data = sample.model_dump(mode="json") if isinstance(sample, Tweet) else sample
    return len(json.dumps(data))


@dataclass(slots=True)
class _Tally:
    count: int
    at: datetime  # the latest time counted, within the tally's window
    tweets: list[Tweet] = field(default_factory=list)
    sampled_bytes: int = 0


def window_number(at: datetime, window_s: float) -> int:
    """The number of the window ``at`` falls in (windows counted from the epoch)."""
    return int(at.timestamp() // window_s)


def window_seconds(config: SpikeConfig) -> float:
    """The windows' size in whole seconds: faust's tumbling windows place a timestamp in
    different windows when written and when read if the size has a fraction (1.2 s: 608.0-609.1
    against 608.4)."""
    return float(max(1, round(config.window_minutes * 60)))


class SpikeTally:
    """The spike keys of the tweets routed since the last ``drain``: how many per key and
    window (of ``window_s`` seconds), and the first few tweets of each as samples."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._keys: dict[tuple[int, Dimension, str], _Tally] = {}
        self._withdrawn: list[tuple[str, SpikeCount]] = []

    def add(
        self, keys: list[tuple[Dimension, str]], tweet: Tweet, samples: int, at: datetime
    ) -> None:
        """Count ``tweet`` for ``keys`` in the window of ``at``, when it came in."""
        window = window_number(at, self.window_s)
        size = None
        for dimension, value in keys:
            tally = self._keys.get((window, dimension, value))
            if tally is None:
                self._keys[(window, dimension, value)] = tally = _Tally(0, at=at)
            tally.count += 1
            tally.at = max(tally.at, at)
            if len(tally.tweets) < samples:
                size = _sample_bytes(tweet) if size is None else size
                if not tally.tweets or tally.sampled_bytes + size <= SAMPLE_BYTES:
                    tally.tweets.append(tweet)
                    tally.sampled_bytes += size

    def withdraw(self, tweet_id: str, counted: SpikeCount) -> None:
        """Take a deleted tweet out of the samples of the keys it was ``counted`` for, at the
        next drain: after the counts drained with it (one of which may still carry it)."""
        self._withdrawn.append((tweet_id, counted))

    def drain(self) -> list[Output]:
        """One observation per key and window tallied, oldest window first, then the samples
        withdrawn, and an empty tally; each stamped (``observed_at`` and its Kafka timestamp)
        within its window."""
        tallied, self._keys = self._keys, {}
        withdrawn, self._withdrawn = self._withdrawn, []
        observations = [
            Output.of(
                ROUTE_SPIKES,
                SpikeObservation(
                    dimension=dimension,  # type: ignore[arg-type]
                    value=value,
                    tweet=tally.tweets[0],
                    more=tally.tweets[1:],
                    count=tally.count,
                    observed_at=tally.at,
                ),
                spike_key(dimension, value),
                timestamp_ms=int(tally.at.timestamp() * 1000),
            )
            for (_, dimension, value), tally in sorted(tallied.items(), key=lambda kv: kv[0][0])
        ]
        return observations + [
            o for tweet_id, counted in withdrawn for o in withdrawals(tweet_id, counted)
        ]


def withdrawals(tweet_id: str, counted: SpikeCount) -> list[Output]:
    """A deleted tweet's withdrawal from the samples of each key it was counted for, stamped
    (as its count was) with the time that placed it in its window."""
    withdrawn = []
    for key in counted.keys:
        dimension, value = spike_key_parts(key)
        withdrawal = SpikeSampleWithdrawn(
            dimension=dimension,  # type: ignore[arg-type]
            value=value,
            tweet_id=tweet_id,
            observed_at=counted.at,
        )
        at_ms = int(counted.at.timestamp() * 1000)
        withdrawn.append(Output.of(ROUTE_SPIKES, withdrawal, key, timestamp_ms=at_ms))
    return withdrawn


def bar(config: SpikeConfig, baseline: float) -> float:
    """How many tweets in one window make a spike over ``baseline``."""
    return max(config.min_count, config.factor * max(baseline, 1.0))


@dataclass(frozen=True, slots=True)
class Verdict:
    spike: bool
    episode: int | None  # the window its episode started in, if the key is in one


def judge(
    config: SpikeConfig,
    window: int,
    count: int,
    history: list[int],
    episode: int | None,
    warm: bool,
) -> Verdict:
    """``count`` tweets so far in window number ``window`` against the ``history`` of the
    trailing windows (most recent first, empty ones as 0). An episode that started in an
    earlier window ends when the last window stayed below its own bar."""
    baseline = sum(history) / config.baseline_windows
    if episode is not None and episode < window:
        before_previous = sum(history[1:]) / config.baseline_windows
        if history[0] < bar(config, before_previous):
            episode = None  # a whole window below the bar ended the episode
    if warm and episode is None and count >= bar(config, baseline):
        return Verdict(spike=True, episode=window)
    return Verdict(spike=False, episode=episode)


@dataclass(frozen=True, slots=True)
class _Window:
    """One key's window as its table record keeps it, in one changelog record: the count, the
    offset of the last observation counted, and the offset of the observation that raised an
    alert in it (written together, so no crash keeps one without the others)."""

    count: int = 0
    counted: int = -1  # none yet, or a count written before offsets were kept
    raised: int | None = None

    @classmethod
    def of(cls, value: Any) -> _Window:
        if isinstance(value, int):
            return cls(value)
        return cls(*value) if value else cls()

    def record(self) -> list[int | None]:
        return [self.count, self.counted, self.raised]


# A window's samples note a withdrawal that came before the tweet's count ({"id", WITHDRAWN});
# deletions are few, and past this many per window the rest are not noted.
WITHDRAWN = "withdrawn"
WITHDRAWN_NOTED = 100


class SpikeWindows:
    """The spike counts of the keys this replica owns, in faust tables: tweets per key and
    window, a few sample tweets per key and window, and which keys are in an episode.
    ``observe`` must run inside the stream of ``switchboard.route.spikes``."""

    def __init__(self, app: faust.App, config: SpikeConfig, partitions: int) -> None:
        self.config = config
        self.started = time.monotonic()
        # what a reload began to watch, and when (time.monotonic): it warms up from then
        self.watched_since: dict[str, float] = {}
        self.window_s = window_seconds(config)
        # A tweet may be counted this late (a backlog upstream) with its window's whole
        # baseline still kept: windows are kept for twice the baseline period, and two more.
        self.late_s = self.window_s * config.baseline_windows
        expires = self.window_s * (2 * config.baseline_windows + 2)
        self.counts = app.Table(
            "spike-counts", default=list, key_type=str, partitions=partitions,
            options=STORE_OPTIONS, extra_topic_configs=CHANGELOG_CONFIG,
            help="tweets per spike key and window, with the offsets of the last observation "
            "counted and of the one that raised an alert",
        ).tumbling(self.window_s, expires=expires).relative_to_stream()  # fmt: skip
        self.samples = app.Table(
            "spike-samples", default=list, key_type=str, partitions=partitions,
            options=STORE_OPTIONS, extra_topic_configs=CHANGELOG_CONFIG,
            help="the first tweets of each spike key's window, shown in its alert",
        ).tumbling(self.window_s, expires=expires).relative_to_stream()  # fmt: skip
        self.episodes = app.Table(
            "spike-episodes", key_type=str, value_type=int, partitions=partitions,
            options=STORE_OPTIONS, extra_topic_configs=CHANGELOG_CONFIG,
            help="the window each spike key's episode started in (alerted, not yet back below "
            "its bar)",
        )  # fmt: skip

    def countable(self, came_in: datetime, now: datetime) -> bool:
        """Whether a tweet that came in at ``came_in`` can be counted: judged against a
        baseline of windows still kept. An older one would be judged against expired (empty)
        windows, and a long backlog would look like a spike."""
        return (now - came_in).total_seconds() <= self.late_s

    def observe(self, observation: SpikeObservation, offset: int) -> Spike | None:
        """Count ``observation`` (read at ``offset`` of its partition) and judge its key; one
        that reached this replica too late to judge (it lags on the spikes topic) is not."""
        if not self.countable(observation.observed_at, datetime.now(UTC)):
            metrics.SPIKE_LATE.inc(observation.count)
            return None
        key = spike_key(observation.dimension, observation.value)
        windows = self.counts[key]
        stored = _Window.of(windows.current())
        current = stored
        if offset > stored.counted:  # else counted before a crash, read again
            current = _Window(stored.count + observation.count, offset, stored.raised)
            self._sample(key, observation)
        history = [
            _Window.of(windows.delta(self.window_s * i)).count
            for i in range(1, self.config.baseline_windows + 1)
        ]
        number = window_number(observation.observed_at, self.window_s)
        episode = self.episodes.get(key)
        spike = None
        if current.raised == offset:
            # This observation raised the alert, read again after a crash: the alert may not
            # have gone out, nor the episode's mark been kept.
            spike = self._spike(observation, current.count, history, number, again=True)
            episode = number
        elif episode == number and current.raised is None:
            # The episode began in this window, yet the window's record names no observation
            # that raised it: a crash kept the episode's mark and lost the record (two tables,
            # two changelog records), and the alert may not have gone out. Raised again, same
            # id, by this observation.
            current = _Window(current.count, current.counted, offset)
            spike = self._spike(observation, current.count, history, number, again=True)
        else:
            since = watched_since(key, self.started, self.watched_since)
            warm = time.monotonic() - since >= self.window_s * self.config.baseline_windows
            verdict = judge(self.config, number, current.count, history, episode, warm)
            if verdict.spike:
                current = _Window(current.count, current.counted, offset)
                spike = self._spike(observation, current.count, history, number)
            episode = verdict.episode
        if current != stored:
            self.counts[key] = current.record()
        self._mark(key, episode)
        return spike

    def reconfigure(self, config: SpikeConfig) -> None:
        """A reloaded configuration's bar and what it watches, from now; the windows' size and
        number are the tables' and stay until a restart. What it newly watches warms up."""
        config = config.model_copy(
            update={"window_minutes": self.config.window_minutes,
                    "baseline_windows": self.config.baseline_windows}
        )  # fmt: skip
        now = time.monotonic()
        self.watched_since |= dict.fromkeys(newly_watched(self.config, config), now)
        self.config = config

    def withdraw(self, withdrawal: SpikeSampleWithdrawn) -> None:
        """Take a deleted tweet out of its window's samples (its record's timestamp places it
        there; a window already expired holds nothing to take out). It stays counted, and is
        noted, id alone, so that a count carrying it that comes after (sent again after the
        broker refused it) does not sample it then."""
        key = spike_key(withdrawal.dimension, withdrawal.value)
        samples = self.samples[key].current()
        gone = withdrawal.tweet_id
        if any(sample.get(WITHDRAWN) for sample in samples if sample.get("id") == gone):
            return  # withdrawn before
        kept = [sample for sample in samples if sample.get("id") != gone]
        if sum(1 for sample in kept if sample.get(WITHDRAWN)) < WITHDRAWN_NOTED:
            kept.append({"id": gone, WITHDRAWN: True})
        elif len(kept) == len(samples):
            return
        self.samples[key] = kept

    def _mark(self, key: str, episode: int | None) -> None:
        if episode == self.episodes.get(key):
            return
        if episode is None:
            del self.episodes[key]
        else:
            self.episodes[key] = episode

    def _sample(self, key: str, observation: SpikeObservation) -> None:
        stored = self.samples[key].current()
        samples = [sample for sample in stored if not sample.get(WITHDRAWN)]
        if len(samples) >= self.config.samples:
            return
        withdrawn = {sample.get("id") for sample in stored if sample.get(WITHDRAWN)}
        held = sum(_sample_bytes(sample) for sample in samples)
        added = []
        offered = [t for t in [observation.tweet, *observation.more] if t.id not in withdrawn]
        for tweet in offered[: self.config.samples - len(samples)]:
            size = _sample_bytes(tweet)
            if (samples or added) and held + size > SAMPLE_BYTES:
                break
            added.append(tweet.model_dump(mode="json"))
            held += size
        if added:
            self.samples[key] = [*stored, *added]

    def _spike(
        self,
        observation: SpikeObservation,
        count: int,
        history: list[int],
        episode: int,
        *,
        again: bool = False,
    ) -> Spike:
        key = spike_key(observation.dimension, observation.value)
        baseline = sum(history) / self.config.baseline_windows
        samples = self.samples[key].current()
        tweets = [Tweet.model_validate(sample) for sample in samples if not sample.get(WITHDRAWN)]
        started = datetime.fromtimestamp(episode * self.window_s, UTC)
        return Spike(
            observation.dimension, observation.value, count, baseline, tweets, started, again
        )
