"""The routing engine against the embedded broker: a custom rule set, hot reload, conversation
ownership across a restart, one alert for a burst, an SLA breach, response times."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import time
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import faust
import pytest
import yaml
from aiokafka.structs import ConsumerRecord

from switchboard.route import metrics as route_metrics
from switchboard.route.service import RouteService
from switchboard.route.settings import RouteSettings
from switchboard.shared import topics
from switchboard.shared.events import (
    Alert,
    Author,
    BrandTweet,
    ComplianceEvent,
    ConversationState,
    DecodeError,
    RoutedTweet,
    SpikeAlert,
    SpikeObservation,
    SpikeSampleWithdrawn,
    Trace,
    decode,
    decode_alert,
    decode_spike,
    encode,
)
from tests.conftest import CONFIG_FILE, key_of, readable, rejected, wait_for
from tests.factories import a_classified_tweet, a_tweet

WATCHED = [*topics.PRIMARY_TOPICS, topics.ALERTS]
_ids = itertools.count(1)

RULES = [
    {"name": "spam", "when": {"keywords": ["follow back"]}, "then": {"drop": True}, "final": True},
    {"name": "ir-outage", "when": {"segments": ["investor"], "departments": ["it_security"]},
     "then": {"route_to": "investor_relations", "copy_to": ["it_security"]}},
    {"name": "vip", "when": {"followers_min": 100000},
     "then": {"copy_to": ["communications"], "priority": "P1"}},
]  # fmt: skip


@pytest.fixture
def route_settings(kafka, tmp_path):
    """``route_settings(rules=[...], **route_keys)``: the repo config with another route section."""
    path = tmp_path / "switchboard.yaml"

    def write(rules: list[dict] | None = None, **route: object) -> None:
        config = yaml.safe_load(CONFIG_FILE.read_text())
        config["route"] = {**config["route"], "rules": rules or [], **route}
        path.write_text(yaml.safe_dump(config))

    def build(rules: list[dict] | None = None, **route: object) -> RouteSettings:
        write(rules, **route)
        return RouteSettings.load(config_file=path, kafka=kafka)

    build.write = write  # type: ignore[attr-defined]
    return build


def tag() -> str:
    return f"p{next(_ids)}-{datetime.now(UTC).timestamp():.0f}"


async def send(producer, *events) -> None:  # noqa: ANN001
    for event in events:
        await producer.send_and_wait(
            topics.CLASSIFIED, encode(event), key=event.tweet.conversation_id.encode()
        )


def routed_records(records, prefix: str) -> list[tuple[str, RoutedTweet]]:
    found = []
    for record, routed in readable(records, RoutedTweet):
        if record.topic in topics.PRIMARY_TOPICS and key_of(record).startswith(prefix):
            found.append((record.topic, routed))
    return found


def alerts_of(records, prefix: str) -> list[Alert | SpikeAlert]:
    """Alerts keyed under ``prefix``, once each (reads from the beginning overlap)."""
    found: dict[tuple[int, int], Alert | SpikeAlert] = {}
    for record in records:
        if record.topic == topics.ALERTS and (record.key or b"").decode().startswith(prefix):
            with contextlib.suppress(DecodeError):
                found[(record.partition, record.offset)] = decode_alert(record.value)
    return list(found.values())


CASES = [
    # (name, event kwargs, expected primary topic, expected copy topics, matched rules)
    ("spam dropped", dict(department="community", confidence=0.9, text="follow back plz"),
     topics.DROPPED, [], ["spam"]),
    ("outage on the IR handle", dict(department="it_security", confidence=0.9,
                                     addressed_handles=["@SkylarkIR"]),
     "switchboard.dept.investor_relations", ["switchboard.dept.it_security"], ["ir-outage"]),
    ("mismatched handle keeps the text's department",
     dict(department="customer_service", confidence=0.9, addressed_handles=["@SkylarkDeals"]),
     "switchboard.dept.customer_service", [], []),
    ("vip copied", dict(department="sales", confidence=0.9,
                        author=Author(id="7", username="celeb", followers_count=2_000_000)),
     "switchboard.dept.sales", ["switchboard.dept.communications"], ["vip"]),
    ("low confidence to triage", dict(department="legal", confidence=0.2),
     topics.TRIAGE, [], []),
]  # fmt: skip


async def test_a_custom_rule_set_routes_each_case(route_settings, producer, read, running):
    prefix = tag()
    events = {}
    for index, (_name, fields, *_rest) in enumerate(CASES):
        fields = dict(fields)
        department, confidence = fields.pop("department"), fields.pop("confidence")
        conversation = f"{prefix}-{index}"
        events[conversation] = a_classified_tweet(
            department, confidence, id=conversation, conversation_id=conversation, **fields
        )
    wanted = sum(1 + len(case[3]) for case in CASES)

    async with running(RouteService(route_settings(RULES))):
        await send(producer, *events.values())
        records = await read(WATCHED, lambda rs: len(routed_records(rs, prefix)) >= wanted)

    found = routed_records(records, prefix)
    for index, (name, _fields, primary, copies, matched) in enumerate(CASES):
        mine = [(t, r) for t, r in found if r.tweet.id == f"{prefix}-{index}"]
        assert sorted(t for t, _ in mine) == sorted([primary, *copies]), name
        assert all(r.route.topic == primary for _, r in mine), name
        assert mine[0][1].route.matched_rules == matched, name
        assert mine[0][1].route.rules_version.startswith("rules-"), name


async def test_rules_reload_without_a_restart(route_settings, producer, read, running, tmp_path):
    prefix = tag()
    settings = route_settings([], reload_interval_s=0.1)
    before = a_classified_tweet("sales", 0.9, id=f"{prefix}-a", conversation_id=f"{prefix}-a")
    after = a_classified_tweet("sales", 0.9, id=f"{prefix}-b", conversation_id=f"{prefix}-b")
    service = RouteService(settings)

    async with running(service):
        await send(producer, before)
        await read(WATCHED, lambda rs: len(routed_records(rs, prefix)) >= 1)
        old_version = service.version
        windows = service.spike_windows.config.window_minutes
        route_settings.write([{"name": "sales-to-triage", "when": {"departments": ["sales"]},
                               "then": {"triage": True}}], reload_interval_s=0.1,
                             spikes={"factor": 7, "window_minutes": windows + 1})  # fmt: skip
        await wait_for(lambda: service.version != old_version, timeout_s=10)
        # The spike bar applies at once; the windows' size is the tables' until a restart.
        assert service.spike_windows.config.factor == 7
        assert service.spike_windows.config.window_minutes == windows
        await send(producer, after)
        records = await read(WATCHED, lambda rs: len(routed_records(rs, prefix)) >= 2)
        # An invalid file is refused and the rules in force stay.
        route_settings.write([{"name": "broken", "then": {"route_to": "nowhere"}}])
        invalid = route_metrics.RULES_RELOADS.labels("invalid")._value.get()
        await wait_for(lambda: route_metrics.RULES_RELOADS.labels("invalid")._value.get() > invalid)
        assert [r.name for r in service.config.route.rules] == ["sales-to-triage"]
        await asyncio.sleep(0.5)  # judged again at every tick, but counted (and logged) once
        assert route_metrics.RULES_RELOADS.labels("invalid")._value.get() == invalid + 1
        assert rejected("route") == 1  # said for as long as the file on disk is refused
        # A file naming a secret not there yet is refused until the secret appears, though
        # the YAML does not change again.
        secret = tmp_path / "zendesk-signing-secret"
        zendesk = {"signing_secret": {"file": str(secret)}, "groups": {1: "sales"}}
        route_settings.write([{"name": "sales-to-triage-1", "when": {"departments": ["sales"]},
                               "then": {"triage": True}}], reload_interval_s=0.1,
                             feedback={"zendesk": zendesk})  # fmt: skip
        await wait_for(
            lambda: route_metrics.RULES_RELOADS.labels("invalid")._value.get() > invalid + 1
        )
        assert [r.name for r in service.config.route.rules] == ["sales-to-triage"]
        secret.write_text("s3cret")
        await wait_for(
            lambda: [r.name for r in service.config.route.rules] == ["sales-to-triage-1"]
        )
        assert rejected("route") == 0
        # An error in another service's section is not route's to judge: new rules still apply.
        content = yaml.safe_load(CONFIG_FILE.read_text())
        content["route"] = {**content["route"], "reload_interval_s": 0.1, "rules": [
            {"name": "sales-to-triage-2", "when": {"departments": ["sales"]},
             "then": {"triage": True}}]}  # fmt: skip
        content["notify"]["subscriptionz"] = []
        settings.config_file.write_text(yaml.safe_dump(content))
        renamed = ["sales-to-triage-2"]
        await wait_for(lambda: [r.name for r in service.config.route.rules] == renamed, 10)

    by_id = {r.tweet.id: (t, r) for t, r in routed_records(records, prefix)}
    assert by_id[f"{prefix}-a"][0] == "switchboard.dept.sales"
    topic, routed = by_id[f"{prefix}-b"]
    assert topic == topics.TRIAGE and routed.route.matched_rules == ["sales-to-triage"]
    assert by_id[f"{prefix}-a"][1].route.rules_version != routed.route.rules_version


async def test_conversation_ownership_survives_a_restart(route_settings, producer, read, running):
    prefix = tag()
    conversation = f"{prefix}-conv"
    first = a_classified_tweet("customer_service", 0.9, "normal", id=f"{prefix}-1",
                               conversation_id=conversation)  # fmt: skip
    reply = a_classified_tweet("sales", 0.7, "high", id=f"{prefix}-2", conversation_id=conversation)

    async with running(RouteService(route_settings())):
        await send(producer, first)
        await read(WATCHED, lambda rs: len(routed_records(rs, prefix)) >= 1)
    async with running(RouteService(route_settings())):  # a new process: state from the topic
        await send(producer, reply)
        records = await read(WATCHED, lambda rs: len(routed_records(rs, prefix)) >= 2)
        records += await read([topics.ALERTS], lambda rs: bool(alerts_of(rs, conversation)), 20)

    routed = {r.tweet.id: r for _, r in routed_records(records, prefix)}
    second = routed[f"{prefix}-2"]
    assert second.route.topic == "switchboard.dept.customer_service"
    assert second.route.owner == "conversation"
    assert "rose from normal to high" in " ".join(second.route.reasons)
    [alert] = [a for a in alerts_of(records, conversation) if isinstance(a, Alert)]
    assert alert.kind == "escalation" and alert.tweet.id == f"{prefix}-2"


class _Handled:
    """What faust's stream makes current while an agent handles a record: the windowed tables
    read its time (faust's message timestamps are in seconds, Kafka's in milliseconds)."""

    def __init__(self, record: ConsumerRecord) -> None:
        self.message = dataclasses.replace(record, timestamp=record.timestamp / 1000)


@contextlib.contextmanager
def handling(record: ConsumerRecord) -> Iterator[None]:
    """Run the block as route's agent would run it for ``record``."""
    event = _Handled(record)
    token = faust.streams._current_event.set(weakref.ref(event))  # noqa: SLF001
    try:
        yield
    finally:
        faust.streams._current_event.reset(token)  # noqa: SLF001


