"""The classify service: labels each raw tweet with a department, an urgency and confidences.

Consumes ``switchboard.tweets.raw`` in micro-batches (``classify.batch_size`` tweets or
``classify.batch_timeout_ms``), runs the model once per batch in a worker thread so the event loop
keeps serving health checks and heartbeats, and publishes ClassifiedTweets on
``switchboard.tweets.classified`` keyed by conversation id.

The model is chosen by ``classify.artifact`` and changed without a restart: when the YAML file
names another artifact (or changes another of the model's keys), the new model is loaded and
warmed beside the one serving, and takes over between two batches; a batch in flight finishes on
the model it started with (a batch that failed is labelled again one tweet at a time, each on
the model serving then), and every tweet names the version that labelled it. Rollback is the
same edit. With ``--shadow``, classify serves a candidate artifact in a consumer group of its
own and writes ``switchboard.tweets.shadow`` instead, which nothing routes, and counts how often
its labels agree with the live model's (shadow.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.errors import KafkaError

from switchboard.classify import metrics
from switchboard.classify.config import ClassifyConfig
from switchboard.classify.language import detect
from switchboard.classify.model import (
    DEFAULT_ONNX_DIR,
    Prediction,
    TweetClassifier,
    resolve_artifact,
)
from switchboard.classify.settings import ClassifySettings
from switchboard.classify.shadow import Labels, ShadowComparison
from switchboard.shared import metrics as shared_metrics
from switchboard.shared import topics
from switchboard.shared.events import (
    Classification,
    ClassifiedTweet,
    DecodeError,
    RawTweet,
    decode,
    utc_now,
)
from switchboard.shared.kafka import (
    Output,
    StageFault,
    StreamLoop,
    client_options,
    dead_letter_record,
    ensure_topics,
    make_consumer,
    make_producer,
    record_fault,
)
from switchboard.shared.runtime import run_service
from switchboard.shared.settings import ConfigError, file_digest

log = logging.getLogger(__name__)
# What the file digest in force is once a file failed: none, not even an unreadable file's
# (file_digest None), so a file removed after it failed is judged, and said failed, again.
NOT_IN_FORCE = "not in force"

GROUP_ID = "switchboard-classify"
SHADOW_GROUP_ID = "switchboard-classify-shadow"
# What a model is built from: a change of any of these in the YAML file loads a new model.
MODEL_OPTIONS = ("artifact", "backbone", "max_length", "threads", "runtime", "bucket_size")


def classified(
    event: RawTweet, prediction: Prediction, model: TweetClassifier, lang: str | None
) -> ClassifiedTweet:
    classification = classification_of(prediction, model, lang)
    trace = event.trace.model_copy(update={"classified_at": utc_now()})
    return ClassifiedTweet(tweet=event.tweet, classification=classification, trace=trace)


def classification_of(
    prediction: Prediction, model: TweetClassifier, lang: str | None
) -> Classification:
    """The labels as published (a model whose scores are no probabilities, NaN say, fails
    here: its warm-up, or ``still_works``, tells it from a text that breaks it)."""
    return Classification(
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


def load_model(
    options: ClassifyConfig, artifact: str | None, onnx_dir: Path | None
) -> TweetClassifier:
    """The model ``options`` describe, warmed up: its first forward pass is several times
    slower than the rest, paid before it serves. A backbone folder without a model's files
    is a FileNotFoundError naming ``classify.backbone``."""
    if options.backbone and (
        missing := [f for f in BACKBONE_FILES if not (Path(options.backbone) / f).is_file()]
    ):
        raise FileNotFoundError(
            f"classify.backbone: {options.backbone} is not a Hugging Face model folder (no "
            f"{', '.join(missing)})"
        )
    model = TweetClassifier.load(
        artifact,
        Path(options.backbone) if options.backbone else None,
        options.max_length,
        options.threads,
        options.runtime,
        options.bucket_size,
        onnx_dir,
    )
    labels_plain_tweet(model)
    return model


def labels_plain_tweet(model: TweetClassifier) -> Classification:
    """The model's labels of a plain tweet, as they would be published, its language detected
    (which loads the language model, once)."""
    [prediction] = model.predict([WARM_UP])
    return classification_of(prediction, model, detect(WARM_UP))


WARM_UP = "@AcmeHelp my order never arrived, can someone help?"
BACKBONE_FILES = ("config.json", "tokenizer.json", "special_tokens_map.json")
# A model that did not load is tried again once its files or the YAML file change, and at
# least this often (a failure may pass: memory, a full disk).
FAILED_LOAD_RETRY_S = 300.0
LIVE_READER_RETRY_S = 5.0  # a shadow's reader of the live labels, after it failed


def _stamp(paths: list[str | Path]) -> tuple[float, ...]:
    """When each of ``paths`` (a folder's files included) last changed; -1 when absent."""
    stamps = []
    for path in map(Path, paths):
        try:
            files = [path, *path.rglob("*")] if path.is_dir() else [path]
        except OSError:  # a folder renamed while it was listed (a copy in progress)
            files = [path]
        stamps.append(max((_mtime(f) for f in files), default=-1.0))
    return tuple(stamps)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return -1.0


def _model_files(
    options: ClassifyConfig, artifact: str | None, onnx_dir: Path | None
) -> list[str | Path]:
    """What a model is loaded from: its artifact folder (a name resolved to where it is
    shipped), the backbone, and where the int8 model is read or built."""
    try:
        folder: str | Path | None = resolve_artifact(artifact)
    except FileNotFoundError:
        folder = artifact
    return [p for p in (folder, options.backbone, onnx_dir or DEFAULT_ONNX_DIR) if p]


def labels_and_languages(
    model: TweetClassifier, events: list[RawTweet]
) -> tuple[list[Prediction], list[str | None]]:
    """The model's labels and each tweet's language (X's, else detected): CPU work, for a
    worker thread (loading the language model alone takes a moment)."""
    predictions = model.predict([e.tweet.text for e in events])
    return predictions, [e.tweet.lang or detect(e.tweet.text) for e in events]


def still_works(model: TweetClassifier) -> bool:
    """Whether the model labels a plain tweet (and its language is detected): after a batch
    failed, tells a model that broke (a runtime error, memory) from a text that breaks it
    (dead-lettered alone)."""
    try:
        labels_plain_tweet(model)
    except BaseException as error:  # any failure of the model is the answer (a panic too)
        if not record_fault(error):
            raise
        log.exception("the model fails on a plain tweet")
        return False
    return True


class ClassifyService:
    name = "classify"

    def __init__(self, settings: ClassifySettings, model: TweetClassifier | None = None) -> None:
        self.settings = settings
        self.options = settings.config.classify
        self.model = model
        self.shadow = settings.shadow
        # A shadow's dead letters, logs and metrics are its own: its failures are a
        # candidate's, and the raw records the live group dead-letters it sees again.
        self.name = "classify-shadow" if self.shadow else "classify"
        self.role = "shadow" if self.shadow else "live"
        self.output_topic = topics.SHADOW if self.shadow else topics.CLASSIFIED
        group = SHADOW_GROUP_ID if self.shadow else GROUP_ID
        self.producer = make_producer(settings.kafka, client_id=group)
        # A new shadow group starts at the end of the raw topic, as its live labels are read:
        # from the start it would label days of retention that nothing can be compared with.
        self.consumer = make_consumer(
            settings.kafka, [topics.RAW], group, group,
            offset_reset="latest" if self.shadow else "earliest",
        )  # fmt: skip
        self.comparison = ShadowComparison() if self.shadow else None
        self._config_digest: str | None = file_digest(settings.config_file)
        # The file and model files a load failed on: not loaded again until one of them changes
        # or FAILED_LOAD_RETRY_S passed.
        self._failed: tuple[str | None, tuple[float, ...], float] | None = None
        self._failed_paths: list[str | Path] = []
        self._batching = (self.options.batch_size, self.options.batch_timeout_ms)  # run() uses
        self._ready = False

    @property
    def ready(self) -> bool:
        return self._ready

    async def start(self) -> None:
        if self.model is None:
            try:
                self.model = await asyncio.to_thread(
                    load_model, self.options, self.settings.artifact, self.settings.onnx_dir
                )
            except FileNotFoundError as error:  # a folder that is not there where this runs
                if str(error).startswith("classify.backbone: "):
                    raise ConfigError(str(error)) from None
                if not str(error).startswith("classify.artifact: "):
                    raise
                key = "SWITCHBOARD_SHADOW_ARTIFACT" if self.settings.shadow else "classify.artifact"
                detail = str(error).removeprefix("classify.artifact: ")
                raise ConfigError(f"{key}: {detail}") from None
        self.announce_model()
        await ensure_topics(
            self.settings.kafka,
            [topics.RAW, topics.CLASSIFIED, self.output_topic, topics.DEADLETTER],
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
        metrics.MODEL.clear()
        metrics.MODEL.labels(self.model.version, self.role).set(1)
        log.info(
            "%s model %s, licence %s: %s",
            self.role,
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
        self._batching = (self.options.batch_size, self.options.batch_timeout_ms)
        loop = StreamLoop(
            self.name,
            self.consumer,
            self.producer,
            self.handle,
            max_records=self.options.batch_size,
            timeout_ms=self.options.batch_timeout_ms or 1,
            fill=self.options.batch_timeout_ms > 0,
        )
        background = [asyncio.create_task(self._watch_config(stop))]
        if self.comparison is not None:
            background.append(asyncio.create_task(self._read_live_labels(stop)))
        try:
            await loop.run(stop)
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)

    async def _watch_config(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.options.reload_interval_s)
            if not stop.is_set():
                try:
                    rejected = await self.reload_if_changed() == "failed"
                    shared_metrics.CONFIG_REJECTED.labels(self.name).set(rejected)
                except Exception:  # a bug: logged, and the watch goes on
                    log.exception("reading the configuration file failed")

    async def reload_if_changed(self) -> str:
        """Serve the model the YAML file now describes, if it changed: loaded and warmed while
        the current one serves, then swapped between two batches. A file that does not load, or
        a model that does not, leaves the current model serving."""
        digest = file_digest(self.settings.config_file)
        if digest == self._config_digest:
            return "unchanged"
        if self._failed is not None:
            failed_digest, failed_stamp, failed_at = self._failed
            if (digest, _stamp(self._failed_paths)) == (failed_digest, failed_stamp) and (
                time.monotonic() - failed_at < FAILED_LOAD_RETRY_S
            ):
                return "failed"  # the same file and model files as the load that failed
        self._config_digest = digest
        try:
            settings = type(self.settings).load(
                config_file=self.settings.config_file, kafka=self.settings.kafka,
                onnx_dir=self.settings.onnx_dir, shadow=self.shadow,
                shadow_artifact=self.settings.shadow_artifact,
            )  # fmt: skip
        except ConfigError as error:
            metrics.MODEL_RELOADS.labels("failed").inc()
            log.error("new configuration rejected; the current model keeps serving: %s", error)
            # judged again in five minutes, or as soon as the file changes (a folder it names
            # may be there by then)
            self._config_digest, self._failed_paths = NOT_IN_FORCE, []
            self._failed = (digest, _stamp([]), time.monotonic())
            return "failed"
        options = settings.config.classify
        if (options.batch_size, options.batch_timeout_ms) != self._batching:
            log.warning("classify.batch_size and batch_timeout_ms change at the next restart")
        # settings.artifact is the one this process serves (in shadow, the candidate): a change
        # of classify.artifact alone is the live model's, not a shadow's
        keys = [k for k in MODEL_OPTIONS if k != "artifact"]
        if all(getattr(options, k) == getattr(self.options, k) for k in keys) and (
            settings.artifact == self.settings.artifact
        ):
            self.options, self._failed = options, None
            return "unchanged"
        log.info("loading the model the configuration names", extra={"artifact": settings.artifact})
        # stamped before the load: a file that arrives during a load that fails is a change
        paths = _model_files(options, settings.artifact, settings.onnx_dir)
        stamps = _stamp(paths)
        try:
            model = await asyncio.to_thread(load_model, options, settings.artifact,
                                            settings.onnx_dir)  # fmt: skip
        except Exception as error:  # noqa: BLE001 - any failure to load keeps the current model
            metrics.MODEL_RELOADS.labels("failed").inc()
            log.error("model %s did not load; the current model keeps serving, and it is "
                      "tried again once the file or its files change, or in five minutes: %s",
                      settings.artifact, error)  # fmt: skip
            # An artifact still being copied loads at a later try, once its files changed.
            self._config_digest = NOT_IN_FORCE
            self._failed_paths = paths
            self._failed = (digest, stamps, time.monotonic())
            return "failed"
        self._failed = None
        previous = self.model.version if self.model else None
        self.model, self.settings, self.options = model, settings, options
        metrics.MODEL_RELOADS.labels("applied").inc()
        log.info("model switched", extra={"from": previous, "to": model.version})
        self.announce_model()
        return "applied"

    async def _read_live_labels(self, stop: asyncio.Event) -> None:
        """The live model's labels, from now on, for the shadow comparison; a reader that
        fails (the topic refused, the broker away) is logged, counted and started again: the
        comparison must not stop in silence while the shadow goes on labelling."""
        while not stop.is_set():
            try:
                await self._read_live_labels_until(stop)
            except (KafkaError, OSError) as error:
                metrics.SHADOW_READER_FAILURES.inc()
                log.warning("the shadow cannot read the live labels; trying again",
                            extra={"error": repr(error)})  # fmt: skip
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=LIVE_READER_RETRY_S)

    async def _read_live_labels_until(self, stop: asyncio.Event) -> None:
        assert self.comparison is not None
        consumer = AIOKafkaConsumer(
            topics.CLASSIFIED, auto_offset_reset="latest", client_id=SHADOW_GROUP_ID,
            **client_options(self.settings.kafka),
        )  # fmt: skip
        try:
            await consumer.start()
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=500, max_records=1000)
                for record in (r for part in batches.values() for r in part):
                    with contextlib.suppress(DecodeError):
                        event = decode(ClassifiedTweet, record.value)
                        self.comparison.live(event.tweet.id, Labels.of(event.classification))
        finally:
            await consumer.stop()

    async def handle(self, records: list[ConsumerRecord]) -> list[Output]:
        model = self.model  # the whole batch on one model, even if another takes over meanwhile
        assert model is not None
        events: list[RawTweet] = []
        undecodable: list[tuple[ConsumerRecord, DecodeError]] = []
        for record in records:
            try:
                events.append(decode(RawTweet, record.value))
            except DecodeError as problem:
                undecodable.append((record, problem))
        # Dead letters are made (and counted) once the batch is labelled: a batch the model
        # fails on is handled again one record at a time, and would count them twice.
        outputs = await self._labelled(model, events)
        return [dead_letter_record(self.name, p, r) for r, p in undecodable] + outputs

    async def _labelled(self, model: TweetClassifier, events: list[RawTweet]) -> list[Output]:
        if not events:
            return []
        started = time.perf_counter()
        try:
            predictions, langs = await asyncio.to_thread(labels_and_languages, model, events)
            results = [
                classified(event, prediction, model, lang)
                for event, prediction, lang in zip(events, predictions, langs, strict=True)
            ]
        except BaseException as error:
            if not record_fault(error):  # cancelled, or the process exits
                raise
            if not await asyncio.to_thread(still_works, model):
                raise StageFault(f"the model cannot label tweets: {error!r}") from error
            raise  # one of these texts: handled one at a time, the culprit dead-lettered
        metrics.INFERENCE_SECONDS.labels(self.role).observe(time.perf_counter() - started)
        for result in results:  # counted once the whole batch is labelled (not on a retry)
            self._count(result)
        return [Output.of(self.output_topic, r, key=r.tweet.conversation_id) for r in results]

    def _count(self, result: ClassifiedTweet) -> None:
        c = result.classification
        if self.comparison is not None:
            metrics.SHADOW_LABELLED.labels(c.model_version).inc()
            self.comparison.candidate(result.tweet.id, Labels.of(c))
            return
        metrics.TWEETS_CLASSIFIED.labels(c.department, c.urgency, c.model_version).inc()
        shared_metrics.E2E_LATENCY.labels("classified").observe(
            (result.trace.classified_at - result.trace.ingested_at).total_seconds()  # type: ignore[operator]
        )

    async def close(self) -> None:
        self._ready = False
        await self.consumer.stop()
        await self.producer.stop()


def main(**overrides: object) -> None:
    """Run the classify service until SIGTERM or SIGINT; ``overrides`` replace settings."""
    settings = ClassifySettings.load(**overrides)
    asyncio.run(run_service(ClassifyService, settings))
