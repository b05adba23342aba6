"""`switchboard bench`'s choices of what to measure and the title of its plot."""

from __future__ import annotations

from click.testing import CliRunner

from switchboard.cli.bench import bench, plot_title

PIPELINE_ONLY = {"cpus": 2, "e2e": [], "max_sustained_per_s": 200.0, "peak_rss_mb": {}}


def test_the_plot_names_the_classifier_speedup_when_the_run_measured_it():
    measured = PIPELINE_ONLY | {"speedup": 6.17, "classify_tweets_per_s": 856.0,
                                "baseline_tweets_per_s": 138.8}  # fmt: skip
    assert plot_title(measured) == (
        "Switchboard on 2 CPUs: classifier 6.17x the naive baseline (856 vs 138.8 tweets/s)"
    )
    assert plot_title(PIPELINE_ONLY) == "Switchboard on 2 CPUs"


def test_a_bench_that_measures_nothing_is_refused_before_it_starts_anything(tmp_path):
    report = tmp_path / "report.json"
    refused = CliRunner().invoke(
        bench, ["--no-classifier", "--no-pipeline", "--report", str(report)]
    )
    assert refused.exit_code == 2
    assert "--no-classifier and --no-pipeline leave nothing to measure" in refused.output
    assert not report.exists()