async def test_a_burst_raises_exactly_one_spike_alert_even_read_again_after_a_crash(
    route_settings, producer, read, running
):
    """One alert for a burst. An observation read again after a crash (its offset not
    committed) is counted once; the one that raised the alert publishes it again, same id (its
    episode's mark may have reached the changelog and the alert not)."""
    prefix = tag()
    keyword = f"recall{next(_ids)}"
    spikes = {"window_minutes": 0.02, "baseline_windows": 3, "factor": 3, "min_count": 5,
              "dimensions": ["keyword"], "keywords": [keyword]}  # fmt: skip
    service = RouteService(route_settings(spikes=spikes))

    async with running(service):
        warm_up = a_classified_tweet("legal", 0.9, id=f"{prefix}-w", conversation_id=f"{prefix}-w")
        await send(producer, warm_up)
        await asyncio.sleep(4.0)  # one baseline period (3 windows of 1.2 s) of quiet
        burst = [
            a_classified_tweet(
                "legal",
                0.9,
                id=f"{prefix}-{i}",
                conversation_id=f"{prefix}-{i}",
                text=f"is the {keyword} real?",
            )  # fmt: skip
            for i in range(30)
        ]
        await send(producer, *burst)
        records = await read(WATCHED, lambda rs: len(routed_records(rs, prefix)) >= 31)
        key = f"keyword:{keyword}"
        await wait_for(lambda: service.spike_windows.episodes.get(key) is not None, 60)
        await asyncio.sleep(1.0)  # the alert, and any second one, out by now
        records += await read([topics.ALERTS], lambda rs: False, timeout_s=0.5)
        windows = service.spike_windows

        def window_of(record: ConsumerRecord) -> list:  # [count, last counted, raising offset]
            with handling(record):
                return windows.counts[key].current()

        observations = [r for r in await read([topics.ROUTE_SPIKES], lambda rs: False, 0.5)
                        if key_of(r) == key]  # fmt: skip
        [raising] = [r for r in observations if window_of(r)[2] == r.offset]

        def read_again(record: ConsumerRecord) -> tuple[list, list, list]:
            before = window_of(record)
            with handling(record):
                outputs = service.on_spike_observation(record)
            return before, window_of(record), outputs

        # A crash after the window's record and the episode's mark were kept, not the alert:
        counted = [read_again(raising)]
        # one that kept the window's record only, and route restarted (not warm yet):
        with handling(raising):
            del windows.episodes[key]
        windows.started = time.monotonic()
        counted.append(read_again(raising))
        marked = windows.episodes.get(key)
        # and one counted before the raising one:
        counted.append(read_again(dataclasses.replace(raising, offset=raising.offset - 1)))
        # and one that kept the episode's mark only (the window's record as it was before):
        raised_by = decode(SpikeObservation, raising.value)
        with handling(raising):
            total = windows.counts[key].current()[0]
            windows.counts[key] = [total - raised_by.count, raising.offset - 1, None]
        mark_only = read_again(raising)

    spikes_raised = [
        a for a in alerts_of(records, f"keyword:{keyword}") if isinstance(a, SpikeAlert)
    ]
    assert len(spikes_raised) == 1
    [spike] = spikes_raised
    assert spike.value == keyword and spike.count >= 5 and len(spike.samples) == 5
    # named by its episode's window (whole seconds here), not by when it was raised
    began = datetime.fromisoformat(spike.alert_id.removeprefix(f"spike:keyword:{keyword}:"))
    assert began <= spike.detected_at and began.timestamp() == int(began.timestamp())
    for _, _, repeated in counted[:2]:  # the alert again, same id
        assert [decode_alert(output.value).alert_id for output in repeated] == [spike.alert_id]
    assert marked == int(began.timestamp()) // windows.window_s  # the episode marked again
    assert counted[2][2] == []
    assert all(before == after for before, after, _ in counted)  # nothing counted twice
    assert [decode_alert(output.value).alert_id for output in mark_only[2]] == [spike.alert_id]
    assert mark_only[1] == [total, raising.offset, raising.offset]  # its record kept again


