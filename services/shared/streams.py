"""faust-streaming apps on the project's Kafka settings: the one place their options are chosen.

A service's state that belongs to a partition (route's conversations, notify's ledger) lives in
faust tables: each table writes a changelog, is restored from it on assignment, and after a
rebalance holds only the keys of the partitions its worker owns. These options make that hold,
on a real Kafka and on the embedded broker alike:

- ``store="rocksdb://"`` (through ``rocksdict``): a table keeps one store per partition and
  closes the ones revoked. faust's ``memory://`` store keeps a revoked partition's keys, so a
  worker would go on holding (and acting on) state it no longer owns. faust leaves a revoked
  store's files on disk and, should the partition come back, replays the changelog from the
  offset they hold; keys deleted meanwhile would come back once compaction removed their
  tombstones (a sent digest sent again, a done delivery redriven). ``_TableManager`` removes,
  at every rebalance, the store of each partition the worker does not hold (neither active nor
  standby); a restart keeps the stores of the partitions it gets back and restores only what
  it missed, unless they were last known in step with their changelog longer ago than the
  changelogs keep tombstones (``topics.TOMBSTONES_KEPT_MS``, set on the topics the project
  creates): those are discarded at start and restored from the beginning
  (``discard_stale_stores``). A worker stamps each store it keeps in step (an active one
  restored, a standby caught up) when its recovery completes and every ``IN_SYNC_EVERY_S``;
  the stamp, not the files' times, says how old a store is (opening a store writes its files,
  so a replica crash-looping through its recovery would look fresh by them).
- ``consumer_group_instance_id`` (static membership, ``KAFKA_GROUP_INSTANCE_ID``, else the
  host's name and the service): a restarted worker takes its partitions back at once. The
  embedded broker needs it: it never expires a member that died, and it answers a commit
  during a rebalance with ILLEGAL_GENERATION, after which a dynamic member rejoins under a new
  id and the group waits for the old one forever.
- ``canonical_url``: the worker's address as other workers would reach it (faust 0.15.3
  assigns partitions by member id, so workers sharing one, as the chart's pods do with
  ``0.0.0.0``, are still told apart; only faust's report of its assignment names it).
- ``processing_guarantee="at_least_once"`` with the producer acknowledging from every in-sync
  replica (``producer_acks=-1``): faust commits only offsets the agent acknowledged;
  ``AckAfterPublish`` acknowledges an input only after the broker acknowledged its outputs and
  every table changelog write made until then (``ChangelogWrites``). faust's own flush before
  a commit is no such guarantee: it gives up once its buffer sent nothing for 0.1 s. What a
  crash makes the next owner process again is what was acknowledged but not yet committed:
  faust commits every second (``broker_commit_interval``) and, in a burst (a backlog after an
  upstream restart), also after every 100 acknowledged inputs (``broker_commit_every``), so
  a kill -9 repeats at most about a hundred acknowledged inputs rather than a second of
  catch-up at full speed.
- its consumer pauses ``fetch_idle_pause_ms`` after a fetch that brought nothing, as the
  project's own consumers do (``kafka.pause_when_idle``), and its producer lingers 5 ms to put
  a few records in one request: without both, route spent most of its CPU asking the broker
  for records and sending them one by one.
- faust's own web server is off: each service keeps /healthz, /readyz and /metrics on its
  FastAPI port.
- two faust (0.15.3) fixes, without which a worker lost input records after a restart, a
  rebalance or a broker restart (a company reply never read, a partition's backlog never
  routed):
  ``_Consumer`` lets aiokafka hand over only the records of partitions active at that moment
  (faust gave it its live set, which, emptied while a fetch waits, reads as "every
  partition"; a copy let a fetch begun before a rebalance drain, after the seek, partitions
  paused since: either way records were consumed and then skipped), and ``_Recovery`` seeks
  the input partitions while they are still paused (a partition never committed to the
  start, as ``consumer_auto_offset_reset`` says), then resumes them together with the clear
  of the stream buffers (faust resumed, awaited the seek, then cleared: what the agent was
  handed meanwhile was dropped, its offset already counted as read).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import shutil
import socket
import tempfile
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import faust
from aiokafka.errors import KafkaError
from faust.exceptions import ProducerSendError
from faust.stores.rocksdb import Store as RocksDBStore
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, EventT
from faust.types.auth import CredentialsT
from faust.windows import TumblingWindow
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    wait_exponential_jitter,
)

from switchboard.shared import metrics, topics
from switchboard.shared.events import DecodeError, E, decode
from switchboard.shared.kafka import (
    TRANSIENT_ERRORS,
    Output,
    StageFault,
    client_options,
    dead_letter_record,
    pause_when_idle,
    publish,
)
from switchboard.shared.settings import KafkaSettings, ServiceSettings

log = logging.getLogger(__name__)

# faust's RocksDB defaults are sized for a host of its own: per store, memtables of 64 MB (up
# to three) and a block cache of up to 2 GB, and a table keeps one store per partition. A
# replica holds a few tables over a few partitions, whose values change often (each write a
# new version in the memtable), so each store is held to a few MB: RocksDB flushes to disk
# sooner, and reads of recent writes stay in memory anyway.
STORE_OPTIONS: dict[str, int] = {
    "write_buffer_size": 4 * 2**20,
    "max_write_buffer_number": 2,
    "block_cache_size": 8 * 2**20,
}

LAG_EVERY_S = 5.0  # how often a replica reports its consumer lag
# How often a worker stamps the stores it keeps in step with their changelogs: far inside
# topics.TOMBSTONES_KEPT_MS, the age beyond which a store is not trusted.
IN_SYNC_EVERY_S = 300.0
# The changelogs faust creates itself keep deletions as long as those the project creates: a
# store last in step within that time is trusted at a restart (discard_stale_stores).
CHANGELOG_CONFIG = {"delete.retention.ms": str(topics.TOMBSTONES_KEPT_MS)}
IN_SYNC_SUFFIX = ".in-sync"


class TtlMemory:
    """Values by key kept for one to two ``ttl_s``, in a windowed faust table: tumbling windows
    of one TTL, the current and the previous one read; faust drops older windows and keeps
    each partition's keys with the partition's owner. By the wall clock, not the stream's: the
    same reading inside the stream and outside. Writes must run inside the stream of a record
    of the key's partition (its changelog)."""

    def __init__(
        self, app: faust.App, name: str, partitions: int, ttl_s: float, default: type, help: str
    ) -> None:
        self.window_s = float(max(1, math.ceil(ttl_s)))  # never kept for less than ttl_s
        self.windows = TumblingWindow(self.window_s, expires=2 * self.window_s)
        self.table = app.Table(
            name, default=default, key_type=str, partitions=partitions, options=STORE_OPTIONS,
            extra_topic_configs=CHANGELOG_CONFIG, help=help,
        ).using_window(self.windows).relative_to(lambda _event: time.time())  # fmt: skip

    def get(self, key: str) -> Any:
        """The value of the current window, else of the previous one (falsy: none)."""
        windows = self.table[key]
        return windows.value() or windows[self.windows.current(time.time() - self.window_s)]

    def put(self, key: str, value: Any) -> None:
        self.table[key] = value


