"""Where each polled source stopped (``since_id``), kept on a compacted Kafka topic.

A checkpoint is written only after the tweets it covers were acknowledged by the broker, so a
crash between the two re-polls those tweets (and the deduplication drops them) rather than
skipping any. At start the topic is read to its end; the last value per key wins.
"""

from __future__ import annotations

import json
import logging

from aiokafka import AIOKafkaProducer, ConsumerRecord

from switchboard.shared import topics
from switchboard.shared.kafka import read_to_end
from switchboard.shared.settings import KafkaSettings

log = logging.getLogger(__name__)


class Checkpoints:
    def __init__(self, kafka: KafkaSettings, producer: AIOKafkaProducer) -> None:
        self.kafka = kafka
        self.producer = producer
        self._values: dict[str, str] = {}

    def get(self, key: str) -> str | None:
        return self._values.get(key)

    async def save(self, key: str, value: str) -> None:
        payload = json.dumps({"value": value}).encode()
        await (await self.producer.send(topics.INGEST_CHECKPOINTS, payload, key=key.encode()))
        self._values[key] = value

    async def restore(self) -> int:
        """Load every checkpoint on the topic; returns how many keys were found."""
        await read_to_end(
            self.kafka,
            [topics.INGEST_CHECKPOINTS],
            self._apply,
            client_id="switchboard-ingest-checkpoints",
        )
        log.info("checkpoints restored", extra={"keys": len(self._values)})
        return len(self._values)

    def _apply(self, record: ConsumerRecord) -> None:
        if record.key is None:
            return
        if record.value is None:  # a tombstone forgets the key
            self._values.pop(record.key.decode(), None)
        else:
            self._values[record.key.decode()] = json.loads(record.value)["value"]
