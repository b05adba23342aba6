"""Notify against stand-ins that speak the vendors' APIs on 127.0.0.1, and the embedded broker:
each channel's happy path, follow-ups on the same ticket, retries (429 with Retry-After,
timeouts), a target down then back with a DLQ redrive, and a notify killed mid-batch."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import yaml
from aiokafka.partitioner import DefaultPartitioner

from switchboard.notify import metrics as notify_metrics
from switchboard.notify.channels import Job, channels_for
from switchboard.notify.dlq import Filters, parked_deliveries, redrive
from switchboard.notify.mail import SmtpMailer
from switchboard.notify.resilience import VENDOR_WAIT_SPREAD_S
from switchboard.notify.service import NotifyService, delivery_id
from switchboard.notify.settings import NotifySettings, SmtpSettings
from switchboard.shared import topics
from switchboard.shared.broker import free_port
from switchboard.shared.events import (
    Author,
    DecodeError,
    Delivery,
    ParkedDelivery,
    decode,
    encode,
)
from switchboard.shared.settings import KafkaSettings
from tests.conftest import (
    CONFIG_FILE,
    SWITCHBOARD,
    keys_on_every_partition,
    read_topics,
    service_environment,
    wait_for,
)
from tests.factories import a_classified_tweet, routed_from
from tests.standins.vendors import HUBSPOT_INTERVAL_MS

_ids = itertools.count(1)


@pytest.fixture
def notify_settings(kafka, vendors, tmp_path):
    """Settings whose subscriptions send each department to one channel (customer_service to
    Zendesk, legal to Jira, sales to Salesforce, marketing to HubSpot, it_security to the
    webhook) over the stand-ins."""

    def build(
        *extra_subscriptions: dict,
        salesforce: dict | None = None,
        jira_settle_s: float = 0.0,
        salesforce_limit_wait_s: float = 3600.0,
        hubspot_time_zone: str = "UTC",
        broker: KafkaSettings | None = None,
        retention_hours: float | None = None,
        **delivery: object,
    ) -> NotifySettings:
        config = yaml.safe_load(CONFIG_FILE.read_text())
        config["notify"] = {
            "connections": {
                "zendesk": {"base_url": vendors["zendesk"].base_url, "email": "ops@acme.example",
                            "api_token": {"env": "ZENDESK_TOKEN"}},
                "jira": {"base_url": vendors["jira"].base_url, "email": "ops@acme.example",
                         "api_token": {"env": "JIRA_TOKEN"}, "search_settle_s": jira_settle_s},
                "salesforce": {"instance_url": vendors["salesforce"].base_url,
                               "access_token": {"env": "SF_TOKEN"},
                               "request_limit_wait_s": salesforce_limit_wait_s},
                "hubspot": {"base_url": vendors["hubspot"].base_url,
                            "token": {"env": "HUBSPOT_TOKEN"}, "time_zone": hubspot_time_zone},
            },
            # No automatic redrive of failures unless a test asks (a parked delivery left by
            # one test must not reach the stand-ins of a later one); vendors' waits still are.
            "delivery": {"attempts": 3, "max_wait_s": 0.2, "timeout_s": 1.0,
                         "redrive_for_hours": 0, **delivery},
            "subscriptions": [
                {"name": "support-queue", "channel": "zendesk",
                 "departments": ["customer_service"], "zendesk": {"group_id": 77}},
                {"name": "legal-board", "channel": "jira", "departments": ["legal"],
                 "jira": {"project": "LEG"}},
                {"name": "sales-leads", "channel": "salesforce", "departments": ["sales"],
                 "salesforce": {"object": "Lead"}},
                {"name": "fans", "channel": "hubspot", "departments": ["marketing"],
                 "hubspot": {"object": "contacts"}},
                {"name": "soc-chat", "channel": "webhook", "departments": ["it_security"],
                 "webhook": {"url": vendors["webhook"].url, "secret": {"env": "HOOK_SECRET"}}},
                *extra_subscriptions,
            ],
        }  # fmt: skip
        if retention_hours is not None:
            config["notify"] |= {"ledger_retention_hours": retention_hours, "ledger_sweep_s": 1}
        if salesforce is not None:  # another way to authenticate to Salesforce
            connection = config["notify"]["connections"]["salesforce"]
            connection.pop("access_token")
            connection.update(salesforce)
        path = tmp_path / "switchboard.yaml"
        path.write_text(yaml.safe_dump(config))
        smtp = SmtpSettings(host="127.0.0.1", port=free_port(), timeout_s=1)
        return NotifySettings.load(config_file=path, kafka=broker or kafka, smtp=smtp)

    return build


def routed(
    department: str,
    urgency: str = "high",
    *,
    conversation: str,
    author: str = "42",
    username: str | None = None,
):
    tweet_id = f"t{next(_ids)}-{datetime.now(UTC).timestamp():.0f}"
    who = Author(id=author, username=username or f"user{author}")
    event = a_classified_tweet(
        department, 0.9, urgency, id=tweet_id, conversation_id=conversation,
        text=f"help please, tweet {tweet_id}", author=who,
    )  # fmt: skip
    return routed_from(event)


async def publish_routed(producer, *events) -> None:  # noqa: ANN001
    for event in events:
        await producer.send_and_wait(
            event.route.topic, encode(event), key=event.tweet.conversation_id.encode()
        )


async def delivered_first(producer, read, event, target: str | None = None) -> Delivery:  # noqa: ANN001
    """Publish a conversation's first tweet and wait for its one delivery (to ``target``)."""
    conv = event.tweet.conversation_id
    await publish_routed(producer, event)
    records = await read([topics.DELIVERIES], lambda rs: deliveries(rs, conv, target))
    [opened] = deliveries(records, conv, target)
    return opened


def delivered(records, conversation_prefixes: list[str]) -> set[str]:
    """The conversations with a Delivery among ``records``, of those prefixes."""
    return {d.conversation_id for c in conversation_prefixes for d in deliveries(records, c)}


def deliveries(records, conversation_prefix: str, target: str | None = None) -> list[Delivery]:
    """The Deliveries among ``records`` of conversations with that prefix (to ``target``)."""
    found = []
    for record in records:
        if record.key and record.key.decode().startswith(conversation_prefix):
            try:
                delivery = decode(Delivery, record.value)
            except DecodeError:
                continue
            if target is None or delivery.target == target:
                found.append(delivery)
    return found


def conversation() -> str:
    return f"nc{next(_ids)}-{datetime.now(UTC).timestamp():.0f}"


async def test_zendesk_ticket_then_follow_up_comment(
    vendors, notify_settings, producer, read, running
):
    zendesk = vendors["zendesk"]
    conv = conversation()
    first, follow_up = (
        routed("customer_service", "critical", conversation=conv),
        routed("customer_service", "high", conversation=conv),
    )

    async with running(NotifyService(notify_settings())):
        await publish_routed(producer, first)
        await read([topics.DELIVERIES], lambda rs: len(deliveries(rs, conv)) >= 1)
        await publish_routed(producer, follow_up)
        records = await read([topics.DELIVERIES], lambda rs: len(deliveries(rs, conv)) >= 2)

    mine = [t for t in zendesk.tickets.values() if conv in (t.get("external_id") or "")]
    assert len(mine) == 1
    [ticket] = mine
    assert ticket["priority"] == "urgent" and ticket["group_id"] == 77
    assert ticket["external_id"] == f"switchboard:support-queue:{conv}"
    comments = zendesk.comments[ticket["id"]]
    assert (
        len(comments) == 2
        and first.tweet.text in str(comments[0])
        and follow_up.tweet.text in str(comments[1])
    )
    actions = sorted(d.action for d in deliveries(records, conv))
    assert actions == ["commented", "created"]
    auth = next(r["headers"]["Authorization"] for r in zendesk.requests if r["method"] == "POST")
    assert base64.b64decode(auth.split()[1]).decode() == "ops@acme.example/token:zd-token"


async def test_an_answer_that_is_not_the_vendors_is_tried_again_not_dead_lettered(
    vendors, notify_settings, producer, read, running
):
    """A proxy in front of Zendesk answers the create with its own HTML page: the delivery is
    tried again and makes its ticket, instead of the tweet going to the dead letter topic."""
    zendesk = vendors["zendesk"]
    conv = conversation()
    zendesk.proxy_page_next("/api/v2/tickets", count=1, method="POST")  # the create

    async with running(NotifyService(notify_settings())):
        await publish_routed(producer, routed("customer_service", conversation=conv))
        records = await read([topics.DELIVERIES], lambda rs: deliveries(rs, conv))

    [delivery] = deliveries(records, conv)
    assert (delivery.outcome, delivery.action, delivery.attempts) == ("delivered", "created", 2)
    assert len([t for t in zendesk.tickets.values() if conv in (t.get("external_id") or "")]) == 1


async def test_jira_issue_with_adf_then_comment(vendors, notify_settings, producer, read, running):
    jira = vendors["jira"]
    conv = conversation()
    first, follow_up = routed("legal", conversation=conv), routed("legal", conversation=conv)

    async with running(NotifyService(notify_settings())):
        await publish_routed(producer, first)
        await read([topics.DELIVERIES], lambda rs: len(deliveries(rs, conv)) >= 1)
        await publish_routed(producer, follow_up)
        records = await read([topics.DELIVERIES], lambda rs: len(deliveries(rs, conv)) >= 2)

    keys = {d.external_id for d in deliveries(records, conv)}
    assert len(keys) == 1
    [key] = keys
    issue = jira.issues[key]
    assert issue["fields"]["project"]["key"] == "LEG"
    assert issue["fields"]["priority"]["name"] == "High"
    assert issue["fields"]["description"]["type"] == "doc"
    assert len(jira.comments[key]) == 1


async def test_a_jira_project_without_a_priority_field_gets_issues_without_one(
    vendors, notify_settings, producer, read, running
):
    """Jira refuses a create that sets a field the project's create screen lacks: a target
    configured with set_priority false sends none; one left with the default is refused, and
    its delivery waits for a person with Jira's reason."""
    jira = vendors["jira"]
    jira.screens_without_priority |= {"OPS", "OPX"}
    conv = conversation()
    ops = {"name": "ops-board", "channel": "jira", "departments": ["legal"],
           "jira": {"project": "OPS", "set_priority": False}}  # fmt: skip
    opx = {"name": "opx-board", "channel": "jira", "departments": ["legal"],
           "jira": {"project": "OPX"}}  # fmt: skip

    async with running(NotifyService(notify_settings(ops, opx))):
        await publish_routed(producer, routed("legal", conversation=conv))
        records = await read(
            [topics.DELIVERIES, topics.NOTIFICATIONS_DLQ], lambda rs: len(deliveries(rs, conv)) >= 3
        )

    outcomes = {d.target: (d.outcome, d.external_id, d.error) for d in deliveries(records, conv)}
    assert outcomes["ops-board"][0] == "delivered"
    issue = jira.issues[outcomes["ops-board"][1]]
    assert issue["fields"]["project"]["key"] == "OPS"
    assert issue["fields"]["priority"]["name"] == "Medium"  # the project's default
    assert outcomes["opx-board"][0] == "failed"
    assert "'priority' cannot be set" in (outcomes["opx-board"][2] or "")
    assert outcomes["legal-board"][0] == "delivered"  # a project with the field: as before


