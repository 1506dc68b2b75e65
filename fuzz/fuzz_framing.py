"""Fuzz target: the RFC 8323 framings and connection state machine on hostile bytes.

The first input byte is control: its low nibble picks the size of the chunks the rest is fed in (1-16
bytes; 0 means all at once), bit 4 whether a valid CSM is prepended for the Connection. Checks, for any
bytes:

* ``decode_ws`` gives a message or a FramingError, never another exception; an accepted message
  re-encodes to the same bytes (the framing is canonical, and option values are kept raw);
* ``TcpDecoder.feed`` gives the same messages however the stream is split, re-encoding them gives back
  the stream up to what is still buffered, and it raises nothing but FramingError;
* ``Connection.receive`` (TCP and WebSocket) never raises; once it reports a ProtocolViolation the last
  event is Closed, an Abort is queued, and later input is ignored.

See fuzz/README.md for running it.
"""

from __future__ import annotations

import contextlib

try:
    import atheris
except ImportError:
    atheris = None

with atheris.instrument_imports() if atheris is not None else contextlib.nullcontext():
    import coapfuzz

    from coapio.protocol.framing import FramingError, TcpDecoder, decode_ws, encode_tcp, encode_ws
    from coapio.protocol.message import Message
    from coapio.protocol.reliable import Closed, Connection, ProtocolViolation

LIMIT = 4096
CSM = bytes.fromhex("30e1221000")  # 7.01 with Max-Message-Size 4096, over TCP
WS_CSM = bytes.fromhex("00e1221000")  # the same as a WebSocket message


def check_ws(data: bytes) -> None:
    try:
        msg = decode_ws(data, LIMIT)
    except FramingError:
        return
    assert encode_ws(msg) == data, f"{data.hex()}: re-encoded as {encode_ws(msg).hex()}"


def feed_tcp(data: bytes, chunk: int) -> tuple[list[Message], FramingError | None, int]:
    """The messages of ``data`` fed in ``chunk``-byte pieces, the error if any, the bytes left buffered."""
    decoder = TcpDecoder(LIMIT)
    messages: list[Message] = []
    for i in range(0, len(data), chunk or len(data) or 1):
        try:
            messages += decoder.feed(data[i : i + (chunk or len(data))])
        except FramingError as error:
            return messages + error.messages, error, 0
    return messages, None, decoder.buffered


def check_tcp(data: bytes, chunk: int) -> None:
    whole = feed_tcp(data, 0)
    pieces = feed_tcp(data, chunk)
    assert whole[0] == pieces[0], f"{data.hex()}: the split into {chunk}-byte chunks changed the messages"
    assert (whole[1] is None) == (pieces[1] is None), f"{data.hex()}: the split changed the outcome"
    if whole[1] is None:
        stream = b"".join(encode_tcp(m) for m in whole[0])
        assert stream + data[len(stream) :] == data and len(data) - len(stream) == whole[2], data.hex()


def check_connection(pieces: list[bytes], websocket: bool) -> None:
    conn = Connection(client=False, websocket=websocket, max_message_size=LIMIT)
    conn.data_to_send()
    violated = False
    for piece in pieces:
        events = conn.receive(piece, 0.0)
        if violated:
            assert events == [], "input after the Abort must be ignored"
        if any(isinstance(e, ProtocolViolation) for e in events):
            violated = True
            assert events[-1] == Closed() and conn.closed
            assert conn.data_to_send(), "a ProtocolViolation queues an Abort"
    conn.data_to_send()


def TestOneInput(data: bytes) -> None:  # the name atheris and libFuzzer use
    if not data:
        return
    control, body = data[0], data[1:]
    chunk = control & 15
    check_ws(body)
    check_tcp(body, chunk)
    csm = bool(control & 16)
    stream = CSM + body if csm else body
    size = chunk or len(stream) or 1
    check_connection([stream[i : i + size] for i in range(0, len(stream), size)], websocket=False)
    check_connection([WS_CSM, body] if csm else [body], websocket=True)


def seeds() -> list[bytes]:
    frames = [
        bytes.fromhex("01437f"),  # RFC 8323 Figure 7
        bytes.fromhex("01e242"),  # Ping
        bytes.fromhex("d20245abcd") + bytes(range(15)),
        encode_tcp(Message(code=0x01, token=b"\x01\x02", uri="coap+tcp://h/a/b?c")),
        bytes.fromhex("f0ffffffff01"),  # 4 GiB announced
        bytes.fromhex("1045ff"),  # payload marker, no payload
    ]
    return [bytes((control,)) + frame for control in (0, 0x11, 0x03) for frame in frames]


if __name__ == "__main__":
    coapfuzz.main(TestOneInput, seeds(), atheris)
