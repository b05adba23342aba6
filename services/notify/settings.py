"""Settings of the notify service: SMTP endpoint and secret from ``SMTP_*``, the rest from YAML."""

from __future__ import annotations

from typing import Any, ClassVar, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from switchboard.notify.config import NotifyFileConfig
from switchboard.shared.settings import Secret, StreamSettings, from_environment


class SmtpSettings(BaseSettings):
    """The mail server notify sends through (``SMTP_HOST``, ``SMTP_PORT``, ...)."""

    model_config = SettingsConfigDict(env_prefix="SMTP_", extra="ignore", frozen=True)

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=25, ge=1, le=65535)
    username: str | None = None
    password: Secret | None = None
    starttls: bool = Field(default=False, description="Upgrade the connection with STARTTLS")
    tls: bool = Field(default=False, description="Implicit TLS (usually port 465)")
    timeout_s: float = Field(default=10.0, gt=0)
    connections: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Connections notify may keep open to the relay, each carrying one email at "
        "a time: each email waits several round trips, so behind a relay's latency one "
        "connection caps the rate (docs/performance.md)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.tls and self.starttls:
            raise ValueError("SMTP_TLS and SMTP_STARTTLS: one or the other (implicit TLS or an "
                             "upgrade), not both")  # fmt: skip
        if bool(self.username) != bool(self.password and self.password.get_secret_value()):
            raise ValueError("SMTP_USERNAME and SMTP_PASSWORD: login needs both, or neither")
        return self

    @classmethod
    def load(cls) -> SmtpSettings:
        """From the ``SMTP_*`` variables, or ConfigError naming each one that is wrong."""
        return from_environment(cls, "SMTP_")


class NotifySettings(StreamSettings):
    service: ClassVar[str] = "notify"
    default_http_port: ClassVar[int] = 8084

    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    config: NotifyFileConfig  # type: ignore[assignment]  # the shared sections and notify's

    @classmethod
    def load(cls, **overrides: Any) -> Self:
        if "smtp" not in overrides:  # read apart, so that an error names the SMTP_ variable
            overrides["smtp"] = SmtpSettings.load()
        return super().load(**overrides)
