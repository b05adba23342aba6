"""Where notifications go: email, a signed webhook, Zendesk, Jira, Salesforce and HubSpot.

Each channel turns one job (a routed tweet for one subscription) into one effect and says what
it did. Follow-ups in a conversation go to the same ticket or issue: the service passes the
one it recorded for the conversation (``Job.thread_id``), and the channels also look it up at
the vendor (Zendesk ``external_id``, a Jira label) so a lost record never opens a second one.
CRM records are upserted by external id: one author is one lead or contact. Errors are
``DeliveryError``s that say whether a retry may help (resilience.py).

Tweet text reaches every target inert and within the target's limits (sanitize.py): plain text
where the target shows plain text, escaped HTML where it renders HTML, data in JSON and in
Jira's document format; too long is cut, never refused.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import quote
from zoneinfo import ZoneInfo

import aiosmtplib
import httpx

from switchboard.notify import metrics
from switchboard.notify.config import (
    DeliveryPolicy,
    EmailConfig,
    HubSpotTarget,
    NotifyConfig,
    SalesforceConnection,
    SalesforceTarget,
    Subscription,
)
from switchboard.notify.mail import (
    SmtpMailer,
    check_templates,
    count_refused,
    refused_for_now,
    render_email,
)
from switchboard.notify.resilience import (
    TRANSIENT_STATUSES,
    UNANSWERED,
    DeliveryError,
    RateLimiter,
    http_error,
)
from switchboard.notify.sanitize import (
    Measure,
    chat,
    clip,
    html,
    inert,
    one_line,
    utf8_bytes,
    utf16_units,
    web_link,
)
from switchboard.shared.events import (
    Author,
    RoutedTweet,
    vendor_conversation_key,
    vendor_conversation_label,
)
from switchboard.shared.labels import Department, Urgency
from switchboard.shared.settings import read_secret

log = logging.getLogger(__name__)

JIRA_PRIORITIES = {Urgency.CRITICAL: "Highest", Urgency.HIGH: "High", Urgency.NORMAL: "Medium",
                   Urgency.LOW: "Low"}  # fmt: skip
SALESFORCE_PRIORITIES = {Urgency.CRITICAL: "High", Urgency.HIGH: "High",
                         Urgency.NORMAL: "Medium", Urgency.LOW: "Low"}  # fmt: skip
HUBSPOT_PRIORITIES = {Urgency.CRITICAL: "HIGH", Urgency.HIGH: "HIGH", Urgency.NORMAL: "MEDIUM",
                      Urgency.LOW: "LOW"}  # fmt: skip

# What the targets accept; longer text is cut to fit rather than refused. Jira and Salesforce
# count UTF-16 code units (an emoji is two), the others characters.
SUMMARY_LIMIT = 250  # Jira's summary and Salesforce's Case.Subject hold 255
JIRA_TEXT_LIMIT = 32_000  # Jira Cloud refuses a description or comment over 32,767
ZENDESK_TEXT_LIMIT = 30_000
ZENDESK_HTML_LIMIT = 64_000  # a comment holds about 65,000 characters of HTML
SALESFORCE_TEXT_LIMIT = 32_000  # Description is a Long Text Area(32000)
SALESFORCE_NAME_LIMIT = 80  # Lead.LastName
CASE_COMMENT_LIMIT = 4_000  # CaseComment.CommentBody holds 4,000 bytes
DUPLICATE_RETRY_S = 0.0  # after an upsert lost a race for its external id: at once
CONCURRENT_LIMIT_WAIT_S = 5.0  # Salesforce's concurrent long-running requests limit
ROW_LOCK_WAIT_S = 1.0  # Salesforce's UNABLE_TO_LOCK_ROW: another save of the record is running
HUBSPOT_TEXT_LIMIT = 65_000  # a property value holds 65,536
JIRA_RECONCILE_MAX = 50  # /search/jql reconciles at most 50 issue ids
CHAT_TEXT_LIMIT = 3_000  # the webhook's chat-ready text (Slack shows 4,000 per block)


@dataclass(frozen=True, slots=True)
class Job:
    routed: RoutedTweet
    subscription: Subscription
    department: Department
    delivery_id: str
    thread_id: str | None = None  # the conversation's ticket or issue, when one is recorded
    # What the target was given for the conversation's earlier tweets, oldest first: for a
    # target that keeps one text per ticket (a HubSpot ticket's content), which each upsert sets.
    earlier: tuple[str, ...] = ()
    # Email, from the parked delivery: those the relay took it for (None: nobody yet); and,
    # from a notify older than that field, those still to be sent it (None: all).
    delivered_to: tuple[str, ...] | None = None
    recipients: tuple[str, ...] | None = None

    @property
    def conversation_key(self) -> str:
        """Names the conversation at the vendor, per subscription."""
        return vendor_conversation_key(self.subscription.name, self.routed.tweet.conversation_id)

    def priority(self, defaults: dict[Urgency, str]) -> str:
        urgency = self.routed.classification.urgency
        if "priority" in self.subscription.model_fields_set:
            return self.subscription.priority.get(urgency, defaults[urgency])
        return defaults[urgency]

    def summary(self, limit: int = SUMMARY_LIMIT, measure: Measure = len) -> str:
        """One inert line: urgency, department, author and the start of the text."""
        t, c = self.routed.tweet, self.routed.classification
        return one_line(
            f"[{c.urgency.value}] {self.department.value}: @{t.author.username}: {t.text}",
            limit,
            measure,
        )

    def body(self, limit: int, measure: Measure = len) -> str:
        """The notification as inert plain text at most ``limit`` long (by ``measure``: the
        vendor's way of counting): the tweet's text is cut to make room for the rest."""
        t, c, r = self.routed.tweet, self.routed.classification, self.routed.route
        head = (
            f"@{one_line(t.author.username, 50)} ({t.author.followers_count} followers) wrote "
            f"to {', '.join(t.addressed_handles) or 'the company'}:"
        )
        tail = "\n".join([
            "", web_link(t.url), "",
            f"Department {self.department.value}, urgency {c.urgency.value}, "
            f"confidence {c.confidence:.2f}, priority {r.priority or '-'}",
            "Why: " + "; ".join(r.reasons),
        ])  # fmt: skip
        room = limit - measure(head) - measure(tail) - 3
        return f"{head}\n\n{clip(inert(t.text), room, measure=measure)}\n{tail}"

    def comment(self, limit: int, measure: Measure = len) -> str:
        """``body`` ending with this delivery's tag, by which a comment that timed out is found
        again (comments have no idempotency key at Jira or Zendesk)."""
        mark = f"\nSwitchboard delivery {delivery_tag(self.delivery_id)}"
        return self.body(limit - len(mark), measure) + mark

    def chat_text(self) -> str:
        """Ready for a chat tool: who wrote what, and the link; no mention pings anyone."""
        t, c = self.routed.tweet, self.routed.classification
        head = one_line(f"[{c.urgency.value}] {self.department.value}: @{t.author.username}", 200)
        return chat(f"{head}\n{clip(inert(t.text), CHAT_TEXT_LIMIT)}\n{web_link(t.url)}")


@dataclass(frozen=True, slots=True)
class Done:
    action: str  # sent, created, commented, upserted
    external_id: str | None = None
    kept: str | None = None  # this tweet's part of the text the target keeps (Job.earlier)


class Channel(Protocol):
    name: str

    async def deliver(self, job: Job) -> Done: ...

    def partitions_moved(self) -> None:
        """This replica's partitions changed: what it will deliver next may have been in
        flight at another replica a moment ago."""

    async def close(self) -> None: ...


def delivered_to(job: Job) -> list[str] | None:
    """Email: whom the relay took the job's delivery for, by its parked record (None: nobody
    yet). A record of an older notify names those still owed it instead: the rest have it."""
    if job.delivered_to is not None:
        return list(job.delivered_to)
    if job.recipients is not None:
        return [r for r in job.subscription.to if r not in job.recipients]
    return None


def still_owed(subscription: Subscription, delivered: list[str] | None) -> list[str] | None:
    """Email: the subscription's recipients who have not had it (None: all of them)."""
    return None if delivered is None else [r for r in subscription.to if r not in delivered]


