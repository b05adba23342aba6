"""In-process stand-ins for the four vendor APIs Switchboard hands work to.

Each stand-in is an aiohttp server on 127.0.0.1 and a free port that imitates the real
API's request and response shapes, auth header and error bodies for the endpoints below:

* ``ZendeskStandIn`` - Zendesk Support (Ticketing) API v2: create a ticket (honouring
  ``Idempotency-Key``), list tickets by ``external_id``, show and update a ticket, list its
  comments.
* ``JiraStandIn`` - Jira Cloud platform REST API v3: create an issue (description in
  Atlassian Document Format), JQL search on ``/rest/api/3/search/jql``, add and list comments.
* ``SalesforceStandIn`` - Salesforce REST API sObject resources for Lead, Case and Contact:
  create, get, update by Id, upsert and get by external ID.
* ``HubSpotStandIn`` - HubSpot CRM v3 objects (contacts, tickets, notes): create, get,
  update, batch upsert by a unique property and search.

Every stand-in records each request (``requests``, with the ``peer`` address of the connection
it came on), can be told to fail (``fail_next``) or to hold back its answer (``delay_next``),
and exposes what it stores for inspection.

Where the shapes come from:

* Zendesk: developer.zendesk.com "Ticketing API introduction" (Idempotency: ``Idempotency-Key``
  on ticket creation, ``x-idempotency-lookup: miss|hit``, keys kept 2 hours, a reused key with
  other parameters answers 400 ``IdempotentRequestError``), "Requests / Response format",
  "Rate limits" (429 with ``Retry-After``; ``X-Rate-Limit`` / ``X-Rate-Limit-Remaining``),
  "Ticket comments", and error bodies as Zendesk returns them in public client code:
  401 ``{"error": "Couldn't authenticate you"}``, 404 ``RecordNotFound``, 422 ``RecordInvalid``
  with ``details`` keyed by field (``base`` for "Description: cannot be blank"), and the
  ``text/plain`` 429 body.
* Jira: developer.atlassian.com REST v3 reference (``CreatedIssue`` ``{id, key, self}``; the
  enhanced search ``/search/jql`` returns ``issues`` and ``isLast``/``nextPageToken`` and, when
  ``fields`` is not given, issue ids only), "Atlassian Document Format", "Rate limiting"
  (``Retry-After``, ``X-RateLimit-Reset`` as ``yyyy-MM-ddTHH:mmZ``, ``RateLimit-Reason``), the
  ``{"errorMessages": [], "errors": {...}}`` error collection, "Operation value must be an
  Atlassian Document (see the Atlassian Document Format)" and the plain-text 401 "Client must
  be authenticated to access this resource." as recorded in public client code.
* Salesforce: REST API Developer Guide "Status Codes and Error Responses" (the
  ``[{"message", "errorCode", "fields"}]`` list), "Insert or Update (Upsert) a Record Using an
  External ID" (201 ``created: true`` / 200 ``created: false``, 300 on several matches),
  ``INVALID_SESSION_ID``, ``REQUIRED_FIELD_MISSING``, ``NOT_FOUND``, ``REQUEST_LIMIT_EXCEEDED``,
  the ``Sforce-Limit-Info`` header and 18-character record ids with their checksum suffix.
* HubSpot: developers.hubspot.com CRM v3 object, batch upsert and search references, "API
  usage guidelines" (``X-HubSpot-RateLimit-*`` headers, the 429 body with ``errorType:
  RATE_LIMIT`` and ``policyName``), "API error responses" (``status``, ``message``,
  ``correlationId``, ``category``), the 401 ``INVALID_AUTHENTICATION`` body, 409 "Contact already
  exists. Existing ID: N" and ``Property values were not valid: [...]`` validation errors.

Size limits, so that a client must cut long text instead of being refused: Jira's 255-character
summary without line breaks and 32,767 characters of description or comment text ("The entered
text is too long. It exceeds the allowed limit of 32,767 characters."), Salesforce's field
lengths (``STRING_TOO_LONG``: Lead.LastName 80, Company and Subject 255, Description 32,000),
HubSpot's 65,536 characters per property value and Zendesk's comment of about 65,000 characters
(as Zendesk support answers it).

Shapes the public sources do not pin down (the body of a Zendesk 5xx or 400 for bad JSON, of a
Jira 429/5xx, the HubSpot message for a missing required property or a bad association) are
given in the vendor's general error shape; the module constants hold their wording.

All public methods must be called from the event loop thread that runs the server.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import json
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import escape, unescape
from http import HTTPStatus
from typing import Any

from aiohttp import web

from tests.standins.contracts import Contract

JsonDict = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_INVALID_JSON = object()


# --------------------------------------------------------------------------- small helpers


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(body),
        status=status,
        headers=headers,
        content_type="application/json",
        charset="utf-8",
    )


def _text(body: str, status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=body, status=status, headers=headers, content_type="text/plain")


async def _body(request: web.Request) -> Any:
    """The parsed JSON body, None when there is none, ``_INVALID_JSON`` when it does not parse."""
    raw = await request.read() if request.body_exists else b""
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return _INVALID_JSON


def _basic_credentials(request: web.Request) -> str | None:
    """The decoded ``user:password`` of a Basic ``Authorization`` header."""
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        return base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def _bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _seconds_header(seconds: float) -> str:
    """Whole seconds as vendors send them; a fraction stays a fraction so tests can run fast."""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def _now() -> datetime:
    return datetime.now(UTC)


def _iso_z(moment: datetime, *, millis: bool) -> str:
    """``2024-01-15T10:30:00Z`` (Zendesk) or ``2024-01-15T10:30:00.123Z`` (HubSpot)."""
    spec = "milliseconds" if millis else "seconds"
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")


def _iso_offset(moment: datetime) -> str:
    """``2024-01-15T10:30:00.123+0000`` as Jira and Salesforce write timestamps."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "+0000")


def _utf16(text: str) -> int:
    """Length as Java and Apex measure it (Jira, Salesforce): UTF-16 code units, so an emoji
    outside the Basic Multilingual Plane counts two."""
    return len(text.encode("utf-16-le")) // 2


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# --------------------------------------------------------------------------- the base class


PROXY_PAGE = -1  # a scripted answer that is a proxy's HTML page, not a status of the vendor's


@dataclass
class _Script:
    """One scripted failure or delay, matched by path prefix (and method, if given), used up
    after ``remaining``."""

    path_prefix: str
    remaining: int
    status: int = 0
    retry_after_s: float | None = None
    seconds: float = 0.0
    method: str | None = None


def _take(scripts: list[_Script], request: web.Request) -> _Script | None:
    for script in scripts:
        if request.path.startswith(script.path_prefix) and script.method in (None, request.method):
            script.remaining -= 1
            if script.remaining <= 0:
                scripts.remove(script)
            return script
    return None


class VendorStandIn:
    """What the four stand-ins share: lifecycle, request log, failure and delay scripting.

    Subclasses add routes (``_add_routes``), check credentials (``_authorized``) and render the
    vendor's error bodies (``_error``); ``_decorate`` adds headers to every answer.
    """

    contract: Contract | None = None  # the vendor's own definition, when there is one

    def __init__(self) -> None:
        self.base_url = ""
        self.requests: list[dict] = []
        self._failures: list[_Script] = []
        self._delays: list[_Script] = []
        self._runner: web.AppRunner | None = None

    # ----------------------------------------------------------------------- lifecycle

    contract_names: tuple[str, ...] = ()  # subsets in tests/standins/contracts/

    async def start(self) -> None:
        """Bind 127.0.0.1 on a free port; ``base_url`` (no trailing slash) is valid afterwards."""
        if self.contract_names and self.contract is None:
            self.contract = Contract(*self.contract_names)
        app = web.Application(middlewares=[self._gate])
        self._add_routes(app.router)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ----------------------------------------------------------------------- scripting

    def fail_next(
        self,
        path_prefix: str,
        status: int,
        *,
        retry_after_s: float | None = None,
        count: int = 1,
    ) -> None:
        """The next ``count`` requests whose path starts with ``path_prefix`` get ``status``.

        The answer carries the vendor's error body for that status (and its rate-limit headers
        for 429) plus ``Retry-After`` when ``retry_after_s`` is given. Nothing is processed.
        """
        self._failures.append(_Script(path_prefix, count, status, retry_after_s))

    def proxy_page_next(
        self, path_prefix: str, *, count: int = 1, method: str | None = None
    ) -> None:
        """The next ``count`` matching requests (of ``method``, if given) get a 200 HTML page
        from something in front of the vendor (a proxy, a firewall), not the vendor's JSON.
        Nothing is processed."""
        self._failures.append(_Script(path_prefix, count, PROXY_PAGE, method=method))

    def clear_failures(self) -> None:
        """Forget the scripted failures: the target is back."""
        self._failures.clear()

    def delay_next(
        self, path_prefix: str, seconds: float, count: int = 1, *, method: str | None = None
    ) -> None:
        """The next ``count`` matching requests are answered only after ``seconds``.

        The request is processed first and its answer held back: a client that times out has
        still created the record, as happens with a slow real API.
        """
        self._delays.append(_Script(path_prefix, count, seconds=seconds, method=method))

    # ----------------------------------------------------------------------- subclass hooks

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        raise NotImplementedError

    def _authorized(self, request: web.Request) -> bool:
        raise NotImplementedError

    def _error(self, status: int, headers: dict[str, str]) -> web.Response:
        """The vendor's answer for ``status`` (401 is the bad-credentials answer)."""
        raise NotImplementedError

    def _decorate(self, response: web.StreamResponse) -> None:
        """Headers the vendor puts on every answer; none by default."""

    # ----------------------------------------------------------------------- the gate

    @web.middleware
    async def _gate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Record, check the contract, then scripted failure, auth, the endpoint, and any
        scripted delay."""
        await self._record(request)
        if self.contract is not None:
            query = {key: request.query.getall(key) for key in request.query}
            body = self.requests[-1]["json"]
            problem = self.contract.check(request.method, request.path, query, body)
            if problem is not None:
                return self._error(400, {})
        delay = _take(self._delays, request)
        response = await self._answer(request, handler)
        self._decorate(response)
        if delay is not None:
            await asyncio.sleep(delay.seconds)
        return response

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        failure = _take(self._failures, request)
        if failure is not None and failure.status == PROXY_PAGE:
            return web.Response(text="<html><body>Request blocked</body></html>",
                                content_type="text/html")  # fmt: skip
        if failure is not None:
            headers = {}
            if failure.retry_after_s is not None:
                headers["Retry-After"] = _seconds_header(failure.retry_after_s)
            return self._error(failure.status, headers)
        if not self._authorized(request):
            return self._error(401, {})
        try:
            return await handler(request)
        except web.HTTPException as exc:  # unknown path or method
            return self._error(exc.status, {})

    async def _record(self, request: web.Request) -> None:
        body = await _body(request)
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "json": None if body is _INVALID_JSON else body,
                "headers": dict(request.headers),
                # the client's address and port: one per connection it opened
                "peer": request.transport.get_extra_info("peername") if request.transport else None,
                "at": time.monotonic(),
            }
        )


# =========================================================================== Zendesk

ZENDESK_PRIORITIES = ("urgent", "high", "normal", "low")
ZENDESK_STATUSES = ("new", "open", "pending", "hold", "solved", "closed")
ZENDESK_RATE_LIMIT = 700
ZENDESK_IDEMPOTENCY_TTL_S = 2 * 60 * 60
ZENDESK_429_BODY = "Number of allowed API requests per minute exceeded"
ZENDESK_AGENT_ID = 900_000_000_001
ZENDESK_COMMENT_LIMIT = 65_000


def _zendesk_error(error: str, description: str, status: int) -> web.Response:
    return _json({"error": error, "description": description}, status)


def _zendesk_invalid(field: str, description: str, error: str) -> web.Response:
    """Zendesk's 422: ``details`` maps a field (``base`` for the whole record) to problems."""
    body = {
        "error": "RecordInvalid",
        "description": "Record validation errors",
        "details": {field: [{"description": description, "error": error}]},
    }
    return _json(body, 422)


