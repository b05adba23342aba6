"""Poison input at every Kafka-fed stage (ingest's X input: test_ingest_x.py).

Each bad message is dead-lettered with the stage, a reason and its exact bytes (the head and a
reference when it is too large to copy whole); a good message sent after them is processed, and
the group's committed offset moves past them, so a restart does not meet them again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaProducer, ConsumerRecord
from prometheus_client import REGISTRY

from switchboard.classify.service import GROUP_ID as CLASSIFY_GROUP
from switchboard.classify.service import ClassifyService
from switchboard.classify.settings import ClassifySettings
from switchboard.ingest.checkpoints import Checkpoints
from switchboard.notify.service import GROUP_ID as NOTIFY_GROUP
from switchboard.notify.service import NotifyService
from switchboard.notify.settings import NotifySettings, SmtpSettings
from switchboard.route.service import GROUP_ID as ROUTE_GROUP
from switchboard.route.service import RouteService
from switchboard.route.settings import RouteSettings
from switchboard.shared import topics
from switchboard.shared.events import (
    MAX_ORIGINAL_BYTES,
    Author,
    BrandTweet,
    ConversationState,
    DeadLetter,
    Event,
    IngestCheckpoint,
    RedriveRequest,
    RoutedTweet,
    Trace,
    decode,
    encode,
    utc_now,
)
from switchboard.shared.kafka import (
    Output,
    StageFault,
    StreamLoop,
    ensure_topics,
    make_consumer,
    make_producer,
    publish,
)
from switchboard.shared.settings import KafkaSettings
from switchboard.shared.streams import AckAfterPublish, raw_topic, stream_app, until_worker_ready
from tests.conftest import CONFIG_FILE, read_topics, wait_for, wait_for_commit
from tests.factories import Poison, a_classified_tweet, a_raw_tweet, a_tweet, routed_from

RUN = uuid.uuid4().hex[:8]  # keys unique to this run: a cluster may be shared between tests
SKYLARK_HELP_ID = "1500000000000000002"


def poison_key(stage: str, case: Poison) -> bytes:
    key = f"{RUN}-{stage}-{case.case}".encode()
    # Keys are not always UTF-8 either; the dead letter keeps the key byte for byte.
    return b"\xfe\xff" + key if case.case == "invalid_utf8" else key


def poisons(sample: Event) -> list[Poison]:
    """Every kind of bad input, made from ``sample``, a valid event of the topic."""
    valid = json.loads(encode(sample))
    body = "tweet" if "tweet" in valid else "routed"
    without_body = {k: v for k, v in valid.items() if k != body}
    return [
        Poison("invalid_json", b'{"schema_version": 1, "tweet": {"id": ', "invalid_json"),
        Poison("schema_v99", _json(valid, schema_version=99), "unsupported_schema_version"),
        Poison("wrong_event_type", _json(valid, event_type="tweet.unknown"), "wrong_event_type"),
        Poison("missing_fields", _json(without_body), "missing_field"),
        Poison("null_fields", _json(valid, **{body: None}), "missing_field"),
        Poison("json_null", b"null", "invalid_event"),
        Poison("megabyte_text", _json(_with_text(valid, "x" * 1_000_000)), "too_large"),
        Poison("invalid_utf8", b'{"schema_version": 1, "text": "caf\xe9 \xff"}', "invalid_utf8"),
        Poison("empty_value", b"", "empty_message"),
        Poison("tombstone", None, "empty_message"),
    ]  # fmt: skip


def _json(valid: dict[str, Any], **changes: object) -> bytes:
    return json.dumps({**valid, **changes}).encode()


def _with_text(valid: dict[str, Any], text: str) -> dict[str, Any]:
    tweet = valid["tweet"] if "tweet" in valid else valid["routed"]["tweet"]
    tweet["text"] = text
    return valid


@dataclass
class Feed:
    """What a stage reads on ``topic``: poison made from ``sample``, then a good message
    (``after``), whose processing shows as a record on ``expect_topic`` that ``expect``
    accepts."""

    topic: str
    group: str
    sample: Event
    after: Output
    expect_topic: str
    expect: Callable[[ConsumerRecord], bool]
    before: Output | None = None  # processed before the poison is sent


async def poison_then_good(
    service: Any,
    feed: Feed,
    kafka: KafkaSettings,
    producer: AIOKafkaProducer,
    read: Callable[..., Any],
    running: Callable[..., Any],
) -> None:
    """Send every poison case, then the good message; check each dead letter, that the good
    one was processed, and that the group's offset moved past them all."""
    stage = service.name
    cases = poisons(feed.sample)
    async with running(service):
        if feed.before is not None:
            first = await producer.send_and_wait(*_args(feed.before))
            await wait_for_commit(kafka, feed.group, feed.before.topic, first.offset + 1, 0)
        sent = {}
        for case in cases:
            key = poison_key(stage, case)
            sent[key] = (case, await producer.send_and_wait(feed.topic, case.value, key, 0))
        good = await producer.send_and_wait(*_args(feed.after))  # behind the poison

        def done(records: list[ConsumerRecord]) -> bool:
            letters = {r.key for r in records if r.topic == topics.DEADLETTER}
            expected = any(r.topic == feed.expect_topic and feed.expect(r) for r in records)
            return expected and letters >= set(sent)

        records = await read([topics.DEADLETTER, feed.expect_topic], done, timeout_s=120)
        await wait_for_commit(kafka, feed.group, feed.topic, good.offset + 1, 0)

    assert any(r.topic == feed.expect_topic and feed.expect(r) for r in records), "the good one"
    letters = {r.key: r for r in records if r.topic == topics.DEADLETTER and r.key in sent}
    for key, (case, where) in sent.items():
        assert key in letters, f"{case.case} was not dead-lettered"
        letter = decode(DeadLetter, letters[key].value)
        assert (letter.stage, letter.reason) == (stage, case.reason), case.case
        assert (letter.source_topic, letter.partition, letter.offset) == (
            feed.topic, 0, where.offset
        ), case.case  # fmt: skip
        original = case.value or b""
        assert letter.original_size == len(original), case.case
        if len(original) > MAX_ORIGINAL_BYTES:  # too large to copy: the head and the offset
            assert letter.original_truncated and letter.original() == original[:MAX_ORIGINAL_BYTES]
        else:
            assert not letter.original_truncated and letter.original() == original, case.case
        assert letter.error, case.case