DELIVERIES_KEPT = 10_000  # partly sent emails remembered for their retry, the oldest dropped


class EmailChannel:
    """An email per delivery. When the relay refuses some recipients and takes the others, the
    delivery fails for those alone and keeps whom the relay took it for: tried again (retried,
    then parked and redriven) it goes only to the subscription's recipients who have not had
    it. A refusal for now (4xx: greylisting, a full mailbox) is tried again by itself; one for
    good (5xx: no such mailbox) parks the delivery for a person, who corrects the address (in
    the subscription or at the relay) and redrives it: the corrected address is sent it, and
    nobody gets it twice."""

    name = "email"

    def __init__(
        self,
        mailer: SmtpMailer,
        options: EmailConfig,
        names: Mapping[str, str] | None = None,
        rate_per_s: float | None = None,
    ) -> None:
        self.mailer = mailer
        self.options = options
        self.names = names  # the departments' display names, by code
        self._pace = RateLimiter(rate_per_s)  # delivery.rate_per_s: messages, tries included
        # delivery id: the recipients the relay took it for, for the delivery's next try. A
        # delivery parked keeps them (DeliveryError.delivered_to, on its ParkedDelivery) for
        # its redrive, by whichever replica owns it then.
        self._delivered: dict[str, list[str]] = {}
        # delivery id: what the parked delivery said of its recipients when this process took
        # it over
        self._adopted: dict[str, tuple[tuple[str, ...] | None, ...]] = {}

    async def deliver(self, job: Job) -> Done:
        told = (job.delivered_to, job.recipients)
        if told != (None, None) and self._adopted.get(job.delivery_id) != told:
            # The parked delivery's own record wins over what this process remembers of an
            # earlier try (its partition may have been elsewhere meanwhile).
            self._remember(job.delivery_id, delivered_to(job))
            self._adopted[job.delivery_id] = told
            while len(self._adopted) > DELIVERIES_KEPT:  # parked for good, or moved away
                del self._adopted[next(iter(self._adopted))]
        try:
            return await self._send(job)
        except DeliveryError as error:
            error.delivered_to = self._delivered.get(job.delivery_id)
            raise

    async def _send(self, job: Job) -> Done:
        message = render_email(
            job.routed, job.subscription, self.options, job.delivery_id, self.names
        )
        had = self._delivered.get(job.delivery_id)
        owed = still_owed(job.subscription, had)
        if owed == []:  # every recipient named now has it
            self._forget(job.delivery_id)
            return Done("sent", message["Message-ID"])
        try:
            await self._pace.wait()
            refused = await self.mailer.send(message, owed)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            # Every recipient refused: trying again helps only if a refusal was temporary (4xx).
            replies = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
            retryable = any(r.code < 500 for r in exc.recipients)
            raise DeliveryError(
                f"SMTP refused every recipient: {replies}", retryable=retryable, answered=True
            ) from None
        except aiosmtplib.SMTPResponseException as exc:
            raise DeliveryError(
                f"SMTP {exc.code}: {exc.message}",
                retryable=exc.code < 500,
                answered=exc.code != 421,  # 421: the server is closing, not answering
            ) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}", retryable=True) from None
        if not refused:
            self._forget(job.delivery_id)
            return Done("sent", message["Message-ID"])
        # The others have it: only the refused may be sent it again.
        count_refused(job.subscription.name, refused)
        log.warning("the mail relay refused some recipients; the others got the email",
                    extra={"delivery_id": job.delivery_id, "refused": refused})  # fmt: skip
        sent_to = owed if owed is not None else list(job.subscription.to)
        self._remember(job.delivery_id, [*(had or []), *(r for r in sent_to if r not in refused)])
        later = refused_for_now(refused)
        replies = "; ".join(f"{address}: {reply}" for address, reply in refused.items())
        raise DeliveryError(
            f"SMTP refused some recipients {'for now' if later else 'for good'}: {replies}",
            retryable=bool(later),
            answered=True,
        )

    def _remember(self, delivery_id: str, delivered: list[str]) -> None:
        self._delivered.pop(delivery_id, None)
        self._delivered[delivery_id] = delivered  # the latest last: the oldest go first
        while len(self._delivered) > DELIVERIES_KEPT:  # deliveries given up on, not redriven
            self._forget(next(iter(self._delivered)))

    def _forget(self, delivery_id: str) -> None:
        self._delivered.pop(delivery_id, None)
        self._adopted.pop(delivery_id, None)

    def partitions_moved(self) -> None:
        pass  # a parked delivery names whom it was delivered to (RedriveRequest.delivered_to)

    async def close(self) -> None:
        await self.mailer.close()


class HttpChannel:
    """One HTTP client per channel: at most ``policy.concurrency`` requests in flight, over as
    many connections, all kept alive. A burst of tweets waits its turn here instead of opening
    a connection per delivery (httpx alone would open up to 100 and keep 20), and the wait is
    not counted against the request's timeout as a wait for httpx's pool would be."""

    name = "http"
    unanswered = UNANSWERED  # statuses that say the channel, not one request, is broken

    def __init__(self, policy: DeliveryPolicy, base_url: str = "", **client: Any) -> None:
        connections = httpx.Limits(
            max_connections=policy.concurrency, max_keepalive_connections=policy.concurrency
        )
        self.http = httpx.AsyncClient(
            base_url=base_url, timeout=policy.timeout_s, limits=connections, **client
        )
        self._in_flight = asyncio.Semaphore(policy.concurrency)
        # delivery.rate_per_s counts requests, as vendors do: a delivery makes several (a
        # search, then a create or a comment), and each retry is one more
        self._pace = RateLimiter(policy.rate_per_s.get(self.name))  # type: ignore[call-overload]
        self._max_wait_s = policy.max_wait_s
        # time.monotonic() until which the vendor asked the whole account to wait
        self._resume_at = 0.0

    async def send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        await self._vendors_wait()
        try:
            async with self._in_flight:
                await self._pace.wait()  # paced as they go out, not as they queue
                response = await self.http.request(method, url, **kwargs)
        except httpx.TimeoutException as exc:
            raise DeliveryError(f"timeout: {type(exc).__name__}", retryable=True) from None
        except httpx.TransportError as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}", retryable=True) from None
        if response.status_code >= 300:
            error = http_error(
                response.status_code,
                response.text,
                response.headers.get("retry-after"),
                self.vendor_wait_s(response),
                self.unanswered,
            )
            if error.retry_after_s and self.limits_the_account(response):
                resume_at = time.monotonic() + error.retry_after_s
                self._resume_at = max(self._resume_at, resume_at)
            raise error
        return response

    async def _vendors_wait(self) -> None:
        """A rate limit holds for every request to the vendor, not only the one refused: the
        others wait it out too (a short wait here, a long one parked with its time) instead
        of going out to be refused, and so counted against the account again."""
        wait = self._resume_at - time.monotonic()
        if wait <= 0:
            return
        if wait > self._max_wait_s:
            raise DeliveryError(
                f"{self.name} asked to wait {wait:.0f} s more (a rate limit): not sent",
                retryable=True,
                retry_after_s=wait,
                answered=None,  # not sent: says nothing of the target either way
            )
        metrics.VENDOR_WAITS.labels(self.name).inc()
        await asyncio.sleep(wait)

    def limits_the_account(self, response: httpx.Response) -> bool:
        """Whether a refusal's wait holds for every request to the vendor (a limit of the
        account or app), not for this one alone. None by default: Zendesk's and Jira's 429
        may be a limit of one ticket or issue (updates per ticket, writes per issue), which
        must not hold up the others."""
        return False

    def vendor_wait_s(self, response: httpx.Response) -> float | None:
        """The wait a refusal asks for in the vendor's own terms, when it sends no
        ``Retry-After`` (a refusal with such a wait is retried, whatever its status); None:
        the status and the backoff decide."""
        return None

    def partitions_moved(self) -> None:
        pass  # the vendor's own idempotency (a key, an upsert, a tag) finds what was in flight

    async def close(self) -> None:
        await self.http.aclose()


