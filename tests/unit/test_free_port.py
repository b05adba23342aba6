"""free_port chooses ports the kernel does not hand to outgoing connections."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from switchboard.shared import broker
from switchboard.shared.broker import free_port


@pytest.mark.parametrize(
    ("ephemeral", "lowest", "highest"),
    [("32768\t60999\n", 12768, 32767), ("1024 60000\n", 60001, 65535)],
)
def test_a_free_port_is_outside_the_ephemeral_range_and_bindable(
    ephemeral: str, lowest: int, highest: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    (tmp_path / "range").write_text(ephemeral)
    monkeypatch.setattr(broker, "EPHEMERAL_RANGE", tmp_path / "range")
    ports = {free_port() for _ in range(50)}
    assert all(lowest <= port <= highest for port in ports), sorted(ports)
    assert len(ports) > 40  # chosen at random: parallel test workers rarely pick the same
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports.pop()))
