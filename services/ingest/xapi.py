"""The X API v2 calls ingest makes, through tweepy's async clients, at a configurable base URL.

tweepy builds the requests (routes, field and expansion parameters, errors); two things it
does not do are added here:

- a base URL other than ``https://api.twitter.com`` (tweepy hard-codes the host): tweepy is
  handed a session that sends each request to ``ingest.x.api_base_url`` instead. Every call
  authenticates with a bearer token (app-only, or a user's OAuth 2.0 token for DMs), so no
  OAuth 1.0a signature covers the host;
- rate limits that are counted and obeyed ahead of time: after a response whose
  ``x-rate-limit-remaining`` is 0, the next call to that endpoint waits for
  ``x-rate-limit-reset``; a 429 waits for the reset and tries again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import tweepy
from tweepy.asynchronous import AsyncClient, AsyncStreamingClient
from yarl import URL

from switchboard.shared import metrics

log = logging.getLogger(__name__)

TWEET_FIELDS = [
    "author_id", "conversation_id", "created_at", "entities", "in_reply_to_user_id", "lang",
    "note_tweet", "public_metrics", "referenced_tweets",
]  # fmt: skip
USER_FIELDS = ["name", "username", "public_metrics", "verified"]
EXPANSIONS = [
    "author_id",
    "entities.mentions.username",
    "referenced_tweets.id",  # includes.tweets: whose tweet a quote quotes
    "referenced_tweets.id.author_id",
]
DM_FIELDS = ["id", "text", "event_type", "created_at", "dm_conversation_id", "sender_id"]
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=10)
MAX_RATE_LIMIT_RETRIES = 5


class XApiError(RuntimeError):
    """A call that failed for a reason waiting will not fix (bad token, bad request...)."""


class BaseUrlSession:
    """The part of ``aiohttp.ClientSession`` tweepy uses, aimed at ``base_url``."""

    def __init__(self, base_url: str, timeout: aiohttp.ClientTimeout = REQUEST_TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = aiohttp.ClientSession(timeout=timeout)

    def request(self, method: str, url: str | URL, **kwargs: Any) -> Any:
        return self._session.request(method, self.rebase(url), **kwargs)

    def rebase(self, url: str | URL) -> URL:
        return URL(self.base_url + URL(str(url)).raw_path_qs, encoded=True)

    @property
    def closed(self) -> bool:
        return self._session.closed

    async def close(self) -> None:
        await self._session.close()


class XApi:
    """One app's (or one user's) view of the X API v2."""

    def __init__(self, base_url: str, bearer_token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = BaseUrlSession(base_url)
        self.client = AsyncClient(bearer_token, return_type=aiohttp.ClientResponse)
        self.rules = AsyncStreamingClient(bearer_token, return_type=aiohttp.ClientResponse)
        self.client.session = self.session  # type: ignore[assignment]
        self.rules.session = self.session  # type: ignore[assignment]
        self.bearer_token = bearer_token
        self._not_before: dict[str, float] = {}

    async def close(self) -> None:
        await self.session.close()

    # --- endpoints ---------------------------------------------------------------------------

    async def get_rules(self) -> list[dict]:
        body = await self.call("rules", self.rules.get_rules)
        return body.get("data", [])

    async def add_rules(self, rules: list[tuple[str, str]]) -> dict:
        add = [tweepy.StreamRule(value, tag) for value, tag in rules]
        return await self.call("rules", self.rules.add_rules, add)

    async def delete_rules(self, ids: list[str]) -> dict:
        return await self.call("rules", self.rules.delete_rules, ids)

    async def mentions(
        self, user_id: str, *, since_id: str | None, pagination_token: str | None, max_results: int
    ) -> dict:
        return await self.call(
            "mentions",
            self.client.get_users_mentions,
            user_id,
            since_id=since_id,
            pagination_token=pagination_token,
            max_results=max_results,
            tweet_fields=TWEET_FIELDS,
            user_fields=USER_FIELDS,
            expansions=EXPANSIONS,
        )

    async def dm_events(self, *, pagination_token: str | None, max_results: int) -> dict:
        return await self.call(
            "dm_events",
            self.client.get_direct_message_events,
            pagination_token=pagination_token,
            max_results=max_results,
            event_types="MessageCreate",
            dm_event_fields=DM_FIELDS,
            expansions=["sender_id"],
            user_fields=USER_FIELDS,
            user_auth=False,  # the bearer token is the user's OAuth 2.0 access token
        )

    def stream_url(self) -> str:
        fields = {
            "tweet.fields": ",".join(TWEET_FIELDS),
            "user.fields": ",".join(USER_FIELDS),
            "expansions": ",".join(EXPANSIONS),
        }
        return str(URL(self.base_url + "/2/tweets/search/stream").with_query(fields))

    # --- rate limits -------------------------------------------------------------------------

    async def call(
        self, endpoint: str, method: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any
    ) -> dict:
        """Call ``method``, waiting out rate limits; returns the JSON body."""
        for _ in range(MAX_RATE_LIMIT_RETRIES):
            await self._wait_turn(endpoint)
            try:
                response = await method(*args, **kwargs)
            except tweepy.TooManyRequests as exc:
                self._note_limit(endpoint, exc.response.headers, exhausted=True)
                continue
            except (tweepy.BadRequest, tweepy.Unauthorized, tweepy.Forbidden, tweepy.NotFound) as e:
                raise XApiError(f"{endpoint}: HTTP {e.response.status}: {e}") from None
            self._note_limit(endpoint, response.headers, exhausted=False)
            return await response.json()
        raise XApiError(f"{endpoint}: still rate limited after {MAX_RATE_LIMIT_RETRIES} waits")

    def _note_limit(self, endpoint: str, headers: Any, *, exhausted: bool) -> None:
        remaining = headers.get("x-rate-limit-remaining")
        reset = headers.get("x-rate-limit-reset")
        if reset is not None and (exhausted or remaining == "0"):
            self._not_before[endpoint] = float(reset)
        elif exhausted:  # a 429 without headers: X's documented minimum wait for a retry
            self._not_before[endpoint] = time.time() + 60

    async def _wait_turn(self, endpoint: str) -> None:
        wait = self._not_before.pop(endpoint, 0.0) - time.time()
        if wait > 0:
            metrics.RATE_LIMIT_WAITS.labels(endpoint).inc()
            metrics.RATE_LIMIT_WAIT_SECONDS.labels(endpoint).inc(wait)
            log.info("waiting for the rate limit", extra={"endpoint": endpoint, "seconds": wait})
            await asyncio.sleep(wait)
