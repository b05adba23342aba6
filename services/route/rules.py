"""Routing policy as data: built-in defaults, conversation ownership, then the company's rules.

Pure functions: a classified tweet, the policy, the conversation's state and the time in; an
``Outcome`` (where it goes, what else happens, and why) out.

Order of evaluation:

1. Defaults, which a company gets without writing a rule: the model's department owns the tweet
   whatever handle it was sent to; an unsupported language or a department confidence below
   ``confidence_threshold`` goes to triage with the model's top two, and so does a tweet whose
   text X withheld (its notice came instead); urgencies in
   ``alert_urgencies`` are escalated; priority and SLA follow the urgency.
2. Conversation ownership: a reply in a conversation that already has an owner stays with it,
   unless the model is at least ``conversations.override_confidence`` sure of another
   department; a conversation whose urgency rises to high or critical is escalated.
3. ``route.rules`` in order. Every matching rule applies: ``route_to``, ``triage``, ``drop``,
   ``priority`` and ``sla_minutes`` take the last matching rule's value, ``copy_to`` and
   ``escalate`` accumulate; a matching rule with ``final: true`` stops the evaluation.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo

from switchboard.route.config import (
    WEEKDAYS,
    Priority,
    RouteConfig,
    RouteFileConfig,
    RoutingRule,
    TimeWindow,
)
from switchboard.shared.config import HandleConfig
from switchboard.shared.events import ClassifiedTweet, ConversationState, Tweet
from switchboard.shared.labels import Department, Urgency

Destination = Literal["department", "triage", "dropped"]
URGENCY_RANK = {Urgency.LOW: 0, Urgency.NORMAL: 1, Urgency.HIGH: 2, Urgency.CRITICAL: 3}
DEFAULT_PRIORITY: dict[Urgency, Priority] = {
    Urgency.CRITICAL: "P1", Urgency.HIGH: "P2", Urgency.NORMAL: "P3", Urgency.LOW: "P4"
}  # fmt: skip


@dataclass(slots=True)
class Outcome:
    department: Department
    destination: Destination
    escalated: bool
    priority: Priority
    sla_due_at: datetime | None
    owner: Literal["model", "conversation", "rule", "handle"] = "model"
    copies: list[Department] = field(default_factory=list)
    matched_rules: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


def drop_deleted(outcome: Outcome) -> None:
    """A tweet its author deleted before route read it: counted as dropped, sent nowhere,
    alerting no one and awaiting no reply."""
    outcome.destination, outcome.escalated, outcome.sla_due_at = "dropped", False, None
    outcome.copies = []
    outcome.reasons.append("deleted by its author before route read it")


def rules_version(policy: RouteConfig) -> str:
    """A fingerprint of the routing policy; it travels in every routed message."""
    return "rules-" + hashlib.sha256(policy.model_dump_json().encode()).hexdigest()[:12]


def evaluate(
    event: ClassifiedTweet,
    config: RouteFileConfig,
    conversation: ConversationState | None,
    now: datetime,
) -> Outcome:
    outcome = defaults(event, config.route, now)
    if withheld_text(event):  # what the model and the rules would read is X's notice
        return outcome
    # a conversation of dropped tweets alone has no owner and no urgency to rise from
    if conversation is not None and conversation.tweets and config.route.conversations.enabled:
        apply_ownership(outcome, event, config.route, conversation)
    if outcome.destination == "triage" and config.route.unsure == "handle":
        to_handle_default(outcome, event, config.handles_by_username)
    for rule in config.route.rules:
        if matches(rule, event, config.handles_by_username, now):
            apply_rule(outcome, rule, event, config.route, now)
            if rule.final:
                outcome.reasons.append(f"rule {rule.name} is final: later rules not evaluated")
                break
    if outcome.destination == "dropped":  # published on switchboard.dropped alone
        outcome.copies = []
    # a copy to the department's own topic would repeat the tweet there; one of a tweet sent to
    # triage is the only copy that department gets (the department is then the model's guess)
    primary = outcome.department if outcome.destination == "department" else None
    outcome.copies = [d for d in dict.fromkeys(outcome.copies) if d != primary]
    if outcome.escalated and (alerted := _edit_already_alerted(event, conversation)):
        outcome.escalated = False
        outcome.reasons.append(
            f"an edit of tweet {event.tweet.edit_of}, whose alert was raised"
            + ("" if alerted == event.tweet.edit_of else f" for its version {alerted}")
        )
    return outcome


def _edit_already_alerted(event: ClassifiedTweet, state: ConversationState | None) -> str | None:
    """The version of this post whose alert route raised, if it did: the post it edits or an
    earlier edit of it (X gives each version an id of its own: alerting again would page twice
    for one post)."""
    edit_of = event.tweet.edit_of
    if state is None or not edit_of:
        return None
    versions = [edit_of, *(i for i, r in state.recent.items() if r.tweet.edit_of == edit_of)]
    return next((v for v in versions if (d := state.routed.get(v)) and d.escalated), None)


def withheld_text(event: ClassifiedTweet) -> bool:
    """X sent its withholding notice in place of the tweet's text: its labels say nothing."""
    withheld = event.tweet.withheld
    return withheld is not None and withheld.notice


