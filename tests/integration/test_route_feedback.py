"""Corrections against the embedded broker: from the REST endpoint, from the ops page's
correct dialog in headless Chromium, a Zendesk ticket moved to another group and a Jira issue
moved to another project, each signed as the vendor signs it. Each reaches
``switchboard.feedback`` once, the tweet is published again on its corrected department's
topic, and the conversation's next tweet follows its new owner."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import uvicorn
import yaml
from playwright.async_api import Browser, Page, Route, async_playwright, expect

from switchboard.notify.service import NotifyService
from switchboard.notify.settings import NotifySettings, SmtpSettings
from switchboard.route.feedback import JIRA_PATH, ZENDESK_PATH, jira_signature, zendesk_signature
from switchboard.route.rules import DEFAULT_PRIORITY
from switchboard.route.service import RouteService
from switchboard.route.settings import RouteSettings
from switchboard.shared import topics
from switchboard.shared.broker import free_port
from switchboard.shared.events import (
    Alert,
    ComplianceEvent,
    Correction,
    Delivery,
    RoutedTweet,
    decode,
    encode,
    vendor_conversation_key,
    vendor_conversation_label,
)
from switchboard.shared.labels import Urgency
from tests.conftest import CONFIG_FILE, key_of, published, readable, wait_for
from tests.factories import a_classified_tweet
from tests.integration.conftest import new_id

TOKEN = "feedback-admin-token"
ZENDESK_SECRET = "zendesk-signing-secret"
JIRA_SECRET = "jira-webhook-secret"
WATCHED = [topics.FEEDBACK, *topics.DEPARTMENT_TOPICS, topics.TRIAGE, topics.ALERTS]


@pytest.fixture
def settings(kafka, tmp_path, monkeypatch) -> RouteSettings:
    monkeypatch.setenv("SB_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("SB_ZENDESK_HOOK", ZENDESK_SECRET)
    monkeypatch.setenv("SB_JIRA_HOOK", JIRA_SECRET)
    config = yaml.safe_load(CONFIG_FILE.read_text())
    config["access"] = {"admin_token": {"env": "SB_ADMIN_TOKEN"}}
    config["route"]["feedback"] = {
        "zendesk": {"signing_secret": {"env": "SB_ZENDESK_HOOK"}, "groups": {4401: "legal"}},
        "jira": {"secret": {"env": "SB_JIRA_HOOK"}, "projects": {"PR": "communications"}},
    }
    path = tmp_path / "switchboard.yaml"
    path.write_text(yaml.safe_dump(config))
    return RouteSettings.load(config_file=path, kafka=kafka)


async def post(service: RouteService, path: str, body: bytes, **headers: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=service.http_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://route") as client:
        return await client.post(path, content=body, headers={"content-type": "application/json",
                                                               **headers})  # fmt: skip


async def route_tweets(producer, *events) -> None:
    for event in events:
        key = event.tweet.conversation_id.encode()
        await producer.send_and_wait(topics.CLASSIFIED, encode(event), key=key)


def on_topic(records, topic: str, conversation: str) -> list[RoutedTweet]:
    return [e for r, e in readable(records, RoutedTweet)
            if r.topic == topic and key_of(r) == conversation]  # fmt: skip


def requests(records, conversation: str) -> list:
    return [r for r in records if r.topic == topics.FEEDBACK_REQUESTS and key_of(r) == conversation]


def corrections(records, conversation: str) -> list[Correction]:
    return [c for c in published(records, topics.FEEDBACK, Correction)
            if c.conversation_id == conversation]  # fmt: skip


async def test_a_correction_from_the_api_reroutes_once_and_the_owner_follows(
    settings, producer, read, running
):
    conversation = new_id()
    first = a_classified_tweet("sales", 0.9, "normal", id=f"{conversation}-1",
                               conversation_id=conversation)  # fmt: skip
    service = RouteService(settings)
    async with running(service):
        await route_tweets(producer, first)
        await read(WATCHED, lambda rs: on_topic(rs, "switchboard.dept.sales", conversation))
        body = json.dumps({"conversation_id": conversation, "tweet_id": first.tweet.id,
                           "department": "customer_service", "urgency": "high",
                           "by": "ana (ops)", "source": "ops",
                           "correction_id": "k-1"}).encode()  # fmt: skip
        anonymous = await post(service, "/feedback", body)
        assert anonymous.status_code == 401  # the admin token is required
        transport = httpx.ASGITransport(app=service.http_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://route") as client:
            state = (await client.get("/ops/state")).json()
        assert state["corrections"] is True  # a token is set: the ops page's buttons are on
        assert state["department_names"]["customer_service"] == "Customer Service"
        for _ in range(2):  # sent twice (a retry): applied once
            answer = await post(service, "/feedback", body, authorization=f"Bearer {TOKEN}")
            assert answer.status_code == 202, answer.text
            assert answer.json()["correction_id"] == "ops:k-1"
        # the conversation's next tweet, which the model calls sales again
        follow_up = a_classified_tweet("sales", 0.6, "normal", id=f"{conversation}-2",
                                       conversation_id=conversation)  # fmt: skip
        await read(WATCHED, lambda rs: corrections(rs, conversation))
        await route_tweets(producer, follow_up)
        records = await read(
            WATCHED,
            lambda rs: any(
                e.tweet.id == follow_up.tweet.id
                for e in on_topic(rs, "switchboard.dept.customer_service", conversation)
            ),  # fmt: skip
        )
        settle = await read(WATCHED, lambda rs: False, timeout_s=1.0)  # nothing more comes
    applied = corrections(settle, conversation)
    assert len(applied) == 1, applied
    c = applied[0]
    assert (c.outcome, c.department_before, c.department, c.by, c.source) == (
        "rerouted", "sales", "customer_service", "ana (ops)", "ops")  # fmt: skip
    assert c.tweet is not None and c.tweet.text == first.tweet.text
    assert c.model_version == first.classification.model_version
    moved = on_topic(records, "switchboard.dept.customer_service", conversation)
    again = [e for e in moved if e.tweet.id == first.tweet.id]
    assert len(again) == 1 and again[0].correction is not None
    assert again[0].correction.department_before == "sales"
    assert again[0].classification.department == "customer_service"
    # due and prioritised as high, as a person labelled it, not as the normal it was
    arrived = max(first.tweet.created_at, first.trace.ingested_at)
    high_sla = timedelta(minutes=settings.config.route.sla.minutes[Urgency.HIGH])
    assert again[0].route.sla_due_at == arrived + high_sla
    assert (
        again[0].route.priority
        == DEFAULT_PRIORITY[Urgency.HIGH]
        != DEFAULT_PRIORITY[Urgency.NORMAL]
    )
    follow = next(e for e in moved if e.tweet.id == follow_up.tweet.id)
    assert follow.route.owner == "conversation"  # the owner followed the correction
    assert len(on_topic(settle, "switchboard.dept.sales", conversation)) == 1  # only the first


async def test_a_dropped_tweet_that_began_its_conversation_can_be_sent_to_a_department(
    settings, producer, read, running
):
    """A rule dropped the first tweet of a conversation as spam (the config's bot-spam). A copy
    published again after a model change, which now calls it customer service, is dropped
    again, not routed; a person who finds it on switchboard.dropped sends it to customer
    service, and its critical urgency raises the alert its drop withheld."""
    conversation = new_id()
    text = "follow back pls, my order never came and the app took my money"
    spam = a_classified_tweet("community", 0.9, "critical", id=f"{conversation}-1",
                              conversation_id=conversation, text=text)  # fmt: skip
    relabelled = spam.model_copy(update={"classification": a_classified_tweet(
        "customer_service", 0.95, "critical").classification})  # fmt: skip
    watched = [*WATCHED, topics.DROPPED]
    service = RouteService(settings)
    async with running(service):
        await route_tweets(producer, spam)
        await read(watched, lambda rs: on_topic(rs, topics.DROPPED, conversation))
        await route_tweets(producer, relabelled)
        await read(watched, lambda rs: len(on_topic(rs, topics.DROPPED, conversation)) == 2)
        body = json.dumps({"conversation_id": conversation, "tweet_id": spam.tweet.id,
                           "department": "customer_service", "by": "ana (ops)",
                           "source": "ops", "correction_id": "k-9"}).encode()  # fmt: skip
        answer = await post(service, "/feedback", body, authorization=f"Bearer {TOKEN}")
        assert answer.status_code == 202, answer.text
        records = await read(
            watched,
            lambda rs: on_topic(rs, "switchboard.dept.customer_service", conversation)
            and any(key_of(r) == conversation for r in rs if r.topic == topics.ALERTS),
        )  # fmt: skip
        settle = await read(watched, lambda rs: False, timeout_s=1.0)  # nothing more comes
    [correction] = corrections(settle, conversation)
    assert (correction.outcome, correction.department_before) == ("rerouted", "community")
    [moved] = on_topic(records, "switchboard.dept.customer_service", conversation)
    assert moved.tweet.id == spam.tweet.id and moved.correction is not None
    alerts = [
        a
        for a in published(settle, topics.ALERTS, Alert)
        if a.tweet.conversation_id == conversation
    ]
    assert len(alerts) == 1 and alerts[0].urgency == "critical"
    dropped = on_topic(settle, topics.DROPPED, conversation)
    assert [e.route.destination for e in dropped] == ["dropped", "dropped"]  # never routed


@contextlib.asynccontextmanager
async def served(service: RouteService) -> AsyncIterator[str]:
    """route's HTTP app (its access guard included) on a loopback port, as the service serves
    it; yields the base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(service.http_app(), host="127.0.0.1", port=port,
                                           log_config=None, lifespan="off"))  # fmt: skip
    server.install_signal_handlers = lambda: None
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), task.exception()
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Headless Chromium from Debian (`make tools`), driven over its DevTools protocol."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=shutil.which("chromium"),
                                                   args=["--no-sandbox"])  # fmt: skip
        try:
            yield browser
        finally:
            await browser.close()