@dataclass
class _RememberedCreate:
    fingerprint: str
    ticket_id: int
    expires_at: float


def _plain_from_html(html: str) -> str:
    """The plain text Zendesk derives from an ``html_body``: tags gone, entities decoded."""
    return unescape(re.sub(r"<[^>]+>", "", re.sub(r"<br\s*/?>\n?", "\n", html)))


class ZendeskStandIn(VendorStandIn):
    """Zendesk Support API v2 tickets and comments, authenticated with an API token."""

    contract_names: tuple[str, ...] = ("zendesk",)

    def __init__(
        self,
        email: str,
        api_token: str,
        *,
        idempotency_ttl_s: float = ZENDESK_IDEMPOTENCY_TTL_S,
    ) -> None:
        super().__init__()
        self.email = email
        self.api_token = api_token
        self.idempotency_ttl_s = idempotency_ttl_s
        self.tickets: dict[int, dict] = {}
        self.comments: dict[int, list[dict]] = {}
        self._users: dict[str, int] = {email.lower(): ZENDESK_AGENT_ID}
        self._remembered: dict[str, _RememberedCreate] = {}
        self._ticket_ids = itertools.count(1)
        self._comment_ids = itertools.count(10_000_000_001)
        self._user_ids = itertools.count(900_000_000_100)
        self._audit_ids = itertools.count(20_000_000_001)

    def close(self, ticket_id: int) -> None:
        """An agent closes the ticket: from now on it can be neither updated nor reopened."""
        self.tickets[ticket_id]["status"] = "closed"

    def delete(self, ticket_id: int) -> None:
        """An agent deletes the ticket: lists leave it out, and its paths answer 404."""
        del self.tickets[ticket_id]
        self.comments.pop(ticket_id, None)

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        for suffix in ("", ".json"):
            router.add_post(f"/api/v2/tickets{suffix}", self._create)
            router.add_get(f"/api/v2/tickets{suffix}", self._list)
            router.add_get(rf"/api/v2/tickets/{{ticket_id:\d+}}{suffix}", self._show)
            router.add_put(rf"/api/v2/tickets/{{ticket_id:\d+}}{suffix}", self._update)
            router.add_get(
                rf"/api/v2/tickets/{{ticket_id:\d+}}/comments{suffix}", self._list_comments
            )

    def _authorized(self, request: web.Request) -> bool:
        return _basic_credentials(request) == f"{self.email}/token:{self.api_token}"

    def _error(self, status: int, headers: dict[str, str]) -> web.Response:
        if status == 401:
            return _json({"error": "Couldn't authenticate you"}, 401, headers)
        if status == 404:
            return _json({"error": "RecordNotFound", "description": "Not found"}, 404, headers)
        if status == 429:
            limits = {"X-Rate-Limit": str(ZENDESK_RATE_LIMIT), "X-Rate-Limit-Remaining": "0"}
            return _text(ZENDESK_429_BODY, 429, limits | headers)
        phrase = HTTPStatus(status).phrase
        body = {"error": phrase.replace(" ", ""), "description": phrase}
        return _json(body, status, headers)

    def _decorate(self, response: web.StreamResponse) -> None:
        response.headers.setdefault("X-Rate-Limit", str(ZENDESK_RATE_LIMIT))
        response.headers.setdefault("X-Rate-Limit-Remaining", str(ZENDESK_RATE_LIMIT - 1))

    # ----------------------------------------------------------------------- create

    async def _create(self, request: web.Request) -> web.Response:
        body = await _body(request)
        if body is _INVALID_JSON:
            return _zendesk_error("InvalidJSON", "The request body is not valid JSON", 400)
        key = request.headers.get("Idempotency-Key")
        if key is not None:
            replay = self._replay(key, body)
            if replay is not None:
                return replay
        response = self._create_ticket(body)
        if key is not None:
            response.headers["x-idempotency-lookup"] = "miss"
            if response.status == 201:
                self._remember(key, body, max(self.tickets))
        return response

    def _replay(self, key: str, body: Any) -> web.Response | None:
        """The original answer for a known key, Zendesk's 400 when the parameters differ."""
        remembered = self._remembered.get(key)
        if remembered is None or remembered.expires_at <= time.monotonic():
            self._remembered.pop(key, None)
            return None
        if remembered.fingerprint != _canonical(body):
            return _zendesk_error(
                "IdempotentRequestError",
                "Request parameters don't match the given idempotency key",
                400,
            )
        headers = {"x-idempotency-lookup": "hit"} | self._location(remembered.ticket_id)
        return _json({"ticket": self.tickets[remembered.ticket_id]}, 201, headers)

    def _remember(self, key: str, body: Any, ticket_id: int) -> None:
        expires_at = time.monotonic() + self.idempotency_ttl_s
        self._remembered[key] = _RememberedCreate(_canonical(body), ticket_id, expires_at)

    def _create_ticket(self, body: Any) -> web.Response:
        fields = body.get("ticket") if isinstance(body, dict) else None
        fields = fields if isinstance(fields, dict) else {}
        comment = fields.get("comment") if isinstance(fields.get("comment"), dict) else {}
        if not (comment.get("body") or comment.get("html_body")):
            return _zendesk_invalid("base", "Description: cannot be blank", "BlankValue")
        invalid = self._invalid_fields(fields)
        if invalid is not None:
            return invalid
        ticket = self._new_ticket(fields, comment)
        return _json({"ticket": ticket}, 201, self._location(ticket["id"]))

    @staticmethod
    def _invalid_fields(fields: JsonDict) -> web.Response | None:
        priority = fields.get("priority")
        if priority is not None and priority not in ZENDESK_PRIORITIES:
            return _zendesk_invalid("priority", "Priority: is not valid", "InvalidValue")
        status = fields.get("status")
        if status is not None and status not in ZENDESK_STATUSES:
            return _zendesk_invalid("status", "Status: is not valid", "InvalidValue")
        tags = fields.get("tags")
        if tags is not None and not (
            isinstance(tags, list) and all(isinstance(t, str) for t in tags)
        ):
            return _zendesk_invalid("tags", "Tags: is invalid", "InvalidValue")
        comment = fields.get("comment") if isinstance(fields.get("comment"), dict) else {}
        longest = max(len(str(comment.get(k) or "")) for k in ("body", "html_body"))
        if longest > ZENDESK_COMMENT_LIMIT:
            return _zendesk_invalid("base", "Comment: is too long", "TooLong")
        return None

    def _via(self, followup_source_id: Any) -> JsonDict:
        """How a ticket came: a follow-up of a closed ticket, else the API ("The parameter
        only works with closed tickets. It has no effect with other tickets.")."""
        source = (
            self.tickets.get(followup_source_id) if isinstance(followup_source_id, int) else None
        )
        if source is not None and source["status"] == "closed":
            origin = {"ticket_id": source["id"], "subject": source["subject"]}
            return {"channel": "api", "source": {"from": origin, "to": {}, "rel": "follow_up"}}
        return {"channel": "api", "source": {"from": {}, "to": {}, "rel": None}}

    def _new_ticket(self, fields: JsonDict, comment: JsonDict) -> dict:
        ticket_id = next(self._ticket_ids)
        requester_id = self._requester_id(fields.get("requester"))
        first = self._add_comment(ticket_id, comment, author_id=requester_id)
        stamp = first["created_at"]
        ticket = {
            "url": f"{self.base_url}/api/v2/tickets/{ticket_id}.json",
            "id": ticket_id,
            "external_id": fields.get("external_id"),
            "via": self._via(fields.get("via_followup_source_id")),
            "created_at": stamp,
            "updated_at": stamp,
            "type": fields.get("type"),
            "subject": fields.get("subject") or first["plain_body"][:100],
            "raw_subject": fields.get("subject") or first["plain_body"][:100],
            "description": first["plain_body"],
            "priority": fields.get("priority"),
            "status": fields.get("status") or "new",
            "requester_id": requester_id,
            "submitter_id": ZENDESK_AGENT_ID,
            "assignee_id": fields.get("assignee_id"),
            "organization_id": None,
            "group_id": fields.get("group_id"),
            "collaborator_ids": [],
            "follower_ids": [],
            "email_cc_ids": [],
            "has_incidents": False,
            "is_public": first["public"],
            "due_at": None,
            "tags": list(dict.fromkeys(fields.get("tags") or [])),
            "custom_fields": list(fields.get("custom_fields") or []),
            "allow_channelback": False,
            "allow_attachments": True,
            "from_messaging_channel": False,
        }
        self.tickets[ticket_id] = ticket
        return ticket

    def _requester_id(self, requester: Any) -> int:
        """The user for ``requester`` (same email, same user); the API agent when absent."""
        if not isinstance(requester, dict):
            return ZENDESK_AGENT_ID
        email = str(requester.get("email") or "").lower()
        if not email:
            return next(self._user_ids)
        return self._users.setdefault(email, next(self._user_ids))

    def _add_comment(self, ticket_id: int, comment: JsonDict, author_id: int) -> dict:
        html = comment.get("html_body")
        plain = comment.get("body") or _plain_from_html(html or "")
        if html is None:
            html = f'<div class="zd-comment" dir="auto"><p dir="auto">{escape(plain)}</p></div>'
        entry = {
            "id": next(self._comment_ids),
            "type": "Comment",
            "author_id": comment.get("author_id", author_id),
            "body": plain,
            "html_body": html,
            "plain_body": plain,
            "public": bool(comment.get("public", True)),
            "attachments": [],
            "audit_id": next(self._audit_ids),
            "via": {"channel": "api", "source": {"from": {}, "to": {}, "rel": None}},
            "created_at": _iso_z(_now(), millis=False),
            "metadata": {"system": {}, "custom": {}},
        }
        self.comments.setdefault(ticket_id, []).append(entry)
        return entry

    def _location(self, ticket_id: int) -> dict[str, str]:
        return {"Location": f"{self.base_url}/api/v2/tickets/{ticket_id}.json"}

    # ----------------------------------------------------------------------- read and update

    async def _list(self, request: web.Request) -> web.Response:
        wanted = request.query.get("external_id")
        tickets = [t for t in self.tickets.values() if wanted is None or t["external_id"] == wanted]
        body = {"tickets": tickets, "next_page": None, "previous_page": None, "count": len(tickets)}
        return _json(body)

    async def _show(self, request: web.Request) -> web.Response:
        ticket = self.tickets.get(int(request.match_info["ticket_id"]))
        return self._error(404, {}) if ticket is None else _json({"ticket": ticket})

    async def _list_comments(self, request: web.Request) -> web.Response:
        ticket_id = int(request.match_info["ticket_id"])
        if ticket_id not in self.tickets:
            return self._error(404, {})
        comments = self.comments.get(ticket_id, [])
        if request.query.get("sort_order") == "desc":
            comments = comments[::-1]
        # Offset pagination: "Returns a maximum of 100 records per page" (per_page, page).
        per_page = max(min(int(request.query.get("per_page") or 100), 100), 1)
        page = max(int(request.query.get("page") or 1), 1)
        shown = comments[(page - 1) * per_page : page * per_page]
        order = request.query.get("sort_order", "asc")
        url = f"{self.base_url}{request.path}?sort_order={order}&per_page={per_page}&page="
        more = page * per_page < len(comments)
        body = {
            "comments": shown,
            "next_page": f"{url}{page + 1}" if more else None,
            "previous_page": f"{url}{page - 1}" if page > 1 else None,
            "count": len(comments),
        }
        return _json(body)

    async def _update(self, request: web.Request) -> web.Response:
        ticket = self.tickets.get(int(request.match_info["ticket_id"]))
        if ticket is None:
            return self._error(404, {})
        body = await _body(request)
        if body is _INVALID_JSON:
            return _zendesk_error("InvalidJSON", "The request body is not valid JSON", 400)
        fields = body.get("ticket") if isinstance(body, dict) else None
        fields = fields if isinstance(fields, dict) else {}
        if ticket["status"] == "closed":  # Zendesk: a closed ticket is never reopened
            return _zendesk_invalid("status", "Status: closed prevents ticket update",
                                    "ClosedPreventsUpdate")  # fmt: skip
        invalid = self._invalid_fields(fields)
        if invalid is not None:
            return invalid
        events = self._apply_update(ticket, fields)
        audit = {
            "id": next(self._audit_ids),
            "ticket_id": ticket["id"],
            "created_at": ticket["updated_at"],
            "author_id": ZENDESK_AGENT_ID,
            "events": events,
        }
        return _json({"ticket": ticket, "audit": audit})

    def _apply_update(self, ticket: dict, fields: JsonDict) -> list[dict]:
        events: list[dict] = []
        comment = fields.get("comment")
        if isinstance(comment, dict) and (comment.get("body") or comment.get("html_body")):
            added = self._add_comment(ticket["id"], comment, author_id=ZENDESK_AGENT_ID)
            events.append({"id": added["id"], "type": "Comment", "body": added["body"]})
        for name in ("priority", "status", "subject", "group_id", "assignee_id", "external_id"):
            if name in fields and fields[name] != ticket.get(name):
                events.append({"type": "Change", "field_name": name, "value": fields[name]})
                ticket[name] = fields[name]
        if isinstance(fields.get("tags"), list):
            ticket["tags"] = list(dict.fromkeys(fields["tags"]))
        ticket["updated_at"] = _iso_z(_now(), millis=False)
        return events


