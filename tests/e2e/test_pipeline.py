"""The four services as separate processes, started through the CLI exactly as a user would."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import httpx
import psutil

from switchboard.cli.stack import sample_ids
from switchboard.shared import topics
from switchboard.shared.broker import free_port
from switchboard.shared.events import RoutedTweet
from switchboard.shared.kafka import ensure_topics
from switchboard.shared.settings import KafkaSettings
from tests.conftest import (
    CONFIG_FILE,
    ROOT,
    SAMPLES,
    SWITCHBOARD,
    clean_environment,
    deploy_metric_names,
    read_topics,
    readable,
    service_environment,
)


def test_demo_from_scratch_accounts_for_every_tweet(tmp_path: Path):
    """What a new user types: no broker, no mail server configured; the demo starts both."""
    env = clean_environment()
    done = subprocess.run(
        [*SWITCHBOARD, "demo", "--count", "200", "--rate", "100", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    summary = json.loads(done.stdout)
    assert summary["sent"] == 200
    assert summary["lost"] == 0 and summary["duplicates"] == 0
    assert sum(summary["routed"].values()) + summary["triage"] + summary["deadletter"] >= 200
    assert len(summary["routed"]) >= 6, summary[
        "routed"
    ]  # the model spreads tweets over departments
    assert summary["deliveries"].get("email", 0) > 0
    assert summary["p50_ms"] is not None and summary["p99_ms"] >= summary["p50_ms"]


async def test_every_tweet_lands_on_one_primary_topic_and_email_arrives(own_kafka, inbox):
    """The demo's services on a broker of their own: every email that arrives is for one of
    this test's tweets, as routed."""
    count = 60
    env = service_environment(own_kafka, SMTP_HOST="127.0.0.1", SMTP_PORT=str(inbox.port))
    done = await asyncio.to_thread(
        subprocess.run,
        [
            *SWITCHBOARD,
            "demo",
            "--count",
            str(count),
            "--rate",
            "100",
            "--json",
            "--config",
            str(CONFIG_FILE),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    sent = sample_ids(SAMPLES, count)

    records = await read_topics(
        own_kafka,
        list(topics.PRIMARY_TOPICS),
        lambda rs: sent <= {event.tweet.id for _, event in readable(rs, RoutedTweet)},
    )
    placements: dict[str, list[str]] = defaultdict(list)
    routed_by_id: dict[str, RoutedTweet] = {}
    for record, event in readable(records, RoutedTweet):
        if event.tweet.id in sent:
            placements[event.tweet.id].append(record.topic)
            routed_by_id[event.tweet.id] = event
            assert record.key == event.tweet.conversation_id.encode()
    assert set(placements) == sent
    assert all(len(found) == 1 for found in placements.values()), {
        k: v for k, v in placements.items() if len(v) > 1
    }

    emails = inbox.messages()
    assert emails, "no email reached the SMTP server"
    for email in emails:
        tweet_id = email["X-Switchboard-Tweet-Id"]
        routed = routed_by_id[tweet_id]
        body = email.get_body(("plain",)).get_content()
        assert routed.tweet.text in body and routed.tweet.url in body
        assert routed.route.destination == "department"


def test_run_stops_every_process_on_ctrl_c(tmp_path: Path):
    env = clean_environment()
    run = subprocess.Popen(
        [*SWITCHBOARD, "run", "--rate", "200", "--workdir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 180
        ingest_log = tmp_path / "logs" / "ingest.log"
        while not (ingest_log.exists() and "replay finished" in ingest_log.read_text()):
            assert run.poll() is None, run.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the samples were not replayed in time"
            time.sleep(0.5)
        children = psutil.Process(run.pid).children(recursive=True)
        assert len(children) >= 5  # broker + four services
        manifest = json.loads((tmp_path / "stack.json").read_text())
        for name, service in manifest["services"].items():
            health = httpx.get(f"{service['http']}/healthz").json()
            assert health == {"status": "ok", "service": name}
            assert httpx.get(f"{service['http']}/readyz").status_code == 200
        route = f"{manifest['services']['route']['http']}/metrics"
        while 'switchboard_tweets_routed_total{department="' not in httpx.get(route).text:
            assert time.monotonic() < deadline, "route published nothing in time"
            time.sleep(0.5)
        route_metrics = httpx.get(route).text
        scraped = "".join(
            httpx.get(f"{s['http']}/metrics").text for s in manifest["services"].values()
        )
        missing = {name for name in deploy_metric_names() if name not in scraped}
        assert not missing, f"dashboards or alert rules query metrics no service exports: {missing}"
        assert "switchboard_e2e_latency_seconds_bucket" in route_metrics
        check_the_ops_page(f"{manifest['services']['route']['http']}/ops")
        run.send_signal(signal.SIGINT)
        assert run.wait(timeout=60) == 0
    finally:
        if run.poll() is None:
            run.kill()
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], f"left behind: {[p.cmdline() for p in alive]}"
    routed = (tmp_path / "logs" / "route.log").read_text().count('"msg": "routed"')
    assert routed > 0


def test_broker_command_serves_kafka_until_interrupted(tmp_path: Path):
    port = free_port()
    broker = subprocess.Popen(
        [*SWITCHBOARD, "broker", "--port", str(port), "--data-dir", str(tmp_path / "data")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        first_line = broker.stdout.readline()
        assert first_line.strip() == f"KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{port}", first_line
        settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}")
        assert asyncio.run(ensure_topics(settings, topics.ALL, 3, 1)) == []  # all created already
        broker.send_signal(signal.SIGINT)
        assert broker.wait(timeout=30) == 0
    finally:
        if broker.poll() is None:
            broker.kill()
    assert (tmp_path / "data").is_dir()


ARTIFACTS = ROOT / "test-artifacts"


def check_the_ops_page(url: str) -> None:
    """Headless Chromium loads the live ops page of the running pipeline: its scripts fetch
    the live state and fill in real numbers. The screenshot is kept in test-artifacts/."""
    ARTIFACTS.mkdir(exist_ok=True)
    chromium = ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                "--virtual-time-budget=8000", "--window-size=1280,1000"]  # fmt: skip
    dom = subprocess.run(
        [*chromium, "--dump-dom", url], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert re.search(r'id="updated">updated ', html), html[-3000:]  # the state was fetched
    total = re.search(r'<span id="total">(\d+)</span>', html)
    assert total and int(total.group(1)) > 0, html[-3000:]
    # departments by the display names of the YAML file's departments
    assert re.search(r"<td>Customer Service</td><td class=\"n\">[1-9]", html), html[-3000:]
    assert re.search(r"<td>ingest</td><td class=\"n\">", html)
    # the latest routed tweets, each with its correct button (POST /feedback), off here: the
    # example configuration sets no admin token, and the button says what it needs
    assert re.search(r'<ul id="recent"><li><button disabled="" title="corrections need '
                     r'access.admin_token[^"]*">correct</button>', html), html[-3000:]  # fmt: skip
    shot = subprocess.run([*chromium, f"--screenshot={ARTIFACTS / 'ops-page.png'}", url],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert shot.returncode == 0 and (ARTIFACTS / "ops-page.png").stat().st_size > 10_000