async def correct_on_the_ops_page(page: Page, url: str, text: str, department: str,
                                  by: str) -> None:  # fmt: skip
    """What a person does: open the ops page, press the tweet's correct button, choose the
    department, say who they are, press Correct."""
    await page.goto(f"{url}/ops")
    line = page.locator("#recent li", has_text=text)
    await line.get_by_role("button", name="correct").click()
    dialog = page.locator("#correct")
    await expect(dialog).to_be_visible()
    await expect(page.locator("#correct-text")).to_contain_text(text)
    await expect(page.locator("#correct-department")).to_have_value("sales")  # the model's
    await page.locator("#correct-department").select_option(department)
    await page.locator("#correct-by").fill(by)
    await page.locator("#correct-send").click()


async def test_the_ops_page_corrects_a_tweet_in_a_browser(settings, producer, read, running):
    """The correct dialog in a real browser against a running route with an admin token: a
    person who gives a wrong token sees the refusal in the dialog and nothing is applied; with
    the token (HTTP Basic, which the browser asks for when route answers 401) the correction is
    applied once and the dialog closes, even when route's first answer was lost on its way and
    the person pressed Correct again."""
    conversation = new_id()
    text = f"is the family plan cheaper if I switch today? ({conversation})"
    first = a_classified_tweet("sales", 0.9, "normal", id=f"{conversation}-1",
                               conversation_id=conversation, text=text)  # fmt: skip
    service = RouteService(settings)
    async with running(service), served(service) as url, chromium() as browser:
        await route_tweets(producer, first)
        await read(WATCHED, lambda rs: on_topic(rs, "switchboard.dept.sales", conversation))
        wrong = await browser.new_context(http_credentials={"username": "ana", "password": "?"})
        refused = await wrong.new_page()
        await correct_on_the_ops_page(refused, url, text, "customer_service", "ana (ops)")
        await expect(refused.locator("#correct-status")).to_contain_text("HTTP 401")
        await expect(refused.locator("#correct")).to_be_visible()  # still there to try again
        signed_in = await browser.new_context(
            http_credentials={"username": "ana", "password": TOKEN}
        )
        page = await signed_in.new_page()
        sent: list[dict] = []

        async def answer_lost_once(request_route: Route) -> None:
            sent.append(json.loads(request_route.request.post_data or "{}"))
            if len(sent) == 1:  # route applies it, and its answer never reaches the page
                await request_route.fetch()
                await request_route.abort()
            else:
                await request_route.continue_()

        await page.route("**/feedback", answer_lost_once)
        await correct_on_the_ops_page(page, url, text, "customer_service", "ana (ops)")
        await expect(page.locator("#correct-status")).to_contain_text("route unreachable")
        await page.locator("#correct-send").click()  # the person tries again
        await expect(page.locator("#correct")).to_be_hidden()  # accepted: the dialog closed
        assert len(sent) == 2 and sent[0]["correction_id"] == sent[1]["correction_id"]
        await read(WATCHED, lambda rs: corrections(rs, conversation))
        settle = await read(WATCHED, lambda rs: False, timeout_s=1.0)
    [applied] = corrections(settle, conversation)
    made = (applied.outcome, applied.department_before, applied.department)
    assert made == ("rerouted", "sales", "customer_service")
    assert (applied.by, applied.source) == ("ana (ops)", "ops")
    moved = on_topic(settle, "switchboard.dept.customer_service", conversation)
    assert [e.tweet.text for e in moved] == [text]


