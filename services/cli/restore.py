"""``switchboard bench-restore``: how long a route replica takes to become ready when its
conversations table must be restored from the changelog, and the memory it then holds.

A replica that starts (a new pod, a restart after a crash, a rebalance that gives it
partitions) is not ready until faust has read the changelog of the partitions it owns into
its local stores. This writes ``--conversations`` unanswered conversations (one awaited tweet
and its decision each, what route keeps for them) to ``switchboard.route.conversations`` on an
embedded broker of its own, starts route, and times it to ``/readyz``; the baseline is the
same start on an empty changelog, measured in the same run.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import httpx
import yaml
from aiokafka import AIOKafkaProducer

from switchboard.cli.config import PipelineSettings
from switchboard.cli.stack import scrape
from switchboard.shared import topics
from switchboard.shared.broker import EmbeddedBroker, free_port
from switchboard.shared.events import (
    Author,
    AwaitingReply,
    Classification,
    ConversationState,
    RecentTweet,
    RouteDecision,
    Tweet,
    encode,
)
from switchboard.shared.kafka import client_options, ensure_topics
from switchboard.shared.labels import Department, Urgency
from switchboard.shared.processes import spawn, terminate
from switchboard.shared.settings import KafkaSettings


def a_conversation(number: int, now: datetime) -> ConversationState:
    """An unanswered conversation as route keeps it: the awaited tweet, its labels, its route."""
    conversation_id = f"{9_000_000_000_000_000_000 + number}"
    tweet = Tweet(
        id=conversation_id, conversation_id=conversation_id, source="replay",
        text=f"@SkylarkDeals my order {number} never arrived and nobody answers the phone",
        url=f"https://x.com/u{number}/status/{conversation_id}", created_at=now,
        author=Author(id=str(number), username=f"u{number}"), addressed_handles=["@SkylarkDeals"],
    )  # fmt: skip
    department, urgency = Department.CUSTOMER_SERVICE, Urgency.HIGH
    classification = Classification(
        department=department, urgency=urgency, confidence=0.9, urgency_confidence=0.8,
        department_scores={d: 0.9 if d is department else 0.1 / 7 for d in Department},
        urgency_scores={u: 0.25 for u in Urgency}, model_version="minilm-real-v5",
    )  # fmt: skip
    decision = RouteDecision(
        destination="department", department=department,
        topic=topics.department_topic(department), reasons=["model: customer_service 0.90"],
        escalated=False, confidence_threshold=0.45, rules_version="bench",
    )  # fmt: skip
    awaiting = AwaitingReply(
        tweet_id=tweet.id, handle="@SkylarkDeals", department=department, urgency=urgency,
        received_at=now, due_at=now + timedelta(hours=4), tweet=tweet,
        classification=classification,
    )  # fmt: skip
    recent = RecentTweet(tweet=tweet, department=department, urgency=urgency,
                         model_version=classification.model_version, ingested_at=now,
                         classification=classification)  # fmt: skip
    return ConversationState(
        conversation_id=conversation_id, department=department, max_urgency=urgency, tweets=1,
        updated_at=now, awaiting=awaiting, routed={tweet.id: decision},
        recent={tweet.id: recent},
    )  # fmt: skip


async def write_conversations(kafka: KafkaSettings, count: int) -> int:
    """``count`` conversations on the changelog, keyed (and so partitioned) by conversation id
    as route writes them; returns the bytes written."""
    producer = AIOKafkaProducer(linger_ms=20, **client_options(kafka))
    await producer.start()
    now, written = datetime.now(UTC), 0
    try:
        for number in range(count):
            state = a_conversation(number, now)
            value = encode(state)
            written += len(value)
            await producer.send(topics.ROUTE_CONVERSATIONS, value,
                                key=state.conversation_id.encode())  # fmt: skip
        await producer.flush()
    finally:
        await producer.stop()
    return written


def bench_config(workdir: Path, source: Path) -> Path:
    """The configuration in use, with route's sweep every second: the sweep indexes the
    restored conversations and reports how many it holds (``switchboard_table_entries``)."""
    config = yaml.safe_load(source.read_text())
    config["route"]["sla"]["check_interval_s"] = 1
    path = workdir / "switchboard.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def held(client: httpx.AsyncClient, port: int, expected: int, within_s: float) -> int:
    """The conversations route's sweep indexed, once it reaches ``expected`` or time is up."""
    deadline, found = time.monotonic() + within_s, 0
    while time.monotonic() < deadline:
        # None: busy indexing what it restored, no answer within the client's timeout
        entries = await scrape(client, port, "switchboard_table_entries", service="route")
        found = found if entries is None else int(entries)
        if found >= expected:
            break
        await asyncio.sleep(0.5)
    return found


