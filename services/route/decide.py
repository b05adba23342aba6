"""Routing decisions: pure functions from a classified tweet and the policy to the messages to send.

Defaults in this version: the model's department owns the tweet, whatever handle it was sent to
(the handle stays on the message); below the confidence threshold, or in a language the model
does not support, it goes to triage with the model's top two; urgencies in
``route.alert_urgencies`` are also published as alerts.
"""

from __future__ import annotations

import hashlib

from switchboard.shared import topics
from switchboard.shared.config import RouteConfig
from switchboard.shared.events import Alert, ClassifiedTweet, RouteDecision, RoutedTweet, utc_now
from switchboard.shared.kafka import Output


def rules_version(policy: RouteConfig) -> str:
    """A short fingerprint of the routing policy; it travels in every routed message."""
    return "defaults-" + hashlib.sha256(policy.model_dump_json().encode()).hexdigest()[:12]


def decide(event: ClassifiedTweet, policy: RouteConfig) -> RouteDecision:
    c = event.classification
    ranked = sorted(c.department_scores.items(), key=lambda item: item[1], reverse=True)
    top_two = ", ".join(f"{d.value} {p:.2f}" for d, p in ranked[:2])
    escalated = c.urgency in policy.alert_urgencies
    reasons = []
    if not c.language_supported:
        destination, topic = "triage", topics.TRIAGE
        reasons.append(
            f"language {c.lang} is not supported by model {c.model_version} "
            f"(model guess: {top_two})"
        )
    elif c.confidence < policy.confidence_threshold:
        destination, topic = "triage", topics.TRIAGE
        reasons.append(
            f"department confidence {c.confidence:.2f} below threshold "
            f"{policy.confidence_threshold:.2f} (top two: {top_two})"
        )
    else:
        destination, topic = "department", topics.department_topic(c.department)
        reasons.append(
            f"model department {c.department.value} at confidence {c.confidence:.2f} "
            f">= {policy.confidence_threshold:.2f}"
        )
    if escalated:
        reasons.append(f"urgency {c.urgency.value} is escalated to {topics.ALERTS}")
    return RouteDecision(
        destination=destination,
        department=c.department,
        topic=topic,
        escalated=escalated,
        reasons=reasons,
        confidence_threshold=policy.confidence_threshold,
        rules_version=rules_version(policy),
    )


def route(event: ClassifiedTweet, policy: RouteConfig) -> tuple[RoutedTweet, list[Output]]:
    """The routed tweet and the messages it causes: its primary topic, an alert if escalated."""
    decision = decide(event, policy)
    routed = RoutedTweet(
        tweet=event.tweet,
        classification=event.classification,
        route=decision,
        trace=event.trace.model_copy(update={"routed_at": utc_now()}),
    )
    key = event.tweet.conversation_id
    outputs = [Output.of(decision.topic, routed, key)]
    if decision.escalated:
        outputs.append(Output.of(topics.ALERTS, alert_for(routed), key))
    return routed, outputs


def alert_for(routed: RoutedTweet) -> Alert:
    c = routed.classification
    return Alert(
        alert_id=f"critical_tweet:{routed.tweet.id}",
        kind="critical_tweet",
        department=c.department,
        urgency=c.urgency,
        summary=(
            f"{c.urgency.value} {c.department.value} tweet from @{routed.tweet.author.username} "
            f"to {', '.join(routed.tweet.addressed_handles) or 'the company'}"
        ),
        tweet=routed.tweet,
        classification=c,
        trace=routed.trace,
    )