async def test_a_correction_read_again_after_a_crash_is_published_again_as_it_was(
    settings, producer, read, running
):
    """The replica remembered the correction (its table write went out) and died before its
    outputs were acknowledged: the same request, read again, publishes them again. A new
    request with the same id (a retried webhook) still publishes nothing."""
    conversation = new_id()
    tweet = a_classified_tweet("sales", 0.9, "normal", id=f"{conversation}-1",
                               conversation_id=conversation)  # fmt: skip
    service = RouteService(settings)
    async with running(service):
        await route_tweets(producer, tweet)
        await read(WATCHED, lambda rs: on_topic(rs, "switchboard.dept.sales", conversation))
        fields = {"conversation_id": conversation, "department": "legal", "urgency": "critical",
                  "by": "ana", "correction_id": "k-9"}  # fmt: skip
        body = json.dumps(fields).encode()
        # Neither a department nor an urgency: nothing to correct, refused with the reason
        says_nothing = {k: v for k, v in fields.items() if k not in ("department", "urgency")}
        says_nothing["tweet"] = tweet.tweet.model_dump(mode="json")
        refused = await post(service, "/feedback", json.dumps(says_nothing).encode(),
                             authorization=f"Bearer {TOKEN}")  # fmt: skip
        assert refused.status_code == 422 and "department" in refused.text, refused.text
        answer = await post(service, "/feedback", body, authorization=f"Bearer {TOKEN}")
        assert answer.status_code == 202, answer.text
        records = await read([topics.FEEDBACK_REQUESTS, *WATCHED],
                             lambda rs: corrections(rs, conversation))  # fmt: skip
        (first,) = corrections(records, conversation)
        (request,) = requests(records, conversation)
        again = service.on_correction_request(request)  # the same record, read again
        retried = service.on_correction_request(
            dataclasses.replace(request, offset=request.offset + 1)
        )
    assert retried == []
    assert [o.topic for o in again] == [topics.FEEDBACK, "switchboard.dept.legal", topics.ALERTS]
    republished = decode(Correction, again[0].value)
    assert republished.model_dump(exclude={"applied_at"}) == first.model_dump(
        exclude={"applied_at"})  # fmt: skip
    routed = decode(RoutedTweet, again[1].value)
    assert routed.tweet.id == tweet.tweet.id and routed.classification.department == "legal"
    assert routed.correction is not None and routed.correction.correction_id == "api:k-9"
    assert decode(Alert, again[2].value).alert_id == f"critical_tweet:{tweet.tweet.id}"


