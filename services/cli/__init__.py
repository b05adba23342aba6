"""The ``switchboard`` command: run a service, the embedded broker, or the whole pipeline.

Heavy imports (torch, transformers) happen inside the commands that need them, so that
``switchboard route --help`` or the route service itself never load a model.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import click

from switchboard.cli.classify import classify
from switchboard.cli.config import SERVICE_CONFIGS, SwitchboardConfig
from switchboard.cli.dlq import dlq
from switchboard.cli.ingest import ingest
from switchboard.shared.settings import (
    DEFAULT_CONFIG_FILE,
    ConfigError,
    check_config_file,
    config_file_in_use,
    config_overrides,
)

SAMPLES = Path("data/samples/tweets.jsonl")
WORKDIR = Path(".switchboard")
# What `run` makes in its work folder (Stack): only a folder holding nothing else is removed
# to start clean, so that `--workdir .` cannot delete a repository or a home folder.
RUN_MADE = frozenset({"broker", "inbox", "logs", "tmp", "stack.json"})


# Commands of the dev extra (benches): imported when run, so that the runtime install, without
# psutil, aiosmtpd or the embedded broker, still runs the four services.
LAZY_COMMANDS = {
    "bench": "switchboard.cli.bench:bench",
    "bench-restore": "switchboard.cli.restore:bench_restore",
}


# The modules only the extras install, and which extra brings each.
EXTRA_MODULES = {
    "noida_db": "dev",
    "aiosmtpd": "dev",
    "psutil": "dev",
    "matplotlib": "dev",
    "onnx": "train",
}


class _Group(click.Group):
    """Turns a configuration error into one clear message and exit status 2, a broker it
    cannot reach into one and status 1; loads the dev extra's commands only when one of them
    is run."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS:
            module, attribute = LAZY_COMMANDS[name].split(":")
            return getattr(importlib.import_module(module), attribute)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            click.echo(f"switchboard: {exc}", err=True)
            sys.exit(2)
        except ModuleNotFoundError as exc:
            extra = EXTRA_MODULES.get((exc.name or "").split(".")[0])
            if extra is None:
                raise
            command = ctx.invoked_subcommand or "this command"
            click.echo(
                f"switchboard: `{command}` needs the {extra} extra (no module {exc.name}): "
                f"pip install 'switchboard[{extra}]'",
                err=True,
            )
            sys.exit(2)
        except Exception as exc:
            from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError

            # the broker out of reach; any other Kafka error keeps its traceback (a bug's)
            if not isinstance(exc, (KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError)):
                raise
            # The broker unreachable or refusing: one line that names where it was looked for.
            click.echo(f"switchboard: Kafka at {_bootstrap()}: {type(exc).__name__}: {exc}",
                       err=True)  # fmt: skip
            sys.exit(1)


def _bootstrap() -> str:
    from switchboard.shared.settings import KafkaSettings

    try:
        return KafkaSettings().bootstrap_servers or "(none set)"
    except Exception:  # noqa: BLE001 - only a name for the message
        return "KAFKA_BOOTSTRAP_SERVERS"


@click.group(cls=_Group)
@click.version_option(package_name="switchboard")
def main() -> None:
    """Switchboard routes tweets addressed to a company's handles to the department that acts."""


# --- the four services ---------------------------------------------------------------------------


main.add_command(ingest)
main.add_command(classify)
main.add_command(dlq)


@main.command()
def route() -> None:
    """Run the route service: classified tweets to department topics, triage and alerts."""
    from switchboard.route.service import main as run

    run()


@main.command()
def notify() -> None:
    """Run the notify service: department topics to email."""
    from switchboard.notify.service import main as run

    run()


# --- the broker and the whole pipeline -----------------------------------------------------------


