"""Routing policy, table-driven: defaults, a custom rule set, conversations, spikes, SLAs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from switchboard.cli.config import SwitchboardConfig
from switchboard.route import conversations, feedback
from switchboard.route.config import SpikeConfig, TimeWindow
from switchboard.route.rules import evaluate, in_window, rules_version
from switchboard.route.spikes import (
    SpikeKeys,
    SpikeTally,
    bar,
    judge,
    newly_watched,
    watched_since,
)
from switchboard.shared.events import (
    MAX_TEXT_CHARS,
    Author,
    BrandTweet,
    ClassifiedTweet,
    Correction,
    CorrectionRequest,
    RouteDecision,
    SpikeCount,
    SpikeObservation,
    SpikesWithdrawn,
    Trace,
    Withheld,
    decode,
    decode_spike,
    encode,
)
from switchboard.shared.labels import Department, Urgency
from switchboard.shared.settings import KafkaSettings
from tests.factories import a_classified_tweet as classified
from tests.factories import a_tweet

NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)  # a Wednesday
CAME_IN = datetime(2026, 11, 25, 10, 0, 17, tzinfo=UTC)  # when ingest received a tweet

CUSTOM_RULES = [
    {"name": "spam", "when": {"departments": ["community"], "keywords": ["follow back"]},
     "then": {"drop": True}, "final": True},
    {"name": "vip", "when": {"followers_min": 100000}, "then": {"copy_to": ["communications"],
     "priority": "P1", "sla_minutes": 15}},
    {"name": "ir-outage", "when": {"segments": ["investor"], "departments": ["it_security"]},
     "then": {"route_to": "investor_relations", "copy_to": ["it_security"]}},
    {"name": "legal-words", "when": {"patterns": ["(?i)\\b(lawsuit|subpoena)\\b"]},
     "then": {"route_to": "legal", "escalate": True}},
    {"name": "night-critical", "when": {"urgencies": ["critical"],
     "time": {"start": "22:00", "end": "06:00", "timezone": "Europe/London"}},
     "then": {"priority": "P1", "sla_minutes": 10}},
    {"name": "spanish", "when": {"languages": ["es"]}, "then": {"triage": True}},
]  # fmt: skip


def configured(rules: list[dict] | None = None, **route: object) -> SwitchboardConfig:
    return SwitchboardConfig.model_validate(
        {
            "handles": [
                {
                    "handle": "@AcmeHelp",
                    "user_id": "1",
                    "brand": "Acme",
                    "segment": "support",
                    "default_department": "customer_service",
                },
                {
                    "handle": "@AcmeIR",
                    "user_id": "2",
                    "brand": "Acme",
                    "segment": "investor",
                    "default_department": "investor_relations",
                },
            ],  # fmt: skip
            "route": {"confidence_threshold": 0.5, "rules": rules or [], **route},
        }
    )


DEFAULTS = configured()
CUSTOM = configured(CUSTOM_RULES)


@pytest.mark.parametrize(
    ("case", "event", "destination", "department", "escalated", "copies", "matched"),
    [
        ("confident: its department whatever the handle",
         classified("customer_service", 0.8, addressed_handles=["@AcmeIR"]),
         "department", "customer_service", False, [], []),
        ("low confidence: triage", classified("legal", 0.3), "triage", "legal", False, [], []),
        ("critical: escalated", classified("it_security", 0.9, "critical"),
         "department", "it_security", True, [], []),
        ("unsupported language: triage, still escalated",
         classified("sales", 0.95, "critical", lang="ja", language_supported=False),
         "triage", "sales", True, [], []),
    ],
)  # fmt: skip
def test_defaults(case, event, destination, department, escalated, copies, matched):
    outcome = evaluate(event, DEFAULTS, None, NOW)
    assert (outcome.destination, outcome.department.value, outcome.escalated) == (
        destination, department, escalated,
    ), case  # fmt: skip
    assert [d.value for d in outcome.copies] == copies and outcome.matched_rules == matched


@pytest.mark.parametrize(
    ("case", "event", "destination", "department", "escalated", "copies", "matched"),
    [
        ("spam dropped, final", classified("community", 0.9, text="follow back pls"),
         "dropped", "community", False, [], ["spam"]),
        ("spam rule needs its keyword", classified("community", 0.9, text="hi all"),
         "department", "community", False, [], []),
        ("vip author copied to comms",
         classified("customer_service", 0.9, author=Author(id="9", username="big",
                                                           followers_count=250000)),
         "department", "customer_service", False, ["communications"], ["vip"]),
        ("outage on the IR handle owned by IR, copied to security",
         classified("it_security", 0.9, addressed_handles=["@AcmeIR"]),
         "department", "investor_relations", False, ["it_security"], ["ir-outage"]),
        ("pattern: route to legal even from triage, escalate",
         classified("sales", 0.2, text="a LAWSUIT is coming"),
         "department", "legal", True, [], ["legal-words"]),
        ("language rule: triage", classified("sales", 0.9, lang="es"),
         "triage", "sales", False, [], ["spanish"]),
    ],
)  # fmt: skip
def test_custom_rules(case, event, destination, department, escalated, copies, matched):
    outcome = evaluate(event, CUSTOM, None, NOW)
    assert (outcome.destination, outcome.department.value, outcome.escalated) == (
        destination, department, escalated,
    ), case  # fmt: skip
    assert [d.value for d in outcome.copies] == copies, case
    assert outcome.matched_rules == matched, case
    assert all(f"rule {name}" in " ".join(outcome.reasons) for name in matched)


def test_rule_actions_set_priority_and_sla():
    vip = classified(
        "customer_service", 0.9, author=Author(id="9", username="b", followers_count=10**6)
    )
    outcome = evaluate(vip, CUSTOM, None, NOW)
    assert outcome.priority == "P1"
    assert outcome.sla_due_at == max(vip.tweet.created_at, vip.trace.ingested_at) + timedelta(
        minutes=15
    )
    plain = evaluate(classified("customer_service", 0.9, "normal"), CUSTOM, None, NOW)
    assert plain.priority == "P3"


def test_time_windows_wrap_midnight_in_their_zone():
    night = TimeWindow(start="22:00", end="06:00", timezone="Europe/London")
    assert in_window(night, datetime(2026, 11, 25, 23, 30, tzinfo=UTC))
    assert in_window(night, datetime(2026, 11, 25, 5, 59, tzinfo=UTC))
    assert not in_window(night, NOW)
    weekdays = TimeWindow(days=["mon", "tue", "wed", "thu", "fri"])
    assert in_window(weekdays, NOW) and not in_window(weekdays, datetime(2026, 11, 28, tzinfo=UTC))


def test_an_overnight_window_belongs_to_the_day_it_begins():
    nights = TimeWindow(start="18:00", end="08:00", timezone="Europe/London",
                        days=["mon", "tue", "wed", "thu", "fri"])  # fmt: skip
    assert in_window(nights, datetime(2026, 11, 27, 22, 0, tzinfo=UTC))  # Friday night
    assert in_window(nights, datetime(2026, 11, 28, 2, 0, tzinfo=UTC))  # its Saturday morning
    assert not in_window(nights, datetime(2026, 11, 30, 2, 0, tzinfo=UTC))  # Sunday's night
    assert in_window(nights, datetime(2026, 12, 1, 2, 0, tzinfo=UTC))  # Monday's night
    assert not in_window(nights, datetime(2026, 11, 28, 12, 0, tzinfo=UTC))  # Saturday noon


def test_rules_version_follows_the_policy():
    assert rules_version(CUSTOM.route) == rules_version(configured(CUSTOM_RULES).route)
    assert rules_version(CUSTOM.route) != rules_version(DEFAULTS.route)


@pytest.mark.parametrize(
    ("rule", "key"),
    [
        ({"name": "x", "when": {"departmnts": ["legal"]}, "then": {}}, "departmnts"),
        ({"name": "x", "then": {"route_to": "hr"}}, "route_to"),
        ({"name": "x", "then": {"drop": True, "escalate": True}}, "drop"),
        ({"name": "x", "when": {"patterns": ["("]}, "then": {}}, "patterns"),
        ({"name": "x", "when": {"time": {"timezone": "Mars/Base"}}, "then": {}}, "timezone"),
        ({"name": "x", "when": {"departments": ["legal"]}, "then": {}}, "the rule does nothing"),
        ({"name": "x", "then": {"copy_to": []}}, "the rule does nothing"),
    ],
)
def test_a_bad_rule_is_refused_naming_its_key(rule, key):
    with pytest.raises(ValueError, match=key):
        configured([rule])


def test_a_final_rule_may_keep_the_models_decision_from_later_rules():
    keep = {"name": "keep", "when": {"departments": ["legal"]}, "then": {}, "final": True}
    assert configured([keep]).route.rules[0].final


def test_spikes_counted_by_nothing_are_refused():
    with pytest.raises(ValueError, match="dimensions"):
        configured(spikes={"dimensions": []})  # enabled: false turns them off


def test_rule_names_are_unique():
    with pytest.raises(ValueError, match="repeated"):
        configured(
            [{"name": "a", "then": {"triage": True}}, {"name": "a", "then": {"triage": True}}]
        )


# --- conversations ---------------------------------------------------------------------------


def decision(outcome) -> RouteDecision:
    return RouteDecision(
        destination=outcome.destination,
        department=outcome.department,
        topic=f"switchboard.{outcome.destination}.{outcome.department}",
        copies=outcome.copies,
        escalated=outcome.escalated,
        reasons=outcome.reasons,
        confidence_threshold=0.45,
        rules_version="test",
        owner=outcome.owner,
        sla_due_at=outcome.sla_due_at,
    )


def routed_state(event, config=DEFAULTS, state=None, now=NOW, offset=None):
    outcome = evaluate(event, config, state, now)
    return outcome, conversations.after_routing(
        state, event, outcome, decision(outcome), now, offset=offset
    )


def test_a_conversation_keeps_what_its_tweets_were_counted_as_and_its_last_withdrawals():
    """A tweet's spike keys and window stay with it (its deletion withdraws them as counted),
    and a later tweet keeps the latest deletion's withdrawals (read again after a crash, the
    deletion publishes them again)."""
    counted = SpikeCount(keys=["keyword:outage"], at=NOW)
    first = classified("customer_service", 0.9, conversation_id="c20", id="w1")
    outcome = evaluate(first, DEFAULTS, None, NOW)
    state = conversations.after_routing(None, first, outcome, decision(outcome), NOW,
                                        spikes=counted)  # fmt: skip
    assert state.recent["w1"].spikes == counted
    withdrawn = SpikesWithdrawn(offset=7, tweets={"w0": counted})
    state = state.model_copy(update={"spikes_withdrawn": withdrawn})
    _, state = routed_state(classified("customer_service", 0.9, conversation_id="c20", id="w2"),
                            state=state)  # fmt: skip
    assert state.spikes_withdrawn == withdrawn and state.recent["w2"].spikes is None


def test_a_reply_stays_with_the_owner_unless_the_model_is_sure():
    _, state = routed_state(classified("customer_service", 0.9, conversation_id="c1"))
    unsure = evaluate(classified("sales", 0.7, conversation_id="c1"), DEFAULTS, state, NOW)
    assert (unsure.department, unsure.owner) == (Department.CUSTOMER_SERVICE, "conversation")
    sure = evaluate(classified("legal", 0.9, conversation_id="c1"), DEFAULTS, state, NOW)
    assert (sure.department, sure.owner) == (Department.LEGAL, "model")


def test_a_post_whose_text_x_withheld_goes_to_triage_without_an_alert():
    """The model read X's notice ("...has been withheld in India in response to a legal
    demand"), not the post: its labels say nothing, so a person looks, and nobody is paged."""
    notice = Withheld(country_codes=["IN"], scope="user", notice=True)
    event = classified("legal", 0.97, "critical", withheld=notice)
    outcome = evaluate(event, DEFAULTS, None, NOW)
    assert (outcome.destination, outcome.escalated) == ("triage", False)
    assert "X withheld the text in IN" in outcome.reasons[0]
    readable = classified("legal", 0.97, "critical", withheld=Withheld(country_codes=["IN"]))
    assert evaluate(readable, DEFAULTS, None, NOW).destination == "department"
    # no rule reads labels that came from the notice (night-critical gives critical tweets at
    # night a 10-minute SLA), and it neither takes a conversation nor raises its urgency
    night = datetime(2026, 11, 25, 23, 0, tzinfo=UTC)
    assert evaluate(classified("legal", 0.97, "critical"), CUSTOM, None, night).matched_rules
    at_night = evaluate(event, CUSTOM, None, night)
    assert (at_night.destination, at_night.escalated, at_night.matched_rules) == (
        "triage",
        False,
        [],
    )
    first = classified("sales", 0.9, "low", conversation_id="c30", id="w1")
    _, owned = routed_state(first)
    in_thread = classified("legal", 0.97, "critical", conversation_id="c30", id="w2",
                           withheld=notice)  # fmt: skip
    outcome, after = routed_state(in_thread, state=owned)
    assert (outcome.destination, outcome.escalated, outcome.owner) == ("triage", False, "model")
    assert (after.department, after.max_urgency, after.tweets) == ("sales", "low", 1)
    assert after.awaiting.tweet_id == "w1" and conversations.decided(after, "w2") is not None
    _, alone = routed_state(classified("legal", 0.97, "critical", conversation_id="c31",
                                       id="w3", withheld=notice))  # fmt: skip
    assert alone.tweets == 0 and alone.awaiting is None


