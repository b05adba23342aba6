"""The route service: the company's routing policy applied to every classified tweet.

A faust-streaming app. Its agent consumes ``switchboard.tweets.classified``,
``switchboard.tweets.brand``, ``switchboard.feedback.requests`` (corrections) and its own
``switchboard.route.due``, all keyed by conversation id and co-partitioned (faust assigns
partition n of each to the same replica); another agent hands each deletion on
``switchboard.compliance`` (keyed by tweet id) to its conversation's owner through
``switchboard.route.due``. For each inbound tweet it publishes a RoutedTweet on exactly one
primary topic (``switchboard.dept.<department>``, ``switchboard.triage`` or
``switchboard.dropped``), copies on other departments' topics when a rule says so, and an Alert
on ``switchboard.alerts`` when escalated. Each conversation (owner, highest urgency, the tweet
awaiting a reply) lives in the faust table ``conversations``, whose changelog is the compacted
``switchboard.route.conversations``: a replica holds, restores and acts on the conversations of
its own partitions only. A timer sweeps those for SLA breaches and idle conversations and tells
the owner through ``switchboard.route.due``; a second agent counts spikes per department,
handle and keyword in windowed tables, fed through ``switchboard.route.spikes`` (keyed by spike
key). It measures time to first response from the company's own replies and reloads ``route``
from the YAML file when the file changes. Malformed input goes to ``switchboard.deadletter``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, FastAPI
from faust.types import TP

from switchboard.route import conversations, feedback, metrics
from switchboard.route.config import Priority, RouteFileConfig
from switchboard.route.ops import OpsView, ops_router
from switchboard.route.replies import EarlyDeletions, EarlyReplies
from switchboard.route.rules import (
    DEFAULT_PRIORITY,
    Outcome,
    drop_deleted,
    evaluate,
    rules_version,
)
from switchboard.route.settings import RouteSettings
from switchboard.route.spikes import (
    Spike,
    SpikeKeys,
    SpikeTally,
    SpikeWindows,
    spike_key,
    spike_key_parts,
)
from switchboard.shared import metrics as shared_metrics
from switchboard.shared import topics
from switchboard.shared.access import AccessPolicy
from switchboard.shared.events import (
    Alert,
    AwaitingReply,
    BrandTweet,
    Classification,
    ClassifiedTweet,
    ComplianceEvent,
    ConversationDue,
    ConversationState,
    Corrected,
    Correction,
    CorrectionRequest,
    DecodeError,
    RouteDecision,
    RoutedTweet,
    SpikeAlert,
    SpikeCount,
    SpikeSampleWithdrawn,
    SpikesWithdrawn,
    Trace,
    decode_spike,
    encode,
    utc_now,
)
from switchboard.shared.kafka import (
    Output,
    dead_letter_record,
    decode_or_dead_letter,
    ensure_topics,
)
from switchboard.shared.labels import Department, Urgency
from switchboard.shared.runtime import http_app, run_service
from switchboard.shared.settings import ConfigError, ServiceSettings, file_digest
from switchboard.shared.streams import (
    AckAfterPublish,
    StreamWorker,
    publish_from_timer,
    raw_topic,
    table_value,
)

log = logging.getLogger(__name__)

GROUP_ID = "switchboard-route"  # the faust app's id: its consumer group and table prefix
Reload = Literal["applied", "unchanged", "invalid"]


class RouteService:
    name = "route"

    def __init__(self, settings: RouteSettings) -> None:
        self.settings = settings
        self.config = settings.config
        feedback.check_secrets(self.config.route.feedback)
        self.version = rules_version(self.config.route)
        self.spike_keys = SpikeKeys(self.config.route.spikes)
        self.streams = StreamWorker(
            GROUP_ID,
            self.name,
            settings,
            state_dir=settings.state_dir,
            standby_replicas=self.config.route.standby_replicas,
        )
        self.app = self.streams.app
        self.conversations = self.streams.table(
            "conversations", topics.ROUTE_CONVERSATIONS, help="ConversationState by conversation id"
        )
        self.due = conversations.DueIndex()
        self.recorded = feedback.RecordedCorrections(
            self.app, self.streams.partitions, self.config.route.conversations.ttl_hours
        )
        self.early_replies = EarlyReplies(
            self.app, self.streams.partitions, self.config.route.conversations.ttl_hours
        )
        self.early_deletions = EarlyDeletions(
            self.app, self.streams.partitions, self.config.route.conversations.ttl_hours
        )
        self.spike_windows = SpikeWindows(
            self.app, self.config.route.spikes, self.streams.partitions
        )
        self.spike_tally = SpikeTally(self.spike_windows.window_s)  # the tables' windows
        self.acks = AckAfterPublish(
            self.app, self.name, self.handle, deferred=self.spike_tally.drain
        )
        self.spike_acks = AckAfterPublish(self.app, self.name, self.on_spike_observation)
        self.deletion_acks = AckAfterPublish(self.app, self.name, self.on_deletion)
        inputs = raw_topic(
            self.app, topics.CLASSIFIED, topics.BRAND, topics.ROUTE_DUE, topics.FEEDBACK_REQUESTS
        )
        spikes = raw_topic(self.app, topics.ROUTE_SPIKES)
        # keyed by tweet id, not co-partitioned: handed to the conversation's owner (route.due)
        deletions = raw_topic(self.app, topics.COMPLIANCE)
        self.app.agent(inputs, name="route")(self.acks.agent)
        self.app.agent(spikes, name="route-spikes")(self.spike_acks.agent)
        self.app.agent(deletions, name="route-deletions")(self.deletion_acks.agent)
        self.app.timer(self.config.route.sla.check_interval_s, name="route-sweep")(self.sweep)
        self.app.on_partitions_revoked.connect(self._on_rebalance)
        self.app.on_partitions_assigned.connect(self._on_rebalance)
        self._index_stale = True
        # BRAND partition -> (offset, timestamp) of the last company reply handled: an SLA breach
        # is only raised once every reply sent before its deadline has been read (see on_due).
        self._replies_read: dict[int, tuple[int, float]] = {}
        self._config_digest = file_digest(settings.config_file)
        self.at_restart: list[str] = []  # keys changed since start that wait for a restart
        self._rejected: tuple[str | None, str] | None = None  # the last file refused, and why
        self.ops = OpsView(
            settings.kafka,
            corrections=self.config.access.admin_token is not None,
            names=self.config.department_names,
        )

    @property
    def ready(self) -> bool:
        """Started, and the table restored for the partitions it was given."""
        return self.streams.ready

    def http_app(self) -> FastAPI:
        app = http_app(self, AccessPolicy.of(self.config.access, feedback.SELF_AUTHENTICATED))
        app.include_router(ops_router(self.ops))
        app.include_router(feedback.feedback_router(self))
        app.include_router(admin_router(self))
        return app

    async def start(self) -> None:
        await ensure_topics(
            self.settings.kafka,
            [topics.CLASSIFIED, topics.BRAND, *topics.PRIMARY_TOPICS, topics.ALERTS,
             topics.DEADLETTER, topics.ROUTE_CONVERSATIONS, topics.ROUTE_DUE,
             topics.ROUTE_SPIKES, topics.FEEDBACK_REQUESTS, topics.FEEDBACK, topics.COMPLIANCE],
            self.config.topics.partitions,
            self.config.topics.replication_factor,
            co_partitioned=[t for t in self.streams.joined_topics() if t != topics.COMPLIANCE],
        )  # fmt: skip
        await self.streams.start()

    async def run(self, stop: asyncio.Event) -> None:
        background = [
            asyncio.create_task(self._watch_config(stop)),
            asyncio.create_task(self.ops.sample(stop)),
        ]
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
                self.streams.check()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)

    async def _on_rebalance(self, app: Any, *_: Any, **__: Any) -> None:
        """Partitions came or went: forget the index now, rebuild it once the table is; the ops
        page's tweets go too (a deletion of one of a partition given away reaches its new
        owner, not this page, which would show the text its author took back)."""
        self.ops.forget_tweets()
        self.due.clear()
        self._index_stale = True
        self._replies_read.clear()

    # --- per record, inside its partition's stream ------------------------------------------

    def handle(self, message: Any) -> list[Output]:
        """What one input record makes route publish (its table changes are made here too)."""
        if message.topic == topics.BRAND:
            self._replies_read[message.partition] = (message.offset, message.timestamp or 0.0)
            return self.on_brand_reply(message)
        if message.topic == topics.ROUTE_DUE:
            return self.on_due(message)
        if message.topic == topics.FEEDBACK_REQUESTS:
            return self.on_correction_request(message)
        event = decode_or_dead_letter(message, ClassifiedTweet, self.name)
        if isinstance(event, Output):
            return [event]
        return self.on_classified(event, datetime.now(UTC), message.offset)

    def on_classified(
        self, event: ClassifiedTweet, now: datetime, offset: int | None = None
    ) -> list[Output]:
        key = event.tweet.conversation_id
        state = self._active(key, now)
        if self.early_deletions.deleted(key, event.tweet.id, event.tweet.edit_of):
            return self._routed_deleted(event, state, now)
        before = conversations.decided(state, event.tweet.id)
        if before is not None:
            if conversations.read_again(state, event.tweet.id, offset):
                # Its spike tally is held a moment before it is published: a crash meanwhile
                # lost it, so it is tallied again (at least once, as everywhere), as it was.
                kept = state.recent.get(event.tweet.id) if state else None
                counted = kept.spikes if kept else None
                if counted is None:
                    counted = self._spike_count(event, before.destination, before.department)
                self._tally(event, counted)
            return self.republish(event, before)
        outcome = evaluate(event, self.config, state, now)
        decision = self._decision(outcome, event.classification.urgency)
        routed, alert, outputs = self._publications(event, decision)
        self.ops.on_routed(routed)
        if alert is not None:
            self.ops.on_alert(alert)
        early = self.early_replies.get(key) if state is None else None
        counted = self._spike_count(event, outcome.destination, outcome.department)
        new_state = conversations.after_routing(
            state, event, outcome, routed.route, now, early, offset, counted,
            alerting=self.config.route.sla.alert_urgencies,
        )  # fmt: skip
        if new_state is not None and new_state != state:
            awaited = new_state.awaiting
            if awaited is not None and (state is None or state.awaiting is None):
                metrics.AWAITING_REPLY.labels(awaited.handle or "none", awaited.department).inc()
            self._remember(new_state)
        self._tally(event, counted)
        self._count(routed, outcome)
        return outputs

    def _routed_deleted(
        self, event: ClassifiedTweet, state: ConversationState | None, now: datetime
    ) -> list[Output]:
        """A tweet deleted before route read it (deletions skip classify), or read again
        after: counted as dropped, on switchboard.dropped without its text, alerting no one;
        its conversation keeps nothing of it, nor of the post's other versions."""
        outcome = evaluate(event, self.config, state, now)
        drop_deleted(outcome)
        textless = event.model_copy(update={"tweet": event.tweet.model_copy(update={"text": ""})})
        decision = self._decision(outcome, event.classification.urgency)
        routed, _, outputs = self._publications(textless, decision)
        self.ops.on_routed(routed)
        self._forget_tweet(state, event.tweet.edit_of or event.tweet.id)
        self._count(routed, outcome)
        return outputs

    def republish(self, event: ClassifiedTweet, decision: RouteDecision) -> list[Output]:
        """A tweet routed before (published again upstream, or read again after a crash): the
        same topics and alert as the first time, and no change to the conversation or counts.
        Consumers deduplicate by tweet id (docs/architecture.md, Delivery guarantees)."""
        _, _, outputs = self._publications(event, decision)
        metrics.REPUBLISHED.labels(decision.department).inc()
        log.info("routed again as before", extra={"tweet_id": event.tweet.id,
                                                  "topic": decision.topic})  # fmt: skip
        return outputs

    def _publications(
        self, event: ClassifiedTweet, decision: RouteDecision
    ) -> tuple[RoutedTweet, Alert | None, list[Output]]:
        """The routed tweet on its primary topic and its copies, and its alert if escalated."""
        key = event.tweet.conversation_id
        routed = RoutedTweet(
            tweet=event.tweet,
            classification=event.classification,
            route=decision,
            trace=event.trace.model_copy(update={"routed_at": utc_now()}),
        )
        outputs = [Output.of(decision.topic, routed, key)]
        outputs += [Output.of(topics.department_topic(d), routed, key) for d in decision.copies]
        alert = alert_for(routed) if decision.escalated else None
        if alert is not None:
            outputs.append(Output.of(topics.ALERTS, alert, key))
        return routed, alert, outputs

    def on_brand_reply(self, message: Any) -> list[Output]:
        reply = decode_or_dead_letter(message, BrandTweet, self.name)
        if isinstance(reply, Output):
            return [reply]
        now = datetime.now(UTC)
        company = self.config.handles_by_user_id  # a reply to one of them is a follow-up
        state = self._active(reply.tweet.conversation_id, now)
        if state is None:  # read before the tweet it answers, or after the conversation's TTL
            self.early_replies.add(reply.tweet.conversation_id, reply, company)
            return []
        new_state, response = conversations.after_brand_reply(
            state, reply, now, self.config.route.sla.alert_urgencies, company
        )
        awaited = new_state.awaiting
        if awaited is not None and awaited.tweet_id != (state.awaiting and state.awaiting.tweet_id):
            # another customer's tweet awaits a reply now: counted as awaiting, as it is answered
            metrics.AWAITING_REPLY.labels(awaited.handle or "none", awaited.department).inc()
        if response is not None:
            labels = (response.awaited.handle or "none", response.awaited.department)
            if not response.tracked:  # a customer's tweet the conversation did not track
                metrics.AWAITING_REPLY.labels(*labels).inc()
            metrics.RESPONSES.labels(*labels).inc()
            metrics.RESPONSE_SECONDS.labels(*labels).observe(response.seconds)
            log.info(
                "answered",
                extra={
                    "conversation_id": state.conversation_id,
                    "tweet_id": response.awaited.tweet_id,
                    "handle": response.handle,
                    "seconds": round(response.seconds, 1),
                },
            )
        self._remember(new_state)
        return []

    def on_correction_request(self, message: Any) -> list[Output]:
        """A person's correction, applied by the conversation's owner: the Correction once per
        id, the tweet on its new department's topic, an alert when its new urgency alerts, and
        the conversation's owner follows (feedback.py)."""
        request = decode_or_dead_letter(message, CorrectionRequest, self.name)
        if isinstance(request, Output):
            return [request]
        now = datetime.now(UTC)
        state = self._active(request.conversation_id, now)
        if state is not None and request.correction_id in state.corrections:
            return self._applied_before(state, request, message.offset)
        # Seen before (every correction is recorded by id): done with, unless this is its own
        # request read again and the conversation held now did not keep it (a crash between
        # the two tables' writes), when it is applied again.
        recorded = self.recorded.get(request.correction_id)
        if recorded and not _lost_with_a_crash(recorded, state, message.offset):
            return self._recorded_before(recorded, request, message.offset)
        route = self.config.route
        applied = feedback.apply(state, request, now, sla_minutes=route.sla.minutes,
                                 alert_urgencies=route.alert_urgencies,
                                 sla_alerting=route.sla.alert_urgencies)  # fmt: skip
        correction = self._without_deleted_text(applied.correction)
        outputs = [Output.of(topics.FEEDBACK, correction, request.conversation_id)]
        new_state = applied.state
        if applied.recent is not None and new_state is not None and state is not None:
            tweet_id = applied.recent.tweet.id
            routed, alert = self._corrected(
                applied, state.routed.get(tweet_id), new_state.routed.get(tweet_id)
            )
            if correction.outcome == "rerouted":
                outputs.append(Output.of(routed.route.topic, routed, request.conversation_id))
                self.ops.on_routed(routed)
            if alert is not None:
                outputs.append(Output.of(topics.ALERTS, alert, request.conversation_id))
                self.ops.on_alert(alert)
                metrics.ALERTS.labels(alert.kind, alert.department).inc()
            routed_now = {**new_state.routed, routed.tweet.id: routed.route}
            new_state = new_state.model_copy(update={"routed": routed_now})
        if new_state is not None:
            self._remember(new_state.model_copy(update={"correction_offset": message.offset}))
        # Its id outlives the conversation too: a retry after the conversation's TTL, or
        # after one recorded for training only came back, is known.
        self.recorded.add(correction, message.offset)
        metrics.CORRECTIONS.labels(
            correction.source, _label(correction.department), _label(correction.department_before),
            _label(correction.urgency), _label(correction.urgency_before),
            correction.model_version or "", correction.outcome,
        ).inc()  # fmt: skip
        log.info("corrected", extra={"correction_id": correction.correction_id,
                                     "tweet_id": correction.tweet_id, "by": correction.by,
                                     "outcome": correction.outcome})  # fmt: skip
        return outputs

    def _applied_before(
        self, state: ConversationState, request: CorrectionRequest, offset: int
    ) -> list[Output]:
        """A correction whose id was applied: a new request with it (a retried webhook, a
        second click) changes nothing and publishes nothing; the same request read again (the
        replica died after the table remembered it, perhaps before its outputs were out) has
        its Correction, re-routed tweet and alert published again as they were."""
        log.info("correction applied before", extra={"correction_id": request.correction_id})
        correction = next(
            (c for c in state.applied if c.correction_id == request.correction_id), None
        )
        if (
            correction is None
            or state.correction_offset is None
            or offset > state.correction_offset
        ):
            return []
        key = request.conversation_id
        recent = state.recent.get(correction.tweet_id or "")
        if recent is not None:
            correction = correction.model_copy(update={"tweet": recent.tweet})
        outputs = [Output.of(topics.FEEDBACK, correction, key)]
        decision = state.routed.get(correction.tweet_id or "")
        if (
            recent is None
            or decision is None
            or correction.outcome not in ("rerouted", "relabelled")
        ):
            return outputs
        escalate = feedback.escalates(correction, recent.tweet, self.config.route.alert_urgencies)
        again = feedback.Applied(correction, state, recent, escalate)
        routed, alert = self._corrected(again, decision, decision)  # as it was published
        if correction.outcome == "rerouted":
            outputs.append(Output.of(routed.route.topic, routed, key))
        if alert is not None:
            outputs.append(Output.of(topics.ALERTS, alert, key))
        return outputs

    def _recorded_before(
        self, recorded: feedback.Recorded, request: CorrectionRequest, offset: int
    ) -> list[Output]:
        """A correction recorded for training only, seen again: published again if its own
        request is read again (the replica died before its output was out), else nothing."""
        log.info("correction recorded before", extra={"correction_id": request.correction_id})
        if offset > recorded.offset:
            return []
        correction = recorded.correction  # kept without its tweet: the request has it
        given = feedback.given_tweet(request, correction.tweet_id)
        correction = self._without_deleted_text(correction.model_copy(update={"tweet": given}))
        return [Output.of(topics.FEEDBACK, correction, request.conversation_id)]

    def _without_deleted_text(self, correction: Correction) -> Correction:
        """The correction without its tweet when the author deleted it: a caller may send the
        text of a tweet whose deletion route read already, and a deletion's downstream copies
        must go."""
        tweet = correction.tweet
        if tweet is None or not self.early_deletions.deleted(
            correction.conversation_id, tweet.id, tweet.edit_of
        ):
            return correction
        return correction.model_copy(update={"tweet": None})

    def _corrected(
        self, applied: feedback.Applied, before: RouteDecision | None, after: RouteDecision | None
    ) -> tuple[RoutedTweet, Alert | None]:
        """The tweet as a person labelled it, on its department's topic, due by its new
        urgency's SLA (``after``: its decision with that deadline) at that urgency's priority
        (unless a rule set another); its alert if the new urgency alerts and the old one did
        not."""
        recent, correction = applied.recent, applied.correction
        assert recent is not None and correction.department_before is not None
        assert correction.urgency_before is not None
        classification = Classification(
            department=recent.department, urgency=recent.urgency, confidence=1.0,
            urgency_confidence=1.0, department_scores={recent.department: 1.0},
            urgency_scores={recent.urgency: 1.0}, model_version=recent.model_version,
            lang=recent.tweet.lang,
        )  # fmt: skip
        moved = f"{correction.department_before.value}/{correction.urgency_before.value} -> " \
                f"{recent.department.value}/{recent.urgency.value}"  # fmt: skip
        decision = RouteDecision(
            destination="department",
            department=recent.department,
            topic=topics.department_topic(recent.department),
            escalated=applied.escalate or bool(before and before.escalated),
            alert_kind=kind_of_alert(recent.urgency)
            if applied.escalate
            else (before.alert_kind if before else None),
            reasons=[f"corrected by {correction.by} ({correction.source}): {moved}"],
            confidence_threshold=self.config.route.confidence_threshold,
            rules_version=self.version,
            owner=before.owner if before else "model",
            priority=_corrected_priority(before, correction.urgency_before, recent.urgency),
            sla_due_at=after.sla_due_at if after else before.sla_due_at if before else None,
        )
        routed = RoutedTweet(
            tweet=recent.tweet,
            classification=classification,
            route=decision,
            trace=Trace(ingested_at=recent.ingested_at, routed_at=utc_now()),
            correction=Corrected(
                correction_id=correction.correction_id, by=correction.by,
                source=correction.source, department_before=correction.department_before,
                urgency_before=correction.urgency_before,
            ),
        )  # fmt: skip
        return routed, alert_for(routed) if applied.escalate else None

    def on_deletion(self, message: Any) -> list[Output]:
        """A tweet was deleted: its conversation's owner forgets it (route.due carries it
        there), so that no SLA alert or correction republishes what its author took back."""
        deletion = decode_or_dead_letter(message, ComplianceEvent, self.name)
        if isinstance(deletion, Output):
            return [deletion]
        conversation = deletion.conversation_id or deletion.tweet_id  # a root is its own
        due = ConversationDue(conversation_id=conversation, reason="deleted",
                              found_at=utc_now(), tweet_id=deletion.tweet_id)  # fmt: skip
        return [Output.of(topics.ROUTE_DUE, due, conversation)]

    def on_due(self, message: Any) -> list[Output]:
        """The sweep found this conversation due; its owner checks again and acts."""
        due = decode_or_dead_letter(message, ConversationDue, self.name)
        if isinstance(due, Output):
            return [due]
        now = datetime.now(UTC)
        if due.reason == "deleted":
            self._deleted(due.conversation_id, due.tweet_id, now, message.offset)
            return []
        state = self._state(due.conversation_id)
        if state is None:
            self.due.forget(due.conversation_id)
            return []
        if not conversations.active(state, now, self.config.route.conversations.ttl_hours):
            self._forget(state.conversation_id)
            return []
        self.due.track(state)  # still active: a later sweep may report it again
        if due.reason != "sla":
            return []
        awaited = state.awaiting
        if awaited is not None and awaited.breach_alerted:
            # This very check read again after a crash: its alert may not have gone out.
            again = awaited.breach_offset == message.offset
            alert = _breach_alert(awaited, now) if again else None
            return [] if alert is None else [Output.of(topics.ALERTS, alert, due.conversation_id)]
        deadline = state.awaiting.due_at if state.awaiting else None
        if deadline is not None and not self._replies_read_until(message.partition, deadline):
            # A reply sent in time may wait unread behind a restart or a rebalance: a later
            # sweep reports the conversation again, once the replies are read.
            log.info("SLA check waits for unread replies",
                     extra={"conversation_id": state.conversation_id})  # fmt: skip
            return []
        return self.sla_breach(state, now, message.offset)

    def _deleted(
        self, conversation_id: str, tweet_id: str | None, now: datetime, offset: int
    ) -> None:
        """Forget a deleted tweet in its conversation, and note it and its post: a copy read
        again, another version, or the tweet itself not routed yet (its deletion came first,
        past classify) is dropped when it comes. Its versions leave the spike samples they
        are in; ``offset``: the deletion's record on switchboard.route.due."""
        if not tweet_id:
            return
        active = self._active(conversation_id, now)
        # noted whether or not it was routed: a copy read again, or another version of the
        # post still behind classify, must not be routed after its deletion
        posts = dict.fromkeys((tweet_id, conversations.post_of(active, tweet_id)))
        for deleted in posts:
            self.early_deletions.add(conversation_id, deleted)
        self._forget_tweet(active, tweet_id, deletion_offset=offset)
        self.ops.forget(set(posts))

    def _forget_tweet(
        self, state: ConversationState | None, tweet_id: str, deletion_offset: int | None = None
    ) -> None:
        """The conversation without a deleted tweet's post (conversations.without), kept; for
        the deletion's record at ``deletion_offset``, with the spike samples it withdrew."""
        if state is None:
            return
        kept = conversations.without(state, tweet_id, self.config.route.sla.alert_urgencies)
        if deletion_offset is not None:
            withdrawn = self._withdraw_spike_samples(state, kept, deletion_offset)
            if withdrawn is not None:
                kept = kept.model_copy(update={"spikes_withdrawn": withdrawn})
        if kept != state:
            self._remember(kept)
            log.info("a deleted tweet forgotten", extra={"tweet_id": tweet_id})

    def _withdraw_spike_samples(
        self, state: ConversationState, kept: ConversationState, offset: int
    ) -> SpikesWithdrawn | None:
        """Withdraw the deleted post's versions (in ``state``, not in ``kept``) from the spike
        samples they were counted in (at the tally's next drain); the same again for its
        deletion read again after a crash, once the conversation no longer keeps them."""
        again = state.spikes_withdrawn
        if again is not None and again.offset == offset:
            counted = again.tweets
        else:
            counted = {i: r.spikes for i, r in state.recent.items()
                       if i not in kept.recent and r.spikes}  # fmt: skip
        for gone, count in counted.items():
            self.spike_tally.withdraw(gone, count)
        return SpikesWithdrawn(offset=offset, tweets=counted) if counted else None

    def _replies_read_until(self, partition: int, deadline: datetime) -> bool:
        """Whether every company reply written to this partition of ``switchboard.tweets.brand``
        before ``deadline`` has been handled (conversations.replies_read_until)."""
        tp = TP(topics.BRAND, partition)
        consumer = self.app.consumer
        committed = consumer._committed_offset.get(tp)  # noqa: SLF001 - faust keeps it private
        return conversations.replies_read_until(
            self._replies_read.get(partition), deadline, consumer.highwater(tp), committed
        )

    def _state(self, conversation_id: str) -> ConversationState | None:
        value = self.conversations.get(conversation_id.encode("utf-8"))
        return table_value(ConversationState, value, "conversations")

    def _active(self, conversation_id: str, now: datetime) -> ConversationState | None:
        state = self._state(conversation_id)
        ttl = self.config.route.conversations.ttl_hours
        return state if conversations.active(state, now, ttl) else None

    def _remember(self, state: ConversationState) -> None:
        self.conversations[state.conversation_id.encode("utf-8")] = encode(state)
        self.due.track(state)

    def _forget(self, conversation_id: str) -> None:
        """Idle past its TTL: out of the table, and a tombstone on its changelog."""
        del self.conversations[conversation_id.encode("utf-8")]
        self.due.forget(conversation_id)
        log.info("conversation expired", extra={"conversation_id": conversation_id})

    def _decision(self, outcome: Outcome, urgency: Urgency) -> RouteDecision:
        topic = {
            "department": topics.department_topic(outcome.department),
            "triage": topics.TRIAGE,
            "dropped": topics.DROPPED,
        }[outcome.destination]
        escalated = outcome.escalated and outcome.destination != "dropped"
        return RouteDecision(
            destination=outcome.destination,
            department=outcome.department,
            topic=topic,
            copies=outcome.copies,
            escalated=escalated,
            alert_kind=kind_of_alert(urgency) if escalated else None,
            reasons=outcome.reasons,
            confidence_threshold=self.config.route.confidence_threshold,
            rules_version=self.version,
            matched_rules=outcome.matched_rules,
            owner=outcome.owner,
            priority=outcome.priority,
            sla_due_at=outcome.sla_due_at,
        )

    def _spike_count(
        self, event: ClassifiedTweet, destination: str, department: Department
    ) -> SpikeCount | None:
        """What the tweet counts as for spikes: its keys, in the window of when ingest received
        it (a clock ahead of route's counts as now); nothing if that is longer ago than the
        baseline period (counted late) or it goes nowhere."""
        if not self.config.route.spikes.enabled or destination == "dropped":
            return None
        now = utc_now()
        came_in = min(event.trace.ingested_at, now)
        if not self.spike_windows.countable(came_in, now):
            metrics.SPIKE_LATE.inc()
            return None
        keys = self.spike_keys.of(event.tweet, department)
        return SpikeCount(keys=[spike_key(*key) for key in keys], at=came_in) if keys else None

    def _tally(self, event: ClassifiedTweet, counted: SpikeCount | None) -> None:
        """Count the tweet as ``counted``; ``self.acks`` publishes the tally."""
        if counted is not None:
            keys = [spike_key_parts(key) for key in counted.keys]
            self.spike_tally.add(keys, event.tweet, self.config.route.spikes.samples, counted.at)

    def on_spike_observation(self, message: Any) -> list[Output]:
        try:
            observation = decode_spike(message.value)
        except DecodeError as problem:
            return [dead_letter_record(self.name, problem, message)]
        if isinstance(observation, SpikeSampleWithdrawn):
            self.spike_windows.withdraw(observation)
            return []
        spike = self.spike_windows.observe(observation, message.offset)
        return [] if spike is None else [self._spike_alert(spike)]

    def _spike_alert(self, spike: Spike) -> Output:
        config = self.spike_windows.config
        alert = SpikeAlert(
            alert_id=f"spike:{spike.dimension}:{spike.value}:{spike.started.isoformat()}",
            dimension=spike.dimension,  # type: ignore[arg-type]
            value=spike.value,
            window_minutes=config.window_minutes,
            count=spike.count,
            baseline=round(spike.baseline, 3),
            factor=config.factor,
            samples=spike.samples,
        )
        details = {"dimension": spike.dimension, "value": spike.value, "n": spike.count}
        if spike.again:
            log.info("spike alert published again after a restart", extra=details)
        else:  # counted and shown once, not again when published again
            log.warning("spike", extra=details)
            metrics.SPIKES.labels(spike.dimension, spike.value).inc()
            department = spike.value if spike.dimension == "department" else ""
            metrics.ALERTS.labels("spike", department).inc()
            self.ops.on_alert(alert)
        return Output.of(topics.ALERTS, alert, key=spike_key(spike.dimension, spike.value))

    def _count(self, routed: RoutedTweet, outcome: Outcome) -> None:
        decision = routed.route
        metrics.TWEETS_ROUTED.labels(decision.department, decision.destination).inc()
        for department in decision.copies:
            metrics.COPIES.labels(department).inc()
        for rule in outcome.matched_rules:
            metrics.RULE_MATCHES.labels(rule).inc()
        if decision.escalated:
            metrics.ALERTS.labels(alert_kind(routed), decision.department).inc()
        shared_metrics.E2E_LATENCY.labels("routed").observe(
            (routed.trace.routed_at - routed.trace.ingested_at).total_seconds()  # type: ignore[operator]
        )
        log.info(
            "routed",
            extra={
                "tweet_id": routed.tweet.id,
                "conversation_id": routed.tweet.conversation_id,
                "topic": decision.topic,
                "urgency": routed.classification.urgency.value,
                "rules": decision.matched_rules,
            },
        )

    # --- background work -----------------------------------------------------------------------

    async def sweep(self) -> None:
        """The timer: tell the owner of each due conversation (only this replica's partitions
        are indexed). It waits while the table is being restored after a rebalance."""
        if self.app.rebalancing or self.app.in_recovery:
            return
        if self._index_stale:
            self._index_stale = False
            states = (table_value(ConversationState, v, "conversations") for v in
                      self.conversations.values())  # fmt: skip
            self.due.rebuild(state for state in states if state is not None)
            log.info("conversations indexed", extra={"n": len(self.due)})
        shared_metrics.TABLE_ENTRIES.labels(self.name, topics.ROUTE_CONVERSATIONS).set(
            len(self.due)
        )
        now = datetime.now(UTC)
        found = self.due.due(
            now, self.config.route.conversations.ttl_hours, self.config.route.sla.alert_urgencies
        )
        outputs = [
            Output.of(
                topics.ROUTE_DUE,
                ConversationDue(conversation_id=conversation_id, reason=reason, found_at=now),
                conversation_id,
            )  # fmt: skip
            for conversation_id, reason in found
        ]
        if not await publish_from_timer(self.acks.sender, outputs, self.name, "route-sweep"):
            self._index_stale = True  # rebuilt, so the next sweep reports them again

    def sla_breach(self, state: ConversationState, now: datetime, offset: int) -> list[Output]:
        """An alert for the awaited tweet past its SLA (once), and the state marked with the
        offset of the check that raised it."""
        urgencies = self.config.route.sla.alert_urgencies
        if not conversations.breached(state, now, urgencies):
            return []
        awaiting = state.awaiting
        assert awaiting is not None and awaiting.due_at is not None
        metrics.SLA_BREACHES.labels(awaiting.department, awaiting.urgency).inc()
        log.warning("SLA breached", extra={"conversation_id": state.conversation_id,
                                           "tweet_id": awaiting.tweet_id})  # fmt: skip
        alert = _breach_alert(awaiting, now)
        if alert is not None:
            self.ops.on_alert(alert)
            metrics.ALERTS.labels("sla_breach", awaiting.department).inc()
        marked = awaiting.model_copy(update={"breach_alerted": True, "breach_offset": offset})
        self._remember(state.model_copy(update={"awaiting": marked}))
        return [] if alert is None else [Output.of(topics.ALERTS, alert, state.conversation_id)]

    async def _watch_config(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(self.config.route.reload_interval_s)
            try:
                rejected = self.reload_if_changed() == "invalid"
                shared_metrics.CONFIG_REJECTED.labels(self.name).set(rejected)
            except Exception:  # a bug: logged, and the watch goes on
                log.exception("reading the configuration file failed")

    def reload_if_changed(self) -> Reload:
        """Re-read the YAML file if it changed since the policy in force was read; keep that
        policy while the file is invalid. A rejected file is judged again at every call (a
        secret file it names may appear without the YAML changing), but logged and counted
        once per file and reason."""
        digest = file_digest(self.settings.config_file)
        if digest == self._config_digest:
            self._rejected = None  # back to the file in force: a later bad one is news again
            return "unchanged"
        try:
            config = _load_config(self.settings)
            feedback.check_secrets(config.route.feedback)
        except ConfigError as error:
            if (digest, str(error)) != self._rejected:
                self._rejected = (digest, str(error))
                metrics.RULES_RELOADS.labels("invalid").inc()
                log.error("new configuration rejected; keeping the current rules: %s", error)
            return "invalid"
        self._config_digest, self._rejected = digest, None
        pending = at_restart(self.settings.config, config)
        if pending != self.at_restart:
            self.at_restart = pending
            if pending:
                log.warning("changed in the file, applied at route's next start: %s",
                            ", ".join(pending))  # fmt: skip
        spikes = config.route.spikes  # the bar (factor, min_count) and what is watched: now
        self.spike_windows.reconfigure(spikes)
        self.config = config
        self.version = rules_version(config.route)
        self.spike_keys = SpikeKeys(config.route.spikes)
        metrics.RULES_RELOADS.labels("applied").inc()
        log.info(
            "routing rules reloaded",
            extra={"rules_version": self.version, "rules": len(config.route.rules)},
        )
        return "applied"

    async def close(self) -> None:
        await self.streams.stop()


def admin_router(service: RouteService) -> APIRouter:
    """``POST /admin/rules/reload``: apply the YAML file's routing rules now, without waiting
    for ``reload_interval_s`` (the admin token is required, see shared/access.py)."""
    router = APIRouter(prefix="/admin")

    @router.post("/rules/reload")
    async def reload_rules() -> dict[str, object]:
        outcome = service.reload_if_changed()
        return {"outcome": outcome, "rules_version": service.version,
                "rules": len(service.config.route.rules),
                "at_restart": service.at_restart}  # fmt: skip

    return router


# Keys route reads once, at start: a reload leaves them as they were (``at_restart``).
AT_START: dict[str, Callable[[RouteFileConfig], object]] = {
    "route.spikes.window_minutes": lambda c: c.route.spikes.window_minutes,  # the tables' own
    "route.spikes.baseline_windows": lambda c: c.route.spikes.baseline_windows,
    "route.sla.check_interval_s": lambda c: c.route.sla.check_interval_s,  # the sweep's timer
    "route.conversations.ttl_hours (early replies and deletions)": (
        lambda c: c.route.conversations.ttl_hours
    ),
    "route.standby_replicas": lambda c: c.route.standby_replicas,
    "access": lambda c: c.access,  # the admin token and what it locks
    "departments (the ops page's names)": lambda c: c.departments,
    "topics": lambda c: c.topics,
}


def at_restart(started: RouteFileConfig, now: RouteFileConfig) -> list[str]:
    """The keys changed in the file since route started that it applies only at its next
    start (a reload applies the rest)."""
    return [key for key, read in AT_START.items() if read(started) != read(now)]


def kind_of_alert(urgency: Urgency) -> Literal["critical_tweet", "escalation"]:
    return "critical_tweet" if urgency is Urgency.CRITICAL else "escalation"


def alert_kind(routed: RoutedTweet) -> str:
    """The kind its decision names (a tweet published again keeps its first alert's id), or,
    for a decision made before decisions named it, the kind its labels give."""
    return routed.route.alert_kind or kind_of_alert(routed.classification.urgency)


def alert_for(routed: RoutedTweet) -> Alert:
    c = routed.classification
    kind = alert_kind(routed)
    return Alert(
        alert_id=f"{kind}:{routed.tweet.id}",
        kind=kind,  # type: ignore[arg-type]
        department=routed.route.department,
        urgency=c.urgency,
        summary=(
            f"{c.urgency.value} {routed.route.department.value} tweet from "
            f"@{routed.tweet.author.username} to "
            f"{', '.join(routed.tweet.addressed_handles) or 'the company'}: "
            + "; ".join(routed.route.reasons[-2:])
        ),
        tweet=routed.tweet,
        classification=c,
        trace=routed.trace,
    )


def _label(value: Department | Urgency | None) -> str:
    return value.value if value is not None else ""


def _corrected_priority(
    before: RouteDecision | None, urgency_before: Urgency, urgency: Urgency
) -> Priority | None:
    """The priority of a tweet whose urgency a person corrected: the new urgency's, unless a
    rule had set another than the old urgency's (the rule's stays)."""
    if before is None or before.priority in (None, DEFAULT_PRIORITY[urgency_before]):
        return DEFAULT_PRIORITY[urgency]
    return before.priority


def _breach_alert(awaiting: AwaitingReply, now: datetime) -> Alert | None:
    """The breach alert of the awaited tweet (its id is the tweet's: a copy published again is
    deduplicated downstream); None when the state predates the tweet being kept."""
    if awaiting.tweet is None or awaiting.classification is None or awaiting.due_at is None:
        return None
    late = (now - awaiting.due_at).total_seconds() / 60
    return Alert(
        alert_id=f"sla_breach:{awaiting.tweet_id}",
        kind="sla_breach",
        department=awaiting.department,
        urgency=awaiting.urgency,
        summary=(
            f"{awaiting.urgency.value} tweet to {awaiting.handle or 'the company'} "
            f"unanswered {late:.0f} min past its SLA ({awaiting.due_at.isoformat()})"
        ),
        tweet=awaiting.tweet,
        classification=awaiting.classification,
        trace=_trace_for(awaiting),
    )


def _trace_for(awaiting: AwaitingReply) -> Trace:
    return Trace(ingested_at=awaiting.received_at)


def _lost_with_a_crash(
    recorded: feedback.Recorded, state: ConversationState | None, offset: int
) -> bool:
    """Whether a correction applied to the conversation held now is this very request, read
    again, which the conversation did not keep (a crash between the two tables' writes): not
    one recorded for training only, and not older than the latest request it applied."""
    return (
        state is not None
        and recorded.correction.outcome != "recorded"
        and offset <= recorded.offset
        and (state.correction_offset if state.correction_offset is not None else -1) < offset
    )


def _load_config(settings: ServiceSettings) -> RouteFileConfig:
    return type(settings).load(config_file=settings.config_file, kafka=settings.kafka).config


def main(**overrides: object) -> None:
    """Run the route service until SIGTERM or SIGINT; ``overrides`` replace settings."""
    settings = RouteSettings.load(**overrides)
    asyncio.run(run_service(RouteService, settings))
