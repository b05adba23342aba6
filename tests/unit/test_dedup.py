"""One tweet, one event: repeats are recognised within a window and a bounded memory."""

from __future__ import annotations

import time

from switchboard.ingest import metrics
from switchboard.ingest.dedup import SeenTweets
from switchboard.ingest.replay import paced_lines


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


def test_an_id_forgotten_for_room_within_its_window_is_counted_and_logged_once(caplog):
    early = metrics.DEDUP_FORGOTTEN_EARLY._value.get()
    seen = SeenTweets(capacity=2, window_s=60)
    seen.first_time("a", now=0)
    seen.first_time("b", now=10)
    seen.first_time("c", now=100)  # a and b are past their window: expired, not evicted
    seen.first_time("d", now=101)
    assert metrics.DEDUP_FORGOTTEN_EARLY._value.get() == early
    with caplog.at_level("WARNING", logger="switchboard.ingest.dedup"):
        seen.first_time("e", now=102)  # c, 2 s old, makes room: the window is 2 s, not 60
        seen.first_time("f", now=103)
    assert metrics.DEDUP_FORGOTTEN_EARLY._value.get() == early + 2
    assert len([m for m in caplog.messages if "duplicate filter is full" in m]) == 1
    assert seen.first_time("c", now=104)  # the repeat the count warns about


def test_only_ids_evicted_within_their_window_count_and_a_refill_counts_none():
    early = metrics.DEDUP_FORGOTTEN_EARLY._value.get()
    seen = SeenTweets(capacity=2, window_s=60)
    seen.remember("a", 0)
    seen.remember("b", 1)
    seen.remember("c", 100)  # evicts a, 100 s old: past its window, nothing forgotten early
    seen.remember("d", 101)  # evicts b, as old
    assert metrics.DEDUP_FORGOTTEN_EARLY._value.get() == early
    seen.remember("e", 102, counted=False)  # a refill at start evicts c, 2 s old: the process
    assert metrics.DEDUP_FORGOTTEN_EARLY._value.get() == early  # that saw it counted it
    seen.remember("f", 103)  # evicts d, 2 s old
    assert metrics.DEDUP_FORGOTTEN_EARLY._value.get() == early + 1


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


def test_asking_whether_an_id_was_seen_does_not_remember_it():
    seen = SeenTweets(capacity=10, window_s=60)
    assert "1" not in seen and "1" not in seen  # asking twice: still not seen
    assert seen.first_time("1")
    assert "1" in seen


def test_a_tweet_seen_keeps_its_conversation_as_long_as_it_is_remembered():
    seen = SeenTweets(capacity=2, window_s=60)
    seen.remember("root", time.time(), "root")
    assert seen.first_time("reply")
    seen.in_conversation("reply", "root")
    assert (seen.conversation_of("reply"), seen.conversation_of("never")) == ("root", None)
    seen.first_time("third")  # capacity 2: the oldest goes, with its conversation
    assert seen.conversation_of("root") is None and seen.conversation_of("reply") == "root"
    seen.forget("reply")
    assert seen.conversation_of("reply") is None


async def test_a_replay_restarted_passes_over_what_was_published_at_once(tmp_path):
    replay = tmp_path / "tweets.jsonl"
    replay.write_bytes(b"".join(f'{{"n": {n}}}\n'.encode() for n in range(6)))
    # n=1 was never published (a retweet, a bad line): those after it that were still pass
    published = {b'{"n": 0}', b'{"n": 2}', b'{"n": 3}', b'{"n": 4}'}
    started = time.monotonic()
    got = [
        line
        async for _, line in paced_lines(replay, 2.0, None, lambda raw: raw.strip() in published)
    ]
    assert got == [b'{"n": 1}', b'{"n": 5}']
    # the first new line is due at once, the second half a second later: not after 2.5 s
    assert time.monotonic() - started < 1.5
