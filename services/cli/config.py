"""The whole YAML file, every section validated: what the four services validate, at once. For
``switchboard config check`` and the CLI's tools, which read every section."""

from __future__ import annotations

from pydantic import Field

from switchboard.classify.config import ClassifyConfig, ClassifyFileConfig
from switchboard.ingest.config import IngestConfig, IngestFileConfig
from switchboard.notify.config import NotifyConfig, NotifyFileConfig
from switchboard.route.config import RouteConfig, RouteFileConfig
from switchboard.shared.config import SharedConfig
from switchboard.shared.settings import ServiceSettings


class SwitchboardConfig(IngestFileConfig, ClassifyFileConfig, RouteFileConfig, NotifyFileConfig):
    """The whole YAML file, every section validated: what each service validates, at once.
    (Each section is declared again: pydantic would otherwise take the raw one of a base.)"""

    ingest: IngestConfig = Field(default_factory=IngestConfig)  # type: ignore[assignment]
    classify: ClassifyConfig = Field(default_factory=ClassifyConfig)  # type: ignore[assignment]
    route: RouteConfig = Field(default_factory=RouteConfig)  # type: ignore[assignment]
    notify: NotifyConfig = Field(default_factory=NotifyConfig)  # type: ignore[assignment]


SERVICE_CONFIGS: dict[str, type[SharedConfig]] = {
    "ingest": IngestFileConfig,
    "classify": ClassifyFileConfig,
    "route": RouteFileConfig,
    "notify": NotifyFileConfig,
}


class PipelineSettings(ServiceSettings):
    """Settings with the whole file validated: what the CLI's tools read (topics, subscriptions,
    the model) to run, observe or measure the four services together."""

    config: SwitchboardConfig  # type: ignore[assignment]
