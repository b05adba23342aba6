"""Event contracts: every message on a Switchboard topic is one of these models, as JSON.

Each event carries ``schema_version``. Within a version, changes are additive only (new optional
fields); consumers ignore fields they do not know. A breaking change is a new version. The models
are exported as JSON Schema into ``schemas/`` (``switchboard schemas export``); a test fails when
the exported files and this module disagree.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, ClassVar, Literal, TypeVar, get_args

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from switchboard.shared.labels import Department, Urgency

SCHEMA_VERSION = 1

# The longest text X produces: long posts of Premium accounts (25,000 characters; DMs allow
# 10,000, ordinary posts 280). Anything longer is not a tweet and is dead-lettered `too_large`.
MAX_TEXT_CHARS = 25_000
# A dead letter keeps at most this much of the original, so that it always fits in a Kafka
# message; a longer original is truncated and referenced by topic, partition and offset.
MAX_ORIGINAL_BYTES = 128 * 1024

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
TweetSource = Literal[
    "replay", "archive", "filtered_stream", "mentions", "direct_message", "webhook"
]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Model(BaseModel):
    # Unknown fields are ignored so that additive changes within a version never break consumers.
    model_config = ConfigDict(extra="ignore", frozen=True)


class Trace(Model):
    """When each stage handled the tweet; end-to-end latency is ``routed_at - ingested_at``."""

    ingested_at: AwareDatetime
    classified_at: AwareDatetime | None = None
    routed_at: AwareDatetime | None = None
    delivered_at: AwareDatetime | None = None


class Author(Model):
    id: str
    username: str
    name: str | None = None
    followers_count: int = Field(default=0, ge=0)
    verified: bool = False


class ReferencedTweet(Model):
    type: Literal["replied_to", "quoted", "retweeted"]
    id: str


class Withheld(Model):
    """X withholds the tweet, or its author's account, in some countries (a legal demand or a
    copyright report): X's ``withheld`` object, v1.1's ``withheld_*`` fields."""

    country_codes: list[str] = Field(default_factory=list, description="ISO 3166-1 alpha-2")
    copyright: bool = False
    scope: Literal["tweet", "user"] | None = None
    notice: bool = Field(
        default=False,
        description="X sent its withholding notice in place of the text (the API was called "
        "from a country where it is withheld): what the author wrote is not known here",
    )


class Tweet(Model):
    """A tweet or direct message addressed to one of the company's handles, normalized."""

    id: str = Field(min_length=1, description="X tweet id (or DM event id)")
    conversation_id: str = Field(min_length=1, description="Thread id; the Kafka message key")
    text: str = Field(
        max_length=MAX_TEXT_CHARS, description="Full text (note_tweet text when the tweet is long)"
    )
    lang: str | None = Field(default=None, description="BCP 47 language tag as X reports it")
    created_at: AwareDatetime
    author: Author
    addressed_handles: list[str] = Field(
        default_factory=list,
        description="The company's configured handles this tweet addresses (mention, reply, DM)",
    )
    mentions: list[str] = Field(default_factory=list, description="Every @username mentioned")
    referenced_tweets: list[ReferencedTweet] = Field(default_factory=list)
    in_reply_to_user_id: str | None = None
    source: TweetSource
    url: str = Field(description="Link to the tweet on x.com")
    kind: Literal["tweet", "direct_message"] = "tweet"
    quoted_tweet_id: str | None = Field(default=None, description="The tweet this one quotes")
    matched_rules: list[str] = Field(
        default_factory=list, description="Filtered-stream rule tags this tweet matched"
    )
    edit_of: str | None = Field(
        default=None,
        description="The tweet this one edits (the first of its edit history): X gives an "
        "edited post an id of its own",
    )
    withheld: Withheld | None = Field(
        default=None, description="Where X withholds it, when it does"
    )


class Classification(Model):
    department: Department
    urgency: Urgency
    confidence: Probability = Field(description="Model probability of `department`")
    urgency_confidence: Probability
    department_scores: dict[Department, Probability]
    urgency_scores: dict[Urgency, Probability]
    model_version: str
    lang: str | None = Field(
        default=None, description="Language used for the decision: X's `lang`, else detected"
    )
    language_supported: bool = Field(
        default=True, description="False when the model was not trained for `lang`"
    )


