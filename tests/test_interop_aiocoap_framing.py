"""coapio's RFC 8323 framings against aiocoap's, used as an oracle: the same bytes for the same message.

aiocoap's TCP and WebSocket transports serialize with module-level helpers (``_serialize`` and
``_decode_message`` in ``aiocoap.transports.tcp`` and ``aiocoap.transports.ws``); they are private, so
these tests use them only as a reference and skip the WebSocket half when aiocoap's ws transport cannot
be imported (it needs the ``websockets`` package). Messages are restricted to what aiocoap models, as in
test_interop_aiocoap_codec.py, whose strategy and converter they share.
"""

from __future__ import annotations

import importlib

import pytest
from conftest import interop_unavailable, require_interop
from hypothesis import given, settings
from hypothesis import strategies as st
from test_interop_aiocoap_codec import aiocoap_messages, to_aiocoap

from coapio.protocol.codes import Code, Type
from coapio.protocol.framing import TcpDecoder, decode_ws, encode_tcp, encode_ws
from coapio.protocol.message import Message
from coapio.protocol.options import Options

require_interop("aiocoap")
tcp = importlib.import_module("aiocoap.transports.tcp")

pytestmark = pytest.mark.interop

#: Payload sizes around every boundary of the Len field (13, 269, 65805 bytes of options and payload).
_BOUNDARY_PAYLOADS = st.sampled_from([0, 1, 11, 12, 13, 267, 268, 269, 65803, 65804, 65805, 65806])


def _ws() -> object:
    try:
        return importlib.import_module("aiocoap.transports.ws")
    except ImportError as exc:
        interop_unavailable(f"aiocoap's WebSocket transport is not importable: {exc}")


def as_received(msg: Message) -> Message:
    return msg.copy(type=Type.CON, mid=None)


def same(ours: Message, theirs: object) -> None:
    assert int(theirs.code) == ours.code  # type: ignore[attr-defined]
    assert bytes(theirs.token) == ours.token  # type: ignore[attr-defined]
    assert bytes(theirs.payload) == ours.payload  # type: ignore[attr-defined]
    assert [(int(o.number), o.encode()) for o in theirs.opt.option_list()] == list(ours.opt)  # type: ignore[attr-defined]


@settings(max_examples=300)
@given(aiocoap_messages())
def test_tcp_encoding_matches_aiocoap_byte_for_byte(msg: Message) -> None:
    theirs = tcp._serialize(to_aiocoap(msg))
    assert encode_tcp(msg) == theirs
    assert TcpDecoder(1 << 20).feed(theirs) == [as_received(msg)]
    same(msg, tcp._decode_message(encode_tcp(msg)))


@settings(max_examples=300)
@given(aiocoap_messages())
def test_ws_encoding_matches_aiocoap_byte_for_byte(msg: Message) -> None:
    ws = _ws()
    theirs = ws._serialize(to_aiocoap(msg))  # type: ignore[attr-defined]
    assert encode_ws(msg) == theirs
    assert decode_ws(theirs, 1 << 20) == as_received(msg)
    same(msg, ws._decode_message(encode_ws(msg)))  # type: ignore[attr-defined]


@settings(max_examples=40)
@given(_BOUNDARY_PAYLOADS, st.binary(max_size=8))
def test_every_length_form_matches_aiocoap(size: int, token: bytes) -> None:
    msg = Message(code=Code.CONTENT, token=token, opt=Options([(12, b"\x2a")]), payload=b"z" * size)
    theirs = tcp._serialize(to_aiocoap(msg))
    assert encode_tcp(msg) == theirs
    assert TcpDecoder(1 << 20).feed(theirs) == [as_received(msg)]


@pytest.mark.parametrize(
    "msg",
    [
        Message(code=Code.CSM, opt=Options([(2, (1152).to_bytes(2, "big")), (4, b"")])),
        Message(code=Code.PING, token=b"\x42", opt=Options([(2, b"")])),
        Message(code=Code.PONG, token=b"\x42"),
        Message(code=Code.RELEASE, opt=Options([(2, b"h:1"), (4, b"\x1e")]), payload=b"bye"),
        Message(code=Code.ABORT, opt=Options([(2, b"\x03")]), payload=b"bad CSM"),
    ],
    ids=["csm", "ping", "pong", "release", "abort"],
)
def test_signalling_messages_match_aiocoap(msg: Message) -> None:
    assert encode_tcp(msg) == tcp._serialize(to_aiocoap(msg))
