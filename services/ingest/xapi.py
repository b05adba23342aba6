"""The X API v2 calls ingest makes, through tweepy's async clients, at a configurable base URL.

tweepy builds the requests (routes, field and expansion parameters, errors); what it does not
do is added here:

- a base URL other than ``https://api.twitter.com`` (tweepy hard-codes the host): tweepy is
  handed a session that sends each request to ``ingest.x.api_base_url`` instead. Every call
  authenticates with a bearer token (app-only, or a user's OAuth 2.0 token for DMs), so no
  OAuth 1.0a signature covers the host;
- rate limits shared the way X counts them (ratelimit.py): one window per credential and
  endpoint, obeyed ahead of time, a 429 waits for ``x-rate-limit-reset``;
- every other failure sorted into what waiting may fix and what it will not. HTTP 5xx, dropped
  connections, timeouts and answers that are not JSON are retried with exponential backoff and
  jitter (``ingest.x.retry``), then raised as ``XApiUnavailable``; 400/401/403/404 raise
  ``XApiRefused`` at once. Callers (pollers, rule sync) keep going after either.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import aiohttp
import tweepy
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)
from tweepy.asynchronous import AsyncClient, AsyncStreamingClient
from yarl import URL

from switchboard.ingest import metrics
from switchboard.ingest.config import XRetryConfig
from switchboard.ingest.ratelimit import RateWindow, Turn

log = logging.getLogger(__name__)

# X parameters tweepy's lists lack, which it sends as they are after a warning each time.
SENT_AS_IS = frozenset({"dry_run", "max_results", "pagination_token"})


class _KnownParameters(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return message.removeprefix("Unexpected parameter: ") not in SENT_AS_IS


logging.getLogger("tweepy.client").addFilter(_KnownParameters())

TWEET_FIELDS = [
    "author_id", "conversation_id", "created_at", "entities", "in_reply_to_user_id", "lang",
    "note_tweet", "public_metrics", "referenced_tweets", "withheld",
]  # fmt: skip
USER_FIELDS = ["name", "username", "public_metrics", "verified"]
EXPANSIONS = [
    "author_id",
    "entities.mentions.username",
    "entities.note.mentions.username",  # a long post's mentions past its first 280 characters
    "referenced_tweets.id",  # includes.tweets: whose tweet a quote quotes
    "referenced_tweets.id.author_id",
]
DM_FIELDS = ["id", "text", "event_type", "created_at", "dm_conversation_id", "sender_id"]
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=10)
MAX_RATE_LIMIT_RETRIES = 5
RULES_PAGE = 1000  # the most rules X returns per GET (max_results)
# What waiting may fix: X's 5xx, a dropped or refused connection (aiohttp's
# ServerDisconnectedError is a ClientError, not an OSError), a timeout, a body that is not JSON.
TRANSIENT = (
    tweepy.TwitterServerError, aiohttp.ClientError, OSError, TimeoutError, json.JSONDecodeError,
)  # fmt: skip


class XApiError(RuntimeError):
    """A call that did not succeed; ``reason`` is a short label for metrics and logs."""

    reason = "error"


class XApiRefused(XApiError):
    """X refused the request (400, 401, 403, 404): waiting will not fix it."""

    reason = "refused"


class XApiUnavailable(XApiError):
    """X or the network kept failing through every retry (5xx, disconnects, timeouts)."""

    reason = "unavailable"


class XApiRateLimited(XApiError):
    """Still answered 429 after ``MAX_RATE_LIMIT_RETRIES`` waits for the reset."""

    reason = "rate_limited"


class XApiUsageCapped(XApiError):
    """X's usage cap of the app or the account (Daily or Monthly) is spent: a 429 whose problem
    is ``usage-capped``. The rate window's reset does not lift it; the period's end or a larger
    plan does, so it is not waited out as a rate limit."""

    reason = "usage_capped"


class _TokenRenewed(Exception):
    """X refused the credential (401) and a different one was read from its source: try again."""


class _RateLimitedOnce(Exception):
    """One 429, already noted in the rate window: take another turn."""


@dataclass
class RulesAnswer:
    """X's answer to ``POST /2/tweets/search/stream/rules``: what was created and why not."""

    created: dict[str, str] = field(default_factory=dict)  # value -> rule id
    errors: list[dict] = field(default_factory=list)
    summary: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, body: dict) -> RulesAnswer:
        created = {r["value"]: r["id"] for r in body.get("data") or [] if isinstance(r, dict)}
        errors = [e for e in body.get("errors") or [] if isinstance(e, dict)]
        return cls(created, errors, (body.get("meta") or {}).get("summary") or {})

    def duplicates(self) -> dict[str, str]:
        """Value -> id of the existing rule, for each rule X refused as a duplicate."""
        return {
            e["value"]: str(e.get("id", ""))
            for e in self.errors
            if _duplicate(e) and isinstance(e.get("value"), str)
        }

    def unattributed(self) -> list[str]:
        """X's problems with the request as a whole, tied to none of its rules (the plan's
        rule cap, a non-compliant rule set): one line each."""
        return [_problems([e]) for e in self.errors if not isinstance(e.get("value"), str)]

    def invalid(self) -> dict[str, str]:
        """Value -> X's explanation, for each rule X refused as invalid."""
        return {
            e["value"]: "; ".join(map(str, e.get("details") or []))
            or str(e.get("detail") or e.get("title"))
            for e in self.errors
            if not _duplicate(e) and isinstance(e.get("value"), str)
        }


