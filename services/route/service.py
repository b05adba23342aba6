"""The route service: the company's routing policy applied to every classified tweet.

Consumes ``switchboard.tweets.classified`` and ``switchboard.tweets.brand``. For each inbound
tweet it publishes a RoutedTweet on exactly one primary topic (``switchboard.dept.<department>``,
``switchboard.triage`` or ``switchboard.dropped``), copies on other departments' topics when a
rule says so, and an Alert on ``switchboard.alerts`` when escalated. It remembers each
conversation (owner, highest urgency, the tweet awaiting a reply) on the compacted topic
``switchboard.route.conversations``, restored at start; measures time to first response from
the company's own replies; raises one alert per spike episode and one per SLA breach; and
reloads ``route`` from the YAML file when the file changes. Malformed input goes to
``switchboard.deadletter``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from aiokafka import ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from fastapi import APIRouter, FastAPI

from switchboard.route import conversations
from switchboard.route.ops import OpsView, ops_router
from switchboard.route.rules import Outcome, evaluate, rules_version
from switchboard.route.settings import RouteSettings
from switchboard.route.spikes import Spike, SpikeDetector
from switchboard.shared import metrics, topics
from switchboard.shared.access import AccessPolicy
from switchboard.shared.config import SwitchboardConfig
from switchboard.shared.events import (
    Alert,
    AwaitingReply,
    BrandTweet,
    ClassifiedTweet,
    ConversationState,
    RouteDecision,
    RoutedTweet,
    SpikeAlert,
    Trace,
    utc_now,
)
from switchboard.shared.kafka import (
    Output,
    StreamLoop,
    decode_or_dead_letter,
    ensure_topics,
    make_consumer,
    make_producer,
    publish,
)
from switchboard.shared.labels import Urgency
from switchboard.shared.runtime import http_app, run_service
from switchboard.shared.settings import ConfigError, ServiceSettings
from switchboard.shared.table import ChangelogTable

log = logging.getLogger(__name__)

GROUP_ID = "switchboard-route"

Reload = Literal["applied", "unchanged", "invalid"]


class RouteService:
    name = "route"

    def __init__(self, settings: RouteSettings) -> None:
        self.settings = settings
        self.config = settings.config
        self.version = rules_version(self.config.route)
        self.spikes = SpikeDetector(self.config.route.spikes)
        self.conversations: ChangelogTable[ConversationState, tuple[datetime, Urgency]] = (
            ChangelogTable(settings.kafka, topics.ROUTE_CONVERSATIONS, ConversationState,
                           index=conversations.awaiting_due)
        )  # fmt: skip
        self.producer = make_producer(settings.kafka, client_id="switchboard-route")
        self.consumer = make_consumer(
            settings.kafka,
            [topics.CLASSIFIED, topics.BRAND],
            GROUP_ID,
            "switchboard-route",
            listener=_RestoreOnAssignment(self),
        )
        self._config_digest = _digest(settings.config_file)
        self.ops = OpsView(settings.kafka)
        self._ready = False

    @property
    def ready(self) -> bool:
        return self._ready

    def http_app(self) -> FastAPI:
        app = http_app(self, AccessPolicy.of(self.config.access))
        app.include_router(ops_router(self.ops))
        app.include_router(admin_router(self))
        return app

    async def start(self) -> None:
        await ensure_topics(
            self.settings.kafka,
            [topics.CLASSIFIED, topics.BRAND, *topics.PRIMARY_TOPICS, topics.ALERTS,
             topics.DEADLETTER, topics.ROUTE_CONVERSATIONS],
            self.config.topics.partitions,
            self.config.topics.replication_factor,
        )  # fmt: skip
        await self.producer.start()
        await self.restore_conversations(None)
        await self.consumer.start()
        self._ready = True

    async def restore_conversations(self, partitions: set[int] | None) -> None:
        """Load conversation state from its changelog: all of it, or the given partitions.

        The changelog is keyed like the input (by conversation id) and created with the same
        partition count, so partition n of ``tweets.classified`` finds its conversations in
        partition n of the changelog. Reading it again when a partition is assigned picks up
        what another replica wrote while it owned that partition."""
        restored = await self.conversations.restore(partitions)
        log.info(
            "conversations restored",
            extra={"records": restored, "partitions": sorted(partitions or [])},
        )

    async def run(self, stop: asyncio.Event) -> None:
        background = [
            asyncio.create_task(self._watch_config(stop)),
            asyncio.create_task(self._watch_slas(stop)),
            asyncio.create_task(self.ops.sample(stop)),
        ]
        try:
            await StreamLoop(self.name, self.consumer, self.producer, self.handle).run(stop)
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)

    # --- per batch ---------------------------------------------------------------------------

    async def handle(self, records: list[ConsumerRecord]) -> list[Output]:
        outputs: list[Output] = []
        for record in records:
            if record.topic == topics.BRAND:
                outputs += self.on_brand_reply(record)
                continue
            event = decode_or_dead_letter(record, ClassifiedTweet, self.name)
            if isinstance(event, Output):
                outputs.append(event)
            else:
                outputs += self.on_classified(event, datetime.now(UTC))
        return outputs

    def on_classified(self, event: ClassifiedTweet, now: datetime) -> list[Output]:
        key = event.tweet.conversation_id
        state = self._active(key, now)
        before = conversations.decided(state, event.tweet.id)
        if before is not None:
            return self.republish(event, before)
        outcome = evaluate(event, self.config, state, now)
        routed, alert, outputs = self._publications(event, self._decision(outcome))
        self.ops.on_routed(routed)
        if alert is not None:
            self.ops.on_alert(alert)
        new_state = conversations.after_routing(state, event, outcome, routed.route, now)
        if new_state is not None and new_state != state:
            if state is None or state.awaiting is None and new_state.awaiting is not None:
                awaited = new_state.awaiting
                assert awaited is not None
                metrics.AWAITING_REPLY.labels(awaited.handle or "none", awaited.department).inc()
            outputs.append(self._remember(new_state))
        outputs += [self._spike_alert(s) for s in self._spikes(event, outcome, now)]
        self._count(routed, outcome)
        return outputs

    def republish(self, event: ClassifiedTweet, decision: RouteDecision) -> list[Output]:
        """A tweet routed before (published again upstream): the same topics and alert as the
        first time, and no change to the conversation, counts or spikes. Consumers deduplicate
        by tweet id (README, Delivery guarantees)."""
        _, _, outputs = self._publications(event, decision)
        metrics.REPUBLISHED.labels(decision.department).inc()
        log.info("routed again as before", extra={"tweet_id": event.tweet.id,
                                                  "topic": decision.topic})  # fmt: skip
        return outputs

    def _publications(
        self, event: ClassifiedTweet, decision: RouteDecision
    ) -> tuple[RoutedTweet, Alert | None, list[Output]]:
        """The routed tweet on its primary topic and its copies, and its alert if escalated."""
        key = event.tweet.conversation_id
        routed = RoutedTweet(
            tweet=event.tweet,
            classification=event.classification,
            route=decision,
            trace=event.trace.model_copy(update={"routed_at": utc_now()}),
        )
        outputs = [Output.of(decision.topic, routed, key)]
        outputs += [Output.of(topics.department_topic(d), routed, key) for d in decision.copies]
        alert = alert_for(routed) if decision.escalated else None
        if alert is not None:
            outputs.append(Output.of(topics.ALERTS, alert, key))
        return routed, alert, outputs

    def on_brand_reply(self, record: ConsumerRecord) -> list[Output]:
        reply = decode_or_dead_letter(record, BrandTweet, self.name)
        if isinstance(reply, Output):
            return [reply]
        now = datetime.now(UTC)
        state = self._active(reply.tweet.conversation_id, now)
        if state is None:
            return []
        new_state, response = conversations.after_brand_reply(state, reply, now)
        if response is not None:
            labels = (response.awaited.handle or "none", response.awaited.department)
            metrics.RESPONSES.labels(*labels).inc()
            metrics.RESPONSE_SECONDS.labels(*labels).observe(response.seconds)
            log.info(
                "answered",
                extra={
                    "conversation_id": state.conversation_id,
                    "tweet_id": response.awaited.tweet_id,
                    "handle": response.handle,
                    "seconds": round(response.seconds, 1),
                },
            )
        return [self._remember(new_state)]

    def _active(self, conversation_id: str, now: datetime) -> ConversationState | None:
        state = self.conversations.get(conversation_id)
        ttl = self.config.route.conversations.ttl_hours
        return state if conversations.active(state, now, ttl) else None

    def _remember(self, state: ConversationState) -> Output:
        return self.conversations.put(state.conversation_id, state)

    def _decision(self, outcome: Outcome) -> RouteDecision:
        topic = {
            "department": topics.department_topic(outcome.department),
            "triage": topics.TRIAGE,
            "dropped": topics.DROPPED,
        }[outcome.destination]
        return RouteDecision(
            destination=outcome.destination,
            department=outcome.department,
            topic=topic,
            copies=outcome.copies,
            escalated=outcome.escalated and outcome.destination != "dropped",
            reasons=outcome.reasons,
            confidence_threshold=self.config.route.confidence_threshold,
            rules_version=self.version,
            matched_rules=outcome.matched_rules,
            owner=outcome.owner,
            priority=outcome.priority,
            sla_due_at=outcome.sla_due_at,
        )

    def _spikes(self, event: ClassifiedTweet, outcome: Outcome, now: datetime) -> list[Spike]:
        if not self.config.route.spikes.enabled or outcome.destination == "dropped":
            return []
        return self.spikes.observe(event.tweet, outcome.department, now)

    def _spike_alert(self, spike: Spike) -> Output:
        config = self.config.route.spikes
        metrics.SPIKES.labels(spike.dimension, spike.value).inc()
        metrics.ALERTS.labels("spike", spike.value if spike.dimension == "department" else "").inc()
        alert = SpikeAlert(
            alert_id=f"spike:{spike.dimension}:{spike.value}:{utc_now().isoformat()}",
            dimension=spike.dimension,  # type: ignore[arg-type]
            value=spike.value,
            window_minutes=config.window_minutes,
            count=spike.count,
            baseline=round(spike.baseline, 3),
            factor=config.factor,
            samples=spike.samples,
        )
        log.warning(
            "spike", extra={"dimension": spike.dimension, "value": spike.value, "n": spike.count}
        )
        self.ops.on_alert(alert)
        return Output.of(topics.ALERTS, alert, key=f"{spike.dimension}:{spike.value}")

    def _count(self, routed: RoutedTweet, outcome: Outcome) -> None:
        decision = routed.route
        metrics.TWEETS_ROUTED.labels(decision.department, decision.destination).inc()
        for department in decision.copies:
            metrics.COPIES.labels(department).inc()
        for rule in outcome.matched_rules:
            metrics.RULE_MATCHES.labels(rule).inc()
        if decision.escalated:
            metrics.ALERTS.labels(alert_kind(routed), decision.department).inc()
        metrics.E2E_LATENCY.labels("routed").observe(
            (routed.trace.routed_at - routed.trace.ingested_at).total_seconds()  # type: ignore[operator]
        )
        log.info(
            "routed",
            extra={
                "tweet_id": routed.tweet.id,
                "conversation_id": routed.tweet.conversation_id,
                "topic": decision.topic,
                "urgency": routed.classification.urgency.value,
                "rules": decision.matched_rules,
            },
        )

    # --- background work -----------------------------------------------------------------------

    async def _watch_slas(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(self.config.route.sla.check_interval_s)
            now = datetime.now(UTC)
            outputs = self.sla_breaches(now) + self.expire_conversations(now)
            if outputs:
                await publish(self.producer, outputs, self.name)

    def expire_conversations(self, now: datetime) -> list[Output]:
        """Tombstones for conversations idle longer than the ownership TTL (memory stays flat)."""
        ttl = timedelta(hours=self.config.route.conversations.ttl_hours)
        expired = self.conversations.expire(now - ttl)
        if expired:
            log.info("conversations expired", extra={"n": len(expired)})
        metrics.TABLE_ENTRIES.labels(self.name, topics.ROUTE_CONVERSATIONS).set(
            len(self.conversations)
        )
        return expired

    def sla_breaches(self, now: datetime) -> list[Output]:
        """An alert for each awaited tweet past its SLA (once), and the updated states."""
        urgencies = self.config.route.sla.alert_urgencies
        outputs = []
        for conversation_id, (due_at, urgency) in self.conversations.indexed():
            if due_at >= now or urgency not in urgencies:
                continue
            state = self.conversations.get(conversation_id)
            if state is None or not conversations.breached(state, now, urgencies):
                continue
            awaiting = state.awaiting
            assert awaiting is not None and awaiting.due_at is not None
            metrics.SLA_BREACHES.labels(awaiting.department, awaiting.urgency).inc()
            if awaiting.tweet is not None and awaiting.classification is not None:
                late = (now - awaiting.due_at).total_seconds() / 60
                alert = Alert(
                    alert_id=f"sla_breach:{awaiting.tweet_id}",
                    kind="sla_breach",
                    department=awaiting.department,
                    urgency=awaiting.urgency,
                    summary=(
                        f"{awaiting.urgency.value} tweet to {awaiting.handle or 'the company'} "
                        f"unanswered {late:.0f} min past its SLA ({awaiting.due_at.isoformat()})"
                    ),
                    tweet=awaiting.tweet,
                    classification=awaiting.classification,
                    trace=_trace_for(awaiting),
                )
                outputs.append(Output.of(topics.ALERTS, alert, state.conversation_id))
                self.ops.on_alert(alert)
                metrics.ALERTS.labels("sla_breach", awaiting.department).inc()
            marked = awaiting.model_copy(update={"breach_alerted": True})
            outputs.append(self._remember(state.model_copy(update={"awaiting": marked})))
        return outputs

    async def _watch_config(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(self.config.route.reload_interval_s)
            self.reload_if_changed()

    def reload_if_changed(self) -> Reload:
        """Re-read the YAML file if it changed; keep the current policy if it is invalid."""
        digest = _digest(self.settings.config_file)
        if digest == self._config_digest:
            return "unchanged"
        self._config_digest = digest
        try:
            config = _load_config(self.settings)
        except ConfigError as error:
            metrics.RULES_RELOADS.labels("invalid").inc()
            log.error("new configuration rejected; keeping the current rules: %s", error)
            return "invalid"
        self.config = config
        self.version = rules_version(config.route)
        self.spikes = SpikeDetector(config.route.spikes)
        metrics.RULES_RELOADS.labels("applied").inc()
        log.info(
            "routing rules reloaded",
            extra={"rules_version": self.version, "rules": len(config.route.rules)},
        )
        return "applied"

    async def close(self) -> None:
        self._ready = False
        await self.consumer.stop()
        await self.producer.stop()


def admin_router(service: RouteService) -> APIRouter:
    """``POST /admin/rules/reload``: apply the YAML file's routing rules now, without waiting
    for ``reload_interval_s`` (the admin token is required, see shared/access.py)."""
    router = APIRouter(prefix="/admin")

    @router.post("/rules/reload")
    async def reload_rules() -> dict[str, object]:
        outcome = service.reload_if_changed()
        return {"outcome": outcome, "rules_version": service.version,
                "rules": len(service.config.route.rules)}  # fmt: skip

    return router


class _RestoreOnAssignment(ConsumerRebalanceListener):
    def __init__(self, service: RouteService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        """Nothing to hand over: every state change is already on the changelog."""

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        partitions = {tp.partition for tp in assigned if tp.topic == topics.CLASSIFIED}
        if partitions:
            await self.service.restore_conversations(partitions)


def alert_kind(routed: RoutedTweet) -> str:
    return "critical_tweet" if routed.classification.urgency is Urgency.CRITICAL else "escalation"


def alert_for(routed: RoutedTweet) -> Alert:
    c = routed.classification
    kind = alert_kind(routed)
    return Alert(
        alert_id=f"{kind}:{routed.tweet.id}",
        kind=kind,  # type: ignore[arg-type]
        department=routed.route.department,
        urgency=c.urgency,
        summary=(
            f"{c.urgency.value} {routed.route.department.value} tweet from "
            f"@{routed.tweet.author.username} to "
            f"{', '.join(routed.tweet.addressed_handles) or 'the company'}: "
            + "; ".join(routed.route.reasons[-2:])
        ),
        tweet=routed.tweet,
        classification=c,
        trace=routed.trace,
    )


def _trace_for(awaiting: AwaitingReply) -> Trace:
    return Trace(ingested_at=awaiting.received_at)


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _load_config(settings: ServiceSettings) -> SwitchboardConfig:
    return type(settings).load(config_file=settings.config_file, kafka=settings.kafka).config


def main(**overrides: object) -> None:
    """Run the route service until SIGTERM or SIGINT; ``overrides`` replace settings."""
    settings = RouteSettings.load(**overrides)
    asyncio.run(run_service(RouteService, settings))