def test_a_low_confidence_reply_goes_to_the_owner_not_triage():
    _, state = routed_state(classified("customer_service", 0.9, conversation_id="c2"))
    outcome = evaluate(classified("sales", 0.3, conversation_id="c2"), DEFAULTS, state, NOW)
    assert outcome.destination == "department" and outcome.department == Department.CUSTOMER_SERVICE
    # "any update?": the model names the owner too, but too unsure to route by itself
    agreeing = evaluate(
        classified("customer_service", 0.3, conversation_id="c2"), DEFAULTS, state, NOW
    )
    assert agreeing.destination == "department" and agreeing.owner == "conversation"
    assert agreeing.department == Department.CUSTOMER_SERVICE


def test_rising_urgency_escalates_the_conversation():
    _, state = routed_state(classified("customer_service", 0.9, "normal", conversation_id="c3"))
    outcome = evaluate(
        classified("customer_service", 0.9, "high", conversation_id="c3"), DEFAULTS, state, NOW
    )
    assert outcome.escalated and "rose from normal to high" in " ".join(outcome.reasons)
    _, state = routed_state(
        classified("customer_service", 0.9, "high", conversation_id="c3"), state=state
    )
    again = evaluate(
        classified("customer_service", 0.9, "high", conversation_id="c3"), DEFAULTS, state, NOW
    )
    assert not again.escalated


def test_a_tweet_routed_before_is_remembered_with_its_decision():
    first = classified("communications", 0.3, conversation_id="c7", id="t1")  # unsure: triage
    outcome, state = routed_state(first)
    assert outcome.destination == "triage"
    assert conversations.decided(state, "t1") == decision(outcome)
    assert conversations.decided(state, "t2") is None and conversations.decided(None, "t1") is None
    # The same tweet labelled otherwise, with the conversation it created, would go elsewhere:
    # the remembered decision is what a republished copy must follow.
    again = evaluate(classified("communications", 0.9, conversation_id="c7", id="t1"),
                     DEFAULTS, state, NOW)  # fmt: skip
    assert again.destination != outcome.destination