def stream_app(
    app_id: str,
    kafka: KafkaSettings,
    *,
    state_dir: Path,
    member: str,
    url: str,
    partitions: int,
    replication_factor: int = 1,
    standby_replicas: int = 0,
) -> faust.App:
    """A faust app with the id ``app_id`` (its consumer group and the prefix of its
    changelog topics), keeping its tables under ``state_dir``; ``member`` is the replica's
    static member name (``member_name``), ``url`` the address other replicas know it by."""
    app = faust.App(
        app_id,
        broker=[f"kafka://{server}" for server in kafka.require_bootstrap().split(",")],
        broker_credentials=credentials(kafka),
        store="rocksdb://",
        datadir=str(state_dir),
        topic_partitions=partitions,
        topic_replication_factor=replication_factor,
        table_standby_replicas=standby_replicas,
        consumer_group_instance_id=member,
        canonical_url=url,
        broker_commit_interval=1.0,
        broker_commit_every=100,
        web_enabled=False,
        processing_guarantee="at_least_once",
        producer_acks=-1,
        producer_max_request_size=kafka.max_message_bytes,
        producer_linger=0.005,  # as the project's own producers: a few records per request
        consumer_max_fetch_size=min(4 * 2**20, kafka.fetch_max_bytes),  # per partition, as theirs
        TableManager=_TableManager,
        Table=_Table,
    )
    app.changelog_writes = ChangelogWrites()  # type: ignore[attr-defined]
    app.transport = _Transport(app.conf.broker_consumer, app)
    app.transport.idle_pause_s = kafka.fetch_idle_pause_ms / 1000
    app.transport.fetch_max_bytes = kafka.fetch_max_bytes

    async def stamp_stores_in_sync() -> None:
        app.tables.stamp_in_sync()  # type: ignore[attr-defined] - our _TableManager

    app.timer(IN_SYNC_EVERY_S, name="stores-in-sync")(stamp_stores_in_sync)
    return app


