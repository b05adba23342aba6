"""``switchboard bench``: speed and memory of the classifier, measured against baselines in the
same run (so the numbers compare on a shared, noisy machine).

- baseline: the naive way, a transformers ``Pipeline`` over the same model (merged encoder and
  heads), one tweet at a time;
- the shipped inference path one tweet at a time, and batched as the classify service batches;
- the same path on the int8 ONNX runtime (``classify.runtime: onnx-int8``);
- the process's resident memory after loading the model;
- the whole pipeline through the broker at fixed offered rates and at the highest rate it
  sustains (throughput.py), with latency percentiles, CPU and peak RSS per service.
It prints one JSON report (also written to ``--report``) and plots the pipeline part.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from switchboard.shared.settings import DEFAULT_CONFIG_FILE

if TYPE_CHECKING:
    from switchboard.classify.config import ClassifyConfig


def naive_pipeline(model):  # noqa: ANN001, ANN201 - transformers types, imported lazily
    """A transformers text-classification style Pipeline over the shipped model's weights."""
    import torch
    from transformers import AutoTokenizer, Pipeline

    from switchboard.classify.tokens import prepare_text

    class TweetPipeline(Pipeline):
        def _sanitize_parameters(self, **kwargs):  # noqa: ANN003, ANN202
            return {}, {}, {}

        def preprocess(self, text: str):  # noqa: ANN202
            return self.tokenizer(
                prepare_text(text), truncation=True, max_length=model.max_length,
                return_tensors="pt",
            )  # fmt: skip

        def _forward(self, inputs):  # noqa: ANN001, ANN202
            encoded = model.encoder(inputs["input_ids"], inputs["attention_mask"])
            return model.heads(encoded)[0]

        def postprocess(self, logits):  # noqa: ANN001, ANN202
            probs = torch.softmax(logits[0], dim=-1)
            return {
                "label": model.departments[int(probs.argmax())].value,
                "score": float(probs.max()),
            }

    tokenizer = AutoTokenizer.from_pretrained(str(model.backbone))
    pipeline = TweetPipeline(model=model.encoder.transformer, tokenizer=tokenizer)
    return lambda texts: [pipeline(text) for text in texts]


def _rate(predict, texts: list[str], batch: int) -> float:  # noqa: ANN001
    started = time.perf_counter()
    for start in range(0, len(texts), batch):
        predict(texts[start : start + batch])
    return len(texts) / (time.perf_counter() - started)


