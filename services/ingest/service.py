"""The ingest service: publishes every tweet and DM addressed to the company's handles, once.

Sources (each optional, see ``ingest`` in the YAML file): the X filtered stream, each handle's
mentions timeline and direct messages (polled with durable checkpoints), Account Activity
webhooks, and backfill from a JSONL replay file or an X archive export. Whatever the source:

- an inbound tweet becomes a RawTweet on ``switchboard.tweets.raw``, keyed by conversation id;
- a tweet or DM sent by one of the company's own handles becomes a BrandTweet on
  ``switchboard.tweets.brand`` (response times are measured from them downstream);
- plain retweets are skipped unless ``ingest.include_retweets``;
- a deletion becomes a ComplianceEvent on ``switchboard.compliance``;
- the same tweet id from any source, within ``ingest.dedup_window_hours``, is published once,
  and so is the deletion of a tweet;
- input that is not a tweet goes to ``switchboard.deadletter`` with the reason and the bytes.

No X error stops ingest: every source retries and reports its state (``/readyz`` lists each
source, ``switchboard_ingest_source_up``), and a source that crashes on something unforeseen is
restarted with a backoff. The one failure that does stop ingest is the broker losing a message
that could not be sent again (``KafkaPublishError``): the process exits, its orchestrator
restarts it, and the stream's gap is recovered at the restart (stream.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import zipfile
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaError
from fastapi import FastAPI

from switchboard.ingest import metrics
from switchboard.ingest.archive import UNREADABLE_ZIP, Archive, ArchiveError
from switchboard.ingest.checkpoints import Checkpoints
from switchboard.ingest.config import IngestFileConfig
from switchboard.ingest.dedup import SeenTweets
from switchboard.ingest.health import Health, SourceHealth
from switchboard.ingest.normalize import (
    Deletion,
    NormalizeError,
    deletion_from_activity,
    deletion_from_compliance,
    dm_from_activity,
    dm_from_v2,
    origin,
    other_compliance,
    tweet_from_v1,
    tweet_from_v2,
    tweet_from_v2_data,
    written_by_now,
)
from switchboard.ingest.polling import DirectMessagesPoller, MentionsPoller
from switchboard.ingest.replay import paced, paced_lines
from switchboard.ingest.settings import IngestSettings
from switchboard.ingest.stream import FilteredStream
from switchboard.ingest.webhook import too_old, webhook_router
from switchboard.ingest.xapi import XApi
from switchboard.shared import topics
from switchboard.shared.access import AccessPolicy
from switchboard.shared.config import HandleConfig, SecretRef
from switchboard.shared.events import (
    BrandTweet,
    ComplianceEvent,
    DecodeError,
    RawTweet,
    Trace,
    Tweet,
    TweetSource,
    utc_now,
)
from switchboard.shared.kafka import (
    InFlight,
    KafkaPublishError,
    Output,
    dead_letter,
    ensure_topics,
    make_producer,
    publish,
    read_to_end,
)
from switchboard.shared.runtime import http_app, run_service
from switchboard.shared.settings import ConfigError, read_secret

log = logging.getLogger(__name__)

TOPICS = [topics.RAW, topics.BRAND, topics.COMPLIANCE, topics.DEADLETTER, topics.INGEST_CHECKPOINTS]
DELETED = "deleted:"  # a deletion's id in the memory of seen ids: this prefix and the tweet id


class IngestService:
    name = "ingest"

    def __init__(self, settings: IngestSettings) -> None:
        self.settings = settings
        self.config = settings.config
        ingest = self.config.ingest
        self.seen = SeenTweets(ingest.dedup_capacity, ingest.dedup_window_hours * 3600)
        self.producer = make_producer(settings.kafka, client_id="switchboard-ingest")
        self.in_flight = InFlight(self.producer, self.name)
        # tweet id (or deletion key): whether the copy being published gets stored
        self._unacknowledged: dict[str, asyncio.Future[bool]] = {}
        self.checkpoints = Checkpoints(settings.kafka, self.producer)
        for name in self._apps_in_use():  # a missing credential fails at start, naming its key
            read_secret(ingest.x.apps[name].bearer_token, f"ingest.x.apps.{name}.bearer_token")
        self._apis: dict[str, XApi] = {}  # by credential: X counts rate limits per credential
        self.health = Health()
        self.stream: FilteredStream | None = None
        self.live_sources: set[str] = set()  # the live sources run() started
        self._ready = False
        self.finished_backfill = asyncio.Event()
        self.archive = self._archive() if settings.archive is not None else None

    def _archive(self) -> Archive:
        """The archive to backfill from, opened now: a path that is not an X archive fails at
        start, naming the setting (its data files are read, and dead-lettered if bad, later)."""
        assert self.settings.archive is not None
        try:
            return Archive(self.settings.archive)
        except (ArchiveError, OSError, zipfile.BadZipFile, *UNREADABLE_ZIP) as error:
            raise ConfigError(f"SWITCHBOARD_ARCHIVE: {error}") from None

    @property
    def ready(self) -> bool:
        return self._ready

    def readiness_detail(self) -> dict[str, object]:
        """Each source's state for /readyz: a failing source does not make ingest unready (the
        others and the webhook still work), it says so here and in the metrics."""
        sources = self.health.report()
        degraded = any(s["state"] == "failing" for s in sources.values())
        return {"sources": sources, "degraded": degraded}

    def _apps_in_use(self) -> set[str]:
        """The X apps the enabled sources need; only their secrets must exist."""
        x = self.config.ingest.x
        apps = {x.filtered_stream.app} if x.filtered_stream.enabled else set()
        if x.mentions.enabled:
            apps |= {h.app for h in self.config.handles}
        return apps

    async def start(self) -> None:
        await ensure_topics(
            self.settings.kafka,
            TOPICS,
            self.config.topics.partitions,
            self.config.topics.replication_factor,
        )
        await self.producer.start()
        restored = await self._restore_seen()
        await self.checkpoints.restore()
        log.info("deduplication restored", extra={"tweet_ids": restored})
        self._ready = True

    async def _restore_seen(self) -> int:
        """Refill the memory of seen ids from what was published within the window."""
        since_ms = int((time.time() - self.seen.window_s) * 1000)
        records: list[tuple[float, str, str | None]] = []

        def collect(record: ConsumerRecord) -> None:
            with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                value = json.loads(record.value)
                if "tweet_id" in value:  # a deletion
                    records.append((record.timestamp / 1000, DELETED + value["tweet_id"], None))
                    return
                tweet = value["tweet"]
                conversation = tweet.get("conversation_id")
                records.append((record.timestamp / 1000, tweet["id"], conversation))

        await read_to_end(
            self.settings.kafka, [topics.RAW, topics.BRAND, topics.COMPLIANCE], collect,
            since_ms=since_ms,
            client_id="switchboard-ingest-dedup",
        )  # fmt: skip
        for seen_at, tweet_id, conversation in sorted(records, key=lambda r: r[:2]):
            self.seen.remember(tweet_id, seen_at, conversation, counted=False)
        return len(records)

    def http_app(self) -> FastAPI:
        webhook = self.config.ingest.x.webhook
        signed = (webhook.path,) if webhook.enabled else ()  # X's signature authenticates it
        app = http_app(self, AccessPolicy.of(self.config.access, signed))
        if webhook.enabled:
            app_config = self.config.ingest.x.apps[webhook.app]
            assert app_config.consumer_secret is not None  # checked by the config model
            secret = read_secret(
                app_config.consumer_secret, f"ingest.x.apps.{webhook.app}.consumer_secret"
            )
            app.include_router(
                webhook_router(
                    webhook, secret.get_secret_value(), self.on_webhook, lambda: self.ready
                )
            )
        return app

    # --- sources -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        work = [asyncio.create_task(c) for c in self._sources()]
        # Each live source started reports from now, not from its first tweet: a source silent
        # since a restart (its rules gone, a webhook unsubscribed) then raises SourceSilent.
        self.live_sources = {health.source for health in self.health.sources.values()}
        if self.config.ingest.x.webhook.enabled:
            self.live_sources.add("webhook")
        for source in self.live_sources:
            metrics.LAST_EVENT_TIMESTAMP.labels(source).set(time.time())
        backfill = [asyncio.create_task(self._backfilled(*job)) for job in self._backfills()]
        if not work and not backfill and not self.config.ingest.x.webhook.enabled:
            # Valid, but it reads nothing: said on /readyz (degraded), the metrics and the log.
            problem = "no source: enable one under ingest.x, or set SWITCHBOARD_REPLAY_FILE"
            self.health.of("sources", "none").failed(problem, 0)
            log.error("ingest has nothing to read", extra={"problem": problem})
        try:
            if backfill:
                await asyncio.gather(*backfill)
            self.finished_backfill.set()
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait([stopping, *work], return_when=asyncio.FIRST_COMPLETED)
            for task in work:
                if task.done():
                    task.result()  # a source that crashed takes the service down, loudly
        finally:
            for task in [*work, *backfill]:
                task.cancel()
            await asyncio.gather(*work, *backfill, return_exceptions=True)

    def _backfills(self) -> list[tuple[SourceHealth, Coroutine[Any, Any, None]]]:
        jobs = []
        if self.settings.replay_file is not None:
            health = self.health.of("replay", self.settings.replay_file.name)
            jobs.append((health, self.replay()))
        if self.settings.archive is not None:
            jobs.append(
                (self.health.of("archive", self.settings.archive.name), self.replay_archive())
            )
        return jobs

    async def _backfilled(self, health: SourceHealth, backfill: Coroutine[Any, Any, None]) -> None:
        """A backfill run once: what it cannot read fails it, on /readyz and in the log, and
        leaves the live sources running (a file is not fixed by reading it again)."""
        try:
            await backfill
        except (asyncio.CancelledError, KafkaPublishError, KafkaError):
            raise  # the broker, not the file: ingest stops, and its restart resumes the backfill
        except Exception as error:  # noqa: BLE001 - a backfill must not take ingest down
            health.failed(f"{type(error).__name__}: {error}", 0)
            log.error("a backfill failed; the live sources go on", exc_info=True,
                      extra={"source": health.source, "file": health.handle})  # fmt: skip
        else:
            health.ok("done")

    def _sources(self) -> list[Coroutine[Any, Any, None]]:
        x = self.config.ingest.x
        jobs: list[Coroutine[Any, Any, None]] = []
        if x.filtered_stream.enabled:
            health = self.health.of("filtered_stream", f"app:{x.filtered_stream.app}")
            self.stream = FilteredStream(
                self._api(x.filtered_stream.app),
                self.config,
                self.on_stream,
                checkpoints=self.checkpoints,
                on_recovered=self.on_polled_mention,
                health=health,
                stored=self.in_flight.flush,
            )
            jobs.append(self._supervised(health, self.stream.run))
        for handle in self.config.handles:
            if x.mentions.enabled:
                health = self.health.of("mentions", handle.handle)
                poller = MentionsPoller(
                    handle, self._api(handle.app), self.checkpoints, x.mentions, health
                )
                jobs.append(self._supervised(health, poller.run, self.on_polled_mention))
            if x.direct_messages.enabled and handle.direct_messages:
                health = self.health.of("direct_message", handle.handle)
                api = self._user_api(handle)
                dms = DirectMessagesPoller(handle, api, self.checkpoints, x.direct_messages, health)
                jobs.append(self._supervised(health, dms.run, self.on_polled_dm))
        return jobs

    async def _supervised(
        self, health: SourceHealth, run: Callable[..., Awaitable[None]], *args: Any
    ) -> None:
        """Run a source; restart it with a growing wait if it crashes on something it did not
        foresee (its own retries handle what it did). A lost Kafka message is not retried
        here: the service exits (see the module docstring)."""
        crashes = 0
        while True:
            try:
                await run(*args)
                return
            except (asyncio.CancelledError, KafkaPublishError):
                raise
            except Exception as error:  # noqa: BLE001 - a source must not take ingest down
                crashes += 1
                wait = min(2.0**crashes, 60.0)
                health.failed(f"crashed: {type(error).__name__}: {error}", wait)
                metrics.SOURCE_RESTARTS.labels(health.source).inc()
                log.error(
                    "an ingest source crashed; restarting it",
                    exc_info=True,
                    extra={"source": health.source, "handle": health.handle, "retry_in_s": wait},
                )
                await asyncio.sleep(wait)

    def _api(self, app: str) -> XApi:
        name = f"app:{app}"
        if name not in self._apis:
            ref, key = self.config.ingest.x.apps[app].bearer_token, f"ingest.x.apps.{app}"
            self._apis[name] = self._x_api(name, ref, f"{key}.bearer_token")
        return self._apis[name]

    def _user_api(self, handle: HandleConfig) -> XApi:
        assert handle.user_token is not None  # checked by the config model
        name = f"user:{handle.handle}"
        if name not in self._apis:
            index = self.config.handles.index(handle)
            self._apis[name] = self._x_api(name, handle.user_token, f"handles[{index}].user_token")
        return self._apis[name]

    def _x_api(self, name: str, token: SecretRef, key: str) -> XApi:
        def reread() -> str:
            return read_secret(token, key).get_secret_value()

        retry = self.config.ingest.x.retry
        return XApi(self.settings.api_base_url, reread(), name, retry, reread=reread)

    async def replay(self) -> None:
        path = self.settings.replay_file
        assert path is not None
        log.info("replay started", extra={"file": str(path), "rate_per_s": self.settings.rate})
        lines = paced_lines(path, self.settings.rate, self.settings.replay_limit, self._published)
        async for number, line in lines:
            await self.on_line(line, "replay", where=f"replay {path.name}:{number}", wait=False)
        await self.in_flight.flush()
        log.info("replay finished", extra={"file": str(path)})

    def _published(self, line: bytes) -> bool:
        """A replay line whose tweet was published before a restart (the dedup memory is
        refilled from the topics at start): skipped without waiting for its turn."""
        try:
            tweet_id = json.loads(line)["data"]["id"]
        except (ValueError, KeyError, TypeError):
            return False  # not a tweet line: it goes through, and is dead-lettered if bad
        if isinstance(tweet_id, str) and tweet_id in self.seen:
            metrics.DUPLICATES_DROPPED.labels("replay").inc()
            return True
        return False

    async def replay_archive(self) -> None:
        archive = self.archive
        assert archive is not None
        items = [*archive.tweets(self.config), *archive.direct_messages(self.config)]
        items.sort(key=lambda i: i.created_at.timestamp() if isinstance(i, Tweet) else 0)
        async for item in paced(items, self.settings.rate, self.settings.replay_limit):
            if isinstance(item, NormalizeError):
                await self._dead_letter(item, _dump({"error": str(item)}), "archive")
            else:
                await self.offer(item, wait=False)
        await self.in_flight.flush()

    # --- what each source hands over ---------------------------------------------------------

    async def on_stream(self, line: bytes) -> None:
        # The stream cannot be asked to resend: waiting for each ack would only slow it down.
        await self.on_line(line, "filtered_stream", where="filtered_stream", wait=False)

    async def on_line(
        self, line: bytes, source: TweetSource, where: str, *, wait: bool = True
    ) -> str:
        """One JSON line of an X API v2 stream or replay file; returns what happened to it."""
        try:
            message = _parse_json(line)
            deletion = deletion_from_compliance(message) if isinstance(message, dict) else None
            if deletion is not None:
                return await self.publish_deletion(deletion, source)
            if kind := other_compliance(message):
                metrics.TWEETS_SKIPPED.labels(source, f"compliance_{kind}").inc()
                return "skipped"
            if isinstance(message, dict) and "data" not in message and "errors" in message:
                # X's stream reports operational problems (e.g. forced disconnects) this way.
                log.warning("X reported", extra={"where": where, "errors": message["errors"]})
                for kind in _notice_kinds(message["errors"]):
                    metrics.X_API_ERRORS.labels(source, kind).inc()
                return "x_error"
            if self._foreign_match(message, source):
                metrics.TWEETS_SKIPPED.labels(source, "foreign_rule").inc()
                return "skipped"
            tweet = tweet_from_v2(message, self.config, source)
        except DecodeError as problem:
            return await self._dead_letter(problem, line, where)
        return await self.offer(tweet, wait=wait)

    def _foreign_match(self, message: object, source: TweetSource) -> bool:
        """A streamed tweet that only another team's rules on the app matched."""
        if source != "filtered_stream" or self.stream is None or not isinstance(message, dict):
            return False
        return not self.stream.matched_for_us(message.get("matching_rules"))

    async def on_polled_mention(
        self, handle: HandleConfig, item: dict[str, Any], users: dict[str, dict]
    ) -> None:
        try:
            tweet = tweet_from_v2_data(item, users, self.config, "mentions", [handle.handle])
        except NormalizeError as problem:
            await self._dead_letter(problem, _dump(item), "mentions")
            return
        await self.offer(tweet)

    async def on_polled_dm(
        self, handle: HandleConfig, item: dict[str, Any], users: dict[str, dict]
    ) -> None:
        try:
            tweet = dm_from_v2(item, users, handle, self.config)
        except NormalizeError as problem:
            await self._dead_letter(problem, _dump(item), "dm_events")
            return
        await self.offer(tweet)

    async def on_webhook(self, body: bytes) -> int:
        """A signed Account Activity delivery; returns how many events were published.

        A body that is not an Account Activity object (``for_user_id``, or X's ``user_event``),
        and each event in it that cannot be published, is dead-lettered with the exact body as
        the original and the event named in the error. The other event kinds X documents
        (likes, follows, blocks, mutes, typing, read receipts) are counted and skipped; a
        revoke (``user_event``) is reported: that user's events stop until it is granted again.
        """
        try:
            payload = _parse_json(body)
            if not isinstance(payload, dict) or not (
                "for_user_id" in payload or "user_event" in payload
            ):
                raise DecodeError("invalid_event", "not an object with for_user_id")
        except DecodeError as problem:
            await self._dead_letter(problem, body, "webhook")
            return 0
        self._count_skipped_activity(payload)
        if "user_event" in payload:
            self._on_user_event(payload["user_event"])
        else:
            self._on_delivery_for(payload.get("for_user_id"))
        published = 0
        for name, build in _activity_events(payload, self.config):
            try:
                item = build()
            except DecodeError as problem:
                named = DecodeError(problem.reason, f"{name}: {problem.detail}")
                await self._dead_letter(named, body, "webhook")
                continue
            if isinstance(item, Deletion):
                published += await self.publish_deletion(item, "webhook") == "compliance"
            elif item is not None and not self._replayed(item):
                published += await self.offer(item) in ("inbound", "brand")
        return published

    def _count_skipped_activity(self, payload: dict[str, Any]) -> None:
        for kind, events in payload.items():
            if kind in SKIPPED_ACTIVITY:
                count = len(events) if isinstance(events, list) else 1
                metrics.WEBHOOK_EVENTS_SKIPPED.labels(kind).inc(count)
            elif kind not in ACTIVITY_FIELDS:
                metrics.WEBHOOK_EVENTS_SKIPPED.labels("unknown").inc()
                log.info("webhook event kind not known; skipped", extra={"kind": kind[:100]})

    def _on_user_event(self, event: object) -> None:
        """X's revoke: a user withdrew the app's access (Account Activity stops for them)."""
        revoke = event.get("revoke") if isinstance(event, dict) else None
        source = revoke.get("source") if isinstance(revoke, dict) else None
        user_id = source.get("user_id") if isinstance(source, dict) else None
        metrics.WEBHOOK_EVENTS_SKIPPED.labels("user_event").inc()
        handle = next((h for h in self.config.handles if h.user_id == str(user_id)), None)
        log.error(
            "a user revoked the app's access: Account Activity stops for them until it is "
            "authorized again",
            extra={"user_id": str(user_id), "handle": handle.handle if handle else None},
        )
        if handle is not None:
            self.health.of("webhook", handle.handle).failed("access revoked by the user", 0)

    def _on_delivery_for(self, user_id: object) -> None:
        """X delivers a handle's events again: a revoke it reported is over (the user
        authorized the app again and was subscribed again)."""
        handle = next((h for h in self.config.handles if h.user_id == str(user_id)), None)
        if handle is None:
            return
        health = self.health.sources.get(f"webhook:{handle.handle}")  # only a revoke makes one
        if health is not None and health.state == "failing":
            log.info("webhook events arrive again for a handle", extra={"handle": handle.handle})
            health.ok()

    def _replayed(self, tweet: Tweet) -> bool:
        """A tweet or DM written before the webhook's max event age: a replay (webhook.py)."""
        if not too_old(tweet.created_at, self.config.ingest.x.webhook.max_event_age_hours):
            return False
        metrics.TWEETS_SKIPPED.labels("webhook", "too_old").inc()
        log.warning("webhook event older than max_event_age_hours refused",
                    extra={"tweet_id": tweet.id, "created_at": tweet.created_at})  # fmt: skip
        return True

    # --- publishing ----------------------------------------------------------------------------

    async def offer(self, tweet: Tweet, *, wait: bool = True) -> str:
        """Publish ``tweet`` unless it was seen or is skipped; returns what happened to it.

        ``wait``: return once the broker acknowledged it (webhook responses and polling
        checkpoints need that); otherwise once it is queued (InFlight: a failure surfaces on the
        next offer and the source stops, and the tweet is forgotten as seen).
        """
        kind, own_handle = origin(tweet, self.config)
        if kind == "retweet":
            metrics.TWEETS_SKIPPED.labels(tweet.source, "retweet").inc()
            return "skipped"
        tweet = self._in_its_conversation(tweet)
        if not self.seen.first_time(tweet.id):
            if wait and not await self._first_copy_stored(tweet.id):
                return await self.offer(tweet, wait=wait)  # it was not: this copy goes
            metrics.DUPLICATES_DROPPED.labels(tweet.source).inc()
            if tweet.source in self.live_sources:  # it delivers (polling what the stream
                # brought): not silent; a backstop's copies count for no source of their own
                metrics.LAST_EVENT_TIMESTAMP.labels(tweet.source).set(time.time())
            return "duplicate"
        self.seen.in_conversation(tweet.id, tweet.conversation_id)
        trace = Trace(ingested_at=utc_now())
        if (kept := written_by_now(tweet, trace.ingested_at)) is not tweet:
            log.warning("a tweet's time is ahead of ingest's clock; published as written now",
                        extra={"tweet_id": tweet.id, "created_at": tweet.created_at})  # fmt: skip
            tweet = kept
        if own_handle is not None:
            output = Output.of(
                topics.BRAND,
                BrandTweet(handle=own_handle.handle, tweet=tweet, trace=trace),
                key=tweet.conversation_id,
            )
        else:
            output = Output.of(
                topics.RAW, RawTweet(tweet=tweet, trace=trace), tweet.conversation_id
            )
        # Not published: a later copy of the tweet must not count as a repeat.
        forget = lambda _: self.seen.forget(tweet.id)  # noqa: E731
        stored = self._storing(tweet.id)  # from now: a repeat waits for this copy
        try:
            ack = await self.in_flight.send(output, on_error=forget, sticky=not wait)
            # Added after InFlight's own callback: a failed copy is forgotten before a repeat
            # waiting for it wakes.
            ack.add_done_callback(lambda done: self._acknowledged(tweet, own_handle, stored, done))
            if wait:
                await ack
        except BaseException:
            forget(None)
            self._settle(tweet.id, stored, False)
            raise
        return "inbound" if own_handle is None else "brand"

    def _acknowledged(
        self,
        tweet: Tweet,
        own_handle: HandleConfig | None,
        stored: asyncio.Future[bool],
        ack: asyncio.Future[Any],
    ) -> None:
        """The broker's answer for ``tweet``: a repeat waiting for it is told, and a tweet
        stored is counted (a tweet queued and then refused is not ingested)."""
        self._settle(tweet.id, stored, not _failed(ack))
        if _failed(ack):
            return
        metrics.LAST_EVENT_TIMESTAMP.labels(tweet.source).set(time.time())
        if own_handle is not None:
            metrics.BRAND_TWEETS.labels(tweet.source, own_handle.handle).inc()
            return
        handle = tweet.addressed_handles[0] if tweet.addressed_handles else "none"
        metrics.TWEETS_INGESTED.labels(tweet.source, handle).inc()

    def _in_its_conversation(self, tweet: Tweet) -> Tweet:
        """A v1.1 reply (Account Activity, an archive), whose conversation stands in as the
        tweet it answers, joins that tweet's conversation when it was seen: the thread's root,
        as X's v2 sources name it, so a follow-up is not a conversation of its own."""
        replied = next((r.id for r in tweet.referenced_tweets if r.type == "replied_to"), None)
        if tweet.kind != "tweet" or replied is None or tweet.conversation_id != replied:
            return tweet
        conversation = self.seen.conversation_of(replied)
        if conversation is None or conversation == tweet.conversation_id:
            return tweet
        return tweet.model_copy(update={"conversation_id": conversation})

    def _storing(self, key: str) -> asyncio.Future[bool]:
        """A future of whether the copy of ``key`` being published gets stored, for repeats
        to wait on until it is settled (``_settle``)."""
        stored: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._unacknowledged[key] = stored
        return stored

    def _settle(self, key: str, stored: asyncio.Future[bool], outcome: bool) -> None:
        if self._unacknowledged.get(key) is stored:  # not a later copy's
            del self._unacknowledged[key]
        if not stored.done():
            stored.set_result(outcome)

    async def _first_copy_stored(self, key: str) -> bool:
        """Whether the copy seen first is stored: a repeat that must be able to say so (a
        webhook's answer to X, a polling checkpoint) waits for that copy's acknowledgement,
        and goes itself when the first failed."""
        stored = self._unacknowledged.get(key)
        if stored is None:
            return True
        await asyncio.wait({stored})  # its outcome, whatever it is; our own cancellation passes
        return stored.result()

    async def publish_deletion(self, deletion: Deletion, source: TweetSource) -> str:
        """Publish a deletion unless the same tweet's deletion was published already."""
        key = DELETED + deletion.tweet_id
        if not self.seen.first_time(key):
            if not await self._first_copy_stored(key):
                return await self.publish_deletion(deletion, source)  # it was not: this goes
            metrics.DUPLICATES_DROPPED.labels(source).inc()
            return "duplicate"
        event = ComplianceEvent(
            tweet_id=deletion.tweet_id,
            user_id=deletion.user_id,
            conversation_id=self.seen.conversation_of(deletion.tweet_id),
            event_at=deletion.event_at,
            source=source,
        )
        stored = self._storing(key)
        try:
            await publish(
                self.producer, [Output.of(topics.COMPLIANCE, event, deletion.tweet_id)], self.name
            )
        except BaseException:
            self.seen.forget(key)
            self._settle(key, stored, False)
            raise
        self._settle(key, stored, True)
        metrics.COMPLIANCE_EVENTS.labels(source).inc()
        return "compliance"

    async def _dead_letter(self, problem: DecodeError, original: bytes, where: str) -> str:
        letter = dead_letter(self.name, problem, original, source=where)
        await publish(self.producer, [letter], self.name)
        return "dead_letter"

    async def close(self) -> None:
        self._ready = False
        for api in self._apis.values():
            await api.close()
        with contextlib.suppress(KafkaPublishError):
            await self.in_flight.flush()
        await self.producer.stop()


