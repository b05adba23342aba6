"""What a training run reads and how it weighs it: data folders, licences, row weights, the
critical threshold, and the evaluation extras (per source, errors, calibration). No model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from switchboard.classify.data import (
    PROJECT_LICENCE,
    DataError,
    DataFolder,
    LabeledTweet,
    commercial_use,
    licence_family,
    read_tweets,
)
from switchboard.classify.evaluation import by_group, errors, expected_calibration_error
from switchboard.classify.train import (
    TrainingData,
    TrainOptions,
    WeightedCrossEntropy,
    fit_critical_threshold,
    threshold_rows,
    training_licence,
)
from switchboard.shared.labels import Department, Urgency

D, U = Department, Urgency
NC = "CC BY-NC-SA 4.0 (upstream: Customer Support on Twitter, Kaggle thoughtvector); repository"
MIT = "MIT (repository LICENSE); tweets collected from the Twitter API"
UNKNOWN = "unknown"


def _write(folder: Path, split: str, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{split}.jsonl").open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row) + "\n")


def _row(text: str, licence: str | None = None, department: str = "sales") -> dict:
    row = {"text": text, "department": department, "urgency": "normal"}
    return row | ({"licence": licence, "source": "owner/repo:file.csv"} if licence else {})


@pytest.mark.parametrize(
    ("spec", "path", "weight"),
    [("data/labeled", "data/labeled", 1.0), ("data/labeled/real:2", "data/labeled/real", 2.0)],
)
def test_a_data_folder_is_a_path_and_an_optional_weight(spec, path, weight):
    assert DataFolder.parse(spec) == DataFolder(Path(path), weight)


@pytest.mark.parametrize(("spec", "error"), [("x:heavy", "number"), ("x:0", "positive")])
def test_a_bad_data_weight_is_refused_with_the_spec(spec, error):
    with pytest.raises(ValueError, match=error):
        DataFolder.parse(spec)


def test_only_permissive_and_project_licences_allow_commercial_use():
    assert commercial_use(PROJECT_LICENCE) and commercial_use(MIT)
    assert commercial_use("Apache-2.0 (upstream: mjw/stock_market_tweets, CC0)")
    assert not commercial_use(NC) and not commercial_use(UNKNOWN)
    # a company's rows under the standard permissive and attribution-only licences
    assert commercial_use("CC BY 4.0") and commercial_use("BSD-3-Clause (our repository)")
    assert commercial_use("CC0-1.0") and commercial_use("cc-by-4.0")
    for licence in ("MIT License", "CC0 1.0 Universal", "MIT-0", "Apache-2.0 License"):
        assert commercial_use(licence), licence
    for licence in ("CC BY-NC 4.0", "CC BY-ND 4.0", "CC BY-SA 4.0", "GPL-3.0", "proprietary"):
        assert not commercial_use(licence), licence
    assert licence_family(NC) == "CC BY-NC-SA 4.0" and licence_family(MIT) == "MIT"


def test_the_artifact_licence_follows_the_most_restrictive_training_row():
    written = LabeledTweet("w", D.SALES, U.LOW)
    permissive = LabeledTweet("m", D.SALES, U.LOW, licence=MIT)
    assert training_licence([written, permissive])["commercial_use"] is True
    assert training_licence([written, permissive])["spdx"] == "Apache-2.0"
    mixed = training_licence([written, LabeledTweet("n", D.SALES, U.LOW, licence=NC)])
    assert mixed["commercial_use"] is False and mixed["spdx"] == "CC-BY-NC-SA-4.0"
    assert "Non-commercial" in mixed["terms"]
    unknown_row = LabeledTweet("u", D.SALES, U.LOW, licence=UNKNOWN)
    unknown = training_licence([written, unknown_row])
    # no row under CC BY-NC-SA: the card does not say so
    assert unknown["spdx"] == "LicenseRef-unknown" and unknown["commercial_use"] is False
    assert (
        unknown["terms"].startswith("Not cleared for commercial use")
        and "NC" not in unknown["terms"]
    )
    assert unknown["training_rows_by_licence"] == {"Apache-2.0": 1, "unknown": 1}
    both = training_licence([written, unknown_row, LabeledTweet("n", D.SALES, U.LOW, licence=NC)])
    assert both["spdx"] == "CC-BY-NC-SA-4.0 AND LicenseRef-unknown"
    gpl = training_licence([LabeledTweet("g", D.SALES, U.LOW, licence="GPL-3.0 (a repository)")])
    assert gpl["spdx"] == "GPL-3.0" and gpl["commercial_use"] is False


def test_training_reads_every_folder_and_selects_on_the_last_dev(tmp_path):
    written, real = tmp_path / "written", tmp_path / "real"
    _write(written, "train", [_row("w1"), _row("w2")])
    _write(written, "dev", [_row("wd")])
    _write(real, "train", [_row("r1", NC), _row("r2", MIT), _row("r3", UNKNOWN)])
    _write(real, "dev", [_row("rd1", NC), _row("rd2", MIT)])
    _write(real, "test", [_row("rt", NC)])
    folders = [DataFolder(written), DataFolder(real, 2.0)]

    data = TrainingData.read(folders, TrainOptions())
    assert [r.text for r in data.rows] == ["w1", "w2", "r1", "r2", "r3"]
    assert data.weights == [1.0, 1.0, 2.0, 2.0, 2.0]
    assert data.selection.path == real and [r.text for r in data.dev] == ["rd1", "rd2"]
    assert set(data.reported) == {"written", "real"} and set(data.reported["real"]) == {
        "dev",
        "test",
    }
    assert data.described["real"]["weight"] == 2.0 and data.described["real"]["train"]["rows"] == 3

    commercial = TrainingData.read(folders, TrainOptions(licences="commercial"))
    assert [r.text for r in commercial.rows] == ["w1", "w2", "r2"]
    assert [r.text for r in commercial.dev] == ["rd2"]
    assert "test" not in commercial.reported["real"]  # nothing of it may be used commercially


def test_training_without_any_dev_split_says_so(tmp_path):
    _write(tmp_path / "only", "train", [_row("a")])
    with pytest.raises(ValueError, match="dev.jsonl"):
        TrainingData.read([DataFolder(tmp_path / "only")], TrainOptions())


def test_a_folder_the_commercial_recipe_empties_is_named_and_no_rows_at_all_is_refused(
    tmp_path, caplog
):
    written, nc = tmp_path / "written", tmp_path / "nc"
    _write(written, "train", [_row("w1")])
    _write(written, "dev", [_row("wd")])
    _write(nc, "train", [_row("n1", NC), _row("n2", UNKNOWN)])
    _write(nc, "dev", [_row("nd", NC)])

    with caplog.at_level("WARNING", logger="switchboard.classify.train"):
        data = TrainingData.read([DataFolder(written), DataFolder(nc)], commercial_only)
    assert [r.text for r in data.rows] == ["w1"]
    assert any(str(nc) in m and "none of its 2 training rows" in m for m in caplog.messages)

    with pytest.raises(ValueError, match="no training row is left"):
        TrainingData.read([DataFolder(nc)], commercial_only)


commercial_only = TrainOptions(licences="commercial")


def test_row_weights_of_one_give_torchs_class_weighted_mean():
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([0, 1, 1, 2, 3, 3])
    class_weight = torch.tensor([1.0, 2.0, 0.5, 3.0])
    expected = torch.nn.CrossEntropyLoss(weight=class_weight, label_smoothing=0.1)(logits, labels)
    ours = WeightedCrossEntropy(class_weight, 0.1)(logits, labels, torch.ones(6))
    assert float(ours) == pytest.approx(float(expected), rel=1e-6)


def test_a_heavier_row_pulls_the_loss_towards_its_own():
    logits = torch.tensor([[4.0, 0.0], [0.0, 4.0]])
    labels = torch.tensor([0, 0])  # the first row is right, the second wrong
    loss = WeightedCrossEntropy(torch.ones(2), 0.0)
    even = float(loss(logits, labels, torch.tensor([1.0, 1.0])))
    assert float(loss(logits, labels, torch.tensor([1.0, 3.0]))) > even
    assert float(loss(logits, labels, torch.tensor([3.0, 1.0]))) < even


def test_the_critical_threshold_reaches_the_recall_target_with_alerts_worth_reading():
    """Ten critical tweets among forty: at 0.30 nine are caught with nine false alarms
    (recall 0.9, precision 0.5); above 0.30 eight with none (F2 0.83 beats 0.78). The recall
    target takes 0.30; a floor of half the alerts being critical keeps it from going lower."""
    p_critical = [0.9] * 8 + [0.3, 0.1] + [0.3] * 9 + [0.2] * 21
    probs = torch.tensor([[p, 0.0, 1 - p, 0.0] for p in p_critical])
    gold = [U.CRITICAL] * 10 + [U.NORMAL] * 30
    assert fit_critical_threshold(probs, gold) == 0.3
    # One more false alarm at 0.3 and precision falls below half: F2 decides, and of the
    # thresholds that tie above 0.3 it takes the highest (fewest alarms).
    probs[19, 0], probs[19, 2] = 0.3, 0.7
    assert fit_critical_threshold(probs, gold) == pytest.approx(0.6)


def test_the_critical_threshold_is_fitted_on_dev_rows_drawn_as_traffic_is():
    """Sought rows (a model pointed at them as likely critical) are mostly ones it already
    scores high: fitted on them as well, the threshold comes out lower than the drawn rows
    alone would set it, and on traffic it raises more false alarms than dev promised."""
    drawn = [
        LabeledTweet("x", D.CUSTOMER_SERVICE, U.CRITICAL),
        LabeledTweet("x", D.CUSTOMER_SERVICE, U.CRITICAL),
    ] + [LabeledTweet("x", D.CUSTOMER_SERVICE, U.NORMAL)] * 10
    sought = [LabeledTweet("x", D.CUSTOMER_SERVICE, U.CRITICAL, sought=True)] * 8
    rows = drawn + sought
    assert threshold_rows(rows) == list(range(12))
    assert threshold_rows(rows, "all") == list(range(20))
    # With no critical tweet among the drawn rows there is nothing to fit on: every row counts.
    assert threshold_rows(drawn[2:] + sought) == list(range(18))
    p_critical = [0.5, 0.05] + [0.2] * 4 + [0.05] * 6 + [0.3] * 8
    probs = torch.tensor([[p, 0.0, 1 - p, 0.0] for p in p_critical])
    gold = [r.urgency for r in rows]
    # Every row: at 0.3 nine of ten critical tweets are caught with no false alarm.
    assert fit_critical_threshold(probs, gold) == 0.3
    # The drawn rows: at 0.3 one of two is caught; catching both costs ten false alarms (F2
    # 0.50 against 0.56), so the threshold stays where the first is caught alone, the highest.
    fitted_on = threshold_rows(rows)
    assert fit_critical_threshold(probs[fitted_on], [gold[i] for i in fitted_on]) == 0.5


GOLD = [
    LabeledTweet("late bag", D.CUSTOMER_SERVICE, U.HIGH),
    LabeledTweet("$ABC up", D.INVESTOR_RELATIONS, U.LOW),
    LabeledTweet("fire in store", D.CUSTOMER_SERVICE, U.CRITICAL),
]
PREDICTED = [("customer_service", "normal"), ("investor_relations", "low"), ("legal", "critical")]


def test_figures_per_group_largest_first():
    figures = by_group(GOLD, PREDICTED, ["airline", "stocks", "airline"])
    assert list(figures) == ["airline", "stocks"]
    assert figures["airline"]["n"] == 2 and figures["airline"]["department_accuracy"] == 0.5
    assert figures["stocks"]["department_accuracy"] == 1.0


def test_the_error_table_lists_misrouted_tweets_first():
    table = errors(GOLD, PREDICTED, ["a", "b", "c"], limit=5)
    assert [e["id"] for e in table] == ["c", "a"]
    assert table[0] == {
        "id": "c",
        "gold": "customer_service/critical",
        "predicted": "legal/critical",
        "department_wrong": True,
        "text": "fire in store",
    }
    assert len(errors(GOLD, PREDICTED, ["a", "b", "c"], limit=1)) == 1


def test_calibration_error_is_the_weighted_gap_between_confidence_and_accuracy():
    # Bin 0.9: confidences 0.9, 0.9, accuracy 1/2 -> gap 0.4; bin 0.6: 0.6 vs 1 -> 0.4.
    assert expected_calibration_error([0.9, 0.9, 0.6], [True, False, True]) == pytest.approx(0.4)
    assert expected_calibration_error([0.75, 0.75], [True, False]) == pytest.approx(0.25)
    assert expected_calibration_error([], []) == 0.0


def test_an_unknown_artifact_fails_at_start_naming_the_key_and_the_choices(tmp_path):
    from switchboard.classify.model import ARTIFACTS, resolve_artifact

    with pytest.raises(FileNotFoundError, match=r"classify.artifact: 'minilm-rael-v1'.*minilm"):
        resolve_artifact("minilm-rael-v1")
    with pytest.raises(FileNotFoundError, match="card.json"):
        resolve_artifact(tmp_path)  # a folder, but nothing trained in it
    assert resolve_artifact("minilm-commercial-v3") == ARTIFACTS / "minilm-commercial-v3"
    (tmp_path / "card.json").write_text("{}")
    assert resolve_artifact(str(tmp_path)) == tmp_path


def test_a_distilled_students_licence_also_follows_what_it_learnt_without_labels():
    """A student learns its teacher's outputs on unlabeled texts: their licences, and those of
    the teacher's training rows, bind it as its labeled rows do."""
    written = LabeledTweet("w", D.SALES, U.LOW)
    assert training_licence([written], also=[MIT, "Apache-2.0"])["commercial_use"] is True
    student = training_licence([written], also=[NC])
    assert student["commercial_use"] is False and student["spdx"] == "CC-BY-NC-SA-4.0"
    assert student["training_rows_by_licence"] == {"Apache-2.0": 1}  # rows only: counts of rows
    assert "LicenseRef-unknown" in training_licence([written], also=[UNKNOWN])["spdx"]


