"""The Prometheus metrics of ingest: tweets published, the X sources, rate limits.

Names keep the ``switchboard_`` prefix; the shared ones (readiness, Kafka traffic, lag,
latency) are in ``switchboard.shared.metrics``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

TWEETS_INGESTED = Counter(
    "switchboard_tweets_ingested_total",
    "Inbound tweets and DMs published on the raw topic, by source and first addressed handle",
    ["source", "handle"],
)
BRAND_TWEETS = Counter(
    "switchboard_brand_tweets_total",
    "Tweets and DMs sent by the company's own handles, published on the brand topic",
    ["source", "handle"],
)
DEDUP_FORGOTTEN_EARLY = Counter(
    "switchboard_ingest_dedup_forgotten_early_total",
    "Tweet ids forgotten before dedup_window_hours ended, to keep at most dedup_capacity: a "
    "copy of such a tweet arriving later is published again",
)
DUPLICATES_DROPPED = Counter(
    "switchboard_duplicates_dropped_total", "Tweets dropped as already seen", ["source"]
)
TWEETS_SKIPPED = Counter(
    "switchboard_tweets_skipped_total", "Tweets not published (e.g. retweets)", ["source", "reason"]
)
COMPLIANCE_EVENTS = Counter(
    "switchboard_compliance_events_total",
    "Deletions published on switchboard.compliance",
    ["source"],
)
LAST_EVENT_TIMESTAMP = Gauge(
    "switchboard_ingest_last_event_timestamp_seconds",
    "When each source last delivered something (age = time() - value)",
    ["source"],
)
STREAM_CONNECTED = Gauge(
    "switchboard_stream_connected", "1 while the filtered stream is connected", ["source"]
)
STREAM_RECONNECTS = Counter(
    "switchboard_stream_reconnects_total",
    "Filtered-stream reconnects, by what ended the connection",
    ["reason"],
)
STREAM_STALLS = Counter(
    "switchboard_stream_stalls_total", "Stream connections dropped for missing keep-alives"
)
STREAM_BUDGET_WAITS = Counter(
    "switchboard_stream_budget_waits_total",
    "Times the stream waited because its connection attempts reached X's budget",
)
STREAM_RULE_PROBLEMS = Gauge(
    "switchboard_stream_rule_problems",
    "After the last rule sync: foreign_duplicate (a distinct value adopted), invalid_term "
    "(refused by X, left out), uncovered (no rule could be added), by handle",
    ["handle", "kind"],
)
STREAM_GAP_RECOVERED = Counter(
    "switchboard_stream_gap_recovered_total",
    "Mentions read by the backstop for the time the stream was down (duplicates included)",
    ["handle"],
)
SOURCE_RESTARTS = Counter(
    "switchboard_ingest_source_restarts_total",
    "Ingest sources restarted after crashing on something unforeseen (a bug: see the log)",
    ["source"],
)
SOURCE_UP = Gauge(
    "switchboard_ingest_source_up",
    "1 while an ingest source works, 0 while it fails and retries",
    ["source", "handle"],
)
RATE_LIMIT_WAITS = Counter(
    "switchboard_rate_limit_waits_total", "Times a call waited for an X rate limit", ["endpoint"]
)
RATE_LIMIT_WAIT_SECONDS = Counter(
    "switchboard_rate_limit_wait_seconds_total",
    "Seconds spent waiting for rate limits",
    ["endpoint"],
)
RATE_LIMITED = Counter(
    "switchboard_x_rate_limited_total", "X answers of HTTP 429, by endpoint", ["endpoint"]
)
RATE_LIMIT_REMAINING = Gauge(
    "switchboard_x_rate_limit_remaining",
    "Requests left in X's current window, by credential (app:NAME, user:@HANDLE) and endpoint",
    ["credential", "endpoint"],
)
X_API_ERRORS = Counter(
    "switchboard_x_api_errors_total",
    "Failed X API calls and attempts, by endpoint and kind (http_503, network, timeout...)",
    ["endpoint", "kind"],
)
MENTIONS_BEYOND_REACH = Counter(
    "switchboard_mentions_beyond_reach_total",
    "Mention reads (a poll, or the stream's backstop) that reached X's 800 latest mentions of "
    "the handle before the point they read back to: older mentions in the gap are lost to X",
    ["handle"],
)
POLL_ERRORS = Counter(
    "switchboard_poll_errors_total", "Polls that failed and will be retried", ["source"]
)
WEBHOOK_EVENTS_SKIPPED = Counter(
    "switchboard_webhook_events_skipped_total",
    "Account Activity events with nothing to route (likes, follows, typing, read receipts, "
    "revokes as user_event, unknown kinds), by kind",
    ["kind"],
)
WEBHOOK_REQUESTS = Counter(
    "switchboard_webhook_requests_total", "Webhook requests, by outcome", ["outcome"]
)