class RouteDecision(Model):
    """Where a tweet went and why."""

    destination: Literal["department", "triage", "dropped"]
    department: Department = Field(description="The owning department")
    topic: str = Field(description="The primary topic the tweet was published on")
    copies: list[Department] = Field(default_factory=list)
    escalated: bool = Field(description="Also published on switchboard.alerts")
    reasons: list[str] = Field(description="Human-readable reasons, one per rule that applied")
    confidence_threshold: Probability
    rules_version: str
    matched_rules: list[str] = Field(default_factory=list, description="route.rules that matched")
    owner: Literal["model", "conversation", "rule", "handle"] = Field(
        default="model",
        description="What decided the department (handle: the default department of the "
        "handle addressed, for a tweet the model could not place, route.unsure)",
    )
    priority: Literal["P1", "P2", "P3", "P4"] | None = None
    sla_due_at: AwareDatetime | None = Field(default=None, description="First reply due by")
    alert_kind: Literal["critical_tweet", "escalation"] | None = Field(
        default=None,
        description="The alert published with it, if escalated: the tweet published again (at "
        "least once upstream) gets the same alert, whatever its labels are then",
    )


class Event(Model):
    schema_version: Literal[1] = SCHEMA_VERSION


class RawTweet(Event):
    """On ``switchboard.tweets.raw``: published by ingest."""

    event_type: Literal["tweet.raw"] = "tweet.raw"
    tweet: Tweet
    trace: Trace


class BrandTweet(Event):
    """On ``switchboard.tweets.brand``: a tweet or DM sent by one of the company's own handles.

    Not routed; it answers an inbound tweet when ``tweet.referenced_tweets`` has ``replied_to``
    (or, for a DM, shares its conversation), so response time and rate can be measured."""

    event_type: Literal["tweet.brand"] = "tweet.brand"
    handle: str = Field(description="The company handle that sent it")
    tweet: Tweet
    trace: Trace


class ComplianceEvent(Event):
    """On ``switchboard.compliance``: a tweet or DM was deleted; downstream copies must go."""

    event_type: Literal["compliance.delete"] = "compliance.delete"
    tweet_id: str
    user_id: str | None = None
    conversation_id: str | None = Field(
        default=None,
        description="The deleted tweet's conversation, when ingest saw the tweet within its "
        "deduplication window (route forgets the tweet there); none: unknown",
    )
    event_at: AwareDatetime = Field(description="When X reported the deletion")
    source: TweetSource
    received_at: AwareDatetime = Field(default_factory=utc_now)


class IngestCheckpoint(Event):
    """On the compacted ``switchboard.ingest.checkpoints``: where a polled source stopped."""

    event_type: Literal["ingest.checkpoint"] = "ingest.checkpoint"
    source: str = Field(description="`<source>:<handle user id>`, also the message key")
    since_id: str
    updated_at: AwareDatetime = Field(default_factory=utc_now)


class ClassifiedTweet(Event):
    """On ``switchboard.tweets.classified``: published by classify."""

    event_type: Literal["tweet.classified"] = "tweet.classified"
    tweet: Tweet
    classification: Classification
    trace: Trace


CorrectionSource = Literal["ops", "api", "zendesk", "jira"]


class Corrected(Model):
    """On a tweet route published again because a person corrected it."""

    correction_id: str
    by: str
    source: CorrectionSource
    department_before: Department
    urgency_before: Urgency


class RoutedTweet(Event):
    """On ``switchboard.dept.<department>`` and ``switchboard.triage``: published by route."""

    event_type: Literal["tweet.routed"] = "tweet.routed"
    tweet: Tweet
    classification: Classification
    route: RouteDecision
    trace: Trace
    correction: Corrected | None = Field(
        default=None,
        description="Set when a person re-routed the tweet: `classification` then holds the "
        "person's labels (confidence 1) and the version of the model they corrected",
    )


class Alert(Event):
    """On ``switchboard.alerts``: something someone must look at now."""

    event_type: Literal["alert"] = "alert"
    alert_id: str
    kind: Literal["critical_tweet", "escalation", "sla_breach"]
    department: Department
    urgency: Urgency
    summary: str
    tweet: Tweet
    classification: Classification
    trace: Trace


class SpikeAlert(Event):
    """On ``switchboard.alerts``: tweets about one department, handle or keyword arrive far
    faster than their trailing baseline. One per episode, with sample tweets."""

    event_type: Literal["alert.spike"] = "alert.spike"
    alert_id: str = Field(
        description="spike:<dimension>:<value>:<start of the window the episode began in>: an "
        "episode raised again (route replaying its input after a crash) keeps its id"
    )
    dimension: Literal["department", "handle", "keyword"]
    value: str
    window_minutes: float
    count: int = Field(description="Tweets in the current window")
    baseline: float = Field(description="Mean tweets per window over the trailing windows")
    factor: float
    samples: list[Tweet]
    detected_at: AwareDatetime = Field(default_factory=utc_now)


