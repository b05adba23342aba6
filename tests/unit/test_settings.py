"""Configuration: the example file is valid; a wrong value fails at start and names its key."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from switchboard.classify.settings import ClassifySettings
from switchboard.cli.config import PipelineSettings
from switchboard.ingest.settings import IngestSettings
from switchboard.notify.settings import NotifySettings
from switchboard.route.settings import RouteSettings
from switchboard.shared.settings import ConfigError, read_yaml

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "switchboard.yaml"


@pytest.fixture
def write_config(tmp_path: Path):
    def write(mutate) -> Path:
        content = yaml.safe_load(EXAMPLE.read_text())
        mutate(content)
        path = tmp_path / "switchboard.yaml"
        path.write_text(yaml.safe_dump(content))
        return path

    return write


SERVICE_SETTINGS = {
    "ingest": IngestSettings,
    "classify": ClassifySettings,
    "route": RouteSettings,
    "notify": NotifySettings,
}


@pytest.mark.parametrize(
    ("mutate", "key", "stopped"),
    [
        (lambda c: c["notify"].update(subscriptionz=[]), "notify.subscriptionz", {"notify"}),
        (
            lambda c: c["route"].update(confidance_threshold=0.5),
            "route.confidance_threshold",
            {"route"},
        ),  # fmt: skip
        (lambda c: c["classify"].update(batch_size=0), "classify.batch_size", {"classify"}),
        (
            lambda c: c["ingest"].update(replay_rate_per_s=-1),
            "ingest.replay_rate_per_s",
            {"ingest"},
        ),  # fmt: skip
        (
            lambda c: c["handles"][1].update(segment="Support Desk"),
            "handles[1].segment",
            set(SERVICE_SETTINGS),
        ),  # fmt: skip
        (lambda c: c.update(notfy={}), "notfy", set(SERVICE_SETTINGS)),
    ],
)
def test_a_service_is_stopped_only_by_the_sections_it_reads(write_config, mutate, key, stopped):
    """A typo in notify's section stops notify, not ingest; the shared sections and a misspelt
    section name stop every service."""
    path = write_config(mutate)
    for name, settings in SERVICE_SETTINGS.items():
        if name not in stopped:
            settings.load(config_file=path)
            continue
        with pytest.raises(ConfigError) as caught:
            settings.load(config_file=path)
        assert f"config key {key}:" in str(caught.value), name


def test_example_config_is_valid():
    config = PipelineSettings.load(config_file=EXAMPLE).config
    assert {h.segment for h in config.handles} >= {"support", "promotions", "investor", "news"}
    assert config.notify.subscriptions


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (lambda c: c["handles"][1].update(segment="Support Desk"), "handles[1].segment"),
        (
            lambda c: c["handles"][0].update(default_department="billing"),
            "handles[0].default_department",
        ),
        (lambda c: c["route"].update(confidence_threshold=1.5), "route.confidence_threshold"),
        (lambda c: c["route"].update(confidance_threshold=0.5), "route.confidance_threshold"),
        (
            lambda c: c["notify"]["subscriptions"][0].update(to=["not-an-address"]),
            "notify.subscriptions[0].to[0]",
        ),
        (lambda c: c["classify"].update(batch_size=0), "classify.batch_size"),
        # a TTL past datetime's range made every SLA sweep crash the worker
        (
            lambda c: c["route"].setdefault("conversations", {}).update(ttl_hours=1e9),
            "route.conversations.ttl_hours",
        ),
        (
            lambda c: c["route"].setdefault("sla", {}).update(minutes={"critical": 0}),
            "route.sla.minutes.critical",
        ),
        # an alerting SLA as long as the conversation is kept would never alert
        (
            lambda c: c["route"].setdefault("conversations", {}).update(ttl_hours=0.25),
            "route.sla.minutes.critical",
        ),
        (lambda c: c["ingest"]["x"]["webhook"].update(max_event_age_hours=100),
         "ingest.x.webhook.max_event_age_hours"),
        (lambda c: c.update(access={"lock_views": True}), "access.admin_token"),
        (lambda c: c["notify"].update(redact={"emails": True}), "notify.redact.emails"),
        (
            lambda c: c["notify"].setdefault("delivery", {}).update(rate_per_s={"zendesk": 0}),
            "notify.delivery.rate_per_s.zendesk",
        ),
        (
            lambda c: c["notify"]["subscriptions"].append(
                {
                    "name": "desk",
                    "channel": "zendesk",
                    "departments": ["legal"],
                    "priority": {"critical": "P1"},
                }  # fmt: skip
            ),
            "notify.subscriptions[5].priority",
        ),
        # the webhook answers X without a token: on /metrics it would open what lock_metrics
        # closes, on a probe's path X's check would never reach it
        (lambda c: c["ingest"]["x"]["webhook"].update(path="/metrics"), "ingest.x.webhook.path"),
        (lambda c: c["ingest"]["x"]["webhook"].update(path="/healthz/"), "ingest.x.webhook.path"),
        (lambda c: c["notify"]["subscriptions"][0].update(urgencies=[]),
         "notify.subscriptions[0].urgencies"),
        (lambda c: c["notify"]["subscriptions"][0].update(digest_minutes=60,
                                                           digest_urgencies=["critical"]),
         "notify.subscriptions[0].digest_urgencies"),
        (lambda c: c["notify"]["subscriptions"][0].update(digest_urgencies=["normal"]),
         "notify.subscriptions[0].digest_urgencies"),  # no digest_minutes: no digest
        (lambda c: c["notify"]["email"].update(sender="Switchboard"), "notify.email.sender"),
        (lambda c: c["notify"]["subscriptions"].append(
            {"name": "soc", "channel": "webhook", "departments": ["it_security"],
             "to": ["soc@example.com"], "webhook": {"url": "https://soc.example.com/hook",
                                                  "secret": {"env": "SOC_SECRET"}}}),
         "notify.subscriptions[5].to"),  # recipients a webhook never has
    ],
)  # fmt: skip
def test_a_bad_value_names_its_key(write_config, mutate, key):
    with pytest.raises(ConfigError) as caught:
        PipelineSettings.load(config_file=write_config(mutate))
    assert f"config key {key}:" in str(caught.value)


def test_a_bad_rule_names_the_rule_and_its_key(write_config):
    def break_rule(config):
        config["route"]["rules"][1]["when"]["segmentz"] = ["investor"]

    with pytest.raises(ConfigError) as caught:
        PipelineSettings.load(config_file=write_config(break_rule))
    message = str(caught.value)
    assert (
        "config key route.rules[1].when.segmentz (rule 'investors-asking-about-outages')" in message
    )


@pytest.mark.parametrize(
    ("when", "message"),
    [
        (
            {"handles": ["@SkylarkHlep"]},
            r"config key route.rules\[1\].when.handles \(rule 'investors-asking-about-outages'\): ",
        ),
        (
            {"segments": ["investr"]},
            r"config key route.rules\[1\].when.segments \(rule 'investors-asking-about-outages'\): "
            "no handle has the segment 'investr'",
        ),
        ({"languages": ["EN"]}, r"route.rules\[1\].when.languages.0"),
    ],
)
def test_a_rule_naming_what_the_file_does_not_have_is_refused(write_config, when, message):
    """Such a rule is valid in shape and would never match: refused at start and at reload."""

    def misname(config: dict) -> None:
        config["route"]["rules"][1]["when"] = when

    with pytest.raises(ConfigError, match=message):
        RouteSettings.load(config_file=write_config(misname))


def test_a_repeated_handle_is_refused(write_config):
    path = write_config(lambda c: c["handles"].append(dict(c["handles"][0])))
    with pytest.raises(ConfigError, match="@SkylarkAir is already handles\\[0\\]"):
        PipelineSettings.load(config_file=path)


def test_one_x_account_named_by_two_handles_is_refused(write_config):
    def twice(config: dict) -> None:
        config["handles"][1]["user_id"] = config["handles"][0]["user_id"]

    with pytest.raises(ConfigError, match=r"handles\[1\].user_id: \d+ is already handles\[0\]"):
        PipelineSettings.load(config_file=write_config(twice))


def test_merge_keys_and_anchors_still_read(tmp_path: Path):
    """``<<: *anchor`` then a key of its own overrides the anchor's by design."""
    text = EXAMPLE.read_text(encoding="utf-8") + (
        "\nx-base: &base {enabled: true, window_minutes: 5}\n"
        "x-other: {<<: *base, window_minutes: 10}\n"
    )
    path = tmp_path / "switchboard.yaml"
    path.write_text(text, encoding="utf-8")
    assert read_yaml(path)["x-other"] == {"enabled": True, "window_minutes": 10}


