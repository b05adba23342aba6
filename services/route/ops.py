"""The live ops page, served by route at ``/ops`` (route sees every routed tweet and alert).

``GET /ops`` is a self-contained HTML page that polls ``GET /ops/state`` every two seconds:
per-department counts, the latest routed tweets and the triage queue (each with a button that
corrects its department or urgency through ``POST /feedback``), recent alerts, and the
throughput of each service,
measured from the end offsets of the topics each one writes (so it needs no access to the other
services). Meant for a laptop running the embedded default; production has Grafana.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from datetime import timedelta
from importlib.resources import files
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse

from switchboard.shared import topics
from switchboard.shared.comparison import compare, read_since
from switchboard.shared.events import Alert, RoutedTweet, SpikeAlert, utc_now
from switchboard.shared.kafka import client_options
from switchboard.shared.labels import DEPARTMENTS, URGENCIES
from switchboard.shared.settings import KafkaSettings

COMPARE_EVERY_S = 30.0
OPS_COMPARE_LIMIT = (
    20_000  # records read back for the ops page (route holds them while it compares)
)
# What each service writes: its throughput is how fast these topics grow.
STAGE_TOPICS: dict[str, tuple[str, ...]] = {
    "ingest": (topics.RAW, topics.BRAND),
    "classify": (topics.CLASSIFIED,),
    "route": topics.PRIMARY_TOPICS,
    "notify": (topics.DELIVERIES, topics.NOTIFICATIONS_DLQ),
}


class OpsView:
    def __init__(
        self, kafka: KafkaSettings, corrections: bool = False, names: dict[str, str] | None = None
    ) -> None:
        self.kafka = kafka
        self.corrections = corrections  # POST /feedback needs the admin token, so one is set
        self.names = names or {}  # the departments' display names (the YAML file's departments)
        self.routed: Counter[str] = Counter()
        self.triage_queue: deque[dict] = deque(maxlen=12)
        self.recent: deque[dict] = deque(maxlen=12)
        self.alerts: deque[dict] = deque(maxlen=12)
        self._samples: deque[tuple[float, dict[str, int]]] = deque(maxlen=8)
        self._compared: dict[int, tuple[float, dict[str, Any]]] = {}  # at most 24 hours
        self._comparing = asyncio.Lock()
        self._last_compared = -COMPARE_EVERY_S  # monotonic time of the last comparison made

    def on_routed(self, routed: RoutedTweet) -> None:
        route = routed.route
        key = "triage" if route.destination == "triage" else route.destination
        self.routed[route.department.value if key == "department" else key] += 1
        line = _tweet_line(routed, "; ".join(route.reasons))
        if route.destination == "triage":
            self.triage_queue.appendleft(line)
        elif route.destination == "department":
            self.recent.appendleft(line)

    def forget_tweets(self) -> None:
        """Every tweet off the page (a rebalance: it may show tweets of partitions gone)."""
        self.triage_queue.clear()
        self.recent.clear()

    def forget(self, posts: set[str]) -> None:
        """Tweets their authors deleted (each post: its first version's id, which its edits
        name): off the page, which showed their text."""
        for lines in (self.triage_queue, self.recent):
            kept = [line for line in lines if posts.isdisjoint((line["post"], line["tweet_id"]))]
            lines.clear()
            lines.extend(kept)

    def on_alert(self, alert: Alert | SpikeAlert) -> None:
        if isinstance(alert, SpikeAlert):
            text = f"spike: {alert.dimension} {alert.value}, {alert.count} tweets"
            self.alerts.appendleft({"at": alert.detected_at.isoformat(), "kind": "spike",
                                    "text": text})  # fmt: skip
        else:
            self.alerts.appendleft({"at": utc_now().isoformat(), "kind": alert.kind,
                                    "text": alert.summary})  # fmt: skip

    async def sample(self, stop: asyncio.Event, every_s: float = 2.0) -> None:
        """Record the topics' end offsets every ``every_s`` seconds, for throughput."""
        consumer = AIOKafkaConsumer(client_id="switchboard-ops", **client_options(self.kafka))
        await consumer.start()
        try:
            while not stop.is_set():
                with contextlib.suppress(KafkaError, OSError):
                    self._samples.append((time.monotonic(), await _ends(consumer)))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=every_s)
        finally:
            await consumer.stop()

    async def comparison(self, hours: int) -> dict[str, Any]:
        if (report := self._fresh_comparison(hours)) is not None:
            return report
        async with self._comparing:
            if (report := self._fresh_comparison(hours)) is not None:  # made while we waited
                return report
            # one comparison per COMPARE_EVERY_S whatever the hours asked: a page (or anyone,
            # views being open by default) asking for each of the 24 in turn must not keep
            # route reading and comparing
            await asyncio.sleep(max(0.0, self._last_compared + COMPARE_EVERY_S - time.monotonic()))
            since = utc_now() - timedelta(hours=hours)
            found = await read_since(self.kafka, since, limit=OPS_COMPARE_LIMIT, paired=False)
            report = await asyncio.to_thread(
                compare, found[topics.CLASSIFIED], found[topics.SHADOW], found[topics.FEEDBACK],
                examples=2,
            )  # fmt: skip
            report["since"] = since.isoformat()
            self._last_compared = time.monotonic()
            self._compared[hours] = (self._last_compared, report)
            return report

    def _fresh_comparison(self, hours: int) -> dict[str, Any] | None:
        cached = self._compared.get(hours)
        if cached is not None and time.monotonic() - cached[0] < COMPARE_EVERY_S:
            return cached[1]
        return None

    def throughput(self) -> dict[str, float]:
        if len(self._samples) < 2:
            return {stage: 0.0 for stage in STAGE_TOPICS}
        (t0, first), (t1, last) = self._samples[0], self._samples[-1]
        return {
            stage: round(max(0, last.get(stage, 0) - first.get(stage, 0)) / (t1 - t0), 2)
            for stage in STAGE_TOPICS
        }

    def state(self) -> dict[str, Any]:
        return {
            "updated_at": utc_now().isoformat(),
            "routed": dict(sorted(self.routed.items())),
            "total": sum(self.routed.values()),
            "throughput_per_s": self.throughput(),
            "triage_queue": list(self.triage_queue),
            "recent": list(self.recent),
            "corrections": self.corrections,
            "departments": [d.value for d in DEPARTMENTS],
            "department_names": self.names,
            "urgencies": [u.value for u in URGENCIES],
            "alerts": list(self.alerts),
        }


