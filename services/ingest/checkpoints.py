"""Where each polled source stopped (``since_id``), kept on a compacted Kafka topic.

A checkpoint is written only after the tweets it covers were acknowledged by the broker, so a
crash between the two re-polls those tweets (and the deduplication drops them) rather than
skipping any. At start the topic is read to its end; the last value per key wins.

Not a faust table: ingest is a source with one writer and no input partitions to own, so there
is no ownership to track; it reads its few keys once and writes each change through.
"""

from __future__ import annotations

import logging

from aiokafka import AIOKafkaProducer, ConsumerRecord

from switchboard.shared import topics
from switchboard.shared.events import DecodeError, IngestCheckpoint, decode
from switchboard.shared.kafka import Output, publish, read_to_end
from switchboard.shared.settings import KafkaSettings

log = logging.getLogger(__name__)


class Checkpoints:
    def __init__(self, kafka: KafkaSettings, producer: AIOKafkaProducer) -> None:
        self.kafka = kafka
        self.producer = producer
        self._since: dict[str, str] = {}

    def get(self, key: str) -> str | None:
        return self._since.get(key)

    async def save(self, key: str, since_id: str) -> None:
        checkpoint = IngestCheckpoint(source=key, since_id=since_id)
        await publish(self.producer, [Output.of(topics.INGEST_CHECKPOINTS, checkpoint, key)],
                      "ingest")  # fmt: skip
        self._since[key] = since_id

    async def restore(self) -> int:
        """Load every checkpoint on the topic; returns how many keys were found."""
        await read_to_end(self.kafka, [topics.INGEST_CHECKPOINTS], self._apply,
                          client_id="switchboard-ingest-checkpoints")  # fmt: skip
        log.info("checkpoints restored", extra={"keys": len(self._since)})
        return len(self._since)

    def _apply(self, record: ConsumerRecord) -> None:
        # Only ingest writes this topic: a record it cannot read is skipped (and logged), not
        # dead-lettered, or every start would dead-letter it again.
        try:
            checkpoint = decode(IngestCheckpoint, record.value)
        except DecodeError as problem:
            log.warning("unreadable checkpoint skipped",
                        extra={"partition": record.partition, "offset": record.offset,
                               "error": str(problem)})  # fmt: skip
            return
        self._since[checkpoint.source] = checkpoint.since_id
