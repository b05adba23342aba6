"""Parked deliveries: what the DLQ holds that the ledger does not record as done since, and
asking notify to try them again (``switchboard dlq``, or notify's ``/admin/dlq`` endpoints,
which need the admin token: shared/access.py). A parked delivery that carries ``retry_at`` is
redriven by notify itself at that time (the table ``parked``: service.py); a redrive by hand
before then is harmless (the ledger makes each effect once)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from aiokafka import AIOKafkaProducer, ConsumerRecord
from fastapi import APIRouter

from switchboard.shared import topics
from switchboard.shared.events import (
    DecodeError,
    Delivery,
    LedgerEntry,
    ParkedDelivery,
    RedriveRequest,
    decode,
)
from switchboard.shared.kafka import Output, make_producer, publish, read_to_end
from switchboard.shared.settings import KafkaSettings


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


@dataclass(slots=True)
class _Parked:
    conversation_id: str
    channel: str
    retry_at: datetime | None
    parked_at: datetime
    asked: bool = False  # handed to the owner; wait for the entry to change


class ParkedIndex:
    """For each delivery parked in this replica's partitions (notify's table ``parked``): when
    its redrive is due, or since when it waits for a person. Kept beside the table, in memory,
    so that a sweep every second costs this index, not a read of every parked tweet: each park
    and unpark updates it, a rebalance clears it and it is rebuilt from the table once the
    table is restored (as route's index of its conversations)."""

    def __init__(self) -> None:
        self._entries: dict[str, _Parked] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, delivery_id: object) -> bool:
        return delivery_id in self._entries

    def track(self, parked: ParkedDelivery) -> None:
        self._entries[parked.delivery_id] = _Parked(
            parked.routed.tweet.conversation_id,
            parked.channel,
            parked.retry_at,
            parked.parked_at,
        )

    def forget(self, delivery_id: str) -> None:
        self._entries.pop(delivery_id, None)

    def rebuild(self, parked: Iterable[ParkedDelivery]) -> None:
        self._entries.clear()
        for entry in parked:
            self.track(entry)

    def clear(self) -> None:
        self._entries.clear()

    def by_channel(self) -> Counter[str]:
        return Counter(entry.channel for entry in self._entries.values())

    def due(
        self, now: datetime, retention: timedelta
    ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(delivery id, conversation id) of those whose redrive time has come, and of those
        that waited for a person past ``retention``; each once until it is tracked again."""
        redrive: list[tuple[str, str]] = []
        forget: list[tuple[str, str]] = []
        for delivery_id, entry in self._entries.items():
            if entry.asked:
                continue
            if entry.retry_at is not None and entry.retry_at <= now:
                redrive.append((delivery_id, entry.conversation_id))
            elif forgettable(entry.retry_at, entry.parked_at, now, retention):
                forget.append((delivery_id, entry.conversation_id))
            else:
                continue
            entry.asked = True
        return redrive, forget


def forgettable(
    retry_at: datetime | None, parked_at: datetime, now: datetime, retention: timedelta
) -> bool:
    """A parked delivery nobody will redrive by itself, parked longer ago than ``retention``."""
    return retry_at is None and parked_at < now - retention


async def redrive(
    kafka: KafkaSettings, parked: list[Delivery], producer: AIOKafkaProducer | None = None
) -> int:
    """Publish a RedriveRequest for each parked delivery; returns how many."""
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
    if producer is not None:
        await publish(producer, requests, "dlq")
        return len(requests)
    own = make_producer(kafka, client_id="switchboard-dlq")
    await own.start()
    try:
        await publish(own, requests, "dlq")
    finally:
        await own.stop()
    return len(requests)


def dlq_router(kafka: KafkaSettings) -> APIRouter:
    """``GET /admin/dlq`` lists the parked deliveries, ``POST /admin/dlq/redrive`` tries them
    again; both take the filters ``channel``, ``target`` and ``id`` as query parameters."""
    router = APIRouter(prefix="/admin/dlq")

    @router.get("")
    async def list_parked(
        channel: str | None = None, target: str | None = None, id: str | None = None
    ) -> list[dict]:
        parked = await parked_deliveries(kafka, Filters(channel, target, id))
        return [d.model_dump(mode="json", exclude={"routed"}) for d in parked]

    @router.post("/redrive")
    async def redrive_parked(
        channel: str | None = None, target: str | None = None, id: str | None = None
    ) -> dict[str, int]:
        parked = await parked_deliveries(kafka, Filters(channel, target, id))
        return {"redriven": await redrive(kafka, parked)}

    return router
