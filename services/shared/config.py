"""The company's YAML configuration: what every service reads of it.

One file describes one deployment (see ``config/switchboard.yaml``). The sections every service
reads (handles, departments, topics, access) are ``SharedConfig``, here; each service's own
section is typed in that service's ``config.py``, and a service validates the shared sections
and its own at start, so a wrong key stops the service that reads it with a message that names
it, and no other. The CLI's ``SwitchboardConfig`` is the whole file (``switchboard config
check``). Endpoints and secrets do not belong here; they come from environment variables
(settings.py).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from switchboard.shared.labels import DEPARTMENTS, Department

HandleName = Annotated[str, Field(pattern=r"^@[A-Za-z0-9_]{1,15}$")]
EmailAddress = Annotated[str, Field(pattern=r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")]
# Known segments: support, promotions, news, investor, events, careers, crisis, brand.
# Companies may add their own, so any lower-case identifier is accepted.
Segment = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]


def _known_zone(zone: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {zone!r}") from None
    return zone


TimeZoneName = Annotated[str, AfterValidator(_known_zone)]  # an IANA name: Europe/Paris


def named_uniquely(items: list, what: str) -> list:  # noqa: ANN001 - any list of named sections
    names = [item.name for item in items]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{what} names must be unique, repeated: {repeated}")
    return items


class Section(BaseModel):
    # A misspelt key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(Section):
    """Where a secret is read from: an environment variable or a file (a mounted Secret).

    The file holds the value alone; surrounding whitespace is ignored. Values never appear in
    the YAML file, logs or error messages."""

    env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    file: Path | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env (a variable name) or file (a path)")
        return self


class ListenRules(Section):
    """Extra filtered-stream terms for a handle, besides tweets that mention or reply to it."""

    keywords: list[Annotated[str, Field(min_length=2, max_length=100)]] = Field(
        default_factory=list
    )
    hashtags: list[Annotated[str, Field(pattern=r"^#?\w{1,100}$")]] = Field(default_factory=list)
    cashtags: list[Annotated[str, Field(pattern=r"^\$?[A-Za-z]{1,6}$")]] = Field(
        default_factory=list
    )


class HandleConfig(Section):
    handle: HandleName
    user_id: str = Field(pattern=r"^[0-9]+$")
    brand: str
    segment: Segment
    default_department: Department
    app: str = Field(default="default", description="Key in ingest.x.apps whose tokens read it")
    listen: ListenRules = Field(default_factory=ListenRules)
    direct_messages: bool = Field(default=False, description="Read the handle's DMs")
    user_token: SecretRef | None = Field(
        default=None, description="OAuth 2.0 user-context access token (needed for DMs)"
    )

    @model_validator(mode="after")
    def _dm_needs_user_token(self) -> HandleConfig:
        if self.direct_messages and self.user_token is None:
            raise ValueError("direct_messages needs user_token (the handle's user-context token)")
        return self

    @property
    def username(self) -> str:
        return self.handle[1:]


class DepartmentConfig(Section):
    display_name: str


class TopicsConfig(Section):
    partitions: int = Field(default=3, ge=1, le=1000)
    replication_factor: int = Field(default=1, ge=1, le=10)


class AccessConfig(Section):
    """Who may use the services' HTTP endpoints besides the probes (shared/access.py)."""

    admin_token: SecretRef | None = Field(
        default=None,
        description="Bearer token of every endpoint that changes something and of /admin; "
        "without one, those endpoints refuse every request",
    )
    lock_views: bool = Field(default=False, description="/ops and /ops/state need it too")
    lock_metrics: bool = Field(default=False, description="/metrics needs it too")

    @model_validator(mode="after")
    def _locks_need_a_token(self) -> AccessConfig:
        if (self.lock_views or self.lock_metrics) and self.admin_token is None:
            raise ValueError("admin_token: lock_views and lock_metrics need it")
        return self


def _default_departments() -> dict[Department, DepartmentConfig]:
    return {
        d: DepartmentConfig(display_name=d.value.replace("_", " ").title()) for d in DEPARTMENTS
    }


class SharedConfig(Section):
    """What every service reads. The services' own sections are kept as written here: each
    service's config module (``ingest/config.py`` and the others) types its own, and the CLI's
    ``SwitchboardConfig`` all four."""

    handles: list[HandleConfig] = Field(min_length=1)
    departments: dict[Department, DepartmentConfig] = Field(default_factory=_default_departments)
    topics: TopicsConfig = Field(default_factory=TopicsConfig)
    access: AccessConfig = Field(default_factory=AccessConfig)
    ingest: dict[str, Any] = Field(default_factory=dict)
    classify: dict[str, Any] = Field(default_factory=dict)
    route: dict[str, Any] = Field(default_factory=dict)
    notify: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _unique_handles(self) -> Self:
        seen: dict[str, int] = {}
        users: dict[str, int] = {}  # one X account is one handle: tweets are found by its id
        for index, handle in enumerate(self.handles):
            key = handle.handle.lower()
            if key in seen:
                raise ValueError(
                    f"handles[{index}].handle: {handle.handle} is already handles[{seen[key]}]"
                )
            if handle.user_id in users:
                raise ValueError(f"handles[{index}].user_id: {handle.user_id} is already "
                                 f"handles[{users[handle.user_id]}]'s")  # fmt: skip
            seen[key] = index
            users[handle.user_id] = index
        return self

    @cached_property
    def department_names(self) -> dict[str, str]:
        """Each department's display name (``departments``), by its code."""
        return {d.value: c.display_name for d, c in self.departments.items()}

    @cached_property
    def handles_by_username(self) -> dict[str, HandleConfig]:
        """Lower-case username without '@' -> handle (built once: ingest asks per tweet)."""
        return {h.handle[1:].lower(): h for h in self.handles}

    @cached_property
    def handles_by_user_id(self) -> dict[str, HandleConfig]:
        return {h.user_id: h for h in self.handles}
