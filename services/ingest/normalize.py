"""X objects to Switchboard's tweet model (pure functions, no I/O).

Three shapes arrive: X API v2 tweets (filtered stream, mentions timeline, replay files), v1.1
tweet objects (Account Activity webhooks and X archive exports) and direct-message events (v2
``dm_events`` and Account Activity ``direct_message_events``). Each becomes one ``Tweet``; what
happens to it next (inbound, the brand's own, skipped) is ``origin``'s decision.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Literal, ParamSpec, TypeVar

from pydantic import ValidationError

from switchboard.ingest.config import IngestFileConfig
from switchboard.shared.config import HandleConfig
from switchboard.shared.events import (
    Author,
    DeadLetterReason,
    DecodeError,
    ReferencedTweet,
    Tweet,
    TweetSource,
    Withheld,
    problem_of,
)


class NormalizeError(DecodeError):
    """An X object that cannot become a tweet event; ``reason`` is a short code."""


P = ParamSpec("P")
R = TypeVar("R")


def _x_object(reason: DeadLetterReason) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """X objects are untrusted JSON: a wrong shape anywhere (a null, a list where an object
    belongs, a number that is not one) is a NormalizeError with ``reason``, never a crash of
    the source that read it."""

    def wrap(build: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(build)
        def checked(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return build(*args, **kwargs)
            except NormalizeError:
                raise
            except ValidationError as exc:
                problem = problem_of(exc, otherwise=reason)
                raise NormalizeError(problem.reason, problem.detail) from None
            except (AttributeError, KeyError, TypeError, ValueError) as exc:
                raise NormalizeError(reason, f"{type(exc).__name__}: {exc}") from None

        return checked

    return wrap


def _refused(exc: Exception) -> NormalizeError:
    """Why the Tweet model refused what an X object held (``too_large``, ``missing_field``...)."""
    if isinstance(exc, ValidationError):
        problem = problem_of(exc, otherwise="invalid_tweet")
        return NormalizeError(problem.reason, problem.detail)
    return NormalizeError("invalid_tweet", str(exc).splitlines()[0])


@dataclass(frozen=True, slots=True)
class Deletion:
    """X reported that a tweet or DM was deleted."""

    tweet_id: str
    user_id: str | None
    event_at: datetime


Origin = Literal["inbound", "brand", "retweet"]


def origin(tweet: Tweet, config: IngestFileConfig) -> tuple[Origin, HandleConfig | None]:
    """Inbound (route it), the company's own (measure responses with it), or a skipped retweet."""
    own = config.handles_by_user_id.get(tweet.author.id)
    if own is not None:
        return "brand", own
    retweet = any(r.type == "retweeted" for r in tweet.referenced_tweets)
    if retweet and not config.ingest.include_retweets:
        return "retweet", None
    return "inbound", None


# --- X API v2 -------------------------------------------------------------------------------


@_x_object("not_a_tweet")
def tweet_from_v2(
    message: Any,
    config: IngestFileConfig,
    source: TweetSource = "replay",
    *,
    addressed: Iterable[str] = (),
) -> Tweet:
    """Normalize an X API v2 tweet message (``{"data": tweet, "includes": {...}}``).

    This is the shape of a filtered-stream message and of a single-tweet lookup with
    ``expansions=author_id``: the author comes from ``includes.users``. ``addressed`` adds
    handles known from the context (the handle whose mentions were polled).
    """
    if not isinstance(message, dict) or not isinstance(message.get("data"), dict):
        raise NormalizeError("not_a_tweet", 'expected an object with a "data" tweet object')
    includes = message.get("includes") or {}
    users = {u.get("id"): u for u in includes.get("users", [])}
    tags = [r.get("tag") or "" for r in message.get("matching_rules") or []]
    quoted = quoted_handles(message["data"], includes.get("tweets", []), config)
    return tweet_from_v2_data(message["data"], users, config, source, [*addressed, *quoted], tags)