def test_a_conversation_of_dropped_tweets_remembers_them_but_has_no_owner_and_no_urgency():
    """A dropped first tweet is kept (its decision for a copy published again, the tweet for a
    correction), yet counts for nothing: the next tweet is routed as if it began the
    conversation, owned by its own department, its urgency not a rise from the spam's."""
    dropping = configured([{"name": "spam", "when": {"keywords": ["casino"]},
                            "then": {"drop": True}}])  # fmt: skip
    spam = classified("marketing", 0.9, conversation_id="c8", id="s1", text="casino bonus",
                      urgency="low")  # fmt: skip
    outcome, state = routed_state(spam, config=dropping)
    assert outcome.destination == "dropped" and state is not None
    assert conversations.decided(state, "s1").destination == "dropped"
    assert list(state.recent) == ["s1"] and state.tweets == 0 and state.awaiting is None
    # the same tweet labelled otherwise after a model change: the decision still holds
    relabelled = classified("sales", 0.95, conversation_id="c8", id="s1", text="casino bonus")
    assert conversations.decided(state, relabelled.tweet.id).destination == "dropped"
    reply = classified("sales", 0.3, conversation_id="c8", id="s2", urgency="high")
    outcome, state = routed_state(reply, state=state)
    assert (outcome.destination, outcome.owner, outcome.escalated) == ("triage", "model", False)
    assert (state.tweets, state.max_urgency, state.owner_confirmed) == (1, "high", False)
    assert state.department == "sales" and state.awaiting.tweet_id == "s2"
    _, state = routed_state(
        classified("marketing", 0.9, conversation_id="c8", id="s3", text="casino"),
        config=dropping, state=state,
    )  # fmt: skip
    assert conversations.decided(state, "s3").destination == "dropped" and state.tweets == 1
    assert (state.max_urgency, state.awaiting.tweet_id) == ("high", "s2")


def test_a_dropped_tweet_is_copied_nowhere():
    """A rule's copy_to matched before a drop rule: the tweet is spam, its copies too."""
    copy_then_drop = configured([
        {"name": "deals", "when": {"handles": ["@AcmeHelp"]}, "then": {"copy_to": ["sales"]}},
        {"name": "spam", "when": {"keywords": ["crypto"]}, "then": {"drop": True}},
    ])  # fmt: skip
    to_help = {"addressed_handles": ["@AcmeHelp"]}
    spam = classified("marketing", 0.9, text="free crypto giveaway", **to_help)
    outcome = evaluate(spam, copy_then_drop, None, NOW)
    assert outcome.destination == "dropped" and outcome.copies == []
    kept = evaluate(classified("marketing", 0.9, text="a deal?", **to_help), copy_then_drop,
                    None, NOW)  # fmt: skip
    assert kept.copies == [Department.SALES]


def test_a_tweet_sent_to_triage_keeps_its_copy_to_the_models_department():
    """The copy is the only way that department sees the tweet: triage is the primary topic,
    whatever department the model guessed."""
    legal_copy = configured([
        {"name": "legal-copy", "when": {"keywords": ["lawsuit"]}, "then": {"copy_to": ["legal"]}},
    ])  # fmt: skip
    unsure = evaluate(classified("legal", 0.3, text="I will file a lawsuit"), legal_copy, None, NOW)
    assert unsure.destination == "triage" and unsure.copies == [Department.LEGAL]
    sure = evaluate(classified("legal", 0.9, text="I will file a lawsuit"), legal_copy, None, NOW)
    assert sure.destination == "department" and sure.copies == []


def test_no_version_of_an_alerted_post_alerts_again():
    """X gives each edit its own id: neither the first edit of an alerted post nor a later one
    pages again; an edit that turns a post critical alerts once, and its next edit does not."""
    _, state = routed_state(classified("it_security", 0.9, "critical", conversation_id="e1",
                                       id="v1"))  # fmt: skip
    for version in ("v2", "v3"):
        outcome, state = routed_state(
            classified("it_security", 0.9, "critical", conversation_id="e1", id=version,
                       edit_of="v1"), state=state,
        )  # fmt: skip
        assert not outcome.escalated, version
    _, state = routed_state(classified("it_security", 0.9, "normal", conversation_id="e2",
                                       id="w1"))  # fmt: skip
    first, state = routed_state(classified("it_security", 0.9, "critical", conversation_id="e2",
                                           id="w2", edit_of="w1"), state=state)  # fmt: skip
    again, _ = routed_state(classified("it_security", 0.9, "critical", conversation_id="e2",
                                       id="w3", edit_of="w1"), state=state)  # fmt: skip
    assert first.escalated and not again.escalated
    assert "an edit of tweet w1, whose alert was raised for its version w2" in again.reasons


def test_an_alert_urgency_without_an_sla_fails_naming_the_key():
    sla = {"minutes": {"critical": 15}, "alert_urgencies": ["critical", "high"]}
    with pytest.raises(ValidationError, match="sla.alert_urgencies: high has no entry in sla"):
        configured(sla=sla)
    legal = [
        {"name": "legal-sla", "when": {"urgencies": ["critical"]}, "then": {"sla_minutes": 60}}
    ]  # a rule for another urgency gives high nothing
    with pytest.raises(ValidationError, match="sla.alert_urgencies: high has no entry in sla"):
        configured(legal, sla=sla)
    some = [{"name": "legal-high", "when": {"urgencies": ["high"], "departments": ["legal"]},
             "then": {"sla_minutes": 60}}]  # fmt: skip
    with pytest.raises(
        ValidationError, match="high has no entry in sla.minutes and no rule for all"
    ):
        configured(some, sla=sla)  # high tweets of other departments would never alert
    # a rule for every tweet of that urgency may give it its SLA
    ruled = [{"name": "high-sla", "when": {"urgencies": ["high"]}, "then": {"sla_minutes": 60}}]
    assert configured(ruled, sla=sla).route.sla.alert_urgencies == [Urgency.CRITICAL, Urgency.HIGH]


@pytest.mark.parametrize(
    ("when", "key", "says"),
    [
        ({"keywords": []}, "rules.0.when.keywords", "at least 1 item"),
        ({"departments": []}, "rules.0.when.departments", "at least 1 item"),
        ({"confidence_min": 0.8, "confidence_max": 0.5}, "rules.0.when", "above confidence_max"),
        ({"time": {"start": "09:00", "end": "09:00"}}, "rules.0.when.time", "holds no time"),
        ({"time": {"days": []}}, "rules.0.when.time.days", "at least 1 item"),
    ],
)
def test_a_rule_that_could_never_match_fails_naming_the_key(when, key, says):
    rule = [{"name": "never", "when": when, "then": {"triage": True}}]
    with pytest.raises(ValidationError, match=says) as refused:
        configured(rule)
    assert f"route.{key}\n" in str(refused.value), str(refused.value)


def test_a_spike_keyword_given_twice_fails_naming_both():
    with pytest.raises(ValidationError, match=r"keywords\[2\] 'Outage' repeats keywords\[0\]"):
        configured(spikes={"keywords": ["outage", "recall", "Outage"]})


def test_a_guess_sent_to_triage_does_not_own_the_conversation():
    """The first tweet's department is a guess below the threshold (triage): the next tweet,
    confident of another, goes there and owns the conversation from then on."""
    guess, state = routed_state(classified("sales", 0.30, conversation_id="g1", id="g-1"))
    assert guess.destination == "triage" and not state.owner_confirmed
    sure, state = routed_state(
        classified("customer_service", 0.70, conversation_id="g1", id="g-2"), state=state
    )
    assert (sure.destination, sure.department, sure.owner) == (
        "department", Department.CUSTOMER_SERVICE, "model",
    )  # fmt: skip
    assert state.owner_confirmed and state.department is Department.CUSTOMER_SERVICE
    held, _ = routed_state(classified("sales", 0.40, conversation_id="g1", id="g-3"), state=state)
    assert (held.destination, held.department, held.owner) == (
        "department", Department.CUSTOMER_SERVICE, "conversation",
    )  # fmt: skip


def test_only_the_latest_decisions_are_kept():
    state = None
    for i in range(conversations.REMEMBERED + 5):
        _, state = routed_state(
            classified("sales", 0.9, conversation_id="c9", id=f"t{i}"), state=state
        )
    assert len(state.routed) == conversations.REMEMBERED
    assert conversations.decided(state, "t0") is None
    assert conversations.decided(state, f"t{conversations.REMEMBERED + 4}") is not None


def test_ownership_expires_after_its_window():
    _, state = routed_state(classified("customer_service", 0.9, conversation_id="c4"))
    assert conversations.active(state, NOW + timedelta(hours=71), 72)
    assert not conversations.active(state, NOW + timedelta(hours=73), 72)


