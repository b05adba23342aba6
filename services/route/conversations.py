"""Conversation memory (pure): who owns a conversation, how urgent it got, and whether a
company handle has answered it yet. The route service keeps one ``ConversationState`` per
conversation id in a faust table (service.py); these functions say how it changes, and
``DueIndex`` is what the sweep needs to find due conversations without reading every one."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from switchboard.route.rules import URGENCY_RANK, Outcome, withheld_text
from switchboard.shared.events import (
    AwaitingReply,
    BrandTweet,
    Classification,
    ClassifiedTweet,
    ConversationState,
    RecentTweet,
    RouteDecision,
    SpikeCount,
    Tweet,
)
from switchboard.shared.labels import Department, Urgency

# Decisions remembered per conversation: a republished tweet comes back within one re-delivered
# batch or a restore, long before a conversation says this much more.
REMEMBERED = 32
# Tweets remembered whole per conversation, for a correction to re-route: people correct what
# they just saw, and each costs the table a tweet's size.
RECENT = 5
# Who the company answered, and when: a reply in a thread answers the author it replies to
# (X's ``in_reply_to_user_id``), since everyone replying to one viral tweet shares its
# conversation id; a reply that names no one (a DM: one customer) answers ``EVERYONE``.
EVERYONE = "*"
# Authors remembered per conversation: enough for the tweets it remembers and a backlog.
REPLIED_TO_KEPT = REMEMBERED
Replies = Mapping[str, datetime]


@dataclass(frozen=True, slots=True)
class Response:
    """A company handle answered an awaited tweet: the conversation's (``tracked``), or
    another customer's in its thread."""

    awaited: AwaitingReply
    handle: str
    seconds: float
    tracked: bool = True


def active(state: ConversationState | None, now: datetime, ttl_hours: float) -> bool:
    return state is not None and now - state.updated_at <= timedelta(hours=ttl_hours)


def after_routing(
    state: ConversationState | None,
    event: ClassifiedTweet,
    outcome: Outcome,
    decision: RouteDecision,
    now: datetime,
    early: Replies | None = None,
    offset: int | None = None,
    spikes: SpikeCount | None = None,
    alerting: Collection[Urgency] = (),
) -> ConversationState | None:
    """The conversation after this tweet was routed (``state`` must be active or None);
    ``early``: company replies read before the conversation had a state (``replies_of``);
    ``offset``: the tweet's record on switchboard.tweets.classified; ``spikes``: what it was
    counted as; ``alerting``: the urgencies whose breach raises an alert
    (``sla.alert_urgencies``)."""
    replies = merged(replies_of(state), early or {})
    if outcome.destination == "dropped" or withheld_text(event):  # counts for nothing
        if state is None:  # kept all the same: its decision, and the tweet for a correction
            return _dropped_first(event, outcome, decision, now, replies, offset)
        remembered = _remember(state.routed, event, decision)
        offsets = _offsets(state.routed_offsets, remembered, event, offset)
        recent = _recent(state.recent, event, decision, spikes)
        return state.model_copy(
            update={"routed": remembered, "routed_offsets": offsets, "recent": recent}
        )
    remembered = _remember(state.routed if state else {}, event, decision)
    urgency = event.classification.urgency
    counted = state if state is not None and state.tweets > 0 else None  # not only drops
    owner, confirmed = outcome.department, outcome.destination != "triage"
    if outcome.owner == "handle":  # a guess by the handle addressed confirms no owner
        confirmed = False
    if (outcome.destination == "triage" or outcome.owner == "handle") and counted is not None:
        # triage does not take a conversation away from its owner, nor give it one
        owner, confirmed = counted.department, counted.owner_confirmed
    awaiting = state.awaiting if state else None
    if not answered(replies, state, event.tweet):
        awaiting = _awaiting(awaiting, event, outcome, alerting)
    return ConversationState(
        conversation_id=event.tweet.conversation_id,
        department=owner,
        owner_confirmed=confirmed,
        max_urgency=max(urgency, counted.max_urgency, key=URGENCY_RANK.get) if counted else urgency,
        tweets=(state.tweets if state else 0) + 1,
        updated_at=now,
        awaiting=awaiting,
        routed=remembered,
        routed_offsets=_offsets(state.routed_offsets if state else {}, remembered, event, offset),
        recent=_recent(state.recent if state else {}, event, decision, spikes),
        corrections=state.corrections if state else [],
        # what a correction read again after a crash needs to publish its outputs again
        applied=state.applied if state else [],
        correction_offset=state.correction_offset if state else None,
        **_stored(replies),
        spikes_withdrawn=state.spikes_withdrawn if state else None,
    )