class AwaitingReply(Model):
    """The first inbound tweet of a conversation that no company handle has answered yet."""

    tweet_id: str
    handle: str | None
    department: Department
    urgency: Urgency
    received_at: AwareDatetime
    due_at: AwareDatetime | None = None
    breach_alerted: bool = False
    breach_offset: int | None = Field(
        default=None,
        description="The offset on switchboard.route.due of the check that raised the breach "
        "alert: read again after a crash, before the alert was acknowledged, it publishes the "
        "alert again (the mark may have reached the changelog first)",
    )
    tweet: Tweet | None = Field(default=None, description="For the SLA-breach alert")
    classification: Classification | None = None


class SpikeCount(Model):
    """How route counted a tweet for spikes: the keys (``dimension:value``) and the time that
    placed it in their windows, kept so that its deletion finds the same keys and windows
    whatever a correction or a new configuration changed since."""

    keys: list[str]
    at: AwareDatetime


class SpikesWithdrawn(Model):
    """The spike counts a deletion withdrew its tweets' samples from, with the offset of the
    deletion's record on ``switchboard.route.due``: read again after a crash, the record
    publishes the same withdrawals, though the tweets are no longer kept."""

    offset: int
    tweets: dict[str, SpikeCount]


class RecentTweet(Model):
    """A tweet route routed lately, with the labels it went by: what a correction re-routes."""

    tweet: Tweet
    department: Department
    urgency: Urgency
    model_version: str
    ingested_at: AwareDatetime
    classification: Classification | None = Field(
        default=None,
        description="The model's labels: what an SLA alert carries if this tweet becomes the "
        "awaited one (its awaited tweet deleted or answered by a reply written before it)",
    )
    spikes: SpikeCount | None = Field(
        default=None, description="What it was counted as for spikes; none: not counted"
    )


class ConversationState(Event):
    """On the compacted ``switchboard.route.conversations``, keyed by conversation id: route's
    memory of who owns a conversation and whether it awaits a reply."""

    event_type: Literal["route.conversation"] = "route.conversation"
    conversation_id: str
    department: Department
    owner_confirmed: bool = Field(
        default=True,
        description="False while ``department`` is only the model's guess on tweets sent to "
        "triage: a guess nobody confirmed does not hold the conversation's later tweets",
    )
    max_urgency: Urgency = Field(
        description="The highest urgency of the tweets it counts (not those dropped)"
    )
    tweets: int = Field(
        ge=0,
        description="How many of its tweets were routed somewhere (not dropped). 0: every "
        "tweet so far was dropped; the conversation is kept for its decisions (a copy published "
        "again goes the same way, a person's correction can still rescue a tweet) but has no "
        "owner and its urgency counts for nothing",
    )
    updated_at: AwareDatetime
    awaiting: AwaitingReply | None = None
    routed: dict[str, RouteDecision] = Field(
        default_factory=dict,
        description="The decisions for the conversation's latest tweets, by tweet id: a tweet "
        "published again after a crash or a broker outage is routed the way it was the first "
        "time, whatever the classifier or the conversation says now",
    )
    routed_offsets: dict[str, int] = Field(
        default_factory=dict,
        description="The offset on switchboard.tweets.classified of the record each decision in "
        "routed was made from: that record read again after a crash is tallied for spikes "
        "again (its tally may not have been published); a copy published again upstream, at "
        "another offset, is not",
    )
    recent: dict[str, RecentTweet] = Field(
        default_factory=dict,
        description="The conversation's latest routed tweets, by tweet id, oldest first: a "
        "correction names one of them (or means the latest) and route re-routes it",
    )
    corrections: list[str] = Field(
        default_factory=list,
        description="Ids of the latest corrections applied, so one sent twice applies once",
    )
    applied: list[Correction] = Field(
        default_factory=list,
        description="The latest corrections applied, their tweets left out (see recent): one "
        "whose request is read again after a crash is published again as it was",
    )
    correction_offset: int | None = Field(
        default=None,
        description="The offset on switchboard.feedback.requests of the latest request applied: "
        "a request at or below it is a redelivery of one already applied, not a new request",
    )
    replied_at: AwareDatetime | None = Field(
        default=None,
        description="When a company handle last answered everyone in the conversation (X's "
        "time; a DM, or a reply X names no one in): a tweet written before it is answered, "
        "even when route reads it after the reply (replies skip classify, which may lag)",
    )
    replied_to: dict[str, AwareDatetime] = Field(
        default_factory=dict,
        description="When a company handle last replied to each author (X's "
        "in_reply_to_user_id), by author id, or mentioned one it had answered in a follow-up "
        "to its own tweet, by @username; the latest 32: that author's tweets written before "
        "it are answered, not those of others replying in the same thread",
    )
    spikes_withdrawn: SpikesWithdrawn | None = Field(
        default=None,
        description="The latest deletion's withdrawals from spike samples, published again if "
        "its record is read again after a crash",
    )


