"""``switchboard dlq``: the deliveries notify holds parked, and trying them again.

A delivery is parked (on ``switchboard.notifications.dlq``, and in notify's table ``parked``
until it is done) after its last attempt failed, while its target's circuit is open, or when
the vendor asked to wait longer than a batch may hold. ``list`` reads what notify holds
(the table's compacted changelog); ``redrive`` publishes a RedriveRequest for each on
``switchboard.notifications.redrive``; notify makes the effect once the target is back, and
the ledger keeps a second redrive from repeating it.
"""

from __future__ import annotations

import asyncio
import json
from typing import get_args

import click

from switchboard.notify.dlq import Filters, parked_deliveries, redrive
from switchboard.shared.events import Channel
from switchboard.shared.settings import ServiceSettings


def _filters(function):  # noqa: ANN001, ANN202 - click decorator
    function = click.option(
        "--channel", type=click.Choice(get_args(Channel)), help="Only this channel."
    )(function)
    function = click.option("--target", help="Only this subscription.")(function)
    return click.option("--id", "delivery_id", help="Only this delivery id.")(function)


@click.group()
def dlq() -> None:
    """Deliveries notify holds parked, and trying them again."""


@dlq.command("list")
@_filters
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object per parked delivery (notify.parked)."
)
def dlq_list(
    channel: str | None, target: str | None, delivery_id: str | None, as_json: bool
) -> None:
    """List parked deliveries that are still undone."""
    kafka = ServiceSettings.load().kafka
    parked = asyncio.run(parked_deliveries(kafka, Filters(channel, target, delivery_id)))
    if as_json:
        for d in parked:
            click.echo(d.model_dump_json(exclude={"routed"}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(parked)} parked deliveries")
    columns = ("delivery id", "channel", "target", "urgency", "parked since", "parks",
               "attempts", "vendor error", "automatic redrive")  # fmt: skip
    for column in columns:
        table.add_column(column, overflow="fold")
    for d in parked:
        redrive_at = d.retry_at.isoformat(timespec="seconds") if d.retry_at else "manual"
        table.add_row(d.delivery_id, d.channel, d.subscription,
                      d.routed.classification.urgency.value,
                      d.first_parked_at.isoformat(timespec="seconds"), str(d.parks),
                      str(d.attempts), (d.error or "")[:200], redrive_at)  # fmt: skip
    Console().print(table)


@dlq.command("redrive")
@_filters
def dlq_redrive(channel: str | None, target: str | None, delivery_id: str | None) -> None:
    """Ask notify to try the parked deliveries again (all, or those filtered)."""
    kafka = ServiceSettings.load().kafka
    parked = asyncio.run(parked_deliveries(kafka, Filters(channel, target, delivery_id)))
    count = asyncio.run(redrive(kafka, parked))
    click.echo(json.dumps({"redriven": count}))