def test_a_key_given_twice_is_refused_not_overwritten(tmp_path: Path):
    """PyYAML keeps the last of two keys: a second route section dropped the first's rules."""
    text = EXAMPLE.read_text(encoding="utf-8") + "\nroute:\n  confidence_threshold: 0.6\n"
    path = tmp_path / "switchboard.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="key 'route' is given twice"):
        PipelineSettings.load(config_file=path)


def test_a_missing_file_says_which_variable_points_at_it(tmp_path: Path):
    with pytest.raises(
        ConfigError, match="SWITCHBOARD_CONFIG_FILE: configuration file .* does not exist"
    ):
        PipelineSettings.load(config_file=tmp_path / "nope.yaml")


def test_a_bad_environment_variable_is_named(monkeypatch):
    monkeypatch.setenv("SWITCHBOARD_HTTP_PORT", "eighty")
    with pytest.raises(ConfigError, match="environment: SWITCHBOARD_HTTP_PORT"):
        PipelineSettings.load(config_file=EXAMPLE)
    monkeypatch.delenv("SWITCHBOARD_HTTP_PORT")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SMOKE_SIGNALS")
    with pytest.raises(ConfigError, match="environment: KAFKA_SECURITY_PROTOCOL"):
        PipelineSettings.load(config_file=EXAMPLE)
    monkeypatch.delenv("KAFKA_SECURITY_PROTOCOL")
    # each of these ended in aiokafka's traceback later
    for servers in ("localhost:notaport", "   ", "kafka-0:9092,", "PLAINTEXT://kafka:9092", "::1"):
        monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", servers)
        with pytest.raises(ConfigError, match="environment: KAFKA_BOOTSTRAP_SERVERS: .* host:port"):
            PipelineSettings.load(config_file=EXAMPLE)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS")
    # smaller than the largest record route writes (a conversation's latest tweets)
    monkeypatch.setenv("KAFKA_MAX_MESSAGE_BYTES", "524288")
    with pytest.raises(ConfigError, match="environment: KAFKA_MAX_MESSAGE_BYTES"):
        PipelineSettings.load(config_file=EXAMPLE)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"SMTP_TLS": "true", "SMTP_STARTTLS": "true"}, "SMTP_TLS and SMTP_STARTTLS: one or"),
        ({"SMTP_HOST": ""}, "environment: SMTP_HOST"),
        ({"SWITCHBOARD_KAFKA__BOOTSTRAP_SERVERS": "kafka:9092"},
         "SWITCHBOARD_KAFKA__BOOTSTRAP_SERVERS: Kafka's and the mail relay's variables are KAFKA_"),
        ({"SMTP_USERNAME": "switchboard"}, "SMTP_USERNAME and SMTP_PASSWORD: login needs both"),
        ({"SMTP_PASSWORD": "p"}, "SMTP_USERNAME and SMTP_PASSWORD: login needs both"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "PLAIN",
             "KAFKA_SASL_USERNAME": "", "KAFKA_SASL_PASSWORD": "p"},
            "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD: SASL_PLAINTEXT needs both, not empty",
        ),
        (
            {"SWITCHBOARD_CONFIG__ROUTE__ALERT_URGENCIES": "critical"},
            "environment: SWITCHBOARD_CONFIG__ROUTE__ALERT_URGENCIES: .* \\(a SWITCHBOARD_CONFIG__ "
            "override of a list or a map takes JSON",
        ),
    ],
)  # fmt: skip
def test_variables_that_contradict_each_other_or_cannot_be_read_fail_at_start(
    monkeypatch, variables, message
):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    service = RouteSettings if "ROUTE" in str(variables) else NotifySettings
    with pytest.raises(ConfigError, match=message):
        service.load(config_file=EXAMPLE)