async def test_a_correction_of_a_conversation_route_no_longer_holds_is_recorded_once(
    settings, producer, read, running
):
    """No conversation remembers its id (past the TTL, or never seen): a retried request is
    still recorded once, and only its own request read again publishes it again, with the
    tweet its caller sent (route keeps the correction without the tweet's text)."""
    conversation = new_id()
    sent = a_classified_tweet("legal", 0.9, id=f"{conversation}-1", conversation_id=conversation)
    fields = {"conversation_id": conversation, "tweet_id": f"{conversation}-1",
              "department": "legal", "by": "ana", "correction_id": "k-old",
              "tweet": sent.tweet.model_dump(mode="json")}  # fmt: skip
    body = json.dumps(fields).encode()
    service = RouteService(settings)
    async with running(service):
        for _ in range(2):  # a retry of the same correction
            answer = await post(service, "/feedback", body, authorization=f"Bearer {TOKEN}")
            assert answer.status_code == 202, answer.text
        watched = [topics.FEEDBACK_REQUESTS, *WATCHED]
        await read(watched, lambda rs: len(requests(rs, conversation)) == 2
                   and corrections(rs, conversation))  # fmt: skip
        records = await read(watched, lambda rs: False, timeout_s=1.0)  # nothing more comes
        first, retry = requests(records, conversation)
        again = service.on_correction_request(first)  # its own request, read again
        retried = service.on_correction_request(retry)
        # The customer tweets in that conversation again, which route now holds: a late retry
        # of the recorded correction must still change nothing (not re-route the new tweet).
        tweet = a_classified_tweet("sales", 0.9, "normal", id=f"{conversation}-2",
                                   conversation_id=conversation)  # fmt: skip
        await route_tweets(producer, tweet)
        await read(WATCHED, lambda rs: on_topic(rs, "switchboard.dept.sales", conversation))
        late = service.on_correction_request(dataclasses.replace(retry, offset=retry.offset + 1))
        kept = service.recorded.get("api:k-old")
        assert kept is not None and kept.correction.tweet is None  # kept without its text
    (recorded,) = corrections(records, conversation)
    assert (recorded.outcome, recorded.department, recorded.correction_id) == (
        "recorded", "legal", "api:k-old")  # fmt: skip
    assert retried == [] and late == []
    assert recorded.tweet is not None and recorded.tweet.text == sent.tweet.text
    assert [o.topic for o in again] == [topics.FEEDBACK]
    assert decode(Correction, again[0].value) == recorded


