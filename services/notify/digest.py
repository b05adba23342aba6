"""Digests: the low-urgency tweets of email subscriptions with ``digest_minutes``, sent as one
email per subscription and period instead of one email each.

The tweets are collected by a consumer group of their own (``switchboard-notify-digest``),
whose offsets are committed only after every collected digest went out: a crash before that
re-reads the same tweets and the digest is built again, so nothing is lost. A crash between
sending and committing sends the digest again with the same ``Message-ID`` (derived from the
tweets in it), which mail systems use to drop the copy.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import defaultdict

from aiokafka import ConsumerRecord

from switchboard.notify.mail import SmtpMailer, render_digest
from switchboard.notify.sanitize import redacted
from switchboard.notify.settings import NotifySettings
from switchboard.shared import metrics, topics
from switchboard.shared.config import Subscription
from switchboard.shared.events import DecodeError, RoutedTweet, decode
from switchboard.shared.kafka import make_consumer
from switchboard.shared.labels import Department

log = logging.getLogger(__name__)

GROUP_ID = "switchboard-notify-digest"


class DigestWorker:
    def __init__(self, settings: NotifySettings, mailer: SmtpMailer) -> None:
        self.options = settings.config.notify
        self.subscriptions = [s for s in self.options.subscriptions if s.digest_minutes]
        self.mailer = mailer
        self.pending: dict[str, list[RoutedTweet]] = defaultdict(list)
        self._due: dict[str, float] = {}
        self.consumer = (
            make_consumer(settings.kafka, list(topics.DEPARTMENT_TOPICS), GROUP_ID, GROUP_ID)
            if self.subscriptions
            else None
        )

    async def run(self, stop: asyncio.Event) -> None:
        if self.consumer is None:
            return
        await self.consumer.start()
        try:
            while not stop.is_set():
                batches = await self.consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    for record in records:
                        self.collect(record)
                await self.flush_due(time.monotonic())
        finally:
            await self.consumer.stop()

    def collect(self, record: ConsumerRecord) -> None:
        try:
            routed = redacted(decode(RoutedTweet, record.value), self.options.redact)
        except DecodeError:
            return  # the immediate path dead-letters it
        department = Department(record.topic.removeprefix(topics.DEPARTMENT_PREFIX))
        urgency = routed.classification.urgency
        for subscription in self.subscriptions:
            if subscription.matches(department, urgency) and subscription.digests(urgency):
                self.pending[subscription.name].append(routed)
                self._due.setdefault(
                    subscription.name, time.monotonic() + 60 * subscription.digest_minutes
                )

    async def flush_due(self, now: float) -> None:
        for subscription in self.subscriptions:
            items = self.pending.get(subscription.name)
            due = bool(items) and now >= self._due.get(subscription.name, now)
            if due and await self._send(subscription, items or []):
                self.pending.pop(subscription.name)
                self._due.pop(subscription.name, None)
        if self.consumer is not None and not any(self.pending.values()):
            await self.consumer.commit()  # everything read so far is in a sent digest

    async def _send(self, subscription: Subscription, items: list[RoutedTweet]) -> bool:
        ids = ",".join(r.tweet.id for r in items)
        digest_id = f"digest:{subscription.name}:{hashlib.sha256(ids.encode()).hexdigest()[:16]}"
        message = render_digest(items, subscription, self.options.email, digest_id)
        try:
            await self.mailer.send(message)
        except Exception as exc:  # noqa: BLE001 - any failure: keep the items, try next period
            metrics.DELIVERIES.labels("email_digest", "failed").inc()
            log.error("digest not sent; kept for the next try",
                      extra={"subscription": subscription.name, "error": str(exc)})  # fmt: skip
            self._due[subscription.name] = time.monotonic() + 60 * (
                subscription.digest_minutes or 1
            )
            return False
        metrics.DELIVERIES.labels("email_digest", "delivered").inc()
        log.info("digest sent", extra={"subscription": subscription.name, "tweets": len(items)})
        return True
