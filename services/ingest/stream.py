"""The X API v2 filtered stream: rules synchronized at start, then one long-lived connection.

Reconnects follow X's documented policy ("Handling disconnections"): network errors and stalls
back off linearly (+250 ms per attempt, up to 16 s), HTTP errors exponentially (from 5 s, up to
320 s), HTTP 429 exponentially from one minute; a successful connection resets all three. X
sends a keep-alive newline every 20 seconds, so a connection silent for longer than
``stall_timeout_s`` is dropped and reopened.

tweepy's AsyncStreamingClient implements the same loop but with fixed constants, a fixed host
and no hook to count stalls, so the connection is opened here with aiohttp; the rules endpoints
go through tweepy (xapi.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp.http_exceptions import LineTooLong

from switchboard.ingest.rules import desired_rules, plan_sync
from switchboard.ingest.xapi import XApi
from switchboard.shared import metrics
from switchboard.shared.config import ReconnectConfig, SwitchboardConfig

log = logging.getLogger(__name__)

SOURCE = "filtered_stream"
# aiohttp refuses lines over 128 KiB by default, which a long post with its includes can
# approach; a line is read whole up to this, and ingest dead-letters what is not a tweet.
MAX_LINE_BYTES = 16 * 1024 * 1024


class ReconnectPolicy:
    """How long to wait before the next connection attempt (pure; see the module docstring)."""

    def __init__(self, config: ReconnectConfig) -> None:
        self.config = config
        self.connected()

    def connected(self) -> None:
        self._network = 0.0
        self._http = self.config.http_initial_s
        self._rate_limited = self.config.rate_limit_initial_s

    def after_network_error(self) -> float:
        wait = self._network
        self._network = min(self._network + self.config.network_step_s, self.config.network_max_s)
        return wait

    def after_http_error(self) -> float:
        wait = self._http
        self._http = min(self._http * 2, self.config.http_max_s)
        return wait

    def after_rate_limit(self, reset_in_s: float | None = None) -> float:
        wait = self._rate_limited
        self._rate_limited *= 2
        return max(wait, reset_in_s or 0.0)


class FilteredStream:
    def __init__(
        self,
        api: XApi,
        config: SwitchboardConfig,
        on_message: Callable[[bytes], Awaitable[None]],
    ) -> None:
        self.api = api
        self.config = config
        self.settings = config.ingest.x.filtered_stream
        self.on_message = on_message
        self.policy = ReconnectPolicy(self.settings.reconnect)
        self.connections = 0

    async def sync_rules(self) -> None:
        """Make the owned rules (tag prefix) exactly the configured ones; leave the rest."""
        existing = await self.api.get_rules()
        changes = plan_sync(existing, desired_rules(self.config), self.settings.rule_tag_prefix)
        if changes.delete_ids:
            await self.api.delete_rules(changes.delete_ids)
        if changes.add:
            await self.api.add_rules([(r.value, r.tag) for r in changes.add])
        log.info(
            "stream rules synchronized",
            extra={"added": len(changes.add), "deleted": len(changes.delete_ids)},
        )

    async def run(self) -> None:
        """Read the stream until cancelled, reconnecting as X documents."""
        await self.sync_rules()
        timeout = aiohttp.ClientTimeout(sock_connect=10, sock_read=self.settings.stall_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                wait, reason = await self._connect_once(session)
                metrics.STREAM_RECONNECTS.labels(reason).inc()
                log.warning("stream disconnected", extra={"reason": reason, "retry_in_s": wait})
                await asyncio.sleep(wait)

    async def _connect_once(self, session: aiohttp.ClientSession) -> tuple[float, str]:
        """One connection; returns how long to wait before the next, and why it ended."""
        headers = {"Authorization": f"Bearer {self.api.bearer_token}"}
        try:
            async with session.get(self.api.stream_url(), headers=headers) as response:
                if response.status == 429:
                    return self.policy.after_rate_limit(_reset_in(response)), "rate_limited"
                if response.status != 200:
                    body = (await response.text())[:300]
                    log.error("stream refused", extra={"status": response.status, "body": body})
                    return self.policy.after_http_error(), f"http_{response.status}"
                await self._read(response)
                return self.policy.after_network_error(), "closed_by_server"
        except TimeoutError:
            metrics.STREAM_STALLS.inc()
            return self.policy.after_network_error(), "stall"
        except LineTooLong as error:
            log.error("stream line too long; reconnecting", extra={"error": str(error)[:300]})
            return self.policy.after_network_error(), "line_too_long"
        except (aiohttp.ClientError, OSError):
            return self.policy.after_network_error(), "network_error"
        finally:
            metrics.STREAM_CONNECTED.labels(SOURCE).set(0)

    async def _read(self, response: aiohttp.ClientResponse) -> None:
        self.connections += 1
        self.policy.connected()
        metrics.STREAM_CONNECTED.labels(SOURCE).set(1)
        log.info("stream connected", extra={"connection": self.connections})
        while line := await response.content.readline(max_line_length=MAX_LINE_BYTES):
            if line.strip():  # a bare newline is X's keep-alive
                await self.on_message(line.strip())


def _reset_in(response: aiohttp.ClientResponse) -> float | None:
    with contextlib.suppress(KeyError, ValueError):
        return max(0.0, float(response.headers["x-rate-limit-reset"]) - time.time())
    return None
