"""One tweet, one event: repeats are recognised within a window and a bounded memory."""

from __future__ import annotations

from switchboard.ingest.dedup import SeenTweets


def test_a_repeat_within_the_window_is_recognised():
    seen = SeenTweets(capacity=10, window_s=60)
    assert seen.first_time("a", now=0)
    assert not seen.first_time("a", now=59)


def test_an_id_older_than_the_window_is_forgotten():
    seen = SeenTweets(capacity=10, window_s=60)
    seen.first_time("a", now=0)
    assert seen.first_time("a", now=61)
    assert len(seen) == 1


def test_capacity_evicts_the_id_seen_first():
    seen = SeenTweets(capacity=2)
    assert seen.first_time("a", now=1) and seen.first_time("b", now=2)
    assert not seen.first_time("a", now=3)
    assert seen.first_time("c", now=4)  # evicts a, the oldest first sighting
    assert seen.first_time("a", now=5)
    assert not seen.first_time("c", now=6)


def test_restored_ids_count_as_seen_until_they_expire():
    seen = SeenTweets(capacity=10, window_s=100)
    seen.remember("old", seen_at=0)
    seen.remember("recent", seen_at=90)
    assert not seen.first_time("recent", now=120)
    assert seen.first_time("old", now=120)


def test_a_forgotten_id_is_new_again():
    seen = SeenTweets(capacity=10)
    seen.first_time("a", now=0)
    seen.forget("a")
    assert seen.first_time("a", now=1)