class StreamWorker:
    """A service's faust app and its lifecycle: started as a task of the service, ready once
    its tables are restored, stopped with the service; its stores go with it when they were
    kept in a temporary directory (no ``state_dir``)."""

    def __init__(
        self,
        app_id: str,
        service: str,
        settings: ServiceSettings,
        *,
        state_dir: Path | None = None,
        standby_replicas: int = 0,
    ) -> None:
        self.service = service
        self._temporary = state_dir is None
        state_dir = state_dir or Path(tempfile.mkdtemp(prefix=f"switchboard-{service}-"))
        self.partitions = settings.config.topics.partitions
        self.app = stream_app(
            app_id,
            settings.kafka,
            state_dir=state_dir,
            member=member_name(settings.kafka, service),
            url=f"http://{settings.http_host}:{settings.port}",
            partitions=self.partitions,
            replication_factor=settings.config.topics.replication_factor,
            standby_replicas=standby_replicas,
        )
        self._task: asyncio.Task[None] | None = None
        self._lag = metrics.LagReport(app_id)
        self.app.timer(LAG_EVERY_S, name="consumer-lag")(self.report_lag)

    def table(self, name: str, changelog: str, help: str) -> faust.Table:
        """A table of raw bytes by key (the service encodes its events itself) whose changelog
        is the compacted topic ``changelog``, co-partitioned with the service's inputs."""
        return self.app.Table(
            name, key_type=bytes, value_type=bytes, partitions=self.partitions,
            changelog_topic=raw_topic(
                self.app, changelog, partitions=self.partitions, compacting=True
            ),
            options=STORE_OPTIONS, help=help,
        )  # fmt: skip

    def joined_topics(self) -> list[str]:
        """The topics faust reads by partition number together on this app: its agents' inputs
        and its tables' changelogs, each of which must have ``partitions``
        (``ensure_topics(co_partitioned=...)``). Read from the app, not listed by hand, so an
        agent or a table added later is checked as well."""
        inputs = {name for agent in self.app.agents.values() for name in agent.channel.topics}
        changelogs = {table.changelog_topic.get_topic_name() for table in self.app.tables.values()}
        return sorted(inputs | changelogs)

    @property
    def ready(self) -> bool:
        return self._task is not None and worker_ready(self.app)

    async def report_lag(self) -> None:
        """``switchboard_consumer_lag`` of the input partitions this replica owns (not of its
        tables' changelogs), as the aiokafka services report theirs: the dashboards and the
        lag alert read it by consumer group."""
        consumer = self.app.consumer
        changelogs = set(self.app.tables.changelog_topics)
        held = {tp for tp in consumer.assignment() if tp.topic not in changelogs}
        lags: dict[tuple[str, int], int] = {}
        for tp in held:
            with contextlib.suppress(KafkaError, AssertionError):
                end, position = consumer.highwater(tp), await consumer.position(tp)
                if end is not None and position is not None:
                    lags[(tp.topic, tp.partition)] = max(0, end - position)
        self._lag.report({(tp.topic, tp.partition) for tp in held}, lags)

    async def start(self) -> None:
        if not self._temporary:
            stores_to_run_on(Path(self.app.conf.tabledir))
        self._task = asyncio.create_task(self.app.start(), name=f"{self.service}-streams")
        await until_worker_ready(self.app)

    def check(self) -> None:
        """Raise if the stream processor crashed (the service then stops and is restarted)."""
        if self.app.crashed:
            raise RuntimeError(f"the stream processor crashed: {self.app.crash_reason!r}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        stopped = False
        with contextlib.suppress(Exception):
            await self.app.stop()
            stopped = True
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._temporary:
            shutil.rmtree(self.app.conf.datadir, ignore_errors=True)
        elif stopped and changelog_writes(self.app).all_acknowledged():
            # every change its stores hold is in its changelog: a restart may keep them
            running_mark(Path(self.app.conf.tabledir)).unlink(missing_ok=True)


class ChangelogWrites:
    """The app's table changelog writes the broker has not acknowledged yet.

    faust queues a table's changelog record in its producer's buffer and flushes that buffer
    before a commit only until 0.1 s pass without a send: a write stuck behind a slow broker
    could be left out of the commit that covered its input, and lost at a kill -9. An input
    is therefore acknowledged only once every write made before its acknowledgement was (its
    own among them, since it was handled first). A write that failed crashes the stage."""

    def __init__(self) -> None:
        self._pending: deque[tuple[int, asyncio.Future[Any]]] = deque()  # in the order made
        self._made = 0
        self.failed: BaseException | None = None

    def add(self, write: asyncio.Future[Any]) -> None:
        self._made += 1
        self._pending.append((self._made, write))

    def all_acknowledged(self) -> bool:
        """Whether every write made so far was acknowledged (none pending, none failed)."""
        done = all(write.done() and _failure(write) is None for _, write in self._pending)
        return done and self.failed is None

    async def settled(self) -> None:
        """Until every write made so far is acknowledged; raises the first one that failed.
        Waits on the oldest unacknowledged write at a time: cheap when they are done."""
        last = self._made
        while True:
            while self._pending and self._pending[0][1].done():
                _, write = self._pending.popleft()
                self.failed = self.failed or _failure(write)
            if self.failed is not None:
                raise self.failed
            if not self._pending or self._pending[0][0] > last:
                return
            await asyncio.wait([self._pending[0][1]])  # shared by every waiter, never cancelled


def _failure(write: asyncio.Future[Any]) -> BaseException | None:
    """Why a finished changelog write was not acknowledged, or None: cancelled counts (it is
    not in the changelog)."""
    if write.cancelled():
        return RuntimeError("a changelog write was cancelled")
    return write.exception()


def changelog_writes(app: faust.App) -> ChangelogWrites:
    """The app's ``ChangelogWrites`` (made with the app by ``stream_app``)."""
    writes: ChangelogWrites = app.changelog_writes  # type: ignore[attr-defined]
    return writes


class _Table(faust.Table):
    """faust's table, whose windows expire wherever they came from.

    faust (0.15.3) expires a windowed table's windows by a list of those its process wrote.
    Windows read from the changelog (restored at a start or a rebalance, or kept up to date on
    a standby) and windows found in a store a restart kept were not on it: they stayed in the
    replica's store for good, and with them each restart's worth of spike counts, corrections,
    early replies and deletions. Each window read from the changelog is listed as it is
    written to the store, and, once per partition, the windows a kept store already held."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._partitions_listed: set[int] = set()

    def _expiring(self) -> bool:
        return self.window is not None and self.window.expires is not None

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        """faust's write to the changelog, whose acknowledgement an input's waits for."""
        sent = super().send_changelog(*args, **kwargs)
        changelog_writes(self.app).add(sent)
        return sent

    def apply_changelog_batch(self, batch: Iterable[EventT]) -> None:
        events = list(batch)
        super().apply_changelog_batch(events)
        if not self._expiring():
            return
        for event in events:
            message = event.message
            self._list_for_expiry(message.key, message.partition, deleted=message.value is None)

    def expire_kept_windows(self) -> int:
        """List for expiry the windows of each partition's store not listed yet (a store kept
        across a restart holds windows its changelog does not replay); returns how many."""
        store = self.data
        if not self._expiring() or not isinstance(store, RocksDBStore):
            return 0
        found = 0
        for partition, db in list(store._dbs.items()):  # noqa: SLF001 - faust keeps no other index
            if partition in self._partitions_listed:
                continue
            self._partitions_listed.add(partition)
            for raw in store._visible_keys(db):  # noqa: SLF001
                self._list_for_expiry(raw, partition)
                found += 1
        return found

    def _list_for_expiry(self, raw: bytes, partition: int, deleted: bool = False) -> None:
        """List a window's key for faust's expiry (once: faust's list of window ends grows with
        each listing until the window expires), or unlist a deleted one.
        ``_partitions_listed`` is never cleared: the store of a partition no longer held is
        removed (``_TableManager``), and the changelog lists its windows when it comes back."""
        try:
            key = self._to_key(self.data._decode_key(raw))  # noqa: SLF001 - (key, (start, end))
            if deleted:
                self._maybe_del_key_ttl(key, partition)
            elif key not in self._partition_timestamp_keys.get((partition, key[1][1]), ()):
                self._maybe_set_key_ttl(key, partition)
        except (ValueError, TypeError, IndexError, KeyError) as error:
            # Not a window's key (a record written by hand?): kept, never expired. Raising
            # would stop the recovery, which would apply the same batch again and again.
            log.warning("a changelog key that names no window", extra={
                "table": self.name, "partition": partition, "error": str(error)})  # fmt: skip


class _Recovery(Recovery):
    """faust's recovery, with the input partitions sought before they are resumed.

    faust (0.15.3) resumes the input partitions, then awaits the seek to the committed
    offsets, then resumes the flow, which clears the stream buffers. While it awaits the seek,
    its fetcher, running since the changelogs were read, hands records of the resumed
    partitions to the agents; one still buffered at the clear is dropped, and the fetcher has
    already counted its offset as read, so it is not fetched again: a company reply was lost
    this way after a restart. Seeking while the partitions are paused, then resuming them,
    clearing and resuming the flow with no await in between, leaves nothing to drop."""

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        self.log.info("Restore complete!")
        await self.app.on_rebalance_complete.send()
        self._set_recovery_ended()
        completing = [asyncio.ensure_future(table.on_recovery_completed(
            self.actives_for_table[table], self.standbys_for_table[table]))
            for table in self.tables.values()]  # fmt: skip
        if completing:
            await asyncio.wait(completing)
        if self.app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again")
            return
        for table in self.tables.values():
            if isinstance(table, _Table) and (kept := table.expire_kept_windows()):
                self.log.info("Windows kept on disk by %s, to expire with their windows: %d",
                              table.name, kept)  # fmt: skip
        await self._seek_then_resume()
        self.tables.on_actives_ready()
        if not self.app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        self.app.on_rebalance_end()
        self.tables.stamp_in_sync()  # type: ignore[attr-defined] - our _TableManager
        self.log.info("Worker ready")

    async def _resume_streams(self, generation_id: int = 0) -> None:
        await self.app.on_rebalance_complete.send()
        if self.app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again")
            return
        await self._seek_then_resume()
        self.tables.on_actives_ready()
        self.tables.on_standbys_ready()
        self.app.on_rebalance_end()
        self.tables.stamp_in_sync()  # type: ignore[attr-defined] - our _TableManager
        self.log.info("Worker ready")

    async def _seek_then_resume(self) -> None:
        consumer = self.app.consumer
        inputs = {tp for tp in consumer.assignment() if not self._is_changelog_tp(tp)}
        if inputs:
            self.log.info("Seek stream partitions to committed offsets.")
            await self._wait(consumer.perform_seek(), timeout=self.app.conf.broker_request_timeout)
            # faust leaves a partition its group never committed where the fetcher got to; read
            # it from the start, as ``consumer_auto_offset_reset`` (earliest) says.
            uncommitted = [tp for tp in inputs if consumer._committed_offset.get(tp) is None]  # noqa: SLF001
            if uncommitted:
                await self._wait(consumer.seek_wait(dict.fromkeys(uncommitted, 0)))
        # From here to the flow's resumption, nothing awaits: no record can be fetched between
        # the clear of the stream buffers (flow_control.resume) and the partitions' resumption.
        consumer.resume_partitions(inputs)
        self.completed.set()
        self.app.flow_control.resume()
        consumer.resume_flow()
        await self.app._fetcher.maybe_start()  # noqa: SLF001 - as faust's Recovery does


class _TableManager(TableManager):
    """faust's table manager with ``_Recovery``, started without faust's one-second pause.

    faust sleeps a second before it registers the tables, for tables declared after the app
    starts. A ``StreamWorker``'s tables are declared before (``table()``), and one declared
    later fails loudly ("Too late to add tables"): the pause only delayed every start and
    every failover by a second."""

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()

    async def on_rebalance(
        self,
        assigned: set[TP],
        revoked: set[TP],
        newly_assigned: set[TP],
        generation_id: int = 0,
    ) -> None:
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)
        # Every partition not held now, not only those just revoked: after a restart faust
        # revokes nothing, and a store left from before the restart would wait on disk.
        for table in self.values():
            store = table.data
            if not isinstance(store, RocksDBStore):
                continue
            changelog = table.changelog_topic.get_topic_name()
            held = {tp.partition for tp in assigned if tp.topic == changelog}
            count = table.changelog_topic.partitions or self.app.conf.topic_partitions
            for partition in set(range(count)) - held:
                path = store.partition_path(partition)
                in_sync_stamp(path).unlink(missing_ok=True)
                if path.exists():
                    shutil.rmtree(path, ignore_errors=True)
                    self.log.info("Removed the store of a partition not held: %s", path)

    def stamp_in_sync(self) -> list[Path]:
        """Stamp now on the store of each partition this ready worker keeps in step with its
        changelog: every active one (restored before the worker was ready, then written with
        its changelog) and each standby that caught up with the changelog's end as it was at
        the recovery's start, its buffered events written to its store first. Returns the
        stores stamped."""
        if not worker_ready(self.app):
            return []
        recovery = self.recovery
        caught_up = {tp for tp, left in recovery.standby_remaining().items() if left <= 0}
        if caught_up:
            # A standby writes what it read to its store in batches (faust buffers up to
            # standby_buffer_size events): written now, its store holds what the stamp says.
            recovery.flush_buffers()
        stamped = []
        for table in self.values():
            store = table.data
            if not isinstance(store, RocksDBStore):
                continue
            standbys = recovery.standbys_for_table.get(table, set()) & caught_up
            for tp in recovery.actives_for_table.get(table, set()) | standbys:
                path = store.partition_path(tp.partition)
                if path.exists():
                    in_sync_stamp(path).touch()
                    stamped.append(path)
        return stamped

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = _Recovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    async def on_start(self) -> None:
        await super().on_start()
        pause_when_idle(self._consumer, self.transport.idle_pause_s)  # type: ignore[arg-type,attr-defined]

    def _create_worker_consumer(self, transport: Any) -> Any:
        """faust's consumer, fetching at most ``KAFKA_FETCH_MAX_BYTES`` at once over all its
        partitions as the project's own consumers do (faust sets only the per-partition limit,
        leaving aiokafka's 50 MB): under a backlog that, not the backlog, bounds its memory."""
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_bytes = transport.fetch_max_bytes  # noqa: SLF001 - read at start()
        return consumer


