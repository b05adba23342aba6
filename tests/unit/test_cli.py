"""The CLI's own guards: what it refuses before it starts anything, and how it reports a broker
it cannot reach."""

from __future__ import annotations

import socket
from pathlib import Path

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
