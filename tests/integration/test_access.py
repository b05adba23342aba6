"""Every HTTP endpoint of every service, as the services serve them: whatever could change
something needs the admin token, the views lock, the probes stay open, and the X webhook
answers to X's signature instead (against the embedded broker, for the DLQ endpoints)."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
import yaml
from fastapi import FastAPI

from switchboard.classify.service import ClassifyService
from switchboard.classify.settings import ClassifySettings
from switchboard.ingest.service import IngestService
from switchboard.ingest.settings import IngestSettings
from switchboard.ingest.webhook import SIGNATURE_HEADER, signature
from switchboard.notify.service import NotifyService
from switchboard.notify.settings import NotifySettings
from switchboard.route.feedback import SELF_AUTHENTICATED
from switchboard.route.service import RouteService
from switchboard.route.settings import RouteSettings
from switchboard.shared.runtime import service_app
from tests.conftest import CONFIG_FILE

TOKEN = "admin-token-for-tests"
CONSUMER_SECRET = "consumer-secret-for-tests"
READS = {"GET", "HEAD", "OPTIONS"}
NEEDS_BODY = {"/feedback"}
SIGNED = {"/webhooks/x", *SELF_AUTHENTICATED}  # each answers to its vendor's signature


@pytest.fixture
def config_file(tmp_path, monkeypatch):
    """The example configuration with the webhook on and every view locked."""
    monkeypatch.setenv("SB_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("SB_X_BEARER", "unused")
    monkeypatch.setenv("SB_X_SECRET", CONSUMER_SECRET)
    config = yaml.safe_load(CONFIG_FILE.read_text())
    config["access"] = {"admin_token": {"env": "SB_ADMIN_TOKEN"}, "lock_views": True,
                        "lock_metrics": True}  # fmt: skip
    config["ingest"]["x"]["apps"] = {
        "default": {"bearer_token": {"env": "SB_X_BEARER"},
                    "consumer_secret": {"env": "SB_X_SECRET"}}
    }  # fmt: skip
    config["ingest"]["x"]["webhook"]["enabled"] = True
    path = tmp_path / "switchboard.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def apps(kafka, config_file, classifier) -> dict[str, Callable[[], FastAPI]]:
    """Each service's app as ``run_service`` serves it (``service_app``), classify's too."""

    def built(service_type: type, settings_type: type, **extra: object) -> Callable[[], FastAPI]:
        def build() -> FastAPI:
            settings = settings_type.load(config_file=config_file, kafka=kafka)
            return service_app(service_type(settings, **extra), settings)

        return build

    return {
        "ingest": built(IngestService, IngestSettings),
        "classify": built(ClassifyService, ClassifySettings, model=classifier),
        "route": built(RouteService, RouteSettings),
        "notify": built(NotifyService, NotifySettings),
    }


def endpoints(app: FastAPI) -> list[tuple[str, str]]:
    """Every (method, path) the app serves, as its OpenAPI description lists them."""
    paths = app.openapi()["paths"]
    return sorted((method.upper(), path) for path, item in paths.items() for method in item)


async def request(app: FastAPI, method: str, path: str, **headers: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        return await client.request(method, path, headers=headers)


async def test_every_endpoint_that_changes_something_needs_the_token(apps):
    guarded: list[tuple[str, str, str]] = []
    for service, build in apps.items():
        app = build()
        for method, path in endpoints(app):
            if path in SIGNED or (method in READS and not path.startswith("/admin")):
                continue
            guarded.append((service, method, path))
            anonymous = await request(app, method, path)
            wrong = await request(app, method, path, authorization="Bearer not-the-token")
            assert anonymous.status_code == wrong.status_code == 401, (service, method, path)
            assert "Bearer" in anonymous.headers["www-authenticate"]
            allowed = await request(app, method, path, authorization=f"Bearer {TOKEN}")
            # admitted: done, or (an endpoint that needs a body) told what the body lacks
            expected = 422 if path in NEEDS_BODY else 200
            assert allowed.status_code == expected, (service, method, path, allowed.text)
    assert set(guarded) >= {
        ("route", "POST", "/admin/rules/reload"),
        ("route", "POST", "/feedback"),
        ("notify", "POST", "/admin/dlq/redrive"),
        ("notify", "GET", "/admin/dlq"),
    }


async def test_locked_views_and_metrics_need_the_token_but_probes_do_not(apps):
    locked = {service: ["/metrics"] for service in apps} | {
        "route": ["/metrics", "/ops", "/ops/state", "/ops/compare"]
    }
    for service, build in apps.items():
        app = build()
        for path in locked[service]:
            assert (await request(app, "GET", path)).status_code == 401, (service, path)
            allowed = await request(app, "GET", path, authorization=f"Bearer {TOKEN}")
            assert allowed.status_code == 200, (service, path)
        assert (await request(app, "GET", "/healthz")).status_code == 200, service
        assert (await request(app, "GET", "/readyz")).status_code in (200, 503), service


async def test_the_x_webhook_answers_to_its_signature_not_the_token(apps):
    ingest = apps["ingest"]()
    crc = await request(ingest, "GET", "/webhooks/x?crc_token=abc")
    body = json.dumps({"for_user_id": "1"}).encode()
    transport = httpx.ASGITransport(app=ingest)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        forged = await client.post(
            "/webhooks/x", content=body, headers={SIGNATURE_HEADER: signature(b"guess", body)}
        )
        with_token_only = await client.post(
            "/webhooks/x", content=body, headers={"authorization": f"Bearer {TOKEN}"}
        )
        signed = await client.post(
            "/webhooks/x", content=body,
            headers={SIGNATURE_HEADER: signature(CONSUMER_SECRET.encode(), body)},
        )  # fmt: skip
    assert crc.status_code == 200
    # Signed: past the guard and the signature check (the service is not started, so X is
    # asked to send it again: 503, not 401)
    assert (forged.status_code, with_token_only.status_code, signed.status_code) == (401, 401, 503)


async def test_a_redrive_with_a_mistyped_filter_is_refused_not_applied_to_every_delivery(apps):
    notify = apps["notify"]()
    bearer = f"Bearer {TOKEN}"
    answer = await request(
        notify, "POST", "/admin/dlq/redrive?delivery_id=d-1", authorization=bearer
    )
    assert answer.status_code == 422 and "delivery_id" in answer.text
    listed = await request(notify, "GET", "/admin/dlq?chanel=jira", authorization=bearer)
    assert listed.status_code == 422 and "chanel" in listed.text
