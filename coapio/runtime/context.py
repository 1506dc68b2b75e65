"""The Context: one task group owning every socket task, handler task and timer of a CoAP endpoint.

``async with Context(...) as ctx:`` opens the sockets and starts their tasks; leaving the block cancels
and closes all of it. Nothing outlives the block and nothing needs a ``shutdown()`` call.

Inside, the :class:`TokenManager` matches responses to requests by (token, remote) and turns a requester's
loss of interest into wire actions; the context dispatches each endpoint's message-layer events to it and
to the site's resources.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import socket
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, TypedDict, Unpack

import anyio
import anyio.abc
import anyio.lowlevel
import attrs

from .. import error
from ..protocol.blockwise import Block1Sender, Block2Assembler
from ..protocol.codes import Code, Type
from ..protocol.message import Message, Remote
from ..protocol.messagelayer import (
    Acknowledged,
    BadResponse,
    Event,
    RequestReceived,
    Reset,
    ResponseReceived,
    TimedOut,
)
from ..protocol.observe import OBSERVE_REGISTER, ClientObservation, Verdict
from ..protocol.options import BlockValue, OptionValue
from ..protocol.tuning import TransportTuning
from ..transports.udp import UDPEndpoint, open_udp_socket, parse_bind
from .pipe import Pipe, PipeEvent
from .resource import Site
from .server import ServerDispatch

__all__ = ["Context", "Counters", "Observation", "TokenManager"]

log = logging.getLogger(__name__)

Bind = str | tuple[str, int]


class _BodyArgs(TypedDict, total=False):
    """The keywords of the request shortcuts that carry a payload (typed, so typos are caught)."""

    content_format: int | None
    accept: int | None
    con: bool
    options: Iterable[tuple[int, OptionValue]]
    tuning: TransportTuning | None


@attrs.frozen(slots=True)
class Counters:
    """What a context holds right now; tests use it to prove that nothing leaks."""

    #: CON messages awaiting an ACK, NON requests holding an NSTART slot, and queued requests.
    open_exchanges: int
    #: Tokens of client requests waiting for a response.
    live_tokens: int
    #: Async handler tasks still running.
    live_handlers: int
    #: Entries in the endpoints' deduplication caches.
    dedup_entries: int


class TokenManager:
    """Client requests in flight, keyed by (token, remote); matches responses and errors to them."""

    def __init__(self, token_length: int = 8):
        if not 1 <= token_length <= 8:
            raise ValueError("token_length must be 1..8 (RFC 7252 §5.3.1)")
        self.token_length = token_length
        self.outgoing: dict[tuple[bytes, Remote], Pipe] = {}

    def expects(self, token: bytes, remote: Remote) -> bool:
        return (token, remote) in self.outgoing

    def new_token(self, remote: Remote) -> bytes:
        """A random token (RFC 7252 §5.3.1: unguessable, so off-path responses cannot be spoofed)."""
        while True:
            token = os.urandom(self.token_length)
            if (token, remote) not in self.outgoing:
                return token

    def register(self, pipe: Pipe) -> None:
        key = (pipe.request.token, pipe.request.remote)
        if key in self.outgoing:
            raise ValueError(f"token {pipe.request.token.hex()} is already in use towards {key[1]!r}")
        self.outgoing[key] = pipe

    def unregister(self, pipe: Pipe) -> None:
        key = (pipe.request.token, pipe.request.remote)
        if self.outgoing.get(key) is pipe:
            del self.outgoing[key]

    def pipe_for(self, message: Message) -> Pipe | None:
        """The pipe of the request ``message`` is (or answers), by (token, remote)."""
        return self.outgoing.get((message.token, message.remote))

    def dispatch_error(self, remote: Remote, exception: Exception) -> None:
        """A transport error towards ``remote`` ends every request to it."""
        for (_, pipe_remote), pipe in list(self.outgoing.items()):
            if pipe_remote == remote:
                pipe.add_exception(exception)

    def fail_all(self, exception: Exception) -> None:
        for pipe in list(self.outgoing.values()):
            pipe.add_exception(exception)


class Context:
    """A CoAP endpoint: client, server, or both; see the module docstring.

    ``bind`` lists the addresses to serve on (``"host:port"``, ``"[v6]:port"`` or ``(host, port)``);
    without it a client-only context binds one ephemeral dual-stack socket, and a context with a ``site``
    binds ``[::]:5683``. ``tuning`` sets the transmission parameters and memory bounds of every endpoint.
    """

    def __init__(
        self,
        *,
        bind: Sequence[Bind] | Bind | None = None,
        site: Site | None = None,
        tuning: TransportTuning | None = None,
        token_length: int = 8,
        reuse_port: bool = False,
    ):
        if isinstance(bind, str | tuple):
            bind = [bind]
        if bind is None:
            bind = [("::", 5683)] if site is not None else []
        self._binds = [parse_bind(b) for b in bind]
        self.site = site
        self.tuning = tuning or TransportTuning()
        self.tokens = TokenManager(token_length)
        self._reuse_port = reuse_port
        self._endpoints: list[UDPEndpoint] = []
        self.server = ServerDispatch(site, self.tuning)
        self._task_group: anyio.abc.TaskGroup | None = None

    # --- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> Context:
        if self._task_group is not None:
            raise RuntimeError("a Context can be entered only once")
        # Bind first, so that an address in use is a plain OSError, not one wrapped by a task group.
        sockets: list[socket.socket] = []
        try:
            for host, port in self._binds or [("::", 0)]:
                sockets.append(self._open_socket(host, port, fallback=not self._binds))
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        self.server.task_group = task_group
        self.server.wake = self._wake_endpoints
        for sock in sockets:
            endpoint = UDPEndpoint(
                sock, self.tuning, self._dispatch, self._network_error, self.tokens.expects,
                upper_timer=self._upper_timer if self.site is not None else None,
            )
            self._endpoints.append(endpoint)
            task_group.start_soon(endpoint.run, name="coapio endpoint")
        return self

    def _open_socket(self, host: str, port: int, *, fallback: bool) -> socket.socket:
        try:
            return open_udp_socket(host, port, reuse_port=self._reuse_port)
        except OSError:
            if not (fallback and host == "::"):
                raise
            return open_udp_socket("0.0.0.0", port, reuse_port=self._reuse_port)  # no IPv6 here

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        """Cancel and close everything; pending requests from other tasks fail with a clear error.

        An exception raised in the ``async with`` body comes out as itself, not wrapped in an exception
        group: the task group is an implementation detail whose own tasks only ever end by cancellation.
        """
        task_group = self._task_group
        assert task_group is not None
        task_group.cancel_scope.cancel()
        self.server.close()
        try:
            return await task_group.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            leaves = list(_leaves(group))
            if exc is not None and leaves == [exc]:
                return False  # let the body's own exception propagate unchanged
            interrupts = [e for e in leaves if isinstance(e, KeyboardInterrupt)]
            if interrupts and all(e is exc or isinstance(e, KeyboardInterrupt) for e in leaves):
                # Ctrl-C may land in any of our tasks; it is still just Ctrl-C to the application.
                raise interrupts[0] from None
            raise
        finally:
            self.tokens.fail_all(error.NetworkError("the CoAP context was closed"))

    async def serve_forever(self) -> None:
        """Sleep until cancelled (a server's main task has nothing else to do)."""
        await anyio.sleep_forever()

    @property
    def endpoints(self) -> list[UDPEndpoint]:
        return list(self._endpoints)

    @property
    def local_addresses(self) -> list[tuple[str, int]]:
        """The (host, port) each endpoint is bound to: how a server bound to port 0 learns its port."""
        return [(str(e.local[0]), int(e.local[1])) for e in self._endpoints]

    @property
    def counters(self) -> Counters:
        return Counters(
            open_exchanges=sum(e.layer.open_exchanges for e in self._endpoints),
            live_tokens=len(self.tokens.outgoing),
            live_handlers=self.server.live_handlers,
            dedup_entries=sum(e.layer.dedup_entries for e in self._endpoints),
        )

    @property
    def limit_hits(self) -> dict[str, int]:
        """How often each configured bound was reached (see :class:`TransportTuning`), by its name.

        The bounds are logged at most once per ``limit_log_interval``; these counts are exact.
        """
        hits = dict(self.server.limits.hits)
        for endpoint in self._endpoints:
            for name, count in endpoint.layer.limits.hits.items():
                hits[name] = hits.get(name, 0) + count
        return hits

    # --- client API --------------------------------------------------------------------------------

    async def request(
        self,
        message: Message,
        *,
        tuning: TransportTuning | None = None,
        progress: Callable[[int, int | None], None] | None = None,
    ) -> Message:
        """Send a request and return its final response, block-wise where needed (RFC 7959).

        ``message.remote`` is the destination (``Message(uri=...)`` sets it); the token is generated
        unless set, and the message ID is always allocated anew, so a message can be sent again. A
        payload larger than one block (``tuning.block_szx``) goes out with Block1 and a fresh Request-Tag;
        a response with Block2 is fetched block by block and returned whole (up to
        ``tuning.max_body_size``, with its ETag checked across blocks).

        Raises :class:`~coapio.error.RequestTimedOut` after the last retransmission,
        :class:`~coapio.error.ResetReceived`, :class:`~coapio.error.NetworkError` (ICMP errors, at once),
        :class:`~coapio.error.ResponseRejected`. ``progress(done, total)`` is called after every block of
        a block-wise transfer with the bytes moved so far and the body's size when known (the request's
        own, or the response's Size2). Once the server has acknowledged a request (empty ACK),
        its separate response may take as long as the server needs: bound the wait with your own scope.

        Cancellation is the timeout API (``with anyio.fail_after(5): await ctx.request(m)``): when the
        caller is cancelled, retransmission stops, the token is freed at once, and nothing more is sent
        for this request.
        """
        if not message.code.is_request():
            raise ValueError(f"{message.code.dotted} is not a request code")
        if message.type not in (Type.CON, Type.NON):
            raise ValueError("a request is sent as CON or NON")
        await anyio.lowlevel.checkpoint_if_cancelled()  # a cancelled caller sends nothing at all
        settings = tuning or self.tuning
        _, message.remote = await self._route(message.remote)
        if len(message.payload) > 1 << (settings.block_szx + 4):
            sender = Block1Sender(message, szx=settings.block_szx, request_tag=os.urandom(4))
            total = len(message.payload)
            step: Message | None = sender.first_request()
            while step is not None:
                reply = await self._exchange(step, tuning)
                if progress is not None:
                    block = step.opt.block1
                    progress(total if block is None else min(total, block.start + len(step.payload)), total)
                step = sender.feed(reply)
            response = sender.final_response
            assert response is not None
            if sender.needs_block2:
                return await self._fetch_blocks(sender.continuation_request(), response, tuning, progress)
            return response
        asked = message.opt.block2
        if asked is None and settings.block_szx < 6 and message.code in (Code.GET, Code.FETCH):
            # Early negotiation (RFC 7959 §2.4): a client that prefers small blocks says so up front.
            message.opt.block2 = asked = BlockValue(0, False, settings.block_szx)
        response = await self._exchange(message, tuning)
        block2 = response.opt.block2
        if block2 is not None and block2.more and (asked is None or asked.num == 0):
            # A request for block 0 only sets the preferred size (early negotiation, RFC 7959 §2.4);
            # one for a later block is random access, and gets just that block.
            return await self._fetch_blocks(message, response, tuning, progress)
        return response

    async def _fetch_blocks(
        self,
        request: Message,
        first: Message,
        tuning: TransportTuning | None,
        progress: Callable[[int, int | None], None] | None = None,
    ) -> Message:
        """Fetch the remaining blocks of a Block2 response and return the whole representation."""
        settings = tuning or self.tuning
        assembler = Block2Assembler(request, max_body=settings.max_body_size)
        total = first.opt.size2
        received = len(first.payload)
        whole = assembler.feed(first)
        while whole is None:
            if progress is not None:
                progress(received, total)
            block = await self._exchange(assembler.next_request(), tuning)
            received += len(block.payload)
            whole = assembler.feed(block)
        if progress is not None:
            progress(len(whole.payload), len(whole.payload))
        return whole

    async def _exchange(self, message: Message, tuning: TransportTuning | None) -> Message:
        """One request and its response, retried once with the server's Echo value when it asks for one
        with 4.01 (RFC 9175 §2.2.2)."""
        response = await self._exchange_once(message, tuning)
        echo = response.opt.echo
        if response.code == Code.UNAUTHORIZED and echo is not None and message.opt.echo != echo:
            retry = message.copy(mid=None)
            retry.opt.echo = echo
            response = await self._exchange_once(retry, tuning)
        return response

    async def _exchange_once(self, message: Message, tuning: TransportTuning | None) -> Message:
        """One request, one response: the wire exchange beneath :meth:`request`.

        With a No-Response option that suppresses success (RFC 7967), a NON request is done once sent and
        a CON once acknowledged: the result is then the empty acknowledgement (code 0.00), unless an
        unsuppressed error response came instead.
        """
        endpoint, remote = await self._route(message.remote)
        message.remote = remote
        message.mid = None
        if not message.token:
            message.token = self.tokens.new_token(remote)
        pipe = Pipe(message)
        self.tokens.register(pipe)
        try:
            endpoint.send(message, tuning)
            if message.type is Type.NON and _suppresses_success(message):
                return Message(Type.NON, Code.EMPTY, remote=remote)
            return await pipe.response()
        finally:
            self.tokens.unregister(pipe)
            pipe.close()
            if not endpoint.closed:
                endpoint.layer.cancel(message, anyio.current_time())
                endpoint.flush()

    def observe(
        self,
        target: str | Message,
        *,
        passive: bool = False,
        buffer: int = 1,
        tuning: TransportTuning | None = None,
    ) -> Observation:
        """Observe a resource (RFC 7641): ``async with ctx.observe(uri) as obs: async for n in obs: ...``.

        ``target`` is a URI or a GET/FETCH message (Observe=0 is set here). The iteration yields the
        first response and then every fresher notification; a slow consumer sees the newest ones
        (``buffer`` of them), never a backlog. It ends after a final response: one without Observe, an
        error code, or the server dropping the observation. Leaving the block deregisters on the wire:
        a GET with Observe=1 (or, with ``passive=True``, a Reset to the next notification).
        """
        request = Message(code=Code.GET, uri=target) if isinstance(target, str) else target.copy()
        request.opt.observe = OBSERVE_REGISTER
        return Observation(self, request, passive=passive, buffer=buffer, tuning=tuning)

    async def get(
        self,
        uri: str,
        *,
        accept: int | None = None,
        con: bool = True,
        options: Iterable[tuple[int, OptionValue]] = (),
        tuning: TransportTuning | None = None,
    ) -> Message:
        """GET ``uri`` and return the response. Errors and cancellation as for :meth:`request`.

        ``options`` adds raw options, e.g. ``[(OptionNumber.ETAG, b"v1")]``; ``con=False`` sends NON.
        """
        message = self.build(Code.GET, uri, accept=accept, con=con, options=options)
        return await self.request(message, tuning=tuning)

    async def delete(
        self,
        uri: str,
        *,
        con: bool = True,
        options: Iterable[tuple[int, OptionValue]] = (),
        tuning: TransportTuning | None = None,
    ) -> Message:
        """DELETE ``uri``. Errors and cancellation as for :meth:`request`."""
        return await self.request(self.build(Code.DELETE, uri, con=con, options=options), tuning=tuning)

    async def post(self, uri: str, payload: bytes = b"", **kwargs: Unpack[_BodyArgs]) -> Message:
        """POST ``payload`` to ``uri``; keywords as for :meth:`put`. Cancellation as for :meth:`request`."""
        return await self._with_body(Code.POST, uri, payload, kwargs)

    async def put(self, uri: str, payload: bytes = b"", **kwargs: Unpack[_BodyArgs]) -> Message:
        """PUT ``payload`` to ``uri``. Errors and cancellation as for :meth:`request`.

        Keywords: ``content_format`` and ``accept`` (numbers or :class:`~coapio.ContentFormat`),
        ``con`` (False sends NON), ``options`` (raw ``(number, value)`` pairs), ``tuning``.
        """
        return await self._with_body(Code.PUT, uri, payload, kwargs)

    async def fetch(self, uri: str, payload: bytes = b"", **kwargs: Unpack[_BodyArgs]) -> Message:
        """FETCH (RFC 8132) with ``payload`` as the query; keywords and cancellation as for :meth:`put`."""
        return await self._with_body(Code.FETCH, uri, payload, kwargs)

    async def patch(self, uri: str, payload: bytes = b"", **kwargs: Unpack[_BodyArgs]) -> Message:
        """PATCH (RFC 8132); keywords and cancellation as for :meth:`put`."""
        return await self._with_body(Code.PATCH, uri, payload, kwargs)

    async def ipatch(self, uri: str, payload: bytes = b"", **kwargs: Unpack[_BodyArgs]) -> Message:
        """iPATCH (RFC 8132, idempotent); keywords and cancellation as for :meth:`put`."""
        return await self._with_body(Code.IPATCH, uri, payload, kwargs)

    async def _with_body(self, code: Code, uri: str, payload: bytes, kwargs: _BodyArgs) -> Message:
        message = self.build(
            code, uri, payload=payload,
            content_format=kwargs.get("content_format"), accept=kwargs.get("accept"),
            con=kwargs.get("con", True), options=kwargs.get("options", ()),
        )
        return await self.request(message, tuning=kwargs.get("tuning"))

    @staticmethod
    def build(
        code: Code,
        uri: str,
        *,
        payload: bytes = b"",
        content_format: int | None = None,
        accept: int | None = None,
        con: bool = True,
        options: Iterable[tuple[int, OptionValue]] = (),
    ) -> Message:
        """The request message the convenience methods send (to change it before :meth:`request`)."""
        message = Message(Type.CON if con else Type.NON, code, payload=payload, uri=uri)
        if content_format is not None:
            message.opt.content_format = int(content_format)
        if accept is not None:
            message.opt.accept = int(accept)
        for number, value in options:
            message.opt.add(number, value)
        return message

    async def _route(self, remote: Remote) -> tuple[UDPEndpoint, Remote]:
        """Resolve ``remote`` and pick the endpoint that can reach it."""
        if self._task_group is None or not self._endpoints or self._endpoints[0].closed:
            raise RuntimeError("the Context is not open (use `async with Context() as ctx`)")
        if not isinstance(remote, tuple) or len(remote) < 2:
            raise ValueError(f"no destination: message.remote is {remote!r} (set it, or pass uri=)")
        host, port = remote[0], int(remote[1])
        family, sockaddr = _literal(host, port)
        if family is None:
            try:
                infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            except OSError as e:
                raise error.NetworkError(f"cannot resolve {host!r}: {e}") from None
            for fam, _, _, _, addr in infos:
                if any(ep.can_reach(fam) for ep in self._endpoints):
                    family, sockaddr = fam, tuple(addr)
                    break
            else:
                raise error.NetworkError(f"no local endpoint can reach {host!r}")
        for endpoint in self._endpoints:
            if endpoint.can_reach(family):
                return endpoint, endpoint.remote_for(family, sockaddr)
        raise error.NetworkError(f"no local endpoint can reach {host!r} (bound: {self._binds!r})")

    # --- event dispatch (called on the endpoint's socket task, synchronously) ------------------------

    def _dispatch(self, endpoint: UDPEndpoint, event: Event, now: float) -> None:
        kind = type(event)
        if kind is RequestReceived:
            message = event.message
            message.local = endpoint.local_address_of_last_datagram() if endpoint.pktinfo else endpoint.local
            try:
                self.server.serve(endpoint, message, now)
            except Exception:
                # A bug of ours must cost one request, not the socket task and every exchange on it.
                log.exception("internal error serving %r", message)
                if endpoint.layer.unanswered(message):
                    endpoint.layer.respond(message, Message(code=Code.INTERNAL_SERVER_ERROR), now)
            return
        message = event.message
        pipe = self.tokens.pipe_for(message)
        if kind is ResponseReceived:
            if pipe is not None:
                # An observation's pipe streams; a plain request's ends with its response.
                pipe.add_response(message, is_last=not pipe.newest_wins)
            return
        if kind is Acknowledged:
            if pipe is not None and pipe.request is message and _suppresses_success(message):
                pipe.add_response(Message(Type.ACK, Code.EMPTY, message.mid, remote=message.remote))
            self.server.on_acknowledged(message, now)
            return
        if kind is Reset:
            self.server.on_reset(message)
        elif kind is TimedOut:
            self.server.on_timeout(message)
        # A plain request's pipe fails only for its own message; an observation's for any message with
        # its token (a re-registration that times out or is reset ends the observation too).
        if pipe is None or (kind is not BadResponse and pipe.request is not message and not pipe.newest_wins):
            return
        if kind is TimedOut:
            pipe.add_exception(error.RequestTimedOut(
                f"no answer from {message.remote!r} after {endpoint.layer.tuning.max_retransmit} "
                "retransmissions" if message.type is Type.CON else
                f"no response from {message.remote!r} to a NON request"
            ))
        elif kind is Reset:
            pipe.add_exception(error.ResetReceived(f"{message.remote!r} reset the request"))
        elif isinstance(event, BadResponse):
            pipe.add_exception(error.ResponseRejected(event.reason))

    def _wake_endpoints(self) -> None:
        for endpoint in self._endpoints:
            endpoint.wake()

    def _upper_timer(self, now: float) -> float | None:
        self.server.on_timer(now)
        return self.server.next_deadline()

    def _network_error(self, remote: Remote, exception: OSError) -> None:
        self.tokens.dispatch_error(
            remote, error.NetworkError(exception.errno, f"{remote!r}: {exception.strerror}")
        )
        # Nothing more goes to an unreachable peer: no retransmission, and its observations end.
        now = anyio.current_time()
        for endpoint in self._endpoints:
            endpoint.layer.cancel_peer(remote, now)
        self.server.on_network_error(remote)

class Observation:
    """One observation of a resource; made by :meth:`Context.observe`, used as ``async with``.

    ``initial`` is the first response (also the first item of the iteration); ``registered`` says whether
    the server accepted the observation; ``final`` is the response that ended it, if one did.
    """

    def __init__(self, context: Context, request: Message, *, passive: bool, buffer: int,
                 tuning: TransportTuning | None):
        self._context = context
        self._request = request
        self._passive = passive
        self._buffer = buffer
        self._tuning = tuning
        self._state: ClientObservation | None = None
        self._pipe: Pipe | None = None
        self._endpoint: UDPEndpoint | None = None
        self._pending_initial = True
        self._echo_sent: bytes | None = None  # the last Echo value a re-registration carried
        self.initial: Message | None = None
        self.final: Message | None = None

    @property
    def registered(self) -> bool:
        return self._state is not None and self._state.registered

    async def __aenter__(self) -> Observation:
        """Register and wait for the first response. Cancellation: as for :meth:`Context.request`.

        A 4.01 carrying Echo (a server checking the client's address or the request's freshness,
        RFC 9175 §2.3) is answered once by registering again with the Echo value.
        """
        await anyio.lowlevel.checkpoint_if_cancelled()  # a cancelled caller sends nothing at all
        ctx = self._context
        request = self._request
        endpoint, remote = await ctx._route(request.remote)
        request.remote = remote
        for attempt in range(2):
            request.mid = None
            if not request.token:
                request.token = ctx.tokens.new_token(remote)
            self._state = ClientObservation(request)
            pipe = self._pipe = Pipe(request, buffer=self._buffer, newest_wins=True)
            ctx.tokens.register(pipe)
            self._endpoint = endpoint
            try:
                endpoint.send(request, self._tuning)
                self.initial = await self._next_delivered()
            except BaseException:
                self._release(deregister=False)
                raise
            echo = self.initial.opt.echo
            if attempt or self.initial.code != Code.UNAUTHORIZED or echo is None or echo == request.opt.echo:
                break
            self._release(deregister=False)
            self.initial = self.final = None
            request.opt.echo = echo
            request.token = b""  # a new registration, with a token of its own
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Deregister: Observe=1 actively, or (passive) let the next notification be Reset."""
        self._release(deregister=not self._passive)

    def _release(self, *, deregister: bool) -> None:
        ctx, pipe, endpoint, state = self._context, self._pipe, self._endpoint, self._state
        if pipe is None or endpoint is None or state is None:
            return
        ctx.tokens.unregister(pipe)
        pipe.close()
        self._pipe = None
        if endpoint.closed:
            return
        now = anyio.current_time()
        endpoint.layer.cancel(pipe.request, now)
        if deregister and state.registered and not state.ended:
            # Fire and forget: its answer finds no pipe and is dropped (or Reset, if separate).
            endpoint.send(state.deregistration_request(), self._tuning)
        endpoint.flush()

    def __aiter__(self) -> Observation:
        return self

    async def __anext__(self) -> Message:
        """The next response; re-registers when the last one's Max-Age ran out (RFC 7641 §3.3.1).

        Cancellation: a cancelled wait loses nothing; the observation stays registered until the block
        is left.
        """
        if self._pending_initial:
            self._pending_initial = False
            if self.initial is not None:
                return self.initial
        if self.final is not None or self._pipe is None:
            raise StopAsyncIteration
        return await self._next_delivered()

    async def _next_delivered(self) -> Message:
        state, pipe = self._state, self._pipe
        assert state is not None and pipe is not None
        while True:
            deadline = state.next_deadline()
            event: PipeEvent | None = None
            with anyio.CancelScope(deadline=math.inf if deadline is None else deadline):
                event = await pipe.__anext__()
            if event is None:  # nothing fresh within Max-Age: the server may have forgotten us
                assert self._endpoint is not None
                self._endpoint.send(state.reregistration_request(anyio.current_time()), self._tuning)
                continue
            if event.exception is not None:
                state.ended = True  # nothing to deregister: the exchange with the server is over
                raise event.exception
            assert event.message is not None
            message = event.message
            echo = message.opt.echo
            if (message.code == Code.UNAUTHORIZED and echo is not None and not self._pending_initial
                    and echo != self._echo_sent and self._endpoint is not None):
                # A re-registration challenged for an Echo value (RFC 9175): register again with it.
                self._echo_sent = echo
                retry = state.reregistration_request(anyio.current_time())
                retry.opt.echo = echo
                self._endpoint.send(retry, self._tuning)
                continue
            verdict = state.on_response(message, anyio.current_time())
            if verdict is Verdict.STALE:
                continue
            block2 = message.opt.block2
            if block2 is not None and block2.more:
                # A notification larger than a block: the rest is fetched with plain GETs (RFC 7959 §2.6).
                rest = self._request.copy(token=b"")
                rest.opt.observe = None
                message = await self._context._fetch_blocks(rest, message, self._tuning)
            if verdict is Verdict.FINAL:
                self.final = message
            return message


def _suppresses_success(request: Message) -> bool:
    """Whether the request's No-Response option asks for no 2.xx response (RFC 7967 §2.1)."""
    value = request.opt.no_response
    return value is not None and bool(value & 0x02)


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterable[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


@functools.lru_cache(maxsize=1024)  # asked on every request; the answer depends only on its arguments
def _literal(host: str, port: int) -> tuple[int | None, tuple[Any, ...]]:
    """Recognise an IP literal without a resolver call (and normalise IPv6 to the kernel's form)."""
    try:
        packed = socket.inet_pton(socket.AF_INET6, host)
    except OSError:
        pass
    else:
        return socket.AF_INET6, (socket.inet_ntop(socket.AF_INET6, packed), port, 0, 0)
    try:
        socket.inet_pton(socket.AF_INET, host)
    except OSError:
        return None, ()
    return socket.AF_INET, (host, port)

