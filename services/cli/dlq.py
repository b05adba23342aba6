"""``switchboard dlq``: the deliveries notify parked, and trying them again.

A parked delivery is a Delivery with ``outcome: failed`` on ``switchboard.notifications.dlq``
that the ledger does not (yet) record as done. ``redrive`` publishes a RedriveRequest for each
on ``switchboard.notifications.redrive``; notify makes the effect once the target is back, and
the ledger keeps a second redrive from repeating it.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import click
from aiokafka import ConsumerRecord

from switchboard.shared import topics
from switchboard.shared.events import DecodeError, Delivery, LedgerEntry, RedriveRequest, decode
from switchboard.shared.kafka import Output, make_producer, publish, read_to_end
from switchboard.shared.settings import KafkaSettings, ServiceSettings


@dataclass(frozen=True, slots=True)
class Filters:
    channel: str | None = None
    target: str | None = None
    delivery_id: str | None = None

    def match(self, delivery: Delivery) -> bool:
        return (
            (self.channel is None or delivery.channel == self.channel)
            and (self.target is None or delivery.target == self.target)
            and (self.delivery_id is None or delivery.delivery_id == self.delivery_id)
        )


async def parked_deliveries(kafka: KafkaSettings, filters: Filters) -> list[Delivery]:
    """Failed deliveries not done since (the latest failure of each delivery id)."""
    failed: dict[str, Delivery] = {}
    done: set[str] = set()

    def on_failure(record: ConsumerRecord) -> None:
        try:
            delivery = decode(Delivery, record.value)
        except DecodeError:
            return
        if filters.match(delivery):
            failed[delivery.delivery_id] = delivery

    def on_ledger(record: ConsumerRecord) -> None:
        try:
            done.update(decode(LedgerEntry, record.value).deliveries)
        except DecodeError:
            return

    await read_to_end(kafka, [topics.NOTIFICATIONS_DLQ], on_failure, client_id="switchboard-dlq")
    await read_to_end(kafka, [topics.NOTIFICATIONS_LEDGER], on_ledger, client_id="switchboard-dlq")
    return [d for i, d in failed.items() if i not in done]


async def redrive(kafka: KafkaSettings, parked: list[Delivery]) -> int:
    requests = [
        Output.of(
            topics.NOTIFICATIONS_REDRIVE,
            RedriveRequest(
                delivery_id=d.delivery_id,
                subscription=d.target,
                department=d.department,
                routed=d.routed,
            ),
            d.conversation_id,
        )
        for d in parked
        if d.routed is not None
    ]
    producer = make_producer(kafka, client_id="switchboard-dlq")
    await producer.start()
    try:
        await publish(producer, requests, "dlq")
    finally:
        await producer.stop()
    return len(requests)


def _filters(function):  # noqa: ANN001, ANN202 - click decorator
    function = click.option("--channel", help="Only this channel (email, zendesk, ...).")(function)
    function = click.option("--target", help="Only this subscription.")(function)
    return click.option("--id", "delivery_id", help="Only this delivery id.")(function)


@click.group()
def dlq() -> None:
    """Deliveries notify parked after their last retry."""


@dlq.command("list")
@_filters
@click.option("--json", "as_json", is_flag=True, help="One JSON object per parked delivery.")
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
    for column in ("delivery id", "channel", "target", "urgency", "attempts", "error"):
        table.add_column(column)
    for d in parked:
        table.add_row(d.delivery_id, d.channel, d.target, d.urgency.value, str(d.attempts),
                      (d.error or "")[:80])  # fmt: skip
    Console().print(table)


@dlq.command("redrive")
@_filters
def dlq_redrive(channel: str | None, target: str | None, delivery_id: str | None) -> None:
    """Ask notify to try the parked deliveries again (all, or those filtered)."""
    kafka = ServiceSettings.load().kafka
    parked = asyncio.run(parked_deliveries(kafka, Filters(channel, target, delivery_id)))
    count = asyncio.run(redrive(kafka, parked))
    click.echo(json.dumps({"redriven": count}))