def quoted_handles(
    data: dict[str, Any], included_tweets: list[dict[str, Any]], config: IngestFileConfig
) -> list[str]:
    """A quote of one of the company's tweets addresses the handle that wrote it (the quoted
    tweet's author comes from ``includes.tweets``, expansion ``referenced_tweets.id``)."""
    quoted_ids = {
        r.get("id") for r in data.get("referenced_tweets") or [] if r.get("type") == "quoted"
    }
    own = config.handles_by_user_id
    return [
        own[t["author_id"]].handle
        for t in included_tweets
        if t.get("id") in quoted_ids and t.get("author_id") in own
    ]


@_x_object("invalid_tweet")
def tweet_from_v2_data(
    data: dict[str, Any],
    users: dict[Any, dict[str, Any]],
    config: IngestFileConfig,
    source: TweetSource,
    addressed: Iterable[str] = (),
    rule_tags: list[str] | None = None,
) -> Tweet:
    for field in ("id", "text", "author_id", "created_at"):
        if not data.get(field):
            raise NormalizeError("missing_field", f"data.{field} is missing or empty")
    # X leaves a withheld or suspended author out of includes.users (recorded: twarc-csv's
    # withheld.jsonl) and says nothing of it in `errors`: the tweet is still one to route.
    author = users.get(data["author_id"]) or {"id": data["author_id"], "username": None}
    # A long post's mentions past the 280 characters of `text` are only in note_tweet's.
    note = (data.get("note_tweet") or {}).get("entities") or {}
    found = [*(data.get("entities") or {}).get("mentions", []), *note.get("mentions", [])]
    mentions = list(dict.fromkeys(m["username"] for m in found if "username" in m))
    references = data.get("referenced_tweets") or []
    rule_tags = rule_tags or []
    handles = [
        *addressed,
        *_handles_from_rule_tags(rule_tags, config),
        *addressed_handles(mentions, data.get("in_reply_to_user_id"), config),
    ]
    try:
        return Tweet(
            id=str(data["id"]),
            conversation_id=str(data.get("conversation_id") or data["id"]),
            # Long posts carry their full text in note_tweet; `text` is truncated there.
            text=(data.get("note_tweet") or {}).get("text") or data["text"],
            lang=data.get("lang"),
            created_at=iso_time(data["created_at"]),
            author=_author_v2(author),
            addressed_handles=list(dict.fromkeys(handles)),
            mentions=mentions,
            referenced_tweets=[ReferencedTweet(**r) for r in references],
            in_reply_to_user_id=data.get("in_reply_to_user_id"),
            quoted_tweet_id=next((r["id"] for r in references if r.get("type") == "quoted"), None),
            matched_rules=rule_tags,
            edit_of=_edit_of(data),
            withheld=_withheld(data.get("withheld"), data["text"]),
            source=source,
            url=f"https://x.com/{author['username'] or 'i/web'}/status/{data['id']}",
        )
    except (ValidationError, ValueError, KeyError, TypeError) as exc:
        raise _refused(exc) from None


# What X puts in place of a withheld post's text for a caller in a country where it is
# withheld (recorded: twarc-csv's withheld.jsonl, "@name's account has been withheld in India
# in response to a legal demand. Learn more."; X's help pages word the post's own likewise).
WITHHELD_NOTICE = re.compile(
    r"\bhas been withheld\b.*\bLearn more\.?\s*$", re.IGNORECASE | re.DOTALL
)


def _withheld(withheld: Any, text: str) -> Withheld | None:
    """X's ``withheld`` object (v2), with whether ``text`` is X's notice rather than the post."""
    if not isinstance(withheld, dict):
        return None
    return Withheld(
        country_codes=[str(c) for c in codes]
        if isinstance(codes := withheld.get("country_codes"), list)
        else [],
        copyright=bool(withheld.get("copyright")),
        scope=withheld.get("scope") if withheld.get("scope") in ("tweet", "user") else None,
        notice=bool(WITHHELD_NOTICE.search(text)),
    )


