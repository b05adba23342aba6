"""The int8 ONNX runtime: built from the shipped artifact, and as good as fp32 on the held-out
split (department macro-F1 within 0.01)."""

from __future__ import annotations

import numpy as np

from switchboard.classify.data import load_labeled
from switchboard.classify.evaluation import report
from switchboard.classify.model import TweetClassifier
from tests.conftest import LABELED


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
