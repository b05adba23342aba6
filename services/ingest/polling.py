"""Polled sources: each handle's mentions timeline and its direct messages.

Each poll reads everything newer than the handle's checkpoint (all pages), hands it over
oldest first, and only then moves the checkpoint, so a restart neither misses nor repeats.
The first poll of a handle with no checkpoint reads one page (the latest ``max_results``)
rather than the account's whole history, and publishes only what was written within
``first_poll_max_age_hours``: a handle added to the configuration must not route months-old
mentions and DMs as new work. Backfill older tweets with a replay or an archive.

A failed poll never stops ingest: whatever went wrong (X refused, X or the network kept
failing, a malformed page, the broker), the poller says so (``SourceHealth``, metrics, a log
line) and tries again, waiting ``interval_s`` doubled for each failure in a row up to
``max_backoff_s``. The checkpoint moves only after a poll's tweets were published, so nothing
is skipped while it fails.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from switchboard.ingest import metrics
from switchboard.ingest.checkpoints import Checkpoints
from switchboard.ingest.config import PollingConfig
from switchboard.ingest.health import SourceHealth
from switchboard.ingest.normalize import NormalizeError, iso_time
from switchboard.ingest.webhook import too_old
from switchboard.ingest.xapi import XApi, XApiError
from switchboard.shared.config import HandleConfig
from switchboard.shared.kafka import KafkaPublishError

log = logging.getLogger(__name__)

MENTIONS_REACH = 800  # X's mentions timeline holds a handle's latest 800 mentions
# (handle, item, users by id) for every tweet or DM event found
Deliver = Callable[[HandleConfig, dict[str, Any], dict[str, dict]], Awaitable[None]]


class Poller:
    source: str

    def __init__(
        self,
        handle: HandleConfig,
        api: XApi,
        checkpoints: Checkpoints | None,
        settings: PollingConfig,
        health: SourceHealth | None = None,
    ) -> None:
        self.handle = handle
        self.api = api
        self.checkpoints = checkpoints
        self.settings = settings
        self.health = health or SourceHealth(self.source, handle.handle)

    @property
    def checkpoint_key(self) -> str:
        return f"{self.source}:{self.handle.user_id}"

    async def run(self, deliver: Deliver) -> None:
        while True:
            try:
                found = await self.poll_once(deliver)
            except (asyncio.CancelledError, KafkaPublishError):
                raise  # stopping, or the broker lost a message: ingest restarts (service.py)
            except Exception as error:  # noqa: BLE001 - no failure may stop ingest (docstring)
                wait = self.backoff(self.health.failures + 1)
                self.health.failed(_describe(error), wait)
                metrics.POLL_ERRORS.labels(self.source).inc()
                log.warning(
                    "poll failed; retrying",
                    exc_info=not isinstance(error, XApiError),  # a bug: show where
                    extra={"source": self.source, "handle": self.handle.handle,
                           "error": _describe(error), "failures_in_a_row": self.health.failures,
                           "retry_in_s": round(wait, 3)},
                )  # fmt: skip
            else:
                self.health.ok()
                self.health.detail["last_poll_found"] = found
                wait = self.settings.interval_s
            await asyncio.sleep(wait)

    def backoff(self, failures: int) -> float:
        """The wait after ``failures`` failed polls in a row."""
        return min(self.settings.interval_s * 2 ** min(failures, 30), self.settings.max_backoff_s)

    async def poll_once(self, deliver: Deliver) -> int:
        assert self.checkpoints is not None  # only the stream's backstop reads without them
        since = self.checkpoints.get(self.checkpoint_key)
        items, users = await self.fetch_newer_than(since)
        newest = max((_order(i) for i in items), default=-1)  # past what is not published too
        if since is None:  # the first poll: the latest page, of which only the recent is news
            items = self._recent_only(items)
        # An item without a numeric id cannot be ordered or checkpointed: it is handed over
        # first, and the service dead-letters what it cannot read.
        for item in sorted(items, key=_order):
            await deliver(self.handle, item, users)
        if newest >= 0:
            await self.checkpoints.save(self.checkpoint_key, str(newest))
        return len(items)

    def _recent_only(self, items: list[dict]) -> list[dict]:
        recent = [i for i in items if not self._history(i)]
        if skipped := len(items) - len(recent):
            metrics.TWEETS_SKIPPED.labels(self.source, "before_first_poll").inc(skipped)
            log.info("first poll: older items not published",
                     extra={"source": self.source, "handle": self.handle.handle,
                            "skipped": skipped,
                            "max_age_hours": self.settings.first_poll_max_age_hours})  # fmt: skip
        return recent

    def _history(self, item: object) -> bool:
        """Whether a first poll's item was written before ``first_poll_max_age_hours`` (an
        item whose time cannot be read is handed over: the service dead-letters it)."""
        at = _written_at(item)
        return at is not None and too_old(at, self.settings.first_poll_max_age_hours)

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
            items += _list(page, "data")
            users |= _users(page)
            token = _next_token(page)
            if token is None or since is None:
                if since is not None:  # read back to a point: did X's reach get there?
                    self._beyond_reach(items)
                return items, users

    async def fetch_since_time(
        self, start_time: str, end_time: str | None = None
    ) -> tuple[list[dict], dict[str, dict]]:
        """Every mention posted from ``start_time`` to ``end_time`` (all pages), oldest first.

        Read up to now and kept to ``end_time`` here: X's reach (a handle's latest 800
        mentions) counts the mentions after ``end_time`` too, and only they tell whether the
        start of the gap is still within it."""
        items: list[dict] = []
        users: dict[str, dict] = {}
        token = None
        while True:
            page = await self.api.mentions(
                self.handle.user_id,
                since_id=None,
                start_time=start_time,
                pagination_token=token,
                max_results=self.settings.max_results,
            )
            items += _list(page, "data")
            users |= _users(page)
            token = _next_token(page)
            if token is None:
                self._beyond_reach(items)
                end = iso_time(end_time) if end_time is not None else None
                # a tweet whose time cannot be read is kept: the service dead-letters it
                within = [
                    i for i in items if end is None or (at := _written_at(i)) is None or at <= end
                ]
                return sorted(within, key=_order), users

    def _beyond_reach(self, items: list[dict]) -> None:
        """X keeps a handle's latest 800 mentions: a read back to a point that returns that
        many may not have reached it, and what is older is out of X's reach. Said, counted."""
        if len(items) < MENTIONS_REACH:
            return
        metrics.MENTIONS_BEYOND_REACH.labels(self.handle.handle).inc()
        log.warning("mentions read back to X's reach: older ones in the gap cannot be read",
                    extra={"handle": self.handle.handle, "read": len(items),
                           "reach": MENTIONS_REACH})  # fmt: skip


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
            events = _list(page, "data")
            newer = [e for e in events if since is None or _order(e) > int(since)]
            items += newer
            users |= _users(page)
            token = _next_token(page)
            if token is None or since is None or len(newer) < len(events):
                return items, users


