"""The X API v2 filtered stream: rules synchronized at start, then one long-lived connection.

Reconnects follow X's documented policy ("Handling disconnections"): network errors and stalls
back off linearly (+250 ms per attempt, up to 16 s), HTTP errors exponentially (from 5 s, up to
320 s), HTTP 429 exponentially from one minute. X sends a keep-alive newline every 20 seconds,
so a connection silent for longer than ``stall_timeout_s`` is dropped and reopened.

Only a connection that stayed open ``healthy_after_s`` resets the backoff: one that X accepts
and closes at once is a failed attempt, or a flapping endpoint would be hammered. Attempts are
also held within X's budget (50 connections per 15 minutes, ``max_connections`` per
``connection_window_s``), past which X refuses connections for up to 15 minutes.

Nothing stops the stream: rule synchronization at start is retried with the HTTP backoff while X
fails, and every failure is reported (``SourceHealth``, metrics, logs).

What the stream missed while it was down (a disconnection, or ingest stopped) is recovered
where X allows it: ``backfill_minutes`` asks X to resend the last minutes on reconnection
(Enterprise access), and the mentions backstop reads each handle's mentions for the gap (any
access level with the mentions endpoint). When the stream was last alive is kept as a
checkpoint, so a restart knows its gap too, and so is each handle's gap the backstop has not
read back yet (the alive checkpoint moves on meanwhile). Keyword, hashtag and cashtag matches
that do not mention a handle are recoverable only by backfill.

tweepy's AsyncStreamingClient implements the same loop but with fixed constants, a fixed host
and no hook to count stalls, so the connection is opened here with aiohttp; the rules endpoints
go through tweepy (xapi.py).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

import aiohttp
from aiohttp.http_exceptions import LineTooLong

from switchboard.ingest import metrics
from switchboard.ingest.checkpoints import Checkpoints
from switchboard.ingest.config import IngestFileConfig, ReconnectConfig
from switchboard.ingest.health import SourceHealth
from switchboard.ingest.polling import Deliver, MentionsPoller
from switchboard.ingest.ratelimit import seconds_to_reset
from switchboard.ingest.rules import StreamRule, desired_rules, plan_sync
from switchboard.ingest.xapi import RulesAnswer, XApi, XApiError, problem_of, usage_capped
from switchboard.shared.config import HandleConfig

log = logging.getLogger(__name__)
X_KEEP_ALIVE_S = 20.0  # X sends a blank line this often on a quiet filtered stream

SOURCE = "filtered_stream"
# + the app: a snowflake id, the app's stream saw everything before it. One per app: each
# ingest process streams with an app of its own (X allows one connection per app).
ALIVE_CHECKPOINT = "filtered_stream:alive:"
LEGACY_ALIVE_CHECKPOINT = "filtered_stream:alive"  # before it was kept per app
BACKSTOP_CHECKPOINT = "filtered_stream:unrecovered:"  # + handle: a gap not yet read back
ALIVE_EVERY_S = 30.0
TWITTER_EPOCH_MS = 1288834974657
# aiohttp refuses lines over 128 KiB by default, which a long post with its includes can
# approach; a line is read whole up to this, and ingest dead-letters what is not a tweet.
MAX_LINE_BYTES = 16 * 1024 * 1024


class ReconnectPolicy:
    """How long to wait before the next connection attempt (pure; see the module docstring)."""

    def __init__(self, config: ReconnectConfig) -> None:
        self.config = config
        self.connected()

    def connected(self) -> None:
        self._network = 0.0
        self._http = self.config.http_initial_s
        self._rate_limited = self.config.rate_limit_initial_s

    def after_network_error(self) -> float:
        wait = self._network
        self._network = min(self._network + self.config.network_step_s, self.config.network_max_s)
        return wait

    def after_http_error(self) -> float:
        wait = self._http
        self._http = min(self._http * 2, self.config.http_max_s)
        return wait

    def after_rate_limit(self, reset_in_s: float | None = None) -> float:
        # X says to double from a minute; without a ceiling, a usage cap spent for a month
        # would leave the stream waiting for days once the cap has reset.
        wait = self._rate_limited
        self._rate_limited = min(self._rate_limited * 2, self.config.rate_limit_max_s)
        return max(wait, reset_in_s or 0.0)


class ConnectionBudget:
    """At most ``limit`` connection attempts in any ``window_s`` (pure, given the clock).

    We count an attempt when we send it; X counts it when it arrives, and the delay between
    the two varies (network, scheduler). So each attempt is kept ``margin_s`` longer than the
    window: without it, an attempt sent at the window's edge can be X's one too many."""

    def __init__(self, limit: int, window_s: float, margin_s: float = 0.0) -> None:
        self.limit = limit
        self.kept_s = window_s + margin_s
        self._attempts: collections.deque[float] = collections.deque()

    def wait_s(self, now: float) -> float:
        """How long until one more attempt stays within the budget."""
        while self._attempts and self._attempts[0] <= now - self.kept_s:
            self._attempts.popleft()
        if len(self._attempts) < self.limit:
            return 0.0
        return self._attempts[0] + self.kept_s - now

    def attempted(self, now: float) -> None:
        self._attempts.append(now)


class Gap(NamedTuple):
    """When the stream may have missed tweets: from ``start`` to ``end`` (the reconnection)."""

    start: float
    end: float


JOIN_S = 60.0  # gaps nearer than this are read back as one
MAX_GAPS = 16  # gaps kept per handle; beyond, the two nearest are joined


def _with(gaps: list[Gap], *more: Gap) -> list[Gap]:
    """``gaps`` and ``more``, oldest first, each one that overlaps or nearly touches another
    joined with it. Gaps days apart stay apart: read back as one, the days between (which
    the stream delivered) would be published again once the dedup window forgot them."""
    joined: list[Gap] = []
    for gap in sorted([*gaps, *more]):
        if joined and gap.start <= joined[-1].end + JOIN_S:
            joined[-1] = Gap(joined[-1].start, max(joined[-1].end, gap.end))
        else:
            joined.append(gap)
    while len(joined) > MAX_GAPS:
        nearest = min(range(len(joined) - 1), key=lambda i: joined[i + 1].start - joined[i].end)
        first, second = joined[nearest], joined.pop(nearest + 1)
        joined[nearest] = Gap(first.start, max(first.end, second.end))
    return joined


def _x_time(moment: float) -> str:
    """X's ``start_time`` / ``end_time`` format, to the second."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def snowflake_at(moment: float) -> int:
    """The smallest X id a tweet posted at ``moment`` (Unix seconds) can have."""
    return max(0, int(moment * 1000) - TWITTER_EPOCH_MS) << 22