def _withheld_v1(status: dict[str, Any], text: str) -> Withheld | None:
    """v1.1's ``withheld_in_countries``, ``withheld_copyright`` and ``withheld_scope``."""
    countries, scope = status.get("withheld_in_countries"), status.get("withheld_scope")
    if not countries and not status.get("withheld_copyright") and not scope:
        return None
    scopes = {"status": "tweet", "user": "user"}
    return _withheld({"country_codes": countries, "copyright": status.get("withheld_copyright"),
                      "scope": scopes.get(scope)}, text)  # fmt: skip


def _edit_of(data: dict[str, Any]) -> str | None:
    """The first id of the post's edit history when this post is an edit of it."""
    history = [str(i) for i in data.get("edit_history_tweet_ids") or []]
    return history[0] if len(history) > 1 and history[0] != str(data["id"]) else None


def _edit_of_v1(status: dict[str, Any], tweet_id: str) -> str | None:
    """The original post a v1.1 post (Account Activity, archives) is an edit of: its
    ``edit_history.initial_tweet_id`` when that is another id (X's "Edit Posts" metadata)."""
    history = status.get("edit_history")
    initial = history.get("initial_tweet_id") if isinstance(history, dict) else None
    return str(initial) if initial and str(initial) != tweet_id else None


def _author_v2(user: dict[str, Any]) -> Author:
    """``username`` None: X left the user out of ``includes`` (its id stands in, as for the
    Account Activity DMs whose sender is not in the payload)."""
    return Author(
        id=str(user["id"]),
        username=user["username"] or str(user["id"]),
        name=user.get("name"),
        followers_count=(user.get("public_metrics") or {}).get("followers_count", 0),
        verified=bool(user.get("verified", False)),
    )


def _handles_from_rule_tags(tags: list[str], config: IngestFileConfig) -> list[str]:
    """Stream rules are tagged ``<prefix>@Handle`` (rules.py): a keyword match names its handle."""
    prefix = config.ingest.x.filtered_stream.rule_tag_prefix
    by_username = config.handles_by_username
    found = []
    for tag in tags:
        name = tag.removeprefix(prefix).split("#", 1)[0].lstrip("@").lower()
        if tag.startswith(prefix) and name in by_username:
            found.append(by_username[name].handle)
    return found


def addressed_handles(
    mentions: list[str], in_reply_to_user_id: object, config: IngestFileConfig
) -> list[str]:
    """The configured handles a tweet addresses: by @mention or by replying to them."""
    by_username = config.handles_by_username
    found = [by_username[m.lower()].handle for m in mentions if m.lower() in by_username]
    replied = config.handles_by_user_id.get(str(in_reply_to_user_id))
    if replied is not None:
        found.append(replied.handle)
    return list(dict.fromkeys(found))


@_x_object("not_a_dm")
def dm_from_v2(
    event: dict[str, Any],
    users: dict[Any, dict[str, Any]],
    handle: HandleConfig,
    config: IngestFileConfig,
) -> Tweet:
    """A v2 ``dm_events`` MessageCreate event received or sent by ``handle``."""
    for field in ("id", "text", "sender_id", "dm_conversation_id", "created_at"):
        if not event.get(field):
            raise NormalizeError("missing_field", f"dm_event.{field} is missing or empty")
    sender = users.get(event["sender_id"]) or {"id": event["sender_id"], "username": None}
    return _dm(
        event_id=str(event["id"]),
        conversation_id=str(event["dm_conversation_id"]),
        text=event["text"],
        created_at=iso_time(event["created_at"]),
        sender=_author_v2(sender),
        handle=handle,
        config=config,
        source="direct_message",
    )


def _dm(
    *,
    event_id: str,
    conversation_id: str,
    text: str,
    created_at: datetime,
    sender: Author,
    handle: HandleConfig,
    config: IngestFileConfig,
    source: TweetSource,
) -> Tweet:
    try:
        return Tweet(
            id=event_id,
            conversation_id=conversation_id,
            text=text,
            created_at=created_at,
            author=sender,
            addressed_handles=[handle.handle],
            source=source,
            kind="direct_message",
            url=f"https://x.com/messages/{conversation_id}",
        )
    except (ValidationError, ValueError) as exc:
        raise _refused(exc) from None


