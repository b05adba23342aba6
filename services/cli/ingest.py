"""``switchboard ingest``: run the ingest service, or look at its filtered-stream rules on X."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click


@click.group(invoke_without_command=True)
@click.option(
    "--replay",
    "replay_file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Replay this JSONL file of X API v2 tweets.",
)
@click.option(
    "--rate",
    "replay_rate_per_s",
    type=click.FloatRange(min=0, min_open=True),
    help="Tweets per second when replaying.",
)
@click.option(
    "--limit", "replay_limit", type=click.IntRange(min=0), help="Replay at most this many tweets."
)
@click.option(
    "--archive",
    type=click.Path(path_type=Path, exists=True),
    help="Backfill from an X archive export (zip or folder).",
)
@click.pass_context
def ingest(ctx: click.Context, **options: object) -> None:
    """Run the ingest service: tweets in, switchboard.tweets.raw out."""
    if ctx.invoked_subcommand is not None:
        return
    from switchboard.ingest.service import main as run

    run(**{k: v for k, v in options.items() if v is not None})


@ingest.command()
@click.option("--sync", is_flag=True, help="Synchronize them now, as ingest does at start.")
def rules(sync: bool) -> None:
    """The filtered-stream rules this configuration owns and how each stands on X: in place,
    adopted under a distinct value (another rule on the app has the same value), missing,
    or stale. With --sync, exit status 1 when a rule or a keyword could not be added."""
    from switchboard.ingest.settings import IngestSettings

    settings = IngestSettings.load()
    problems = asyncio.run(_rules(settings, sync))
    sys.exit(1 if problems else 0)


async def _rules(settings: object, sync: bool) -> int:
    from rich.console import Console
    from rich.table import Table

    from switchboard.ingest.rules import desired_rules, rule_status
    from switchboard.ingest.settings import IngestSettings
    from switchboard.ingest.stream import FilteredStream
    from switchboard.ingest.xapi import XApi
    from switchboard.shared.settings import read_secret

    assert isinstance(settings, IngestSettings)
    x = settings.config.ingest.x
    app = x.filtered_stream.app
    if app not in x.apps:
        raise click.ClickException(f"ingest.x.filtered_stream.app: no app named {app!r}")
    token = read_secret(x.apps[app].bearer_token, f"ingest.x.apps.{app}.bearer_token")
    api = XApi(settings.api_base_url, token.get_secret_value(), f"app:{app}", x.retry)
    console = Console()
    problems = 0
    try:
        if sync:
            report = await FilteredStream(api, settings.config, _ignore).sync_rules()
            for rule, foreign_id, adopted in report.duplicates:
                outcome = f"adopted {adopted!r}" if adopted else "not covered"
                console.print(f"{rule.tag}: duplicates foreign rule {foreign_id}; {outcome}")
            for handle, term, reason in report.invalid:
                console.print(f"{handle}: X refused the keyword {term!r}: {reason}")
            for reason in report.refused:
                console.print(f"X refused the rules: {reason}")
            for rule in report.uncovered:
                console.print(f"{rule.tag}: no rule could be added for {rule.value!r}")
            problems = len(report.invalid) + len(report.uncovered)
        existing = await api.get_rules()
    finally:
        await api.close()
    prefix = x.filtered_stream.rule_tag_prefix
    statuses = rule_status(existing, desired_rules(settings.config), prefix)
    table = Table(title=f"{len(statuses)} rules owned by this configuration ({prefix}*)")
    for column in ("tag", "state", "value", "on X", "foreign rule with the same value"):
        table.add_column(column, overflow="fold")
    for s in statuses:
        table.add_row(s.tag, s.state, s.value, s.on_x or "", s.foreign or "")
    console.print(table)
    foreign = sum(not (r.get("tag") or "").startswith(prefix) for r in existing)
    console.print(f"rules on the app owned by others: {foreign}")
    return problems


async def _ignore(_: bytes) -> None:
    return None
