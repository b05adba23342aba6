"""AckAfterPublish's ordering: an input is acknowledged to faust only after the broker
acknowledged its outputs, and the outputs deferred for it (route's spike tally). The stream and
producer are stand-ins: this is the ordering logic alone (the real thing runs in
tests/integration/test_stream_state.py and the e2e tests). And a timer's publish when the
broker cannot take it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError, RequestTimedOutError, TopicAuthorizationFailedError

from switchboard.shared import metrics as shared_metrics
from switchboard.shared.kafka import Output
from switchboard.shared.streams import (
    AckAfterPublish,
    ChangelogWrites,
    publish_from_timer,
    the_stages_fault,
)


@dataclass
class _Event:
    message: Any


class _Stream:
    def __init__(self, topics: list[str]) -> None:
        self._events = [
            _Event(SimpleNamespace(topic=t, value=t.encode(), key=None, partition=0, offset=n))
            for n, t in enumerate(topics)
        ]
        self.acked: list[str] = []
        self.done = asyncio.Event()

    def noack(self) -> _Stream:
        return self

    async def events(self) -> Any:
        for event in self._events:
            yield event
        await self.done.wait()  # a stream stays open until the agent is stopped

    async def ack(self, event: _Event) -> None:
        self.acked.append(event.message.topic)


class _Producer:
    """Each send returns a future the test resolves, as the broker's acknowledgement."""

    def __init__(self) -> None:
        self.pending: dict[str, asyncio.Future[None]] = {}

    async def send(self, topic: str, key: Any, value: Any, *_: Any) -> asyncio.Future[None]:
        self.pending[topic] = asyncio.get_running_loop().create_future()
        return self.pending[topic]


def an_app(producer: _Producer) -> Any:
    return SimpleNamespace(producer=producer, changelog_writes=ChangelogWrites())


async def _until(condition: Any) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


@contextlib.asynccontextmanager
async def running(acks: AckAfterPublish, stream: _Stream) -> AsyncIterator[None]:
    """The agent over ``stream`` while the block runs, stopped after it."""
    agent = asyncio.create_task(acks.agent(stream))  # type: ignore[arg-type]
    try:
        yield
    finally:
        agent.cancel()
        await asyncio.gather(agent, return_exceptions=True)


async def test_inputs_wait_for_the_outputs_deferred_for_them():
    producer = _Producer()
    tally: list[str] = []

    def handle(message: Any) -> list[Output]:
        tally.append(message.topic)
        return [Output(f"out-{message.topic}", b"x")]

    def drain() -> list[Output]:
        outputs = [Output("spikes", b",".join(t.encode() for t in tally))] if tally else []
        tally.clear()
        return outputs

    acks = AckAfterPublish(an_app(producer), "test", handle, deferred=drain, hold_s=0.05)
    stream = _Stream(["a", "b"])
    async with running(acks, stream):
        await _until(lambda: "spikes" in producer.pending)
        producer.pending["out-a"].set_result(None)
        producer.pending["out-b"].set_result(None)
        await asyncio.sleep(0.2)
        assert stream.acked == []  # their own outputs are in, the deferred ones are not
        producer.pending["spikes"].set_result(None)
        await _until(lambda: stream.acked == ["a", "b"])


async def test_an_input_waits_for_the_table_writes_made_while_it_was_handled():
    producer, write = _Producer(), asyncio.get_running_loop().create_future()
    app = an_app(producer)

    def handle(message: Any) -> list[Output]:
        if message.topic == "a":
            app.changelog_writes.add(write)  # what a faust table does as the handler writes
        return [Output(f"out-{message.topic}", b"x")]

    stream = _Stream(["a", "b"])
    async with running(AckAfterPublish(app, "test", handle), stream):
        await _until(lambda: {"out-a", "out-b"} <= set(producer.pending))
        producer.pending["out-a"].set_result(None)
        producer.pending["out-b"].set_result(None)
        await asyncio.sleep(0.2)
        assert stream.acked == []  # outputs in, the table's write not yet
        write.set_result(None)
        await _until(lambda: stream.acked == ["a", "b"])


