"""Corrections: a person says where a tweet should have gone, and route acts on it.

A correction arrives at any route replica, from the ops page or an authenticated
``POST /feedback``, or from a ticketing system (a Zendesk ticket moved to another group, a Jira
issue moved to another project, through their signed webhooks). The endpoint publishes a
``CorrectionRequest`` keyed by conversation id on ``switchboard.feedback.requests``, which is
co-partitioned with route's other inputs: the replica that owns the conversation applies it
inside its partition's stream (``apply``), publishes the ``Correction`` on
``switchboard.feedback`` once per correction id, re-publishes the tweet on the corrected
department's topic, and the conversation's owner follows. A correction of a conversation route
no longer holds is recorded for training only; every correction's id is remembered apart from
its conversation (``RecordedCorrections``), so each is published once per id. Nothing here
talks to Kafka or HTTP but ``feedback_router`` and that table.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import faust
from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from switchboard.route import metrics
from switchboard.route.config import FeedbackConfig, JiraFeedback, ZendeskFeedback
from switchboard.route.conversations import (
    answered,
    awaiting_after,
    replies_of,
    still_unanswered,
)
from switchboard.route.rules import URGENCY_RANK
from switchboard.shared import topics
from switchboard.shared.events import (
    ConversationState,
    Correction,
    CorrectionRequest,
    RecentTweet,
    RouteDecision,
    Tweet,
    conversation_of_vendor_key,
    conversation_of_vendor_labels,
)
from switchboard.shared.kafka import Output, publish
from switchboard.shared.labels import Department, Urgency
from switchboard.shared.runtime import read_body
from switchboard.shared.settings import ConfigError, read_secret
from switchboard.shared.streams import TtlMemory

if TYPE_CHECKING:
    from switchboard.route.service import RouteService

log = logging.getLogger(__name__)

TICKETING = ("zendesk", "jira")  # sources that correct a ticket, not a tweet
CLOCK_SKEW = timedelta(minutes=5)  # a vendor's clock ahead of ours by more: refused
REMEMBERED_CORRECTIONS = 32  # per conversation: a webhook retried within days is applied once
APPLIED_KEPT = 5  # corrections kept whole per conversation, to publish again after a crash
MAX_WEBHOOK_BYTES = 1 << 20
ZENDESK_PATH = "/feedback/zendesk"
JIRA_PATH = "/feedback/jira"
SELF_AUTHENTICATED = (ZENDESK_PATH, JIRA_PATH)  # signed by the vendor, not the admin token


@dataclass(frozen=True, slots=True)
class Recorded:
    """A correction as it was published, and the offset of the request that made it."""

    correction: Correction
    offset: int


class RecordedCorrections:
    """Every correction by id, kept for one to two conversation TTLs (``TtlMemory``): one of a
    conversation route no longer holds (past its TTL, or never seen) has no conversation to
    remember its id, and a retried webhook must still be recorded once, even after the
    conversation comes back or goes. The TTL is the one route started with (a reload does not
    resize the windows)."""

    def __init__(self, app: faust.App, partitions: int, ttl_hours: float) -> None:
        self.memory = TtlMemory(
            app, "recorded-corrections", partitions, ttl_hours * 3600, default=dict,
            help="every correction by id, as published, with its request's offset",
        )  # fmt: skip

    def get(self, correction_id: str) -> Recorded | None:
        found = self.memory.get(correction_id)
        if not found:
            return None
        return Recorded(Correction.model_validate(found["correction"]), found["offset"])

    def add(self, correction: Correction, offset: int) -> None:
        """Remember it, without its tweet (the author may delete it: its text must not outlive
        that here; a republish takes it from the request again); must run inside the stream
        of the request (its partition's changelog)."""
        kept = correction.model_copy(update={"tweet": None})
        self.memory.put(correction.correction_id, {
            "offset": offset, "correction": kept.model_dump(mode="json")})  # fmt: skip


@dataclass(frozen=True, slots=True)
class Applied:
    """What a correction does to its conversation."""

    correction: Correction
    state: ConversationState | None  # the conversation after it; None: nothing to remember
    recent: RecentTweet | None  # the tweet with its corrected labels, when route remembers it
    escalate: bool  # its new urgency alerts and its old one did not


def given_tweet(request: CorrectionRequest, tweet_id: str | None) -> Tweet | None:
    """The tweet the caller sent, if it is the one corrected, in the conversation named."""
    return request.tweet if _of_request(request, tweet_id) else None


def _of_request(request: CorrectionRequest, tweet_id: str | None) -> bool:
    """Whether the tweet the caller sent is the one corrected, in the conversation named."""
    given = request.tweet
    return (
        given is not None
        and tweet_id in (None, given.id)
        and given.conversation_id == request.conversation_id
    )


def apply(
    state: ConversationState | None,
    request: CorrectionRequest,
    now: datetime,
    *,
    sla_minutes: dict[Urgency, float],
    alert_urgencies: list[Urgency],
    sla_alerting: Collection[Urgency] = (),
) -> Applied:
    """The correction as the conversation's owner applies it (``state`` active or None)."""
    tweet_id = request.tweet_id or _latest(state, request.source, request.ticket_department)
    recent = state.recent.get(tweet_id) if state is not None and tweet_id else None
    if state is None or recent is None:  # past the TTL: kept for training, not re-routed
        given = request.tweet if _of_request(request, tweet_id) else None
        tweet_id = tweet_id or (given.id if given else None)
        recorded = _correction(request, tweet_id, "recorded", None, given, now)
        remembered = state and state.model_copy(update=_remembering(state, recorded))
        return Applied(recorded, remembered, None, False)
    request = _without_superseded(state, tweet_id, request)
    if request.department is None and request.urgency is None:
        superseded = _correction(request, tweet_id, "superseded", recent, recent.tweet, now)
        remembered = state.model_copy(update=_remembering(state, superseded))
        return Applied(superseded, remembered, None, False)
    department = request.department or recent.department
    urgency = request.urgency or recent.urgency
    decided = state.routed.get(tweet_id)
    # A tweet in triage (or dropped) carries the model's guess: confirming it, or changing only
    # its urgency, still sends it to the department a person has now named.
    held_back = decided is not None and decided.destination != "department"
    if department != recent.department or held_back:
        outcome: Literal["rerouted", "relabelled", "unchanged"] = "rerouted"
    elif urgency != recent.urgency:
        outcome = "relabelled"
    else:
        outcome = "unchanged"
    corrected = recent.model_copy(update={"department": department, "urgency": urgency})
    correction = _correction(request, tweet_id, outcome, recent, recent.tweet, now)
    correction = correction.model_copy(
        update={
            "destination_before": decided.destination if decided else None,
            "alerted_before": decided is not None and decided.escalated,
        }
    )
    if outcome == "unchanged":
        update = _remembering(state, correction)
        if decided is not None and decided.owner == "handle":
            # the handle's guess (route.unsure: handle), on its topic already: now a person's
            update |= {"department": department, "owner_confirmed": True}
        return Applied(correction, state.model_copy(update=update), None, False)
    tweets = {**state.recent, tweet_id: corrected}
    # a tweet that counted for nothing (dropped, or X's notice in place of its text) sent to
    # a department counts from now on, awaits its reply and raises its alert, as if it had
    # been routed there with these labels
    rescued = uncounted(correction, recent.tweet)
    if rescued:
        counted = [state.max_urgency, urgency] if state.tweets else [urgency]
        max_urgency = max(counted, key=URGENCY_RANK.get)
        awaiting = _awaiting_rescued(state, corrected, sla_minutes, sla_alerting)
    else:
        max_urgency = _max_urgency(state, recent.urgency, urgency, tweets)
        awaiting = _awaiting(state, corrected, sla_minutes)
        if urgency != recent.urgency and (awaiting is None or awaiting.tweet_id != tweet_id):
            # another tweet is awaited: the corrected one, unanswered, takes its place if its
            # new SLA is the stricter
            awaited = state.model_copy(update={"awaiting": awaiting})
            awaiting = _awaiting_rescued(awaited, corrected, sla_minutes, sla_alerting)
        elif URGENCY_RANK[urgency] < URGENCY_RANK[recent.urgency]:
            # the awaited tweet is less urgent now: another unanswered tweet's SLA may come
            # first, or alert where its own no longer does
            relabelled = state.model_copy(update={
                "recent": tweets, "routed": _with_deadline(state, corrected, sla_minutes)
            })  # fmt: skip
            awaiting = still_unanswered(relabelled, replies_of(state), alerting=sla_alerting) or (
                awaiting
            )
    new_state = state.model_copy(
        update={
            "department": department if outcome == "rerouted" else state.department,
            "owner_confirmed": state.owner_confirmed or outcome == "rerouted",
            "max_urgency": max_urgency,
            "tweets": state.tweets + rescued,
            "awaiting": awaiting,
            "recent": tweets,
            "routed": _with_deadline(state, corrected, sla_minutes),
            "updated_at": now,
            **_remembering(state, correction),
        }
    )
    escalate = escalates(correction, recent.tweet, alert_urgencies)
    return Applied(correction, new_state, corrected, escalate)


def uncounted(correction: Correction, tweet: Tweet) -> bool:
    """Whether the corrected tweet counted for nothing before: a rule dropped it, or X sent
    its withholding notice in place of its text (no alert, no owner, its urgency unknown) and
    no correction has sent it to a department yet (it stays withheld: a second correction would
    count it, and raise its alert, again)."""
    withheld = tweet.withheld is not None and tweet.withheld.notice
    sent_on = correction.destination_before == "department"
    return correction.destination_before == "dropped" or (bool(withheld) and not sent_on)


def escalates(correction: Correction, tweet: Tweet, alert_urgencies: list[Urgency]) -> bool:
    """Whether applying the correction raises the tweet's alert: its new urgency alerts and
    none was raised for it before (its old urgency did not alert, or it counted for nothing,
    and no rule escalated it: a second page, under another alert id, could not be told from
    a new one)."""
    return (
        correction.urgency in alert_urgencies
        and not correction.alerted_before
        and (uncounted(correction, tweet) or correction.urgency_before not in alert_urgencies)
    )


def _remembering(state: ConversationState, correction: Correction) -> dict[str, Any]:
    """The conversation's memory of corrections with this one: its id (applied once) and the
    correction itself, its tweet left out (published again if its request is read again)."""
    return {
        "corrections": [*state.corrections, correction.correction_id][-REMEMBERED_CORRECTIONS:],
        "applied": [*state.applied, correction.model_copy(update={"tweet": None})][-APPLIED_KEPT:],
    }


def _latest(
    state: ConversationState | None, source: str, ticket_department: Department | None = None
) -> str | None:
    """The tweet a correction without a tweet id means: the conversation's latest, or, from a
    ticketing system, the latest that reached a department (only those have a ticket or an
    issue: not one dropped or left in triage after it), of the ticket's department when the
    vendor says which (a conversation whose tweets went to two departments has a ticket in
    each: moving one corrects that one's tweet, not the other's)."""
    if state is None:
        return None
    if source not in TICKETING:
        return next(reversed(state.recent), None)
    routed = state.routed
    ticketed = [t for t in reversed(state.recent)
                if (d := routed.get(t)) is not None and d.destination == "department"]  # fmt: skip
    there = [t for t in ticketed if state.recent[t].department == ticket_department]
    return next(iter(there or ticketed), None)


def _max_urgency(
    state: ConversationState, before: Urgency, after: Urgency, tweets: dict[str, RecentTweet]
) -> Urgency:
    """The conversation's highest urgency once one tweet went from ``before`` to ``after``: a
    rise raises it; a fall lowers it only as far as the other tweets route remembers allow
    (older ones are not kept whole, so a fall never goes below what they may have held unless
    the corrected tweet was the one that set it). Dropped tweets do not count, as in routing."""
    rank = URGENCY_RANK.get
    if rank(after) >= rank(before) or before != state.max_urgency:
        return max(state.max_urgency, after, key=rank)
    dropped = {i for i, d in state.routed.items() if d.destination == "dropped"}
    counted = [t.urgency for tweet_id, t in tweets.items() if tweet_id not in dropped]
    return max(counted or [after], key=rank)


def _awaiting(
    state: ConversationState, corrected: RecentTweet, sla_minutes: dict[Urgency, float]
) -> Any:
    """The awaited reply follows its tweet's correction: its department, and its SLA when the
    urgency changed, counted from when that tweet arrived (as routing counts it: the awaited
    tweet may be a later, more urgent one than the first unanswered, whose arrival
    ``received_at`` keeps for the response time)."""
    awaiting = state.awaiting
    if awaiting is None or awaiting.tweet_id != corrected.tweet.id:
        return awaiting
    urgency = corrected.urgency
    update: dict[str, Any] = {"department": corrected.department}
    if urgency != awaiting.urgency:
        due_at = _deadline(corrected, urgency, sla_minutes)
        update |= {"urgency": urgency, "due_at": due_at, "breach_alerted": False}
    return awaiting.model_copy(update=update)


def _awaiting_rescued(
    state: ConversationState,
    corrected: RecentTweet,
    sla_minutes: dict[Urgency, float],
    alerting: Collection[Urgency] = (),
) -> Any:
    """What the conversation awaits once a dropped tweet is sent to a department: that tweet
    too, with its urgency's SLA counted from when it arrived (a stricter one wins, as in
    routing), unless a company handle answered after it was written."""
    tweet = corrected.tweet
    if answered(replies_of(state), state, tweet):
        return state.awaiting  # answered (an edit: when the post it edits was written)
    department, urgency = corrected.department, corrected.urgency
    classification = corrected.classification
    if classification is not None:
        classification = classification.model_copy(
            update={"department": department, "urgency": urgency}
        )
    return awaiting_after(
        state.awaiting, tweet, classification, corrected.ingested_at, department, urgency,
        _deadline(corrected, urgency, sla_minutes), alerting,
    )  # fmt: skip


def _with_deadline(
    state: ConversationState, corrected: RecentTweet, sla_minutes: dict[Urgency, float]
) -> dict[str, RouteDecision]:
    """The remembered decisions, the corrected tweet's with the SLA of its new urgency: the
    tweet may become the awaited one later (the one awaited now deleted, or answered by a reply
    written before it), and is then owed a reply as fast as its corrected urgency says."""
    decision = state.routed.get(corrected.tweet.id)
    if decision is None or corrected.urgency == state.recent[corrected.tweet.id].urgency:
        return state.routed
    due_at = _deadline(corrected, corrected.urgency, sla_minutes)
    return {**state.routed, corrected.tweet.id: decision.model_copy(update={"sla_due_at": due_at})}


def _deadline(
    corrected: RecentTweet, urgency: Urgency, sla_minutes: dict[Urgency, float]
) -> datetime | None:
    """When a reply to the tweet is due at ``urgency``: counted from when it arrived."""
    minutes = sla_minutes.get(urgency)
    arrived = max(corrected.tweet.created_at, corrected.ingested_at)
    return arrived + timedelta(minutes=minutes) if minutes else None


def _without_superseded(
    state: ConversationState, tweet_id: str, request: CorrectionRequest
) -> CorrectionRequest:
    """The request without what a correction made after it, and applied first, changed: a
    vendor's events may arrive out of order (a delivery retried after a 503, two route pods
    behind the ingress), and a ticket moved to A then to B must leave the tweet in B."""
    later = [c for c in state.applied if c.tweet_id == tweet_id and c.made_at > request.made_at]
    update: dict[str, None] = {}
    if request.department and any(c.department != c.department_before for c in later):
        update["department"] = None
    if request.urgency and any(c.urgency != c.urgency_before for c in later):
        update["urgency"] = None
    return request.model_copy(update=update)  # may say nothing now: superseded whole


def _correction(
    request: CorrectionRequest,
    tweet_id: str | None,
    outcome: Literal["rerouted", "relabelled", "unchanged", "recorded", "superseded"],
    recent: RecentTweet | None,
    tweet: Tweet | None,
    now: datetime,
) -> Correction:
    return Correction(
        correction_id=request.correction_id,
        conversation_id=request.conversation_id,
        tweet_id=tweet_id,
        source=request.source,
        by=request.by,
        note=request.note,
        made_at=request.made_at,
        applied_at=now,
        outcome=outcome,
        department_before=recent.department if recent else None,
        urgency_before=recent.urgency if recent else None,
        department=request.department or (recent.department if recent else None),
        urgency=request.urgency or (recent.urgency if recent else None),
        model_version=recent.model_version if recent else None,
        tweet=tweet,
    )


# --- the ticketing systems' webhooks ----------------------------------------------------------


def zendesk_signature(secret: str, timestamp: str, body: bytes) -> str:
    """Zendesk's webhook signature: base64(HMAC-SHA256(timestamp + body))."""
    digest = hmac.new(secret.encode(), timestamp.encode() + body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def jira_signature(secret: str, body: bytes) -> str:
    """Jira's admin-webhook signature (WebSub): ``sha256=`` and HMAC-SHA256(body) in hex."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def zendesk_request(payload: dict[str, Any], config: ZendeskFeedback) -> CorrectionRequest | str:
    """The correction a Zendesk ticket event means, or why it means none."""
    kind = payload.get("type")
    detail = payload.get("detail") or {}
    current = str((payload.get("event") or {}).get("current") or "")
    conversation_id = conversation_of_vendor_key(str(detail.get("external_id") or ""))
    if conversation_id is None:
        return "not a ticket Switchboard opened"
    labels: dict[str, Any]
    ticket_group = str(detail.get("group_id") or "")  # the ticket's group, now
    if kind == "zen:event-type:ticket.group_assignment_changed":
        department = config.groups.get(int(current)) if current.isdigit() else None
        if department is None:
            return f"group {current or '(none)'} is not one of route.feedback.zendesk.groups"
        labels = {"department": department}
        ticket_group = str((payload.get("event") or {}).get("previous") or "")  # before
    elif kind == "zen:event-type:ticket.priority_changed":
        urgency = config.priorities.get(current.lower())
        if urgency is None:
            return f"priority {current or '(none)'} is not one of route.feedback.zendesk.priorities"
        labels = {"urgency": urgency}
    else:
        return f"event {kind} is not a correction"
    actor = str(detail.get("actor_id") or payload.get("actor_id") or "unknown")
    if actor in config.ignore_users:
        return f"changed by zendesk user {actor}, one of route.feedback.zendesk.ignore_users"
    return CorrectionRequest(
        correction_id=f"zendesk:{payload.get('id') or _digest(payload)}",
        conversation_id=conversation_id,
        source="zendesk",
        by=f"zendesk user {actor}",
        note=f"ticket {detail.get('id')}",
        made_at=_when(payload.get("time")) or datetime.now(UTC),
        ticket_department=config.groups.get(int(ticket_group)) if ticket_group.isdigit() else None,
        **labels,
    )


def jira_request(payload: dict[str, Any], config: JiraFeedback) -> CorrectionRequest | str:
    """The correction a Jira ``issue_updated`` webhook means, or why it means none."""
    if payload.get("webhookEvent") != "jira:issue_updated":
        return f"event {payload.get('webhookEvent')} is not a correction"
    issue = payload.get("issue") or {}
    fields = issue.get("fields") or {}
    conversation_id = conversation_of_vendor_labels(fields.get("labels") or [])
    if conversation_id is None:
        return "not an issue Switchboard opened"
    items = (payload.get("changelog") or {}).get("items") or []
    changed = {item.get("field"): item for item in items if isinstance(item, dict)}
    labels: dict[str, Any] = {}
    # the issue's project before the change: after a move, the old key's prefix (Jira gives
    # the old project's name and id, and its key in the key's change; none: unknown)
    old_key = str((changed.get("Key") or {}).get("fromString") or "")
    current = str((fields.get("project") or {}).get("key") or "")
    project = old_key.rpartition("-")[0] if "project" in changed else current
    if "project" in changed:
        key = (fields.get("project") or {}).get("key") or changed["project"].get("toString")
        if (department := config.projects.get(str(key))) is None:
            return f"project {key} is not one of route.feedback.jira.projects"
        labels["department"] = department
    if "priority" in changed:
        name = changed["priority"].get("toString")
        if (urgency := config.priorities.get(str(name))) is None:
            return f"priority {name} is not one of route.feedback.jira.priorities"
        labels["urgency"] = urgency
    if not labels:
        return "neither the project nor the priority changed"
    user = payload.get("user") or {}
    if str(user.get("accountId")) in config.ignore_users:
        return (
            f"changed by jira user {user.get('accountId')}, one of route.feedback.jira.ignore_users"
        )
    # The id comes from the signed body (the change's own id), not from a header: a delivery
    # Jira retries is the same body, and a replayed body is the same correction.
    change = (payload.get("changelog") or {}).get("id")
    correction_id = f"jira:{issue.get('id')}:{change}" if change else f"jira:{_digest(payload)}"
    name = str(user.get("displayName") or user.get("accountId") or "unknown")
    return CorrectionRequest(
        correction_id=correction_id[:200],
        conversation_id=conversation_id,
        source="jira",
        by=f"jira user {name}"[:200],
        note=f"issue {issue.get('key')}",
        made_at=_when(payload.get("timestamp")) or datetime.now(UTC),
        ticket_department=config.projects.get(project),
        **labels,
    )


def _when(value: Any) -> datetime | None:
    """A vendor's event time: ISO 8601 (Zendesk) or epoch milliseconds (Jira); None if neither."""
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value / 1000, UTC)
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (TypeError, ValueError, OverflowError):
        return None


def stale(when: datetime | None, now: datetime, max_age_s: float) -> str | None:
    """Why a signed event's time makes it a replay (or unreadable), or None if it is fresh: too
    old, missing, or more than ``CLOCK_SKEW`` ahead of this clock."""
    if when is None:
        return "no readable event time"
    if now - when > timedelta(seconds=max_age_s):
        return "event time too old"
    if when - now > CLOCK_SKEW:
        return "event time in the future"
    return None


def _digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


# --- HTTP ----------------------------------------------------------------------------------


class FeedbackBody(BaseModel):
    """``POST /feedback``: the tweet (or, without ``tweet_id``, the conversation's latest) and
    what it should have been."""

    model_config = ConfigDict(extra="forbid")

    conversation_id: str = Field(min_length=1)
    tweet_id: str | None = Field(default=None, min_length=1)
    department: Department | None = None
    urgency: Urgency | None = None
    by: str = Field(min_length=1, max_length=200)
    note: str | None = Field(default=None, max_length=2000)
    correction_id: str | None = Field(
        default=None, min_length=1, max_length=160,
        description="Your idempotency key: the same correction sent twice is applied once",
    )  # fmt: skip
    source: Literal["ops", "api"] = "api"
    tweet: Tweet | None = None


def feedback_router(service: RouteService) -> APIRouter:
    router = APIRouter()

    async def accept(request: CorrectionRequest) -> dict[str, str]:
        output = Output.of(topics.FEEDBACK_REQUESTS, request, request.conversation_id)
        try:
            failed = await publish(service.acks.sender, [output], service.name)  # type: ignore[arg-type]
        except Exception as error:  # the broker is unreachable: the caller tries again
            log.warning("correction not published: %s", error)
            raise HTTPException(503, "the correction could not be published; try again") from None
        if failed:
            raise HTTPException(413, "the correction is too large to publish")
        metrics.CORRECTIONS_RECEIVED.labels(request.source).inc()
        return {"status": "accepted", "correction_id": request.correction_id}

    @router.post("/feedback", status_code=202)
    async def feedback(body: FeedbackBody) -> dict[str, str]:
        # JSON mode: a validation error quotes the input, which must be JSON to answer (422)
        fields = body.model_dump(mode="json", exclude={"correction_id"}, exclude_none=True)
        fields["correction_id"] = f"{body.source}:{body.correction_id or uuid.uuid4().hex}"
        try:
            return await accept(CorrectionRequest(**fields))
        except ValidationError as error:
            detail = error.errors(include_url=False, include_context=False)
            raise HTTPException(422, detail) from None

    @router.post(ZENDESK_PATH)
    async def zendesk(request: Request) -> dict[str, str]:
        config = service.config.route.feedback.zendesk
        if config is None:
            raise HTTPException(404, "route.feedback.zendesk is not configured")
        body = await _body(request)
        timestamp = request.headers.get("x-zendesk-webhook-signature-timestamp", "")
        given = request.headers.get("x-zendesk-webhook-signature", "")
        secret = _secret(config.signing_secret, "route.feedback.zendesk.signing_secret")
        expected = zendesk_signature(secret, timestamp, body)
        if not timestamp or not hmac.compare_digest(given.encode(), expected.encode()):
            return _refused("zendesk", "bad signature")
        if why := stale(_when(timestamp), datetime.now(UTC), config.max_age_s):
            return _refused("zendesk", f"signature timestamp: {why}")
        return await _then(accept, _parsed(zendesk_request, _json(body), config), "zendesk")

    @router.post(JIRA_PATH)
    async def jira(request: Request) -> dict[str, str]:
        config = service.config.route.feedback.jira
        if config is None:
            raise HTTPException(404, "route.feedback.jira is not configured")
        body = await _body(request)
        expected = jira_signature(_secret(config.secret, "route.feedback.jira.secret"), body)
        given = request.headers.get("x-hub-signature", "")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return _refused("jira", "bad signature")
        payload = _json(body)
        if why := stale(_when(payload.get("timestamp")), datetime.now(UTC), config.max_age_s):
            return _refused("jira", f"timestamp: {why}")
        return await _then(accept, _parsed(jira_request, payload, config), "jira")

    return router


async def _then(accept: Any, meant: CorrectionRequest | str, source: str) -> dict[str, str]:
    """Accept the correction; an event that is no correction is answered 200 (so the vendor
    does not send it again) and counted."""
    if isinstance(meant, str):
        metrics.FEEDBACK_IGNORED.labels(source).inc()
        log.info("webhook ignored", extra={"source": source, "why": meant})
        return {"status": "ignored", "why": meant}
    return await accept(meant)


def check_secrets(config: FeedbackConfig) -> None:
    """Raise ConfigError, naming the key, when a configured webhook's secret cannot be read:
    route refuses to start (or to apply a reloaded file) rather than answer every delivery 503."""
    if config.zendesk is not None:
        read_secret(config.zendesk.signing_secret, "route.feedback.zendesk.signing_secret")
    if config.jira is not None:
        read_secret(config.jira.secret, "route.feedback.jira.secret")


def _secret(ref: Any, key: str) -> str:
    """The webhook's secret; unreadable (its variable or file gone), the webhook answers 503
    with the key, and the vendor tries again later, rather than a 500 without a reason."""
    try:
        return read_secret(ref, key).get_secret_value()
    except ConfigError as error:
        log.error("webhook secret unreadable: %s", error)
        raise HTTPException(503, f"{key} cannot be read") from None


def _parsed(parse: Any, payload: dict[str, Any], config: Any) -> CorrectionRequest | str:
    """A signed event whose fields are not shaped as its vendor documents them is answered
    400 with the reason (not a 500 the vendor would retry)."""
    try:
        return parse(payload, config)  # type: ignore[no-any-return]
    except (AttributeError, TypeError, ValueError, ValidationError) as error:
        raise HTTPException(400, f"the event is not as expected: {error}"[:500]) from None


def _refused(source: str, why: str) -> Any:
    metrics.FEEDBACK_REFUSED.labels(source).inc()
    log.warning("webhook refused", extra={"source": source, "why": why})
    raise HTTPException(401, why)


async def _body(request: Request) -> bytes:
    body = await read_body(request, MAX_WEBHOOK_BYTES)
    if body is None:
        raise HTTPException(413, "body too large")
    return body


def _json(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise HTTPException(400, "the body is not JSON") from None
    if not isinstance(payload, dict):
        raise HTTPException(400, "the body is not a JSON object")
    return payload
