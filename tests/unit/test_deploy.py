"""The deploy files parse, hang together, and use only metrics the services define."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

from switchboard.classify import metrics as classify_metrics
from switchboard.ingest import metrics as ingest_metrics
from switchboard.notify import metrics as notify_metrics
from switchboard.route import metrics as route_metrics
from switchboard.shared import metrics as shared_metrics
from tests.conftest import ROOT, deploy_metric_names

DEPLOY = ROOT / "deploy"
SERVICES = ("ingest", "classify", "route", "notify")


def test_every_yaml_and_json_file_parses():
    for path in DEPLOY.rglob("*"):
        if path.suffix in (".yml", ".yaml"):
            assert yaml.safe_load(path.read_text()) is not None, path
        elif path.suffix == ".json":
            json.loads(path.read_text())


def test_dashboards_have_an_overview_and_a_departments_view_with_variables():
    boards = {
        json.loads(p.read_text())["uid"]: json.loads(p.read_text())
        for p in (DEPLOY / "grafana" / "dashboards").glob("*.json")
    }
    assert set(boards) == {"switchboard-overview", "switchboard-departments"}
    variables = {v["name"] for v in boards["switchboard-departments"]["templating"]["list"]}
    assert {"department", "handle"} <= variables
    for board in boards.values():
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)) and all(p["targets"] for p in board["panels"])


def test_alert_rules_cover_what_ops_must_be_woken_for():
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs = " ".join(r["expr"] for g in rules["groups"] for r in g["rules"])
    for metric in ("switchboard_consumer_lag", "switchboard_deliveries_parked_total",
                   "switchboard_stream_connected", "switchboard_stream_stalls_total",
                   "switchboard_inference_seconds_bucket", "switchboard_spikes_total",
                   "switchboard_sla_breaches_total",
                   "switchboard_timer_failures_total"):  # fmt: skip
        assert metric in exprs, metric
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert rule["annotations"]["summary"]


def test_every_metric_the_deploy_files_use_is_defined():
    # each module registers its metrics on import: the shared ones and each service's own
    modules = (shared_metrics, ingest_metrics, classify_metrics, route_metrics, notify_metrics)
    assert all(module.__name__.endswith(".metrics") for module in modules)
    defined = set()
    for family in REGISTRY.collect():
        defined.add(family.name)
        if family.type == "counter":
            defined.add(f"{family.name}_total")
    assert deploy_metric_names() - defined == set()


def test_compose_runs_each_service_from_one_image_with_pinned_dependencies():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    for name in SERVICES:
        assert services[name]["command"] == [name]
        assert services[name]["image"] == "switchboard:latest"
        assert services[name]["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        # the YAML file the service reads is the host's, in the folder mounted (a service's
        # own environment replaces the shared one whole: each must name it)
        config = Path(services[name]["environment"]["SWITCHBOARD_CONFIG_FILE"])
        mounts = {m.split(":")[1]: m.split(":")[0] for m in services[name]["volumes"]}
        assert mounts[str(config.parent)] == "../config" and config.name == "switchboard.yaml"
        # its port on the host: ingest's for X's webhook, the others' (the ops page, the
        # admin endpoints) on this host only
        port = services[name]["environment"]["SWITCHBOARD_HTTP_PORT"]
        host = "" if name == "ingest" else "127.0.0.1:"
        assert services[name]["ports"] == [f"{host}{port}:{port}"]
    for name in ("kafka", "prometheus", "grafana", "mailpit"):
        image = services[name]["image"]
        assert ":" in image and not image.endswith(":latest"), image
    # the tools hold the emails' tweets and the dashboards: this host only
    for name in ("prometheus", "grafana", "mailpit"):
        assert all(p.startswith("127.0.0.1:") for p in services[name]["ports"]), name
    assert (
        "GRAFANA_ADMIN_PASSWORD:?"
        in services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    )
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    assert sorted(t.split(":")[0] for t in targets) == sorted(SERVICES)


def test_the_compose_stack_has_tweets_to_read_with_the_configuration_it_mounts():
    """Every X source of config/switchboard.yaml is off without tokens: ingest replays the
    sample tweets from the host's folder, or it would read nothing and alert."""
    ingest = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]["ingest"]
    replayed = Path(ingest["environment"]["SWITCHBOARD_REPLAY_FILE"])
    mounts = {m.split(":")[1]: m.split(":")[0] for m in ingest["volumes"]}
    on_host = DEPLOY / mounts[str(replayed.parent)] / replayed.name
    lines = on_host.read_text(encoding="utf-8").splitlines()
    assert len(lines) > 100 and all(json.loads(line)["data"]["text"] for line in lines[:5])


def test_the_image_runs_as_non_root_and_offline():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "USER 10001" in dockerfile and "HF_HUB_OFFLINE=1" in dockerfile
    assert 'ENTRYPOINT ["switchboard"]' in dockerfile
    assert "torch==2.13.0" in dockerfile and Path(ROOT / ".dockerignore").is_file()


def test_the_image_holds_the_runtime_install_and_the_int8_model_built_at_build_time():
    """No dev extra in the image; the train extra only for the model's build, then removed;
    classify pointed at the models built (test_packaging.py serves one without the extras)."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "[dev" not in dockerfile and '".[train]"' in dockerfile
    build = dockerfile.index("switchboard classify build-onnx --all --out /opt/switchboard/onnx")
    assert build < dockerfile.index("pip uninstall -y onnx") < dockerfile.index("FROM", build)
    assert "SWITCHBOARD_ONNX_DIR=/opt/switchboard/onnx" in dockerfile


def test_the_alert_rules_fire_when_their_tests_say(tmp_path):
    """``promtool test rules`` on deploy/prometheus/tests: series in, alerts expected out."""
    rule_tests = sorted((DEPLOY / "prometheus" / "tests").glob("*.test.yml"))
    assert rule_tests, "no rule tests found"
    for rule_test in rule_tests:
        tested = subprocess.run(["promtool", "test", "rules", rule_test.name],
                                cwd=rule_test.parent, capture_output=True, text=True)  # fmt: skip
        assert tested.returncode == 0, tested.stdout + tested.stderr


def test_promtool_accepts_the_alert_rules_and_the_prometheus_config(tmp_path):
    rules = DEPLOY / "prometheus" / "alerts.yml"
    checked = subprocess.run(
        ["promtool", "check", "rules", str(rules)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The config names the rules by their path in the container; point it at the file here.
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["rule_files"] = [str(rules)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    checked = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
