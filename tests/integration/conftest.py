"""Fixtures of the integration tests of ingest: a company with two handles on one X app, the
environment its secrets come from, and helpers to build X's payloads."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import yaml

from switchboard.ingest.config import XConfig
from switchboard.ingest.settings import IngestSettings
from switchboard.ingest.webhook import SIGNATURE_HEADER, signature
from tests.conftest import X_APP_TOKEN, X_USER_TOKEN, published
from tests.standins.x_api import WINDOW_S

HELP_ID, IR_ID = "2100000000000000001", "2100000000000000002"
CONSUMER_SECRET = "test-consumer-secret"
_ids = itertools.count(3_000_000_000_000_000_000)
DM_POLL_S = 0.2
DM_DEFAULT_POLL_S = XConfig().direct_messages.interval_s  # X allows 15 DM reads in 15 minutes


def new_id() -> str:
    return str(next(_ids))


@pytest.fixture
def x_env(monkeypatch):
    monkeypatch.setenv("X_APP_TOKEN", X_APP_TOKEN)
    monkeypatch.setenv("X_HELP_USER_TOKEN", X_USER_TOKEN)
    monkeypatch.setenv("X_CONSUMER_SECRET", CONSUMER_SECRET)


@pytest.fixture
def ingest_settings(kafka, x_api, x_env, tmp_path):
    """``ingest_settings(stream=True, mentions=True, ...)``: settings for a two-handle company.

    ``x`` is merged into ``ingest.x`` (``{"retry": {...}}``), ``handles`` are added to the two,
    and ``edit`` may change the rest of the configuration in place.
    Calls to X are retried quickly (a few milliseconds apart) so that tests of failures run fast.
    """

    def build(
        *,
        stream=False,
        mentions=False,
        dms=False,
        webhook=False,
        max_body_bytes=4096,
        x: dict | None = None,
        handles: list[dict] = (),
        edit: Callable[[dict], None] | None = None,
        **extra,
    ) -> IngestSettings:
        fast_reconnect = {
            "network_step_s": 0.05,
            "http_initial_s": 0.1,
            "http_max_s": 0.4,
            "rate_limit_initial_s": 0.2,
        }
        config = {
            "handles": [
                {
                    "handle": "@AcmeHelp",
                    "user_id": HELP_ID,
                    "brand": "Acme",
                    "segment": "support",
                    "default_department": "customer_service",
                    "app": "main",
                    "listen": {"keywords": ["acme outage"], "cashtags": ["ACME"]},
                    "direct_messages": dms,
                    "user_token": {"env": "X_HELP_USER_TOKEN"},
                },
                {
                    "handle": "@AcmeIR",
                    "user_id": IR_ID,
                    "brand": "Acme",
                    "segment": "investor",
                    "default_department": "investor_relations",
                    "app": "main",
                },
            ],
            "ingest": {
                "x": {
                    "apps": {
                        "main": {
                            "bearer_token": {"env": "X_APP_TOKEN"},
                            "consumer_secret": {"env": "X_CONSUMER_SECRET"},
                        }
                    },
                    "filtered_stream": {
                        "enabled": stream,
                        "app": "main",
                        "stall_timeout_s": 1.0,
                        "reconnect": fast_reconnect,
                    },
                    "retry": {"attempts": 3, "initial_s": 0.01, "max_s": 0.05},
                    "mentions": {"enabled": mentions, "interval_s": 0.2, "max_results": 5},
                    "direct_messages": {"enabled": dms, "interval_s": DM_POLL_S, "max_results": 5},
                    "webhook": {
                        "enabled": webhook,
                        "app": "main",
                        "max_body_bytes": max_body_bytes,
                    },
                }
            },
        }
        if dms:  # X's 15 DM reads a window, the window as much shorter as these polls are faster
            x_api.set_rate_limit("/2/dm_events", 15, WINDOW_S * DM_POLL_S / DM_DEFAULT_POLL_S)
        config["handles"] += list(handles)
        config["ingest"]["x"] = merged(config["ingest"]["x"], x or {})
        if edit is not None:
            edit(config)
        path = tmp_path / "switchboard.yaml"
        path.write_text(yaml.safe_dump(config))
        return IngestSettings.load(
            config_file=path, kafka=kafka, x_api_base_url=x_api.base_url, **extra
        )

    return build


@pytest.fixture
def customers(x_api):
    x_api.add_user(HELP_ID, "AcmeHelp")
    x_api.add_user(IR_ID, "AcmeIR")
    return x_api.add_user("42", "ana_flies", followers_count=812), x_api.add_user("43", "bo")


def activity_tweet(
    tweet_id: str, text: str, user: dict, written: datetime | None = None, **extra: object
) -> dict:
    """An Account Activity ``tweet_create_events`` item, written now unless ``written``."""
    return {
        "id_str": tweet_id,
        "created_at": (written or datetime.now(UTC)).strftime("%a %b %d %H:%M:%S +0000 %Y"),
        "text": text,
        "user": user,
        "entities": {"user_mentions": [{"screen_name": "AcmeHelp", "id_str": HELP_ID}]},
        **extra,
    }


def signed(body: bytes) -> dict[str, str]:
    return {SIGNATURE_HEADER: signature(CONSUMER_SECRET.encode(), body)}


def ids_on(records, topic, event_type, wanted):
    return [e.tweet.id for e in published(records, topic, event_type) if e.tweet.id in wanted]


def merged(base: dict, extra: dict) -> dict:
    """``base`` with ``extra`` merged in, nested dictionaries key by key."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = (
            merged(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out
