"""The notify service: tells the people and systems subscribed to a department about its tweets.

Consumes the department topics (and ``switchboard.notifications.redrive``). For each routed
tweet and each matching subscription in ``notify.subscriptions`` it makes one effect on the
subscription's channel (email, signed webhook, Zendesk, Jira, Salesforce, HubSpot), and
publishes a Delivery on ``switchboard.notifications.deliveries``, or, after the last retry, on
``switchboard.notifications.dlq`` with the error and the routed tweet (``switchboard dlq
redrive`` tries it again).

Exactly-once effects: each effect is recorded on the compacted ledger topic as soon as it
succeeded, keyed by conversation; a restart or a redelivery skips what the ledger holds, and
the vendors' own idempotency (Zendesk Idempotency-Key and external_id, Jira labels, CRM
upserts, webhook Idempotency-Key, a stable email Message-ID) covers the moment in between.
Follow-ups in a conversation go to the same ticket or issue. Channels run concurrently; each
has its own circuit breaker and rate limit, so one failing target never blocks the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta

from aiokafka import ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from fastapi import FastAPI

from switchboard.notify.channels import Channel, Done, Job, channels_for
from switchboard.notify.digest import DigestWorker
from switchboard.notify.dlq import DueRedrives, Filters, dlq_router, parked_deliveries, redrive
from switchboard.notify.mail import SmtpMailer
from switchboard.notify.resilience import (
    CircuitBreaker,
    CircuitOpen,
    DeliveryError,
    RateLimiter,
    with_retries,
)
from switchboard.notify.sanitize import redacted
from switchboard.notify.settings import NotifySettings
from switchboard.shared import metrics, topics
from switchboard.shared.access import AccessPolicy
from switchboard.shared.config import Subscription
from switchboard.shared.events import (
    Delivery,
    LedgerEntry,
    RedriveRequest,
    RoutedTweet,
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
from switchboard.shared.labels import Department
from switchboard.shared.runtime import http_app, run_service
from switchboard.shared.table import ChangelogTable

log = logging.getLogger(__name__)

GROUP_ID = "switchboard-notify"


def delivery_id(routed: RoutedTweet, subscription: Subscription) -> str:
    return f"{routed.tweet.id}:{subscription.channel}:{subscription.name}"


def matching_subscriptions(
    routed: RoutedTweet, subscriptions: list[Subscription], department: Department | None = None
) -> list[Subscription]:
    """Subscriptions of ``department`` (the topic's: a rule's copy has another than the
    owner's) for the tweet's urgency, except those that wait for a digest (digest.py)."""
    department = department or routed.route.department
    urgency = routed.classification.urgency
    return [s for s in subscriptions if s.matches(department, urgency) and not s.digests(urgency)]


class NotifyService:
    name = "notify"

    def __init__(self, settings: NotifySettings) -> None:
        self.settings = settings
        self.options = settings.config.notify
        policy = self.options.delivery
        self.channels: dict[str, Channel] = channels_for(self.options, SmtpMailer(settings.smtp))
        self.breakers = {
            name: CircuitBreaker(name, policy.circuit_failures, policy.circuit_cooldown_s)
            for name in self.channels
        }
        self.limiters = {name: RateLimiter(policy.rate_per_s.get(name)) for name in self.channels}  # type: ignore[call-overload]
        self.ledger = ChangelogTable(settings.kafka, topics.NOTIFICATIONS_LEDGER, LedgerEntry)
        self.digests = DigestWorker(settings, SmtpMailer(settings.smtp))
        self.producer = make_producer(settings.kafka, client_id="switchboard-notify")
        self.consumer = make_consumer(
            settings.kafka,
            [*topics.DEPARTMENT_TOPICS, topics.NOTIFICATIONS_REDRIVE],
            GROUP_ID,
            "switchboard-notify",
            listener=_RestoreOnAssignment(self),
        )
        self.parked: set[str] = set()
        self.due = DueRedrives()
        self._ready = False

    @property
    def ready(self) -> bool:
        return self._ready

    def http_app(self) -> FastAPI:
        app = http_app(self, AccessPolicy.of(self.settings.config.access))
        app.include_router(dlq_router(self.settings.kafka))
        return app

    async def start(self) -> None:
        await ensure_topics(
            self.settings.kafka,
            [*topics.DEPARTMENT_TOPICS, topics.DELIVERIES, topics.NOTIFICATIONS_DLQ,
             topics.NOTIFICATIONS_REDRIVE, topics.NOTIFICATIONS_LEDGER, topics.DEADLETTER],
            self.settings.config.topics.partitions,
            self.settings.config.topics.replication_factor,
        )  # fmt: skip
        await self.producer.start()
        await self.ledger.restore()
        parked = await parked_deliveries(self.settings.kafka, Filters())
        self.parked = {d.delivery_id for d in parked}
        for delivery in parked:
            if delivery.retry_at is not None:
                self.due.schedule(delivery)
        metrics.DLQ_SIZE.set(len(self.parked))
        await self.consumer.start()
        self._ready = True

    async def run(self, stop: asyncio.Event) -> None:
        digests = asyncio.create_task(self.digests.run(stop), name="digests")
        expiry = asyncio.create_task(self._expire_ledger(stop), name="ledger-expiry")
        redrives = asyncio.create_task(self._redrive_when_due(stop), name="due-redrives")
        try:
            await StreamLoop(self.name, self.consumer, self.producer, self.handle).run(stop)
        finally:
            expiry.cancel()
            redrives.cancel()
            await asyncio.gather(expiry, redrives, return_exceptions=True)
            await asyncio.wait_for(digests, timeout=10)

    async def _expire_ledger(self, stop: asyncio.Event, every_s: float = 60.0) -> None:
        while not stop.is_set():
            await asyncio.sleep(every_s)
            await publish(self.producer, self.expire_ledger(datetime.now(UTC)), self.name)

    async def _redrive_when_due(self, stop: asyncio.Event, every_s: float = 1.0) -> None:
        """Deliveries parked for a vendor's long wait go back on the redrive topic when their
        ``retry_at`` comes; the ledger keeps a redrive that raced a manual one from repeating
        the effect."""
        while not stop.is_set():
            await asyncio.sleep(every_s)
            due = self.due.take(datetime.now(UTC))
            if due:
                await redrive(self.settings.kafka, due, self.producer)
                log.info("redriven when due", extra={"deliveries": len(due)})

    def expire_ledger(self, now: datetime) -> list[Output]:
        """Tombstones for conversations untouched for ``notify.ledger_retention_hours``."""
        retention = timedelta(hours=self.options.ledger_retention_hours)
        expired = self.ledger.expire(now - retention)
        metrics.TABLE_ENTRIES.labels(self.name, topics.NOTIFICATIONS_LEDGER).set(len(self.ledger))
        return expired

    # --- a batch ------------------------------------------------------------------------------

    async def handle(self, records: list[ConsumerRecord]) -> list[Output]:
        outputs: list[Output] = []
        jobs: list[Job] = []
        for record in records:
            if record.topic == topics.NOTIFICATIONS_REDRIVE:
                request = decode_or_dead_letter(record, RedriveRequest, self.name)
                if isinstance(request, Output):
                    outputs.append(request)
                else:
                    jobs += self._redrive_jobs(request)
                continue
            routed = decode_or_dead_letter(record, RoutedTweet, self.name)
            if isinstance(routed, Output):
                outputs.append(routed)
                continue
            routed = redacted(routed, self.options.redact)  # before any channel sees it
            department = Department(record.topic.removeprefix(topics.DEPARTMENT_PREFIX))
            for subscription in matching_subscriptions(
                routed, self.options.subscriptions, department
            ):
                jobs.append(
                    Job(routed, subscription, department, delivery_id(routed, subscription))
                )
        # Jobs of one conversation and target run in order (a follow-up needs the ticket the
        # first one opened); all the others run concurrently.
        groups: dict[tuple[str, str], list[Job]] = defaultdict(list)
        for job in jobs:
            groups[(job.routed.tweet.conversation_id, job.subscription.name)].append(job)
        results = await asyncio.gather(*(self._in_order(group) for group in groups.values()))
        for deliveries in results:
            for delivery in deliveries:
                topic = (
                    topics.DELIVERIES
                    if delivery.outcome == "delivered"
                    else topics.NOTIFICATIONS_DLQ
                )
                outputs.append(Output.of(topic, delivery, key=delivery.conversation_id))
        return outputs

    def _redrive_jobs(self, request: RedriveRequest) -> list[Job]:
        wanted = [s for s in self.options.subscriptions if s.name == request.subscription]
        if not wanted:
            log.warning("redrive for an unknown subscription", extra={"id": request.delivery_id})
            return []
        metrics.REDRIVEN.labels(wanted[0].channel).inc()
        routed = redacted(request.routed, self.options.redact)
        return [Job(routed, wanted[0], request.department, request.delivery_id)]

    async def _in_order(self, jobs: list[Job]) -> list[Delivery]:
        return [await self.deliver(job) for job in jobs]

    # --- one delivery ---------------------------------------------------------------------------

    async def deliver(self, job: Job) -> Delivery:
        """Make the job's effect once. When the ledger says it was made already (a redelivery
        after a crash), only the Delivery record is published again, marked ``already_done``:
        the crash may have lost it, and consumers deduplicate by delivery id."""
        conversation = job.routed.tweet.conversation_id
        entry = self.ledger.get(conversation) or LedgerEntry(conversation_id=conversation)
        if job.delivery_id in entry.deliveries:
            metrics.DELIVERIES.labels(job.subscription.channel, "already_done").inc()
            done = Done("already_done", entry.deliveries[job.delivery_id])
            return self._delivery(job, "delivered", 0, done=done)
        thread_key = f"{job.subscription.channel}:{job.subscription.name}"
        job = Job(job.routed, job.subscription, job.department, job.delivery_id,
                  entry.threads.get(thread_key))  # fmt: skip
        channel = job.subscription.channel
        started = time.perf_counter()
        try:
            done, attempts = await self._attempt(job)
        except DeliveryError as error:
            return self._parked(job, error)
        self.breakers[channel].record(True)
        # Read again: other targets of the conversation may have recorded theirs meanwhile.
        # No await from here to the put, so none can slip in between.
        entry = self.ledger.get(conversation) or entry
        threads = dict(entry.threads)
        if done.action in ("created", "commented") and done.external_id:
            threads[thread_key] = done.external_id
        recorded = entry.model_copy(
            update={
                "deliveries": {**entry.deliveries, job.delivery_id: done.external_id},
                "threads": threads,
                "updated_at": utc_now(),
            }
        )
        # Recorded at once, not with the batch: the effect happened, whatever comes next.
        await publish(self.producer, [self.ledger.put(conversation, recorded)], self.name)
        metrics.DELIVERIES.labels(channel, "delivered").inc()
        metrics.DELIVERY_SECONDS.labels(channel).observe(time.perf_counter() - started)
        self.parked.discard(job.delivery_id)
        metrics.DLQ_SIZE.set(len(self.parked))
        return self._delivery(job, "delivered", attempts, done=done)

    async def _attempt(self, job: Job) -> tuple[Done, int]:
        name = job.subscription.channel
        if not self.breakers[name].allow():
            raise CircuitOpen(name)
        await self.limiters[name].wait()
        policy = self.options.delivery
        return await with_retries(
            lambda: self.channels[name].deliver(job), name, policy.attempts, policy.max_wait_s
        )

    def _parked(self, job: Job, error: DeliveryError) -> Delivery:
        channel = job.subscription.channel
        if not isinstance(error, CircuitOpen):
            self.breakers[channel].record(False)
        reason = "circuit_open" if isinstance(error, CircuitOpen) else (
            "waiting" if error.retry_at else
            "retries_exhausted" if error.retryable else "rejected"
        )  # fmt: skip
        metrics.DELIVERIES.labels(channel, "failed").inc()
        metrics.PARKED.labels(channel, reason).inc()
        self.parked.add(job.delivery_id)
        metrics.DLQ_SIZE.set(len(self.parked))
        retry_at = datetime.fromtimestamp(error.retry_at, UTC) if error.retry_at else None
        log.log(
            logging.WARNING if retry_at else logging.ERROR,
            "delivery parked",
            extra={"tweet_id": job.routed.tweet.id, "delivery_id": job.delivery_id,
                   "reason": reason, "error": str(error),
                   "retry_at": retry_at.isoformat() if retry_at else None},
        )  # fmt: skip
        parked = self._delivery(job, "failed", error.attempts, error=str(error))
        if retry_at is not None:
            parked = parked.model_copy(update={"retry_at": retry_at})
            self.due.schedule(parked)
        return parked

    def _delivery(
        self, job: Job, outcome: str, attempts: int, *, done: Done | None = None,
        error: str | None = None,
    ) -> Delivery:  # fmt: skip
        trace = job.routed.trace
        if outcome == "delivered":
            trace = trace.model_copy(update={"delivered_at": utc_now()})
            metrics.E2E_LATENCY.labels("delivered").observe(
                (trace.delivered_at - trace.ingested_at).total_seconds()  # type: ignore[operator]
            )
        return Delivery(
            delivery_id=job.delivery_id,
            tweet_id=job.routed.tweet.id,
            conversation_id=job.routed.tweet.conversation_id,
            channel=job.subscription.channel,
            target=job.subscription.name,
            department=job.department,
            urgency=job.routed.classification.urgency,
            outcome=outcome,  # type: ignore[arg-type]
            attempts=attempts,
            error=error,
            action=done.action if done else None,
            external_id=done.external_id if done else None,
            routed=job.routed if outcome == "failed" else None,
            trace=trace,
        )

    async def close(self) -> None:
        self._ready = False
        await self.consumer.stop()
        await self.producer.stop()
        for channel in self.channels.values():
            await channel.close()
        await self.digests.mailer.close()


class _RestoreOnAssignment(ConsumerRebalanceListener):
    """The ledger is keyed by conversation like the department topics: reload the partitions
    just assigned, to see what another replica did while it owned them."""

    def __init__(self, service: NotifyService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        """Nothing to hand over: every effect is already on the ledger."""

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        partitions = {tp.partition for tp in assigned}
        if partitions:
            await self.service.ledger.restore(partitions)


def main(**overrides: object) -> None:
    """Run the notify service until SIGTERM or SIGINT; ``overrides`` replace settings."""
    settings = NotifySettings.load(**overrides)
    asyncio.run(run_service(NotifyService, settings))
