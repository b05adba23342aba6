"""Kafka TLS and SASL: what the KAFKA_* variables say reaches every aiokafka client (producer,
consumer, admin), and settings that cannot work fail at start naming the variables, without
ever printing the password."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from switchboard.shared.kafka import client_options, make_consumer, make_producer
from switchboard.shared.settings import ConfigError, KafkaSettings, ServiceSettings
from tests.conftest import CONFIG_FILE

PASSWORD = "kafka-sasl-password-for-tests"


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate and its key, made by openssl (`make tools` installs it): the CA file and
    the client identity."""
    assert shutil.which("openssl"), "openssl is not installed: `make tools` installs it"
    cert, key = folder / "client.crt", folder / "client.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=switchboard-test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def sasl_ssl_env(tmp_path, monkeypatch) -> Path:
    cert, key = self_signed(tmp_path)
    for name, value in {
        "KAFKA_BOOTSTRAP_SERVERS": "b-1.kafka.internal:9096,b-2.kafka.internal:9096",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "switchboard",
        "KAFKA_SASL_PASSWORD": PASSWORD,
        "KAFKA_SSL_CAFILE": str(cert),
        "KAFKA_SSL_CERTFILE": str(cert),
        "KAFKA_SSL_KEYFILE": str(key),
    }.items():
        monkeypatch.setenv(name, value)
    return cert


async def test_tls_and_sasl_reach_every_client(sasl_ssl_env):
    kafka = ServiceSettings.load(config_file=CONFIG_FILE).kafka  # as every service reads it
    options = client_options(kafka)
    assert options["bootstrap_servers"] == "b-1.kafka.internal:9096,b-2.kafka.internal:9096"
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "switchboard"
    assert options["sasl_plain_password"] == PASSWORD
    context = options["ssl_context"]
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert context.cert_store_stats()["x509_ca"] == 1  # KAFKA_SSL_CAFILE, not the system CAs
    producer = make_producer(kafka, client_id="p")
    consumer = make_consumer(kafka, ["switchboard.tweets.raw"], "g", client_id="c")
    admin = AIOKafkaAdminClient(**client_options(kafka))
    for client in (producer.client, consumer._client, admin._client):
        assert client._security_protocol == "SASL_SSL"
        assert client._sasl_mechanism == "SCRAM-SHA-512"
        assert (client._sasl_plain_username, client._sasl_plain_password) == (
            "switchboard", PASSWORD
        )  # fmt: skip
        assert isinstance(client._ssl_context, ssl.SSLContext)
    assert PASSWORD not in repr(kafka) and PASSWORD not in str(kafka.model_dump())


async def test_tls_without_sasl(tmp_path):
    cert, key = self_signed(tmp_path)
    kafka = KafkaSettings(bootstrap_servers="b:9093", security_protocol="SSL",
                          ssl_cafile=cert, ssl_certfile=cert, ssl_keyfile=key)  # fmt: skip
    options = client_options(kafka)
    assert options["security_protocol"] == "SSL" and "sasl_mechanism" not in options
    assert isinstance(make_producer(kafka, "p").client._ssl_context, ssl.SSLContext)
    plain = client_options(KafkaSettings(bootstrap_servers="b:9092"))
    assert plain["security_protocol"] == "PLAINTEXT" and "ssl_context" not in plain


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "sb"},
         "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD: SASL_SSL needs both"),
        ({"KAFKA_SASL_PASSWORD": PASSWORD},
         "KAFKA_SASL_PASSWORD: set, but KAFKA_SECURITY_PROTOCOL PLAINTEXT does not use SASL"),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"},
         "KAFKA_SSL_CAFILE: /nonexistent/ca.pem is not a readable file"),
        ({"KAFKA_SSL_CAFILE": "/etc/hostname"},
         "KAFKA_SSL_CAFILE: set, but KAFKA_SECURITY_PROTOCOL PLAINTEXT is not TLS"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "GSSAPI",
          "KAFKA_SASL_USERNAME": "sb", "KAFKA_SASL_PASSWORD": PASSWORD},
         "environment: KAFKA_SASL_MECHANISM"),
    ],
)  # fmt: skip
def test_unusable_security_settings_fail_at_start(monkeypatch, env, named):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        ServiceSettings.load(config_file=CONFIG_FILE)
    assert named in str(caught.value) and PASSWORD not in str(caught.value)
