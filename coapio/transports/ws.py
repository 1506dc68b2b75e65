"""CoAP over WebSockets (RFC 8323 §4): ``coap+ws`` and ``coaps+ws``, with wsproto over anyio streams.

The connection is a WebSocket at ``/.well-known/coap`` with the subprotocol ``coap``; each CoAP message is
one binary WebSocket message, framed without a length (§4.2). Everything above the link — CSM, Ping,
Release, Abort, the connection pool and its bounds — is the reliable transport's
(:mod:`coapio.transports.tcp`). wsproto is an optional dependency: ``pip install 'coapio[ws]'``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import anyio
import anyio.abc

from ..error import NetworkError
from .tcp import Link, ReliableTransport

try:
    import wsproto
    import wsproto.connection
    import wsproto.events as ws_events
    import wsproto.utilities
except ImportError:  # pragma: no cover - exercised by the "missing extra" test in a subprocess
    wsproto = None  # type: ignore[assignment]

__all__ = ["WebSocketLink", "WebSocketTransport", "available"]

#: The resource a CoAP WebSocket is opened at, and its subprotocol (RFC 8323 §4.1, §11.4).
PATH = "/.well-known/coap"
SUBPROTOCOL = "coap"
_READ_SIZE = 65536


def available() -> bool:
    """Whether wsproto (the ``ws`` extra) is installed."""
    return wsproto is not None


class WebSocketLink(Link):
    """A WebSocket over a byte stream: one CoAP message per binary WebSocket message."""

    websocket = True

    def __init__(self, stream: anyio.abc.ByteStream, connection: Any, pending: list[bytes],
                 max_message_size: int):
        self.stream = stream
        self.ws = connection
        self._pending = pending  # messages that arrived with the handshake
        self._partial: list[bytes] = []
        self._partial_size = 0
        #: wsproto has no limit of its own: a message growing past this closes the connection (1009).
        self.max_message_size = max_message_size
        self._send_lock = anyio.Lock()  # the reader answers WebSocket pings while the writer writes
        self._open = True

    async def _write(self, data: bytes) -> None:
        async with self._send_lock:
            await self.stream.send(data)

    async def receive(self) -> list[bytes]:
        out: list[bytes]
        if self._pending:
            out, self._pending = self._pending, []
            return out
        while self._open:
            try:
                data: bytes | None = await self.stream.receive(_READ_SIZE)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                data = None
            try:
                self.ws.receive_data(data)
            except Exception:  # wsproto's own protocol errors: the connection is unusable
                self._open = False
                return []
            out = []
            for event in self.ws.events():
                if isinstance(event, ws_events.BytesMessage):
                    self._partial.append(bytes(event.data))
                    self._partial_size += len(event.data)
                    if self._partial_size > self.max_message_size:
                        await self._close(1009, "message too big for our Max-Message-Size")
                        return []
                    if event.message_finished:
                        out.append(b"".join(self._partial))
                        self._partial = []
                        self._partial_size = 0
                elif isinstance(event, ws_events.Ping):
                    await self._write(self.ws.send(event.response()))
                elif isinstance(event, ws_events.CloseConnection):
                    self._open = False
                    if self.ws.state is wsproto.connection.ConnectionState.REMOTE_CLOSING:
                        # Answer the peer's close (not an abrupt end, where wsproto has nothing to send).
                        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError,
                                                 OSError, wsproto.utilities.LocalProtocolError):
                            await self._write(self.ws.send(event.response()))
                    return out
                elif isinstance(event, ws_events.TextMessage):
                    # §4.2: CoAP messages are binary; a text message is a protocol error (1003).
                    await self._close(1003, "CoAP over WebSockets uses binary messages")
                    return []
            if data is None:
                self._open = False
                return out
            if out:
                return out
        return []

    async def send(self, chunks: list[bytes]) -> None:
        ws = self.ws
        if ws.state is not wsproto.connection.ConnectionState.OPEN:
            raise anyio.ClosedResourceError  # the WebSocket is closing: nothing more may be sent
        await self._write(b"".join(ws.send(ws_events.BytesMessage(data=chunk)) for chunk in chunks))

    async def _close(self, code: int, reason: str) -> None:
        if self._open and self.ws.state is wsproto.connection.ConnectionState.OPEN:
            self._open = False
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                await self._write(self.ws.send(ws_events.CloseConnection(code=code, reason=reason)))

    async def aclose(self) -> None:
        with anyio.move_on_after(1, shield=True):
            await self._close(1000, "")
            await self.stream.aclose()


async def _read_events(stream: anyio.abc.ByteStream, ws: Any) -> list[Any]:
    try:
        data = await stream.receive(_READ_SIZE)
    except anyio.EndOfStream:
        raise NetworkError("the peer closed the connection during the WebSocket handshake") from None
    try:
        ws.receive_data(data)
        return list(ws.events())
    except (wsproto.utilities.ProtocolError, UnicodeError) as e:  # bad HTTP, headers too large, ...
        raise NetworkError(f"bad WebSocket handshake: {e}") from None


async def client_handshake(stream: anyio.abc.ByteStream, host: str, max_message_size: int) -> WebSocketLink:
    """Open the WebSocket (RFC 6455 handshake) and check that the server speaks CoAP."""
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    await stream.send(ws.send(ws_events.Request(host=host, target=PATH, subprotocols=[SUBPROTOCOL])))
    while True:
        events = await _read_events(stream, ws)
        for i, event in enumerate(events):
            if isinstance(event, ws_events.AcceptConnection):
                if event.subprotocol != SUBPROTOCOL:
                    raise NetworkError(f"the WebSocket server at {host} did not accept the 'coap' "
                                       "subprotocol")
                return WebSocketLink(stream, ws, _messages(events[i + 1 :]), max_message_size)
            if isinstance(event, ws_events.RejectConnection):
                raise NetworkError(f"the WebSocket server at {host} refused {PATH} "
                                   f"(HTTP {event.status_code})")


def _messages(events: list[Any]) -> list[bytes]:
    """Whole binary messages among events that arrived together with the handshake."""
    out: list[bytes] = []
    partial: list[bytes] = []
    for event in events:
        if isinstance(event, ws_events.BytesMessage):
            partial.append(bytes(event.data))
            if event.message_finished:
                out.append(b"".join(partial))
                partial = []
    return out


async def server_handshake(stream: anyio.abc.ByteStream, max_message_size: int) -> WebSocketLink:
    """Accept a WebSocket at ``/.well-known/coap`` with the ``coap`` subprotocol; refuse anything else."""
    ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    while True:
        events = await _read_events(stream, ws)
        for i, event in enumerate(events):
            if isinstance(event, ws_events.Request):
                if event.target.split("?")[0] != PATH:
                    await stream.send(ws.send(ws_events.RejectConnection(status_code=404)))
                    raise NetworkError(f"WebSocket request for {event.target!r}, not {PATH}")
                if SUBPROTOCOL not in event.subprotocols:
                    await stream.send(ws.send(ws_events.RejectConnection(status_code=400)))
                    raise NetworkError("WebSocket request without the 'coap' subprotocol")
                await stream.send(ws.send(ws_events.AcceptConnection(subprotocol=SUBPROTOCOL)))
                return WebSocketLink(stream, ws, _messages(events[i + 1 :]), max_message_size)


class WebSocketTransport(ReliableTransport):
    """``coap+ws`` or ``coaps+ws``; arguments as for :class:`~coapio.transports.tcp.ReliableTransport`."""

    def __init__(self, scheme: str, *args: Any, **kwargs: Any):
        if wsproto is None:
            raise ImportError("CoAP over WebSockets needs wsproto: pip install 'coapio[ws]'")
        if scheme not in ("coap+ws", "coaps+ws"):
            raise ValueError(f"{scheme} is not a WebSocket scheme")
        super().__init__(scheme, *args, **kwargs)

    async def _wrap(self, stream: anyio.abc.ByteStream, *, server: bool, host: str | None) -> Link:
        limit = self.tuning.max_message_size
        if server:
            return await server_handshake(stream, limit)
        assert host is not None
        return await client_handshake(stream, host, limit)