async def test_a_table_write_the_broker_refused_acknowledges_nothing_more():
    producer, write = _Producer(), asyncio.get_running_loop().create_future()
    app = an_app(producer)
    app.changelog_writes.add(write)
    crashed: list[BaseException] = []
    acks = AckAfterPublish(app, "test", lambda m: [Output(f"out-{m.topic}", b"x")])

    async def crash(error: BaseException) -> None:
        crashed.append(error)
        acks._fault = error  # noqa: SLF001 - what the real one records before crashing the app

    acks._stage_failed = crash  # type: ignore[method-assign]  # the app's crash, observed
    stream = _Stream(["a"])
    async with running(acks, stream):
        await _until(lambda: "out-a" in producer.pending)
        producer.pending["out-a"].set_result(None)
        write.set_exception(KafkaTimeoutError())
        await _until(lambda: crashed)
        await asyncio.sleep(0.1)
    assert stream.acked == [] and isinstance(crashed[0], KafkaTimeoutError)


async def test_without_deferred_outputs_each_input_waits_for_its_own():
    producer = _Producer()
    acks = AckAfterPublish(an_app(producer), "test", lambda m: [Output(f"out-{m.topic}", b"x")])
    stream = _Stream(["a", "b"])
    async with running(acks, stream):
        await _until(lambda: "out-b" in producer.pending)
        producer.pending["out-a"].set_result(None)
        await _until(lambda: stream.acked == ["a"])
        await asyncio.sleep(0.1)
        assert stream.acked == ["a"]
        producer.pending["out-b"].set_result(None)
        await _until(lambda: stream.acked == ["a", "b"])


async def test_handlers_at_work_together_send_when_done_and_are_acknowledged_in_order():
    producer = _Producer()
    release = {"a": asyncio.Event(), "b": asyncio.Event()}

    async def deliver(topic: str) -> list[Output]:
        await release[topic].wait()  # a vendor's round trip
        return [Output(f"out-{topic}", b"x")]

    acks = AckAfterPublish(an_app(producer), "test", lambda m: deliver(m.topic))
    stream = _Stream(["a", "b"])
    async with running(acks, stream):
        release["b"].set()  # the later input is done first: its output goes out at once
        await _until(lambda: "out-b" in producer.pending)
        producer.pending["out-b"].set_result(None)
        await asyncio.sleep(0.1)
        assert stream.acked == []  # but it is acknowledged only after the input before it
        release["a"].set()
        await _until(lambda: "out-a" in producer.pending)
        producer.pending["out-a"].set_result(None)
        await _until(lambda: stream.acked == ["a", "b"])


class _AwaySender:
    """A broker away longer than the producer waits: every send gives up with a timeout."""

    def __init__(self, away: bool) -> None:
        self.away, self.sent = away, []

    async def send(
        self, topic: str, value: Any, key: Any = None, timestamp_ms: int | None = None
    ) -> asyncio.Future[None]:
        if self.away:
            raise KafkaTimeoutError("no broker")
        self.sent.append(topic)
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def test_a_timer_whose_outputs_the_broker_cannot_take_says_so_and_does_not_raise():
    """A timer that raises stops faust's worker: a sweep during a long outage must not."""
    failed = shared_metrics.TIMER_FAILURES.labels("route", "route-sweep")
    before = failed._value.get()
    outputs = [Output("switchboard.route.due", b"{}", b"c1")]

    assert await publish_from_timer(_AwaySender(True), outputs, "route", "route-sweep") is False
    assert failed._value.get() == before + 1
    sender = _AwaySender(False)
    assert await publish_from_timer(sender, outputs, "route", "route-sweep") is True
    assert sender.sent == ["switchboard.route.due"] and failed._value.get() == before + 1


class _App(SimpleNamespace):
    """faust's app as AckAfterPublish uses it: its producer (every send recorded), and crash."""

    def __init__(self, producer: _Producer) -> None:
        super().__init__(producer=producer, crashed_by=[], sent=[])
        send = producer.send

        async def recorded(topic: str, *args: Any) -> asyncio.Future[None]:
            self.sent.append(topic)
            return await send(topic, *args)

        producer.send = recorded  # type: ignore[method-assign]

    async def crash(self, reason: BaseException) -> None:
        self.crashed_by.append(reason)


