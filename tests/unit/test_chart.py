"""The Helm chart, rendered and linted by Helm's own code (helm-python-sdk binds Helm's Go SDK),
its manifests validated against the Kubernetes 1.31 OpenAPI schemas."""

from __future__ import annotations

import re

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from helm_python.errors import HelmRenderError

from switchboard.route.config import RouteFileConfig
from tests.conftest import ROOT

CHART = ROOT / "charts" / "switchboard"
SERVICES = ("ingest", "classify", "route", "notify")
EVERYTHING_ON = {
    "keda": {"enabled": True},
    "ingress": {"enabled": True, "tls": [{"secretName": "sb-tls", "hosts": ["sb.example.com"]}]},
    "serviceMonitor": {"enabled": True, "bearerTokenSecret": {"name": "sb-admin", "key": "token"}},
    "prometheusRule": {"enabled": True},
    "grafanaDashboards": {"enabled": True},
    "secretEnvFrom": ["switchboard-tokens"],
    "env": {"SWITCHBOARD_ONNX_DIR": "/models/onnx"},
    "kafka": {
        "bootstrapServers": "kafka-0.kafka:9093",
        "securityProtocol": "SASL_SSL",
        "sasl": {
            "mechanism": "SCRAM-SHA-512",
            "username": "switchboard",
            "passwordSecret": {"name": "kafka-password", "key": "password"},
        },
        "tls": {"caSecret": "kafka-ca"},
    },  # fmt: skip
}
CUSTOM_RESOURCES = ("monitoring.coreos.com/", "keda.sh/")


