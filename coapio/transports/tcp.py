"""The reliable transports of RFC 8323: ``coap+tcp``, ``coaps+tcp`` (TLS), and the base of ``coap+ws``.

One :class:`ReliableTransport` serves one scheme: a listener task when it is bound (one task per accepted
connection), and a client connection pool keyed by (host, port), whose connections are opened on a
request's first use and closed after ``idle_timeout`` with nothing in flight. Each connection runs a
reader task, which feeds the sans-IO :class:`~coapio.protocol.reliable.Connection` and reports what it
yields to the runtime synchronously, and a writer task, which writes what the Connection queued and runs
its timers (the CSM deadline, Ping time-outs, idle closing). How bytes move — a TCP or TLS byte stream,
or WebSocket messages — is a :class:`Link`, so the WebSocket transport reuses all of this.

A closed connection ends every exchange on it: its pending requests fail with a clear
:class:`~coapio.error.NetworkError`, and the server Pipes of its requests lose interest (their producers
are cancelled), because the runtime hears ``peer_failed`` for the connection's Peer.
"""

from __future__ import annotations

import abc
import contextlib
import itertools
import logging
import math
import os
import socket
import ssl
import sys
from collections.abc import Mapping
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.streams.stapled
from anyio.streams.tls import TLSStream

from ..error import NetworkError, RequestTimedOut
from ..protocol._limits import LimitLog
from ..protocol.codes import Code, Type
from ..protocol.message import Message
from ..protocol.peer import Peer
from ..protocol.reliable import (
    AbortReceived,
    Connection,
    ConnectionClosed,
    CsmReceived,
    MessageReceived,
    PongReceived,
    ProtocolViolation,
    ReleaseReceived,
)
from ..protocol.tuning import TransportTuning
from .base import Transport, TransportEvents

__all__ = ["Link", "ReliableTransport", "SocketLink", "StreamLink"]

log = logging.getLogger(__name__)

_READ_SIZE = 8192  # bytes read per wake-up: bounds the work one batch does before others run


class Link(abc.ABC):
    """How one connection's bytes move: a byte stream (TCP, TLS) or WebSocket messages."""

    #: RFC 8323 §4: over WebSockets a message is one WebSocket message, framed without a length.
    websocket = False

    @abc.abstractmethod
    async def receive(self) -> list[bytes]:
        """The next bytes (a byte stream) or whole messages (WebSockets); [] once the peer closed."""

    @abc.abstractmethod
    async def send(self, chunks: list[bytes]) -> None:
        """Write ``chunks`` in order (each one message over WebSockets)."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the connection (gracefully where the protocol has a way)."""