async def test_a_backlog_routed_at_once_is_counted_in_the_windows_its_tweets_came_in(
    route_settings, producer, read, running
):
    """Upstream was down for four windows: their tweets, four a window, reach route at once.
    Counted when routed, 16 in one window would look like a spike (five make one here); counted
    in the windows they came in, each holds four, and no alert goes out. One that came in
    longer ago than the baseline period is not counted: its window's baseline is gone."""
    prefix = tag()
    keyword = f"backlog{next(_ids)}"
    # late after 10 s: the backlog's oldest (3.5 s) has 6.5 s to be routed on a loaded machine
    spikes = {"window_minutes": 0.02, "baseline_windows": 10, "factor": 3, "min_count": 5,
              "dimensions": ["keyword"], "keywords": [keyword]}  # fmt: skip
    service = RouteService(route_settings(spikes=spikes))
    late_before = route_metrics.SPIKE_LATE._value.get()

    async with running(service):
        await asyncio.sleep(10.5)  # one baseline period (10 windows of 1 s) since route started
        now = datetime.now(UTC)
        backlog = []
        for age in (40.0, 3.5, 2.5, 1.5, 0.5):  # seconds: one a window, the first too late
            came_in = now - timedelta(seconds=age)
            for i in range(1 if age > 10 else 4):
                tweet = a_classified_tweet("legal", 0.9, id=f"{prefix}-{age}-{i}",
                                           conversation_id=f"{prefix}-{age}-{i}",
                                           text=f"the {keyword} again")  # fmt: skip
                trace = tweet.trace.model_copy(update={"ingested_at": came_in})
                backlog.append(tweet.model_copy(update={"trace": trace}))
        await send(producer, *backlog)
        key = f"keyword:{keyword}"

        def counted(records: list) -> list[SpikeObservation]:
            return [decode(SpikeObservation, r.value) for r in records if key_of(r) == key]

        mine = [r for r in await read(
            [topics.ROUTE_SPIKES], lambda rs: sum(o.count for o in counted(rs)) >= 16
        ) if key_of(r) == key]  # fmt: skip
        observed = counted(mine)
        windows = service.spike_windows

        def judged(record: ConsumerRecord) -> bool:  # its window counted it: it was judged
            with handling(record):
                window = windows.counts[key].current()
            return bool(window) and window[1] >= record.offset

        await wait_for(lambda: all(judged(r) for r in mine), 30)
        await wait_for(lambda: route_metrics.SPIKE_LATE._value.get() > late_before, 30)
        await asyncio.sleep(1.0)  # an alert it raised would be out by now
        records = await read([topics.ALERTS], lambda rs: False, timeout_s=0.5)

    assert sum(o.count for o in observed) == 16
    windows = {int(o.observed_at.timestamp()) for o in observed}  # windows of 1 s
    assert len(windows) == 4
    assert route_metrics.SPIKE_LATE._value.get() == late_before + 1
    assert [a for a in alerts_of(records, key) if isinstance(a, SpikeAlert)] == []


