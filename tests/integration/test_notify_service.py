"""The notify service: a real SMTP conversation on loopback; failures are parked, not dropped."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import uuid
from email.message import EmailMessage

import aiosmtplib
import pytest
from prometheus_client import REGISTRY

from switchboard.notify.channels import EmailChannel, Job
from switchboard.notify.config import Subscription
from switchboard.notify.digest import header_key
from switchboard.notify.dlq import Filters, parked_deliveries, redrive
from switchboard.notify.mail import SmtpMailer
from switchboard.notify.resilience import DeliveryError
from switchboard.notify.service import NotifyService
from switchboard.notify.settings import NotifySettings, SmtpSettings
from switchboard.shared import topics
from switchboard.shared.broker import free_port
from switchboard.shared.events import Delivery, PendingDigest, decode, encode
from switchboard.shared.settings import KafkaSettings
from tests.conftest import CONFIG_FILE, keys_on_every_partition, wait_for
from tests.factories import a_classified_tweet, routed_from


def routed(tweet_id: str, department: str, urgency: str, text: str, settings: NotifySettings):
    event = a_classified_tweet(
        department,
        0.9,
        urgency,
        id=tweet_id,
        conversation_id=f"conv-{tweet_id}",
        text=text,
        url=f"https://x.com/ana/status/{tweet_id}",
    )
    return routed_from(event)


def notify_settings(
    kafka: KafkaSettings,
    smtp_port: int,
    subscriptions: list[Subscription] | None = None,
    smtp_timeout_s: float | None = None,
    **delivery: object,
) -> NotifySettings:
    """The YAML file's settings, sending to the SMTP server on ``smtp_port``, with these
    subscriptions (else the file's) and ``delivery`` options changed."""
    base = NotifySettings.load(config_file=CONFIG_FILE, kafka=kafka).config
    notify = base.notify.model_copy(update={
        "delivery": base.notify.delivery.model_copy(update=delivery),
        **({"subscriptions": subscriptions} if subscriptions is not None else {}),
    })  # fmt: skip
    timeout = {"timeout_s": smtp_timeout_s} if smtp_timeout_s is not None else {}
    return NotifySettings.load(
        config_file=CONFIG_FILE, kafka=kafka, config=base.model_copy(update={"notify": notify}),
        smtp=SmtpSettings(host="127.0.0.1", port=smtp_port, **timeout),
    )  # fmt: skip


async def test_an_email_reaches_the_subscribers(kafka, producer, read, running, inbox):
    settings = NotifySettings.load(
        config_file=CONFIG_FILE, kafka=kafka, smtp=SmtpSettings(host="127.0.0.1", port=inbox.port)
    )
    complaint = routed(
        "n-1", "customer_service", "high", "@SkylarkHelp my bag is lost QX7H2P", settings
    )
    chatter = routed("n-2", "community", "low", "@SkylarkAir good morning", settings)

    async with running(NotifyService(settings)):
        for event in (complaint, chatter):
            await producer.send_and_wait(
                event.route.topic, encode(event), key=event.tweet.conversation_id.encode()
            )
        records = await read([topics.DELIVERIES], lambda rs: any(r.key == b"conv-n-1" for r in rs))
        await wait_for(lambda: any(ours(m) for m in inbox.messages()))

    # Other tests' routed tweets share the broker; only n-1 and n-2 are this test's.
    [email] = [m for m in inbox.messages() if ours(m)]  # community has no subscription
    body = email.get_body(("plain",)).get_content()
    assert "my bag is lost QX7H2P" in body and "https://x.com/ana/status/n-1" in body
    assert "support-leads@switchboard.example" in email["To"]
    [delivery] = [decode(Delivery, r.value) for r in records if r.key == b"conv-n-1"]
    assert (delivery.outcome, delivery.channel, delivery.target) == (
        "delivered",
        "email",
        "support-leads",
    )
    assert delivery.trace.delivered_at is not None


async def test_a_burst_of_emails_to_a_slow_relay_is_spread_over_its_connections(
    kafka, producer, running, inbox, monkeypatch
):
    """A relay that takes 50 ms per message: twenty emails go over SMTP_CONNECTIONS (3)
    connections, kept open, not one (a queue behind one relay's latency) and not one each."""
    accept = inbox.handler.handle_DATA

    async def slowly(*args: object) -> str:
        await asyncio.sleep(0.05)
        return await accept(*args)

    monkeypatch.setattr(inbox.handler, "handle_DATA", slowly)
    smtp = SmtpSettings(host="127.0.0.1", port=inbox.port, connections=3)
    settings = NotifySettings.load(config_file=CONFIG_FILE, kafka=kafka, smtp=smtp)
    events = [
        routed(f"burst-{i}", "customer_service", "high", f"@SkylarkHelp bag {i} is lost", settings)
        for i in range(20)
    ]
    sent = {event.tweet.id for event in events}

    def mine() -> list:
        return [m for m in inbox.messages() if m["X-Switchboard-Tweet-Id"] in sent]

    for event in events:  # all waiting before notify starts: one batch, delivered concurrently
        await producer.send_and_wait(
            event.route.topic, encode(event), key=event.tweet.conversation_id.encode()
        )
    async with running(NotifyService(settings)):
        await wait_for(lambda: len(mine()) == len(sent))

    assert len({email["X-Peer"] for email in mine()}) == 3


async def test_emails_waiting_for_a_silent_mail_server_share_the_connection_attempts():
    """A relay that accepts and never greets: a burst's emails fail together on the attempts
    made while they waited (one per connection; then each retries with backoff), not one
    timeout after another."""
    accepted = 0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    mailer = SmtpMailer(SmtpSettings(host="127.0.0.1", port=port, timeout_s=0.5, connections=2))
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "a@example.com", "b@example.com", "hi"
    message.set_content("hello")
    try:
        burst = await asyncio.gather(*(mailer.send(message) for _ in range(10)),
                                     return_exceptions=True)  # fmt: skip
        # a relay that never greets: each attempt times out waiting for its greeting
        assert all(isinstance(outcome, aiosmtplib.SMTPTimeoutError) for outcome in burst), burst
        assert accepted == 2  # one attempt per connection, not one per email
        with pytest.raises(aiosmtplib.SMTPTimeoutError):
            await mailer.send(message)
        assert accepted == 3  # a later send tries again
    finally:
        await mailer.close()
        server.close()
        await server.wait_closed()


async def test_a_dead_mail_server_parks_the_delivery(kafka, producer, read, running):
    settings = notify_settings(kafka, free_port(), smtp_timeout_s=1, attempts=2)
    threat = routed("n-3", "legal", "high", "see you in court", settings)

    async with running(NotifyService(settings)):
        await producer.send_and_wait(threat.route.topic, encode(threat), key=b"conv-n-3")
        records = await read(
            [topics.NOTIFICATIONS_DLQ], lambda rs: any(r.key == b"conv-n-3" for r in rs)
        )

    [parked] = [decode(Delivery, r.value) for r in records if r.key == b"conv-n-3"]
    assert parked.outcome == "failed" and parked.attempts == 2
    assert parked.target == "legal-team" and "Connect" in parked.error


async def test_a_recipient_the_relay_refuses_for_good_is_parked_and_redriven_once_corrected(
    kafka, producer, read, running, inbox, caplog
):
    """The relay refuses a mailbox (550), a mistyped address. A subscription whose only
    recipient it is gets its delivery parked at once with the relay's reply (not retried as if
    the relay were down). One whose other recipient the relay took is parked too, for the
    refused address alone, with no automatic redrive (a person must correct it), and the log
    names it. Once the subscription's address is corrected, a redrive sends the email to the
    corrected address: the other recipient is not sent it twice."""
    run = uuid.uuid4().hex[:6]
    gone, kept, fixed = (f"{who}-{run}@switchboard.example" for who in ("gone", "kept", "fixed"))
    inbox.refuse(gone)
    only_gone = Subscription(name=f"only-gone-{run}", departments=["legal"], to=[gone])
    gone_and_kept = Subscription(name=f"gone-and-kept-{run}", departments=["legal"],
                                 to=[gone, kept])  # fmt: skip
    settings = notify_settings(kafka, inbox.port, [only_gone, gone_and_kept])
    threat = routed(f"n9-{run}", "legal", "high", "see you in court", settings)
    key = threat.tweet.conversation_id.encode()
    caplog.set_level("WARNING", logger="switchboard.notify.channels")

    async with running(NotifyService(settings)):
        await producer.send_and_wait(threat.route.topic, encode(threat), key=key)
        records = await read(
            [topics.DELIVERIES, topics.NOTIFICATIONS_DLQ],
            lambda rs: sum(r.key == key for r in rs) >= 2,
        )
    outcomes = {d.target: d for r in records if r.key == key
                for d in [decode(Delivery, r.value)]}  # fmt: skip
    for name in (only_gone.name, gone_and_kept.name):
        parked = outcomes[name]
        assert parked.outcome == "failed" and parked.attempts == 1 and parked.retry_at is None
        assert f"{gone}: 550" in (parked.error or "")
    assert "refused some recipients for good" in (outcomes[gone_and_kept.name].error or "")
    [warning] = [r for r in caplog.records if getattr(r, "refused", None)]
    assert list(warning.refused) == [gone] and warning.refused[gone].startswith("550")
    counted = {"subscription": gone_and_kept.name, "refusal": "for_good"}
    assert REGISTRY.get_sample_value("switchboard_email_recipients_refused_total", counted) == 1
    async with running(NotifyService(settings)):  # the routed record read again (a crash)
        await producer.send_and_wait(threat.route.topic, encode(threat), key=key)
        await read([topics.NOTIFICATIONS_DLQ], lambda rs: sum(r.key == key for r in rs) >= 4)
    assert [m["X-Envelope-To"] for m in inbox.messages()
            if m["X-Switchboard-Tweet-Id"] == threat.tweet.id] == [kept]  # fmt: skip
    [held] = await parked_deliveries(
        kafka, Filters(delivery_id=outcomes[gone_and_kept.name].delivery_id)
    )
    assert held.delivered_to == [kept] and held.recipients == [gone]

    corrected = gone_and_kept.model_copy(update={"to": [fixed, kept]})
    settings = notify_settings(kafka, inbox.port, [only_gone, corrected])
    async with running(NotifyService(settings)):
        assert await redrive(kafka, [held]) == 1
        done = await read([topics.DELIVERIES], lambda rs: any(r.key == key for r in rs))
    [delivered] = [decode(Delivery, r.value) for r in done if r.key == key]
    assert delivered.target == corrected.name and delivered.outcome == "delivered"
    arrivals = [m for m in inbox.messages() if m["X-Switchboard-Tweet-Id"] == threat.tweet.id]
    assert sorted(m["X-Envelope-To"] for m in arrivals) == sorted([kept, fixed])
    assert await parked_deliveries(kafka, Filters(delivery_id=delivered.delivery_id)) == []


async def test_a_recipient_refused_for_now_is_sent_the_email_alone_when_tried_again(
    kafka, producer, read, running, inbox
):
    """Greylisting: the relay refuses one mailbox for now (450) and takes the other. The
    delivery is tried again (retried, parked, redriven by itself) for that mailbox alone, until
    the relay takes it: each recipient gets the email once, though notify restarted between
    the park and the redrive (the parked delivery names whom it is still owed to)."""
    run = uuid.uuid4().hex[:6]
    later, kept = f"later-{run}@switchboard.example", f"kept-{run}@switchboard.example"
    inbox.refuse(later, "450 4.2.0 Greylisted, try again later")
    subscription = Subscription(name=f"grey-{run}", departments=["legal"], to=[later, kept])
    settings = notify_settings(kafka, inbox.port, [subscription], attempts=2, max_wait_s=0.1,
                               redrive_after_s=1.0, redrive_max_wait_s=1.0)  # fmt: skip
    event = routed(f"grey-{run}", "legal", "high", "my lawyer will call", settings)

    async with running(NotifyService(settings)):
        await producer.send_and_wait(event.route.topic, encode(event), key=b"conv-grey")
        parked = await read([topics.NOTIFICATIONS_DLQ], lambda rs: any(
            r.key == event.tweet.conversation_id.encode() for r in rs))  # fmt: skip
    inbox.accept(later)  # the greylisting period is over
    async with running(NotifyService(settings)):  # a new process: nothing kept in memory
        records = await read([topics.DELIVERIES], lambda rs: any(
            r.key == event.tweet.conversation_id.encode() for r in rs))  # fmt: skip

    [first] = [decode(Delivery, r.value) for r in parked
               if r.key == event.tweet.conversation_id.encode()]  # fmt: skip
    assert first.retry_at is not None and f"{later}: 450" in (first.error or "")
    [done] = [decode(Delivery, r.value) for r in records
              if r.key == event.tweet.conversation_id.encode()]  # fmt: skip
    assert done.outcome == "delivered"
    # one arrival per recipient: the kept mailbox is not sent the retries
    arrivals = [m for m in inbox.messages() if m["X-Switchboard-Tweet-Id"] == event.tweet.id]
    assert [m["X-Envelope-To"] for m in arrivals] == [kept, later]
    assert {m["Message-ID"] for m in arrivals} == {done.external_id}


async def test_a_redriven_email_goes_to_those_still_subscribed_its_parked_delivery_did_not_reach(
    kafka, inbox
):
    """A redrive's recipients follow the parked delivery's record of whom the relay took it
    for, not what this process remembers of an earlier try (its partition may have been
    elsewhere meanwhile), and the subscription as it is now: one taken off it while the
    delivery was parked is not mailed. A record of an older notify names those still owed it."""
    run = uuid.uuid4().hex[:6]
    owed, kept = (f"{who}-{run}@switchboard.example" for who in ("owed", "kept"))
    options = NotifySettings.load(config_file=CONFIG_FILE, kafka=kafka).config.notify.email
    subscription = Subscription(name=f"redrive-{run}", departments=["legal"], to=[owed, kept])
    event = routed(f"rd-{run}", "legal", "high", "my lawyer will call", None)  # type: ignore[arg-type]
    job = Job(event, subscription, event.route.department, f"rd-{run}:email")
    channel = EmailChannel(SmtpMailer(SmtpSettings(host="127.0.0.1", port=inbox.port)), options)
    try:
        inbox.refuse(kept, "450 4.2.0 Greylisted, try again later")
        with pytest.raises(DeliveryError) as refused:  # this process remembers: owed has it
            await channel.deliver(job)
        assert refused.value.delivered_to == [owed] and refused.value.retryable
        inbox.accept(kept)
        await channel.deliver(dataclasses.replace(job, delivered_to=(kept,)))  # the record
        removed = subscription.model_copy(update={"to": [kept]})  # owed taken off it
        gone = await channel.deliver(
            dataclasses.replace(
                job, subscription=removed, delivered_to=(kept,), delivery_id=f"{run}:g"
            )
        )
        await channel.deliver(dataclasses.replace(job, recipients=(owed,), delivery_id=f"{run}:o"))
    finally:
        await channel.close()

    arrivals = [m for m in inbox.messages() if m["X-Switchboard-Tweet-Id"] == f"rd-{run}"]
    assert [m["X-Envelope-To"] for m in arrivals] == [owed, owed, owed]
    assert gone.action == "sent"  # nobody left to send it to: done


def ours(email) -> bool:  # noqa: ANN001
    return email["X-Switchboard-Tweet-Id"] in ("n-1", "n-2")


async def test_low_urgency_waits_for_one_digest(kafka, producer, running, inbox, monkeypatch):
    chatter = Subscription(name="community-digest", departments=["community"],
                           urgencies=["low", "normal"], to=["community@switchboard.example"],
                           digest_minutes=60)  # fmt: skip
    settings = notify_settings(kafka, inbox.port, [chatter])
    low = [
        routed(f"d-{i}", "community", "low", f"good morning number {i}", settings) for i in range(3)
    ]
    # Due once it holds the three (read twice, the first would fill it without the third).
    monkeypatch.setattr(PendingDigest, "FULL", len(low))
    normal = routed("d-9", "community", "normal", "when does the store open?", settings)

    async with running(NotifyService(settings)):
        # low[0] twice: what notify reads again when it restarts before committing
        for event in (low[0], *low, normal):
            await producer.send_and_wait(event.route.topic, encode(event), key=b"conv-digest")

        def digest_with_ours() -> list:
            digests = [m for m in inbox.messages() if m["X-Switchboard-Digest-Id"]]
            return [m for m in digests if all(e.tweet.text in body(m) for e in low)]

        def normal_sent() -> bool:
            return any(m["X-Switchboard-Tweet-Id"] == "d-9" for m in inbox.messages())

        await wait_for(lambda: bool(digest_with_ours()) and normal_sent(), timeout_s=30)

    [digest] = digest_with_ours()
    assert body(digest).count(low[0].tweet.text) == 1  # the tweet read twice is listed once
    singles = {m["X-Switchboard-Tweet-Id"] for m in inbox.messages()}
    assert "d-9" in singles and not singles & {"d-0", "d-1", "d-2"}


async def test_a_digest_left_by_a_subscription_that_gives_none_now_goes_out_one_by_one(
    kafka, producer, running, inbox
):
    """Its tweets were kept for an hour's digest; the file then drops the subscription's
    digest_minutes (a new configuration, the pods rolled): each goes out on its own, nothing
    waits for a digest nobody would send. A subscription removed whole drops its digest."""
    run = uuid.uuid4().hex[:6]
    to = f"digest-{run}@switchboard.example"
    hourly = Subscription(name=f"hourly-{run}", departments=["community"], urgencies=["low"],
                          to=[to], digest_minutes=60)  # fmt: skip
    other = hourly.model_copy(update={"name": f"removed-{run}"})
    settings = notify_settings(kafka, inbox.port, [hourly, other])
    low = [routed(f"s{run}-{i}", "community", "low", f"nice one {i}", settings) for i in range(2)]
    first = NotifyService(settings)
    async with running(first):
        for event in low:
            await producer.send_and_wait(event.route.topic, encode(event), key=b"conv-stray")
        await wait_for(lambda: len([k for k in first.digests.table if run.encode() in k]) >= 6)
    assert not [m for m in inbox.messages() if m["X-Envelope-To"] == to]  # an hour to wait

    singles = hourly.model_copy(update={"digest_minutes": None})
    second = NotifyService(notify_settings(kafka, inbox.port, [singles]))
    async with running(second):
        await wait_for(
            lambda: {m["X-Switchboard-Tweet-Id"] for m in inbox.messages()
                     if m["X-Envelope-To"] == to} == {e.tweet.id for e in low}, timeout_s=30,
        )  # fmt: skip
        await wait_for(lambda: not [k for k in second.digests.table if run.encode() in k])
    assert not [m for m in inbox.messages() if m["X-Switchboard-Digest-Id"] and run in body(m)]


async def test_a_digest_the_relay_refuses_for_good_goes_out_one_tweet_at_a_time(
    kafka, producer, running, inbox, read
):
    """The relay refuses the digest's mailbox (550): the digest is not tried again period after
    period; its tweets become deliveries of their own, each retried and parked on the DLQ with
    the relay's reason, where a person sees them and can redrive them once the address is
    fixed. Nothing waits in the digest any more. A digest whose other recipient the relay took
    goes to that one once; its tweets are parked the same way for the refused address alone."""
    run = uuid.uuid4().hex[:6]
    gone, kept = f"gone-{run}@switchboard.example", f"kept-{run}@switchboard.example"
    inbox.refuse(gone)
    name, shared = f"digest-{run}", f"digest-shared-{run}"
    chatter = [
        Subscription(name=name, departments=["community"], urgencies=["low"], to=[gone],
                     digest_minutes=0.02),
        Subscription(name=shared, departments=["community"], urgencies=["low"], to=[gone, kept],
                     digest_minutes=0.02),
    ]  # fmt: skip
    settings = notify_settings(kafka, inbox.port, chatter)
    low = [routed(f"g{run}-{i}", "community", "low", f"lovely day {i}", settings) for i in range(2)]
    wanted = {f"{e.tweet.id}:email:{s}" for e in low for s in (name, shared)}
    service = NotifyService(settings)

    async with running(service):
        for event in low:
            await producer.send_and_wait(event.route.topic, encode(event), key=b"conv-gone")
        parked = await read(
            [topics.NOTIFICATIONS_DLQ],
            lambda rs: {d.delivery_id for r in rs for d in [decode(Delivery, r.value)]} >= wanted,
        )
        await wait_for(lambda: not [k for k in service.digests.table if run.encode() in k])

    failed = {d.delivery_id: d for r in parked for d in [decode(Delivery, r.value)]
              if d.delivery_id in wanted}  # fmt: skip
    assert set(failed) == wanted
    assert all(d.outcome == "failed" and f"{gone}: 550" in (d.error or "") for d in failed.values())
    held = await parked_deliveries(kafka, Filters(target=shared))
    assert {p.delivery_id for p in held} == {i for i in wanted if i.endswith(shared)}
    assert all(p.delivered_to == [kept] and p.retry_at is None for p in held)
    [digest] = [m for m in inbox.messages() if m["X-Envelope-To"] == kept]
    assert all(e.tweet.text in body(digest) for e in low)


async def test_a_digest_recipient_refused_for_now_gets_its_tweets_one_by_one(
    kafka, producer, running, inbox, monkeypatch
):
    """Greylisting of a digest: the relay takes the digest for one mailbox and refuses the other
    for now (450). The digest is not sent to the first again; the second is owed its tweets,
    which go to it alone as emails of their own (retried and parked like any): every one of
    them, those beyond the hundred the digest lists too."""
    run = uuid.uuid4().hex[:6]
    later, kept = f"dlater-{run}@switchboard.example", f"dkept-{run}@switchboard.example"
    inbox.refuse(later, "450 4.2.0 Greylisted, try again later")
    chatter = Subscription(name=f"grey-digest-{run}", departments=["community"], urgencies=["low"],
                           to=[later, kept], digest_minutes=60)  # fmt: skip
    settings = notify_settings(kafka, inbox.port, [chatter])
    low = [routed(f"dg{run}-{i}", "community", "low", f"sunny {run} {i:03d}", settings)
           for i in range(PendingDigest.SHOWN + 3)]  # fmt: skip
    monkeypatch.setattr(PendingDigest, "FULL", len(low))  # due once it holds them all
    ids = {e.tweet.id for e in low}

    def to(address: str) -> list:
        return [m for m in inbox.messages() if m["X-Envelope-To"] == address]

    async with running(NotifyService(settings)):
        for event in low:  # one conversation: in order, on one partition
            await producer.send(event.route.topic, encode(event), key=b"conv-grey-d")
        await producer.flush()
        await wait_for(lambda: bool(to(kept)), timeout_s=30)
        inbox.accept(later)  # the greylisting period is over
        await wait_for(lambda: {m["X-Switchboard-Tweet-Id"] for m in to(later)} >= ids, 60)
        await asyncio.sleep(1.0)  # anything sent twice arrives by now

    [digest] = to(kept)
    assert digest["X-Switchboard-Digest-Id"] and f": {len(low)} tweets" in digest["Subject"]
    listed = [e for e in low if e.tweet.text in body(digest)]
    assert listed == low[: PendingDigest.SHOWN]  # the first hundred listed, the rest counted
    singles = sorted(m["X-Switchboard-Tweet-Id"] for m in to(later))
    assert singles == sorted(ids)  # each tweet once, to the mailbox that was owed it alone


async def test_a_full_digest_goes_before_its_period_ends(
    kafka, producer, running, inbox, monkeypatch
):
    """A burst fills a digest: it is sent at once, and the tweets after it start another, so a
    subscription does not keep a burst's tweets waiting for its period."""
    monkeypatch.setattr(PendingDigest, "FULL", 10)  # a full digest of 10, not 1,000
    run = uuid.uuid4().hex[:6]
    chatter = Subscription(name=f"burst-{run}", departments=["community"], urgencies=["low"],
                           to=[f"burst-{run}@switchboard.example"], digest_minutes=60)  # fmt: skip
    settings = notify_settings(kafka, inbox.port, [chatter])
    low = [routed(f"b{run}-{i}", "community", "low", f"crowded {run} {i:02d}", settings)
           for i in range(13)]  # fmt: skip

    def digests() -> list:
        return [m for m in inbox.messages() if m["X-Envelope-To"] == chatter.to[0]]

    async def send(events: list) -> None:
        for event in events:  # one conversation: in order, on one partition
            await producer.send(event.route.topic, encode(event), key=b"conv-burst")
        await producer.flush()

    service = NotifyService(settings)
    async with running(service):

        def waiting() -> int:
            raw = service.digests.table.get(header_key(chatter.name))
            return decode(PendingDigest, raw).count if raw else 0

        await send(low[:9])
        await wait_for(lambda: waiting() == 9, timeout_s=30)
        await asyncio.sleep(2.0)  # the sweep looks every second: nine wait for the period
        assert digests() == []
        await send(low[9:10])  # the tenth fills it
        await wait_for(lambda: len(digests()) == 1, timeout_s=30)
        await send(low[10:])
        await wait_for(lambda: waiting() == 3, timeout_s=30)
        await asyncio.sleep(2.0)  # the three after it wait for the period
        assert len(digests()) == 1

    [digest] = digests()
    assert ": 10 tweets" in digest["Subject"]
    assert [e for e in low if e.tweet.text in body(digest)] == low[:10]


async def test_a_subscription_gets_one_digest_whichever_replicas_hold_its_tweets(
    own_kafka, own_producer, running, inbox, monkeypatch
):
    """The tweets of a digest come from every partition; a subscription's pending digest
    belongs to one partition (of its name), so two replicas send one digest, not one each,
    and the tweets that wait for it are in the table's changelog, not in a replica's memory.
    The digest is due when it holds all the test's tweets (not after a period, which a slow
    machine could end before the last tweet arrived): split between replicas, none would be."""
    name = f"digest-{uuid.uuid4().hex[:8]}"
    chatter = Subscription(name=name, departments=["community"], urgencies=["low"],
                           to=["community@switchboard.example"], digest_minutes=60)  # fmt: skip

    def replica(member: str) -> NotifyService:
        base = NotifySettings.load(config_file=CONFIG_FILE, kafka=own_kafka)
        notify = base.config.notify.model_copy(update={"subscriptions": [chatter]})
        settings = NotifySettings.load(
            config_file=CONFIG_FILE,
            kafka=own_kafka.model_copy(update={"group_instance_id": member}),
            http_port=free_port(),
            config=base.config.model_copy(update={"notify": notify}),
            smtp=SmtpSettings(host="127.0.0.1", port=inbox.port),
        )
        return NotifyService(settings)

    # On a broker of the test's own: a static member stays in its group after it stops, and on
    # a cluster shared between tests the group would wait for the second one in later tests.
    first, second = replica("notify-a"), replica("notify-b")
    # conversations (conv-<tweet id>) on every partition, so on both replicas
    partitions = first.settings.config.topics.partitions
    names = (f"conv-{name}-{i}" for i in itertools.count())
    tweet_ids = [c.removeprefix("conv-") for c in keys_on_every_partition(partitions, 3, names)]
    low = [routed(i, "community", "low", f"{name} hello {i}", first.settings) for i in tweet_ids]
    monkeypatch.setattr(PendingDigest, "FULL", len(low))

    def digests() -> list:
        return [m for m in inbox.messages() if name in (m["X-Switchboard-Digest-Id"] or "")]

    async with running(first), running(second):

        def owned(service: NotifyService) -> set:
            return {tp for tp in service.app.consumer.assignment()
                    if tp.topic == topics.NOTIFICATIONS_DIGESTS}  # fmt: skip

        await wait_for(lambda: bool(owned(first)) and bool(owned(second)), timeout_s=60)
        for event in low:
            key = event.tweet.conversation_id.encode()
            await own_producer.send_and_wait(event.route.topic, encode(event), key=key)
        await wait_for(lambda: bool(digests()), timeout_s=30)
        await asyncio.sleep(2)  # the sweep runs every second: a second digest would be out

    [digest] = digests()
    assert all(e.tweet.text in body(digest) for e in low)
    assert f": {len(low)} tweets" in digest["Subject"]


def body(email) -> str:  # noqa: ANN001
    return email.get_body(("plain",)).get_content()
