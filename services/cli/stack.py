"""The whole pipeline on one machine: broker, loopback inbox, four service processes, an observer.

``switchboard run`` and ``switchboard demo`` use it. Each service is its own OS process started
through the ``switchboard`` CLI, exactly as it would run in production; the broker is started
only when ``KAFKA_BOOTSTRAP_SERVERS`` is unset, the loopback inbox only when ``SMTP_HOST`` is.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError
from prometheus_client.parser import text_string_to_metric_families

from switchboard.cli.config import PipelineSettings
from switchboard.cli.inbox import LoopbackInbox
from switchboard.cli.tally import Tally
from switchboard.notify.settings import SmtpSettings
from switchboard.shared import topics
from switchboard.shared.broker import EmbeddedBroker, free_port
from switchboard.shared.events import (
    DeadLetter,
    DecodeError,
    Delivery,
    RoutedTweet,
    decode,
    decode_alert,
)
from switchboard.shared.kafka import Consumer, client_options, ensure_topics
from switchboard.shared.processes import kill, spawn, terminate
from switchboard.shared.settings import ConfigError, KafkaSettings

log = logging.getLogger(__name__)

# Started in this order; ingest last, so that no tweet waits for the model to load.
SERVICES = ("classify", "route", "notify", "ingest")
STATEFUL = ("route", "notify")  # faust apps, with tables on local disk
OBSERVED = (
    *topics.PRIMARY_TOPICS,
    topics.ALERTS,
    topics.DEADLETTER,
    topics.DELIVERIES,
    topics.NOTIFICATIONS_DLQ,
)
PORT_RESPAWNS = 3  # a service whose HTTP port another process took first starts on another
OUT_OF_RANGE_S = 30.0  # how long the observer asks again for an offset the broker says is gone


def stop_on_sigterm() -> None:
    """Make SIGTERM stop a command that runs the stack as Ctrl-C does: asyncio cancels the
    command's task, whose cleanup stops every process it started, ingest first and the broker
    last. SIGTERM's default would end this process at once: its children, told by the kernel
    that their parent died, would then stop all together, and those still flushing to a broker
    already gone are left running."""
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))


@dataclass
class StackOptions:
    workdir: Path
    config_file: Path
    replay_file: Path | None  # None: ingest is not started with the rest (see ``replay``)
    rate_per_s: float | None = None
    limit: int | None = None
    ready_timeout_s: float = 120.0


@dataclass
class Stack:
    options: StackOptions
    tally: Tally = field(default_factory=Tally)
    broker: EmbeddedBroker | None = None
    inbox: LoopbackInbox | None = None
    kafka: KafkaSettings = field(default_factory=KafkaSettings.load)
    processes: dict[str, Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    observer: AIOKafkaConsumer | None = None
    _observing: asyncio.Task[None] | None = None

    @property
    def logs(self) -> Path:
        return self.options.workdir / "logs"

    @property
    def temporary(self) -> Path:
        return self.options.workdir / "tmp"

    async def start(self, progress: Callable[[str], None] = lambda _: None) -> None:
        for folder in (self.logs, self.temporary):
            folder.mkdir(parents=True, exist_ok=True)
        settings = PipelineSettings.load(config_file=self.options.config_file)
        self.tally.subscriptions = list(settings.config.notify.subscriptions)
        if not self.kafka.bootstrap_servers:
            progress("starting the embedded Kafka broker")
            self.broker = EmbeddedBroker(
                self.options.workdir / "broker", log_file=self.logs / "broker.log"
            )
            await self.broker.start()
            self.kafka = self.broker.settings()
        await ensure_topics(
            self.kafka,
            topics.ALL,
            settings.config.topics.partitions,
            settings.config.topics.replication_factor,
        )
        if not SmtpSettings.load().model_fields_set & {"host", "port"}:
            self.inbox = LoopbackInbox(self.options.workdir / "inbox")
            self.inbox.start()
            progress(f"loopback SMTP inbox on 127.0.0.1:{self.inbox.port}")
        await self._start_observer()
        for service in SERVICES:
            if service == "ingest" and self.options.replay_file is None:
                continue
            progress(f"starting {service}")
            self._spawn(service)
            await self._wait_ready(service)
        self._write_manifest()

    async def replay(self, replay_file: Path, rate_per_s: float) -> None:
        """(Re)start ingest on ``replay_file`` at ``rate_per_s``; the rest keeps running."""
        if "ingest" in self.processes:
            await asyncio.to_thread(terminate, self.processes.pop("ingest"))
        self.options.replay_file, self.options.rate_per_s = replay_file, rate_per_s
        self.options.limit = None
        self._spawn("ingest")
        await self._wait_ready("ingest")
        self._write_manifest()

    def _write_manifest(self) -> None:
        """``<workdir>/stack.json``: where everything runs, for operators and tests."""
        manifest = {
            "kafka_bootstrap_servers": self.kafka.bootstrap_servers,
            "smtp": f"127.0.0.1:{self.inbox.port}" if self.inbox else None,
            "inbox": str(self.inbox.path) if self.inbox else None,
            "services": {
                name: {"pid": process.pid, "http": f"http://127.0.0.1:{self.ports[name]}"}
                for name, process in self.processes.items()
            },
        }
        (self.options.workdir / "stack.json").write_text(json.dumps(manifest, indent=2))

    def _environment(self, service: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=self.kafka.require_bootstrap(),
            SWITCHBOARD_CONFIG_FILE=str(self.options.config_file),
            SWITCHBOARD_HTTP_PORT=str(self.ports[service]),
            PYTHONUNBUFFERED="1",
        )
        if self.broker is not None:
            # Static membership, one stable name per service: a service restarted after a crash
            # takes its partitions back at once. The embedded broker never expires a member that
            # died without leaving (measured), which would stall the group for good.
            env["KAFKA_GROUP_INSTANCE_ID"] = f"switchboard-{service}"
        if self.inbox is not None:
            env.update(SMTP_HOST="127.0.0.1", SMTP_PORT=str(self.inbox.port))
        if service in STATEFUL:
            # Their tables' temporary stores: a service killed with SIGKILL cannot remove its
            # own, which then stays in the run's folder rather than in /tmp.
            env["TMPDIR"] = str(self.temporary)
        if service == "ingest" and self.options.replay_file is not None:
            env["SWITCHBOARD_REPLAY_FILE"] = str(self.options.replay_file)
            if self.options.rate_per_s:
                env["SWITCHBOARD_REPLAY_RATE_PER_S"] = str(self.options.rate_per_s)
            if self.options.limit is not None:
                env["SWITCHBOARD_REPLAY_LIMIT"] = str(self.options.limit)
        return env

    def _spawn(self, service: str) -> None:
        self.ports[service] = free_port()
        self.processes[service] = spawn(
            [sys.executable, "-m", "switchboard", service],
            env=self._environment(service),
            log_file=self.logs / f"{service}.log",
        )

    async def _wait_ready(self, service: str) -> None:
        url = f"http://127.0.0.1:{self.ports[service]}/readyz"
        deadline = time.monotonic() + self.options.ready_timeout_s
        respawns = 0
        async with httpx.AsyncClient(timeout=1.0) as client:
            while time.monotonic() < deadline:
                process = self.processes[service]
                if process.poll() is not None:
                    if self._port_taken(service) and respawns < PORT_RESPAWNS:
                        # Another process bound the chosen port first: choose another.
                        respawns += 1
                        log.warning("%s: port %s taken; another", service, self.ports[service])
                        self._spawn(service)
                        url = f"http://127.0.0.1:{self.ports[service]}/readyz"
                        continue
                    raise RuntimeError(
                        f"{service} exited with {process.returncode}:\n{self.log_tail(service)}"
                    )
                try:
                    if (await client.get(url)).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
        raise TimeoutError(f"{service} not ready after {self.options.ready_timeout_s}s")

    def _port_taken(self, service: str) -> bool:
        # uvicorn's words for a bind that failed: "... on address ('<host>', <port>): address
        # already in use"
        taken = f", {self.ports[service]}): address already in use"
        return taken in self.log_tail(service, lines=50)

    def log_tail(self, service: str, lines: int = 20, leave_out: str | None = None) -> str:
        """The last ``lines`` of ``service``'s log, without those containing ``leave_out``."""
        path = self.logs / f"{service}.log"
        if not path.exists():
            return "(no log)"
        kept = path.read_text(errors="replace").splitlines()
        if leave_out is not None:
            kept = [line for line in kept if leave_out not in line]
        return "\n".join(kept[-lines:])

    async def _start_observer(self) -> None:
        # "none": an offset out of range is raised, not answered by a jump (see _observe)
        consumer = Consumer(
            client_id="switchboard-observer",
            idle_pause_ms=self.kafka.fetch_idle_pause_ms,
            auto_offset_reset="none",
            **client_options(self.kafka),
        )
        await consumer.start()
        await consumer.topics()  # loads the cluster metadata
        partitions = [
            TopicPartition(topic, p)
            for topic in OBSERVED
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(partitions)
        # Count only what this run produces: start at the current end of every topic.
        await consumer.seek_to_end(*partitions)
        for partition in partitions:
            await consumer.position(partition)
        self.observer = consumer
        self._observing = asyncio.create_task(self._observe(consumer), name="observer")

    async def _observe(self, consumer: AIOKafkaConsumer) -> None:
        """Record every output from where the observer started. A broker that has just
        restarted may answer a fetch "offset out of range" until it has loaded its logs; a jump
        to the end would skip what was published meanwhile (and count it lost), so the fetch is
        asked again at the same offset, and only after ``OUT_OF_RANGE_S`` does the observer
        accept that the records are gone and move to the end."""
        out_of_range_since: dict[TopicPartition, float] = {}
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=200)
            except OffsetOutOfRangeError as error:
                await self._out_of_range(consumer, error.args[0], out_of_range_since)
                continue
            for partition, records in batches.items():
                out_of_range_since.pop(partition, None)
                for record in records:
                    self._record(record.topic, record.value)

    async def _out_of_range(
        self,
        consumer: AIOKafkaConsumer,
        offsets: dict[TopicPartition, int],
        since: dict[TopicPartition, float],
    ) -> None:
        now = time.monotonic()
        for partition, offset in offsets.items():
            if now - since.setdefault(partition, now) < OUT_OF_RANGE_S:
                consumer.seek(partition, offset)
                continue
            log.warning("%s: offset %d is gone; observing from the end", partition, offset)
            await consumer.seek_to_end(partition)
            since.pop(partition)
        await asyncio.sleep(0.2)

    def _record(self, topic: str, value: bytes | None) -> None:
        try:
            if topic in topics.PRIMARY_TOPICS:
                self.tally.observe_routed(topic, decode(RoutedTweet, value))
            elif topic == topics.ALERTS:
                self.tally.observe_alert(decode_alert(value))
            elif topic == topics.DEADLETTER:
                self.tally.observe_dead_letter(decode(DeadLetter, value))
            else:
                self.tally.observe_delivery(decode(Delivery, value))
        except DecodeError as problem:
            log.warning("unreadable message on %s: %s", topic, problem)

    async def crash_and_restart(self, service: str) -> float:
        """kill -9 ``service`` (its whole process group), then start it again and wait until it
        is ready: the fault-injection step of the reliability tests. Returns when it was
        killed (``time.time()``)."""
        await asyncio.to_thread(kill, self.processes.pop(service))
        killed_at = time.time()
        self._spawn(service)
        await self._wait_ready(service)
        self._write_manifest()
        return killed_at

    def pids(self) -> dict[str, int]:
        """The running processes of the stack by name, the embedded broker included."""
        found = {name: p.pid for name, p in self.processes.items() if p.poll() is None}
        if self.broker is not None and self.broker.process is not None:
            found["broker"] = self.broker.process.pid
        return found

    def alive(self) -> dict[str, bool]:
        return {name: process.poll() is None for name, process in self.processes.items()}

    async def stop(self) -> None:
        for service in reversed(list(self.processes)):
            await asyncio.to_thread(terminate, self.processes[service])
        if self._observing is not None:
            self._observing.cancel()
            await asyncio.gather(self._observing, return_exceptions=True)
        if self.observer is not None:
            await self.observer.stop()
        if self.inbox is not None:
            self.inbox.stop()
        if self.broker is not None:
            await asyncio.to_thread(self.broker.stop)


async def scrape(client: httpx.AsyncClient, port: int, name: str, **labels: str) -> float | None:
    """The sum of metric ``name``'s samples (those with ``labels``) on a service's /metrics;
    None while the service does not answer."""
    try:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    except httpx.HTTPError:
        return None
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def sample_ids(path: Path, limit: int | None) -> set[str]:
    """The tweet ids of the first ``limit`` non-blank lines of a replay file."""
    ids: list[str] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                if limit is not None and len(ids) >= limit:
                    break
                try:
                    ids.append(str(json.loads(line)["data"]["id"]))
                except (ValueError, KeyError, TypeError) as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                    raise ConfigError(
                        f"{path}:{number}: not an X API v2 tweet with data.id ({problem})"
                    ) from None
    return set(ids)
