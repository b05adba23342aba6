"""Who may call the services' HTTP endpoints (``access`` in the YAML file).

- The probes, ``/healthz`` and ``/readyz``, are always open (Kubernetes calls them).
- Paths that authenticate each request themselves are open here: the X webhook checks X's
  signature (ingest/webhook.py).
- Every other request that could change something (any method but GET, HEAD and OPTIONS) and
  everything under ``/admin`` needs the admin token; without a configured token those
  requests are refused, so nothing can change by accident.
- The read-only views (``/ops``, ``/ops/state``) need it with ``lock_views``, and ``/metrics``
  with ``lock_metrics``.

The token is sent as ``Authorization: Bearer <token>``, or as the password of HTTP Basic
authentication (any user name), which lets a browser open a locked ops page. It is compared in
constant time; a missing or wrong one is answered 401 with ``WWW-Authenticate``. The guard is
ASGI middleware, so an endpoint added later is covered without doing anything.

A browser that has the Basic credentials attaches them to requests other sites' pages make to
the service too: a change asked for by a page of another site (``Sec-Fetch-Site``: cross-site
or same-site, which browsers set and pages cannot) is refused 403, whatever it carries.
Scripts send no such header; the ops page's own requests are same-origin.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from pydantic import SecretStr
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from switchboard.shared.config import AccessConfig
from switchboard.shared.settings import read_secret

log = logging.getLogger(__name__)

PROBES = frozenset({"/healthz", "/readyz"})
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CHALLENGES = ('Bearer realm="switchboard"', 'Basic realm="switchboard", charset="UTF-8"')


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    token: SecretStr | None = None
    lock_views: bool = False
    lock_metrics: bool = False
    self_authenticated: frozenset[str] = frozenset()

    @classmethod
    def of(cls, config: AccessConfig, self_authenticated: Iterable[str] = ()) -> AccessPolicy:
        """The policy ``config`` describes; the token is read now, so a missing one fails at
        start naming ``access.admin_token``."""
        token = None
        if config.admin_token is not None:
            token = read_secret(config.admin_token, "access.admin_token")
        return cls(token, config.lock_views, config.lock_metrics, frozenset(self_authenticated))

    def needs_token(self, method: str, path: str) -> bool:
        if path in PROBES or path in self.self_authenticated:
            return False
        if method.upper() not in READ_METHODS or path == "/admin" or path.startswith("/admin/"):
            return True
        return self.lock_metrics if path == "/metrics" else self.lock_views

    def admits(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries the token (constant-time comparison)."""
        given = _credential(authorization or "")
        if self.token is None or given is None:
            return False
        return hmac.compare_digest(given.encode(), self.token.get_secret_value().encode())


def _credential(authorization: str) -> str | None:
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[2]


class AccessGuard:
    """ASGI middleware that applies an ``AccessPolicy`` to every HTTP request."""

    def __init__(self, app: ASGIApp, policy: AccessPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.policy.needs_token(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if _from_another_site(scope["method"], headers):
            log.info("refused: a change asked by another site's page",
                     extra={"method": scope["method"], "path": scope["path"][:200]})  # fmt: skip
            detail = "refused: asked by a page of another site"
            await JSONResponse({"detail": detail}, status_code=403)(scope, receive, send)
            return
        if self.policy.admits(headers.get("authorization")):
            await self.app(scope, receive, send)
            return
        await _refusal(self.policy, scope)(scope, receive, send)


def _from_another_site(method: str, headers: Headers) -> bool:
    """A request that would change something, made by a page of another site: the browser's
    own Fetch Metadata header says so, or, where a browser sends none (a site on plain HTTP
    other than localhost), its ``Origin`` is not the host asked (``null``: an opaque one)."""
    if method.upper() in READ_METHODS:
        return False
    site = headers.get("sec-fetch-site")
    if site is not None:  # the browser's own word, whatever a proxy did to Host
        return site.lower() in ("cross-site", "same-site")
    origin = headers.get("origin")
    if origin is None:
        return False  # not a browser's cross-origin request (they send Origin on a POST)
    forwarded = (headers.get("x-forwarded-host") or "").split(",")  # one per proxy
    asked = {h.strip().lower() for h in [headers.get("host") or "", *forwarded] if h.strip()}
    return origin == "null" or urlsplit(origin).netloc.lower() not in asked


def _refusal(policy: AccessPolicy, scope: Scope) -> JSONResponse:
    where = {"method": scope["method"], "path": scope["path"][:200]}
    if policy.token is None:
        log.info("refused: no admin token is configured", extra=where)
        detail = "this endpoint is off: set access.admin_token to use it"
        return JSONResponse({"detail": detail}, status_code=403)
    log.info("refused: missing or wrong admin token", extra=where)
    response = JSONResponse({"detail": "missing or wrong admin token"}, status_code=401)
    for challenge in CHALLENGES:
        response.headers.append("WWW-Authenticate", challenge)
    return response