async def test_a_failure_of_the_stage_crashes_the_app_and_dead_letters_nothing():
    """The disk or Kafka failing under a handler is no record's fault: no dead letter, the
    input never acknowledged (read again after the restart), the app crashed so the service
    stops; a record's own error is dead-lettered as before."""
    producer = _Producer()

    def handle(message: Any) -> list[Output]:
        if message.topic == "bad":
            raise ValueError("a field the handler did not expect")
        raise OSError(28, "No space left on device")

    app = _App(producer)
    acks = AckAfterPublish(app, "test", handle)  # type: ignore[arg-type]
    stream = _Stream(["bad", "disk", "after"])
    agent = asyncio.create_task(acks.agent(stream))  # type: ignore[arg-type]
    await _until(lambda: bool(app.crashed_by))
    await asyncio.sleep(0.2)
    # parked, not raised: faust's supervisor would restart a raising agent at once, on the
    # same stream, and it would handle (and acknowledge) "after"
    assert not agent.done()
    agent.cancel()
    await asyncio.gather(agent, return_exceptions=True)
    assert [type(e) for e in app.crashed_by] == [OSError]
    assert app.sent == ["switchboard.deadletter"]  # the bad record's alone, once
    assert stream.acked == []  # neither acknowledged: the dead letter's ack is the test's


def test_the_stages_faults_are_told_from_a_records():
    # rocksdict raises a bare Exception with RocksDB's status
    assert the_stages_fault(Exception("IO error: No space left on device: While appending"))
    assert the_stages_fault(OSError(28, "No space left on device"))
    assert the_stages_fault(KafkaTimeoutError())
    assert not the_stages_fault(Exception("a field the handler did not expect"))
    assert not the_stages_fault(ValueError("IO error in the text"))  # a record's, by its type


async def test_a_failure_of_the_stage_in_a_handler_at_work_crashes_the_app_unacknowledged():
    producer = _Producer()

    async def deliver(topic: str) -> list[Output]:
        raise KafkaTimeoutError("the table's changelog cannot be written")

    app = _App(producer)
    acks = AckAfterPublish(app, "test", lambda m: deliver(m.topic))  # type: ignore[arg-type]
    stream = _Stream(["a", "b"])
    async with running(acks, stream):
        await _until(lambda: bool(app.crashed_by))
        await asyncio.sleep(0.1)
        assert stream.acked == [] and app.sent == []  # nothing dead-lettered or acknowledged
    assert [type(e) for e in app.crashed_by] == [KafkaTimeoutError]


class _RefusingProducer(_Producer):
    """The broker refuses the first ``refusals`` sends with ``error``, then takes them."""

    def __init__(self, error: Exception, refusals: int) -> None:
        super().__init__()
        self.error, self.refusals, self.sends = error, refusals, 0

    async def send(self, topic: str, key: Any, value: Any, *_: Any) -> asyncio.Future[None]:
        self.sends += 1
        future = asyncio.get_running_loop().create_future()
        if self.sends <= self.refusals:
            future.set_exception(self.error)
        else:
            future.set_result(None)
        return future


@pytest.mark.parametrize(
    ("error", "refusals"),
    [(TopicAuthorizationFailedError(), 1_000), (RequestTimedOutError(), 2)],
    ids=["not-authorized", "timed-out"],
)
async def test_an_output_refused_for_good_stops_the_stage_and_a_passing_refusal_is_retried(
    error, refusals
):
    """Not authorized for the topic: tried again forever, it held every input behind it while
    the service said it was ready. A request timed out is tried again until taken."""
    producer = _RefusingProducer(error, refusals)
    acks = AckAfterPublish(an_app(producer), "test", lambda m: [Output(f"out-{m.topic}", b"x")])
    crashed: list[BaseException] = []

    async def crash(failure: BaseException) -> None:
        crashed.append(failure)
        acks._fault = failure  # noqa: SLF001 - what the real one records before crashing

    acks._stage_failed = crash  # type: ignore[method-assign]  # the app's crash, observed
    stream = _Stream(["a"])
    async with running(acks, stream):
        await _until(lambda: crashed or stream.acked)
        await asyncio.sleep(0.1)
    if refusals > 2:
        assert [type(c) for c in crashed] == [TopicAuthorizationFailedError]
        assert stream.acked == [] and producer.sends == 2  # sent, tried once more: refused
    else:
        assert crashed == [] and stream.acked == ["a"] and producer.sends == 3