def defaults(event: ClassifiedTweet, policy: RouteConfig, now: datetime) -> Outcome:
    c = event.classification
    outcome = Outcome(
        department=c.department,
        destination="department",
        escalated=c.urgency in policy.alert_urgencies,
        priority=DEFAULT_PRIORITY[c.urgency],
        sla_due_at=_due(event, policy.sla.minutes.get(c.urgency), now),
    )
    top_two = ", ".join(f"{d.value} {p:.2f}" for d, p in top_departments(event)[:2])
    if withheld_text(event):
        # the model read X's notice, not the post: a person opens the tweet where X shows it
        withheld = event.tweet.withheld
        assert withheld is not None
        outcome.destination, outcome.escalated, outcome.sla_due_at = "triage", False, None
        outcome.reasons.append(
            f"X withheld the text in {', '.join(withheld.country_codes) or 'some countries'} "
            f"and sent its notice instead (scope {withheld.scope or 'tweet'}): labels unknown, "
            "rules not evaluated"
        )
        return outcome
    if not c.language_supported:
        outcome.destination = "triage"
        outcome.reasons.append(
            f"language {c.lang} is not supported by model {c.model_version} "
            f"(model guess: {top_two})"
        )
    elif c.confidence < policy.confidence_threshold:
        outcome.destination = "triage"
        outcome.reasons.append(
            f"department confidence {c.confidence:.2f} below threshold "
            f"{policy.confidence_threshold:.2f} (top two: {top_two})"
        )
    else:
        outcome.reasons.append(
            f"model department {c.department.value} at confidence {c.confidence:.2f} "
            f">= {policy.confidence_threshold:.2f}"
        )
    if outcome.escalated:
        outcome.reasons.append(f"urgency {c.urgency.value} is escalated")
    return outcome


def addressed(tweet: Tweet, handles: dict[str, HandleConfig]) -> list[HandleConfig]:
    """The company's configured handles the tweet addresses, in its order (``handles``: by
    lower-case username without '@')."""
    names = (h[1:].lower() for h in tweet.addressed_handles)
    return [handles[name] for name in names if name in handles]


def to_handle_default(
    outcome: Outcome, event: ClassifiedTweet, handles: dict[str, HandleConfig]
) -> None:
    """``route.unsure: handle``: a tweet the model cannot place goes to the default department
    of the first company handle it addresses, instead of triage (none addressed: triage)."""
    handle = next(iter(addressed(event.tweet, handles)), None)
    if handle is None:
        return
    outcome.department, outcome.destination, outcome.owner = (
        handle.default_department, "department", "handle"
    )  # fmt: skip
    outcome.reasons.append(
        f"sent to {handle.handle}'s default department {handle.default_department.value} "
        "instead of triage (route.unsure: handle)"
    )


def apply_ownership(
    outcome: Outcome, event: ClassifiedTweet, policy: RouteConfig, state: ConversationState
) -> None:
    c = event.classification
    # the model names another department than the owner, or the owner but too unsure to route
    # by itself (a guess on tweets sent to triage owns nothing: no owner to keep or leave)
    owner = state.department
    other = state.owner_confirmed and owner != c.department
    unsure = state.owner_confirmed and outcome.destination == "triage"
    if (other and c.confidence < policy.conversations.override_confidence) or (
        unsure and not other
    ):
        outcome.department, outcome.destination, outcome.owner = owner, "department", "conversation"
        outcome.reasons.append(
            f"conversation {event.tweet.conversation_id} is owned by {owner.value} "
            f"(model says {c.department.value} at {c.confidence:.2f} < "
            f"{policy.conversations.override_confidence:.2f})"
            if other else
            f"conversation {event.tweet.conversation_id} is owned by {owner.value}, which the "
            "model names too, though too unsure to route by itself"
        )  # fmt: skip
    elif other:
        outcome.reasons.append(
            f"conversation moves from {owner.value}: model is {c.confidence:.2f} sure of "
            f"{c.department.value}"
        )
    rose = URGENCY_RANK[c.urgency] > URGENCY_RANK[state.max_urgency]
    if rose and URGENCY_RANK[c.urgency] >= URGENCY_RANK[Urgency.HIGH]:
        outcome.escalated = True
        outcome.reasons.append(
            f"conversation urgency rose from {state.max_urgency.value} to {c.urgency.value}"
        )


