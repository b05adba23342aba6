"""Every Kafka topic name Switchboard uses, in one place."""

from __future__ import annotations

from switchboard.shared.labels import DEPARTMENTS, Department

RAW = "switchboard.tweets.raw"
CLASSIFIED = "switchboard.tweets.classified"
TRIAGE = "switchboard.triage"
ALERTS = "switchboard.alerts"
DELIVERIES = "switchboard.notifications.deliveries"
NOTIFICATIONS_DLQ = "switchboard.notifications.dlq"
DEADLETTER = "switchboard.deadletter"

DEPARTMENT_PREFIX = "switchboard.dept."


def department_topic(department: Department | str) -> str:
    return f"{DEPARTMENT_PREFIX}{Department(department).value}"


DEPARTMENT_TOPICS: tuple[str, ...] = tuple(department_topic(d) for d in DEPARTMENTS)

# A tweet lands on exactly one primary topic: its department's or triage.
PRIMARY_TOPICS: tuple[str, ...] = (*DEPARTMENT_TOPICS, TRIAGE)

ALL: tuple[str, ...] = (
    RAW,
    CLASSIFIED,
    *PRIMARY_TOPICS,
    ALERTS,
    DELIVERIES,
    NOTIFICATIONS_DLQ,
    DEADLETTER,
)