class _ActivePartitions:
    """faust's live set of active partitions as aiokafka's fetch reads it: membership is
    asked of the live set when aiokafka drains its buffer, and the view is never empty.

    A fetch runs in the consumer's thread and waits up to a second for records. faust hands it
    its live set; emptied meanwhile (every partition paused, as during a recovery), the set
    reads as "all partitions" to aiokafka, which drains and counts as consumed records that
    faust then skips. A copy of the set is no better: a fetch begun before a rebalance drains,
    after the recovery's seek, the records of partitions paused since, and faust skips those
    too (a whole partition's backlog after a broker restart). Asked at drain time, a paused
    partition's records stay in aiokafka's buffer, its position unmoved."""

    __slots__ = ("_live",)

    def __init__(self, live: set[TP]) -> None:
        self._live = live

    def __contains__(self, tp: object) -> bool:
        return tp in self._live

    def __bool__(self) -> bool:
        return True


class _Consumer(faust_aiokafka.Consumer):
    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> Any:  # noqa: ASYNC109 - faust's signature
        partitions = _ActivePartitions(active_partitions) if active_partitions is not None else None
        return await super()._getmany(partitions, timeout)  # type: ignore[arg-type]

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    """faust's aiokafka transport whose consumer pauses after an empty fetch
    (``kafka.pause_when_idle``): faust's own consumer would otherwise ask the embedded broker
    for records in a tight loop whenever its partitions are caught up."""

    Consumer = _Consumer
    idle_pause_s = 0.0
    fetch_max_bytes = 8 * 2**20