@pytest.mark.parametrize(
    ("vendor", "department", "comment_request"),
    [("zendesk", "customer_service", ("/api/v2/tickets/", "PUT")),
     ("jira", "legal", ("/rest/api/3/issue/", "POST"))],
)  # fmt: skip
async def test_a_follow_up_comment_that_timed_out_is_not_made_twice(
    vendors, notify_settings, producer, read, running, vendor, department, comment_request
):
    """Comments have no idempotency key: the comment is made, its answer comes after the client
    gave up, and the retry must find it (by the delivery's tag) instead of commenting again,
    on a ticket or issue with more comments than a page holds (the newest page is read)."""
    stand_in = vendors[vendor]
    conv = conversation()
    first, follow_up = [routed(department, conversation=conv) for _ in range(2)]

    async with running(NotifyService(notify_settings())):
        await publish_routed(producer, first)
        [opened] = deliveries(
            await read([topics.DELIVERIES], lambda rs: len(deliveries(rs, conv)) >= 1), conv
        )
        # Agents' replies before the follow-up: more than one page (100) of comments
        key = int(opened.external_id) if vendor == "zendesk" else opened.external_id
        stand_in.comments.setdefault(key, []).extend(
            {"id": 900_000 + n, "body": f"agent reply {n}", "html_body": f"<p>agent reply {n}</p>"}
            for n in range(120)
        )
        path, method = comment_request
        stand_in.delay_next(path, 2.0, method=method)  # answered after the 1 s client timeout
        await publish_routed(producer, follow_up)
        records = await read([topics.DELIVERIES], lambda rs: len(deliveries(rs, conv)) >= 2)

    [created, commented] = sorted(deliveries(records, conv), key=lambda d: d.action, reverse=True)
    assert created.action == "created" and commented.action == "commented"
    assert commented.outcome == "delivered" and commented.attempts >= 2
    if vendor == "zendesk":
        thread = stand_in.comments[int(created.external_id)]
    else:
        thread = stand_in.comments[created.external_id]
    made = [c for c in thread if follow_up.tweet.text in json.dumps(c)]
    assert len(made) == 1, f"{len(made)} comments for one follow-up"


async def test_the_ledger_keeps_every_effect_of_a_tweet_delivered_to_several_targets(
    vendors, notify_settings, producer, read, running
):
    """Targets of one tweet are served concurrently; each records its effect in the
    conversation's ledger entry, and none may overwrite another's (a lost record means the
    effect is made again after a crash)."""
    hook = {"url": vendors["webhook"].url, "secret": {"env": "HOOK_SECRET"}}
    legal_hook = {"name": "legal-hook", "channel": "webhook", "departments": ["legal"],
                  "webhook": hook}  # fmt: skip
    conv = conversation()
    event = routed("legal", conversation=conv)
    vendors["jira"].delay_next("/rest/api/3/issue", 0.5, method="POST")  # the webhook ends first
    service = NotifyService(notify_settings(legal_hook))

    async with running(service):
        await publish_routed(producer, event)
        records = await read([topics.DELIVERIES], lambda rs: len(deliveries(rs, conv)) >= 2)
        entry = service.ledger_entry(conv)

    made = {d.delivery_id for d in deliveries(records, conv)}
    assert made == {f"{event.tweet.id}:jira:legal-board", f"{event.tweet.id}:webhook:legal-hook"}
    assert entry is not None and set(entry.deliveries) == made


async def test_crm_records_are_one_per_author(vendors, notify_settings, producer, read, running):
    salesforce, hubspot = vendors["salesforce"], vendors["hubspot"]
    author = str(next(_ids) + 900000)
    convs = [conversation() for _ in range(4)]
    events = [
        routed("sales", conversation=convs[0], author=author),
        routed("sales", conversation=convs[1], author=author),
        routed("marketing", "low", conversation=convs[2], author=author),
        routed("marketing", "low", conversation=convs[3], author=author),
    ]

    async with running(NotifyService(notify_settings())):
        await publish_routed(producer, *events)
        # each conversation delivered (a redelivery after a rebalance republishes a record)
        await read([topics.DELIVERIES], lambda rs: delivered(rs, convs) >= set(convs))

    leads = [r for r in salesforce.records.get("Lead", {}).values()
             if r.get("Switchboard_Author_Id__c") == author]  # fmt: skip
    assert len(leads) == 1 and leads[0]["Company"] == f"X user @user{author}"
    contacts = [c for c in hubspot.objects.get("contacts", {}).values()
                if c["properties"].get("twitter_user_id") == author]  # fmt: skip
    assert len(contacts) == 1
    bearer = [r["headers"]["Authorization"] for r in salesforce.requests if r["method"] == "PATCH"]
    assert bearer and set(bearer) == {"Bearer sf-token"}


async def test_a_crm_record_gets_its_owner_when_created_and_keeps_the_one_a_rep_gave_it(
    vendors, notify_settings, producer, read, running
):
    """A new Lead or contact gets the author's name and the subscription's owner (and the Lead
    its source); once a rep corrects the name and takes it over, the author's next tweets
    update it (a Lead's description: the latest tweet) and leave the name and owner alone. A
    Lead the rep converted is left as it is: Salesforce refuses any update of it."""
    salesforce, hubspot = vendors["salesforce"], vendors["hubspot"]
    author = str(next(_ids) + 900000)
    owned = [
        {"name": "owned-leads", "channel": "salesforce", "departments": ["sales"],
         "salesforce": {"object": "Lead", "owner_id": "00G-queue",
                        "external_id_field": "Owned_Author_Id__c"}},
        {"name": "owned-fans", "channel": "hubspot", "departments": ["sales"],
         "hubspot": {"object": "contacts", "owner_id": "77"}},
    ]  # fmt: skip
    convs = [conversation() for _ in range(3)]

    def lead() -> dict:
        [found] = [r for r in salesforce.records["Lead"].values()
                   if r.get("Owned_Author_Id__c") == author]  # fmt: skip
        return found

    def contact() -> dict:
        [found] = [c for c in hubspot.objects["contacts"].values()
                   if c["properties"].get("twitter_user_id") == author]  # fmt: skip
        return found["properties"]

    async with running(NotifyService(notify_settings(*owned))):
        await publish_routed(producer, routed("sales", conversation=convs[0], author=author))
        await read([topics.DELIVERIES], lambda rs: len(deliveries(rs, convs[0])) >= 3)
        created = (lead()["OwnerId"], lead()["LeadSource"], contact()["hubspot_owner_id"])
        named = (lead()["LastName"], lead()["Company"], contact()["lastname"])
        lead()["OwnerId"], contact()["hubspot_owner_id"] = "005-rep", "88"  # a rep takes over
        lead()["LastName"], lead()["Company"] = "Jane Roe", "Roe Hardware"  # and corrects
        contact()["lastname"] = "Roe"
        second = routed("sales", conversation=convs[1], author=author)
        await publish_routed(producer, second)
        await read([topics.DELIVERIES], lambda rs: len(deliveries(rs, convs[1])) >= 3)
        updated = (lead()["LastName"], lead()["Company"], contact()["lastname"])
        described = lead()["Description"]
        salesforce.convert_lead(lead()["Id"])
        await publish_routed(producer, routed("sales", conversation=convs[2], author=author))
        records = await read([topics.DELIVERIES], lambda rs: len(deliveries(rs, convs[2])) >= 3)

    assert created == ("00G-queue", "X (Twitter)", "77")
    assert named[1] == f"X user @user{author}" and named[0] == named[2] != ""
    assert (lead()["OwnerId"], contact()["hubspot_owner_id"]) == ("005-rep", "88")
    assert updated == ("Jane Roe", "Roe Hardware", "Roe")
    assert second.tweet.id in described  # the latest tweet
    last = {d.target: d for d in deliveries(records, convs[2])}
    assert (last["owned-leads"].outcome, last["owned-leads"].action) == (
        "delivered",
        "lead_converted",
    )


async def test_a_hubspot_contact_whose_first_answer_was_lost_still_gets_its_name_and_owner(
    vendors, notify_settings, producer, read, running
):
    """The upsert that creates the contact answers after the client's timeout: the retry finds
    it no longer new, but created since the delivery began (HubSpot's createdAt), so the
    contact still gets the author's name and the subscription's owner."""
    hubspot = vendors["hubspot"]
    author = str(next(_ids) + 900000)
    owned = {"name": "owned-fans", "channel": "hubspot", "departments": ["sales"],
             "hubspot": {"object": "contacts", "owner_id": "77"}}  # fmt: skip
    conv = conversation()
    hubspot.delay_next("/crm/v3/objects/contacts/batch/upsert", 2.0, method="POST")

    async with running(NotifyService(notify_settings(owned))):
        event = routed("sales", conversation=conv, author=author)
        await publish_routed(producer, event)
        records = await read(
            [topics.DELIVERIES],
            lambda rs: any(d.target == "owned-fans" for d in deliveries(rs, conv)),
        )

    [delivery] = [d for d in deliveries(records, conv) if d.target == "owned-fans"]
    assert delivery.outcome == "delivered" and delivery.attempts >= 2
    [contact] = [c["properties"] for c in hubspot.objects["contacts"].values()
                 if c["properties"].get("twitter_user_id") == author]  # fmt: skip
    assert contact["hubspot_owner_id"] == "77"
    assert contact["lastname"] == f"@{event.tweet.author.username}"  # it has no display name


async def test_two_subscriptions_to_one_hubspot_contact_give_it_one_owner(
    vendors, notify_settings, producer, read, running
):
    """Two contact subscriptions with owners of their own match one tweet and upsert the same
    contact at once: the delivery that created it gives it its owner; the other, finding it
    not new, leaves it (one delivery's retry memory is not the other's)."""
    hubspot = vendors["hubspot"]
    author = str(next(_ids) + 900000)
    owners = {"owned-fans": "77", "other-fans": "88"}
    subscriptions = [{"name": name, "channel": "hubspot", "departments": ["sales"],
                      "hubspot": {"object": "contacts", "owner_id": owner}}
                     for name, owner in owners.items()]  # fmt: skip
    conv = conversation()

    async with running(NotifyService(notify_settings(*subscriptions))):
        await publish_routed(producer, routed("sales", conversation=conv, author=author))
        records = await read(
            [topics.DELIVERIES],
            lambda rs: {d.target for d in deliveries(rs, conv)} >= set(owners),
        )

    assert all(d.outcome == "delivered" for d in deliveries(records, conv) if d.target in owners)
    given = [r["json"]["inputs"][0]["properties"]["hubspot_owner_id"] for r in hubspot.requests
             if r["path"].endswith("/contacts/batch/upsert")
             and "hubspot_owner_id" in r["json"]["inputs"][0]["properties"]]  # fmt: skip
    [contact] = [c["properties"] for c in hubspot.objects["contacts"].values()
                 if c["properties"].get("twitter_user_id") == author]  # fmt: skip
    assert len(given) == 1 and contact["hubspot_owner_id"] == given[0]