async def test_a_correction_carrying_a_deleted_tweets_text_publishes_no_text(
    settings, producer, read, running
):
    """A caller sends the text of a tweet whose deletion route read already: the correction
    is recorded for training without it (a deletion's downstream copies must go)."""
    conversation = new_id()
    sent = a_classified_tweet("legal", 0.9, id=f"{conversation}-1", conversation_id=conversation)
    deletion = ComplianceEvent(tweet_id=sent.tweet.id, conversation_id=conversation,
                               event_at=datetime.now(UTC), source="webhook")  # fmt: skip
    fields = {
        "conversation_id": conversation,
        "tweet_id": sent.tweet.id,
        "department": "legal",
        "by": "ana",
        "correction_id": "k-gone",
        "tweet": sent.tweet.model_dump(mode="json"),
    }
    service = RouteService(settings)
    async with running(service):
        await producer.send_and_wait(topics.COMPLIANCE, encode(deletion), key=b"d")
        await wait_for(lambda: service.early_deletions.deleted(conversation, sent.tweet.id))
        body = json.dumps(fields).encode()
        answer = await post(service, "/feedback", body, authorization=f"Bearer {TOKEN}")
        assert answer.status_code == 202, answer.text
        records = await read(WATCHED, lambda rs: corrections(rs, conversation))
    [recorded] = corrections(records, conversation)
    assert recorded.outcome == "recorded" and recorded.tweet is None