def measure_classifier(
    texts: list[str],
    batch_size: int,
    others: Sequence[Path] = (),
    rounds: int = 5,
    bucket_size: int = 8,
    threads: int = 0,
    artifact: str | None = None,
) -> dict:
    """Tweets per second of ``artifact`` (the configured one; None: the default): the naive
    baseline, one at a time, batched, batched on int8; then each of ``others`` (artifacts, e.g.
    a distilled student) batched on int8. Each is measured ``rounds`` times, the rounds
    interleaved so that a slow moment on a shared machine hits every contender alike, and the
    median is reported."""
    import psutil  # the dev extra: measuring tools stay out of the runtime install

    from switchboard.classify.model import TweetClassifier, available_cpus

    process = psutil.Process(os.getpid())
    before = process.memory_info().rss
    inference = {"threads": threads, "bucket_size": bucket_size}  # as the classify service
    model = TweetClassifier.load(artifact, **inference)
    loaded = process.memory_info().rss
    few = texts[: max(64, len(texts) // 8)]
    naive = naive_pipeline(model)
    int8 = TweetClassifier.load(artifact, runtime="onnx-int8", **inference)
    students = [TweetClassifier.load(artifact, runtime="onnx-int8", **inference)
                for artifact in others]  # fmt: skip
    contenders: dict[str, tuple[Any, list[str], int]] = {
        "baseline": (naive, few, 1),
        "one_at_a_time": (model.predict, few, 1),
        "batched": (model.predict, texts, batch_size),
        "int8": (int8.predict, texts, batch_size),
        **{f"other:{i}": (m.predict, texts, batch_size) for i, m in enumerate(students)},
    }
    for predict, sample, batch in contenders.values():
        predict(sample[: max(batch, 4)])  # warm up
    measured: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, (predict, sample, batch) in contenders.items():
            measured[name].append(_rate(predict, sample, batch))
    rate = {name: statistics.median(values) for name, values in measured.items()}
    baseline = rate["baseline"]
    alternatives = [
        {"model": student.version, "artifact": str(artifact),
         "onnx_int8_tweets_per_s": round(rate[f"other:{i}"], 1),
         "speedup": round(rate[f"other:{i}"] / baseline, 2)}
        for i, (student, artifact) in enumerate(zip(students, others, strict=True))
    ]  # fmt: skip
    one_at_a_time, batched, int8_batched = rate["one_at_a_time"], rate["batched"], rate["int8"]
    return {
        "model": model.version,
        "tweets": len(texts),
        "baseline_tweets_per_s": round(baseline, 1),
        "one_at_a_time_tweets_per_s": round(one_at_a_time, 1),
        "torch_batched_tweets_per_s": round(batched, 1),
        "onnx_int8_tweets_per_s": round(int8_batched, 1),
        "batch_size": batch_size,
        "bucket_size": bucket_size,
        "threads": threads or available_cpus(),
        "rounds": rounds,
        "rounds_tweets_per_s": {
            name: [round(value, 1) for value in measured[name]]
            for name in ("baseline", "one_at_a_time", "batched", "int8")
        },
        "other_models": alternatives,
        "model_rss_mb": round((loaded - before) / 2**20, 1),
        "process_rss_mb": round(process.memory_info().rss / 2**20, 1),
    }


async def measure_pipeline(
    config_file: Path,
    samples: Path,
    rates: list[float],
    seconds: float,
    probes: int,
    say,  # noqa: ANN001
) -> dict:
    """The four services and the broker at each offered rate, then the highest sustained."""
    from switchboard.cli.resources import ResourceSampler, sampling
    from switchboard.cli.stack import Stack, StackOptions
    from switchboard.cli.throughput import LoadRun

    workdir = Path(tempfile.mkdtemp(prefix="switchboard-bench-"))
    stack = Stack(StackOptions(workdir=workdir, config_file=config_file, replay_file=None))

    # The measuring process (observer and loopback inbox) shares the cores: its CPU is shown.
    observer = {"observer": os.getpid()}
    sampler = ResourceSampler(lambda: stack.pids() | observer, cpu_only=frozenset(observer))
    try:
        async with sampling(sampler):
            await stack.start(progress=say)
            run = LoadRun(stack, sampler, samples, seconds=seconds, progress=say)
            steps = [await run.step(rate) for rate in rates]
            sustained = [s.offered_per_s for s in steps if s.sustained]
            best = max(sustained, default=None)
            if probes and steps and steps[-1].sustained:
                higher, tried = await run.highest_sustained(round(rates[-1] * 1.25), most=probes)
                steps += tried
                best = higher or best
            failed = min((s.offered_per_s for s in steps if not s.sustained), default=None)
            if probes and best is not None and failed is not None and failed > best:
                best, tried = await run.bisect(best, failed, most=min(2, probes))
                steps += tried
    finally:
        await stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "e2e": [s.report() for s in sorted(steps, key=lambda s: s.offered_per_s)],
        "max_sustained_per_s": best,
        "peak_rss_mb": sampler.peak_rss_mb(),
    }


def plot(report: dict, out: Path) -> None:
    """Throughput and latency against offered rate, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    steps = report["e2e"]
    offered = [s["offered_per_s"] for s in steps]
    figure, (left, right) = pyplot.subplots(1, 2, figsize=(10, 4), layout="constrained")
    left.plot(offered, offered, ":", color="grey", label="offered")
    left.plot(offered, [s["achieved_per_s"] for s in steps], "o-", label="routed")
    if report.get("max_sustained_per_s"):
        left.axvline(report["max_sustained_per_s"], color="green", alpha=0.4,
                     label=f"max sustained {report['max_sustained_per_s']:g}/s")  # fmt: skip
    left.set(xlabel="offered tweets/s", ylabel="tweets/s", title="Throughput")
    left.legend()
    for key, label in (("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99")):
        right.plot(offered, [s[key] for s in steps], "o-", label=f"routed {label}")
    right.plot(offered, [s["delivered_p99_ms"] for s in steps], "s--", label="delivered p99")
    right.set(xlabel="offered tweets/s", ylabel="ms (log)", yscale="log",
              title="Latency from ingested")  # fmt: skip
    right.legend()
    figure.suptitle(plot_title(report))
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    pyplot.close(figure)


def plot_title(report: dict) -> str:
    """The machine, and the classifier's speedup when the run measured it."""
    title = f"Switchboard on {report['cpus']} CPUs"
    if "speedup" not in report:
        return title
    return (
        f"{title}: classifier {report['speedup']}x the naive baseline "
        f"({report['classify_tweets_per_s']:g} vs {report['baseline_tweets_per_s']:g} tweets/s)"
    )


def _rates(value: str) -> list[float]:
    try:
        rates = sorted(float(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: comma-separated tweets per second") from None
    if not rates or rates[0] <= 0:
        raise click.BadParameter(f"{value!r}: rates must be positive")
    return rates


@click.command()
@click.option(
    "--samples", type=click.Path(path_type=Path, exists=True), default="data/samples/tweets.jsonl"
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=DEFAULT_CONFIG_FILE,
    show_default=True,
)
@click.option("--tweets", type=int, default=512, show_default=True, help="Tweets per measurement.")
@click.option(
    "--batch-size", type=int, default=None, help="Tweets per batch; default: classify.batch_size."
)
@click.option(
    "--rounds",
    type=click.IntRange(1),
    default=5,
    show_default=True,
    help="Measurements of each classifier contender, interleaved; the median is reported.",
)
@click.option("--rates", default="50,100,200", show_default=True, help="Offered tweets/s.")
@click.option("--seconds", type=float, default=20.0, show_default=True, help="Per offered rate.")
@click.option(
    "--probes",
    type=click.IntRange(0, 20),
    default=6,
    show_default=True,
    help="Rates tried above the last one (x1.25 each) to find the highest sustained.",
)
@click.option(
    "--classifier/--no-classifier",
    default=True,
    show_default=True,
    help="Measure the classifier against the naive baseline.",
)
@click.option(
    "--pipeline/--no-pipeline",
    default=True,
    show_default=True,
    help="Drive the whole pipeline at the offered rates.",
)
@click.option(
    "--report",
    "report_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default="bench/report.json",
    show_default=True,
)
@click.option(
    "--plot",
    "plot_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default="bench/pipeline.png",
    show_default=True,
)
@click.option(
    "--also",
    "others",
    multiple=True,
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    help="Another trained artifact to measure on int8 in the same run (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON report.")
def bench(
    samples: Path,
    config_file: Path,
    tweets: int,
    batch_size: int | None,
    rounds: int,
    rates: str,
    seconds: float,
    probes: int,
    classifier: bool,
    pipeline: bool,
    report_file: Path,
    plot_file: Path,
    others: tuple[Path, ...],
    as_json: bool,
) -> None:
    """Classifier speed against the naive baseline, then the pipeline under load; JSON."""
    from switchboard.cli.config import PipelineSettings
    from switchboard.cli.stack import stop_on_sigterm

    if not (classifier or pipeline):
        raise click.UsageError("--no-classifier and --no-pipeline leave nothing to measure")
    stop_on_sigterm()
    say = (lambda _: None) if as_json else (lambda m: click.echo(m, err=True))
    offered = _rates(rates)
    report: dict = {"cpus": os.cpu_count()}
    if classifier:
        settings = PipelineSettings.load(config_file=config_file)
        lines = samples.read_text().splitlines()
        texts = [json.loads(line)["data"]["text"] for line in lines if line]
        texts = (texts * (tweets // len(texts) + 1))[:tweets]
        say("measuring the classifier against the naive baseline")
        report.update(
            _classifier_report(settings.config.classify, texts, batch_size, others, rounds)
        )
    if pipeline:
        report.update(
            asyncio.run(measure_pipeline(config_file, samples, offered, seconds, probes, say))
        )
    report_file.parent.mkdir(parents=True, exist_ok=True)
    report_file.write_text(json.dumps(report, indent=2) + "\n")
    if pipeline:
        plot(report, plot_file)
        say(f"report {report_file}, plot {plot_file}")
    click.echo(json.dumps(report, indent=None if as_json else 2))


def _classifier_report(
    classify: ClassifyConfig,
    texts: list[str],
    batch_size: int | None,
    others: Sequence[Path],
    rounds: int,
) -> dict:
    """``measure_classifier`` on the configured model, with the runtime classify serves on and
    its speedup over the baseline: the median and each round's own."""
    report = measure_classifier(
        texts,
        batch_size or classify.batch_size,
        others,
        rounds=rounds,
        bucket_size=classify.bucket_size,
        threads=classify.threads,
        artifact=classify.artifact,
    )
    int8 = classify.runtime == "onnx-int8"
    report["runtime"] = classify.runtime
    report["classify_tweets_per_s"] = report[
        "onnx_int8_tweets_per_s" if int8 else "torch_batched_tweets_per_s"
    ]
    report["speedup"] = round(report["classify_tweets_per_s"] / report["baseline_tweets_per_s"], 2)
    # Each round's own ratio (contenders measured back to back): how much it moves on this machine.
    rounds = report["rounds_tweets_per_s"]
    report["speedup_by_round"] = [
        round(c / b, 2)
        for b, c in zip(rounds["baseline"], rounds["int8" if int8 else "batched"], strict=True)
    ]
    return report