# --- v1.1 objects: Account Activity webhooks and X archive exports ----------------------------


@_x_object("invalid_tweet")
def tweet_from_v1(
    status: dict[str, Any], config: IngestFileConfig, source: TweetSource, *, author: Any = None
) -> Tweet:
    """A v1.1 tweet object (``id_str``, ``user``, ``entities.user_mentions``...).

    Archive exports omit ``user``: pass the archive account as ``author``. v1.1 has no
    conversation id, so a reply's conversation is the tweet it replies to here; ingest puts it
    in that tweet's own conversation when it saw it (``IngestService._in_its_conversation``).
    """
    user = status.get("user") or author
    tweet_id = status.get("id_str") or (str(status["id"]) if status.get("id") else None)
    if not tweet_id or not isinstance(user, dict):
        raise NormalizeError("not_a_tweet", "expected a v1.1 tweet with id_str and user")
    text = (
        (status.get("extended_tweet") or {}).get("full_text")
        or status.get("full_text")
        or status.get("text")
    )
    if not text:
        raise NormalizeError("missing_field", "text is missing or empty")
    entities = (status.get("extended_tweet") or {}).get("entities") or status.get("entities") or {}
    mentions = [m["screen_name"] for m in entities.get("user_mentions", []) if "screen_name" in m]
    reply_to = status.get("in_reply_to_status_id_str")
    references = []
    if reply_to:
        references.append(ReferencedTweet(type="replied_to", id=reply_to))
    if status.get("quoted_status_id_str"):
        references.append(ReferencedTweet(type="quoted", id=status["quoted_status_id_str"]))
    if status.get("retweeted_status"):
        retweeted = status["retweeted_status"]
        references.append(ReferencedTweet(type="retweeted", id=str(retweeted.get("id_str"))))
    reply_user = status.get("in_reply_to_user_id_str")
    # A quote of one of the company's tweets addresses its handle, as in v2 (quoted_handles):
    # Account Activity delivers such quotes, which need not mention the handle.
    quoted_user = ((status.get("quoted_status") or {}).get("user") or {}).get("id_str")
    quoted = config.handles_by_user_id.get(str(quoted_user))
    handles = addressed_handles(mentions, reply_user, config)
    try:
        return Tweet(
            id=tweet_id,
            conversation_id=reply_to or tweet_id,
            text=text,
            lang=status.get("lang"),
            created_at=_v1_time(status["created_at"]),
            author=Author(
                id=str(user.get("id_str") or user["id"]),
                username=user["screen_name"],
                name=user.get("name"),
                followers_count=user.get("followers_count", 0),
                verified=bool(user.get("verified", False)),
            ),
            addressed_handles=list(dict.fromkeys([*handles, *([quoted.handle] if quoted else [])])),
            mentions=mentions,
            referenced_tweets=references,
            in_reply_to_user_id=reply_user,
            quoted_tweet_id=status.get("quoted_status_id_str"),
            edit_of=_edit_of_v1(status, tweet_id),
            withheld=_withheld_v1(status, text),
            source=source,
            url=f"https://x.com/{user['screen_name']}/status/{tweet_id}",
        )
    except (ValidationError, ValueError, KeyError, TypeError) as exc:
        raise _refused(exc) from None


@_x_object("not_a_dm")
def dm_from_activity(
    event: dict[str, Any],
    users: dict[str, dict[str, Any]],
    config: IngestFileConfig,
) -> Tweet:
    """An Account Activity ``direct_message_events`` item (``type: message_create``)."""
    create = event.get("message_create") or {}
    sender_id = str(create.get("sender_id") or "")
    recipient_id = str((create.get("target") or {}).get("recipient_id") or "")
    text = (create.get("message_data") or {}).get("text")
    if not (event.get("id") and sender_id and recipient_id and text):
        raise NormalizeError("not_a_dm", "expected a message_create event with sender and text")
    own = config.handles_by_user_id
    handle = own.get(recipient_id) or own.get(sender_id)
    if handle is None:
        raise NormalizeError("unaddressed", f"DM between {sender_id} and {recipient_id}")
    user = users.get(sender_id) or {"id": sender_id, "screen_name": sender_id}
    # X's DM conversation id for a one-to-one chat is "<lower id>-<higher id>".
    pair = sorted((sender_id, recipient_id), key=int)
    return _dm(
        event_id=str(event["id"]),
        conversation_id=f"{pair[0]}-{pair[1]}",
        text=text,
        created_at=datetime.fromtimestamp(int(event["created_timestamp"]) / 1000, UTC),
        sender=Author(
            id=sender_id,
            username=user.get("screen_name") or sender_id,
            name=user.get("name"),
            followers_count=user.get("followers_count", 0),
            verified=bool(user.get("verified", False)),
        ),
        handle=handle,
        config=config,
        source="webhook",
    )