class WebhookChannel(HttpChannel):
    """POST the routed tweet as JSON, signed: ``X-Switchboard-Signature: sha256=<hex HMAC of
    "<timestamp>.<body>">`` with ``X-Switchboard-Timestamp``; ``Idempotency-Key`` is the
    delivery id, so a receiver can drop a redelivery.

    ``event`` is the routed tweet as data, exactly as on the department topic; ``text`` is the
    same news made safe to post to a chat tool as it is (a Slack-style ``text`` field)."""

    name = "webhook"

    def __init__(self, policy: DeliveryPolicy, secrets: dict[str, str]) -> None:
        super().__init__(policy)
        self.secrets = secrets  # subscription name -> signing key, read at start

    async def deliver(self, job: Job) -> Done:
        target = job.subscription.webhook
        assert target is not None
        secret = self.secrets[job.subscription.name]
        body = json.dumps(
            {
                "delivery_id": job.delivery_id,
                "department": job.department.value,
                "text": job.chat_text(),
                "event": job.routed.model_dump(mode="json"),
            },
            separators=(",", ":"),
        ).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "X-Switchboard-Timestamp": timestamp,
            "X-Switchboard-Signature": webhook_signature(secret, timestamp, body),
            "Idempotency-Key": job.delivery_id,
        }
        await self.send("POST", target.url, content=body, headers=headers)
        return Done("sent")


def webhook_signature(secret: str, timestamp: str, body: bytes) -> str:
    signed = timestamp.encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


class ZendeskChannel(HttpChannel):
    """Tickets: ``external_id`` names the conversation; follow-ups are comments on it. Each
    create carries an ``Idempotency-Key`` and a tag of its own delivery, so a create that
    happened but whose answer was lost is recognised instead of repeated or commented on.

    A closed ticket cannot be reopened or commented on (Zendesk answers 422): a follow-up in
    its conversation opens a follow-up ticket (``via_followup_source_id``), which then carries
    the conversation."""

    name = "zendesk"

    async def deliver(self, job: Job) -> Done:
        mine = delivery_tag(job.delivery_id)
        found = [] if job.thread_id else await self._find(job.conversation_key)
        if made := next((t for t in found if mine in t.get("tags", [])), None):
            return Done("created", str(made["id"]))
        current = _current(found)
        ticket = job.thread_id or (str(current["id"]) if current else None)
        if ticket is None:
            return await self._create(job, mine)
        if current is not None and current.get("status") == "closed":
            return await self._create(job, mine, follow_up_of=ticket)
        try:
            return await self._comment(job, ticket, mine)
        except DeliveryError as error:
            if _closed(error):
                return await self._create(job, mine, follow_up_of=ticket)
            if not _gone(error):
                raise
        _thread_gone(self.name, ticket)
        return await self._create(job, mine)

    async def _comment(self, job: Job, ticket: str, mine: str) -> Done:
        # A comment that timed out but happened is found by its tag, not made twice.
        if await self._commented(ticket, mine):
            return Done("commented", ticket)
        update: dict[str, Any] = {
            "comment": {"html_body": zendesk_html(job, tagged=True), "public": False}
        }
        if job.routed.classification.urgency is Urgency.CRITICAL:  # raise, never lower
            update["priority"] = job.priority(DEFAULT_ZENDESK)
        await self.send("PUT", f"/api/v2/tickets/{ticket}.json", json={"ticket": update})
        return Done("commented", ticket)

    async def _create(self, job: Job, mine: str, follow_up_of: str | None = None) -> Done:
        if job.thread_id is not None:
            # The search at the top was skipped for a known thread: this delivery's own create
            # whose answer was lost is found by its tag, which outlives the two hours Zendesk
            # keeps an Idempotency-Key (a redrive may come later than that).
            found = await self._find(job.conversation_key)
            if made := next((t for t in found if mine in t.get("tags", [])), None):
                return Done("created", str(made["id"]))
        target = job.subscription.zendesk
        fields: dict[str, Any] = {
            "subject": job.summary(),
            "comment": {"html_body": zendesk_html(job), "public": False},
            "priority": job.priority(DEFAULT_ZENDESK),
            "external_id": job.conversation_key,
            "tags": [*(target.tags if target else ["switchboard"]), mine],
        }
        if target and target.group_id:
            fields["group_id"] = target.group_id
        if follow_up_of is not None:
            fields["via_followup_source_id"] = int(follow_up_of)
            metrics.FOLLOW_UP_TICKETS.labels(self.name).inc()
        response = await self.send(
            "POST",
            "/api/v2/tickets.json",
            json={"ticket": fields},
            headers={"Idempotency-Key": job.delivery_id},
        )
        return Done("created", str(json_of(response)["ticket"]["id"]))

    async def _commented(self, ticket: str, tag: str) -> bool:
        """Whether one of the ticket's latest 100 comments carries ``tag``."""
        found = await self.send("GET", f"/api/v2/tickets/{ticket}/comments.json",
                                params={"sort_order": "desc", "per_page": 100})  # fmt: skip
        return any(tag in (c.get("body") or "") + (c.get("html_body") or "")
                   for c in json_of(found).get("comments", []))  # fmt: skip

    async def _find(self, external_id: str) -> list[dict]:
        found = await self.send("GET", "/api/v2/tickets.json", params={"external_id": external_id})
        return list(json_of(found).get("tickets", []))


def _current(tickets: list[dict]) -> dict | None:
    """The conversation's ticket: the newest one still open, else the newest (closed)."""
    newest_first = sorted(tickets, key=lambda t: int(t["id"]), reverse=True)
    return next((t for t in newest_first if t.get("status") != "closed"), None) or (
        newest_first[0] if newest_first else None
    )


def _thread_gone(channel: str, thread: str, why: str = "deleted") -> None:
    """The conversation's ticket, issue or Case was deleted (or a Jira issue is full): a new
    one is opened for it."""
    log.warning("the conversation's ticket is gone; opening a new one",
                extra={"channel": channel, "ticket": thread, "why": why})  # fmt: skip
    metrics.THREADS_GONE.labels(channel).inc()


def _gone(error: DeliveryError) -> bool:
    """The vendor's 404 for a ticket or issue the ledger recorded: deleted since (Jira's 404
    also covers an issue the account may no longer see)."""
    return str(error).startswith("HTTP 404")


