"""The Prometheus metrics of route: routing decisions, rules, alerts, spikes, SLAs and responses.

Names keep the ``switchboard_`` prefix; the shared ones (readiness, Kafka traffic, lag,
latency) are in ``switchboard.shared.metrics``.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

TWEETS_ROUTED = Counter(
    "switchboard_tweets_routed_total",
    "Tweets published on their primary topic",
    ["department", "destination"],
)
REPUBLISHED = Counter(
    "switchboard_tweets_rerouted_total",
    "Tweets that came back after they were routed (at least once upstream) and were published "
    "again the way they went the first time",
    ["department"],
)
ALERTS = Counter("switchboard_alerts_total", "Alerts published", ["kind", "department"])
COPIES = Counter(
    "switchboard_tweets_copied_total", "Copies published for other departments", ["department"]
)
RULE_MATCHES = Counter(
    "switchboard_rule_matches_total", "Tweets each routing rule matched", ["rule"]
)
RULES_RELOADS = Counter(
    "switchboard_rules_reloads_total", "Reloads of the routing rules, by outcome", ["outcome"]
)
SPIKES = Counter("switchboard_spikes_total", "Spike episodes detected", ["dimension", "value"])
AWAITING_REPLY = Counter(
    "switchboard_conversations_awaiting_total",
    "Conversations that started waiting for a company reply",
    ["handle", "department"],
)
RESPONSES = Counter(
    "switchboard_responses_total",
    "Awaited tweets answered by a company handle (response rate = this / awaiting)",
    ["handle", "department"],
)
RESPONSE_SECONDS = Histogram(
    "switchboard_response_seconds",
    "Time to first response by a company handle",
    ["handle", "department"],
    buckets=(60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400, 259200),
)
SLA_BREACHES = Counter(
    "switchboard_sla_breaches_total",
    "Awaited tweets unanswered past their SLA",
    ["department", "urgency"],
)
