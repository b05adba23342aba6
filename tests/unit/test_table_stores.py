"""A replica's local table stores: one not known in step with its changelog since before the
changelog's tombstones could have been removed is discarded."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from switchboard.shared import streams, topics
from switchboard.shared.streams import discard_stale_stores, in_sync_stamp

DAY = 24 * 3600.0
NOW = 1_900_000_000.0


def store(tables: Path, name: str, *, in_step_ago: float | None, written_ago: float = 60) -> Path:
    """A store whose files were written ``written_ago`` (opening a store writes them), last
    stamped in step with its changelog ``in_step_ago`` (None: never)."""
    path = tables / name
    path.mkdir(parents=True)
    (path / "000001.sst").write_bytes(b"x")
    os.utime(path / "000001.sst", (NOW - written_ago, NOW - written_ago))
    if in_step_ago is not None:
        stamp = in_sync_stamp(path)
        stamp.touch()
        os.utime(stamp, (NOW - in_step_ago, NOW - in_step_ago))
    return path


def test_a_store_not_in_step_since_before_the_tombstones_it_may_miss_were_removed_is_discarded(
    tmp_path: Path,
):
    tables = tmp_path / "v1" / "tables"
    # Opened a minute ago by a replica that crash-looped through its recovery: its files look
    # fresh, its stamp says when it last held all of its changelog.
    stale = store(tables, "route-conversations-0.db", in_step_ago=2 * DAY)
    fresh = store(tables, "route-conversations-1.db", in_step_ago=3600, written_ago=3 * DAY)
    unstamped = store(tables, "route-conversations-2.db", in_step_ago=None)
    other = tables / "notes"
    other.mkdir()
    orphan = in_sync_stamp(tables / "route-conversations-3.db")  # its store removed
    orphan.touch()

    assert discard_stale_stores(tables, DAY, now=NOW) == [stale, unstamped]
    assert not stale.exists() and not unstamped.exists()
    assert not in_sync_stamp(stale).exists() and not orphan.exists()
    assert fresh.exists() and in_sync_stamp(fresh).exists() and other.exists()
    assert discard_stale_stores(tmp_path / "absent", DAY, now=NOW) == []


def test_the_compacted_topics_keep_deletions_as_long_as_a_store_is_trusted():
    for topic in topics.COMPACTED:
        config = topics.topic_config(topic)
        assert config["cleanup.policy"] == "compact"
        assert int(config["delete.retention.ms"]) == topics.TOMBSTONES_KEPT_MS
    assert topics.topic_config(topics.RAW) == {}
    # spike counts are placed in their windows by the timestamps route gives them
    assert topics.topic_config(topics.ROUTE_SPIKES) == {"message.timestamp.type": "CreateTime"}


class _Restoring:
    """A faust app as ``worker_ready`` reads it, restoring until ``done`` is set."""

    def __init__(self) -> None:
        self.done = asyncio.Event()
        self.tables = SimpleNamespace(recovery=SimpleNamespace(completed=self.done))
        self.rebalancing = False
        self.crashed = False
        self.conf = SimpleNamespace(id="switchboard-route")


async def test_a_long_restore_is_waited_for_and_logged_not_given_up(monkeypatch, caplog):
    """A table restores as long as its changelog takes: the start waits (a service that gave
    up would restart and throw its half-restored, unstamped store away, forever) and says
    every PROGRESS_LOG_S that it is still at it."""
    monkeypatch.setattr(streams, "PROGRESS_LOG_S", 0.05)
    caplog.set_level("INFO", logger=streams.__name__)
    app = _Restoring()

    def waits() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage().startswith("not ready yet")]

    async def restored_after_three_logs() -> None:  # by the logs, not the clock
        while len(waits()) < 3:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        app.done.set()

    restored = asyncio.create_task(restored_after_three_logs())
    await asyncio.wait_for(streams.until_worker_ready(app), 30)  # type: ignore[arg-type]
    await restored
    assert len(waits()) >= 3 and all(r.app == "switchboard-route" for r in waits())
    with pytest.raises(TimeoutError, match="not ready after"):  # a caller's own limit holds
        await streams.until_worker_ready(_Restoring(), timeout_s=0.1)  # type: ignore[arg-type]


def test_the_stores_a_worker_left_without_stopping_are_restored_from_their_changelogs(tmp_path):
    """A worker killed (its running mark still there) may have kept changes its changelog
    never got: every store goes, stamped in step or not; after a clean stop (no mark) they
    stay."""
    tables = tmp_path / "tables"
    kept = [store(tables, f"route-conversations-{n}.db", in_step_ago=60) for n in range(2)]
    assert streams.discard_stores_of_a_crash(tables) == []  # stopped cleanly: no mark
    assert all(path.exists() for path in kept)
    streams.running_mark(tables).touch()  # a worker started on them, and never stopped
    assert streams.discard_stores_of_a_crash(tables) == kept
    assert not any(path.exists() or in_sync_stamp(path).exists() for path in kept)


async def test_a_clean_stop_clears_the_running_mark_only_with_every_changelog_write_acknowledged():
    writes = streams.ChangelogWrites()
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    writes.add(done)
    assert not writes.all_acknowledged()  # sent, not acknowledged: the store may be ahead
    done.set_result(None)
    assert writes.all_acknowledged()
    failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    failed.set_exception(RuntimeError("refused"))
    writes.add(failed)
    assert not writes.all_acknowledged()
    failed.exception()  # retrieved: no warning at collection
