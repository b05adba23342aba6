"""Settings of the ingest service (``SWITCHBOARD_*`` environment variables and the YAML file)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, model_validator

from switchboard.ingest.config import IngestFileConfig
from switchboard.shared.settings import ServiceSettings


class IngestSettings(ServiceSettings):
    service: ClassVar[str] = "ingest"
    default_http_port: ClassVar[int] = 8081

    config: IngestFileConfig  # type: ignore[assignment]  # the shared sections and ingest's

    replay_file: Path | None = Field(default=None, description="JSONL of X API v2 tweets")
    replay_rate_per_s: float | None = Field(
        default=None, gt=0, description="Overrides ingest.replay_rate_per_s of the YAML file"
    )
    replay_limit: int | None = Field(default=None, ge=0, description="Stop after this many lines")
    archive: Path | None = Field(default=None, description="X archive export (zip or folder)")
    x_api_base_url: str | None = Field(
        default=None, description="Overrides ingest.x.api_base_url of the YAML file"
    )

    @model_validator(mode="after")
    def _paces_a_backfill(self) -> IngestSettings:
        paced = [name for name, value in (("SWITCHBOARD_REPLAY_RATE_PER_S (--rate)",
                 self.replay_rate_per_s), ("SWITCHBOARD_REPLAY_LIMIT (--limit)",
                 self.replay_limit)) if value is not None]  # fmt: skip
        if paced and self.replay_file is None and self.archive is None:
            raise ValueError(f"{' and '.join(paced)} pace only a backfill: set "
                             "SWITCHBOARD_REPLAY_FILE (--replay) or SWITCHBOARD_ARCHIVE "
                             "(--archive)")  # fmt: skip
        return self

    @property
    def rate(self) -> float:
        return self.replay_rate_per_s or self.config.ingest.replay_rate_per_s

    @property
    def api_base_url(self) -> str:
        return (self.x_api_base_url or self.config.ingest.x.api_base_url).rstrip("/")
