"""Filtered-stream rules follow the configured handles; synchronization owns only its rules."""

from __future__ import annotations

import pytest

from switchboard.cli.config import SwitchboardConfig
from switchboard.ingest.config import XConfig
from switchboard.ingest.rules import StreamRule, desired_rules, handle_terms, plan_sync
from tests.standins.x_api import DOCUMENTED_LIMITS, XApiStandIn


def configured(**ingest: object) -> SwitchboardConfig:
    return SwitchboardConfig.model_validate(
        {
            "handles": [
                {
                    "handle": "@AcmeHelp",
                    "user_id": "1",
                    "brand": "Acme",
                    "segment": "support",
                    "default_department": "customer_service",
                    "listen": {
                        "keywords": ["acme outage"],
                        "hashtags": ["#AcmeDown"],
                        "cashtags": ["acme"],
                    },
                },
                {
                    "handle": "@AcmeIR",
                    "user_id": "2",
                    "brand": "Acme",
                    "segment": "investor",
                    "default_department": "investor_relations",
                },
            ],
            "ingest": ingest,
        }
    )


def test_each_handle_gets_a_rule_tagged_with_it():
    rules = desired_rules(configured())
    assert [r.tag for r in rules] == ["switchboard:@AcmeHelp", "switchboard:@AcmeIR"]
    help_rule = rules[0].value
    for term in (
        "@AcmeHelp",
        "to:AcmeHelp",
        "from:AcmeHelp",
        '"acme outage"',
        "#AcmeDown",
        "$ACME",
    ):
        assert term in help_rule
    assert help_rule.endswith(" -is:retweet")


def test_retweets_are_asked_for_only_when_configured():
    rules = desired_rules(configured(include_retweets=True))
    assert all("-is:retweet" not in r.value for r in rules)


def test_terms_beyond_one_rule_length_spill_into_numbered_rules():
    config = configured(x={"filtered_stream": {"max_rule_length": 64}})
    rules = [r for r in desired_rules(config) if r.tag.startswith("switchboard:@AcmeHelp")]
    tag = "switchboard:@AcmeHelp"
    assert len(rules) >= 2
    assert [r.tag for r in rules] == [tag, *(f"{tag}#{n}" for n in range(2, len(rules) + 1))]
    assert all(len(r.value) <= 64 for r in rules)
    # so is every variant tried after a DuplicateRule: X counts the whole string
    variants_tried = []
    for rule in rules:
        while (rule := rule.variant()) is not None:
            variants_tried.append(rule.value)
    assert len(variants_tried) == 2 * len(rules) and all(len(v) <= 64 for v in variants_tried)
    covered = " ".join(r.value for r in rules)
    assert all(term in covered for term in handle_terms(config.handles[0]))


def test_sync_adds_missing_deletes_stale_and_ignores_foreign_rules():
    desired = [StreamRule("@A", "switchboard:@A"), StreamRule("@B", "switchboard:@B")]
    existing = [
        {"id": "1", "value": "@A", "tag": "switchboard:@A"},  # kept
        {"id": "2", "value": "@Old", "tag": "switchboard:@Old"},  # stale: ours, not configured
        {"id": "3", "value": "cats", "tag": "marketing-team"},  # someone else's
        {"id": "4", "value": "dogs"},  # untagged: someone else's
    ]
    changes = plan_sync(existing, desired, "switchboard:")
    assert changes.add == [StreamRule("@B", "switchboard:@B")]
    assert changes.delete_ids == ["2"]


def test_a_changed_rule_value_is_replaced():
    existing = [{"id": "9", "value": "@A OR #old", "tag": "switchboard:@A"}]
    changes = plan_sync(existing, [StreamRule("@A OR #new", "switchboard:@A")], "switchboard:")
    assert changes.delete_ids == ["9"] and [r.value for r in changes.add] == ["@A OR #new"]


@pytest.mark.parametrize("hashtag", ["#has space", "#"])
def test_a_malformed_hashtag_is_refused(hashtag):
    with pytest.raises(ValueError, match="hashtags"):
        configured().model_validate(
            {
                "handles": [
                    {
                        "handle": "@A",
                        "user_id": "1",
                        "brand": "A",
                        "segment": "support",
                        "default_department": "sales",
                        "listen": {"hashtags": [hashtag]},
                    }
                ]
            }
        )


def test_the_default_dm_poll_leaves_room_in_xs_window_for_a_second_page_or_a_retry():
    # X allows each user 15 DM reads per 15 minutes: a poll a minute would spend them all
    limit, window_s = DOCUMENTED_LIMITS["/2/dm_events"]
    assert (limit, window_s) == (15, 900.0)
    polls = window_s / XConfig().direct_messages.interval_s
    assert polls <= limit * 2 / 3


def test_the_default_rule_length_is_xs_and_the_stand_in_refuses_one_character_more():
    length = XConfig().filtered_stream.max_rule_length
    assert length == 1024
    assert XApiStandIn._rule_error({"value": "a" * length}, {}) is None
    assert XApiStandIn._rule_error({"value": "a" * (length + 1)}, {})["title"]