def _dropped_first(
    event: ClassifiedTweet,
    outcome: Outcome,
    decision: RouteDecision,
    now: datetime,
    replies: Replies,
    offset: int | None,
) -> ConversationState:
    """A conversation whose first tweet was dropped (or came with X's withholding notice for
    a text): it counts no tweet (no owner, no urgency, nothing awaited), yet it keeps the
    decision, so that a copy published again after a model or rules change goes the same way,
    and the tweet, so that a person who finds it on switchboard.dropped (or in triage) can
    still send it to a department."""
    routed = _remember({}, event, decision)
    return ConversationState(
        conversation_id=event.tweet.conversation_id,
        department=outcome.department,
        owner_confirmed=False,
        max_urgency=event.classification.urgency,
        tweets=0,
        updated_at=now,
        routed=routed,
        routed_offsets=_offsets({}, routed, event, offset),
        recent=_recent({}, event, decision),
        **_stored(replies),
    )


def first_written(state: ConversationState | None, tweet: Tweet) -> datetime:
    """When the post was written: for an edit (X gives each version an id and a time of its
    own), when the post it edits was, if route remembers it; a reply to that post answers
    its edits too."""
    original = state.recent.get(tweet.edit_of) if state is not None and tweet.edit_of else None
    return original.tweet.created_at if original is not None else tweet.created_at


def replies_of(state: ConversationState | None) -> dict[str, datetime]:
    """When a company handle last answered each author of the conversation, by author id,
    and everyone (``EVERYONE``)."""
    if state is None:
        return {}
    everyone = {EVERYONE: state.replied_at} if state.replied_at is not None else {}
    return {**state.replied_to, **everyone}


def merged(first: Replies, second: Replies) -> dict[str, datetime]:
    """Both notes of replies, the latest reply to each author kept."""
    both = dict(first)
    for author, written in second.items():
        if author not in both or written > both[author]:
            both[author] = written
    return both


def addressees(
    reply: BrandTweet, company: Collection[str] = (), answered_before: Collection[str] = ()
) -> list[str]:
    """Whom a company reply answers: the author of the tweet it replies to (by user id); in a
    DM conversation, or when X names no one, everyone; a reply to the company's own tweet (a
    follow-up in its thread, ``company``: the handles' user ids) answers those it mentions
    whom the company answered before in the conversation (``answered_before``, by
    ``@username``): X fills a reply's mentions with everyone up the chain, and a customer
    the thread never answered is not answered by a follow-up to another."""
    tweet = reply.tweet
    if tweet.kind == "direct_message" or not tweet.in_reply_to_user_id:
        return [EVERYONE]
    if tweet.in_reply_to_user_id == tweet.author.id or tweet.in_reply_to_user_id in company:
        mentioned = (f"@{name.lower()}" for name in tweet.mentions)
        return [name for name in mentioned if name in answered_before]
    return [tweet.in_reply_to_user_id]


def with_reply(
    replies: Replies,
    reply: BrandTweet,
    company: Collection[str] = (),
    state: ConversationState | None = None,
) -> dict[str, datetime]:
    """``replies`` with this company reply noted for each of its ``addressees``."""
    to = addressees(reply, company, answered_names(state, replies))
    return merged(replies, dict.fromkeys(to, reply.tweet.created_at))


def answered_names(state: ConversationState | None, replies: Replies) -> set[str]:
    """The ``@username``s of the authors a company handle answered in the conversation, as far
    as route knows their names (the tweets it remembers)."""
    names = {key for key in replies if key.startswith("@")}
    if state is None:
        return names
    tweets = [r.tweet for r in state.recent.values()]
    if state.awaiting is not None and state.awaiting.tweet is not None:
        tweets.append(state.awaiting.tweet)
    return names | {f"@{t.author.username.lower()}" for t in tweets if t.author.id in replies}


