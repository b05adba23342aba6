"""The ingest section of the YAML file: the X apps, the filtered stream, polling and the
webhook; what ingest validates at start (the shared sections and this one)."""

from __future__ import annotations

from typing import Self

from pydantic import Field, field_validator, model_validator

from switchboard.shared.config import (
    SecretRef,
    Section,
    SharedConfig,
)


class XAppConfig(Section):
    """One X developer app: its tokens, by reference."""

    bearer_token: SecretRef = Field(description="App-only token: stream, rules, mentions")
    consumer_secret: SecretRef | None = Field(
        default=None, description="API secret: webhook CRC responses and signature checks"
    )


class ReconnectConfig(Section):
    """Waits between stream reconnects; the defaults are X's documented policy."""

    network_step_s: float = Field(default=0.25, gt=0, description="Linear step, network errors")
    network_max_s: float = Field(default=16.0, gt=0)
    http_initial_s: float = Field(default=5.0, gt=0, description="Doubling, HTTP errors")
    http_max_s: float = Field(default=320.0, gt=0)
    rate_limit_initial_s: float = Field(default=60.0, gt=0, description="Doubling, HTTP 429")
    rate_limit_max_s: float = Field(
        default=900.0,
        gt=0,
        description="Longest wait after a 429 (one rate window) unless X's reset is later; a "
        "spent usage cap, whose end X does not say, is tried again this often",
    )


class XRetryConfig(Section):
    """Retries of one X API call that failed for a reason waiting may fix (5xx, a dropped
    connection, a timeout, an answer that is not JSON): exponential backoff with full jitter."""

    attempts: int = Field(default=4, ge=1, le=20, description="Tries per call, the first included")
    initial_s: float = Field(default=1.0, gt=0, description="Scale of the first wait")
    max_s: float = Field(default=60.0, gt=0, description="Longest single wait")


class FilteredStreamConfig(Section):
    enabled: bool = False
    app: str = "default"
    rule_tag_prefix: str = Field(
        default="switchboard:", min_length=1, description="Marks the rules this config owns"
    )
    max_rule_length: int = Field(
        default=1024,
        ge=64,
        le=2048,
        description="X's limit on one rule: 1,024 characters (pay-per-use, Pro), 2,048 "
        "(Enterprise)",
    )
    # X sends a keep-alive newline every 20 seconds and suggests reconnecting after 20 s of
    # silence; a keep-alive a little late would then cost a reconnect (of 50 per 15 minutes),
    # so the default leaves 10 s of margin (mentions missed meanwhile: mentions_backstop).
    stall_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="No byte for this long drops the connection as stalled; X sends a "
        "keep-alive every 20 s, so at or below that a quiet connection is dropped (ingest "
        "warns at start)",
    )
    reconnect: ReconnectConfig = Field(default_factory=ReconnectConfig)
    healthy_after_s: float = Field(
        default=30.0,
        gt=0,
        description="A connection open at least this long resets the reconnect backoff; one "
        "that X closes sooner counts as a failed attempt",
    )
    max_connections: int = Field(
        default=50, ge=1, description="Connection attempts allowed per connection_window_s (X: 50)"
    )
    connection_window_s: float = Field(default=900.0, gt=0, description="X: 15 minutes")
    backfill_minutes: int = Field(
        default=0,
        ge=0,
        le=5,
        description="Ask X to resend up to this many minutes missed during a disconnection "
        "(Enterprise access only; leave 0 on other access levels, which refuse it)",
    )
    mentions_backstop: bool = Field(
        default=True,
        description="After the stream was down (disconnected or ingest stopped), read each "
        "handle's mentions for the gap, so @mentions the stream missed are recovered",
    )


class PollingConfig(Section):
    enabled: bool = False
    interval_s: float = Field(default=60.0, gt=0)
    max_results: int = Field(default=100, ge=5, le=100)
    max_backoff_s: float = Field(
        default=900.0, gt=0, description="After failed polls the interval doubles up to this"
    )
    first_poll_max_age_hours: float = Field(
        default=24.0,
        gt=0,
        description="The first poll of a handle (no checkpoint: a handle just added, or the "
        "checkpoints lost) publishes only what was written this recently; older history is "
        "not routed as new (backfill it with a replay or an archive)",
    )


