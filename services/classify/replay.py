"""Replay: a candidate model labels a past time range of ``switchboard.tweets.raw`` into
``switchboard.tweets.shadow``, so it can be judged on last week's traffic before any live tweet
sees it (``switchboard classify replay``; then ``switchboard classify compare``).

The range is found by the broker's time index (the offsets of the first records at or after
``since`` and ``until``, per partition); the raw topic is read without a consumer group, so the
live classify's progress is untouched, and nothing is routed: route does not read the shadow
topic.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from aiokafka import AIOKafkaConsumer, TopicPartition

from switchboard.classify.model import TweetClassifier
from switchboard.classify.service import classified, labels_and_languages
from switchboard.shared import topics
from switchboard.shared.events import DecodeError, RawTweet, decode
from switchboard.shared.kafka import Output, client_options, make_producer, publish
from switchboard.shared.settings import KafkaSettings

SERVICE = "classify-replay"


@dataclass
class ReplayReport:
    model_version: str
    since: datetime
    until: datetime | None
    labelled: int = 0
    skipped: int = 0  # records on the raw topic that are not raw tweets
    partitions: dict[int, tuple[int, int]] = field(default_factory=dict)  # first, end offset
    seconds: float = 0.0


async def replay(
    kafka: KafkaSettings,
    model: TweetClassifier,
    since: datetime,
    until: datetime | None = None,
    *,
    batch_size: int = 128,
    progress: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Label the raw tweets published in [``since``, ``until``) (until now when None)."""
    started = time.monotonic()
    report = ReplayReport(model.version, since, until)
    # A start past the topic's retention (deleted meanwhile) resumes at the oldest record kept,
    # not at the end, where the partition would be skipped whole.
    consumer = AIOKafkaConsumer(
        enable_auto_commit=False, auto_offset_reset="earliest", **client_options(kafka)
    )
    producer = make_producer(kafka, client_id=SERVICE)
    await consumer.start()
    await producer.start()
    try:
        left = await _range(consumer, since, until, report)
        while left:
            batches = await consumer.getmany(*left, timeout_ms=1000, max_records=batch_size)
            events: list[RawTweet] = []
            for tp, records in batches.items():
                for record in (r for r in records if r.offset < left.get(tp, -1)):
                    try:
                        events.append(decode(RawTweet, record.value))
                    except DecodeError:
                        report.skipped += 1
            for tp in list(left):  # every partition, those that returned nothing included
                if await consumer.position(tp) >= left[tp]:
                    del left[tp]
            if events:
                await _label(producer, model, events)
                report.labelled += len(events)
                if progress is not None:
                    progress(len(events))
    finally:
        await producer.stop()
        await consumer.stop()
    report.seconds = round(time.monotonic() - started, 2)
    return report


async def _range(
    consumer: AIOKafkaConsumer, since: datetime, until: datetime | None, report: ReplayReport
) -> dict[TopicPartition, int]:
    """Seek each partition of the raw topic to ``since``; the offset to stop at, by partition."""
    await consumer.topics()
    partitions = [TopicPartition(topics.RAW, p)
                  for p in sorted(consumer.partitions_for_topic(topics.RAW) or ())]  # fmt: skip
    if not partitions:
        return {}
    ends = await consumer.end_offsets(partitions)
    starts = await consumer.offsets_for_times({tp: _ms(since) for tp in partitions})
    stops = await consumer.offsets_for_times({tp: _ms(until) for tp in partitions}) if until else {}
    consumer.assign(partitions)
    left = {}
    for tp in partitions:
        first = starts[tp].offset if starts.get(tp) else ends[tp]
        end = stops[tp].offset if stops.get(tp) else ends[tp]
        report.partitions[tp.partition] = (first, end)
        if first < end:
            consumer.seek(tp, first)
            left[tp] = end
    return left


async def _label(producer: object, model: TweetClassifier, events: list[RawTweet]) -> None:
    predictions, langs = await asyncio.to_thread(labels_and_languages, model, events)
    outputs = [
        Output.of(
            topics.SHADOW, classified(event, prediction, model, lang), event.tweet.conversation_id
        )
        for event, prediction, lang in zip(events, predictions, langs, strict=True)
    ]
    await publish(producer, outputs, SERVICE)  # type: ignore[arg-type]


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)
