"""The RFC 8323 framings (coapio.protocol.framing): TCP §3.2 and WebSockets §4.2.

Round trips for any message, the TCP decoder fed any split of the stream, every form of the length field
at its boundaries, the RFC's own examples, strict rejection of malformed frames, and the size limit
checked before a frame's body is buffered. Arbitrary bytes are fuzzed in test_fuzz_framing.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import messages, option_header

from coapio.protocol.codes import Code, Type
from coapio.protocol.framing import (
    FrameTooLarge,
    FramingError,
    TcpDecoder,
    decode_ws,
    encode_tcp,
    encode_ws,
    tcp_header_size,
)
from coapio.protocol.message import Message
from coapio.protocol.options import Options

BIG = 1 << 20


def as_received(msg: Message) -> Message:
    """What a reliable transport delivers for ``msg``: no message ID, type CON (see framing's docstring)."""
    return msg.copy(type=Type.CON, mid=None)


def announced(frame: bytes) -> tuple[int, int]:
    """(bytes before the token, announced length of options and payload), read as RFC 8323 §3.2 says."""
    nibble = frame[0] >> 4
    if nibble < 13:
        return 2, nibble
    size = {13: 1, 14: 2, 15: 4}[nibble]
    offset = {13: 13, 14: 269, 15: 65805}[nibble]
    return 2 + size, int.from_bytes(frame[1 : 1 + size], "big") + offset


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


# --- the RFC's examples ---------------------------------------------------------------------------------


def test_rfc8323_figure_examples_encode_byte_for_byte() -> None:
    # §3.2 Figure 7: 2.03 with token 7f; §5.7 Figures 8 and 9: Ping and Pong with token 42.
    assert encode_tcp(Message(code=Code.VALID, token=b"\x7f")) == bytes.fromhex("01437f")
    assert encode_tcp(Message(code=Code.PING, token=b"\x42")) == bytes.fromhex("01e242")
    assert encode_tcp(Message(code=Code.PONG, token=b"\x42")) == bytes.fromhex("01e342")
    assert TcpDecoder(BIG).feed(bytes.fromhex("01437f")) == [Message(Type.CON, Code.VALID, None, b"\x7f")]


def test_type_and_message_id_are_not_on_the_wire() -> None:
    a = Message(Type.NON, Code.GET, 0x1234, b"t", payload=b"x")
    b = Message(Type.ACK, Code.GET, None, b"t", payload=b"x")
    assert encode_tcp(a) == encode_tcp(b)
    assert encode_ws(a) == encode_ws(b)
    received = TcpDecoder(BIG).feed(encode_tcp(a))[0]
    assert (received.type, received.mid, received.scheme) == (Type.CON, None, "coap+tcp")
    assert decode_ws(encode_ws(a), BIG).scheme == "coap+ws"


# --- round trips ----------------------------------------------------------------------------------------


@given(messages())
def test_tcp_round_trip_gives_an_equal_message(msg: Message) -> None:
    data = encode_tcp(msg)
    assert TcpDecoder(BIG).feed(data) == [as_received(msg)]
    head, length = announced(data)
    assert head + len(msg.token) + length == len(data)


@given(messages())
def test_ws_round_trip_gives_an_equal_message(msg: Message) -> None:
    data = encode_ws(msg)
    assert data[0] >> 4 == 0  # §4.2: Len is 0, there is no extended length
    assert decode_ws(data, BIG) == as_received(msg)


@given(messages())
def test_tcp_frame_is_the_udp_datagram_with_a_length_instead_of_version_type_and_mid(msg: Message) -> None:
    udp, tcp = msg.encode(), encode_tcp(msg)
    head = tcp_header_size(tcp[0])
    assert tcp[head - 1] == udp[1]  # the code
    assert tcp[head:] == udp[4:]  # token, options, payload
    assert encode_ws(msg)[2:] == udp[4:]


@given(st.lists(messages(), min_size=1, max_size=6), st.lists(st.integers(0, 10_000), max_size=12))
def test_tcp_decoder_gives_the_same_messages_for_any_split_of_the_stream(
    msgs: list[Message], cuts: list[int]
) -> None:
    stream = b"".join(encode_tcp(m) for m in msgs)
    decoder = TcpDecoder(BIG)
    received = [m for chunk in split(stream, cuts) for m in decoder.feed(chunk)]
    assert received == [as_received(m) for m in msgs]
    assert decoder.buffered == 0


def test_tcp_decoder_byte_by_byte_holds_back_incomplete_frames() -> None:
    msgs = [Message(code=Code.CONTENT, token=b"ab", payload=b"x" * n) for n in (0, 11, 12, 300, 70_000)]
    stream = b"".join(encode_tcp(m) for m in msgs)
    decoder = TcpDecoder(BIG)
    received = []
    for i in range(len(stream)):
        received += decoder.feed(stream[i : i + 1])
        assert decoder.buffered <= 70_010
    assert received == [as_received(m) for m in msgs]


# --- the length field at every boundary -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "nibble", "extension"),
    [
        (0, 0, b""),
        (12, 12, b""),
        (13, 13, b"\x00"),  # 8-bit extended length: length - 13
        (14, 13, b"\x01"),
        (268, 13, b"\xff"),
        (269, 14, b"\x00\x00"),  # 16-bit: length - 269
        (270, 14, b"\x00\x01"),
        (65804, 14, b"\xff\xff"),
        (65805, 15, b"\x00\x00\x00\x00"),  # 32-bit: length - 65805
        (65806, 15, b"\x00\x00\x00\x01"),
    ],
)
def test_every_extended_length_form_at_its_boundaries(body: int, nibble: int, extension: bytes) -> None:
    # ``body`` bytes of options and payload: a payload marker and body - 1 payload bytes (none for 0).
    msg = Message(code=Code.CONTENT, token=b"\x01\x02", payload=b"p" * (body - 1) if body else b"")
    data = encode_tcp(msg)
    assert data[0] == nibble << 4 | 2
    assert data[1 : 1 + len(extension)] == extension
    assert data[1 + len(extension)] == Code.CONTENT
    assert len(data) == 2 + len(extension) + 2 + body
    assert tcp_header_size(data[0]) == 2 + len(extension)
    assert TcpDecoder(BIG).feed(data) == [as_received(msg)]
    ws = encode_ws(msg)
    assert ws[0] == 2 and len(ws) == 4 + body
    assert decode_ws(ws, BIG) == as_received(msg)


