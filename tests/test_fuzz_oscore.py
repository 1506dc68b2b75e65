"""Hypothesis fuzz of OSCORE's decoders: arbitrary bytes either decode or raise coapio's own errors.

Covers the OSCORE option decoder, the server's unprotect path (option, context lookup, replay check,
AEAD, plaintext parsing) and the client's, with both random bytes and mutations of valid messages.
"""

from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st

from coapio.error import MessageFormatError
from coapio.protocol.codes import Code, Type
from coapio.protocol.message import Message
from coapio.protocol.options import OptionNumber
from coapio.protocol.oscore import (
    InMemorySequence,
    MalformedOscoreOption,
    OscoreError,
    OscoreOption,
    SecurityContext,
    protect_request,
    unprotect_request,
    unprotect_response,
)

SECRET = bytes.fromhex("0102030405060708090a0b0c0d0e0f10")


def contexts() -> tuple[SecurityContext, SecurityContext]:
    client = SecurityContext(master_secret=SECRET, sender_id=b"", recipient_id=b"\x01")
    server = SecurityContext(master_secret=SECRET, sender_id=b"\x01", recipient_id=b"")
    return client, server


CLIENT, SERVER = contexts()


@given(st.binary(max_size=64))
def test_option_decoder_decodes_or_raises_malformed(value: bytes) -> None:
    try:
        option = OscoreOption.decode(value)
    except MalformedOscoreOption:
        return
    assert OscoreOption.decode(option.encode()) == option


@given(st.one_of(st.none(), st.integers(0, 2**40 - 1)), st.one_of(st.none(), st.binary(max_size=10)),
       st.one_of(st.none(), st.binary(max_size=255)))
def test_option_round_trip(number: int | None, kid: bytes | None, kid_context: bytes | None) -> None:
    from coapio.protocol.oscore.option import partial_iv_bytes

    option = OscoreOption(None if number is None else partial_iv_bytes(number), kid, kid_context)
    assert OscoreOption.decode(option.encode()) == option


@given(st.binary(max_size=40), st.binary(max_size=80), st.sampled_from([Code.POST, Code.FETCH, Code.GET]))
def test_unprotect_request_of_random_bytes_raises_only_oscore_errors(
    option: bytes, payload: bytes, code: Code
) -> None:
    request = Message(Type.CON, code, 1, b"t", payload=payload)
    request.opt.oscore = option
    try:
        unprotect_request(SERVER, request)
    except OscoreError as e:
        assert e.code.is_response()  # type: ignore[attr-defined]  # every one has a code to answer with


@given(st.data())
def test_mutated_valid_request_is_refused_or_verifies(data: st.DataObject) -> None:
    client, server = contexts()
    client.sequence = InMemorySequence(data.draw(st.integers(0, 2**40 - 1)))
    request = Message(Type.CON, Code.GET, 1, b"t", payload=data.draw(st.binary(max_size=20)))
    request.opt.uri_path = ("a",)
    outer, _ = protect_request(client, request)
    wire = bytearray(outer.encode())
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(wire) - 1))
        wire[position] = data.draw(st.integers(0, 255))
    try:
        mutated = Message.decode(bytes(wire))
    except MessageFormatError:
        return  # not even CoAP: the codec's business, tested elsewhere
    if OptionNumber.OSCORE not in mutated.opt:
        return
    try:
        plain, _ = unprotect_request(server, mutated)
    except OscoreError:
        return
    # It verified: then only unauthenticated parts (header, Class U options) can differ.
    assert plain.code is Code.GET and plain.opt.uri_path == ("a",) and plain.payload == request.payload


@given(st.binary(max_size=40), st.binary(max_size=80), st.booleans())
def test_unprotect_response_of_random_bytes_raises_only_oscore_errors(
    option: bytes, payload: bytes, observe: bool
) -> None:
    request = Message(Type.CON, Code.GET, 1, b"t")
    if observe:
        request.opt.observe = 0
    _, binding = protect_request(CLIENT, request)
    response = Message(Type.ACK, Code.CHANGED, 1, b"t", payload=payload)
    response.opt.oscore = option
    if observe:
        response.opt.observe = 5
    with contextlib.suppress(OscoreError):
        unprotect_response(binding, response)


@given(st.sampled_from(range(0x08, 0x10)) | st.integers(0, 255), st.binary(max_size=12))
def test_the_fast_request_option_reader_agrees_with_the_decoder(flags: int, rest: bytes) -> None:
    """unprotect_request reads the usual option in place; whatever it reads, the strict decoder agrees."""
    from coapio.protocol.oscore.protection import _simple_request_option

    value = bytes((flags,)) + rest
    simple = _simple_request_option(value)
    if simple is None:
        return
    decoded = OscoreOption.decode(value)
    assert (decoded.partial_iv, decoded.kid, decoded.kid_context) == (*simple, None)