def _args(output: Output) -> tuple[str, bytes, bytes | None, int]:
    return output.topic, output.value, output.key, 0  # all on partition 0, in order


def keyed(key: str) -> Callable[[ConsumerRecord], bool]:
    return lambda record: record.key == key.encode()


# --- one test per stage ---------------------------------------------------------------------


async def test_classify_dead_letters_poison_and_goes_on(kafka, producer, read, running, classifier):
    good = a_raw_tweet(id=f"{RUN}-c", conversation_id=f"{RUN}-classify-good")
    feed = Feed(
        topics.RAW,
        CLASSIFY_GROUP,
        sample=good,
        after=Output.of(topics.RAW, good, good.tweet.conversation_id),
        expect_topic=topics.CLASSIFIED,
        expect=keyed(good.tweet.conversation_id),
    )
    settings = ClassifySettings.load(config_file=CONFIG_FILE, kafka=kafka)
    service = ClassifyService(settings, model=classifier)
    await poison_then_good(service, feed, kafka, producer, read, running)


class _BrokenModel:
    """The shipped model once its runtime broke (fault injection): every call fails, the
    warm-up text included."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def predict(self, texts: list[str]) -> list[Any]:
        raise RuntimeError("onnxruntime: bad allocation")


class _DivergedModel(_BrokenModel):
    """The shipped model's labels with scores that are no probabilities (a training run that
    diverged): it runs, and nothing it says can be published."""

    def predict(self, texts: list[str]) -> list[Any]:
        return [
            dataclasses.replace(p, department_scores=dict.fromkeys(p.department_scores, math.nan))
            for p in self._model.predict(texts)
        ]


class PanicException(BaseException):
    """What a Rust extension raises when it panics (tokenizers through pyo3): a BaseException,
    which ``except Exception`` does not catch."""


PanicException.__module__ = "pyo3_runtime"


class _ModelFailingOn:
    """The shipped model with a bug one text triggers (in its tokenizer, say)."""

    def __init__(self, model: Any, text: str, error: BaseException) -> None:
        self._model, self._text, self._error = model, text, error

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def predict(self, texts: list[str]) -> list[Any]:
        if self._text in texts:
            raise self._error
        return self._model.predict(texts)


@pytest.mark.parametrize(
    "error",
    [ValueError("the tokenizer's bug"), PanicException("byte index 3 is not a char boundary")],
    ids=["an-error", "a-tokenizer-panic"],
)
async def test_a_batch_the_model_fails_on_dead_letters_each_bad_record_once(
    own_kafka, own_producer, running, classifier, error
):
    """A batch holding an undecodable record and a text the model fails on is handled again
    one record at a time: each bad record is dead-lettered, and counted, once; so is a text
    the tokenizer panics on (a BaseException). On a broker of its own: the counter is the
    process's, and on a shared cluster classify's group would also read the poison other
    tests leave."""
    conversation = f"{RUN}-one-batch"  # one key, one partition: the three records come together
    bad_text = "@SkylarkHelp the text the model fails on"
    tweets = [a_raw_tweet(id=f"{RUN}-{n}", conversation_id=conversation, text=text)
              for n, text in enumerate([bad_text, "@SkylarkHelp where is my bag"])]  # fmt: skip
    for value in [b"{not json", *(encode(t) for t in tweets)]:
        await own_producer.send_and_wait(topics.RAW, value, conversation.encode())

    def counted(reason: str) -> float:
        return (
            REGISTRY.get_sample_value(
                "switchboard_deadletter_total", {"service": "classify", "reason": reason}
            )
            or 0.0
        )

    before = {reason: counted(reason) for reason in ("invalid_json", "processing_failed")}
    settings = ClassifySettings.load(config_file=CONFIG_FILE, kafka=own_kafka)
    model = _ModelFailingOn(classifier, bad_text, error)
    async with running(ClassifyService(settings, model=model)):
        await read_topics(
            own_kafka,
            [topics.CLASSIFIED, topics.DEADLETTER],
            lambda rs: sum(r.key == conversation.encode() for r in rs) >= 3,
        )
        await asyncio.sleep(1)  # a second dead letter of either would be out by now
        watched = [topics.CLASSIFIED, topics.DEADLETTER]
        records = await read_topics(own_kafka, watched, lambda rs: False, 1.0)

    ours = [r for r in records if r.key == conversation.encode()]
    letters = sorted(decode(DeadLetter, r.value).reason for r in ours
                     if r.topic == topics.DEADLETTER)  # fmt: skip
    assert letters == ["invalid_json", "processing_failed"]
    assert [r.topic for r in ours].count(topics.CLASSIFIED) == 1
    assert {reason: counted(reason) - n for reason, n in before.items()} == {
        "invalid_json": 1.0, "processing_failed": 1.0,
    }  # fmt: skip


@pytest.mark.parametrize("fault", [_BrokenModel, _DivergedModel])
async def test_classify_whose_model_breaks_stops_and_dead_letters_nothing(
    kafka, producer, read, running, classifier, fault
):
    """A model that fails on every text, a plain tweet included, is not a record's fault: the
    service stops (its orchestrator restarts it) without dead-lettering or committing the
    batch, and the tweets are classified once a model works again. So does one whose labels
    cannot be published (NaN scores): every tweet dead-lettered would lose the traffic."""
    tweet = a_raw_tweet(id=f"{RUN}-{fault.__name__}", conversation_id=f"{RUN}-{fault.__name__}")
    settings = ClassifySettings.load(config_file=CONFIG_FILE, kafka=kafka)
    broken = ClassifyService(settings, model=fault(classifier))
    await broken.start()
    stop = asyncio.Event()
    task = asyncio.create_task(broken.run(stop))
    try:
        await producer.send_and_wait(
            topics.RAW, encode(tweet), tweet.tweet.conversation_id.encode()
        )
        with pytest.raises(StageFault):
            await asyncio.wait_for(task, timeout=120)
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await broken.close()
    async with running(ClassifyService(settings, model=classifier)):
        key = tweet.tweet.conversation_id.encode()
        records = await read(
            [topics.CLASSIFIED, topics.DEADLETTER],
            lambda rs: any(r.topic == topics.CLASSIFIED and r.key == key for r in rs),
            timeout_s=120,
        )

    assert [r.topic for r in records if r.key == key] == [topics.CLASSIFIED]


def route_feed(topic: str) -> Feed:
    conversation = f"{RUN}-route-good-{topic}"
    # community at normal urgency: no subscription, so no email for later tests to find
    inbound = a_classified_tweet(
        "community", 0.9, "normal", id=f"{RUN}-r1", conversation_id=conversation
    )
    if topic == topics.CLASSIFIED:
        return Feed(
            topic,
            ROUTE_GROUP,
            sample=inbound,
            after=Output.of(topic, inbound, conversation),
            expect_topic=topics.department_topic("community"),
            expect=keyed(conversation),
        )
    helpdesk = Author(id=SKYLARK_HELP_ID, username="SkylarkHelp")
    reply = BrandTweet(
        handle="@SkylarkHelp",
        tweet=a_tweet(id=f"{RUN}-r2", conversation_id=conversation, author=helpdesk),
        trace=Trace(ingested_at=utc_now()),
    )

    def answered(record: ConsumerRecord) -> bool:
        return keyed(conversation)(record) and (
            decode(ConversationState, record.value).awaiting is None
        )

    return Feed(
        topic,
        ROUTE_GROUP,
        sample=reply,
        after=Output.of(topic, reply, conversation),
        expect_topic=topics.ROUTE_CONVERSATIONS,
        expect=answered,
        before=Output.of(topics.CLASSIFIED, inbound, conversation),  # what the reply answers
    )


@pytest.mark.parametrize("topic", [topics.CLASSIFIED, topics.BRAND])
async def test_route_dead_letters_poison_and_goes_on(kafka, producer, read, running, topic):
    settings = RouteSettings.load(config_file=CONFIG_FILE, kafka=kafka)
    service = RouteService(settings)
    await poison_then_good(service, route_feed(topic), kafka, producer, read, running)


def notify_feed(topic: str) -> Feed:
    conversation = f"{RUN}-notify-good-{topic}"
    complaint = a_classified_tweet(
        "customer_service", 0.9, "high", id=f"{RUN}-n1", conversation_id=conversation
    )
    routed = routed_from(complaint)
    if topic == topics.NOTIFICATIONS_REDRIVE:
        sample: Event = RedriveRequest(
            delivery_id=f"{RUN}-n1:email:support-leads",
            subscription="support-leads",
            department="customer_service",
            routed=routed,
        )
    else:
        sample = routed
    return Feed(
        topic,
        NOTIFY_GROUP,
        sample=sample,
        after=Output.of(topic, sample, conversation),
        expect_topic=topics.DELIVERIES,
        expect=keyed(conversation),
    )


@pytest.mark.parametrize(
    "topic", [topics.department_topic("customer_service"), topics.NOTIFICATIONS_REDRIVE]
)
async def test_notify_dead_letters_poison_and_goes_on(kafka, producer, read, running, inbox, topic):
    settings = NotifySettings.load(
        config_file=CONFIG_FILE, kafka=kafka, smtp=SmtpSettings(host="127.0.0.1", port=inbox.port)
    )
    service = NotifyService(settings)
    await poison_then_good(service, notify_feed(topic), kafka, producer, read, running)


# --- the shared loop ------------------------------------------------------------------------

LOOP_IN, LOOP_OUT = "switchboard.test.poison.in", "switchboard.test.poison.out"


@pytest.mark.parametrize("refused_by", ["producer", "broker"])
async def test_an_output_too_large_for_the_cluster_is_dead_lettered(kafka, read, refused_by):
    # The producer refuses what is over KAFKA_MAX_MESSAGE_BYTES; with a limit above the
    # broker's (1 MiB here), the broker refuses it.
    limit = 1_048_576 if refused_by == "producer" else 4 * 1_048_576
    producer = make_producer(kafka.model_copy(update={"max_message_bytes": limit}), "test")
    await ensure_topics(kafka, [LOOP_OUT], 1, 1)
    key = f"{RUN}-huge-{refused_by}"
    huge = Output(LOOP_OUT, b"h" * 1_200_000, key.encode())
    small = [Output(LOOP_OUT, f"{key}-{n}".encode(), key.encode()) for n in range(2)]
    await producer.start()
    try:
        replaced = await publish(producer, [small[0], huge, small[1]], "route")
    finally:
        await producer.stop()

    assert replaced == [huge]
    records = await read(
        [LOOP_OUT, topics.DEADLETTER],
        lambda rs: sum(r.key == key.encode() for r in rs) >= 3,
    )
    assert [r.value for r in records if r.topic == LOOP_OUT and r.key == key.encode()] == [
        o.value for o in small
    ]
    [letter] = [decode(DeadLetter, r.value) for r in records if r.topic == topics.DEADLETTER
                and r.key == key.encode()]  # fmt: skip
    assert (letter.stage, letter.reason, letter.target_topic) == ("route", "too_large", LOOP_OUT)
    assert letter.original_truncated and letter.original_size == len(huge.value)
    assert letter.original() == huge.value[:MAX_ORIGINAL_BYTES]


async def poison_between_two_good_records(
    kafka: KafkaSettings,
    producer: AIOKafkaProducer,
    read,
    group: str,
    key: bytes,  # noqa: ANN001
) -> list[ConsumerRecord]:
    """Send before, boom, after; the outputs and dead letters once all three are accounted for
    and ``group`` committed past them."""
    for value in (b"before", b"boom", b"after"):
        last = await producer.send_and_wait(LOOP_IN, value, key, 0)
    records = await read(
        [LOOP_OUT, topics.DEADLETTER], lambda rs: sum(r.key == key for r in rs) >= 3
    )
    await wait_for_commit(kafka, group, LOOP_IN, last.offset + 1, 0)
    return records


def assert_only_the_culprit_was_dead_lettered(ours: list[ConsumerRecord]) -> None:
    assert [r.value for r in ours if r.topic == LOOP_OUT] == [b"before", b"after"]
    [letter] = [decode(DeadLetter, r.value) for r in ours if r.topic == topics.DEADLETTER]
    assert (letter.reason, letter.original(), letter.source_topic) == (
        "processing_failed", b"boom", LOOP_IN
    )  # fmt: skip
    assert "ZeroDivisionError: the stage's bug" in letter.error


async def test_a_record_the_handler_fails_on_is_dead_lettered_and_the_stream_goes_on(
    kafka, producer, read
):
    """Poison that decodes but breaks a stage (a bug) must not stop the stream, nor crash-loop
    the service: the batch is retried one record at a time and the culprit dead-lettered."""
    await ensure_topics(kafka, [LOOP_IN, LOOP_OUT], 1, 1)

    async def handler(records: list[ConsumerRecord]) -> list[Output]:
        outputs = []
        for record in records:
            if record.value == b"boom":
                raise ZeroDivisionError("the stage's bug")
            outputs.append(Output(LOOP_OUT, record.value, record.key))
        return outputs

    group = f"{RUN}-loop"
    consumer = make_consumer(kafka, [LOOP_IN], group, "test")
    out = make_producer(kafka, "test")
    key = f"{RUN}-loop".encode()
    stop = asyncio.Event()
    await consumer.start()
    await out.start()
    loop = asyncio.create_task(StreamLoop("route", consumer, out, handler).run(stop))
    try:
        records = await poison_between_two_good_records(kafka, producer, read, group, key)
    finally:
        stop.set()
        await asyncio.wait_for(loop, timeout=15)
        await consumer.stop()
        await out.stop()

    assert_only_the_culprit_was_dead_lettered([r for r in records if r.key == key])


async def test_a_record_a_faust_agent_fails_on_is_dead_lettered_and_the_stream_goes_on(
    kafka, producer, read, tmp_path
):
    """Poison that decodes but breaks a stage (a bug) must not stop the stream, nor crash-loop
    the service: the culprit is dead-lettered with the error, the records after it are handled,
    and the group's offset moves past it."""
    await ensure_topics(kafka, [LOOP_IN, LOOP_OUT], 1, 1)

    def handler(message: Any) -> list[Output]:
        if message.value == b"boom":
            raise ZeroDivisionError("the stage's bug")
        return [Output(LOOP_OUT, message.value, message.key)]

    group = f"{RUN}-agent"
    app = stream_app(
        group, kafka, state_dir=tmp_path, member=group, url="http://127.0.0.1:9", partitions=1
    )
    app.agent(raw_topic(app, LOOP_IN), name="loop")(AckAfterPublish(app, "route", handler).agent)
    worker = asyncio.create_task(app.start())
    key = f"{RUN}-agent".encode()
    try:
        await until_worker_ready(app, timeout_s=120)
        records = await poison_between_two_good_records(kafka, producer, read, group, key)
    finally:
        await app.stop()
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)

    assert_only_the_culprit_was_dead_lettered([r for r in records if r.key == key])


