"""A replica's local table stores: one older than the changelog's tombstones is discarded."""

from __future__ import annotations

import os
from pathlib import Path

from switchboard.shared import topics
from switchboard.shared.streams import discard_stale_stores

DAY = 24 * 3600.0


def store(tables: Path, name: str, *ages_s: float, now: float) -> Path:
    path = tables / name
    path.mkdir(parents=True)
    for n, age in enumerate(ages_s):
        written = path / f"{n:06d}.sst"
        written.write_bytes(b"x")
        os.utime(written, (now - age, now - age))
    os.utime(path, (now - max(ages_s), now - max(ages_s)))
    return path


def test_a_store_last_written_before_the_tombstones_it_may_miss_were_removed_is_discarded(
    tmp_path: Path,
):
    now = 1_900_000_000.0
    tables = tmp_path / "v1" / "tables"
    stale = store(tables, "route-conversations-0.db", 3 * DAY, 2 * DAY, now=now)
    fresh = store(tables, "route-conversations-1.db", 3 * DAY, 3600, now=now)  # written lately
    other = store(tables, "notes", 3 * DAY, now=now)  # not a store

    assert discard_stale_stores(tables, DAY, now=now) == [stale]
    assert not stale.exists() and fresh.exists() and other.exists()
    assert discard_stale_stores(tmp_path / "absent", DAY, now=now) == []


def test_the_compacted_topics_keep_deletions_as_long_as_a_store_is_trusted():
    for topic in topics.COMPACTED:
        config = topics.topic_config(topic)
        assert config["cleanup.policy"] == "compact"
        assert int(config["delete.retention.ms"]) == topics.TOMBSTONES_KEPT_MS
    assert topics.topic_config(topics.RAW) == {}
