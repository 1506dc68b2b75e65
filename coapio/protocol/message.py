"""The CoAP message value and its UDP framing (RFC 7252 §3).

Decoding is strict: anything RFC 7252 calls a message format error raises
:class:`~coapio.error.MessageFormatError` carrying what the receiver must do about it (§4.2: reset a CON;
otherwise drop silently). The decoder is on every server's hot path, so it works on indices into one
``bytes`` object and creates no intermediate objects besides the option value slices.
"""

from __future__ import annotations

import functools
from typing import Any

import attrs

from ..error import MessageFormatError, WireAction
from .codes import Code, Type
from .options import Options
from .peer import Peer
from .security import Security

__all__ = ["Message", "Remote"]

#: What the sans-IO layers key a peer by: the runtime gives them :class:`~coapio.protocol.peer.Peer`
#: values; to the layers it is any hashable (tests use plain address tuples).
Remote = Any

_CODES = Code._value2member_map_
_TYPES = (Type.CON, Type.NON, Type.ACK, Type.RST)
_RESET, _DROP = WireAction.RESET, WireAction.DROP


@functools.lru_cache(maxsize=1024)  # Message(uri=...) on every request: one Peer per destination
def _peer(scheme: str, host: str, port: int) -> Peer:
    return Peer(scheme, (host, port))