async def test_webhook_is_signed_and_carries_an_idempotency_key(
    vendors, notify_settings, producer, read, running
):
    hook = vendors["webhook"]
    conv = conversation()
    event = routed("it_security", "critical", conversation=conv)

    async with running(NotifyService(notify_settings())):
        await publish_routed(producer, event)
        await read([topics.DELIVERIES], lambda rs: len(deliveries(rs, conv)) >= 1)

    [payload] = [p for p in hook.received if p["event"]["tweet"]["conversation_id"] == conv]
    assert payload["delivery_id"] == f"{event.tweet.id}:webhook:soc-chat"
    assert payload["event"]["tweet"]["text"] == event.tweet.text and hook.rejected == 0


async def test_429_and_timeouts_are_retried_then_delivered(
    vendors, notify_settings, producer, read, running
):
    zendesk = vendors["zendesk"]
    conv = conversation()
    zendesk.fail_next("/api/v2/tickets", 429, retry_after_s=0.3)
    zendesk.delay_next("/api/v2/tickets", 2.0)  # answered after the 1 s client timeout

    async with running(NotifyService(notify_settings(max_wait_s=0.5))):  # 0.3 s: waited
        await publish_routed(producer, routed("customer_service", conversation=conv))
        records = await read([topics.DELIVERIES], lambda rs: len(deliveries(rs, conv)) >= 1)

    [delivery] = deliveries(records, conv)
    assert delivery.outcome == "delivered" and delivery.attempts >= 2
    mine = [t for t in zendesk.tickets.values() if conv in (t.get("external_id") or "")]
    assert len(mine) == 1  # the timed-out create happened once, found again, never doubled


async def test_a_long_rate_limit_wait_parks_with_its_time_and_comes_back_by_itself(
    kafka, vendors, notify_settings, producer, read, running
):
    """Zendesk asks for 30 s (Retry-After), longer than a batch may hold its partition
    (max_wait_s 0.2): the delivery is parked at once with its time, the next tweet is not held
    up, and notify redrives the parked one when the time comes; one ticket in the end. (The
    wait leaves time for the checks below, a `switchboard dlq list` process among them, to see
    it parked on a loaded machine.)"""
    zendesk = vendors["zendesk"]
    first, second = conversation(), conversation()
    zendesk.fail_next("/api/v2/tickets", 429, retry_after_s=30.0)
    event = routed("customer_service", conversation=first)

    async with running(NotifyService(notify_settings())):
        sent_at = datetime.now(UTC)
        await publish_routed(producer, event)
        await read([topics.NOTIFICATIONS_DLQ], lambda rs: len(deliveries(rs, first)) >= 1)
        [parked] = await listed(
            kafka, Filters(delivery_id=f"{event.tweet.id}:zendesk:support-queue")
        )
        await publish_routed(producer, routed("customer_service", conversation=second))
        shown = await _dlq_list(kafka, parked.delivery_id)
        records = await read(
            [topics.DELIVERIES],
            lambda rs: deliveries(rs, second) and deliveries(rs, first),
            timeout_s=60,
        )

    assert parked.retry_at is not None and parked.attempts == 1
    assert 29.5 <= (parked.retry_at - sent_at).total_seconds() <= 40  # the 429's time + 30 s
    assert "HTTP 429" in (parked.error or "")
    # `switchboard dlq list` shows the vendor's error and when it comes back by itself.
    [row] = [line for line in shown.splitlines() if parked.delivery_id in line]
    assert "HTTP 429" in row and parked.retry_at.isoformat(timespec="seconds") in row
    delivered = {d.conversation_id: d for d in deliveries(records, "nc")}
    assert delivered[first].outcome == delivered[second].outcome == "delivered"
    assert delivered[second].trace.delivered_at < parked.retry_at  # not held up behind it
    assert delivered[first].trace.delivered_at >= parked.retry_at
    mine = [t for t in zendesk.tickets.values() if first in (t.get("external_id") or "")]
    assert len(mine) == 1
    assert await parked_deliveries(kafka, Filters(delivery_id=parked.delivery_id)) == []


async def test_hubspot_batch_errors_and_rate_window_are_honoured(
    kafka, vendors, notify_settings, producer, read, running
):
    """A batch upsert answered 207 with an input's error is a failed delivery with HubSpot's
    error, not a success; a 429 (no Retry-After) waits for HubSpot's rate window, read from
    X-HubSpot-RateLimit-Interval-Milliseconds."""
    hubspot = vendors["hubspot"]
    by_email = {"name": "fans-by-email", "channel": "hubspot", "departments": ["marketing"],
                "hubspot": {"object": "contacts", "id_property": "email"}}  # fmt: skip
    rejected, throttled = conversation(), conversation()

    async with running(NotifyService(notify_settings(by_email))):
        await publish_routed(producer, routed("marketing", conversation=rejected))
        records = await read(
            [topics.NOTIFICATIONS_DLQ, topics.DELIVERIES],
            lambda rs: len(deliveries(rs, rejected)) >= 2,
        )
        hubspot.fail_next("/crm/v3/objects/contacts/batch/upsert", 429)
        asked_at = datetime.now(UTC)
        await publish_routed(producer, routed("marketing", conversation=throttled))
        waits = await read(
            [topics.NOTIFICATIONS_DLQ, topics.DELIVERIES],
            lambda rs: len(deliveries(rs, throttled)) >= 2,
        )
        read_at = datetime.now(UTC)

    outcomes = {d.target: d for d in deliveries(records, rejected)}
    assert outcomes["fans"].outcome == "delivered"
    failed = outcomes["fans-by-email"]
    assert failed.outcome == "failed" and failed.attempts == 1  # a validation error: not retried
    assert "HTTP 207" in failed.error and "VALIDATION_ERROR" in failed.error
    # Both subscriptions upsert at once: the 429 goes to whichever asks first, and the other
    # waits for the same window unless its request was out before the 429 came back.
    limited = [d for d in deliveries(waits, throttled) if d.retry_at is not None]
    assert limited and all(d.outcome == "failed" for d in limited)
    interval = timedelta(milliseconds=HUBSPOT_INTERVAL_MS)
    for parked in limited:  # the 429's time plus the window: after the tweet, before the read
        assert asked_at + interval - timedelta(seconds=1) <= parked.retry_at
        assert parked.retry_at <= read_at + interval + timedelta(seconds=VENDOR_WAIT_SPREAD_S + 1)


async def test_hubspots_rate_window_holds_every_request_to_it_not_only_the_refused_one(
    vendors, notify_settings, producer, read, running
):
    """HubSpot's 10-second window is the app's: once one upsert is refused, the next tweet's
    upsert does not go out to be refused too (and counted against the app again) but waits
    for the window, parked with its time, then both are delivered."""
    hubspot = vendors["hubspot"]
    upserts = "/crm/v3/objects/contacts/batch/upsert"
    first, second = conversation(), conversation()
    hubspot.fail_next(upserts, 429)
    window_s = 20.0  # room on a loaded machine for the second tweet to come within it
    hubspot.interval_ms = int(window_s * 1000)

    async with running(NotifyService(notify_settings(redrive_after_s=1.0))):
        await publish_routed(producer, routed("marketing", conversation=first))
        [refused] = deliveries(
            await read([topics.NOTIFICATIONS_DLQ], lambda rs: deliveries(rs, first)), first
        )
        await publish_routed(producer, routed("marketing", conversation=second))
        [held] = deliveries(
            await read([topics.NOTIFICATIONS_DLQ], lambda rs: deliveries(rs, second)), second
        )
        records = await read(
            [topics.DELIVERIES],
            lambda rs: all(
                any(d.outcome == "delivered" for d in deliveries(rs, c)) for c in (first, second)
            ),
            timeout_s=60,
        )

    assert "HTTP 429" in (refused.error or "") and "not sent" in (held.error or "")
    assert refused.retry_at is not None and held.retry_at is not None
    assert abs((held.retry_at - refused.retry_at).total_seconds()) < 1  # the same window
    [limited_at] = [r["at"] for r in hubspot.requests if r["path"] == upserts][:1]
    within = [r for r in hubspot.requests
              if limited_at < r["at"] < limited_at + window_s - 0.5]  # fmt: skip
    assert within == []  # nothing went out to HubSpot during its window
    assert {d.conversation_id for d in deliveries(records, "nc") if d.outcome == "delivered"} >= {
        first, second}  # fmt: skip


async def test_hubspots_spent_daily_limit_waits_for_midnight_in_the_accounts_time_zone(
    vendors, notify_settings, producer, read, running
):
    """HubSpot resets its daily limit at midnight in the account's time zone, not UTC's: the
    delivery is parked until then (a retry at midnight UTC would be refused again, and the
    delivery parked for another day)."""
    vendors["hubspot"].spend_daily_limit()
    conv = conversation()

    async with running(NotifyService(notify_settings(hubspot_time_zone="Asia/Tokyo"))):
        parked_at = datetime.now(UTC)
        await publish_routed(producer, routed("marketing", conversation=conv))
        records = await read([topics.NOTIFICATIONS_DLQ], lambda rs: len(deliveries(rs, conv)) >= 1)

    [parked] = deliveries(records, conv)
    assert "HTTP 429" in parked.error and "DAILY" in parked.error
    in_tokyo = parked.retry_at.astimezone(ZoneInfo("Asia/Tokyo"))
    assert (in_tokyo.hour, in_tokyo.minute) == (0, 0)
    assert timedelta(0) < parked.retry_at - parked_at <= timedelta(days=1)


