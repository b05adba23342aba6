"""`switchboard bench` drives the whole pipeline at offered rates and reports what it measured."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import ROOT, SAMPLES, SWITCHBOARD, clean_environment


def test_bench_reports_each_offered_rate_with_latency_cpu_memory_and_a_plot(tmp_path: Path):
    """The pipeline alone (`--no-classifier`): the classifier's figures are
    tests/integration/test_bench.py's, and the plot's title is tested with them in
    tests/unit/test_bench_cli.py."""
    report, plot = tmp_path / "report.json", tmp_path / "pipeline.png"
    env = clean_environment()
    done = subprocess.run(
        [*SWITCHBOARD, "bench", "--samples", str(SAMPLES), "--json", "--no-classifier",
         "--rates", "10,20", "--seconds", "4", "--probes", "1",
         "--report", str(report), "--plot", str(plot)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout)
    assert figures == json.loads(report.read_text())
    assert set(figures) == {"cpus", "e2e", "max_sustained_per_s", "peak_rss_mb"}
    steps = {step["offered_per_s"]: step for step in figures["e2e"]}
    offered = [step["offered_per_s"] for step in figures["e2e"]]
    assert {10, 20} <= set(offered) and offered == sorted(offered)
    # What the report says, not how fast this shared machine was (that is `make bench`'s to
    # print): whether a rate was sustained depends on what else runs beside the suite.
    for step in (steps[10], steps[20]):
        assert step["sent"] == step["offered_per_s"] * 4 and step["lost"] == 0
        assert step["duplicates"] == 0 and isinstance(step["sustained"], bool)
        assert 0 < step["p50_ms"] <= step["p95_ms"] <= step["p99_ms"]
        assert step["delivered_p99_ms"] >= step["delivered_p50_ms"] > 0
        assert 0 < step["achieved_per_s"] <= 1.5 * step["offered_per_s"]
        assert {"classify", "route", "notify", "ingest", "broker"} <= set(step["cpu_percent"])
    sustained = [step["offered_per_s"] for step in figures["e2e"] if step["sustained"]]
    assert figures["max_sustained_per_s"] == max(sustained, default=None)
    if steps[20]["sustained"]:
        assert 25 in steps  # the last fixed rate sustained: the run probed a higher one
    else:
        assert max(offered) == 20  # not sustained: it looked between the rates, not above
    peak = figures["peak_rss_mb"]
    assert {"classify", "route", "notify", "ingest", "broker"} <= set(peak)
    assert peak["classify"] > peak["route"] > 0  # the model lives in classify only
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_restore_times_a_route_start_with_conversations_to_restore():
    env = clean_environment()
    done = subprocess.run(
        [*SWITCHBOARD, "bench-restore", "--conversations", "3000", "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["conversations"] == 3000 and report["changelog_mb"] > 1
    assert report["empty_start"]["held"] == 0
    assert report["restored_start"]["held"] == 3000  # every conversation restored
    assert report["empty_start"]["ready_s"] > 0 and report["restored_start"]["rss_mb"] > 0
