"""The embedded broker: it answers Kafka, creates topics with partitions, keeps them on restart."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from switchboard.notify.service import NotifyService
from switchboard.notify.settings import NotifySettings
from switchboard.route.service import RouteService
from switchboard.route.settings import RouteSettings
from switchboard.shared import topics
from switchboard.shared.broker import EmbeddedBroker
from switchboard.shared.kafka import (
    Consumer,
    client_options,
    ensure_topics,
    make_producer,
    read_to_end,
)
from switchboard.shared.settings import ConfigError, KafkaSettings
from tests.conftest import CONFIG_FILE


async def test_topics_are_created_with_the_configured_partitions(kafka, config):
    admin = AIOKafkaAdminClient(**client_options(kafka))
    await admin.start()
    try:
        described = await admin.describe_topics([topics.RAW, topics.department_topic("legal")])
    finally:
        await admin.close()
    assert [len(t["partitions"]) for t in described] == [config.topics.partitions] * 2
    assert await ensure_topics(kafka, topics.ALL, 3, 1) == []  # idempotent


async def test_topics_joined_by_key_with_another_partition_count_stop_the_service(kafka):
    """topics.partitions raised after the topics exist does not grow them (and Kafka never
    shrinks one): a stream processor would join a reply and its conversation on different
    replicas, so the start fails naming the key and the topics."""
    joined = [f"joined-{time.monotonic_ns()}-{n}" for n in range(2)]
    await ensure_topics(kafka, joined[:1], 2, 1)
    with pytest.raises(ConfigError) as caught:
        await ensure_topics(kafka, joined, 3, 1, co_partitioned=joined)
    assert str(caught.value).startswith("config key topics.partitions: 3, but ")
    assert f"{joined[0]} has 2" in str(caught.value)
    assert await ensure_topics(kafka, joined, 2, 1, co_partitioned=joined) == joined[1:]


def test_route_and_notify_check_every_topic_faust_joins_for_them(kafka):
    """The topics checked at start are read from the faust app (its agents' inputs and its
    tables' changelogs), so a stream or a table added later is checked too."""
    route = RouteService(RouteSettings.load(config_file=CONFIG_FILE, kafka=kafka))
    notify = NotifyService(NotifySettings.load(config_file=CONFIG_FILE, kafka=kafka))
    route_joined, notify_joined = route.streams.joined_topics(), notify.streams.joined_topics()

    assert {topics.CLASSIFIED, topics.BRAND, topics.ROUTE_CONVERSATIONS, topics.ROUTE_DUE,
            topics.ROUTE_SPIKES, topics.FEEDBACK_REQUESTS} <= set(route_joined)  # fmt: skip
    assert {"switchboard-route-spike-counts-changelog",
            "switchboard-route-early-replies-by-author-changelog"} <= set(route_joined)  # fmt: skip
    assert {topics.NOTIFICATIONS_REDRIVE, topics.NOTIFICATIONS_DUE, topics.NOTIFICATIONS_LEDGER,
            topics.NOTIFICATIONS_PARKED, topics.NOTIFICATIONS_DIGESTS,
            topics.NOTIFICATIONS_DIGEST_STATE} <= set(notify_joined)  # fmt: skip
    assert topics.department_topic("legal") in notify_joined
    assert topics.FEEDBACK not in route_joined  # what route only writes is not joined


async def test_topics_and_messages_survive_a_broker_restart(tmp_path: Path):
    broker = EmbeddedBroker(tmp_path / "data")
    await broker.start()
    try:
        await ensure_topics(broker.settings(), ["survivor"], 2, 1)
        producer = AIOKafkaProducer(**client_options(broker.settings()))
        await producer.start()
        for n in range(50):
            await producer.send_and_wait("survivor", f"m{n}".encode(), partition=n % 2)
        await producer.stop()
    finally:
        broker.stop()

    restarted = EmbeddedBroker(tmp_path / "data", port=broker.port)
    await restarted.start()
    try:
        consumer = AIOKafkaConsumer(
            auto_offset_reset="earliest", **client_options(restarted.settings())
        )
        await consumer.start()
        partitions = [TopicPartition("survivor", 0), TopicPartition("survivor", 1)]
        consumer.assign(partitions)
        assert await consumer.end_offsets(partitions) == {partitions[0]: 25, partitions[1]: 25}
        values = set()
        while len(values) < 50:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                values.update(r.value for r in records)
        await consumer.stop()
        assert values == {f"m{n}".encode() for n in range(50)}
    finally:
        restarted.stop()


async def test_every_acknowledged_write_survives_a_broker_stopped_under_load(tmp_path: Path):
    """Producers flood the broker with acks=all writes while it is stopped: after the restart
    it holds every write it acknowledged. (Stopped with a signal alone, it acknowledged 26 to 43
    writes per stop that it had not saved.)"""
    broker = EmbeddedBroker(tmp_path / "data")
    await broker.start()
    await ensure_topics(broker.settings(), ["flood"], 6, 1)
    producers = [AIOKafkaProducer(**client_options(broker.settings()), acks="all", linger_ms=2,
                                  request_timeout_ms=5000) for _ in range(4)]  # fmt: skip
    for producer in producers:
        await producer.start()
    acknowledged: set[bytes] = set()

    async def write(producer: AIOKafkaProducer, value: bytes) -> None:
        with contextlib.suppress(KafkaError):  # refused or cut off: not acknowledged, not counted
            await producer.send_and_wait("flood", value, key=value)
            acknowledged.add(value)

    stopped = asyncio.Event()

    async def flood(n: int, producer: AIOKafkaProducer) -> None:
        writes = []
        while not stopped.is_set():  # still writing when the stop comes, however slow
            writes.append(asyncio.create_task(write(producer, f"{n}-{len(writes)}".encode())))
            await asyncio.sleep(0.001)
        await asyncio.gather(*writes)

    async def stop_midway() -> None:
        # mid-stream by what the broker acknowledged, not by the clock: a loaded machine
        # writes far fewer in a given time
        deadline = time.monotonic() + 60
        while len(acknowledged) <= 1000 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        await asyncio.to_thread(broker.stop)
        stopped.set()

    try:
        await asyncio.gather(stop_midway(), *(flood(n, p) for n, p in enumerate(producers)))
    finally:
        for producer in producers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 10)
        broker.stop()
    assert len(acknowledged) > 1000  # the stop came in the middle of the stream

    restarted = EmbeddedBroker(tmp_path / "data", port=broker.port)
    await restarted.start()
    try:
        kept: set[bytes] = set()
        await read_to_end(restarted.settings(), ["flood"], lambda r: kept.add(r.value))
    finally:
        restarted.stop()
    assert acknowledged - kept == set()


