"""free_port chooses ports the kernel does not hand to outgoing connections."""

from __future__ import annotations

import socket

from switchboard.shared.broker import _ephemeral_low, free_port


def test_a_free_port_is_below_the_ephemeral_range_and_bindable():
    low = _ephemeral_low()
    ports = {free_port() for _ in range(50)}
    assert all(1024 <= port < low for port in ports)
    assert len(ports) > 40  # chosen at random: parallel test workers rarely pick the same
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports.pop()))
