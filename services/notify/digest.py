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
A tweet published twice (notify restarted before committing it) is kept once: each kept
tweet is marked by its id until its digest is sent.

The email lists the first ``PendingDigest.SHOWN`` tweets and counts the rest ("and N more":
each is on its department's topic, not in the email), every tweet is kept until its digest
went out, and a digest holding ``PendingDigest.FULL`` is due at once: a burst makes several
digests, each bounded. A digest the relay
refuses for good (a 5xx reply: no such mailbox, a message too large), or that failed
``DIGEST_ATTEMPTS`` times in a row, is not tried again: every tweet it kept goes out one by
one as a redriven delivery of the subscription, each retried and parked on the DLQ with its
reason like any delivery, so nothing is lost to a digest that can never be sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import aiosmtplib
import faust

from switchboard.notify import metrics
from switchboard.notify.config import NotifyConfig, Subscription
from switchboard.notify.mail import SmtpMailer, count_refused, render_digest
from switchboard.shared import metrics as shared_metrics
from switchboard.shared import topics
from switchboard.shared.events import (
    DecodeError,
    DigestDue,
    DigestItem,
    PendingDigest,
    RedriveRequest,
    RoutedTweet,
    decode_digest,
    encode,
)
from switchboard.shared.kafka import Output, dead_letter_record, publish
from switchboard.shared.labels import Department
from switchboard.shared.streams import (
    StreamWorker,
    changelog_writes,
    crash_for_the_stage,
    publish_from_timer,
    raw_topic,
    table_value,
    the_stages_fault,
)

log = logging.getLogger(__name__)

SWEEP_EVERY_S = 1.0  # how often the owner looks for due digests
DIGEST_ATTEMPTS = 12  # periods in a row a digest may fail before its tweets go one by one
HANDED_OVER_AT_ONCE = 500  # tweets per publish when a digest goes out one by one


def header_key(subscription: str) -> bytes:
    return b"h\x00" + subscription.encode("utf-8")


def item_key(subscription: str, number: int) -> bytes:
    return b"i\x00" + subscription.encode("utf-8") + b"\x00" + b"%010d" % number


def kept_key(subscription: str, tweet_id: str) -> bytes:
    """Marks a tweet kept in the subscription's pending digest: a tweet published again
    after a crash of notify (at least once) is then not kept twice."""
    return b"t\x00" + subscription.encode("utf-8") + b"\x00" + tweet_id.encode("utf-8")


def counted(pending: PendingDigest | None, subscription: str, now: datetime) -> PendingDigest:
    """``pending`` with one more tweet, kept under number ``next``."""
    if pending is None:
        pending = PendingDigest(subscription=subscription, since=now)
    return pending.model_copy(update={"count": pending.count + 1, "next": pending.next + 1})


def after_sent(current: PendingDigest, sent: PendingDigest, now: datetime) -> PendingDigest | None:
    """What waits after ``sent`` went out, given the table now holds ``current`` (tweets may
    have arrived while the email was on its way): the tweets numbered from ``sent.next`` on,
    and the count beyond the sent one; None when nothing arrived."""
    left = current.count - sent.count
    if left <= 0:
        return None
    return PendingDigest(
        subscription=current.subscription, count=left, first=sent.next, next=current.next,
        since=now,
    )  # fmt: skip


def _refused_for_good(error: Exception) -> bool:
    """The relay refused this message for good (RFC 5321's 5xx): its sender, its content, or
    every recipient. A refused login, TLS or greeting is the relay's configuration, not the
    digest's: that is tried again, and would fail any message."""
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused):
        return bool(error.recipients) and all(r.code >= 500 for r in error.recipients)
    refusals = (aiosmtplib.SMTPSenderRefused, aiosmtplib.SMTPDataError)
    return isinstance(error, refusals) and error.code >= 500


def due_at(pending: PendingDigest, subscription: Subscription) -> datetime:
    """A period after the first tweet, at once when the digest is full, and at the retry
    after a failed send (a full digest too: the relay is not asked again sooner)."""
    if pending.retry_at is not None:
        return pending.retry_at
    if pending.kept >= PendingDigest.FULL:
        return pending.since
    return pending.since + timedelta(minutes=subscription.digest_minutes or 0)


def digest_id(pending: PendingDigest, items: list[RoutedTweet]) -> str:
    """The same tweets give the same id, hence the same Message-ID when sent again."""
    ids = ",".join(r.tweet.id for r in items) + f"+{pending.count}"
    return f"digest:{pending.subscription}:{hashlib.sha256(ids.encode()).hexdigest()[:16]}"


