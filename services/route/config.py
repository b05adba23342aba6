"""The route section of the YAML file: routing rules, conversations, spikes and SLAs; what
route validates at start and at every reload (the shared sections and this one)."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, field_validator, model_validator

from switchboard.shared.config import (
    HandleName,
    SecretRef,
    Section,
    Segment,
    SharedConfig,
    TimeZoneName,
    named_uniquely,
)
from switchboard.shared.labels import Department, Urgency

Priority = Literal["P1", "P2", "P3", "P4"]
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class TimeWindow(Section):
    """When a rule applies: local clock ``start``-``end`` on ``days`` in ``timezone``."""

    start: str = Field(default="00:00", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    end: str = Field(default="24:00", pattern=r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$")
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(
        default_factory=lambda: list(WEEKDAYS), min_length=1
    )
    timezone: TimeZoneName = "UTC"

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if self.start == self.end:  # a window of no time: its rule would never match
            raise ValueError(f"start and end are both {self.start}: the window holds no time")
        return self


class RuleCondition(Section):
    """All the given conditions must hold (an empty condition matches every tweet). A list
    given must name something: an empty one would never match."""

    departments: list[Department] | None = Field(default=None, min_length=1)
    urgencies: list[Urgency] | None = Field(default=None, min_length=1)
    confidence_min: float | None = Field(default=None, ge=0.0, le=1.0)
    confidence_max: float | None = Field(default=None, ge=0.0, le=1.0)
    handles: list[HandleName] | None = Field(
        default=None, min_length=1, description="Any of them addressed"
    )
    segments: list[Segment] | None = Field(
        default=None, min_length=1, description="Of an addressed handle"
    )
    languages: list[Annotated[str, Field(pattern=r"^[a-z]{2,3}(-[a-z0-9]{2,8})?$")]] | None = Field(
        default=None, min_length=1, description="X's lang codes, lower case (en, es, pt-br)"
    )
    keywords: list[Annotated[str, Field(min_length=1)]] | None = Field(
        default=None, min_length=1,
        description="Any of them in the text, case-insensitive, whole words",
    )  # fmt: skip
    patterns: list[str] | None = Field(
        default=None, min_length=1, description="Regular expressions (search)"
    )
    followers_min: int | None = Field(default=None, ge=0)
    verified: bool | None = None
    kinds: list[Literal["tweet", "direct_message"]] | None = Field(default=None, min_length=1)
    time: TimeWindow | None = None

    @model_validator(mode="after")
    def _a_confidence_range(self) -> Self:
        low, high = self.confidence_min, self.confidence_max
        if low is not None and high is not None and low > high:
            raise ValueError(f"confidence_min {low} is above confidence_max {high}: no tweet fits")
        return self

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
    drop: bool = Field(default=False, description="Published on switchboard.dropped alone")
    priority: Priority | None = None
    sla_minutes: float | None = Field(default=None, gt=0, description="First reply due within")

    @model_validator(mode="after")
    def _consistent(self) -> RuleAction:
        if self.drop and (self.route_to or self.copy_to or self.triage or self.escalate):
            raise ValueError("drop cannot be combined with routing, copying or escalating")
        if self.triage and self.route_to:
            raise ValueError("give either route_to or triage, not both")
        return self

    def does_something(self) -> bool:
        return any((self.route_to, self.copy_to, self.triage, self.escalate, self.drop,
                    self.priority, self.sla_minutes))  # fmt: skip


class RoutingRule(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = None
    when: RuleCondition = Field(default_factory=RuleCondition)
    then: RuleAction
    final: bool = Field(default=False, description="Stop evaluating later rules when it matches")

    @model_validator(mode="after")
    def _does_something(self) -> RoutingRule:
        # an empty then is meaningful only with final: the model's decision, and no later rule
        if not self.final and not self.then.does_something():
            raise ValueError("then: the rule does nothing: give route_to, copy_to, triage, "
                             "escalate, drop, priority or sla_minutes (or final: true to keep "
                             "the model's decision from later rules)")  # fmt: skip
        return self


class ConversationConfig(Section):
    """A conversation keeps its owning department while it is active."""

    enabled: bool = True
    ttl_hours: float = Field(
        default=72.0, gt=0, le=8760, description="Ownership expires after this (at most a year)"
    )
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
        default_factory=lambda: ["department", "handle", "keyword"],
        min_length=1,
        description="What a spike is counted by; for none, enabled: false",
    )
    keywords: list[Annotated[str, Field(min_length=2)]] = Field(default_factory=list)
    samples: int = Field(default=5, ge=1, le=50)

    @field_validator("keywords")
    @classmethod
    def _each_keyword_once(cls, keywords: list[str]) -> list[str]:
        # matched case-insensitively: a repeat would count each tweet twice (or raise two
        # alerts for one crisis), reaching the bar at half its count
        first: dict[str, int] = {}
        for index, keyword in enumerate(keywords):
            seen = first.setdefault(keyword.casefold(), index)
            if seen != index:
                raise ValueError(f"keywords[{index}] {keyword!r} repeats keywords[{seen}]")
        return keywords


class SlaConfig(Section):
    """Time to a first reply from one of the company's handles, by urgency (minutes)."""

    minutes: dict[Urgency, Annotated[float, Field(gt=0, le=525_600)]] = Field(
        default_factory=lambda: {
            Urgency.CRITICAL: 30, Urgency.HIGH: 240, Urgency.NORMAL: 1440, Urgency.LOW: 10_080
        }
    )  # fmt: skip
    alert_urgencies: list[Urgency] = Field(
        default_factory=lambda: [Urgency.CRITICAL],
        description="An unanswered tweet of these urgencies past its SLA raises an alert",
    )
    check_interval_s: float = Field(default=30.0, gt=0)


