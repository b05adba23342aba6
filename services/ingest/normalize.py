"""X API v2 objects to Switchboard's raw tweet event (pure functions, no I/O)."""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from switchboard.shared.config import SwitchboardConfig
from switchboard.shared.events import Author, ReferencedTweet, Tweet, TweetSource


class NormalizeError(ValueError):
    """An X object that cannot become a tweet event; ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def tweet_from_v2(message: Any, config: SwitchboardConfig, source: TweetSource = "replay") -> Tweet:
    """Normalize an X API v2 tweet message (``{"data": tweet, "includes": {...}}``).

    This is the shape of a filtered-stream message and of a single-tweet lookup with
    ``expansions=author_id``: the author comes from ``includes.users``.
    """
    if not isinstance(message, dict) or not isinstance(message.get("data"), dict):
        raise NormalizeError("not_a_tweet", 'expected an object with a "data" tweet object')
    data: dict[str, Any] = message["data"]
    for field in ("id", "text", "author_id", "created_at"):
        if not data.get(field):
            raise NormalizeError("missing_field", f"data.{field} is missing or empty")
    users = {u.get("id"): u for u in message.get("includes", {}).get("users", [])}
    author = users.get(data["author_id"])
    if author is None:
        raise NormalizeError(
            "missing_author",
            f"includes.users has no user {data['author_id']} (expansions=author_id)",
        )
    mentions = [
        m["username"] for m in data.get("entities", {}).get("mentions", []) if "username" in m
    ]
    try:
        return Tweet(
            id=str(data["id"]),
            conversation_id=str(data.get("conversation_id") or data["id"]),
            # Long posts carry their full text in note_tweet; `text` is truncated there.
            text=data.get("note_tweet", {}).get("text") or data["text"],
            lang=data.get("lang"),
            created_at=datetime.fromisoformat(data["created_at"].replace("Z", "+00:00")),
            author=Author(
                id=str(author["id"]),
                username=author["username"],
                name=author.get("name"),
                followers_count=author.get("public_metrics", {}).get("followers_count", 0),
                verified=bool(author.get("verified", False)),
            ),
            addressed_handles=addressed_handles(data, mentions, config),
            mentions=mentions,
            referenced_tweets=[ReferencedTweet(**r) for r in data.get("referenced_tweets", [])],
            in_reply_to_user_id=data.get("in_reply_to_user_id"),
            source=source,
            url=f"https://x.com/{author['username']}/status/{data['id']}",
        )
    except (ValidationError, ValueError, KeyError, TypeError) as exc:
        raise NormalizeError("invalid_tweet", str(exc).splitlines()[0]) from None


def addressed_handles(
    data: dict[str, Any], mentions: list[str], config: SwitchboardConfig
) -> list[str]:
    """The configured handles this tweet addresses: by @mention or by replying to them."""
    by_username = config.handle_by_username()
    found = [by_username[m.lower()].handle for m in mentions if m.lower() in by_username]
    replied = config.handle_by_user_id().get(str(data.get("in_reply_to_user_id")))
    if replied is not None:
        found.append(replied.handle)
    return list(dict.fromkeys(found))


class SeenTweets:
    """The most recent ``capacity`` tweet ids, to drop a tweet seen twice (bounded memory)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def first_time(self, tweet_id: str) -> bool:
        """True the first time an id is offered, False for a repeat."""
        if tweet_id in self._ids:
            self._ids.move_to_end(tweet_id)
            return False
        self._ids[tweet_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return True
