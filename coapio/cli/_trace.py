"""A wire trace for the tools' ``-v``/``-vv``: every datagram a context sends or receives, logged.

The runtime keeps its hot path free of logging, so the tools watch the sockets instead: each endpoint's
socket is wrapped in :class:`TracingSocket`, which decodes what passes and logs it on the
``coapio.wire`` logger. It is installed only when asked for, so a server without ``-v`` pays nothing.
Requests and responses are logged at INFO (a 5.xx response at WARNING), empty messages and the options
of every message at DEBUG; a CON sent again with the same message ID is marked as a retransmission.
"""

from __future__ import annotations

import logging
import socket
from collections import OrderedDict
from typing import Any

from ._common import format_address, option_lines

__all__ = ["TracingSocket", "install_tracer"]

log = logging.getLogger("coapio.wire")

_REMEMBERED = 4096  # message IDs remembered per direction to recognize retransmissions


class TracingSocket:
    """A socket that logs every datagram it passes; everything else goes to the wrapped socket."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._sent: OrderedDict[tuple[Any, int], int] = OrderedDict()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def fileno(self) -> int:
        return self._sock.fileno()

    def sendto(self, data: bytes, address: Any) -> int:
        sent = self._sock.sendto(data, address)
        self._note("sent", data, address)
        return sent

    def sendmsg(self, buffers: Any, ancdata: Any = (), flags: int = 0, address: Any = None) -> int:
        sent = self._sock.sendmsg(buffers, ancdata, flags, address)
        self._note("sent", b"".join(bytes(b) for b in buffers), address)
        return sent

    def recvfrom(self, size: int, flags: int = 0) -> tuple[bytes, Any]:
        data, address = self._sock.recvfrom(size, flags)
        self._note("received", data, address)
        return data, address

    def recvmsg(self, size: int, ancsize: int = 0, flags: int = 0) -> tuple[bytes, Any, int, Any]:
        result = self._sock.recvmsg(size, ancsize, flags)
        if not flags & getattr(socket, "MSG_ERRQUEUE", 0):  # an ICMP report, not a datagram
            self._note("received", result[0], result[3])
        return result

    def _note(self, direction: str, data: bytes, address: Any) -> None:
        from ..error import MessageFormatError
        from ..protocol.codes import Type
        from ..protocol.message import Message

        peer = format_address(address)
        way = "to" if direction == "sent" else "from"
        try:
            message = Message.decode(data)
        except MessageFormatError as e:
            log.info("%s %d bytes %s %s: not a CoAP message (%s)", direction, len(data), way, peer, e)
            return
        code = message.code
        again = ""
        if direction == "sent" and message.type is Type.CON and message.mid is not None:
            key = (address, message.mid)
            count = self._sent.get(key)
            if count is not None:
                self._sent[key] = count + 1
                again = f" (retransmission {count})"
            else:
                self._sent[key] = 1
                if len(self._sent) > _REMEMBERED:
                    self._sent.popitem(last=False)
        if code.is_request():
            what = f"{code.name} {_path(message)}"
        elif int(code):
            what = str(code)
        else:
            what = "empty"
        level = logging.DEBUG if not int(code) else logging.WARNING if code.code_class == 5 else logging.INFO
        if not log.isEnabledFor(level):
            return
        size = f", {len(message.payload)} bytes" if message.payload else ""
        log.log(level, "%s %s %s %s: %s mid=%s token=%s%s%s", direction, message.type.name, way, peer, what,
                message.mid, message.token.hex() or "-", size, again)
        if log.isEnabledFor(logging.DEBUG) and len(message.opt):
            log.debug("  options: %s", ", ".join(option_lines(message)))


def _path(message: Any) -> str:
    path = "/" + "/".join(message.opt.uri_path)
    query = message.opt.uri_query
    return path + ("?" + "&".join(query) if query else "")


def install_tracer(context: Any) -> bool:
    """Wrap the sockets of an open ``context``'s UDP transports; False if it has none to wrap."""
    endpoints = [t for t in getattr(context, "transports", ()) if "coap" in t.schemes]
    if not endpoints:
        return False
    for endpoint in endpoints:
        sock = getattr(endpoint, "sock", None)
        if sock is None:
            return False
        if not isinstance(sock, TracingSocket):
            endpoint.sock = TracingSocket(sock)
    return True