ZENDESK_PRIORITIES = ("urgent", "high", "normal", "low")  # a ticket's priority, in its API


class ZendeskFeedback(Section):
    """Zendesk tickets moved to another group (or given another priority) correct their
    conversation: an event webhook (``ticket.group_assignment_changed``,
    ``ticket.priority_changed``) to ``POST /feedback/zendesk``, signed with its signing secret."""

    signing_secret: SecretRef
    groups: dict[int, Department] = Field(
        min_length=1, description="Zendesk group id -> the department that group is"
    )
    priorities: dict[str, Urgency] = Field(
        default_factory=lambda: {"urgent": Urgency.CRITICAL, "high": Urgency.HIGH,
                                 "normal": Urgency.NORMAL, "low": Urgency.LOW},
        description="Zendesk priority -> urgency",
    )  # fmt: skip

    @field_validator("priorities")
    @classmethod
    def _zendesk_priorities(cls, priorities: dict[str, Urgency]) -> dict[str, Urgency]:
        """Zendesk's priorities are four lower-case values: ``Urgent`` is read as ``urgent``,
        and a name Zendesk has not would never match a ticket."""
        lowered = {name.lower(): urgency for name, urgency in priorities.items()}
        if unknown := sorted(set(lowered) - set(ZENDESK_PRIORITIES)):
            known = ", ".join(ZENDESK_PRIORITIES)
            raise ValueError(f"{', '.join(unknown)}: not a Zendesk priority (one of {known})")
        return lowered

    max_age_s: float = Field(
        default=3600, gt=0, description="An older signature timestamp is refused (a replay)"
    )
    ignore_users: list[str] = Field(
        default_factory=list,
        description="Zendesk user ids whose changes are not corrections: the API user notify "
        "acts as (it sets a ticket's priority itself)",
    )


class JiraFeedback(Section):
    """Jira issues moved to another project (or given another priority) correct their
    conversation: an admin webhook (``jira:issue_updated``) to ``POST /feedback/jira`` with a
    secret, which Jira uses to sign each request (``X-Hub-Signature``)."""

    secret: SecretRef
    projects: dict[str, Department] = Field(
        min_length=1, description="Jira project key -> the department that project is"
    )
    priorities: dict[str, Urgency] = Field(
        default_factory=lambda: {"Highest": Urgency.CRITICAL, "High": Urgency.HIGH,
                                 "Medium": Urgency.NORMAL, "Low": Urgency.LOW,
                                 "Lowest": Urgency.LOW},
        description="Jira priority name -> urgency",
    )  # fmt: skip
    max_age_s: float = Field(
        default=3600, gt=0, description="An event whose timestamp is older is refused (a replay)"
    )
    ignore_users: list[str] = Field(
        default_factory=list,
        description="Jira account ids whose changes are not corrections: the user notify acts as",
    )