@pytest.mark.parametrize("lag", ["seconds", "searches"])
async def test_a_jira_create_whose_answer_was_lost_is_found_before_it_is_repeated(
    vendors, notify_settings, producer, read, running, lag
):
    """The create happens but answers after the client's timeout, and Jira's search shows the
    new issue only 3 s later, or only from the second search on (two searches in a row then
    disagree). Notify does not create again before the search had its time (search_settle_s),
    finds the issue by the delivery's label, and records it as its create: one issue, and no
    comment on it as if it were a follow-up. (The first search comes 1-1.5 s after the create,
    the timeout and one backoff: 3 s leaves room for a loaded machine, where a lag as short as
    that would let the first search find the issue with no wait to observe.)"""
    jira = vendors["jira"]
    if lag == "seconds":
        jira.search_lag_s = 3.0
    else:
        jira.search_lag_searches = 1
    jira.delay_next("/rest/api/3/issue", 2.0, method="POST")  # after the 1 s timeout
    conv = conversation()
    event = routed("legal", conversation=conv)
    waits = notify_metrics.RECONCILE_WAITS.labels("jira")._value.get()

    async with running(NotifyService(notify_settings(max_wait_s=5.0, jira_settle_s=4.0))):
        await publish_routed(producer, event)
        records = await read([topics.DELIVERIES, topics.NOTIFICATIONS_DLQ],
                             lambda rs: len(deliveries(rs, conv)) >= 1)  # fmt: skip

    [delivery] = deliveries(records, conv)
    assert delivery.outcome == "delivered" and delivery.action == "created"
    issues = [i for i in jira.issues.values() if event.tweet.text in str(i["fields"])]
    assert len(issues) == 1 and delivery.external_id == issues[0]["key"]
    assert notify_metrics.RECONCILE_WAITS.labels("jira")._value.get() > waits
    creates = [
        r for r in jira.requests if r["method"] == "POST" and r["path"] == "/rest/api/3/issue"
    ]
    assert len(creates) == 1
    assert jira.comments.get(issues[0]["key"], []) == []


@pytest.mark.parametrize("issue", ["first", "successor"])
async def test_a_jira_create_made_just_before_notify_restarted_is_found_not_repeated(
    vendors, notify_settings, issue
):
    """notify creates an issue (the conversation's first, or the successor of one someone
    deleted) and dies before its ledger records it; the notify that starts next knows neither
    the create nor its reconcileIssues id, and Jira's search does not show the issue yet. The
    new one waits until the search had search_settle_s since it started, finds the issue by
    the delivery's label, and records it: one issue."""
    jira = vendors["jira"]
    options = notify_settings(jira_settle_s=4.0).config.notify
    [board] = [s for s in options.subscriptions if s.name == "legal-board"]
    conv = conversation()
    event = routed("legal", conversation=conv)
    job = Job(event, board, event.route.department, delivery_id(event, board))
    mailer = SmtpMailer(SmtpSettings(host="127.0.0.1", port=free_port()))
    # (the notify before, long started: its own start's wait is over)
    before = channels_for(notify_settings().config.notify, mailer)["jira"]
    if issue == "successor":  # the conversation's issue, recorded, then deleted in Jira
        opening = routed("legal", conversation=conv)
        opened = await before.deliver(
            Job(opening, board, opening.route.department, delivery_id(opening, board))
        )
        jira.delete(opened.external_id)
        job = Job(event, board, event.route.department, job.delivery_id, opened.external_id)
    jira.search_lag_s = 3.0
    made = await before.deliver(job)  # answered; the process dies before the ledger write
    await before.close()
    after = channels_for(options, mailer)["jira"]  # the next notify, at once
    started = time.monotonic()
    try:
        found = await after.deliver(job)  # waits, then its search finds the issue
    finally:
        await after.close()
    waited = time.monotonic() - started

    assert (made.action, found.action, found.external_id) == (
        "created",
        "created",
        made.external_id,
    )
    assert [i["key"] for i in jira.issues.values() if event.tweet.text in str(i["fields"])] == [
        made.external_id
    ]
    assert waited >= 3.0  # it did not search before the issue could show (3 s after its create)


async def test_a_channels_rate_counts_every_request_to_the_vendor(vendors, notify_settings):
    """``delivery.rate_per_s`` spaces requests, as Zendesk counts them: each delivery makes
    several (a search by external id, then a create), and none goes closer than the rate."""
    zendesk = vendors["zendesk"]
    options = notify_settings(rate_per_s={"zendesk": 10}).config.notify
    [queue] = [s for s in options.subscriptions if s.name == "support-queue"]
    mailer = SmtpMailer(SmtpSettings(host="127.0.0.1", port=free_port()))
    channel = channels_for(options, mailer)["zendesk"]
    events = [routed("customer_service", conversation=conversation()) for _ in range(3)]
    first = len(zendesk.requests)
    jobs = [Job(e, queue, e.route.department, delivery_id(e, queue)) for e in events]
    try:
        await asyncio.gather(*(channel.deliver(job) for job in jobs))
    finally:
        await channel.close()

    sent = sorted(r["at"] for r in zendesk.requests[first:])
    assert len(sent) >= 2 * len(events)  # more requests than deliveries
    # ten a second at most (arrivals, not sends: one interval's slack, as a loaded machine may
    # delay the first, which opens the connection, more than the last); unpaced, they would
    # all arrive within a few milliseconds
    assert sent[-1] - sent[0] >= (len(sent) - 2) * 0.1, sent


async def test_a_jira_create_made_by_a_replica_that_died_is_found_by_the_one_taking_over(
    vendors, notify_settings
):
    """A replica long started takes the partition of one that created an issue and died before
    its ledger recorded it: it knows neither the create nor its id, and Jira's search does not
    show the issue yet. Its partitions moved, so it waits as a notify just started does, and
    finds the issue by the delivery's label: one issue."""
    jira = vendors["jira"]
    options = notify_settings(jira_settle_s=2.0).config.notify
    [board] = [s for s in options.subscriptions if s.name == "legal-board"]
    event = routed("legal", conversation=conversation())
    job = Job(event, board, event.route.department, delivery_id(event, board))
    mailer = SmtpMailer(SmtpSettings(host="127.0.0.1", port=free_port()))
    died, taking_over = (channels_for(options, mailer)["jira"] for _ in range(2))
    await asyncio.sleep(2.0)  # both long started: their start's wait is over
    jira.search_lag_s = 1.5
    try:
        made = await died.deliver(job)  # answered; the replica dies before the ledger write
        taking_over.partitions_moved()  # the rebalance gives it the partition
        found = await taking_over.deliver(job)
    finally:
        await died.close()
        await taking_over.close()

    assert (made.action, found.action, found.external_id) == ("created", "created",
                                                              made.external_id)  # fmt: skip
    assert [i["key"] for i in jira.issues.values() if event.tweet.text in str(i["fields"])] == [
        made.external_id
    ]


async def test_the_lost_create_of_a_deleted_issues_successor_is_found_not_repeated(
    vendors, notify_settings, producer, read, running
):
    """The conversation's issue was deleted; the follow-up's create of a new one happens, but
    its answer comes after the client's timeout. The retry finds the deleted issue gone again,
    then the new issue by the delivery's label, instead of creating a second one."""
    jira = vendors["jira"]
    conv = conversation()
    first, follow_up = [routed("legal", conversation=conv) for _ in range(2)]

    async with running(NotifyService(notify_settings())):
        opened = await delivered_first(producer, read, first)
        jira.delete(opened.external_id)
        jira.delay_next("/rest/api/3/issue", 2.0, method="POST")  # after the 1 s timeout
        await publish_routed(producer, follow_up)
        records = await read([topics.DELIVERIES, topics.NOTIFICATIONS_DLQ],
                             lambda rs: len(deliveries(rs, conv)) >= 2)  # fmt: skip

    [_, recreated] = deliveries(records, conv)
    assert (recreated.outcome, recreated.action) == ("delivered", "created")
    successors = [i for i in jira.issues.values() if follow_up.tweet.text in str(i["fields"])]
    assert [i["key"] for i in successors] == [recreated.external_id]


async def test_a_jira_issue_full_of_comments_hands_the_conversation_to_a_new_issue(
    vendors, notify_settings, producer, read, running
):
    """Jira refuses a comment past the per-issue limit (413; 5,000 on Jira Cloud): the
    follow-up opens a new issue for the conversation, where later tweets go, instead of being
    rejected, and every later follow-up with it."""
    jira = vendors["jira"]
    jira.comment_limit = 1
    conv = conversation()
    events = [routed("legal", conversation=conv) for _ in range(4)]

    async with running(NotifyService(notify_settings())):
        for count, event in enumerate(events, start=1):
            await publish_routed(producer, event)
            records = await read([topics.DELIVERIES, topics.NOTIFICATIONS_DLQ],
                                 lambda rs, n=count: len(deliveries(rs, conv)) >= n)  # fmt: skip

    done = deliveries(records, conv)
    assert [(d.outcome, d.action) for d in done] == [
        ("delivered", "created"), ("delivered", "commented"),
        ("delivered", "created"), ("delivered", "commented")]  # fmt: skip
    first, second = done[0].external_id, done[2].external_id
    assert first != second and done[1].external_id == first and done[3].external_id == second
    assert [len(jira.comments.get(key, [])) for key in (first, second)] == [1, 1]


async def test_a_follow_up_to_a_closed_ticket_opens_a_follow_up_ticket(
    vendors, notify_settings, producer, read, running
):
    """An agent closed the conversation's ticket; Zendesk refuses to update it (422). The next
    tweet opens a follow-up ticket that names the closed one (via_followup_source_id), and the
    tweet after that is a comment on the follow-up."""
    zendesk = vendors["zendesk"]
    conv = conversation()
    events = [routed("customer_service", conversation=conv) for _ in range(3)]

    async with running(NotifyService(notify_settings())):
        await publish_routed(producer, events[0])
        await read([topics.DELIVERIES], lambda rs: len(deliveries(rs, conv)) >= 1)
        [closed] = [t for t in zendesk.tickets.values() if conv in (t["external_id"] or "")]
        zendesk.close(closed["id"])
        await publish_routed(producer, events[1])
        await read([topics.DELIVERIES], lambda rs: len(deliveries(rs, conv)) >= 2)
        await publish_routed(producer, events[2])
        records = await read([topics.DELIVERIES, topics.NOTIFICATIONS_DLQ],
                             lambda rs: len(deliveries(rs, conv)) >= 3)  # fmt: skip

    outcomes = [(d.outcome, d.action) for d in deliveries(records, conv)]
    assert outcomes == [("delivered", "created"), ("delivered", "created"),
                        ("delivered", "commented")]  # fmt: skip
    mine = sorted((t for t in zendesk.tickets.values() if conv in (t["external_id"] or "")),
                  key=lambda t: t["id"])  # fmt: skip
    assert [t["status"] for t in mine] == ["closed", "new"]
    follow_up = mine[1]
    assert follow_up["via"]["source"] == {"from": {"ticket_id": closed["id"], "subject":
                                                   closed["subject"]}, "to": {},
                                          "rel": "follow_up"}  # fmt: skip
    assert len(zendesk.comments[follow_up["id"]]) == 2  # its first comment, then the third tweet
    assert len(zendesk.comments[closed["id"]]) == 1  # the closed one untouched


