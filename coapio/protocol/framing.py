"""The RFC 8323 framings of a CoAP message: TCP/TLS (§3.2) and WebSockets (§4.2).

A reliable transport's message has no version, type or message ID. Over TCP it starts with a length
(the Len nibble, extended by 1, 2 or 4 bytes like an option length) of the options and payload, then the
token length, the code, the token, and the options and payload exactly as over UDP (RFC 7252 §3.1).
Over WebSockets, where the WebSocket message carries the length, the Len nibble is 0 and nothing extends
it.

The options and payload are encoded and decoded by the one UDP codec (:meth:`Message.encode
<coapio.protocol.message.Message.encode>`, :meth:`Message.decode <coapio.protocol.message.Message.decode>`):
a frame differs from a datagram only in its first bytes, so this module swaps those and leaves the rest
to it. Sharing a function with the UDP codec instead would cost the UDP hot path a call per message
(measured: 3-8 % slower encode and decode with ``benchmarks/codec.py``).

A received message has ``type`` CON and ``mid`` None: reliable transports deliver every message
reliably (RFC 8323 §2.2), which is what CON means to the layers above (a server answers it, a 5.03 when
overloaded included), and there is no message ID. Decoding is strict: what RFC 7252 §3 makes a message
format error, a Len nibble other than 0 over WebSockets, a token length above 8 and a message longer than
the receiver's limit raise :class:`FramingError`, which RFC 8323 §5.6 answers with an Abort.
"""

from __future__ import annotations

from ..error import MessageFormatError
from .codes import Code, Type
from .message import Message, Remote

__all__ = [
    "FrameTooLarge",
    "FramingError",
    "TcpDecoder",
    "decode_ws",
    "encode_tcp",
    "encode_ws",
    "tcp_header_size",
]

#: Where the Len nibble's extended forms start (RFC 8323 §3.2): 13, 269 and 65805, as for option lengths.
_EXT8, _EXT16, _EXT32 = 13, 269, 65805
_MAX_BODY = _EXT32 + 0xFFFFFFFF
_CODES = Code._value2member_map_


class FramingError(MessageFormatError):
    """Bytes that are not a well-formed RFC 8323 message (the connection is aborted, §5.6).

    ``messages`` holds the messages a :class:`TcpDecoder` completed before the bad frame in the same
    :meth:`~TcpDecoder.feed`, so that a caller can still act on them.
    """

    def __init__(self, reason: str, messages: list[Message] | None = None):
        super().__init__(reason)
        self.messages: list[Message] = [] if messages is None else messages


class FrameTooLarge(FramingError):
    """A message longer than the receiver's Max-Message-Size; raised as soon as its length is known."""

    def __init__(self, size: int, limit: int, messages: list[Message] | None = None):
        super().__init__(f"message of {size} bytes exceeds Max-Message-Size {limit}", messages)
        self.size = size
        self.limit = limit


# --- encoding ----------------------------------------------------------------------------------------------


def _udp(message: Message) -> bytes:
    """``message`` in the UDP framing with message ID 0: the 4-byte header, token, options and payload."""
    return Message(Type.CON, message.code, 0, message.token, message.opt, message.payload).encode()


def encode_tcp(message: Message) -> bytes:
    """Serialize for TCP or TLS (RFC 8323 §3.2); ``type`` and ``mid`` are ignored.

    Raise ValueError for what no framing allows: a token of more than 8 bytes, an Empty message (0.00)
    carrying anything, an option value over 65804 bytes.
    """
    udp = _udp(message)
    tkl = len(message.token)
    length = len(udp) - 4 - tkl  # options, payload marker and payload
    if length < _EXT8:
        head = bytes((length << 4 | tkl, udp[1]))
    elif length < _EXT16:
        head = bytes((0xD0 | tkl, length - _EXT8, udp[1]))
    elif length < _EXT32:
        ext = length - _EXT16
        head = bytes((0xE0 | tkl, ext >> 8, ext & 0xFF, udp[1]))
    elif length <= _MAX_BODY:
        head = bytes((0xF0 | tkl,)) + (length - _EXT32).to_bytes(4, "big") + udp[1:2]
    else:
        raise ValueError(f"{length} bytes of options and payload do not fit in an RFC 8323 frame")
    return head + memoryview(udp)[4:]


