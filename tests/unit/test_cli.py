"""The CLI's own guards: what it refuses before it starts anything, and how it reports a broker
it cannot reach."""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from switchboard.cli import main


def test_run_removes_only_a_work_folder_of_its_own(tmp_path: Path):
    """`run` starts clean by removing its work folder; a folder holding anything else (a
    repository, a home folder given as --workdir) is refused and left as it was."""
    (tmp_path / ".git").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "logs").mkdir()
    refused = CliRunner().invoke(main, ["run", "--workdir", str(tmp_path)])
    assert refused.exit_code == 2
    assert ".git, notes.txt" in refused.output and "--workdir" in refused.output
    assert (tmp_path / ".git").is_dir() and (tmp_path / "notes.txt").read_text() == "mine"


def test_a_broker_out_of_reach_is_one_line_naming_it(monkeypatch):
    """`dlq list` against a port where nothing listens: one line naming the servers, status
    1, not a traceback."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{closed.getsockname()[1]}"
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", address)
    result = CliRunner().invoke(main, ["dlq", "list"])
    assert result.exit_code == 1, result.output
    assert f"switchboard: Kafka at {address}: KafkaConnectionError" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ingest", "--rate", "5"], "--rate paces only a backfill: give --replay or --archive"),
        (["ingest", "--replay", "data/samples/tweets.jsonl", "--rate", "0"], "'--rate': 0.0"),
        (["ingest", "--replay", "data/samples/tweets.jsonl", "--limit", "-1"], "'--limit': -1"),
        (["run", "--rate", "0"], "'--rate': 0.0"),
        (["demo", "--count", "-1"], "'--count': -1"),
        (["soak", "--minutes", "0"], "'--minutes': 0.0"),
        (["dlq", "list", "--channel", "zendsk"], "'zendsk' is not one of 'email', 'webhook'"),
        (["config", "check", "no/such.yaml"], "'no/such.yaml' does not exist"),
    ],
)
def test_a_value_that_cannot_work_is_refused_naming_the_option(args, message):
    """Refused before anything starts: a rate of 0 was taken as the config's, a negative
    count ended in a traceback, a mistyped channel listed nothing as if nothing were parked."""
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and message in result.output, result.output


def test_demo_refuses_bad_samples_and_bad_variables_and_leaves_no_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    samples = tmp_path / "tweets.jsonl"
    samples.write_text('{"x": 1}\n', encoding="utf-8")
    bad = CliRunner().invoke(main, ["demo", "--samples", str(samples)])
    assert bad.exit_code == 2
    assert f"{samples}:1: not an X API v2 tweet with data.id" in bad.output
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "ssl")
    variable = CliRunner().invoke(main, ["demo"])
    assert variable.exit_code == 2 and "environment: KAFKA_SECURITY_PROTOCOL" in variable.output
    assert [p.name for p in tmp_path.iterdir()] == ["tweets.jsonl"]  # no switchboard-demo-*
