"""The int8 ONNX runtime: built from the shipped artifact, and as good as fp32 on the held-out
split (department macro-F1 within 0.01)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from switchboard.classify.data import load_labeled
from switchboard.classify.evaluation import report
from switchboard.classify.model import TweetClassifier
from switchboard.classify.tokens import prepare_text
from tests.conftest import LABELED, REAL


def held_out(model: TweetClassifier) -> dict:
    rows = load_labeled(LABELED / "test.jsonl")
    predictions = []
    for start in range(0, len(rows), 32):
        predictions += model.predict([r.text for r in rows[start : start + 32]])
    return report(rows, [(p.department.value, p.urgency.value) for p in predictions])


def test_int8_onnx_keeps_department_quality_within_a_hundredth(classifier):
    int8 = TweetClassifier.load(runtime="onnx-int8")
    assert int8.onnx is not None
    fp32_f1 = held_out(classifier)["department_macro_f1"]
    int8_f1 = held_out(int8)["department_macro_f1"]
    assert abs(fp32_f1 - int8_f1) <= 0.01, (fp32_f1, int8_f1)
    [prediction] = int8.predict(["@SkylarkHelp my bag is lost"])
    assert abs(sum(prediction.department_scores.values()) - 1) < 1e-4


def test_int8_labels_a_tweet_the_same_whatever_it_is_batched_with():
    """Activations are quantized per token: a tweet's scores do not depend on its neighbours
    (with one scale per batch, 5 % of departments changed between a batch of 1 and of 32)."""
    int8 = TweetClassifier.load(runtime="onnx-int8")
    texts = [r.text for r in load_labeled(LABELED / "test.jsonl")[:64]]
    alone = [int8.predict([text])[0] for text in texts]
    together = int8.predict(texts[::-1])[::-1]  # one batch, longest-first padding changes too
    for one, many in zip(alone, together, strict=True):
        assert one.department == many.department and one.urgency == many.urgency
        for department, score in one.department_scores.items():
            assert abs(score - many.department_scores[department]) < 1e-4


def test_a_batch_in_buckets_on_several_threads_gives_each_tweet_its_own_scores():
    """A batch is sorted by length into buckets that run in parallel; each tweet's scores come
    back in its own place, the same as when it runs alone."""
    texts = [r.text for r in load_labeled(LABELED / "test.jsonl")[:40]]
    model = TweetClassifier.load(runtime="onnx-int8", threads=3, bucket_size=3)
    assert model.onnx.workers == 3
    alone = [model.logits([text]) for text in texts]
    departments, urgencies = model.logits(texts)
    assert np.abs(departments - np.concatenate([d for d, _ in alone])).max() < 1e-4
    assert np.abs(urgencies - np.concatenate([u for _, u in alone])).max() < 1e-4
    assert model.logits([])[0].shape == (0, len(model.departments))


def test_served_token_ids_are_the_transformers_tokenizers_ids(classifier):
    """Serving reads the backbone's tokenizer.json with ``tokenizers`` alone; every labeled
    tweet, and text that stresses normalization and truncation, gets the ids transformers' own
    tokenizer gives at both token limits in use (96 for students, 128 served)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(classifier.backbone))
    texts = [r.text for folder in (LABELED, REAL) for split in ("train", "dev", "test")
             for r in load_labeled(folder / f"{split}.jsonl")]  # fmt: skip
    texts += ["", " ", "Ünïcödé café naïve 日本語 🙂🔥 ﬁ", "\u200b\t\n", "x" * 3000,
              "@AcmeHelp https://t.co/abc?q=1 " * 60]  # fmt: skip
    for max_length in (96, 128):
        expected = tokenizer(
            [prepare_text(t) for t in texts], truncation=True, max_length=max_length
        )["input_ids"]
        assert classifier.tokens.token_ids(texts, max_length) == expected, max_length
    assert classifier.tokens.pad_token_id == tokenizer.pad_token_id


def test_an_int8_model_built_ahead_is_served_without_torch_or_transformers(classifier, tmp_path):
    """classify on a prebuilt int8 file loads neither torch nor transformers (seconds and
    hundreds of megabytes at every start) and labels tweets as the process that built it."""
    built = TweetClassifier.load(runtime="onnx-int8", onnx_dir=tmp_path)
    texts = ["@AcmeHelp my card was charged twice", "Acme shares jump after earnings beat"]
    code = f"""
import json, sys
from pathlib import Path
from switchboard.classify.model import TweetClassifier
model = TweetClassifier.load(runtime="onnx-int8", onnx_dir=Path({str(tmp_path)!r}))
scores = [p.department_scores[p.department] for p in model.predict({texts!r})]
print(json.dumps([str(model.onnx.path), scores, sorted({{"torch", "transformers", "peft"}}
                  & set(sys.modules))]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)  # fmt: skip
    path, scores, heavy = json.loads(done.stdout.strip().splitlines()[-1])
    assert path == str(built.onnx.path) and heavy == []
    here = [p.department_scores[p.department] for p in built.predict(texts)]
    assert scores == pytest.approx(here, abs=1e-6)


def test_the_int8_file_follows_the_weights_not_the_folder(classifier, tmp_path):
    """The cached file is named by a digest of the files it is built from: a copy of the
    artifact elsewhere finds the same file; changed heads build a new one."""
    from safetensors.numpy import load_file, save_file

    from switchboard.classify.onnx import weights_digest

    copy = tmp_path / "copy"
    shutil.copytree(classifier.artifact, copy)
    card, backbone = classifier.card, classifier.backbone
    assert weights_digest(copy, card, backbone) == weights_digest(classifier.artifact, card,
                                                                  backbone)  # fmt: skip
    heads = load_file(str(copy / "heads.safetensors"))
    heads = {name: value + np.float32(0.01) for name, value in heads.items()}
    save_file(heads, str(copy / "heads.safetensors"))
    assert weights_digest(copy, card, backbone) != weights_digest(classifier.artifact, card,
                                                                  backbone)  # fmt: skip
