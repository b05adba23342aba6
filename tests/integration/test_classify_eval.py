"""``switchboard classify eval`` as a user runs it: figures per source and the error table."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REAL, ROOT, jsonl_rows

pytestmark = pytest.mark.integration


def run_eval(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "switchboard", "classify", "eval", *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """60 real held-out tweets from at least three sources, with their labels."""
    rows = jsonl_rows(REAL / "test.jsonl")
    path = tmp_path_factory.mktemp("eval") / "sample.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:60]), encoding="utf-8")
    return path, rows[:60]


def test_eval_reports_each_source_and_lists_the_mistakes(sample):
    path, rows = sample
    done = run_eval("--input", str(path), "--json", "--no-baselines", "--errors", "5")
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout)
    repositories = {r["source"].split(":")[0] for r in rows}
    assert set(figures["by_source"]) == repositories  # one group per repository, not per file
    assert sum(group["n"] for group in figures["by_source"].values()) == len(rows) == figures["n"]
    assert 0 <= figures["department_ece"] <= 1
    by_id = {r["id"]: r for r in rows}
    assert 0 < len(figures["errors"]) <= 5
    for error in figures["errors"]:
        gold = by_id[error["id"]]
        assert error["gold"] == f"{gold['department']}/{gold['urgency']}"
        assert error["predicted"] != error["gold"] and error["text"] == gold["text"]
    wrong_department = [e["department_wrong"] for e in figures["errors"]]
    assert wrong_department == sorted(wrong_department, reverse=True)  # misrouted first


def test_eval_prints_the_tables_for_a_person(sample):
    path, _ = sample
    done = run_eval("--input", str(path), "--no-baselines", "--errors", "3")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "by source" in done.stdout and "first 3 errors" in done.stdout
    assert "department_ece" in done.stdout


def test_an_artifact_is_chosen_by_name_and_a_wrong_name_lists_the_choices(sample):
    path, rows = sample
    done = run_eval("--input", str(path), "--json", "--no-baselines",
                    "--artifact", "minilm-commercial-v3")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["model_version"] == "minilm-commercial-v3"
    wrong = run_eval("--input", str(path), "--artifact", "minilm-comercial-v1")
    assert wrong.returncode == 2 and "minilm-commercial-v3" in wrong.stderr
