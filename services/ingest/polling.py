"""Polled sources: each handle's mentions timeline and its direct messages.

Each poll reads everything newer than the handle's checkpoint (all pages), hands it over
oldest first, and only then moves the checkpoint, so a restart neither misses nor repeats.
The first poll of a handle with no checkpoint reads one page (the latest ``max_results``)
rather than the account's whole history; backfill older tweets with a replay or an archive.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from switchboard.ingest.checkpoints import Checkpoints
from switchboard.ingest.xapi import XApi, XApiError
from switchboard.shared import metrics
from switchboard.shared.config import HandleConfig, PollingConfig

log = logging.getLogger(__name__)

# (handle, item, users by id) for every tweet or DM event found
Deliver = Callable[[HandleConfig, dict[str, Any], dict[str, dict]], Awaitable[None]]


class Poller:
    source: str

    def __init__(
        self, handle: HandleConfig, api: XApi, checkpoints: Checkpoints, settings: PollingConfig
    ) -> None:
        self.handle = handle
        self.api = api
        self.checkpoints = checkpoints
        self.settings = settings

    @property
    def checkpoint_key(self) -> str:
        return f"{self.source}:{self.handle.user_id}"

    async def run(self, deliver: Deliver) -> None:
        while True:
            try:
                await self.poll_once(deliver)
            except (XApiError, OSError, TimeoutError) as exc:
                metrics.POLL_ERRORS.labels(self.source).inc()
                log.warning(
                    "poll failed; retrying next interval",
                    extra={"source": self.source, "handle": self.handle.handle, "error": str(exc)},
                )
            await asyncio.sleep(self.settings.interval_s)

    async def poll_once(self, deliver: Deliver) -> int:
        since = self.checkpoints.get(self.checkpoint_key)
        items, users = await self.fetch_newer_than(since)
        for item in sorted(items, key=lambda i: int(i["id"])):
            await deliver(self.handle, item, users)
        if items:
            newest = max(items, key=lambda i: int(i["id"]))["id"]
            await self.checkpoints.save(self.checkpoint_key, str(newest))
        return len(items)

    async def fetch_newer_than(self, since: str | None) -> tuple[list[dict], dict[str, dict]]:
        raise NotImplementedError


class MentionsPoller(Poller):
    source = "mentions"

    async def fetch_newer_than(self, since: str | None) -> tuple[list[dict], dict[str, dict]]:
        items: list[dict] = []
        users: dict[str, dict] = {}
        token = None
        while True:
            page = await self.api.mentions(
                self.handle.user_id,
                since_id=since,
                pagination_token=token,
                max_results=self.settings.max_results,
            )
            items += page.get("data", [])
            users |= {u["id"]: u for u in page.get("includes", {}).get("users", [])}
            token = page.get("meta", {}).get("next_token")
            if token is None or since is None:
                return items, users


class DirectMessagesPoller(Poller):
    """DM events have no ``since_id``: pages are read newest first until the checkpoint."""

    source = "direct_message"

    async def fetch_newer_than(self, since: str | None) -> tuple[list[dict], dict[str, dict]]:
        items: list[dict] = []
        users: dict[str, dict] = {}
        token = None
        while True:
            page = await self.api.dm_events(
                pagination_token=token, max_results=self.settings.max_results
            )
            events = page.get("data", [])
            newer = [e for e in events if since is None or int(e["id"]) > int(since)]
            items += newer
            users |= {u["id"]: u for u in page.get("includes", {}).get("users", [])}
            token = page.get("meta", {}).get("next_token")
            if token is None or since is None or len(newer) < len(events):
                return items, users
