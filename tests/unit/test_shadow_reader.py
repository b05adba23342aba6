"""A shadow classify's reader of the live labels is started again when it fails: the
comparison must not stop in silence while the shadow goes on labelling."""

from __future__ import annotations

import asyncio

from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError

from switchboard.classify import metrics
from switchboard.classify import service as classify_service
from switchboard.classify.model import COMMERCIAL_ARTIFACT_NAME
from switchboard.classify.service import ClassifyService
from switchboard.classify.settings import ClassifySettings
from switchboard.shared.settings import KafkaSettings
from tests.conftest import CONFIG_FILE


class _FailingTwice(ClassifyService):
    """The reader refused (an ACL), then the broker away, then reading until stopped."""

    def __init__(self, settings: ClassifySettings) -> None:
        super().__init__(settings)
        self.tries = 0
        self.reading = asyncio.Event()
        self.failures = [TopicAuthorizationFailedError(), KafkaConnectionError()]

    async def _read_live_labels_until(self, stop: asyncio.Event) -> None:
        self.tries += 1
        if self.failures:
            raise self.failures.pop(0)
        self.reading.set()
        await stop.wait()


async def test_the_live_label_reader_is_started_again_after_it_failed(monkeypatch, caplog):
    monkeypatch.setattr(classify_service, "LIVE_READER_RETRY_S", 0.01)
    settings = ClassifySettings.load(
        config_file=CONFIG_FILE, shadow=True, shadow_artifact=COMMERCIAL_ARTIFACT_NAME,
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9"),  # never reached: no client starts
    )  # fmt: skip
    shadow = _FailingTwice(settings)
    failures = metrics.SHADOW_READER_FAILURES._value.get()  # noqa: SLF001
    stop = asyncio.Event()
    reader = asyncio.create_task(shadow._read_live_labels(stop))  # noqa: SLF001
    await asyncio.wait_for(shadow.reading.wait(), 1)
    stop.set()
    await asyncio.wait_for(reader, 1)
    assert shadow.tries == 3
    assert metrics.SHADOW_READER_FAILURES._value.get() - failures == 2  # noqa: SLF001
    warned = [r for r in caplog.records if "cannot read the live labels" in r.getMessage()]
    assert len(warned) == 2
