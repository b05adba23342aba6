"""The notify section of the YAML file: email, subscriptions, vendor connections and the
delivery policy; what notify validates at start (the shared sections and this one). A new
channel is added here and to ``Channel`` in the shared events."""

from __future__ import annotations

from email.utils import parseaddr
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from switchboard.shared.config import (
    EmailAddress,
    SecretRef,
    Section,
    SharedConfig,
    TimeZoneName,
    named_uniquely,
)
from switchboard.shared.events import Channel
from switchboard.shared.labels import Department, Urgency


class EmailConfig(Section):
    sender: str = "Switchboard <switchboard@localhost>"
    subject_prefix: str = "[Switchboard]"
    templates_dir: Path | None = Field(
        default=None,
        description="Folder of Jinja templates (<name>.txt.j2, <name>.html.j2) that override or "
        "add to the built-in ones (email, digest); HTML is autoescaped",
    )

    @field_validator("sender")
    @classmethod
    def _an_address(cls, sender: str) -> str:
        _, address = parseaddr(sender)
        if "@" not in address or address.startswith("@") or address.endswith("@"):
            raise ValueError(f"{sender!r} is not an address (user@host, or Name <user@host>)")
        return sender


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
    set_priority: bool = Field(
        default=True,
        description="Send the issue's priority; false for a project whose create screen has no "
        "Priority field (Jira refuses any field not on it: 400, 'cannot be set')",
    )


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
    pipeline: str = Field(
        default="0",
        min_length=1,
        description="tickets: the internal id of the pipeline a new ticket opens in (HubSpot's "
        "default support pipeline is 0; an account may rename or replace it)",
    )
    stage: str = Field(
        default="1",
        min_length=1,
        description="tickets: the internal id of that pipeline's stage a new ticket opens in "
        "(1: 'New' in the default pipeline)",
    )
    id_property: str = Field(
        min_length=1,
        description="The property upserts go by, with unique values, created in HubSpot with "
        "'Require unique values' (HubSpot refuses an upsert by any other): one author is one "
        "contact (default twitter_user_id), one conversation one ticket (default "
        "switchboard_conversation)",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_id_property(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("id_property") is None:
            default = {"contacts": "twitter_user_id", "tickets": "switchboard_conversation"}
            return {**data, "id_property": default.get(data.get("object"), "twitter_user_id")}
        return data


DEFAULT_PRIORITIES: dict[Urgency, str] = {
    Urgency.CRITICAL: "urgent", Urgency.HIGH: "high", Urgency.NORMAL: "normal", Urgency.LOW: "low"
}  # fmt: skip
ZENDESK_PRIORITIES = frozenset({"urgent", "high", "normal", "low"})  # the API's enum
CHANNEL_TARGETS = ("webhook", "zendesk", "jira", "salesforce", "hubspot")


class Subscription(Section):
    """Who is told about which tweets, and how: one channel and its target."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=100)
    channel: Channel = "email"
    departments: list[Department] = Field(min_length=1)
    urgencies: list[Urgency] = Field(default_factory=lambda: list(Urgency), min_length=1)
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
        if self.to and self.channel != "email":
            raise ValueError(f"to: only email subscriptions have recipients; a {self.channel} "
                             f"subscription's target is under {self.channel}")  # fmt: skip
        self._check_digest_urgencies()
        for channel in CHANNEL_TARGETS:
            given = getattr(self, channel) is not None
            if channel == self.channel and not given and channel in ("webhook", "jira"):
                raise ValueError(f"{channel}: a {channel} subscription needs its {channel} target")
            if channel != self.channel and given:
                raise ValueError(f"{channel}: given, but the channel is {self.channel}")
        unknown = sorted(set(self.priority.values()) - ZENDESK_PRIORITIES)
        if self.channel == "zendesk" and unknown:  # Zendesk's are fixed; other vendors' vary
            raise ValueError(f"priority: Zendesk has no priority {unknown} (only "
                             f"{', '.join(sorted(ZENDESK_PRIORITIES))})")  # fmt: skip
        return self

    def _check_digest_urgencies(self) -> None:
        if self.digest_minutes is None:
            if self.digest_urgencies != [Urgency.LOW]:  # not the default: meant for a digest
                raise ValueError("digest_urgencies: given, but without digest_minutes there "
                                 "is no digest")  # fmt: skip
            return
        if Urgency.CRITICAL in self.digest_urgencies:
            raise ValueError("digest_urgencies: critical tweets go at once, never in a digest")
        if not any(u in self.urgencies for u in self.digest_urgencies):
            raise ValueError(
                f"digest_urgencies: none of {[u.value for u in self.digest_urgencies]} is among "
                "the subscription's urgencies: the digest would never collect a tweet"
            )

    def matches(self, department: Department, urgency: Urgency) -> bool:
        return department in self.departments and urgency in self.urgencies

    def digests(self, urgency: Urgency) -> bool:
        """Whether a tweet of this urgency waits for the digest instead of going at once."""
        return self.digest_minutes is not None and urgency in self.digest_urgencies


class ZendeskConnection(Section):
    base_url: HttpsUrl = Field(description="https://<subdomain>.zendesk.com")
    email: EmailAddress
    api_token: SecretRef


class JiraConnection(Section):
    base_url: HttpsUrl = Field(description="https://<site>.atlassian.net")
    email: EmailAddress
    api_token: SecretRef
    search_settle_s: float = Field(
        default=10.0,
        ge=0,
        description="After a create whose answer was lost (a timeout, a 5xx), how long Jira's "
        "search may take to show the issue: the create is not repeated before the search has "
        "had this long to find it. Creates wait as long after notify starts (the one before "
        "may have created an issue it could not record)",
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
    request_limit_wait_s: float = Field(
        default=3600.0,
        gt=0,
        description="After 403 REQUEST_LIMIT_EXCEEDED (the org's API requests of a rolling 24 "
        "hours are spent), how long a delivery waits, parked, before it tries again (the same "
        "code for too many concurrent long-running requests waits 5 seconds)",
    )

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> SalesforceConnection:
        if (self.access_token is None) == (self.oauth is None):
            raise ValueError("give either oauth (renewed tokens) or access_token, not both")
        return self


class HubSpotConnection(Section):
    base_url: HttpsUrl = "https://api.hubapi.com"
    token: SecretRef = Field(description="Private app access token")
    time_zone: TimeZoneName = Field(
        default="UTC",
        description="The HubSpot account's time zone: its daily API limit resets at midnight there",
    )


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
    redrive_after_s: float = Field(
        default=60.0,
        gt=0,
        description="A delivery parked after its last attempt, or by an open circuit, is tried "
        "again by itself this long after, then after twice as long each time it is parked again",
    )
    redrive_max_wait_s: float = Field(
        default=3600.0, gt=0, description="The longest wait between automatic redrives"
    )
    redrive_for_hours: float = Field(
        default=24.0,
        ge=0,
        description="Automatic redrives stop this long after a delivery was first parked (it "
        "stays parked for `switchboard dlq redrive`); 0: never redriven by itself. A vendor's own "
        "wait (Retry-After, a daily limit) is always honoured",
    )
    rate_per_s: dict[Channel, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict,
        description="Most requests per second to each channel's vendor from one notify "
        "replica (with N replicas the vendor sees up to N times it: divide the vendor's limit "
        "by them), its retries and every request of a delivery (a search, then a create) "
        "counted, as vendors count them; for email, messages (a channel left out: no limit)",
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
        return named_uniquely(subscriptions, "subscription")

    @model_validator(mode="after")
    def _connections_exist(self) -> NotifyConfig:
        for index, subscription in enumerate(self.subscriptions):
            channel = subscription.channel
            connected = channel in ("email", "webhook") or getattr(self.connections, channel)
            if not connected:
                needed = f"notify.connections.{channel}"
                raise ValueError(f"subscriptions[{index}].channel: {channel} needs {needed}")
        return self


class NotifyFileConfig(SharedConfig):
    """What notify validates: the shared sections and ``notify``."""

    notify: NotifyConfig = Field(default_factory=NotifyConfig)  # type: ignore[assignment]
