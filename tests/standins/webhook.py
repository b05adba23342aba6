"""A receiver for Switchboard's signed webhooks on 127.0.0.1: checks the signature and the
timestamp like a careful receiver would, and applies each Idempotency-Key once."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

from aiohttp import web


class WebhookReceiver:
    def __init__(self, secret: str, max_skew_s: float = 300) -> None:
        self.secret = secret.encode()
        self.max_skew_s = max_skew_s
        self.url = ""
        self.received: list[dict] = []  # every accepted request body
        self.applied: dict[str, dict] = {}  # Idempotency-Key -> body, the effect once
        self.rejected = 0
        self.fail_with: list[int] = []  # statuses for the next requests
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._receive)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _receive(self, request: web.Request) -> web.Response:
        if self.fail_with:
            return web.json_response({"error": "unavailable"}, status=self.fail_with.pop(0))
        body = await request.read()
        stamp = request.headers.get("X-Switchboard-Timestamp", "0")
        expected = (
            "sha256="
            + hmac.new(self.secret, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        )
        given = request.headers.get("X-Switchboard-Signature", "")
        fresh = abs(time.time() - float(stamp)) <= self.max_skew_s
        if not (hmac.compare_digest(given, expected) and fresh):
            self.rejected += 1
            return web.json_response({"error": "bad signature"}, status=401)
        payload = json.loads(body)
        self.received.append(payload)
        self.applied.setdefault(request.headers["Idempotency-Key"], payload)
        return web.json_response({"ok": True})
