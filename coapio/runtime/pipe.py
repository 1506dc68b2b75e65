"""Pipes: the meeting point between one request and every response it gets, on both sides.

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

from collections.abc import Callable
from types import TracebackType

import anyio
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..error import RenderableError
from ..protocol.codes import Code
from ..protocol.message import Message
from .resource import error_response

__all__ = ["Pipe", "PipeEvent", "ServerPipe"]


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


class ServerPipe:
    """The producer side of a request a server received: what ``render_to_pipe`` gets.

    A resource calls :meth:`add_response` any number of times; each response goes out at once (no queue
    and no task in between). The first one answers the request. If the request registered an observation
    (Observe: 0) and that response is not the last, the client becomes an observer and every later
    response is a notification, numbered by the runtime (RFC 7641 §4.4); ``is_last=True`` ends it.

    Loss of interest — a Reset or a deregistration from the client, an unacknowledged CON notification, an
    ICMP error, the client reusing the token, the Context's exit — cancels :attr:`producer_scope`, in which
    the runtime runs the producer, so its ``finally`` blocks run; :attr:`interested` turns False.
    """

    __slots__ = ("_finished", "_scope", "_sink", "observing", "request", "responded")

    def __init__(self, request: Message, sink: Callable[[ServerPipe, Message, bool], None]):
        self.request = request
        self._sink = sink
        self._scope: anyio.CancelScope | None = None
        self._finished = False
        #: A response went out (the request is answered; later ones are notifications or refused).
        self.responded = False
        #: The client is registered as an observer of this pipe's responses.
        self.observing = False

    @property
    def producer_scope(self) -> anyio.CancelScope:
        """The scope the producer runs in; cancelled on loss of interest (made on first use)."""
        scope = self._scope
        if scope is None:
            scope = self._scope = anyio.CancelScope()
            if self._finished:
                scope.cancel()
        return scope

    @property
    def interested(self) -> bool:
        """False once the client lost interest or the final response went out."""
        return not self._finished

    def add_response(self, message: Message, is_last: bool = True) -> None:
        """Send ``message`` as the (next) response; ignored once the pipe is finished.

        Its code defaults to the method's success code. With ``is_last=False`` on an Observe registration
        the client becomes an observer; without a registration there can be no second response, so the
        pipe finishes (and the producer is cancelled) after the first.
        """
        if not self._finished:
            self._sink(self, message, is_last)

    def add_exception(self, exception: BaseException) -> None:
        """End the pipe with the response an exception maps to: a library error's code, else 5.00."""
        if not self._finished:
            if isinstance(exception, RenderableError):
                self._sink(self, error_response(exception), True)
            else:
                self._sink(self, Message(code=Code.INTERNAL_SERVER_ERROR), True)

    def finish(self) -> None:
        """The final response went out: nothing more will be sent (the producer may still clean up)."""
        self._finished = True

    def close(self) -> None:
        """Loss of interest: finish and cancel the producer's scope. Idempotent."""
        self._finished = True
        if self._scope is not None:
            self._scope.cancel()