def test_an_override_that_is_no_json_where_json_is_read_is_the_one_named(monkeypatch):
    monkeypatch.setenv("SWITCHBOARD_CONFIG__ROUTE__SLA__ALERT_URGENCIES", "critical")
    monkeypatch.setenv("SWITCHBOARD_CONFIG__NOTIFY__EMAIL__SENDER", "sb@example.com")  # a string
    with pytest.raises(ConfigError) as caught:
        PipelineSettings.load(config_file=EXAMPLE)
    assert "environment: SWITCHBOARD_CONFIG__ROUTE__SLA__ALERT_URGENCIES: " in str(caught.value)
    assert "SENDER" not in str(caught.value)


def test_environment_overrides_the_file(monkeypatch):
    monkeypatch.setenv("SWITCHBOARD_CONFIG__ROUTE__CONFIDENCE_THRESHOLD", "0.7")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker-1:9092")
    settings = PipelineSettings.load(config_file=EXAMPLE)
    assert settings.config.route.confidence_threshold == 0.7
    assert settings.config.handles  # the rest of the file still applies
    assert settings.kafka.bootstrap_servers == "broker-1:9092"


def test_smtp_secret_is_not_printed(monkeypatch):
    monkeypatch.setenv("SMTP_USERNAME", "switchboard")
    monkeypatch.setenv("SMTP_PASSWORD", "hunter2")
    settings = NotifySettings.load(config_file=EXAMPLE)
    assert settings.smtp.password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.model_dump())


