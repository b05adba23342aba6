"""The check of requests against the vendors' own OpenAPI definitions (pure logic)."""

from __future__ import annotations

import pytest

from tests.standins.contracts import Contract


@pytest.fixture(scope="module")
def zendesk() -> Contract:
    return Contract("zendesk")


def test_a_ticket_as_notify_creates_it_keeps_zendesks_contract(zendesk):
    ticket = {"subject": "s", "comment": {"html_body": "<p>x</p>", "public": False},
              "priority": "urgent", "external_id": "switchboard:q:1", "tags": ["switchboard"],
              "group_id": 77, "via_followup_source_id": 12}  # fmt: skip
    assert zendesk.check("POST", "/api/v2/tickets.json", {}, {"ticket": ticket}) is None
    assert zendesk.check("GET", "/api/v2/tickets.json", {"external_id": ["e"]}, None) is None


def test_a_value_outside_the_definition_is_named(zendesk):
    ticket = {"comment": {"body": "x"}, "priority": 5}
    problem = zendesk.check("POST", "/api/v2/tickets.json", {}, {"ticket": ticket})
    assert problem is not None and "ticket/priority" in problem
    assert zendesk.violations[-1].path == "/api/v2/tickets.json"


def test_an_operation_the_vendor_does_not_define_is_a_violation(zendesk):
    problem = zendesk.check("DELETE", "/api/v2/tickets/7.json", {}, None)
    assert problem is not None and "not an operation" in problem


def test_declared_query_parameters_are_typed():
    jira = Contract("jira")
    good = {"jql": ['labels = "x"'], "fields": ["key"], "reconcileIssues": ["10001", "10002"]}
    assert jira.check("GET", "/rest/api/3/search/jql", good, None) is None
    bad = dict(good, reconcileIssues=["LEG-1"])
    assert "reconcileIssues" in (jira.check("GET", "/rest/api/3/search/jql", bad, None) or "")


def test_hubspot_property_values_are_strings():
    hubspot = Contract("hubspot-contacts", "hubspot-tickets")
    upsert = {"inputs": [{"idProperty": "twitter_user_id", "id": "42",
                          "properties": {"twitter_user_id": "42", "lastname": "Ana"}}]}  # fmt: skip
    assert hubspot.check("POST", "/crm/v3/objects/tickets/batch/upsert", {}, upsert) is None
    upsert["inputs"][0]["properties"]["lastname"] = 7
    assert hubspot.check("POST", "/crm/v3/objects/contacts/batch/upsert", {}, upsert) is not None
