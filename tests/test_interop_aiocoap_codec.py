"""coapio's codec against aiocoap's: each decodes what the other encodes to the same message.

Restricted to what aiocoap models: registered codes, and option values valid for the format aiocoap
gives each number (shortest uints, UTF-8 strings; anything for opaque and unknown options). aiocoap is
used only through its public API (``Message``, ``.encode()``, ``Message.decode()``, ``aiocoap.numbers``).
"""

from __future__ import annotations

import pytest
from conftest import require_interop
from hypothesis import given
from hypothesis import strategies as st
from strategies import BOUNDARY_NUMBERS, REGISTERED_NUMBERS, messages, types

from coapio.protocol.codes import Code, Type
from coapio.protocol.message import Message
from coapio.protocol.options import BlockValue, OptionNumber, Options, encode_uint

aiocoap = require_interop("aiocoap")
from aiocoap import optiontypes  # noqa: E402 - only once the peer is known to be importable
from aiocoap.numbers import Code as ACode  # noqa: E402
from aiocoap.numbers import OptionNumber as AOptionNumber  # noqa: E402
from aiocoap.numbers import Type as AType  # noqa: E402

pytestmark = pytest.mark.interop

_AIOCOAP_NUMBERS = sorted(int(n) for n in AOptionNumber)
_UINT_FORMATS = (optiontypes.UintOption, optiontypes.ContentFormatOption)


def _values_for(number: int) -> st.SearchStrategy[bytes]:
    """Raw values aiocoap reproduces exactly for ``number``, given the format it assigns."""
    fmt = AOptionNumber(number).format
    if fmt is optiontypes.StringOption:
        return st.text(max_size=40).map(str.encode)
    if fmt in _UINT_FORMATS:
        return st.integers(0, 2**32 - 1).map(encode_uint)
    if fmt is optiontypes.BlockOption:
        return st.integers(0, 2**24 - 1).map(encode_uint)
    return st.binary(max_size=300)


@st.composite
def _aiocoap_options(draw: st.DrawFn) -> Options:
    numbers = draw(
        st.lists(
            st.one_of(
                st.sampled_from(sorted(set(REGISTERED_NUMBERS) | set(_AIOCOAP_NUMBERS))),
                st.sampled_from(BOUNDARY_NUMBERS),
                st.integers(0, 65535),
            ),
            max_size=8,
        )
    )
    return Options((n, draw(_values_for(n))) for n in numbers)


def aiocoap_messages() -> st.SearchStrategy[Message]:
    return messages(types=types(), codes=st.sampled_from(list(Code)), options=_aiocoap_options())


def to_aiocoap(msg: Message) -> aiocoap.Message:
    """The same message built with aiocoap's API (attributes set after construction, as it asks)."""
    theirs = aiocoap.Message(code=ACode(int(msg.code)), payload=msg.payload)
    theirs.mtype = AType(int(msg.type))
    theirs.mid = msg.mid
    theirs.token = msg.token
    for number, raw in msg.opt:
        theirs.opt.add_option(AOptionNumber(number).create_option(decode=raw))
    return theirs


def assert_same_message(ours: Message, theirs: aiocoap.Message) -> None:
    assert int(theirs.mtype) == ours.type
    assert int(theirs.code) == ours.code
    assert theirs.mid == ours.mid
    assert bytes(theirs.token) == ours.token
    assert bytes(theirs.payload) == ours.payload
    assert [(int(o.number), o.encode()) for o in theirs.opt.option_list()] == list(ours.opt)


# --- properties -------------------------------------------------------------------------------------


@given(aiocoap_messages())
def test_coapio_encoded_message_decodes_identically_in_aiocoap(msg):
    assert_same_message(msg, aiocoap.Message.decode(msg.encode()))


@given(aiocoap_messages())
def test_aiocoap_encoded_message_decodes_identically_in_coapio(msg):
    data = to_aiocoap(msg).encode()
    assert Message.decode(data) == msg
    assert data == msg.encode()  # both encoders write the same bytes


# --- registries agree -------------------------------------------------------------------------------


def test_registered_codes_agree_with_aiocoap():
    assert {int(c): c.dotted for c in Code} == {int(c): ACode(int(c)).dotted for c in ACode}
    for code in Code:
        theirs = ACode(int(code))
        assert code.is_request() == theirs.is_request()
        assert code.is_response() == theirs.is_response()
        assert code.is_successful() == theirs.is_successful()


def test_registered_option_numbers_agree_with_aiocoap():
    for number in OptionNumber:
        assert AOptionNumber(int(number)).name == number.name


@given(st.integers(0, 65535))
def test_option_bits_agree_with_aiocoap(number):
    ours, theirs = OptionNumber(number), AOptionNumber(number)
    assert ours.is_critical() == theirs.is_critical()
    assert ours.is_unsafe() == theirs.is_unsafe()
    if not ours.is_unsafe():  # aiocoap refuses the question for unsafe options
        assert ours.is_no_cache_key() == theirs.is_nocachekey()


