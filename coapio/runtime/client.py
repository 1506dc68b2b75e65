"""The client request path: block-wise → the token manager (OSCORE, Echo) → the transport.

Every request takes this one path: :meth:`RequestPath.request` runs the block-wise layer (RFC 7959: the
sans-IO :class:`~coapio.protocol.blockwise.Block1Sender` and ``Block2Assembler`` decide each step), each
step goes through :meth:`RequestPath.exchange` to :meth:`~coapio.runtime.tokens.TokenManager.request`,
the one place a request leaves: it protects the request with OSCORE when the Context's credentials name a
security context for its URI (so every retry and re-registration is protected anew) and does the Echo
retry on the plaintext. Streams of responses (an observation; later, multicast) are
:class:`ResponseStream` objects on the same path.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel

from ..protocol.blockwise import Block1Sender, Block2Assembler, bert_payload_size
from ..protocol.codes import Code
from ..protocol.message import Message
from ..protocol.observe import OBSERVE_REGISTER
from ..protocol.options import BlockValue
from ..protocol.tuning import TransportTuning
from ..transports.base import Transport
from .pipe import Pipe
from .tokens import TokenManager

if TYPE_CHECKING:
    from ..protocol.oscore import SecurityContext

__all__ = ["Observation", "RequestPath", "ResponseStream"]

Progress = Callable[[int, int | None], None]


class RequestPath:
    """The layers between the Context's request methods and a transport; one per Context."""

    def __init__(self, tokens: TokenManager, tuning: TransportTuning):
        self._tokens = tokens
        self.tuning = tuning

    async def request(self, transport: Transport, message: Message, tuning: TransportTuning | None,
                      progress: Progress | None = None, security: SecurityContext | None = None) -> Message:
        """Block-wise: send ``message`` (ours to change) and return its whole final response.

        Cancellation ends the transfer where it is: the block in flight is released (no retransmission,
        its token freed) and no further block is sent.

        BERT (RFC 8323 §6), when the transport has it for the request's peer: a body that fits in one
        message goes without Block1, a larger one in SZX 7 blocks of several KiB.

        ``security`` protects every step with OSCORE (inner block-wise, RFC 8613 §4.1.3.4.1: the blocks
        are of the plaintext, and each is protected on its own); BERT is not used then.
        """
        settings = tuning or self.tuning
        size = len(message.payload)
        bert = None
        block1 = size > 1 << (settings.block_szx + 4)
        if block1:
            bert = None if security is not None else _bert(transport, message, settings)
            block1 = bert is None or size > bert_payload_size(message, bert)
        if block1:
            sender = Block1Sender(message, szx=settings.block_szx, request_tag=os.urandom(4), bert=bert)
            total = len(message.payload)
            step: Message | None = sender.first_request()
            while step is not None:
                reply = await self.exchange(transport, step, tuning, security)
                if progress is not None:
                    block = step.opt.block1
                    progress(total if block is None else min(total, block.start + len(step.payload)), total)
                step = sender.feed(reply)
            response = sender.final_response
            assert response is not None
            if sender.needs_block2:
                return await self.fetch_blocks(transport, sender.continuation_request(), response, tuning,
                                               progress, security)
            return response
        asked = message.opt.block2
        if asked is None and settings.block_szx < 6 and message.code in (Code.GET, Code.FETCH):
            # Early negotiation (RFC 7959 §2.4): a client that prefers small blocks says so up front.
            message.opt.block2 = asked = BlockValue(0, False, settings.block_szx)
        response = await self.exchange(transport, message, tuning, security)
        block2 = response.opt.block2
        if block2 is not None and block2.more and (asked is None or asked.num == 0):
            # A request for block 0 only sets the preferred size (early negotiation, RFC 7959 §2.4);
            # one for a later block is random access, and gets just that block.
            return await self.fetch_blocks(transport, message, response, tuning, progress, security)
        return response

    async def fetch_blocks(self, transport: Transport, request: Message, first: Message,
                           tuning: TransportTuning | None, progress: Progress | None = None,
                           security: SecurityContext | None = None) -> Message:
        """Fetch the remaining blocks of a Block2 response and return the whole representation.

        Cancellation: as for :meth:`request`.
        """
        settings = tuning or self.tuning
        assembler = Block2Assembler(request, max_body=settings.max_body_size,
                                    bert=security is None and _bert(transport, first, settings) is not None)
        total = first.opt.size2
        received = len(first.payload)
        whole = assembler.feed(first)
        while whole is None:
            if progress is not None:
                progress(received, total)
            block = await self.exchange(transport, assembler.next_request(), tuning, security)
            received += len(block.payload)
            whole = assembler.feed(block)
        if progress is not None:
            progress(len(whole.payload), len(whole.payload))
        whole.security = first.security  # every block was verified as the first one was
        return whole

    async def exchange(self, transport: Transport, message: Message,
                       tuning: TransportTuning | None, security: SecurityContext | None = None) -> Message:
        """One request and its final response, beneath block-wise.

        The token manager sends it (protected with OSCORE when ``security`` is given: see
        :meth:`TokenManager.request`) and retries once with Echo when asked (RFC 9175 §2.2.2).
        Cancellation stops retransmission and frees the token at once.
        """
        pipe = self._tokens.request(transport, message, tuning, security=security)
        try:
            return await pipe.response()
        finally:
            self._tokens.release(pipe)


