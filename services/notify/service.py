"""The notify service: tells the people and systems subscribed to a department about its tweets.

A faust-streaming app. Its agent consumes the department topics,
``switchboard.notifications.redrive`` and its own ``switchboard.notifications.due``, all keyed by
conversation id and co-partitioned. For each routed tweet and each matching subscription in
``notify.subscriptions`` it makes one effect on the subscription's channel (email, signed
webhook, Zendesk, Jira, Salesforce, HubSpot), and publishes a Delivery on
``switchboard.notifications.deliveries``, or, after the last retry, on
``switchboard.notifications.dlq`` with the error and the routed tweet. A parked delivery is kept
in the faust table ``parked`` of its conversation's partition until it is done: one that may
succeed later (the target was down, its circuit open, or it asked for a long wait) is redriven
by itself when due; a rejection waits for ``switchboard dlq redrive``.

Exactly-once effects: each effect is recorded in the faust table ``ledger`` (its changelog is
the compacted ``switchboard.notifications.ledger``) as soon as it succeeded, keyed by
conversation; a restart or a redelivery skips what the ledger holds, and the vendors' own
idempotency (Zendesk Idempotency-Key and external_id, Jira labels, CRM upserts, webhook
Idempotency-Key, a stable email Message-ID) covers the moment in between. A replica holds the
ledger of its own partitions only. Follow-ups in a conversation go to the same ticket or issue.
Tweets are delivered concurrently (a vendor's round trip each), except that the deliveries of
one conversation to one target run in order; each channel has its own circuit breaker and rate
limit, so one failing target never blocks the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import jinja2
from fastapi import FastAPI

from switchboard.notify import metrics
from switchboard.notify.channels import (
    Channel,
    Done,
    Job,
    channels_for,
    delivered_to,
    still_owed,
)
from switchboard.notify.config import Subscription
from switchboard.notify.digest import Digests
from switchboard.notify.dlq import ParkedIndex, dlq_router, forgettable
from switchboard.notify.mail import SmtpMailer
from switchboard.notify.resilience import (
    CircuitBreaker,
    CircuitOpen,
    DeliveryError,
    RedrivePolicy,
    next_redrive,
    with_retries,
)
from switchboard.notify.sanitize import redacted
from switchboard.notify.settings import NotifySettings
from switchboard.shared import metrics as shared_metrics
from switchboard.shared import topics
from switchboard.shared.access import AccessPolicy
from switchboard.shared.events import (
    Delivery,
    LedgerDue,
    LedgerEntry,
    ParkedDelivery,
    RedriveRequest,
    RoutedTweet,
    encode,
    utc_now,
)
from switchboard.shared.kafka import Output, decode_or_dead_letter, ensure_topics
from switchboard.shared.labels import Department
from switchboard.shared.runtime import http_app, run_service
from switchboard.shared.streams import (
    AckAfterPublish,
    StreamWorker,
    publish_from_timer,
    raw_topic,
    table_value,
)

log = logging.getLogger(__name__)

GROUP_ID = "switchboard-notify"  # the faust app's id: its consumer group and table prefix
# A HubSpot ticket's content shows the conversation's first tweet and its latest, this many
# in all: the ledger keeps them (a few hundred bytes each), and an agent reads the thread at X.
TRANSCRIPT_TWEETS = 10
PARKED_SWEEP_S = 1.0  # how often a replica looks at its parked deliveries (redrives due)
# Deliveries remembered per conversation: a tweet delivered again comes back within a crash's
# or a rebalance's redelivery, long before a conversation has this many more; without a bound
# a viral thread's entry outgrew the largest record the cluster takes, and notify crash-looped.
DELIVERIES_KEPT = 1000


def _names(addresses: list[str] | None) -> tuple[str, ...] | None:
    return tuple(addresses) if addresses else None


def transcript_kept(parts: list[str]) -> list[str]:
    """What the ledger keeps of a thread's tweets for its next upsert: the first complaint,
    which says what the conversation is about, and the latest, ``TRANSCRIPT_TWEETS`` in all."""
    if len(parts) <= TRANSCRIPT_TWEETS:
        return parts
    return [parts[0], *parts[1 - TRANSCRIPT_TWEETS :]]


def with_delivery(
    deliveries: dict[str, str | None], delivery_id: str, external_id: str | None
) -> dict[str, str | None]:
    """The conversation's deliveries with this one, the latest ``DELIVERIES_KEPT`` kept."""
    latest = {**deliveries, delivery_id: external_id}
    return dict(list(latest.items())[-DELIVERIES_KEPT:])


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
        names = settings.config.department_names  # for emails
        self.channels: dict[str, Channel] = channels_for(
            self.options, SmtpMailer(settings.smtp), names
        )
        self.breakers = {
            name: CircuitBreaker(name, policy.circuit_failures, policy.circuit_cooldown_s)
            for name in self.channels
        }
        self.streams = StreamWorker(GROUP_ID, self.name, settings, state_dir=settings.state_dir)
        self.app = self.streams.app
        self.ledger = self.streams.table(
            "ledger", topics.NOTIFICATIONS_LEDGER, help="LedgerEntry by conversation id"
        )
        self.parked = self.streams.table(
            "parked", topics.NOTIFICATIONS_PARKED, help="ParkedDelivery by delivery id"
        )
        self.redrive_policy = RedrivePolicy(
            policy.redrive_after_s, policy.redrive_max_wait_s, policy.redrive_for_hours
        )
        # Inputs at work at once: each waits for its vendors, and offsets commit in order.
        self.acks = AckAfterPublish(self.app, self.name, self.handle, max_in_flight=100)
        inputs = raw_topic(
            self.app, *topics.DEPARTMENT_TOPICS, topics.NOTIFICATIONS_REDRIVE,
            topics.NOTIFICATIONS_DUE,
        )  # fmt: skip
        self.app.agent(inputs, name="notify")(self.acks.agent)
        self.app.timer(self.options.ledger_sweep_s, name="ledger-sweep")(self.sweep_ledger)
        self.app.timer(PARKED_SWEEP_S, name="parked-sweep")(self.sweep_parked)
        self.digests = Digests(
            self.streams, self.options, SmtpMailer(settings.smtp), self.acks.sender, names
        )
        # The latest delivery of each conversation and target: the next one waits for it.
        self._latest: dict[tuple[str, str], asyncio.Task[Delivery]] = {}
        self.parked_index = ParkedIndex()
        self._index_stale = True  # rebuilt from the table once it is restored
        self.app.on_partitions_revoked.connect(self._on_rebalance)
        self.app.on_partitions_assigned.connect(self._on_rebalance)
        self.app.on_partitions_assigned.connect(self._on_assigned)
        self._assigned: set[Any] = set()  # the partitions this replica was last given

    @property
    def ready(self) -> bool:
        return self.streams.ready

    def http_app(self) -> FastAPI:
        app = http_app(self, AccessPolicy.of(self.settings.config.access))
        app.include_router(dlq_router(self.settings.kafka))
        return app

    async def start(self) -> None:
        await ensure_topics(
            self.settings.kafka,
            [*topics.DEPARTMENT_TOPICS, topics.DELIVERIES, topics.NOTIFICATIONS_DLQ,
             topics.NOTIFICATIONS_REDRIVE, topics.NOTIFICATIONS_LEDGER,
             topics.NOTIFICATIONS_PARKED, topics.NOTIFICATIONS_DUE,
             topics.NOTIFICATIONS_DIGESTS, topics.NOTIFICATIONS_DIGEST_STATE, topics.DEADLETTER],
            self.settings.config.topics.partitions,
            self.settings.config.topics.replication_factor,
            co_partitioned=self.streams.joined_topics(),
        )  # fmt: skip
        await self.streams.start()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            self.streams.check()

    async def _on_rebalance(self, app: Any, *_: Any, **__: Any) -> None:
        """Partitions came or went: forget the index now, rebuild it once the table is."""
        self.parked_index.clear()
        self._index_stale = True

    async def _on_assigned(self, app: Any, assigned: set[Any], *_: Any, **__: Any) -> None:
        """Partitions this replica did not hold: what comes next on them may have been in
        flight at their previous owner, which the channels are told."""
        if assigned - self._assigned:
            for channel in self.channels.values():
                channel.partitions_moved()
        self._assigned = set(assigned)

    async def sweep_parked(self) -> None:
        """The timer, over this replica's partitions: count the parked deliveries
        (``switchboard_dlq_size``), ask for a redrive of each whose ``retry_at`` has come, and
        ask the owner to forget those that waited for a person past the ledger's retention.
        Each is asked once per state (its owner then removes it, or parks it again with another
        time); a redrive that races a manual one, or one asked again after a restart, repeats
        no effect: the ledger."""
        if self.app.rebalancing or self.app.in_recovery:
            return
        if self._index_stale:
            self._index_stale = False
            entries = (table_value(ParkedDelivery, v, "parked") for v in self.parked.values())
            self.parked_index.rebuild(entry for entry in entries if entry is not None)
        parked = self.parked_index.by_channel()
        metrics.DLQ_SIZE.clear()  # no await until it is set again: no scrape sees it empty
        for channel in {*self.channels, *parked}:  # a channel whose parked went: 0
            metrics.DLQ_SIZE.labels(channel).set(parked[channel])
        shared_metrics.TABLE_ENTRIES.labels(self.name, topics.NOTIFICATIONS_PARKED).set(
            len(self.parked_index)
        )
        now = datetime.now(UTC)
        retention = timedelta(hours=self.options.ledger_retention_hours)
        redrive, forget = self.parked_index.due(now, retention)
        outputs = [
            Output.of(topics.NOTIFICATIONS_REDRIVE, parked.redrive_request(), conversation)
            for delivery_id, conversation in redrive
            if (parked := self._parked_entry(delivery_id)) is not None
        ] + [
            Output.of(topics.NOTIFICATIONS_DUE,
                      LedgerDue(conversation_id=conversation, found_at=now,
                                delivery_id=delivery_id), conversation)
            for delivery_id, conversation in forget
        ]  # fmt: skip
        if not outputs:
            return
        if await publish_from_timer(self.acks.sender, outputs, self.name, "parked-sweep"):
            log.info("parked deliveries handed to their owner", extra={"count": len(outputs)})
        else:
            self._index_stale = True  # rebuilt, so the next sweep asks again

    def _parked_entry(self, delivery_id: str) -> ParkedDelivery | None:
        return table_value(ParkedDelivery, self.parked.get(delivery_id.encode("utf-8")), "parked")

    async def sweep_ledger(self) -> None:
        """The timer: ask the owner of each ledger entry untouched for
        ``notify.ledger_retention_hours`` to remove it (only this replica's partitions are
        read). It waits while the table is being restored after a rebalance."""
        if self.app.rebalancing or self.app.in_recovery:
            return
        now = datetime.now(UTC)
        expired = self.expired_ledger(now)
        outputs = [
            Output.of(topics.NOTIFICATIONS_DUE, LedgerDue(conversation_id=c, found_at=now), c)
            for c in expired
        ]
        await publish_from_timer(self.acks.sender, outputs, self.name, "ledger-sweep")

    def expired_ledger(self, now: datetime) -> list[str]:
        """Conversations whose ledger entry is older than the retention."""
        oldest = now - timedelta(hours=self.options.ledger_retention_hours)
        entries = [table_value(LedgerEntry, value, "ledger") for value in self.ledger.values()]
        shared_metrics.TABLE_ENTRIES.labels(self.name, topics.NOTIFICATIONS_LEDGER).set(
            len(entries)
        )
        return [e.conversation_id for e in entries if e is not None and e.updated_at < oldest]

    # --- per record, inside its partition's stream ------------------------------------------

    def handle(self, message: Any) -> list[Output] | Coroutine[Any, Any, list[Output]]:
        """What one input record makes notify publish: at once (a dead letter, nothing), or
        when its deliveries are done."""
        if message.topic == topics.NOTIFICATIONS_DUE:
            return self.on_ledger_due(message)
        if message.topic == topics.NOTIFICATIONS_REDRIVE:
            request = decode_or_dead_letter(message, RedriveRequest, self.name)
            if isinstance(request, Output):
                return [request]
            jobs, waiting = self._redrive_jobs(request), []
        else:
            routed = decode_or_dead_letter(message, RoutedTweet, self.name)
            if isinstance(routed, Output):
                return [routed]
            routed = redacted(routed, self.options.redact)  # before any channel sees it
            department = Department(message.topic.removeprefix(topics.DEPARTMENT_PREFIX))
            jobs = [
                Job(routed, subscription, department, delivery_id(routed, subscription))
                for subscription in matching_subscriptions(
                    routed, self.options.subscriptions, department
                )
            ]
            waiting = self.digests.items(routed, department)  # for the digest subscriptions
        if not jobs:
            return waiting
        return self._deliveries([self._started(job) for job in jobs], waiting)

    def _started(self, job: Job) -> asyncio.Task[Delivery]:
        """The job's delivery as a task, started here, in the record's context (the ledger
        writes to the record's partition), after the previous delivery of its conversation to
        its target: a follow-up needs the ticket the first one opened."""
        key = (job.routed.tweet.conversation_id, job.subscription.name)
        previous = self._latest.get(key)
        task = asyncio.create_task(self._deliver_after(previous, job))
        self._latest[key] = task
        task.add_done_callback(lambda done: self._forget_latest(key, done))
        return task

    def _forget_latest(self, key: tuple[str, str], done: asyncio.Task[Delivery]) -> None:
        if self._latest.get(key) is done:
            del self._latest[key]

    async def _deliver_after(self, previous: asyncio.Task[Delivery] | None, job: Job) -> Delivery:
        if previous is not None:
            await asyncio.wait([previous])
        return await self.deliver(job)

    async def _deliveries(
        self, tasks: list[asyncio.Task[Delivery]], outputs: list[Output]
    ) -> list[Output]:
        outputs = list(outputs)
        # Every delivery of the input ends before any failure is raised: one left running
        # after its input was dead-lettered and acknowledged would make its effect unrecorded.
        done = await asyncio.gather(*tasks, return_exceptions=True)
        failure = next((d for d in done if isinstance(d, BaseException)), None)
        if failure is not None:
            raise failure
        for delivery in done:
            delivered = delivery.outcome == "delivered"
            topic = topics.DELIVERIES if delivered else topics.NOTIFICATIONS_DLQ
            outputs.append(Output.of(topic, delivery, key=delivery.conversation_id))
        return outputs

    def on_ledger_due(self, message: Any) -> list[Output]:
        """The sweep found this conversation's ledger entry old; its owner checks again."""
        due = decode_or_dead_letter(message, LedgerDue, self.name)
        if isinstance(due, Output):
            return [due]
        now, retention = datetime.now(UTC), timedelta(hours=self.options.ledger_retention_hours)
        if due.delivery_id is not None:  # a parked delivery nobody redrove
            parked = self._parked_entry(due.delivery_id)
            if parked is not None and forgettable(
                parked.retry_at, parked.parked_at, now, retention
            ):
                # said, so a person can still find it: the DLQ topic keeps the record until
                # its own retention, `switchboard dlq` no longer lists it
                log.warning("a parked delivery nobody redrove is forgotten",
                            extra={"delivery_id": due.delivery_id, "channel": parked.channel,
                                   "parked_at": parked.parked_at.isoformat(),
                                   "error": parked.error})  # fmt: skip
                self._unpark(due.delivery_id)
            return []
        entry = self.ledger_entry(due.conversation_id)
        if entry is not None and entry.updated_at < now - retention:
            del self.ledger[due.conversation_id.encode("utf-8")]
        return []

    def ledger_entry(self, conversation_id: str) -> LedgerEntry | None:
        value = self.ledger.get(conversation_id.encode("utf-8"))
        return table_value(LedgerEntry, value, "ledger")

    def _redrive_jobs(self, request: RedriveRequest) -> list[Job]:
        wanted = [s for s in self.options.subscriptions if s.name == request.subscription]
        if not wanted:
            log.warning("redrive for an unknown subscription", extra={"id": request.delivery_id})
            self._unpark(request.delivery_id)  # removed from the config: nothing to try
            return []
        metrics.REDRIVEN.labels(wanted[0].channel).inc()
        routed = redacted(request.routed, self.options.redact)
        return [Job(routed, wanted[0], request.department, request.delivery_id,
                    delivered_to=_names(request.delivered_to),
                    recipients=_names(request.recipients))]  # fmt: skip

    # --- one delivery ---------------------------------------------------------------------------

    async def deliver(self, job: Job) -> Delivery:
        """Make the job's effect once. When the ledger says it was made already (a redelivery
        after a crash), only the Delivery record is published again, marked ``already_done``:
        the crash may have lost it, and consumers deduplicate by delivery id."""
        conversation = job.routed.tweet.conversation_id
        entry = self.ledger_entry(conversation) or LedgerEntry(conversation_id=conversation)
        if job.delivery_id in entry.deliveries:
            metrics.DELIVERIES.labels(job.subscription.channel, "already_done").inc()
            self._unpark(job.delivery_id)
            done = Done("already_done", entry.deliveries[job.delivery_id])
            return self._delivery(job, "delivered", 0, done=done)
        job = self._with_parked_recipients(job)
        thread_key = f"{job.subscription.channel}:{job.subscription.name}"
        earlier = tuple(entry.transcripts.get(thread_key, ()))
        job = replace(job, thread_id=entry.threads.get(thread_key), earlier=earlier)
        channel = job.subscription.channel
        started = time.perf_counter()
        try:
            done, attempts = await self._attempt(job)
        except DeliveryError as error:
            return self._parked(job, error)
        self.breakers[channel].record(True)
        # Read again: other targets of the conversation may have recorded theirs meanwhile.
        # No await from here to the put, so none can slip in between.
        entry = self.ledger_entry(conversation) or entry
        threads, transcripts = dict(entry.threads), dict(entry.transcripts)
        if done.action in ("created", "commented") and done.external_id:
            threads[thread_key] = done.external_id
        if done.kept is not None:
            kept = [*transcripts.get(thread_key, ()), done.kept]
            transcripts[thread_key] = transcript_kept(kept)
        recorded = entry.model_copy(
            update={
                "deliveries": with_delivery(entry.deliveries, job.delivery_id, done.external_id),
                "threads": threads,
                "transcripts": transcripts,
                "updated_at": utc_now(),
            }
        )
        # Recorded at once, not with the record's outputs: the effect happened, whatever
        # comes next (the table's changelog write is on its way to the broker now).
        self.ledger[conversation.encode("utf-8")] = encode(recorded)
        metrics.DELIVERIES.labels(channel, "delivered").inc()
        metrics.DELIVERY_SECONDS.labels(channel).observe(time.perf_counter() - started)
        self._unpark(job.delivery_id)
        return self._delivery(job, "delivered", attempts, done=done)

    def _with_parked_recipients(self, job: Job) -> Job:
        """Email: whom the relay took it for, by its parked record, when the job does not say
        (its routed record read again after a crash or a rebalance, or a redrive asked by an
        older notify): sent to every recipient again, they would have it twice."""
        if job.subscription.channel != "email" or job.delivered_to is not None:
            return job
        if not self._index_stale and job.delivery_id not in self.parked_index:
            return job
        parked = self._parked_entry(job.delivery_id)
        if parked is None or not parked.delivered_to:
            return job
        return replace(job, delivered_to=tuple(parked.delivered_to))

    async def _attempt(self, job: Job) -> tuple[Done, int]:
        name = job.subscription.channel
        if not self.breakers[name].allow():
            raise CircuitOpen(name)
        policy = self.options.delivery
        return await with_retries(
            lambda: self._deliver_once(job), name, policy.attempts, policy.max_wait_s
        )

    async def _deliver_once(self, job: Job) -> Done:
        """One try. An answer of a shape the channel did not expect (a field missing, a
        vendor's change) fails the delivery, to be tried again and then parked with the
        reason, instead of dead-lettering the tweet with every other target's delivery."""
        try:
            return await self.channels[job.subscription.channel].deliver(job)
        except DeliveryError:
            raise
        except jinja2.TemplateError as error:  # the subscription's own template: fix it, redrive
            raise DeliveryError(
                f"email template: {error}", retryable=False, answered=None
            ) from None
        except Exception as error:  # noqa: BLE001 - parked with the reason, never lost
            log.warning("a delivery failed on an unexpected answer", exc_info=True,
                        extra={"delivery_id": job.delivery_id})  # fmt: skip
            # a vendor's answer of a shape not expected, or a local error: neither says the
            # target is down, nor that it is up
            raise DeliveryError(
                f"unexpected answer: {type(error).__name__}: {error}", retryable=True, answered=None
            ) from None

    def _parked(self, job: Job, error: DeliveryError) -> Delivery:
        channel = job.subscription.channel
        if error.answered is None:  # the target was not reached: nothing either way
            self.breakers[channel].release()
        elif not isinstance(error, CircuitOpen):
            # A target that answered is up, whatever it refused: one subscription's bad
            # project or a hot ticket must not park every other delivery on the channel.
            self.breakers[channel].record(error.answered)
        reason = "circuit_open" if isinstance(error, CircuitOpen) else (
            "waiting" if error.retry_at else
            "retries_exhausted" if error.retryable else "rejected"
        )  # fmt: skip
        metrics.DELIVERIES.labels(channel, "failed").inc()
        metrics.PARKED.labels(channel, reason).inc()
        retry_at = self._park(job, error)
        log.log(
            logging.WARNING if retry_at else logging.ERROR,
            "delivery parked",
            extra={"tweet_id": job.routed.tweet.id, "delivery_id": job.delivery_id,
                   "reason": reason, "error": str(error),
                   "retry_at": retry_at.isoformat() if retry_at else None},
        )  # fmt: skip
        parked = self._delivery(job, "failed", error.attempts, error=str(error))
        return parked.model_copy(update={"retry_at": retry_at})

    def _park(self, job: Job, error: DeliveryError) -> datetime | None:
        """Keep the parked delivery in ``parked`` (in the record's partition) until it is done,
        with the time of its next automatic try, if it gets one; returns that time."""
        before = self._parked_entry(job.delivery_id)
        now = datetime.now(UTC)
        parks, first = (before.parks + 1, before.first_parked_at) if before else (1, now)
        retry_at = next_redrive(error, parks, first, now, self.redrive_policy)
        delivered = error.delivered_to if error.delivered_to is not None else delivered_to(job)
        parked = ParkedDelivery(
            delivery_id=job.delivery_id, channel=job.subscription.channel,
            subscription=job.subscription.name,
            department=job.department, routed=job.routed, retry_at=retry_at, parks=parks,
            first_parked_at=first, parked_at=now, attempts=error.attempts, error=str(error),
            delivered_to=delivered, recipients=still_owed(job.subscription, delivered),
        )  # fmt: skip
        self.parked[job.delivery_id.encode("utf-8")] = encode(parked)
        self.parked_index.track(parked)
        return retry_at

    def _unpark(self, delivery_id: str) -> None:
        # Every delivery done comes here: the index answers "was it parked?" from memory; the
        # table is read only while the index waits to be rebuilt after a rebalance.
        if not self._index_stale and delivery_id not in self.parked_index:
            return
        key = delivery_id.encode("utf-8")
        if key in self.parked:
            del self.parked[key]
        self.parked_index.forget(delivery_id)

    def _delivery(
        self, job: Job, outcome: str, attempts: int, *, done: Done | None = None,
        error: str | None = None,
    ) -> Delivery:  # fmt: skip
        trace = job.routed.trace
        if outcome == "delivered":
            trace = trace.model_copy(update={"delivered_at": utc_now()})
            shared_metrics.E2E_LATENCY.labels("delivered").observe(
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
        await self.streams.stop()
        for channel in self.channels.values():
            await channel.close()
        await self.digests.mailer.close()


def main(**overrides: object) -> None:
    """Run the notify service until SIGTERM or SIGINT; ``overrides`` replace settings."""
    settings = NotifySettings.load(**overrides)
    asyncio.run(run_service(NotifyService, settings))