def test_a_brand_reply_answers_the_first_awaited_tweet():
    first = classified("customer_service", 0.9, "critical", conversation_id="c5", id="t1")
    _, state = routed_state(first)
    _, state = routed_state(
        classified("customer_service", 0.9, "normal", conversation_id="c5", id="t2"), state=state
    )
    assert state.awaiting.tweet_id == "t1" and state.awaiting.urgency is Urgency.CRITICAL
    received = state.awaiting.received_at
    reply = BrandTweet(
        handle="@AcmeHelp",
        tweet=a_tweet(id="r1", conversation_id="c5", created_at=received + timedelta(minutes=12),
                      author=Author(id="1", username="AcmeHelp")),
        trace=Trace(ingested_at=received),
    )  # fmt: skip
    state, response = conversations.after_brand_reply(state, reply, NOW)
    assert state.awaiting is None and response.seconds == pytest.approx(12 * 60)


def test_an_edit_of_an_answered_tweet_awaits_no_second_reply():
    """X gives an edit an id and a time of its own: the customer fixing a typo after the
    company answered does not open the conversation again (nor page its SLA)."""
    written = NOW - timedelta(minutes=10)
    _, state = routed_state(classified("it_security", 0.9, "critical", conversation_id="c11",
                                       id="p1", created_at=written))  # fmt: skip
    reply = BrandTweet(
        handle="@AcmeHelp",
        tweet=a_tweet(id="r1", conversation_id="c11", created_at=written + timedelta(minutes=2),
                      author=Author(id="1", username="AcmeHelp")),
        trace=Trace(ingested_at=written + timedelta(minutes=2)),
    )  # fmt: skip
    state, _ = conversations.after_brand_reply(state, reply, NOW)
    edit = classified("it_security", 0.9, "critical", conversation_id="c11", id="p2",
                      edit_of="p1", created_at=written + timedelta(minutes=5))  # fmt: skip
    _, state = routed_state(edit, state=state)
    assert state.awaiting is None
    later = classified("it_security", 0.9, "critical", conversation_id="c11", id="p3",
                       created_at=written + timedelta(minutes=6))  # fmt: skip
    _, state = routed_state(later, state=state)  # a new tweet after the reply is awaited
    assert state.awaiting is not None and state.awaiting.tweet_id == "p3"


def test_a_reply_read_after_a_tweet_written_after_it_does_not_answer_that_tweet():
    """Behind a backlog route may read a customer's 10:05 tweet before the company's 10:02
    message: the message cannot answer what was not written yet, so the tweet stays awaited."""
    written = NOW - timedelta(minutes=10)
    _, state = routed_state(classified("it_security", 0.9, "critical", conversation_id="c12",
                                       id="q1", created_at=written))  # fmt: skip
    earlier = BrandTweet(
        handle="@AcmeHelp",
        tweet=a_tweet(id="r0", conversation_id="c12", created_at=written - timedelta(minutes=3),
                      author=Author(id="1", username="AcmeHelp")),
        trace=Trace(ingested_at=NOW),
    )  # fmt: skip
    state, response = conversations.after_brand_reply(state, earlier, NOW)
    assert response is None and state.awaiting is not None and state.awaiting.tweet_id == "q1"
    later = earlier.model_copy(update={"tweet": earlier.tweet.model_copy(
        update={"id": "r1", "created_at": written + timedelta(minutes=4)})})  # fmt: skip
    state, response = conversations.after_brand_reply(state, later, NOW)
    assert state.awaiting is None and response is not None


def test_a_deletion_of_any_version_forgets_every_version_of_the_post():
    _, state = routed_state(classified("it_security", 0.9, "critical", conversation_id="c13",
                                       id="v1", text="my account was hacked"))  # fmt: skip
    for version in ("v2", "v3"):
        _, state = routed_state(
            classified("it_security", 0.9, "critical", conversation_id="c13", id=version,
                       edit_of="v1", text="my account was hacked!!"), state=state,
        )  # fmt: skip
    _, state = routed_state(classified("it_security", 0.9, "normal", conversation_id="c13",
                                       id="other"), state=state)  # fmt: skip
    kept = conversations.without(state, "v2")  # X named a later version
    assert list(kept.recent) == ["other"]


def test_a_deleted_awaited_tweet_leaves_the_conversations_other_unanswered_tweets_awaited():
    """Delete and post again: the new tweet is still owed a reply, on its own clock and SLA;
    a dropped tweet, or one written before the company's last reply, is owed none."""
    written = NOW - timedelta(minutes=20)
    first = classified("customer_service", 0.9, "high", conversation_id="c14", id="d1",
                       created_at=written)  # fmt: skip
    _, state = routed_state(first)
    state, _ = conversations.after_brand_reply(state, reply_in("c14", written), NOW)
    posted = classified("customer_service", 0.9, "high", conversation_id="c14", id="d2",
                        created_at=written + timedelta(minutes=1))  # fmt: skip
    _, state = routed_state(posted, state=state)
    drop_crypto = configured([{"name": "spam", "when": {"keywords": ["crypto"]},
                               "then": {"drop": True}}])  # fmt: skip
    spam = classified("customer_service", 0.9, "high", conversation_id="c14", id="d3",
                      text="free crypto", created_at=written + timedelta(minutes=2))  # fmt: skip
    dropped, state = routed_state(spam, config=drop_crypto, state=state)
    assert dropped.destination == "dropped"
    again = classified("customer_service", 0.9, "high", conversation_id="c14", id="d4",
                       created_at=written + timedelta(minutes=3))  # fmt: skip
    again_outcome, state = routed_state(again, state=state)
    assert state.awaiting.tweet_id == "d2"
    kept = conversations.without(state, "d2")
    awaiting = kept.awaiting
    assert awaiting is not None and awaiting.tweet_id == "d4"
    assert awaiting.received_at == max(again.tweet.created_at, again.trace.ingested_at)
    assert awaiting.due_at == again_outcome.sla_due_at is not None
    assert awaiting.classification == again.classification and awaiting.tweet == again.tweet
    assert conversations.without(kept, "d4").awaiting is None  # nothing else is owed a reply


def corrected_to_critical(state, conversation_id: str, tweet_id: str):  # noqa: ANN001, ANN201
    """The conversation once a person (through the API) corrects ``tweet_id`` to critical."""
    sla = {Urgency(u): m for u, m in DEFAULTS.route.sla.minutes.items()}
    correction = CorrectionRequest(correction_id=f"api:{tweet_id}", conversation_id=conversation_id,
                                   tweet_id=tweet_id, source="api", by="ana", made_at=NOW,
                                   urgency=Urgency.CRITICAL)  # fmt: skip
    return feedback.apply(state, correction, NOW, sla_minutes=sla,
                          alert_urgencies=[Urgency.CRITICAL]).state  # fmt: skip


def test_a_tweet_corrected_to_more_urgent_is_awaited_by_its_new_sla():
    """A person corrects a follow-up from normal to critical while the first tweet is awaited:
    the follow-up is awaited now, as critical, due 30 minutes after it came (not at its normal
    deadline of a day), the clock still the first tweet's; and still once the first is
    deleted."""
    written = NOW - timedelta(minutes=20)
    _, state = routed_state(classified("customer_service", 0.9, "normal", conversation_id="c16",
                                       id="e1", created_at=written))  # fmt: skip
    follow_up = classified("customer_service", 0.9, "normal", conversation_id="c16", id="e2",
                           created_at=written + timedelta(minutes=1))  # fmt: skip
    _, state = routed_state(follow_up, state=state)
    sla = {Urgency(u): m for u, m in DEFAULTS.route.sla.minutes.items()}
    corrected = corrected_to_critical(state, "c16", "e2")
    arrived = max(follow_up.tweet.created_at, follow_up.trace.ingested_at)
    due = arrived + timedelta(minutes=sla[Urgency.CRITICAL])
    assert corrected is not None and corrected.awaiting is not None
    assert (corrected.awaiting.tweet_id, corrected.awaiting.urgency) == ("e2", Urgency.CRITICAL)
    assert corrected.awaiting.due_at == due
    assert corrected.awaiting.received_at == state.awaiting.received_at  # the first's clock
    awaiting = conversations.without(corrected, "e1").awaiting
    assert awaiting is not None
    assert (awaiting.tweet_id, awaiting.urgency, awaiting.due_at) == ("e2", Urgency.CRITICAL, due)