def test_secrets_read_are_masked_in_every_log_line(monkeypatch, caplog):
    import json
    import logging

    from switchboard.shared.config import SecretRef
    from switchboard.shared.logs import JsonFormatter, TextFormatter
    from switchboard.shared.settings import read_secret

    secret = 'vendor-"token"-0123456789'
    monkeypatch.setenv("SB_TEST_VENDOR_TOKEN", secret)
    read_secret(SecretRef(env="SB_TEST_VENDOR_TOKEN"), "notify.connections.jira.api_token")
    try:
        raise RuntimeError(f"the vendor said: bad token {secret}")
    except RuntimeError:
        record = logging.getLogger("t").makeRecord(
            "t", logging.ERROR, __file__, 1, "sending %s", (secret,), sys.exc_info(),
            extra={"header": f"Bearer {secret}"},
        )  # fmt: skip
    for formatter in (JsonFormatter("notify"), TextFormatter("%(message)s %(header)s")):
        line = formatter.format(record)
        assert "vendor-" not in line and "[secret]" in line, line
    entry = json.loads(JsonFormatter("notify").format(record))
    assert entry["header"] == "Bearer [secret]" and "[secret]" in entry["exc"]
    from switchboard.notify.resilience import http_error

    echoed = http_error(401, f'{{"error": "bad token {secret}"}}', None)  # bound for the DLQ
    assert secret not in str(echoed) and "[secret]" in str(echoed)


def test_config_errors_never_show_secret_values(monkeypatch):
    monkeypatch.setenv("SMTP_USERNAME", "switchboard")
    monkeypatch.setenv("SMTP_PASSWORD", "smtp-password-0123")
    monkeypatch.setenv("SMTP_PORT", "not-a-port")
    with pytest.raises(ConfigError, match="environment: SMTP_PORT") as caught:
        NotifySettings.load(config_file=EXAMPLE)
    assert "smtp-password-0123" not in str(caught.value)
    monkeypatch.delenv("SMTP_PORT")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "sasl-password-0123")
    with pytest.raises(ConfigError, match="KAFKA_SASL_PASSWORD: set, but") as caught:
        NotifySettings.load(config_file=EXAMPLE)  # named, never shown
    assert "sasl-password-0123" not in str(caught.value)


def test_a_shadow_classify_names_its_candidate_by_a_variable(monkeypatch):
    """The variables of a shadow are checked as `switchboard classify --shadow` checks them."""
    from switchboard.classify.settings import ClassifySettings

    monkeypatch.setenv("SWITCHBOARD_SHADOW", "true")
    with pytest.raises(ConfigError, match="SWITCHBOARD_SHADOW_ARTIFACT: a shadow classify needs"):
        ClassifySettings.load(config_file=EXAMPLE)
    monkeypatch.setenv("SWITCHBOARD_SHADOW_ARTIFACT", "minilm-real-v9")
    with pytest.raises(ConfigError, match="SWITCHBOARD_SHADOW_ARTIFACT: 'minilm-real-v9' is nei"):
        ClassifySettings.load(config_file=EXAMPLE)
    monkeypatch.setenv("SWITCHBOARD_SHADOW_ARTIFACT", "minilm-commercial-v3")
    assert ClassifySettings.load(config_file=EXAMPLE).artifact == "minilm-commercial-v3"
    monkeypatch.delenv("SWITCHBOARD_SHADOW")
    with pytest.raises(ConfigError, match="SWITCHBOARD_SHADOW_ARTIFACT: set without"):
        ClassifySettings.load(config_file=EXAMPLE)