class CorrectionRequest(Event):
    """On ``switchboard.feedback.requests``, keyed by conversation id: a person says a tweet
    belongs to another department or urgency (the ops page, ``POST /feedback``, a Zendesk
    ticket moved to another group, a Jira issue moved to another project). Published by
    route's feedback endpoints; the replica that owns the conversation applies it and
    publishes the ``Correction``. Without ``tweet_id`` it means the conversation's latest
    tweet (a ticket stands for its conversation)."""

    event_type: Literal["feedback.request"] = "feedback.request"
    correction_id: str = Field(
        min_length=1, max_length=200, description="Idempotency key: sent twice, applied once"
    )
    conversation_id: str = Field(min_length=1)
    tweet_id: str | None = Field(default=None, min_length=1)
    department: Department | None = Field(default=None, description="The right department")
    urgency: Urgency | None = Field(default=None, description="The right urgency")
    source: CorrectionSource
    by: str = Field(min_length=1, max_length=200, description="Who corrected it")
    note: str | None = Field(default=None, max_length=2000)
    made_at: AwareDatetime = Field(default_factory=utc_now)
    tweet: Tweet | None = Field(
        default=None,
        description="The tweet, when the caller has it: used when route no longer remembers it",
    )
    ticket_department: Department | None = Field(
        default=None,
        description="The department whose ticket or issue was changed (its group or project "
        "before a move): without tweet_id, the correction means the latest tweet routed there",
    )

    @model_validator(mode="after")
    def _says_something(self) -> CorrectionRequest:
        if self.department is None and self.urgency is None:
            raise ValueError("a correction needs a department, an urgency or both")
        return self


class Correction(Event):
    """On ``switchboard.feedback``, keyed by conversation id: a correction as the
    conversation's owner applied it, once per ``correction_id``: who, when, from what to
    what, the tweet and the model version that labelled it. What ``classify train
    --feedback`` learns from and ``classify compare`` scores against."""

    event_type: Literal["feedback.correction"] = "feedback.correction"
    correction_id: str
    conversation_id: str
    tweet_id: str | None
    source: CorrectionSource
    by: str
    note: str | None = None
    made_at: AwareDatetime
    applied_at: AwareDatetime = Field(default_factory=utc_now)
    outcome: Literal["rerouted", "relabelled", "unchanged", "recorded", "superseded"] = Field(
        description="rerouted: published again on the new department's topic; relabelled: "
        "the urgency alone changed; unchanged: the labels were already right; recorded: "
        "route no longer remembers the tweet (past the conversation TTL), kept for training; "
        "superseded: a correction made after it (made_at) had already changed what it says"
    )
    department_before: Department | None = None
    urgency_before: Urgency | None = None
    destination_before: Literal["department", "triage", "dropped"] | None = Field(
        default=None,
        description="Where the tweet had gone before (dropped: a person rescued it from a "
        "rule's drop, and its alert, if its urgency alerts, was raised only now)",
    )
    alerted_before: bool = Field(
        default=False,
        description="The tweet's alert had been raised before the correction (a rule's "
        "escalation, say): the correction raises none, whatever the urgency it gives",
    )
    department: Department | None = Field(description="After the correction")
    urgency: Urgency | None = Field(description="After the correction")
    model_version: str | None = Field(description="The model whose labels were corrected")
    tweet: Tweet | None = None


ConversationState.model_rebuild()  # ``applied`` names Correction, defined after it


