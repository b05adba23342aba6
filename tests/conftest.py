"""Fixtures shared by every test layer.

- ``kafka``: a real Kafka-protocol broker of the test's own: the embedded one, started on a
  free loopback port in a temporary folder, or the cluster in KAFKA_BOOTSTRAP_SERVERS.
- ``own_kafka``: an embedded broker of the test's own whatever the environment names, for tests
  that stop the broker or leave members in its groups.
- ``inbox``: a real SMTP server on loopback that keeps what it receives.
- ``service_environment``: what a service process needs in its environment to use a broker.

On a cluster named by KAFKA_BOOTSTRAP_SERVERS, tests share topics, and test_poison.py leaves
poison on the services' input topics on purpose: read events with ``readable``/``published``,
which skip what does not decode.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner

from switchboard.classify.data import content_sha256
from switchboard.cli.config import PipelineSettings, SwitchboardConfig
from switchboard.cli.inbox import LoopbackInbox
from switchboard.shared import topics
from switchboard.shared.broker import EmbeddedBroker
from switchboard.shared.events import DecodeError, E, decode
from switchboard.shared.kafka import client_options, ensure_topics
from switchboard.shared.settings import KafkaSettings

ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILE = ROOT / "config" / "switchboard.yaml"
SAMPLES = ROOT / "data" / "samples" / "tweets.jsonl"
LABELED = ROOT / "data" / "labeled"
REAL = LABELED / "real"
SWITCHBOARD = [sys.executable, "-m", "switchboard"]  # the CLI, as a process of its own
# Torch threads of a model a test worker loads or trains: one when `make test` runs several
# workers on the machine's cores. Torch's threads spin while they wait: two workers of two
# threads each embedded tweets on the backbone at 44 a second each, of one thread each at 72.
# 0: every core (a serial run, TEST_WORKERS=0).
MODEL_THREADS = 1 if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1 else 0
# The model's processes a test starts (classify, training, the bench) keep one thread per core:
# OpenMP's threads then sleep while they wait instead of spinning, or three test workers on two
# cores spend the CPU the others need on waiting (the bench's test took 70 s against 27 s).
# Read when torch loads, which no module imported above does.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def data_versions(path: Path, folder: Path) -> dict[str, Path]:
    """Every version of a labeled split that main's history holds, by ``content_sha256``,
    written into ``folder``: an artifact names the data it was fitted on by that hash, and the
    data may have grown since (a round of labels appended) without the artifact changing."""
    relative = path.relative_to(ROOT).as_posix()
    log = ["git", "log", "--format=%H", "--", relative]
    commits = subprocess.run(log, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    versions = {content_sha256(path): path}
    for commit in commits.split():
        version = folder / f"{path.parent.name}-{path.stem}-{commit}.jsonl"
        show = ["git", "show", f"{commit}:{relative}"]
        version.write_bytes(subprocess.run(show, cwd=ROOT, capture_output=True, check=True).stdout)
        versions.setdefault(content_sha256(version), version)
    return versions


def jsonl_rows(path: Path) -> list[dict]:
    """The records of a JSON Lines file. Lines end at "\\n" only: tweets may hold U+0085 or
    U+2028, which ``str.splitlines`` would take for line ends."""
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.split("\n") if line.strip()]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test is marked by its folder (``-m "not e2e"`` and the like select by it)."""
    for item in items:
        folder = item.path.relative_to(ROOT / "tests").parts[0]
        if folder in ("integration", "e2e"):
            item.add_marker(getattr(pytest.mark, folder))


def pytest_collection_finish(session: pytest.Session) -> None:
    """What every test module imported (torch, transformers, faust) is set aside from the
    collector. faust's table stores run a full collection at each partition revoked and at
    each stop, and in a process holding those modules each took a quarter of a second."""
    keep_out_of_collections()


def keep_out_of_collections() -> None:
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session")
def config() -> SwitchboardConfig:
    return PipelineSettings.load(config_file=CONFIG_FILE).config