# =========================================================================== Jira

JIRA_ADF_MESSAGE = (
    "Operation value must be an Atlassian Document (see the Atlassian Document Format)"
)
JIRA_401_BODY = "Client must be authenticated to access this resource."
JIRA_TEXT_LIMIT = 32_767
JIRA_TOO_LONG = (
    f"The entered text is too long. It exceeds the allowed limit of {JIRA_TEXT_LIMIT:,} characters."
)
JIRA_NO_ISSUE = "Issue does not exist or you do not have permission to see it."
# createIssue's 400 for a field that is not on the project's create screen
JIRA_NOT_ON_SCREEN = (
    "Field '{field}' cannot be set. It is not on the appropriate screen, or unknown."
)
# addComment's 413: "the per-issue limit has been breached" (Jira Cloud: 5,000 comments)
JIRA_COMMENTS_FULL = "This issue has reached the limit of {} comments."
JIRA_UNBOUNDED = (
    "Unbounded JQL queries are not allowed here. Please add a search restriction to your query."
)
JIRA_RATE_LIMIT = 100
JIRA_MAX_RESULTS = 50
JIRA_CLAUSE = re.compile(
    r"""^\s*(?P<field>project|labels|key|issuekey)\s*=\s*
        (?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>[\w.-]+))\s*$""",
    re.IGNORECASE | re.VERBOSE,
)


def _jira_errors(messages: list[str], errors: JsonDict, status: int) -> web.Response:
    return _json({"errorMessages": messages, "errors": errors}, status)


def _jql_error(message: str) -> web.Response:
    return _json({"errorMessages": [message], "errors": {}, "warningMessages": []}, 400)


def _is_adf(value: Any) -> bool:
    """A top-level ADF node: ``{"type": "doc", "version": 1, "content": [node, ...]}``."""
    if not isinstance(value, dict) or value.get("type") != "doc" or value.get("version") != 1:
        return False
    content = value.get("content")
    return isinstance(content, list) and all(
        isinstance(node, dict) and isinstance(node.get("type"), str) for node in content
    )


def _adf_text(node: Any) -> str:
    """Every text node's text in an ADF document, concatenated."""
    if not isinstance(node, dict):
        return ""
    own = node.get("text") if isinstance(node.get("text"), str) else ""
    return own + "".join(_adf_text(child) for child in node.get("content") or [])


def _parse_jql(jql: str) -> list[tuple[str, str]] | str:
    """``[(field, value), ...]`` joined by AND, or the clause that could not be read."""
    where = re.split(r"\s+order\s+by\s+", jql.strip(), flags=re.IGNORECASE)[0]
    clauses: list[tuple[str, str]] = []
    for clause in re.split(r"\s+and\s+", where, flags=re.IGNORECASE):
        match = JIRA_CLAUSE.match(clause)
        if match is None:
            return clause
        value = next(v for v in match.group("dq", "sq", "bare") if v is not None)
        field = match.group("field").lower()
        clauses.append(("key" if field == "issuekey" else field, value))
    return clauses


def _jira_field_list(raw: Iterable[Any]) -> list[str]:
    return [part.strip() for item in raw for part in str(item).split(",") if part.strip()]


