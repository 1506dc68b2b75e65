"""DTLS record framing (RFC 6347 §4.1): split a byte stream into records, pack records into datagrams,
and recognise an initial ClientHello without any per-peer state.

The backend writes a flight of several records into one memory buffer; they are cut here at record
boundaries and packed into datagrams no larger than the path MTU (several records may share a datagram,
§4.1.1). A server looks at the first bytes of a datagram from an unknown address to decide whether it is
worth a stateless cookie exchange at all: anything else is dropped before the DTLS library sees it.
"""

from __future__ import annotations

__all__ = [
    "ALERT",
    "APPLICATION_DATA",
    "HANDSHAKE",
    "HEADER_SIZE",
    "client_hello_cookie",
    "is_client_hello",
    "pack",
    "split",
]

from .errors import RecordError

CHANGE_CIPHER_SPEC = 20
ALERT = 21
HANDSHAKE = 22
APPLICATION_DATA = 23
#: content type (1), version (2), epoch (2), sequence number (6), length (2)
HEADER_SIZE = 13
_CLIENT_HELLO = 1
_HANDSHAKE_HEADER = 12  # msg_type (1), length (3), message_seq (2), fragment_offset (3), fragment_length (3)


def split(data: bytes) -> list[bytes]:
    """The records in ``data``, each with its header; raises :class:`RecordError` for a truncated record
    or an unknown content type."""
    records = []
    offset, end = 0, len(data)
    while offset < end:
        if end - offset < HEADER_SIZE:
            raise RecordError(f"{end - offset} bytes left: too short for a DTLS record header")
        if not CHANGE_CIPHER_SPEC <= data[offset] <= APPLICATION_DATA:
            raise RecordError(f"unknown DTLS content type {data[offset]}")
        if data[offset + 1] != 0xFE:
            raise RecordError(f"not a DTLS version: {data[offset + 1]:#04x}{data[offset + 2]:02x}")
        length = int.from_bytes(data[offset + 11:offset + 13], "big")
        stop = offset + HEADER_SIZE + length
        if stop > end:
            raise RecordError(f"a record of {length} bytes is truncated to {end - offset - HEADER_SIZE}")
        records.append(data[offset:stop])
        offset = stop
    return records


def pack(records: list[bytes], mtu: int) -> list[bytes]:
    """Records packed in order into datagrams of at most ``mtu`` bytes (a larger record goes alone)."""
    datagrams: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for record in records:
        if current and size + len(record) > mtu:
            datagrams.append(b"".join(current))
            current, size = [], 0
        current.append(record)
        size += len(record)
    if current:
        datagrams.append(b"".join(current))
    return datagrams


def is_client_hello(datagram: bytes) -> bool:
    """Whether ``datagram`` starts with an epoch-0 handshake record holding (the start of) a ClientHello.

    Only the fixed headers are read, so it is cheap enough to run on every datagram from an address
    without a session; the DTLS library checks the rest (and the cookie) statelessly.
    """
    return (
        len(datagram) >= HEADER_SIZE + _HANDSHAKE_HEADER
        and datagram[0] == HANDSHAKE
        and datagram[1] == 0xFE
        and datagram[3] == 0
        and datagram[4] == 0
        and datagram[HEADER_SIZE] == _CLIENT_HELLO
    )


def client_hello_cookie(datagram: bytes) -> bytes:
    """The cookie of the ClientHello at the start of ``datagram`` (empty for an initial one).

    Raises :class:`RecordError` when the datagram is not an unfragmented epoch-0 ClientHello record long
    enough to hold its version, random, session ID and cookie.
    """
    if not is_client_hello(datagram):
        raise RecordError("not an epoch-0 ClientHello record")
    record_length = int.from_bytes(datagram[11:13], "big")
    if HEADER_SIZE + record_length > len(datagram):
        raise RecordError("the ClientHello record is truncated")
    body = HEADER_SIZE + _HANDSHAKE_HEADER
    fragment_offset = int.from_bytes(datagram[HEADER_SIZE + 6:HEADER_SIZE + 9], "big")
    fragment_length = int.from_bytes(datagram[HEADER_SIZE + 9:HEADER_SIZE + 12], "big")
    if fragment_offset != 0 or _HANDSHAKE_HEADER + fragment_length > record_length:
        raise RecordError("a fragmented ClientHello")
    stop = body + fragment_length
    position = body + 2 + 32  # client_version, random
    if position + 1 > stop:
        raise RecordError("the ClientHello ends before its session ID")
    position += 1 + datagram[position]  # session_id
    if position + 1 > stop:
        raise RecordError("the ClientHello ends before its cookie")
    length = datagram[position]
    if position + 1 + length > stop:
        raise RecordError("the ClientHello's cookie is truncated")
    return bytes(datagram[position + 1:position + 1 + length])