def credentials(kafka: KafkaSettings) -> CredentialsT | None:
    """The broker credentials faust needs for ``kafka.security_protocol``."""
    context = client_options(kafka).get("ssl_context")  # the one the aiokafka clients use
    if kafka.security_protocol.startswith("SASL"):
        password = kafka.sasl_password.get_secret_value() if kafka.sasl_password else ""
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=password,
            mechanism=kafka.sasl_mechanism or "PLAIN",
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def member_name(kafka: KafkaSettings, service: str) -> str:
    """The replica's static member name: ``KAFKA_GROUP_INSTANCE_ID`` (the pod name), else the
    host's name and the service. A replica restarted on the same host takes its partitions
    back under the same name, whatever port it gets; two replicas of one service on one host
    each need a ``KAFKA_GROUP_INSTANCE_ID`` of their own (one name fences the other)."""
    return kafka.group_instance_id or f"{socket.gethostname()}-{service}"


def discard_stale_stores(
    tabledir: Path,
    max_age_s: float,
    now: float | None = None,
    why: str = "discarded a table store older than its changelog's tombstones",
) -> list[Path]:
    """Remove the local table stores (one per table and partition) last known in step with
    their changelog more than ``max_age_s`` ago, or never stamped so (``in_sync_stamp``);
    returns them.

    A store is a cache of its changelog up to an offset, and faust restores from that offset
    on: deletions made after it by another replica are replayed only while the changelog still
    holds their tombstones, which compaction removes ``delete.retention.ms`` after. A store in
    step within that time is safe (a replica writes its stores while it holds their
    partitions, and no other replica writes then); an older one is restored from the start."""
    if not tabledir.is_dir():
        return []
    now = time.time() if now is None else now
    stores = sorted(tabledir.glob("*.db"))
    for stamp in tabledir.glob(f"*.db{IN_SYNC_SUFFIX}"):
        if not stamp.with_name(stamp.name.removesuffix(IN_SYNC_SUFFIX)).exists():
            stamp.unlink(missing_ok=True)  # its store is gone: a new one there starts unstamped
    stale = [store for store in stores if now - _in_step_at(store) > max_age_s]
    for store in stale:
        shutil.rmtree(store, ignore_errors=True)
        in_sync_stamp(store).unlink(missing_ok=True)
        log.info(why, extra={"store": str(store)})
    return stale


RUNNING_MARK = ".running"