async def test_a_deleted_tweet_leaves_its_spike_samples_and_no_later_alert_shows_it(
    route_settings, producer, read, running
):
    """Its author deleted a tweet counted for a spike key: the conversation's owner withdraws
    it (by id, without its text) from the samples of its window, where the alert raised later
    would have shown it. It stays counted: the burst was real. The deletion read again after
    a crash (the conversation kept without the tweet) withdraws it again."""
    prefix, keyword = tag(), f"outage{next(_ids)}"
    # windows of 6 s, judged up to two minutes late: every tweet here is in one window
    spikes = {"window_minutes": 0.1, "baseline_windows": 20, "factor": 3, "min_count": 8,
              "dimensions": ["keyword"], "keywords": [keyword]}  # fmt: skip
    service = RouteService(route_settings(spikes=spikes))
    came_in = datetime.now(UTC)
    tweets = []
    for i in range(10):
        tweet = a_classified_tweet(
            "it_security", 0.9, id=f"{prefix}-{i}", conversation_id=f"{prefix}-{i}",
            text=f"another {keyword}?",
        )  # fmt: skip
        trace = tweet.trace.model_copy(update={"ingested_at": came_in})
        tweets.append(tweet.model_copy(update={"trace": trace}))
    key = f"keyword:{keyword}"
    deleted = ComplianceEvent(tweet_id=f"{prefix}-0", conversation_id=f"{prefix}-0",
                              event_at=datetime.now(UTC), source="webhook")  # fmt: skip

    def on_key(records: list) -> list[SpikeObservation | SpikeSampleWithdrawn]:
        return [decode_spike(r.value) for r in records if key_of(r) == key]

    def withdrawn(records: list) -> list[SpikeSampleWithdrawn]:
        return [e for e in on_key(records) if isinstance(e, SpikeSampleWithdrawn)]

    def counted(records: list) -> int:
        return sum(e.count for e in on_key(records) if isinstance(e, SpikeObservation))

    async with running(service):
        service.spike_windows.started -= 3600  # warm: a baseline period (of no tweets) behind it
        await send(producer, *tweets[:4])  # below the bar: no alert yet
        await read([topics.ROUTE_SPIKES], lambda rs: counted(rs) >= 4)  # their samples kept
        await producer.send_and_wait(
            topics.COMPLIANCE, encode(deleted), key=deleted.tweet_id.encode()
        )
        [withdrawal] = withdrawn(await read([topics.ROUTE_SPIKES], lambda rs: bool(withdrawn(rs))))
        await send(producer, *tweets[4:])
        records = await read(
            [topics.ALERTS], lambda rs: any(isinstance(a, SpikeAlert) for a in alerts_of(rs, key))
        )
        [due] = [r for r in await read([topics.ROUTE_DUE], lambda rs: False, timeout_s=0.5)
                 if key_of(r) == f"{prefix}-0"]  # fmt: skip
        with handling(due):  # read again after a crash: no await from the drain to the end
            service.spike_tally.drain()
            service.handle(due)
            again = [decode_spike(o.value) for o in service.spike_tally.drain()]

    assert withdrawal.tweet_id == f"{prefix}-0" and withdrawal.observed_at == came_in
    [spike] = [a for a in alerts_of(records, key) if isinstance(a, SpikeAlert)]
    assert spike.count >= 8  # the deleted tweet still counted
    shown = [sample.id for sample in spike.samples]
    assert f"{prefix}-0" not in shown
    assert set(shown[:3]) == {f"{prefix}-{i}" for i in (1, 2, 3)} and len(shown) == 5
    assert again == [withdrawal]