def _bert(transport: Transport, message: Message, settings: TransportTuning) -> int | None:
    """BERT's message size for ``message``'s peer, or None. A ``block_szx`` below 6 asks for small
    blocks, which BERT (1 KiB units) would not give."""
    return transport.bert_message_size(message.remote) if settings.block_szx == 6 else None


class ResponseStream:
    """Every response to one request, as an async iterator: ``async with ctx.stream(m) as responses``.

    A plain request yields its one response; an observation (Observe: 0) yields the first response and
    then every fresher notification, the newest ``buffer`` of them when the consumer is slow (never a
    backlog). The iteration ends after the final response; an error that ends the request is raised.
    :meth:`poke` asks the other end for a sign of life. Leaving the block is loss of interest:
    retransmission stops, the token is freed, and a registered observation is deregistered on the wire.
    """

    def __init__(self, tokens: TokenManager, path: RequestPath, request: Message, *, buffer: int,
                 tuning: TransportTuning | None, passive: bool = False):
        #: The OSCORE context protecting the request (set by the Context from its credentials).
        self.security: SecurityContext | None = None
        self._tokens = tokens
        self._path = path
        self._request = request
        self._buffer = buffer
        self._tuning = tuning
        self._passive = passive
        self._transport: Transport | None = None
        self._pipe: Pipe | None = None
        self._done = False
        #: The response that ended the stream, if one did.
        self.final: Message | None = None

    @property
    def request(self) -> Message:
        """The request as sent (with its token and peer)."""
        return self._request

    async def _start(self, transport: Transport) -> None:
        self._transport = transport
        observe = self._request.opt.observe == OBSERVE_REGISTER
        self._pipe = self._tokens.request(transport, self._request, self._tuning, observe=observe,
                                          buffer=self._buffer, passive=self._passive, security=self.security)

    async def __aenter__(self) -> ResponseStream:
        """The stream is open once made (``Context.stream`` sent the request); nothing to wait for."""
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        """Lose interest (see the class docstring); a passive observation lets the next notification be
        Reset instead of deregistering."""
        self.close()

    def close(self) -> None:
        pipe = self._pipe
        if pipe is not None:
            self._tokens.release(pipe, deregister=not self._passive)

    def poke(self) -> None:
        """Ask for a sign of life now: an observation re-registers, a plain request pings the peer. What
        comes of it arrives in the iteration (a notification, or the error that ends it)."""
        if self._pipe is not None:
            self._tokens.poke(self._pipe)

    @property
    def registered(self) -> bool:
        """Whether the server accepted the observation (the newest response carried Observe)."""
        state = None if self._pipe is None else self._tokens.observation(self._pipe)
        return state is not None and state.registered

    def __aiter__(self) -> ResponseStream:
        return self

    async def __anext__(self) -> Message:
        """The next response. Cancellation: a cancelled wait loses nothing; the request stays live until
        the block is left."""
        pipe = self._pipe
        if pipe is None or self._done:
            raise StopAsyncIteration
        try:
            event = await pipe.__anext__()
        except StopAsyncIteration:
            self._done = True
            raise
        if event.exception is not None:
            self._done = True
            raise event.exception
        message = event.message
        assert message is not None
        block2 = message.opt.block2
        if block2 is not None and block2.more and message.code.is_successful():
            # A notification larger than a block: the rest comes with plain GETs (RFC 7959 §2.6).
            assert self._transport is not None
            rest = self._request.copy(token=b"", mid=None)
            rest.opt.observe = None
            message = await self._path.fetch_blocks(self._transport, rest, message, self._tuning,
                                                    security=self.security)
        if event.is_last:
            self._done = True
            self.final = message
        return message


class Observation(ResponseStream):
    """One observation of a resource (RFC 7641); made by :meth:`Context.observe`, used as ``async with``.

    ``initial`` is the first response (also the first item of the iteration); ``registered`` says whether
    the server accepted the observation; ``final`` is the response that ended it, if one did.
    """

    def __init__(self, opener: Callable[[Observation], object], tokens: TokenManager, path: RequestPath,
                 request: Message, *, passive: bool, buffer: int, tuning: TransportTuning | None):
        super().__init__(tokens, path, request, buffer=buffer, tuning=tuning, passive=passive)
        self._opener = opener
        self._pending_initial = True
        self.initial: Message | None = None

    async def __aenter__(self) -> Observation:
        """Register and wait for the first response. Cancellation: as for :meth:`Context.request`; a
        registration cut short is not left behind (its token is freed, nothing more is sent for it).

        A 4.01 carrying Echo (a server checking the client's address or the request's freshness,
        RFC 9175 §2.3) is answered once by registering again with the Echo value.
        """
        await anyio.lowlevel.checkpoint_if_cancelled()  # a cancelled caller sends nothing at all
        try:
            await self._opener(self)  # type: ignore[misc]
            self.initial = await ResponseStream.__anext__(self)
        except BaseException:
            self._passive = True  # nothing to deregister yet
            self.close()
            raise
        return self

    async def __anext__(self) -> Message:
        if self._pending_initial:
            self._pending_initial = False
            if self.initial is not None:
                return self.initial
        return await ResponseStream.__anext__(self)