@pytest.mark.parametrize("channel", ["zendesk", "jira"])
async def test_a_follow_up_to_a_deleted_ticket_opens_a_new_one(
    channel, vendors, notify_settings, producer, read, running
):
    """Someone deleted the conversation's ticket or issue, which the ledger recorded; the vendor
    answers 404 for it. The next tweet opens a new one for the conversation (instead of being
    parked for as long as the ledger remembers the deleted one), and the tweet after that is a
    comment on the new one."""
    vendor = vendors[channel]
    department = {"zendesk": "customer_service", "jira": "legal"}[channel]
    conv = conversation()
    events = [routed(department, conversation=conv) for _ in range(3)]
    gone = notify_metrics.THREADS_GONE.labels(channel)._value.get()

    async with running(NotifyService(notify_settings())):
        await publish_routed(producer, events[0])
        [first] = deliveries(await read([topics.DELIVERIES], lambda rs: deliveries(rs, conv)), conv)
        vendor.delete(int(first.external_id) if channel == "zendesk" else first.external_id)
        for count, event in enumerate(events[1:], start=2):
            await publish_routed(producer, event)
            records = await read([topics.DELIVERIES, topics.NOTIFICATIONS_DLQ],
                                 lambda rs, n=count: len(deliveries(rs, conv)) >= n)  # fmt: skip

    outcomes = [(d.outcome, d.action) for d in deliveries(records, conv)]
    assert outcomes == [("delivered", "created"), ("delivered", "created"),
                        ("delivered", "commented")]  # fmt: skip
    replacement = deliveries(records, conv)[1].external_id
    assert replacement != first.external_id
    assert deliveries(records, conv)[2].external_id == replacement
    threads = vendor.tickets if channel == "zendesk" else vendor.issues
    assert len(threads) >= 1 and all(str(k) != first.external_id for k in threads)
    assert notify_metrics.THREADS_GONE.labels(channel)._value.get() == gone + 1


async def test_a_follow_up_ticket_whose_answer_was_lost_is_not_opened_twice(
    vendors, notify_settings, producer, read, running
):
    """The follow-up ticket of a closed one is created but its answer lost, and the retry comes
    after Zendesk forgot the Idempotency-Key (it keeps one two hours; a redrive can be later):
    the retry finds the ticket by its delivery's tag instead of opening a second one."""
    zendesk = vendors["zendesk"]
    conv = conversation()
    events = [routed("customer_service", conversation=conv) for _ in range(2)]

    async with running(NotifyService(notify_settings(max_wait_s=0.5))):
        await publish_routed(producer, events[0])
        [first] = deliveries(await read([topics.DELIVERIES], lambda rs: deliveries(rs, conv)), conv)
        zendesk.close(int(first.external_id))
        zendesk.idempotency_ttl_s = 0  # past the two hours
        zendesk.delay_next("/api/v2/tickets.json", 2.0, method="POST")  # created, answer lost
        await publish_routed(producer, events[1])
        records = await read([topics.DELIVERIES, topics.NOTIFICATIONS_DLQ],
                             lambda rs: len(deliveries(rs, conv)) >= 2)  # fmt: skip

    follow_up = deliveries(records, conv)[1]
    assert (follow_up.outcome, follow_up.action) == ("delivered", "created")
    assert follow_up.attempts >= 2
    mine = [t for t in zendesk.tickets.values() if conv in (t["external_id"] or "")]
    assert len(mine) == 2  # the closed ticket and one follow-up, not two


SALESFORCE_OAUTH = {"oauth": {"client_id": {"env": "SF_CLIENT_ID"},
                              "client_secret": {"env": "SF_CLIENT_SECRET"}}}  # fmt: skip


async def test_salesforce_tokens_are_renewed_by_the_client_credentials_flow(
    vendors, notify_settings, producer, read, running
):
    """The token is fetched at the first delivery; when Salesforce says the session expired
    (401 INVALID_SESSION_ID) it is fetched again and the delivery goes through, not parked."""
    salesforce = vendors["salesforce"]
    before, after = conversation(), conversation()
    renewals = notify_metrics.TOKEN_RENEWALS.labels("salesforce")._value.get()

    async with running(NotifyService(notify_settings(salesforce=SALESFORCE_OAUTH))):
        await publish_routed(producer, routed("sales", conversation=before, author="7001"))
        await read([topics.DELIVERIES], lambda rs: len(deliveries(rs, before)) >= 1)
        salesforce.expire_sessions()
        await publish_routed(producer, routed("sales", conversation=after, author="7002"))
        records = await read([topics.DELIVERIES, topics.NOTIFICATIONS_DLQ],
                             lambda rs: len(deliveries(rs, after)) >= 1)  # fmt: skip

    [delivered] = deliveries(records, after)
    assert delivered.outcome == "delivered", delivered.error
    assert salesforce.tokens_issued == 2
    assert notify_metrics.TOKEN_RENEWALS.labels("salesforce")._value.get() == renewals + 2
    leads = {r["Switchboard_Author_Id__c"] for r in salesforce.records["Lead"].values()}
    assert {"7001", "7002"} <= leads


async def test_a_refused_token_renewal_parks_with_salesforces_reason(
    vendors, notify_settings, producer, read, running
):
    wrong = {"oauth": {"client_id": {"env": "SF_CLIENT_ID"},
                       "client_secret": {"env": "HOOK_SECRET"}}}  # fmt: skip
    conv = conversation()

    async with running(NotifyService(notify_settings(salesforce=wrong))):
        await publish_routed(producer, routed("sales", conversation=conv))
        records = await read([topics.NOTIFICATIONS_DLQ], lambda rs: len(deliveries(rs, conv)) >= 1)

    [parked] = deliveries(records, conv)
    assert parked.outcome == "failed" and parked.attempts == 1  # refused: not retried
    assert "token refresh failed: HTTP 400" in parked.error and "invalid_client" in parked.error


async def test_salesforces_spent_request_limit_is_a_wait_not_a_rejection(
    vendors, notify_settings, producer, read, running
):
    """Salesforce answers a spent API request limit with 403 REQUEST_LIMIT_EXCEEDED, not 429:
    the delivery is parked with the time it may try again and comes back by itself, where a
    403 read by its status alone would be rejected for good."""
    salesforce = vendors["salesforce"]
    conv = conversation()
    salesforce.fail_next("/services/data", 403)

    async with running(NotifyService(notify_settings(salesforce_limit_wait_s=2.0))):
        sent_at = datetime.now(UTC)
        await publish_routed(producer, routed("sales", conversation=conv, author="7200"))
        parked = await read([topics.NOTIFICATIONS_DLQ], lambda rs: len(deliveries(rs, conv)) >= 1)
        records = await read([topics.DELIVERIES], lambda rs: len(deliveries(rs, conv)) >= 1,
                             timeout_s=30)  # fmt: skip

    [waiting] = deliveries(parked, conv)
    assert "REQUEST_LIMIT_EXCEEDED" in waiting.error and waiting.retry_at is not None
    assert 1.5 <= (waiting.retry_at - sent_at).total_seconds() <= 10
    [delivered] = deliveries(records, conv)
    assert delivered.outcome == "delivered" and delivered.trace.delivered_at >= waiting.retry_at
    assert any(r.get("Switchboard_Author_Id__c") == "7200"
               for r in salesforce.records["Lead"].values())  # fmt: skip


async def test_a_jira_429_with_only_a_reset_time_parks_the_delivery_until_then(
    vendors, notify_settings, producer, read, running
):
    """Jira's 429 may carry X-RateLimit-Reset (to the minute) and no Retry-After: the delivery
    waits for that time (parked, as the wait is longer than max_wait_s) instead of retrying
    into the same limit on the backoff and being parked without a time."""
    jira = vendors["jira"]
    jira.reset_without_retry_after = True
    # An hour: on a cluster shared between tests, the parked delivery stays, and one due within
    # the session would be redriven by a later test's notify and change what that test counts.
    jira.fail_next("/rest/api/3/issue", 429, retry_after_s=3600)
    conv = conversation()

    async with running(NotifyService(notify_settings())):
        sent_at = datetime.now(UTC)
        await publish_routed(producer, routed("legal", conversation=conv))
        parked = await read([topics.NOTIFICATIONS_DLQ], lambda rs: len(deliveries(rs, conv)) >= 1)

    [waiting] = deliveries(parked, conv)
    assert waiting.error.startswith("HTTP 429") and waiting.attempts == 1
    limited = [r for r in jira.requests if r["path"] == "/rest/api/3/issue"]
    assert len(limited) == 1  # not retried into the limit
    assert waiting.retry_at is not None  # the reset: an hour away, rounded up to the minute
    assert 3599 <= (waiting.retry_at - sent_at).total_seconds() <= 3662 + VENDOR_WAIT_SPREAD_S
    # on the minute, or a few seconds after it (redrives after a reset are spread)
    past_the_minute = waiting.retry_at.timestamp() % 60
    assert past_the_minute < VENDOR_WAIT_SPREAD_S + 2 or past_the_minute > 58


async def test_salesforces_concurrent_request_limit_is_a_short_wait_not_an_hour(
    vendors, notify_settings, producer, read, running
):
    """Salesforce answers too many long-running requests at once with the same 403
    REQUEST_LIMIT_EXCEEDED as a spent daily allowance ("ConcurrentPerOrgLongTxn Limit
    exceeded"): it clears within seconds, so the delivery is tried again in seconds, not
    parked for request_limit_wait_s (an hour by default)."""
    salesforce = vendors["salesforce"]
    conv = conversation()
    salesforce.busy_next("/services/data")

    async with running(NotifyService(notify_settings(max_wait_s=10.0))):
        await publish_routed(producer, routed("sales", conversation=conv, author="7300"))
        records = await read([topics.DELIVERIES, topics.NOTIFICATIONS_DLQ],
                             lambda rs: len(deliveries(rs, conv)) >= 1)  # fmt: skip

    [delivered] = deliveries(records, conv)
    assert (delivered.outcome, delivered.attempts) == ("delivered", 2)
    assert any(r.get("Switchboard_Author_Id__c") == "7300"
               for r in salesforce.records["Lead"].values())  # fmt: skip


SALES_CASES = {"name": "sales-cases", "channel": "salesforce", "departments": ["sales"],
               "salesforce": {"object": "Case",
                              "external_id_field": "Switchboard_Conversation_Id__c"}}  # fmt: skip


async def test_a_salesforce_case_whose_answer_was_lost_is_not_commented_on_as_a_follow_up(
    vendors, notify_settings, producer, read, running
):
    """The upsert opens the Case but answers after the client's timeout. The retry finds the
    conversation's Case, and by the delivery's tag in its description knows it for its own
    create: recorded as created, and no comment repeating the tweet on it."""
    salesforce = vendors["salesforce"]
    conv = conversation()
    event = routed("sales", conversation=conv)
    upsert = f"/services/data/{salesforce.api_version}/sobjects/Case/"
    salesforce.delay_next(upsert, 2.0, method="PATCH")  # answered after the 1 s timeout

    async with running(NotifyService(notify_settings(SALES_CASES))):
        await publish_routed(producer, event)
        records = await read([topics.DELIVERIES, topics.NOTIFICATIONS_DLQ],
                             lambda rs: len(deliveries(rs, conv, "sales-cases")) >= 1)  # fmt: skip

    [delivery] = deliveries(records, conv, "sales-cases")
    assert (delivery.outcome, delivery.action) == ("delivered", "created")
    assert delivery.attempts >= 2
    [case] = [r for r in salesforce.records["Case"].values()
              if r["Switchboard_Conversation_Id__c"] == conv]  # fmt: skip
    assert delivery.external_id == case["Id"] and event.tweet.text in case["Description"]
    assert [
        c for c in salesforce.records["CaseComment"].values() if c["ParentId"] == case["Id"]
    ] == []