def moment_of(snowflake: int) -> float:
    return ((snowflake >> 22) + TWITTER_EPOCH_MS) / 1000


@dataclass
class RuleSync:
    """What one synchronization did, and what X refused (for logs, metrics and the CLI)."""

    created: list[StreamRule] = field(default_factory=list)
    deleted: int = 0
    # (rule as configured, id of the foreign rule X says it duplicates, value adopted or None)
    duplicates: list[tuple[StreamRule, str, str | None]] = field(default_factory=list)
    # (handle, term, X's reason)
    invalid: list[tuple[str, str, str]] = field(default_factory=list)
    uncovered: list[StreamRule] = field(default_factory=list)
    # X's problems with a request as a whole (its rule cap): why rules were left uncovered
    refused: list[str] = field(default_factory=list)


class FilteredStream:
    def __init__(
        self,
        api: XApi,
        config: IngestFileConfig,
        on_message: Callable[[bytes], Awaitable[None]],
        *,
        checkpoints: Checkpoints | None = None,
        on_recovered: Deliver | None = None,
        health: SourceHealth | None = None,
        stored: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``stored`` returns once every tweet passed to ``on_message`` is stored (raising if
        one was not): the alive checkpoint, which says up to when nothing was missed, waits
        for it."""
        self.api = api
        self.config = config
        self.settings = config.ingest.x.filtered_stream
        if self.settings.enabled and self.settings.stall_timeout_s <= X_KEEP_ALIVE_S:
            log.warning(
                "ingest.x.filtered_stream.stall_timeout_s is within X's keep-alive interval: "
                "a quiet stream will be dropped as stalled and reconnected, spending the "
                "connection budget",
                extra={"stall_timeout_s": self.settings.stall_timeout_s,
                       "keep_alive_s": X_KEEP_ALIVE_S},
            )  # fmt: skip
        self.on_message = on_message
        self.checkpoints = checkpoints
        self.on_recovered = on_recovered
        self.stored = stored
        self.health = health or SourceHealth(SOURCE, self.settings.app)
        self.policy = ReconnectPolicy(self.settings.reconnect)
        window_s = self.settings.connection_window_s
        self.budget = ConnectionBudget(
            self.settings.max_connections, window_s, margin_s=max(0.5, 0.01 * window_s)
        )
        self.connections = 0
        self.last_sync: RuleSync | None = None
        self._relied_on: set[str] = set()  # foreign rule ids a handle depends on (sync_rules)
        self._alive_saved_at = 0.0
        # Until when the alive checkpoint stays where it was: a connection that asked X to
        # resend missed minutes has not read them yet (X sends the older posts first).
        self._alive_held_until = 0.0
        # X refused a connection that asked for backfill: tried without it, and if X then
        # accepts, backfill is what it refused (the access level lacks it)
        self._backfill_suspect = False
        self._backfill_refused = False
        self._fresh: list[Gap] = []  # the gaps opened since the backstop's last round began
        self._unrecovered: dict[str, list[Gap]] = {}  # handle: its gaps not read back yet
        self._restored = False  # the gaps an earlier process left are read at first connection
        self._backstop_task: asyncio.Task | None = None

    # --- rules -------------------------------------------------------------------------------

    async def sync_rules(self) -> RuleSync:
        """Make the owned rules (tag prefix) exactly the configured ones; leave the rest."""
        existing = await self.api.get_rules()
        changes = plan_sync(existing, desired_rules(self.config), self.settings.rule_tag_prefix)
        report = RuleSync(duplicates=_adopted(existing, changes.add, self.config))
        if changes.delete_ids:
            answer = RulesAnswer.of(await self.api.delete_rules(changes.delete_ids))
            # X's count (a rule already gone is not deleted again, and says so in `errors`)
            report.deleted = answer.summary.get("deleted", len(changes.delete_ids))
        pending = changes.add
        while pending:
            pending = await self._add(pending, report)
        self.last_sync = report
        uncovered = {rule.tag for rule in report.uncovered}
        # foreign rules whose value ours has, while ours could not be added beside them
        self._relied_on = {foreign_id for rule, foreign_id, adopted in report.duplicates
                           if adopted is None or rule.tag in uncovered}  # fmt: skip
        self._report(report)
        return report

    async def _add(self, rules: list[StreamRule], report: RuleSync) -> list[StreamRule]:
        """Add ``rules``; returns what to try again (X creates none of a request that holds an
        invalid rule; a duplicate is tried again with its next variant)."""
        answer = await self.api.add_rules([(r.value, r.tag) for r in rules])
        invalid, duplicates = answer.invalid(), answer.duplicates()
        if answer.errors:  # X's own count of what it created and why not
            log.info("X answered the rule additions", extra={"summary": answer.summary})
        if refused := answer.unattributed():
            # The request itself was refused (the plan's rule cap): the same rules would be
            # refused again, so what X did not create stays uncovered until the plan or the
            # configuration changes (and ingest restarts).
            report.refused += refused
            report.created += [r for r in rules if r.value in answer.created]
            report.uncovered += [r for r in rules if r.value not in answer.created]
            return []
        retry: list[StreamRule] = []
        ours = await self._our_duplicates(rules, duplicates)
        for rule in rules:
            if rule.value in answer.created or rule in ours:
                report.created.append(rule)
            elif rule.value in invalid:
                refused = await self._invalid_terms(rule, invalid[rule.value], report)
                fixed = rule.without(refused)
                if fixed is None or not refused:
                    report.uncovered.append(rule)  # nothing of it can be added
                else:
                    retry.append(fixed)
            elif rule.value in duplicates:
                variant = rule.variant()
                report.duplicates.append((rule, duplicates[rule.value], variant and variant.value))
                if variant is None:
                    report.uncovered.append(rule)
                else:
                    retry.append(variant)
            else:
                retry.append(rule)  # valid, held back by another rule's error
        if retry == rules:  # nothing created, nothing changed: X would answer the same again
            report.refused.append("X created none of the rules and refused none by name")
            report.uncovered += retry
            return []
        return retry

    async def _our_duplicates(
        self, rules: list[StreamRule], duplicates: dict[str, str]
    ) -> set[StreamRule]:
        """The rules X calls duplicates of a rule that is in fact this one, with its tag: an
        addition X carried out whose answer was lost, and whose retry X then refused."""
        if not any(rule.value in duplicates for rule in rules):
            return set()
        on_x = {str(r.get("id")): r for r in await self.api.get_rules()}
        return {
            rule
            for rule in rules
            if rule.value in duplicates
            and (on_x.get(duplicates[rule.value]) or {}).get("tag") == rule.tag
        }

    async def _invalid_terms(self, rule: StreamRule, reason: str, report: RuleSync) -> set[str]:
        """Which of the rule's terms X refuses, checked one by one in a dry run."""
        if len(rule.terms) <= 1:
            report.invalid += [(rule.handle, term, reason) for term in rule.terms]
            return set(rule.terms)
        answer = await self.api.add_rules(
            [(term + rule.suffix, rule.tag) for term in rule.terms], dry_run=True
        )
        refused = answer.invalid()
        terms = {term for term in rule.terms if term + rule.suffix in refused}
        report.invalid += [(rule.handle, t, refused[t + rule.suffix]) for t in sorted(terms)]
        return terms

    def _report(self, report: RuleSync) -> None:
        for rule, foreign_id, adopted in report.duplicates:
            log.warning(
                "a stream rule duplicates a rule this configuration does not own",
                extra={"handle": rule.handle, "tag": rule.tag, "value": rule.value,
                       "foreign_rule_id": foreign_id, "adopted_value": adopted},
            )  # fmt: skip
        for handle, term, reason in report.invalid:
            log.error(
                "X refused a listening term: fix it in the handle's listen section",
                extra={"handle": handle, "keyword": term, "reason": reason},
            )
        for reason in report.refused:
            log.error("X refused the stream rules: those it did not create stay uncovered",
                      extra={"reason": reason})  # fmt: skip
        for rule in report.uncovered:
            log.error("a stream rule could not be added", extra={"handle": rule.handle,
                                                                 "value": rule.value})  # fmt: skip
        for handle in {h.handle for h in self.config.handles}:
            counts = {
                "foreign_duplicate": sum(r.handle == handle for r, _, _ in report.duplicates),
                "invalid_term": sum(h == handle for h, _, _ in report.invalid),
                "uncovered": sum(r.handle == handle for r in report.uncovered),
            }
            for kind, count in counts.items():
                metrics.STREAM_RULE_PROBLEMS.labels(handle, kind).set(count)
        self.health.detail["rules"] = {
            "created": len(report.created),
            "deleted": report.deleted,
            "foreign_duplicates": len(report.duplicates),
            "invalid_terms": [f"{h} {t}" for h, t, _ in report.invalid],
            "uncovered": [r.tag for r in report.uncovered],
            "refused": report.refused,
        }
        log.info(
            "stream rules synchronized",
            extra={"added": len(report.created), "deleted": report.deleted},
        )

    async def _sync_until_done(self) -> None:
        """Rule sync at start, retried with the HTTP backoff while X or the network fails."""
        while True:
            try:
                await self.sync_rules()
                return
            except XApiError as error:
                wait = self.policy.after_http_error()
                self.health.failed(f"rule sync: {error}", wait)
                log.warning(
                    "stream rule sync failed; retrying",
                    extra={"error": str(error), "retry_in_s": wait},
                )
                await asyncio.sleep(wait)

    def matched_for_us(self, matching_rules: object) -> bool:
        """Whether a streamed tweet matched one of this configuration's rules (its tag
        prefix), or a foreign rule one of ours duplicates and could not be added beside. The
        app's one connection carries every rule on the app: other teams' tweets are not ours
        to route. A message that names no rule is kept."""
        if not isinstance(matching_rules, list) or not matching_rules:
            return True
        prefix = self.settings.rule_tag_prefix
        return any(
            isinstance(rule, dict)
            and (
                (rule.get("tag") or "").startswith(prefix) or str(rule.get("id")) in self._relied_on
            )
            for rule in matching_rules
        )

    # --- the connection ----------------------------------------------------------------------

    async def run(self) -> None:
        """Read the stream until cancelled, reconnecting as X documents."""
        await self._sync_until_done()
        self.policy.connected()
        timeout = aiohttp.ClientTimeout(sock_connect=10, sock_read=self.settings.stall_timeout_s)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                while True:
                    await self._within_budget()
                    wait, reason = await self._connect_once(session)
                    metrics.STREAM_RECONNECTS.labels(reason).inc()
                    self.health.failed(f"disconnected: {reason}", wait)
                    log.warning("stream disconnected", extra={"reason": reason, "retry_in_s": wait})
                    await asyncio.sleep(wait)
        finally:
            if self._backstop_task is not None:
                self._backstop_task.cancel()

    async def _within_budget(self) -> None:
        wait = self.budget.wait_s(time.monotonic())
        if wait > 0:
            metrics.STREAM_BUDGET_WAITS.inc()
            self.health.waiting("connection budget", wait)
            log.warning(
                "stream connection budget spent; waiting",
                extra={"max_connections": self.settings.max_connections,
                       "window_s": self.settings.connection_window_s, "wait_s": round(wait, 3)},
            )  # fmt: skip
            await asyncio.sleep(wait)
        self.budget.attempted(time.monotonic())

    async def _connect_once(self, session: aiohttp.ClientSession) -> tuple[float, str]:
        """One connection; returns how long to wait before the next, and why it ended."""
        headers = {"Authorization": f"Bearer {self.api.bearer_token}"}
        gap_from = self._alive_at()
        backfill_minutes = self._backfill_minutes(gap_from)
        url = self.api.stream_url(backfill_minutes)
        opened_at: float | None = None
        try:
            async with session.get(url, headers=headers) as response:
                if response.status == 429:
                    # the window's reset binds only once it is spent: TooManyConnections (the
                    # app's one connection still open at X) waits a minute, doubling, as X says
                    spent = response.headers.get("x-rate-limit-remaining") == "0"
                    reset_in = seconds_to_reset(response.headers, time.time()) if spent else None
                    return self.policy.after_rate_limit(reset_in), await _why_429(response)
                if response.status == 401 and self.api.renewed():
                    return 0.0, "token_renewed"  # regenerated: the new one goes at once
                if response.status != 200:
                    body = (await response.text())[:300]
                    if backfill_minutes and response.status in (400, 403):
                        self._backfill_suspect = True  # the next connection asks none
                        log.warning("X refused a connection asking for backfill; trying without",
                                    extra={"status": response.status, "body": body})  # fmt: skip
                        return 0.0, "backfill_refused"
                    self._backfill_suspect = False  # refused without it too: not the cause
                    log.error("stream refused", extra={"status": response.status, "body": body})
                    return self.policy.after_http_error(), f"http_{response.status}"
                if self._backfill_suspect and not self._backfill_refused:
                    self._without_backfill()
                opened_at = time.monotonic()
                # The resent minutes come first, and a crash while they come must leave the
                # gap as it was: held as long as what was asked for, then it moves on.
                self._alive_held_until = time.time() + backfill_minutes * 60
                await self._opened(gap_from)
                await self._read(response)
                return self._after_drop(opened_at), "closed_by_server"
        except TimeoutError:
            metrics.STREAM_STALLS.inc()
            return self._after_drop(opened_at), "stall"
        except LineTooLong as error:
            log.error("stream line too long; reconnecting", extra={"error": str(error)[:300]})
            return self._after_drop(opened_at), "line_too_long"
        except (aiohttp.ClientError, OSError):
            return self._after_drop(opened_at), "network_error"
        finally:
            metrics.STREAM_CONNECTED.labels(SOURCE).set(0)

    def _after_drop(self, opened_at: float | None) -> float:
        """The wait after a connection ended: X's "reconnect at once" only after a connection
        that was healthy, the growing network backoff after one that never was."""
        if opened_at is not None and time.monotonic() - opened_at >= self.settings.healthy_after_s:
            self.policy.connected()
        return self.policy.after_network_error()

    async def _opened(self, gap_from: float | None) -> None:
        self.connections += 1
        metrics.STREAM_CONNECTED.labels(SOURCE).set(1)
        self.health.ok()
        self.health.detail.pop("waiting_for", None)
        self.health.detail["connections"] = self.connections
        log.info("stream connected", extra={"connection": self.connections})
        await self._recover(gap_from)

    async def _read(self, response: aiohttp.ClientResponse) -> None:
        await self._still_alive(force=True)
        while line := await response.content.readline(max_line_length=MAX_LINE_BYTES):
            await self._still_alive()
            if line.strip():  # a bare newline is X's keep-alive
                await self.on_message(line.strip())

    # --- what the stream missed --------------------------------------------------------------

    def _alive_at(self) -> float | None:
        """Since when the stream may have missed tweets (None: never connected before). The
        last stall window before the drop is included: tweets in it may not have arrived."""
        saved = None
        if self.checkpoints is not None:
            saved = self.checkpoints.get(ALIVE_CHECKPOINT + self.settings.app)
            saved = saved or self._legacy_alive()
        if saved is None or not saved.isdigit():
            return None
        return moment_of(int(saved)) - self.settings.stall_timeout_s

    def _legacy_alive(self) -> str | None:
        """The alive checkpoint of before it was kept per app, while it is recent: it stopped
        being written at the upgrade, and a gap read back from then (a new app months later)
        would publish again what the dedup window no longer remembers."""
        assert self.checkpoints is not None  # asked only with them
        saved = self.checkpoints.get(LEGACY_ALIVE_CHECKPOINT)
        window_s = self.config.ingest.dedup_window_hours * 3600
        if saved and saved.isdigit() and time.time() - moment_of(int(saved)) < window_s:
            return saved
        return None

    async def _still_alive(self, *, force: bool = False) -> None:
        now = time.time()
        if self.checkpoints is None or (not force and now - self._alive_saved_at < ALIVE_EVERY_S):
            return
        if now < self._alive_held_until:
            return  # the backfill asked for may not be read yet
        self._alive_saved_at = now
        if self.stored is not None:
            await self.stored()  # the tweets read before now are stored, or this raises
        await self.checkpoints.save(ALIVE_CHECKPOINT + self.settings.app, str(snowflake_at(now)))

    def _without_backfill(self) -> None:
        """X refused the connection that asked for backfill and took the one without it (an
        access level below Enterprise): the stream goes on without it, and the mentions
        backstop reads the gaps."""
        self._backfill_refused = True
        self.health.detail["backfill"] = "refused by X: not on this app's access level"
        log.error("X refused backfill_minutes: the stream goes on without it and the mentions "
                  "backstop reads its gaps; set ingest.x.filtered_stream.backfill_minutes to 0 "
                  "(Enterprise access only)")  # fmt: skip

    def _backfill_minutes(self, gap_from: float | None) -> int:
        if gap_from is None or not self.settings.backfill_minutes or self._backfill_off:
            return 0
        return min(self.settings.backfill_minutes, max(1, math.ceil((time.time() - gap_from) / 60)))

    def _covered_by_backfill(self, gap_from: float) -> bool:
        if self._backfill_off:
            return False
        return time.time() - gap_from <= self.settings.backfill_minutes * 60

    @property
    def _backfill_off(self) -> bool:
        """Not asked for: X refused it, or refused a connection that asked for it."""
        return self._backfill_suspect or self._backfill_refused

    async def _recover(self, gap_from: float | None) -> None:
        """Start the mentions backstop for the gap, unless something else covers it, and for
        any gap an earlier run (or process) could not recover. Each handle's gaps not read back
        (each from its start to its reconnection) are checkpointed before the alive checkpoint
        moves past them, so a restart goes on with them. Gaps that open while a backstop runs
        go into one more round, so a flapping stream does not spend the mentions rate limit
        once per reconnection."""
        x = self.config.ingest.x
        if (
            not self.settings.mentions_backstop
            or self.on_recovered is None
            or x.mentions.enabled  # polling reads every mention anyway
        ):
            return
        if not self._restored:
            self._restored = True
            self._unrecovered |= self._checkpointed_gaps()
        if gap_from is not None and not self._covered_by_backfill(gap_from):
            self._fresh = _with(self._fresh, Gap(gap_from, time.time()))
            for handle in self.config.handles:
                await self._checkpoint_gaps(handle.handle)
        if not self._fresh and not self._unrecovered:
            return
        if self._backstop_task is None or self._backstop_task.done():
            self._backstop_task = asyncio.create_task(self._backstops(), name="stream-backstop")

    def _checkpointed_gaps(self) -> dict[str, list[Gap]]:
        if self.checkpoints is None:
            return {}
        gaps: dict[str, list[Gap]] = {}
        for handle in self.config.handles:
            saved = self.checkpoints.get(BACKSTOP_CHECKPOINT + handle.handle) or ""
            for kept in filter(None, saved.split(",")):
                start, _, end = kept.partition("-")
                if start.isdigit():  # an end missing: until now
                    until = moment_of(int(end)) if end.isdigit() else time.time()
                    gap = Gap(moment_of(int(start)), until)
                    gaps[handle.handle] = _with(gaps.get(handle.handle, []), gap)
        return gaps

    async def _checkpoint_gaps(self, handle: str) -> None:
        """Keep ``handle``'s gaps not read back (those of its last round and those opened
        since), each as two snowflakes; none: cleared."""
        if self.checkpoints is not None:
            gaps = _with(self._unrecovered.get(handle, []), *self._fresh)
            kept = ",".join(f"{snowflake_at(g.start)}-{snowflake_at(g.end)}" for g in gaps)
            await self.checkpoints.save(BACKSTOP_CHECKPOINT + handle, kept)

    async def _backstops(self) -> None:
        """Recover each gap for every handle; a handle whose recovery failed (X or the broker
        away) is tried again, with HTTP errors' backoff, until it succeeds: the stream's
        checkpoint has moved on, so nothing else would recover those gaps."""
        pending = self._unrecovered  # kept on the stream: a restarted run() goes on with it
        wait = self.settings.reconnect.http_initial_s
        while self._fresh or pending:
            fresh, self._fresh = self._fresh, []
            for handle in self.config.handles if fresh else ():
                pending[handle.handle] = _with(pending.get(handle.handle, []), *fresh)
            for handle in self.config.handles:
                for gap in list(pending.get(handle.handle, [])):
                    if not await self._backstop(handle, gap):
                        break  # the later ones wait for this one: tried again together
                    pending[handle.handle].remove(gap)
                    await self._recovered(handle.handle)
                if not pending.get(handle.handle):
                    pending.pop(handle.handle, None)
            if pending:
                log.warning("mentions backstop failed; trying again",
                            extra={"handles": sorted(pending), "retry_in_s": wait})  # fmt: skip
                await asyncio.sleep(wait)
                wait = min(wait * 2, self.settings.reconnect.http_max_s)
            else:
                wait = self.settings.reconnect.http_initial_s

    async def _recovered(self, handle: str) -> None:
        """One of ``handle``'s gaps is read back: its checkpoint keeps the rest."""
        try:
            await self._checkpoint_gaps(handle)
        except Exception as error:  # noqa: BLE001 - read back again after a restart: duplicates
            log.warning("could not checkpoint a recovered gap",
                        extra={"handle": handle, "error": str(error)[:300]})  # fmt: skip

    async def _backstop(self, handle: HandleConfig, gap: Gap) -> bool:
        """The handle's mentions of the gap (from its start to the reconnection: what the
        stream delivered after is not published again), read with the stream's app (mentions are
        public: any app may read them, and this one's rate window is the one to draw on);
        whether they were all read and published."""
        assert self.on_recovered is not None
        start, end = _x_time(math.floor(gap.start)), _x_time(math.ceil(gap.end))
        gap_s = round(gap.end - gap.start, 3)
        log.info("recovering the stream's gap from mentions",
                 extra={"handle": handle.handle, "since": start, "gap_s": gap_s})  # fmt: skip
        poller = MentionsPoller(handle, self.api, None, self.config.ingest.x.mentions)
        try:
            items, users = await poller.fetch_since_time(start, end)
            for item in items:
                await self.on_recovered(handle, item, users)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - a failed backstop must not stop the stream
            log.warning("mentions backstop failed for a handle",
                        extra={"handle": handle.handle, "error": str(error)[:300]})  # fmt: skip
            return False
        metrics.STREAM_GAP_RECOVERED.labels(handle.handle).inc(len(items))
        return True


def _adopted(
    existing: list[dict], to_add: list[StreamRule], config: IngestFileConfig
) -> list[tuple[StreamRule, str, str | None]]:
    """Rules already on X under an adopted value while a foreign rule still has theirs: the
    handle depends on nothing foreign, but the duplicate is still there to report."""
    prefix = config.ingest.x.filtered_stream.rule_tag_prefix

    def ours(rule: dict) -> bool:
        return (rule.get("tag") or "").startswith(prefix)

    foreign = {r["value"]: str(r["id"]) for r in existing if not ours(r)}
    owned = {r.get("tag"): r["value"] for r in existing if ours(r)}
    out = []
    for rule in desired_rules(config):
        on_x = owned.get(rule.tag)
        if rule not in to_add and rule.value in foreign and on_x not in (None, rule.value):
            out.append((rule, foreign[rule.value], on_x))
    return out


async def _why_429(response: aiohttp.ClientResponse) -> str:
    """Which of X's 429s refused the connection: the usage cap spent (Daily or Monthly), too
    many connections (another consumer of the app's stream holds it), or the rate window."""
    problem = await problem_of(response)
    if usage_capped(problem):
        detail = {"period": problem.get("period"), "detail": problem.get("detail")}
        log.error("X's usage cap is spent: the stream waits for its period to end", extra=detail)
        return "usage_capped"
    if problem.get("connection_issue") == "TooManyConnections":
        return "too_many_connections"
    return "rate_limited"
