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
CONSUMER_LAG = Gauge(
    "switchboard_consumer_lag",
    "Messages between a consumer group's position and the end of a partition",
    ["group", "topic", "partition"],
)
TABLE_ENTRIES = Gauge(
    "switchboard_table_entries",
    "Entries held in memory by a changelog table (route conversations, notify ledger)",
    ["service", "table"],
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
    "switchboard_tweets_ingested_total",
    "Inbound tweets and DMs published on the raw topic, by source and first addressed handle",
    ["source", "handle"],
)
BRAND_TWEETS = Counter(
    "switchboard_brand_tweets_total",
    "Tweets and DMs sent by the company's own handles, published on the brand topic",
    ["source", "handle"],
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
POLL_ERRORS = Counter(
    "switchboard_poll_errors_total", "Polls that failed and will be retried", ["source"]
)
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
TOKEN_RENEWALS = Counter(
    "switchboard_token_renewals_total",
    "Access tokens fetched again by notify after the vendor said one expired",
    ["channel"],
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
    "Parked deliveries not delivered since (what `switchboard dlq list` shows)",
)
REDRIVEN = Counter(
    "switchboard_deliveries_redriven_total", "Parked deliveries tried again", ["channel"]
)
CIRCUIT_STATE = Gauge(
    "switchboard_circuit_state", "Per channel: 0 closed, 1 open, 2 half-open", ["channel"]
)

E2E_LATENCY = Histogram(
    "switchboard_e2e_latency_seconds",
    "Time from ingest to the end of a stage (classified, routed, delivered)",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
