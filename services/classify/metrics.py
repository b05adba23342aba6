"""The Prometheus metrics of classify: tweets labeled and the model's inference time.

Names keep the ``switchboard_`` prefix; the shared ones (readiness, Kafka traffic, lag,
latency) are in ``switchboard.shared.metrics``.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from switchboard.shared.metrics import LATENCY_BUCKETS

TWEETS_CLASSIFIED = Counter(
    "switchboard_tweets_classified_total",
    "Tweets labelled, by the model version that labelled them",
    ["department", "urgency", "model_version"],
)
INFERENCE_SECONDS = Histogram(
    "switchboard_inference_seconds",
    "Model time per inference batch",
    buckets=LATENCY_BUCKETS,
)