class ConversationDue(Event):
    """On ``switchboard.route.due``, keyed by conversation id: route's sweep (a faust timer over
    the conversations of the partitions a replica owns) found this conversation past its SLA
    or idle past its TTL, or route read a deletion of one of its tweets (``switchboard.compliance``
    is keyed by tweet id: its partition is not the conversation's). The replica that owns the
    conversation when the message arrives checks again and acts (alerts once, forgets it, or
    forgets the deleted tweet): a table changes only inside the stream of its own partition,
    never from a timer or another topic's."""

    event_type: Literal["route.due"] = "route.due"
    conversation_id: str
    reason: Literal["sla", "expired", "deleted"]
    found_at: AwareDatetime
    tweet_id: str | None = Field(default=None, description="deleted: the tweet X deleted")


class SpikeObservation(Event):
    """On ``switchboard.route.spikes``, keyed by ``dimension:value``: routed tweets counted for
    a spike key, ``count`` of them (those a replica routed for the key within a fraction of a
    second that came in within one window), with the first as ``tweet`` and a few more as
    ``more`` for the alert's samples. ``observed_at``, also the record's Kafka timestamp, is
    when the latest of them came in: it places the count in its window.
    Re-keying by the spike key sends every count of a key to the replica that owns it, whichever
    replica routed the tweets, so each key is counted whole and alerts once."""

    event_type: Literal["route.spike"] = "route.spike"
    dimension: Literal["department", "handle", "keyword"]
    value: str
    tweet: Tweet
    observed_at: AwareDatetime
    count: int = Field(default=1, ge=1, description="routed tweets counted, `tweet` included")
    more: list[Tweet] = Field(default_factory=list, description="further sample tweets")


class SpikeSampleWithdrawn(Event):
    """On ``switchboard.route.spikes``, keyed by ``dimension:value``: a tweet counted for this
    spike key was deleted by its author, so the key's owner takes it out of the window's sample
    tweets (a later spike alert must not show it); it stays counted. ``observed_at``, also the
    record's Kafka timestamp, is when the tweet came in: it places the withdrawal in the
    tweet's window. Carries the tweet's id, never its text."""

    event_type: Literal["route.spike_withdrawn"] = "route.spike_withdrawn"
    dimension: Literal["department", "handle", "keyword"]
    value: str
    tweet_id: str
    observed_at: AwareDatetime


class LedgerDue(Event):
    """On ``switchboard.notifications.due``, keyed by conversation id: notify's sweep found the
    conversation's ledger entry untouched for ``notify.ledger_retention_hours``; the replica
    that owns the conversation when the message arrives checks again and removes it (a table
    changes only inside the stream of its own partition)."""

    event_type: Literal["notify.due"] = "notify.due"
    conversation_id: str
    found_at: AwareDatetime
    delivery_id: str | None = Field(
        default=None,
        description="Set: not the ledger entry but this parked delivery of the conversation, "
        "waiting for a person past the retention, is to be forgotten by its owner",
    )


class DigestItem(Event):
    """On ``switchboard.notifications.digests``, keyed by subscription name: a routed tweet
    that waits for the subscription's next digest (``digest_minutes``), published by notify
    when it handles the tweet."""

    event_type: Literal["notify.digest_item"] = "notify.digest_item"
    subscription: str
    routed: RoutedTweet


class DigestDue(Event):
    """On ``switchboard.notifications.digests``, keyed by subscription name: notify's sweep
    found the subscription's digest due; the replica that owns it when the message arrives
    sends it (a table changes only inside the stream of its own partition)."""

    event_type: Literal["notify.digest_due"] = "notify.digest_due"
    subscription: str
    found_at: AwareDatetime


class PendingDigest(Event):
    """On the compacted ``switchboard.notifications.digest_state``, keyed by subscription
    name: the tweets waiting for the subscription's next digest. Each is kept under a key of
    its own (``first`` to ``next``, in order of arrival), so that a tweet costs one small
    write, not a rewrite of the digest; the email lists the first ``SHOWN`` and counts the
    rest, and a digest that cannot be sent hands every kept tweet over one by one. A digest
    holding ``FULL`` tweets is due at once, which bounds what a subscription keeps while its
    mail goes out; one the relay keeps failing grows until it goes out one by one."""

    SHOWN: ClassVar[int] = 100
    FULL: ClassVar[int] = 1000

    event_type: Literal["notify.digest_pending"] = "notify.digest_pending"
    subscription: str
    count: int = Field(
        default=0, ge=0,
        description="tweets waiting: those kept, and any an earlier version only counted",
    )  # fmt: skip
    first: int = Field(default=0, ge=0, description="the first kept tweet's number")
    next: int = Field(default=0, ge=0, description="the number the next kept tweet gets")
    since: AwareDatetime = Field(description="when the first of them arrived")
    retry_at: AwareDatetime | None = Field(
        default=None, description="a send failed: the next try (a period later)"
    )
    failures: int = Field(default=0, ge=0, description="sends failed in a row")

    @property
    def kept(self) -> int:
        return self.next - self.first


