"""Live model against candidate: what ``switchboard classify compare`` prints and the ops page
shows.

The live model's labels are on ``switchboard.tweets.classified``, a candidate's on
``switchboard.tweets.shadow`` (a shadow classify, or ``classify replay`` over past traffic), and
people's corrections on ``switchboard.feedback``. ``compare`` pairs them by tweet id: how often
the candidate agrees with the live model, how often each is right on the tweets a person
corrected (the latest correction of a tweet wins), critical recall and precision on those, and
the most frequent disagreements with examples. ``read_since`` reads the three topics from a
time on, by the offsets the broker finds for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from switchboard.shared import topics
from switchboard.shared.events import (
    ClassifiedTweet,
    ComplianceEvent,
    Correction,
    DecodeError,
    Event,
    decode,
)
from switchboard.shared.kafka import client_options
from switchboard.shared.labels import Urgency
from switchboard.shared.settings import KafkaSettings

COMPARED_TOPICS = (topics.CLASSIFIED, topics.SHADOW, topics.FEEDBACK)
IDLE_S = 10.0  # a fetch that brings nothing for this long ends the read (records were deleted)


def compare(
    live: Iterable[ClassifiedTweet],
    shadow: Iterable[ClassifiedTweet],
    corrections: Iterable[Correction],
    examples: int = 3,
) -> dict[str, Any]:
    """The comparison of the live model with each candidate version found in ``shadow``."""
    live_by_id = {e.tweet.id: e for e in live}
    gold = _gold(corrections)
    candidates: dict[str, dict[str, ClassifiedTweet]] = defaultdict(dict)
    for event in shadow:
        candidates[event.classification.model_version][event.tweet.id] = event
    live_versions = Counter(e.classification.model_version for e in live_by_id.values())
    return {
        "live": {"tweets": len(live_by_id), "versions": dict(live_versions),
                 "on_corrected": _scores(live_by_id, gold)},
        "corrected_tweets": len(gold),
        "candidates": [_candidate(version, labelled, live_by_id, gold, examples)
                       for version, labelled in sorted(candidates.items())],
    }  # fmt: skip


def _gold(corrections: Iterable[Correction]) -> dict[str, tuple[str | None, str | None]]:
    """tweet id -> (department, urgency) a person said, the latest correction winning."""
    latest: dict[str, Correction] = {}
    for c in corrections:
        if c.tweet_id and (c.tweet_id not in latest or c.made_at >= latest[c.tweet_id].made_at):
            latest[c.tweet_id] = c
    return {
        tweet_id: (c.department.value if c.department else None,
                   c.urgency.value if c.urgency else None)
        for tweet_id, c in latest.items()
    }  # fmt: skip


def _scores(
    labelled: dict[str, ClassifiedTweet], gold: dict[str, tuple[str | None, str | None]]
) -> dict[str, Any]:
    """Accuracy on the corrected tweets this model labelled, and critical recall/precision."""
    departments = urgencies = right_department = right_urgency = 0
    critical_gold = critical_said = critical_both = 0
    for tweet_id, (department, urgency) in gold.items():
        event = labelled.get(tweet_id)
        if event is None:
            continue
        c = event.classification
        if department is not None:
            departments += 1
            right_department += c.department.value == department
        if urgency is not None:
            urgencies += 1
            right_urgency += c.urgency.value == urgency
            is_critical = urgency == Urgency.CRITICAL.value
            said_critical = c.urgency is Urgency.CRITICAL
            critical_gold += is_critical
            critical_said += said_critical
            critical_both += is_critical and said_critical
    return {
        "department_accuracy": _ratio(right_department, departments),
        "department_n": departments,
        "urgency_accuracy": _ratio(right_urgency, urgencies),
        "urgency_n": urgencies,
        "critical_recall": _ratio(critical_both, critical_gold),
        "critical_precision": _ratio(critical_both, critical_said),
        "critical_n": critical_gold,
    }


def _candidate(
    version: str,
    labelled: dict[str, ClassifiedTweet],
    live: dict[str, ClassifiedTweet],
    gold: dict[str, tuple[str | None, str | None]],
    examples: int,
) -> dict[str, Any]:
    both = [tweet_id for tweet_id in labelled if tweet_id in live]
    same_department = same_urgency = 0
    moved: Counter[tuple[str, str]] = Counter()
    texts: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    for tweet_id in both:
        was, now = live[tweet_id].classification, labelled[tweet_id].classification
        same_department += was.department == now.department
        same_urgency += was.urgency == now.urgency
        if was.department != now.department:
            pair = (was.department.value, now.department.value)
            moved[pair] += 1
            if len(texts[pair]) < examples:
                texts[pair].append({"tweet_id": tweet_id, "text": labelled[tweet_id].tweet.text})
    # Judged on the same corrected tweets for both models, so the two figures compare.
    shared = {tweet_id: g for tweet_id, g in gold.items() if tweet_id in labelled and
              tweet_id in live}  # fmt: skip
    return {
        "model_version": version,
        "tweets": len(labelled),
        "compared": len(both),
        "department_agreement": _ratio(same_department, len(both)),
        "urgency_agreement": _ratio(same_urgency, len(both)),
        "on_corrected": {"live": _scores(live, shared), "candidate": _scores(labelled, shared)},
        "disagreements": [
            {"live": a, "candidate": b, "count": n, "examples": texts[(a, b)]}
            for (a, b), n in moved.most_common(10)
        ],
    }


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


async def read_since(
    kafka: KafkaSettings,
    since: datetime,
    names: tuple[str, ...] = COMPARED_TOPICS,
    limit: int = 500_000,
    *,
    paired: bool = True,
) -> dict[str, list[Any]]:
    """The records of ``names`` published since ``since``, decoded, by topic: at most
    ``limit`` over all, the latest kept. ``paired``: the live labels of shadow labels that the
    limit left out are read after, by their keys: a week's live traffic would otherwise push
    out the very labels a replay is compared with."""
    found = await _read_since(kafka, since, names, limit)
    if not (paired and topics.SHADOW in names and topics.CLASSIFIED in names):
        return found
    have = {event.tweet.id for event in found[topics.CLASSIFIED]}
    missing = {e.tweet.id: e.tweet.conversation_id for e in found[topics.SHADOW]
               if e.tweet.id not in have}  # fmt: skip
    if missing:
        keys = {conversation.encode() for conversation in missing.values()}
        older = await _read_since(kafka, since, (topics.CLASSIFIED,), None,
                                  lambda event: event.tweet.id in missing, keys)  # fmt: skip
        found[topics.CLASSIFIED] = older[topics.CLASSIFIED] + found[topics.CLASSIFIED]
    return found


async def _read_since(
    kafka: KafkaSettings,
    since: datetime,
    names: tuple[str, ...],
    limit: int | None,
    wanted: Callable[[Any], bool] = lambda _: True,
    keys: set[bytes] | None = None,
) -> dict[str, list[Any]]:
    # A start past a topic's retention resumes at the oldest record kept, not at the end.
    consumer = AIOKafkaConsumer(
        enable_auto_commit=False, auto_offset_reset="earliest", **client_options(kafka)
    )
    found: dict[str, list[Any]] = {topic: [] for topic in names}
    try:
        await consumer.start()
        await consumer.topics()
        partitions = [TopicPartition(topic, p) for topic in names
                      for p in sorted(consumer.partitions_for_topic(topic) or ())]  # fmt: skip
        if not partitions:
            return found
        ends = await consumer.end_offsets(partitions)
        starts = await consumer.offsets_for_times({tp: int(since.timestamp() * 1000)
                                                   for tp in partitions})  # fmt: skip
        consumer.assign(partitions)
        left = {}
        for tp in partitions:
            start = starts[tp].offset if starts.get(tp) else ends[tp]
            if limit is not None:
                start = max(start, ends[tp] - limit // max(1, len(partitions)))
            if start < ends[tp]:
                consumer.seek(tp, start)
                left[tp] = ends[tp]
        idle_since = time.monotonic()
        while left and time.monotonic() - idle_since < IDLE_S:
            batches = await consumer.getmany(*left, timeout_ms=1000, max_records=5000)
            kept = [r for tp, rs in batches.items() for r in rs if r.offset < left.get(tp, -1)
                    and (keys is None or r.key in keys)]  # fmt: skip
            # decoded in a worker thread, batch by batch: not on the loop of the service asking
            await asyncio.to_thread(_keep_all, found, kept, wanted)
            for tp in batches:
                idle_since = time.monotonic()
                if await consumer.position(tp) >= left.get(tp, 0):
                    left.pop(tp, None)
    finally:
        await consumer.stop()
    return found


EVENT_TYPES: dict[str, type[Event]] = {topics.FEEDBACK: Correction,
                                        topics.COMPLIANCE: ComplianceEvent}  # fmt: skip


def _keep_all(
    found: dict[str, list[Any]], records: list[Any], wanted: Callable[[Any], bool]
) -> None:
    for record in records:
        event_type = EVENT_TYPES.get(record.topic, ClassifiedTweet)
        with contextlib.suppress(DecodeError):
            event = decode(event_type, record.value)
            if wanted(event):
                found[record.topic].append(event)