def test_an_edit_of_an_answered_post_corrected_to_critical_awaits_nothing():
    """The company answered the post; its author edits it (X gives the edit an id and a time
    of its own) and a person corrects the edit to critical: the post was answered, so no
    reply is awaited and no SLA alert can come."""
    written = NOW - timedelta(minutes=20)
    _, state = routed_state(classified("customer_service", 0.9, "normal", conversation_id="c17",
                                       id="p1", created_at=written))  # fmt: skip
    state, _ = conversations.after_brand_reply(
        state, reply_in("c17", written + timedelta(minutes=5)), NOW
    )
    edit = classified("customer_service", 0.9, "normal", conversation_id="c17", id="p2",
                      edit_of="p1", created_at=written + timedelta(minutes=10))  # fmt: skip
    _, state = routed_state(edit, state=state)
    assert state.awaiting is None
    corrected = corrected_to_critical(state, "c17", "p2")
    assert corrected is not None and corrected.awaiting is None


def test_a_reply_written_between_two_tweets_read_after_both_answers_only_the_first():
    written = NOW - timedelta(minutes=20)
    first = classified("customer_service", 0.9, "normal", conversation_id="c15", id="b1",
                       created_at=written)  # fmt: skip
    _, state = routed_state(first)
    second = classified("customer_service", 0.9, "normal", conversation_id="c15", id="b2",
                        created_at=written + timedelta(minutes=10))  # fmt: skip
    second_outcome, state = routed_state(second, state=state)
    state, response = conversations.after_brand_reply(
        state, reply_in("c15", written + timedelta(minutes=5)), NOW
    )
    assert response is not None and response.awaited.tweet_id == "b1"
    assert state.awaiting is not None and state.awaiting.tweet_id == "b2"
    assert state.awaiting.due_at == second_outcome.sla_due_at
    assert state.awaiting.received_at == max(second.tweet.created_at, second.trace.ingested_at)
    state, response = conversations.after_brand_reply(
        state, reply_in("c15", written + timedelta(minutes=11)), NOW
    )
    assert response.awaited.tweet_id == "b2" and state.awaiting is None


def test_a_stricter_sla_from_a_later_tweet_names_that_tweet_and_keeps_the_clock():
    _, state = routed_state(classified("customer_service", 0.9, "normal", conversation_id="c10",
                                       id="n1"))  # fmt: skip
    received = state.awaiting.received_at
    _, state = routed_state(
        classified("customer_service", 0.9, "critical", conversation_id="c10", id="k2",
                   text="a gas smell in the building"),
        state=state,
    )  # fmt: skip
    awaiting = state.awaiting
    assert (awaiting.tweet_id, awaiting.urgency) == ("k2", Urgency.CRITICAL)
    assert awaiting.tweet.text == "a gas smell in the building"
    assert awaiting.classification.urgency is Urgency.CRITICAL
    assert awaiting.received_at == received  # the response time counts from the first


def test_a_later_critical_tweet_is_awaited_over_an_earlier_deadline_that_alerts_nobody():
    """A high tweet (SLA 240 minutes, no alert) then, 225 minutes later, a critical one (SLA 30
    minutes, alerting): the critical one is awaited, so its breach alerts, though its deadline
    comes after the high one's."""

    def at(event, when):  # noqa: ANN001, ANN202
        tweet = event.tweet.model_copy(update={"created_at": when})
        trace = event.trace.model_copy(update={"ingested_at": when})
        return event.model_copy(update={"tweet": tweet, "trace": trace})

    alerting = DEFAULTS.route.sla.alert_urgencies
    assert alerting == [Urgency.CRITICAL]
    high = at(classified("customer_service", 0.9, "high", conversation_id="c30", id="h1"), NOW)
    outcome = evaluate(high, DEFAULTS, None, NOW)
    first = conversations.after_routing(None, high, outcome, decision(outcome), NOW,
                                        alerting=alerting)  # fmt: skip
    later = NOW + timedelta(minutes=225)
    critical = at(classified("customer_service", 0.9, "critical", conversation_id="c30",
                             id="k2"), later)  # fmt: skip
    outcome = evaluate(critical, DEFAULTS, first, later)
    state = conversations.after_routing(first, critical, outcome, decision(outcome), later,
                                        alerting=alerting)  # fmt: skip
    assert state.awaiting.tweet_id == "k2"
    assert state.awaiting.due_at == later + timedelta(minutes=30)
    assert state.awaiting.received_at == first.awaiting.received_at  # the clock stays
    past = later + timedelta(minutes=31)
    assert conversations.breached(state, past, alerting)
    # every urgency alerting alike: the earlier deadline is kept, as before
    alike = conversations.after_routing(first, critical, outcome, decision(outcome), later)
    assert alike.awaiting.tweet_id == "h1"


def test_the_largest_conversation_route_keeps_fits_the_smallest_message_size_allowed():
    """Every tweet of 25,000 characters that JSON writes longest (control characters, six bytes
    each), every list of the conversation full: still one changelog record any cluster
    Switchboard accepts takes (KAFKA_MAX_MESSAGE_BYTES has a floor), or route could not save it."""
    text = "\u0001" * MAX_TEXT_CHARS
    state = None
    for n in range(1, 40):
        event = classified("legal", 0.9, "critical", text=text, id=str(n), conversation_id="c")
        _, state = routed_state(event, state=state, offset=2**63 - n)  # offsets: longest too
    assert state is not None and len(state.recent) == conversations.RECENT
    for n in range(conversations.REPLIED_TO_KEPT + 1):  # the company answered as many authors
        reply = reply_to("c", NOW + timedelta(seconds=n), str(2**63 - n))
        state, _ = conversations.after_brand_reply(state, reply, NOW)
    assert len(state.replied_to) == conversations.REPLIED_TO_KEPT
    assert state.awaiting is not None and len(state.routed) == conversations.REMEMBERED
    assert state.routed_offsets.keys() == state.routed.keys()  # kept for what is remembered
    [floor] = [m.ge for m in KafkaSettings.model_fields["max_message_bytes"].metadata]
    assert len(encode(state)) < floor


def test_routing_a_tweet_keeps_the_conversations_applied_corrections():
    _, state = routed_state(classified("sales", 0.9, conversation_id="c11", id="a1"))
    applied = Correction(
        correction_id="fix-1", conversation_id="c11", tweet_id="a1", source="ops", by="ana",
        made_at=NOW, outcome="rerouted", department_before=Department.SALES,
        department=Department.LEGAL, urgency=Urgency.NORMAL, model_version="test",
    )  # fmt: skip
    state = state.model_copy(update={"corrections": ["fix-1"], "applied": [applied],
                                     "correction_offset": 41})  # fmt: skip
    _, state = routed_state(classified("sales", 0.9, conversation_id="c11", id="a2"), state=state)
    assert (state.corrections, state.applied, state.correction_offset) == (["fix-1"], [applied], 41)


def reply_in(conversation: str, written: datetime) -> BrandTweet:
    return BrandTweet(
        handle="@AcmeHelp",
        tweet=a_tweet(id=f"r-{written.timestamp()}", conversation_id=conversation,
                      created_at=written, author=Author(id="1", username="AcmeHelp")),
        trace=Trace(ingested_at=written),
    )  # fmt: skip


def test_a_tweet_written_before_a_reply_route_read_first_awaits_nothing():
    """Replies skip classify: when it lags, route reads the company's reply before the tweet
    it answers. That tweet, and any other written before the reply, awaits no reply (no SLA
    alert for an answered conversation); one written after the reply does."""
    critical = classified("it_security", 0.9, "critical", conversation_id="c12", id="k1")
    written = critical.tweet.created_at
    outcome = evaluate(critical, DEFAULTS, None, NOW)  # no state: the note is EarlyReplies
    state = conversations.after_routing(None, critical, outcome, decision(outcome), NOW,
                                        early={"*": written + timedelta(minutes=2)})  # fmt: skip
    assert state.awaiting is None and state.replied_at == written + timedelta(minutes=2)
    same_time = classified("it_security", 0.9, "critical", conversation_id="c12", id="k2",
                           created_at=written + timedelta(minutes=1))  # fmt: skip
    _, state = routed_state(same_time, state=state)
    assert state.awaiting is None  # also written before the reply
    later = classified("it_security", 0.9, "critical", conversation_id="c12", id="k3",
                       created_at=written + timedelta(minutes=3))  # fmt: skip
    _, state = routed_state(later, state=state)
    assert state.awaiting.tweet_id == "k3"