Channel = Literal["email", "webhook", "zendesk", "jira", "salesforce", "hubspot"]


class Delivery(Event):
    """On ``switchboard.notifications.deliveries`` (and ``.dlq`` when it failed for good)."""

    event_type: Literal["delivery"] = "delivery"
    delivery_id: str = Field(description="`<tweet id>:<channel>:<target>`; one effect per id")
    tweet_id: str
    conversation_id: str
    channel: Channel
    target: str = Field(description="The subscription's name")
    department: Department
    urgency: Urgency
    outcome: Literal["delivered", "failed"]
    attempts: int = Field(ge=0)
    error: str | None = None
    action: str | None = Field(
        default=None,
        description="sent, created, commented, upserted, lead_converted (left as it is), or "
        "already_done",
    )
    external_id: str | None = Field(default=None, description="Ticket, issue, lead or contact id")
    routed: RoutedTweet | None = Field(
        default=None, description="On the DLQ: the tweet as routed, so it can be redriven"
    )
    retry_at: AwareDatetime | None = Field(
        default=None,
        description="On the DLQ: when notify redrives it by itself (the target asked to wait "
        "longer than notify.delivery.max_wait_s, or the next automatic try after a failure: "
        "notify.delivery.redrive_after_s); none for a rejection",
    )
    trace: Trace


# How notify names a conversation at a vendor, and how route's feedback webhooks find it again:
# a Zendesk ticket's ``external_id``, a Jira issue's label (labels cannot hold ":").
VENDOR_KEY_PREFIX = "switchboard:"
VENDOR_LABEL_PREFIX = "sb-conversation-"


def vendor_conversation_key(subscription: str, conversation_id: str) -> str:
    return f"{VENDOR_KEY_PREFIX}{subscription}:{conversation_id}"


def conversation_of_vendor_key(key: str) -> str | None:
    """The conversation id in ``switchboard:<subscription>:<conversation id>``, else None."""
    if not key.startswith(VENDOR_KEY_PREFIX):
        return None
    subscription, _, conversation_id = key[len(VENDOR_KEY_PREFIX) :].partition(":")
    return conversation_id if subscription and conversation_id else None


def vendor_conversation_label(conversation_id: str) -> str:
    return VENDOR_LABEL_PREFIX + conversation_id


def conversation_of_vendor_labels(labels: list[str]) -> str | None:
    found = (str(label) for label in labels if str(label).startswith(VENDOR_LABEL_PREFIX))
    label = next(found, None)
    return label[len(VENDOR_LABEL_PREFIX) :] or None if label else None


RECIPIENTS_LEFT = (
    "Email: the recipients still to be sent it (the relay refused them and took the others); "
    "none: every recipient. Written for a notify older than delivered_to, which wins over it"
)
DELIVERED_TO = (
    "Email: the recipients the relay took it for; a redrive sends it to those the subscription "
    "names then and who are not among them (a corrected address too); none: nobody yet"
)


class RedriveRequest(Event):
    """On ``switchboard.notifications.redrive``: try one parked delivery again."""

    event_type: Literal["delivery.redrive"] = "delivery.redrive"
    delivery_id: str
    subscription: str
    department: Department
    routed: RoutedTweet
    requested_at: AwareDatetime = Field(default_factory=utc_now)
    recipients: list[str] | None = Field(default=None, description=RECIPIENTS_LEFT)
    delivered_to: list[str] | None = Field(default=None, description=DELIVERED_TO)


