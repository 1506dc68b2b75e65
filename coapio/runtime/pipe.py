"""The Pipe: the meeting point between one request and every response it gets.

A Pipe holds the request, a bounded memory channel of :class:`PipeEvent` (response, exception, is_last) and
the cancel scope of whoever produces those events. Loss of interest is structural: when the consumer
closes its side (leaving ``async with``, or being cancelled), :attr:`Pipe.producer_scope` is cancelled, so
a handler producing responses stops where it is and runs its ``finally`` blocks, and whatever registered
the Pipe sees ``interested`` turn False and does its wire actions.

The channel never blocks the producer: a plain request's Pipe has room for its one final event; an
observation's keeps the newest notifications (``newest_wins``), dropping the oldest unread one, so a slow
consumer costs neither memory nor back-pressure on the network.
"""

from __future__ import annotations

from types import TracebackType

import anyio
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..protocol.message import Message

__all__ = ["Pipe", "PipeEvent"]


@attrs.frozen(slots=True)
class PipeEvent:
    """One thing that happened to a request: a response, or an exception (always the last event)."""

    message: Message | None = None
    exception: BaseException | None = None
    is_last: bool = True


class Pipe:
    """One request and the channel of its responses; see the module docstring.

    Producers call :meth:`add_response` and :meth:`add_exception` (never blocking, safe to call after the
    consumer left); consumers iterate the Pipe, or await :meth:`response` for a single final answer.
    """

    __slots__ = ("_closed", "_dropped", "_finished", "_producer_scope", "_receive", "_send", "newest_wins",
                 "request")

    def __init__(self, request: Message, *, buffer: int = 1, newest_wins: bool = False):
        self.request = request
        self.newest_wins = newest_wins
        self._producer_scope: anyio.CancelScope | None = None  # made when a producer asks for it
        self._closed = False
        self._send: MemoryObjectSendStream[PipeEvent]
        self._receive: MemoryObjectReceiveStream[PipeEvent]
        # One slot more than asked, so that a final event always fits behind a full buffer.
        self._send, self._receive = anyio.create_memory_object_stream[PipeEvent](buffer + 1)
        self._dropped = 0
        self._finished = False  # a final event was sent, or the consumer closed

    # --- producer side ---------------------------------------------------------------------------

    @property
    def producer_scope(self) -> anyio.CancelScope:
        """The scope a producer runs in; cancelled when the consumer loses interest.

        Made on first use: most pipes (a client's plain requests) have no producer task, and a cancel
        scope costs more than the rest of the pipe.
        """
        scope = self._producer_scope
        if scope is None:
            scope = self._producer_scope = anyio.CancelScope()
            if self._closed:
                scope.cancel()
        return scope

    @property
    def interested(self) -> bool:
        """False once the consumer has closed its side or the producer has finished."""
        return not self._finished

    @property
    def dropped(self) -> int:
        """How many non-final events a full ``newest_wins`` buffer has discarded."""
        return self._dropped

    def add_response(self, message: Message, is_last: bool = True) -> None:
        self._put(PipeEvent(message, None, is_last))

    def add_exception(self, exception: BaseException) -> None:
        self._put(PipeEvent(None, exception, True))

    def _put(self, event: PipeEvent) -> None:
        if self._finished:
            return
        send = self._send
        stats = send.statistics()
        if not event.is_last and stats.current_buffer_used >= stats.max_buffer_size - 1:
            if not self.newest_wins:
                raise anyio.WouldBlock("the consumer has not read the previous response yet")
            # Make room by discarding the oldest unread event (never a final one: that closes the pipe).
            try:
                self._receive.receive_nowait()
                self._dropped += 1
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                pass
        try:
            send.send_nowait(event)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return
        if event.is_last:
            self._finished = True
            send.close()

    # --- consumer side ---------------------------------------------------------------------------

    def close(self) -> None:
        """Lose interest: close the channel and cancel the producer's scope. Idempotent."""
        self._finished = True
        self._closed = True
        if self._producer_scope is not None:
            self._producer_scope.cancel()
        self._receive.close()
        self._send.close()

    async def __aenter__(self) -> Pipe:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __aiter__(self) -> Pipe:
        return self

    async def __anext__(self) -> PipeEvent:
        """The next event; stops after the final one.

        Cancellation: a cancelled wait loses no event (it stays in the channel), but the caller usually
        leaves and so closes the Pipe.
        """
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def response(self) -> Message:
        """Wait for the final response and return it, or raise the exception that ended the request."""
        async for event in self:
            if event.exception is not None:
                raise event.exception
            if event.is_last:
                assert event.message is not None
                return event.message
        raise anyio.EndOfStream("the pipe closed without a final response")