@_x_object("not_a_deletion")
def deletion_from_activity(item: dict[str, Any]) -> Deletion:
    """An Account Activity ``tweet_delete_events`` item."""
    status = item.get("status") or {}
    if not status.get("id"):
        raise NormalizeError("not_a_deletion", "expected status.id")
    return Deletion(
        tweet_id=str(status["id"]),
        user_id=str(status["user_id"]) if status.get("user_id") else None,
        event_at=datetime.fromtimestamp(int(item["timestamp_ms"]) / 1000, UTC),
    )


# Compliance messages that ask for nothing downstream can do (X's TweetComplianceData): a post
# visible again, withheld in some countries, or edited (its new version comes as a post).
OTHER_COMPLIANCE = frozenset({"undrop", "withheld", "tweet_edit"})


def other_compliance(message: object) -> str | None:
    """The kind of a compliance message that is neither a deletion nor a post, if it is one."""
    data = message.get("data") if isinstance(message, dict) else None
    if isinstance(data, dict) and len(data) == 1 and next(iter(data)) in OTHER_COMPLIANCE:
        return next(iter(data))
    return None


@_x_object("not_a_deletion")
def deletion_from_compliance(message: dict[str, Any]) -> Deletion | None:
    """A v2 compliance message ``{"data": {"delete": {"tweet": {...}, "event_at"}}}``, or a
    ``drop`` (X: "the Post should be removed from public view"), which downstream copies
    must follow as they follow a deletion."""
    data = message.get("data") or {}
    kind = next((k for k in ("delete", "drop") if isinstance(data.get(k), dict)), None)
    if kind is None:
        return None
    delete = data[kind]
    tweet = delete.get("tweet") or {}
    if not tweet.get("id"):
        raise NormalizeError("not_a_deletion", f"expected data.{kind}.tweet.id")
    return Deletion(
        tweet_id=str(tweet["id"]),
        user_id=tweet.get("author_id"),
        event_at=iso_time(delete.get("event_at") or datetime.now(UTC).isoformat()),
    )


# How far ahead of ingest's clock a tweet's time may be and still be X's (clocks differ by
# seconds); beyond it, the time is a bad input's (a replay file, an archive, a webhook's body).
CLOCK_SKEW = timedelta(minutes=5)


def written_by_now(tweet: Tweet, now: datetime) -> Tweet:
    """``tweet``, its ``created_at`` brought back to ``now`` when it is further ahead than
    ``CLOCK_SKEW``: a tweet from the future would stay awaited whatever the company replied,
    and a company reply from the future would answer every tweet written before it."""
    if tweet.created_at <= now + CLOCK_SKEW:
        return tweet
    return tweet.model_copy(update={"created_at": now})


def iso_time(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, AttributeError) as exc:
        raise NormalizeError("invalid_tweet", f"created_at: {exc}") from None


def _v1_time(value: str) -> datetime:
    """v1.1 times look like ``Wed Oct 10 20:19:24 +0000 2018``."""
    try:
        day, month, date, clock, offset, year = value.split()
        return parsedate_to_datetime(f"{day}, {date} {month} {year} {clock} {offset}")
    except (ValueError, TypeError) as exc:
        raise NormalizeError("invalid_tweet", f"created_at {value!r}: {exc}") from None