async def test_a_salesforce_case_keeps_its_first_tweet_and_takes_follow_ups_as_comments(
    vendors, notify_settings, producer, read, running
):
    """A Case per conversation: the first tweet opens it; later tweets are private comments on
    it, so what agents changed (its status) and its description stay, and a critical tweet
    raises its priority. A Case someone deleted is replaced by a new one."""
    salesforce = vendors["salesforce"]
    conv = conversation()
    events = [routed("sales", urgency, conversation=conv)
              for urgency in ("normal", "normal", "critical", "normal")]  # fmt: skip

    async with running(NotifyService(notify_settings(SALES_CASES))):
        opened = await delivered_first(producer, read, events[0], "sales-cases")
        salesforce.records["Case"][opened.external_id]["Status"] = "Working"  # an agent's
        for count, event in enumerate(events[1:3], start=2):
            await publish_routed(producer, event)
            records = await read(
                [topics.DELIVERIES, topics.NOTIFICATIONS_DLQ],
                lambda rs, n=count: len(deliveries(rs, conv, "sales-cases")) >= n,
            )
        case = dict(salesforce.records["Case"][opened.external_id])
        salesforce.delete_record("Case", opened.external_id)
        await publish_routed(producer, events[3])
        records = await read([topics.DELIVERIES, topics.NOTIFICATIONS_DLQ],
                             lambda rs: len(deliveries(rs, conv, "sales-cases")) >= 4)  # fmt: skip

    outcomes = [(d.outcome, d.action) for d in deliveries(records, conv, "sales-cases")]
    assert outcomes == [("delivered", "created"), ("delivered", "commented"),
                        ("delivered", "commented"), ("delivered", "created")]  # fmt: skip
    assert events[0].tweet.text in case["Description"] and case["Status"] == "Working"
    assert case["Priority"] == "High"  # raised by the critical tweet, from Medium
    comments = [c for c in salesforce.records["CaseComment"].values()
                if c["ParentId"] == opened.external_id]  # fmt: skip
    assert len(comments) == 2
    assert all(e.tweet.text in c["CommentBody"] for e, c in zip(events[1:3], comments, strict=True))
    assert all(c["IsPublished"] is False for c in comments)
    [replacement] = [r for r in salesforce.records["Case"].values()
                     if r["Switchboard_Conversation_Id__c"] == conv]  # fmt: skip
    assert events[3].tweet.text in replacement["Description"]


# Tickets go by the default property of tickets, switchboard_conversation (the stand-in has it)
FAN_TICKETS = {"name": "fan-tickets", "channel": "hubspot", "departments": ["marketing"],
               "hubspot": {"object": "tickets"}}  # fmt: skip


async def test_a_hubspot_upsert_by_a_property_without_unique_values_waits_for_a_person(
    vendors, notify_settings, producer, read, running
):
    """HubSpot upserts only by a property with unique values: by any other the request is
    refused (400), every time, so the delivery is parked with HubSpot's reason at once."""
    by_name = {"name": "fans-by-name", "channel": "hubspot", "departments": ["marketing"],
               "hubspot": {"object": "contacts", "id_property": "twitter_handle"}}  # fmt: skip
    conv = conversation()

    async with running(NotifyService(notify_settings(by_name))):
        await publish_routed(producer, routed("marketing", conversation=conv))
        records = await read(
            [topics.DELIVERIES, topics.NOTIFICATIONS_DLQ], lambda rs: len(deliveries(rs, conv)) >= 2
        )

    outcomes = {d.target: (d.outcome, d.attempts, d.error) for d in deliveries(records, conv)}
    assert outcomes["fans"][0] == "delivered"  # by twitter_user_id, the contacts' default
    outcome, attempts, error = outcomes["fans-by-name"]
    assert (outcome, attempts) == ("failed", 1)
    assert "non-unique 0-1 property twitter_handle" in (error or "")


async def test_a_hubspot_tickets_follow_ups_leave_its_stage_and_subject_to_the_agents(
    vendors, notify_settings, producer, read, running
):
    """The conversation's first tweet opens the ticket; an agent closes it; later tweets update
    its content without reopening it or renaming it, and only a critical one raises its
    priority (a later normal tweet does not lower it). The content keeps every tweet of the
    conversation in order: the first complaint is not overwritten by the follow-ups."""
    hubspot = vendors["hubspot"]
    conv = conversation()
    events = [routed("marketing", urgency, conversation=conv)
              for urgency in ("normal", "critical", "normal")]  # fmt: skip

    async with running(NotifyService(notify_settings(FAN_TICKETS))):
        opened = await delivered_first(producer, read, events[0], "fan-tickets")
        hubspot.objects["tickets"][opened.external_id]["properties"]["hs_pipeline_stage"] = "4"
        for count, event in enumerate(events[1:], start=2):
            await publish_routed(producer, event)
            records = await read(
                [topics.DELIVERIES, topics.NOTIFICATIONS_DLQ],
                lambda rs, n=count: len(deliveries(rs, conv, "fan-tickets")) >= n,
            )

    outcomes = [(d.outcome, d.action) for d in deliveries(records, conv, "fan-tickets")]
    assert outcomes == [("delivered", "created"), ("delivered", "upserted"),
                        ("delivered", "upserted")]  # fmt: skip
    ticket = hubspot.objects["tickets"][opened.external_id]["properties"]
    assert ticket["hs_pipeline_stage"] == "4"  # closed by the agent, not reopened
    assert events[0].tweet.id in ticket["subject"]
    positions = [ticket["content"].find(event.tweet.text) for event in events]
    assert -1 not in positions and positions == sorted(positions)
    assert ticket["hs_ticket_priority"] == "HIGH"  # raised by the critical tweet, kept after


async def test_a_hubspot_ticket_opens_in_the_pipeline_and_stage_the_subscription_names(
    vendors, notify_settings, producer, read, running
):
    """An account that replaced HubSpot's default support pipeline names its own (internal
    ids): a new ticket opens there, not in pipeline 0."""
    hubspot = vendors["hubspot"]
    own = {**FAN_TICKETS, "hubspot": {"object": "tickets", "pipeline": "718", "stage": "1042"}}
    event = routed("marketing", conversation=conversation())

    async with running(NotifyService(notify_settings(own))):
        opened = await delivered_first(producer, read, event, "fan-tickets")

    ticket = hubspot.objects["tickets"][opened.external_id]["properties"]
    assert (ticket["hs_pipeline"], ticket["hs_pipeline_stage"]) == ("718", "1042")


async def test_a_hubspot_ticket_someone_deleted_is_opened_again(
    vendors, notify_settings, producer, read, running
):
    """Someone deleted the conversation's ticket, which the ledger recorded. HubSpot refuses
    the follow-up's upsert (it would create a ticket without a pipeline stage): the tweet opens
    a new ticket, with the conversation so far, instead of being rejected for good."""
    hubspot = vendors["hubspot"]
    conv = conversation()
    events = [routed("marketing", conversation=conv) for _ in range(2)]
    gone = notify_metrics.THREADS_GONE.labels("hubspot")._value.get()

    async with running(NotifyService(notify_settings(FAN_TICKETS))):
        opened = await delivered_first(producer, read, events[0], "fan-tickets")
        del hubspot.objects["tickets"][opened.external_id]
        await publish_routed(producer, events[1])
        records = await read([topics.DELIVERIES, topics.NOTIFICATIONS_DLQ],
                             lambda rs: len(deliveries(rs, conv, "fan-tickets")) >= 2)  # fmt: skip

    outcomes = [(d.outcome, d.action) for d in deliveries(records, conv, "fan-tickets")]
    assert outcomes == [("delivered", "created"), ("delivered", "created")]
    [reopened] = [t for t in hubspot.objects["tickets"].values()
                  if t["properties"].get("switchboard_conversation") == conv]  # fmt: skip
    assert (
        deliveries(records, conv, "fan-tickets")[1].external_id
        == reopened["id"]
        != opened.external_id
    )
    ticket = reopened["properties"]
    assert ticket["hs_pipeline_stage"] == "1" and events[1].tweet.id in ticket["subject"]
    positions = [ticket["content"].find(event.tweet.text) for event in events]
    assert -1 not in positions and positions == sorted(positions)
    assert notify_metrics.THREADS_GONE.labels("hubspot")._value.get() == gone + 1


async def test_an_upsert_that_loses_a_race_for_its_author_updates_the_winners_lead(
    vendors, notify_settings, producer, read, running
):
    """Two tweets of a new author delivered at once (two conversations, or two replicas): one
    upsert inserts the Lead, the other is refused 400 DUPLICATE_VALUE. That one is tried again
    and updates the Lead, instead of being rejected for good."""
    salesforce = vendors["salesforce"]
    salesforce.race_next_upsert()
    conv = conversation()

    async with running(NotifyService(notify_settings())):
        await publish_routed(producer, routed("sales", conversation=conv, author="7300"))
        records = await read([topics.DELIVERIES, topics.NOTIFICATIONS_DLQ],
                             lambda rs: len(deliveries(rs, conv)) >= 1)  # fmt: skip

    [delivered] = deliveries(records, conv)
    assert delivered.outcome == "delivered" and delivered.attempts == 2
    leads = [r for r in salesforce.records["Lead"].values()
             if r.get("Switchboard_Author_Id__c") == "7300"]  # fmt: skip
    assert len(leads) == 1


async def test_a_duplicate_on_another_unique_field_waits_for_a_person_not_retried(
    vendors, notify_settings, producer, read, running
):
    """The org made Company Unique, and another author's Lead already has this one's (a
    username that changed hands): Salesforce refuses 400 DUPLICATE_VALUE on Company. Unlike a
    race for the external id, trying again repeats it: parked once for a person, no retry."""
    salesforce = vendors["salesforce"]
    salesforce.make_unique("Lead", "Company")
    first, second = conversation(), conversation()

    async with running(NotifyService(notify_settings(attempts=3))):
        await publish_routed(producer, routed("sales", conversation=first, author="7400",
                                              username="handed_on"))  # fmt: skip
        await read([topics.DELIVERIES], lambda rs: len(deliveries(rs, first)) >= 1)
        # the same username (so the same Company) under another author id
        await publish_routed(producer, routed("sales", conversation=second, author="7401",
                                              username="handed_on"))  # fmt: skip
        records = await read([topics.DELIVERIES, topics.NOTIFICATIONS_DLQ],
                             lambda rs: len(deliveries(rs, second)) >= 1)  # fmt: skip

    [refused] = deliveries(records, second)
    assert refused.outcome == "failed" and refused.attempts == 1 and refused.retry_at is None
    assert "DUPLICATE_VALUE" in refused.error and "Company" in refused.error