def render(values: dict | None = None) -> list[dict]:
    with helm.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values=values or {}, name="sb")
    return [
        doc
        for path, text in rendered.items()
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def test_helm_lint_finds_no_error():
    result = helm.lint(str(CHART))
    assert result["errors"] == [], result
    assert all(m["severity"] < 3 for m in result["messages"]), result  # INFO/WARNING at most


@pytest.mark.parametrize("values", [{}, EVERYTHING_ON], ids=["defaults", "everything-on"])
def test_every_manifest_validates_against_the_kubernetes_schemas(values):
    docs = render(values)
    for doc in docs:
        if doc["apiVersion"].startswith(CUSTOM_RESOURCES):
            assert doc["metadata"]["name"] and doc["spec"], doc["kind"]
            continue
        kubernetes_validate.validate(doc, "1.31", strict=True)


def workloads(docs: list[dict]) -> list[dict]:
    """The four services' workloads; a test looping over them must never loop over none."""
    found = by_kind(docs, "Deployment") + by_kind(docs, "StatefulSet")
    assert len(found) == len(SERVICES), [d["metadata"]["name"] for d in found]
    return found


def test_a_workload_per_service_non_root_read_only_and_probed():
    deployments = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d
                   for d in workloads(render())}  # fmt: skip
    assert sorted(deployments) == sorted(SERVICES)
    for service, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        [container] = pod["containers"]
        assert container["args"] == [service]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["resources"]["requests"]
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert len(annotations["checksum/config"]) == 64
    assert "replicas" not in deployments["classify"]["spec"]  # the HPA owns it
    # classify's inference workers follow its CPU limit (threads: 0 counts the cgroup quota)
    [classify] = deployments["classify"]["spec"]["template"]["spec"]["containers"]
    assert classify["resources"]["limits"]["cpu"] == "2"
    [hpa] = by_kind(render(), "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "sb-switchboard-classify"


def checksums(values: dict) -> set[str]:
    return {d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            for d in workloads(render(values))}  # fmt: skip


HANDLE = {"handle": "@Other", "user_id": "2", "brand": "O", "segment": "support",
          "default_department": "sales"}  # fmt: skip


def test_a_config_change_a_pod_cannot_apply_rolls_the_pods():
    other = {"config": {"handles": [HANDLE]}}
    assert checksums({}) != checksums(other)
    [configmap] = [
        c for c in by_kind(render(other), "ConfigMap") if c["metadata"]["name"].endswith("-config")
    ]
    # the values given, over the chart's own (three copies of each topic)
    chart_default = {"topics": {"replication_factor": 3}}
    assert yaml.safe_load(configmap["data"]["switchboard.yaml"]) == other["config"] | chart_default
    for at_start in ({"spikes": {"window_minutes": 15}}, {"sla": {"check_interval_s": 5}},
                     {"conversations": {"ttl_hours": 24}}):  # fmt: skip
        assert checksums({}) != checksums({"config": {"route": at_start}}), at_start
    assert checksums({}) != checksums({"config": {"classify": {"batch_size": 64}}})


def test_a_services_own_section_rolls_its_pods_only():
    """Another service's section leaves a pod alone (route and notify would restore their
    tables for nothing); a shared section rolls them all."""

    def by_service(values: dict) -> dict[str, str]:
        return {d["metadata"]["name"].rsplit("-", 1)[1]:
                d["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
                for d in workloads(render(values))}  # fmt: skip

    before = by_service({})
    for section, change in (("notify", {"delivery": {"concurrency": 3}}),
                            ("ingest", {"dedup_capacity": 5000}),
                            ("route", {"sla": {"check_interval_s": 5}}),
                            ("classify", {"batch_size": 64})):  # fmt: skip
        after = by_service({"config": {section: change}})
        assert {s for s in before if before[s] != after[s]} == {section}, section
    shared = by_service({"config": {"topics": {"partitions": 6}}})
    assert all(before[s] != shared[s] for s in before)


def test_a_model_change_reaches_the_running_pods_without_a_restart():
    """classify loads the artifact (or runtime) the mounted file names by itself
    (classify.reload_interval_s): such a change leaves the pods' checksum alone."""
    base = {"config": {"handles": [HANDLE], "classify": {"batch_size": 64}}}
    switched = {"config": {"handles": [HANDLE], "classify": {
        "batch_size": 64, "artifact": "/models/ours-v2", "runtime": "torch"}}}  # fmt: skip
    assert checksums(base) == checksums(switched)


def test_a_routing_rule_change_reaches_the_running_pods_without_a_restart():
    """The ConfigMap is mounted as a directory (kubelet updates it in place; a subPath mount
    never changes), the services read the file in it, and a change to route's rules leaves the
    pods' checksum alone: route reloads the file (route.reload_interval_s)."""
    rule = {"name": "refunds", "when": {"keywords": ["refund"]}, "then": {"route_to": "sales"}}
    ruled = {"config": {"handles": [HANDLE], "route": {"rules": [rule]}}}
    assert checksums({"config": {"handles": [HANDLE]}}) == checksums(ruled)
    # The file the pods read is one route takes (a rule it refused would keep the old rules)
    [config_map] = [
        d for d in by_kind(render(ruled), "ConfigMap") if "switchboard.yaml" in d["data"]
    ]
    mounted = RouteFileConfig.model_validate(yaml.safe_load(config_map["data"]["switchboard.yaml"]))
    assert [r.name for r in mounted.route.rules] == ["refunds"]
    # three copies of each topic by default: one broker's restart or lost disk loses nothing
    assert mounted.topics.replication_factor == 3
    for deployment in workloads(render(ruled)):
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        [mount] = [m for m in container["volumeMounts"] if m["name"] == "config"]
        assert "subPath" not in mount
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["SWITCHBOARD_CONFIG_FILE"] == f"{mount['mountPath']}/switchboard.yaml"


def test_kafka_secrets_and_tls_come_by_reference():
    [deployment, *_] = by_kind(render(EVERYTHING_ON), "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "kafka-password", "key": "password"
    }  # fmt: skip
    assert env["KAFKA_SSL_CAFILE"]["value"] == "/etc/switchboard/kafka-ca/ca.crt"
    assert container["envFrom"] == [{"secretRef": {"name": "switchboard-tokens"}}]
    # or all three through secretEnvFrom (KAFKA_SASL_*): kafka.sasl left empty renders
    assert render({"kafka": {"securityProtocol": "SASL_SSL"}, "secretEnvFrom": ["kafka-sasl"]})


def test_each_pod_joins_its_consumer_groups_under_its_own_name():
    for deployment in workloads(render({})):
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        assert env["KAFKA_GROUP_INSTANCE_ID"]["valueFrom"] == {
            "fieldRef": {"fieldPath": "metadata.name"}
        }


def test_the_stream_processors_keep_their_member_names_and_stores_through_a_rollout():
    """route and notify are static group members with tables: as StatefulSets a replaced pod
    comes back under the same name (its partitions wait for it, not for a session timeout) and
    keeps its stores in the pod's volume across container restarts."""
    docs = render({})
    stateful = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d
                for d in by_kind(docs, "StatefulSet")}  # fmt: skip
    assert sorted(stateful) == ["notify", "route"]
    for service, workload in stateful.items():
        assert workload["spec"]["serviceName"] == f"sb-switchboard-{service}"
        pod = workload["spec"]["template"]["spec"]
        [container] = pod["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert env["SWITCHBOARD_STATE_DIR"] == mounts["state"]
        assert "state" in {v["name"] for v in pod["volumes"]}
        assert "volumeClaimTemplates" not in workload["spec"]


def test_a_persistent_state_volume_is_a_claim_per_pod_that_follows_it():
    """With stateVolume.persistent a rescheduled pod finds its stores on its own claim."""
    docs = render({"stateVolume": {"persistent": True, "size": "5Gi", "storageClassName": "ssd"}})
    stateful = by_kind(docs, "StatefulSet")
    assert len(stateful) == 2
    for workload in stateful:
        [claim] = workload["spec"]["volumeClaimTemplates"]
        assert claim["metadata"]["name"] == "state"
        assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
        assert claim["spec"]["storageClassName"] == "ssd"
        pod = workload["spec"]["template"]["spec"]
        assert "state" not in {v["name"] for v in pod["volumes"]}  # the claim, not an emptyDir
        [container] = pod["containers"]
        assert "state" in {m["name"] for m in container["volumeMounts"]}
    for workload in by_kind(docs, "Deployment"):  # ingest and classify keep no tables
        assert "volumeClaimTemplates" not in workload["spec"]


def test_optional_parts_render_when_enabled():
    docs = render(EVERYTHING_ON)
    [ingress] = by_kind(docs, "Ingress")
    path = ingress["spec"]["rules"][0]["http"]["paths"][0]
    assert path["path"] == "/webhooks/x"
    assert path["backend"]["service"]["name"] == "sb-switchboard-ingest"
    # the webhook's path moved in the configuration: the Ingress follows it
    moved = {"handles": [HANDLE], "ingest": {"x": {"webhook": {"path": "/hooks/x"}}}}
    [ingress] = by_kind(render(EVERYTHING_ON | {"config": moved}), "Ingress")
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["path"] == "/hooks/x"
    [scaled] = by_kind(docs, "ScaledObject")
    assert scaled["spec"]["triggers"][0]["metadata"]["consumerGroup"] == "switchboard-classify"
    assert by_kind(docs, "HorizontalPodAutoscaler") == []  # KEDA owns the scaling then
    [rule] = by_kind(docs, "PrometheusRule")
    deploy_rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"] == deploy_rules
    dashboards = [c for c in by_kind(docs, "ConfigMap") if "dashboard" in c["metadata"]["name"]]
    assert len(dashboards) == 2 and all(c["metadata"]["labels"]["grafana_dashboard"] == "1"
                                        for c in dashboards)  # fmt: skip
    assert len(by_kind(docs, "PodDisruptionBudget")) == 4
    [monitor] = by_kind(docs, "ServiceMonitor")
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"  # with access.lock_metrics, Prometheus sends the token:
    assert endpoint["authorization"] == {
        "type": "Bearer", "credentials": {"name": "sb-admin", "key": "token"}
    }  # fmt: skip
    [plain] = by_kind(render({"serviceMonitor": {"enabled": True}}), "ServiceMonitor")
    assert "authorization" not in plain["spec"]["endpoints"][0]


@pytest.mark.parametrize(
    "values",
    [
        {"kafka": {"bootstrapServers": ""}},
        {"kafka": {"securityProtocol": "TELEPATHY"}},
        {"services": {"classify": {"replicas": -1, "port": 8082, "resources": {}}}},
        {"config": {"handles": []}},
        {"logLevel": "LOUD"},
        # a mistyped key would be dropped silently (no CA mounted: TLS fails at connect)
        {"kafka": {"tls": {"caSecrets": "kafka-ca"}}},
        {"ingres": {"enabled": True}},
        # two ingest pods would close each other's stream (one connection per X app)
        {"services": {"ingest": {"replicas": 2, "port": 8081, "resources": {}}}},
    ],
)
def test_the_values_schema_refuses_bad_values(values):
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmError):
        chart.validate_schema(values)


def test_values_a_parent_chart_shares_are_taken():
    """Installed as a dependency, the chart gets the parent's ``global`` values."""
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema({"global": {"imageRegistry": "registry.example.com"}})


def test_locked_metrics_need_the_token_for_prometheus():
    """With access.lock_metrics, /metrics asks for the admin token: a ServiceMonitor without it
    would be refused at every scrape, so the chart refuses to render it."""
    locked = {
        "handles": [HANDLE],
        "access": {"lock_metrics": True, "admin_token": {"env": "SWITCHBOARD_ADMIN_TOKEN"}},
    }
    without = {"serviceMonitor": {"enabled": True}, "config": locked}
    with pytest.raises(helm.HelmError, match="serviceMonitor.bearerTokenSecret.name"):
        render(without)
    assert by_kind(render(EVERYTHING_ON | {"config": locked}), "ServiceMonitor")


def test_the_chart_ships_the_same_rules_and_dashboards_as_deploy():
    assert (CHART / "files" / "alerts.yml").read_text() == (
        ROOT / "deploy" / "prometheus" / "alerts.yml"
    ).read_text()
    for name in ("overview.json", "departments.json"):
        assert (CHART / "files" / name).read_text() == (
            ROOT / "deploy" / "grafana" / "dashboards" / name
        ).read_text()


def test_a_drain_is_never_blocked_by_a_disruption_budget():
    """A service of one pod must still let a node drain: each budget allows one pod out at a
    time rather than keeping one available, which a single pod cannot give."""
    budgets = by_kind(render(), "PodDisruptionBudget")
    assert len(budgets) == len(SERVICES)
    assert all(b["spec"] == {"maxUnavailable": 1, "selector": b["spec"]["selector"]}
               for b in budgets)  # fmt: skip


def test_keda_reaches_a_broker_that_authenticates_as_classify_does():
    """Without the broker's SASL and TLS settings KEDA's scaler cannot read the lag, and
    classify would never scale on it."""
    docs = render(EVERYTHING_ON)
    [scaled] = by_kind(docs, "ScaledObject")
    [trigger] = scaled["spec"]["triggers"]
    [auth] = by_kind(docs, "TriggerAuthentication")
    assert trigger["metadata"]["sasl"] == "scram_sha512" and trigger["metadata"]["tls"] == "enable"
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    assert auth["spec"]["env"] == [
        {"parameter": "username", "name": "KAFKA_SASL_USERNAME", "containerName": "classify"}
    ]
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": "kafka-password", "key": "password"},
        {"parameter": "ca", "name": "kafka-ca", "key": "ca.crt"},
    ]
    classify = next(
        d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("classify")
    )
    [container] = classify["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "classify"
    assert {"name": "KAFKA_SASL_USERNAME", "value": "switchboard"} in container["env"]
    plain = render({"keda": {"enabled": True}})
    [trigger] = by_kind(plain, "ScaledObject")[0]["spec"]["triggers"]
    assert by_kind(plain, "TriggerAuthentication") == []
    assert "authenticationRef" not in trigger and "sasl" not in trigger["metadata"]


def test_a_service_mounts_the_volumes_it_is_given_as_well_as_its_own():
    """An int8 model built ahead of time (or any other folder) can be mounted into classify's
    pod from a PersistentVolumeClaim; the config, tmp and CA mounts stay."""
    models = {"name": "models", "persistentVolumeClaim": {"claimName": "switchboard-models"}}
    mount = {"name": "models", "mountPath": "/models", "readOnly": True}
    classify = {"replicas": 2, "port": 8082, "resources": {},
                "extraVolumes": [models], "extraVolumeMounts": [mount]}  # fmt: skip
    docs = render({**EVERYTHING_ON, "services": {"classify": classify}})
    by_name = {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment")}
    pod = by_name["sb-switchboard-classify"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert models in pod["volumes"] and mount in container["volumeMounts"]
    assert {"config", "tmp", "kafka-ca"} <= {v["name"] for v in pod["volumes"]}
    ingest = by_name["sb-switchboard-ingest"]["spec"]["template"]["spec"]
    assert "models" not in {v["name"] for v in ingest["volumes"]}
    for doc in docs:
        if not doc["apiVersion"].startswith(CUSTOM_RESOURCES):
            kubernetes_validate.validate(doc, "1.31", strict=True)


def test_ingest_is_replaced_not_rolled_so_two_pods_never_hold_the_stream():
    # X: one filtered-stream connection per app, and a new one closes the open one.
    workloads = {d["metadata"]["name"]: d for d in render() if d["kind"] == "Deployment"}
    assert workloads["sb-switchboard-ingest"]["spec"]["strategy"] == {"type": "Recreate"}
    assert "strategy" not in workloads["sb-switchboard-classify"]["spec"]  # rolls, lag-free


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"kafka": {"sasl": {"mechanism": "PLAIN"}}}, "kafka.sasl.mechanism"),
        ({"kafka": {"securityProtocol": "SASL_PLAINTEXT", "sasl": {"mechanism": "PLAIN"}}},
         "kafka.sasl.passwordSecret.name"),
        ({"kafka": {"securityProtocol": "SASL_SSL", "sasl": {"username": "svc"}}},
         "kafka.sasl.mechanism"),
        ({"kafka": {"tls": {"caSecret": "kafka-ca"}}}, "kafka.tls.caSecret"),
        ({"autoscaling": {"maxReplicas": 8}}, "config.topics.partitions"),
        ({"keda": {"enabled": True, "maxReplicas": 4}}, "config.topics.partitions"),
        ({"autoscaling": {"enabled": False}, "services": {"classify": {"replicas": 4}}},
         "config.topics.partitions"),
    ],
)  # fmt: skip
def test_values_that_cannot_work_together_fail_the_install_naming_the_key(values, key):
    with pytest.raises(HelmRenderError, match=re.escape(key)):
        render(values)