class StreamLink(Link):
    """A TCP or TLS byte stream."""

    def __init__(self, stream: anyio.abc.ByteStream):
        self.stream = stream

    async def receive(self) -> list[bytes]:
        try:
            return [await self.stream.receive(_READ_SIZE)]
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError,
                ssl.SSLError):
            return []

    async def send(self, chunks: list[bytes]) -> None:
        await self.stream.send(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    async def aclose(self) -> None:
        with anyio.move_on_after(1, shield=True):  # a TLS close_notify must not hold the exit up
            await self.stream.aclose()


class SocketLink(Link):
    """A plain TCP connection, read and written on its non-blocking socket directly.

    anyio's stream adds a scheduling round to every receive and send; on a busy connection that costs as
    much as the CoAP work of the messages it carries, so plain TCP skips it (TLS and WebSockets keep
    their streams). The stream still owns the socket and closes it.
    """

    def __init__(self, stream: anyio.abc.SocketStream, send_timeout: float = math.inf):
        self.stream = stream
        self.sock: socket.socket = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        self.send_timeout = send_timeout  # the longest a write may wait for the peer to read

    async def receive(self) -> list[bytes]:
        sock = self.sock
        while True:
            try:
                data = sock.recv(_READ_SIZE)
            except BlockingIOError:
                try:
                    await anyio.wait_readable(sock)
                except (anyio.ClosedResourceError, OSError):
                    return []
                continue
            except OSError:
                return []
            return [data] if data else []

    async def send(self, chunks: list[bytes]) -> None:
        data = memoryview(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        sock = self.sock
        while data:
            try:
                sent = sock.send(data)
            except BlockingIOError:
                with anyio.fail_after(self.send_timeout):
                    await anyio.wait_writable(sock)
                continue
            data = data[sent:]
        await anyio.lowlevel.checkpoint()  # a writer that never blocks must still let others run

    async def aclose(self) -> None:
        with anyio.move_on_after(1, shield=True):
            await self.stream.aclose()


def _running_trio() -> bool:
    """Whether this is a trio run: only there may the link use the socket itself (asyncio's transport
    reads the socket on its own, and anyio hands out a wrapper without ``recv``)."""
    trio = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


def _address(stream: anyio.abc.ByteStream, attribute: Any) -> tuple[Any, ...]:
    try:
        address = stream.extra(attribute)
    except anyio.TypedAttributeLookupError:
        return ("", 0)
    return tuple(address) if isinstance(address, tuple) else (str(address), 0)


class _Conn:
    """One connection: its sans-IO state, its link, its Peer, and what is in flight on it."""

    _ids = itertools.count(1)

    def __init__(self, transport: ReliableTransport, link: Link, proto: Connection,
                 address: tuple[Any, ...], local: tuple[Any, ...], client: bool):
        self.transport = transport
        self.link = link
        self.proto = proto
        self.client = client
        self.id = next(self._ids)
        self.peer = Peer(transport.scheme, address[:2], self)
        self.local = local[:2]
        self.closed = False
        self.released = False  # the peer sent a Release: finish what is in flight, start nothing new
        self.settled = anyio.Event()  # the peer's CSM arrived (its limits and BERT are known), or the end
        self.outstanding: set[bytes] = set()  # tokens of our requests in flight (client side)
        self.pings: dict[bytes, tuple[float, Message]] = {}  # token -> (deadline, the ping's Message)
        self.answered: set[int] = set()  # id() of the requests answered in the current batch
        self.last_active = anyio.current_time()
        self._wakeup = anyio.Event()
        self._sending = False  # a task is in link.send: nobody else may write now
        self._send_waiter: anyio.Event | None = None  # the reader, waiting for a write to finish
        self._broken = False  # a send failed or was cut short: the stream may hold half a frame
        self._finishing = False  # the reader is done: the writer sends what is queued, then stops
        self._quiet: anyio.Event | None = None  # set by the writer once nothing is queued (drain)
        self._drained = anyio.Event()
        self._scope: anyio.CancelScope | None = None

    def __repr__(self) -> str:
        side = "to" if self.client else "from"
        return f"<connection {self.id} {side} {self.peer}>"

    def wake(self) -> None:
        self._wakeup.set()

    def close(self) -> None:
        """End the connection's tasks (the reader reports the loss to the runtime on its way out)."""
        if self._scope is not None:
            self._scope.cancel()

    async def run(self, events: TransportEvents) -> None:
        """The reader (this task) and the writer; returns when the connection is over.

        Cancellation (the Context's exit) closes the connection; its exchanges fail either way.
        """
        try:
            with anyio.CancelScope() as self._scope:
                try:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._writer, events)
                        await self._reader(events)
                        # Let the writer send what is queued (a 7.05 Abort, a Release), then stop it.
                        self._finishing = True
                        self.wake()
                        with anyio.move_on_after(1):
                            await self._drained.wait()
                        tg.cancel_scope.cancel()
                except Exception as e:  # one connection's failure is its own
                    # A bug of ours, or a link that failed in a way we did not foresee, costs this
                    # connection, never the transport and every other connection with it.
                    log.exception("%r failed: %s", self, e)
        finally:
            self.closed = True
            self.settled.set()
            self.transport._forget(self)
            with anyio.CancelScope(shield=True):
                if not self._sending and not self._broken:
                    # What is still queued goes out first: on the Context's exit that is the token
                    # manager's deregistrations, which would otherwise be lost.
                    with anyio.move_on_after(0.5):
                        out = self.proto.data_to_send()
                        if out:
                            with contextlib.suppress(Exception):
                                await self.link.send(out)
                await self.link.aclose()
            side = "to" if self.client else "from"
            events.peer_failed(self.peer, NetworkError(f"the connection {side} {self.peer} closed"))

    async def _reader(self, events: TransportEvents) -> None:
        proto = self.proto
        while not proto.closed:
            chunks = await self.link.receive()
            if not chunks:
                return
            now = anyio.current_time()
            self.last_active = now
            for data in chunks:
                for event in proto.receive(data, now):
                    self._dispatch(event, events, now)
                if proto.closed:
                    break
            self.answered.clear()
            if self._sending:
                # Backpressure: a peer that does not read must not make us queue its answers without
                # bound; read no more until the write in progress is done.
                waiter = self._send_waiter = anyio.Event()
                await waiter.wait()
            # What the batch queued (responses, a Pong) goes out from here: handing it to the writer
            # would cost a task switch per batch.
            if await self._write() is None:
                await anyio.lowlevel.checkpoint()  # a flood of input must not starve the other tasks

    async def _write(self) -> bool | None:
        """Write what the Connection queued: None if nothing was, False if the link broke (the
        connection is closed then), True once written."""
        out = self.proto.data_to_send()
        if not out:
            return None
        self._sending = True
        self.last_active = anyio.current_time()
        link = self.link
        try:
            # A peer that stops reading must not pin the connection (and what is queued) forever. A
            # socket link applies the limit where it waits; a cancel scope per write would cost more
            # than the messages it carries.
            if isinstance(link, SocketLink):
                await link.send(out)
            else:
                with anyio.fail_after(self.transport.tuning.idle_timeout):
                    await link.send(out)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError,
                ssl.SSLError, TimeoutError):
            self._broken = True
            self.close()
            return False
        finally:
            self._sending = False
            waiter = self._send_waiter
            if waiter is not None:
                self._send_waiter = None
                waiter.set()
        self.wake()  # more may have been queued meanwhile; the writer looks
        return True

    def _dispatch(self, event: object, events: TransportEvents, now: float) -> None:
        if isinstance(event, MessageReceived):
            message = event.message
            message.remote = self.peer
            message.scheme = self.transport.scheme
            message.local = self.local
            if message.code.is_request():
                events.request_received(self.transport, message, now)
            elif message.code.is_response():
                if message.opt.observe is None:
                    self.outstanding.discard(message.token)
                events.response_received(message, now)
                if self.released and not self.outstanding:
                    self.close()  # the peer released the connection and nothing is left in flight
        elif isinstance(event, CsmReceived):
            self.settled.set()
        elif isinstance(event, PongReceived):
            ping = self.pings.pop(event.token, None)
            if ping is not None:
                events.delivered(ping[1], now)  # a sign of life
        elif isinstance(event, ReleaseReceived):
            # RFC 8323 §5.5: no new requests on this connection; those in flight may still be answered.
            self.released = True
            self.transport._forget(self, pool_only=True)
            log.info("%r released by the peer: %s", self, event)
            if not self.outstanding:
                self.close()
        elif isinstance(event, AbortReceived | ProtocolViolation):
            log.info("%r: %s", self, event)

    async def _writer(self, events: TransportEvents) -> None:
        proto = self.proto
        tuning = self.transport.tuning
        while True:
            if not self._sending:
                wrote = await self._write()
                if wrote is False:
                    return
                if wrote:
                    continue
            if self._quiet is not None and not self._sending and not proto.has_data_to_send():
                self._quiet.set()
            if self._finishing or proto.closed:
                self._drained.set()
                if proto.closed:
                    self.close()  # we released or aborted: nothing more to read either
                return
            deadline = self._next_deadline(tuning)
            with anyio.CancelScope(deadline=math.inf if deadline is None else deadline):
                await self._wakeup.wait()
            if self._wakeup.is_set():
                self._wakeup = anyio.Event()
            now = anyio.current_time()
            for event in proto.on_timer(now):
                self._dispatch(event, events, now)
            for token, (due, ping) in list(self.pings.items()):
                if due <= now:
                    del self.pings[token]
                    events.failed(ping, RequestTimedOut(f"{self.peer} did not answer a ping"), now)
            if (self.client and not self.outstanding and not self.pings
                    and now - self.last_active >= tuning.idle_timeout):
                proto.release("idle")  # a pooled connection nobody uses: close it politely

    def _next_deadline(self, tuning: TransportTuning) -> float | None:
        deadlines = [d for d in (self.proto.next_deadline(),) if d is not None]
        deadlines.extend(due for due, _ in self.pings.values())
        if self.client and not self.outstanding:
            deadlines.append(self.last_active + tuning.idle_timeout)
        return min(deadlines) if deadlines else None


