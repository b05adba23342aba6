"""Corrections (pure): what a correction does to its conversation, and what the ticketing
systems' webhooks mean (route/feedback.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from switchboard.route.config import FeedbackConfig, JiraFeedback, ZendeskFeedback
from switchboard.route.feedback import (
    apply,
    check_secrets,
    escalates,
    jira_request,
    jira_signature,
    stale,
    zendesk_request,
    zendesk_signature,
)
from switchboard.shared.events import (
    AwaitingReply,
    ConversationState,
    CorrectionRequest,
    RecentTweet,
    RouteDecision,
    Withheld,
    conversation_of_vendor_key,
    conversation_of_vendor_labels,
    vendor_conversation_key,
    vendor_conversation_label,
)
from switchboard.shared.labels import Department, Urgency
from switchboard.shared.settings import ConfigError
from tests.factories import a_tweet

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
SLA = {Urgency.CRITICAL: 30.0, Urgency.HIGH: 240.0, Urgency.NORMAL: 1440.0, Urgency.LOW: 10080.0}
ALERTING = [Urgency.CRITICAL]


def recent(tweet_id: str, department: str, urgency: str) -> RecentTweet:
    return RecentTweet(
        tweet=a_tweet(id=tweet_id, conversation_id="c-1"),
        department=Department(department),
        urgency=Urgency(urgency),
        model_version="minilm-real-v5",
        ingested_at=NOW - timedelta(minutes=10),
    )


def conversation(*tweets: RecentTweet, awaiting: str | None = None) -> ConversationState:
    first = tweets[0]
    waiting = None
    if awaiting is not None:
        waiting = AwaitingReply(
            tweet_id=awaiting, handle="acme", department=first.department,
            urgency=first.urgency, received_at=NOW - timedelta(minutes=10),
            due_at=NOW + timedelta(hours=23), tweet=first.tweet,
        )  # fmt: skip
    return ConversationState(
        conversation_id="c-1",
        department=tweets[-1].department,
        max_urgency=max((t.urgency for t in tweets), key=list(reversed(Urgency)).index),
        tweets=len(tweets),
        updated_at=NOW - timedelta(minutes=5),
        awaiting=waiting,
        recent={t.tweet.id: t for t in tweets},
    )


def request(**fields: object) -> CorrectionRequest:
    values: dict[str, object] = dict(
        correction_id="api:1", conversation_id="c-1", source="api", by="ana", made_at=NOW
    )
    return CorrectionRequest(**{**values, **fields})


def applied(state: ConversationState | None, **fields: object):
    return apply(state, request(**fields), NOW, sla_minutes=SLA, alert_urgencies=ALERTING)


def test_a_new_department_reroutes_the_tweet_and_the_conversation_follows():
    state = conversation(recent("t-1", "sales", "normal"), awaiting="t-1")
    result = applied(state, tweet_id="t-1", department="legal")
    c = result.correction
    assert (c.outcome, c.department_before, c.department) == ("rerouted", "sales", "legal")
    assert (c.urgency_before, c.urgency, c.model_version) == ("normal", "normal", "minilm-real-v5")
    assert c.tweet is not None and c.tweet.id == "t-1" and c.by == "ana"
    assert result.state is not None and result.state.department is Department.LEGAL
    assert result.state.awaiting is not None
    assert result.state.awaiting.department is Department.LEGAL
    assert result.state.recent["t-1"].department is Department.LEGAL
    assert result.state.corrections == ["api:1"] and result.state.updated_at == NOW
    assert result.recent is not None and not result.escalate


def test_without_a_tweet_id_the_conversations_latest_tweet_is_corrected():
    state = conversation(recent("t-1", "sales", "normal"), recent("t-2", "sales", "low"))
    result = applied(state, department="customer_service")
    assert result.correction.tweet_id == "t-2"
    assert result.state is not None and result.state.recent["t-1"].department is Department.SALES


def test_raising_the_urgency_to_critical_escalates_and_restarts_the_sla_clock():
    state = conversation(recent("t-1", "it_security", "normal"), awaiting="t-1")
    result = applied(state, tweet_id="t-1", urgency="critical")
    assert result.correction.outcome == "relabelled" and result.escalate
    assert result.state is not None and result.state.max_urgency is Urgency.CRITICAL
    awaiting = result.state.awaiting
    assert awaiting is not None and awaiting.urgency is Urgency.CRITICAL
    assert awaiting.due_at == NOW - timedelta(minutes=10) + timedelta(minutes=30)
    assert result.state.department is Department.IT_SECURITY  # the owner stays


def test_a_later_awaited_tweet_made_critical_is_due_from_its_own_arrival():
    """The first unanswered tweet keeps the response clock (received_at); the awaited one is a
    later, more urgent tweet. Corrected to critical, its SLA counts from its own arrival, not
    from the first tweet's, which would make it overdue the moment it was corrected."""
    first, later = recent("t-1", "it_security", "normal"), recent("t-2", "it_security", "high")
    first = first.model_copy(update={"ingested_at": NOW - timedelta(hours=3)})
    state = conversation(first, later, awaiting="t-2")
    awaiting = state.awaiting.model_copy(
        update={"received_at": NOW - timedelta(hours=3), "urgency": Urgency.HIGH}
    )
    state = state.model_copy(update={"awaiting": awaiting})
    result = applied(state, tweet_id="t-2", urgency="critical")
    awaiting = result.state.awaiting
    assert awaiting.tweet_id == "t-2" and awaiting.received_at == NOW - timedelta(hours=3)
    assert awaiting.due_at == NOW - timedelta(minutes=10) + timedelta(minutes=30)