class ParkedDelivery(Event):
    """On the compacted ``switchboard.notifications.parked``, keyed by delivery id and held by
    the replica that owns the conversation's partition: a delivery parked on the DLQ and not
    done since. notify redrives it by itself at ``retry_at``; without one it waits for a person
    (``switchboard dlq redrive``) and is forgotten here ``notify.ledger_retention_hours`` after
    it was last parked (the DLQ topic still has it). ``switchboard dlq list`` reads this topic:
    what it lists is what notify holds parked."""

    event_type: Literal["notify.parked"] = "notify.parked"
    delivery_id: str
    channel: Channel
    subscription: str
    department: Department
    routed: RoutedTweet
    retry_at: AwareDatetime | None = Field(
        default=None, description="When notify redrives it by itself; none: a person must"
    )
    parks: int = Field(ge=1, description="How many times it was parked since first_parked_at")
    first_parked_at: AwareDatetime
    parked_at: AwareDatetime = Field(description="When it was parked last")
    attempts: int = Field(default=0, ge=0, description="Attempts of the last try")
    error: str | None = Field(default=None, description="Why the last try failed")
    recipients: list[str] | None = Field(default=None, description=RECIPIENTS_LEFT)
    delivered_to: list[str] | None = Field(default=None, description=DELIVERED_TO)

    @property
    def conversation_id(self) -> str:
        return self.routed.tweet.conversation_id

    def redrive_request(self) -> RedriveRequest:
        return RedriveRequest(
            delivery_id=self.delivery_id,
            subscription=self.subscription,
            department=self.department,
            routed=self.routed,
            recipients=self.recipients,
            delivered_to=self.delivered_to,
        )


class LedgerEntry(Event):
    """On the compacted ``switchboard.notifications.ledger``, keyed by conversation id: what
    notify already did for the conversation, so a restart or a redelivery never repeats it."""

    event_type: Literal["notify.ledger"] = "notify.ledger"
    conversation_id: str
    deliveries: dict[str, str | None] = Field(
        default_factory=dict, description="Delivery id -> the external id it created or used"
    )
    threads: dict[str, str] = Field(
        default_factory=dict,
        description="`<channel>:<subscription>` -> the ticket or issue follow-ups go to",
    )
    transcripts: dict[str, list[str]] = Field(
        default_factory=dict,
        description="`<channel>:<subscription>` -> what a target that keeps one text per "
        "ticket (a HubSpot ticket's content) was given for the latest tweets, oldest first",
    )
    updated_at: AwareDatetime = Field(default_factory=utc_now)


DeadLetterReason = Literal[
    # any stage, from the message itself (decode)
    "empty_message",
    "invalid_utf8",
    "invalid_json",
    "unsupported_schema_version",
    "wrong_event_type",
    "missing_field",
    "too_large",
    "invalid_event",
    # any stage: a valid event the stage failed on (a bug; the error says where)
    "processing_failed",
    # ingest: X input that cannot become a tweet
    "not_a_tweet",
    "not_a_dm",
    "not_a_deletion",
    "invalid_tweet",
    "invalid_dm",
    "unaddressed",
]
DEAD_LETTER_REASONS: tuple[str, ...] = get_args(DeadLetterReason)


class DeadLetter(Event):
    """On ``switchboard.deadletter``: input a stage could not process, with the original bytes.

    Keyed by the original message's key, byte for byte. ``original_base64`` holds the whole
    original unless ``original_truncated``; then it holds the first ``MAX_ORIGINAL_BYTES`` and
    the source topic, partition and offset (or ``source``) say where the rest is."""

    event_type: Literal["dead_letter"] = "dead_letter"
    stage: str = Field(description="The service that rejected the message")
    reason: str = Field(description="A short code; docs/architecture.md lists them all")
    error: str = Field(description="What exactly was wrong")
    source_topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    key: str | None = Field(
        default=None, description="The original key as text (undecodable bytes replaced)"
    )
    source: str | None = Field(
        default=None,
        description="Where input that did not come from a topic came from: "
        "`replay <file>:<line>`, `webhook`, `filtered_stream`, `mentions`, ...",
    )
    target_topic: str | None = Field(
        default=None, description="For an output too large to publish: the topic it was for"
    )
    original_base64: str
    original_size: int | None = Field(default=None, ge=0, description="Bytes in the original")
    original_truncated: bool = Field(
        default=False, description="original_base64 holds only the first MAX_ORIGINAL_BYTES"
    )
    original_preview: str = Field(
        description="The first 500 characters, undecodable bytes replaced"
    )
    failed_at: AwareDatetime = Field(default_factory=utc_now)

    @classmethod
    def of(cls, stage: str, problem: DecodeError, original: bytes, **where: object) -> DeadLetter:
        kept = original[:MAX_ORIGINAL_BYTES]
        return cls(
            stage=stage,
            reason=problem.reason,
            error=problem.detail,
            original_base64=base64.b64encode(kept).decode("ascii"),
            original_size=len(original),
            original_truncated=len(kept) < len(original),
            original_preview=original[:2000].decode("utf-8", errors="replace")[:500],
            **where,
        )

    def original(self) -> bytes:
        """The original bytes (only the first ``MAX_ORIGINAL_BYTES`` if truncated)."""
        return base64.b64decode(self.original_base64)


