"""Settings of the route service (``SWITCHBOARD_*`` environment variables and the YAML file)."""

from __future__ import annotations

from typing import ClassVar

from switchboard.route.config import RouteFileConfig
from switchboard.shared.settings import StreamSettings


class RouteSettings(StreamSettings):
    service: ClassVar[str] = "route"
    default_http_port: ClassVar[int] = 8083

    # The shared sections and route's: a reload judges only these, so an error in another
    # service's section never holds back new routing rules.
    config: RouteFileConfig  # type: ignore[assignment]