def test_lowering_the_urgency_lowers_the_conversations_highest():
    state = conversation(recent("t-1", "communications", "critical"))
    result = applied(state, tweet_id="t-1", urgency="low")
    assert result.state is not None and result.state.max_urgency is Urgency.LOW
    assert not result.escalate


def decision(destination: str, department: str) -> RouteDecision:
    topic = {"triage": "switchboard.triage", "dropped": "switchboard.dropped"}.get(
        destination, f"switchboard.dept.{department}"
    )
    return RouteDecision(destination=destination, department=Department(department), topic=topic,
                         escalated=False, reasons=[], confidence_threshold=0.5,
                         rules_version="r1")  # fmt: skip


def test_confirming_the_models_guess_for_a_tweet_in_triage_sends_it_to_that_department():
    state = conversation(recent("t-1", "sales", "normal"))
    state = state.model_copy(update={"routed": {"t-1": decision("triage", "sales")}})
    confirmed = applied(state, tweet_id="t-1", department="sales")
    assert confirmed.correction.outcome == "rerouted" and confirmed.recent is not None
    assert confirmed.recent.department is Department.SALES
    urgency_only = applied(state, tweet_id="t-1", urgency="high")
    assert urgency_only.correction.outcome == "rerouted"


def test_a_dropped_tweet_sent_to_a_department_counts_from_then_on_and_raises_its_alert():
    """Spam dropped by a rule was a real complaint: a person sends it to a department. It now
    counts for the conversation (its owner, its urgency) and, critical, raises the alert its
    drop withheld; one that began its conversation does so too."""
    spam = recent("t-1", "marketing", "critical")
    alone = conversation(spam).model_copy(update={
        "routed": {"t-1": decision("dropped", "marketing")}, "tweets": 0,
        "max_urgency": Urgency.CRITICAL, "owner_confirmed": False})  # fmt: skip
    rescued = applied(alone, tweet_id="t-1", department="customer_service")
    assert rescued.correction.outcome == "rerouted" and rescued.escalate
    after = rescued.state
    assert (after.tweets, after.department, after.owner_confirmed) == (
        1, Department.CUSTOMER_SERVICE, True)  # fmt: skip
    assert after.max_urgency is Urgency.CRITICAL
    # it awaits its reply, due by its urgency's SLA from when it arrived
    assert after.awaiting is not None and after.awaiting.tweet_id == "t-1"
    assert after.awaiting.due_at == NOW - timedelta(minutes=10) + timedelta(minutes=30)
    assert rescued.correction.destination_before == "dropped"
    # read again after a crash, the correction raises the alert again: the urgency was
    # critical before as after, yet no alert had gone out for the dropped tweet
    assert escalates(rescued.correction, spam.tweet, ALERTING)
    answered = alone.model_copy(update={"replied_at": NOW})  # a company reply came after it
    assert applied(answered, tweet_id="t-1", department="sales").state.awaiting is None
    low = conversation(recent("t-0", "sales", "low"), recent("t-2", "marketing", "high"))
    low = low.model_copy(
        update={
            "max_urgency": Urgency.LOW,
            "tweets": 1,
            "routed": {
                "t-0": decision("department", "sales"),
                "t-2": decision("dropped", "marketing"),
            },
        }
    )
    raised = applied(low, tweet_id="t-2", department="sales")
    assert (raised.state.tweets, raised.state.max_urgency) == (2, Urgency.HIGH)
    assert not raised.escalate  # high does not alert here


