"""``switchboard bench``: speed and memory of the classifier, measured against a baseline in the
same run (so the numbers compare on a shared, noisy machine).

- classify: tweets per second of the shipped model batched as the classify service batches
  (``classify.batch_size``), against the same model one tweet at a time (the baseline), on the
  sample tweets; the process's resident memory after loading the model.
- The pipeline's end-to-end latency is what ``switchboard demo --json`` reports (p50/p99).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click
import psutil


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
    one_at_a_time = _rate(model.predict, texts[: max(64, tweets // 8)], 1)
    batched = _rate(model.predict, texts, batch_size)
    click.echo(
        json.dumps(
            {
                "model": model.version,
                "cpus": os.cpu_count(),
                "tweets": tweets,
                "baseline_one_at_a_time_per_s": round(one_at_a_time, 1),
                f"batched_{batch_size}_per_s": round(batched, 1),
                "speedup_vs_baseline": round(batched / one_at_a_time, 2),
                "model_rss_mb": round((loaded - before) / 2**20, 1),
                "process_rss_mb": round(process.memory_info().rss / 2**20, 1),
            }
        )
    )
