"""The access policy of the services' HTTP endpoints (shared/access.py), without a broker."""

from __future__ import annotations

import base64

import httpx
import pytest
from fastapi import APIRouter
from pydantic import SecretStr, ValidationError

from switchboard.shared.access import AccessPolicy
from switchboard.shared.config import AccessConfig
from switchboard.shared.runtime import http_app
from switchboard.shared.settings import ConfigError

TOKEN = "s3cret-admin-token"
LOCKED = AccessPolicy(SecretStr(TOKEN), lock_views=True, lock_metrics=True,
                      self_authenticated=frozenset({"/webhooks/x"}))  # fmt: skip
OPEN_VIEWS = AccessPolicy(SecretStr(TOKEN))


def basic(password: str, user: str = "ops") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("policy", "method", "path", "needed"),
    [
        (OPEN_VIEWS, "GET", "/healthz", False), (LOCKED, "GET", "/healthz", False),
        (LOCKED, "GET", "/readyz", False), (LOCKED, "POST", "/webhooks/x", False),
        (OPEN_VIEWS, "POST", "/anything", True), (OPEN_VIEWS, "PUT", "/ops", True),
        (OPEN_VIEWS, "DELETE", "/x", True), (OPEN_VIEWS, "PATCH", "/x", True),
        (OPEN_VIEWS, "GET", "/admin/dlq", True), (OPEN_VIEWS, "HEAD", "/admin", True),
        (OPEN_VIEWS, "GET", "/ops", False), (LOCKED, "GET", "/ops", True),
        (LOCKED, "GET", "/ops/state", True), (OPEN_VIEWS, "GET", "/metrics", False),
        (LOCKED, "GET", "/metrics", True), (OPEN_VIEWS, "GET", "/administrator", False),
    ],
)  # fmt: skip
def test_what_needs_the_token(policy, method, path, needed):
    assert policy.needs_token(method, path) is needed


@pytest.mark.parametrize(
    ("header", "admitted"),
    [
        (f"Bearer {TOKEN}", True), (f"bearer  {TOKEN} ", True), (basic(TOKEN), True),
        (basic(TOKEN, user=""), True), (None, False), ("", False), ("Bearer", False),
        (f"Bearer {TOKEN}x", False), (f"Bearer {TOKEN[:-1]}", False), (TOKEN, False),
        (basic("wrong"), False), ("Basic !!!not-base64", False), (f"Token {TOKEN}", False),
        ("Bearer s3cret-admin-tokén", False),
    ],
)  # fmt: skip
def test_only_the_token_is_admitted(header, admitted):
    assert LOCKED.admits(header) is admitted


def test_without_a_token_nothing_is_admitted():
    assert not AccessPolicy().admits("Bearer ") and not AccessPolicy().admits("Bearer x")