def test_a_hand_built_frame_with_options_decodes() -> None:
    # Uri-Path "a" (11), Content-Format 0 (12), option 300 (delta 288: extended), payload "hi".
    body = option_header(11, 1) + b"a" + option_header(1, 0) + option_header(288, 2) + b"zz" + b"\xffhi"
    frame = bytes((len(body) << 4 | 1, Code.POST, 0x99)) + body
    (msg,) = TcpDecoder(BIG).feed(frame)
    assert (msg.code, msg.token, list(msg.opt), msg.payload) == (
        Code.POST, b"\x99", [(11, b"a"), (12, b""), (300, b"zz")], b"hi"
    )
    assert encode_tcp(msg) == frame


# --- strict decoding ------------------------------------------------------------------------------------


MALFORMED = [
    ("token length 9", "0901" + "00" * 9),
    ("token length 15", "0f01" + "00" * 15),
    ("payload marker without payload", "1045ff"),
    ("option delta nibble 15", "1045f0"),
    ("option length nibble 15", "10450f"),
    ("option value past the end", "2045b4ab"),
    ("extended delta cut off", "1045d0"),
    ("extended length cut off", "20450e00"),
    ("option number above 65535", "4045e0fef310"),
    ("Empty message with a token", "0100aa"),
    ("Empty message with a payload", "2000ff00"),
]