@main.command()
@click.option("--port", type=int, default=None, help="Kafka port (default: a free one).")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=WORKDIR / "broker",
    show_default=True,
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    default=DEFAULT_CONFIG_FILE,
    show_default=True,
    help="Configuration (for the topics' partitions).",
)
def broker(port: int | None, data_dir: Path, config_file: Path) -> None:
    """Run the embedded Kafka-protocol broker in the foreground, with every topic created."""
    from switchboard.cli.config import PipelineSettings
    from switchboard.shared import topics
    from switchboard.shared.broker import EmbeddedBroker
    from switchboard.shared.kafka import ensure_topics

    config = PipelineSettings.load(config_file=config_file).config
    embedded = EmbeddedBroker(data_dir, port=port)

    async def serve() -> None:
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await embedded.start()
        try:
            created = await ensure_topics(
                embedded.settings(),
                topics.ALL,
                config.topics.partitions,
                config.topics.replication_factor,
            )
            click.echo(f"KAFKA_BOOTSTRAP_SERVERS={embedded.bootstrap_servers}")
            click.echo(f"data in {data_dir}; created {len(created)} topics; Ctrl-C stops")
            await stop.wait()
        finally:
            embedded.stop()

    asyncio.run(serve())


def _stack_options(
    workdir: Path, config_file: Path, samples: Path, rate: float | None, limit: int | None
):
    from switchboard.cli.stack import StackOptions

    return StackOptions(
        workdir=workdir, config_file=config_file, replay_file=samples, rate_per_s=rate, limit=limit
    )


POSITIVE = click.FloatRange(min=0, min_open=True)  # rates, minutes, intervals: 0 means nothing
_config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=DEFAULT_CONFIG_FILE,
    show_default=True,
)
_samples_option = click.option(
    "--samples",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=SAMPLES,
    show_default=True,
    help="JSONL of X API v2 tweets to replay.",
)


@main.command()
@_config_option
@_samples_option
@click.option(
    "--rate",
    type=POSITIVE,
    default=None,
    help="Tweets per second (default: from config).",
)
@click.option(
    "--workdir",
    type=click.Path(path_type=Path, file_okay=False),
    default=WORKDIR,
    show_default=True,
    help="Broker data, inbox and service logs.",
)
@click.option(
    "--keep",
    is_flag=True,
    help="Continue from the work folder of the last run (broker data, state, inbox) instead of "
    "starting clean; ingest then drops the samples it already published as duplicates.",
)
def run(config_file: Path, samples: Path, rate: float | None, workdir: Path, keep: bool) -> None:
    """Start the whole pipeline, replay the samples, and show it live until Ctrl-C."""
    from switchboard.cli.live import run_live
    from switchboard.cli.stack import stop_on_sigterm

    if not keep and workdir.exists():
        if foreign := sorted(p.name for p in workdir.iterdir() if p.name not in RUN_MADE):
            raise click.BadParameter(
                f"{workdir} holds what a run does not make ({', '.join(foreign[:5])}): "
                "give a folder of its own",
                param_hint="--workdir",
            )
        click.echo(f"starting clean: removing {workdir} of the last run (--keep continues it)")
        shutil.rmtree(workdir)
    stop_on_sigterm()
    sys.exit(asyncio.run(run_live(_stack_options(workdir, config_file, samples, rate, None))))


@main.command()
@_config_option
@_samples_option
@click.option(
    "--count", type=click.IntRange(min=1), default=200, show_default=True, help="Tweets to send."
)
@click.option(
    "--rate",
    type=POSITIVE,
    default=50.0,
    show_default=True,
    help="Tweets per second.",
)
@click.option(
    "--timeout",
    type=float,
    default=180.0,
    show_default=True,
    help="Seconds to wait for every tweet to be accounted for.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object and nothing else.")