async def test_picklist_values_are_the_orgs_own(vendors, notify_settings, producer, read, running):
    """The org restricts LeadSource to its own values: a subscription that names one of them
    is accepted, the project's default is refused with Salesforce's error, not sent blindly."""
    salesforce = vendors["salesforce"]
    salesforce.restrict_picklist("Lead", "LeadSource", {"Web", "Social Media"})
    own = {"name": "social-leads", "channel": "salesforce", "departments": ["sales"],
           "salesforce": {"object": "Lead", "lead_source": "Social Media",
                          "external_id_field": "Social_Author_Id__c"}}  # fmt: skip
    conv = conversation()

    async with running(NotifyService(notify_settings(own))):
        await publish_routed(producer, routed("sales", conversation=conv, author="7100"))
        records = await read([topics.DELIVERIES, topics.NOTIFICATIONS_DLQ],
                             lambda rs: len(deliveries(rs, conv)) >= 2)  # fmt: skip

    outcomes = {d.target: d for d in deliveries(records, conv)}
    assert outcomes["social-leads"].outcome == "delivered"
    assert outcomes["sales-leads"].outcome == "failed"
    assert "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST" in outcomes["sales-leads"].error
    [lead] = [r for r in salesforce.records["Lead"].values()
              if r.get("Social_Author_Id__c") == "7100"]  # fmt: skip
    assert lead["LeadSource"] == "Social Media"


async def test_a_target_down_is_parked_then_redriven_once_it_is_back(
    kafka, vendors, notify_settings, producer, read, running
):
    jira = vendors["jira"]
    conv = conversation()
    jira.fail_next("/rest/api/3", 503, count=100)
    event = routed("legal", conversation=conv)

    service = NotifyService(notify_settings(attempts=2))

    def counted() -> tuple[float, float, int]:  # the gauge, its Jira part, the table's count
        sizes = {m.labels["channel"]: m.value for f in notify_metrics.DLQ_SIZE.collect()
                 for m in f.samples}  # fmt: skip
        return sum(sizes.values()), sizes.get("jira", 0.0), len(list(service.parked.keys()))

    async with running(service):
        await publish_routed(producer, event)
        await read([topics.NOTIFICATIONS_DLQ], lambda rs: len(deliveries(rs, conv)) >= 1)
        parked = await listed(kafka, Filters(delivery_id=f"{event.tweet.id}:jira:legal-board"))
        assert len(parked) == 1 and "503" in parked[0].error and parked[0].attempts == 2
        # the sweep counts it (and, on a shared cluster, earlier tests' parked deliveries)
        await wait_for(lambda: counted()[0] == counted()[2] >= counted()[1] >= 1)
        size, on_jira, held = counted()
        jira.clear_failures()  # the target is back
        assert await redrive(kafka, parked) == 1
        records = await read([topics.DELIVERIES], lambda rs: len(deliveries(rs, conv)) >= 1)
        assert await redrive(kafka, parked) == 1  # a second redrive of the same...
        await wait_for(lambda: counted() == (size - 1, on_jira - 1, held - 1))

    assert [d.outcome for d in deliveries(records, conv)] == ["delivered"]
    issues = [
        i for i in jira.issues.values() if event.tweet.text in str(i["fields"]["description"])
    ]
    assert len(issues) == 1  # ...makes no second issue
    assert await parked_deliveries(kafka, Filters(delivery_id=parked[0].delivery_id)) == []


async def test_refusals_of_single_requests_leave_the_circuit_closed_and_conflicts_are_retried(
    vendors, notify_settings, producer, read, running
):
    """A target that answers is up: three creates refused (HTTP 400: a project that takes no
    such issue; 403: a project where the user may not create issues, which Jira's API
    documents as a missing permission, not refused credentials) are parked for a person, the
    channel's circuit stays closed (two failures open it), and the next delivery goes out; a
    409 (a concurrent update) is tried again."""
    jira = vendors["jira"]
    jira.fail_next("/rest/api/3/issue", 400, count=1)
    jira.fail_next("/rest/api/3/issue", 403, count=2)
    refused = [routed("legal", conversation=conversation()) for _ in range(3)]
    after = routed("legal", conversation=conversation())
    service = NotifyService(notify_settings(attempts=2, circuit_failures=2))

    async with running(service):
        await publish_routed(producer, *refused)
        ids = [e.tweet.conversation_id for e in refused]
        parked = await read(
            [topics.NOTIFICATIONS_DLQ], lambda rs: all(deliveries(rs, c) for c in ids)
        )
        jira.fail_next("/rest/api/3/issue", 409, count=1)
        await publish_routed(producer, after)
        records = await read(
            [topics.DELIVERIES], lambda rs: deliveries(rs, after.tweet.conversation_id)
        )

    refusals = []
    for event in refused:
        [parking] = deliveries(parked, event.tweet.conversation_id)
        assert parking.retry_at is None
        refusals.append(parking.error.split(":")[0])
    assert sorted(refusals) == ["HTTP 400", "HTTP 403", "HTTP 403"]
    [delivered] = deliveries(records, after.tweet.conversation_id)
    assert (delivered.outcome, delivered.attempts) == ("delivered", 2)
    assert service.breakers["jira"].state == service.breakers["jira"].CLOSED


async def test_deliveries_parked_while_a_target_is_down_go_out_by_themselves_once_it_is_back(
    kafka, vendors, notify_settings, producer, read, running
):
    """Jira is down: the first deliveries fail their attempts and open the circuit, the next
    are parked by it; all are tried again by themselves, backing off, and go out once Jira is
    back, one issue each, without anyone redriving them. A rejection stays parked for a person."""
    jira, salesforce = vendors["jira"], vendors["salesforce"]
    jira.fail_next("/rest/api/3", 503, count=10_000)
    salesforce.fail_next("/services", 400, count=1)
    failing, tripped = [conversation() for _ in range(2)], [conversation() for _ in range(2)]
    events = {c: routed("legal", conversation=c) for c in failing + tripped}
    rejected = routed("sales", conversation=conversation())
    # The circuit stays open 10 s: long enough for the tripped ones to reach it open on a
    # loaded machine (reading the DLQ between the two takes seconds there).
    settings = notify_settings(attempts=1, circuit_failures=2, circuit_cooldown_s=10.0,
                               redrive_after_s=1.0, redrive_max_wait_s=2.0,
                               redrive_for_hours=1.0)  # fmt: skip
    service = NotifyService(settings)

    async with running(service):
        await publish_routed(producer, *(events[c] for c in failing), rejected)
        await read([topics.NOTIFICATIONS_DLQ], lambda rs: all(deliveries(rs, c) for c in failing))
        await publish_routed(producer, *(events[c] for c in tripped))
        parked = await read(
            [topics.NOTIFICATIONS_DLQ],
            lambda rs: all(deliveries(rs, c) for c in [*events, rejected.tweet.conversation_id]),
        )
        jira.clear_failures()  # Jira is back
        records = await read(
            [topics.DELIVERIES], lambda rs: all(deliveries(rs, c) for c in events), timeout_s=60
        )

        def parked_now() -> set[str]:
            held = (decode(ParkedDelivery, v) for v in service.parked.values())
            return {p.routed.tweet.conversation_id for p in held}

        mine = {*events, rejected.tweet.conversation_id}
        # the delivered ones leave the table; a wrong outcome times out here and fails below
        with contextlib.suppress(TimeoutError):
            await wait_for(lambda: parked_now() & mine == {rejected.tweet.conversation_id})
        still_parked = parked_now()

    first_parks = {c: deliveries(parked, c)[0] for c in events}
    assert all("503" in first_parks[c].error for c in failing)
    assert all("circuit open" in first_parks[c].error for c in tripped)
    assert all(d.retry_at is not None for d in first_parks.values())
    [refused] = deliveries(parked, rejected.tweet.conversation_id)
    assert "HTTP 400" in refused.error and refused.retry_at is None
    for conv, event in events.items():
        assert [d.outcome for d in deliveries(records, conv)] == ["delivered"]
        issues = [i for i in jira.issues.values()
                  if event.tweet.text in str(i["fields"]["description"])]  # fmt: skip
        assert len(issues) == 1
    # The rejection stays parked for a person (a shared cluster holds earlier tests' too).
    assert still_parked & {*events, rejected.tweet.conversation_id} == {
        rejected.tweet.conversation_id
    }
    left = await parked_deliveries(kafka, Filters(channel="jira"))
    assert not {d.conversation_id for d in left} & set(events)
    assert await parked_deliveries(kafka, Filters(delivery_id=refused.delivery_id)) != []


async def test_a_rejection_nobody_redrives_is_forgotten_after_the_retention(
    kafka, vendors, notify_settings, producer, read, running, caplog
):
    """A delivery Salesforce rejected waits for a person: held parked, and listed by
    `switchboard dlq list`, until the ledger's retention has passed since, then forgotten by
    notify, with a warning naming it, and no longer listed (the DLQ topic keeps its record)."""
    caplog.set_level("WARNING", logger="switchboard.notify.service")
    vendors["salesforce"].fail_next("/services", 400, count=1)
    event = routed("sales", conversation=conversation())
    # twenty seconds: time to see it held and listed first on a loaded machine
    service = NotifyService(notify_settings(retention_hours=20 / 3600))

    def held() -> set[str]:
        return {p.delivery_id for p in (decode(ParkedDelivery, v) for v in service.parked.values())}

    async with running(service):
        await publish_routed(producer, event)
        records = await read([topics.NOTIFICATIONS_DLQ],
                             lambda rs: deliveries(rs, event.tweet.conversation_id))  # fmt: skip
        [refused] = deliveries(records, event.tweet.conversation_id)
        assert refused.delivery_id in held() and refused.retry_at is None
        [shown] = await listed(kafka, Filters(delivery_id=refused.delivery_id))
        await wait_for(lambda: refused.delivery_id not in held(), timeout_s=60)
        forgotten_after = datetime.now(UTC) - shown.parked_at

    assert "HTTP 400" in (shown.error or "") and shown.retry_at is None
    assert forgotten_after >= timedelta(seconds=10)
    [said] = [r for r in caplog.records  # a shared cluster's earlier rejections may be too
              if r.getMessage() == "a parked delivery nobody redrove is forgotten"
              and r.delivery_id == refused.delivery_id]  # fmt: skip
    assert "HTTP 400" in said.error
    assert await parked_deliveries(kafka, Filters(delivery_id=refused.delivery_id)) == []
    dlq = await read([topics.NOTIFICATIONS_DLQ],
                     lambda rs: deliveries(rs, event.tweet.conversation_id))  # fmt: skip
    assert [d.delivery_id for d in deliveries(dlq, event.tweet.conversation_id)] == [
        refused.delivery_id
    ]  # the topic keeps the record


