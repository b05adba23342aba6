"""Every Prometheus metric Switchboard exports, defined once (prefix ``switchboard_``).

Each service process exposes the ones it updates on ``GET /metrics``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)

READY = Gauge("switchboard_ready", "1 when the service is ready to process", ["service"])

CONSUMED = Counter(
    "switchboard_messages_consumed_total", "Messages read from Kafka", ["service", "topic"]
)
PRODUCED = Counter(
    "switchboard_messages_produced_total",
    "Messages published to Kafka and acknowledged",
    ["service", "topic"],
)
DEAD_LETTERS = Counter(
    "switchboard_deadletter_total",
    "Messages sent to switchboard.deadletter, by stage and reason",
    ["service", "reason"],
)
BATCH_SECONDS = Histogram(
    "switchboard_batch_processing_seconds",
    "Time to process one consumed batch, publish its outputs and commit",
    ["service"],
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "switchboard_batch_size",
    "Records per consumed batch",
    ["service"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)

TWEETS_INGESTED = Counter(
    "switchboard_tweets_ingested_total", "Tweets published on the raw topic", ["source"]
)
DUPLICATES_DROPPED = Counter(
    "switchboard_duplicates_dropped_total", "Tweets dropped as already seen", ["source"]
)

TWEETS_CLASSIFIED = Counter(
    "switchboard_tweets_classified_total", "Tweets labelled", ["department", "urgency"]
)
INFERENCE_SECONDS = Histogram(
    "switchboard_inference_seconds",
    "Model time per inference batch",
    buckets=LATENCY_BUCKETS,
)

TWEETS_ROUTED = Counter(
    "switchboard_tweets_routed_total",
    "Tweets published on their primary topic",
    ["department", "destination"],
)
ALERTS = Counter("switchboard_alerts_total", "Alerts published", ["kind", "department"])

DELIVERIES = Counter(
    "switchboard_deliveries_total", "Notification deliveries", ["channel", "outcome"]
)
DELIVERY_ATTEMPTS = Counter(
    "switchboard_delivery_attempts_total", "Notification attempts, retries included", ["channel"]
)

E2E_LATENCY = Histogram(
    "switchboard_e2e_latency_seconds",
    "Time from ingest to the end of a stage (classified, routed, delivered)",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
