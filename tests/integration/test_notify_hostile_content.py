"""Hostile tweets through notify to every channel: a real SMTP server on loopback, the vendor
stand-ins (which refuse what the real APIs refuse, text over their limits included) and the
embedded broker. One tweet reaches eight subscriptions of the legal department: email, the
signed webhook, Zendesk, Jira, a Salesforce Lead and Case, a HubSpot contact and ticket."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest
import yaml
from aiosmtpd.controller import Controller

from switchboard.notify.sanitize import utf16_units
from switchboard.notify.service import NotifyService
from switchboard.notify.settings import NotifySettings, SmtpSettings
from switchboard.shared import topics
from switchboard.shared.broker import free_port
from switchboard.shared.events import Author, DecodeError, Delivery, decode, encode
from tests.conftest import CONFIG_FILE
from tests.factories import HOSTILE, INVISIBLE, a_classified_tweet, routed_from

_ids = itertools.count(1)
SUBSCRIPTIONS = 8
HOSTILE_NAME = "<b>Ana</b>\r\nBcc: x@evil.example @here \u202eevil"


class SmtpRecorder:
    """An SMTP server on loopback that keeps each envelope and the message as received."""

    def __init__(self) -> None:
        self.received: list[tuple[list[str], bytes]] = []
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: ANN001 - aiosmtpd
        self.received.append((list(envelope.rcpt_tos), envelope.original_content))
        return "250 OK"

    def messages(self) -> list[tuple[list[str], EmailMessage]]:
        return [(to, message_from_bytes(raw, policy=policy.default)) for to, raw in self.received]


@pytest.fixture
async def targets(vendors):
    smtp = SmtpRecorder()
    smtp.controller.start()
    yield vendors | {"smtp": smtp}
    smtp.controller.stop()


@pytest.fixture
def settings(kafka, targets, tmp_path):
    def build(**redact: bool) -> NotifySettings:
        config = yaml.safe_load(CONFIG_FILE.read_text())
        legal = {"departments": ["legal"]}
        config["notify"] = {
            "redact": redact,
            "connections": {
                "zendesk": {"base_url": targets["zendesk"].base_url, "email": "ops@acme.example",
                            "api_token": {"env": "ZENDESK_TOKEN"}},
                "jira": {"base_url": targets["jira"].base_url, "email": "ops@acme.example",
                         "api_token": {"env": "JIRA_TOKEN"}},
                "salesforce": {"instance_url": targets["salesforce"].base_url,
                               "access_token": {"env": "SF_TOKEN"}},
                "hubspot": {"base_url": targets["hubspot"].base_url,
                            "token": {"env": "HUBSPOT_TOKEN"}},
            },
            "delivery": {"attempts": 2, "max_wait_s": 0.2, "timeout_s": 2.0},
            "subscriptions": [
                {"name": "legal-mail", "to": ["legal@acme.example"], **legal},
                {"name": "legal-hook", "channel": "webhook", **legal,
                 "webhook": {"url": targets["webhook"].url, "secret": {"env": "HOOK_SECRET"}}},
                {"name": "legal-desk", "channel": "zendesk", **legal},
                {"name": "legal-board", "channel": "jira", "jira": {"project": "LEG"}, **legal},
                {"name": "legal-leads", "channel": "salesforce", **legal},
                {"name": "legal-cases", "channel": "salesforce", **legal,
                 "salesforce": {"object": "Case",
                                "external_id_field": "Switchboard_Conversation_Id__c"}},
                {"name": "legal-contacts", "channel": "hubspot", **legal},
                {"name": "legal-tickets", "channel": "hubspot", **legal,
                 "hubspot": {"object": "tickets", "id_property": "switchboard_conversation"}},
            ],
        }  # fmt: skip
        path = tmp_path / "switchboard.yaml"
        path.write_text(yaml.safe_dump(config))
        smtp = SmtpSettings(host="127.0.0.1", port=targets["smtp"].port, timeout_s=2)
        return NotifySettings.load(config_file=path, kafka=kafka, smtp=smtp)

    return build


def legal_tweet(text: str, name: str | None = None):
    stamp = f"{next(_ids)}-{datetime.now(UTC).timestamp():.0f}"
    event = a_classified_tweet(
        "legal", 0.9, "high", id=f"h{stamp}", conversation_id=f"hc{stamp}", text=text,
        author=Author(id=f"a{stamp}", username=f"user{stamp.split('-')[0]}", name=name),
    )  # fmt: skip
    return routed_from(event)


async def deliver(service: NotifyService, routed, producer, read, running) -> list[Delivery]:  # noqa: ANN001
    """Publish ``routed`` and wait until every subscription has an outcome."""
    conversation = routed.tweet.conversation_id

    def mine(records) -> list[Delivery]:  # noqa: ANN001
        found = []
        for record in records:
            if record.key == conversation.encode():
                try:
                    found.append(decode(Delivery, record.value))
                except DecodeError:
                    continue
        return found

    async with running(service):
        await producer.send_and_wait(routed.route.topic, encode(routed), key=conversation.encode())
        records = await read(
            [topics.DELIVERIES, topics.NOTIFICATIONS_DLQ],
            lambda rs: len(mine(rs)) >= SUBSCRIPTIONS,
        )
    return mine(records)


def stored(targets, routed) -> dict[str, object]:  # noqa: ANN001
    """What each target holds for this tweet, by subscription."""
    t = routed.tweet
    [(to, email)] = [(to, m) for to, m in targets["smtp"].messages()
                     if m["X-Switchboard-Tweet-Id"] == t.id]  # fmt: skip
    [hook] = [p for p in targets["webhook"].received if p["event"]["tweet"]["id"] == t.id]
    zendesk = targets["zendesk"]
    [ticket] = [x for x in zendesk.tickets.values() if t.conversation_id in x["external_id"]]
    [issue] = [i for i in targets["jira"].issues.values()
               if f"@{t.author.username}:" in i["fields"]["summary"]]  # fmt: skip
    salesforce, hubspot = targets["salesforce"].records, targets["hubspot"].objects
    [lead] = [r for r in salesforce["Lead"].values()
              if r["Switchboard_Author_Id__c"] == t.author.id]  # fmt: skip
    [case] = [r for r in salesforce["Case"].values()
              if r["Switchboard_Conversation_Id__c"] == t.conversation_id]  # fmt: skip
    [contact] = [c["properties"] for c in hubspot["contacts"].values()
                 if c["properties"].get("twitter_user_id") == t.author.id]  # fmt: skip
    [hs_ticket] = [
        p["properties"]
        for p in hubspot["tickets"].values()
        if p["properties"].get("switchboard_conversation") == t.conversation_id
    ]
    return {
        "email": (to, email), "webhook": hook, "zendesk": (ticket, zendesk.comments[ticket["id"]]),
        "jira": issue["fields"], "lead": lead, "case": case, "contact": contact,
        "hubspot_ticket": hs_ticket,
    }  # fmt: skip


async def test_hostile_text_is_inert_in_every_channel(settings, targets, producer, read, running):
    routed = legal_tweet(HOSTILE, name=HOSTILE_NAME)

    outcomes = await deliver(NotifyService(settings()), routed, producer, read, running)

    assert sorted(d.outcome for d in outcomes) == ["delivered"] * SUBSCRIPTIONS
    found = stored(targets, routed)
    # Email, as the SMTP server received it: the configured recipient only, no added header.
    to, email = found["email"]
    assert to == ["legal@acme.example"]
    assert email["Bcc"] is None and email["X-Injected"] is None
    assert "\n" not in email["Subject"] and "Bcc: victim" in email["Subject"]  # text, one line
    # SMTP carries CRLF line ends; a lone CR would be the tweet's
    html = email.get_body(("html",)).get_content().replace("\r\n", "\n")
    text = email.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert "<script" not in html and "<img" not in html and "<b>Ana" not in html
    assert "&lt;script&gt;" in html and "{{ 7*7 }}" in text and "${jndi:" in text
    # Webhook: the event is the exact text, as data; the chat-ready text pings nobody.
    hook = found["webhook"]
    assert hook["event"]["tweet"]["text"] == HOSTILE
    assert "<!channel>" not in hook["text"] and "&lt;!channel&gt;" in hook["text"]
    assert "@here" not in hook["text"] and "\uff20here" in hook["text"]
    # Zendesk: an escaped html_body, so neither HTML nor Markdown applies.
    ticket, [comment] = found["zendesk"]
    assert "<script" not in comment["html_body"] and "<img" not in comment["html_body"]
    assert "<script>alert(1)</script>" in comment["plain_body"]  # shown as text
    assert "\n" not in ticket["subject"]
    # Jira: literal text nodes only, no marks, mentions or links.
    jira = found["jira"]
    nodes = [n for p in jira["description"]["content"] for n in p["content"]]
    assert {n["type"] for n in nodes} == {"text"} and all("marks" not in n for n in nodes)
    assert "\n" not in jira["summary"] and len(jira["summary"]) <= 255
    # CRM records: plain one-line names, inert descriptions.
    assert "\n" not in found["lead"]["LastName"] and len(found["lead"]["LastName"]) <= 80
    assert "\n" not in found["contact"]["lastname"]
    shown = [text, html, email["Subject"], hook["text"], comment["html_body"], ticket["subject"],
             json.dumps(jira, ensure_ascii=False), found["lead"]["Description"],
             found["lead"]["LastName"], found["case"]["Subject"], found["case"]["Description"],
             found["contact"]["lastname"], found["hubspot_ticket"]["content"],
             found["hubspot_ticket"]["subject"]]  # fmt: skip
    for value in shown:
        assert not any(ch in value for ch in INVISIBLE), [c for c in INVISIBLE if c in value]
        assert "@channel" not in value and "a" * 300 not in value, value[:80]
        assert "p\u0430ypal" not in value, value[:80]  # the look-alike host shows as xn--


async def test_very_long_text_is_cut_to_fit_not_refused(settings, targets, producer, read, running):
    # The longest text a Tweet may hold, nearly all of it characters that HTML escaping grows.
    longest = ("line: lorem & <dolor>\n" * 20 + "&<" * 12_500)[:25_000]
    routed = legal_tweet(longest, name="N" * 500)

    outcomes = await deliver(NotifyService(settings()), routed, producer, read, running)

    assert sorted(d.outcome for d in outcomes) == ["delivered"] * SUBSCRIPTIONS, [
        d.error for d in outcomes if d.error
    ]
    found = stored(targets, routed)
    _, [comment] = found["zendesk"]
    assert len(comment["html_body"]) <= 65_000 and "[truncated]" in comment["plain_body"]
    assert len(found["lead"]["LastName"]) == 80 and len(found["case"]["Subject"]) <= 255
    assert len(found["lead"]["Description"]) <= 32_000
    assert len(found["hubspot_ticket"]["content"]) <= 65_536
    assert len(json.dumps(found["jira"]["description"])) > 25_000  # all of it, as literal text


async def test_emoji_heavy_text_fits_where_vendors_count_utf16_units(
    settings, targets, producer, read, running
):
    """Jira and Salesforce count UTF-16 code units, in which an emoji is two: 250 characters of
    emoji are 500 units, past Jira's 255 for a summary. Cut by their count, every record is
    made, and no emoji is split."""
    routed = legal_tweet("😡🔥" * 400, name="🙂" * 100)

    outcomes = await deliver(NotifyService(settings()), routed, producer, read, running)

    assert sorted(d.outcome for d in outcomes) == ["delivered"] * SUBSCRIPTIONS, [
        d.error for d in outcomes if d.error
    ]
    found = stored(targets, routed)
    for value, limit in ((found["jira"]["summary"], 255), (found["case"]["Subject"], 255),
                         (found["lead"]["LastName"], 80)):  # fmt: skip
        assert utf16_units(value) <= limit and "\ud83d" not in json.dumps(value)[-12:], value
        assert utf16_units(value) >= limit - 10  # as much as fits, not far less
    assert not any(0xD800 <= ord(ch) <= 0xDFFF for ch in found["jira"]["summary"])


async def test_redaction_reaches_every_channel(settings, targets, producer, read, running):
    routed = legal_tweet(
        "write to ana.lopez@mail.example or call +44 20 7946 0958 about my claim",
        name="Ana ana.lopez@mail.example",
    )
    service = NotifyService(settings(email_addresses=True, phone_numbers=True))

    outcomes = await deliver(service, routed, producer, read, running)

    assert sorted(d.outcome for d in outcomes) == ["delivered"] * SUBSCRIPTIONS
    found = stored(targets, routed)
    _, email = found.pop("email")
    everything = email.as_string() + json.dumps(found, ensure_ascii=False)
    assert "ana.lopez@mail.example" not in everything and "7946" not in everything
    assert "[email]" in everything and "[phone]" in everything
    assert found["webhook"]["event"]["tweet"]["text"].startswith("write to [email] or call [phone]")
