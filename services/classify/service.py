"""The classify service: labels each raw tweet with a department, an urgency and confidences.

A faust app (``streams.py``) with one agent over ``switchboard.tweets.raw``: each tweet waits in
a ``Batcher`` that runs the model once per batch (``classify.batch_size`` tweets, or what
arrived within ``classify.batch_timeout_ms`` after the first) in a worker thread, so the event
loop keeps serving health checks and heartbeats and the next batch gathers while one runs.
ClassifiedTweets go to ``switchboard.tweets.classified`` keyed by conversation id; an input is
acknowledged only after its output was (``AckAfterPublish``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from switchboard.classify.language import detect
from switchboard.classify.model import Prediction, TweetClassifier
from switchboard.classify.settings import ClassifySettings
from switchboard.shared import metrics, topics
from switchboard.shared.events import Classification, ClassifiedTweet, RawTweet, utc_now
from switchboard.shared.kafka import Output, decode_or_dead_letter, ensure_topics
from switchboard.shared.runtime import run_service
from switchboard.shared.streams import AckAfterPublish, StreamWorker, raw_topic

log = logging.getLogger(__name__)

GROUP_ID = "switchboard-classify"
SERVICE = "classify"


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


class Batcher:
    """Many callers' texts through one model call: the classifier is several times faster per
    tweet on a batch of 32 than on one. A batch is up to ``size`` texts, or those that came
    within ``wait_s`` after its first; the next batch gathers while the model runs. When a
    batch fails, its texts are run one at a time, so only the text that breaks the model fails
    (its caller dead-letters it) and the others get their predictions."""

    def __init__(
        self, predict: Callable[[list[str]], list[Prediction]], size: int, wait_s: float
    ) -> None:
        self.predict_batch = predict
        self.size = size
        self.wait_s = wait_s
        self._waiting: asyncio.Queue[tuple[str, asyncio.Future[Prediction]]] = asyncio.Queue()

    async def predict(self, text: str) -> Prediction:
        future: asyncio.Future[Prediction] = asyncio.get_running_loop().create_future()
        self._waiting.put_nowait((text, future))
        return await future

    async def run(self) -> None:
        """Run batches until cancelled."""
        while True:
            batch = await self._gather()
            live = [(text, future) for text, future in batch if not future.done()]
            if live:
                await self._run_batch(live)

    async def _gather(self) -> list[tuple[str, asyncio.Future[Prediction]]]:
        batch = [await self._waiting.get()]
        deadline = asyncio.get_running_loop().time() + self.wait_s
        while len(batch) < self.size:
            if not self._waiting.empty():
                batch.append(self._waiting.get_nowait())
                continue
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                batch.append(await asyncio.wait_for(self._waiting.get(), left))
        return batch

    async def _run_batch(self, batch: list[tuple[str, asyncio.Future[Prediction]]]) -> None:
        started = time.perf_counter()
        try:
            predictions = await asyncio.to_thread(self.predict_batch, [t for t, _ in batch])
        except Exception:  # noqa: BLE001 - find the text that breaks the model, see the class
            await self._run_alone(batch)
            return
        metrics.INFERENCE_SECONDS.observe(time.perf_counter() - started)
        metrics.BATCH_SIZE.labels(SERVICE).observe(len(batch))
        for (_, future), prediction in zip(batch, predictions, strict=True):
            if not future.done():
                future.set_result(prediction)

    async def _run_alone(self, batch: list[tuple[str, asyncio.Future[Prediction]]]) -> None:
        for text, future in batch:
            try:
                [prediction] = await asyncio.to_thread(self.predict_batch, [text])
            except Exception as error:  # noqa: BLE001 - the caller dead-letters its record
                if not future.done():
                    future.set_exception(error)
                continue
            if not future.done():
                future.set_result(prediction)


class ClassifyService:
    name = SERVICE

    def __init__(self, settings: ClassifySettings, model: TweetClassifier | None = None) -> None:
        self.settings = settings
        self.options = settings.config.classify
        self.model = model
        self.streams = StreamWorker(GROUP_ID, self.name, settings)
        self.app = self.streams.app
        self.batcher: Batcher | None = None
        self._batches: asyncio.Task[None] | None = None
        # Enough inputs at work to fill the batch being gathered while another runs.
        self.acks = AckAfterPublish(
            self.app, self.name, self.handle, max_in_flight=4 * self.options.batch_size
        )
        self.app.agent(raw_topic(self.app, topics.RAW), name="classify")(self.acks.agent)

    @property
    def ready(self) -> bool:
        return self.streams.ready

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
            )
            # The first forward pass is several times slower than the rest; pay it before ready.
            await asyncio.to_thread(self.model.predict, ["warm-up"])
        self.announce_model()
        self.batcher = Batcher(
            self.model.predict, self.options.batch_size, self.options.batch_timeout_ms / 1000
        )
        self._batches = asyncio.create_task(self.batcher.run(), name="classify-batches")
        await ensure_topics(
            self.settings.kafka,
            [topics.RAW, topics.CLASSIFIED, topics.DEADLETTER],
            self.settings.config.topics.partitions,
            self.settings.config.topics.replication_factor,
        )
        await self.streams.start()

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
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            self.streams.check()
            if self._batches is not None and self._batches.done():
                raise RuntimeError(f"the model's batches stopped: {self._batches!r}")

    def handle(self, message: Any) -> list[Output] | Coroutine[Any, Any, list[Output]]:
        """A record that is not a RawTweet is dead-lettered at once; a tweet waits for its
        batch's turn with the model."""
        event = decode_or_dead_letter(message, RawTweet, self.name)
        if isinstance(event, Output):
            return [event]
        return self._classified(event)

    async def _classified(self, event: RawTweet) -> list[Output]:
        assert self.batcher is not None and self.model is not None
        prediction = await self.batcher.predict(event.tweet.text)
        result = classified(event, prediction, self.model)
        metrics.TWEETS_CLASSIFIED.labels(prediction.department, prediction.urgency).inc()
        metrics.E2E_LATENCY.labels("classified").observe(
            (result.trace.classified_at - result.trace.ingested_at).total_seconds()
        )
        return [Output.of(topics.CLASSIFIED, result, key=event.tweet.conversation_id)]

    async def close(self) -> None:
        await self.streams.stop()
        if self._batches is not None:
            self._batches.cancel()
            await asyncio.gather(self._batches, return_exceptions=True)


def main(**overrides: object) -> None:
    """Run the classify service until SIGTERM or SIGINT; ``overrides`` replace settings."""
    settings = ClassifySettings.load(**overrides)
    asyncio.run(run_service(ClassifyService, settings))
