"""Kafka wiring shared by the services: clients, topic creation, the consume-process-produce loop.

Delivery is at least once: a batch's outputs are acknowledged by the broker before the batch's
input offsets are committed. A crash between the two re-delivers the batch; consumers of the
output topics deduplicate by tweet id (docs/architecture.md, "Delivery guarantees").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
    TopicAlreadyExistsError,
)
from aiokafka.helpers import create_ssl_context

from switchboard.shared import metrics
from switchboard.shared.events import DeadLetter, DecodeError, E, Event, decode, encode
from switchboard.shared.settings import ConfigError, KafkaSettings
from switchboard.shared.topics import DEADLETTER, topic_config

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Output:
    """One message to publish; a ``None`` value is a tombstone (compaction deletes the key).
    ``timestamp_ms`` is the record's Kafka timestamp when the time it stands for is not when it
    is sent (route's spike counts: the windows they belong to), else the producer's clock."""

    topic: str
    value: bytes | None
    key: bytes | None = None
    timestamp_ms: int | None = None

    @classmethod
    def of(
        cls, topic: str, event: Event, key: str | None, timestamp_ms: int | None = None
    ) -> Output:
        encoded_key = key.encode("utf-8") if key is not None else None
        return cls(topic, encode(event), encoded_key, timestamp_ms)


def client_options(kafka: KafkaSettings) -> dict[str, Any]:
    """Connection options common to producers, consumers and the admin client."""
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.require_bootstrap(),
        "security_protocol": kafka.security_protocol,
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=kafka.ssl_cafile, certfile=kafka.ssl_certfile, keyfile=kafka.ssl_keyfile
        )
    if kafka.security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = kafka.sasl_mechanism or "PLAIN"
        options["sasl_plain_username"] = kafka.sasl_username
        if kafka.sasl_password is not None:
            options["sasl_plain_password"] = kafka.sasl_password.get_secret_value()
    return options


def make_producer(kafka: KafkaSettings, client_id: str) -> AIOKafkaProducer:
    # acks=all: an output counts as delivered only once the broker has it durably.
    # request_timeout_ms is also how long aiokafka keeps a batch it cannot deliver.
    return AIOKafkaProducer(
        client_id=client_id,
        acks="all",
        linger_ms=5,
        request_timeout_ms=kafka.delivery_timeout_ms,
        max_request_size=kafka.max_message_bytes,
        **client_options(kafka),
    )


class Consumer(AIOKafkaConsumer):
    """An AIOKafkaConsumer that pauses ``idle_pause_ms`` after a fetch that brought nothing
    (``pause_when_idle``)."""

    def __init__(self, *topics: str, idle_pause_ms: int = 20, **options: Any) -> None:
        super().__init__(*topics, **options)
        self.idle_pause_s = idle_pause_ms / 1000

    async def start(self) -> None:
        await super().start()
        pause_when_idle(self, self.idle_pause_s)


# An idle consumer pauses ``fetch_idle_pause_ms`` after each empty fetch; once IDLE_STREAK
# fetches in a row brought nothing (a fifth of a second by default: no traffic, not a gap
# between two tweets), the pause doubles after each further one, up to IDLE_PAUSE_GROWTH times
# the first. Polling an idle embedded broker then costs about a third of what it did, while a
# consumer with traffic keeps the short pause (a pause growing from the first empty fetch would
# lengthen the wait between two tweets of light traffic).
IDLE_STREAK = 10
IDLE_PAUSE_GROWTH = 5


def pause_when_idle(consumer: AIOKafkaConsumer, pause_s: float) -> None:
    """Make a started consumer wait after a fetch that brought nothing: ``pause_s``, and once
    ``IDLE_STREAK`` fetches in a row brought nothing, twice as long after each further one, at
    most ``IDLE_PAUSE_GROWTH`` times ``pause_s``; a fetch that brings records starts again.

    Kafka holds an empty fetch for ``fetch.max.wait.ms`` (long polling); the embedded broker
    answers at once, so an idle consumer would fetch in a tight loop and burn a core doing
    nothing (docs/performance.md). Against a real broker, whose empty answers already wait up to
    ``fetch.max.wait.ms``, the pause costs nothing.
    aiokafka (pinned) has no option for this: the one fetch coroutine is wrapped.
    """
    if pause_s <= 0:
        return
    fetcher = consumer._fetcher
    fetch = fetcher._proc_fetch_request
    empties: dict[int, int] = {}  # empty fetches in a row, by broker: each is fetched apart

    async def fetch_or_pause(assignment: Any, node_id: int, request: Any) -> bool:
        has_data = await fetch(assignment, node_id, request)
        if has_data:
            empties.pop(node_id, None)
            return has_data
        # counted no further than the pause can grow: a day idle must not make 2**streak huge
        streak = min(empties.get(node_id, 0) + 1, IDLE_STREAK + IDLE_PAUSE_GROWTH)
        empties[node_id] = streak
        growth = min(IDLE_PAUSE_GROWTH, 2 ** max(0, streak - IDLE_STREAK))
        # Cancelled by close() or an unassignment: like aiokafka's own fetch, end quietly
        # (close() awaits the task and expects no CancelledError).
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(growth * pause_s)
        return has_data

    fetcher._proc_fetch_request = fetch_or_pause


def make_consumer(
    kafka: KafkaSettings,
    topics: Sequence[str],
    group_id: str | None,
    client_id: str,
    offset_reset: str = "earliest",
) -> AIOKafkaConsumer:
    """A consumer of ``topics``; ``offset_reset``: where a group with no committed offset
    starts (``earliest``: nothing published before the group existed is skipped)."""
    instance = f"{kafka.group_instance_id}:{group_id}" if kafka.group_instance_id else None
    consumer = Consumer(
        idle_pause_ms=kafka.fetch_idle_pause_ms,
        group_instance_id=instance if group_id else None,
        group_id=group_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset=offset_reset,
        fetch_max_bytes=kafka.fetch_max_bytes,
        max_partition_fetch_bytes=min(4 * 1024 * 1024, kafka.fetch_max_bytes),
        **client_options(kafka),
    )
    consumer.subscribe(list(topics))
    return consumer


async def ensure_topics(
    kafka: KafkaSettings,
    topics: Iterable[str],
    partitions: int,
    replication_factor: int,
    *,
    co_partitioned: Iterable[str] = (),
) -> list[str]:
    """Create the topics that do not exist yet; returns the ones created.

    ``co_partitioned`` are the topics a stream processor joins by key with its tables (a
    conversation's tweets, replies and state): each must have ``partitions``, or faust would
    assign their partitions to replicas apart, and a reply would reach a replica without its
    conversation. Kafka never shrinks a topic, and ``topics.partitions`` raised after the
    topics exist does not grow them: a mismatch stops the service at start, naming the key."""
    admin = AIOKafkaAdminClient(client_id="switchboard-admin", **client_options(kafka))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        # Checked before any is created: none is added at a count that cannot work.
        joined = sorted(set(co_partitioned) & existing)
        if joined:
            found = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(joined)}
            wrong = {t: n for t, n in found.items() if n != partitions}
            if wrong:
                raise ConfigError(
                    f"config key topics.partitions: {partitions}, but "
                    + ", ".join(f"{t} has {n}" for t, n in sorted(wrong.items()))
                    + ": the topics joined by key must have as many partitions (set "
                    "topics.partitions to theirs, or add partitions to every one of them)"
                )
        missing = [t for t in dict.fromkeys(topics) if t not in existing]
        if missing:
            # Another service may create them at the same moment; that is fine.
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [
                        NewTopic(t, partitions, replication_factor, topic_configs=topic_config(t))
                        for t in missing
                    ]
                )
        return missing
    finally:
        await admin.close()


async def wait_for_broker(kafka: KafkaSettings, timeout_s: float = 30.0) -> None:
    """Return once the cluster answers a metadata request, or raise TimeoutError."""
    deadline = time.monotonic() + timeout_s
    while True:
        admin = AIOKafkaAdminClient(client_id="switchboard-probe", **client_options(kafka))
        try:
            await admin.start()
            await admin.list_topics()
            return
        except (KafkaConnectionError, OSError) as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"Kafka at {kafka.bootstrap_servers} did not answer") from exc
            await asyncio.sleep(0.2)
        finally:
            await admin.close()


def dead_letter(
    stage: str, problem: DecodeError, original: bytes, key: bytes | None = None, **where: object
) -> Output:
    """The one way input becomes a dead letter: counted, logged, and keyed like the original.

    ``where`` names the input (``source_topic``, ``partition``, ``offset``, ``source``...)."""
    metrics.DEAD_LETTERS.labels(stage, problem.reason).inc()
    log.warning("dead-lettered a message", extra={"reason": problem.reason, **where})
    text_key = key.decode("utf-8", errors="replace") if key is not None else None
    letter = DeadLetter.of(stage, problem, original, key=text_key, **where)
    return Output(DEADLETTER, encode(letter), key)


def dead_letter_record(stage: str, problem: DecodeError, record: ConsumerRecord) -> Output:
    """The dead letter of a consumed record, pointing at where it was read."""
    return dead_letter(
        stage,
        problem,
        record.value or b"",
        record.key,
        source_topic=record.topic,
        partition=record.partition,
        offset=record.offset,
    )


def decode_or_dead_letter(record: ConsumerRecord, event_type: type[E], stage: str) -> E | Output:
    """The event in ``record``, or the dead-letter Output that explains why there is none."""
    try:
        return decode(event_type, record.value)
    except DecodeError as problem:
        return dead_letter_record(stage, problem, record)


BatchHandler = Callable[[list[ConsumerRecord]], Awaitable[list[Output]]]


class StageFault(RuntimeError):
    """The stage itself cannot work, whatever the record (classify's model fails on a text it
    has always handled): raised by a handler so that nothing is dead-lettered or committed."""


# Failures of the infrastructure or of the stage, not of a record: the service stops and,
# restarted, reads the batch again. Any other error is blamed on the batch's records (see
# StreamLoop._handle).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (KafkaError, OSError, StageFault)


def record_fault(error: BaseException) -> bool:
    """Whether processing a record may have raised ``error`` (then blamed on the records): any
    ``Exception``, and a Rust extension's panic (tokenizers, through pyo3), which derives from
    BaseException so that ``except Exception`` does not catch it; uncaught, one text the
    tokenizer panics on would crash-loop classify. Not cancellation, exit or interrupt."""
    kind = type(error)
    return isinstance(error, Exception) or (
        kind.__name__ == "PanicException" and kind.__module__ == "pyo3_runtime"
    )


class StreamLoop:
    """Consume a batch, hand it to ``handler``, publish its outputs, then commit.

    A batch is up to ``max_records`` records or whatever arrived within ``timeout_ms``; with
    ``fill``, it waits up to ``timeout_ms`` after the first record for the batch to fill (the
    classifier is five times faster per tweet on 32 tweets than on one). When the handler raises
    (other than TRANSIENT_ERRORS), the batch is handled again one record at a time, and a record
    that still fails is dead-lettered ``processing_failed``: one poison record never stops the
    stream, nor crash-loops the service on restart. A handler that finds the stage itself broken
    raises ``StageFault``: the service stops without committing, and crash-loops (lag grows,
    the lag alert fires) until the stage works again, rather than dead-letter every record.
    """

    def __init__(
        self,
        service: str,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        handler: BatchHandler,
        *,
        max_records: int = 100,
        timeout_ms: int = 100,
        fill: bool = False,
    ) -> None:
        self.service = service
        self.consumer = consumer
        self.producer = producer
        self.handler = handler
        self.max_records = max_records
        self.timeout_ms = timeout_ms
        self.fill = fill
        self._lag: metrics.LagReport | None = None

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            records = await self._batch(self.timeout_ms, self.max_records)
            if records and self.fill:
                records += await self._fill(len(records))
            if records:
                await self._process(records)
            await self._report_lag()

    async def _batch(self, timeout_ms: int, most: int) -> list[ConsumerRecord]:
        batches = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=most)
        return [record for part in batches.values() for record in part]

    async def _fill(self, have: int) -> list[ConsumerRecord]:
        """More records, until the batch is full or ``timeout_ms`` after its first record."""
        more: list[ConsumerRecord] = []
        deadline = time.monotonic() + self.timeout_ms / 1000
        while have + len(more) < self.max_records:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            more += await self._batch(left_ms, self.max_records - have - len(more))
        return more

    async def _report_lag(self) -> None:
        """Messages behind the end of each assigned partition (what the dashboards call lag)."""
        if self._lag is None:
            group = self.consumer._group_id or "none"  # noqa: SLF001 - aiokafka keeps it private
            self._lag = metrics.LagReport(group)
        held = self.consumer.assignment()
        lags: dict[tuple[str, int], int] = {}
        for tp in held:
            end = self.consumer.highwater(tp)
            if end is None:  # nothing fetched from it yet
                continue
            with contextlib.suppress(IllegalStateError, KafkaError):
                lags[(tp.topic, tp.partition)] = max(0, end - await self.consumer.position(tp))
        self._lag.report({(tp.topic, tp.partition) for tp in held}, lags)

    async def _process(self, records: list[ConsumerRecord]) -> None:
        started = time.perf_counter()
        for record in records:
            metrics.CONSUMED.labels(self.service, record.topic).inc()
        outputs = await self._handle(records)
        await publish(self.producer, outputs, self.service)
        try:
            await self.consumer.commit()
        except CommitFailedError:
            # The group rebalanced mid-batch; the new owner re-reads these records.
            log.warning("commit failed after a rebalance; the batch will be redelivered")
        metrics.BATCH_SECONDS.labels(self.service).observe(time.perf_counter() - started)
        metrics.BATCH_SIZE.labels(self.service).observe(len(records))

    async def _handle(self, records: list[ConsumerRecord]) -> list[Output]:
        try:
            return await self.handler(records)
        except TRANSIENT_ERRORS:
            raise
        except BaseException as error:  # any bug a record triggers; see the class
            if not record_fault(error):
                raise
            if len(records) == 1:
                log.exception("a record failed processing; dead-lettered")
                detail = f"{type(error).__name__}: {error}"[:2000]
                problem = DecodeError("processing_failed", detail)
                return [dead_letter_record(self.service, problem, records[0])]
            log.warning("a batch failed; handling its records one at a time", exc_info=True)
        return [output for record in records for output in await self._handle([record])]


async def publish(
    producer: AIOKafkaProducer, outputs: Sequence[Output], service: str
) -> list[Output]:
    """Send every output and wait until the broker acknowledged all of them.

    An output too large for the cluster (over ``KAFKA_MAX_MESSAGE_BYTES``, or refused by the
    broker as too large) can never be published: it is replaced by a dead letter that says so
    and holds its first bytes, so the loop goes on. Returns the outputs replaced."""
    if not outputs:
        return []
    errors = await _send_all(producer, outputs)
    letters = [_too_large(service, o, e) for o, e in zip(outputs, errors, strict=True) if e]
    if letters and any(await _send_all(producer, letters)):
        raise MessageSizeTooLargeError("a dead letter was too large to publish")
    published = [o for o, e in zip(outputs, errors, strict=True) if e is None] + letters
    for output in published:
        metrics.PRODUCED.labels(service, output.topic).inc()
    return [o for o, e in zip(outputs, errors, strict=True) if e is not None]


async def _send_all(
    producer: AIOKafkaProducer, outputs: Sequence[Output]
) -> list[MessageSizeTooLargeError | None]:
    """Send in order, then wait for every acknowledgement; per output, its size error if any.
    Any other error is raised."""
    pending: list[asyncio.Future[Any] | MessageSizeTooLargeError] = []
    for output in outputs:
        try:
            pending.append(await producer.send(
                output.topic, output.value, key=output.key, timestamp_ms=output.timestamp_ms
            ))  # fmt: skip
        except MessageSizeTooLargeError as refused:  # over the producer's max_request_size
            pending.append(refused)
    results = await asyncio.gather(
        *(p for p in pending if isinstance(p, asyncio.Future)), return_exceptions=True
    )
    acknowledged = iter(results)
    errors: list[MessageSizeTooLargeError | None] = []
    for sent in pending:
        result = next(acknowledged) if isinstance(sent, asyncio.Future) else sent
        if isinstance(result, BaseException) and not isinstance(result, MessageSizeTooLargeError):
            raise result
        errors.append(result if isinstance(result, MessageSizeTooLargeError) else None)
    return errors


def _too_large(service: str, output: Output, error: MessageSizeTooLargeError) -> Output:
    problem = DecodeError(
        "too_large",
        f"a {len(output.value or b'')}-byte message for {output.topic} cannot be published: "
        f"{error}",
    )
    return dead_letter(service, problem, output.value or b"", output.key, target_topic=output.topic)


async def read_to_end(
    kafka: KafkaSettings,
    topic_names: Sequence[str],
    apply: Callable[[ConsumerRecord], None],
    *,
    since_ms: int | None = None,
    partitions: set[int] | None = None,
    client_id: str = "switchboard-reader",
) -> int:
    """Feed every record of ``topic_names`` (from ``since_ms`` on, if given; only the given
    ``partitions``, if given) to ``apply``, up to the end offsets seen at the start; no consumer
    group, nothing committed. Returns the count.
    """
    # "earliest": a fetch answered "offset out of range" (the embedded broker does, right after
    # it starts) must send the reader back to the start, not jump it to the end: with the
    # default "latest", a restore right after a broker restart read nothing in 10 of 15 runs.
    consumer = AIOKafkaConsumer(
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **client_options(kafka),
    )
    try:
        await consumer.start()  # inside: a broker it cannot reach leaves no client open
        assigned = []
        for topic in topic_names:
            found = consumer.partitions_for_topic(topic)
            if not found:
                await consumer.topics()  # metadata for topics created since the start
                found = consumer.partitions_for_topic(topic) or set()
            chosen = found if partitions is None else found & partitions
            assigned += [TopicPartition(topic, p) for p in sorted(chosen)]
        if not assigned:
            return 0
        consumer.assign(assigned)
        end = await consumer.end_offsets(assigned)
        await _seek_start(consumer, assigned, since_ms)
        count = 0
        remaining = {tp for tp in assigned if await consumer.position(tp) < end[tp]}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=500)
            for records in batches.values():
                for record in records:
                    apply(record)
                    count += 1
            for tp in list(remaining):
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
        return count
    finally:
        await consumer.stop()


async def _seek_start(
    consumer: AIOKafkaConsumer, assigned: list[TopicPartition], since_ms: int | None
) -> None:
    if since_ms is None:
        await consumer.seek_to_beginning(*assigned)
        return
    found = await consumer.offsets_for_times({tp: since_ms for tp in assigned})
    ends = await consumer.end_offsets(assigned)
    for tp in assigned:
        offset = found.get(tp)
        consumer.seek(tp, offset.offset if offset is not None else ends[tp])


class InFlight:
    """Sends without waiting for each acknowledgement; at most ``window`` unacknowledged.

    Waiting for the broker's ack of one message before sending the next caps a producer at one
    message per round trip plus ``linger_ms`` (about 150/s here). Sources that need an ack
    before they move on (a webhook response, a polling checkpoint) await the returned future or
    ``flush()``; the others only wait when the window is full (backpressure). A failed send is
    reported to ``on_error`` and raised by the next ``send`` or ``flush``, so a source never
    carries on past a message that was not stored. A caller that awaits the ack itself sees the
    failure there and passes ``sticky=False``.
    """

    def __init__(self, producer: AIOKafkaProducer, service: str, window: int = 1024) -> None:
        self.producer = producer
        self.service = service
        self._window = asyncio.Semaphore(window)
        self._pending: set[asyncio.Future[Any]] = set()
        self.failure: BaseException | None = None

    async def send(
        self,
        output: Output,
        on_error: Callable[[BaseException], None] | None = None,
        *,
        sticky: bool = True,
    ) -> asyncio.Future[Any]:
        """Queue ``output``; returns the future of its acknowledgement."""
        self._raise_failure()
        await self._window.acquire()
        try:
            try:
                ack = await self.producer.send(
                    output.topic, output.value, key=output.key, timestamp_ms=output.timestamp_ms
                )
            except MessageSizeTooLargeError as refused:  # as publish() does: dead-letter it
                output = _too_large(self.service, output, refused)
                ack = await self.producer.send(output.topic, output.value, key=output.key)
        except BaseException:
            self._window.release()
            raise
        self._pending.add(ack)
        ack.add_done_callback(lambda done: self._settled(done, output, on_error, sticky))
        return ack

    def _settled(
        self,
        ack: asyncio.Future[Any],
        output: Output,
        on_error: Callable[[BaseException], None] | None,
        sticky: bool,
    ) -> None:
        self._pending.discard(ack)
        self._window.release()
        error = asyncio.CancelledError() if ack.cancelled() else ack.exception()
        if error is None:
            metrics.PRODUCED.labels(self.service, output.topic).inc()
            return
        if sticky:
            self.failure = self.failure or error
        if on_error is not None:
            on_error(error)

    async def flush(self) -> None:
        """Wait until everything sent so far is acknowledged; raise the first failure."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self.failure is not None:
            raise KafkaPublishError(f"{self.service}: a message was not stored") from self.failure


class KafkaPublishError(RuntimeError):
    """A message the service sent was not acknowledged by the broker."""