class JiraStandIn(VendorStandIn):
    """Jira Cloud REST API v3 issues, JQL search and comments, Basic auth with an API token.

    ``projects``, when given, are the only project keys that exist; otherwise any key does.
    """

    contract_names: tuple[str, ...] = ("jira",)

    def __init__(
        self,
        email: str,
        api_token: str,
        *,
        projects: Iterable[str] = (),
        search_lag_s: float = 0.0,
    ) -> None:
        super().__init__()
        self.email = email
        self.api_token = api_token
        # JQL search is eventually consistent ("Recent updates might not be immediately visible
        # in the returned search results"): a new issue is found only after this long, unless
        # its id is passed in reconcileIssues.
        self.search_lag_s = search_lag_s
        self._indexed_at: dict[str, float] = {}
        # The same lag counted in searches: a new issue is missed by this many searches after
        # its creation, then found (two searches in a row can disagree).
        self.search_lag_searches = 0
        # Atlassian: a 429 "may be accompanied by" Retry-After and X-RateLimit-Reset; True
        # sends only the reset time.
        self.reset_without_retry_after = False
        self.comment_limit = 5000  # per issue, as on Jira Cloud
        self._searches = 0
        self._indexed_after: dict[str, int] = {}
        self.issues: dict[str, dict] = {}
        self.comments: dict[str, list[dict]] = {}
        self._known_projects = {key.upper() for key in projects}
        # Projects whose create screen has no Priority field: Jira refuses a create that sets it.
        self.screens_without_priority: set[str] = set()
        self._project_ids: dict[str, str] = {}
        self._project_counts: dict[str, int] = {}
        self._issue_ids = itertools.count(10_000)
        self._comment_ids = itertools.count(10_000)
        self._account_id = uuid.uuid5(uuid.NAMESPACE_DNS, email).hex[:24]

    def delete(self, key: str) -> None:
        """Someone deletes the issue: search leaves it out, and its paths answer 404."""
        del self.issues[key]
        self.comments.pop(key, None)

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/rest/api/3/issue", self._create)
        router.add_get("/rest/api/3/issue/{ref}", self._show)
        router.add_get("/rest/api/3/search/jql", self._search_get)
        router.add_post("/rest/api/3/search/jql", self._search_post)
        router.add_post("/rest/api/3/issue/{ref}/comment", self._add_comment)
        router.add_get("/rest/api/3/issue/{ref}/comment", self._list_comments)

    def _authorized(self, request: web.Request) -> bool:
        return _basic_credentials(request) == f"{self.email}:{self.api_token}"

    def _error(self, status: int, headers: dict[str, str]) -> web.Response:
        if status == 401:
            return _text(JIRA_401_BODY, 401, headers)
        if status == 429:
            retry = float(headers.get("Retry-After", "1"))
            reset = _now() + timedelta(seconds=math.ceil(retry))
            reset += timedelta(minutes=1) if reset.second or reset.microsecond else timedelta()
            headers = {
                "X-RateLimit-Limit": str(JIRA_RATE_LIMIT),
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": reset.strftime("%Y-%m-%dT%H:%MZ"),  # to the minute, up
                "RateLimit-Reason": "jira-burst-based",
            } | headers
            if self.reset_without_retry_after:  # "may be accompanied by" either header
                headers.pop("Retry-After", None)
        body = {"errorMessages": [HTTPStatus(status).phrase], "errors": {}}
        return _json(body, status, headers)

    # ----------------------------------------------------------------------- issues

    async def _create(self, request: web.Request) -> web.Response:
        body = await _body(request)
        fields = body.get("fields") if isinstance(body, dict) else None
        if not isinstance(fields, dict):
            return _jira_errors(["Issue must be created with the 'fields' object."], {}, 400)
        errors = self._field_errors(fields)
        if errors:
            return _jira_errors([], errors, 400)
        issue = self._new_issue(fields)
        return _json({"id": issue["id"], "key": issue["key"], "self": issue["self"]}, 201)

    def _field_errors(self, fields: JsonDict) -> dict[str, str]:
        """Jira answers all field problems at once, keyed by field id."""
        errors: dict[str, str] = {}
        project = self._project_key(fields.get("project"))
        if project is None:
            errors["project"] = "Specify a valid project ID or key"
        summary = fields.get("summary")
        if not isinstance(summary, str) or not summary.strip():
            errors["summary"] = "You must specify a summary of the issue."
        elif _utf16(summary) > 255:  # Java counts UTF-16 code units
            errors["summary"] = "Summary must be less than 255 characters."
        elif "\n" in summary or "\r" in summary:
            errors["summary"] = "The summary is invalid because it contains newline characters."
        issuetype = fields.get("issuetype")
        if not isinstance(issuetype, dict) or not (issuetype.get("name") or issuetype.get("id")):
            errors["issuetype"] = "Specify an issue type"
        if project in self.screens_without_priority and "priority" in fields:
            errors["priority"] = JIRA_NOT_ON_SCREEN.format(field="priority")
        if fields.get("description") is not None and not _is_adf(fields["description"]):
            errors["description"] = JIRA_ADF_MESSAGE
        elif _utf16(_adf_text(fields.get("description"))) > JIRA_TEXT_LIMIT:
            errors["description"] = JIRA_TOO_LONG
        errors.update(self._label_errors(fields.get("labels")))
        return errors

    @staticmethod
    def _label_errors(labels: Any) -> dict[str, str]:
        if labels is None:
            return {}
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            return {"labels": "Specify a list of labels as strings"}
        for label in labels:
            if re.search(r"\s", label):
                return {"labels": f"The label '{label}' contains spaces which is invalid."}
        return {}

    def _project_key(self, project: Any) -> str | None:
        if not isinstance(project, dict):
            return None
        key = str(project.get("key") or "").upper()
        if not key and project.get("id") is not None:
            by_id = {pid: k for k, pid in self._project_ids.items()}
            key = by_id.get(str(project["id"]), "")
        if not key or (self._known_projects and key not in self._known_projects):
            return None
        return key

    def _project(self, key: str) -> dict:
        project_id = self._project_ids.setdefault(key, str(10_000 + len(self._project_ids)))
        return {
            "self": f"{self.base_url}/rest/api/3/project/{project_id}",
            "id": project_id,
            "key": key,
            "name": key,
        }

    def _new_issue(self, fields: JsonDict) -> dict:
        key_prefix = self._project_key(fields["project"]) or ""
        number = self._project_counts.get(key_prefix, 0) + 1
        self._project_counts[key_prefix] = number
        issue_id = str(next(self._issue_ids))
        stamp = _iso_offset(_now())
        stored = dict(fields)
        stored.update(
            project=self._project(key_prefix),
            labels=list(fields.get("labels") or []),
            priority=fields.get("priority") or {"name": "Medium", "id": "3"},
            description=fields.get("description"),
            status={"name": "To Do", "statusCategory": {"key": "new", "name": "To Do"}},
            created=stamp,
            updated=stamp,
        )
        issue = {
            "expand": "renderedFields,names,schema,operations,editmeta,changelog",
            "id": issue_id,
            "self": f"{self.base_url}/rest/api/3/issue/{issue_id}",
            "key": f"{key_prefix}-{number}",
            "fields": stored,
        }
        self.issues[issue["key"]] = issue
        self._indexed_at[issue["key"]] = time.monotonic() + self.search_lag_s
        self._indexed_after[issue["key"]] = self._searches + self.search_lag_searches
        return issue

    def _find(self, ref: str) -> dict | None:
        found = self.issues.get(ref.upper())
        return found or next((i for i in self.issues.values() if i["id"] == ref), None)

    async def _show(self, request: web.Request) -> web.Response:
        issue = self._find(request.match_info["ref"])
        if issue is None:
            return _jira_errors([JIRA_NO_ISSUE], {}, 404)
        return _json(issue)

    # ----------------------------------------------------------------------- search

    async def _search_get(self, request: web.Request) -> web.Response:
        fields = _jira_field_list(request.query.getall("fields", []))
        reconcile = ",".join(request.query.getall("reconcileIssues", [])).split(",")
        return self._search(
            request.query.get("jql", ""),
            fields,
            request.query.get("maxResults"),
            request.query.get("nextPageToken"),
            {r for r in reconcile if r},
        )

    async def _search_post(self, request: web.Request) -> web.Response:
        body = await _body(request)
        body = body if isinstance(body, dict) else {}
        fields = _jira_field_list(body.get("fields") or [])
        reconcile = {str(r) for r in body.get("reconcileIssues") or []}
        return self._search(
            str(body.get("jql") or ""),
            fields,
            body.get("maxResults"),
            body.get("nextPageToken"),
            reconcile,
        )

    def _searchable(self, issue: dict, reconcile: set[str]) -> bool:
        indexed = self._indexed_at.get(issue["key"], 0.0)
        counted = self._searches > self._indexed_after.get(issue["key"], 0)
        return issue["id"] in reconcile or (time.monotonic() >= indexed and counted)

    def _search(
        self, jql: str, fields: list[str], max_results: Any, token: Any, reconcile: set[str]
    ) -> web.Response:
        if not jql.strip():
            return _jql_error(JIRA_UNBOUNDED)
        clauses = _parse_jql(jql)
        if isinstance(clauses, str):
            return _jql_error(f"Error in the JQL Query: the query '{clauses}' is not supported.")
        unknown = self._unknown_project(clauses)
        if unknown is not None:
            return _jql_error(f"The value '{unknown}' does not exist for the field 'project'.")
        self._searches += 1
        hits = [i for i in self.issues.values()
                if self._matches(i, clauses) and self._searchable(i, reconcile)]  # fmt: skip
        hits.sort(key=lambda issue: int(issue["id"]), reverse=True)
        size = int(max_results) if str(max_results or "").isdigit() else JIRA_MAX_RESULTS
        start = int(token) if str(token or "").isdigit() else 0
        page = hits[start : start + size]
        body: JsonDict = {"issues": [self._project_fields(i, fields) for i in page]}
        if start + size < len(hits):
            body["nextPageToken"] = str(start + size)
        body["isLast"] = start + size >= len(hits)
        return _json(body)

    def _unknown_project(self, clauses: list[tuple[str, str]]) -> str | None:
        if not self._known_projects:
            return None
        for field, value in clauses:
            if field == "project" and value.upper() not in self._known_projects:
                return value
        return None

    @staticmethod
    def _matches(issue: dict, clauses: list[tuple[str, str]]) -> bool:
        for field, value in clauses:
            if field == "project" and issue["fields"]["project"]["key"] != value.upper():
                return False
            if field == "labels" and value not in issue["fields"]["labels"]:
                return False
            if field == "key" and issue["key"] != value.upper():
                return False
        return True

    @staticmethod
    def _project_fields(issue: dict, wanted: list[str]) -> JsonDict:
        """What ``fields`` asks for; ids only when it asks for nothing or just ``id``."""
        if not wanted or wanted == ["id"]:
            return {"id": issue["id"]}
        every = {"*all", "*navigable"} & set(wanted)
        names = set(issue["fields"]) if every else {n for n in wanted if not n.startswith("-")}
        names -= {n[1:] for n in wanted if n.startswith("-")}
        shown = {name: value for name, value in issue["fields"].items() if name in names}
        return {k: issue[k] for k in ("expand", "id", "self", "key")} | {"fields": shown}

    # ----------------------------------------------------------------------- comments

    async def _add_comment(self, request: web.Request) -> web.Response:
        issue = self._find(request.match_info["ref"])
        if issue is None:
            return _jira_errors([JIRA_NO_ISSUE], {}, 404)
        body = await _body(request)
        adf = body.get("body") if isinstance(body, dict) else None
        if not _is_adf(adf):
            return _jira_errors([], {"comment": JIRA_ADF_MESSAGE}, 400)
        if _utf16(_adf_text(adf)) > JIRA_TEXT_LIMIT:
            return _jira_errors([], {"comment": JIRA_TOO_LONG}, 400)
        if len(self.comments.get(issue["key"], [])) >= self.comment_limit:
            return _jira_errors([JIRA_COMMENTS_FULL.format(self.comment_limit)], {}, 413)
        comment_id = str(next(self._comment_ids))
        stamp = _iso_offset(_now())
        author = {"accountId": self._account_id, "emailAddress": self.email, "active": True}
        comment = {
            "self": f"{issue['self']}/comment/{comment_id}",
            "id": comment_id,
            "author": author,
            "body": adf,
            "updateAuthor": author,
            "created": stamp,
            "updated": stamp,
            "jsdPublic": True,
        }
        self.comments.setdefault(issue["key"], []).append(comment)
        return _json(comment, 201)

    async def _list_comments(self, request: web.Request) -> web.Response:
        issue = self._find(request.match_info["ref"])
        if issue is None:
            return _jira_errors([JIRA_NO_ISSUE], {}, 404)
        comments = self.comments.get(issue["key"], [])
        if request.query.get("orderBy") in ("-created", "-updated"):
            comments = comments[::-1]
        # getComments pages: startAt, maxResults ("the maximum number of items to return per
        # page", 100 by default)
        start = max(int(request.query.get("startAt") or 0), 0)
        limit = max(min(int(request.query.get("maxResults") or 100), 5000), 1)
        shown = comments[start : start + limit]
        body = {"startAt": start, "maxResults": limit, "total": len(comments), "comments": shown}
        return _json(body)


