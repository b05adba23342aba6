"""Settings of the route service (``SWITCHBOARD_*`` environment variables and the YAML file)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from switchboard.shared.settings import ServiceSettings


class RouteSettings(ServiceSettings):
    service: ClassVar[str] = "route"
    default_http_port: ClassVar[int] = 8083

    state_dir: Path | None = Field(
        default=None,
        description="Where the replica keeps its tables' local stores (RocksDB), a cache of "
        "their changelogs: kept across restarts, a replica reads only what changed since "
        "(a volume per replica); unset: a temporary directory, restored from the changelog "
        "at every start",
    )
