"""Settings of the classify service (``SWITCHBOARD_*`` environment variables and the YAML file)."""

from __future__ import annotations

from typing import ClassVar

from switchboard.classify.config import ClassifyFileConfig
from switchboard.shared.settings import ServiceSettings


class ClassifySettings(ServiceSettings):
    service: ClassVar[str] = "classify"
    default_http_port: ClassVar[int] = 8082

    config: ClassifyFileConfig  # type: ignore[assignment]  # the shared sections and classify's
