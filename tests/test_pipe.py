"""The Pipe: bounded channel semantics, loss of interest cancelling the producer, exceptions as final."""

from __future__ import annotations

import anyio
import pytest
import trio
import trio.testing

from coapio import Code, Message, Pipe


def note(n: int) -> Message:
    return Message(code=Code.CONTENT, payload=b"%d" % n)


async def test_final_response_is_returned() -> None:
    pipe = Pipe(Message(code=Code.GET))
    pipe.add_response(note(1))
    assert (await pipe.response()).payload == b"1"
    assert not pipe.interested


async def test_exception_is_the_final_event() -> None:
    pipe = Pipe(Message(code=Code.GET))
    pipe.add_exception(KeyError("x"))
    pipe.add_response(note(2))  # after the end: ignored, never raises
    with pytest.raises(KeyError):
        await pipe.response()


async def test_newest_wins_keeps_the_latest_notifications_and_counts_the_dropped() -> None:
    pipe = Pipe(Message(code=Code.GET), buffer=2, newest_wins=True)
    for n in range(10):
        pipe.add_response(note(n), is_last=False)
    pipe.add_response(note(99))
    payloads = [event.message.payload async for event in pipe if event.message is not None]
    assert payloads == [b"8", b"9", b"99"]
    assert pipe.dropped == 8


async def test_a_plain_pipe_refuses_a_second_unread_notification() -> None:
    pipe = Pipe(Message(code=Code.GET), buffer=1)
    pipe.add_response(note(1), is_last=False)
    with pytest.raises(anyio.WouldBlock):
        pipe.add_response(note(2), is_last=False)
    pipe.add_response(note(3))  # a final event always fits
    payloads = [event.message.payload async for event in pipe if event.message is not None]
    assert payloads == [b"1", b"3"]


async def test_closing_the_consumer_side_cancels_the_producer_scope() -> None:
    pipe = Pipe(Message(code=Code.GET))
    cleaned_up = trio.Event()

    async def producer() -> None:
        with pipe.producer_scope:
            try:
                await trio.sleep_forever()
            finally:
                cleaned_up.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        await trio.testing.wait_all_tasks_blocked()
        async with pipe:
            pass  # the consumer leaves without reading: loss of interest
    assert cleaned_up.is_set()
    assert not pipe.interested
    pipe.add_response(note(1))  # a producer that still answers is ignored, not an error


async def test_cancelled_consumer_loses_no_event() -> None:
    pipe = Pipe(Message(code=Code.GET), buffer=4)
    with trio.move_on_after(0.01):
        await pipe.__anext__()
    pipe.add_response(note(5))
    assert (await pipe.response()).payload == b"5"