# =========================================================================== Salesforce

SALESFORCE_OBJECTS: dict[str, tuple[str, tuple[str, ...]]] = {
    # sObject: (record id key prefix, fields required on create)
    "Lead": ("00Q", ("LastName", "Company")),
    "Case": ("500", ("Subject",)),
    "Contact": ("003", ("LastName",)),
    "CaseComment": ("00a", ("ParentId",)),
}
SALESFORCE_FIELD_LENGTHS = {"LastName": 80, "Company": 255, "Subject": 255, "Description": 32_000}
SALESFORCE_BYTE_LENGTHS = {"CommentBody": 4_000}  # CaseComment.CommentBody: 4,000 bytes
SALESFORCE_DAILY_LIMIT = 15_000
SALESFORCE_ID_SUFFIX = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
SALESFORCE_ERROR_CODES = {
    400: ("BAD_REQUEST", "The request could not be understood."),
    401: ("INVALID_SESSION_ID", "Session expired or invalid"),
    403: ("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."),
    404: ("NOT_FOUND", "The requested resource does not exist"),
    405: ("METHOD_NOT_ALLOWED", "HTTP Method is not allowed for this resource"),
    429: ("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."),
    503: ("SERVER_UNAVAILABLE", "Server temporarily unavailable. Try again later."),
}


def _salesforce_id(prefix: str, number: int) -> str:
    """An 18-character record id: 15 characters plus Salesforce's case-checksum suffix."""
    short = f"{prefix}5g{number:010d}"
    suffix = ""
    for start in (0, 5, 10):
        chunk = short[start : start + 5]
        bits = sum(1 << i for i, ch in enumerate(chunk) if "A" <= ch <= "Z")
        suffix += SALESFORCE_ID_SUFFIX[bits]
    return short + suffix


def _sf_error(
    status: int, code: str, message: str, fields: list[str] | None = None, **headers: str
) -> web.Response:
    entry: JsonDict = {"message": message, "errorCode": code}
    if fields is not None:
        entry["fields"] = fields
    return _json([entry], status, headers or None)