def test_a_reply_read_before_a_later_read_tweet_of_a_held_conversation_answers_it():
    first = classified("customer_service", 0.9, "normal", conversation_id="c13", id="f1")
    _, state = routed_state(first)
    written = first.tweet.created_at
    reply = reply_in("c13", written + timedelta(minutes=5))
    state, _ = conversations.after_brand_reply(state, reply, NOW)
    assert state.awaiting is None
    behind = classified(
        "customer_service",
        0.9,
        "critical",
        conversation_id="c13",
        id="f2",
        created_at=written + timedelta(minutes=4),
    )  # read after the reply
    _, state = routed_state(behind, state=state)
    assert state.awaiting is None


def test_an_sla_breach_is_reported_once_for_alerting_urgencies():
    _, state = routed_state(classified("it_security", 0.9, "critical", conversation_id="c6"))
    due = state.awaiting.due_at
    assert not conversations.breached(state, due - timedelta(seconds=1), [Urgency.CRITICAL])
    assert conversations.breached(state, due + timedelta(seconds=1), [Urgency.CRITICAL])
    assert not conversations.breached(state, due + timedelta(seconds=1), [Urgency.HIGH])
    alerted = state.model_copy(
        update={"awaiting": state.awaiting.model_copy(update={"breach_alerted": True})}
    )
    assert not conversations.breached(alerted, due + timedelta(hours=1), [Urgency.CRITICAL])


# --- spikes --------------------------------------------------------------------------------


def _alerts(config: SpikeConfig, tweets_per_window: list[int], warm: bool = True) -> list[int]:
    """Feed ``judge`` window by window, one tweet at a time, the way route's spike agent does;
    the windows in which it alerted (the history is read from the windows before)."""
    alerted, episode, totals = [], None, []
    for window, tweets in enumerate(tweets_per_window):
        history = [*reversed(totals[-config.baseline_windows :])]
        history += [0] * (config.baseline_windows - len(history))
        for count in range(1, tweets + 1):
            verdict = judge(config, window, count, history, episode, warm)
            episode = verdict.episode
            if verdict.spike:
                alerted.append(window)
        totals.append(tweets)
    return alerted


def test_a_burst_raises_one_alert_per_episode():
    config = SpikeConfig(window_minutes=1, baseline_windows=10, factor=3, min_count=5)
    trickle = [1] * 10  # a steady tweet a minute: baseline 1, bar max(5, 3 x 1) = 5
    assert _alerts(config, trickle) == []
    # A burst of 20 alerts once, at the 5th tweet; going on in the next window is the same
    # episode; a quiet window ends it and the next burst is a new episode.
    assert _alerts(config, [*trickle, 20, 20, 0, 0, 20]) == [10, 14]


def test_a_spike_needs_its_bar_and_a_warm_detector():
    config = SpikeConfig(window_minutes=1, baseline_windows=4, factor=3, min_count=5)
    assert _alerts(config, [4, 4, 4, 4, 11]) == []  # 11 < 3 x baseline 4
    assert _alerts(config, [4, 4, 4, 4, 12]) == [4]
    assert _alerts(config, [0, 0, 0, 0, 50], warm=False) == []  # just started: no history yet
    # a baseline below one tweet per window counts as one
    assert bar(config, 0.2) == 5 and bar(config, 2.0) == 6


def test_what_a_reload_begins_to_watch_warms_up_from_the_reload():
    """A keyword, a dimension or spikes themselves added by a reload have no history: judged at
    once, the first busy window of a new keyword would look like a crisis."""
    before = SpikeConfig(keywords=["Recall"], dimensions=["department", "keyword"])
    after = before.model_copy(
        update={"keywords": ["recall", "Outage"], "dimensions": ["department", "handle", "keyword"]}
    )
    assert newly_watched(before, after) == {"handle", "keyword:outage"}
    assert newly_watched(before, before) == set()
    off = before.model_copy(update={"enabled": False})
    assert newly_watched(off, before) == {"department", "keyword"}
    assert newly_watched(before, off) == set()
    added = dict.fromkeys(newly_watched(before, after), 500.0)
    assert watched_since("keyword:Outage", 100.0, added) == 500.0
    assert watched_since("handle:@AcmeHelp", 100.0, added) == 500.0
    assert watched_since("keyword:Recall", 100.0, added) == 100.0  # watched from the start
    assert watched_since("department:legal", 100.0, added) == 100.0


def test_keywords_and_handles_are_watched_separately():
    keys = SpikeKeys(SpikeConfig(keywords=["recall"], dimensions=["handle", "keyword"]))
    tweet = a_tweet(text="is this a RECALL? recalled", addressed_handles=["@AcmeHelp"])
    assert keys.of(tweet, Department.LEGAL) == [("handle", "@AcmeHelp"), ("keyword", "recall")]
    assert keys.of(a_tweet(text="recalled"), Department.LEGAL) == [("handle", "@SkylarkDeals")]


def test_the_spike_tally_publishes_one_observation_per_key_with_its_count_and_samples():
    tally = SpikeTally(window_s=60.0)
    for i in range(7):
        tweet = a_tweet(id=f"t{i}")
        keys = [("department", "billing"), ("handle", "@acme")] if i < 5 else [("keyword", "x")]
        tally.add(keys, tweet, samples=3, at=CAME_IN + timedelta(seconds=i))
    outputs = {output.key: decode(SpikeObservation, output.value) for output in tally.drain()}
    assert set(outputs) == {b"department:billing", b"handle:@acme", b"keyword:x"}
    billing = outputs[b"department:billing"]
    assert billing.count == 5
    assert [t.id for t in [billing.tweet, *billing.more]] == ["t0", "t1", "t2"]
    assert outputs[b"keyword:x"].count == 2 and len(outputs[b"keyword:x"].more) == 1
    assert tally.drain() == []  # drained: nothing counted twice


def test_a_deleted_tweets_withdrawals_follow_the_counts_that_may_carry_it():
    """Withdrawn after the counts drained with it, one of which may still carry it as a
    sample: the key's owner adds the sample, then takes it out. Each withdrawal names the key
    and the window the tweet was counted in, whatever its department is now."""
    tally = SpikeTally(window_s=60.0)
    tally.add([("keyword", "outage"), ("department", "legal")], a_tweet(id="t0"), samples=3,
              at=CAME_IN)  # fmt: skip
    tally.withdraw("t0", SpikeCount(keys=["keyword:outage", "department:legal"], at=CAME_IN))
    outputs = tally.drain()
    observations = [decode_spike(o.value) for o in outputs[:2]]
    assert [o.tweet.id for o in observations] == ["t0", "t0"]
    withdrawn = [decode_spike(o.value) for o in outputs[2:]]
    assert [(w.dimension, w.value, w.tweet_id, w.observed_at) for w in withdrawn] == [
        ("keyword", "outage", "t0", CAME_IN),
        ("department", "legal", "t0", CAME_IN),
    ]
    assert [o.key for o in outputs[2:]] == [b"keyword:outage", b"department:legal"]
    assert {o.timestamp_ms for o in outputs[2:]} == {int(CAME_IN.timestamp() * 1000)}
    assert tally.drain() == []