def test_a_withheld_tweet_is_rescued_by_its_first_correction_only():
    """X's notice in place of the text sent the tweet to triage, counting for nothing; a person
    sends it to a department: it counts and alerts. It stays withheld, and a second correction
    moves it on without counting it or paging again."""
    notice = Withheld(country_codes=["IN"], scope="user", notice=True)
    withheld = recent("t-1", "legal", "critical").model_copy(
        update={"tweet": a_tweet(id="t-1", conversation_id="c-1", withheld=notice)}
    )
    state = conversation(withheld).model_copy(
        update={"routed": {"t-1": decision("triage", "legal")}, "tweets": 0}
    )
    first = applied(state, tweet_id="t-1", department="legal")
    assert first.correction.outcome == "rerouted" and first.escalate
    assert first.state.tweets == 1
    # route records the tweet's new decision: sent to legal by the correction
    after = first.state.model_copy(update={"routed": {"t-1": decision("department", "legal")}})
    second = apply(after, request(correction_id="api:2", tweet_id="t-1", department="sales"),
                   NOW, sla_minutes=SLA, alert_urgencies=ALERTING)  # fmt: skip
    assert second.correction.outcome == "rerouted" and not second.escalate
    assert second.state.tweets == 1 and second.state.department is Department.SALES


def test_a_tweet_a_rule_escalated_is_not_paged_again_when_corrected_to_critical():
    """A rule paged for the tweet (``escalation:<id>``); a person then labels it critical: a
    second page, ``critical_tweet:<id>``, could not be told from a new one."""
    state = conversation(recent("t-1", "legal", "high"))
    escalated = decision("department", "legal").model_copy(
        update={"escalated": True, "alert_kind": "escalation"}
    )
    state = state.model_copy(update={"routed": {"t-1": escalated}})
    result = applied(state, tweet_id="t-1", urgency="critical")
    assert result.correction.outcome == "relabelled" and result.correction.alerted_before
    assert not result.escalate
    # read again after a crash, the correction as it was applied raises nothing either
    assert not escalates(result.correction, state.recent["t-1"].tweet, ALERTING)
    plain = state.model_copy(update={"routed": {"t-1": decision("department", "legal")}})
    assert applied(plain, tweet_id="t-1", urgency="critical").escalate


def test_a_ticket_moved_corrects_the_latest_tweet_that_reached_a_department():
    # the ticket is the first tweet's; a later one was dropped as spam
    state = conversation(recent("t-1", "sales", "normal"), recent("t-2", "sales", "low"))
    state = state.model_copy(update={"routed": {"t-1": decision("department", "sales"),
                                                "t-2": decision("dropped", "sales")}})  # fmt: skip
    moved = applied(state, department="legal", source="zendesk", correction_id="zendesk:1")
    assert moved.correction.tweet_id == "t-1"
    assert applied(state, department="legal").correction.tweet_id == "t-2"  # the API: the latest