@pytest.mark.parametrize(("frame", "hexdata"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_tcp_frames_raise_framing_error(frame: str, hexdata: str) -> None:
    with pytest.raises(FramingError):
        TcpDecoder(BIG).feed(bytes.fromhex(hexdata))


@pytest.mark.parametrize(("frame", "hexdata"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_ws_messages_raise_framing_error(frame: str, hexdata: str) -> None:
    data = bytes.fromhex(hexdata)
    with pytest.raises(FramingError):
        decode_ws(bytes((data[0] & 0x0F,)) + data[1:], BIG)


@pytest.mark.parametrize("hexdata", ["", "00", "1045ff00", "d1450000"])
def test_ws_message_needs_len_zero_and_two_header_bytes(hexdata: str) -> None:
    with pytest.raises(FramingError):
        decode_ws(bytes.fromhex(hexdata), BIG)


def test_empty_message_without_anything_decodes_on_both_framings() -> None:
    assert TcpDecoder(BIG).feed(b"\x00\x00") == [Message(Type.CON, Code.EMPTY, None)]
    assert decode_ws(b"\x00\x00", BIG) == Message(Type.CON, Code.EMPTY, None)
    assert encode_tcp(Message(code=Code.EMPTY)) == b"\x00\x00"


def test_encoders_refuse_what_no_framing_allows() -> None:
    for encode in (encode_tcp, encode_ws):
        with pytest.raises(ValueError, match="token"):
            encode(Message(code=Code.GET, token=b"123456789"))
        with pytest.raises(ValueError, match="Empty"):
            encode(Message(code=Code.EMPTY, payload=b"x"))


def test_after_a_framing_error_the_decoder_keeps_refusing_and_keeps_the_messages_before_it() -> None:
    good = encode_tcp(Message(code=Code.GET, token=b"1"))
    decoder = TcpDecoder(BIG)
    with pytest.raises(FramingError) as caught:
        decoder.feed(good + good + bytes.fromhex("1045ff") + good)
    assert caught.value.messages == [as_received(Message(code=Code.GET, token=b"1"))] * 2
    with pytest.raises(FramingError):
        decoder.feed(good)
    assert decoder.buffered == 0


# --- the size limit -------------------------------------------------------------------------------------


def test_message_exactly_at_the_limit_passes_and_one_byte_more_does_not() -> None:
    msg = Message(code=Code.CONTENT, token=b"tok", payload=b"x" * 500)
    data = encode_tcp(msg)
    assert TcpDecoder(len(data)).feed(data) == [as_received(msg)]
    with pytest.raises(FrameTooLarge) as caught:
        TcpDecoder(len(data) - 1).feed(data)
    assert (caught.value.size, caught.value.limit) == (len(data), len(data) - 1)
    ws = encode_ws(msg)
    assert decode_ws(ws, len(ws)) == as_received(msg)
    with pytest.raises(FrameTooLarge):
        decode_ws(ws, len(ws) - 1)


@pytest.mark.parametrize(
    "header",
    [
        "f3ffffffff",  # 32-bit extended length: 4 GiB + 65805 announced
        "e300ff",  # 16-bit: 524 bytes
        "d3f0",  # 8-bit: 253 bytes
    ],
)
def test_an_announced_length_over_the_limit_is_refused_before_the_body_arrives(header: str) -> None:
    decoder = TcpDecoder(200)
    data = bytes.fromhex(header)
    for byte in data[:-1]:
        assert decoder.feed(bytes((byte,))) == []  # the length is not complete yet
    with pytest.raises(FrameTooLarge):
        decoder.feed(data[-1:])  # no code byte, no token, no body: refused on the length alone
    assert decoder.buffered == 0


def test_a_large_frame_within_the_limit_is_assembled_from_many_chunks() -> None:
    body = bytes(range(256)) * 400
    msg = Message(code=Code.CONTENT, token=b"big", opt=Options([(23, b"\x0e")]), payload=body)
    data = encode_tcp(msg)
    decoder = TcpDecoder(len(data))
    received = []
    for i in range(0, len(data), 1000):
        received += decoder.feed(data[i : i + 1000])
    assert received == [as_received(msg)]