def test_the_spike_tally_counts_each_tweet_in_the_window_it_came_in():
    """A backlog routed at once (upstream was down for three windows) is counted in the
    windows its tweets came in, each observation stamped within its window, oldest first: not
    as one window three times as busy."""
    tally = SpikeTally(window_s=60.0)
    start = CAME_IN.replace(second=0)  # a window's start
    for minute in (2, 0, 1):  # routed out of order, as partitions interleave
        for second in (5, 40):
            tweet = a_tweet(id=f"t{minute}-{second}")
            at = start + timedelta(minutes=minute, seconds=second)
            tally.add([("department", "billing")], tweet, samples=3, at=at)
    outputs = tally.drain()
    observations = [decode(SpikeObservation, o.value) for o in outputs]
    assert [o.count for o in observations] == [2, 2, 2]
    assert [o.observed_at for o in observations] == [
        start + timedelta(minutes=m, seconds=40) for m in (0, 1, 2)
    ]  # the latest time counted in each window
    assert [o.timestamp_ms for o in outputs] == [
        int(o.observed_at.timestamp() * 1000) for o in observations
    ]  # the windowed tables place each by its Kafka timestamp


@pytest.mark.parametrize("character", ["\u0001", "😀", "語", "a"])
def test_a_spike_observation_of_long_tweets_stays_within_the_smallest_message_size(character):
    """50 samples configured (the most allowed) and tweets of 25,000 characters, of those JSON
    or UTF-8 write longest: the samples stop at a byte budget, as the observation carries them
    and as faust's JSON keeps them in the table (non-ASCII escaped), and every tweet counts."""
    tally = SpikeTally(window_s=60.0)
    for i in range(60):
        tweet = a_tweet(id=f"t{i}", text=character * MAX_TEXT_CHARS)
        tally.add([("keyword", "outage")], tweet, samples=50, at=CAME_IN)
    [output] = tally.drain()
    observation = decode(SpikeObservation, output.value)
    samples = [t.model_dump(mode="json") for t in [observation.tweet, *observation.more]]
    [floor] = [m.ge for m in KafkaSettings.model_fields["max_message_bytes"].metadata]
    assert observation.count == 60 and 1 <= len(samples) < 50
    assert len(output.value) < floor / 2  # and room for the alert that carries them
    assert len(json.dumps(samples)) < floor / 2  # the table's record of them (faust's JSON)


def test_an_sla_breach_waits_until_the_replies_written_before_its_deadline_are_read():
    from datetime import UTC, datetime

    from switchboard.route.conversations import replies_read_until

    deadline = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    before, after = deadline.timestamp() - 5, deadline.timestamp() + 5
    # after a restart: replies committed up to offset 40, the partition holds 45: unread
    assert not replies_read_until(None, deadline, end=45, committed=40)
    assert replies_read_until(None, deadline, end=40, committed=40)  # nothing left to read
    assert replies_read_until(None, deadline, end=0, committed=None)  # an empty partition
    assert not replies_read_until(None, deadline, end=None, committed=40)  # end not known yet
    # handled up to offset 43, written before the deadline: 44 is still to read
    assert not replies_read_until((43, before), deadline, end=45, committed=40)
    assert replies_read_until((44, before), deadline, end=45, committed=40)
    # the last reply handled was written after the deadline: every earlier one was read
    assert replies_read_until((43, after), deadline, end=900, committed=40)


def test_a_tweet_is_read_again_only_from_the_record_it_was_routed_from():
    _, state = routed_state(classified("sales", 0.9, conversation_id="c12", id="t1"), offset=7)
    assert conversations.read_again(state, "t1", 7)  # the same record, after a crash
    assert not conversations.read_again(state, "t1", 8)  # a copy published again upstream
    assert not conversations.read_again(state, "t2", 7)
    assert not conversations.read_again(None, "t1", 7)


def reply_to(
    conversation: str, written: datetime, author_id: str | None = None, **fields
) -> BrandTweet:  # noqa: ANN003
    """The company's reply in a thread to the tweet of ``author_id`` (X's in_reply_to_user_id)."""
    reply = reply_in(conversation, written)
    tweet = reply.tweet.model_copy(update={"in_reply_to_user_id": author_id} | fields)
    return reply.model_copy(update={"tweet": tweet})


def in_thread(conversation: str, id: str, author_id: str, written: datetime, urgency: str,
              department: str = "customer_service") -> ClassifiedTweet:  # fmt: skip
    """A tweet of ``author_id`` in the thread, read as it was written."""
    author = Author(id=author_id, username=author_id)
    event = classified(department, 0.9, urgency, conversation_id=conversation, id=id,
                       created_at=written, author=author)  # fmt: skip
    return event.model_copy(update={"trace": Trace(ingested_at=written)})


def test_a_reply_to_one_customer_in_a_thread_leaves_the_others_awaited():
    """Everyone replying to one viral tweet shares its conversation id: answering customer A
    does not answer customer B's critical tweet, whose SLA still runs and then breaches, and
    the response measured is to A's tweet."""
    written = NOW - timedelta(minutes=20)
    mine = in_thread("v1", "a1", "100", written, "normal")
    _, state = routed_state(mine)
    theirs = in_thread("v1", "b1", "200", written + timedelta(minutes=1), "critical", "it_security")
    outcome, state = routed_state(theirs, state=state)
    assert state.awaiting.tweet_id == "b1"
    state, response = conversations.after_brand_reply(
        state, reply_to("v1", written + timedelta(minutes=5), "100"), NOW
    )
    assert response is not None and response.awaited.tweet_id == "a1"
    assert response.seconds == pytest.approx(5 * 60)
    assert state.awaiting is not None and state.awaiting.tweet_id == "b1"
    assert conversations.breached(state, outcome.sla_due_at + timedelta(seconds=1),
                                  [Urgency.CRITICAL])  # fmt: skip
    # A's follow-up written before that reply and read after it is answered; B's next is not
    late = in_thread("v1", "a2", "100", written + timedelta(minutes=4), "high")
    _, after = routed_state(late, state=state)
    assert after.awaiting.tweet_id == "b1" and after.replied_to == {"100": state.replied_to["100"]}
    state, response = conversations.after_brand_reply(
        after, reply_to("v1", written + timedelta(minutes=6), "200"), NOW
    )
    assert response.awaited.tweet_id == "b1" and state.awaiting is None


def test_answering_the_awaited_customer_leaves_the_next_customer_awaited():
    written = NOW - timedelta(minutes=20)
    _, state = routed_state(in_thread("v2", "a1", "100", written, "critical", "it_security"))
    second = in_thread("v2", "b1", "200", written + timedelta(minutes=1), "high")
    second_outcome, state = routed_state(second, state=state)
    assert state.awaiting.tweet_id == "a1"
    state, response = conversations.after_brand_reply(
        state, reply_to("v2", written + timedelta(minutes=3), "100"), NOW
    )
    assert response.awaited.tweet_id == "a1"
    assert state.awaiting is not None and state.awaiting.tweet_id == "b1"
    assert state.awaiting.due_at == second_outcome.sla_due_at


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param({"in_reply_to_user_id": None}, id="naming-no-one"),
        pytest.param({"in_reply_to_user_id": "100", "kind": "direct_message"}, id="a-dm"),
    ],
)
def test_a_reply_that_names_no_one_answers_everyone(reply):  # noqa: ANN001
    written = NOW - timedelta(minutes=20)
    _, state = routed_state(in_thread("v3", "a1", "100", written, "critical"))
    _, state = routed_state(in_thread("v3", "b1", "200", written, "critical"))
    answer = reply_to("v3", written + timedelta(minutes=2), **reply)
    state, response = conversations.after_brand_reply(state, answer, NOW)
    assert response is not None and state.awaiting is None
    assert state.replied_at == answer.tweet.created_at and state.replied_to == {}


def test_a_reply_read_before_the_thread_answers_only_its_addressee():
    """The company's reply to A, read before any tweet of the thread (classify lagging): A's
    tweet written before it awaits nothing, B's critical tweet does."""
    written = NOW - timedelta(minutes=20)
    early = {"100": written + timedelta(minutes=2)}
    a = in_thread("v4", "a1", "100", written, "critical", "it_security")
    outcome = evaluate(a, DEFAULTS, None, NOW)
    state = conversations.after_routing(None, a, outcome, decision(outcome), NOW, early=early)
    assert state.awaiting is None and state.replied_to == early
    b = in_thread("v4", "b1", "200", written, "critical", "it_security")
    _, state = routed_state(b, state=state)
    assert state.awaiting is not None and state.awaiting.tweet_id == "b1"


