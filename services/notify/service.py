"""The notify service: tells the people subscribed to a department about its tweets.

Consumes the department topics; for each routed tweet and each matching subscription in
``notify.subscriptions`` sends one email over SMTP, retried with exponential backoff and jitter.
Each outcome is a Delivery record: on ``switchboard.notifications.deliveries`` when delivered, on
``switchboard.notifications.dlq`` when every attempt failed, so nothing is silently dropped.
"""

from __future__ import annotations

import asyncio
import logging

import aiosmtplib
from aiokafka import ConsumerRecord
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from switchboard.notify.mail import SmtpMailer, render_email
from switchboard.notify.settings import NotifySettings
from switchboard.shared import metrics, topics
from switchboard.shared.config import Subscription
from switchboard.shared.events import Delivery, RoutedTweet, utc_now
from switchboard.shared.kafka import (
    Output,
    StreamLoop,
    decode_or_dead_letter,
    ensure_topics,
    make_consumer,
    make_producer,
)
from switchboard.shared.labels import Department
from switchboard.shared.runtime import run_service

log = logging.getLogger(__name__)

GROUP_ID = "switchboard-notify"
RETRYABLE = (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError)


def delivery_id(routed: RoutedTweet, subscription: Subscription) -> str:
    return f"{routed.tweet.id}:{subscription.channel}:{subscription.name}"


def matching_subscriptions(
    routed: RoutedTweet, subscriptions: list[Subscription], department: Department | None = None
) -> list[Subscription]:
    """Subscriptions of ``department`` (the topic's: a rule's copy has another than the
    owner's) for the tweet's urgency."""
    department = department or routed.route.department
    c = routed.classification
    return [s for s in subscriptions if s.matches(department, c.urgency)]


class NotifyService:
    name = "notify"

    def __init__(self, settings: NotifySettings) -> None:
        self.settings = settings
        self.options = settings.config.notify
        self.mailer = SmtpMailer(settings.smtp)
        self.producer = make_producer(settings.kafka, client_id="switchboard-notify")
        self.consumer = make_consumer(
            settings.kafka, list(topics.DEPARTMENT_TOPICS), GROUP_ID, "switchboard-notify"
        )
        self._ready = False

    @property
    def ready(self) -> bool:
        return self._ready

    async def start(self) -> None:
        await ensure_topics(
            self.settings.kafka,
            [
                *topics.DEPARTMENT_TOPICS,
                topics.DELIVERIES,
                topics.NOTIFICATIONS_DLQ,
                topics.DEADLETTER,
            ],
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
        sends = []
        for record in records:
            routed = decode_or_dead_letter(record, RoutedTweet, self.name)
            if isinstance(routed, Output):
                outputs.append(routed)
                continue
            department = Department(record.topic.removeprefix(topics.DEPARTMENT_PREFIX))
            subscriptions = matching_subscriptions(routed, self.options.subscriptions, department)
            sends += [self.deliver(routed, s, department) for s in subscriptions]
        for delivery in await asyncio.gather(*sends):
            topic = (
                topics.DELIVERIES if delivery.outcome == "delivered" else topics.NOTIFICATIONS_DLQ
            )
            outputs.append(Output.of(topic, delivery, key=delivery.conversation_id))
        return outputs

    async def deliver(
        self, routed: RoutedTweet, subscription: Subscription, department: Department
    ) -> Delivery:
        """Send one email, retrying transient failures; the outcome either way."""
        identifier = delivery_id(routed, subscription)
        message = render_email(routed, subscription, self.options.email, identifier)
        attempts, error = 0, None
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.settings.send_attempts),
                wait=wait_random_exponential(multiplier=0.5, max=30),
                retry=retry_if_exception_type(RETRYABLE),
                reraise=True,
            ):
                with attempt:
                    attempts += 1
                    metrics.DELIVERY_ATTEMPTS.labels(subscription.channel).inc()
                    await self.mailer.send(message)
        except RETRYABLE as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.error(
                "delivery failed; parked",
                extra={"tweet_id": routed.tweet.id, "delivery_id": identifier, "error": error},
            )
        outcome = "delivered" if error is None else "failed"
        metrics.DELIVERIES.labels(subscription.channel, outcome).inc()
        trace = routed.trace
        if error is None:
            trace = trace.model_copy(update={"delivered_at": utc_now()})
            metrics.E2E_LATENCY.labels("delivered").observe(
                (trace.delivered_at - trace.ingested_at).total_seconds()
            )
        return Delivery(
            delivery_id=identifier,
            tweet_id=routed.tweet.id,
            conversation_id=routed.tweet.conversation_id,
            channel=subscription.channel,
            target=subscription.name,
            department=department,
            urgency=routed.classification.urgency,
            outcome=outcome,
            attempts=attempts,
            error=error,
            trace=trace,
        )

    async def close(self) -> None:
        self._ready = False
        await self.consumer.stop()
        await self.producer.stop()
        await self.mailer.close()


def main(**overrides: object) -> None:
    """Run the notify service until SIGTERM or SIGINT; ``overrides`` replace settings."""
    settings = NotifySettings.load(**overrides)
    asyncio.run(run_service(NotifyService, settings))