def _written_at(item: object) -> datetime | None:
    """When a tweet or a DM event was written, as X gives it; None when unreadable."""
    written = item.get("created_at") if isinstance(item, dict) else None
    try:
        at = iso_time(written) if isinstance(written, str) else None
    except NormalizeError:
        return None
    return at if at is not None and at.tzinfo is not None else None


def _order(item: object) -> int:
    """A tweet's or DM event's id as a number; -1 when it has none."""
    value = item.get("id") if isinstance(item, dict) else None
    return int(value) if isinstance(value, str) and value.isdigit() else -1


def _list(page: dict, key: str) -> list:
    value = page.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise XApiError(f"malformed page: {key} is {type(value).__name__}, not a list")
    return value


def _users(page: dict) -> dict[str, dict]:
    includes = page.get("includes")
    users = includes.get("users") if isinstance(includes, dict) else None
    if not isinstance(users, list):
        return {}
    return {u["id"]: u for u in users if isinstance(u, dict) and isinstance(u.get("id"), str)}


def _next_token(page: dict) -> str | None:
    meta = page.get("meta")
    token = meta.get("next_token") if isinstance(meta, dict) else None
    return token if isinstance(token, str) and token else None


def _describe(error: BaseException) -> str:
    return str(error) if isinstance(error, XApiError) else f"{type(error).__name__}: {error}"
