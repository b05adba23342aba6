"""Account Activity webhooks: X pushes tweets, DMs and deletions for subscribed handles.

- ``GET <path>?crc_token=...`` answers X's challenge-response check with
  ``{"response_token": "sha256=" + base64(HMAC-SHA256(consumer_secret, crc_token))}``.
- ``POST <path>`` must carry ``x-twitter-webhooks-signature: sha256=<base64 HMAC of the body>``;
  a missing or wrong signature is 401, a body over ``max_body_bytes`` is 413. The events are
  published before the 200: on the Enterprise tier X retries a delivery not answered 200
  within three seconds (three times over five minutes); other tiers do not retry, and rely on
  DM polling and the mentions backstop for what a failed request did not publish. A signed
  body that is not JSON, or holds an event that is not a tweet, is dead-lettered and answered
  200: it is kept on ``switchboard.deadletter``, and X retrying it would only copy it.

Replays. X signs the body only: there is no timestamp or nonce to check, so a body captured
once verifies forever. What protects against a replay, and against X's own redeliveries, is
that each event takes effect once (service.py): a tweet or DM id already published within
``ingest.dedup_window_hours`` is a duplicate (the memory survives restarts), and a tweet or DM
written more than ``max_event_age_hours`` ago (at most that window) is refused, so it cannot
come back once forgotten. Deletions are deduplicated too but never refused for their age: a
deletion must always be honoured. Either way the answer is 200, which ends X's retries.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from aiokafka.errors import KafkaError
from fastapi import APIRouter, HTTPException, Query, Request

from switchboard.ingest import metrics
from switchboard.ingest.config import WebhookConfig
from switchboard.shared.kafka import KafkaPublishError
from switchboard.shared.runtime import read_body

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "x-twitter-webhooks-signature"

# Takes the verified body, returns how many events it published.
Handler = Callable[[bytes], Awaitable[int]]


def signature(secret: bytes, payload: bytes) -> str:
    digest = hmac.new(secret, payload, hashlib.sha256).digest()
    return "sha256=" + base64.b64encode(digest).decode("ascii")


def too_old(written_at: datetime, max_age_hours: float, now: datetime | None = None) -> bool:
    """Whether an event written at ``written_at`` is past the age a webhook accepts."""
    return written_at < (now or datetime.now(UTC)) - timedelta(hours=max_age_hours)


def webhook_router(
    settings: WebhookConfig, consumer_secret: str, handle: Handler, ready: Callable[[], bool]
) -> APIRouter:
    """The X webhook: ``handle`` publishes a signed delivery's events, and is asked only once
    the service is ``ready`` (its memory of the tweets already published restored): before,
    X is answered 503, and sends the delivery again on the Enterprise tier (other tiers do not
    retry: DM polling and the mentions backstop recover what they can, as for any request
    that failed)."""
    router = APIRouter()
    secret = consumer_secret.encode()

    @router.get(settings.path)
    async def crc(crc_token: str = Query(min_length=1)) -> dict[str, str]:
        metrics.WEBHOOK_REQUESTS.labels("crc").inc()
        return {"response_token": signature(secret, crc_token.encode())}

    @router.post(settings.path)
    async def receive(request: Request) -> dict[str, int]:
        body = await _read_limited(request, settings.max_body_bytes)
        given = request.headers.get(SIGNATURE_HEADER, "")
        if not hmac.compare_digest(given.encode(), signature(secret, body).encode()):
            metrics.WEBHOOK_REQUESTS.labels("bad_signature").inc()
            raise HTTPException(status_code=401, detail="missing or invalid signature")
        if not ready():
            metrics.WEBHOOK_REQUESTS.labels("not_ready").inc()
            raise HTTPException(status_code=503, detail="starting: send it again shortly")
        try:
            published = await handle(body)
        except (KafkaError, KafkaPublishError) as failure:
            # Not stored, and forgotten as seen: X's resend (Enterprise) publishes it then.
            metrics.WEBHOOK_REQUESTS.labels("not_stored").inc()
            log.warning("webhook delivery not stored: the broker did not acknowledge it",
                        extra={"error": repr(failure)})  # fmt: skip
            raise HTTPException(status_code=503, detail="not stored: send it again") from None
        metrics.WEBHOOK_REQUESTS.labels("accepted").inc()
        return {"published": published}

    return router


async def _read_limited(request: Request, limit: int) -> bytes:
    body = await read_body(request, limit)
    if body is None:
        metrics.WEBHOOK_REQUESTS.labels("too_large").inc()
        raise HTTPException(status_code=413, detail=f"body larger than {limit} bytes")
    return body
