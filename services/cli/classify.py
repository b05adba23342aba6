"""``switchboard classify``: the classify service, and training, prediction and evaluation."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import click

INPUT = click.Path(path_type=Path, exists=True, dir_okay=False)


@click.group(invoke_without_command=True)
@click.pass_context
def classify(ctx: click.Context) -> None:
    """Run the classify service (or train, predict, eval)."""
    if ctx.invoked_subcommand is None:
        from switchboard.classify.service import main as run

        run()


def _artifact_option(function):  # noqa: ANN001, ANN202 - click decorator
    return click.option(
        "--artifact",
        type=click.Path(path_type=Path, file_okay=False, exists=True),
        default=None,
        help="Trained artifact folder (default: the one the classify service ships).",
    )(function)


@classify.command("train")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=Path("data/labeled"),
    show_default=True,
    help="Folder with train.jsonl, dev.jsonl and (reported only) test.jsonl.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Artifact folder to write (default: the one the classify service ships).",
)
@click.option("--seed", type=int, default=13, show_default=True)
@click.option("--epochs", type=click.IntRange(1, 50), help="Default: TrainOptions.epochs (8).")
@click.option("--limit", type=click.IntRange(1), default=None, help="Train on the first N rows.")
@click.option(
    "--layers", type=click.IntRange(1, 6), default=None, help="Keep the backbone's first N layers."
)
def classify_train(
    data_dir: Path,
    out: Path | None,
    seed: int,
    epochs: int | None,
    limit: int | None,
    layers: int | None,
) -> None:
    """Fine-tune the backbone (LoRA) with department and urgency heads; write the artifact."""
    from switchboard.classify.model import DEFAULT_ARTIFACT
    from switchboard.classify.train import TrainOptions, train
    from switchboard.shared.logs import configure_logging

    configure_logging("classify-train")
    out = out or DEFAULT_ARTIFACT
    options = TrainOptions(seed=seed, limit=limit, layers=layers)
    if epochs is not None:
        options = replace(options, epochs=epochs)
    card = train(data_dir, out, options=options)
    from switchboard.classify.evaluation import headline

    summary = {split: headline(figures) for split, figures in card["metrics"].items()}
    click.echo(json.dumps({"artifact": str(out), "metrics": summary}, indent=2))


@classify.command("predict")
@click.option("--input", "input_file", type=INPUT, required=True, help="JSONL: id, text, ...")
@click.option("--output", "output_file", type=click.Path(path_type=Path, dir_okay=False))
@_artifact_option
def classify_predict(input_file: Path, output_file: Path | None, artifact: Path | None) -> None:
    """Label each line of a JSONL file; writes one JSON object per line (stdout by default)."""
    from switchboard.classify.data import read_tweets
    from switchboard.classify.model import TweetClassifier
    from switchboard.classify.offline import predict_rows, prediction_record

    rows = read_tweets(input_file)
    model = TweetClassifier.load(artifact)
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
    default=Path("data/labeled/train.jsonl"),
    show_default=True,
    help="Training split the baselines are fitted on.",
)
@click.option("--baselines/--no-baselines", default=True, show_default=True)
@click.option(
    "--runtime",
    type=click.Choice(["torch", "onnx-int8"]),
    default="torch",
    show_default=True,
    help="Evaluate the model as this runtime runs it (classify.runtime).",
)
@_artifact_option
def classify_eval(
    input_file: Path,
    as_json: bool,
    train_data: Path,
    baselines: bool,
    runtime: str,
    artifact: Path | None,
) -> None:
    """Accuracy, macro-F1, critical recall and confusion matrices, beside two baselines."""
    from switchboard.classify.data import read_tweets
    from switchboard.classify.model import TweetClassifier
    from switchboard.classify.offline import evaluate_file

    model = TweetClassifier.load(artifact, runtime=runtime)
    rows = read_tweets(input_file)
    try:
        figures = evaluate_file(
            model, rows, train_data if train_data.is_file() else None, baselines
        )
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
    Console().print(table)
