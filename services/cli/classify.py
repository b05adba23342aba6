"""``switchboard classify``: the classify service, and training, prediction and evaluation."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import click

INPUT = click.Path(path_type=Path, exists=True, dir_okay=False)


@click.group(invoke_without_command=True)
@click.option(
    "--shadow", is_flag=True,
    help="Label the raw tweets with the --artifact candidate into switchboard.tweets.shadow "
    "(a consumer group of its own), routing nothing.",
)  # fmt: skip
@click.option(
    "--artifact", "shadow_artifact", default=None, metavar="NAME|DIR",
    help="With --shadow: the candidate artifact (a shipped name or a folder).",
)  # fmt: skip
@click.pass_context
def classify(ctx: click.Context, shadow: bool, shadow_artifact: str | None) -> None:
    """Run the classify service (or train, predict, eval, replay, compare)."""
    if ctx.invoked_subcommand is None:
        if shadow_artifact and not shadow:
            raise click.UsageError("--artifact names the shadow candidate: give --shadow too")
        if shadow and not shadow_artifact:
            raise click.UsageError("--shadow needs the candidate: --artifact NAME|DIR")
        from switchboard.classify.service import main as run

        run(**({"shadow": True, "shadow_artifact": shadow_artifact} if shadow else {}))


def _resolve_artifact(ctx: click.Context, param: click.Parameter, value: str | None) -> Path | None:
    if value is None:
        return None
    from switchboard.classify.model import resolve_artifact

    try:
        return resolve_artifact(value)
    except FileNotFoundError as exc:
        raise click.BadParameter(str(exc)) from None


def _artifact_option(function):  # noqa: ANN001, ANN202 - click decorator
    return click.option(
        "--artifact",
        default=None,
        callback=_resolve_artifact,
        help="A shipped artifact's name (minilm-real-v5, minilm-commercial-v3, ...) or a trained "
        "artifact folder. Default: minilm-real-v5.",
    )(function)


@classify.command("train")
@click.option(
    "--data",
    "data",
    multiple=True,
    metavar="DIR[:WEIGHT]",
    help="Folder with train.jsonl, dev.jsonl and (reported only) test.jsonl, and the loss "
    "weight of its rows; repeat for several. The last folder with a dev.jsonl selects the "
    "epoch and calibrates. Default: data/labeled, then data/labeled/real:2.",
)
@click.option(
    "--licences",
    type=click.Choice(["all", "commercial"]),
    default="all",
    show_default=True,
    help="commercial: train only on rows whose licence allows commercial use.",
)
@click.option("--version", "version", default=None, help="Artifact name written in its card.")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Artifact folder to write (a new one: `make train` writes minilm-real-v6).",
)
@click.option("--seed", type=int, default=13, show_default=True)
@click.option("--epochs", type=click.IntRange(1, 50), help="Default: TrainOptions.epochs (8).")
@click.option("--limit", type=click.IntRange(1), default=None, help="Train on the first N rows.")
@click.option(
    "--layers", type=click.IntRange(1, 6), default=None, help="Keep the backbone's first N layers."
)
@click.option(
    "--threads", type=click.IntRange(1), default=None, help="Default: TrainOptions.threads (2)."
)
@click.option(
    "--lora-rank",
    type=click.IntRange(0),
    default=None,
    help="Rank of the LoRA adapters; 0 tunes every encoder weight instead (give --lr 1e-4). "
    "Default: TrainOptions.lora_rank (32).",
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Learning rate of the encoder's tuned weights. Default: TrainOptions.lr (1e-3).",
)
@click.option(
    "--backbone",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="A Hugging Face model folder of the same architecture to start from (one adapted to "
    "tweets by data/tools/domain_pretrain.py, say). Default: the shipped all-MiniLM-L6-v2. "
    "With --lora-rank 0 the artifact holds every encoder weight and serves without it.",
)
@click.option(
    "--teacher",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="Distil from this trained artifact (e.g. the shipped one) into the student.",
)
@click.option(
    "--unlabeled",
    type=INPUT,
    default=None,
    help="JSONL of extra texts ('text') the student learns the teacher's logits on.",
)
@click.option(
    "--distil-alpha",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Weight of the hard-label loss; the teacher's gets 1 - alpha.",
)
@click.option(
    "--distil-temperature", type=click.FloatRange(min=0, min_open=True), default=2.0,
    show_default=True,
)  # fmt: skip
@click.option(
    "--critical-weight",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Extra loss weight of critical urgency. Default: TrainOptions.critical_weight (2.0).",
)
@click.option(
    "--init-from-teacher",
    is_flag=True,
    help="Start the student from what the teacher tuned (its adapters, or every encoder weight "
    "with --lora-rank 0) for the layers it keeps, and its heads.",
)
@click.option(
    "--lexical/--no-lexical",
    default=True,
    show_default=True,
    help="Blend in a TF-IDF model fitted on the same rows, its weight chosen on dev.",
)
@click.option(
    "--feedback", "feedback", default=None, metavar="topic|FILE[:WEIGHT]",
    help="Also learn people's corrections: 'topic' reads switchboard.feedback, FILE a JSONL "
    "export of it (export-feedback). The latest correction of a tweet wins and replaces any "
    "training row of the same text; WEIGHT (default 3) is their loss weight. Needs --out.",
)  # fmt: skip
def classify_train(
    data: tuple[str, ...],
    licences: str,
    version: str | None,
    out: Path,
    seed: int,
    epochs: int | None,
    limit: int | None,
    layers: int | None,
    threads: int | None,
    lora_rank: int | None,
    lr: float | None,
    backbone: Path | None,
    teacher: Path | None,
    unlabeled: Path | None,
    distil_alpha: float,
    distil_temperature: float,
    critical_weight: float | None,
    init_from_teacher: bool,
    lexical: bool,
    feedback: str | None,
) -> None:
    """Fine-tune the backbone (LoRA) with department and urgency heads; write the artifact.

    With --teacher, train by knowledge distillation from that artifact (see train.py)."""
    # The arguments are checked before torch is loaded: a wrong one fails at once.
    from switchboard.classify.data import DataFolder, default_data

    if (unlabeled is not None or init_from_teacher) and teacher is None:
        raise click.UsageError("--unlabeled and --init-from-teacher need --teacher")
    try:
        folders = [DataFolder.parse(spec) for spec in data] or default_data()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--data") from None
    for folder in folders:
        if not folder.split("train").is_file():
            raise click.BadParameter(f"{folder.path}: no train.jsonl", param_hint="--data")
    from switchboard.classify.train import TrainOptions, train
    from switchboard.shared.logs import configure_logging

    configure_logging("classify-train")
    learnt = None
    if feedback is not None:
        folder, learnt = _feedback_folder(feedback, out)
        folders.insert(0, folder)  # first, so that --limit keeps the corrections
    options = TrainOptions(
        seed=seed, limit=limit, layers=layers, licences=licences, version=version, lexical=lexical
    )
    if teacher is not None:
        options = replace(
            options,
            teacher=str(teacher),
            unlabeled=str(unlabeled) if unlabeled else None,
            distil_alpha=distil_alpha,
            distil_temperature=distil_temperature,
            init_from_teacher=init_from_teacher,
        )
    if epochs is not None:
        options = replace(options, epochs=epochs)
    if threads is not None:
        options = replace(options, threads=threads)
    if critical_weight is not None:
        options = replace(options, critical_weight=critical_weight)
    if lora_rank is not None:
        options = replace(options, lora_rank=lora_rank)
    if lr is not None:
        options = replace(options, lr=lr)
    try:
        card = train(folders, out, backbone=backbone, options=options)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if learnt is not None:  # what the corrections were and what was left out, in the card
        card["feedback"] = learnt
        (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    _print_card(out, card)


def _feedback_folder(spec: str, out: Path):  # noqa: ANN202
    """The corrections ``spec`` names as a training folder in the new artifact."""
    import asyncio

    from switchboard.classify import feedback
    from switchboard.classify.data import DataFolder
    from switchboard.shared.settings import ServiceSettings

    source, _, weight_text = spec.rpartition(":") if ":" in spec else (spec, "", "")
    try:
        weight = float(weight_text) if weight_text else feedback.FEEDBACK_WEIGHT
    except ValueError:
        raise click.BadParameter(
            "the weight after ':' must be a number", param_hint="--feedback"
        ) from None
    if weight <= 0:
        raise click.BadParameter("the weight must be positive", param_hint="--feedback")
    try:
        if source == "topic":
            corrections = asyncio.run(feedback.read_topic(ServiceSettings.load().kafka))
        else:
            corrections = feedback.read_file(Path(source))
    except (OSError, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="--feedback") from None
    rows, summary = feedback.training_rows(corrections)
    click.echo(f"feedback: {json.dumps(summary)}", err=True)
    if not rows:
        raise click.ClickException(f"no correction to learn from in {source}: {summary}")
    path = feedback.write_rows(rows, out / "feedback")
    summary = {"source": source, "weight": weight, **summary}
    return DataFolder(path.parent, weight, overrides=True), summary


@classify.command("export-feedback")
@click.option("--since", callback=lambda c, p, v: _when(c, p, v), default=None, metavar="TIME",
              help="ISO 8601, or a span back from now (default: everything).")  # fmt: skip
@click.option("--out", "out_file", type=click.Path(path_type=Path, dir_okay=False),
              required=True)  # fmt: skip
def classify_export_feedback(since, out_file: Path) -> None:  # noqa: ANN001
    """Write the corrections on switchboard.feedback as JSON lines (what train --feedback
    reads), one per correction, with the tweet."""
    import asyncio

    from switchboard.classify import feedback
    from switchboard.shared.settings import ServiceSettings

    corrections = asyncio.run(feedback.read_topic(ServiceSettings.load().kafka, since))
    out_file.write_text("".join(c.model_dump_json() + "\n" for c in corrections), "utf-8")
    click.echo(f"{len(corrections)} corrections written to {out_file}")


def _print_card(artifact: Path, card: dict) -> None:
    from switchboard.classify.evaluation import headline

    summary = {
        f"{name}/{split}": headline(figures)
        for name, splits in card["metrics"].items()
        for split, figures in splits.items()
    }
    blend = card.get("lexical", {}).get("blend")
    click.echo(
        json.dumps(
            {
                "artifact": str(artifact),
                "version": card["version"],
                "licence": card["licence"]["spdx"],
                "blend": blend,
                "metrics": summary,
            },
            indent=2,
        )  # fmt: skip
    )


@classify.command("blend")
@click.option(
    "--from",
    "source",
    required=True,
    callback=_resolve_artifact,
    help="The trained artifact (a shipped name or a folder) whose encoder is blended.",
)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True)
@click.option("--version", "version", required=True, help="The new artifact's name.")
@click.option("--data", "data", multiple=True, metavar="DIR[:WEIGHT]",
              help="As for train; default: the data the artifact was trained on.")  # fmt: skip
@click.option("--licences", type=click.Choice(["all", "commercial"]), default=None,
              help="As for train; default: the artifact's.")  # fmt: skip
def classify_blend(
    source: Path, out: Path, version: str, data: tuple[str, ...], licences: str | None
) -> None:
    """Copy a trained artifact to OUT with a TF-IDF model blended in (what `train` does at
    its end), fitted on the training rows of the artifact's data folders as they are now (or
    --data), the blend chosen on their dev split; the card records those rows when they are
    not the ones the encoder learnt (after a relabeling)."""
    from switchboard.classify.data import DataFolder
    from switchboard.classify.train import TrainingData, TrainOptions, attach_lexical
    from switchboard.shared.logs import configure_logging

    configure_logging("classify-train")
    card = json.loads((source / "card.json").read_text())
    folders = [DataFolder.parse(spec) for spec in data] or [
        DataFolder(Path(entry["path"]), entry["weight"], entry.get("overrides", False))
        for entry in card["data"].values()
    ]
    options = TrainOptions(
        seed=card["options"]["seed"], version=version,
        licences=licences or card["options"]["licences"],
    )  # fmt: skip
    if out.resolve() != source.resolve():
        shutil.copytree(source, out, dirs_exist_ok=True)
    _print_card(out, attach_lexical(out, TrainingData.read(folders, options), options))


@classify.command("build-onnx")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="The folder classify reads it from (SWITCHBOARD_ONNX_DIR).",
)
@click.option("--all", "every", is_flag=True, help="Every shipped artifact, not one.")
@_artifact_option
def classify_build_onnx(out: Path, every: bool, artifact: Path | None) -> None:
    """Build the int8 ONNX model of an artifact (or of every shipped one) into OUT ahead of
    time, as the image does at build time, so that classify starts without exporting and
    quantizing it. Prints each file and how long its build took."""
    from switchboard.classify.model import TweetClassifier, shipped_artifacts

    for name in shipped_artifacts() if every else [artifact]:
        started = time.monotonic()
        model = TweetClassifier.load(name, runtime="onnx-int8", onnx_dir=out)
        assert model.onnx is not None
        click.echo(f"{model.onnx.path} ({time.monotonic() - started:.1f} s)")


_runtime_option = click.option(
    "--runtime",
    type=click.Choice(["torch", "onnx-int8"]),
    default="onnx-int8",
    show_default=True,
    help="Run the model as this runtime runs it (classify.runtime): int8, as classify serves "
    "by default, or torch's fp32.",
)


_threads_option = click.option(
    "--threads", type=click.IntRange(1), default=None, help="Default: every core."
)


@classify.command("predict")
@click.option("--input", "input_file", type=INPUT, required=True, help="JSONL: id, text, ...")
@click.option("--output", "output_file", type=click.Path(path_type=Path, dir_okay=False))
@_runtime_option
@_threads_option
@_artifact_option
def classify_predict(
    input_file: Path, output_file: Path | None, runtime: str, threads: int | None,
    artifact: Path | None,
) -> None:  # fmt: skip
    """Label each line of a JSONL file; writes one JSON object per line (stdout by default)."""
    from switchboard.classify.data import read_tweets
    from switchboard.classify.model import TweetClassifier
    from switchboard.classify.offline import predict_rows, prediction_record

    try:
        rows = read_tweets(input_file)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    model = TweetClassifier.load(artifact, threads=threads or 0, runtime=runtime)
    records = [
        json.dumps(prediction_record(row, prediction, model), ensure_ascii=False)
        for row, prediction in zip(rows, predict_rows(model, rows), strict=True)
    ]
    text = "\n".join(records) + ("\n" if records else "")
    if output_file:
        output_file.write_text(text, encoding="utf-8")
    else:
        click.echo(text, nl=False)


@classify.command("eval")
@click.option("--input", "input_file", type=INPUT, required=True, help="Labeled JSONL.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
@click.option(
    "--train-data",
    type=click.Path(path_type=Path, dir_okay=False),
    multiple=True,
    default=[Path("data/labeled/train.jsonl"), Path("data/labeled/real/train.jsonl")],
    show_default=True,
    help="Training splits the baselines are fitted on (repeat for several).",
)
@click.option("--baselines/--no-baselines", default=True, show_default=True)
@_runtime_option
@_threads_option
@click.option(
    "--errors",
    "error_rows",
    type=click.IntRange(0),
    default=0,
    metavar="N",
    help="Also list the first N mistakes: gold, predicted, text (misrouted first).",
)
@_artifact_option
def classify_eval(
    input_file: Path,
    as_json: bool,
    train_data: tuple[Path, ...],
    baselines: bool,
    runtime: str,
    threads: int | None,
    error_rows: int,
    artifact: Path | None,
) -> None:
    """Accuracy, macro-F1, critical recall and confusion matrices, beside two baselines."""
    from switchboard.classify.data import read_tweets
    from switchboard.classify.model import TweetClassifier
    from switchboard.classify.offline import evaluate_file

    model = TweetClassifier.load(artifact, threads=threads or 0, runtime=runtime)
    try:
        rows = read_tweets(input_file)
        present = [path for path in train_data if path.is_file()]
        figures = evaluate_file(model, rows, present, baselines, error_rows)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(figures, indent=2))
    else:
        _print_summary(figures)


def _print_summary(figures: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from switchboard.classify.evaluation import headline

    table = Table(title=f"{figures['n']} tweets")
    table.add_column("metric")
    columns = {"model " + figures["model_version"]: figures, **figures.get("baselines", {})}
    for name in columns:
        table.add_column(name, justify="right")
    for metric in list(headline(figures))[1:]:
        table.add_row(metric, *(f"{columns[name][metric]:.3f}" for name in columns))
    table.add_row("department_ece", f"{figures['department_ece']:.3f}")
    console = Console()
    console.print(table)
    metrics = [m for m in headline(figures) if m != "n"]
    for key, column in (("by_source", "source"), ("by_selection", "rows")):
        if key not in figures:
            continue
        groups = Table(title=key.replace("_", " "))
        for name in (column, "n", *metrics):
            groups.add_column(name, justify="left" if name == column else "right")
        for group, row in figures[key].items():
            groups.add_row(group, str(row["n"]), *(f"{row[m]:.3f}" for m in metrics))
        console.print(groups)
    if figures.get("errors"):
        mistakes = Table(title=f"first {len(figures['errors'])} errors")
        for column in ("id", "gold", "predicted", "text"):
            mistakes.add_column(column, overflow="fold")
        for error in figures["errors"]:
            mistakes.add_row(error["id"], error["gold"], error["predicted"], error["text"])
        console.print(mistakes)


def _when(ctx: click.Context, param: click.Parameter, value: str | None):  # noqa: ANN202
    """A time: ISO 8601 (``2026-12-01T09:00Z``), or a span back from now (``90m``, ``24h``,
    ``7d``)."""
    if value is None:
        return None
    from datetime import UTC, datetime, timedelta

    units = {"m": "minutes", "h": "hours", "d": "days"}
    text = value.strip()
    if text[:-1].replace(".", "", 1).isdigit() and text[-1:] in units:
        return datetime.now(UTC) - timedelta(**{units[text[-1]]: float(text[:-1])})
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter("give ISO 8601 (2026-12-01T09:00Z) or a span (24h, 7d)") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@classify.command("replay")
@click.option("--from", "since", required=True, callback=_when, metavar="TIME",
              help="ISO 8601, or a span back from now (24h, 7d).")  # fmt: skip
@click.option("--to", "until", callback=_when, metavar="TIME", help="Default: now.")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=128, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_artifact_option
def classify_replay(since, until, batch_size: int, as_json: bool, artifact: Path | None) -> None:  # noqa: ANN001
    """Label the raw tweets of a past time range with a candidate artifact into
    switchboard.tweets.shadow (nothing is routed), to judge it on real traffic before it
    serves: then `switchboard classify compare`."""
    import asyncio

    from switchboard.classify.replay import replay
    from switchboard.classify.service import load_model
    from switchboard.classify.settings import ClassifySettings
    from switchboard.shared import topics
    from switchboard.shared.kafka import ensure_topics

    if until is not None and until <= since:
        raise click.BadParameter("--to must be after --from", param_hint="--to")
    # As classify would serve the candidate: the YAML file's model options (backbone, runtime,
    # max_length, buckets) and the int8 files from SWITCHBOARD_ONNX_DIR (the image's), so that
    # `compare` measures the model, not a difference of settings.
    settings = ClassifySettings.load()
    model = load_model(settings.config.classify, str(artifact) if artifact else None,
                       settings.onnx_dir)  # fmt: skip

    async def go():  # noqa: ANN202
        await ensure_topics(settings.kafka, [topics.SHADOW], settings.config.topics.partitions,
                            settings.config.topics.replication_factor)  # fmt: skip
        return await replay(settings.kafka, model, since, until, batch_size=batch_size)

    report = asyncio.run(go())
    figures = {
        "model_version": report.model_version, "from": report.since.isoformat(),
        "to": report.until.isoformat() if report.until else None, "labelled": report.labelled,
        "skipped": report.skipped, "seconds": report.seconds,
        "partitions": {str(p): list(r) for p, r in report.partitions.items()},
    }  # fmt: skip
    if as_json:
        click.echo(json.dumps(figures))
        return
    click.echo(
        f"{report.labelled} tweets labelled by {report.model_version} into "
        f"switchboard.tweets.shadow in {report.seconds} s ({report.skipped} skipped)"
    )


@classify.command("compare")
@click.option("--since", callback=_when, default="24h", show_default=True, metavar="TIME",
              help="ISO 8601, or a span back from now.")  # fmt: skip
@click.option("--examples", type=click.IntRange(0, 20), default=3, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
def classify_compare(since, examples: int, as_json: bool) -> None:  # noqa: ANN001
    """The live model against each candidate on switchboard.tweets.shadow (a shadow classify
    or a replay): agreement, accuracy and critical recall and precision on the tweets people
    corrected, and the most frequent disagreements with examples."""
    import asyncio

    from switchboard.shared import topics
    from switchboard.shared.comparison import compare, read_since
    from switchboard.shared.settings import ServiceSettings

    found = asyncio.run(read_since(ServiceSettings.load().kafka, since))
    report = compare(found[topics.CLASSIFIED], found[topics.SHADOW], found[topics.FEEDBACK],
                     examples)  # fmt: skip
    report["since"] = since.isoformat()
    if as_json:
        click.echo(json.dumps(report, ensure_ascii=False))
        return
    _print_comparison(report)


def _print_comparison(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    console = Console()
    live = report["live"]
    console.print(f"since {report['since']}: {live['tweets']} tweets labelled live "
                  f"({', '.join(live['versions']) or 'none'}), "
                  f"{report['corrected_tweets']} corrected by people")  # fmt: skip
    if not report["candidates"]:
        console.print("no candidate labels on switchboard.tweets.shadow in that time")
    for candidate in report["candidates"]:
        table = Table(title=f"live against {candidate['model_version']} "
                            f"({candidate['compared']} tweets both labelled)")  # fmt: skip
        for column in ("", "live", "candidate"):
            table.add_column(column)
        scores = candidate["on_corrected"]
        table.add_row("department agreement", "", pct(candidate["department_agreement"]))
        table.add_row("urgency agreement", "", pct(candidate["urgency_agreement"]))
        for key, name in (("department_accuracy", "department accuracy on corrected"),
                          ("urgency_accuracy", "urgency accuracy on corrected"),
                          ("critical_recall", "critical recall on corrected"),
                          ("critical_precision", "critical precision on corrected")):  # fmt: skip
            table.add_row(name, pct(scores["live"][key]), pct(scores["candidate"][key]))
        console.print(table)
        for moved in candidate["disagreements"][:5]:
            console.print(f"  {moved['count']:>5}  {moved['live']} -> {moved['candidate']}")
            for example in moved["examples"]:
                console.print(f"         {example['text'][:120]!r}")