def test_locks_need_a_token_and_a_missing_one_is_named(monkeypatch):
    with pytest.raises(ValidationError, match="admin_token: lock_views and lock_metrics need it"):
        AccessConfig(lock_views=True)
    config = AccessConfig(admin_token={"env": "SB_TEST_ADMIN_TOKEN"}, lock_views=True)
    monkeypatch.delenv("SB_TEST_ADMIN_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="access.admin_token.env: environment variable"):
        AccessPolicy.of(config)
    monkeypatch.setenv("SB_TEST_ADMIN_TOKEN", TOKEN)
    policy = AccessPolicy.of(config)
    assert policy.admits(f"Bearer {TOKEN}") and TOKEN not in repr(policy)


class _Service:
    name = "test"
    ready = True


def app_with_a_write(policy: AccessPolicy):
    app = http_app(_Service(), policy)
    router = APIRouter()

    @router.post("/admin/thing")
    async def change() -> dict[str, bool]:
        return {"changed": True}

    @router.get("/ops")
    async def view() -> dict[str, bool]:
        return {"seen": True}

    app.include_router(router)
    return app


async def call(policy: AccessPolicy, method: str, path: str, **headers: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app_with_a_write(policy))
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        return await client.request(method, path, headers=headers)


async def test_refusals_say_how_to_authenticate():
    refused = await call(LOCKED, "POST", "/admin/thing", authorization="Bearer nope")
    assert refused.status_code == 401
    challenges = refused.headers.get_list("www-authenticate")
    assert any(c.startswith("Bearer") for c in challenges)
    assert any(c.startswith("Basic") for c in challenges)
    assert TOKEN not in refused.text
    allowed = await call(LOCKED, "POST", "/admin/thing", authorization=f"Bearer {TOKEN}")
    assert allowed.status_code == 200 and allowed.json() == {"changed": True}


async def test_a_browser_opens_a_locked_view_with_basic_auth():
    assert (await call(LOCKED, "GET", "/ops")).status_code == 401
    assert (await call(LOCKED, "GET", "/ops", authorization=basic(TOKEN))).status_code == 200
    assert (await call(OPEN_VIEWS, "GET", "/ops")).status_code == 200


async def test_probes_stay_open_and_metrics_lock():
    assert (await call(LOCKED, "GET", "/healthz")).status_code == 200
    assert (await call(LOCKED, "GET", "/readyz")).status_code == 200
    assert (await call(LOCKED, "GET", "/metrics")).status_code == 401
    assert (await call(OPEN_VIEWS, "GET", "/metrics")).status_code == 200


async def test_without_a_configured_token_writes_are_off():
    refused = await call(AccessPolicy(), "POST", "/admin/thing", authorization="Bearer ")
    assert refused.status_code == 403 and "access.admin_token" in refused.json()["detail"]


async def test_a_change_asked_by_another_sites_page_is_refused_even_with_the_token():
    # A browser attaches its cached Basic credentials to another site's request as well, and
    # says where the request comes from (Fetch Metadata), which a page cannot change.
    for site in ("cross-site", "same-site"):
        forged = await call(LOCKED, "POST", "/admin/thing", authorization=basic(TOKEN),
                            **{"sec-fetch-site": site})  # fmt: skip
        assert forged.status_code == 403 and "another site" in forged.text, site
    own_page = await call(LOCKED, "POST", "/admin/thing", authorization=basic(TOKEN),
                          **{"sec-fetch-site": "same-origin"})  # fmt: skip
    assert own_page.status_code == 200
    script = await call(LOCKED, "POST", "/admin/thing", authorization=f"Bearer {TOKEN}")
    assert script.status_code == 200
    view = await call(LOCKED, "GET", "/ops", authorization=basic(TOKEN),
                      **{"sec-fetch-site": "cross-site"})  # fmt: skip
    assert view.status_code == 200  # reading is not changing (and the page cannot read it)


async def test_a_change_from_another_origin_over_plain_http_is_refused_even_with_the_token():
    """Over plain HTTP to a host other than localhost a browser sends no Fetch Metadata, but it
    names the page's origin on every POST: another site's, or an opaque one, is refused."""
    for origin in ("http://evil.example", "http://svc:8080", "null"):
        forged = await call(LOCKED, "POST", "/admin/thing", authorization=basic(TOKEN),
                            origin=origin)  # fmt: skip
        assert forged.status_code == 403 and "another site" in forged.text, origin
    own_page = await call(LOCKED, "POST", "/admin/thing", authorization=basic(TOKEN),
                          origin="http://svc")  # fmt: skip
    assert own_page.status_code == 200
    proxied = await call(LOCKED, "POST", "/admin/thing", authorization=basic(TOKEN),
                         origin="https://ops.example.com",
                         **{"x-forwarded-host": "ops.example.com, edge.internal"})  # fmt: skip
    assert proxied.status_code == 200
    # a proxy that rewrote Host and said nothing: the browser's Fetch Metadata decides
    rewritten = await call(LOCKED, "POST", "/admin/thing", authorization=basic(TOKEN),
                           origin="https://ops.example.com",
                           **{"sec-fetch-site": "same-origin"})  # fmt: skip
    assert rewritten.status_code == 200
