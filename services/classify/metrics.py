"""The Prometheus metrics of classify: tweets labeled and the model's inference time.

Names keep the ``switchboard_`` prefix; the shared ones (readiness, Kafka traffic, lag,
latency) are in ``switchboard.shared.metrics``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from switchboard.shared.metrics import LATENCY_BUCKETS

TWEETS_CLASSIFIED = Counter(
    "switchboard_tweets_classified_total",
    "Tweets labelled, by the model version that labelled them",
    ["department", "urgency", "model_version"],
)
INFERENCE_SECONDS = Histogram(
    "switchboard_inference_seconds",
    "Model time per inference batch, by role (live, shadow: a candidate labelling beside it)",
    ["role"],
    buckets=LATENCY_BUCKETS,
)
MODEL = Gauge(
    "switchboard_model_info",
    "1 for the model version this classify serves (live) or labels in shadow with (shadow)",
    ["model_version", "role"],
)
MODEL_RELOADS = Counter(
    "switchboard_model_reloads_total",
    "Changes of classify.artifact applied without a restart, by outcome (applied, failed)",
    ["outcome"],
)
SHADOW_READER_FAILURES = Counter(
    "switchboard_shadow_reader_failures_total",
    "Times a shadow classify's reader of the live labels failed and was started again",
)
SHADOW_LABELLED = Counter(
    "switchboard_tweets_shadow_labelled_total",
    "Tweets a shadow classify labelled into switchboard.tweets.shadow",
    ["model_version"],
)
SHADOW_COMPARED = Counter(
    "switchboard_shadow_compared_total",
    "Tweets labelled by both the live model and the shadow candidate, by head and agreement "
    '(agreement rate: agreed="true" over all)',
    ["live", "candidate", "head", "agreed"],
)
