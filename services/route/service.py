"""The route service: publishes each classified tweet on its department's topic or on triage.

Consumes ``switchboard.tweets.classified``; for each tweet publishes a RoutedTweet on exactly one
primary topic (``switchboard.dept.<department>`` or ``switchboard.triage``) and, when escalated,
an Alert on ``switchboard.alerts``. Malformed input goes to ``switchboard.deadletter``.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import ConsumerRecord

from switchboard.route.decide import route
from switchboard.route.settings import RouteSettings
from switchboard.shared import metrics, topics
from switchboard.shared.events import ClassifiedTweet
from switchboard.shared.kafka import (
    Output,
    StreamLoop,
    decode_or_dead_letter,
    ensure_topics,
    make_consumer,
    make_producer,
)
from switchboard.shared.runtime import run_service

log = logging.getLogger(__name__)

GROUP_ID = "switchboard-route"


class RouteService:
    name = "route"

    def __init__(self, settings: RouteSettings) -> None:
        self.settings = settings
        self.policy = settings.config.route
        self.producer = make_producer(settings.kafka, client_id="switchboard-route")
        self.consumer = make_consumer(
            settings.kafka, [topics.CLASSIFIED], GROUP_ID, "switchboard-route"
        )
        self._ready = False

    @property
    def ready(self) -> bool:
        return self._ready

    async def start(self) -> None:
        await ensure_topics(
            self.settings.kafka,
            [topics.CLASSIFIED, *topics.PRIMARY_TOPICS, topics.ALERTS, topics.DEADLETTER],
            self.settings.config.topics.partitions,
            self.settings.config.topics.replication_factor,
        )
        await self.producer.start()
        await self.consumer.start()
        self._ready = True

    async def run(self, stop: asyncio.Event) -> None:
        await StreamLoop(self.name, self.consumer, self.producer, self.handle).run(stop)

    async def handle(self, records: list[ConsumerRecord]) -> list[Output]:
        outputs: list[Output] = []
        for record in records:
            event = decode_or_dead_letter(record, ClassifiedTweet, self.name)
            if isinstance(event, Output):
                outputs.append(event)
                continue
            routed, messages = route(event, self.policy)
            outputs.extend(messages)
            decision = routed.route
            metrics.TWEETS_ROUTED.labels(decision.department, decision.destination).inc()
            if decision.escalated:
                metrics.ALERTS.labels("critical_tweet", decision.department).inc()
            metrics.E2E_LATENCY.labels("routed").observe(
                (routed.trace.routed_at - routed.trace.ingested_at).total_seconds()
            )
            log.info(
                "routed",
                extra={
                    "tweet_id": routed.tweet.id,
                    "conversation_id": routed.tweet.conversation_id,
                    "topic": decision.topic,
                    "urgency": routed.classification.urgency.value,
                },
            )
        return outputs

    async def close(self) -> None:
        self._ready = False
        await self.consumer.stop()
        await self.producer.stop()


def main(**overrides: object) -> None:
    """Run the route service until SIGTERM or SIGINT; ``overrides`` replace settings."""
    settings = RouteSettings.load(**overrides)
    asyncio.run(run_service(RouteService, settings))