def encode_ws(message: Message) -> bytes:
    """Serialize as one WebSocket binary message (RFC 8323 §4.2: Len 0, no extended length)."""
    udp = _udp(message)
    return bytes((len(message.token), udp[1])) + memoryview(udp)[4:]


def tcp_header_size(first_byte: int) -> int:
    """Bytes before the token in a TCP frame starting with ``first_byte``: 2, 3, 4 or 6."""
    nibble = first_byte >> 4
    return 2 if nibble < 13 else (3, 4, 6)[nibble - 13]


# --- decoding ----------------------------------------------------------------------------------------------


def _decode(rest: bytes | bytearray, tkl: int, code: int, scheme: str, remote: Remote) -> Message:
    """The message of token length ``tkl`` and ``code`` whose token, options and payload are ``rest``."""
    if tkl > 8:
        raise FramingError(f"reserved token length {tkl}")
    if tkl > len(rest):
        raise FramingError("token runs past the end of the message")
    try:
        msg = Message.decode(bytes((0x40 | tkl, code, 0, 0)) + rest)
    except MessageFormatError as error:
        raise FramingError(error.reason.replace("datagram", "message")) from None
    msg.mid = None
    msg.scheme = scheme
    msg.remote = remote
    return msg


def decode_ws(
    data: bytes, max_message_size: int, *, scheme: str = "coap+ws", remote: Remote = None
) -> Message:
    """Parse one WebSocket binary message (RFC 8323 §4.2); raise :class:`FramingError` if malformed.

    A message longer than ``max_message_size`` raises :class:`FrameTooLarge` (the WebSocket layer should
    bound its own message size too, so that such a message is never buffered whole).
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    n = len(data)
    if n > max_message_size:
        raise FrameTooLarge(n, max_message_size)
    if n < 2:
        raise FramingError(f"message of {n} bytes is shorter than the 2-byte header")
    b0 = data[0]
    if b0 >> 4:
        raise FramingError(f"Len nibble {b0 >> 4} over WebSockets, where it must be 0")
    return _decode(data[2:], b0 & 15, data[1], scheme, remote)


class TcpDecoder:
    """Splits a TCP (or TLS) byte stream into messages (RFC 8323 §3.2), however the bytes arrive.

    A frame whose announced size exceeds ``max_message_size`` raises :class:`FrameTooLarge` as soon as
    its length field is complete, before its body arrives: a peer cannot make the decoder buffer more
    than one frame's worth of the limit. After an error the stream has no recoverable message boundary,
    so every later :meth:`feed` raises the same error.
    """

    __slots__ = ("_buf", "_error", "max_message_size", "remote", "scheme")

    def __init__(self, max_message_size: int, *, scheme: str = "coap+tcp", remote: Remote = None):
        self.max_message_size = max_message_size
        self.scheme = scheme
        self.remote = remote
        self._buf = bytearray()
        self._error: FramingError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete message."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Message]:
        """Add ``data`` to the stream; return the messages it completed, in order.

        Raise :class:`FramingError` for a malformed frame (its ``messages`` are the ones completed
        before it) or :class:`FrameTooLarge` for one over the limit.
        """
        if self._error is not None:
            raise self._error
        buf = self._buf
        buf += data
        n = len(buf)
        pos = 0
        messages: list[Message] = []
        limit = self.max_message_size
        try:
            while pos < n:
                b0 = buf[pos]
                nibble = b0 >> 4
                if nibble < 13:
                    head, length = 2, nibble
                else:
                    head = (3, 4, 6)[nibble - 13]
                    if pos + head - 1 > n:
                        break  # the extended length is not complete yet
                    ext = int.from_bytes(buf[pos + 1 : pos + head - 1], "big")
                    length = ext + (_EXT8, _EXT16, _EXT32)[nibble - 13]
                tkl = b0 & 15
                if tkl > 8:
                    raise FramingError(f"reserved token length {tkl}")
                size = head + tkl + length
                if size > limit:
                    raise FrameTooLarge(size, limit)
                end = pos + size
                if end > n:
                    break
                code = buf[pos + head - 1]
                messages.append(_decode(buf[pos + head : end], tkl, code, self.scheme, self.remote))
                pos = end
        except FramingError as error:
            error.messages = messages
            self._error = error
            del buf[:]
            raise
        if pos:
            del buf[:pos]
        return messages