class ReliableTransport(Transport):
    """``coap+tcp`` or ``coaps+tcp`` (with ``server_ssl``/``client_ssl``); see the module docstring.

    ``listen`` is the (host, port) to accept connections on (None: client only). ``server_ssl`` is
    required to listen on ``coaps+tcp``; ``client_ssl`` defaults to verifying servers against the
    system's trust store (:func:`coapio.transports.tls.client_context`).
    """

    default_port = 5683

    def __init__(self, scheme: str, tuning: TransportTuning, *, listen: tuple[str, int] | None = None,
                 server_ssl: ssl.SSLContext | None = None, client_ssl: ssl.SSLContext | None = None):
        if scheme not in ("coap+tcp", "coaps+tcp", "coap+ws", "coaps+ws"):
            raise ValueError(f"{scheme} is not an RFC 8323 scheme")
        self.scheme = scheme
        self.schemes = frozenset({scheme})
        self.secure = scheme.startswith("coaps")
        if self.secure and listen is not None and server_ssl is None:
            raise ValueError(f"listening on {scheme} needs a certificate (server_ssl)")
        self.tuning = tuning
        self._listen = listen
        self._server_ssl = server_ssl
        self._client_ssl = client_ssl
        self._events: TransportEvents | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._closed = False
        self._local: tuple[str, int] | None = None
        self._pool: dict[tuple[str, int], _Conn] = {}
        self._connecting: dict[tuple[str, int], anyio.Event] = {}
        self._conns: set[_Conn] = set()
        self._per_ip: dict[str, int] = {}
        self.limits = LimitLog(log, tuning.limit_log_interval)

    def __repr__(self) -> str:
        where = f" on {self._local}" if self._local else ""
        return f"<ReliableTransport {self.scheme}{where}>"

    # --- the socket tasks ----------------------------------------------------------------------------

    async def run(self, events: TransportEvents, *,
                  task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen (when bound) and serve connections until cancelled; every connection is closed on
        the way out and its exchanges fail."""
        self._events = events
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                if self._listen is not None:
                    host, port = self._listen
                    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
                    sockname = listener.extra(anyio.abc.SocketAttribute.local_address)
                    self._local = (str(sockname[0]), int(sockname[1]))
                    tg.start_soon(self._accept, listener)
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._closed = True

    async def _accept(self, listener: anyio.streams.stapled.MultiListener[anyio.abc.SocketStream]) -> None:
        async with listener, anyio.create_task_group() as tg:
            for sub in listener.listeners:
                tg.start_soon(self._accept_on, sub)

    async def _accept_on(self, listener: anyio.abc.Listener[anyio.abc.SocketStream]) -> None:
        """Accept until cancelled. An accept that fails (no file descriptors left: EMFILE, ENFILE,
        ENOBUFS) costs that connection only; the loop pauses a moment and goes on."""
        assert self._tg is not None
        accept = listener.accept  # type: ignore[attr-defined]
        while True:
            try:
                stream = await accept()
            except (anyio.BrokenResourceError, OSError) as e:
                self.limits.hit("accept", anyio.current_time(), "accept failed: %s", e)
                await anyio.sleep(0.1)
                continue
            self._tg.start_soon(self._serve_connection, stream)

    async def _serve_connection(self, stream: anyio.abc.SocketStream) -> None:
        """One accepted connection, from its handshakes to its end. Whatever goes wrong here costs this
        connection only: nothing a peer sends may end the transport (and the Context with it)."""
        try:
            await self._serve_connection_inner(stream)
        except Exception as e:  # a bug of ours or a library's error we did not foresee
            log.exception("connection from %s failed: %s",
                          _address(stream, anyio.abc.SocketAttribute.remote_address), e)
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def _serve_connection_inner(self, stream: anyio.abc.SocketStream) -> None:
        ip = str(_address(stream, anyio.abc.SocketAttribute.remote_address)[0])
        tuning = self.tuning
        # Connections still in their handshakes count too (_per_ip has them; _conns not yet).
        if (sum(self._per_ip.values()) >= tuning.max_connections
                or self._per_ip.get(ip, 0) >= tuning.max_connections_per_peer):
            self.limits.hit("max_connections", anyio.current_time(), "connection from %s refused", ip)
            await stream.aclose()
            return
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        try:
            with anyio.fail_after(tuning.handshake_timeout):
                link = await self._server_link(stream)
        except Exception as e:  # a malformed TLS or HTTP handshake is that peer's failure, no more
            log.debug("handshake from %s failed: %s", ip, e)
            self._release_ip(ip)
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            return
        conn = self._new_conn(link, stream, client=False)
        try:
            assert self._events is not None
            await conn.run(self._events)
        finally:
            self._release_ip(ip)

    def _release_ip(self, ip: str) -> None:
        left = self._per_ip.get(ip, 1) - 1
        if left > 0:
            self._per_ip[ip] = left
        else:
            self._per_ip.pop(ip, None)

    async def _server_link(self, stream: anyio.abc.SocketStream) -> Link:
        """The link of an accepted connection, after its TLS (and, for WebSockets, HTTP) handshake."""
        byte_stream: anyio.abc.ByteStream = stream
        if self.secure:
            byte_stream = await TLSStream.wrap(stream, server_side=True, ssl_context=self._server_ssl,
                                               standard_compatible=False)
        return await self._wrap(byte_stream, server=True, host=None)

    async def _wrap(self, stream: anyio.abc.ByteStream, *, server: bool, host: str | None) -> Link:
        """The link over an open byte stream; the WebSocket transport adds its handshake here."""
        if isinstance(stream, anyio.abc.SocketStream) and _running_trio():
            return SocketLink(stream, self.tuning.idle_timeout)
        return StreamLink(stream)

    def _new_conn(self, link: Link, stream: anyio.abc.ByteStream, *, client: bool) -> _Conn:
        now = anyio.current_time()
        proto = Connection(client=client, websocket=link.websocket,
                           max_message_size=self.tuning.max_message_size,
                           block_wise=self.tuning.block_szx == 6,  # with a size over 1152: BERT
                           csm_timeout=self.tuning.handshake_timeout, now=now)
        remote = _address(stream, anyio.abc.SocketAttribute.remote_address)
        local = _address(stream, anyio.abc.SocketAttribute.local_address)
        conn = _Conn(self, link, proto, remote, local, client)
        self._conns.add(conn)
        return conn

    async def drain(self) -> None:
        """Until every connection has written what is queued (the Context's exit: deregistrations)."""
        for conn in list(self._conns):
            if conn.closed or (not conn._sending and not conn.proto.has_data_to_send()):
                continue
            quiet = conn._quiet = anyio.Event()
            conn.wake()
            await quiet.wait()

    def _forget(self, conn: _Conn, *, pool_only: bool = False) -> None:
        if not pool_only:
            self._conns.discard(conn)
        for key, pooled in list(self._pool.items()):
            if pooled is conn:
                del self._pool[key]

    # --- the client side -----------------------------------------------------------------------------

    async def resolve(self, scheme: str, host: str, port: int) -> Peer | None:
        """The pooled connection to ``host:port`` (opened on first use, with its TLS and WebSocket
        handshakes), once the peer's CSM arrived: a request's size and block-wise transfer (BERT)
        follow it. Cancellation abandons an opening connection. Raises NetworkError when it fails."""
        if scheme != self.scheme:
            return None
        key = (host, port)
        while True:
            pooled = self._pool.get(key)
            if pooled is not None and not pooled.closed and not pooled.proto.closed and not pooled.released:
                if not pooled.settled.is_set():
                    await self._settle(pooled)
                return pooled.peer
            pending = self._connecting.get(key)
            if pending is None:
                break
            await pending.wait()  # another request is opening it: share that connection
        if len(self._conns) >= self.tuning.max_connections:
            raise NetworkError(f"{len(self._conns)} connections are open (max_connections)")
        assert self._tg is not None
        done = self._connecting[key] = anyio.Event()
        try:
            conn: _Conn = await self._tg.start(self._client_connection, host, port)
        finally:
            del self._connecting[key]
            done.set()
        self._pool[key] = conn
        await self._settle(conn)
        peer: Peer = conn.peer
        return peer

    @staticmethod
    async def _settle(conn: _Conn) -> None:
        """Wait for the peer's CSM on ``conn`` (bounded by the connection's CSM deadline)."""
        await conn.settled.wait()
        if conn.closed or conn.proto.closed:
            raise NetworkError(f"the connection to {conn.peer} closed before its CSM arrived")

    async def _client_connection(self, host: str, port: int, *,
                                 task_status: anyio.abc.TaskStatus[_Conn]) -> None:
        try:
            with anyio.fail_after(self.tuning.handshake_timeout):
                if self.secure:
                    context = self._client_ssl
                    if context is None:
                        from .tls import client_context

                        context = self._client_ssl = client_context(websocket=self.scheme.endswith("ws"))
                    stream: anyio.abc.ByteStream = await anyio.connect_tcp(
                        host, port, ssl_context=context, tls_standard_compatible=False, tls_hostname=host)
                else:
                    stream = await anyio.connect_tcp(host, port)
                link = await self._wrap(stream, server=False, host=host)
        except TimeoutError:
            raise NetworkError(f"no connection to {self.scheme}://{_hostport(host, port)} within "
                               f"{self.tuning.handshake_timeout} s (handshake_timeout)") from None
        except ssl.SSLCertVerificationError as e:
            raise NetworkError(f"the TLS certificate of {_hostport(host, port)} was refused: "
                               f"{e.verify_message or e.reason}") from None
        except ssl.SSLError as e:
            raise NetworkError(f"TLS handshake with {_hostport(host, port)} failed: {e.reason or e}"
                               ) from None
        except (anyio.EndOfStream, anyio.BrokenResourceError) as e:
            raise NetworkError(f"{_hostport(host, port)} closed the connection during the handshake "
                               f"({type(e).__name__})") from None
        except OSError as e:
            cause = _first_os_error(e)
            reason = os.strerror(cause.errno) if cause.errno else str(cause)
            where = f"cannot connect to {self.scheme}://{_hostport(host, port)}: {reason}"
            if cause.errno is None:
                raise NetworkError(where) from None
            raise NetworkError(cause.errno, where) from None
        conn = self._new_conn(link, stream, client=True)
        task_status.started(conn)
        assert self._events is not None
        await conn.run(self._events)

    # --- what the runtime asks (from any task) -------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def local_address(self) -> tuple[str, int] | None:
        return self._local

    def _conn_of(self, message: Message) -> _Conn:
        peer = message.remote
        conn = peer.connection if isinstance(peer, Peer) else None
        if not isinstance(conn, _Conn) or conn.transport is not self:
            raise ValueError(f"{peer!r} is not a peer of {self!r}")
        if conn.closed or conn.proto.closed:
            raise NetworkError(f"the connection to {peer} is closed")
        return conn

    def send(self, message: Message, tuning: TransportTuning | None = None) -> None:
        conn = self._conn_of(message)
        is_request = message.code.is_request()
        if is_request and len(conn.outstanding) >= self.tuning.max_pending_per_connection:
            raise NetworkError(f"{len(conn.outstanding)} requests are pending on {conn!r} "
                               "(max_pending_per_connection)")
        conn.proto.send(message)
        if is_request:
            conn.outstanding.add(message.token)
        conn.wake()
        if message.type is Type.CON and not is_request and self._events is not None:
            # A reliable transport delivers what it accepted: a confirmable notification needs no ACK.
            self._events.delivered(message, anyio.current_time())

    def respond(self, request: Message, response: Message | None, now: float, *,
                unverified: bool = False) -> None:
        peer = request.remote
        conn = peer.connection if isinstance(peer, Peer) else None
        if not isinstance(conn, _Conn) or conn.transport is not self:
            raise ValueError(f"{peer!r} is not a peer of {self!r}")
        conn.answered.add(id(request))
        if conn.closed or conn.proto.closed:
            # The client is gone (its Pipes already lost interest): a late answer has nowhere to go.
            log.debug("dropping a response to %r: the connection is closed", request)
            return
        if response is None:
            return  # No-Response: nothing to acknowledge on a reliable transport
        response.token = request.token
        response.remote = request.remote
        try:
            conn.proto.send(response)
        except ConnectionClosed:
            log.debug("dropping a response to %r: the connection closed", request)
            return
        conn.wake()

    def answered(self, request: Message) -> bool:
        peer = request.remote
        conn = peer.connection if isinstance(peer, Peer) else None
        return isinstance(conn, _Conn) and id(request) in conn.answered

    def cancel(self, message: Message) -> None:
        peer = message.remote
        conn = peer.connection if isinstance(peer, Peer) else None
        if isinstance(conn, _Conn):
            conn.outstanding.discard(message.token)

    def bert_message_size(self, peer: Peer) -> int | None:
        """The smaller of the peer's Max-Message-Size and ours, when both CSMs announced BERT: blocks as
        large as the peer allows, but never larger than we take ourselves, so that one block does not
        hold the connection up for long."""
        conn = peer.connection if isinstance(peer, Peer) else None
        if not isinstance(conn, _Conn) or not conn.proto.bert:
            return None
        return min(conn.proto.peer_max_message_size, self.tuning.max_message_size)

    def ping(self, peer: Peer) -> Message:
        conn = peer.connection
        assert isinstance(conn, _Conn)
        token = os.urandom(4)
        ping = Message(Type.CON, Code.PING, token=token, remote=peer)
        if conn.closed or conn.proto.closed:
            raise NetworkError(f"the connection to {peer} is closed")
        conn.pings[token] = (anyio.current_time() + self.tuning.ping_timeout, ping)
        conn.proto.ping(token)
        conn.wake()
        return ping

    @property
    def open_exchanges(self) -> int:
        return sum(len(conn.outstanding) for conn in self._conns)

    @property
    def connections(self) -> int:
        """Connections open now (accepted and pooled)."""
        return len(self._conns)

    @property
    def limit_hits(self) -> Mapping[str, int]:
        return self.limits.hits


def _first_os_error(error: OSError) -> OSError:
    """The OSError that says why: anyio's "All connection attempts failed" keeps the real ones (one per
    address tried) in its cause."""
    cause = error.__cause__
    if isinstance(cause, BaseExceptionGroup):
        for inner in cause.exceptions:
            if isinstance(inner, OSError):
                return inner
    if isinstance(cause, OSError):
        return cause
    return error


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

