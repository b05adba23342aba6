"""SIGTERM (what Kubernetes, systemd and `kill` send) and SIGINT (Ctrl-C) to each command that
starts the pipeline stop every process it started."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT, SAMPLES, SWITCHBOARD, clean_environment

COMMANDS = {
    "run": ["run", "--rate", "20"],
    "demo": ["demo", "--count", "40", "--rate", "10", "--json"],
    "soak": ["soak", "--minutes", "1", "--rate", "10", "--json"],
    "bench": ["bench", "--no-classifier", "--rates", "10", "--seconds", "30", "--probes", "1",
              "--json"],
}  # fmt: skip


def started(process: psutil.Process, service: str) -> bool:
    """Whether ``process`` has started the service (a child running ``switchboard SERVICE``)."""
    return any(
        child.cmdline()[-2:] == ["switchboard", service]
        for child in process.children(recursive=True)
        if child.is_running()
    )


def _interruptible() -> None:
    """Ctrl-C's default in the command: a shell without job control starts background jobs
    (such as a test run) with SIGINT ignored, which their children inherit; the command would
    then run to its end and the test would prove nothing about SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# SIGINT as soon as the broker runs and classify is loading (a stack half started); SIGTERM
# once ingest runs too: a SIGTERM to soak then used to leave ingest running.
@pytest.mark.parametrize(
    ("command", "sig", "up_to"),
    [
        *((name, signal.SIGINT, "classify") for name in COMMANDS),
        *((name, signal.SIGTERM, "ingest") for name in ("soak", "demo")),
        *((name, signal.SIGTERM, "classify") for name in ("run", "bench")),
    ],
    ids=lambda value: getattr(value, "name", value),
)
def test_a_signal_stops_every_process_the_command_started(
    command: str, sig: signal.Signals, up_to: str, tmp_path: Path
):
    env = clean_environment()
    extra = {
        "run": ["--workdir", str(tmp_path / "run")],
        "bench": ["--report", str(tmp_path / "r.json"), "--plot", str(tmp_path / "p.png")],
    }.get(command, [])
    stale = tmp_path / "run" / "broker" / "from-the-last-run"
    stale.parent.mkdir(parents=True)
    stale.write_text("")
    process = subprocess.Popen(
        [*SWITCHBOARD, *COMMANDS[command], "--samples", str(SAMPLES),
         *extra],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=_interruptible,
    )  # fmt: skip
    parent = psutil.Process(process.pid)
    try:
        deadline = time.monotonic() + 240
        while not started(parent, up_to):
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, f"{command} did not start {up_to} in time"
            time.sleep(0.2)
        children = {child.pid: child for child in parent.children(recursive=True)}
        if command == "run":  # without --keep, run starts clean: the last run's data is gone
            assert not stale.exists()
        process.send_signal(sig)
        # every child seen until the command exits: one it started after the signal too
        stopping = time.monotonic() + 90
        while process.poll() is None and time.monotonic() < stopping:
            with contextlib.suppress(psutil.Error):
                children |= {child.pid: child for child in parent.children(recursive=True)}
            time.sleep(0.1)
        process.wait(timeout=1)
        if "--json" in COMMANDS[command]:  # its summary is printed only when it ran to its end
            assert process.stdout.read() == b"", f"{command} ran on to its end after {sig.name}"
    finally:
        if process.poll() is None:
            process.kill()
    _, alive = psutil.wait_procs(list(children.values()), timeout=15)
    assert alive == [], f"left behind: {[p.cmdline() for p in alive]}"
    if command == "run":  # stopped where it was: Ctrl-C while classify loads starts nothing more
        started_later = [s for s in ("route", "notify", "ingest")
                         if (tmp_path / "run" / "logs" / f"{s}.log").exists()]  # fmt: skip
        assert started_later == [], f"run went on starting {started_later} after {sig.name}"