async def _ends(consumer: AIOKafkaConsumer) -> dict[str, int]:
    await consumer.topics()  # refresh metadata: topics may have been created since
    totals = {}
    for stage, names in STAGE_TOPICS.items():
        partitions = [
            TopicPartition(name, p)
            for name in names
            for p in sorted(consumer.partitions_for_topic(name) or ())
        ]
        ends = await consumer.end_offsets(partitions) if partitions else {}
        totals[stage] = sum(ends.values())
    return totals


def _tweet_line(routed: RoutedTweet, why: str) -> dict:
    return {
        "at": (routed.trace.routed_at or utc_now()).isoformat(),
        "tweet_id": routed.tweet.id,
        "post": routed.tweet.edit_of or routed.tweet.id,
        "conversation_id": routed.tweet.conversation_id,
        "department": routed.route.department.value,
        "author": routed.tweet.author.username,
        "text": routed.tweet.text[:200],
        "urgency": routed.classification.urgency.value,
        "why": why,
        "url": routed.tweet.url,
    }


def ops_router(view: OpsView) -> APIRouter:
    router = APIRouter()
    page = files("switchboard.route").joinpath("ops.html").read_text(encoding="utf-8")

    @router.get("/ops", response_class=HTMLResponse)
    async def ops_page() -> str:
        return page

    @router.get("/ops/state")
    async def ops_state() -> dict[str, Any]:
        return view.state()

    @router.get("/ops/compare")
    async def ops_compare(hours: int = Query(default=1, ge=1, le=24)) -> dict[str, Any]:
        """The live model against the shadow candidates over the last ``hours`` (at most one
        reading every COMPARE_EVERY_S per whole hour, of the latest OPS_COMPARE_LIMIT records:
        a glance that must not weigh on route; ``switchboard classify compare`` reads all)."""
        return await view.comparison(hours)

    return router