class SalesforceStandIn(VendorStandIn):
    """Salesforce REST API sObject resources for Lead, Case and Contact, OAuth bearer token.

    Only ``api_version`` is served; other versions answer 404 ``NOT_FOUND``.
    """

    def __init__(
        self,
        access_token: str,
        api_version: str = "v60.0",
        *,
        client: tuple[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.access_token = access_token
        self.api_version = api_version
        self.client = client  # a connected app's (consumer key, consumer secret)
        self.tokens_issued = 0
        self.records: dict[str, dict[str, dict]] = {name: {} for name in SALESFORCE_OBJECTS}
        self.restricted: dict[tuple[str, str], set[str]] = {}
        self.unique: set[tuple[str, str]] = set()
        self._numbers = itertools.count(1)
        self._api_usage = 0
        self._race_next = False
        self._busy_next = False

    def expire_sessions(self) -> None:
        """Every access token issued so far stops working (401 INVALID_SESSION_ID)."""
        self.access_token = f"expired-{uuid.uuid4()}"

    def race_next_upsert(self) -> None:
        """The next upsert that would insert a record loses a race with a concurrent one for
        the same external id: the other request's record is inserted and this one answers
        400 ``DUPLICATE_VALUE``, as Salesforce does for a unique external-id field."""
        self._race_next = True

    def busy_next(self, path_prefix: str) -> None:
        """The next request under ``path_prefix`` is refused 403 REQUEST_LIMIT_EXCEEDED for
        the org's long-running requests at once ("ConcurrentPerOrgLongTxn Limit exceeded"),
        not its daily allowance: Salesforce's limit of 25 that clears within seconds."""
        self._busy_next = True
        self.fail_next(path_prefix, 403)

    def delete_record(self, sobject: str, record_id: str) -> None:
        """Someone deletes the record: its paths answer 404 NOT_FOUND from now on."""
        del self.records[sobject][record_id]

    def convert_lead(self, record_id: str) -> None:
        """A rep converts the Lead (into a Contact): Salesforce refuses any update of it from
        now on, 400 ``CANNOT_UPDATE_CONVERTED_LEAD``."""
        self.records["Lead"][record_id]["IsConverted"] = True

    def _converted(self, sobject: str, record: JsonDict | None) -> web.Response | None:
        if sobject == "Lead" and record is not None and record.get("IsConverted"):
            message = "cannot reference converted lead"
            return _sf_error(400, "CANNOT_UPDATE_CONVERTED_LEAD", message, [])
        return None

    def restrict_picklist(self, sobject: str, field: str, values: set[str]) -> None:
        """``field`` becomes a restricted picklist: any other value is refused."""
        self.restricted[(sobject, field)] = values

    def make_unique(self, sobject: str, field: str) -> None:
        """The org marks ``field`` Unique: a write that gives another record's value is refused
        400 ``DUPLICATE_VALUE`` naming that field."""
        self.unique.add((sobject, field))

    def _duplicate(self, sobject: str, record: JsonDict) -> web.Response | None:
        for unique_object, name in sorted(self.unique):
            value = record.get(name)
            if unique_object != sobject or value is None:
                continue
            others = [r for r in self._matching(sobject, name, str(value))
                      if r.get("Id") != record.get("Id")]  # fmt: skip
            if others:
                message = f"duplicate value found: {name} duplicates value on record with id: "
                return _sf_error(400, "DUPLICATE_VALUE", message + others[0]["Id"], [name])
        return None

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/services/oauth2/token", self._token)
        root = "/services/data/{version}/sobjects/{sobject}"
        router.add_post(root, self._create)
        router.add_post(root + "/", self._create)
        router.add_get(root + "/{record_id}", self._get)
        router.add_patch(root + "/{record_id}", self._update)
        router.add_get(root + "/{field}/{value}", self._get_by_external_id)
        router.add_patch(root + "/{field}/{value}", self._upsert)

    def _authorized(self, request: web.Request) -> bool:
        if request.path == "/services/oauth2/token":
            return True  # the client authenticates in the body
        return _bearer_token(request) == self.access_token

    async def _token(self, request: web.Request) -> web.Response:
        """The OAuth 2.0 client credentials flow (Salesforce Help, "OAuth 2.0 Client
        Credentials Flow for Server-to-Server Integration"): a form with grant_type, client_id
        and client_secret; the answer has no expiry, a token works until it is revoked."""
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return _json({"error": "unsupported_grant_type",
                          "error_description": "grant type not supported"}, 400)  # fmt: skip
        if self.client is None or (form.get("client_id"), form.get("client_secret")) != self.client:
            return _json({"error": "invalid_client",
                          "error_description": "invalid client credentials"}, 400)  # fmt: skip
        self.tokens_issued += 1
        self.access_token = f"00D5g000004{uuid.uuid4().hex[:20]}!token{self.tokens_issued}"
        return _json({
            "access_token": self.access_token, "instance_url": self.base_url,
            "id": f"{self.base_url}/id/00D5g000004AbcdEAC/0055g00000AbcdEAAR",
            "token_type": "Bearer", "issued_at": str(int(time.time() * 1000)),
            "signature": base64.b64encode(uuid.uuid4().bytes).decode(),
        })  # fmt: skip

    def _error(self, status: int, headers: dict[str, str]) -> web.Response:
        code, message = SALESFORCE_ERROR_CODES.get(status, ("UNKNOWN_EXCEPTION", ""))
        if code == "UNKNOWN_EXCEPTION":
            message = (
                "An unexpected error occurred. Please include this ErrorId if you contact "
                f"support: {uuid.uuid4().int % 10**9}-{uuid.uuid4().int % 10**5} (-{status})"
            )
        if status == 403 and self._busy_next:
            self._busy_next, message = False, "ConcurrentPerOrgLongTxn Limit exceeded"
        return _sf_error(status, code, message, **headers)

    def _decorate(self, response: web.StreamResponse) -> None:
        self._api_usage += 1
        usage = f"api-usage={self._api_usage}/{SALESFORCE_DAILY_LIMIT}"
        response.headers.setdefault("Sforce-Limit-Info", usage)

    # ----------------------------------------------------------------------- shared checks

    def _resolve(self, request: web.Request) -> str | web.Response:
        """The sObject name of the path, or the 404 for another version or unknown object."""
        sobject = request.match_info["sobject"]
        if request.match_info["version"] != self.api_version or sobject not in self.records:
            return self._error(404, {})
        return sobject

    @staticmethod
    async def _fields(request: web.Request) -> JsonDict | web.Response:
        body = await _body(request)
        if body is _INVALID_JSON:
            return _sf_error(400, "JSON_PARSER_ERROR", "Unexpected character in the request body")
        if not isinstance(body, dict):
            return _sf_error(
                400, "JSON_PARSER_ERROR", "Cannot deserialize instance of SObject from the body"
            )
        return body

    def _missing(self, sobject: str, record: JsonDict) -> web.Response | None:
        """Required fields that are empty, fields longer than they may be, values a restricted
        picklist does not hold."""
        for (restricted_object, name), allowed in self.restricted.items():
            value = record.get(name)
            if restricted_object == sobject and value is not None and value not in allowed:
                message = f"bad value for restricted picklist field: {value}"
                return _sf_error(400, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", message, [name])
        for name, limit in SALESFORCE_FIELD_LENGTHS.items():
            value = record.get(name)
            if isinstance(value, str) and _utf16(value) > limit:  # UTF-16 units, as Apex
                message = f"{name}: data value too large: {value[:40]} (max length={limit})"
                return _sf_error(400, "STRING_TOO_LONG", message, [name])
        for name, limit in SALESFORCE_BYTE_LENGTHS.items():
            value = record.get(name)
            if isinstance(value, str) and len(value.encode("utf-8")) > limit:
                message = f"{name}: data value too large: {value[:40]} (max length={limit})"
                return _sf_error(400, "STRING_TOO_LONG", message, [name])
        parent = record.get("ParentId")
        if sobject == "CaseComment" and parent is not None and parent not in self.records["Case"]:
            message = f"Parent ID: id value of incorrect type or deleted: {parent}"
            return _sf_error(400, "FIELD_INTEGRITY_EXCEPTION", message, ["ParentId"])
        required = SALESFORCE_OBJECTS[sobject][1]
        missing = [name for name in required if record.get(name) in (None, "")]
        if not missing:
            return None
        message = f"Required fields are missing: [{', '.join(missing)}]"
        return _sf_error(400, "REQUIRED_FIELD_MISSING", message, missing)

    def _insert(self, sobject: str, fields: JsonDict) -> str:
        record_id = _salesforce_id(SALESFORCE_OBJECTS[sobject][0], next(self._numbers))
        stamp = _iso_offset(_now())
        self.records[sobject][record_id] = {
            "Id": record_id,
            **fields,
            "CreatedDate": stamp,
            "LastModifiedDate": stamp,
            "IsDeleted": False,
        }
        return record_id

    def _merge(self, sobject: str, record_id: str, fields: JsonDict) -> None:
        record = self.records[sobject][record_id]
        record.update(fields)
        record["LastModifiedDate"] = _iso_offset(_now())

    def _out(self, sobject: str, record: dict) -> JsonDict:
        url = f"/services/data/{self.api_version}/sobjects/{sobject}/{record['Id']}"
        return {"attributes": {"type": sobject, "url": url}, **record}

    # ----------------------------------------------------------------------- endpoints

    async def _create(self, request: web.Request) -> web.Response:
        sobject = self._resolve(request)
        if isinstance(sobject, web.Response):
            return sobject
        fields = await self._fields(request)
        if isinstance(fields, web.Response):
            return fields
        missing = self._missing(sobject, fields)
        if missing is not None:
            return missing
        record_id = self._insert(sobject, fields)
        return _json({"id": record_id, "success": True, "errors": []}, 201)

    async def _get(self, request: web.Request) -> web.Response:
        sobject = self._resolve(request)
        if isinstance(sobject, web.Response):
            return sobject
        record = self.records[sobject].get(request.match_info["record_id"])
        return self._error(404, {}) if record is None else _json(self._out(sobject, record))

    async def _update(self, request: web.Request) -> web.Response:
        sobject = self._resolve(request)
        if isinstance(sobject, web.Response):
            return sobject
        record_id = request.match_info["record_id"]
        if record_id not in self.records[sobject]:
            return self._error(404, {})
        if converted := self._converted(sobject, self.records[sobject][record_id]):
            return converted
        fields = await self._fields(request)
        if isinstance(fields, web.Response):
            return fields
        missing = self._missing(sobject, self.records[sobject][record_id] | fields)
        if missing is not None:
            return missing
        self._merge(sobject, record_id, fields)
        return web.Response(status=204)

    def _matching(self, sobject: str, field: str, value: str) -> list[dict]:
        return [r for r in self.records[sobject].values() if str(r.get(field)) == value]

    async def _get_by_external_id(self, request: web.Request) -> web.Response:
        sobject = self._resolve(request)
        if isinstance(sobject, web.Response):
            return sobject
        if sobject == "Case" and request.match_info["value"] == "CaseComments":
            return self._case_comments(request.match_info["field"])
        found = self._matching(sobject, request.match_info["field"], request.match_info["value"])
        if len(found) > 1:
            return self._multiple_choices(sobject, found)
        return _json(self._out(sobject, found[0])) if found else self._error(404, {})

    async def _upsert(self, request: web.Request) -> web.Response:
        sobject = self._resolve(request)
        if isinstance(sobject, web.Response):
            return sobject
        fields = await self._fields(request)
        if isinstance(fields, web.Response):
            return fields
        field, value = request.match_info["field"], request.match_info["value"]
        found = self._matching(sobject, field, value)
        if len(found) > 1:
            return self._multiple_choices(sobject, found)
        if converted := self._converted(sobject, found[0] if found else None):
            return converted
        record = (found[0] if found else {field: value}) | fields
        refused = self._missing(sobject, record) or self._duplicate(sobject, record)
        if refused is not None:
            return refused
        if found:
            self._merge(sobject, found[0]["Id"], fields)
            body = {"id": found[0]["Id"], "success": True, "errors": [], "created": False}
            return _json(body, 200)
        record_id = self._insert(sobject, record)
        if self._race_next:  # the concurrent request inserted it; this one is refused
            self._race_next = False
            message = f"duplicate value found: {field} duplicates value on record with id: "
            return _sf_error(400, "DUPLICATE_VALUE", message + record_id, [field])
        return _json({"id": record_id, "success": True, "errors": [], "created": True}, 201)

    def _case_comments(self, case_id: str) -> web.Response:
        """``GET .../sobjects/Case/{id}/CaseComments``: the Case's comments (a relationship,
        which Salesforce tells from an external-id path by the record id)."""
        if case_id not in self.records["Case"]:
            return self._error(404, {})
        found = [self._out("CaseComment", c) for c in self.records["CaseComment"].values()
                 if c.get("ParentId") == case_id]  # fmt: skip
        return _json({"totalSize": len(found), "done": True, "records": found})

    def _multiple_choices(self, sobject: str, found: list[dict]) -> web.Response:
        return _json([self._out(sobject, r)["attributes"]["url"] for r in found], 300)


# =========================================================================== HubSpot

HUBSPOT_PORTAL_ID = 21939747  # the account (portal) the stand-in plays
HUBSPOT_OBJECTS: dict[str, JsonDict] = {
    "contacts": {
        "modified": "lastmodifieddate",
        "required": (),
        "defaults": (
            "createdate",
            "email",
            "firstname",
            "hs_object_id",
            "lastmodifieddate",
            "lastname",
        ),
    },
    "tickets": {
        "modified": "hs_lastmodifieddate",
        "required": ("hs_pipeline_stage",),
        "defaults": (
            "content",
            "createdate",
            "hs_lastmodifieddate",
            "hs_object_id",
            "hs_pipeline",
            "hs_pipeline_stage",
            "hs_ticket_category",
            "hs_ticket_priority",
            "subject",
        ),
    },
    "notes": {
        "modified": "hs_lastmodifieddate",
        "required": ("hs_timestamp",),
        "defaults": ("hs_createdate", "hs_lastmodifieddate", "hs_object_id"),
    },
}
# HubSpot-defined association type ids whose target is one of the objects served here.
HUBSPOT_ASSOCIATION_TARGETS = {
    15: "tickets",  # contact -> ticket
    16: "contacts",  # ticket -> contact
    201: "contacts",  # note -> contact (reverse label)
    202: "contacts",  # note -> contact
    227: "tickets",  # ticket -> note (reverse label)
    228: "tickets",  # note -> ticket
}
HUBSPOT_OPERATORS = ("EQ", "NEQ", "HAS_PROPERTY", "NOT_HAS_PROPERTY", "IN")
HUBSPOT_INTERVAL_MS = 10_000
HUBSPOT_MAX_PER_INTERVAL = 100
HUBSPOT_DAILY_LIMIT = 250_000
HUBSPOT_401_MESSAGE = (
    "Authentication credentials not found. This API supports OAuth 2.0 authentication and you "
    "can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview"
)
HUBSPOT_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
HUBSPOT_VALUE_LIMIT = 65_536


def _hubspot_error(status: int, message: str, category: str, **headers: str) -> web.Response:
    body = {
        "status": "error",
        "message": message,
        "correlationId": str(uuid.uuid4()),
        "category": category,
    }
    return _json(body, status, headers or None)


def _hubspot_invalid(name: str, message: str, error: str) -> web.Response:
    """HubSpot's 400 for property values, the problems JSON-encoded inside ``message``."""
    problem = {"isValid": False, "message": message, "error": error, "name": name}
    text = f"Property values were not valid: {json.dumps([problem], separators=(',', ':'))}"
    return _hubspot_error(400, text, "VALIDATION_ERROR")


def _standard_error(refusal: web.Response, item: JsonDict) -> JsonDict:
    """A per-input refusal as a ``StandardError`` of a 207 batch answer (HubSpot's CRM v3
    spec: status, category, message, context naming the input's id)."""
    error = json.loads(refusal.text or "{}")
    return {
        "status": str(refusal.status),
        "category": error.get("category", "VALIDATION_ERROR"),
        "message": error.get("message", ""),
        "context": {"id": [str(item.get("id"))]},
        "errors": [],
        "links": {},
    }


def _hs_value(value: Any) -> str | None:
    """Property values as HubSpot returns them: strings, booleans as ``true``/``false``."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value) if isinstance(value, bool) else str(value)


class HubSpotStandIn(VendorStandIn):
    """HubSpot CRM v3 contacts, tickets and notes, authenticated with a private app token.

    ``search_lag_s`` hides records from search for that long after they are created, as
    HubSpot's search index lags behind writes.
    """

    contract_names: tuple[str, ...] = (
        "hubspot-contacts",
        "hubspot-tickets",
    )

    def __init__(self, token: str, *, search_lag_s: float = 0.0) -> None:
        super().__init__()
        self.token = token
        self.search_lag_s = search_lag_s
        self.interval_ms = HUBSPOT_INTERVAL_MS  # the rate window its headers announce
        self.objects: dict[str, dict[str, dict]] = {name: {} for name in HUBSPOT_OBJECTS}
        # The properties with unique values an upsert may go by (idProperty): contacts' email,
        # and those the company created with "Require unique values" (the project's defaults).
        self.unique_properties: dict[str, set[str]] = {
            "contacts": {"email", "twitter_user_id"},
            "tickets": {"switchboard_conversation"},
        }
        self.associations: list[dict] = []
        self._ids = itertools.count(10_001)
        self._created_at: dict[str, float] = {}
        self._recent: list[float] = []
        self._daily_used = 0

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        root = "/crm/v3/objects/{object_type}"
        router.add_post(root, self._create)
        router.add_post(root + "/batch/upsert", self._batch_upsert)
        router.add_post(root + "/search", self._search)
        router.add_get(root + "/{object_id}", self._get)
        router.add_patch(root + "/{object_id}", self._update)

    def _authorized(self, request: web.Request) -> bool:
        return _bearer_token(request) == self.token

    def _error(self, status: int, headers: dict[str, str]) -> web.Response:
        if status == 401:
            return _hubspot_error(401, HUBSPOT_401_MESSAGE, "INVALID_AUTHENTICATION", **headers)
        if status == 429:
            return self._rate_limited(headers)
        if status == 404:
            return _hubspot_error(404, "resource not found", "OBJECT_NOT_FOUND", **headers)
        category = "INTERNAL_ERROR" if status >= 500 else "VALIDATION_ERROR"
        return _hubspot_error(status, HTTPStatus(status).phrase, category, **headers)

    def spend_daily_limit(self) -> None:
        """The account's calls of the day are spent: every request gets the daily 429 until
        ``reset_daily_limit`` (HubSpot resets it at midnight in the account's time zone)."""
        self._daily_used = HUBSPOT_DAILY_LIMIT

    def reset_daily_limit(self) -> None:
        self._daily_used = 0

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._daily_used >= HUBSPOT_DAILY_LIMIT:
            return self._rate_limited({}, policy="DAILY")
        return await super()._answer(request, handler)

    def _rate_limited(self, headers: dict[str, str], policy: str = "SECONDLY") -> web.Response:
        body = {
            "status": "error",
            "message": f"You have reached your {policy.lower()} limit.",
            "errorType": "RATE_LIMIT",
            "correlationId": str(uuid.uuid4()),
            "category": "RATE_LIMITS",
            "policyName": policy,
            "requestId": str(uuid.uuid4()),
        }
        return _json(body, 429, self._rate_headers(remaining=0) | headers)

    def _rate_headers(self, remaining: int | None = None) -> dict[str, str]:
        if remaining is None:
            remaining = max(HUBSPOT_MAX_PER_INTERVAL - len(self._recent), 0)
        return {
            "X-HubSpot-RateLimit-Interval-Milliseconds": str(self.interval_ms),
            "X-HubSpot-RateLimit-Max": str(HUBSPOT_MAX_PER_INTERVAL),
            "X-HubSpot-RateLimit-Remaining": str(remaining),
            "X-HubSpot-RateLimit-Daily": str(HUBSPOT_DAILY_LIMIT),
            "X-HubSpot-RateLimit-Daily-Remaining": str(
                max(HUBSPOT_DAILY_LIMIT - self._daily_used, 0)
            ),
        }

    def _decorate(self, response: web.StreamResponse) -> None:
        now = time.monotonic()
        self._recent = [t for t in self._recent if now - t < self.interval_ms / 1000] + [now]
        self._daily_used += 1
        for name, value in self._rate_headers().items():
            response.headers.setdefault(name, value)

    # ----------------------------------------------------------------------- shared pieces

    def _object_type(self, request: web.Request) -> str | web.Response:
        object_type = request.match_info["object_type"]
        if object_type not in self.objects:
            message = f"Unable to infer object type from: {object_type}"
            return _hubspot_error(400, message, "VALIDATION_ERROR")
        return object_type

    @staticmethod
    async def _payload(request: web.Request) -> JsonDict | web.Response:
        body = await _body(request)
        if not isinstance(body, dict):
            message = "Invalid input JSON on line 1, column 1: the body must be a JSON object"
            return _hubspot_error(400, message, "VALIDATION_ERROR")
        return body

    @staticmethod
    def _properties(raw: Any) -> dict[str, str | None] | web.Response:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            return _hubspot_error(400, "properties must be an object", "VALIDATION_ERROR")
        return {str(name): _hs_value(value) for name, value in raw.items()}

    def _invalid(
        self, object_type: str, merged: dict, own_id: str | None = None
    ) -> web.Response | None:
        """Required properties, value lengths, email format and one contact per email."""
        for name in HUBSPOT_OBJECTS[object_type]["required"]:
            if not merged.get(name):
                return _hubspot_invalid(name, f"{name} is required", "REQUIRED")
        for name, value in merged.items():
            if value is not None and len(value) > HUBSPOT_VALUE_LIMIT:
                message = f"{name} is longer than {HUBSPOT_VALUE_LIMIT} characters"
                return _hubspot_invalid(name, message, "INVALID_STRING_LENGTH")
        email = merged.get("email") if object_type == "contacts" else None
        if email is None:
            return None
        if not HUBSPOT_EMAIL.match(email):
            return _hubspot_invalid("email", f"Email address {email} is invalid", "INVALID_EMAIL")
        owner = self._find_by(object_type, "email", email)
        if owner is not None and owner["id"] != own_id:
            message = f"Contact already exists. Existing ID: {owner['id']}"
            return _hubspot_error(409, message, "CONFLICT")
        return None

    def _find_by(self, object_type: str, name: str, value: str) -> dict | None:
        fold = name == "email"
        for record in self.objects[object_type].values():
            current = record["properties"].get(name)
            if current is not None and (
                current.lower() == value.lower() if fold else current == value
            ):
                return record
        return None

    def _insert(self, object_type: str, properties: dict[str, str | None]) -> dict:
        object_id = str(next(self._ids))
        stamp = _iso_z(_now(), millis=True)
        system = {"hs_object_id": object_id, "createdate": stamp}
        system[HUBSPOT_OBJECTS[object_type]["modified"]] = stamp
        if object_type == "notes":
            system["hs_createdate"] = stamp
        record = {
            "id": object_id,
            "properties": properties | system,
            "createdAt": stamp,
            "updatedAt": stamp,
            "archived": False,
        }
        self.objects[object_type][object_id] = record
        self._created_at[object_id] = time.monotonic()
        return record

    def _merge(self, object_type: str, record: dict, properties: dict[str, str | None]) -> None:
        stamp = _iso_z(_now(), millis=True)
        record["properties"].update(properties)
        record["properties"][HUBSPOT_OBJECTS[object_type]["modified"]] = stamp
        record["updatedAt"] = stamp

    @staticmethod
    def _shown(object_type: str, record: dict, wanted: Iterable[str] = ()) -> JsonDict:
        """The record with the default properties plus ``wanted`` (null when unset)."""
        names = [*HUBSPOT_OBJECTS[object_type]["defaults"], *wanted]
        properties = {name: record["properties"].get(name) for name in dict.fromkeys(names)}
        return record | {"properties": properties}

    # ----------------------------------------------------------------------- create, get, update

    async def _create(self, request: web.Request) -> web.Response:
        object_type = self._object_type(request)
        if isinstance(object_type, web.Response):
            return object_type
        payload = await self._payload(request)
        if isinstance(payload, web.Response):
            return payload
        properties = self._properties(payload.get("properties"))
        if isinstance(properties, web.Response):
            return properties
        problem = self._invalid(object_type, properties) or self._bad_associations(
            payload.get("associations")
        )
        if problem is not None:
            return problem
        record = self._insert(object_type, properties)
        self._associate(object_type, record["id"], payload.get("associations") or [])
        return _json(record, 201)

    def _bad_associations(self, associations: Any) -> web.Response | None:
        if associations is None:
            return None
        if not isinstance(associations, list):
            return _hubspot_error(400, "associations must be a list", "VALIDATION_ERROR")
        for association in associations:
            problem = self._bad_association(association)
            if problem is not None:
                return _hubspot_error(400, problem, "VALIDATION_ERROR")
        return None

    def _bad_association(self, association: Any) -> str | None:
        to = association.get("to") if isinstance(association, dict) else None
        types = association.get("types") if isinstance(association, dict) else None
        if not isinstance(to, dict) or not to.get("id") or not isinstance(types, list) or not types:
            return "Each association needs 'to.id' and a non-empty 'types' list"
        for kind in types:
            if not isinstance(kind, dict) or "associationTypeId" not in kind:
                return "Each association type needs 'associationCategory' and 'associationTypeId'"
            target = HUBSPOT_ASSOCIATION_TARGETS.get(kind["associationTypeId"])
            if target is not None and str(to["id"]) not in self.objects[target]:
                return f"No {target[:-1]} with ID {to['id']} exists to associate with"
        return None

    def _associate(self, object_type: str, object_id: str, associations: list[dict]) -> None:
        for association in associations:
            for kind in association["types"]:
                self.associations.append(
                    {
                        "fromObjectType": object_type,
                        "fromObjectId": object_id,
                        "toObjectId": str(association["to"]["id"]),
                        "associationCategory": kind.get("associationCategory"),
                        "associationTypeId": kind["associationTypeId"],
                    }
                )

    def _lookup(self, request: web.Request, object_type: str) -> dict | None:
        object_id = request.match_info["object_id"]
        id_property = request.query.get("idProperty")
        if id_property:
            return self._find_by(object_type, id_property, object_id)
        return self.objects[object_type].get(object_id)

    async def _get(self, request: web.Request) -> web.Response:
        object_type = self._object_type(request)
        if isinstance(object_type, web.Response):
            return object_type
        record = self._lookup(request, object_type)
        if record is None:
            return self._error(404, {})
        wanted = [p for p in request.query.get("properties", "").split(",") if p]
        return _json(self._shown(object_type, record, wanted))

    async def _update(self, request: web.Request) -> web.Response:
        object_type = self._object_type(request)
        if isinstance(object_type, web.Response):
            return object_type
        record = self._lookup(request, object_type)
        if record is None:
            return self._error(404, {})
        payload = await self._payload(request)
        if isinstance(payload, web.Response):
            return payload
        properties = self._properties(payload.get("properties"))
        if isinstance(properties, web.Response):
            return properties
        problem = self._invalid(object_type, record["properties"] | properties, record["id"])
        if problem is not None:
            return problem
        self._merge(object_type, record, properties)
        return _json(record)

    # ----------------------------------------------------------------------- batch upsert

    async def _batch_upsert(self, request: web.Request) -> web.Response:
        object_type = self._object_type(request)
        if isinstance(object_type, web.Response):
            return object_type
        payload = await self._payload(request)
        if isinstance(payload, web.Response):
            return payload
        inputs = payload.get("inputs")
        problem = self._bad_inputs(inputs) or self._not_unique(object_type, inputs)
        if problem is not None:
            return _hubspot_error(400, problem, "VALIDATION_ERROR")
        started = _iso_z(_now(), millis=True)
        results, errors = [], []
        for item in inputs:
            outcome = self._upsert_one(object_type, item)
            if isinstance(outcome, web.Response):
                errors.append(_standard_error(outcome, item))
            else:
                results.append(outcome)
        body: JsonDict = {
            "status": "COMPLETE",
            "results": results,
            "requestedAt": started,
            "startedAt": started,
            "completedAt": _iso_z(_now(), millis=True),
        }
        if errors:  # the inputs that failed, beside those that did not: 207 Multi-Status
            body |= {"numErrors": len(errors), "errors": errors}
            return _json(body, 207)
        return _json(body, 200)

    @staticmethod
    def _bad_inputs(inputs: Any) -> str | None:
        if not isinstance(inputs, list) or not inputs:
            return "inputs must be a non-empty list"
        if len(inputs) > 100:
            return "Batch input is too large: at most 100 inputs are allowed"
        if not all(isinstance(i, dict) and i.get("idProperty") and i.get("id") for i in inputs):
            return "Each input needs 'idProperty' and 'id'"
        keys = [(str(i["idProperty"]), str(i["id"])) for i in inputs]
        duplicates = sorted({value for prop, value in keys if keys.count((prop, value)) > 1})
        if duplicates:
            return f"Duplicate IDs found in batch input: {duplicates}. IDs must be unique"
        return None

    def _not_unique(self, object_type: str, inputs: list[JsonDict]) -> str | None:
        """HubSpot's answer to an upsert by a property without unique values (``0-1`` is the
        contacts' object type id, ``0-5`` the tickets')."""
        type_id = {"contacts": "0-1", "tickets": "0-5"}.get(object_type, object_type)
        for name in sorted({str(i["idProperty"]) for i in inputs}):
            if name not in self.unique_properties.get(object_type, set()):
                return (
                    f"Unable to perform update/upsert by non-unique {type_id} property {name} "
                    f"in portal ID {HUBSPOT_PORTAL_ID}"
                )
        return None

    def _upsert_one(self, object_type: str, item: JsonDict) -> JsonDict | web.Response:
        properties = self._properties(item.get("properties"))
        if isinstance(properties, web.Response):
            return properties
        id_property, value = str(item["idProperty"]), str(item["id"])
        record = self._find_by(object_type, id_property, value)
        merged = (record["properties"] if record else {id_property: value}) | properties
        problem = self._invalid(object_type, merged, record["id"] if record else None)
        if problem is not None:
            return problem
        if record is None:
            return self._insert(object_type, {id_property: value} | properties) | {"new": True}
        self._merge(object_type, record, properties)
        return record | {"new": False}

    # ----------------------------------------------------------------------- search

    async def _search(self, request: web.Request) -> web.Response:
        object_type = self._object_type(request)
        if isinstance(object_type, web.Response):
            return object_type
        payload = await self._payload(request)
        if isinstance(payload, web.Response):
            return payload
        groups = payload.get("filterGroups") or []
        problem = self._bad_filter_groups(groups)
        if problem is not None:
            return _hubspot_error(400, problem, "VALIDATION_ERROR")
        hits = [r for r in self._searchable(object_type) if self._matches_any(r, groups)]
        limit = min(int(payload.get("limit") or 10), 200)
        start = int(payload.get("after") or 0)
        wanted = [str(p) for p in payload.get("properties") or []]
        page = hits[start : start + limit]
        body: JsonDict = {
            "total": len(hits),
            "results": [self._shown(object_type, r, wanted) for r in page],
        }
        if start + limit < len(hits):
            body["paging"] = {"next": {"after": str(start + limit)}}
        return _json(body)

    @staticmethod
    def _bad_filter_groups(groups: Any) -> str | None:
        if not isinstance(groups, list) or len(groups) > 5:
            return "filterGroups must be a list of at most 5 groups"
        for group in groups:
            filters = group.get("filters") if isinstance(group, dict) else None
            if not isinstance(filters, list) or len(filters) > 6:
                return "Each filter group needs a 'filters' list of at most 6 filters"
            for item in filters:
                if not isinstance(item, dict) or not item.get("propertyName"):
                    return "Each filter needs a 'propertyName'"
                if item.get("operator") not in HUBSPOT_OPERATORS:
                    return f"Unsupported filter operator: {item.get('operator')}"
        return None

    def _searchable(self, object_type: str) -> list[dict]:
        settled = time.monotonic() - self.search_lag_s
        records = self.objects[object_type].values()
        visible = [r for r in records if self._created_at.get(r["id"], 0.0) <= settled]
        return sorted(visible, key=lambda record: int(record["id"]))

    @staticmethod
    def _matches_any(record: dict, groups: list[dict]) -> bool:
        if not groups:
            return True
        return any(
            all(HubSpotStandIn._matches(record, item) for item in group["filters"])
            for group in groups
        )

    @staticmethod
    def _matches(record: dict, item: JsonDict) -> bool:
        """One filter; string comparisons ignore case as HubSpot's search does."""
        current = record["properties"].get(item["propertyName"])
        operator = item["operator"]
        if operator == "HAS_PROPERTY":
            return current not in (None, "")
        if operator == "NOT_HAS_PROPERTY":
            return current in (None, "")
        folded = (current or "").lower()
        if operator == "IN":
            return folded in {str(_hs_value(v)).lower() for v in item.get("values") or []}
        equal = folded == str(_hs_value(item.get("value"))).lower()
        return equal if operator == "EQ" else not equal
