"""A key-value table held in memory and kept durable on a compacted Kafka topic (its changelog).

The same idea as a faust table or a Kafka Streams state store: every change is a message keyed
by the table key; the topic is compacted, so it holds the last value of each key; a process
rebuilds the table by reading the topic to its end. Changes are returned as ``Output``s, so a
service publishes them with the outputs of the batch that caused them, before it commits its
input offsets: after a crash, input and table are replayed together.

The changelog is keyed like the service's input and created with the same partition count, so
``restore(partitions)`` can load only the partitions a consumer was just assigned.

Values are held as their changelog bytes, zlib-compressed, and decoded on ``get``: a route
conversation awaiting a reply (the tweet, its labels, the decision) takes 1.1 KB so, key and
index included, against 8.1 KB as pydantic objects (tests/unit/test_table.py).
A get or put costs some 50 microseconds more. What periodic sweeps need is kept beside each
value uncompressed: its ``updated_at`` for expiry and what the table's ``index`` function
extracts (route: the due time of an awaited reply), so a sweep never decodes every value.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from datetime import datetime
from typing import Generic, TypeVar

from aiokafka import ConsumerRecord

from switchboard.shared.events import DecodeError, E, decode
from switchboard.shared.kafka import Output, read_to_end
from switchboard.shared.settings import KafkaSettings

log = logging.getLogger(__name__)

Kept = TypeVar("Kept")  # what a table's index keeps of a value


class ChangelogTable(Generic[E, Kept]):
    """``index(value)``, when given, says what a sweep needs of a value (None: nothing);
    ``indexed()`` lists it. Values must have an ``updated_at``."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        event_type: type[E],
        index: Callable[[E], Kept | None] | None = None,
    ) -> None:
        self.kafka = kafka
        self.topic = topic
        self.event_type = event_type
        self.index = index
        self._values: dict[str, bytes] = {}  # compressed changelog values
        self._updated_at: dict[str, datetime] = {}
        self._indexed: dict[str, Kept] = {}

    def get(self, key: str) -> E | None:
        value = self._values.get(key)
        return None if value is None else decode(self.event_type, zlib.decompress(value))

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def __len__(self) -> int:
        return len(self._values)

    def indexed(self) -> list[tuple[str, Kept]]:
        """(key, what ``index`` kept) for every value it kept something of."""
        return list(self._indexed.items())

    def put(self, key: str, value: E) -> Output:
        """Change the table now; publish the returned Output to make the change durable."""
        output = Output.of(self.topic, value, key)
        assert output.value is not None
        self._hold(key, value, output.value)
        return output

    def expire(self, before: datetime) -> list[Output]:
        """Forget every entry last updated before ``before``; publish the returned tombstones
        so that compaction drops the keys from the changelog too (and restores stay short).
        Without this the table, and its changelog, would grow for as long as the service runs.
        """
        stale = [key for key, updated_at in self._updated_at.items() if updated_at < before]
        for key in stale:
            self._forget(key)
        return [Output(self.topic, None, key.encode("utf-8")) for key in stale]

    def _hold(self, key: str, value: E, encoded: bytes) -> None:
        self._values[key] = zlib.compress(encoded, 1)  # level 1: 2.3x smaller, 18 us
        self._updated_at[key] = value.updated_at  # type: ignore[attr-defined]
        kept = self.index(value) if self.index is not None else None
        if kept is None:
            self._indexed.pop(key, None)
        else:
            self._indexed[key] = kept

    def _forget(self, key: str) -> None:
        self._values.pop(key, None)
        self._updated_at.pop(key, None)
        self._indexed.pop(key, None)

    async def restore(self, partitions: set[int] | None = None) -> int:
        """Load the changelog (all of it, or the given partitions); returns records read."""
        return await read_to_end(
            self.kafka,
            [self.topic],
            self._apply,
            partitions=partitions,
            client_id=f"switchboard-restore-{self.topic}",
        )

    def _apply(self, record: ConsumerRecord) -> None:
        # Only the service itself writes its changelog: a record it cannot read is skipped
        # (and logged), not dead-lettered, or every restore would dead-letter it again.
        try:
            if record.key is None:
                raise DecodeError("missing_field", "a changelog record needs a key")
            key = record.key.decode("utf-8")
            if record.value is None:  # a tombstone deletes the key
                self._forget(key)
            else:
                self._hold(key, decode(self.event_type, record.value), record.value)
        except (UnicodeDecodeError, DecodeError) as problem:
            log.warning(
                "unreadable changelog record skipped",
                extra={"topic": record.topic, "partition": record.partition,
                       "offset": record.offset, "error": str(problem)},
            )  # fmt: skip