async def test_a_withdrawal_that_reaches_the_key_before_the_count_still_keeps_the_tweet_out(
    route_settings, producer, read, running
):
    """The count carrying a tweet was refused by the broker and sent again, after the tweet's
    deletion had withdrawn it from the window: the key's owner noted the withdrawal, so the
    late count does not sample the tweet, and the alert it raises does not show it."""
    prefix, keyword = tag(), f"recall{next(_ids)}"
    spikes = {"window_minutes": 0.1, "baseline_windows": 20, "factor": 3, "min_count": 8,
              "dimensions": ["keyword"], "keywords": [keyword]}  # fmt: skip
    service = RouteService(route_settings(spikes=spikes))
    came_in = datetime.now(UTC)
    key = f"keyword:{keyword}"
    tweets = [a_tweet(id=f"{prefix}-{i}", text=f"{keyword} again") for i in range(10)]
    withdrawal = SpikeSampleWithdrawn(dimension="keyword", value=keyword,
                                      tweet_id=tweets[0].id, observed_at=came_in)  # fmt: skip
    late = SpikeObservation(dimension="keyword", value=keyword, tweet=tweets[0], more=tweets[1:5],
                            count=10, observed_at=came_in)  # fmt: skip
    at_ms = int(came_in.timestamp() * 1000)

    async with running(service):
        service.spike_windows.started -= 3600  # warm: a baseline period (of no tweets) behind it
        for event in (withdrawal, late):
            await producer.send_and_wait(topics.ROUTE_SPIKES, encode(event), key=key.encode(),
                                         timestamp_ms=at_ms)  # fmt: skip
        records = await read(
            [topics.ALERTS], lambda rs: any(isinstance(a, SpikeAlert) for a in alerts_of(rs, key))
        )

    [spike] = [a for a in alerts_of(records, key) if isinstance(a, SpikeAlert)]
    shown = [sample.id for sample in spike.samples]
    assert tweets[0].id not in shown and shown[:4] == [t.id for t in tweets[1:5]]


