"""A key-value table held in memory and kept durable on a compacted Kafka topic (its changelog).

The same idea as a faust table or a Kafka Streams state store: every change is a message keyed
by the table key; the topic is compacted, so it holds the last value of each key; a process
rebuilds the table by reading the topic to its end. Changes are returned as ``Output``s, so a
service publishes them with the outputs of the batch that caused them, before it commits its
input offsets: after a crash, input and table are replayed together.

The changelog is keyed like the service's input and created with the same partition count, so
``restore(partitions)`` can load only the partitions a consumer was just assigned.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, Generic

from aiokafka import ConsumerRecord

from switchboard.shared.events import DecodeError, E, decode
from switchboard.shared.kafka import Output, read_to_end
from switchboard.shared.settings import KafkaSettings

log = logging.getLogger(__name__)


class ChangelogTable(Generic[E]):
    def __init__(self, kafka: KafkaSettings, topic: str, event_type: type[E]) -> None:
        self.kafka = kafka
        self.topic = topic
        self.event_type = event_type
        self._values: dict[str, E] = {}

    def get(self, key: str) -> E | None:
        return self._values.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def __len__(self) -> int:
        return len(self._values)

    def values(self) -> Iterator[E]:
        return iter(list(self._values.values()))

    def put(self, key: str, value: E) -> Output:
        """Change the table now; publish the returned Output to make the change durable."""
        self._values[key] = value
        return Output.of(self.topic, value, key)

    def expire(
        self, before: datetime, updated_at: Callable[[Any], datetime] = lambda v: v.updated_at
    ) -> list[Output]:
        """Forget every entry last updated before ``before``; publish the returned tombstones
        so that compaction drops the keys from the changelog too (and restores stay short).
        Without this the table, and its changelog, would grow for as long as the service runs.
        """
        stale = [key for key, value in self._values.items() if updated_at(value) < before]
        for key in stale:
            del self._values[key]
        return [Output(self.topic, None, key.encode("utf-8")) for key in stale]

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
                self._values.pop(key, None)
            else:
                self._values[key] = decode(self.event_type, record.value)
        except (UnicodeDecodeError, DecodeError) as problem:
            log.warning(
                "unreadable changelog record skipped",
                extra={"topic": record.topic, "partition": record.partition,
                       "offset": record.offset, "error": str(problem)},
            )  # fmt: skip