async def test_a_restore_right_after_a_broker_restart_reads_everything(tmp_path: Path):
    """Right after it starts, the embedded broker may answer a fetch "offset out of range"; a
    reader that then jumped to the end (aiokafka's default) restored an empty table in 10 of
    15 restarts, so a service restarted with the broker forgot its conversations or ledger."""
    broker = EmbeddedBroker(tmp_path / "data")
    await broker.start()
    try:
        await ensure_topics(broker.settings(), ["changelog"], 6, 1)
        producer = AIOKafkaProducer(**client_options(broker.settings()), linger_ms=1)
        await producer.start()
        for start in range(0, 6000, 20):  # many small batches, as a busy service writes them
            await asyncio.gather(*(producer.send_and_wait("changelog", b"v", key=f"k{n}".encode())
                                   for n in range(start, start + 20)))  # fmt: skip
        await producer.stop()
    finally:
        broker.stop()
    counts = []
    for _ in range(5):
        restarted = EmbeddedBroker(tmp_path / "data", port=broker.port)
        await restarted.start()
        try:
            counts.append(await read_to_end(restarted.settings(), ["changelog"], lambda r: None))
        finally:
            restarted.stop()
    assert counts == [6000] * 5


async def test_an_idle_consumer_pauses_between_empty_fetches_and_still_gets_messages(kafka):
    """The embedded broker answers an empty fetch at once (no long polling); the consumer pauses
    instead of asking again right away, and a message sent meanwhile still arrives."""
    await ensure_topics(kafka, ["idle-a", "idle-b"], 3, 1)
    consumer = Consumer(
        "idle-a", "idle-b", group_id="idle-test", idle_pause_ms=20, **client_options(kafka)
    )
    await consumer.start()
    fetcher = consumer._fetcher  # noqa: SLF001 - counting the requests it sends
    fetch, fetches = fetcher._proc_fetch_request, []  # noqa: SLF001

    async def counted(*args):  # noqa: ANN002, ANN202
        fetches.append(args)
        return await fetch(*args)

    fetcher._proc_fetch_request = counted  # noqa: SLF001
    try:
        await consumer.getmany(timeout_ms=2000)  # idle for two seconds
        assert 0 < len(fetches) <= 2 * 1000 / 20  # without the pause: about 1,500 a second
        producer = AIOKafkaProducer(**client_options(kafka))
        await producer.start()
        await producer.send_and_wait("idle-b", b"wake up")
        await producer.stop()
        found = await consumer.getmany(timeout_ms=5000)
        assert [r.value for records in found.values() for r in records] == [b"wake up"]
    finally:
        await consumer.stop()


async def test_a_producer_waits_for_the_broker_as_long_as_its_delivery_timeout(tmp_path: Path):
    """A broker that answers nothing for 4 s: a producer whose delivery timeout is 10 s gets its
    message acknowledged once the broker answers; one whose timeout is 2 s gives up. aiokafka's
    own default (40 s) is shorter than a broker restart can take, and ingest exits when a send
    gives up: KAFKA_DELIVERY_TIMEOUT_MS (120 s by default) is what a service waits."""
    broker = EmbeddedBroker(tmp_path / "data")
    await broker.start()
    producers = []
    try:
        await ensure_topics(broker.settings(), ["patience"], 1, 1)
        for name, timeout_ms in (("patient", 10_000), ("hasty", 2_000)):
            settings = KafkaSettings(
                bootstrap_servers=broker.bootstrap_servers, delivery_timeout_ms=timeout_ms
            )
            producers.append(make_producer(settings, client_id=name))
            await producers[-1].start()
        patient, hasty = producers
        broker.freeze()
        try:
            kept = await patient.send("patience", b"kept")
            given_up = await hasty.send("patience", b"given up")
            await asyncio.sleep(4)
        finally:
            broker.freeze(False)
        assert (await asyncio.wait_for(kept, 15)).offset >= 0
        with pytest.raises(KafkaError):  # a timeout, or the last retry's connection error
            await asyncio.wait_for(given_up, 15)
        assert KafkaSettings().delivery_timeout_ms == 120_000
    finally:
        for producer in producers:
            await producer.stop()
        broker.stop()
