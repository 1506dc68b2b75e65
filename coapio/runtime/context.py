"""The Context: one task group owning every transport, service, handler task and timer of a CoAP endpoint.

``async with Context(...) as ctx:`` opens the transports and starts, in one task group, the token manager
service and each transport's socket task; leaving the block cancels and closes all of it. Nothing outlives
the block and nothing needs a ``shutdown()`` call.

A request's URI scheme picks the transport (``ctx.transports``); a scheme no transport serves raises
:class:`~coapio.error.NoTransport` before anything is sent. Requests go down the one client path of
:mod:`coapio.runtime.client`; what the transports receive goes to the token manager (responses) and the
server (requests) through the :class:`~coapio.transports.base.TransportEvents` the Context gives them.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import ssl
from collections.abc import Callable, Collection, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, TypedDict, Unpack

import anyio
import anyio.abc
import anyio.lowlevel
import attrs

from .. import error
from ..protocol.codes import Code, Type
from ..protocol.message import Message
from ..protocol.observe import OBSERVE_REGISTER
from ..protocol.options import OptionValue
from ..protocol.peer import Peer
from ..protocol.tuning import TransportTuning
from ..protocol.uri import DEFAULT_PORTS, SCHEMES
from ..transports.base import Transport
from ..transports.udp import UDPTransport, open_udp_socket, parse_bind
from .client import Observation, RequestPath, ResponseStream
from .resource import Site
from .server import ServerDispatch
from .tokens import TokenManager

if TYPE_CHECKING:
    from ..credentials import Credentials
    from ..protocol.dtls import DtlsCredentials

__all__ = ["Context", "Counters"]

log = logging.getLogger(__name__)

Bind = str | tuple[str, int]

#: What a scheme needs that coapio does not have yet (a clearer error than "no transport").
_NOT_YET: dict[str, str] = {}
#: Datagram routes remembered (a request's Peer as written -> the transport and the Peer it reaches).
_MAX_ROUTES = 1024
#: Seconds the Context's exit waits for transports to write what its shutdown queued.
_DRAIN_TIMEOUT = 1.0
#: The RFC 8323 schemes: a client transport for each is started on first use.
_RELIABLE = ("coap+tcp", "coaps+tcp", "coap+ws", "coaps+ws")


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
    #: Tokens of client requests (and observations) waiting for a response.
    live_tokens: int
    #: Server tasks still running: async handlers, ``render_to_pipe`` producers, observation tasks.
    live_handlers: int
    #: Entries in the transports' deduplication caches.
    dedup_entries: int
    #: Observers registered with this context's server.
    observers: int = 0


class _Events:
    """The runtime's side of the transport interface: requests to the server, the rest to the tokens.

    Bound methods are stored as attributes, so a transport's call reaches its target with no extra frame.
    """

    def __init__(self, tokens: TokenManager, server: ServerDispatch):
        self.request_received = server.serve
        self.response_received = tokens.response_received
        self.expects_response = tokens.expects_response
        self.timer = server.timer
        self._tokens = tokens
        self._server = server

    def delivered(self, message: Message, now: float) -> None:
        self._tokens.delivered(message, now)
        self._server.on_acknowledged(message, now)

    def failed(self, message: Message, exception: error.CoapError, now: float) -> None:
        if isinstance(exception, error.ResetReceived):
            self._server.on_reset(message)
        elif isinstance(exception, error.RequestTimedOut):
            self._server.on_timeout(message)
        self._tokens.failed(message, exception, now)

    def peer_failed(self, peer: Peer, exception: error.CoapError) -> None:
        self._tokens.peer_failed(peer, exception)
        self._server.on_network_error(peer)


class Context:
    """A CoAP endpoint: client, server, or both; see the module docstring.

    ``bind`` lists the addresses to serve on: ``"host:port"``, ``"[v6]:port"`` or ``(host, port)`` for
    UDP, or a URI naming the transport: ``"coap://host:port"`` (UDP), ``"coap+tcp://host:port"``,
    ``"coaps+tcp://…"`` (TLS: needs ``server_ssl``), ``"coap+ws://…"``, ``"coaps+ws://…"`` (WebSockets;
    the ``ws`` extra), ``"coaps://…"`` (DTLS: needs ``dtls``, the ``dtls`` extra). Without it a
    client-only context binds one ephemeral dual-stack UDP socket, and a context with a ``site`` binds
    UDP ``[::]:5683``. Client connections for the TCP, TLS and WebSocket
    schemes are opened on first use; ``client_ssl`` verifies TLS servers (default: the system's trust
    store; see :mod:`coapio.transports.tls`). ``schemes`` limits the URI schemes requests may use (e.g.
    ``{"coaps+tcp"}`` for a client that must never send plaintext); a request for another one is
    :class:`~coapio.error.NoTransport`. ``transports`` adds transports of your own (see
    docs/architecture.rst, "Writing a transport"). ``tuning`` sets the transmission parameters and memory
    bounds of every transport. ``credentials`` (a :class:`~coapio.credentials.Credentials`, or the path
    of a credentials file in aiocoap's format, then loaded here and closed on exit) protects requests
    with OSCORE where they name a security context for the request's URI, lets the server accept OSCORE
    requests protected with the contexts they list, and holds the DTLS credentials of ``coaps://``
    (docs/security.rst). ``dtls`` (:class:`~coapio.protocol.dtls.DtlsCredentials`) gives the DTLS
    credentials directly instead, as a server and as a client; a client without any verifies DTLS
    servers' certificates against the system's trust store.
    """

    def __init__(
        self,
        *,
        bind: Sequence[Bind] | Bind | None = None,
        site: Site | None = None,
        tuning: TransportTuning | None = None,
        token_length: int = 8,
        reuse_port: bool = False,
        transports: Sequence[Transport] = (),
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
        schemes: Collection[str] | None = None,
        credentials: Credentials | str | os.PathLike[str] | None = None,
        dtls: DtlsCredentials | None = None,
    ):
        self._own_credentials = False
        if credentials is not None:
            from ..credentials import Credentials  # only where security is used: it is not small

            if not isinstance(credentials, Credentials):
                # A path is loaded here (errors at construction, not in the task group), closed on exit.
                credentials = Credentials.load(credentials)
                self._own_credentials = True
            if dtls is None:
                dtls = credentials.dtls
        #: The security material requests are protected with and the server accepts (None: none).
        self.credentials: Credentials | None = credentials
        self._oscore = None if credentials is None else credentials.oscore
        try:
            self._setup(bind, site, server_ssl, dtls)
        except BaseException:
            if self._own_credentials and credentials is not None:
                credentials.close()
            raise
        self._server_ssl = server_ssl
        self._client_ssl = client_ssl
        self._dtls = dtls
        self._schemes = None if schemes is None else frozenset(s.lower() for s in schemes)
        self.site = site
        self.tuning = tuning or TransportTuning()
        self._tokens = TokenManager(token_length, self.tuning)
        self._server = ServerDispatch(site, self.tuning, self._tokens, self._oscore)
        self._path = RequestPath(self._tokens, self.tuning)
        self._reuse_port = reuse_port
        self._extra = list(transports)
        self._transports: list[Transport] = []
        self._by_scheme: dict[str, list[Transport]] = {}
        self._starting: dict[str, anyio.Event] = {}
        self._routes: dict[Peer, tuple[Transport, Peer]] = {}  # see _route
        self._events: _Events | None = None
        self._task_group: anyio.abc.TaskGroup | None = None

    def _setup(self, bind: Sequence[Bind] | Bind | None, site: Site | None,
               server_ssl: ssl.SSLContext | None, dtls: DtlsCredentials | None) -> None:
        """Read ``bind`` into the addresses each kind of transport serves on (ValueError for a bad one)."""
        if isinstance(bind, str | tuple):
            bind = [bind]
        if bind is None:
            bind = [("::", 5683)] if site is not None else []
        self._binds: list[tuple[str, int]] = []
        self._listen: list[tuple[str, str, int]] = []  # (scheme, host, port) of the reliable transports
        self._dtls_binds: list[tuple[str, int]] = []  # coaps:// (DTLS) addresses to serve on
        for item in bind:
            scheme, host, port = _parse_endpoint(item)
            if scheme == "coap":
                self._binds.append((host, port))
            elif scheme in _RELIABLE:
                if scheme.startswith("coaps") and server_ssl is None:
                    raise ValueError(f"{scheme}:// needs a certificate: pass server_ssl "
                                     "(coapio.transports.tls.server_context)")
                self._listen.append((scheme, host, port))
            elif scheme == "coaps":
                _require_dtls()
                if dtls is None or not (dtls.has_psk or dtls.has_certificate):
                    raise ValueError("coaps:// needs credentials: pass dtls=DtlsCredentials(...) with PSK "
                                     "identities to accept or a certificate")
                self._dtls_binds.append((host, port))
            else:
                raise ValueError(f"cannot serve {scheme}:// ({_NOT_YET.get(scheme, 'unknown scheme')})")

    # --- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> Context:
        """Bind every socket, then start the token manager and each transport (``task_group.start``).

        An address in use is a plain OSError. Cancellation while entering closes what was opened.
        """
        if self._task_group is not None:
            raise RuntimeError("a Context can be entered only once")
        # Bind first, so that an address in use is a plain OSError, not one wrapped by a task group.
        sockets: list[socket.socket] = []
        try:
            for host, port in self._binds or [("::", 0)]:
                sockets.append(self._open_socket(host, port, fallback=not self._binds))
            dtls_sockets = [self._open_socket(host, port, fallback=False) for host, port in self._dtls_binds]
            sockets.extend(dtls_sockets)
            dtls_transports = [self._dtls_transport(sock) for sock in dtls_sockets]
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        oscore = self._oscore is not None
        transports: list[Transport] = [UDPTransport(sock, self.tuning, oscore=oscore) for sock in sockets
                                       if sock not in dtls_sockets]
        transports.extend(dtls_transports)
        for scheme, host, port in self._listen:
            transports.append(self._reliable(scheme, (host, port)))
        transports.extend(self._extra)
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        try:
            self._server.task_group = task_group
            self._server.wake = self._wake_transports
            await task_group.start(self._tokens.run, name="coapio token manager")
            self._events = _Events(self._tokens, self._server)
            for transport in transports:
                await self._start(transport)
        except BaseException as e:
            for sock in sockets:
                sock.close()
            task_group.cancel_scope.cancel()
            await task_group.__aexit__(type(e), e, e.__traceback__)
            raise
        return self

    async def _start(self, transport: Transport) -> None:
        assert self._task_group is not None and self._events is not None
        await self._task_group.start(transport.run, self._events, name="coapio transport")
        self._transports.append(transport)
        for scheme in transport.schemes:
            self._by_scheme.setdefault(scheme, []).append(transport)

    def _reliable(self, scheme: str, listen: tuple[str, int] | None) -> Transport:
        from ..transports.tcp import ReliableTransport  # imported when a reliable scheme is first used

        if scheme.endswith("+ws"):
            from ..transports import ws

            if not ws.available():
                raise error.NoTransport(f"{scheme}:// needs wsproto: pip install 'coapio[ws]'")
            return ws.WebSocketTransport(scheme, self.tuning, listen=listen, server_ssl=self._server_ssl,
                                         client_ssl=self._client_ssl)
        return ReliableTransport(scheme, self.tuning, listen=listen, server_ssl=self._server_ssl,
                                 client_ssl=self._client_ssl)

    def _dtls_transport(self, sock: socket.socket | None) -> Transport:
        """A coaps:// transport serving on ``sock`` (a bound coaps address), or, for None, a client one
        on an ephemeral socket."""
        server = sock is not None
        if sock is None:
            _require_dtls()
            sock = self._open_socket("::", 0, fallback=True)
        from ..protocol.dtls import DtlsCredentials
        from ..transports.dtls import DTLSTransport

        try:
            return DTLSTransport(sock, self.tuning, self._dtls or DtlsCredentials(), server=server,
                                 oscore=self._oscore is not None)
        except BaseException:
            sock.close()
            raise

    async def _client_transport(self, scheme: str) -> list[Transport]:
        """Start the client transport of an RFC 8323 scheme, or of coaps://, on its first use (once,
        whoever asks)."""
        while scheme not in self._by_scheme:
            starting = self._starting.get(scheme)
            if starting is not None:
                await starting.wait()
                continue
            done = self._starting[scheme] = anyio.Event()
            try:
                transport = self._dtls_transport(None) if scheme == "coaps" else self._reliable(scheme, None)
                await self._start(transport)
            finally:
                del self._starting[scheme]
                done.set()
        return self._by_scheme[scheme]

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

        First the token manager shuts down while the transports still run (live observations are
        deregistered, pending requests fail, incoming Pipes are cancelled), then the task group is
        cancelled. An exception raised in the ``async with`` body comes out as itself, not wrapped in an
        exception group: the task group is an implementation detail whose own tasks only ever end by
        cancellation (or, if one fails, with that failure).
        """
        task_group = self._task_group
        assert task_group is not None
        self._tokens.shutdown()
        self._server.close()
        # Let connection-oriented transports write what the shutdown queued (deregistrations) before
        # they are cancelled; bounded, and shielded so that a cancelled body still says goodbye.
        with anyio.CancelScope(shield=True), anyio.move_on_after(_DRAIN_TIMEOUT):
            for transport in self._transports:
                await transport.drain()
        task_group.cancel_scope.cancel()
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
            self._tokens.shutdown()
            if self._own_credentials and self.credentials is not None:
                self.credentials.close()

    async def serve_forever(self) -> None:
        """Sleep until cancelled (a server's main task has nothing else to do)."""
        await anyio.sleep_forever()

    @property
    def transports(self) -> tuple[Transport, ...]:
        """The running transports, in the order they were started (UDP sockets first)."""
        return tuple(self._transports)

    @property
    def local_uris(self) -> list[str]:
        """``scheme://host:port`` of every listening transport (how a server bound to port 0 is found)."""
        uris = []
        for transport in self._transports:
            address = transport.local_address
            if address is not None:
                host, port = address
                scheme = next(iter(sorted(transport.schemes)))
                uris.append(f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}")
        return uris

    @property
    def local_addresses(self) -> list[tuple[str, int]]:
        """The (host, port) each listening transport is bound to: how a server bound to port 0 learns
        its port."""
        return [a for a in (t.local_address for t in self._transports) if a is not None]

    @property
    def counters(self) -> Counters:
        return Counters(
            open_exchanges=sum(t.open_exchanges for t in self._transports),
            live_tokens=self._tokens.live_tokens,
            live_handlers=self._server.live_handlers,
            dedup_entries=sum(t.dedup_entries for t in self._transports),
            observers=len(self._server.observers),
        )

    @property
    def limit_hits(self) -> dict[str, int]:
        """How often each configured bound was reached (see :class:`TransportTuning`), by its name.

        The bounds are logged at most once per ``limit_log_interval``; these counts are exact.
        """
        hits = dict(self._server.limits.hits)
        for transport in self._transports:
            for name, count in transport.limit_hits.items():
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

        ``message`` is not changed: a copy is sent, to ``message.remote`` (``Message(uri=...)`` sets it)
        by the transport of its scheme, with a token generated unless set and a fresh message ID, so the
        same message can be sent again. A payload larger than one block (``tuning.block_szx``) goes out
        with Block1 and a fresh Request-Tag; a response with Block2 is fetched block by block and returned
        whole (up to ``tuning.max_body_size``, with its ETag checked across blocks).

        Raises :class:`~coapio.error.NoTransport` (before sending anything) for a scheme this Context has
        no transport for, :class:`~coapio.error.RequestTimedOut` after the last retransmission,
        :class:`~coapio.error.ResetReceived`, :class:`~coapio.error.NetworkError` (ICMP errors, at once),
        :class:`~coapio.error.ResponseRejected`. ``progress(done, total)`` is called after every block of
        a block-wise transfer with the bytes moved so far and the body's size when known (the request's
        own, or the response's Size2). Once the server has acknowledged a request (empty ACK), its
        separate response may take as long as the server needs: bound the wait with your own scope.

        Cancellation is the timeout API (``with anyio.fail_after(5): await ctx.request(m)``): when the
        caller is cancelled, retransmission stops, the token is freed at once, and nothing more is sent
        for this request.
        """
        return await self._request(message.copy(mid=None), tuning, progress)

    async def _request(self, request: Message, tuning: TransportTuning | None,
                       progress: Callable[[int, int | None], None] | None = None) -> Message:
        """:meth:`request` for a message of our own (the shortcuts build one: no copy needed)."""
        _check_request(request)
        await anyio.lowlevel.checkpoint_if_cancelled()  # a cancelled caller sends nothing at all
        request.mid = None
        security = None if self._oscore is None else self._oscore.context_for_uri(request.uri)
        transport = await self._route(request)
        return await self._path.request(transport, request, tuning, progress, security)

    def stream(self, message: Message, *, buffer: int = 1,
               tuning: TransportTuning | None = None) -> _StreamOpener:
        """Every response to ``message``: ``async with ctx.stream(m) as responses: async for r in ...``.

        The general form of a request (what observations use; multicast will too): a plain request
        yields its one response, a GET/FETCH with Observe: 0 the first response and then each fresher
        notification (``buffer`` newest ones for a slow consumer). ``responses.poke()`` asks the peer
        for a sign of life. ``message`` is not changed. Entering sends the request (errors as for
        :meth:`request`); leaving the block is loss of interest: retransmission stops, the token is
        freed, and a registered observation is deregistered. Cancellation of the iteration loses nothing.
        """
        _check_request(message)
        return _StreamOpener(self, message.copy(mid=None), buffer, tuning)

    def observe(
        self,
        target: str | Message,
        *,
        passive: bool = False,
        buffer: int = 1,
        tuning: TransportTuning | None = None,
    ) -> Observation:
        """Observe a resource (RFC 7641): ``async with ctx.observe(uri) as obs: async for n in obs: ...``.

        ``target`` is a URI or a GET/FETCH message (not changed: Observe=0 is set on a copy). The
        iteration yields the first response and then every fresher notification; a slow consumer sees
        the newest ones (``buffer`` of them), never a backlog. It ends after a final response: one
        without Observe, an error code, or the server dropping the observation. The token manager
        re-registers when the newest notification's Max-Age ran out (RFC 7641 §3.3.1), and ``poke()``
        re-registers at once. Leaving the block deregisters on the wire: a GET with Observe=1 (or, with
        ``passive=True``, a Reset to the next notification). Cancellation: see :class:`Observation`.
        """
        request = Message(code=Code.GET, uri=target) if isinstance(target, str) else target.copy(mid=None)
        request.opt.observe = OBSERVE_REGISTER
        return Observation(self._open_stream, self._tokens, self._path, request, passive=passive,
                           buffer=buffer, tuning=tuning)

    async def _open_stream(self, stream: ResponseStream) -> None:
        if self._oscore is not None:
            stream.security = self._oscore.context_for_uri(stream.request.uri)
        transport = await self._route(stream.request)
        await stream._start(transport)

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
        return await self._request(message, tuning)

    async def delete(
        self,
        uri: str,
        *,
        con: bool = True,
        options: Iterable[tuple[int, OptionValue]] = (),
        tuning: TransportTuning | None = None,
    ) -> Message:
        """DELETE ``uri``. Errors and cancellation as for :meth:`request`."""
        return await self._request(self.build(Code.DELETE, uri, con=con, options=options), tuning)

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
        return await self._request(message, kwargs.get("tuning"))

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

    async def _route(self, request: Message) -> Transport:
        """Pick the transport of ``request``'s scheme and set ``request.remote`` to its Peer.

        Raises before anything is sent when no transport serves the scheme or can reach the host.
        """
        if self._task_group is None or not self._transports or self._tokens._closed:
            raise RuntimeError("the Context is not open (use `async with Context() as ctx`)")
        remote = request.remote
        if isinstance(remote, Peer):
            scheme, address = remote.scheme, remote.address
        elif isinstance(remote, tuple) and len(remote) >= 2:
            scheme, address = request.scheme, remote
        else:
            raise ValueError(f"no destination: message.remote is {remote!r} (set it, or pass uri=)")
        routes = self._routes
        if routes:
            cached = routes.get(remote)
            if cached is not None and not cached[0].closed:
                request.remote = cached[1]
                request.scheme = scheme
                return cached[0]
        if self._schemes is not None and scheme not in self._schemes:
            raise error.NoTransport(f"this Context sends requests over {', '.join(sorted(self._schemes))} "
                                    f"only; the {scheme}:// request was not sent")
        candidates = self._by_scheme.get(scheme)
        if not candidates and (scheme in _RELIABLE or scheme == "coaps"):
            candidates = await self._client_transport(scheme)
        if not candidates:
            if scheme in _NOT_YET:
                raise error.NoTransport(
                    f"{scheme}:// needs {_NOT_YET[scheme]}, which coapio does not implement yet; "
                    "the request was not sent (it never falls back to another transport)")
            known = "a CoAP scheme" if scheme in SCHEMES else "not a CoAP scheme"
            raise error.NoTransport(f"no transport for {scheme}:// ({known}) in this Context; it serves "
                                    f"{', '.join(sorted(self._by_scheme))}; the request was not sent")
        host, port = str(address[0]), int(address[1])
        for transport in candidates:
            peer = await transport.resolve(scheme, host, port)
            if peer is not None:
                if type(transport) is UDPTransport and isinstance(remote, Peer) and _is_ip_literal(host):
                    # A datagram route to an address is fixed for the socket's life: asked on every
                    # request, so kept (a name is resolved again each time; connections may close).
                    if len(routes) >= _MAX_ROUTES:
                        routes.clear()
                    routes[remote] = (transport, peer)
                request.remote = peer
                request.scheme = scheme
                return transport
        raise error.NetworkError(f"no transport of this Context can reach {host!r} (bound: {self._binds!r})")

    def _wake_transports(self) -> None:
        for transport in self._transports:
            wake = getattr(transport, "wake", None)
            if wake is not None:
                wake()


class _StreamOpener:
    """What :meth:`Context.stream` returns: entering it routes and sends the request."""

    def __init__(self, context: Context, request: Message, buffer: int, tuning: TransportTuning | None):
        self._context = context
        self._stream = ResponseStream(context._tokens, context._path, request, buffer=buffer, tuning=tuning)

    async def __aenter__(self) -> ResponseStream:
        """Route and send the request. Cancellation: nothing is sent if the caller is already
        cancelled; a cancelled route (name resolution, a connection being opened) sends nothing."""
        await anyio.lowlevel.checkpoint_if_cancelled()
        try:
            await self._context._open_stream(self._stream)
        except BaseException:
            self._stream.close()
            raise
        return self._stream

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._stream.close()


@functools.lru_cache(maxsize=1024)
def _is_ip_literal(host: str) -> bool:
    for family in (socket.AF_INET6, socket.AF_INET):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return True
    return False


def _parse_endpoint(item: Bind) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of a ``bind`` entry: a URI, or a UDP ``host:port`` / ``(host, port)``."""
    if isinstance(item, str) and "://" in item:
        scheme, rest = item.split("://", 1)
        scheme = scheme.lower()
        if scheme not in SCHEMES:
            raise ValueError(f"{scheme!r} is not a CoAP scheme in {item!r}")
        rest = rest.rstrip("/")
        if "/" in rest:
            raise ValueError(f"a bind URI names an address only, not a path: {item!r}")
        host, port = parse_bind(rest if rest else "::")
        if not (rest.rsplit("]", 1)[-1].count(":") == 1 or (":" in rest and not rest.startswith("["))):
            port = DEFAULT_PORTS[scheme]  # no port in the URI: the scheme's default
        return scheme, host, port
    host, port = parse_bind(item)
    return "coap", host, port


def _require_dtls() -> None:
    from ..protocol.dtls import available

    if not available():
        raise error.NoTransport("coaps:// needs pyOpenSSL: pip install 'coapio[dtls]'")


def _check_request(message: Message) -> None:
    if not message.code.is_request():
        raise ValueError(f"{message.code.dotted} is not a request code")
    if message.type not in (Type.CON, Type.NON):
        raise ValueError("a request is sent as CON or NON")


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterable[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
