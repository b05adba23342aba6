"""Child processes that never outlive their parent: the broker and the services of ``run``."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Linux: the kernel sends SIGTERM to the child when the parent dies, even by kill -9,
    # so an interrupted `switchboard run` or test session leaves no process behind.
    # Not Linux: no such call, and terminate() in the parent's shutdown path still applies.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(
    command: Sequence[str],
    *,
    log_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own process group, output appended to ``log_file``."""
    output = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            list(command),
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    finally:
        if log_file:
            output.close()


def terminate(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> int:
    """SIGTERM the process group, then SIGKILL what is left after ``timeout_s``."""
    if process.poll() is None:
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()
    return process.returncode


def kill(process: subprocess.Popen[bytes]) -> int:
    """SIGKILL the process group at once (what a crash or an OOM kill looks like)."""
    _signal_group(process, signal.SIGKILL)
    return process.wait()


def freeze(process: subprocess.Popen[bytes], frozen: bool) -> None:
    """SIGSTOP (or SIGCONT) the process group: alive, connections open, answering nothing, as
    behind a network partition or a long GC pause."""
    _signal_group(process, signal.SIGSTOP if frozen else signal.SIGCONT)


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
