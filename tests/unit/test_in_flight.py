"""InFlight: sends without waiting per message, bounded, and never silent about a failure."""

from __future__ import annotations

import asyncio

import pytest

from switchboard.shared.kafka import InFlight, KafkaPublishError, Output


class HeldAcks:
    """A producer whose acknowledgements the test settles by hand."""

    def __init__(self) -> None:
        self.acks: list[asyncio.Future] = []

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, timestamp_ms: int | None = None
    ) -> asyncio.Future:
        self.acks.append(asyncio.get_running_loop().create_future())
        return self.acks[-1]


def an_output(n: int) -> Output:
    return Output(topic="switchboard.tweets.raw", value=f"{n}".encode(), key=None)


async def test_at_most_window_messages_are_unacknowledged():
    producer = HeldAcks()
    in_flight = InFlight(producer, "ingest", window=2)  # type: ignore[arg-type]
    await in_flight.send(an_output(1))
    await in_flight.send(an_output(2))
    third = asyncio.create_task(in_flight.send(an_output(3)))
    await asyncio.sleep(0.01)
    assert not third.done() and len(producer.acks) == 2  # backpressure: the window is full
    producer.acks[0].set_result(None)
    await asyncio.wait_for(third, 1)
    assert len(producer.acks) == 3


async def test_flush_waits_for_every_ack():
    producer = HeldAcks()
    in_flight = InFlight(producer, "ingest")  # type: ignore[arg-type]
    for n in range(3):
        await in_flight.send(an_output(n))
    flushing = asyncio.create_task(in_flight.flush())
    await asyncio.sleep(0.01)
    assert not flushing.done()
    for ack in producer.acks:
        ack.set_result(None)
    await asyncio.wait_for(flushing, 1)


async def test_a_failed_send_is_reported_and_stops_the_next_one():
    producer = HeldAcks()
    in_flight = InFlight(producer, "ingest")  # type: ignore[arg-type]
    failed: list[BaseException] = []
    await in_flight.send(an_output(1), on_error=failed.append)
    producer.acks[0].set_exception(TimeoutError("no ack"))
    await asyncio.sleep(0)
    assert isinstance(failed[0], TimeoutError)
    with pytest.raises(KafkaPublishError):
        await in_flight.send(an_output(2))
    with pytest.raises(KafkaPublishError):
        await in_flight.flush()


async def test_a_caller_that_awaits_its_ack_sees_the_failure_itself():
    producer = HeldAcks()
    in_flight = InFlight(producer, "ingest")  # type: ignore[arg-type]
    ack = await in_flight.send(an_output(1), sticky=False)
    producer.acks[0].set_exception(TimeoutError("no ack"))
    with pytest.raises(TimeoutError):
        await ack
    await in_flight.send(an_output(2))  # the service goes on
    producer.acks[1].set_result(None)
    await in_flight.flush()
