"""Digests: the tweets of email subscriptions with ``digest_minutes`` (for the urgencies in
``digest_urgencies``), sent as one email per subscription and period instead of one each.

notify's main agent publishes each such tweet as a ``DigestItem`` on
``switchboard.notifications.digests``, keyed by subscription name, as one of the tweet's
outputs (acknowledged before the tweet's offset is committed). The digests agent keeps them in
the faust table ``digests`` (changelog: the compacted ``switchboard.notifications.digest_state``),
so a subscription's pending digest belongs to the partition of its name: after a rebalance only
the owner holds it, and a restart restores it. A timer asks the owner to send each digest that
is due (``DigestDue`` on the same topic); the owner sends it and only then removes what it sent
from the table. A crash between the two sends the same digest again with the same
``Message-ID`` (derived from the tweets in it), which mail systems use to drop the copy.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import faust

from switchboard.notify.mail import SmtpMailer, render_digest
from switchboard.shared import metrics, topics
from switchboard.shared.config import NotifyConfig, Subscription
from switchboard.shared.events import (
    DecodeError,
    DigestDue,
    DigestItem,
    PendingDigest,
    RoutedTweet,
    decode_digest,
    encode,
)
from switchboard.shared.kafka import Output, dead_letter_record, publish
from switchboard.shared.labels import Department
from switchboard.shared.streams import StreamWorker, raw_topic, table_value

log = logging.getLogger(__name__)

SWEEP_EVERY_S = 1.0  # how often the owner looks for due digests


def with_item(pending: PendingDigest | None, item: DigestItem, now: datetime) -> PendingDigest:
    """``pending`` with one more tweet: listed while fewer than ``SHOWN`` are, else counted."""
    if pending is None:
        pending = PendingDigest(subscription=item.subscription, since=now)
    tweets = pending.tweets
    if len(tweets) < PendingDigest.SHOWN:
        tweets = [*tweets, item.routed]
    return pending.model_copy(update={"tweets": tweets, "count": pending.count + 1})


def after_sent(current: PendingDigest, sent: PendingDigest, now: datetime) -> PendingDigest | None:
    """What waits after ``sent`` went out, given the table now holds ``current`` (tweets may
    have arrived while the email was on its way): the tweets beyond those sent, or None."""
    left = current.count - sent.count
    if left <= 0:
        return None
    return PendingDigest(
        subscription=current.subscription,
        tweets=current.tweets[len(sent.tweets) :],
        count=left,
        since=now,
    )


def due_at(pending: PendingDigest, subscription: Subscription) -> datetime:
    period = timedelta(minutes=subscription.digest_minutes or 0)
    return pending.retry_at or pending.since + period


def digest_id(pending: PendingDigest) -> str:
    """The same tweets give the same id, hence the same Message-ID when sent again."""
    ids = ",".join(r.tweet.id for r in pending.tweets) + f"+{pending.count}"
    return f"digest:{pending.subscription}:{hashlib.sha256(ids.encode()).hexdigest()[:16]}"


class Digests:
    """notify's digests: the table, its agent and its sweep, on notify's faust app."""

    def __init__(
        self, streams: StreamWorker, options: NotifyConfig, mailer: SmtpMailer, sender: Any
    ) -> None:
        self.options = options
        self.sender = sender  # what publishes: the faust producer behind kafka.publish's send
        self.subscriptions = {s.name: s for s in options.subscriptions if s.digest_minutes}
        self.mailer = mailer
        self.app = streams.app
        self.table = streams.table(
            "digests", topics.NOTIFICATIONS_DIGEST_STATE, help="PendingDigest by subscription"
        )
        self._asked: set[str] = set()  # subscriptions whose DigestDue is on its way
        self.app.agent(raw_topic(self.app, topics.NOTIFICATIONS_DIGESTS), name="notify-digests")(
            self.agent
        )
        self.app.timer(SWEEP_EVERY_S, name="digest-sweep")(self.sweep)
        self.app.on_partitions_revoked.connect(self._on_rebalance)

    def items(self, routed: RoutedTweet, department: Department) -> list[Output]:
        """The tweet for each digest subscription that collects it (``routed`` is redacted)."""
        urgency = routed.classification.urgency
        return [
            Output.of(topics.NOTIFICATIONS_DIGESTS, DigestItem(subscription=name, routed=routed),
                      key=name)
            for name, s in self.subscriptions.items()
            if s.matches(department, urgency) and s.digests(urgency)
        ]  # fmt: skip

    async def agent(self, stream: faust.StreamT) -> None:
        """One event at a time, so a digest being sent and the tweets arriving meanwhile do not
        race on the table; faust acknowledges each event once the next is asked for."""
        async for event in stream.events():
            message = event.message
            metrics.CONSUMED.labels("notify", message.topic).inc()
            try:
                event = decode_digest(message.value)
                if isinstance(event, DigestItem):
                    self.on_item(event)
                else:
                    await self.on_due(event)
            except DecodeError as problem:
                await publish(
                    self.sender, [dead_letter_record("notify", problem, message)], "notify"
                )
            except Exception as error:  # noqa: BLE001 - one bad record never stops the digests
                log.error("a digest record failed processing; dead-lettered", exc_info=error)
                problem = DecodeError(
                    "processing_failed", f"{type(error).__name__}: {error}"[:2000]
                )
                await publish(
                    self.sender, [dead_letter_record("notify", problem, message)], "notify"
                )

    def on_item(self, item: DigestItem) -> None:
        key = item.subscription.encode("utf-8")
        pending = table_value(PendingDigest, self.table.get(key), "digests")
        self.table[key] = encode(with_item(pending, item, datetime.now(UTC)))

    async def on_due(self, due: DigestDue) -> None:
        self._asked.discard(due.subscription)
        key = due.subscription.encode("utf-8")
        pending = table_value(PendingDigest, self.table.get(key), "digests")
        subscription = self.subscriptions.get(due.subscription)
        now = datetime.now(UTC)
        if pending is None or subscription is None or now < due_at(pending, subscription):
            return
        if not await self._send(subscription, pending):
            period = timedelta(minutes=subscription.digest_minutes or 1)
            self.table[key] = encode(pending.model_copy(update={"retry_at": now + period}))
            return
        current = table_value(PendingDigest, self.table.get(key), "digests") or pending
        left = after_sent(current, pending, datetime.now(UTC))
        if left is None:
            del self.table[key]
        else:
            self.table[key] = encode(left)

    async def sweep(self) -> None:
        """The timer: ask the owner of each due digest (this replica's partitions) to send it."""
        if not self.subscriptions or self.app.rebalancing or self.app.in_recovery:
            return
        now = datetime.now(UTC)
        outputs = []
        for value in list(self.table.values()):
            pending = table_value(PendingDigest, value, "digests")
            subscription = self.subscriptions.get(pending.subscription) if pending else None
            if pending is None or subscription is None or pending.subscription in self._asked:
                continue
            if now >= due_at(pending, subscription):
                self._asked.add(pending.subscription)
                due = DigestDue(subscription=pending.subscription, found_at=now)
                outputs.append(Output.of(topics.NOTIFICATIONS_DIGESTS, due, key=due.subscription))
        if outputs:
            await publish(self.sender, outputs, "notify")

    async def _on_rebalance(self, *_: Any, **__: Any) -> None:
        self._asked.clear()  # the new owner asks again

    async def _send(self, subscription: Subscription, pending: PendingDigest) -> bool:
        message = render_digest(pending, subscription, self.options.email, digest_id(pending))
        try:
            await self.mailer.send(message)
        except Exception as exc:  # noqa: BLE001 - any failure: keep the tweets, try next period
            metrics.DELIVERIES.labels("email_digest", "failed").inc()
            log.error("digest not sent; kept for the next try",
                      extra={"subscription": subscription.name, "error": str(exc)})  # fmt: skip
            return False
        metrics.DELIVERIES.labels("email_digest", "delivered").inc()
        log.info("digest sent", extra={"subscription": subscription.name, "tweets": pending.count})
        return True
