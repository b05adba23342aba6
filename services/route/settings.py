"""Settings of the route service (``SWITCHBOARD_*`` environment variables and the YAML file)."""

from __future__ import annotations

from typing import ClassVar

from switchboard.shared.settings import StreamSettings


class RouteSettings(StreamSettings):
    service: ClassVar[str] = "route"
    default_http_port: ClassVar[int] = 8083