def apply_rule(
    outcome: Outcome, rule: RoutingRule, event: ClassifiedTweet, policy: RouteConfig, now: datetime
) -> None:
    action = rule.then
    outcome.matched_rules.append(rule.name)
    done = []
    if action.route_to is not None:
        outcome.department, outcome.destination, outcome.owner = (
            action.route_to, "department", "rule",
        )  # fmt: skip
        done.append(f"route to {action.route_to.value}")
    if action.triage:
        outcome.destination = "triage"
        done.append("send to triage")
    if action.drop:
        outcome.destination = "dropped"
        done.append("drop")
    if action.copy_to:
        outcome.copies += action.copy_to
        done.append("copy to " + ", ".join(d.value for d in action.copy_to))
    if action.escalate:
        outcome.escalated = True
        done.append("escalate")
    if action.priority is not None:
        outcome.priority = action.priority
        done.append(f"priority {action.priority}")
    if action.sla_minutes is not None:
        outcome.sla_due_at = _due(event, action.sla_minutes, now)
        done.append(f"SLA {action.sla_minutes:g} min")
    label = f"rule {rule.name}" + (f" ({rule.description})" if rule.description else "")
    outcome.reasons.append(f"{label}: {', '.join(done) or 'no action'}")


def matches(
    rule: RoutingRule, event: ClassifiedTweet, handles: dict[str, HandleConfig], now: datetime
) -> bool:
    w, c, tweet = rule.when, event.classification, event.tweet
    names = [h.lower() for h in tweet.addressed_handles]
    segments = [handle.segment for handle in addressed(tweet, handles)]
    checks = [
        w.departments is None or c.department in w.departments,
        w.urgencies is None or c.urgency in w.urgencies,
        w.confidence_min is None or c.confidence >= w.confidence_min,
        w.confidence_max is None or c.confidence <= w.confidence_max,
        w.handles is None or any(h.lower() in names for h in w.handles),
        w.segments is None or any(segment in w.segments for segment in segments),
        w.languages is None or (c.lang or tweet.lang) in w.languages,
        w.keywords is None or any(_keyword(k).search(tweet.text) for k in w.keywords),
        w.patterns is None or any(re.search(p, tweet.text) for p in w.patterns),
        w.followers_min is None or tweet.author.followers_count >= w.followers_min,
        w.verified is None or tweet.author.verified == w.verified,
        w.kinds is None or tweet.kind in w.kinds,
        w.time is None or in_window(w.time, now),
    ]
    return all(checks)


def in_window(window: TimeWindow, now: datetime) -> bool:
    """Whether ``now`` falls in the window, in its timezone. An overnight window (22:00-06:00)
    belongs to the day it begins: Friday's night runs into Saturday morning, and a window of
    weekdays does not begin on Sunday night."""
    local = now.astimezone(ZoneInfo(window.timezone))
    clock = local.strftime("%H:%M")
    today = WEEKDAYS[local.weekday()]
    if window.start <= window.end:
        return today in window.days and window.start <= clock < window.end
    if clock >= window.start:
        return today in window.days
    return clock < window.end and WEEKDAYS[(local.weekday() - 1) % 7] in window.days


def top_departments(event: ClassifiedTweet) -> list[tuple[Department, float]]:
    scores = event.classification.department_scores
    return sorted(scores.items(), key=lambda item: item[1], reverse=True)


@lru_cache(maxsize=1024)
def _keyword(keyword: str) -> re.Pattern[str]:
    return re.compile(rf"(?<!\w){re.escape(keyword)}(?!\w)", re.IGNORECASE)


def _due(event: ClassifiedTweet, minutes: float | None, now: datetime) -> datetime | None:
    """Due ``minutes`` after the tweet was written, or after it was ingested when that is later
    (a backfill of old tweets must not start out past its SLA)."""
    if minutes is None:
        return None
    return max(event.tweet.created_at, event.trace.ingested_at) + timedelta(minutes=minutes)