async def test_a_faust_agent_whose_disk_fails_stops_and_reads_the_record_again(
    kafka, producer, read, tmp_path
):
    """A disk that fails under the handler (the table's store) is not the record's fault: the
    app crashes (the service stops, and its orchestrator restarts it) without dead-lettering
    or committing the record, and the next process reads it again and handles it."""
    await ensure_topics(kafka, [LOOP_IN, LOOP_OUT], 1, 1)
    group, key = f"{RUN}-disk", f"{RUN}-disk".encode()
    failing, handled = {"disk": True}, []

    def handler(message: Any) -> list[Output]:
        if failing["disk"] and message.value == b"written":
            raise OSError(28, "No space left on device")
        handled.append(message.value)
        return [Output(LOOP_OUT, message.value, message.key)]

    async def a_run(until: Callable[[Any], bool]) -> None:
        app = stream_app(
            group, kafka, state_dir=tmp_path, member=group, url="http://127.0.0.1:9", partitions=1
        )
        app.agent(raw_topic(app, LOOP_IN), name="loop")(
            AckAfterPublish(app, "route", handler).agent
        )
        worker = asyncio.create_task(app.start())
        try:
            await until_worker_ready(app, timeout_s=120)
            if failing["disk"]:
                await producer.send_and_wait(LOOP_IN, b"written", key, 0)
            await wait_for(lambda: until(app), timeout_s=60)
        finally:
            await app.stop()
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)

    await a_run(lambda app: app.crashed)
    failing["disk"] = False  # the disk has room again: the restarted process handles it
    await a_run(lambda app: b"written" in handled)
    records = await read([LOOP_OUT, topics.DEADLETTER], lambda rs: any(r.key == key for r in rs))
    await asyncio.sleep(1.0)  # a dead letter, or a second copy, would be out by now
    records = await read([LOOP_OUT, topics.DEADLETTER], lambda rs: False, timeout_s=1.0)

    assert [(r.topic, r.value) for r in records if r.key == key] == [(LOOP_OUT, b"written")]


