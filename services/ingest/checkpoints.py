"""Where each polled source stopped (``since_id``), kept on a compacted Kafka topic.

A checkpoint is written only after the tweets it covers were acknowledged by the broker, so a
crash between the two re-polls those tweets (and the deduplication drops them) rather than
skipping any. At start the topic is read to its end; the last value per key wins.
"""

from __future__ import annotations

import logging

from aiokafka import AIOKafkaProducer

from switchboard.shared import topics
from switchboard.shared.events import IngestCheckpoint
from switchboard.shared.kafka import publish
from switchboard.shared.settings import KafkaSettings
from switchboard.shared.table import ChangelogTable

log = logging.getLogger(__name__)


class Checkpoints:
    def __init__(self, kafka: KafkaSettings, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self.table = ChangelogTable(kafka, topics.INGEST_CHECKPOINTS, IngestCheckpoint)

    def get(self, key: str) -> str | None:
        checkpoint = self.table.get(key)
        return checkpoint.since_id if checkpoint else None

    async def save(self, key: str, since_id: str) -> None:
        change = self.table.put(key, IngestCheckpoint(source=key, since_id=since_id))
        await publish(self.producer, [change], "ingest")

    async def restore(self) -> int:
        """Load every checkpoint on the topic; returns how many keys were found."""
        await self.table.restore()
        log.info("checkpoints restored", extra={"keys": len(self.table)})
        return len(self.table)
