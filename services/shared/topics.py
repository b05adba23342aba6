"""Every Kafka topic name Switchboard uses, in one place."""

from __future__ import annotations

from switchboard.shared.labels import DEPARTMENTS, Department

RAW = "switchboard.tweets.raw"
BRAND = "switchboard.tweets.brand"
COMPLIANCE = "switchboard.compliance"
# Compacted: the last since_id of each polled source, so a restart neither misses nor repeats.
INGEST_CHECKPOINTS = "switchboard.ingest.checkpoints"
CLASSIFIED = "switchboard.tweets.classified"
# A candidate model's labels of the same raw tweets (classify --shadow, classify replay): read by
# people and `classify compare`, never routed.
SHADOW = "switchboard.tweets.shadow"
TRIAGE = "switchboard.triage"
# Tweets a rule dropped (spam): kept for audit, so that every tweet is accounted for.
DROPPED = "switchboard.dropped"
# Compacted: route's conversation ownership and awaited replies, keyed by conversation id.
ROUTE_CONVERSATIONS = "switchboard.route.conversations"
# route's own: sweep findings for the conversation's owner, and spike counts keyed by spike key.
ROUTE_DUE = "switchboard.route.due"
ROUTE_SPIKES = "switchboard.route.spikes"
ALERTS = "switchboard.alerts"
# Corrections by people, keyed by conversation id: asked for (route's feedback endpoints), and
# applied by the conversation's owner (what training on feedback reads).
FEEDBACK_REQUESTS = "switchboard.feedback.requests"
FEEDBACK = "switchboard.feedback"
DELIVERIES = "switchboard.notifications.deliveries"
NOTIFICATIONS_DLQ = "switchboard.notifications.dlq"
NOTIFICATIONS_REDRIVE = "switchboard.notifications.redrive"
# Compacted: notify's record of deliveries done and of each conversation's ticket or lead.
NOTIFICATIONS_LEDGER = "switchboard.notifications.ledger"
# Compacted, keyed by delivery id: deliveries parked and not done since, held by the owner of
# their conversation's partition (notify redrives them when due; switchboard_dlq_size).
NOTIFICATIONS_PARKED = "switchboard.notifications.parked"
# notify's own: ledger entries its sweep found past retention, for their owner to remove.
NOTIFICATIONS_DUE = "switchboard.notifications.due"
# notify's own, keyed by subscription: tweets waiting for a digest, and digests found due.
NOTIFICATIONS_DIGESTS = "switchboard.notifications.digests"
# Compacted: the tweets each digest subscription holds until its next digest.
NOTIFICATIONS_DIGEST_STATE = "switchboard.notifications.digest_state"
DEADLETTER = "switchboard.deadletter"

DEPARTMENT_PREFIX = "switchboard.dept."


def department_topic(department: Department | str) -> str:
    return f"{DEPARTMENT_PREFIX}{Department(department).value}"


DEPARTMENT_TOPICS: tuple[str, ...] = tuple(department_topic(d) for d in DEPARTMENTS)

# A tweet lands on exactly one primary topic: its department's, triage, or dropped.
PRIMARY_TOPICS: tuple[str, ...] = (*DEPARTMENT_TOPICS, TRIAGE, DROPPED)

ALL: tuple[str, ...] = (
    RAW,
    BRAND,
    COMPLIANCE,
    INGEST_CHECKPOINTS,
    ROUTE_CONVERSATIONS,
    ROUTE_DUE,
    ROUTE_SPIKES,
    CLASSIFIED,
    SHADOW,
    *PRIMARY_TOPICS,
    ALERTS,
    FEEDBACK_REQUESTS,
    FEEDBACK,
    DELIVERIES,
    NOTIFICATIONS_DLQ,
    NOTIFICATIONS_REDRIVE,
    NOTIFICATIONS_LEDGER,
    NOTIFICATIONS_PARKED,
    NOTIFICATIONS_DUE,
    NOTIFICATIONS_DIGESTS,
    NOTIFICATIONS_DIGEST_STATE,
    DEADLETTER,
)

# Topics that keep only the last message per key (Kafka log compaction).
COMPACTED: frozenset[str] = frozenset(
    {
        INGEST_CHECKPOINTS,
        ROUTE_CONVERSATIONS,
        NOTIFICATIONS_LEDGER,
        NOTIFICATIONS_PARKED,
        NOTIFICATIONS_DIGEST_STATE,
    }
)


# How long a compacted topic keeps a deletion (tombstone) once compacted: Kafka's default,
# stated so that the project relies on a value it sets. A replica's local store of a table
# older than this may miss deletions; route and notify discard such stores at start.
TOMBSTONES_KEPT_MS = 24 * 3600 * 1000


def topic_config(topic: str) -> dict[str, str]:
    if topic == ROUTE_SPIKES:
        # route's windowed tables place each spike count by its record's timestamp, the time
        # its tweets came in: a cluster that stamps records when it appends them would put a
        # backlog's counts in one window again
        return {"message.timestamp.type": "CreateTime"}
    if topic not in COMPACTED:
        return {}
    return {"cleanup.policy": "compact", "delete.retention.ms": str(TOMBSTONES_KEPT_MS)}