async def time_to_ready(
    kafka: KafkaSettings, config: Path, workdir: Path, name: str, expected: int
) -> dict[str, float]:
    """Start route, time it to /readyz, read its resident memory once ready, and check that it
    holds the ``expected`` conversations."""
    import psutil  # the dev extra: measuring tools stay out of the runtime install

    port = free_port()
    env = {
        **os.environ,
        "SWITCHBOARD_CONFIG_FILE": str(config),
        "KAFKA_BOOTSTRAP_SERVERS": kafka.require_bootstrap(),
        "SWITCHBOARD_HTTP_PORT": str(port),
        # One static member for both starts: the embedded broker never expires a member that
        # left, so a second name would wait for the first forever (a real Kafka: a session).
        "KAFKA_GROUP_INSTANCE_ID": "bench-restore",
        "SWITCHBOARD_STATE_DIR": str(workdir / f"state-{name}"),
    }
    started = time.monotonic()
    process = spawn([sys.executable, "-m", "switchboard", "route"], env=env,
                    log_file=workdir / f"route-{name}.log")  # fmt: skip
    try:
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                if process.poll() is not None:
                    log = (workdir / f"route-{name}.log").read_text(errors="replace")
                    tail = "\n".join(log.splitlines()[-15:])
                    raise click.ClickException(f"route exited:\n{tail}")
                try:
                    if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            ready_s = time.monotonic() - started
            rss_mb = psutil.Process(process.pid).memory_info().rss / 2**20
            holds = await held(client, port, expected, within_s=120)
            indexed_s = time.monotonic() - started
            rss_indexed_mb = psutil.Process(process.pid).memory_info().rss / 2**20
    finally:
        await asyncio.to_thread(terminate, process)
    return {
        "ready_s": round(ready_s, 2),
        "rss_mb": round(rss_mb, 1),
        "held": holds,
        "indexed_s": round(indexed_s, 2),
        "rss_indexed_mb": round(rss_indexed_mb, 1),
    }


async def measure(conversations: int, workdir: Path) -> dict[str, object]:
    broker = EmbeddedBroker(workdir / "broker", log_file=workdir / "broker.log")
    await broker.start()
    try:
        kafka = broker.settings()
        settings = PipelineSettings.load()  # the configuration in use, its partitions
        config = bench_config(workdir, settings.config_file)
        await ensure_topics(kafka, topics.ALL, settings.config.topics.partitions, 1)
        empty = await time_to_ready(kafka, config, workdir, "empty", 0)
        began = time.monotonic()
        written = await write_conversations(kafka, conversations)
        write_s = time.monotonic() - began
        full = await time_to_ready(kafka, config, workdir, "full", conversations)
        if full["held"] != conversations:
            raise click.ClickException(
                f"route restored {full['held']} of {conversations} conversations"
            )
    finally:
        await asyncio.to_thread(broker.stop)
    restore_s = full["ready_s"] - empty["ready_s"]
    noise = restore_s < 0.5  # a start's own variation: too few conversations to time
    return {
        "conversations": conversations,
        "changelog_mb": round(written / 2**20, 1),
        "write_s": round(write_s, 1),
        "empty_start": empty,
        "restored_start": full,
        "restore_s": round(restore_s, 2),
        "conversations_per_s": None if noise else round(conversations / restore_s),
        "ready_ratio": round(full["ready_s"] / empty["ready_s"], 1),
    }


@click.command("bench-restore")
@click.option("--conversations", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="Unanswered conversations on the changelog before route starts.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON report.")
def bench_restore(conversations: int, as_json: bool) -> None:
    """Time a route replica's start with its conversations to restore, against an empty start."""
    with tempfile.TemporaryDirectory(prefix="switchboard-restore-") as folder:
        report = asyncio.run(measure(conversations, Path(folder)))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    empty, full = report["empty_start"], report["restored_start"]
    click.echo(
        f"route ready with an empty changelog: {empty['ready_s']} s, RSS {empty['rss_mb']} MB\n"
        f"route ready restoring {conversations:,} conversations ({report['changelog_mb']} MB): "
        f"{full['ready_s']} s ({report['ready_ratio']}x), RSS {full['rss_mb']} MB\n"
        f"restore: {report['restore_s']} s, {report['conversations_per_s'] or '-'} conversations/s"
    )