def test_a_ticket_moved_corrects_the_latest_tweet_of_its_own_department():
    """The conversation's first tweet went to billing (its ticket there), a later one to legal
    by a rule (a ticket of its own): billing's ticket moved to shipping corrects billing's
    tweet, not legal's."""
    state = conversation(recent("t-1", "customer_service", "normal"),
                         recent("t-2", "legal", "normal"))  # fmt: skip
    state = state.model_copy(update={"routed": {
        "t-1": decision("department", "customer_service"), "t-2": decision("department", "legal"),
    }})  # fmt: skip
    moved = applied(state, department="sales", source="zendesk", correction_id="zendesk:2",
                    ticket_department="customer_service")  # fmt: skip
    assert (moved.correction.tweet_id, moved.correction.department_before) == (
        "t-1", "customer_service")  # fmt: skip
    # a ticket of a department none of its tweets is in now: the latest that reached one
    elsewhere = applied(state, department="sales", source="jira", correction_id="jira:1",
                        ticket_department="marketing")  # fmt: skip
    assert elsewhere.correction.tweet_id == "t-2"


def test_a_reroute_keeps_the_conversations_highest_urgency_from_older_tweets():
    # the critical tweet that set it is older than the tweets route keeps whole
    state = conversation(recent("t-9", "sales", "normal"))
    state = state.model_copy(update={"max_urgency": Urgency.CRITICAL})
    result = applied(state, tweet_id="t-9", department="legal")
    assert result.state is not None and result.state.max_urgency is Urgency.CRITICAL


def test_a_correction_to_what_it_already_was_is_recorded_as_unchanged():
    state = conversation(recent("t-1", "legal", "high"))
    result = applied(state, tweet_id="t-1", department="legal", urgency="high")
    assert result.correction.outcome == "unchanged" and result.recent is None
    assert result.state is not None and result.state.corrections == ["api:1"]
    assert result.state.recent == state.recent


def test_a_tweet_route_no_longer_remembers_is_recorded_for_training_only():
    tweet = a_tweet(id="old-1", conversation_id="c-1", text="my bill is wrong")
    result = applied(None, tweet_id="old-1", department="legal", tweet=tweet)
    c = result.correction
    assert (c.outcome, c.tweet, c.department, c.department_before) == (
        "recorded", tweet, "legal", None)  # fmt: skip
    assert result.state is None and result.recent is None
    assert applied(None, tweet_id="old-2", department="legal", tweet=tweet).correction.tweet is None
    elsewhere = a_tweet(id="old-1", conversation_id="c-2", text="my bill is wrong")
    kept = applied(None, tweet_id="old-1", department="legal", tweet=elsewhere).correction.tweet
    assert kept is None  # a tweet of another conversation than the one corrected


def test_a_request_must_say_what_is_right():
    with pytest.raises(ValueError, match="department, an urgency or both"):
        request(tweet_id="t-1")


def test_vendor_keys_name_the_conversation_both_ways():
    key = vendor_conversation_key("legal-zendesk", "1790000000000000001")
    assert conversation_of_vendor_key(key) == "1790000000000000001"
    assert conversation_of_vendor_key("somebody-else:1") is None
    labels = ["switchboard", "sb-1234", vendor_conversation_label("42")]
    assert conversation_of_vendor_labels(labels) == "42"
    assert conversation_of_vendor_labels(["switchboard"]) is None


ZENDESK = ZendeskFeedback(signing_secret={"env": "ZD_HOOK"}, groups={360001: "legal"})
JIRA = JiraFeedback(secret={"env": "JIRA_HOOK"}, projects={"LEG": "legal"})


