"""A full run with known secrets, then every log line searched for them.

The four services run as separate processes (the ``switchboard run`` stack) at DEBUG level,
and every secret is really used: SASL PLAIN against the broker, SMTP AUTH at a loopback mail
server, the X bearer token for mentions polling and the consumer secret for signed webhook
deliveries (forged ones too), the admin token (wrong ones too), vendor tokens at the stand-ins
(HubSpot refuses its token, so deliveries fail and are logged as parked), the webhook signing
secret. Neither a secret nor the mask that would hide one may appear in any log: the code
never tries to log a secret. A configuration error is checked the same way.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from switchboard.cli.load import write_load
from switchboard.cli.stack import Stack, StackOptions
from switchboard.ingest.webhook import SIGNATURE_HEADER, signature
from switchboard.shared.broker import free_port
from switchboard.shared.logs import MASK
from switchboard.shared.settings import ServiceSettings
from tests.conftest import CONFIG_FILE, ROOT, SAMPLES, SWITCHBOARD, clean_environment
from tests.standins.vendors import HubSpotStandIn, JiraStandIn, SalesforceStandIn, ZendeskStandIn
from tests.standins.webhook import WebhookReceiver
from tests.standins.x_api import XApiStandIn

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS"),  # loopback
]

SECRETS = {
    "KAFKA_SASL_PASSWORD": "kafka-sasl-pw-7Hq2",
    "SMTP_PASSWORD": "smtp-pw-Zr81kQ",
    "X_BEARER_TOKEN": "x-bearer-AAAA-9f3k",
    "X_CONSUMER_SECRET": "x-consumer-secret-41Lp",
    "SB_ADMIN_TOKEN": "admin-token-Vb72xx",
    "ZENDESK_TOKEN": "zendesk-token-Qw90",
    "JIRA_TOKEN": "jira-token-Mn33pp",
    "SF_TOKEN": "salesforce-token-Ui5",
    "HUBSPOT_TOKEN": "hubspot-token-Ty6r",
    "HOOK_SECRET": "hook-signing-secret-Pp0",
}
TWEETS = 12
SERVED = ("ingest", "route", "notify")


class AuthInbox:
    """A loopback SMTP server that requires AUTH with one user name and password."""

    def __init__(self, username: str, password: str) -> None:
        self.credentials = (username.encode(), password.encode())
        self.received: list[bytes] = []
        self.port = free_port()
        self.controller = Controller(
            self, hostname="127.0.0.1", port=self.port, authenticator=self._authenticate,
            auth_required=True, auth_require_tls=False,
        )  # fmt: skip

    def _authenticate(self, server, session, envelope, mechanism, data) -> AuthResult:  # noqa: ANN001
        return AuthResult(success=(data.login, data.password) == self.credentials)

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: ANN001 - aiosmtpd
        self.received.append(envelope.original_content)
        return "250 OK"


@pytest.fixture
async def outside(kafka, monkeypatch, tmp_path):
    """The stand-ins, the mail server, and an environment holding every secret."""
    servers = {
        "x": XApiStandIn(bearer_tokens={SECRETS["X_BEARER_TOKEN"]}, keepalive_s=0.5),
        "zendesk": ZendeskStandIn("ops@acme.example", SECRETS["ZENDESK_TOKEN"]),
        "jira": JiraStandIn("ops@acme.example", SECRETS["JIRA_TOKEN"]),
        "salesforce": SalesforceStandIn(SECRETS["SF_TOKEN"]),
        "hubspot": HubSpotStandIn("another-token-entirely"),  # refuses ours
        "webhook": WebhookReceiver(SECRETS["HOOK_SECRET"]),
    }
    for server in servers.values():
        await server.start()
    inbox = AuthInbox("switchboard", SECRETS["SMTP_PASSWORD"])
    inbox.controller.start()
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    for name, value in {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.require_bootstrap(),
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "PLAIN",
        "KAFKA_SASL_USERNAME": "switchboard", "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(inbox.port), "SMTP_USERNAME": "switchboard",
        "SWITCHBOARD_LOG_LEVEL": "DEBUG", "SWITCHBOARD_X_API_BASE_URL": servers["x"].base_url,
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    yield servers | {"inbox": inbox, "config": write_config(tmp_path / "switchboard.yaml", servers)}
    inbox.controller.stop()
    for server in servers.values():
        await server.stop()


def write_config(path: Path, servers: dict) -> Path:
    config = yaml.safe_load(CONFIG_FILE.read_text())
    everyone = {"departments": list(config["departments"])}
    config["access"] = {"admin_token": {"env": "SB_ADMIN_TOKEN"}, "lock_views": True}
    config["ingest"]["x"]["mentions"] = {"enabled": True, "interval_s": 2, "max_results": 5}
    config["ingest"]["x"]["webhook"]["enabled"] = True
    config["notify"]["delivery"] = {"attempts": 2, "max_wait_s": 0.2, "timeout_s": 2}
    config["notify"]["connections"] = {
        "zendesk": {"base_url": servers["zendesk"].base_url, "email": "ops@acme.example",
                    "api_token": {"env": "ZENDESK_TOKEN"}},
        "jira": {"base_url": servers["jira"].base_url, "email": "ops@acme.example",
                 "api_token": {"env": "JIRA_TOKEN"}},
        "salesforce": {"instance_url": servers["salesforce"].base_url,
                       "access_token": {"env": "SF_TOKEN"}},
        "hubspot": {"base_url": servers["hubspot"].base_url, "token": {"env": "HUBSPOT_TOKEN"}},
    }  # fmt: skip
    config["notify"]["subscriptions"] = [
        {"name": "all-mail", "to": ["ops@acme.example"], **everyone},
        {"name": "all-hook", "channel": "webhook", **everyone,
         "webhook": {"url": servers["webhook"].url, "secret": {"env": "HOOK_SECRET"}}},
        {"name": "all-desk", "channel": "zendesk", **everyone},
        {"name": "all-board", "channel": "jira", "jira": {"project": "OPS"}, **everyone},
        {"name": "all-leads", "channel": "salesforce", **everyone},
        {"name": "all-fans", "channel": "hubspot", **everyone},
    ]  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    return path


def seed_mentions(x: XApiStandIn, config_file: Path) -> None:
    for handle in ServiceSettings.load(config_file=config_file).config.handles:
        x.add_user(handle.user_id, handle.username)
    x.add_user("777", "ana_flies")
    help_id = "1500000000000000002"  # @SkylarkHelp
    x.add_mention(help_id, x.make_tweet("9100000000000000001",
                                         "@SkylarkHelp my bag never arrived", "777"))  # fmt: skip


async def use_every_secret(stack: Stack) -> None:
    """Calls that make the services handle the webhook secret and the admin token, right
    and wrong."""
    ingest, route, notify = (f"http://127.0.0.1:{stack.ports[s]}" for s in SERVED)
    token = SECRETS["SB_ADMIN_TOKEN"]
    bearer, wrong = {"authorization": f"Bearer {token}"}, {"authorization": "Bearer wrong"}
    now = time.strftime("%a %b %d %H:%M:%S +0000 %Y", time.gmtime())
    event = {"id_str": "9100000000000000002", "created_at": now, "text": "@SkylarkHelp refund?",
             "user": {"id_str": "778", "screen_name": "bo"},
             "entities": {"user_mentions": [{"screen_name": "SkylarkHelp",
                                             "id_str": "1500000000000000002"}]}}  # fmt: skip
    body = json.dumps({"for_user_id": "1500000000000000002", "tweet_create_events": [event]})
    signed = {SIGNATURE_HEADER: signature(SECRETS["X_CONSUMER_SECRET"].encode(), body.encode())}
    basic = "Basic " + base64.b64encode(f"ops:{token}".encode()).decode()
    forged = {SIGNATURE_HEADER: signature(b"guess", body.encode())}
    hook, reload = f"{ingest}/webhooks/x", f"{route}/admin/rules/reload"
    async with httpx.AsyncClient(timeout=10) as client:
        statuses = [
            (await client.get(hook, params={"crc_token": "c"})).status_code,
            (await client.post(hook, content=body, headers=signed)).status_code,
            (await client.post(hook, content=body, headers=signed)).status_code,  # a replay
            (await client.post(hook, content=body, headers=forged)).status_code,
            (await client.post(reload, headers=wrong)).status_code,
            (await client.post(reload, headers=bearer)).status_code,
            (await client.get(f"{route}/ops/state", headers={"authorization": basic})).status_code,
            (await client.get(f"{route}/ops")).status_code,
            (await client.get(f"{notify}/admin/dlq", headers=bearer)).status_code,
        ]
    assert statuses == [200, 200, 200, 401, 401, 200, 200, 401, 200]


async def test_no_secret_reaches_any_log(outside, tmp_path, caplog):
    caplog.set_level("INFO")
    seed_mentions(outside["x"], outside["config"])
    # Fresh tweet ids: a cluster shared between tests may hold the samples already, and ingest
    # would drop them as duplicates.
    replay = tmp_path / "tweets.jsonl"
    sent = write_load(SAMPLES, TWEETS, replay, 3_000_000_000_000_000_000 + time.time_ns() // 1000)
    stack = Stack(StackOptions(workdir=tmp_path / "run", config_file=outside["config"],
                               replay_file=replay, rate_per_s=50, limit=TWEETS))  # fmt: skip
    try:
        await stack.start()
        await use_every_secret(stack)
        deadline = time.monotonic() + 240
        while not (not stack.tally.unaccounted(sent) and stack.tally.deliveries_settled()
                   and stack.tally.failed_deliveries["hubspot"] and outside["inbox"].received
                   and outside["webhook"].received and outside["x"].requests):  # fmt: skip
            assert all(stack.alive().values()), stack.alive()
            assert time.monotonic() < deadline, stack.tally.summary(sent)
            await asyncio.sleep(0.5)
    finally:
        await stack.stop()

    logs = {path.name: path.read_text(errors="replace") for path in stack.logs.glob("*.log")}
    assert {"ingest.log", "classify.log", "route.log", "notify.log"} <= set(logs)
    assert "delivery parked" in logs["notify.log"] and "routed" in logs["route.log"]
    assert "refused" in logs["route.log"]  # the wrong admin token was logged, not shown
    logs["test process"] = caplog.text
    for where, text in logs.items():
        for name, secret in SECRETS.items():
            assert secret not in text, f"{name} in {where}"
        assert MASK not in text, f"{where}: something tried to log a secret"


def test_a_configuration_error_names_the_variable_not_the_secret(tmp_path):
    env = clean_environment()
    env |= {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "KAFKA_SASL_PASSWORD": "sasl-pw-Xy81zz",
            "SWITCHBOARD_CONFIG_FILE": str(CONFIG_FILE)}  # fmt: skip
    done = subprocess.run([*SWITCHBOARD, "notify"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "KAFKA_SASL_PASSWORD" in output, output[-2000:]
    assert "sasl-pw-Xy81zz" not in output
