"""Filtered-stream rules follow the configured handles; synchronization owns only its rules."""

from __future__ import annotations

import pytest

from switchboard.cli.config import SwitchboardConfig
from switchboard.ingest.rules import StreamRule, desired_rules, handle_terms, plan_sync


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
    assert [r.tag for r in rules] == ["switchboard:@AcmeHelp", "switchboard:@AcmeHelp#2"]
    assert all(len(r.value) <= 64 for r in rules)
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