def running_mark(tabledir: Path) -> Path:
    """The file that says a worker runs on these stores: made at its start, removed once it
    stopped with every changelog write acknowledged."""
    return tabledir / RUNNING_MARK


def stores_to_run_on(tabledir: Path) -> None:
    """Before a worker starts: drop the stores a crash or their age makes untrustworthy, then
    mark the folder as run on."""
    discard_stores_of_a_crash(tabledir)
    discard_stale_stores(tabledir, topics.TOMBSTONES_KEPT_MS / 1000)
    tabledir.mkdir(parents=True, exist_ok=True)
    running_mark(tabledir).touch()


def discard_stores_of_a_crash(tabledir: Path) -> list[Path]:
    """Remove every local table store when the last worker on them did not stop cleanly (its
    ``running_mark`` is still there: kill -9, out of memory, a node lost); returns them.

    RocksDB keeps a table's change at once, and its changelog record is sent after it: a
    change whose record a crash lost stays in the store, ahead of the changelog. The input
    read again then finds its work done and writes nothing, so the changelog never gets the
    change, and whoever restores the partition later does so without it (an SLA alert raised
    again, a ticket opened twice). Restored from the changelog, the store holds what the
    changelog does, and the input read again does its work again (at least once)."""
    if not running_mark(tabledir).exists():
        return []
    why = "the last worker did not stop cleanly: its table store is restored from its changelog"
    return discard_stale_stores(tabledir, -math.inf, why=why)  # every store


def in_sync_stamp(store: Path) -> Path:
    """The file whose time says when ``store`` was last known in step with its changelog."""
    return store.with_name(store.name + IN_SYNC_SUFFIX)


def _in_step_at(store: Path) -> float:
    try:
        return in_sync_stamp(store).stat().st_mtime
    except FileNotFoundError:
        return float("-inf")


def raw_topic(app: faust.App, *names: str, **options: Any) -> faust.TopicT:
    """Topics whose keys and values faust hands over as bytes: the services decode events
    themselves (``events.decode``), so that a record that is not an event is dead-lettered
    with the reason instead of crashing the agent in faust's own decoder."""
    return app.topic(
        *names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
        **options,
    )  # fmt: skip


def table_value(event_type: type[E], value: bytes | None, table: str) -> E | None:
    """A table's value as its event, or None when it cannot be read: only the service writes
    its tables, and an unreadable value (a bug, a hand-made record on the changelog) must not
    fail every record of its key, nor the sweep that reads them all. Logged and treated as
    absent: the next change of the key overwrites it."""
    if value is None:
        return None
    try:
        return decode(event_type, value)
    except DecodeError as problem:
        log.warning("unreadable table value ignored", extra={"table": table, "error": str(problem)})
        return None


PROGRESS_LOG_S = 30.0  # how often a worker still starting says so


def worker_ready(app: faust.App) -> bool:
    """The worker joined its group and restored its tables for the partitions it was given."""
    return app.tables.recovery.completed.is_set() and not app.rebalancing


async def until_worker_ready(app: faust.App, timeout_s: float | None = None) -> None:
    """Wait for ``worker_ready``: a service is not ready until its tables are restored and its
    inputs sought to the committed offsets (``_Recovery``). No limit by default: a table's
    restore takes as long as its changelog (docs/performance.md), and a service that gave up
    and restarted would throw away the store it had half restored (it has no stamp yet) and
    start again from nothing, forever. Meanwhile /readyz and ``switchboard_ready`` say it is
    not ready, and the log says so every ``PROGRESS_LOG_S``."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    logged = started
    while not worker_ready(app):
        if app.crashed:
            raise RuntimeError(f"the stream processor crashed: {app.crash_reason!r}")
        now = loop.time()
        if timeout_s is not None and now - started > timeout_s:
            raise TimeoutError(f"{app.conf.id}: not ready after {timeout_s:.0f} s")
        if now - logged >= PROGRESS_LOG_S:
            logged = now
            log.info("not ready yet: joining the group or restoring tables",
                     extra={"app": app.conf.id, "waited_s": round(now - started)})  # fmt: skip
        await asyncio.sleep(0.05)


class _Sender:
    """faust's producer behind the ``send(topic, value, key=, timestamp_ms=)`` that
    ``kafka.publish`` calls."""

    def __init__(self, app: faust.App) -> None:
        self.app = app

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        timestamp_ms: int | None = None,
    ) -> Any:
        timestamp = None if timestamp_ms is None else timestamp_ms / 1000  # faust's: seconds
        try:
            return await self.app.producer.send(topic, key, value, None, timestamp, None)
        except ProducerSendError as error:
            if isinstance(error.__cause__, KafkaError):
                raise error.__cause__ from None  # MessageSizeTooLargeError, timeouts...
            raise


async def publish_from_timer(sender: Any, outputs: list[Output], service: str, timer: str) -> bool:
    """A timer's outputs, published; False when the broker could not take them (away longer
    than the producer waits). A timer that raises stops faust's worker, and what a sweep asks
    for its next run finds again, so that is logged and counted, not fatal; the caller makes
    sure the next run asks again."""
    try:
        await publish(sender, outputs, service)
    except KafkaError as error:
        metrics.TIMER_FAILURES.labels(service, timer).inc()
        log.warning("a timer could not publish; its next run asks again",
                    extra={"timer": timer, "error": repr(error)})  # fmt: skip
        return False
    return True


# A faust Message -> what to publish, or a coroutine that will say (handled concurrently).
RecordHandler = Callable[[Any], list[Output] | Coroutine[Any, Any, list[Output]]]


class _InFlight(NamedTuple):
    """An input's outputs on their way to the broker (no input: drained deferred outputs)."""

    stream: faust.StreamT | None
    event: Any
    # A task: a handler still at work, which will give its outputs and their sends.
    outputs: list[Output] | asyncio.Task[tuple[list[Output], list[Any]]]
    sent: list[Any]  # the producer's futures, or the error that stopped a send