async def test_an_unreadable_table_value_is_ignored_not_fatal(
    kafka, producer, read, running, tmp_path
):
    """A table's changelog is written by its service only; a value it cannot read (a bug, a
    hand-made record) must fail neither the tweets of its conversation nor the sweep that reads
    every value: it counts as absent, and the next change overwrites it."""
    conversation = f"{RUN}-changelog"
    unreadable = b"\x00 not json"
    await producer.send_and_wait(topics.ROUTE_CONVERSATIONS, unreadable, conversation.encode())
    config = yaml.safe_load(CONFIG_FILE.read_text())
    config["route"]["sla"]["check_interval_s"] = 0.2
    path = tmp_path / "switchboard.yaml"
    path.write_text(yaml.safe_dump(config))
    service = RouteService(RouteSettings.load(config_file=path, kafka=kafka))
    tweet = a_classified_tweet("legal", 0.9, "high", id=f"{RUN}-c1", conversation_id=conversation)

    async with running(service):
        await producer.send_and_wait(topics.CLASSIFIED, encode(tweet), conversation.encode())
        legal = topics.department_topic("legal")
        records = await read([legal], lambda rs: any(keyed(conversation)(r) for r in rs))
        await asyncio.sleep(1.0)  # sweeps that read the table whole, the unreadable value too
        state = service._state(conversation)  # noqa: SLF001
        kept = await read(
            [topics.ROUTE_CONVERSATIONS],
            lambda rs: any(keyed(conversation)(r) and r.value != unreadable for r in rs),
        )

    [routed] = [decode(RoutedTweet, r.value) for r in records if keyed(conversation)(r)]
    assert routed.tweet.id == tweet.tweet.id and routed.route.owner != "conversation"
    # the tweet's change overwrote the unreadable value, in the table and in its changelog
    assert state is not None and tweet.tweet.id in state.recent
    *_, last = [r.value for r in kept if keyed(conversation)(r)]
    assert tweet.tweet.id in decode(ConversationState, last).recent


async def test_an_unreadable_checkpoint_is_skipped_on_restore(kafka, producer):
    """ingest reads its checkpoints topic whole at start: a record it cannot read must not stop
    it from starting (it is skipped and logged; dead-lettering it would repeat at every start)."""
    source = f"{RUN}-source"
    for value in [b"\x00 not json", encode(IngestCheckpoint(source=source, since_id="42"))]:
        await producer.send_and_wait(topics.INGEST_CHECKPOINTS, value, source.encode())
    checkpoints = Checkpoints(kafka, producer)

    await checkpoints.restore()

    assert checkpoints.get(source) == "42"
