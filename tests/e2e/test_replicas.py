"""Two route replicas and two notify replicas, each pair in one group, one of each killed
mid-stream and restarted: state stays with the partition that owns it. Every tweet is routed one
way, a company reply reaches the owner of its conversation, each unanswered conversation raises
one SLA alert and no answered one does, every email is made once (a copy resent after the kill
carries the same Message-ID), and the replicas of each service together hold each conversation
once."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from subprocess import Popen

import httpx
import pytest
import yaml
from aiokafka import AIOKafkaProducer

from switchboard.cli.inbox import LoopbackInbox
from switchboard.shared import topics
from switchboard.shared.broker import EmbeddedBroker, free_port
from switchboard.shared.events import Alert, BrandTweet, Delivery, RoutedTweet, Trace, encode
from switchboard.shared.kafka import client_options, ensure_topics
from switchboard.shared.processes import kill, spawn, terminate
from switchboard.shared.settings import KafkaSettings
from tests.conftest import CONFIG_FILE, SWITCHBOARD, published, read_topics, service_environment
from tests.factories import a_classified_tweet, a_tweet

CONVERSATIONS = 60  # per phase: one before the kill, one after the restart
# An answered conversation of phase 1 must have its reply read by its owner before its SLA
# check: that spans a kill and restart of route-b, 5 to 11 s on a loaded machine.
SLA_S = 40


class Replica:
    """One service process with a stable static member name, restartable after a kill."""

    def __init__(self, service: str, name: str, env: dict[str, str], logs: Path) -> None:
        self.service, self.name, self.env, self.logs = service, name, env, logs
        self.process: Popen[bytes] | None = None
        self.port = 0

    async def start(self) -> None:
        self.port = free_port()
        env = dict(self.env, KAFKA_GROUP_INSTANCE_ID=f"{self.service}-{self.name}",
                   SWITCHBOARD_HTTP_PORT=str(self.port))  # fmt: skip
        self.process = spawn([*SWITCHBOARD, self.service], env=env,
                             log_file=self.logs / f"{self.service}-{self.name}.log")  # fmt: skip
        async with httpx.AsyncClient(timeout=1.0) as client:
            for _ in range(600):
                assert self.process.poll() is None, f"{self.service}-{self.name} exited"
                try:
                    if (await client.get(self.url("/readyz"))).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
        raise TimeoutError(f"{self.service}-{self.name} not ready")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def metric(self, name: str) -> float:
        """The sum of a metric's samples on this replica's /metrics."""
        async with httpx.AsyncClient(timeout=5.0) as client:
            text = (await client.get(self.url("/metrics"))).text
        pattern = rf"^{name}(?:\{{[^}}]*\}})? (\S+)$"
        return sum(float(value) for value in re.findall(pattern, text, re.MULTILINE))

    async def lag_reported(self) -> bool:
        """Whether it reports its consumer group's lag, as the dashboards read it."""
        async with httpx.AsyncClient(timeout=5.0) as client:
            text = (await client.get(self.url("/metrics"))).text
        return f'switchboard_consumer_lag{{group="switchboard-{self.service}"' in text

    def kill(self) -> None:
        assert self.process is not None
        kill(self.process)

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)


def breach_report(logs: Path, alerted: Counter, unanswered: set[str]) -> str:
    """Who raised the alerts an answered conversation got, and what each route replica logged
    of those conversations (to tell a reply read late from one never read)."""
    wrong = sorted(set(alerted) - unanswered)[:5]
    lines = [f"alerted but answered: {wrong}"]
    for replica in ("route-a", "route-b"):
        text = (logs / f"{replica}.log").read_text(errors="replace").splitlines()
        lines += [f"{replica}: {line[:300]}" for line in text
                  if any(f'"{c}"' in line for c in wrong)][:40]  # fmt: skip
    return "\n".join(lines)


def config_file(tmp_path: Path, partitions: int) -> Path:
    config = yaml.safe_load(CONFIG_FILE.read_text())
    config["topics"]["partitions"] = partitions
    config["route"]["sla"] = {
        "minutes": {"critical": SLA_S / 60, "high": SLA_S / 60, "normal": 1440, "low": 10080},
        "alert_urgencies": ["critical", "high"],
        "check_interval_s": 1,
    }
    config["notify"]["ledger_sweep_s"] = 1
    path = tmp_path / "switchboard.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def send_phase(producer: AIOKafkaProducer, kafka: KafkaSettings, phase: int) -> None:
    """CONVERSATIONS high-urgency tweets, each opening a conversation; once they are routed, a
    company reply in every even one."""
    ids = [f"p{phase}-c{i}" for i in range(CONVERSATIONS)]
    for i, conversation in enumerate(ids):
        event = a_classified_tweet(
            "customer_service", 0.9, "high",
            id=f"{conversation}-t", conversation_id=conversation, text=f"order {i} never came",
        )  # fmt: skip
        await producer.send(topics.CLASSIFIED, encode(event), key=conversation.encode())
    await producer.flush()

    def all_routed(records: list) -> bool:
        routed = {e.tweet.conversation_id for t in topics.PRIMARY_TOPICS
                  for e in published(records, t, RoutedTweet)}  # fmt: skip
        return set(ids) <= routed

    await read_topics(kafka, list(topics.PRIMARY_TOPICS), all_routed, timeout_s=60)
    for conversation in ids[::2]:
        reply = BrandTweet(
            handle="@SkylarkDeals",
            tweet=a_tweet(
                id=f"{conversation}-reply",
                conversation_id=conversation,
                author={"id": "9", "username": "SkylarkDeals"},
                created_at=datetime.now(UTC),
                text="we are on it",
            ),  # fmt: skip
            trace=Trace(ingested_at=datetime.now(UTC)),
        )
        await producer.send(topics.BRAND, encode(reply), key=conversation.encode())
    await producer.flush()


