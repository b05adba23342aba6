"""The Prometheus metrics of notify: deliveries, retries, parking, circuits, vendor tokens.

Names keep the ``switchboard_`` prefix; the shared ones (readiness, Kafka traffic, lag,
latency) are in ``switchboard.shared.metrics``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from switchboard.shared.metrics import LATENCY_BUCKETS

RECONCILE_WAITS = Counter(
    "switchboard_reconcile_waits_total",
    "Retries held back because a create whose answer was lost may still appear in search",
    ["channel"],
)
FOLLOW_UP_TICKETS = Counter(
    "switchboard_follow_up_tickets_total",
    "Follow-up tickets opened because the conversation's ticket was closed",
    ["channel"],
)
EMAIL_RECIPIENTS_REFUSED = Counter(
    "switchboard_email_recipients_refused_total",
    "Recipients the mail relay refused while it took the email for the others: for now (4xx, "
    "tried again by itself) or for good (5xx, parked for a person)",
    ["subscription", "refusal"],
)
VENDOR_WAITS = Counter(
    "switchboard_vendor_waits_total",
    "Requests held back until a vendor's rate limit, which another request met, was over",
    ["channel"],
)
THREADS_GONE = Counter(
    "switchboard_threads_gone_total",
    "Tickets or issues of a conversation found deleted (or a Jira issue full of comments) at "
    "a follow-up: a new one was opened",
    ["channel"],
)
TOKEN_RENEWALS = Counter(
    "switchboard_token_renewals_total",
    "Access tokens fetched again by notify after the vendor said one expired",
    ["channel"],
)

DELIVERIES = Counter(
    "switchboard_deliveries_total", "Notification deliveries", ["channel", "outcome"]
)
DELIVERY_ATTEMPTS = Counter(
    "switchboard_delivery_attempts_total", "Notification attempts, retries included", ["channel"]
)
DELIVERY_RETRIES = Counter(
    "switchboard_delivery_retries_total", "Notification attempts after the first", ["channel"]
)
DELIVERY_SECONDS = Histogram(
    "switchboard_delivery_seconds",
    "Time to deliver one notification, retries included",
    ["channel"],
    buckets=LATENCY_BUCKETS,
)
PARKED = Counter(
    "switchboard_deliveries_parked_total", "Deliveries parked on the DLQ", ["channel", "reason"]
)
DLQ_SIZE = Gauge(
    "switchboard_dlq_size",
    "Parked deliveries not done since, of this replica's partitions (sum over replicas); "
    "one waiting for a person counts until notify.ledger_retention_hours after it was parked",
    ["channel"],
)
REDRIVEN = Counter(
    "switchboard_deliveries_redriven_total", "Parked deliveries tried again", ["channel"]
)
CIRCUIT_STATE = Gauge(
    "switchboard_circuit_state", "Per channel: 0 closed, 1 open, 2 half-open", ["channel"]
)