def _closed(error: DeliveryError) -> bool:
    """Zendesk's 422 for an update of a closed ticket: ``details.status[].error``
    ``ClosedPreventsUpdate`` ("Status: closed prevents ticket update"), anywhere in its
    answer however long."""
    text = error.body or str(error)
    return str(error).startswith("HTTP 422") and (
        "ClosedPreventsUpdate" in text or "closed prevents ticket update" in text.lower()
    )


def salesforce_codes(error: DeliveryError) -> set[str]:
    """The ``errorCode`` of each error in Salesforce's answer (a list of errors, however
    long: the message keeps only its head)."""
    try:
        errors = json.loads(error.body)
    except ValueError:
        return set()
    if not isinstance(errors, list):
        return set()
    return {str(e.get("errorCode")) for e in errors if isinstance(e, dict)}


def zendesk_html(job: Job, tagged: bool = False) -> str:
    """The comment as escaped HTML: Zendesk renders Markdown in a comment's ``body`` but not in
    its ``html_body``, so tweet text can add neither markup nor formatting. ``tagged``: a
    follow-up, which ends with its delivery's tag (``Job.comment``)."""
    text = job.comment if tagged else job.body
    markup = html(text(ZENDESK_TEXT_LIMIT))
    if len(markup) > ZENDESK_HTML_LIMIT:  # escaping grew it; no character grows beyond 6
        markup = html(text(ZENDESK_HTML_LIMIT // 6))
    return str(markup)


def delivery_tag(delivery_id: str) -> str:
    """A short tag or label naming one delivery at the vendor."""
    return "sb-d-" + hashlib.sha256(delivery_id.encode()).hexdigest()[:16]


DEFAULT_ZENDESK = {Urgency.CRITICAL: "urgent", Urgency.HIGH: "high", Urgency.NORMAL: "normal",
                   Urgency.LOW: "low"}  # fmt: skip


class JiraChannel(HttpChannel):
    """Issues labelled with the conversation; follow-ups are comments on the same issue.

    Jira has no idempotency key, and its JQL search is eventually consistent. A create whose
    answer was lost (a timeout, a 5xx) may have happened: it is not repeated until a search for
    the delivery's own label has had ``search_settle_s`` to find it (the wait is a retry, or a
    park with ``retry_at`` when longer than ``max_wait_s``). Searches pass the ids of issues
    this channel created lately as ``reconcileIssues``, Jira's read-after-write guarantee.

    A notify that just started knows neither: the one before it may have created an issue just
    before it stopped or died, unrecorded on the ledger. So a search before a create waits until
    ``search_settle_s`` has passed since the channel started, and since the replica's partitions
    last moved (a replica long started takes a partition whose owner died mid-create); comments
    need no such wait: the issue's comments are read directly, not searched."""

    name = "jira"
    # Jira's 401 is refused credentials; its 403 is a permission missing in one project
    # ("Create issues" for the project the issue is created in): the other projects' deliveries
    # go on, and the circuit stays closed
    unanswered = UNANSWERED - {403}

    def __init__(self, policy: DeliveryPolicy, base_url: str, *, settle_s: float, **client: Any):
        super().__init__(policy, base_url, **client)
        self.settle_s = settle_s
        self._started = time.monotonic()
        self._uncertain: dict[str, float] = {}  # delivery id -> when its create went unanswered
        self._created: collections.deque[str] = collections.deque(maxlen=JIRA_RECONCILE_MAX)

    async def deliver(self, job: Job) -> Done:
        label = "sb-" + hashlib.sha256(job.conversation_key.encode()).hexdigest()[:16]
        mine = delivery_tag(job.delivery_id)
        issue = job.thread_id
        if issue is None:
            # One search for both: the conversation's issue, and this delivery's own create if
            # it happened unanswered. Two searches could disagree (the index is eventually
            # consistent), and the lost create would then be commented on as a follow-up.
            await self._settled_since_start()
            found = await self._search(label)
            if (own := self._own(found, job.delivery_id)) is not None:
                return Done("created", own)
            issue = found[0][0] if found else None
        if issue is not None:
            try:
                return await self._comment(job, issue, mine)
            except DeliveryError as error:
                # Deleted (404), or full (413: the per-issue limit of comments reached): the
                # conversation goes on in a new issue.
                why = "full" if str(error).startswith("HTTP 413") else "deleted"
                if why == "deleted" and not _gone(error):
                    raise
            _thread_gone(self.name, issue, why)
            # This delivery's create of the successor may have happened unanswered, here or in
            # the notify before this one: its own label finds it.
            await self._settled_since_start()
            if own := self._own(await self._search(label), job.delivery_id):
                return Done("created", own)
        self._settled(job.delivery_id)
        target = job.subscription.jira
        assert target is not None
        fields = {
            "project": {"key": target.project},
            "summary": job.summary(SUMMARY_LIMIT, utf16_units),
            "issuetype": {"name": target.issue_type},
            # the last names the conversation, for the feedback webhook (route/feedback.py)
            "labels": [
                "switchboard",
                label,
                mine,
                vendor_conversation_label(job.routed.tweet.conversation_id),
            ],
            "description": adf(job.body(JIRA_TEXT_LIMIT, utf16_units)),
        }
        if target.set_priority:
            fields["priority"] = {"name": job.priority(JIRA_PRIORITIES)}
        try:
            response = await self.send("POST", "/rest/api/3/issue", json={"fields": fields})
            created = json_of(response)  # an unreadable answer: the issue may exist
            issue_id, key = str(created["id"]), str(created["key"])
        except (KeyError, TypeError) as error:  # a 2xx of another shape: it may exist too
            self._uncertain_since(job.delivery_id)
            raise DeliveryError(
                f"unexpected answer to a create: {error!r}", retryable=True
            ) from None
        except DeliveryError as error:
            if error.retryable and not str(error).startswith("HTTP 429"):
                self._uncertain_since(job.delivery_id)  # it may have happened
            raise
        self._uncertain.pop(job.delivery_id, None)
        self._created.append(issue_id)
        return Done("created", key)

    def vendor_wait_s(self, response: httpx.Response) -> float | None:
        # Jira's 429 may come with X-RateLimit-Reset (an ISO time, to the minute) and no
        # Retry-After ("Rate limiting" in Jira Cloud's REST documentation).
        if response.status_code != 429:
            return None
        return until_reset(response.headers.get("x-ratelimit-reset"), datetime.now(UTC))

    async def _comment(self, job: Job, issue: str, mine: str) -> Done:
        comments = f"/rest/api/3/issue/{quote(issue)}/comment"
        # A comment that timed out but happened is found by its tag, not made twice.
        if not await self._commented(comments, mine):
            comment = {"body": adf(job.comment(JIRA_TEXT_LIMIT, utf16_units))}
            await self.send("POST", comments, json=comment)
        return Done("commented", issue)

    def _own(self, found: list[tuple[str, list[str]]], delivery_id: str) -> str | None:
        """The issue among ``found`` that this delivery created, if any (by its label)."""
        mine = delivery_tag(delivery_id)
        own = next((key for key, labels in found if mine in labels), None)
        if own is not None:
            self._uncertain.pop(delivery_id, None)
        return own

    def _uncertain_since(self, delivery_id: str) -> None:
        now = time.monotonic()
        self._uncertain.pop(delivery_id, None)
        self._uncertain[delivery_id] = now  # the latest last
        while self._uncertain and now - next(iter(self._uncertain.values())) > self.settle_s:
            del self._uncertain[next(iter(self._uncertain))]  # settled, whoever retries it

    def _settled(self, delivery_id: str) -> None:
        """Raise a retryable wait while a lost create may still be hidden from search."""
        since = self._uncertain.get(delivery_id)
        if since is None:
            return
        left = self.settle_s - (time.monotonic() - since)
        if left > 0:
            metrics.RECONCILE_WAITS.labels(self.name).inc()
            raise DeliveryError(
                "a create whose answer was lost may still appear in Jira's search: "
                f"not repeated for {left:.1f} s",
                retryable=True,
                retry_after_s=left,
                answered=True,  # our own wait, not Jira's failure
            )
        del self._uncertain[delivery_id]  # searched long enough: it did not happen

    def partitions_moved(self) -> None:
        self._started = time.monotonic()  # as if started now: the partitions' previous owner
        # may have created an issue it could not record

    async def _settled_since_start(self) -> None:
        """Wait until the search has had ``settle_s`` since this channel started (or its
        partitions moved): a create by the notify before, unrecorded, may still be hidden from
        it. Not a retry: it takes none of the delivery's attempts."""
        left = self.settle_s - (time.monotonic() - self._started)
        if left > 0:
            metrics.RECONCILE_WAITS.labels(self.name).inc()
            await asyncio.sleep(left)

    async def _commented(self, comments: str, tag: str) -> bool:
        """Whether one of the issue's latest 100 comments carries ``tag``."""
        found = await self.send("GET", comments, params={"orderBy": "-created", "maxResults": 100})
        return any(tag in json.dumps(c.get("body")) for c in json_of(found).get("comments", []))

    async def _search(self, label: str) -> list[tuple[str, list[str]]]:
        """The key and labels of each issue labelled ``label``, newest first."""
        params: dict[str, Any] = {"jql": f'labels = "{label}" ORDER BY created DESC',
                                  "fields": "key,labels"}  # fmt: skip
        if self._created:  # an array parameter: repeated, as the OpenAPI default (form, explode)
            params["reconcileIssues"] = list(self._created)
        found = await self.send("GET", "/rest/api/3/search/jql", params=params)
        return [
            (issue["key"], list(issue.get("fields", {}).get("labels", [])))
            for issue in json_of(found).get("issues", [])
        ]


def adf(text: str) -> dict:
    """Plain text as an Atlassian Document Format document, one paragraph per line. Text nodes
    are literal: no wiki markup, mention or link is parsed from them."""
    paragraphs = [
        {"type": "paragraph", "content": [{"type": "text", "text": line}] if line else []}
        for line in text.split("\n")
    ]
    return {"type": "doc", "version": 1, "content": paragraphs}


class SalesforceToken:
    """The access token Salesforce deliveries carry: a fixed one, or one the OAuth 2.0 client
    credentials flow fetches and fetches again after Salesforce says it expired."""

    def __init__(
        self, fixed: str | None = None, *, token_url: str = "", client: tuple[str, str] = ("", "")
    ) -> None:
        self.value = fixed
        self.renewable = fixed is None
        self.token_url = token_url
        self._client = client
        self._lock = asyncio.Lock()

    async def current(self, http: httpx.AsyncClient) -> str:
        if self.value is None:
            await self.renew(http, stale=None)
        assert self.value is not None
        return self.value

    async def renew(self, http: httpx.AsyncClient, stale: str | None) -> None:
        """Fetch a new token, once for all the deliveries that found ``stale`` expired."""
        async with self._lock:
            if self.value != stale:
                return  # another delivery renewed it meanwhile
            client_id, client_secret = self._client
            form = {"grant_type": "client_credentials", "client_id": client_id,
                    "client_secret": client_secret}  # fmt: skip
            try:
                answer = await http.post(self.token_url, data=form)
            except httpx.HTTPError as exc:
                raise DeliveryError(f"token refresh failed: {type(exc).__name__}: {exc}",
                                    retryable=True) from None  # fmt: skip
            if answer.status_code != 200 or "access_token" not in answer.text:
                raise DeliveryError(
                    f"token refresh failed: HTTP {answer.status_code}: {answer.text[:300]}",
                    retryable=answer.status_code >= 500,
                )
            self.value = answer.json()["access_token"]
            metrics.TOKEN_RENEWALS.labels("salesforce").inc()


class SalesforceChannel(HttpChannel):
    """Upsert by external id: a Lead per author, or a Case per conversation.

    A Case is opened by the conversation's first tweet (upserted by the conversation's external
    id); each later tweet is a private CaseComment on it, ending with its delivery's tag (by
    which one that timed out is found again), so the Case keeps its description, its status and
    what agents changed, and its priority only rises. A Case found deleted gets a new one.

    With OAuth, a 401 ``INVALID_SESSION_ID`` renews the token and tries the request once more;
    a renewal Salesforce refuses parks the delivery with Salesforce's reason. Salesforce answers
    a spent API request limit (the org's, over a rolling 24 hours) with 403
    ``REQUEST_LIMIT_EXCEEDED``, not 429: the delivery waits ``request_limit_wait_s``, parked. An
    upsert that lost a race for its external id (400 ``DUPLICATE_VALUE`` on that field: two
    tweets of a new author at once) is tried again, and then updates the record the other one
    created; a duplicate on another field the org made Unique is a rejection."""

    name = "salesforce"

    def __init__(
        self,
        policy: DeliveryPolicy,
        base_url: str,
        api_version: str,
        token: SalesforceToken,
        request_limit_wait_s: float = 3600.0,
    ) -> None:
        super().__init__(policy, base_url)
        self.api_version = api_version
        self.token = token
        self.request_limit_wait_s = request_limit_wait_s

    def vendor_wait_s(self, response: httpx.Response) -> float | None:
        if response.status_code not in (400, 403):
            return None
        try:
            errors = response.json()
        except ValueError:
            return None
        if not isinstance(errors, list):
            return None
        errors = [e for e in errors if isinstance(e, dict)]
        codes = {e.get("errorCode") for e in errors}
        if response.status_code == 403 and "REQUEST_LIMIT_EXCEEDED" in codes:
            # Too many long-running requests at once clears within seconds; the org's daily
            # allowance ("TotalRequests Limit exceeded", or unsaid) over hours.
            busy = any("Concurrent" in str(e.get("message")) for e in errors)
            return CONCURRENT_LIMIT_WAIT_S if busy else self.request_limit_wait_s
        if response.status_code == 400 and "UNABLE_TO_LOCK_ROW" in codes:
            # The record (or the Case a comment locks) is being saved by someone else.
            return ROW_LOCK_WAIT_S
        if response.status_code == 400 and _lost_a_race(response, errors):
            # Another delivery (this replica's or another's) created the author's record
            # meanwhile: the same upsert again updates it.
            return DUPLICATE_RETRY_S
        return None

    def limits_the_account(self, response: httpx.Response) -> bool:
        # the org's request limits (daily, concurrent): a 403 REQUEST_LIMIT_EXCEEDED
        return response.status_code == 403 and self.vendor_wait_s(response) is not None

    async def send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        token = await self.token.current(self.http)
        try:
            return await super().send(method, url, **kwargs, headers=_bearer(token))
        except DeliveryError as error:
            if not (self.token.renewable and str(error).startswith("HTTP 401")):
                raise
        await self.token.renew(self.http, stale=token)
        return await super().send(method, url, **kwargs, headers=_bearer(self.token.value or ""))

    @property
    def sobjects(self) -> str:
        return f"/services/data/{self.api_version}/sobjects"

    async def deliver(self, job: Job) -> Done:
        target = job.subscription.salesforce or SalesforceTarget()  # optional: the defaults
        if target.object == "Case":
            return await self._case(job, target)
        author = job.routed.tweet.author
        fields: dict[str, Any] = {"Description": job.body(SALESFORCE_TEXT_LIMIT, utf16_units)}
        # Only a new Lead gets a name, a company, the owner and the source (one insert, which
        # an org's validation rules see whole): a rep may have corrected or taken over an
        # existing one since, and the author's next tweet updates its description alone.
        # Whether it exists is asked first; two new tweets of one author at once both insert,
        # and the second upsert updates the first's record with the same values.
        path = f"{self.sobjects}/Lead/{target.external_id_field}/{quote(author.id, safe='')}"
        if not await self._exists(path):
            fields |= _new_lead(author, target)
        try:
            record = await self._upsert(target, author.id, fields)
        except DeliveryError as error:
            codes = salesforce_codes(error)
            if "REQUIRED_FIELD_MISSING" in codes and "LastName" not in fields:
                # deleted since it was asked for: the update would have created it
                return Done("upserted", await self._upsert(
                    target, author.id, fields | _new_lead(author, target)))  # fmt: skip
            if "CANNOT_UPDATE_CONVERTED_LEAD" not in codes:
                raise
            # A rep converted the author's Lead into a Contact: Salesforce keeps it as it was.
            log.info("the author's Lead was converted; left as it is",
                     extra={"delivery_id": job.delivery_id, "author": author.id})  # fmt: skip
            return Done("lead_converted")
        return Done("upserted", record)

    async def _exists(self, path: str) -> bool:
        try:
            await self.send("GET", path, params={"fields": "Id"})
        except DeliveryError as error:
            if _gone(error):
                return False
            raise
        return True

    async def _upsert(
        self, target: SalesforceTarget, key: str, fields: dict[str, Any]
    ) -> str | None:
        path = f"{self.sobjects}/{target.object}/{target.external_id_field}/{quote(key, safe='')}"
        response = await self.send("PATCH", path, json=fields)
        return (json_of(response) if response.content else {}).get("id")

    async def _case(self, job: Job, target: SalesforceTarget) -> Done:
        key = job.routed.tweet.conversation_id
        case = job.thread_id
        if case is None:
            case, description = await self._case_of(target, key)
            if case is not None and delivery_tag(job.delivery_id) in description:
                return Done("created", case)  # this delivery's upsert, its answer lost
        if case is not None:
            try:
                return await self._follow_up(job, case)
            except DeliveryError as error:
                if not _gone(error):
                    raise
            _thread_gone(self.name, case)
        fields: dict[str, Any] = {
            "Subject": job.summary(SUMMARY_LIMIT, utf16_units),
            # tagged: a retry after a lost answer finds its own Case instead of commenting
            "Description": job.comment(SALESFORCE_TEXT_LIMIT, utf16_units),
            "Priority": job.priority(SALESFORCE_PRIORITIES),
        }
        if target.case_origin:
            fields["Origin"] = target.case_origin
        if target.owner_id:  # a Case is upserted only to open it: its owner goes with it
            fields["OwnerId"] = target.owner_id
        return Done("created", await self._upsert(target, key, fields))

    async def _case_of(self, target: SalesforceTarget, key: str) -> tuple[str | None, str]:
        """The id and description of the conversation's Case, when one exists that the ledger
        does not remember."""
        path = f"{self.sobjects}/Case/{target.external_id_field}/{quote(key, safe='')}"
        try:
            found = await self.send("GET", path, params={"fields": "Id,Description"})
        except DeliveryError as error:
            if _gone(error):
                return None, ""
            raise
        case = json_of(found)
        return case.get("Id"), case.get("Description") or ""

    async def _follow_up(self, job: Job, case: str) -> Done:
        mine = delivery_tag(job.delivery_id)
        comments = await self.send("GET", f"{self.sobjects}/Case/{case}/CaseComments")
        made = json_of(comments).get("records", [])
        if not any(mine in (c.get("CommentBody") or "") for c in made):
            comment = {"ParentId": case, "IsPublished": False,
                       "CommentBody": job.comment(CASE_COMMENT_LIMIT, utf8_bytes)}  # fmt: skip
            await self.send("POST", f"{self.sobjects}/CaseComment", json=comment)
        if job.routed.classification.urgency is Urgency.CRITICAL:  # raise, never lower
            priority = {"Priority": job.priority(SALESFORCE_PRIORITIES)}
            await self.send("PATCH", f"{self.sobjects}/Case/{case}", json=priority)
        return Done("commented", case)


def _daily(response: httpx.Response) -> bool:
    """Whether HubSpot's 429 body names the daily limit (``policyName: DAILY``)."""
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("policyName") == "DAILY"


def until_reset(value: str | None, now: datetime) -> float | None:
    """Seconds from ``now`` to an ISO 8601 reset time (``2026-12-06T10:31Z``); None when there
    is none, it cannot be read, or it has passed (the backoff decides then)."""
    try:
        moment = datetime.fromisoformat(value or "")
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    wait = (moment - now).total_seconds()
    return wait if wait > 0 else None


def until_midnight(now: datetime, zone: ZoneInfo) -> float:
    """Seconds from ``now`` to the next midnight on the wall clock of ``zone``."""
    local = now.astimezone(zone)
    midnight = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), zone)
    # Through UTC: between two datetimes of one zone Python subtracts wall clocks, which is
    # an hour off on the days the clocks change.
    return (midnight.astimezone(UTC) - now.astimezone(UTC)).total_seconds()