class AckAfterPublish:
    """Runs a service's handler over a faust stream with the delivery guarantee of the docs
    (docs/architecture.md, Delivery guarantees):
    an input's offset is acknowledged to faust (which commits acknowledged offsets) only once
    every output of that input, and of every input before it, was acknowledged by the broker.

    Each event is handled when it arrives, inside its own event context (faust tables write to
    the partition of the current event), and its outputs are sent at once; a separate task
    waits for the broker's acknowledgements in order and acknowledges the inputs. An output
    the broker refuses is sent again, with backoff, for as long as it takes: the inputs behind
    it wait, so a broker outage delays work and loses nothing. An output too large for the
    cluster is dead-lettered (``kafka.publish``). A record whose handling raises is
    dead-lettered ``processing_failed`` with the error: one poison record never stops a stream.
    An error of the infrastructure or of the stage itself (``the_stages_fault``: Kafka, the
    network, the disk under a table's store, ``StageFault``) is no record's fault: nothing is
    dead-lettered, the input is never acknowledged, and the app is crashed, so the service
    stops and, restarted, reads it again (as the services on ``StreamLoop`` do).

    A handler that returns a coroutine (notify: deliveries take a vendor's round trip) runs as
    a task of its own, started at once inside the event's context, so that many inputs are at
    work together (up to ``max_in_flight``); their outputs are sent, and the inputs
    acknowledged, in input order.

    ``deferred``, if given, returns outputs the handler accumulated over many inputs (route's
    spike counts, one record per key instead of one per tweet). It is drained every
    ``hold_s`` seconds (or after ``max_held`` inputs); the inputs handled since the previous
    drain are acknowledged only after the outputs drained for them were.
    """

    def __init__(
        self,
        app: faust.App,
        service: str,
        handle: RecordHandler,
        *,
        deferred: Callable[[], list[Output]] | None = None,
        hold_s: float = 0.25,
        max_held: int = 1_000,
        max_in_flight: int = 2_000,
    ) -> None:
        self.app = app
        self.service = service
        self.handle = handle
        self.sender = _Sender(app)
        self.deferred = deferred
        self.hold_s = hold_s
        self.max_held = max_held
        self._in_flight: asyncio.Queue[_InFlight] = asyncio.Queue(max_in_flight)
        self._held: list[_InFlight] = []
        self._releasing = asyncio.Lock()
        self._working: set[asyncio.Task[tuple[list[Output], list[Any]]]] = set()
        self._fault: BaseException | None = None  # the stage failed: nothing more is handled

    async def agent(self, stream: faust.StreamT) -> None:
        """The agent body: ``app.agent(topic)(acks.agent)``."""
        background = [asyncio.create_task(self._guarded(self._acknowledge()))]
        if self.deferred is not None:
            background.append(asyncio.create_task(self._guarded(self._release_every_hold())))
        try:
            await self._handle_each(stream)
        except Exception as error:  # noqa: BLE001 - a bug of this class, not of a record
            # Raised, faust would restart the agent, which would acknowledge the inputs after
            # those dropped here; crashed, the next process reads them all again.
            await self._stage_failed(error)
            await asyncio.Event().wait()  # parked until the service stops
        finally:
            for task in (*background, *self._working):  # stopped: nothing runs on its own
                task.cancel()
            await asyncio.gather(*background, *self._working, return_exceptions=True)
            self._forget_in_flight()

    async def _guarded(self, work: Coroutine[Any, Any, None]) -> None:
        """A background task of the agent: its failure crashes the stage, where unawaited it
        would stop acknowledging for good while the service still looked ready."""
        try:
            await work
        except Exception as error:  # noqa: BLE001 - a bug of this class, not of a record
            log.error("acknowledging inputs failed; the stage stops", exc_info=error)
            await self._stage_failed(error)

    async def _handle_each(self, stream: faust.StreamT) -> None:
        async for event in stream.noack().events():
            if self._fault is None:
                message = event.message
                metrics.CONSUMED.labels(self.service, message.topic).inc()
                try:
                    handled = self._handled(message)
                except Exception as error:  # _handled raises only what is the stage's
                    await self._stage_failed(error)
            if self._fault is not None:
                # Parked, not raised: faust's supervisor would restart the agent at once on
                # the same stream and handle (and acknowledge) the inputs after this one.
                # The app is crashed: the service stops, and this task is cancelled.
                await asyncio.Event().wait()
            if isinstance(handled, list):
                sent = [await self._send(output) for output in handled]
                item = _InFlight(stream, event, handled, sent)
            else:
                task = asyncio.create_task(self._awaited(handled, message))
                self._working.add(task)
                task.add_done_callback(self._working.discard)
                item = _InFlight(stream, event, task, [])
            if self.deferred is None:
                await self._in_flight.put(item)
                continue
            self._held.append(item)
            if len(self._held) >= self.max_held:
                await self._release()

    def _forget_in_flight(self) -> None:
        """Drop the inputs not acknowledged yet: they were not committed, so the partition's
        next owner processes them again, and faust, which waits at shutdown until no one holds
        an unacknowledged input, can stop."""
        self._held.clear()
        while not self._in_flight.empty():
            self._in_flight.get_nowait()

    async def _release_every_hold(self) -> None:
        while True:
            await asyncio.sleep(self.hold_s)
            await self._release()

    async def _release(self) -> None:
        """Send the deferred outputs, then let the held inputs be acknowledged behind them."""
        assert self.deferred is not None
        async with self._releasing:
            held, self._held = self._held, []
            outputs = self.deferred()  # drained with the swap: no await between the two
            if not held and not outputs:
                return
            sent = [await self._send(output) for output in outputs]
            await self._in_flight.put(_InFlight(None, None, outputs, sent))
            for item in held:
                await self._in_flight.put(item)

    def _handled(self, message: Any) -> list[Output] | Coroutine[Any, Any, list[Output]]:
        try:
            return self.handle(message)
        except Exception as error:  # noqa: BLE001 - any bug a record triggers; see the class
            if the_stages_fault(error):
                raise
            return self._failed_processing(message, error)

    async def _stage_failed(self, error: BaseException) -> None:
        """Stop handling and crash the app: ``StreamWorker.check`` stops the service, and what
        was not acknowledged is read again by the next process (faust commits an input's
        offset only once every input before it was acknowledged)."""
        if self._fault is not None:
            return
        self._fault = error
        await crash_for_the_stage(self.app, error)

    async def _awaited(
        self, handling: Coroutine[Any, Any, list[Output]], message: Any
    ) -> tuple[list[Output], list[Any]]:
        """The handler's outputs, sent as soon as it is done: inputs done out of order do not
        wait for the ones before them to reach the broker (only their acknowledgement does)."""
        try:
            outputs = await handling
        except Exception as error:  # noqa: BLE001 - as in _handled
            if the_stages_fault(error):  # as in agent: acknowledged never, read again
                await self._stage_failed(error)
                raise
            outputs = self._failed_processing(message, error)
        return outputs, [await self._send(output) for output in outputs]

    def _failed_processing(self, message: Any, error: Exception) -> list[Output]:
        log.error("a record failed processing; dead-lettered", exc_info=error)
        problem = DecodeError("processing_failed", f"{type(error).__name__}: {error}"[:2000])
        return [dead_letter_record(self.service, problem, message)]

    async def _send(self, output: Output) -> Any:
        try:
            return await self.sender.send(
                output.topic, output.value, key=output.key, timestamp_ms=output.timestamp_ms
            )
        except KafkaError as error:  # too large, or the producer's buffer is unusable
            return error

    async def _acknowledge(self) -> None:
        while True:
            stream, event, outputs, sent = await self._in_flight.get()
            if isinstance(outputs, asyncio.Task):
                outputs, sent = await outputs
            results = await asyncio.gather(
                *(s for s in sent if not isinstance(s, BaseException)), return_exceptions=True
            )
            failed = _failed(outputs, sent, iter(results))
            for output in _without(outputs, failed):
                metrics.PRODUCED.labels(self.service, output.topic).inc()
            if failed:  # publish() counts what it publishes
                try:
                    await self._publish_until_acknowledged(failed)
                except Exception as error:  # noqa: BLE001 - refused for good (not authorized)
                    await self._stage_failed(error)
                    return  # nothing more is acknowledged: the next process reads it again
            try:
                await changelog_writes(self.app).settled()
            except Exception as error:  # noqa: BLE001 - a table write the broker refused
                await self._stage_failed(error)
                return  # nothing more is acknowledged: the next process reads it again
            if stream is not None:
                await stream.ack(event)

    async def _publish_until_acknowledged(self, outputs: list[Output]) -> None:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(retriable),
            wait=wait_exponential_jitter(initial=0.2, max=10),
            before_sleep=_log_retry,
        ):
            with attempt:
                await publish(self.sender, outputs, self.service)  # type: ignore[arg-type]


