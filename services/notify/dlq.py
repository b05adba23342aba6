"""Parked deliveries: what notify holds parked (its table ``parked``, whose compacted changelog
every replica writes its own partitions' entries to), and asking notify to try them again
(``switchboard dlq``, or notify's ``/admin/dlq`` endpoints, which need the admin token:
shared/access.py). A parked delivery that carries ``retry_at`` is redriven by notify itself at
that time (service.py); a redrive by hand before then is harmless (the ledger makes each effect
once).

The listing reads the table's changelog rather than the DLQ topic against the ledger: the
ledger forgets a conversation ``ledger_retention_hours`` after its last delivery while the DLQ
topic keeps its records for the broker's retention (up to twice that, as segments roll), so a
delivery parked once and delivered since would come back as parked, and a redrive of it would
make its effect twice. The changelog holds one entry per delivery still parked and is as
small as that."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from aiokafka import AIOKafkaProducer, ConsumerRecord
from fastapi import APIRouter, Depends, HTTPException, Request

from switchboard.shared import topics
from switchboard.shared.events import DecodeError, ParkedDelivery, decode
from switchboard.shared.kafka import Output, make_producer, publish, read_to_end
from switchboard.shared.settings import KafkaSettings


@dataclass(frozen=True, slots=True)
class Filters:
    channel: str | None = None
    target: str | None = None  # the subscription's name
    delivery_id: str | None = None

    def match(self, parked: ParkedDelivery) -> bool:
        return (
            (self.channel is None or parked.channel == self.channel)
            and (self.target is None or parked.subscription == self.target)
            and (self.delivery_id is None or parked.delivery_id == self.delivery_id)
        )


async def parked_deliveries(kafka: KafkaSettings, filters: Filters) -> list[ParkedDelivery]:
    """The deliveries notify holds parked, over every replica: the latest entry of each delivery
    id on the table's changelog (a tombstone, once it is done or forgotten), oldest first. Only
    the entries that match ``filters`` are kept while reading."""
    parked: dict[bytes, ParkedDelivery] = {}

    def on_entry(record: ConsumerRecord) -> None:
        if record.key is None:
            return
        parked.pop(record.key, None)  # a later entry replaces it; a tombstone removes it
        if record.value is None:
            return
        try:
            entry = decode(ParkedDelivery, record.value)
        except DecodeError:  # only notify writes it; an unreadable entry is not a delivery
            return
        if filters.match(entry):
            parked[record.key] = entry

    await read_to_end(kafka, [topics.NOTIFICATIONS_PARKED], on_entry, client_id="switchboard-dlq")
    return sorted(parked.values(), key=lambda entry: entry.first_parked_at)


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
    kafka: KafkaSettings, parked: list[ParkedDelivery], producer: AIOKafkaProducer | None = None
) -> int:
    """Publish a RedriveRequest for each parked delivery, to its conversation's partition (the
    replica that holds it); returns how many."""
    requests = [
        Output.of(topics.NOTIFICATIONS_REDRIVE, entry.redrive_request(), entry.conversation_id)
        for entry in parked
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


FILTERS = ("channel", "target", "id")


def _known_filters(request: Request) -> None:
    """A filter mistyped would be ignored, and a redrive meant for one delivery would redrive
    them all: any other query parameter is refused."""
    unknown = sorted(set(request.query_params) - set(FILTERS))
    if unknown:
        raise HTTPException(422, f"unknown filter {', '.join(unknown)}: the filters are "
                                 f"{', '.join(FILTERS)}")  # fmt: skip


def dlq_router(kafka: KafkaSettings) -> APIRouter:
    """``GET /admin/dlq`` lists the parked deliveries, ``POST /admin/dlq/redrive`` tries them
    again; both take the filters ``channel``, ``target`` and ``id`` as query parameters."""
    router = APIRouter(prefix="/admin/dlq", dependencies=[Depends(_known_filters)])

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
