"""The message value and its UDP framing (coapio.message): decoding, encoding, format errors, fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from strategies import datagram_parts, messages, mutated_datagrams, option_header, valid_datagrams

from coapio.error import MessageFormatError, WireAction
from coapio.protocol.codes import Code, Type
from coapio.protocol.message import Message
from coapio.protocol.options import BlockValue, Options
from coapio.protocol.peer import Peer

EXAMPLE = bytes.fromhex("4401abcd01020304b474696d65")


def header(mtype: int = 0, tkl: int = 0, code: int = 1, mid: int = 0x1234, version: int = 1) -> bytes:
    return bytes((version << 6 | mtype << 4 | tkl, code, mid >> 8, mid & 0xFF))


# --- decoding and encoding --------------------------------------------------------------------------


def test_example_request_decodes_to_its_fields():
    msg = Message.decode(EXAMPLE)
    assert msg.type is Type.CON
    assert msg.code is Code.GET
    assert msg.mid == 0xABCD
    assert msg.token == bytes.fromhex("01020304")
    assert list(msg.opt) == [(11, b"time")]
    assert msg.opt.uri_path == ("time",)
    assert msg.payload == b""
    assert msg.version == 1


def test_example_request_re_encodes_identically():
    assert Message.decode(EXAMPLE).encode() == EXAMPLE


def test_example_request_built_by_hand_encodes_to_the_example():
    opt = Options()
    opt.uri_path = ("time",)
    assert Message(Type.CON, Code.GET, 0xABCD, bytes.fromhex("01020304"), opt).encode() == EXAMPLE


@pytest.mark.parametrize("mtype", list(Type))
def test_empty_message_is_four_bytes(mtype):
    data = header(mtype, code=0)
    msg = Message.decode(data)
    assert (msg.type, msg.code, msg.token, len(msg.opt), msg.payload) == (mtype, Code.EMPTY, b"", 0, b"")
    assert Message(mtype, Code.EMPTY, 0x1234).encode() == data


def test_payload_follows_the_marker():
    data = header(1, 2, 0x45) + b"tk" + b"\xc1\x00" + b"\xff" + b"hello"
    msg = Message.decode(data)
    assert (msg.type, msg.code, msg.token) == (Type.NON, Code.CONTENT, b"tk")
    assert msg.opt.content_format == 0
    assert msg.payload == b"hello"
    assert msg.encode() == data


def test_unregistered_code_decodes_and_re_encodes():
    data = header(code=0x46) + b"\xff\x01"
    msg = Message.decode(data)
    assert msg.code is Code(0x46)
    assert msg.code.dotted == "2.06"
    assert msg.encode() == data


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_decode_accepts_any_bytes_like_object(wrap):
    msg = Message.decode(wrap(EXAMPLE))
    assert type(msg.token) is bytes
    assert all(type(v) is bytes for _, v in msg.opt)
    assert msg.encode() == EXAMPLE


def test_remote_is_kept_but_not_part_of_equality():
    a = Message.decode(EXAMPLE, ("192.0.2.1", 5683))
    b = Message.decode(EXAMPLE, ("192.0.2.2", 5683))
    assert a.remote == ("192.0.2.1", 5683)
    assert a == b


def test_messages_differing_on_the_wire_are_unequal():
    base = Message.decode(EXAMPLE)
    for change in ({"mid": 1}, {"token": b""}, {"payload": b"x"}, {"type": Type.NON}, {"code": Code.PUT}):
        assert base.copy(**change) != base
    other = base.copy()
    other.opt.add(2048, b"")
    assert other != base


def test_unknown_options_survive_decode_and_encode_byte_for_byte():
    data = (
        header(tkl=1)
        + b"\x07"
        + option_header(1, 0)  # If-Match (empty)
        + option_header(2047, 3)  # 2048: unknown elective
        + b"\x00\x00\x01"
        + option_header(1, 2)  # 2049: unknown critical
        + b"\xab\xcd"
        + option_header(65535 - 2049, 13)  # 65535: the highest number
        + bytes(range(13))
        + b"\xff"
        + b"body"
    )
    msg = Message.decode(data)
    assert [n for n, _ in msg.opt] == [1, 2048, 2049, 65535]
    assert msg.opt.get(2048) == b"\x00\x00\x01"
    assert msg.opt.unrecognized_critical() == [2049, 65535]
    assert msg.encode() == data
    assert msg.copy().encode() == data


def test_non_minimal_uint_option_values_are_kept_as_sent():
    data = header() + b"\xc3\x00\x00\x32"  # Content-Format 50 written in three bytes
    msg = Message.decode(data)
    assert msg.opt.content_format == 50
    assert msg.encode() == data


# --- extended option deltas and lengths (RFC 7252 §3.1) ---------------------------------------------


@pytest.mark.parametrize(
    ("number", "wire"),
    [
        (0, "00"),
        (12, "c0"),
        (13, "d000"),
        (14, "d001"),
        (268, "d0ff"),
        (269, "e00000"),
        (270, "e00001"),
        (524, "e000ff"),
        (525, "e00100"),
        (65535, "e0fef2"),
    ],
)
def test_option_delta_uses_the_extended_form_from_13_and_269(number, wire):
    data = header() + bytes.fromhex(wire)
    assert Message(Type.CON, Code.GET, 0x1234, opt=Options([(number, b"")])).encode() == data
    assert list(Message.decode(data).opt) == [(number, b"")]


@pytest.mark.parametrize(
    ("length", "wire"),
    [
        (12, "0c"),
        (13, "0d00"),
        (268, "0dff"),
        (269, "0e0000"),
        (1000, "0e02db"),
        (65535 + 269, "0effff"),
    ],
)
def test_option_length_uses_the_extended_form_from_13_and_269(length, wire):
    value = bytes(i & 0xFF for i in range(length))
    data = header() + bytes.fromhex(wire) + value + b"\xff!"
    assert Message(Type.CON, Code.GET, 0x1234, opt=Options([(0, value)]), payload=b"!").encode() == data
    msg = Message.decode(data)
    assert msg.opt.get(0) == value
    assert msg.payload == b"!"


def test_extended_delta_and_extended_length_in_one_option_header():
    value = b"v" * 300
    data = header() + bytes.fromhex("ee001f001f") + value
    assert Message(Type.CON, Code.GET, 0x1234, opt=Options([(300, value)])).encode() == data
    assert list(Message.decode(data).opt) == [(300, value)]


def test_deltas_are_relative_to_the_previous_option():
    opt = Options([(1, b""), (270, b""), (270, b""), (283, b"")])
    data = header() + bytes.fromhex("10e0000000d000")
    assert Message(Type.CON, Code.GET, 0x1234, opt=opt).encode() == data
    assert Message.decode(data).opt == opt


def test_option_value_too_long_for_the_length_field_cannot_be_encoded():
    msg = Message(Type.CON, Code.GET, 1, opt=Options([(0, b"x" * (65535 + 270))]))
    with pytest.raises(ValueError, match="too long"):
        msg.encode()


# --- encode() refuses what RFC 7252 does not allow --------------------------------------------------


def test_encode_without_message_id_is_refused():
    with pytest.raises(ValueError, match="message ID"):
        Message(Type.CON, Code.GET).encode()


def test_encode_with_token_longer_than_8_bytes_is_refused():
    with pytest.raises(ValueError, match="token"):
        Message(Type.CON, Code.GET, 1, b"123456789").encode()


@pytest.mark.parametrize(
    "content",
    [{"token": b"t"}, {"opt": Options([(11, b"a")])}, {"payload": b"p"}],
    ids=["token", "options", "payload"],
)
def test_encode_of_empty_message_with_content_is_refused(content):
    with pytest.raises(ValueError, match="Empty"):
        Message(Type.CON, Code.EMPTY, 1, **content).encode()


@pytest.mark.parametrize("mid", [-1, 0x10000])
def test_encode_with_message_id_outside_16_bits_is_refused(mid):
    with pytest.raises(ValueError):
        Message(Type.CON, Code.GET, mid).encode()


# --- format errors (RFC 7252 §3, §4.2, §4.3) --------------------------------------------------------

# (name, datagram for a CON, reason pattern)
MALFORMED = [
    ("token length 9", header(tkl=9) + bytes(9), "token length 9"),
    ("token length 15", header(tkl=15) + bytes(15), "token length 15"),
    ("empty with token", header(tkl=1, code=0) + b"t", "Empty"),
    ("empty with option", header(code=0) + b"\xb1a", "Empty"),
    ("empty with payload", header(code=0) + b"\xff\x01", "Empty"),
    ("empty with marker only", header(code=0) + b"\xff", "Empty"),
    ("marker without payload", header() + b"\xff", "payload marker"),
    ("marker without payload after option", header() + b"\xb1a\xff", "payload marker"),
    ("truncated token", header(tkl=4) + b"\x01\x02", "token runs past"),
    ("truncated 1-byte delta", header() + b"\xd0", "option header runs past"),
    ("truncated 2-byte delta", header() + b"\xe0\x00", "option header runs past"),
    ("truncated 1-byte length", header() + b"\x0d", "option header runs past"),
    ("truncated 2-byte length", header() + b"\xde\x00\x01", "option header runs past"),
    ("value past end", header() + b"\xb4abc", "option 11 runs past the end"),
    ("extended value past end", header() + b"\x0d\x00" + b"x" * 12, "option 0 runs past the end"),
    ("delta nibble 15", header() + b"\xf0", "delta nibble 15"),
    ("delta nibble 15 with length", header() + b"\xf1a", "delta nibble 15"),
    ("length nibble 15", header() + b"\xbf" + b"x" * 20, "length nibble 15"),
    ("length nibble 15 after ext delta", header() + b"\xdf\x00", "length nibble 15"),
    ("number above 65535", header() + b"\xe0\xff\xff", "option number 65804 above 65535"),
    ("number 65536", header() + b"\xe0\xfe\xf2" + b"\x10", "option number 65536 above 65535"),
]


@pytest.mark.parametrize(("data", "reason"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
@pytest.mark.parametrize("mtype", list(Type))
def test_malformed_message_is_reset_if_con_and_dropped_otherwise(mtype, data, reason):
    data = bytes((data[0] | mtype << 4,)) + data[1:]
    with pytest.raises(MessageFormatError, match=reason) as info:
        Message.decode(data)
    error = info.value
    assert error.action is (WireAction.RESET if mtype is Type.CON else WireAction.DROP)
    assert error.mid == 0x1234
    assert error.reason == str(error)


@pytest.mark.parametrize("data", [b"", b"\x40", b"\x40\x01", b"\x40\x01\x12"])
def test_datagram_shorter_than_the_header_is_dropped_without_mid(data):
    with pytest.raises(MessageFormatError, match="shorter than the 4-byte header") as info:
        Message.decode(data)
    assert info.value.action is WireAction.DROP
    assert info.value.mid is None


@pytest.mark.parametrize("version", [0, 2, 3])
@pytest.mark.parametrize("mtype", list(Type))
def test_unknown_version_is_dropped_even_for_con(version, mtype):
    with pytest.raises(MessageFormatError, match=f"version {version}") as info:
        Message.decode(header(mtype, version=version) + b"\xb1a")
    assert info.value.action is WireAction.DROP
    assert info.value.mid == 0x1234


def test_format_error_is_a_value_error_and_a_coap_error():
    from coapio.error import CoapError

    with pytest.raises(MessageFormatError) as info:
        Message.decode(b"")
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, CoapError)


# --- copy -------------------------------------------------------------------------------------------


def test_copy_is_equal_and_independent():
    original = Message.decode(EXAMPLE, ("192.0.2.1", 5683))
    copied = original.copy()
    assert copied == original
    assert copied.remote == original.remote
    assert copied.scheme == original.scheme
    copied.opt.uri_path = ("other",)
    copied.opt.block2 = BlockValue(0, False, 6)
    assert original.opt.uri_path == ("time",)
    assert original.encode() == EXAMPLE


def test_copy_applies_changes():
    copied = Message.decode(EXAMPLE).copy(mid=7, type=Type.NON, payload=b"x", remote=("h", 1))
    assert (copied.mid, copied.type, copied.payload, copied.remote) == (7, Type.NON, b"x", ("h", 1))
    assert copied.token == bytes.fromhex("01020304")


def test_repr_shows_type_code_mid_token_and_options():
    text = repr(Message.decode(EXAMPLE))
    for part in ("CON", "0.01", "GET", "mid=43981", "token=01020304", "Uri-Path='time'"):
        assert part in text


# --- Message(uri=...) (needs coapio.uri) ------------------------------------------------------------


def test_uri_with_host_name_sets_uri_host_path_query_and_remote():
    pytest.importorskip("coapio.protocol.uri")
    msg = Message(Type.CON, Code.GET, uri="coap://example.com/sensors/temp?unit=c")
    assert msg.remote == Peer("coap", ("example.com", 5683))
    assert msg.opt.uri_host == "example.com"
    assert msg.opt.uri_port is None
    assert msg.opt.uri_path == ("sensors", "temp")
    assert msg.opt.uri_query == ("unit=c",)
    assert msg.uri == "coap://example.com/sensors/temp?unit=c"


def test_uri_with_ip_literal_sends_neither_uri_host_nor_uri_port():
    pytest.importorskip("coapio.protocol.uri")
    msg = Message(Type.CON, Code.GET, uri="coaps://[2001:db8::1]:61616/a")
    assert msg.scheme == "coaps"
    assert msg.remote == Peer("coaps", ("2001:db8::1", 61616))
    assert 3 not in msg.opt
    assert 7 not in msg.opt
    assert msg.opt.uri_path == ("a",)
    assert msg.uri == "coaps://[2001:db8::1]:61616/a"


def test_message_from_uri_survives_the_wire():
    pytest.importorskip("coapio.protocol.uri")
    msg = Message(Type.CON, Code.GET, 1, b"t", uri="coap://example.com/a/b?x=1&y")
    decoded = Message.decode(msg.encode(), msg.remote)
    assert decoded == msg
    assert decoded.uri == msg.uri


# --- properties -------------------------------------------------------------------------------------


@given(messages())
def test_decode_inverts_encode(msg):
    decoded = Message.decode(msg.encode())
    assert decoded == msg
    assert decoded.code is Code(msg.code)
    assert decoded.type is Type(msg.type)


@given(datagram_parts())
def test_hand_built_datagram_decodes_to_the_fields_it_was_built_from(parts):
    msg = Message.decode(parts.data)
    assert (msg.type, msg.code, msg.mid, msg.token) == (parts.type, parts.code, parts.mid, parts.token)
    assert list(msg.opt) == parts.options
    assert msg.payload == parts.payload


@given(valid_datagrams())
@example(EXAMPLE)
@example(header(code=0))
def test_encode_inverts_decode(data):
    assert Message.decode(data).encode() == data


def _check_decode_outcome(data: bytes) -> None:
    """Decoding returns a message that re-encodes to the same bytes, or raises MessageFormatError only."""
    try:
        msg = Message.decode(data)
    except MessageFormatError as error:
        if len(data) < 4:
            assert (error.mid, error.action) == (None, WireAction.DROP)
            return
        assert error.mid == data[2] << 8 | data[3]
        con_v1 = data[0] >> 6 == 1 and (data[0] >> 4) & 3 == 0
        assert error.action is (WireAction.RESET if con_v1 else WireAction.DROP)
        return
    # The decoder is strict and the encoding canonical, so anything accepted is reproduced exactly.
    assert msg.encode() == data


@given(st.binary(max_size=300))
@example(b"")
@example(b"\x40\x00\x00\x00")
@example(b"\x40\x01\x00\x00\xff")
def test_fuzz_arbitrary_bytes_decode_or_raise_format_error(data):
    _check_decode_outcome(data)


@given(st.binary(max_size=300).map(lambda b: bytes((0x40 | (b[:1] or b"\0")[0] & 0x3F,)) + b[1:]))
def test_fuzz_arbitrary_bytes_with_version_1_decode_or_raise_format_error(data):
    _check_decode_outcome(data)


@given(mutated_datagrams())
def test_fuzz_mutated_datagrams_decode_or_raise_format_error(data):
    _check_decode_outcome(data)