async def test_a_zendesk_ticket_moved_to_another_group_corrects_its_conversation(
    settings, producer, read, running
):
    conversation = new_id()
    tweet = a_classified_tweet("customer_service", 0.9, "high", id=f"{conversation}-1",
                               conversation_id=conversation)  # fmt: skip
    event = {
        "type": "zen:event-type:ticket.group_assignment_changed",
        "id": f"zd-{conversation}",
        "time": datetime.now(UTC).isoformat(),
        "detail": {"id": "88", "actor_id": "9001",
                   "external_id": vendor_conversation_key("support-zendesk", conversation)},
        "event": {"current": "4401", "previous": "4400"},
    }  # fmt: skip
    body = json.dumps(event).encode()
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    service = RouteService(settings)
    async with running(service):
        await route_tweets(producer, tweet)
        await read(WATCHED, lambda rs: on_topic(rs, "switchboard.dept.customer_service",
                                                conversation))  # fmt: skip
        forged = await post(service, ZENDESK_PATH, body,
                            **{"x-zendesk-webhook-signature": "bm90IGl0",
                               "x-zendesk-webhook-signature-timestamp": stamp})  # fmt: skip
        assert forged.status_code == 401
        signed = {"x-zendesk-webhook-signature": zendesk_signature(ZENDESK_SECRET, stamp, body),
                  "x-zendesk-webhook-signature-timestamp": stamp}  # fmt: skip
        for _ in range(2):  # Zendesk retries a delivery it thinks failed: the same event id
            answer = await post(service, ZENDESK_PATH, body, **signed)
            assert answer.status_code == 200 and answer.json()["status"] == "accepted"
        await read(WATCHED, lambda rs: on_topic(rs, "switchboard.dept.legal", conversation))
        records = await read(WATCHED, lambda rs: False, timeout_s=1.0)
    applied = corrections(records, conversation)
    assert [(c.source, c.department_before, c.department, c.tweet_id) for c in applied] == [
        ("zendesk", "customer_service", "legal", tweet.tweet.id)]  # fmt: skip
    assert len(on_topic(records, "switchboard.dept.legal", conversation)) == 1


