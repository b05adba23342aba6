"""An in-process stand-in for the parts of the X (Twitter) API v2 that Switchboard ingests from.

It serves, on 127.0.0.1 and a free port:

* ``GET/POST /2/tweets/search/stream/rules`` - filtered-stream rule management
* ``GET /2/tweets/search/stream`` - the filtered stream (chunked, ``\\r\\n``-delimited JSON,
  ``\\r\\n`` keep-alives, one connection at a time)
* ``GET /2/users/:id/mentions`` - a user's mention timeline, newest first, paginated
* ``GET /2/dm_events`` - the authenticating user's DM events, newest first, paginated

Tests set the state up (users, tweets, DM events, rules), script failures (``fail_next``,
``drop_next``, ``garble_next``, ``disconnect_stream_after``, ``stall_stream``, ``flap_stream``,
``set_rate_limit``, ``limit_stream_connections``, ``lose_tweets_while_disconnected``) and inspect
what the client sent (``requests``, ``stream_connections``, ``stream_attempts``, ``rules``,
``rate_limited``).

Rate limits are counted per bearer token, as X counts them (per app for app-only tokens, per
user for user tokens), and each answer carries the ``x-rate-limit-*`` headers of its window.
With ``lose_tweets_while_disconnected`` a tweet pushed while no client is connected is not
queued but missed, as on X: only a connection asking ``backfill_minutes`` gets it (X keeps up to
five minutes for Enterprise access).

Where the shapes come from: X's OpenAPI reference on docs.x.com (``updateRules``,
``AddOrDeleteRulesResponse``, ``RulesResponseMetadata``, the ``Problem`` type URIs under
``https://api.twitter.com/2/problems/``), the docs.x.com quickstarts for mentions and DM events
(``data`` / ``includes`` / ``meta`` with ``result_count``, ``newest_id``, ``oldest_id``,
``next_token``), docs.x.com "Rate limits" (``x-rate-limit-limit``, ``-remaining``, ``-reset`` as
Unix seconds) and "Handling disconnections", and error bodies as X returns them, recorded in
public client issues: ``{"title": "Unauthorized", "type": "about:blank", "status": 401,
"detail": "Unauthorized"}``, the streaming ``ConnectionException`` / ``TooManyConnections``
body, ``DuplicateRule`` entries, ``Invalid Request`` 400 bodies and the ``Not Found Error``
partial error returned with HTTP 200.

All public methods must be called from the event loop thread that runs the server.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import fnmatch
import itertools
import json
import math
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from aiohttp import web

JsonDict = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PROBLEMS = "https://api.twitter.com/2/problems/"
STREAM_PATH = "/2/tweets/search/stream"
RULES_PATH = "/2/tweets/search/stream/rules"
MAX_RULE_LENGTH = 1024  # filtered-stream/introduction: 1,024 (pay-per-use), 2,048 (Enterprise)
# X's documented limits per 15-minute window (docs.x.com "Rate limits": rules 450 to read and
# 100 to change per app, mentions 450 with an app token, dm_events 15 per user; a 2022 answer
# recorded in xapi-reference/tweepy still carried 300 for dm_events). A key is a path prefix,
# or a method and a prefix. Every answer carries its window's headers, as on X; a test's
# set_rate_limit replaces one.
WINDOW_S = 900.0
DOCUMENTED_LIMITS: dict[str, tuple[int, float]] = {
    RULES_PATH: (450, WINDOW_S),
    f"POST {RULES_PATH}": (100, WINDOW_S),
    "/2/users/*/mentions": (450, WINDOW_S),
    "/2/dm_events": (15, WINDOW_S),
}
STREAM_CONNECTIONS = (50, WINDOW_S)  # connection attempts per app
SETTLE_S = 0.02
DROP = 0  # a scripted "failure" that closes the connection without an answer
GARBLE = 1  # a scripted "failure" answering 200 with a JSON body cut short
USAGE_CAPPED = 2  # a scripted 429 whose problem is the spent usage cap, not the rate window
TOO_MANY_CONNECTIONS = 3  # a scripted 429 of X's connection limit (handling-disconnections)
MAX_BACKFILL_MINUTES = 5
MENTIONS_REACH = 800  # the mentions timeline holds a user's latest 800 mentions
ID_PATTERN = re.compile(r"^[0-9]{1,19}$")
OPERATOR = re.compile(r"(?:^|[\s(])-?([A-Za-z_]+):")
# The filtered stream's operators taking a value (docs.x.com, "Build a rule"); is:/has: included.
OPERATORS = frozenset({
    "from", "to", "url", "retweets_of", "context", "entity", "conversation_id", "bio",
    "bio_name", "bio_location", "place", "place_country", "point_radius", "bounding_box", "is",
    "has", "lang", "sample", "followers_count", "tweets_count", "following_count",
    "listed_count", "url_title", "url_description", "url_contains", "source",
    "in_reply_to_tweet_id", "retweets_of_tweet_id", "quotes_of_tweet_id",
})  # fmt: skip
TIME_PATTERN = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
# twitter-text style: "@name" not preceded by a word char or "@", name 1..15 chars, not longer.
MENTION_PATTERN = re.compile(r"(?<![A-Za-z0-9_@＠])[@＠]([A-Za-z0-9_]{1,15})(?![A-Za-z0-9_@＠])")
RATE_HEADERS = web.RequestKey("x_api_rate_headers", dict[str, str])
DM_EVENT_TYPES = ("MessageCreate", "ParticipantsJoin", "ParticipantsLeave")
# Fields X returns when the request names none (used only with strict_fields=True).
DEFAULT_TWEET_FIELDS = frozenset({"id", "text", "edit_history_tweet_ids"})
DEFAULT_USER_FIELDS = frozenset({"id", "name", "username"})
DEFAULT_DM_FIELDS = frozenset({"id", "event_type", "text"})
TWEET_EXPANSION_FIELDS = {
    "author_id": "author_id",
    "in_reply_to_user_id": "in_reply_to_user_id",
    "entities.mentions.username": "entities",
    "referenced_tweets.id": "referenced_tweets",
}
DM_EXPANSION_FIELDS = {"sender_id": "sender_id", "participant_ids": "participant_ids"}


# --------------------------------------------------------------------------- small helpers


def _not_found(tweet_id: str) -> JsonDict:
    """X's error beside the data for a referenced post it cannot show (deleted, protected)."""
    return {
        "value": tweet_id,
        "detail": f"Could not find tweet with referenced_tweets.id: [{tweet_id}].",
        "title": "Not Found Error",
        "resource_type": "tweet",
        "parameter": "referenced_tweets.id",
        "resource_id": tweet_id,
        "type": "https://api.twitter.com/2/problems/resource-not-found",
    }


