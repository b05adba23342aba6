"""kill -9 of notify while creates at Zendesk and Jira are in flight, then a restart: each
conversation keeps one ticket and one issue, and each delivery one comment."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path

import yaml

from switchboard.cli.load import write_load
from switchboard.shared.events import conversation_of_vendor_labels
from switchboard.shared.labels import Department
from tests.conftest import CONFIG_FILE, SAMPLES, wait_for
from tests.e2e.conftest import wait_settled, wait_until

DELIVERY_TAG = re.compile(r"sb-d-[0-9a-f]{16}")  # a delivery's tag at the vendor


async def test_kill_9_of_notify_mid_batch_makes_each_ticket_and_comment_once(
    stack_of, vendors, tmp_path: Path
):
    """Every tweet opens or comments on a Zendesk ticket and a Jira issue of its conversation;
    notify is killed with SIGKILL while creates are in flight (the vendors answer slowly), then
    restarted. Each conversation has one ticket and one issue, and each delivery one comment:
    what the killed notify made but could not record is found (Zendesk's Idempotency-Key and
    tag, Jira's label after the search has settled), not made again."""
    zendesk, jira = vendors["zendesk"], vendors["jira"]
    config = yaml.safe_load(CONFIG_FILE.read_text())
    config["notify"]["connections"] = {
        "zendesk": {"base_url": zendesk.base_url, "email": "ops@acme.example",
                    "api_token": {"env": "ZENDESK_TOKEN"}},
        "jira": {"base_url": jira.base_url, "email": "ops@acme.example",
                 "api_token": {"env": "JIRA_TOKEN"}, "search_settle_s": 10.0},
    }  # fmt: skip
    every = [d.value for d in Department]
    config["notify"]["subscriptions"] = [
        {"name": "every-queue", "channel": "zendesk", "departments": every,
         "zendesk": {"group_id": 77}},
        {"name": "every-board", "channel": "jira", "departments": every,
         "jira": {"project": "OPS"}},
    ]  # fmt: skip
    path = tmp_path / "switchboard.yaml"
    path.write_text(yaml.safe_dump(config))
    stack = stack_of(path)

    def creates() -> list[float]:  # when each create of a ticket or an issue was asked for
        return [r["at"] for r in (*zendesk.requests, *jira.requests) if r["method"] == "POST"
                and r["path"] in ("/api/v2/tickets.json", "/rest/api/3/issue")]  # fmt: skip

    load = tmp_path / "tweets.jsonl"
    sent = write_load(SAMPLES, 300, load, 4_100_000_000_000_000_000 + time.time_ns() // 1000)
    zendesk.delay_next("/api/v2/tickets", 1.5, count=10_000, method="POST")
    jira.delay_next("/rest/api/3/issue", 1.5, count=10_000, method="POST")
    # Jira's search is eventually consistent: it shows an issue later than notify restarts
    jira.search_lag_s = 8.0
    try:
        await stack.start()
        await stack.replay(load, 40.0)
        await wait_until(lambda: sum(stack.tally.deliveries.values()) >= 20, 120, stack, sent)
        # the kill lands while a create is in flight: one asked for in the last half second is
        # answered a second later (a loaded machine may pause between batches)
        await wait_for(lambda: time.monotonic() - max(creates(), default=0.0) < 0.5, 60)
        killed = time.monotonic()  # the stand-ins' clock
        await stack.crash_and_restart("notify")  # creates in flight: answered after 1.5 s
        await wait_settled(stack, sent, 240)
    finally:
        await stack.stop()

    tally = stack.tally
    assert tally.undelivered() == set(), tally.failed_deliveries
    # creates were in flight when notify died: asked for in the 1.5 s before, not answered
    assert any(killed - 1.5 < at <= killed for at in creates())
    tickets = Counter(t["external_id"] for t in zendesk.tickets.values())
    issues = Counter(conversation_of_vendor_labels(i["fields"]["labels"])
                     for i in jira.issues.values())  # fmt: skip
    # one ticket and one issue per conversation (each conversation has both)
    assert max(tickets.values()) == 1 and max(issues.values()) == 1
    assert len(tickets) == len(issues) > 0
    comments = [c for kept in (*zendesk.comments.values(), *jira.comments.values()) for c in kept]
    tags = Counter(tag for c in comments for tag in set(DELIVERY_TAG.findall(json.dumps(c))))
    assert tags and max(tags.values()) == 1  # each delivery's comment once
