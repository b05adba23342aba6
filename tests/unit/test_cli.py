"""The CLI's own guards: what it refuses before it starts anything, and how it reports a broker
it cannot reach."""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from switchboard.cli import main
from switchboard.ingest.settings import IngestSettings


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


def test_a_replays_pace_without_a_replay_is_refused_from_a_flag_or_a_variable(monkeypatch):
    flag = CliRunner().invoke(main, ["ingest", "--rate", "5"])
    assert flag.exit_code == 2
    assert "SWITCHBOARD_REPLAY_RATE_PER_S (--rate) pace only a backfill" in flag.output
    monkeypatch.setenv("SWITCHBOARD_REPLAY_LIMIT", "10")
    variable = CliRunner().invoke(main, ["ingest"])
    assert variable.exit_code == 2 and "SWITCHBOARD_REPLAY_LIMIT (--limit)" in variable.output
    # a backfill named by its variable is paced by the flag (compose, the stack)
    monkeypatch.setenv("SWITCHBOARD_REPLAY_FILE", "data/samples/tweets.jsonl")
    paced = IngestSettings.load(replay_rate_per_s=50.0)
    assert paced.rate == 50.0 and paced.replay_limit == 10


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