class WebhookConfig(Section):
    enabled: bool = False
    app: str = "default"
    path: str = Field(default="/webhooks/x", pattern=r"^/[A-Za-z0-9/_-]*$")
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    max_event_age_hours: float = Field(
        default=72.0,
        gt=0,
        description="A tweet or DM written longer ago is refused as a replay (deletions never "
        "are); at most ingest.dedup_window_hours, so a replay of anything accepted is a duplicate",
    )

    @field_validator("path")
    @classmethod
    def _not_a_path_of_the_service(cls, path: str) -> str:
        # The webhook answers X unauthenticated: on /metrics it would open the metrics that
        # access.lock_metrics closes, and on a probe's path X's check would never reach it.
        own = path.rstrip("/") or "/"
        if own in ("/", *SERVICE_PATHS) or own.startswith("/admin/"):
            raise ValueError(f"{path} is one of ingest's own paths ({', '.join(SERVICE_PATHS)}, "
                             "/admin/...): choose another, such as /webhooks/x")  # fmt: skip
        return path


SERVICE_PATHS = ("/healthz", "/readyz", "/metrics", "/admin")


class XConfig(Section):
    api_base_url: str = Field(default="https://api.twitter.com", pattern=r"^https?://[^/]+$")
    apps: dict[str, XAppConfig] = Field(default_factory=dict)
    retry: XRetryConfig = Field(default_factory=XRetryConfig)
    filtered_stream: FilteredStreamConfig = Field(default_factory=FilteredStreamConfig)
    mentions: PollingConfig = Field(default_factory=PollingConfig)
    # X allows 15 DM reads per user per 15 minutes: one a minute would leave no request for a
    # second page or a retry, which then waits for the window's reset
    direct_messages: PollingConfig = Field(default_factory=lambda: PollingConfig(interval_s=90.0))
    webhook: WebhookConfig = Field(default_factory=WebhookConfig)

    @property
    def any_source(self) -> bool:
        return any(
            s.enabled
            for s in (self.filtered_stream, self.mentions, self.direct_messages, self.webhook)
        )


class IngestConfig(Section):
    replay_rate_per_s: float = Field(default=20.0, gt=0)
    dedup_capacity: int = Field(
        default=1_000_000, ge=1000, description="Tweet ids remembered to drop duplicates"
    )
    dedup_window_hours: float = Field(
        default=72.0, gt=0, description="A tweet id seen within this window is a duplicate"
    )
    include_retweets: bool = Field(default=False, description="Plain retweets are skipped")
    x: XConfig = Field(default_factory=XConfig)

    @model_validator(mode="after")
    def _replays_are_remembered(self) -> IngestConfig:
        if self.x.webhook.max_event_age_hours > self.dedup_window_hours:
            raise ValueError(
                "x.webhook.max_event_age_hours: must not exceed dedup_window_hours, or a replayed "
                "event accepted once could be accepted again"
            )
        return self


class IngestFileConfig(SharedConfig):
    """What ingest validates: the shared sections and ``ingest``."""

    ingest: IngestConfig = Field(default_factory=IngestConfig)  # type: ignore[assignment]

    @model_validator(mode="after")
    def _apps_exist(self) -> Self:
        """The X apps the handles name exist under ingest.x.apps."""
        x = self.ingest.x
        if not x.any_source:
            return self
        wanted = [(f"handles[{i}].app", h.app) for i, h in enumerate(self.handles)]
        wanted += [
            ("ingest.x.filtered_stream.app", x.filtered_stream.app),
            ("ingest.x.webhook.app", x.webhook.app),
        ]
        for key, app in wanted:
            if app not in x.apps:
                raise ValueError(f"{key}: no app {app!r} under ingest.x.apps")
        if x.webhook.enabled and x.apps[x.webhook.app].consumer_secret is None:
            raise ValueError(f"ingest.x.apps.{x.webhook.app}.consumer_secret: the webhook needs it")
        return self