def _lost_a_race(response: httpx.Response, errors: list[dict]) -> bool:
    """A ``DUPLICATE_VALUE`` on the external id the upsert's URL names (PATCH
    ``.../sobjects/<object>/<field>/<value>``): another upsert inserted that record first.
    One on another field the org made Unique is the record's own conflict: retrying repeats it,
    so it waits for a person like any rejection."""
    # the path as sent (a value's "/" stays %2F), without its query
    parts = response.request.url.raw_path.decode("ascii").partition("?")[0].split("/")
    if response.request.method != "PATCH" or parts[-4:-3] != ["sobjects"]:
        return False
    field = parts[-2].lower()
    # Salesforce names the field in ``fields`` or only in the message, in its own spelling
    # (API names are case-insensitive); concurrent inserts may say "<unknown> duplicates".
    named = re.compile(rf"(?<![\w])(?:{re.escape(field)}|<unknown>) duplicates", re.IGNORECASE)
    return any(
        e.get("errorCode") == "DUPLICATE_VALUE"
        and (
            field in {str(f).lower() for f in e.get("fields") or []}
            or named.search(str(e.get("message"))) is not None
        )
        for e in errors
    )


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class HubSpotChannel(HttpChannel):
    """Batch upsert on a unique property: a contact per author, or a ticket per conversation.

    A ticket is opened (subject, pipeline stage, priority) by the conversation's first tweet;
    a later one leaves the stage an agent moved it to and the subject alone, and a critical
    tweet raises its priority. A ticket has one ``content``, which an upsert replaces: it is the
    conversation's first tweet and its latest (``Job.earlier``, as the ledger keeps them, and
    this one; the oldest dropped first past HubSpot's limit), so an agent still reads the first
    complaint after the follow-ups, and a retried upsert writes the same text. A ticket
    someone deleted is opened again. (A tweet of a conversation the ledger forgot,
    ``ledger_retention_hours`` after its last delivery, opens the ticket again: only the batch
    upsert is in HubSpot's contract here, which cannot tell a new conversation from a
    forgotten one without a second request per ticket.)

    HubSpot answers a batch whose inputs partly failed with 207 and the errors beside the
    results: that is a failed delivery, with HubSpot's error kept. Its 429 carries no
    ``Retry-After`` but ``X-HubSpot-RateLimit-*`` headers: the wait is the rolling window
    (``Interval-Milliseconds``), or, when the daily limit is spent (``Daily-Remaining: 0``, or
    the body's ``policyName: DAILY``), until midnight in the account's time zone, where HubSpot
    resets it."""

    name = "hubspot"

    def __init__(
        self, policy: DeliveryPolicy, base_url: str, token: str, time_zone: str = "UTC"
    ) -> None:
        super().__init__(policy, base_url, headers={"Authorization": f"Bearer {token}"})
        self.time_zone = ZoneInfo(time_zone)
        # Contact deliveries this process began and has not finished, by delivery id, with
        # when the first attempt began: a retry after an upsert's answer was lost finds the
        # contact no longer new, but created since (HubSpot's createdAt), so by this delivery.
        self._upserting: dict[str, datetime] = {}

    def limits_the_account(self, response: httpx.Response) -> bool:
        # the app's 10-second window and the account's daily limit (not a record's lock, 423)
        return response.status_code == 429

    def vendor_wait_s(self, response: httpx.Response) -> float | None:
        if response.status_code == 423:  # a record locked by a burst of upserts, for 2 s
            return HUBSPOT_LOCK_WAIT_S
        if response.status_code != 429:
            return None
        if response.headers.get("x-hubspot-ratelimit-daily-remaining") == "0" or _daily(response):
            return until_midnight(datetime.now(UTC), self.time_zone)
        return _rate_window_s(response)

    async def deliver(self, job: Job) -> Done:
        target = job.subscription.hubspot or HubSpotTarget()  # optional: the defaults
        if target.object == "tickets":
            return await self._ticket(job, target)
        author = job.routed.tweet.author
        mine = job.delivery_id  # another subscription's delivery to the contact is its own
        began = self._upserting.get(mine)  # set: this is a retry
        if began is None:
            self._upserting[mine] = datetime.now(UTC)
            if len(self._upserting) > UPSERTS_REMEMBERED:  # deliveries parked for good
                del self._upserting[next(iter(self._upserting))]
        properties: dict[str, Any] = {"twitterhandle": one_line(author.username, 50)}
        result = await self._upsert_result(target, author.id, properties)
        new = bool(result.get("new")) or (began is not None and _created_since(result, began))
        shown = result.get("properties") or {}
        # Only a contact without a name gets one, and only a new one the owner: a rep may have
        # corrected the name or taken the contact over since. The batch upsert is the one
        # operation of HubSpot's contract here, so a second one sets them.
        first: dict[str, Any] = {}
        if new or ("lastname" in shown and not shown["lastname"]):
            first["lastname"] = one_line(author.name or f"@{author.username}", 200)
        if target.owner_id and new:
            first["hubspot_owner_id"] = target.owner_id
        if first:
            await self._upsert(target, author.id, first)
        self._upserting.pop(mine, None)
        return Done("upserted", result.get("id"))

    async def _ticket(self, job: Job, target: HubSpotTarget) -> Done:
        key = job.routed.tweet.conversation_id
        kept = job.body(HUBSPOT_TEXT_LIMIT)
        parts, opens = [*job.earlier, kept], job.thread_id is None
        try:
            record, new = await self._upsert_ticket(job, target, key, parts, opens=opens)
        except DeliveryError as error:
            # Only the batch upsert is in HubSpot's contract here: that a follow-up's upsert
            # would have created the ticket (refused for want of a pipeline stage, or "new")
            # is what tells it was deleted.
            if opens or not _wants_a_stage(error):
                raise
            new = True
        if new and not opens:
            _thread_gone(self.name, job.thread_id or "")
            opens = True
            record, _ = await self._upsert_ticket(job, target, key, parts, opens=opens)
        return Done("created" if opens else "upserted", record, kept)  # the ledger keeps kept

    async def _upsert_ticket(
        self, job: Job, target: HubSpotTarget, key: str, parts: list[str], *, opens: bool
    ) -> tuple[str | None, bool]:
        properties: dict[str, Any] = {"content": transcript(parts, HUBSPOT_TEXT_LIMIT)}
        if opens:  # the conversation's first tweet opens the ticket, with its owner
            properties |= {
                "subject": job.summary(),
                "hs_pipeline": target.pipeline,
                "hs_pipeline_stage": target.stage,
                "hs_ticket_priority": job.priority(HUBSPOT_PRIORITIES),
            }
            if target.owner_id:
                properties["hubspot_owner_id"] = target.owner_id
        elif job.routed.classification.urgency is Urgency.CRITICAL:  # raise, never lower
            properties["hs_ticket_priority"] = job.priority(HUBSPOT_PRIORITIES)
        return await self._upsert(target, key, properties)

    async def _upsert(
        self, target: HubSpotTarget, key: str, properties: dict[str, Any]
    ) -> tuple[str | None, bool]:
        """The record's id, and whether the upsert created it (HubSpot's ``new``)."""
        result = await self._upsert_result(target, key, properties)
        return result.get("id"), bool(result.get("new"))

    async def _upsert_result(
        self, target: HubSpotTarget, key: str, properties: dict[str, Any]
    ) -> dict[str, Any]:
        """HubSpot's answer for the one record upserted."""
        properties[target.id_property] = key
        upsert = {"inputs": [{"idProperty": target.id_property, "id": key,
                              "properties": properties}]}  # fmt: skip
        response = await self.send(
            "POST", f"/crm/v3/objects/{target.object}/batch/upsert", json=upsert
        )
        answer = json_of(response)
        if response.status_code == 207 or answer.get("errors"):
            raise hubspot_batch_error(answer, _rate_window_s(response))
        return hubspot_upserted(answer)


