"""``switchboard bench``: speed and memory of the classifier, measured against baselines in the
same run (so the numbers compare on a shared, noisy machine).

- baseline: the naive way, a transformers ``Pipeline`` over the same model (merged encoder and
  heads), one tweet at a time;
- the shipped inference path one tweet at a time, and batched as the classify service batches;
- the same path on the int8 ONNX runtime (``classify.runtime: onnx-int8``);
- the process's resident memory after loading the model.
The pipeline's end-to-end latency is what ``switchboard demo --json`` reports.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click
import psutil


def naive_pipeline(model):  # noqa: ANN001, ANN201 - transformers types, imported lazily
    """A transformers text-classification style Pipeline over the shipped model's weights."""
    import torch
    from transformers import Pipeline

    class TweetPipeline(Pipeline):
        def _sanitize_parameters(self, **kwargs):  # noqa: ANN003, ANN202
            return {}, {}, {}

        def preprocess(self, text: str):  # noqa: ANN202
            return model.encoder.tokenize([text], model.max_length)

        def _forward(self, inputs):  # noqa: ANN001, ANN202
            encoded = model.encoder(inputs["input_ids"], inputs["attention_mask"])
            return model.heads(encoded)[0]

        def postprocess(self, logits):  # noqa: ANN001, ANN202
            probs = torch.softmax(logits[0], dim=-1)
            return {
                "label": model.departments[int(probs.argmax())].value,
                "score": float(probs.max()),
            }

    pipeline = TweetPipeline(model=model.encoder.transformer, tokenizer=model.encoder.tokenizer)
    return lambda texts: [pipeline(text) for text in texts]


def _rate(predict, texts: list[str], batch: int) -> float:  # noqa: ANN001
    started = time.perf_counter()
    for start in range(0, len(texts), batch):
        predict(texts[start : start + batch])
    return len(texts) / (time.perf_counter() - started)


@click.command()
@click.option(
    "--samples", type=click.Path(path_type=Path, exists=True), default="data/samples/tweets.jsonl"
)
@click.option("--tweets", type=int, default=512, show_default=True, help="Tweets per measurement.")
@click.option("--batch-size", type=int, default=32, show_default=True)
def bench(samples: Path, tweets: int, batch_size: int) -> None:
    """Classifier throughput, batched versus one at a time, and memory; prints JSON."""
    from switchboard.classify.model import TweetClassifier

    texts = [json.loads(line)["data"]["text"] for line in samples.read_text().splitlines() if line]
    texts = (texts * (tweets // len(texts) + 1))[:tweets]
    process = psutil.Process(os.getpid())
    before = process.memory_info().rss
    model = TweetClassifier.load(threads=os.cpu_count() or 1)
    loaded = process.memory_info().rss
    model.predict(texts[:batch_size])  # warm up
    few = texts[: max(64, tweets // 8)]
    naive = naive_pipeline(model)
    naive(few[:4])  # warm up
    baseline = _rate(naive, few, 1)
    one_at_a_time = _rate(model.predict, few, 1)
    batched = _rate(model.predict, texts, batch_size)
    int8 = TweetClassifier.load(threads=os.cpu_count() or 1, runtime="onnx-int8")
    int8.predict(texts[:batch_size])  # warm up
    int8_batched = _rate(int8.predict, texts, batch_size)
    click.echo(
        json.dumps(
            {
                "model": model.version,
                "cpus": os.cpu_count(),
                "tweets": tweets,
                "baseline_tweets_per_s": round(baseline, 1),
                "one_at_a_time_tweets_per_s": round(one_at_a_time, 1),
                "classify_tweets_per_s": round(batched, 1),
                "batch_size": batch_size,
                "speedup": round(batched / baseline, 2),
                "onnx_int8_tweets_per_s": round(int8_batched, 1),
                "onnx_int8_speedup": round(int8_batched / baseline, 2),
                "model_rss_mb": round((loaded - before) / 2**20, 1),
                "process_rss_mb": round(process.memory_info().rss / 2**20, 1),
            }
        )
    )