def _duplicate(problem: dict) -> bool:
    """X's DuplicateRuleProblem: by its type (the OpenAPI's discriminator), or its title."""
    kind = str(problem.get("type") or "")
    return kind.endswith("/duplicate-rules") or problem.get("title") == "DuplicateRule"


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
    """One credential's view of the X API v2: an app's bearer token, or one user's.

    ``name`` says whose it is in logs and metrics (``app:main``, ``user:@AcmeHelp``), never the
    token. Share one instance among everything that uses the credential: its rate windows are
    X's, and X counts them per credential.
    """

    def __init__(
        self,
        base_url: str,
        bearer_token: str,
        name: str,
        retry: XRetryConfig | None = None,
        reread: Callable[[], str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = name
        self.retry = retry or XRetryConfig()
        self.session = BaseUrlSession(base_url)
        self.client = AsyncClient(bearer_token, return_type=aiohttp.ClientResponse)
        self.rules = AsyncStreamingClient(bearer_token, return_type=aiohttp.ClientResponse)
        self.client.session = self.session  # type: ignore[assignment]
        self.rules.session = self.session  # type: ignore[assignment]
        self.bearer_token = bearer_token
        # Reads the credential again from its source (the secret's file): after a 401, a token
        # rotated there (a user's OAuth 2.0 access token lasts two hours) serves without a
        # restart.
        self.reread = reread
        self._windows: dict[str, RateWindow] = {}

    async def close(self) -> None:
        await self.session.close()

    # --- endpoints ---------------------------------------------------------------------------

    async def get_rules(self) -> list[dict]:
        """Every rule on the app's stream, page by page: a page holds at most 1,000, and an
        Enterprise app holds many more, other teams' rules among them."""
        rules: list[dict] = []
        page: dict[str, Any] = {"max_results": RULES_PAGE}  # not in tweepy's list: sent as is
        while True:
            body = await self.call("rules_read", self.rules.get_rules, **page)
            rules += body.get("data") or []
            next_token = (body.get("meta") or {}).get("next_token")
            if not next_token or next_token == page.get("pagination_token"):
                return rules  # the last page (a token given back again would loop forever)
            page["pagination_token"] = next_token

    async def add_rules(
        self, rules: list[tuple[str, str]], *, dry_run: bool = False
    ) -> RulesAnswer:
        add = [tweepy.StreamRule(value, tag) for value, tag in rules]
        extra = {"dry_run": "true"} if dry_run else {}  # tweepy passes values to the query as-is
        return RulesAnswer.of(await self.call("rules_write", self.rules.add_rules, add, **extra))

    async def delete_rules(self, ids: list[str]) -> dict:
        return await self.call("rules_write", self.rules.delete_rules, ids)

    async def mentions(
        self,
        user_id: str,
        *,
        since_id: str | None,
        pagination_token: str | None,
        max_results: int,
        start_time: str | None = None,
        end_time: str | None = None,
    ) -> dict:
        page = await self.call(
            "mentions",
            self.client.get_users_mentions,
            user_id,
            since_id=since_id,
            start_time=start_time,
            end_time=end_time,
            pagination_token=pagination_token,
            max_results=max_results,
            tweet_fields=TWEET_FIELDS,
            user_fields=USER_FIELDS,
            expansions=EXPANSIONS,
        )
        return _page("mentions", page)

    async def dm_events(self, *, pagination_token: str | None, max_results: int) -> dict:
        page = await self.call(
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
        return _page("dm_events", page)

    def stream_url(self, backfill_minutes: int = 0) -> str:
        fields = {
            "tweet.fields": ",".join(TWEET_FIELDS),
            "user.fields": ",".join(USER_FIELDS),
            "expansions": ",".join(EXPANSIONS),
        }
        if backfill_minutes:
            fields["backfill_minutes"] = str(backfill_minutes)
        return str(URL(self.base_url + "/2/tweets/search/stream").with_query(fields))

    # --- calls: rate limits and retries ------------------------------------------------------

    def window(self, endpoint: str) -> RateWindow:
        if endpoint not in self._windows:
            self._windows[endpoint] = RateWindow(self.name, endpoint)
        return self._windows[endpoint]

    async def call(
        self, endpoint: str, method: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any
    ) -> dict:
        """Call ``method`` in a turn of the endpoint's rate window, retrying what waiting may
        fix; returns the JSON body (an object)."""
        rate_limited = renewed = 0
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TRANSIENT),
            wait=wait_random_exponential(multiplier=self.retry.initial_s, max=self.retry.max_s),
            stop=stop_after_attempt(self.retry.attempts),
            before_sleep=lambda state: self._note_retry(endpoint, state),
            reraise=True,
        )
        while True:
            try:
                return await retrying(self._attempt, endpoint, method, *args, **kwargs)
            except _TokenRenewed:
                renewed += 1
                if renewed > 1:  # the token read again was refused too
                    raise XApiRefused(
                        f"{endpoint}: HTTP 401 with the credential read again"
                    ) from None
            except _RateLimitedOnce:
                rate_limited += 1
                if rate_limited >= MAX_RATE_LIMIT_RETRIES:
                    raise XApiRateLimited(
                        f"{endpoint}: still rate limited after {rate_limited} waits"
                    ) from None
            except TRANSIENT as error:
                metrics.X_API_ERRORS.labels(endpoint, _kind(error)).inc()
                raise XApiUnavailable(
                    f"{endpoint}: {_describe(error)} (after {self.retry.attempts} attempts)"
                ) from None

    async def _attempt(
        self, endpoint: str, method: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any
    ) -> dict:
        async with self.window(endpoint).turn() as turn:
            try:
                response = await method(*args, **kwargs)
            except tweepy.TooManyRequests as exc:
                problem = await problem_of(exc.response)
                capped = usage_capped(problem)
                turn.answered(exc.response.headers, limited=not capped)
                if capped:
                    metrics.X_API_ERRORS.labels(endpoint, "usage_capped").inc()
                    raise XApiUsageCapped(
                        f"{endpoint}: usage cap spent ({problem.get('period', 'period unknown')}"
                        f", {problem.get('scope', 'scope unknown')}): {_problems([problem])}"
                    ) from None
                raise _RateLimitedOnce from None
            except tweepy.TwitterServerError as exc:
                turn.answered(exc.response.headers)
                raise
            except tweepy.HTTPException as e:  # 400, 401, 403, 404 and any other 4xx
                turn.answered(e.response.headers)
                self._refused(endpoint, e.response.status, str(e))
            except aiohttp.ContentTypeError as e:
                self._not_json(endpoint, turn, e)  # raises what the status means
                raise
            turn.answered(response.headers)
            body = json.loads(await response.text())
        if not isinstance(body, dict):
            raise json.JSONDecodeError("the answer is not a JSON object", str(body)[:100], 0)
        return body

    def _not_json(self, endpoint: str, turn: Turn, error: aiohttp.ContentTypeError) -> None:
        """An error whose body is not JSON (a proxy's or an edge's page in front of X): tweepy
        reads the body before the status, so it raises this instead of the status's exception.
        The status still says what happened: a 429 waits for the window, a 401 reads the token
        again, another 4xx is refused; a 5xx (returning) stays a failure to try again."""
        status, headers = error.status, error.headers or {}
        turn.answered(headers, limited=status == 429)
        if status == 429:
            raise _RateLimitedOnce from None
        if 400 <= status < 500:
            self._refused(endpoint, status, "a page, not X's JSON")

    def _refused(self, endpoint: str, status: int, detail: str) -> NoReturn:
        """X refused the request (a 4xx other than 429): counted, and a 401 reads the token
        again (the call is then made again with the new one)."""
        metrics.X_API_ERRORS.labels(endpoint, f"http_{status}").inc()
        if status == 401 and self.renewed():
            raise _TokenRenewed from None
        raise XApiRefused(f"{endpoint}: HTTP {status}: {detail}") from None

    def renewed(self) -> bool:
        """Whether the credential's source now holds another token (it is then used): after X
        answered 401, as it does once a token is regenerated."""
        if self.reread is None:
            return False
        try:
            token = self.reread()
        except Exception as error:  # noqa: BLE001 - a source that fails keeps the token in use
            log.warning("could not read the credential again",
                        extra={"credential": self.name, "error": str(error)})  # fmt: skip
            return False
        if token == self.bearer_token:
            return False
        self.bearer_token = self.client.bearer_token = self.rules.bearer_token = token
        log.info("X refused the credential; using the one read again from its source",
                 extra={"credential": self.name})  # fmt: skip
        return True

    def _note_retry(self, endpoint: str, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        metrics.X_API_ERRORS.labels(endpoint, _kind(error)).inc()
        log.warning(
            "X call failed; retrying",
            extra={"endpoint": endpoint, "credential": self.name, "attempt": state.attempt_number,
                   "error": _describe(error)},
        )  # fmt: skip


def _page(endpoint: str, body: dict) -> dict:
    """A page of a read endpoint. X answers a request it could not serve for the resource in its
    path (an unknown, suspended or protected user) with HTTP 200 and ``errors`` alone: that is a
    refusal, not an empty page. Errors beside ``data`` are partial (an expanded object X could
    not return) and the page stands."""
    errors = body.get("errors")
    if errors and not body.get("data"):
        metrics.X_API_ERRORS.labels(endpoint, "problem").inc()
        raise XApiRefused(f"{endpoint}: {_problems(errors)}")
    if errors:
        log.info("X left part of a page out", extra={"endpoint": endpoint,
                                                     "errors": _problems(errors)})  # fmt: skip
    return body


def _problems(errors: object) -> str:
    """X's problems (RFC 7807 objects) as one line: each title and detail."""
    if not isinstance(errors, list):
        return str(errors)[:300]
    said = [
        ": ".join(str(e[k]) for k in ("title", "detail") if e.get(k))
        if isinstance(e, dict)
        else str(e)
        for e in errors
    ]
    return "; ".join(said)[:300]


def usage_capped(problem: dict) -> bool:
    """Whether X's problem is the spent usage cap (its type ends the same on api.twitter.com
    and api.x.com)."""
    return str(problem.get("type", "")).endswith("/problems/usage-capped")


async def problem_of(response: aiohttp.ClientResponse) -> dict:
    """The problem body of an error answer (read already, by tweepy or the stream), or {}
    when it has none."""
    try:
        body = await response.json(content_type=None)
    except (ValueError, aiohttp.ClientError):
        return {}
    return body if isinstance(body, dict) else {}


def _kind(error: BaseException | None) -> str:
    if isinstance(error, tweepy.HTTPException):
        return f"http_{error.response.status}"
    if isinstance(error, json.JSONDecodeError):
        return "malformed"
    if isinstance(error, TimeoutError):
        return "timeout"
    return "network"


def _describe(error: BaseException | None) -> str:
    if isinstance(error, tweepy.HTTPException):
        return f"HTTP {error.response.status}"
    return f"{type(error).__name__}: {error}"[:300]
