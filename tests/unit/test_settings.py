"""Configuration: the example file is valid; a wrong value fails at start and names its key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from switchboard.notify.settings import NotifySettings
from switchboard.shared.settings import ConfigError, ServiceSettings

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


def test_example_config_is_valid():
    config = ServiceSettings.load(config_file=EXAMPLE).config
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
    ],
)
def test_a_bad_value_names_its_key(write_config, mutate, key):
    with pytest.raises(ConfigError) as caught:
        ServiceSettings.load(config_file=write_config(mutate))
    assert f"config key {key}:" in str(caught.value)


def test_a_bad_rule_names_the_rule_and_its_key(write_config):
    def break_rule(config):
        config["route"]["rules"][1]["when"]["segmentz"] = ["investor"]

    with pytest.raises(ConfigError) as caught:
        ServiceSettings.load(config_file=write_config(break_rule))
    message = str(caught.value)
    assert (
        "config key route.rules[1].when.segmentz (rule 'investors-asking-about-outages')" in message
    )


def test_a_repeated_handle_is_refused(write_config):
    path = write_config(lambda c: c["handles"].append(dict(c["handles"][0])))
    with pytest.raises(ConfigError, match="@SkylarkAir is already handles\\[0\\]"):
        ServiceSettings.load(config_file=path)


def test_a_missing_file_says_which_variable_points_at_it(tmp_path: Path):
    with pytest.raises(
        ConfigError, match="SWITCHBOARD_CONFIG_FILE: configuration file .* does not exist"
    ):
        ServiceSettings.load(config_file=tmp_path / "nope.yaml")


def test_a_bad_environment_variable_is_named(monkeypatch):
    monkeypatch.setenv("SWITCHBOARD_HTTP_PORT", "eighty")
    with pytest.raises(ConfigError, match="environment: SWITCHBOARD_HTTP_PORT"):
        ServiceSettings.load(config_file=EXAMPLE)
    monkeypatch.delenv("SWITCHBOARD_HTTP_PORT")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SMOKE_SIGNALS")
    with pytest.raises(ConfigError, match="environment: KAFKA_SECURITY_PROTOCOL"):
        ServiceSettings.load(config_file=EXAMPLE)


def test_environment_overrides_the_file(monkeypatch):
    monkeypatch.setenv("SWITCHBOARD_CONFIG__ROUTE__CONFIDENCE_THRESHOLD", "0.7")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker-1:9092")
    settings = ServiceSettings.load(config_file=EXAMPLE)
    assert settings.config.route.confidence_threshold == 0.7
    assert settings.config.handles  # the rest of the file still applies
    assert settings.kafka.bootstrap_servers == "broker-1:9092"


def test_smtp_secret_is_not_printed(monkeypatch):
    monkeypatch.setenv("SMTP_PASSWORD", "hunter2")
    settings = NotifySettings.load(config_file=EXAMPLE)
    assert settings.smtp.password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.model_dump())