@pytest.fixture(scope="session")
def classifier():  # noqa: ANN201 - the import is deferred: unit tests never load torch
    """The shipped model, loaded once per session."""
    from switchboard.classify.model import TweetClassifier

    model = TweetClassifier.load(threads=MODEL_THREADS)
    keep_out_of_collections()  # the model's objects live as long as the session
    return model


@pytest.fixture
async def kafka(tmp_path: Path, config: SwitchboardConfig) -> AsyncIterator[KafkaSettings]:
    """The cluster in KAFKA_BOOTSTRAP_SERVERS, or else an embedded broker of the test's own (it
    starts in a tenth of a second). The services' consumer groups are fixed names: on a broker
    shared between tests, each would start from the offsets other tests left and process their
    tweets too, which is work no test asked for and a source of stray deliveries."""
    external = KafkaSettings()
    if external.bootstrap_servers:
        await ensure_topics(external, topics.ALL, config.topics.partitions, 1)
        yield external
        return
    async with embedded_broker(tmp_path, config) as settings:
        yield settings


@pytest.fixture
async def own_kafka(tmp_path: Path, config: SwitchboardConfig) -> AsyncIterator[KafkaSettings]:
    """An embedded broker of the test's own even when KAFKA_BOOTSTRAP_SERVERS names a cluster:
    for tests that stop or freeze it, or leave static members in its groups."""
    async with embedded_broker(tmp_path, config) as settings:
        yield settings


@contextlib.asynccontextmanager
async def embedded_broker(tmp_path: Path, config: SwitchboardConfig
                          ) -> AsyncIterator[KafkaSettings]:  # fmt: skip
    """A broker in ``tmp_path``, its topics created and empty."""
    # a folder of its own: a test may hold both fixtures, or start a broker of its own beside
    broker = EmbeddedBroker(Path(tempfile.mkdtemp(prefix="broker-", dir=tmp_path)))
    try:
        await broker.start()  # inside: a start that timed out stops the process too
        settings = broker.settings()
        await ensure_topics(settings, topics.ALL, config.topics.partitions, 1)
        yield settings
    finally:
        await asyncio.to_thread(broker.stop)


@pytest.fixture
def inbox(tmp_path: Path) -> Iterator[LoopbackInbox]:
    server = LoopbackInbox(tmp_path / "inbox")
    server.start()
    yield server
    server.stop()


def clean_environment() -> dict[str, str]:
    """This process's environment without its own ``KAFKA_``, ``SMTP_`` and ``SWITCHBOARD_``
    variables: a subprocess a test starts gets only what the test gives it (a developer's
    SWITCHBOARD_ONNX_DIR or KAFKA_BOOTSTRAP_SERVERS would otherwise leak into it)."""
    return {
        k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "SMTP_", "SWITCHBOARD_"))
    }


def service_environment(kafka: KafkaSettings, **extra: str) -> dict[str, str]:
    """Environment for a service or CLI subprocess: ``kafka``'s broker, the repo config, and
    nothing else of this process's settings (``clean_environment``)."""
    env = clean_environment()
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=kafka.require_bootstrap(), SWITCHBOARD_CONFIG_FILE=str(CONFIG_FILE)
    )
    env.update(extra)  # may name another config file
    return env


async def started_producer(kafka: KafkaSettings) -> AsyncIterator[AIOKafkaProducer]:
    client = AIOKafkaProducer(**client_options(kafka))
    await client.start()
    yield client
    await client.stop()


@pytest.fixture
async def producer(kafka: KafkaSettings) -> AsyncIterator[AIOKafkaProducer]:
    async for client in started_producer(kafka):
        yield client


@pytest.fixture
async def own_producer(own_kafka: KafkaSettings) -> AsyncIterator[AIOKafkaProducer]:
    """A producer on the test's own broker (``own_kafka``)."""
    async for client in started_producer(own_kafka):
        yield client