class FeedbackConfig(Section):
    """Where corrections come from besides the ops page and ``POST /feedback``."""

    zendesk: ZendeskFeedback | None = None
    jira: JiraFeedback | None = None


class RouteConfig(Section):
    confidence_threshold: float = Field(default=0.45, ge=0.0, le=1.0)
    unsure: Literal["triage", "handle"] = Field(
        default="triage",
        description="Where a tweet goes whose department the model cannot tell (confidence "
        "under the threshold, or a language it was not trained for): triage, or the "
        "default_department of the first company handle it addresses",
    )
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
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)

    @field_validator("rules")
    @classmethod
    def _unique_rule_names(cls, rules: list[RoutingRule]) -> list[RoutingRule]:
        return named_uniquely(rules, "rule")

    @model_validator(mode="after")
    def _alerts_have_an_sla(self) -> Self:
        """``sla.minutes`` given replaces the defaults whole: an alerting urgency left out has
        no SLA unless a rule for every tweet of it (a ``when`` of urgencies alone, or none)
        gives one (``sla_minutes``), and its tweets no rule covers would never alert."""

        def ruled(urgency: Urgency) -> bool:
            return any(
                rule.then.sla_minutes
                and rule.when == RuleCondition(urgencies=rule.when.urgencies)
                and (rule.when.urgencies is None or urgency in rule.when.urgencies)
                for rule in self.rules
            )

        missing = [u.value for u in self.sla.alert_urgencies
                   if u not in self.sla.minutes and not ruled(u)]  # fmt: skip
        if missing:
            raise ValueError(
                f"sla.alert_urgencies: {', '.join(missing)} has no entry in sla.minutes and no "
                "rule for all its tweets sets sla_minutes (the minutes given replace the defaults)"
            )
        return self

    @model_validator(mode="after")
    def _alerts_come_before_the_conversation_is_forgotten(self) -> Self:
        """A conversation idle for ``conversations.ttl_hours`` is forgotten, its awaited tweet
        with it: an alerting SLA as long would never alert."""
        ttl = self.conversations.ttl_hours * 60  # kept whether or not they keep an owner
        alerting = set(self.sla.alert_urgencies)
        slas = [
            (f"sla.minutes.{u.value}", self.sla.minutes.get(u)) for u in self.sla.alert_urgencies
        ]
        slas += [
            (f"rules[{index}].then.sla_minutes (rule {rule.name!r})", rule.then.sla_minutes)
            for index, rule in enumerate(self.rules)
            if rule.when.urgencies is None or alerting & set(rule.when.urgencies)
        ]
        for key, minutes in slas:
            if minutes is not None and minutes >= ttl:
                raise ValueError(
                    f"{key}: {minutes:g} minutes is not shorter than conversations.ttl_hours "
                    f"({ttl:g} minutes): the conversation would be forgotten before its SLA alert"
                )
        return self


NEVER = ", so the rule would never match"


class RouteFileConfig(SharedConfig):
    """What route validates, at start and at every reload: the shared sections and ``route``."""

    route: RouteConfig = Field(default_factory=RouteConfig)  # type: ignore[assignment]

    @model_validator(mode="after")
    def _rules_name_what_exists(self) -> Self:
        """A rule naming a handle or a segment the file does not have would never match."""
        handles = {h.handle.lower() for h in self.handles}
        segments = {h.segment for h in self.handles}
        for index, rule in enumerate(self.route.rules):
            where = f"route.rules[{index}].when"
            for handle in rule.when.handles or []:
                if handle.lower() not in handles:
                    problem = f"{handle} is not one of the handles"
                    raise ValueError(f"{where}.handles (rule {rule.name!r}): {problem}{NEVER}")
            for segment in rule.when.segments or []:
                if segment not in segments:
                    problem = f"no handle has the segment {segment!r}"
                    raise ValueError(f"{where}.segments (rule {rule.name!r}): {problem}{NEVER}")
        return self
