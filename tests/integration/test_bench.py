"""`switchboard bench` runs and reports its measurements (the numbers are read, not asserted)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, SAMPLES, SWITCHBOARD

STUDENT = ROOT / "services/classify/artifacts/minilm4-real-v1"


def test_bench_prints_throughput_against_the_naive_pipeline_and_memory(tmp_path: Path):
    report = tmp_path / "report.json"
    result = subprocess.run(
        [*SWITCHBOARD, "bench", "--samples", str(SAMPLES),
         "--tweets", "64", "--batch-size", "16", "--rounds", "2", "--no-pipeline", "--json",
         "--report", str(report), "--also", str(STUDENT)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    figures = json.loads(result.stdout)
    assert figures == json.loads(report.read_text())
    assert figures["baseline_tweets_per_s"] > 0 and figures["classify_tweets_per_s"] > 0
    assert figures["batch_size"] == 16 and figures["speedup"] > 0 and figures["model_rss_mb"] > 0
    assert figures["classify_tweets_per_s"] in (
        figures["torch_batched_tweets_per_s"],
        figures["onnx_int8_tweets_per_s"],
    )
    assert "e2e" not in figures
    by_round = figures["speedup_by_round"]  # the median figure and the spread behind it
    assert len(by_round) == figures["rounds"] == 2 and min(by_round) > 0
    assert min(by_round) <= figures["speedup"] * 1.01 and max(by_round) >= figures["speedup"] * 0.99
    [student] = figures["other_models"]  # measured in the same run, against the same baseline
    assert student["model"] == "minilm4-real-v1" and student["onnx_int8_tweets_per_s"] > 0
    # (the report rounds the baseline; the ratio is taken before rounding)
    assert student["speedup"] == pytest.approx(
        student["onnx_int8_tweets_per_s"] / figures["baseline_tweets_per_s"], rel=0.05
    )