def zendesk_event(kind: str, current: str, external_id: str | None = None) -> dict:
    """The shape of a Zendesk ticket event webhook."""
    return {
        "type": f"zen:event-type:ticket.{kind}",
        "account_id": 1,
        "id": "cbe4028c-7239-495d-b020-d78b8ce6a6f0",
        "time": "2026-12-04T11:59:00Z",
        "zendesk_event_version": "2022-11-06",
        "subject": "zen:ticket:35",
        "detail": {"id": "35", "actor_id": "9001",
                   "external_id": external_id or vendor_conversation_key("support", "c-1")},
        "event": {"current": current, "previous": "360002"},
    }  # fmt: skip


def test_a_zendesk_ticket_moved_to_a_mapped_group_corrects_its_conversation():
    meant = zendesk_request(zendesk_event("group_assignment_changed", "360001"), ZENDESK)
    assert isinstance(meant, CorrectionRequest)
    assert (meant.conversation_id, meant.department, meant.urgency) == ("c-1", "legal", None)
    assert meant.correction_id == "zendesk:cbe4028c-7239-495d-b020-d78b8ce6a6f0"
    assert meant.source == "zendesk" and "9001" in meant.by and meant.tweet_id is None
    priority = zendesk_request(zendesk_event("priority_changed", "urgent"), ZENDESK)
    assert isinstance(priority, CorrectionRequest) and priority.urgency is Urgency.CRITICAL


def test_a_zendesk_event_names_the_department_of_the_ticket_it_changed():
    """A move names the group it left, a priority change the group the ticket is in."""
    groups = ZendeskFeedback(signing_secret={"env": "ZD_HOOK"},
                             groups={360001: "legal", 360002: "customer_service"})  # fmt: skip
    moved = zendesk_request(zendesk_event("group_assignment_changed", "360001"), groups)
    assert moved.ticket_department is Department.CUSTOMER_SERVICE  # previous: 360002
    event = zendesk_event("priority_changed", "urgent")
    event["detail"]["group_id"] = 360001
    assert zendesk_request(event, groups).ticket_department is Department.LEGAL


def test_zendesk_priorities_are_read_in_zendesks_lower_case_and_others_are_refused():
    capitalised = ZendeskFeedback(
        signing_secret={"env": "ZD_HOOK"}, groups={360001: "legal"},
        priorities={"Urgent": "critical", "HIGH": "high"},
    )  # fmt: skip
    priority = zendesk_request(zendesk_event("priority_changed", "urgent"), capitalised)
    assert isinstance(priority, CorrectionRequest) and priority.urgency is Urgency.CRITICAL
    with pytest.raises(ValueError, match="critical: not a Zendesk priority"):
        ZendeskFeedback(signing_secret={"env": "ZD_HOOK"}, groups={360001: "legal"},
                        priorities={"critical": "critical"})  # fmt: skip


@pytest.mark.parametrize(
    ("event", "why"),
    [
        (zendesk_event("group_assignment_changed", "777"), "group 777 is not one"),
        (zendesk_event("group_assignment_changed", "360001", "their-own-key"), "not a ticket"),
        (zendesk_event("status_changed", "solved"), "is not a correction"),
    ],
)
def test_a_zendesk_event_that_is_no_correction_says_why(event, why):
    meant = zendesk_request(event, ZENDESK)
    assert isinstance(meant, str) and why in meant


def jira_event(items: list[dict], project: str = "LEG", labels: list[str] | None = None) -> dict:
    """The shape of Jira's ``jira:issue_updated`` webhook."""
    labels = labels or ["switchboard", vendor_conversation_label("c-9")]
    return {
        "timestamp": 1796385540000,
        "webhookEvent": "jira:issue_updated",
        "issue_event_type_name": "issue_moved",
        "user": {"accountId": "5b10a2844c20165700ede21g", "displayName": "Mia Krystof"},
        "issue": {"id": "10002", "key": f"{project}-7",
                  "fields": {"project": {"key": project},
                             "labels": labels}},
        "changelog": {"id": "10101", "items": items},
    }  # fmt: skip