# Contacts whose delivery failed remembered for its retry (HubSpotChannel._upserting)
UPSERTS_REMEMBERED = 10_000
# HubSpot's clock against ours: a record created up to this long before our first upsert of
# it went out still counts as created by that upsert.
HUBSPOT_CLOCK_SKEW = timedelta(seconds=60)


def _created_since(result: dict[str, Any], began: datetime) -> bool:
    """Whether HubSpot created the record (its ``createdAt``) after ``began``: by an upsert of
    this delivery whose answer was lost."""
    created = result.get("createdAt")
    try:
        at = datetime.fromisoformat(str(created)) if created else None
    except ValueError:
        return False
    return at is not None and at.tzinfo is not None and at >= began - HUBSPOT_CLOCK_SKEW


def _new_lead(author: Author, target: SalesforceTarget) -> dict[str, Any]:
    """The fields only a new Lead gets: a rep may have corrected or taken over one since."""
    name = author.name or f"@{author.username}"
    fields = {
        "LastName": one_line(name, SALESFORCE_NAME_LIMIT, utf16_units),
        "Company": one_line(f"X user @{author.username}", SUMMARY_LIMIT, utf16_units),
        "OwnerId": target.owner_id,
        "LeadSource": target.lead_source,
    }
    return {name: value for name, value in fields.items() if value}


