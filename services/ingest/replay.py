"""Replay: read a JSONL file of X API v2 tweets (or any items) at a steady rate.

A line is one message as the filtered stream sends it (``{"data": tweet, "includes": ...}``),
or one page of tweets as X's search and lookup endpoints answer, which twarc2 writes one per
line (``{"data": [tweets], "includes": ...}``): a page is replayed tweet by tweet, each with
what the page includes of its author and of the tweets it quotes.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
# A page's ``data`` is a list: only a line that may be one is parsed here (a stream message,
# the usual line, is parsed once, by the reader)
MAYBE_A_PAGE = re.compile(rb'"data"\s*:\s*\[')


async def paced_lines(
    path: Path,
    rate_per_s: float,
    limit: int | None = None,
    done: Callable[[bytes], bool] = lambda _: False,
) -> AsyncIterator[tuple[int, bytes]]:
    """Yield ``(line number, raw line)`` for non-blank lines, ``rate_per_s`` per second.

    The schedule is absolute (line n is due at start + n / rate), so slow consumers of the
    iterator do not slow the average rate down, and nothing drifts over a long replay. Lines
    for which ``done`` is true (already published before a restart) are passed over at once:
    they count towards ``limit`` but take no time. ``done`` is asked of every line: one that
    was never published (a retweet, a bad line) may come before others that were.
    """
    started = time.monotonic()
    sent = 0
    with path.open("rb") as lines:
        for number, read in enumerate(lines, start=1):
            for line in messages_of(read):
                if limit is not None and sent >= limit:
                    return
                if done(line):
                    started -= 1 / rate_per_s  # the schedule moves on without it
                    sent += 1
                    continue
                delay = started + sent / rate_per_s - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent += 1
                yield number, line


def messages_of(line: bytes) -> list[bytes]:
    """The messages of one replay line (none for a blank one): the line itself, or a page's
    tweets one by one, each with the page's ``includes`` of its author and the tweets it refers
    to (not the whole page's, which would be copied once per tweet)."""
    line = line.rstrip(b"\r\n")
    if not line.strip():
        return []
    if not MAYBE_A_PAGE.search(line):
        return [line]
    try:
        page = json.loads(line)
    except ValueError:
        return [line]  # dead-lettered by the reader, as it is
    if not isinstance(page, dict) or not isinstance(page.get("data"), list):
        return [line]
    includes = page.get("includes") if isinstance(page.get("includes"), dict) else {}
    return [json.dumps(_message(tweet, includes)).encode() for tweet in page["data"]]


def _message(tweet: object, includes: dict) -> dict:
    if not isinstance(tweet, dict):
        return {"data": tweet}
    referenced = {r.get("id") for r in tweet.get("referenced_tweets") or [] if isinstance(r, dict)}
    return {
        "data": tweet,
        "includes": {
            "users": [
                u for u in _objects(includes, "users") if u.get("id") == tweet.get("author_id")
            ],
            "tweets": [t for t in _objects(includes, "tweets") if t.get("id") in referenced],
        },
    }


def _objects(includes: dict, name: str) -> list[dict]:
    found = includes.get(name)
    return [item for item in found if isinstance(item, dict)] if isinstance(found, list) else []


async def paced(
    items: Iterable[T], rate_per_s: float, limit: int | None = None
) -> AsyncIterator[T]:
    """Yield ``items`` at ``rate_per_s`` per second on the same absolute schedule."""
    started = time.monotonic()
    for sent, item in enumerate(items):
        if limit is not None and sent >= limit:
            return
        delay = started + sent / rate_per_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        yield item