def iso_now() -> str:
    """Now as X writes timestamps: ``2024-01-15T10:30:00.123Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _unknown_operator(value: str) -> str | None:
    """The first ``name:`` in a rule (outside quotes) that is not one of X's operators."""
    unquoted = re.sub(r'"[^"]*"', " ", value)
    for name in OPERATOR.findall(unquoted):
        if name.lower() not in OPERATORS:
            return name
    return None


def _moment(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def _problem(status: int, headers: dict[str, str] | None = None) -> web.Response:
    """A generic RFC 7807 body as X sends it for 401, 429, 5xx: title == detail == reason."""
    reason = HTTPStatus(status).phrase
    body = {"title": reason, "detail": reason, "type": "about:blank", "status": status}
    return _json(body, status, headers, content_type="application/problem+json")


def _error_page(status: int, headers: dict[str, str] | None = None) -> web.Response:
    """An HTML error page, as an edge or a proxy in front of X sends it."""
    reason = HTTPStatus(status).phrase
    page = f"<html><head><title>{status} {reason}</title></head><body>{reason}</body></html>"
    return web.Response(text=page, status=status, headers=headers, content_type="text/html")


def _json(
    body: JsonDict,
    status: int = 200,
    headers: dict[str, str] | None = None,
    content_type: str = "application/json",
) -> web.Response:
    return web.Response(
        text=json.dumps(body),
        status=status,
        headers=headers,
        content_type=content_type,
        charset="utf-8",
    )


def _invalid_request(parameter: str, value: str, message: str) -> web.Response:
    """X's 400 for a bad query parameter."""
    body = {
        "errors": [{"parameters": {parameter: [value]}, "message": message}],
        "title": "Invalid Request",
        "detail": "One or more parameters to your request was invalid.",
        "type": PROBLEMS + "invalid-request",
    }
    return _json(body, 400)


def _client_forbidden() -> web.Response:
    """X's 403 for what the app's access level does not include (``ClientForbiddenProblem``)."""
    body = {
        "title": "Client Forbidden",
        "detail": "When authenticating requests to the Twitter API v2 endpoints, you must use "
        "keys and tokens from a Twitter developer App that is attached to a Project.",
        "reason": "client-not-enrolled",
        "registration_url": "https://developer.x.com/en/portal/dashboard",
        "type": PROBLEMS + "client-forbidden",
        "status": 403,
    }
    return _json(body, 403, content_type="application/problem+json")


def _too_many_connections(window: dict[str, str]) -> web.Response:
    """X's 429 when the app's one connection is still open at X: the window is not spent."""
    body = {
        "title": "ConnectionException",
        "detail": "This stream is currently at the maximum allowed connection limit.",
        "connection_issue": "TooManyConnections",
        "type": PROBLEMS + "streaming-connection",
    }
    response = _json(body, 429, content_type="application/problem+json")
    response.headers.update(window)
    return response


def _usage_capped() -> web.Response:
    """X's 429 when the product's usage cap is spent (``UsageCapExceededProblem``)."""
    body = {
        "title": "UsageCapExceeded",
        "detail": "Usage cap exceeded: Monthly product cap",
        "type": PROBLEMS + "usage-capped",
        "period": "Monthly",
        "scope": "Product",
        "status": 429,
    }
    return _json(body, 429, content_type="application/problem+json")


def _user_not_found(user_id: str) -> web.Response:
    """X answers an unknown path user with HTTP 200 and only a partial ``errors`` array."""
    error = {
        "value": user_id,
        "detail": f"Could not find user with id: [{user_id}].",
        "title": "Not Found Error",
        "resource_type": "user",
        "parameter": "id",
        "resource_id": user_id,
        "type": PROBLEMS + "resource-not-found",
    }
    return _json({"errors": [error]})


def _csv(request: web.Request, name: str) -> set[str]:
    raw = request.query.get(name, "")
    return {part.strip() for part in raw.split(",") if part.strip()}


def _encode_token(direction: str, pivot_id: str) -> str:
    raw = f"{direction}:{pivot_id}".encode()
    return base64.b32encode(raw).decode().rstrip("=").lower()


def _decode_token(token: str) -> tuple[str, int] | None:
    padded = token.upper() + "=" * (-len(token) % 8)
    try:
        direction, pivot = base64.b32decode(padded).decode().split(":")
        return (direction, int(pivot)) if direction in ("n", "p") else None
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


def _newest_first(items: Iterable[JsonDict]) -> list[JsonDict]:
    return sorted(items, key=lambda item: int(item["id"]), reverse=True)


def _page(items: list[JsonDict], size: int, token: tuple[str, int] | None) -> list[JsonDict]:
    """One page of newest-first ``items``; an "n" token continues older, "p" goes back newer."""
    if token is None:
        return items[:size]
    direction, pivot = token
    if direction == "n":
        return [item for item in items if int(item["id"]) < pivot][:size]
    newer = [item for item in items if int(item["id"]) > pivot]
    return newer[-size:]


def _page_meta(items: list[JsonDict], page: list[JsonDict]) -> JsonDict:
    """``meta`` of a timeline page: ids, count, and tokens when more lies either side."""
    if not page:
        return {"result_count": 0}
    meta: JsonDict = {
        "result_count": len(page),
        "newest_id": page[0]["id"],
        "oldest_id": page[-1]["id"],
    }
    if int(items[-1]["id"]) < int(page[-1]["id"]):
        meta["next_token"] = _encode_token("n", page[-1]["id"])
    if int(items[0]["id"]) > int(page[0]["id"]):
        meta["previous_token"] = _encode_token("p", page[0]["id"])
    return meta


def _project(obj: JsonDict, wanted: set[str]) -> JsonDict:
    return {key: value for key, value in obj.items() if key in wanted}


# --------------------------------------------------------------------------- scripting state


@dataclass
class _ScriptedFailure:
    path_prefix: str
    status: int
    retry_after_s: float | None
    remaining: int
    page: bool = False  # an HTML page, as a proxy or an edge in front of X answers


@dataclass
class _RateLimit:
    limit: int
    window_s: float
    window_start: float = -math.inf
    used: int = 0

    def reset_at(self) -> int:
        return math.ceil(self.window_start + self.window_s)

    def headers(self) -> dict[str, str]:
        return {
            "x-rate-limit-limit": str(self.limit),
            "x-rate-limit-remaining": str(max(self.limit - self.used, 0)),
            "x-rate-limit-reset": str(self.reset_at()),
        }


# --------------------------------------------------------------------------- the stand-in


class XApiStandIn:
    """A scripted X API v2 server for tests; see the module docstring."""

    def __init__(
        self,
        bearer_tokens: set[str] | None = None,
        keepalive_s: float = 0.5,
        *,
        strict_fields: bool = False,
        user_tokens: set[str] | None = None,
    ) -> None:
        self.bearer_tokens = bearer_tokens
        # Which of the tokens are a user's (OAuth 2.0 user context); the others are the app's
        # (app-only). Each endpoint takes the kinds X's OpenAPI document lists for it.
        self.user_tokens = user_tokens or set()
        self.keepalive_s = keepalive_s
        # When True, objects carry only X's default fields plus those the request asks for
        # (tweet.fields / user.fields / dm_event.fields / expansions), as the real API does.
        self.strict_fields = strict_fields
        self.base_url = ""
        self.requests: list[dict] = []
        self.stream_connections = 0
        self.rules: dict[str, dict] = {}
        # the plan's rule cap (filtered-stream/introduction: 1,000 pay-per-use); None: none
        self.max_rules: int | None = 1000
        # Recovery (backfill_minutes) is Enterprise's: below it, X refuses the connection
        self.enterprise = True
        self.rules_page_limit = 1000  # the most rules one GET answers (X: max_results <= 1,000)
        self.users: dict[str, JsonDict] = {}
        # posts X can show in includes.tweets (expansion referenced_tweets.id): a company's
        # own, quoted or replied to; one referenced and not here is "not found" in `errors`
        self.posts: dict[str, JsonDict] = {}
        self._mentions: dict[str, dict[str, JsonDict]] = {}
        self._dm_events: dict[str, JsonDict] = {}
        # A tweet and its matching tags, or a raw line sent as it is.
        self._stream_queue: deque[tuple[JsonDict, list[str] | None] | bytes] = deque()
        self._failures: list[_ScriptedFailure] = []
        self._lost_answers: list[tuple[str, str]] = []  # (path prefix, method)
        self._rate_limits: dict[str, tuple[int, float]] = dict(DOCUMENTED_LIMITS)
        self._windows: dict[tuple[str, str], _RateLimit] = {}  # (token, prefix)
        self.rate_limited: list[tuple[float, str]] = []  # (when, path) of each 429 answered
        self.stream_attempts: list[float] = []  # when each stream connection was asked for
        self._flaps = 0
        self._stream_budget = STREAM_CONNECTIONS
        self._lossy = False
        self._missed: list[tuple[float, JsonDict, list[str] | None]] = []
        self._pending_disconnect: int | None = None
        self._pending_stall: float | None = None
        self._stream_free = asyncio.Event()
        self._stream_free.set()
        self._open_streams: list[web.Request] = []  # web.Request is unhashable
        self._wakeup = asyncio.Event()
        self._closing = asyncio.Event()
        self._rule_ids = itertools.count(1_800_000_000_000_000_001)
        self._runner: web.AppRunner | None = None

    # ----------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind 127.0.0.1 on a free port; ``base_url`` is valid afterwards."""
        self._closing.clear()
        self._runner = web.AppRunner(
            self._build_app(), handler_cancellation=True, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"

    async def stop(self) -> None:
        """Hang up open streams and shut the server down."""
        self._closing.set()
        self._wakeup.set()
        for request in list(self._open_streams):
            self._hang_up(request)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ----------------------------------------------------------------------- state set-up

    def add_user(
        self,
        id: str,  # noqa: A002 - the public interface names it so
        username: str,
        name: str | None = None,
        followers_count: int = 0,
        verified: bool = False,
    ) -> dict:
        """Register a user (a v2 user object) and return it."""
        user = {
            "id": id,
            "name": name if name is not None else username,
            "username": username,
            "verified": verified,
            "public_metrics": {
                "followers_count": followers_count,
                "following_count": 0,
                "tweet_count": 0,
                "listed_count": 0,
            },
        }
        self.users[id] = user
        return user

    def make_tweet(
        self,
        id: str,  # noqa: A002 - the public interface names it so
        text: str,
        author_id: str,
        *,
        conversation_id: str | None = None,
        in_reply_to_user_id: str | None = None,
        referenced_tweets: list[dict] | None = None,
        lang: str = "en",
        created_at: str | None = None,
    ) -> dict:
        """Build a v2 tweet object; ``entities.mentions`` is computed from the text."""
        tweet: JsonDict = {
            "id": id,
            "text": text,
            "author_id": author_id,
            "conversation_id": conversation_id or id,
            "created_at": created_at or iso_now(),
            "lang": lang,
            "edit_history_tweet_ids": [id],
            "public_metrics": {
                "retweet_count": 0,
                "reply_count": 0,
                "like_count": 0,
                "quote_count": 0,
                "bookmark_count": 0,
                "impression_count": 0,
            },
        }
        if in_reply_to_user_id is not None:
            tweet["in_reply_to_user_id"] = in_reply_to_user_id
        if referenced_tweets:
            tweet["referenced_tweets"] = [dict(ref) for ref in referenced_tweets]
        mentions = self._mention_entities(text)
        if mentions:
            tweet["entities"] = {"mentions": mentions}
        return tweet

    def push_stream(self, tweet: dict, matching_tags: list[str] | None = None) -> None:
        """Queue a tweet for the filtered stream; it waits until a client is connected (or is
        missed, after ``lose_tweets_while_disconnected``)."""
        tags = list(matching_tags) if matching_tags else None
        if self._lossy and self._stream_free.is_set():
            self._missed.append((time.time(), tweet, tags))
            return
        self._stream_queue.append((tweet, tags))
        self._wakeup.set()

    def push_stream_line(self, line: bytes) -> None:
        """Queue a raw line for the filtered stream (what a broken or hostile peer might send)."""
        self._stream_queue.append(line)
        self._wakeup.set()

    def add_mention(self, user_id: str, tweet: dict) -> None:
        """Make ``tweet`` appear in ``GET /2/users/:user_id/mentions``."""
        self._mentions.setdefault(user_id, {})[tweet["id"]] = tweet

    def add_dm_event(self, event: dict) -> None:
        """Add a raw DM event object to ``GET /2/dm_events``."""
        self._dm_events[event["id"]] = event

    # ----------------------------------------------------------------------- failure scripting

    def fail_next(
        self,
        path_prefix: str,
        status: int,
        *,
        retry_after_s: float | None = None,
        count: int = 1,
    ) -> None:
        """The next ``count`` requests whose path starts with ``path_prefix`` get ``status``."""
        self._failures.append(_ScriptedFailure(path_prefix, status, retry_after_s, count))

    def page_next(
        self, path_prefix: str, status: int, *, retry_after_s: float | None = None
    ) -> None:
        """The next request under ``path_prefix`` gets ``status`` with an HTML page, as an edge
        or a proxy in front of X answers (a 429 with the rate window's headers)."""
        self._failures.append(_ScriptedFailure(path_prefix, status, retry_after_s, 1, page=True))

    def stop_failing(self, path_prefix: str) -> None:
        """Take back every scripted failure still waiting for ``path_prefix``."""
        self._failures = [f for f in self._failures if f.path_prefix != path_prefix]

    def drop_next(self, path_prefix: str, *, count: int = 1) -> None:
        """The next ``count`` requests under ``path_prefix`` are read and then the connection is
        closed without an answer (a load balancer dropping it: the client sees a disconnect)."""
        self._failures.append(_ScriptedFailure(path_prefix, DROP, None, count))

    def lose_answer_next(self, method: str, path_prefix: str) -> None:
        """The next ``method`` request under ``path_prefix`` is carried out, and then the
        connection is closed before the answer (the client cannot tell whether it was)."""
        self._lost_answers.append((path_prefix, method))

    def garble_next(self, path_prefix: str, *, count: int = 1) -> None:
        """The next ``count`` requests under ``path_prefix`` get a 200 whose JSON body is cut
        short (a proxy or X truncating an answer)."""
        self._failures.append(_ScriptedFailure(path_prefix, GARBLE, None, count))

    def flap_stream(self, times: int) -> None:
        """The next ``times`` stream connections are accepted (200) and closed at once."""
        self._flaps += times

    def limit_stream_connections(self, limit: int, window_s: float) -> None:
        """At most ``limit`` stream connection attempts per ``window_s``, then 429 (X: 50 per
        15 minutes)."""
        self._stream_budget = (limit, window_s)

    def lose_tweets_while_disconnected(self) -> None:
        """Tweets pushed while no stream is open are missed; ``backfill_minutes`` recovers them."""
        self._lossy = True

    def disconnect_stream_after(self, n_tweets: int) -> None:
        """Close the current/next stream abruptly after it sends ``n_tweets`` more tweets."""
        self._pending_disconnect = n_tweets
        self._wakeup.set()

    def stall_stream(self, seconds: float) -> None:
        """The current/next stream sends nothing (no keep-alives) for ``seconds``, then closes."""
        self._pending_stall = seconds
        self._wakeup.set()

    def set_rate_limit(self, path_prefix: str, limit: int, window_s: float) -> None:
        """Allow ``limit`` requests per ``window_s`` and per token on paths under
        ``path_prefix`` (``*`` matches any id; ``"POST /2/..."``: that method's only)."""
        self._rate_limits[path_prefix] = (limit, window_s)

    # ----------------------------------------------------------------------- app and gate

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._gate])
        app.on_response_prepare.append(self._add_rate_headers)
        app.router.add_get(RULES_PATH, self._get_rules)
        app.router.add_post(RULES_PATH, self._post_rules)
        app.router.add_get(STREAM_PATH, self._stream)
        app.router.add_get("/2/users/{user_id}/mentions", self._user_mentions)
        app.router.add_get("/2/dm_events", self._dm_events_handler)
        return app

    @web.middleware
    async def _gate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Record, then scripted failure, auth, rate limit, and finally the endpoint."""
        await self._record(request)
        lost = self._take_lost_answer(request)
        failure = None if lost else self._take_failure(request)
        if failure is not None:
            return failure
        if not self._authorized(request):
            return _problem(401)
        if unsupported := self._unsupported_authentication(request):
            return unsupported
        limited = self._apply_rate_limit(request)
        if limited is not None:
            return limited
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            return _problem(exc.status)
        if lost:
            self._hang_up(request)
        return response

    async def _record(self, request: web.Request) -> None:
        raw = await request.read() if request.can_read_body else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "json": body,
                "auth": request.headers.get("Authorization"),
            }
        )

    def _authorized(self, request: web.Request) -> bool:
        if self.bearer_tokens is None:
            return True
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return scheme == "Bearer" and token in self.bearer_tokens

    def _unsupported_authentication(self, request: web.Request) -> web.Response | None:
        """X's 403 for a token of a kind the endpoint does not take (its OpenAPI ``security``:
        the stream and its rules take the app's bearer token only, DM events a user's only)."""
        token = request.headers.get("Authorization", "").partition(" ")[2]
        user = token in self.user_tokens
        app_only = request.path.startswith(STREAM_PATH)  # the stream and its rules
        user_only = request.path.startswith("/2/dm_events")
        if not ((app_only and user) or (user_only and not user)):
            return None
        used = "OAuth 2.0 User Context" if user else "OAuth 2.0 Application-Only"
        wanted = "[OAuth 2.0 Application-Only]" if app_only else (
            "[OAuth 1.0a User Context, OAuth 2.0 User Context]")  # fmt: skip
        body = {
            "title": "Unsupported Authentication",
            "detail": f"Authenticating with {used} is forbidden for this endpoint.  "
            f"Supported authentication types are {wanted}.",
            "type": "https://api.twitter.com/2/problems/unsupported-authentication",
            "status": 403,
        }
        return _json(body, 403, content_type="application/problem+json")

    def _take_lost_answer(self, request: web.Request) -> bool:
        for lost in self._lost_answers:
            prefix, method = lost
            if request.method == method and request.path.startswith(prefix):
                self._lost_answers.remove(lost)
                return True
        return False

    def _take_failure(self, request: web.Request) -> web.Response | None:
        for failure in self._failures:
            if request.path.startswith(failure.path_prefix):
                failure.remaining -= 1
                if failure.remaining <= 0:
                    self._failures.remove(failure)
                if failure.status == DROP:
                    self._hang_up(request)
                return self._failure_response(request, failure)
        return None

    def _failure_response(self, request: web.Request, failure: _ScriptedFailure) -> web.Response:
        if failure.status == GARBLE:
            return web.Response(text='{"data": [{"id": "1', content_type="application/json")
        if failure.status == USAGE_CAPPED:
            return _usage_capped()
        if failure.status == TOO_MANY_CONNECTIONS:
            return _too_many_connections(self._stream_window(time.time(), self.stream_attempts))
        if failure.status != 429:
            status = failure.status or 503
            return _error_page(status) if failure.page else _problem(status)
        limit = self._window_for(request)
        reset = math.ceil(time.time() + (failure.retry_after_s or 0.0))
        headers = {
            "x-rate-limit-limit": str(limit.limit if limit else self._stream_budget[0]),
            "x-rate-limit-remaining": "0",
            "x-rate-limit-reset": str(reset),
        }
        self.rate_limited.append((time.time(), request.path))
        if failure.page:
            return _error_page(429, headers)
        return _problem(429, headers)

    def _window_for(self, request: web.Request) -> _RateLimit | None:
        """The caller's window on the endpoint: X counts per token (app or user)."""

        def applies(key: str) -> bool:
            method, _, prefix = key.rpartition(" ")
            return method in ("", request.method) and fnmatch.fnmatchcase(
                request.path, prefix + "*"
            )

        matches = [key for key in self._rate_limits if applies(key)]
        if not matches:
            return None
        prefix = max(matches, key=len)  # a method's own window before the path's
        key = (request.headers.get("Authorization", ""), prefix)
        if key not in self._windows:
            self._windows[key] = _RateLimit(*self._rate_limits[prefix])
        return self._windows[key]

    def _apply_rate_limit(self, request: web.Request) -> web.Response | None:
        limit = self._window_for(request)
        if limit is None:
            return None
        now = time.time()
        if now >= limit.window_start + limit.window_s:
            limit.window_start, limit.used = now, 0
        if limit.used >= limit.limit:
            self.rate_limited.append((now, request.path))
            return _problem(429, limit.headers())
        limit.used += 1
        request[RATE_HEADERS] = limit.headers()
        return None

    @staticmethod
    async def _add_rate_headers(request: web.Request, response: web.StreamResponse) -> None:
        for name, value in request.get(RATE_HEADERS, {}).items():
            response.headers.setdefault(name, value)

    # ----------------------------------------------------------------------- stream rules

    async def _get_rules(self, request: web.Request) -> web.Response:
        """A page of the rules (``max_results``, default and at most 1,000, or the smaller
        ``rules_page_limit`` a test sets), ``meta.next_token`` naming the next."""
        wanted = _csv(request, "ids")
        rules = [r for r in self.rules.values() if not wanted or r["id"] in wanted]
        asked = request.query.get("max_results", "1000")
        token = request.query.get("pagination_token", "0" * 16)
        if not asked.isdigit() or not 1 <= int(asked) <= 1000:
            return _invalid_request("max_results", asked, "max_results must be 1 to 1000")
        if not (token.isdigit() and len(token) == 16):
            return _invalid_request("pagination_token", token, "invalid pagination_token")
        start, size = int(token), min(int(asked), self.rules_page_limit)
        page = rules[start : start + size]
        body: JsonDict = {}
        if page:
            body["data"] = [self._rule_out(rule) for rule in page]
        body["meta"] = {"sent": iso_now(), "result_count": len(page)}
        if start + size < len(rules):
            body["meta"]["next_token"] = f"{start + size:016d}"
        return _json(body)

    async def _post_rules(self, request: web.Request) -> web.Response:
        dry_run = request.query.get("dry_run", "false").lower() == "true"
        if request.query.get("delete_all", "false").lower() == "true":
            return self._delete_rules(list(self.rules), "ids", dry_run)
        try:
            body = await request.json()
        except ValueError:
            return _invalid_request("body", "", "The request body is not valid JSON")
        if isinstance(body, dict) and isinstance(body.get("add"), list) and body["add"]:
            return self._add_rules(body["add"], dry_run)
        if isinstance(body, dict) and isinstance(body.get("delete"), dict):
            return self._delete_request(body["delete"], dry_run)
        return _invalid_request("body", "", "The request body must hold `add` or `delete`")

    def _add_rules(self, additions: list[Any], dry_run: bool) -> web.Response:
        existing = {rule["value"]: rule for rule in self.rules.values()}
        errors: list[JsonDict] = []
        fresh: list[dict] = []
        for item in additions:
            error = self._rule_error(item, existing)
            if error is not None:
                errors.append(error)
                continue
            rule = {"id": str(next(self._rule_ids)), "value": item["value"], "tag": item.get("tag")}
            existing[rule["value"]] = rule
            fresh.append(rule)
        if self.max_rules is not None and len(self.rules) + len(fresh) > self.max_rules:
            errors.append({  # a problem of the request, tied to none of its rules
                "title": "RulesCapExceeded",
                "detail": f"Rule cap of {self.max_rules} exceeded",
                "type": PROBLEMS + "rule-cap",
            })  # fmt: skip
        blocked = any(error["title"] != "DuplicateRule" for error in errors)
        created = [] if blocked else fresh
        if not dry_run:
            self.rules.update((rule["id"], rule) for rule in created)
        summary = {
            "created": len(created),
            "not_created": len(additions) - len(created),
            "valid": len(fresh),
            "invalid": len(errors),
        }
        body: JsonDict = {}
        if created:
            body["data"] = [self._rule_out(rule) for rule in created]
        body["meta"] = {"sent": iso_now(), "summary": summary}
        if errors:
            body["errors"] = errors
        return _json(body, 200 if dry_run else 201)

    @staticmethod
    def _rule_error(item: Any, existing: dict[str, dict]) -> JsonDict | None:
        """The ``errors`` entry X would give for this rule, or None when it is acceptable."""
        value = item.get("value") if isinstance(item, dict) else None
        if isinstance(value, str) and value in existing:
            return {
                "value": value,
                "id": existing[value]["id"],
                "title": "DuplicateRule",
                "type": PROBLEMS + "duplicate-rules",
            }
        unknown = _unknown_operator(value) if isinstance(value, str) else None
        fits = isinstance(value, str) and value.strip() and len(value) <= MAX_RULE_LENGTH
        if fits and unknown is None:
            return None
        if unknown is not None:
            detail = (
                f"Reference to invalid operator '{unknown}'. Operator is not available in current "
                "product or product packaging. Please refer to complete available operator list "
                "at https://developer.twitter.com/en/docs/twitter-api/tweets/filtered-stream/"
                "integrate/build-a-rule."
            )
        elif isinstance(value, str) and value.strip():
            detail = f"Rule length {len(value)} exceeds the maximum of {MAX_RULE_LENGTH} characters"
        else:
            detail = "Rule value must be a non-empty string"
        return {
            "value": value,
            "details": [detail],
            "title": "UnprocessableEntity",
            "type": PROBLEMS + "invalid-rules",
        }

    def _delete_request(self, delete: JsonDict, dry_run: bool) -> web.Response:
        if isinstance(delete.get("ids"), list):
            return self._delete_rules([str(i) for i in delete["ids"]], "ids", dry_run)
        if isinstance(delete.get("values"), list):
            return self._delete_rules([str(v) for v in delete["values"]], "values", dry_run)
        return _invalid_request("delete", "", "`delete` must hold `ids` or `values`")

    def _delete_rules(self, keys: list[str], kind: str, dry_run: bool) -> web.Response:
        by_value = {rule["value"]: rule_id for rule_id, rule in self.rules.items()}
        errors: list[JsonDict] = []
        deleted = 0
        for key in keys:
            rule_id = key if kind == "ids" else by_value.get(key)
            if rule_id is None or rule_id not in self.rules:
                errors.append(self._missing_rule_error(kind, key))
                continue
            deleted += 1
            if not dry_run:
                del self.rules[rule_id]
        summary = {"deleted": deleted, "not_deleted": len(keys) - deleted}
        body: JsonDict = {"meta": {"sent": iso_now(), "summary": summary}}
        if errors:
            body["errors"] = errors
        return _json(body)

    @staticmethod
    def _missing_rule_error(kind: str, key: str) -> JsonDict:
        return {
            "errors": [{"parameters": {kind: [key]}, "message": "Rule does not exist"}],
            "title": "Invalid Request",
            "detail": "One or more parameters to your request was invalid.",
            "type": PROBLEMS + "invalid-request",
        }

    @staticmethod
    def _rule_out(rule: dict) -> JsonDict:
        out = {"id": rule["id"], "value": rule["value"]}
        if rule.get("tag") is not None:
            out["tag"] = rule["tag"]
        return out

    # ----------------------------------------------------------------------- filtered stream

    def _stream_window(self, now: float, earlier: list[float]) -> dict[str, str]:
        """The connection window's headers, as X sends them on every answer of the stream
        endpoint (its 429s included): 50 attempts per 15 minutes by default; ``earlier``:
        the attempts before this one."""
        limit, window_s = self._stream_budget
        recent = [t for t in earlier if t > now - window_s]
        window_start = recent[0] if recent else now
        return {
            "x-rate-limit-limit": str(limit),
            "x-rate-limit-remaining": str(max(limit - len(recent) - 1, 0)),
            "x-rate-limit-reset": str(math.ceil(window_start + window_s)),
        }

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        now = time.time()
        self.stream_attempts.append(now)
        limit, window_s = self._stream_budget
        recent = [t for t in self.stream_attempts[:-1] if t > now - window_s]
        headers = self._stream_window(now, self.stream_attempts[:-1])
        if len(recent) >= limit:
            self.rate_limited.append((now, request.path))
            return _problem(429, {**headers, "x-rate-limit-remaining": "0"})
        request[RATE_HEADERS] = headers
        backfill = request.query.get("backfill_minutes", "0")
        if not backfill.isdigit() or int(backfill) > MAX_BACKFILL_MINUTES:
            message = (
                f"The `backfill_minutes` query parameter value [{backfill}] is not between 0 and 5"
            )
            return _invalid_request("backfill_minutes", backfill, message)
        if int(backfill) and not self.enterprise:
            return _client_forbidden()
        self._close_open_streams()
        self._stream_free.clear()
        self._open_streams.append(request)
        try:
            self.stream_connections += 1
            response = web.StreamResponse(status=200)
            response.content_type = "application/json"
            response.charset = "utf-8"
            response.enable_chunked_encoding()
            await response.prepare(request)
            if self._flaps > 0:
                self._flaps -= 1
                await response.write(b"\r\n")
                self._hang_up(request)
                return response
            self._backfill(int(backfill) * 60)
            await self._pump(request, response)
        except ConnectionError:
            pass  # the client went away mid-write
        finally:
            self._open_streams = [r for r in self._open_streams if r is not request]
            if not self._open_streams:
                self._stream_free.set()
        return response

    def _backfill(self, seconds: int) -> None:
        """Queue, first, the missed tweets of the last ``seconds``; the older ones are lost."""
        since = time.time() - seconds
        recovered = [(tweet, tags) for at, tweet, tags in self._missed if at >= since]
        self._missed.clear()
        self._stream_queue.extendleft(reversed(recovered))

    def _close_open_streams(self) -> None:
        """X: one connection per app, and "opening a new connection will close any existing
        one" (filtered-stream quickstart). The closed stream's pump sends nothing more: it
        checks its client before each tweet."""
        for request in list(self._open_streams):
            self._hang_up(request)
        self._wakeup.set()  # an idle pump notices at once

    async def _pump(self, request: web.Request, response: web.StreamResponse) -> None:
        """Send queued tweets, keep-alives when idle; obey disconnect and stall scripting."""
        budget: int | None = None
        while not self._closing.is_set():
            if self._pending_stall is not None:
                seconds, self._pending_stall = self._pending_stall, None
                await self._sleep_unless_closing(seconds)
                self._hang_up(request)
                return
            if self._pending_disconnect is not None:
                budget, self._pending_disconnect = self._pending_disconnect, None
            if (budget is not None and budget <= 0) or self._client_gone(request):
                self._hang_up(request)
                return
            if self._stream_queue:
                item = self._stream_queue.popleft()
                line = (
                    item + b"\r\n" if isinstance(item, bytes) else self._stream_line(request, *item)
                )
                await response.write(line)
                budget = None if budget is None else budget - 1
                continue
            await self._idle(response)

    async def _idle(self, response: web.StreamResponse) -> None:
        """Wait for something to do; send a keep-alive if nothing came for ``keepalive_s``."""
        self._wakeup.clear()
        try:
            await asyncio.wait_for(self._wakeup.wait(), self.keepalive_s)
        except TimeoutError:
            await response.write(b"\r\n")
        else:
            # Let a hang-up by the client land first, so a tweet pushed just after the client
            # left stays queued for its next connection instead of going down a dead socket.
            await asyncio.sleep(SETTLE_S)

    async def _sleep_unless_closing(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    @staticmethod
    def _client_gone(request: web.Request) -> bool:
        return request.transport is None or request.transport.is_closing()

    @staticmethod
    def _hang_up(request: web.Request) -> None:
        """Drop the connection without the chunked terminator, as a network cut would."""
        if request.transport is not None:
            request.transport.close()

    def _stream_line(self, request: web.Request, tweet: JsonDict, tags: list[str] | None) -> bytes:
        message: JsonDict = {"data": self._tweet_out(request, tweet)}
        self._add_includes(request, message, [tweet])
        message["matching_rules"] = self._matching_rules(tags)
        return json.dumps(message).encode() + b"\r\n"

    def _matching_rules(self, tags: list[str] | None) -> list[JsonDict]:
        """All current rules when no tags are given, else the rules carrying those tags."""
        if tags is None:
            return [{"id": r["id"], "tag": r.get("tag") or ""} for r in self.rules.values()]
        by_tag = {rule.get("tag"): rule["id"] for rule in self.rules.values()}
        return [{"id": by_tag.get(tag) or str(next(self._rule_ids)), "tag": tag} for tag in tags]

    # ----------------------------------------------------------------------- mentions

    async def _user_mentions(self, request: web.Request) -> web.Response:
        user_id = request.match_info["user_id"]
        if not ID_PATTERN.match(user_id):
            return _invalid_request("id", user_id, self._pattern_message("id", user_id))
        if user_id not in self.users:
            return _user_not_found(user_id)
        params = self._timeline_params(request, low=5, high=100, default=10)
        if isinstance(params, web.Response):
            return params
        size, token = params
        bounds = self._id_bounds(request)
        if isinstance(bounds, web.Response):
            return bounds
        since, until = bounds
        start_time, end_time = request.query.get("start_time"), request.query.get("end_time")
        for name, value in (("start_time", start_time), ("end_time", end_time)):
            if value is not None and not TIME_PATTERN.match(value):
                message = f"Invalid '{name}':'{value}'. '{name}' must be a valid date"
                return _invalid_request(name, value, message)
        within_reach = _newest_first(self._mentions.get(user_id, {}).values())[:MENTIONS_REACH]
        tweets = _newest_first(
            tweet
            for tweet in within_reach
            if since < int(tweet["id"]) < until
            and (start_time is None or "since_id" in request.query
                 or _moment(tweet["created_at"]) >= _moment(start_time))
            and (end_time is None or "until_id" in request.query
                 or _moment(tweet["created_at"]) <= _moment(end_time))
        )  # fmt: skip
        page = _page(tweets, size, token)
        return _json(self._page_body(page, _page_meta(tweets, page), request, tweets=True))

    def _id_bounds(self, request: web.Request) -> tuple[int, float] | web.Response:
        bounds: list[float] = [-1, math.inf]
        for index, name in enumerate(("since_id", "until_id")):
            value = request.query.get(name)
            if value is None:
                continue
            if not ID_PATTERN.match(value):
                return _invalid_request(name, value, self._pattern_message(name, value))
            bounds[index] = int(value)
        return int(bounds[0]), bounds[1]

    @staticmethod
    def _pattern_message(name: str, value: str) -> str:
        return f"The `{name}` query parameter value [{value}] does not match ^[0-9]{{1,19}}$"

    @staticmethod
    def _timeline_params(
        request: web.Request, low: int, high: int, default: int
    ) -> tuple[int, tuple[str, int] | None] | web.Response:
        """Validated ``max_results`` and decoded ``pagination_token``."""
        raw = request.query.get("max_results", str(default))
        if not raw.isdigit() or not low <= int(raw) <= high:
            message = (
                f"The `max_results` query parameter value [{raw}] is not between {low} and {high}"
            )
            return _invalid_request("max_results", raw, message)
        token_raw = request.query.get("pagination_token")
        token = _decode_token(token_raw) if token_raw is not None else None
        if token_raw is not None and token is None:
            message = f"The `pagination_token` query parameter value [{token_raw}] is not valid"
            return _invalid_request("pagination_token", token_raw, message)
        return int(raw), token

    # ----------------------------------------------------------------------- DM events

    async def _dm_events_handler(self, request: web.Request) -> web.Response:
        params = self._timeline_params(request, low=1, high=100, default=100)
        if isinstance(params, web.Response):
            return params
        size, token = params
        types = _csv(request, "event_types")
        unknown = sorted(types - set(DM_EVENT_TYPES))
        if unknown:
            message = (
                f"The `event_types` query parameter value [{unknown[0]}] is not one of "
                f"[{','.join(DM_EVENT_TYPES)}]"
            )
            return _invalid_request("event_types", unknown[0], message)
        events = _newest_first(
            event
            for event in self._dm_events.values()
            if not types or event.get("event_type") in types
        )
        page = _page(events, size, token)
        meta = _page_meta(events, page)
        meta.pop("newest_id", None)
        meta.pop("oldest_id", None)
        return _json(self._page_body(page, meta, request, tweets=False))

    # ----------------------------------------------------------------------- shaping

    def _page_body(
        self, page: list[JsonDict], meta: JsonDict, request: web.Request, *, tweets: bool
    ) -> JsonDict:
        if not page:
            return {"meta": meta}
        if tweets:
            body: JsonDict = {"data": [self._tweet_out(request, tweet) for tweet in page]}
            self._add_includes(request, body, page)
        else:
            body = {"data": [self._dm_out(request, event) for event in page]}
            users = self._users_for_dms(request, page)
            if users:
                body["includes"] = {"users": users}
        body["meta"] = meta
        return body

    def _add_includes(self, request: web.Request, body: JsonDict, tweets: list[JsonDict]) -> None:
        """``includes.users`` and, for ``referenced_tweets.id``, ``includes.tweets``; a
        referenced post X cannot show is an error beside the data, as X answers it (recorded:
        twarc-csv's withheld.jsonl, a ``resource-not-found`` for ``referenced_tweets.id``)."""
        users = self._users_for_tweets(request, tweets)
        includes: JsonDict = {"users": users} if users else {}
        if "referenced_tweets.id" in _csv(request, "expansions"):
            ids = [r["id"] for t in tweets for r in t.get("referenced_tweets") or []]
            ids = list(dict.fromkeys(ids))
            shown = [self._tweet_out(request, self.posts[i]) for i in ids if i in self.posts]
            if shown:
                includes["tweets"] = shown
            missing = [i for i in ids if i not in self.posts]
            if missing:
                body["errors"] = [_not_found(i) for i in missing]
        if includes:
            body["includes"] = includes

    def _users_for_tweets(self, request: web.Request, tweets: list[JsonDict]) -> list[JsonDict]:
        """``includes.users`` per X's expansions: author, mentioned users, replied-to user."""
        expansions = _csv(request, "expansions")
        ids: list[str] = []
        for tweet in tweets:
            if "author_id" in expansions:
                ids.append(tweet.get("author_id", ""))
            if "entities.mentions.username" in expansions:
                mentions = tweet.get("entities", {}).get("mentions", [])
                ids.extend(mention.get("id", "") for mention in mentions)
            if "in_reply_to_user_id" in expansions:
                ids.append(tweet.get("in_reply_to_user_id", ""))
        return self._users_out(request, ids)

    def _users_for_dms(self, request: web.Request, events: list[JsonDict]) -> list[JsonDict]:
        expansions = _csv(request, "expansions")
        ids: list[str] = []
        for event in events:
            if "sender_id" in expansions:
                ids.append(event.get("sender_id", ""))
            if "participant_ids" in expansions:
                ids.extend(event.get("participant_ids", []))
        return self._users_out(request, ids)

    def _users_out(self, request: web.Request, ids: list[str]) -> list[JsonDict]:
        known = [user_id for user_id in dict.fromkeys(ids) if user_id in self.users]
        if not self.strict_fields:
            return [self.users[user_id] for user_id in known]
        wanted = DEFAULT_USER_FIELDS | _csv(request, "user.fields")
        return [_project(self.users[user_id], wanted) for user_id in known]

    def _tweet_out(self, request: web.Request, tweet: JsonDict) -> JsonDict:
        if not self.strict_fields:
            return tweet
        expansions = _csv(request, "expansions")
        implied = {TWEET_EXPANSION_FIELDS[e] for e in expansions if e in TWEET_EXPANSION_FIELDS}
        return _project(tweet, DEFAULT_TWEET_FIELDS | _csv(request, "tweet.fields") | implied)

    def _dm_out(self, request: web.Request, event: JsonDict) -> JsonDict:
        if not self.strict_fields:
            return event
        expansions = _csv(request, "expansions")
        implied = {DM_EXPANSION_FIELDS[e] for e in expansions if e in DM_EXPANSION_FIELDS}
        return _project(event, DEFAULT_DM_FIELDS | _csv(request, "dm_event.fields") | implied)

    def _mention_entities(self, text: str) -> list[JsonDict]:
        """``entities.mentions``: code-point offsets of "@name"; ``id`` when the user is known."""
        by_name = {user["username"].lower(): user for user in self.users.values()}
        mentions: list[JsonDict] = []
        for match in MENTION_PATTERN.finditer(text):
            entity: JsonDict = {
                "start": match.start(),
                "end": match.end(),
                "username": match.group(1),
            }
            user = by_name.get(match.group(1).lower())
            if user is not None:
                entity["id"] = user["id"]
            mentions.append(entity)
        return mentions
