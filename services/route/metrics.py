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
SPIKE_LATE = Counter(
    "switchboard_spike_late_total",
    "Routed tweets not counted for spikes: they came in longer ago than the baseline period, "
    "whose windows are no longer kept whole (a backlog after a long outage upstream)",
)
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
CORRECTIONS = Counter(
    "switchboard_corrections_total",
    "Corrections applied by the conversation's owner: the department and urgency a person "
    "moved a tweet to, from what, under which model",
    ["source", "department", "department_before", "urgency", "urgency_before", "model_version",
     "outcome"],
)  # fmt: skip
CORRECTIONS_RECEIVED = Counter(
    "switchboard_corrections_received_total",
    "Corrections accepted by route's feedback endpoints and published for the owner",
    ["source"],
)
FEEDBACK_IGNORED = Counter(
    "switchboard_feedback_ignored_total",
    "Ticketing webhooks that mean no correction (another event, an unmapped group or project)",
    ["source"],
)
FEEDBACK_REFUSED = Counter(
    "switchboard_feedback_refused_total",
    "Ticketing webhooks refused: bad signature or a replayed timestamp",
    ["source"],
)