async def test_dlq_list_shows_the_latest_entry_of_each_delivery_notify_holds_parked(
    kafka, producer
):
    """`switchboard dlq list` reads the parked table's changelog: the latest entry of each
    delivery id, and none once a tombstone says it is done, whatever the DLQ topic still holds
    of it (the ledger that recorded it done forgets the conversation a retention later)."""
    now = datetime.now(UTC)

    def entry(channel: str, subscription: str, minutes_ago: int) -> ParkedDelivery:
        event = routed("legal", conversation=conversation())
        since = now - timedelta(minutes=minutes_ago)
        return ParkedDelivery(
            delivery_id=f"{event.tweet.id}:{channel}:{subscription}", channel=channel,
            subscription=subscription, department="legal", routed=event, parks=1,
            first_parked_at=since, parked_at=since, attempts=3, error="HTTP 503",
        )  # fmt: skip

    done, again = entry("jira", "legal-board", 3), entry("jira", "legal-board", 2)
    other = entry("zendesk", "support-queue", 1)  # listed oldest first
    for value in (done, again, other, again.model_copy(update={"parks": 2})):
        key = value.delivery_id.encode()
        await producer.send_and_wait(topics.NOTIFICATIONS_PARKED, encode(value), key=key)
    await producer.send_and_wait(topics.NOTIFICATIONS_PARKED, None, key=done.delivery_id.encode())
    failed = Delivery(
        delivery_id=done.delivery_id, tweet_id=done.routed.tweet.id,
        conversation_id=done.conversation_id, channel="jira", target="legal-board",
        department="legal", urgency="high", outcome="failed", attempts=3, error="HTTP 503",
        routed=done.routed, trace=done.routed.trace,
    )  # fmt: skip
    await producer.send_and_wait(
        topics.NOTIFICATIONS_DLQ, encode(failed), key=done.conversation_id.encode()
    )
    ours = {done.delivery_id, again.delivery_id, other.delivery_id}

    async def shown(filters: Filters) -> list[tuple[str, int]]:
        found = await parked_deliveries(kafka, filters)
        return [(p.delivery_id, p.parks) for p in found if p.delivery_id in ours]

    assert await shown(Filters()) == [(again.delivery_id, 2), (other.delivery_id, 1)]
    assert await shown(Filters(channel="zendesk")) == [(other.delivery_id, 1)]
    assert await shown(Filters(target="legal-board")) == [(again.delivery_id, 2)]
    assert await shown(Filters(delivery_id=done.delivery_id)) == []


async def test_two_replicas_each_keep_and_redrive_the_parked_deliveries_of_their_partitions(
    own_kafka, own_producer, vendors, notify_settings, running
):
    """Two notify replicas, Jira down: each parked delivery waits in the replica that owns its
    conversation's partition, and only there (no replica holds or redrives another's); once
    Jira is back each goes out once: one delivery, one issue."""
    jira = vendors["jira"]
    jira.fail_next("/rest/api/3", 503, count=10_000)
    legal = topics.department_topic("legal")
    partition = DefaultPartitioner()

    def replica(member: str) -> NotifyService:
        broker = own_kafka.model_copy(update={"group_instance_id": member})
        return NotifyService(notify_settings(attempts=1, circuit_cooldown_s=1.0,
                                             redrive_after_s=1.0, redrive_max_wait_s=1.0,
                                             redrive_for_hours=1.0, broker=broker))  # fmt: skip

    def owned(service: NotifyService) -> set[int]:
        return {tp.partition for tp in service.app.consumer.assignment() if tp.topic == legal}

    def held(service: NotifyService) -> set[str]:
        parked = (decode(ParkedDelivery, v) for v in service.parked.values())
        return {p.routed.tweet.conversation_id for p in parked}

    def on_disk(service: NotifyService) -> set[int]:
        """The partitions whose stores of ``parked`` are on the replica's disk."""
        store = service.parked.data
        return {p for p in range(partitions) if store.partition_path(p).exists()}

    # On a broker of the test's own: static members stay in their group after they stop.
    first, second = replica("notify-a"), replica("notify-b")
    partitions = notify_settings().config.topics.partitions
    async with running(first):
        # The first replica owns every partition, and keeps a store for each, until the second
        # joins: then it keeps on disk only what it still owns (a partition given back later
        # is restored from the changelog, where deletions made meanwhile are).
        await wait_for(lambda: len(owned(first)) == partitions, timeout_s=60)
        await wait_for(lambda: on_disk(first) == set(range(partitions)), timeout_s=30)
        async with running(second):
            await wait_for(lambda: bool(owned(first)) and bool(owned(second)), timeout_s=60)
            await wait_for(lambda: on_disk(first) == owned(first), timeout_s=30)
            # Two conversations on every partition, so both replicas hold some (random ids alone
            # left one replica with none in about one run in twenty-five).
            convs = keys_on_every_partition(partitions, 2, iter(conversation, None))
            events = {c: routed("legal", conversation=c) for c in convs}
            await publish_routed(own_producer, *events.values())
            await wait_for(lambda: held(first) | held(second) == set(events), timeout_s=30)
            holdings = {"a": held(first), "b": held(second)}
            ownership = {"a": owned(first), "b": owned(second)}
            jira.clear_failures()  # Jira is back
            sent = lambda rs: all(deliveries(rs, c) for c in events)  # noqa: E731
            await read_topics(own_kafka, [topics.DELIVERIES], sent, timeout_s=30)
            await asyncio.sleep(3)  # three more rounds of redrives: any second one would be out
            records = await read_topics(own_kafka, [topics.DELIVERIES], lambda rs: False, 2)
            left = held(first) | held(second)

    for name in ("a", "b"):
        assert holdings[name]  # conversations on every partition, so on both replicas
        for conv in holdings[name]:
            assert partition(conv.encode(), list(range(partitions)), None) in ownership[name]
    assert not holdings["a"] & holdings["b"]
    for conv, event in events.items():
        assert [d.outcome for d in deliveries(records, conv)] == ["delivered"]
        issues = [i for i in jira.issues.values()
                  if event.tweet.text in str(i["fields"]["description"])]  # fmt: skip
        assert len(issues) == 1
    assert left == set()


async def test_a_failing_channel_does_not_block_the_others(
    vendors, notify_settings, producer, read, running
):
    vendors["salesforce"].fail_next("/services", 500, count=100)
    sales, security = conversation(), conversation()

    async with running(NotifyService(notify_settings(attempts=2))):
        await publish_routed(producer, routed("sales", conversation=sales),
                             routed("it_security", conversation=security))  # fmt: skip
        records = await read(
            [topics.DELIVERIES, topics.NOTIFICATIONS_DLQ],
            lambda rs: deliveries(rs, sales) and deliveries(rs, security),
        )

    assert [d.outcome for d in deliveries(records, security)] == ["delivered"]
    assert [d.outcome for d in deliveries(records, sales)] == ["failed"]


async def test_notify_killed_mid_batch_makes_each_ticket_once(
    vendors, notify_settings, producer, read, running
):
    zendesk = vendors["zendesk"]
    convs = [conversation() for _ in range(8)]
    events = [routed("customer_service", conversation=c) for c in convs]
    for _ in range(4):
        zendesk.delay_next("/api/v2/tickets", 0.8)  # the first creates are slow

    service = NotifyService(notify_settings())
    await service.start()
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await publish_routed(producer, *events)
    await wait_for(lambda: any(conv in str(zendesk.tickets) for conv in convs), timeout_s=30)
    for agent in service.app.agents.values():
        agent.cancel()  # killed: the deliveries at work are neither finished nor committed
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await service.close()

    async with running(NotifyService(notify_settings())):
        done = lambda rs: {d.conversation_id for d in deliveries(rs, "nc")} >= set(convs)  # noqa: E731
        await read([topics.DELIVERIES], done)

    for conv in convs:
        mine = [t for t in zendesk.tickets.values() if conv in (t.get("external_id") or "")]
        assert len(mine) == 1, conv  # none missing, none doubled
        assert len(zendesk.comments[mine[0]["id"]]) == 1, conv  # and not commented on twice
    lookups = [r for r in zendesk.requests if r["method"] == "GET" and "external_id" in r["query"]
               and any(c in r["query"]["external_id"] for c in convs)]  # fmt: skip
    assert len(lookups) > len(convs)  # the restarted notify did look again: the kill was real


async def test_a_burst_to_an_http_channel_shares_a_few_kept_alive_connections(
    vendors, notify_settings, producer, read, running
):
    """Forty tweets for Zendesk at once: at most ``delivery.concurrency`` requests in flight,
    over as many connections, each reused; not a connection per delivery."""
    zendesk = vendors["zendesk"]
    zendesk.delay_next("/api/v2", 0.05, count=200)  # answers overlap, as a real API's do
    burst = conversation()
    events = [routed("customer_service", conversation=f"{burst}-{i}") for i in range(40)]
    await publish_routed(producer, *events)  # all waiting before notify starts: one batch

    async with running(NotifyService(notify_settings(concurrency=4))):
        # every conversation delivered: a redelivery (a rebalance as notify joins its group)
        # publishes a conversation's record again, so 40 records may cover 39 of them
        wanted = {event.tweet.conversation_id for event in events}
        records = await read([topics.DELIVERIES], lambda rs: delivered(rs, [burst]) >= wanted)

    assert sorted({d.outcome for d in deliveries(records, burst)}) == ["delivered"]
    assert sum(burst in (t.get("external_id") or "") for t in zendesk.tickets.values()) == 40
    peers = {r["peer"] for r in zendesk.requests}
    assert len(zendesk.requests) >= 80 and 1 <= len(peers) <= 4, len(peers)


async def listed(kafka, filters: Filters, timeout_s: float = 15) -> list[ParkedDelivery]:
    """What `switchboard dlq list` shows for ``filters``, once it shows something: the parked
    table's changelog entry is written beside the DLQ record, not before it."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not (found := await parked_deliveries(kafka, filters)):
        assert asyncio.get_running_loop().time() < deadline, f"nothing listed for {filters}"
        await asyncio.sleep(0.2)
    return found


async def _dlq_list(kafka, delivery_id: str) -> str:
    """`switchboard dlq list --id ID`, run as an operator would, in a process of its own."""
    process = await asyncio.create_subprocess_exec(
        *SWITCHBOARD, "dlq", "list", "--id", delivery_id,
        env=service_environment(kafka, COLUMNS="400"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()