class Digests:
    """notify's digests: the table, its agent and its sweep, on notify's faust app."""

    def __init__(
        self,
        streams: StreamWorker,
        options: NotifyConfig,
        mailer: SmtpMailer,
        sender: Any,
        names: dict[str, str] | None = None,
    ) -> None:
        self.options = options
        self.names = names  # the departments' display names, by code
        self.sender = sender  # what publishes: the faust producer behind kafka.publish's send
        self.subscriptions = {s.name: s for s in options.subscriptions if s.digest_minutes}
        self.every_subscription = {s.name: s for s in options.subscriptions}
        self._strays_looked_for = False  # digests of subscriptions no longer digesting
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
        self.app.on_partitions_assigned.connect(self._on_rebalance)

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
            shared_metrics.CONSUMED.labels("notify", message.topic).inc()
            try:
                event = decode_digest(message.value)
                if isinstance(event, DigestItem):
                    self.on_item(event)
                else:
                    await self.on_due(event)
            except DecodeError as problem:
                await self._dead_letter(problem, message)
            except Exception as error:  # noqa: BLE001 - one bad record never stops the digests
                if the_stages_fault(error):  # the disk or Kafka: read again after a restart
                    await self._stage_failed(error)
                log.error("a digest record failed processing; dead-lettered", exc_info=error)
                problem = DecodeError(
                    "processing_failed", f"{type(error).__name__}: {error}"[:2000]
                )
                await self._dead_letter(problem, message)
            try:  # the table's writes for it reached the broker before faust acknowledges it
                await changelog_writes(self.app).settled()
            except Exception as error:  # noqa: BLE001 - a changelog write the broker refused
                await self._stage_failed(error)

    async def _dead_letter(self, problem: DecodeError, message: Any) -> None:
        try:
            await publish(self.sender, [dead_letter_record("notify", problem, message)], "notify")
        except Exception as error:  # noqa: BLE001 - not even the dead letter could be published
            await self._stage_failed(error)

    async def _stage_failed(self, error: BaseException) -> None:
        """Crash the app and park here: faust acknowledges the event being handled when its
        loop goes on or ends, so it must do neither; the next process reads it again."""
        await crash_for_the_stage(self.app, error)
        await asyncio.Event().wait()  # parked until the service stops

    def on_item(self, item: DigestItem) -> None:
        mark = kept_key(item.subscription, item.routed.tweet.id)
        if mark in self.table:  # published again after a crash: it is already waiting
            return
        key = header_key(item.subscription)
        pending = table_value(PendingDigest, self.table.get(key), "digests")
        updated = counted(pending, item.subscription, datetime.now(UTC))
        self.table[item_key(item.subscription, updated.next - 1)] = encode(item)
        self.table[mark] = b"%d" % (updated.next - 1)
        self.table[key] = encode(updated)

    async def on_due(self, due: DigestDue) -> None:
        self._asked.discard(due.subscription)
        key = header_key(due.subscription)
        pending = table_value(PendingDigest, self.table.get(key), "digests")
        subscription = self.subscriptions.get(due.subscription)
        now = datetime.now(UTC)
        if pending is not None and subscription is None:
            await self._stray(pending)
            return
        if pending is None or subscription is None or now < due_at(pending, subscription):
            return
        shown = self.kept(pending, PendingDigest.SHOWN)
        outcome, deferred = await self._send(subscription, pending, shown)
        if deferred:  # the relay turned some recipients away: theirs go one by one
            await self._one_by_one(subscription, pending, recipients=deferred)
        if outcome == "failed" and pending.failures + 1 < DIGEST_ATTEMPTS:
            period = timedelta(minutes=subscription.digest_minutes or 1)
            retry = {"retry_at": now + period, "failures": pending.failures + 1}
            self.table[key] = encode(pending.model_copy(update=retry))
            return
        if outcome != "sent":
            await self._one_by_one(subscription, pending)
        self._forget(pending)
        current = table_value(PendingDigest, self.table.get(key), "digests") or pending
        left = after_sent(current, pending, datetime.now(UTC))
        if left is None:
            del self.table[key]
        else:
            self.table[key] = encode(left)

    def kept(self, pending: PendingDigest, limit: int | None = None) -> list[RoutedTweet]:
        """The digest's tweets in order of arrival, the first ``limit`` of them if given."""
        last = pending.next if limit is None else min(pending.next, pending.first + limit)
        return self._read(pending.subscription, range(pending.first, last))

    def _read(self, subscription: str, numbers: range) -> list[RoutedTweet]:
        items = (
            table_value(DigestItem, self.table.get(item_key(subscription, n)), "digests")
            for n in numbers
        )
        return [item.routed for item in items if item is not None]

    def _forget(self, pending: PendingDigest) -> None:
        """Remove the tweets the digest kept, and their marks, once it went out."""
        for number in range(pending.first, pending.next):
            raw = self.table.pop(item_key(pending.subscription, number), None)
            item = table_value(DigestItem, raw, "digests")
            if item is not None:
                self.table.pop(kept_key(pending.subscription, item.routed.tweet.id), None)

    async def _stray(self, pending: PendingDigest) -> None:
        """A digest kept for a subscription the file no longer gives digests (its
        ``digest_minutes`` gone, or the subscription itself): its tweets go out one by one to
        the subscription if it is still there, else they are dropped, logged with their count
        (their email target is gone; each is on its department's topic)."""
        subscription = self.every_subscription.get(pending.subscription)
        if subscription is not None and subscription.channel == "email":
            await self._one_by_one(subscription, pending)
        else:
            gone = {"subscription": pending.subscription, "tweets": pending.kept}
            log.error("a pending digest of a subscription no longer in the file is dropped",
                      extra=gone)  # fmt: skip
        self._forget(pending)
        del self.table[header_key(pending.subscription)]

    def _strays(self) -> list[str]:
        """The subscriptions whose digests this replica holds that no longer give digests;
        read once after each rebalance (a scan of the table's keys)."""
        names = (key[2:].decode("utf-8") for key in self.table if key.startswith(b"h\x00"))
        return [name for name in names if name not in self.subscriptions]

    async def sweep(self) -> None:
        """The timer: ask the owner of each due digest (this replica's partitions) to send it,
        and of each digest whose subscription gives none any more (``_stray``)."""
        if self.app.rebalancing or self.app.in_recovery:
            return
        now = datetime.now(UTC)
        outputs = []
        if not self._strays_looked_for:
            self._strays_looked_for = True
            for name in self._strays():
                self._asked.add(name)
                due = DigestDue(subscription=name, found_at=now)
                outputs.append(Output.of(topics.NOTIFICATIONS_DIGESTS, due, key=name))
        for name, subscription in self.subscriptions.items():
            if name in self._asked:
                continue
            # A replica holds only its partitions' keys: another's subscriptions are absent.
            pending = table_value(PendingDigest, self.table.get(header_key(name)), "digests")
            if pending is not None and now >= due_at(pending, subscription):
                self._asked.add(name)
                due = DigestDue(subscription=name, found_at=now)
                outputs.append(Output.of(topics.NOTIFICATIONS_DIGESTS, due, key=name))
        if outputs and not await publish_from_timer(self.sender, outputs, "notify", "digest-sweep"):
            self._asked.difference_update(o.key.decode() for o in outputs if o.key)

    async def _on_rebalance(self, *_: Any, **__: Any) -> None:
        self._asked.clear()  # the new owner asks again
        self._strays_looked_for = False

    async def _send(
        self, subscription: Subscription, pending: PendingDigest, items: list[RoutedTweet]
    ) -> tuple[Literal["sent", "failed", "refused"], list[str]]:
        """Send the digest: ``refused`` when the relay refused it for good (5xx); with the
        recipients it turned away (for now or for good) while the others got it."""
        identity = digest_id(pending, items)
        message = render_digest(
            items, pending.count, subscription, self.options.email, identity, self.names
        )
        try:
            refused = await self.mailer.send(message)
        except Exception as exc:  # noqa: BLE001 - any failure: keep the tweets, try next period
            metrics.DELIVERIES.labels("email_digest", "failed").inc()
            refused = _refused_for_good(exc)
            log.error("digest not sent; " + ("refused" if refused else "kept for the next try"),
                      extra={"subscription": subscription.name, "error": str(exc)})  # fmt: skip
            return ("refused" if refused else "failed"), []
        if refused:  # the others have it: the digest is not sent to them again
            count_refused(subscription.name, refused)
            log.warning("the mail relay refused some recipients of a digest; the others got it",
                        extra={"subscription": subscription.name, "refused": refused})  # fmt: skip
        metrics.DELIVERIES.labels("email_digest", "delivered").inc()
        log.info("digest sent", extra={"subscription": subscription.name, "tweets": pending.count})
        return "sent", list(refused)

    async def _one_by_one(
        self,
        subscription: Subscription,
        pending: PendingDigest,
        recipients: list[str] | None = None,
    ) -> None:
        """Hand every tweet the digest kept over as a delivery of its own (redriven, so
        retried and parked like any), before the digest forgets them: to every recipient, or
        to ``recipients`` alone (those the relay turned away: one refused for good parks each
        for a person to redrive once the address is right). In slices, so a digest that grew
        over failed periods is never read whole."""
        delivered = [r for r in subscription.to if r not in recipients] if recipients else None
        numbers = range(pending.first, pending.next)
        for start in range(0, len(numbers), HANDED_OVER_AT_ONCE):
            tweets = self._read(subscription.name, numbers[start : start + HANDED_OVER_AT_ONCE])
            requests = [
                Output.of(topics.NOTIFICATIONS_REDRIVE, RedriveRequest(
                    delivery_id=f"{routed.tweet.id}:email:{subscription.name}",
                    subscription=subscription.name, department=routed.route.department,
                    routed=routed, delivered_to=delivered, recipients=recipients,
                ), key=routed.tweet.conversation_id)
                for routed in tweets
            ]  # fmt: skip
            await publish(self.sender, requests, "notify")
        metrics.DELIVERIES.labels("email_digest", "one_by_one").inc()
        # An earlier version counted tweets beyond the listed hundred without keeping them.
        log.error("a digest that cannot be sent goes out one tweet at a time",
                  extra={"subscription": subscription.name, "tweets": pending.kept,
                         "counted_not_kept": pending.count - pending.kept,
                         "recipients": recipients or "all"})  # fmt: skip