MOVED = {"field": "project", "fieldtype": "jira", "from": "10000", "fromString": "Support",
         "to": "10001", "toString": "Legal"}  # fmt: skip


def test_a_jira_issue_moved_to_a_mapped_project_corrects_its_conversation():
    priority = {"field": "priority", "fromString": "Medium", "toString": "Highest"}
    meant = jira_request(jira_event([MOVED, priority]), JIRA)
    assert isinstance(meant, CorrectionRequest)
    assert (meant.conversation_id, meant.department, meant.urgency) == ("c-9", "legal",
                                                                        "critical")  # fmt: skip
    # the id is the signed body's own (issue and change), so a replayed delivery is the same
    assert meant.correction_id == "jira:10002:10101" and meant.by == "jira user Mia Krystof"
    assert meant.made_at == datetime.fromtimestamp(1796385540, UTC)


def test_a_jira_event_names_the_department_of_the_issue_it_changed():
    """A move names the project it left (the old key's prefix), a priority change the
    project the issue is in."""
    jira = JiraFeedback(secret={"env": "JIRA_HOOK"}, projects={"LEG": "legal", "SUP": "sales"})
    key = {"field": "Key", "fromString": "SUP-3", "toString": "LEG-7"}
    assert jira_request(jira_event([MOVED, key]), jira).ticket_department is Department.SALES
    assert jira_request(jira_event([MOVED]), jira).ticket_department is None  # unknown: latest
    priority = {"field": "priority", "fromString": "Medium", "toString": "Highest"}
    assert jira_request(jira_event([priority]), jira).ticket_department is Department.LEGAL


def test_a_jira_update_that_is_no_correction_says_why():
    assert "not one of" in jira_request(jira_event([MOVED], project="OPS"), JIRA)
    summary = {"field": "summary", "fromString": "a", "toString": "b"}
    assert "neither" in jira_request(jira_event([summary]), JIRA)
    assert "not an issue" in jira_request(jira_event([MOVED], labels=["x"]), JIRA)


def test_changes_made_by_switchboards_own_users_are_not_corrections():
    # notify sets a Zendesk ticket's priority (and a Jira issue's) itself: that is no person's
    # verdict on the model
    zendesk = ZENDESK.model_copy(update={"ignore_users": ["9001"]})
    meant = zendesk_request(zendesk_event("priority_changed", "urgent"), zendesk)
    assert isinstance(meant, str) and "ignore_users" in meant
    jira = JIRA.model_copy(update={"ignore_users": ["5b10a2844c20165700ede21g"]})
    meant = jira_request(jira_event([MOVED]), jira)
    assert isinstance(meant, str) and "ignore_users" in meant


@pytest.mark.parametrize(
    ("when", "why"),
    [
        (NOW - timedelta(seconds=30), None),
        (NOW - timedelta(hours=2), "too old"),  # a captured delivery sent again later
        (NOW + timedelta(hours=1), "in the future"),
        (None, "no readable event time"),
    ],
)
def test_a_signed_event_must_be_recent(when, why):
    found = stale(when, NOW, max_age_s=3600)
    assert found == why if why is None else why in found


def test_signatures_are_the_vendors_own():
    # Zendesk: base64(HMAC-SHA256(timestamp + body)); Jira: "sha256=" + hex HMAC-SHA256(body).
    # The expected values were computed with openssl (`openssl dgst -sha256 -hmac s3cret`).
    assert zendesk_signature("s3cret", "2026-12-04T12:00:00Z", b'{"a":1}') == (
        "Ra03tjgFTTf0/tUtZwHEjPO7kr+Ydow4O8wzKQymXvM="
    )
    assert jira_signature("s3cret", b'{"a":1}') == (
        "sha256=5910e62016ef5034272c926c27071992a465c2335cecf41851bda071577f4f6d"
    )


