"""The classify service: labels each raw tweet with a department, an urgency and confidences.

Consumes ``switchboard.tweets.raw`` in micro-batches (``classify.batch_size`` tweets or
``classify.batch_timeout_ms``), runs the model once per batch in a worker thread so the event loop
keeps serving health checks and heartbeats, and publishes ClassifiedTweets on
``switchboard.tweets.classified`` keyed by conversation id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from aiokafka import ConsumerRecord

from switchboard.classify import metrics
from switchboard.classify.language import detect
from switchboard.classify.model import Prediction, TweetClassifier
from switchboard.classify.settings import ClassifySettings
from switchboard.shared import metrics as shared_metrics
from switchboard.shared import topics
from switchboard.shared.events import Classification, ClassifiedTweet, RawTweet, utc_now
from switchboard.shared.kafka import (
    Output,
    StreamLoop,
    decode_or_dead_letter,
    ensure_topics,
    make_consumer,
    make_producer,
)
from switchboard.shared.runtime import run_service

log = logging.getLogger(__name__)

GROUP_ID = "switchboard-classify"


def classified(event: RawTweet, prediction: Prediction, model: TweetClassifier) -> ClassifiedTweet:
    lang = event.tweet.lang or detect(event.tweet.text)
    classification = Classification(
        department=prediction.department,
        urgency=prediction.urgency,
        confidence=round(prediction.confidence, 6),
        urgency_confidence=round(prediction.urgency_confidence, 6),
        department_scores={d: round(p, 6) for d, p in prediction.department_scores.items()},
        urgency_scores={u: round(p, 6) for u, p in prediction.urgency_scores.items()},
        model_version=model.version,
        lang=lang,
        language_supported=model.supports(lang),
    )
    trace = event.trace.model_copy(update={"classified_at": utc_now()})
    return ClassifiedTweet(tweet=event.tweet, classification=classification, trace=trace)


class ClassifyService:
    name = "classify"

    def __init__(self, settings: ClassifySettings, model: TweetClassifier | None = None) -> None:
        self.settings = settings
        self.options = settings.config.classify
        self.model = model
        self.producer = make_producer(settings.kafka, client_id="switchboard-classify")
        self.consumer = make_consumer(
            settings.kafka, [topics.RAW], GROUP_ID, "switchboard-classify"
        )
        self._ready = False

    @property
    def ready(self) -> bool:
        return self._ready

    async def start(self) -> None:
        if self.model is None:
            self.model = await asyncio.to_thread(
                TweetClassifier.load,
                self.options.artifact,
                Path(self.options.backbone) if self.options.backbone else None,
                self.options.max_length,
                self.options.threads,
                self.options.runtime,
                self.options.bucket_size,
                self.settings.onnx_dir,
            )
            # The first forward pass is several times slower than the rest; pay it before ready.
            await asyncio.to_thread(self.model.predict, ["warm-up"])
        self.announce_model()
        await ensure_topics(
            self.settings.kafka,
            [topics.RAW, topics.CLASSIFIED, topics.DEADLETTER],
            self.settings.config.topics.partitions,
            self.settings.config.topics.replication_factor,
        )
        await self.producer.start()
        await self.consumer.start()
        self._ready = True

    def announce_model(self) -> None:
        """Log which model serves and the licence its training data imposes: an operator must
        know whether this deployment may be used commercially."""
        assert self.model is not None
        licence = self.model.licence
        log.info(
            "model %s, licence %s: %s",
            self.model.version,
            licence["spdx"],
            licence["terms"],
            extra={
                "model_version": self.model.version,
                "licence": licence["spdx"],
                "commercial_use": licence["commercial_use"],
            },
        )

    async def run(self, stop: asyncio.Event) -> None:
        loop = StreamLoop(
            self.name,
            self.consumer,
            self.producer,
            self.handle,
            max_records=self.options.batch_size,
            timeout_ms=self.options.batch_timeout_ms or 1,
            fill=self.options.batch_timeout_ms > 0,
        )
        await loop.run(stop)

    async def handle(self, records: list[ConsumerRecord]) -> list[Output]:
        assert self.model is not None
        outputs: list[Output] = []
        events: list[RawTweet] = []
        for record in records:
            decoded = decode_or_dead_letter(record, RawTweet, self.name)
            if isinstance(decoded, Output):
                outputs.append(decoded)
            else:
                events.append(decoded)
        if events:
            started = time.perf_counter()
            predictions = await asyncio.to_thread(
                self.model.predict, [e.tweet.text for e in events]
            )
            metrics.INFERENCE_SECONDS.observe(time.perf_counter() - started)
            for event, prediction in zip(events, predictions, strict=True):
                result = classified(event, prediction, self.model)
                c = result.classification
                metrics.TWEETS_CLASSIFIED.labels(c.department, c.urgency, c.model_version).inc()
                shared_metrics.E2E_LATENCY.labels("classified").observe(
                    (result.trace.classified_at - result.trace.ingested_at).total_seconds()
                )
                outputs.append(
                    Output.of(topics.CLASSIFIED, result, key=event.tweet.conversation_id)
                )
        return outputs

    async def close(self) -> None:
        self._ready = False
        await self.consumer.stop()
        await self.producer.stop()


def main(**overrides: object) -> None:
    """Run the classify service until SIGTERM or SIGINT; ``overrides`` replace settings."""
    settings = ClassifySettings.load(**overrides)
    asyncio.run(run_service(ClassifyService, settings))