def _wants_a_stage(error: DeliveryError) -> bool:
    """HubSpot's refusal to create a ticket without ``hs_pipeline_stage`` ("Property values
    were not valid", the property ``REQUIRED``)."""
    text = error.body or str(error)
    return not error.retryable and "REQUIRED" in text and "hs_pipeline_stage" in text


TRANSCRIPT_SEPARATOR = "\n\n" + "-" * 24 + "\n\n"


def transcript(parts: list[str], limit: int) -> str:
    """The parts, oldest first, one after the other, within ``limit``: the latest part always
    (it was cut to the limit already), then the first (the complaint the conversation is
    about) when it fits, then the latest of those between; the others are left out."""
    latest, earlier = parts[-1:], parts[:-1]
    size = sum(len(p) for p in latest)

    def fits(part: str) -> bool:
        nonlocal size
        size += len(part) + len(TRANSCRIPT_SEPARATOR)
        return size <= limit

    first = earlier[:1] if earlier and fits(earlier[0]) else []
    between: list[str] = []
    for part in reversed(earlier[1:]):
        if not fits(part):
            break
        between.append(part)
    return TRANSCRIPT_SEPARATOR.join([*first, *reversed(between), *latest])


HUBSPOT_LOCK_WAIT_S = 2.0  # HubSpot's "Error handling": a 423 lock lasts 2 seconds
HUBSPOT_RATE_WINDOW_S = 10.0  # its burst limit counts requests per 10 seconds
HUBSPOT_TRANSIENT_CATEGORIES = frozenset({"RATE_LIMITS", "CONFLICT", "LOCKED"})


