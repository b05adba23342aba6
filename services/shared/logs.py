"""Structured logs: one JSON object per line, with the tweet and conversation ids when known.

Pass ids through ``extra``: ``log.info("routed", extra={"tweet_id": ..., "conversation_id": ...})``.

Secrets never reach a log line: the code never logs one, and as a second line of defence every
secret value read (settings.py registers them with ``mask_in_logs``) is replaced by
``[secret]`` in whatever is written, messages, fields and tracebacks alike.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
MASK = "[secret]"
MIN_MASKED = 8  # shorter values would mask ordinary words; real secrets are longer
_secrets: set[str] = set()


def mask_in_logs(secret: str) -> None:
    """Replace ``secret`` (as written, and as JSON escapes it) in every log line from now on."""
    if len(secret) >= MIN_MASKED:
        _secrets.update({secret, json.dumps(secret, ensure_ascii=False)[1:-1]})


def masked(line: str) -> str:
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in line:
            line = line.replace(secret, MASK)
    return line


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update((k, v) for k, v in record.__dict__.items() if k not in _STANDARD)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return masked(json.dumps(entry, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return masked(super().format(record))


def configure_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(TextFormatter(f"%(asctime)s {service} %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The Kafka client logs every reconnect attempt at INFO/WARNING; keep ours readable.
    logging.getLogger("aiokafka").setLevel(max(logging.getLevelName(level), logging.WARNING))
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # Clients that log credentials below WARNING never do so here: httpx every request's URL
    # (URLs may carry credentials) at INFO, tweepy the Authorization header at DEBUG (aiokafka,
    # above, its SASL exchange at DEBUG).
    for name in ("httpx", "httpcore", "tweepy"):
        logging.getLogger(name).setLevel(max(logging.getLevelName(level), logging.WARNING))