# --- explicit cases ---------------------------------------------------------------------------------


def _response(**fields) -> Message:
    return Message(Type.ACK, Code.CONTENT, 0x1234, b"\x01\x02\x03\x04", **fields)


def _aiocoap_response(**options) -> aiocoap.Message:
    theirs = aiocoap.Message(code=ACode.CONTENT, payload=b"")
    theirs.mtype, theirs.mid, theirs.token = AType.ACK, 0x1234, b"\x01\x02\x03\x04"
    for name, value in options.items():
        setattr(theirs.opt, name, value)
    return theirs


@pytest.mark.parametrize(
    ("num", "more", "szx"), [(0, False, 0), (5, True, 6), (2**20 - 1, True, 6), (3, False, 7)]
)
@pytest.mark.parametrize("attr", ["block1", "block2"])
def test_block_options_agree(attr, num, more, szx):
    ours = _response()
    setattr(ours.opt, attr, BlockValue(num, more, szx))
    theirs = getattr(aiocoap.Message.decode(ours.encode()).opt, attr)
    assert (theirs.block_number, theirs.more, theirs.size_exponent) == (num, more, szx)

    data = _aiocoap_response(**{attr: (num, more, szx)}).encode()
    assert getattr(Message.decode(data).opt, attr) == BlockValue(num, more, szx)
    assert data == ours.encode()


@pytest.mark.parametrize("value", [0, 1, 255, 256, 2**24 - 1])
def test_observe_agrees(value):
    ours = _response()
    ours.opt.observe = value
    assert aiocoap.Message.decode(ours.encode()).opt.observe == value
    data = _aiocoap_response(observe=value).encode()
    assert Message.decode(data).opt.observe == value
    assert data == ours.encode()


@pytest.mark.parametrize("value", [0, 40, 50, 60, 110, 11542, 65000])
def test_content_format_agrees(value):
    ours = _response(payload=b"{}")
    ours.opt.content_format = value
    assert int(aiocoap.Message.decode(ours.encode()).opt.content_format) == value
    theirs = _aiocoap_response(content_format=value)
    theirs.payload = b"{}"
    data = theirs.encode()
    assert Message.decode(data).opt.content_format == value
    assert data == ours.encode()


def test_typical_response_options_agree():
    ours = _response(payload=bytes(range(20)))
    ours.opt.etag = b"\xab\xcd\xef\x01"
    ours.opt.content_format = 50
    ours.opt.max_age = 30
    ours.opt.observe = 42
    theirs = aiocoap.Message.decode(ours.encode())
    assert (theirs.opt.etag, int(theirs.opt.content_format), theirs.opt.max_age) == (
        b"\xab\xcd\xef\x01",
        50,
        30,
    )
    assert theirs.opt.observe == 42
    assert_same_message(ours, theirs)


@pytest.mark.parametrize("length", [12, 13, 268, 269, 1034])
def test_long_proxy_uri_needing_extended_length_agrees(length):
    uri = "coap://h/" + "p" * (length - 9)
    ours = Message(Type.CON, Code.GET, 7, b"t")
    ours.opt.proxy_uri = uri
    assert aiocoap.Message.decode(ours.encode()).opt.proxy_uri == uri
    theirs = aiocoap.Message(code=ACode.GET, payload=b"")
    theirs.mtype, theirs.mid, theirs.token = AType.CON, 7, b"t"
    theirs.opt.proxy_uri = uri
    assert Message.decode(theirs.encode()).opt.proxy_uri == uri
    assert theirs.encode() == ours.encode()


def test_request_path_and_query_agree():
    ours = Message(Type.CON, Code.GET, 0xBEEF, b"\x00\x01\x02\x03")
    ours.opt.uri_path = ("sensors", "temp", "ü")
    ours.opt.uri_query = ("unit=c", "")
    theirs = aiocoap.Message.decode(ours.encode())
    assert theirs.opt.uri_path == ("sensors", "temp", "ü")
    assert theirs.opt.uri_query == ("unit=c", "")
    assert_same_message(ours, theirs)


@pytest.mark.parametrize("numbers", [[2048], [2050, 65000], [300, 600, 65534], [2049, 65535]])
def test_unknown_options_agree(numbers):
    ours = Message(Type.NON, Code.POST, 1, b"", Options((n, bytes([n & 0xFF]) * 3) for n in numbers))
    theirs = aiocoap.Message.decode(ours.encode())
    assert_same_message(ours, theirs)
    assert Message.decode(to_aiocoap(ours).encode()) == ours


def test_empty_messages_agree():
    for mtype in Type:
        ours = Message(mtype, Code.EMPTY, 0xFFFF)
        assert_same_message(ours, aiocoap.Message.decode(ours.encode()))
        assert to_aiocoap(ours).encode() == ours.encode()