@attrs.define(slots=True, eq=True, init=False, repr=False)
class Message:
    """One CoAP message: type, code, message ID, token, options and payload.

    ``mid`` is None until the message layer allocates an ID. ``remote`` is the :class:`Peer` (destination
    of an outgoing message, source of a received one); it is not part of equality, which compares what
    is on the wire. ``Message(uri=...)`` fills Uri-Host/Uri-Path/Uri-Query and ``remote`` from a URI.
    """

    type: Type
    code: Code
    mid: int | None
    token: bytes
    opt: Options
    payload: bytes
    remote: Remote = attrs.field(eq=False)
    #: The URI scheme the message travels by; sets ``uri``'s scheme and default port.
    scheme: str = attrs.field(eq=False)
    #: For a request a server received: the local address it was sent to (its URI's default host).
    local: Remote = attrs.field(eq=False)
    #: For a received message: what authenticated it (OSCORE, a DTLS session), or None if nothing did.
    security: Security | None = attrs.field(eq=False)

    def __init__(
        self,
        type: Type = Type.CON,
        code: Code = Code.EMPTY,
        mid: int | None = None,
        token: bytes = b"",
        opt: Options | None = None,
        payload: bytes = b"",
        *,
        remote: Remote = None,
        uri: str | None = None,
        scheme: str = "coap",
    ):
        self.type = type
        self.code = code
        self.mid = mid
        self.token = token
        self.opt = Options() if opt is None else opt
        self.payload = payload
        self.remote = remote
        self.scheme = scheme
        self.local = None
        self.security = None
        if uri is not None:
            self.set_uri(uri)

    #: Always 1: RFC 7252 defines no other version, and the decoder drops every other.
    version = 1

    # --- convenience ------------------------------------------------------------------------------

    def __repr__(self) -> str:
        mid = "-" if self.mid is None else self.mid
        extra = f" {len(self.payload)}B" if self.payload else ""
        return (
            f"<Message {self.type.name} {self.code.dotted} {self.code.name} mid={mid} "
            f"token={self.token.hex() or '-'} {self.opt!r}{extra} remote={self.remote!r}>"
        )

    def copy(self, **changes: Any) -> Message:
        """A copy with fresh options (so they can be changed independently) and ``changes`` applied."""
        new = Message(
            self.type, self.code, self.mid, self.token, self.opt.copy(), self.payload,
            remote=self.remote, scheme=self.scheme,
        )
        new.local = self.local
        new.security = self.security
        for name, value in changes.items():
            setattr(new, name, value)
        return new

    def set_uri(self, uri: str) -> None:
        """Set the destination and the Uri-* options from ``uri`` (RFC 7252 §6.4).

        ``remote`` becomes ``Peer(scheme, (host, port))`` with the host as written in the URI (a name
        still to be resolved, or an IP literal without brackets); the Context resolves it into the form
        its transport reports. Uri-Host is sent only for names, and Uri-Port never, because the request
        goes to the URI's own port.
        """
        from .uri import split_uri, uri_options

        parts = split_uri(uri)
        uri_host, uri_port = uri_options(parts)
        self.scheme = parts.scheme
        self.remote = _peer(parts.scheme, parts.host, parts.port)
        opt = self.opt
        opt.uri_host = uri_host
        opt.uri_port = uri_port
        opt.uri_path = parts.path
        opt.uri_query = parts.query

    @property
    def uri(self) -> str:
        """The request's URI composed back from its options (RFC 7252 §6.5).

        Without Uri-Host / Uri-Port, host and port are those of the request's destination: ``local``
        for a request this endpoint received, ``remote`` for one it sends.
        """
        from .uri import compose_uri

        host = self.opt.uri_host
        port = self.opt.uri_port
        destination = self.local if self.local is not None else self.remote
        if isinstance(destination, Peer):
            destination = destination.address
        if (host is None or port is None) and isinstance(destination, tuple) and len(destination) >= 2:
            if host is None:
                host = str(destination[0])
                if host.startswith("::ffff:") and "." in host:
                    host = host[7:]  # an IPv4 peer of a dual-stack socket
            if port is None:
                port = int(destination[1])
        if host is None:
            raise ValueError("the message has neither Uri-Host nor an address to take the host from")
        return compose_uri(
            scheme=self.scheme, host=host, port=port,
            path=self.opt.uri_path, query=self.opt.uri_query,
        )

    @property
    def wire_size(self) -> int:
        """The size of this message encoded for UDP, computed without encoding it."""
        size = 4 + len(self.token)
        last = 0
        for number, value in self.opt:
            delta, length = number - last, len(value)
            last = number
            size += 1 + length + (delta >= 13) + (delta >= 269) + (length >= 13) + (length >= 269)
        if self.payload:
            size += 1 + len(self.payload)
        return size

    # --- UDP framing ------------------------------------------------------------------------------

    @classmethod
    def decode(cls, data: bytes, remote: Remote = None) -> Message:
        """Parse one datagram; raise :class:`MessageFormatError` for anything RFC 7252 forbids."""
        if not isinstance(data, bytes):
            data = bytes(data)
        n = len(data)
        if n < 4:
            raise MessageFormatError(f"datagram of {n} bytes is shorter than the 4-byte header")
        b0 = data[0]
        mid = data[2] << 8 | data[3]
        mtype = _TYPES[(b0 >> 4) & 3]
        action = _RESET if mtype is Type.CON else _DROP
        if b0 >> 6 != 1:
            # §3: unknown versions are silently ignored, whatever the type.
            raise MessageFormatError(f"version {b0 >> 6}, not 1", mid=mid)
        tkl = b0 & 15
        if tkl > 8:
            raise MessageFormatError(f"reserved token length {tkl}", action=action, mid=mid)
        codebyte = data[1]
        code: Code | None = _CODES.get(codebyte)  # type: ignore[assignment]
        if code is None:
            code = Code(codebyte)
        if codebyte == 0 and n != 4:
            raise MessageFormatError(
                "Empty message (0.00) with a token, options or payload", action=action, mid=mid
            )
        pos = 4 + tkl
        if pos > n:
            raise MessageFormatError("token runs past the end of the datagram", action=action, mid=mid)
        token = data[4:pos]
        items: list[tuple[int, bytes]] = []
        payload = b""
        number = 0
        try:
            while pos < n:
                byte = data[pos]
                if byte == 0xFF:
                    if pos + 1 == n:
                        raise MessageFormatError(
                            "payload marker followed by no payload", action=action, mid=mid
                        )
                    payload = data[pos + 1 :]
                    break
                pos += 1
                delta = byte >> 4
                length = byte & 15
                if delta >= 13:
                    if delta == 13:
                        delta = data[pos] + 13
                        pos += 1
                    elif delta == 14:
                        delta = (data[pos] << 8 | data[pos + 1]) + 269
                        pos += 2
                    else:
                        raise MessageFormatError(
                            "reserved option delta nibble 15", action=action, mid=mid
                        )
                if length >= 13:
                    if length == 13:
                        length = data[pos] + 13
                        pos += 1
                    elif length == 14:
                        length = (data[pos] << 8 | data[pos + 1]) + 269
                        pos += 2
                    else:
                        raise MessageFormatError(
                            "reserved option length nibble 15", action=action, mid=mid
                        )
                end = pos + length
                if end > n:
                    raise MessageFormatError(
                        f"option {number + delta} runs past the end of the datagram",
                        action=action, mid=mid,
                    )
                number += delta
                items.append((number, data[pos:end]))
                pos = end
        except IndexError:
            raise MessageFormatError(
                "option header runs past the end of the datagram", action=action, mid=mid
            ) from None
        if number > 65535:
            raise MessageFormatError(f"option number {number} above 65535", action=action, mid=mid)
        msg = cls.__new__(cls)
        msg.type = mtype
        msg.code = code
        msg.mid = mid
        msg.token = token
        msg.opt = Options._from_sorted(items)
        msg.payload = payload
        msg.remote = remote
        msg.scheme = "coap"
        msg.local = None
        msg.security = None
        return msg

    def encode(self) -> bytes:
        """Serialize for UDP; raise ValueError for a message that RFC 7252 does not allow on the wire."""
        token = self.token
        tkl = len(token)
        mid = self.mid
        if mid is None:
            raise ValueError("the message has no message ID yet")
        if tkl > 8:
            raise ValueError(f"token of {tkl} bytes; at most 8 are allowed")
        items = self.opt._items
        code = self.code
        if code == 0 and (tkl or items or self.payload):
            raise ValueError("an Empty message (0.00) carries no token, options or payload")
        out = bytearray((0x40 | self.type << 4 | tkl, code, mid >> 8, mid & 0xFF))
        out += token
        last = 0
        for number, value in items:
            delta = number - last
            last = number
            length = len(value)
            if delta < 13:
                if length < 13:
                    out.append(delta << 4 | length)
                    out += value
                    continue
                dnib, dext = delta, b""
            elif delta < 269:
                dnib, dext = 13, bytes((delta - 13,))
            else:
                dnib, dext = 14, (delta - 269).to_bytes(2, "big")
            if length < 13:
                lnib, lext = length, b""
            elif length < 269:
                lnib, lext = 13, bytes((length - 13,))
            elif length < 65805:
                lnib, lext = 14, (length - 269).to_bytes(2, "big")
            else:
                raise ValueError(f"option {number} value of {length} bytes is too long to encode")
            out.append(dnib << 4 | lnib)
            out += dext
            out += lext
            out += value
        if self.payload:
            out.append(0xFF)
            out += self.payload
        return bytes(out)