def test_a_conversation_remembers_the_latest_authors_answered():
    written = NOW - timedelta(hours=2)
    _, state = routed_state(in_thread("v5", "a1", "1", written, "normal"))
    for n in range(conversations.REPLIED_TO_KEPT + 8):
        state, _ = conversations.after_brand_reply(
            state, reply_to("v5", written + timedelta(minutes=n), f"u{n}"), NOW
        )
    assert len(state.replied_to) == conversations.REPLIED_TO_KEPT
    assert (
        "u0" not in state.replied_to and f"u{conversations.REPLIED_TO_KEPT + 7}" in state.replied_to
    )


BY_HANDLE = configured(unsure="handle")


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(classified("legal", 0.3, addressed_handles=["@acmeir", "@AcmeHelp"]),
                     id="unsure"),
        pytest.param(classified("sales", 0.9, lang="pt", language_supported=False,
                                addressed_handles=["@AcmeIR"]), id="a-language-not-trained-for"),
    ],
)  # fmt: skip
def test_route_unsure_handle_sends_what_the_model_cannot_place_to_the_handles_department(event):  # noqa: ANN001
    outcome = evaluate(event, BY_HANDLE, None, NOW)
    assert (outcome.destination, outcome.department, outcome.owner) == (
        "department", Department.INVESTOR_RELATIONS, "handle"
    )  # fmt: skip
    assert "@AcmeIR's default department investor_relations" in " ".join(outcome.reasons)
    # by default, and for a tweet addressing no handle the file has, triage
    assert evaluate(event, DEFAULTS, None, NOW).destination == "triage"
    elsewhere = event.model_copy(update={"tweet": event.tweet.model_copy(
        update={"addressed_handles": ["@SomeoneElse"]})})  # fmt: skip
    assert evaluate(elsewhere, BY_HANDLE, None, NOW).destination == "triage"


def test_a_handles_default_department_neither_overrides_nor_confirms_a_conversations_owner():
    unsure = {"addressed_handles": ["@AcmeIR"], "conversation_id": "h1"}
    # a confirmed owner keeps the unsure tweet
    _, owned = routed_state(classified("customer_service", 0.9, conversation_id="h1", id="o1"))
    kept = evaluate(classified("legal", 0.3, id="o2", **unsure), BY_HANDLE, owned, NOW)
    assert (kept.department, kept.owner) == (Department.CUSTOMER_SERVICE, "conversation")
    # a guess by the handle owns the conversation unconfirmed: the next sure tweet takes it
    first, state = routed_state(classified("legal", 0.3, id="g1", **unsure), config=BY_HANDLE)
    assert first.owner == "handle" and not state.owner_confirmed
    sure = evaluate(classified("sales", 0.6, id="g2", **unsure), BY_HANDLE, state, NOW)
    assert (sure.department, sure.owner) == (Department.SALES, "model")


def test_a_response_is_timed_from_the_addressees_own_tweet():
    """A's normal tweet keeps the conversation's clock; B's critical tweet ten minutes later is
    awaited: the company's reply to B two minutes after it took two minutes, not twelve."""
    written = NOW - timedelta(minutes=30)
    _, state = routed_state(in_thread("v6", "a1", "100", written, "normal"))
    b = in_thread("v6", "b1", "200", written + timedelta(minutes=10), "critical", "it_security")
    _, state = routed_state(b, state=state)
    assert state.awaiting.tweet_id == "b1" and state.awaiting.received_at == written
    state, response = conversations.after_brand_reply(
        state, reply_to("v6", written + timedelta(minutes=12), "200"), NOW
    )
    assert response.awaited.tweet_id == "b1" and response.tracked
    assert response.seconds == pytest.approx(2 * 60)
    assert state.awaiting.tweet_id == "a1"  # A still awaits
    state, response = conversations.after_brand_reply(
        state, reply_to("v6", written + timedelta(minutes=13), "100"), NOW
    )
    assert response.awaited.tweet_id == "a1" and response.seconds == pytest.approx(13 * 60)


def test_a_follow_up_in_the_companys_own_thread_answers_those_it_answered_before():
    """The company answers A, A writes again, and the company goes on in its own thread (a reply
    to its own tweet; X fills its mentions with the chain, A and B): A's new tweet is answered,
    B's, whom the company never answered, is not, nor by a reply to another handle's tweet."""
    written = NOW - timedelta(minutes=30)
    _, state = routed_state(in_thread("v7", "a1", "100", written, "high"))
    state, _ = conversations.after_brand_reply(
        state, reply_to("v7", written + timedelta(minutes=1), "100"), NOW
    )
    _, state = routed_state(in_thread("v7", "a2", "100", written + timedelta(minutes=2), "high"),
                            state=state)  # fmt: skip
    _, state = routed_state(in_thread("v7", "b1", "200", written + timedelta(minutes=3), "high"),
                            state=state)  # fmt: skip
    assert state.awaiting.tweet_id == "a2"
    own = reply_in("v7", written).tweet.author.id  # the company's handle
    follow_up = reply_to("v7", written + timedelta(minutes=4), own, mentions=["100", "200"])
    state, response = conversations.after_brand_reply(state, follow_up, NOW)
    assert response is not None and response.awaited.tweet_id == "a2"
    assert state.awaiting is not None and state.awaiting.tweet_id == "b1"
    # a reply to another company handle's tweet is a follow-up too (``company``: their ids)
    other = reply_to("v7", written + timedelta(minutes=5), "77", mentions=["200"])
    state, response = conversations.after_brand_reply(state, other, NOW, company={"77"})
    assert response is None and state.awaiting.tweet_id == "b1"


def test_the_bound_on_authors_answered_keeps_the_reply_to_everyone():
    written = NOW - timedelta(hours=2)
    replies = {conversations.EVERYONE: written}
    for n in range(conversations.REPLIED_TO_KEPT + 4):
        replies[f"u{n}"] = written + timedelta(minutes=n + 1)
    kept = conversations.bounded(replies)
    assert kept[conversations.EVERYONE] == written
    assert len(kept) == conversations.REPLIED_TO_KEPT + 1 and "u0" not in kept


def test_a_correction_making_the_awaited_tweet_less_urgent_leaves_the_next_critical_awaited():
    """Two critical tweets unanswered; a person lowers the awaited one to low: the other one's
    SLA, which alerts, is awaited now (it was hidden behind a seven-day deadline)."""
    written = NOW - timedelta(minutes=10)
    _, state = routed_state(in_thread("c40", "k1", "100", written, "critical"))
    second = in_thread("c40", "k2", "100", written + timedelta(minutes=2), "critical")
    second_outcome, state = routed_state(second, state=state)
    assert state.awaiting.tweet_id == "k1"
    sla = {Urgency(u): m for u, m in DEFAULTS.route.sla.minutes.items()}
    lowered = CorrectionRequest(correction_id="api:k1", conversation_id="c40", tweet_id="k1",
                                source="api", by="ana", made_at=NOW,
                                urgency=Urgency.LOW)  # fmt: skip
    applied = feedback.apply(state, lowered, NOW, sla_minutes=sla,
                             alert_urgencies=[Urgency.CRITICAL],
                             sla_alerting=[Urgency.CRITICAL])  # fmt: skip
    awaiting = applied.state.awaiting
    assert (awaiting.tweet_id, awaiting.urgency) == ("k2", Urgency.CRITICAL)
    assert awaiting.due_at == second_outcome.sla_due_at


def test_a_reload_names_the_changed_keys_route_applies_only_at_its_next_start():
    from switchboard.route.service import at_restart

    started = configured()
    assert at_restart(started, configured(confidence_threshold=0.7)) == []  # applied now
    changed = configured(
        spikes={"window_minutes": 10}, sla={"check_interval_s": 5},
        conversations={"ttl_hours": 24},
    )  # fmt: skip
    assert at_restart(started, changed) == [
        "route.spikes.window_minutes", "route.sla.check_interval_s",
        "route.conversations.ttl_hours (early replies and deletions)",
    ]  # fmt: skip
    locked = started.model_copy(update={"access": started.access.model_copy(
        update={"lock_views": not started.access.lock_views})})  # fmt: skip
    assert at_restart(started, locked) == ["access"]
