"""The embedded Kafka-protocol broker: the noida-db binary with only its Kafka service.

Used by ``switchboard broker``, ``switchboard run``/``demo`` and the tests when
``KAFKA_BOOTSTRAP_SERVERS`` is unset. Topics live in the data directory and survive a restart.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import subprocess
import time
from importlib.resources import files
from pathlib import Path

from switchboard.shared.processes import freeze, spawn, terminate
from switchboard.shared.settings import KafkaSettings

log = logging.getLogger(__name__)


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_chooser = random.SystemRandom()  # not the random module's state: a test may seed that


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, for a process started next to bind.

    Chosen outside the kernel's ephemeral range: a port the kernel hands out (bind to 0) is one
    it also hands to outgoing connections as their source port, and on a busy machine one of
    those can take it between this check and the process's own bind.
    """
    choices = _outside_ephemeral()
    for _ in range(200 if choices else 0):
        port = _chooser.choice(choices)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    log.warning("no free port outside the ephemeral range; one the kernel chose")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _outside_ephemeral() -> range:
    """Up to 20,000 ports below the ephemeral range, or else those above it; empty if neither
    side has a thousand."""
    try:
        low, high = (int(bound) for bound in EPHEMERAL_RANGE.read_text().split()[:2])
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's defaults
    if low - 1024 >= 1000:
        return range(max(1024, low - 20000), low)
    if 65535 - high >= 1000:
        return range(high + 1, 65536)
    return range(0)


def broker_binary() -> Path:
    binary = Path(str(files("noida_db").joinpath("noida-db")))
    if not binary.is_file():
        raise FileNotFoundError(f"the noida-db wheel has no broker binary at {binary}")
    binary.chmod(0o755)
    return binary


class EmbeddedBroker:
    """A broker process on loopback; ``start()`` returns once it answers Kafka requests."""

    def __init__(self, data_dir: Path, port: int | None = None, log_file: Path | None = None):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.log_file = log_file or self.data_dir / "broker.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def settings(self) -> KafkaSettings:
        return KafkaSettings(bootstrap_servers=self.bootstrap_servers)

    async def start(self, timeout_s: float = 30.0) -> None:
        from switchboard.shared.kafka import wait_for_broker

        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            str(broker_binary()),
            "start",
            "--only",
            "kafka",
            "--kafka-port",
            str(self.port),
            "--host",
            "127.0.0.1",
            "--data-dir",
            str(self.data_dir),
        ]
        # The binary prints a harmless "weak version GLIBC_2.39" line at start.
        self.process = spawn(command, log_file=self.log_file)
        await self._wait_for_port(timeout_s)
        await wait_for_broker(self.settings(), timeout_s)
        log.info("embedded broker ready", extra={"bootstrap_servers": self.bootstrap_servers})

    async def _wait_for_port(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"embedded broker exited with {self.process.returncode}; see {self.log_file}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                await asyncio.sleep(0.1)
        raise TimeoutError(f"embedded broker did not open port {self.port}; see {self.log_file}")

    def freeze(self, frozen: bool = True) -> None:
        """Stop answering (``True``) without closing anything, or go on (``False``)."""
        if self.process is not None:
            freeze(self.process, frozen)

    def stop(self) -> None:
        """Stop the Kafka service, then the process. A signal alone loses acknowledged writes:
        on SIGTERM or SIGINT the broker saves its topics, then still appends and acknowledges
        the produce requests in flight, and those are gone after a restart (26 to 43 per stop
        under a flood of acks=all producers, measured; none when the service is stopped first,
        the way ``noida-db stop kafka`` does)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self._stop_service()
        terminate(self.process)
        self.process = None

    def _stop_service(self, timeout_s: float = 20.0) -> None:
        command = [str(broker_binary()), "stop", "kafka", "--data-dir", str(self.data_dir)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            done = None
        if done is None or done.returncode != 0:
            # The process is stopped anyway; only the writes of the last moment are at risk.
            log.warning(
                "the embedded broker did not stop its Kafka service; stopping the process",
                extra={"error": done.stderr[-500:] if done else f"timed out after {timeout_s} s"},
            )