async def test_a_tweet_read_again_after_a_crash_is_tallied_again_and_an_upstream_copy_not(
    route_settings, producer, read, running
):
    """Route records the conversation at once and publishes spike tallies a moment later: a
    crash in between loses the tally. The same record read again is tallied again; a copy
    published again upstream (at another offset) was tallied the first time, and is not."""
    prefix, keyword = tag(), f"boycott{next(_ids)}"
    spikes = {"dimensions": ["keyword"], "keywords": [keyword]}
    service = RouteService(route_settings(spikes=spikes))
    text, conversation = f"join the {keyword}", f"{prefix}-c"
    tweet = a_classified_tweet(
        "communications", 0.9, id=f"{prefix}-1", conversation_id=conversation, text=text
    )

    async with running(service):
        await send(producer, tweet)
        records = await read(WATCHED, lambda rs: bool(routed_records(rs, prefix)))
        [record] = [r for r in await read([topics.CLASSIFIED], lambda rs: False, 0.5)
                    if key_of(r) == conversation]  # fmt: skip

        def tallied(again: ConsumerRecord) -> list[tuple[str, int]]:
            # No await from the drain to the handling's end: the service's own drain cannot
            # take the tally in between.
            with handling(again):
                service.spike_tally.drain()
                outputs = service.handle(again)
                observations = [
                    decode(SpikeObservation, o.value) for o in service.spike_tally.drain()
                ]
            assert [decode(RoutedTweet, o.value).tweet.id for o in outputs[:1]] == [tweet.tweet.id]
            return [(f"{o.dimension}:{o.value}", o.count) for o in observations]

        read_again = tallied(record)
        upstream_copy = tallied(dataclasses.replace(record, offset=record.offset + 1_000_000))

    assert len(routed_records(records, prefix)) == 1
    assert read_again == [(f"keyword:{keyword}", 1)]
    assert upstream_copy == []


async def test_an_unanswered_critical_tweet_raises_an_sla_alert_and_a_reply_is_timed(
    route_settings, producer, read, running
):
    prefix = tag()
    # A minute's SLA, so the answered tweet's reply is read in time on any machine; the late
    # tweet is made 55 s old, so its breach comes 5 s after it is routed.
    sla = {"minutes": {"critical": 1, "high": 60, "normal": 600, "low": 6000},
           "check_interval_s": 0.2}  # fmt: skip
    responses = route_metrics.RESPONSES.labels("@SkylarkDeals", "it_security")._value.get()

    service = RouteService(route_settings(sla=sla))
    async with running(service):
        late = a_classified_tweet("it_security", 0.9, "critical", id=f"{prefix}-late",
                                  conversation_id=f"{prefix}-late")  # fmt: skip
        made = datetime.now(UTC) - timedelta(seconds=55)
        late = late.model_copy(update={
            "tweet": late.tweet.model_copy(update={"created_at": made}),
            "trace": late.trace.model_copy(update={"ingested_at": made}),
        })  # fmt: skip
        answered = a_classified_tweet("it_security", 0.9, "critical", id=f"{prefix}-ok",
                                      conversation_id=f"{prefix}-ok")  # fmt: skip
        reply = BrandTweet(
            handle="@SkylarkHelp",
            tweet=a_tweet(id=f"{prefix}-r", conversation_id=f"{prefix}-ok",
                          created_at=datetime.now(UTC),
                          author=Author(id="1500000000000000002", username="SkylarkHelp")),
            trace=Trace(ingested_at=datetime.now(UTC)),
        )  # fmt: skip
        await send(producer, late, answered)
        # routed (its conversation recorded), then answered: route's own state, not a read of
        # every topic from the start
        await wait_for(lambda: service._state(f"{prefix}-ok") is not None, 30)  # noqa: SLF001
        await producer.send_and_wait(topics.BRAND, encode(reply), key=f"{prefix}-ok".encode())
        records = await read(
            [topics.ALERTS],
            lambda rs: any(getattr(a, "kind", "") == "sla_breach" for a in alerts_of(rs, prefix)),
        )
        # The answered tweet's own minute has not passed: what keeps it from ever alerting is
        # that the reply left its conversation awaiting nothing.
        await wait_for(lambda: service._state(f"{prefix}-ok").awaiting is None, 30)  # noqa: SLF001
        await asyncio.sleep(1.0)  # further checks must not repeat the alert
        records = await read([topics.ALERTS], lambda rs: False, timeout_s=1.0)

    breaches = [a for a in alerts_of(records, prefix) if getattr(a, "kind", "") == "sla_breach"]
    assert [a.tweet.id for a in breaches] == [f"{prefix}-late"]  # once
    assert (
        route_metrics.RESPONSES.labels("@SkylarkDeals", "it_security")._value.get() == responses + 1
    )