def test_eval_groups_a_repositorys_files_as_one_source_and_any_other_source_as_it_is():
    from switchboard.classify.offline import source_group

    assert source_group("Anuragiitk/Twitter-US-Sentiment-Analysis:Tweets.csv") == (
        "Anuragiitk/Twitter-US-Sentiment-Analysis")  # fmt: skip
    assert source_group("https://example.com/a:b") == "https://example.com/a:b"
    assert source_group("zendesk:123") == "zendesk:123"
    assert source_group(None) == "(none)" and source_group(7) == "7"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b'{"text": "ok"}\n["text", "a list"]\n',
            "2: ValueError: a JSON object is needed, not list",
        ),
        (b'{"text": "ok"}\n{not json\n', "2: JSONDecodeError"),
        (
            b'{"text": "ok"}\n{"text": "caf\xe9"}\n',
            "2: not UTF-8 text (invalid continuation byte at column 14)",
        ),
    ],
)
def test_predict_names_the_file_and_line_it_cannot_read_before_loading_a_model(
    tmp_path, content, message
):
    from click.testing import CliRunner

    from switchboard.cli import main

    path = tmp_path / "tweets.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(message)):
        read_tweets(path)
    done = CliRunner().invoke(main, ["classify", "predict", "--input", str(path)])
    assert done.exit_code == 1 and isinstance(done.exception, SystemExit)  # no traceback
    assert f"{path}" in done.output and message in done.output