def retriable(error: BaseException) -> bool:
    """Whether publishing may succeed if tried again: the network, a broker away or busy, a
    leader moving (Kafka's retriable errors). A refusal for good (the topic not authorized, a
    record too large for it) stops the stage instead: retried forever, it held every input
    unacknowledged behind it while the service said it was ready, and stalled the group's
    next rebalance."""
    if isinstance(error, KafkaError):
        return bool(error.retriable)
    return isinstance(error, OSError | StageFault)


# How RocksDB (through rocksdict, which raises a bare Exception) says its files failed.
_STORE_FAILURES = ("IO error", "Corruption", "No space")


def the_stages_fault(error: BaseException) -> bool:
    """Whether ``error`` is the stage's own (Kafka, the network, the disk under a table's
    store), not the record's: the record is then read again, never dead-lettered."""
    if isinstance(error, TRANSIENT_ERRORS):
        return True
    return type(error) is Exception and str(error).startswith(_STORE_FAILURES)


async def crash_for_the_stage(app: faust.App, error: BaseException) -> None:
    """Crash ``app`` for a fault of the stage (``the_stages_fault``): ``StreamWorker.check``
    stops the service. The caller then handles nothing more: what it did not acknowledge is
    read again by the next process."""
    log.error("the stage failed, not a record: stopping to read it again", exc_info=error)
    await app.crash(error)


def _failed(outputs: list[Output], sent: list[Any], results: Iterator[Any]) -> list[Output]:
    failed = []
    for output, first in zip(outputs, sent, strict=True):
        result = first if isinstance(first, BaseException) else next(results)
        if isinstance(result, BaseException):
            failed.append(output)
    return failed


def _without(outputs: list[Output], failed: list[Output]) -> list[Output]:
    return [output for output in outputs if all(output is not f for f in failed)]


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    log.warning("outputs not acknowledged yet; sending them again", extra={"error": repr(error)})