async def read_topics(
    kafka: KafkaSettings,
    watched: list[str],
    until: Callable[[list], bool],
    timeout_s: float = 60.0,
) -> list:
    """Every record on ``watched`` from the beginning, read until ``until(records)``, or else
    until ``timeout_s`` has passed and every record that was there when the read began has
    been read: a shared cluster's topics hold what earlier tests wrote, and on a loaded machine
    a read that stopped at its timeout returned part of it (``lambda rs: False`` reads
    "everything there now")."""
    consumer = AIOKafkaConsumer(*watched, auto_offset_reset="earliest", **client_options(kafka))
    await consumer.start()
    records: list = []
    deadline = time.monotonic() + timeout_s
    ends: dict | None = None  # the end offsets when the partitions were first assigned
    try:
        while not until(records) and time.monotonic() < deadline + READ_BEHIND_S:
            if ends is None and consumer.assignment():
                ends = await consumer.end_offsets(list(consumer.assignment()))
            if time.monotonic() >= deadline and await _caught_up(consumer, ends):
                break
            batches = await consumer.getmany(timeout_ms=200)
            for part in batches.values():
                records.extend(part)
    finally:
        await consumer.stop()
    return records


READ_BEHIND_S = 120.0  # how long past its timeout a read may take to read what was there


async def _caught_up(consumer: AIOKafkaConsumer, ends: dict | None) -> bool:
    if ends is None:
        return True  # nothing assigned: nothing was there
    return all([await consumer.position(tp) >= end for tp, end in ends.items()])


def readable(
    records: list[ConsumerRecord], event_type: type[E]
) -> Iterator[tuple[ConsumerRecord, E]]:
    """Each record that holds an ``event_type``, with the event. Tests may share a cluster
    (KAFKA_BOOTSTRAP_SERVERS), and test_poison.py leaves poison on the services' input topics."""
    for record in records:
        with contextlib.suppress(DecodeError):
            yield record, decode(event_type, record.value)


def published(records: list[ConsumerRecord], topic: str, event_type: type[E]) -> list[E]:
    """The events of ``event_type`` on ``topic``."""
    return [event for record, event in readable(records, event_type) if record.topic == topic]


def key_of(record: ConsumerRecord) -> str:
    """The record's key as text (keys are bytes, and not always UTF-8)."""
    return (record.key or b"").decode("utf-8", errors="replace")


def keys_on_every_partition(partitions: int, each: int, candidates: Iterator[str]) -> list[str]:
    """From ``candidates``, ``each`` keys for every one of ``partitions`` partitions, as the
    producers' default partitioner places them: a test of replicas that draws random keys
    leaves one replica with none now and then."""
    place, chosen = DefaultPartitioner(), {p: [] for p in range(partitions)}
    while any(len(keys) < each for keys in chosen.values()):
        key = next(candidates)
        keys = chosen[place(key.encode(), list(range(partitions)), None)]
        if len(keys) < each:
            keys.append(key)
    return [key for keys in chosen.values() for key in keys]


async def wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.1)


async def wait_for_commit(
    kafka: KafkaSettings,
    group: str,
    topic: str,
    past: int,
    partition: int | None = None,
    timeout_s: float = 60.0,
) -> None:
    """Until ``group`` committed ``topic`` at offset ``past`` or beyond: on ``partition``, or
    its committed offsets summed over the topic's partitions."""
    admin = AIOKafkaAdminClient(**client_options(kafka))
    await admin.start()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            committed = await admin.list_consumer_group_offsets(group)
            done = sum(
                meta.offset
                for tp, meta in committed.items()
                if tp.topic == topic and partition in (None, tp.partition)
            )
            if done >= past:
                return
            if time.monotonic() > deadline:
                where = topic if partition is None else f"{topic}[{partition}]"
                raise TimeoutError(f"{group} committed {done} of {past} offsets on {where}")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