def test_classify_scales_as_far_as_the_partitions_it_is_given():
    config = {"handles": [HANDLE], "topics": {"partitions": 8}}
    [hpa] = by_kind(render({"config": config, "autoscaling": {"maxReplicas": 8}}),
                    "HorizontalPodAutoscaler")  # fmt: skip
    assert hpa["spec"]["maxReplicas"] == 8


def test_a_service_has_environment_of_its_own_over_everyones():
    """A shadow classify is the same chart with SWITCHBOARD_SHADOW on classify alone."""
    shadow = {"SWITCHBOARD_SHADOW": "true", "SWITCHBOARD_LOG_FORMAT": "text"}
    docs = render({"env": {"SWITCHBOARD_LOG_FORMAT": "json", "SMTP_HOST": "smtp.internal"},
                   "services": {"classify": {"env": shadow}}})  # fmt: skip
    for workload in workloads(docs):
        service = workload["metadata"]["labels"]["app.kubernetes.io/component"]
        [container] = workload["spec"]["template"]["spec"]["containers"]
        names = [e["name"] for e in container["env"]]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert len(names) == len(set(names)), names  # one value a variable, not two
        assert env["SMTP_HOST"] == "smtp.internal"
        if service == "classify":
            assert env["SWITCHBOARD_SHADOW"] == "true" and env["SWITCHBOARD_LOG_FORMAT"] == "text"
        else:
            assert "SWITCHBOARD_SHADOW" not in env and env["SWITCHBOARD_LOG_FORMAT"] == "json"


def test_the_ingress_takes_the_vendors_correction_webhooks_to_route_and_nothing_else_of_it():
    [ingress] = by_kind(render(EVERYTHING_ON | {"ingress": {"enabled": True, "feedback": True}}),
                        "Ingress")  # fmt: skip
    paths = {p["path"]: (p["pathType"], p["backend"]["service"]["name"])
             for p in ingress["spec"]["rules"][0]["http"]["paths"]}  # fmt: skip
    assert paths == {
        "/webhooks/x": ("Prefix", "sb-switchboard-ingest"),
        "/feedback/zendesk": ("Exact", "sb-switchboard-route"),
        "/feedback/jira": ("Exact", "sb-switchboard-route"),
    }
    [plain] = by_kind(render(EVERYTHING_ON), "Ingress")
    assert [p["path"] for p in plain["spec"]["rules"][0]["http"]["paths"]] == ["/webhooks/x"]