def test_a_corrected_text_replaces_the_dataset_rows_of_the_same_text():
    from switchboard.classify.data import LabeledTweet
    from switchboard.classify.train import _overridden

    rows = [
        LabeledTweet("My Bill  is wrong", Department.SALES, Urgency.LOW),
        LabeledTweet("hello", Department.COMMUNITY, Urgency.LOW),
        LabeledTweet("my bill is wrong", Department.CUSTOMER_SERVICE, Urgency.HIGH),
    ]
    kept, weights = _overridden(rows, [1.0, 1.0, 3.0], [False, False, True])
    assert kept == rows[1:] and weights == [1.0, 3.0]


def test_a_correction_of_a_tweet_route_forgot_is_still_applied_once():
    state = conversation(recent("t-1", "sales", "normal"))
    result = applied(state, tweet_id="t-0", department="legal")
    assert result.correction.outcome == "recorded" and result.recent is None
    assert result.state is not None and result.state.corrections == ["api:1"]
    assert result.state.recent == state.recent and result.state.department is Department.SALES


def test_a_webhook_whose_secret_cannot_be_read_stops_route_naming_the_key(monkeypatch):
    monkeypatch.delenv("ZD_HOOK", raising=False)
    monkeypatch.setenv("JIRA_HOOK", "s3cret")
    check_secrets(FeedbackConfig(jira=JIRA))  # readable: nothing to say
    with pytest.raises(ConfigError, match=r"route\.feedback\.zendesk\.signing_secret.*ZD_HOOK"):
        check_secrets(FeedbackConfig(zendesk=ZENDESK, jira=JIRA))


def test_a_correction_made_before_one_already_applied_does_not_undo_it():
    """A ticket moved to legal, then at once to sales: the vendor's two events arrive in the
    other order (a retried delivery). The tweet stays in sales; the earlier event's urgency,
    which nothing later changed, still applies."""
    state = conversation(recent("t-1", "customer_service", "normal"), awaiting="t-1")
    state = state.model_copy(update={"routed": {"t-1": decision("department", "customer_service")}})
    later = apply(state, request(tweet_id="t-1", department="sales", correction_id="zendesk:b"),
                  NOW, sla_minutes=SLA, alert_urgencies=ALERTING)  # fmt: skip
    assert later.correction.outcome == "rerouted"
    earlier = apply(later.state, request(tweet_id="t-1", department="legal",
                                         correction_id="zendesk:a",
                                         made_at=NOW - timedelta(seconds=30)),
                    NOW, sla_minutes=SLA, alert_urgencies=ALERTING)  # fmt: skip
    assert earlier.correction.outcome == "superseded" and earlier.recent is None
    assert earlier.state.recent["t-1"].department is Department.SALES
    assert earlier.state.corrections == ["zendesk:b", "zendesk:a"]  # applied once each
    both = apply(later.state, request(tweet_id="t-1", department="legal", urgency="high",
                                      correction_id="jira:a", made_at=NOW - timedelta(seconds=30)),
                 NOW, sla_minutes=SLA, alert_urgencies=ALERTING)  # fmt: skip
    assert (both.correction.outcome, both.correction.department, both.correction.urgency) == (
        "relabelled", "sales", "high")  # fmt: skip


def test_confirming_a_handles_guess_confirms_the_conversations_owner_without_sending_it_again():
    """route.unsure: handle sent the tweet to the handle's department, owning nothing; a person
    confirming that department makes it the owner, and the tweet, on that topic already, is
    not published there again."""
    state = conversation(recent("t-1", "investor_relations", "normal"))
    guessed = decision("department", "investor_relations").model_copy(update={"owner": "handle"})
    state = state.model_copy(update={"routed": {"t-1": guessed}, "owner_confirmed": False})
    result = applied(state, tweet_id="t-1", department="investor_relations")
    assert result.correction.outcome == "unchanged" and result.recent is None
    assert result.state.owner_confirmed
    assert result.state.department is Department.INVESTOR_RELATIONS
