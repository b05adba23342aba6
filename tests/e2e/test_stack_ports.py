"""The stack on a busy machine: a port it chose for a service can be taken before the service
binds it (by another process's listener, or an outgoing connection's source port)."""

from __future__ import annotations

import socket

import httpx
import pytest

from switchboard.cli import stack as stack_module
from switchboard.cli.stack import Stack
from switchboard.shared.broker import free_port


async def test_a_service_whose_port_was_taken_starts_on_another(
    own_stack: Stack, monkeypatch: pytest.MonkeyPatch
):
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    taken = held.getsockname()[1]
    chosen = iter([taken])
    monkeypatch.setattr(stack_module, "free_port", lambda: next(chosen, None) or free_port())
    monkeypatch.setattr(stack_module, "SERVICES", ("route",))  # one service shows it
    stack = own_stack
    try:
        await stack.start()
        assert stack.ports["route"] != taken
        async with httpx.AsyncClient() as client:
            ready = await client.get(f"http://127.0.0.1:{stack.ports['route']}/readyz")
        assert ready.status_code == 200
        assert f"{taken}): address already in use" in stack.log_tail("route", lines=200)
    finally:
        await stack.stop()
        held.close()
