"""Routing decisions: department, triage below the threshold, alerts for critical, reasons."""

from __future__ import annotations

from switchboard.route.decide import decide, route, rules_version
from switchboard.shared import topics
from switchboard.shared.config import RouteConfig
from switchboard.shared.events import Alert, RoutedTweet, decode
from switchboard.shared.labels import Department, Urgency
from tests.factories import a_classified_tweet as classified

POLICY = RouteConfig(confidence_threshold=0.5)


def test_a_confident_tweet_goes_to_its_department_whatever_the_handle():
    decision = decide(classified("customer_service", 0.8), POLICY)
    assert decision.destination == "department"
    assert decision.topic == "switchboard.dept.customer_service"
    assert not decision.escalated
    assert "customer_service" in decision.reasons[0]


def test_below_the_threshold_goes_to_triage_with_the_top_two():
    decision = decide(classified("legal", 0.3), POLICY)
    assert decision.topic == topics.TRIAGE
    assert decision.department == Department.LEGAL
    assert "below threshold 0.50" in decision.reasons[0]
    assert "legal 0.30" in decision.reasons[0]


def test_critical_is_published_on_its_topic_and_as_an_alert():
    routed, outputs = route(classified("it_security", 0.9, "critical"), POLICY)
    assert [o.topic for o in outputs] == ["switchboard.dept.it_security", topics.ALERTS]
    assert all(o.key == b"4" for o in outputs)  # keyed by conversation
    assert decode(RoutedTweet, outputs[0].value) == routed
    alert = decode(Alert, outputs[1].value)
    assert alert.tweet.id == "5" and alert.urgency == Urgency.CRITICAL
    assert routed.trace.routed_at is not None and routed.tweet.addressed_handles == [
        "@SkylarkDeals"
    ]


def test_the_rules_version_follows_the_policy():
    assert rules_version(POLICY) == rules_version(RouteConfig(confidence_threshold=0.5))
    assert rules_version(POLICY) != rules_version(RouteConfig(confidence_threshold=0.6))


def test_a_language_the_model_does_not_support_goes_to_triage_even_when_confident():
    event = classified("sales", 0.95, lang="ja", language_supported=False)
    decision = decide(event, POLICY)
    assert decision.topic == topics.TRIAGE and decision.destination == "triage"
    assert "language ja is not supported" in decision.reasons[0]
    assert "sales 0.95" in decision.reasons[0]  # the model's guess still helps the triager


def test_a_critical_tweet_in_an_unsupported_language_is_still_escalated():
    _, outputs = route(classified("it_security", 0.9, "critical", language_supported=False), POLICY)
    assert [o.topic for o in outputs] == [topics.TRIAGE, topics.ALERTS]