def answered(replies: Replies, state: ConversationState | None, tweet: Tweet) -> bool:
    """Whether a company handle answered ``tweet``: it replied to its author (or mentioned
    them in a follow-up), or to everyone, after the tweet (an edit: after the post it edits)
    was written."""
    keys = (EVERYONE, tweet.author.id, f"@{tweet.author.username.lower()}")
    until = [replies[key] for key in keys if key in replies]
    return bool(until) and first_written(state, tweet) <= max(until)


def bounded(replies: Replies) -> dict[str, datetime]:
    """The reply to everyone and the latest ``REPLIED_TO_KEPT`` addressees."""
    by_author = sorted((t, a) for a, t in replies.items() if a != EVERYONE)[-REPLIED_TO_KEPT:]
    everyone = {EVERYONE: replies[EVERYONE]} if EVERYONE in replies else {}
    return {**{a: t for t, a in by_author}, **everyone}


def _stored(replies: Replies) -> dict[str, object]:
    """The ConversationState fields that keep ``replies``: the latest authors answered."""
    kept = bounded(replies)
    everyone = kept.pop(EVERYONE, None)
    return {"replied_at": everyone, "replied_to": kept}


def decided(state: ConversationState | None, tweet_id: str) -> RouteDecision | None:
    """How this tweet was routed before, if it was: a tweet published twice (at least once
    delivery, after a crash or an outage) must not go two ways. The classifier may label it
    differently the second time, and the conversation now counts it as its own."""
    return state.routed.get(tweet_id) if state is not None else None


def _remember(
    routed: dict[str, RouteDecision], event: ClassifiedTweet, decision: RouteDecision
) -> dict[str, RouteDecision]:
    """The latest ``REMEMBERED`` decisions, oldest first out."""
    latest = {**routed, event.tweet.id: decision}
    return dict(list(latest.items())[-REMEMBERED:])


def read_again(state: ConversationState | None, tweet_id: str, offset: int | None) -> bool:
    """Whether this is the very record the tweet was routed from, read again after a crash
    (not a copy published again upstream)."""
    return state is not None and offset is not None and state.routed_offsets.get(tweet_id) == offset


def _offsets(
    offsets: dict[str, int],
    remembered: dict[str, RouteDecision],
    event: ClassifiedTweet,
    offset: int | None,
) -> dict[str, int]:
    """The offsets of the remembered decisions."""
    latest = {**offsets, **({event.tweet.id: offset} if offset is not None else {})}
    return {tweet_id: o for tweet_id, o in latest.items() if tweet_id in remembered}


def _recent(
    recent: dict[str, RecentTweet],
    event: ClassifiedTweet,
    decision: RouteDecision,
    spikes: SpikeCount | None = None,
) -> dict[str, RecentTweet]:
    """The latest ``RECENT`` tweets with the labels they were routed by, oldest first out."""
    tweet = RecentTweet(
        tweet=event.tweet,
        department=decision.department,
        urgency=event.classification.urgency,
        model_version=event.classification.model_version,
        ingested_at=event.trace.ingested_at,
        classification=event.classification,
        spikes=spikes,
    )
    latest = {**recent, event.tweet.id: tweet}
    return dict(list(latest.items())[-RECENT:])


def _awaiting(
    current: AwaitingReply | None,
    event: ClassifiedTweet,
    outcome: Outcome,
    alerting: Collection[Urgency],
) -> AwaitingReply:
    """The first unanswered tweet keeps the clock (the response time counts from it); a
    stricter SLA from a later one wins, and its alert names that tweet, whose urgency set it."""
    return awaiting_after(
        current, event.tweet, event.classification, event.trace.ingested_at,
        outcome.department, event.classification.urgency, outcome.sla_due_at, alerting,
    )  # fmt: skip


def awaiting_after(
    current: AwaitingReply | None,
    tweet: Tweet,
    classification: Classification | None,
    ingested_at: datetime,
    department: Department,
    urgency: Urgency,
    due_at: datetime | None,
    alerting: Collection[Urgency] = (),
) -> AwaitingReply:
    """The reply the conversation awaits once ``tweet`` is unanswered too: the tweet whose
    deadline comes first, of those whose breach raises an alert (``alerting``; none given:
    all) before the others, so a critical tweet's later deadline is not hidden behind an
    earlier one that alerts nobody."""
    if current is not None:
        if alerting and (urgency in alerting) != (current.urgency in alerting):
            stricter = due_at is not None and urgency in alerting
        else:
            stricter = due_at is not None and (current.due_at is None or due_at < current.due_at)
        if not stricter:
            return current
        return current.model_copy(
            update={
                "tweet_id": tweet.id,
                "tweet": tweet,
                "classification": classification,
                "handle": tweet.addressed_handles[0] if tweet.addressed_handles else current.handle,
                "urgency": urgency,
                "due_at": due_at,
                "department": department,
                "breach_alerted": False,
            }
        )
    return AwaitingReply(
        tweet_id=tweet.id,
        handle=tweet.addressed_handles[0] if tweet.addressed_handles else None,
        department=department,
        urgency=urgency,
        received_at=max(tweet.created_at, ingested_at),
        due_at=due_at,
        tweet=tweet,
        classification=classification,
    )