def test_config_check_validates_a_file_as_each_service_would(write_config):
    """`switchboard config check [--service NAME] [FILE]`: every error on a line with its key
    and rule, exit status 1; a file that a service would start with, status 0."""
    from click.testing import CliRunner

    from switchboard.cli import main

    def broken(content: dict) -> None:
        content["notify"].update(subscriptionz=[])
        content["route"]["rules"] = [{"name": "vip", "when": {"bogus": 1}, "then": {"drop": True}}]
        content.setdefault("classify", {})["artifact"] = "minilm-real-v6"  # no such artifact

    runner = CliRunner()
    good = runner.invoke(main, ["config", "check", str(EXAMPLE)])
    assert good.exit_code == 0 and "valid for every service" in good.output
    path = str(write_config(broken))
    every = runner.invoke(main, ["config", "check", path])
    assert every.exit_code == 1
    assert "config key notify.subscriptionz:" in every.output
    assert "config key route.rules[0].when.bogus (rule 'vip'):" in every.output
    assert "config key classify.artifact: " in every.output
    assert "'minilm-real-v6' is neither a shipped artifact (minilm-commercial-v3" in every.output
    route = runner.invoke(main, ["config", "check", "--service", "route", path])
    assert route.exit_code == 1 and "notify" not in route.output.replace(path, "")
    ingest = runner.invoke(main, ["config", "check", "--service", "ingest", path])
    assert ingest.exit_code == 0 and "valid for the ingest service" in ingest.output


def test_config_check_reads_the_environments_overrides_as_the_services_do(monkeypatch):
    """A file valid alone, with an override a service would refuse at start, is not valid."""
    from click.testing import CliRunner

    from switchboard.cli import main

    runner = CliRunner()
    monkeypatch.setenv("SWITCHBOARD_CONFIG__ROUTE__CONFIDENCE_THRESHOLD", "1.5")
    refused = runner.invoke(main, ["config", "check", "--service", "route", str(EXAMPLE)])
    assert refused.exit_code == 1
    assert "with SWITCHBOARD_CONFIG__ROUTE__CONFIDENCE_THRESHOLD over it" in refused.output
    assert "config key route.confidence_threshold: " in refused.output
    with pytest.raises(ConfigError, match="route.confidence_threshold"):  # as route would
        RouteSettings.load(config_file=EXAMPLE)

    monkeypatch.setenv("SWITCHBOARD_CONFIG__ROUTE__CONFIDENCE_THRESHOLD", "0.6")
    monkeypatch.setenv("SWITCHBOARD_CONFIG__ROUTE__ALERT_URGENCIES", "critical")  # not JSON
    not_json = runner.invoke(main, ["config", "check", "--service", "route", str(EXAMPLE)])
    assert not_json.exit_code == 1 and "takes JSON" in not_json.output
    monkeypatch.delenv("SWITCHBOARD_CONFIG__ROUTE__ALERT_URGENCIES")
    good = runner.invoke(main, ["config", "check", "--service", "route", str(EXAMPLE)])
    assert good.exit_code == 0 and "valid for the route service" in good.output


def test_config_check_reads_the_email_templates_as_notify_does_at_start(
    write_config, tmp_path, monkeypatch
):
    """A template that does not parse stopped notify at start with a traceback, after `config
    check` had called the file valid."""
    from click.testing import CliRunner

    from switchboard.cli import main

    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "email.txt.j2").write_text("Hello {{ routed.tweet.text \n", encoding="utf-8")
    path = str(write_config(lambda c: c["notify"]["email"].update(templates_dir=str(folder))))
    runner = CliRunner()
    checked = runner.invoke(main, ["config", "check", path])
    assert checked.exit_code == 1
    assert "config key notify.subscriptions[0].template: " in checked.output
    assert f"{folder / 'email.txt.j2'}, line 1: unexpected end of template" in checked.output
    route = runner.invoke(main, ["config", "check", "--service", "route", path])
    assert route.exit_code == 0  # route reads no template
    # the folder given by an override, as notify reads it
    monkeypatch.setenv("SWITCHBOARD_CONFIG__NOTIFY__EMAIL__TEMPLATES_DIR", str(folder))
    overridden = runner.invoke(main, ["config", "check", str(EXAMPLE)])
    assert overridden.exit_code == 1 and "line 1: unexpected end of template" in overridden.output
