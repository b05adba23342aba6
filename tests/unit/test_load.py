"""Load for bench and soak: renumbered sample copies, step verdicts, resource sampling."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from switchboard.cli.load import copies, write_load
from switchboard.cli.resources import ResourceSampler
from switchboard.cli.tally import Tally
from switchboard.cli.throughput import Step
from tests.conftest import SAMPLES
from tests.factories import a_routed_tweet


def a_thread() -> list[dict]:
    root = {"data": {"id": "10", "conversation_id": "10", "text": "@ParceloHelp late"}}
    reply = {
        "data": {
            "id": "11",
            "conversation_id": "10",
            "text": "@ParceloHelp still late",
            "referenced_tweets": [{"type": "replied_to", "id": "10"}],
        }
    }
    other = {"data": {"id": "12", "conversation_id": "12", "text": "@Parcelo love it"}}
    return [root, reply, other]


def test_every_copy_gets_fresh_ids_and_keeps_its_conversations():
    produced = [c["data"] for c, _ in zip(copies(a_thread(), 1000), range(7), strict=False)]
    assert [d["id"] for d in produced] == [str(i) for i in range(1000, 1007)]
    first, second = produced[:3], produced[3:6]
    assert first[1]["conversation_id"] == first[0]["id"] == "1000"
    assert first[1]["referenced_tweets"] == [{"type": "replied_to", "id": "1000"}]
    assert second[1]["conversation_id"] == second[0]["id"] == "1003"
    assert second[2]["conversation_id"] == second[2]["id"] == "1005"
    assert [d["text"] for d in produced[:3]] == [d["data"]["text"] for d in a_thread()]


def test_write_load_writes_the_requested_number_of_distinct_tweets(tmp_path: Path):
    out = tmp_path / "load.jsonl"
    ids = write_load(SAMPLES, 450, out, 5_000)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(ids) == 450
    assert {line["data"]["id"] for line in lines} == ids


def test_routed_per_s_spans_first_ingested_to_last_routed():
    tally = Tally()
    start = datetime(2026, 11, 25, tzinfo=UTC)
    for n in range(11):
        event = a_routed_tweet(id=str(n))
        trace = event.trace.model_copy(
            update={
                "ingested_at": start + timedelta(seconds=n / 10),
                "routed_at": start + timedelta(seconds=n / 10 + 0.05),
            }
        )
        tally.observe_routed(
            "switchboard.dept.customer_service", event.model_copy(update={"trace": trace})
        )
    assert abs(tally.routed_per_s() - 11 / 1.05) < 1e-6
    assert Tally().routed_per_s() is None


def a_step(**changes) -> Step:
    figures = dict(
        offered_per_s=100.0, sent=2000, achieved_per_s=99.0, p50_ms=80.0, p95_ms=150.0,
        p99_ms=250.0, delivered_p50_ms=200.0, delivered_p95_ms=300.0, delivered_p99_ms=400.0,
        lost=0, duplicates=0,
    )  # fmt: skip
    return Step(**{**figures, **changes})


def test_a_step_is_sustained_only_when_it_keeps_up_in_rate_and_latency():
    assert a_step().sustained
    assert not a_step(achieved_per_s=90.0).sustained
    assert not a_step(p99_ms=4000.0).sustained
    assert not a_step(lost=1).sustained
    assert not a_step(achieved_per_s=None).sustained
    assert a_step().report()["sustained"] is True


def test_resource_sampler_reports_peak_rss_and_cpu_of_named_processes():
    sampler = ResourceSampler(lambda: {"me": os.getpid()})
    before = sampler.cpu_seconds()["me"]
    # burn CPU for sure: 50 ms of this process's own time (a fixed loop could get under one
    # 10 ms clock tick of the kernel's count on a loaded machine)
    burnt = time.process_time() + 0.05
    while time.process_time() < burnt:
        sum(i * i for i in range(10_000))
    sampler.sample()
    assert sampler.cpu_seconds()["me"] > before
    assert sampler.peak_rss_mb()["me"] > 10
    assert len(sampler.rss["me"]) >= 2


def test_a_cpu_only_process_is_left_out_of_memory():
    sampler = ResourceSampler(lambda: {"me": os.getpid()}, cpu_only=frozenset({"me"}))
    sampler.sample()
    assert "me" in sampler.cpu_seconds() and sampler.peak_rss_mb() == {}