async def test_an_sla_check_read_again_after_a_crash_publishes_its_alert_again(
    route_settings, producer, read, running
):
    """The breach mark reaches the table's changelog through faust's buffer, the alert through
    route's own producer: a crash between the two leaves the mark without the alert. The check
    that raised it, read again (its offset was not committed), publishes the alert again (same
    id); another check of the conversation publishes nothing."""
    prefix = tag()
    sla = {"minutes": {"critical": 0.02, "high": 60, "normal": 600, "low": 6000},
           "check_interval_s": 0.2}  # fmt: skip
    late = a_classified_tweet("it_security", 0.9, "critical", id=f"{prefix}-late",
                              conversation_id=f"{prefix}-late")  # fmt: skip
    service = RouteService(route_settings(sla=sla))

    async with running(service):
        await send(producer, late)
        records = await read(
            [topics.ALERTS],
            lambda rs: any(getattr(a, "kind", "") == "sla_breach" for a in alerts_of(rs, prefix)),
        )
        checks = [r for r in await read([topics.ROUTE_DUE], lambda rs: False, timeout_s=0.5)
                  if key_of(r) == f"{prefix}-late"]  # fmt: skip
        marked = service._state(f"{prefix}-late").awaiting  # noqa: SLF001
        [raising] = [r for r in checks if r.offset == marked.breach_offset]
        again = service.on_due(raising)
        later = service.on_due(dataclasses.replace(raising, offset=raising.offset + 1))

    [first] = [a for a in alerts_of(records, prefix) if getattr(a, "kind", "") == "sla_breach"]
    [repeated] = [decode(Alert, output.value) for output in again]
    assert repeated.alert_id == first.alert_id == f"sla_breach:{prefix}-late"
    assert later == []  # another check of an alerted conversation: nothing


async def test_a_reply_read_before_the_tweet_it_answers_leaves_no_sla_alert(
    route_settings, producer, read, running
):
    """Replies skip classify: behind a classify backlog, route reads the company's reply
    before the critical tweet it answers. That tweet is routed as any other, and its
    conversation raises no SLA alert; one left unanswered beside it does (what the test would
    see if the reply were lost), and so does another customer's tweet in the answered thread:
    the reply answered its addressee only."""
    prefix = tag()
    sla = {"minutes": {"critical": 0.05, "high": 60, "normal": 600, "low": 6000},
           "check_interval_s": 0.2}  # fmt: skip
    written = datetime.now(UTC)
    answered, unanswered = [
        a_classified_tweet("it_security", 0.9, "critical", id=f"{prefix}-{name}",
                           conversation_id=f"{prefix}-{name}", created_at=written)
        for name in ("answered", "unanswered")
    ]  # fmt: skip
    bystander = a_classified_tweet("it_security", 0.9, "critical", id=f"{prefix}-bystander",
                                   conversation_id=f"{prefix}-answered", created_at=written,
                                   author=Author(id="2", username="bo"))  # fmt: skip
    reply = BrandTweet(
        handle="@SkylarkHelp",
        tweet=a_tweet(id=f"{prefix}-r", conversation_id=f"{prefix}-answered",
                      created_at=written + timedelta(seconds=1),
                      in_reply_to_user_id=answered.tweet.author.id,
                      author=Author(id="1500000000000000002", username="SkylarkHelp")),
        trace=Trace(ingested_at=datetime.now(UTC)),
    )  # fmt: skip

    service = RouteService(route_settings(sla=sla))
    async with running(service):
        await producer.send_and_wait(topics.BRAND, encode(reply), key=f"{prefix}-answered".encode())
        # the reply handled first: route holds it as early before the tweet comes
        await wait_for(lambda: service.early_replies.get(f"{prefix}-answered"), 30)
        await send(producer, answered, unanswered, bystander)
        records = await read(
            [topics.ALERTS],
            lambda rs: any(getattr(a, "kind", "") == "sla_breach" for a in alerts_of(rs, prefix)),
        )
        await asyncio.sleep(1.0)  # the answered one is past its SLA too by now
        records = await read([topics.ALERTS], lambda rs: False, timeout_s=1.0)
        department = await read([topics.department_topic("it_security")], lambda rs: False,
                                timeout_s=1.0)  # fmt: skip

    breaches = [a for a in alerts_of(records, prefix) if getattr(a, "kind", "") == "sla_breach"]
    assert sorted(a.tweet.id for a in breaches) == [f"{prefix}-bystander", f"{prefix}-unanswered"]
    routed = {decode(RoutedTweet, r.value).tweet.id for r in department}
    assert {f"{prefix}-answered", f"{prefix}-unanswered", f"{prefix}-bystander"} <= routed