EVENT_TYPES: tuple[type[Event], ...] = (
    RawTweet,
    BrandTweet,
    ComplianceEvent,
    IngestCheckpoint,
    ClassifiedTweet,
    RoutedTweet,
    Alert,
    SpikeAlert,
    ConversationState,
    ConversationDue,
    SpikeObservation,
    SpikeSampleWithdrawn,
    CorrectionRequest,
    Correction,
    Delivery,
    RedriveRequest,
    ParkedDelivery,
    LedgerEntry,
    LedgerDue,
    DigestItem,
    DigestDue,
    PendingDigest,
    DeadLetter,
)

E = TypeVar("E", bound=Event)


class DecodeError(ValueError):
    """Why a message cannot be processed (mostly: it is not a valid event of the expected
    type); ``reason`` is a dead-letter reason, ``detail`` the specifics."""

    def __init__(self, reason: DeadLetterReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: DeadLetterReason = reason
        self.detail = detail


def encode(event: Event) -> bytes:
    return event.model_dump_json().encode("utf-8")


def decode(event_type: type[E], payload: bytes | None) -> E:
    """Parse ``payload`` as ``event_type`` or raise DecodeError naming what is wrong."""
    if payload is None:
        raise DecodeError("empty_message", "the message has no value (a tombstone)")
    if not payload.strip():
        raise DecodeError("empty_message", f"the value is {len(payload)} blank bytes")
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError("invalid_utf8", str(exc)) from None
    try:
        return event_type.model_validate_json(payload)
    except ValidationError as exc:
        raise problem_of(exc) from None


def decode_either(payload: bytes | None, usual: type[E], other: type[Event]) -> Event:
    """An event of a topic that carries two event types: ``other`` when the payload names its
    ``event_type``, else ``usual`` (whose errors then say what is wrong)."""
    try:
        kind = json.loads(payload or b"{}").get("event_type")
    except (ValueError, AttributeError):
        kind = None
    named = other.model_fields["event_type"].default
    return decode(other if kind == named else usual, payload)


def decode_alert(payload: bytes | None) -> Alert | SpikeAlert:
    """An event from ``switchboard.alerts``."""
    return decode_either(payload, Alert, SpikeAlert)  # type: ignore[return-value]


def decode_digest(payload: bytes | None) -> DigestItem | DigestDue:
    """An event from ``switchboard.notifications.digests``."""
    return decode_either(payload, DigestItem, DigestDue)  # type: ignore[return-value]


def decode_spike(payload: bytes | None) -> SpikeObservation | SpikeSampleWithdrawn:
    """An event from ``switchboard.route.spikes``."""
    return decode_either(payload, SpikeObservation, SpikeSampleWithdrawn)  # type: ignore[return-value]


def problem_of(exc: ValidationError, otherwise: DeadLetterReason = "invalid_event") -> DecodeError:
    """The reason a model refused its input: the most specific that applies, else ``otherwise``."""
    errors = exc.errors(include_url=False)
    if errors[0]["type"] == "json_invalid":
        return DecodeError("invalid_json", errors[0]["msg"])
    for error in errors:
        if error["loc"] == ("schema_version",) and error["type"] != "missing":
            return DecodeError(
                "unsupported_schema_version", f"got {error['input']!r}, expected {SCHEMA_VERSION}"
            )
        if error["loc"] == ("event_type",) and error["type"] == "literal_error":
            return DecodeError("wrong_event_type", f"event_type: {error['msg']}")
    fields = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in errors[:5]
    )
    if any(e["type"] in ("string_too_long", "too_long") for e in errors):
        return DecodeError("too_large", fields)
    if all(e["loc"] and (e["type"] == "missing" or e.get("input", 0) is None) for e in errors):
        return DecodeError("missing_field", fields)
    return DecodeError(otherwise, fields)


def schema_name(event_type: type[Event]) -> str:
    return f"{event_type.model_fields['event_type'].default}.v{SCHEMA_VERSION}.schema.json"


def json_schemas() -> dict[str, dict]:
    """File name -> JSON Schema document, for every event type."""
    documents = {}
    for event_type in EVENT_TYPES:
        schema = event_type.model_json_schema(mode="serialization")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://switchboard.dev/schemas/{schema_name(event_type)}"
        documents[schema_name(event_type)] = schema
    return documents


def render_schema(schema: dict) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def export_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in json_schemas().items():
        path = directory / name
        path.write_text(render_schema(schema))
        written.append(path)
    return written