def _unanswered(state: ConversationState, replies: Replies) -> Iterable[RecentTweet]:
    """The remembered tweets routed somewhere and not answered by ``replies``, in the order
    route read them."""
    for tweet_id, recent in state.recent.items():
        decision = state.routed.get(tweet_id)
        if recent.classification is None or decision is None or decision.destination == "dropped":
            continue  # kept before labels were (an older version's state), or not routed
        if not answered(replies, state, recent.tweet):
            yield recent


def still_unanswered(
    state: ConversationState,
    replies: Replies,
    gone: str | None = None,
    alerting: Collection[Urgency] = (),
) -> AwaitingReply | None:
    """What the conversation awaits once its awaited tweet is settled (answered by
    ``replies``, or deleted: every version of post ``gone``): the remembered tweets not
    answered and routed somewhere, taken in the order route read them, as ``_awaiting`` took
    them. A customer who deletes a tweet and posts it again, a reply that answers the first of
    two tweets, or one to another customer in the thread, leaves the other awaited."""
    awaiting = None
    for recent in _unanswered(state, replies):
        if gone is not None and gone in (recent.tweet.id, recent.tweet.edit_of):
            continue
        decision = state.routed[recent.tweet.id]
        # the labels it is routed by now (a correction changes them), the SLA it was given
        awaiting = awaiting_after(
            awaiting, recent.tweet, recent.classification, recent.ingested_at,
            recent.department, recent.urgency, decision.sla_due_at, alerting,
        )  # fmt: skip
    return awaiting


def after_brand_reply(
    state: ConversationState,
    reply: BrandTweet,
    now: datetime,
    alerting: Collection[Urgency] = (),
    company: Collection[str] = (),
) -> tuple[ConversationState, Response | None]:
    """A company handle spoke in the conversation: the tweets it answers (``addressees``)
    written before it are answered, the awaited one among them, and so is a tweet of theirs
    written before the reply and read after it. The response is timed from the first of the
    addressee's tweets it answers, when route still remembers it, else from the awaited
    tweet's clock."""
    before = replies_of(state)
    replies = with_reply(before, reply, company, state)
    update: dict[str, object] = {"updated_at": now, **_stored(replies)}
    first = _first_answered(state, before, replies)
    awaited, tracked = state.awaiting, True
    if awaited is not None and (awaited.tweet is None or answered(replies, state, awaited.tweet)):
        # a tweet written after the reply, or another customer's, is still awaited
        update["awaiting"] = still_unanswered(state, replies, alerting=alerting)
        clock = first.received_at if first is not None else awaited.received_at
    elif first is not None:
        awaited, tracked, clock = first, False, first.received_at
    else:
        return state.model_copy(update=update), None
    answered_at = max(reply.tweet.created_at, reply.trace.ingested_at)
    seconds = max(0.0, (answered_at - clock).total_seconds())
    return state.model_copy(update=update), Response(awaited, reply.handle, seconds, tracked)


def _first_answered(
    state: ConversationState, before: Replies, replies: Replies
) -> AwaitingReply | None:
    """The first remembered tweet that ``replies`` answer and ``before`` did not, as awaited."""
    for recent in _unanswered(state, before):
        if answered(replies, state, recent.tweet):
            return awaiting_after(
                None, recent.tweet, recent.classification, recent.ingested_at,
                recent.department, recent.urgency, None,
            )  # fmt: skip
    return None


def post_of(state: ConversationState | None, tweet_id: str) -> str:
    """The first version of the post ``tweet_id`` is a version of, when route remembers it
    (X gives each edit an id of its own)."""
    named = state.recent.get(tweet_id) if state is not None else None
    return named.tweet.edit_of if named is not None and named.tweet.edit_of else tweet_id