async def test_a_deleted_tweet_raises_no_sla_alert_and_is_forgotten(
    route_settings, producer, read, running
):
    """Its author deleted a critical tweet before anyone answered: no SLA alert carries what
    they took back, and the conversation no longer keeps its text; a reply in another
    conversation deleted (ingest names its conversation) is forgotten there too; a tweet whose
    deletion route read first (it skips classify) is dropped when it comes. An undeleted tweet
    beside them still alerts."""
    prefix = tag()
    sla = {"minutes": {"critical": 0.05, "high": 60, "normal": 600, "low": 6000},
           "alert_urgencies": ["critical", "high"], "check_interval_s": 0.2}  # fmt: skip
    # the deleted one's SLA is an hour (high): whenever its deletion is read, it is before its
    # breach, which it must then never have; the kept one's, critical, is past within seconds
    deleted = a_classified_tweet("it_security", 0.9, "high", id=f"{prefix}-deleted",
                                 conversation_id=f"{prefix}-deleted")  # fmt: skip
    kept, early = [
        a_classified_tweet("it_security", 0.9, "critical", id=f"{prefix}-{name}",
                           conversation_id=f"{prefix}-{name}")
        for name in ("kept", "early")
    ]  # fmt: skip
    follow_up = a_classified_tweet("it_security", 0.9, "normal", id=f"{prefix}-f",
                                   conversation_id=f"{prefix}-kept")  # fmt: skip
    # read after their deletions: a reply in a conversation route holds, and an edit of the
    # deleted post (its other version, still behind classify)
    late = a_classified_tweet("it_security", 0.9, "critical", id=f"{prefix}-late",
                              conversation_id=f"{prefix}-kept")  # fmt: skip
    edited = a_classified_tweet("it_security", 0.9, "critical", id=f"{prefix}-deleted-2",
                                conversation_id=f"{prefix}-deleted",
                                edit_of=f"{prefix}-deleted")  # fmt: skip

    def deletion(tweet_id: str, conversation_id: str | None) -> ComplianceEvent:
        return ComplianceEvent(tweet_id=tweet_id, conversation_id=conversation_id,
                               event_at=datetime.now(UTC), source="webhook")  # fmt: skip

    async def delete(*events: ComplianceEvent) -> None:
        for event in events:
            await producer.send_and_wait(
                topics.COMPLIANCE, encode(event), key=event.tweet_id.encode()
            )

    def state(name: str) -> ConversationState | None:
        return service._state(f"{prefix}-{name}")  # noqa: SLF001

    service = RouteService(route_settings(sla=sla))
    async with running(service):
        await delete(deletion(f"{prefix}-early", f"{prefix}-early"))
        await wait_for(
            lambda: service.early_deletions.deleted(f"{prefix}-early", f"{prefix}-early")
        )
        await send(producer, deleted, kept, follow_up, early)
        await wait_for(lambda: state("kept") is not None and f"{prefix}-f" in state("kept").recent)
        shown = {line["tweet_id"] for line in service.ops.recent}
        await delete(
            deletion(f"{prefix}-deleted", None),
            deletion(f"{prefix}-f", f"{prefix}-kept"),
            deletion(f"{prefix}-late", f"{prefix}-kept"),
        )
        await wait_for(lambda: service.early_deletions.deleted(f"{prefix}-kept", f"{prefix}-late"))
        await send(producer, late, edited)
        records = await read(
            [topics.ALERTS],
            lambda rs: any(getattr(a, "kind", "") == "sla_breach" for a in alerts_of(rs, prefix)),
        )
        await wait_for(lambda: state("deleted").awaiting is None)  # so it can never breach
        records = await read([topics.ALERTS, topics.DROPPED], lambda rs: False, timeout_s=1.0)
        gone, other = state("deleted"), state("kept")
        shown_after = {line["tweet_id"] for line in service.ops.recent}

    breaches = [a for a in alerts_of(records, prefix) if getattr(a, "kind", "") == "sla_breach"]
    assert [a.tweet.id for a in breaches] == [f"{prefix}-kept"]
    assert gone is not None and gone.awaiting is None and gone.recent == {}
    assert list(other.recent) == [f"{prefix}-kept"]
    # the ops page showed the deleted tweets' text; it no longer does
    assert {f"{prefix}-f", f"{prefix}-deleted"} <= shown
    assert shown_after == shown - {f"{prefix}-f", f"{prefix}-deleted"}
    dropped = {e.tweet.id: e for r, e in readable(records, RoutedTweet)
               if r.topic == topics.DROPPED and e.tweet.id.startswith(prefix)}  # fmt: skip
    assert set(dropped) == {f"{prefix}-early", f"{prefix}-late", f"{prefix}-deleted-2"}
    for event in dropped.values():  # counted, without what its author took back
        assert "deleted by its author before route read it" in event.route.reasons
        assert event.tweet.text == ""
    alerted = {a.tweet.id for a in alerts_of(records, prefix) if isinstance(a, Alert)}
    assert alerted.isdisjoint(dropped)


async def test_a_conversation_idle_past_its_ttl_is_forgotten_and_tombstoned(
    route_settings, producer, read, running
):
    prefix = tag()
    tweet = a_classified_tweet("legal", 0.9, "high", id=f"{prefix}-1", conversation_id=prefix)
    settings = route_settings(conversations={"ttl_hours": 1 / 3600},  # one second
                              sla={"check_interval_s": 0.2, "alert_urgencies": []})  # fmt: skip
    async with running(RouteService(settings)):
        await send(producer, tweet)
        records = await read(
            [topics.ROUTE_CONVERSATIONS],
            lambda rs: any(key_of(r) == prefix and r.value is None for r in rs),
        )
    changes = [r.value is None for r in records if key_of(r) == prefix]
    assert changes[0] is False and changes[-1] is True  # remembered, then tombstoned
