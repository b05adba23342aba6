"""``until_stopped``: how ``run_service`` and ``switchboard run`` start, so that a stop asked
while a start is under way (tables restoring, a stack coming up) is not made to wait."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from switchboard.shared.runtime import read_body, until_stopped


async def test_a_stop_while_starting_gives_the_start_up_at_once():
    stop, reached = asyncio.Event(), []

    async def restoring() -> None:  # waits for its tables for as long as they take
        try:
            await asyncio.Event().wait()
        finally:
            reached.append("cleaned up")

    asyncio.get_running_loop().call_later(0.05, stop.set)
    assert await asyncio.wait_for(until_stopped(restoring(), stop), 1) is False
    assert reached == ["cleaned up"]


async def test_a_start_that_finishes_first_is_reported_started():
    async def start() -> None:
        await asyncio.sleep(0)

    assert await until_stopped(start(), asyncio.Event()) is True


async def test_a_start_that_fails_raises_its_error():
    async def start() -> None:
        raise RuntimeError("broker would not start")

    with pytest.raises(RuntimeError, match="broker would not start"):
        await until_stopped(start(), asyncio.Event())


def _echo_app(limit: int) -> FastAPI:
    app = FastAPI()

    @app.post("/hook")
    async def hook(request: Request) -> JSONResponse:
        body = await read_body(request, limit)
        return JSONResponse({"size": None if body is None else len(body)})

    return app


async def test_a_body_past_the_limit_is_refused_whether_declared_or_streamed():
    transport = httpx.ASGITransport(app=_echo_app(10))

    async def chunks(n: int):  # noqa: ANN202 - no Content-Length: read until the limit
        for _ in range(n):
            yield b"abcd"

    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        assert (await client.post("/hook", content=b"x" * 10)).json() == {"size": 10}
        assert (await client.post("/hook", content=b"x" * 11)).json() == {"size": None}
        # refused on the length declared, before a byte is read (these 5 would pass)
        declared = await client.post("/hook", content=b"x" * 5, headers={"content-length": "11"})
        assert declared.json() == {"size": None}
        assert (await client.post("/hook", content=chunks(2))).json() == {"size": 8}
        assert (await client.post("/hook", content=chunks(3))).json() == {"size": None}