def json_of(response: httpx.Response) -> Any:
    """A success's JSON body. A body that is not JSON (a proxy's or a firewall's page in front
    of the vendor) is a failure to try again, as a lost answer is."""
    try:
        return response.json()
    except ValueError:
        raise DeliveryError(
            f"unreadable answer: HTTP {response.status_code} "
            f"{response.headers.get('content-type', '')}: {response.text[:200]}",
            retryable=True,
        ) from None


def _rate_window_s(response: httpx.Response) -> float:
    """HubSpot's rate-limit window: what its header says, else its documented 10 seconds."""
    interval = response.headers.get("x-hubspot-ratelimit-interval-milliseconds")
    return int(interval) / 1000 if interval and interval.isdigit() else HUBSPOT_RATE_WINDOW_S


def hubspot_upserted(answer: dict) -> dict[str, Any]:
    """The one record of a batch upsert's answer. HubSpot's batch answers carry a ``status``
    whose expected value is ``COMPLETE`` (``PENDING``, ``PROCESSING``, ``CANCELED``): any other,
    or no record, is not done; the upsert is by key, so trying it again is safe."""
    status, results = answer.get("status"), answer.get("results")
    records = [r for r in results if isinstance(r, dict)] if isinstance(results, list) else []
    if status != "COMPLETE" or len(records) != 1:
        raise DeliveryError(
            f"HubSpot's batch upsert answered {status!r} with {len(records)} records, not one: "
            "not done",
            retryable=True,
            answered=True,
            body=json.dumps(answer),
        )
    return records[0]


def hubspot_batch_error(answer: dict, rate_window_s: float = 0.0) -> DeliveryError:
    """A 207's errors as one DeliveryError: retryable only when every error is of the moment
    (HubSpot's own 5xx, a rate limit, a conflict or a lock: an item's ``status`` is the HTTP
    status it would have had alone). A rate-limited item waits out HubSpot's window
    (``rate_window_s``): retried after a lock's 2 seconds, every attempt would fall within
    the same 10-second window and the delivery be parked for nothing."""
    errors = [e for e in answer.get("errors") or [] if isinstance(e, dict)]
    described = "; ".join(
        f"{e.get('status', '?')} {e.get('category', '')}: {e.get('message', '')}".strip()
        for e in errors
    )

    def transient(error: dict) -> bool:
        status = str(error.get("status", ""))
        return (
            status.startswith("5")
            or (status.isdigit() and int(status) in TRANSIENT_STATUSES)
            or error.get("category") in HUBSPOT_TRANSIENT_CATEGORIES
        )

    retryable = bool(errors) and all(transient(e) for e in errors)
    limited = any(e.get("category") == "RATE_LIMITS" for e in errors)
    wait_s = max(HUBSPOT_LOCK_WAIT_S, rate_window_s if limited else 0.0)
    return DeliveryError(
        f"HTTP 207: {described or 'errors without detail'}",
        retryable=retryable,
        retry_after_s=wait_s if retryable else None,
        answered=True,
        body=json.dumps(answer),
    )


def channels_for(
    config: NotifyConfig, mailer: SmtpMailer, names: Mapping[str, str] | None = None
) -> dict[str, Channel]:
    """One client per channel in use; secrets are read now, so a missing one fails at start."""
    policy = config.delivery
    used = {s.channel for s in config.subscriptions}
    connections = config.connections
    check_templates(config.email, config.subscriptions)
    email = EmailChannel(mailer, config.email, names, policy.rate_per_s.get("email"))  # type: ignore[call-overload]
    channels: dict[str, Channel] = {"email": email}
    if "webhook" in used:
        secrets = {
            s.name: read_secret(s.webhook.secret, f"notify.subscriptions[{i}].webhook.secret")
            for i, s in enumerate(config.subscriptions)
            if s.webhook is not None
        }
        channels["webhook"] = WebhookChannel(
            policy, {name: value.get_secret_value() for name, value in secrets.items()}
        )
    if "zendesk" in used and connections.zendesk:
        c = connections.zendesk
        token = read_secret(c.api_token, "notify.connections.zendesk.api_token")
        auth = httpx.BasicAuth(f"{c.email}/token", token.get_secret_value())
        channels["zendesk"] = ZendeskChannel(policy, c.base_url, auth=auth)
    if "jira" in used and connections.jira:
        c = connections.jira
        token = read_secret(c.api_token, "notify.connections.jira.api_token")
        auth = httpx.BasicAuth(c.email, token.get_secret_value())
        channels["jira"] = JiraChannel(policy, c.base_url, settle_s=c.search_settle_s, auth=auth)
    if "salesforce" in used and connections.salesforce:
        channels["salesforce"] = SalesforceChannel(
            policy,
            connections.salesforce.instance_url,
            connections.salesforce.api_version,
            salesforce_token(connections.salesforce),
            connections.salesforce.request_limit_wait_s,
        )
    if "hubspot" in used and connections.hubspot:
        c = connections.hubspot
        token = read_secret(c.token, "notify.connections.hubspot.token")
        channels["hubspot"] = HubSpotChannel(
            policy, c.base_url, token.get_secret_value(), c.time_zone
        )
    return channels


def salesforce_token(c: SalesforceConnection) -> SalesforceToken:
    """The connection's token; its secrets are read now, so a missing one fails at start."""
    key = "notify.connections.salesforce"
    if c.oauth is None:
        assert c.access_token is not None  # the config model requires one of the two
        return SalesforceToken(
            read_secret(c.access_token, f"{key}.access_token").get_secret_value()
        )
    client_id = read_secret(c.oauth.client_id, f"{key}.oauth.client_id").get_secret_value()
    secret = read_secret(c.oauth.client_secret, f"{key}.oauth.client_secret").get_secret_value()
    url = c.oauth.token_url or f"{c.instance_url.rstrip('/')}/services/oauth2/token"
    return SalesforceToken(token_url=url, client=(client_id, secret))