@pytest.mark.parametrize("partitions", [3, 4])
async def test_two_replicas_of_route_and_notify_keep_each_conversation_with_its_owner(
    tmp_path: Path, partitions: int
) -> None:
    broker = EmbeddedBroker(tmp_path / "broker")
    await broker.start()
    inbox = LoopbackInbox(tmp_path / "inbox")
    inbox.start()
    kafka = broker.settings()
    await ensure_topics(kafka, topics.ALL, partitions, 1)
    (tmp_path / "tmp").mkdir()  # the killed replicas' temporary stores stay in the test's folder
    env = service_environment(kafka, SWITCHBOARD_CONFIG_FILE=str(config_file(tmp_path, partitions)),
                              SMTP_HOST="127.0.0.1", SMTP_PORT=str(inbox.port),
                              TMPDIR=str(tmp_path / "tmp"))  # fmt: skip
    a, b = (Replica("route", n, env, tmp_path) for n in ("a", "b"))
    notify_a, notify_b = (Replica("notify", n, env, tmp_path) for n in ("a", "b"))
    replicas = (a, b, notify_a, notify_b)
    producer = AIOKafkaProducer(**client_options(kafka))
    await producer.start()
    try:
        for replica in replicas:
            await replica.start()
        await send_phase(producer, kafka, 1)
        b.kill()  # mid-stream: the replies it was given may not be processed or committed
        notify_b.kill()  # and emails it was making may be made but not recorded
        await b.start()  # same static member: its partitions come back, restored
        await notify_b.start()
        await send_phase(producer, kafka, 2)
        unanswered = {f"p{p}-c{i}" for p in (1, 2) for i in range(1, CONVERSATIONS, 2)}

        def breaches(records: list) -> set[str]:
            alerts = published(records, topics.ALERTS, Alert)
            return {x.tweet.conversation_id for x in alerts if x.kind == "sla_breach"}

        records = await read_topics(kafka, [topics.ALERTS, *topics.PRIMARY_TOPICS],
                                    lambda r: breaches(r) >= unanswered, SLA_S + 60)  # fmt: skip
        await asyncio.sleep(3)  # a second alert for any of them would be out by now
        records = await read_topics(kafka, [topics.ALERTS, *topics.PRIMARY_TOPICS],
                                    lambda r: False, 5)  # fmt: skip
        wanted = {f"p{p}-c{i}-t:email:support-leads" for p in (1, 2) for i in range(CONVERSATIONS)}
        records += await read_topics(
            kafka, [topics.DELIVERIES, topics.NOTIFICATIONS_DLQ],
            lambda r: {d.delivery_id for d in published(r, topics.DELIVERIES, Delivery)} >= wanted,
            60,
        )  # fmt: skip

        async def entries() -> tuple[list[float], list[float]]:
            routes = [await r.metric("switchboard_table_entries") for r in (a, b)]
            return routes, [
                await r.metric("switchboard_table_entries") for r in (notify_a, notify_b)
            ]

        # the tables' entries are counted by a sweep every second: wait for the counts to say
        # what they should (asserted below), for at most 30 seconds
        deadline = time.monotonic() + 30
        held, recorded = await entries()
        while {sum(held), sum(recorded)} != {2 * CONVERSATIONS} and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            held, recorded = await entries()
        emails = inbox.messages()
        lag_reported = [await r.lag_reported() for r in replicas]
    finally:
        await producer.stop()
        for replica in replicas:
            replica.stop()
        inbox.stop()
        await asyncio.to_thread(broker.stop)

    routed: dict[str, set[str]] = {}
    for topic in topics.PRIMARY_TOPICS:
        for event in published(records, topic, RoutedTweet):
            routed.setdefault(event.tweet.id, set()).add(topic)
    assert len(routed) == 2 * CONVERSATIONS
    assert all(len(ways) == 1 for ways in routed.values())  # one way, even when republished
    alerts = [x for x in published(records, topics.ALERTS, Alert) if x.kind == "sla_breach"]
    per_conversation = Counter(x.tweet.conversation_id for x in alerts)
    # None for an answered conversation: each reply reached the replica that owns it.
    assert set(per_conversation) == unanswered, breach_report(
        tmp_path, per_conversation, unanswered
    )
    assert max(per_conversation.values()) == 1  # each raised once, by the owner
    # Together the replicas hold every conversation once: each only its own partitions'.
    assert sum(held) == 2 * CONVERSATIONS and min(held) > 0
    # Every email made, none parked; one kept per Message-ID (a resend after the kill has the
    # same), and no more resent than notify-b had in flight.
    assert not published(records, topics.NOTIFICATIONS_DLQ, Delivery)
    message_ids = Counter(m["Message-ID"] for m in emails)
    assert len(message_ids) == 2 * CONVERSATIONS
    assert len(emails) - len(message_ids) <= 10
    assert sum(recorded) == 2 * CONVERSATIONS and min(recorded) > 0  # each ledger entry once
    assert all(lag_reported)