async def test_a_jira_issue_moved_to_another_project_corrects_its_conversation(
    settings, producer, read, running
):
    conversation = new_id()
    tweet = a_classified_tweet("marketing", 0.9, "normal", id=f"{conversation}-1",
                               conversation_id=conversation)  # fmt: skip
    event = {
        "timestamp": int(datetime.now(UTC).timestamp() * 1000),
        "webhookEvent": "jira:issue_updated",
        "user": {"accountId": "5b10a2844c20165700ede21g", "displayName": "Mia Krystof"},
        "issue": {"id": "10002", "key": "PR-7",
                  "fields": {"project": {"key": "PR"},
                             "labels": ["switchboard", vendor_conversation_label(conversation)]}},
        "changelog": {"id": "10400", "items": [{"field": "project", "fromString": "Marketing",
                                 "toString": "Press"},
                                {"field": "priority", "fromString": "Medium",
                                 "toString": "Highest"}]},
    }  # fmt: skip
    body = json.dumps(event).encode()
    service = RouteService(settings)
    async with running(service):
        await route_tweets(producer, tweet)
        await read(WATCHED, lambda rs: on_topic(rs, "switchboard.dept.marketing", conversation))
        forged = await post(service, JIRA_PATH, body, **{"x-hub-signature": "sha256=00"})
        assert forged.status_code == 401
        for attempt in range(2):  # Jira retries with a new delivery header: the same change
            delivery = f"jira-{conversation}-{attempt}"
            signed = {"x-hub-signature": jira_signature(JIRA_SECRET, body),
                      "x-atlassian-webhook-identifier": delivery}  # fmt: skip
            answer = await post(service, JIRA_PATH, body, **signed)
            assert answer.status_code == 200 and answer.json()["status"] == "accepted"
        old = json.dumps({**event, "timestamp": event["timestamp"] - 7_200_000}).encode()
        replayed = await post(service, JIRA_PATH, old,
                              **{"x-hub-signature": jira_signature(JIRA_SECRET, old)})  # fmt: skip
        assert replayed.status_code == 401 and "too old" in replayed.json()["detail"]
        records = await read(
            WATCHED,
            lambda rs: (
                on_topic(rs, "switchboard.dept.communications", conversation)
                and any(r.topic == topics.ALERTS and key_of(r) == conversation for r in rs)
            ),
        )
    (applied,) = corrections(records, conversation)
    assert (applied.source, applied.department, applied.urgency) == (
        "jira", "communications", "critical")  # fmt: skip
    (moved,) = on_topic(records, "switchboard.dept.communications", conversation)
    assert moved.route.escalated and moved.classification.urgency == "critical"


async def test_notify_delivers_a_corrected_tweet_to_its_new_department_once(
    settings, kafka, producer, read, running, inbox
):
    """The tweet went to sales (no subscription there); corrected to legal, the legal team's
    email goes out once, though the correction was sent twice and confirmed by another."""
    conversation = new_id()
    text = f"@SkylarkAir your fare terms breach consumer law {conversation}"
    tweet = a_classified_tweet("sales", 0.9, "normal", id=f"{conversation}-1",
                               conversation_id=conversation, text=text)  # fmt: skip
    smtp = SmtpSettings(host="127.0.0.1", port=inbox.port)
    notify = NotifyService(NotifySettings.load(config_file=CONFIG_FILE, kafka=kafka, smtp=smtp))
    route = RouteService(settings)

    def ours() -> list:
        return [m for m in inbox.messages()
                if conversation in m.get_body(("plain",)).get_content()]  # fmt: skip

    async with running(route), running(notify):
        await route_tweets(producer, tweet)
        await read(WATCHED, lambda rs: on_topic(rs, "switchboard.dept.sales", conversation))
        for key, by in (("k-1", "ana"), ("k-1", "ana"), ("k-2", "ben")):
            body = json.dumps({"conversation_id": conversation, "tweet_id": tweet.tweet.id,
                               "department": "legal", "by": by,
                               "correction_id": key}).encode()  # fmt: skip
            answer = await post(route, "/feedback", body, authorization=f"Bearer {TOKEN}")
            assert answer.status_code == 202
        records = await read(
            [topics.FEEDBACK, topics.DELIVERIES],
            lambda rs: (
                len(corrections(rs, conversation)) >= 2
                and any(key_of(r) == conversation for r in rs if r.topic == topics.DELIVERIES)
            ),
        )
        await wait_for(lambda: bool(ours()))
        await asyncio.sleep(2.0)  # time for a second email, were one to come
    assert [c.outcome for c in corrections(records, conversation)] == ["rerouted", "unchanged"]
    (email,) = ours()
    assert "legal@switchboard.example" in email["To"]
    deliveries = [d for d in published(records, topics.DELIVERIES, Delivery)
                  if d.conversation_id == conversation]  # fmt: skip
    assert {(d.target, d.outcome) for d in deliveries} == {("legal-team", "delivered")}
