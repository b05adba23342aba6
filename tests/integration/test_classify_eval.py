"""``switchboard classify eval`` and ``predict`` as a user runs them: figures per source, the
error table, and one prediction per input line on either runtime."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import MODEL_THREADS, REAL, ROOT, SWITCHBOARD, jsonl_rows


def run_eval(*arguments: str, command: str = "eval") -> subprocess.CompletedProcess:
    threads = ["--threads", str(MODEL_THREADS)] if MODEL_THREADS else []
    return subprocess.run(
        [*SWITCHBOARD, "classify", command, *threads, *arguments],
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


def test_eval_fits_both_baselines_on_the_training_rows_it_is_given(sample, tmp_path):
    """Baselines fitted on rows of two departments only can route to nothing else; both are
    reported on every input row."""
    path, rows = sample
    kept = ("legal", "sales")
    train = [r for r in jsonl_rows(REAL / "train.jsonl") if r["department"] in kept][:160]
    train_path = tmp_path / "train.jsonl"
    train_path.write_text("".join(json.dumps(r) + "\n" for r in train), encoding="utf-8")
    done = run_eval("--input", str(path), "--json", "--train-data", str(train_path))
    assert done.returncode == 0, done.stderr[-2000:]
    baselines = json.loads(done.stdout)["baselines"]
    assert set(baselines) == {"tfidf_logreg", "nearest_centroid"}
    for name, figures in baselines.items():
        assert figures["n"] == len(rows), name
        matrix = figures["department_confusion"]
        cells = matrix["rows_gold_columns_predicted"]
        predicted = [sum(column) for column in zip(*cells, strict=True)]
        routed_to = {d for d, count in zip(matrix["labels"], predicted, strict=True) if count}
        assert routed_to and routed_to <= set(kept), (name, routed_to)


def test_eval_reports_dev_rows_drawn_as_traffic_apart_from_those_sought_out(tmp_path):
    """Dev's sought rows (read because a model pointed at them as likely critical) flatter the
    model that chose them: eval gives both groups' figures, and each row counts in one."""
    rows = jsonl_rows(REAL / "dev.jsonl")
    sought = [r for r in rows if r.get("sought")][:15]
    drawn = [r for r in rows if not r.get("sought")][:15]
    path = tmp_path / "dev-sample.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in sought + drawn), encoding="utf-8")
    done = run_eval("--input", str(path), "--json", "--no-baselines")
    assert done.returncode == 0, done.stderr[-2000:]
    groups = json.loads(done.stdout)["by_selection"]
    assert {name: group["n"] for name, group in groups.items()} == {"sought": 15, "drawn": 15}


def test_eval_prints_the_tables_for_a_person(sample):
    path, _ = sample
    done = run_eval("--input", str(path), "--no-baselines", "--errors", "3")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "by source" in done.stdout and "first 3 errors" in done.stdout
    assert "department_ece" in done.stdout and "urgency_macro_f1" in done.stdout


def test_eval_of_a_file_with_a_bad_line_names_the_line(sample, tmp_path):
    path, _ = sample
    broken = tmp_path / "broken.jsonl"
    broken.write_text(path.read_text().splitlines()[0] + "\n{not json\n", encoding="utf-8")
    done = run_eval("--input", str(broken), "--no-baselines")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert ":2" in done.stderr or "line 2" in done.stderr, done.stderr[-2000:]


def test_an_artifact_is_chosen_by_name_and_a_wrong_name_lists_the_choices(sample):
    path, rows = sample
    done = run_eval("--input", str(path), "--json", "--no-baselines",
                    "--artifact", "minilm-commercial-v3")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["model_version"] == "minilm-commercial-v3"
    wrong = run_eval("--input", str(path), "--artifact", "minilm-comercial-v1")
    assert wrong.returncode == 2 and "minilm-commercial-v3" in wrong.stderr


def test_predict_labels_every_line_in_order_on_either_runtime(sample, tmp_path):
    path, rows = sample
    labeled = {}
    for runtime in ("torch", "onnx-int8"):
        out = tmp_path / f"{runtime}.jsonl"
        done = run_eval("--input", str(path), "--output", str(out), "--runtime", runtime,
                        command="predict")  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        records = jsonl_rows(out)
        assert [r["id"] for r in records] == [r["id"] for r in rows]
        for record in records:
            scores = record["department_scores"]
            assert max(scores, key=scores.get) == record["department"]
            assert sum(record["urgency_scores"].values()) == pytest.approx(1, abs=1e-3)
        labeled[runtime] = [r["department"] for r in records]
    same = sum(a == b for a, b in zip(labeled["torch"], labeled["onnx-int8"], strict=True))
    assert same >= 0.9 * len(rows)  # int8 is the same model, not another one