@pytest.fixture
def read(kafka: KafkaSettings) -> Callable[..., object]:
    """``await read(topics, until, timeout_s)``: see read_topics."""

    def reader(watched: list[str], until: Callable[[list], bool], timeout_s: float = 60.0):
        return read_topics(kafka, watched, until, timeout_s)

    return reader


@pytest.fixture
def running() -> Callable[..., object]:
    """``async with running(service):`` starts a service in this process and stops it after."""

    @contextlib.asynccontextmanager
    async def run(service) -> AsyncIterator[None]:
        stop = asyncio.Event()
        await service.start()
        task = asyncio.create_task(service.run(stop))
        try:
            yield
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=15)
            await service.close()

    return run


X_APP_TOKEN = "test-app-bearer-token"
X_USER_TOKEN = "test-user-access-token"


@pytest.fixture
async def x_api() -> AsyncIterator[object]:
    """A stand-in X API v2 on 127.0.0.1 (tests/standins/x_api.py) accepting the test tokens."""
    from tests.standins.x_api import XApiStandIn

    server = XApiStandIn(
        bearer_tokens={X_APP_TOKEN, X_USER_TOKEN},
        keepalive_s=0.2,
        user_tokens={X_USER_TOKEN},
        strict_fields=True,
    )
    await server.start()
    yield server
    await server.stop()


def deploy_metric_names() -> set[str]:
    """Every switchboard_* series the dashboards and alert rules query, without the
    histogram suffixes."""
    deploy = ROOT / "deploy"
    texts = [p.read_text() for p in (deploy / "grafana" / "dashboards").glob("*.json")]
    texts.append((deploy / "prometheus" / "alerts.yml").read_text())
    names = set(re.findall(r"\bswitchboard_[a-z0-9_]+", "\n".join(texts)))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


VENDOR_SECRETS = {
    "ZENDESK_TOKEN": "zd-token",
    "JIRA_TOKEN": "jira-token",
    "SF_TOKEN": "sf-token",
    "SF_CLIENT_ID": "3MVG9sf-consumer-key",
    "SF_CLIENT_SECRET": "sf-consumer-secret",
    "HUBSPOT_TOKEN": "hs-token",
    "HOOK_SECRET": "hook-secret",
}


@pytest.fixture
async def vendors(monkeypatch) -> AsyncIterator[dict]:
    """Zendesk, Jira, Salesforce and HubSpot stand-ins and a webhook receiver on loopback, each
    expecting its token from VENDOR_SECRETS, which are set in the environment."""
    from tests.standins.vendors import (
        HubSpotStandIn,
        JiraStandIn,
        SalesforceStandIn,
        ZendeskStandIn,
    )
    from tests.standins.webhook import WebhookReceiver

    for name, value in VENDOR_SECRETS.items():
        monkeypatch.setenv(name, value)
    servers = {
        "zendesk": ZendeskStandIn("ops@acme.example", VENDOR_SECRETS["ZENDESK_TOKEN"]),
        "jira": JiraStandIn("ops@acme.example", VENDOR_SECRETS["JIRA_TOKEN"]),
        "salesforce": SalesforceStandIn(
            VENDOR_SECRETS["SF_TOKEN"],
            client=(VENDOR_SECRETS["SF_CLIENT_ID"], VENDOR_SECRETS["SF_CLIENT_SECRET"]),
        ),
        "hubspot": HubSpotStandIn(VENDOR_SECRETS["HUBSPOT_TOKEN"]),
        "webhook": WebhookReceiver(VENDOR_SECRETS["HOOK_SECRET"]),
    }
    for server in servers.values():
        await server.start()
    yield servers
    for server in servers.values():
        await server.stop()
    # Every request notify made kept the vendor's own API definition (tests/standins/contracts).
    broken = {name: s.contract.violations for name, s in servers.items()
              if getattr(s, "contract", None) and s.contract.violations}  # fmt: skip
    assert not broken, broken


def rejected(service: str) -> float | None:
    """``switchboard_config_rejected`` of ``service`` in this process."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("switchboard_config_rejected", {"service": service})