@click.option("--keep", is_flag=True, help="Keep the work folder (logs, inbox, broker data).")
def demo(
    config_file: Path,
    samples: Path,
    count: int,
    rate: float,
    timeout: float,
    as_json: bool,
    keep: bool,
) -> None:
    """Send COUNT sample tweets through all four services and report where each one went.

    Exit status 1 when a tweet was lost or published twice.
    """
    from switchboard.cli.stack import Stack, sample_ids, stop_on_sigterm
    from switchboard.cli.tally import delivered_intact

    stop_on_sigterm()
    sent = sample_ids(samples, count)
    workdir = Path(tempfile.mkdtemp(prefix="switchboard-demo-"))
    try:
        stack = Stack(_stack_options(workdir, config_file, samples, rate, count))
    except ConfigError:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    say = (lambda _: None) if as_json else (lambda m: click.echo(m, err=True))

    async def go() -> dict:
        try:
            await stack.start(progress=say)
            say(f"sending {len(sent)} tweets at {rate:g}/s")
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if not stack.tally.unaccounted(sent) and stack.tally.deliveries_settled():
                    break
                await asyncio.sleep(0.2)
            return stack.tally.summary(sent)
        finally:
            await stack.stop()

    try:
        summary = asyncio.run(go())
    finally:
        if keep:
            say(f"work folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    click.echo(json.dumps(summary, indent=None if as_json else 2))
    sys.exit(0 if delivered_intact(summary) else 1)


@main.command()
@_config_option
@_samples_option
@click.option("--minutes", type=POSITIVE, default=10.0, show_default=True)
@click.option(
    "--rate",
    type=POSITIVE,
    default=100.0,
    show_default=True,
    help="Tweets per second.",
)
@click.option(
    "--sample-every",
    type=POSITIVE,
    default=5.0,
    show_default=True,
    help="Seconds between samples.",
)
@click.option(
    "--faults",
    is_flag=True,
    help="Also kill -9 and restart each service in turn, and take the mail server down.",
)
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the JSON summary to this file (`make soak`: bench/soak.json).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object and nothing else.")
def soak(
    config_file: Path,
    samples: Path,
    minutes: float,
    rate: float,
    sample_every: float,
    faults: bool,
    report: Path | None,
    as_json: bool,
) -> None:
    """The whole pipeline at a steady rate for MINUTES: is memory or lag growing?

    Exit status 1 when a tweet was lost or routed two ways, a stage after ingest dead-lettered
    one, a delivery was never made, a tweet was republished without a fault to explain it, or
    memory or lag kept growing.
    """
    from switchboard.cli.soak import soak as run_soak
    from switchboard.cli.soak import soak_passed
    from switchboard.cli.stack import stop_on_sigterm

    stop_on_sigterm()
    say = (lambda _: None) if as_json else (lambda m: click.echo(m, err=True))
    summary = asyncio.run(
        run_soak(config_file, samples, minutes, rate, say, sample_every, faults=faults)
    )
    click.echo(json.dumps(summary, indent=None if as_json else 2))
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    sys.exit(0 if soak_passed(summary, faults) else 1)


# --- configuration -------------------------------------------------------------------------------


@main.group("config")
def config_group() -> None:
    """The YAML configuration file."""


@config_group.command("check")
@click.option(
    "--service",
    type=click.Choice(list(SERVICE_CONFIGS)),
    default=None,
    help="Validate as this service does at start (the shared sections and its own); "
    "default: every section, as all four services together",
)
@click.argument(
    "file", type=click.Path(path_type=Path, dir_okay=False, exists=True), required=False
)
def config_check(service: str | None, file: Path | None) -> None:
    """Validate FILE (default: $SWITCHBOARD_CONFIG_FILE or config/switchboard.yaml) with the
    environment's SWITCHBOARD_CONFIG__ overrides over it, as the services read it: each error
    on a line with its key (and routing rule); exit status 1 when there is one."""
    path = config_file_in_use(file)
    model = SwitchboardConfig if service is None else SERVICE_CONFIGS[service]
    errors = check_config_file(path, model)
    if not errors and service in (None, "notify"):
        errors = _template_errors(path)
    who = f"the {service} service" if service else "every service"
    overrides = config_overrides()
    read = f"{path} with {', '.join(overrides)} over it" if overrides else str(path)
    if not errors:
        click.echo(f"{read}: valid for {who}")
        return
    click.echo(f"{read}: {len(errors)} error(s) that would stop {who}:", err=True)
    for line in errors:
        click.echo(f"  {line}", err=True)
    sys.exit(1)


def _template_errors(path: Path) -> list[str]:
    """notify's email templates, looked for and parsed as notify does at start (with the
    environment's overrides, which may move templates_dir)."""
    from switchboard.notify.config import NotifyFileConfig
    from switchboard.notify.mail import check_templates
    from switchboard.shared.settings import ConfigError, load_config

    notify = load_config(path, NotifyFileConfig).notify
    try:
        check_templates(notify.email, notify.subscriptions)
    except ConfigError as exc:
        return [str(exc)]
    return []


# --- schemas -------------------------------------------------------------------------------------


@main.group()
def schemas() -> None:
    """The JSON Schemas of every event, for downstream subscribers."""


@schemas.command("export")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("schemas"),
    show_default=True,
)
def schemas_export(out: Path) -> None:
    """Write one JSON Schema file per event type."""
    from switchboard.shared.events import export_schemas

    for path in export_schemas(out):
        click.echo(path)