def without(
    state: ConversationState, tweet_id: str, alerting: Collection[Urgency] = ()
) -> ConversationState:
    """The conversation once X deleted ``tweet_id`` (and so its edits): its text is no longer
    kept, and no reply to it is awaited (an SLA alert would carry what its author took back),
    though the conversation's other unanswered tweets still are. The decisions stay: ids and
    reasons, no text."""

    post = post_of(state, tweet_id)

    def deleted(tweet: Tweet) -> bool:  # every version of the post: its first and its edits
        return post in (tweet.id, tweet.edit_of)

    recent = {i: r for i, r in state.recent.items() if not deleted(r.tweet)}
    awaiting = state.awaiting
    if awaiting is not None and (awaiting.tweet_id in (tweet_id, post) or awaiting.tweet
                                 and deleted(awaiting.tweet)):  # fmt: skip
        # the conversation's other unanswered tweets are still owed a reply
        awaiting = still_unanswered(state, replies_of(state), gone=post, alerting=alerting)
    return state.model_copy(update={"recent": recent, "awaiting": awaiting})


def awaiting_due(state: ConversationState) -> tuple[datetime, Urgency] | None:
    """What the SLA sweep keeps of a conversation (the table's index): when its awaited reply
    is due and how urgent it is, until a breach alert went out for it."""
    awaiting = state.awaiting
    if awaiting is None or awaiting.due_at is None or awaiting.breach_alerted:
        return None
    return awaiting.due_at, awaiting.urgency


def breached(state: ConversationState, now: datetime, urgencies: list[Urgency]) -> bool:
    """Awaiting a reply past its due time, of an urgency that alerts, not yet alerted."""
    awaiting = state.awaiting
    return (
        awaiting is not None
        and not awaiting.breach_alerted
        and awaiting.due_at is not None
        and awaiting.due_at < now
        and awaiting.urgency in urgencies
    )


@dataclass(slots=True)
class _Due:
    updated_at: datetime
    sla: tuple[datetime, Urgency] | None
    reported: bool = False  # a ConversationDue is on its way; wait for the state to change


class DueIndex:
    """For each conversation this replica owns: when it was last updated and when its awaited
    reply is due. Kept beside the table, in memory: every change of a conversation updates it,
    a rebalance clears it and it is rebuilt from the table once the table is restored, so it
    never holds a conversation of a partition the replica no longer owns."""

    def __init__(self) -> None:
        self._entries: dict[str, _Due] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def track(self, state: ConversationState) -> None:
        self._entries[state.conversation_id] = _Due(state.updated_at, awaiting_due(state))

    def forget(self, conversation_id: str) -> None:
        self._entries.pop(conversation_id, None)

    def rebuild(self, states: Iterable[ConversationState]) -> None:
        self._entries.clear()
        for state in states:
            self.track(state)

    def clear(self) -> None:
        self._entries.clear()

    def due(
        self, now: datetime, ttl_hours: float, urgencies: list[Urgency]
    ) -> list[tuple[str, Literal["sla", "expired"]]]:
        """Conversations idle past the TTL, then those past an SLA that alerts; each reported
        once until its state changes."""
        idle_since = now - timedelta(hours=ttl_hours)
        found: list[tuple[str, Literal["sla", "expired"]]] = []
        for conversation_id, entry in self._entries.items():
            if entry.reported:
                continue
            if entry.updated_at < idle_since:
                found.append((conversation_id, "expired"))
            elif entry.sla is not None and entry.sla[0] < now and entry.sla[1] in urgencies:
                found.append((conversation_id, "sla"))
            else:
                continue
            entry.reported = True
        return found


def replies_read_until(
    last_read: tuple[int, float] | None,
    deadline: datetime,
    end: int | None,
    committed: int | None,
) -> bool:
    """Whether every company reply written to a partition before ``deadline`` has been handled,
    so that an SLA breach may be raised: the last reply handled (offset, timestamp) was written
    after the deadline, or nothing is left to read (the next offset to handle, after the last
    handled or else the committed one, has reached the partition's ``end``). ``end`` is None
    until the broker has answered a fetch of the partition: not known to be read."""
    if last_read is not None and last_read[1] >= deadline.timestamp():
        return True
    if end is None:
        return False
    next_offset = last_read[0] + 1 if last_read is not None else (committed or 0)
    return next_offset >= end