def _parse_json(line: bytes) -> object:
    if not line.strip():
        raise DecodeError("empty_message", f"{len(line)} blank bytes")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError("invalid_utf8", str(exc)) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DecodeError("invalid_json", str(exc)) from None


ActivityItem = Tweet | Deletion | None
# Account Activity event kinds X documents that carry nothing to route, and the other fields of
# a body; any kind not named anywhere is counted as "unknown" and skipped (X adds kinds).
SKIPPED_ACTIVITY = frozenset({
    "favorite_events", "follow_events", "unfollow_events", "block_events", "unblock_events",
    "mute_events", "unmute_events", "direct_message_indicate_typing_events",
    "direct_message_mark_read_events",
})  # fmt: skip
ACTIVITY_FIELDS = frozenset({
    "for_user_id", "users", "apps", "user_has_blocked", "source", "user_event",
    "tweet_create_events", "direct_message_events", "tweet_delete_events",
})  # fmt: skip


def _activity_events(
    payload: dict[str, Any], config: IngestFileConfig
) -> Iterator[tuple[str, Callable[[], ActivityItem]]]:
    """Each event of an Account Activity body, named (``tweet_create_events[0]``), with the
    function that normalizes it (None for a DM event other than a message)."""
    users = payload.get("users") or {}

    def tweet(status: Any) -> ActivityItem:
        return tweet_from_v1(status, config, "webhook")

    def dm(event: Any) -> ActivityItem:
        if isinstance(event, dict) and event.get("type") != "message_create":
            return None  # typing indicators, read receipts...
        return dm_from_activity(event, users, config)

    for kind, build in (
        ("tweet_create_events", tweet),
        ("direct_message_events", dm),
        ("tweet_delete_events", deletion_from_activity),
    ):
        items = payload.get(kind) or []
        if not isinstance(items, list):
            yield kind, functools.partial(_not_a_list, kind)
            continue
        for index, item in enumerate(items):
            yield f"{kind}[{index}]", functools.partial(build, item)


def _failed(ack: asyncio.Future[Any]) -> bool:
    return ack.cancelled() or ack.exception() is not None


def _not_a_list(kind: str) -> ActivityItem:
    raise DecodeError("invalid_event", f"{kind} is not a list")


def _dump(item: object) -> bytes:
    return json.dumps(item, ensure_ascii=False).encode()


def main(**overrides: object) -> None:
    """Run the ingest service until SIGTERM or SIGINT; ``overrides`` replace settings."""
    settings = IngestSettings.load(**overrides)
    asyncio.run(run_service(IngestService, settings))


def _notice_kinds(errors: object) -> list[str]:
    """What each problem X sent on the stream is: an OperationalDisconnectProblem's
    ``disconnect_type`` (``UpstreamOperationalDisconnect``, ``ForceDisconnect``: another
    connection of the app took over...), else its title."""
    problems = errors if isinstance(errors, list) else [errors]
    kinds = []
    for problem in problems:
        found = problem if isinstance(problem, dict) else {}
        kinds.append(str(found.get("disconnect_type") or found.get("title") or "unknown")[:64])
    return kinds
