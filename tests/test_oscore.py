"""OSCORE (RFC 8613), sans-IO: the Appendix C vectors byte for byte, round trips, every error path, the
replay window's edges, option classes, Observe ordering, persistence of sequence numbers and the
aiocoap-format credentials."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from coapio.protocol.codes import Code, Type
from coapio.protocol.message import Message
from coapio.protocol.options import OptionNumber
from coapio.protocol.oscore import (
    SEQUENCE_FILE,
    ContextExhausted,
    ContextUnavailable,
    CredentialsError,
    CredentialsMap,
    DecryptionFailed,
    InMemorySequence,
    MalformedOscoreOption,
    OscoreOption,
    ReplayDetected,
    ReplayWindow,
    ReplayWindowUninitialized,
    ResponseProtectionInvalid,
    SecurityContext,
    SequenceFile,
    StaleNotification,
    UnknownSecurityContext,
    UnprotectedErrorResponse,
    _cbor,
    load_context_directory,
    option_class,
    protect_request,
    unprotect_request,
    unprotect_response,
)
from coapio.protocol.oscore import persistence as persistence_module

SECRET = bytes.fromhex("0102030405060708090a0b0c0d0e0f10")
SALT = bytes.fromhex("9e7ca92223786340")
ID_CONTEXT = bytes.fromhex("37cbf3210017a2d3")
h = bytes.fromhex


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def dump(data: object, path: str) -> None:
    with open(path, "w") as f:
        json.dump(data, f)


def pair(**kw: object) -> tuple[SecurityContext, SecurityContext]:
    """A client and a server context over the same secret (C.1's IDs unless overridden)."""
    client_id = kw.pop("client_id", b"")
    server_id = kw.pop("server_id", b"\x01")
    common = {"master_secret": SECRET, "master_salt": SALT, **kw}
    client = SecurityContext(sender_id=client_id, recipient_id=server_id, **common)  # type: ignore[arg-type]
    server = SecurityContext(sender_id=server_id, recipient_id=client_id, **common)  # type: ignore[arg-type]
    return client, server


def get(path: str = "tv1", **kw: object) -> Message:
    msg = Message(Type.CON, Code.GET, 0x5D1F, h("3974"), **kw)  # type: ignore[arg-type]
    msg.opt.uri_host = "localhost"
    msg.opt.uri_path = (path,)
    return msg


# --- Appendix C.1-C.3: key derivation ------------------------------------------------------------------

DERIVATION = [
    # (vector, salt, id context, sender id, recipient id, sender key, recipient key, common IV,
    #  sender nonce for PIV 0, recipient nonce for PIV 0, info for the sender key)
    ("C.1.1", SALT, None, "", "01", "f0910ed7295e6ad4b54fc793154302ff", "ffb14e093c94c9cac9471648b4f98710",
     "4622d4dd6d944168eefb54987c", "4622d4dd6d944168eefb54987c", "4722d4dd6d944169eefb54987c",
     "8540f60a634b657910"),
    ("C.1.2", SALT, None, "01", "", "ffb14e093c94c9cac9471648b4f98710", "f0910ed7295e6ad4b54fc793154302ff",
     "4622d4dd6d944168eefb54987c", "4722d4dd6d944169eefb54987c", "4622d4dd6d944168eefb54987c",
     "854101f60a634b657910"),
    ("C.2.1", b"", None, "00", "01", "321b26943253c7ffb6003b0b64d74041", "e57b5635815177cd679ab4bcec9d7dda",
     "be35ae297d2dace910c52e99f9", "bf35ae297d2dace910c52e99f9", "bf35ae297d2dace810c52e99f9",
     "854100f60a634b657910"),
    ("C.2.2", b"", None, "01", "00", "e57b5635815177cd679ab4bcec9d7dda", "321b26943253c7ffb6003b0b64d74041",
     "be35ae297d2dace910c52e99f9", "bf35ae297d2dace810c52e99f9", "bf35ae297d2dace910c52e99f9",
     "854101f60a634b657910"),
    ("C.3.1", SALT, ID_CONTEXT, "", "01",
     "af2a1300a5e95788b356336eeecd2b92", "e39a0c7c77b43f03b4b39ab9a268699f",
     "2ca58fb85ff1b81c0b7181b85e", "2ca58fb85ff1b81c0b7181b85e", "2da58fb85ff1b81d0b7181b85e",
     "85404837cbf3210017a2d30a634b657910"),
    ("C.3.2", SALT, ID_CONTEXT, "01", "",
     "e39a0c7c77b43f03b4b39ab9a268699f", "af2a1300a5e95788b356336eeecd2b92",
     "2ca58fb85ff1b81c0b7181b85e", "2da58fb85ff1b81d0b7181b85e", "2ca58fb85ff1b81c0b7181b85e",
     "8541014837cbf3210017a2d30a634b657910"),
]


@pytest.mark.parametrize("vector", DERIVATION, ids=[v[0] for v in DERIVATION])
def test_appendix_c_key_derivation(vector: tuple) -> None:  # type: ignore[type-arg]
    _, salt, id_context, sid, rid, skey, rkey, iv, snonce, rnonce, sinfo = vector
    ctx = SecurityContext(
        master_secret=SECRET, master_salt=salt, id_context=id_context, sender_id=h(sid), recipient_id=h(rid)
    )
    assert ctx.sender_key.hex() == skey
    assert ctx.recipient_key.hex() == rkey
    assert ctx.common_iv.hex() == iv
    assert ctx.nonce(ctx.sender_id, b"\x00").hex() == snonce
    assert ctx.nonce(ctx.recipient_id, b"\x00").hex() == rnonce
    assert ctx.info(ctx.sender_id, "Key", 16).hex() == sinfo
    iv_info = "8540f60a6249560d" if id_context is None else "85404837cbf3210017a2d30a6249560d"
    assert ctx.info(b"", "IV", 13).hex() == iv_info


# --- Appendix C.4-C.8: protected messages --------------------------------------------------------------

REQUESTS = [
    # (vector, salt, id context, client sender id, unprotected, protected)
    ("C.4", SALT, None, "", "44015d1f00003974396c6f63616c686f737483747631",
     "44025d1f00003974396c6f63616c686f7374620914ff612f1092f1776f1c1668b3825e"),
    ("C.5", b"", None, "00", "440171c30000b932396c6f63616c686f737483747631",
     "440271c30000b932396c6f63616c686f737463091400ff4ed339a5a379b0b8bc731fffb0"),
    ("C.6", SALT, ID_CONTEXT, "", "44012f8eef9bbf7a396c6f63616c686f737483747631",
     "44022f8eef9bbf7a396c6f63616c686f73746b19140837cbf3210017a2d3ff72cd7273fd331ac45cffbe55c3"),
]


@pytest.mark.parametrize("vector", REQUESTS, ids=[v[0] for v in REQUESTS])
def test_appendix_c_protected_requests(vector: tuple) -> None:  # type: ignore[type-arg]
    _, salt, id_context, sid, plain_hex, protected_hex = vector
    rid = "01"
    client = SecurityContext(master_secret=SECRET, master_salt=salt, id_context=id_context,
                             sender_id=h(sid), recipient_id=h(rid), sequence=InMemorySequence(20))
    server = SecurityContext(master_secret=SECRET, master_salt=salt, id_context=id_context,
                             sender_id=h(rid), recipient_id=h(sid))
    outer, _ = protect_request(client, Message.decode(h(plain_hex)))
    assert outer.encode().hex() == protected_hex
    plain, _ = unprotect_request(server, Message.decode(h(protected_hex)))
    assert plain.encode().hex() == plain_hex


RESPONSE_PLAIN = "64455d1f00003974ff48656c6c6f20576f726c6421"


def _c4_exchange() -> tuple[SecurityContext, SecurityContext, object, object]:
    client, server = pair()
    client.sequence = InMemorySequence(20)
    outer, binding = protect_request(client, Message.decode(h(REQUESTS[0][4])))
    _, protector = unprotect_request(server, outer)
    return client, server, binding, protector


def test_appendix_c7_response_reuses_the_request_nonce() -> None:
    _, _, binding, protector = _c4_exchange()
    outer = protector.protect(Message.decode(h(RESPONSE_PLAIN)))  # type: ignore[attr-defined]
    assert outer.encode().hex() == "64445d1f0000397490ffdbaad1e9a7e7b2a813d3c31524378303cdafae119106"
    assert unprotect_response(binding, outer).encode().hex() == RESPONSE_PLAIN  # type: ignore[arg-type]


def test_appendix_c8_response_with_partial_iv() -> None:
    """C.8: the server uses its own sequence number 0 (here: its second response, the first took none)."""
    _, _, binding, protector = _c4_exchange()
    protector._can_reuse_nonce = False  # type: ignore[attr-defined]  # as if a response was already sent
    outer = protector.protect(Message.decode(h(RESPONSE_PLAIN)))  # type: ignore[attr-defined]
    assert outer.encode().hex() == "64445d1f00003974920100ff4d4c13669384b67354b2b6175ff4b8658c666a6cf88e"
    assert unprotect_response(binding, outer).encode().hex() == RESPONSE_PLAIN  # type: ignore[arg-type]


def test_cbor_encoder_matches_the_vectors_and_cbor2() -> None:
    assert _cbor.dumps([1, [10], b"", b"\x14", b""]).hex() == "8501810a40411440"
    ctx, _ = pair()
    for kid, piv in ((b"", b"\x14"), (b"k" * 7, b"\xff" * 5)):
        aad_array = _cbor.dumps([1, [10], kid, piv, b""])
        assert ctx.external_aad(kid, piv) == _cbor.dumps(["Encrypt0", b"", aad_array])
    cbor2 = pytest.importorskip("cbor2")
    for item in [0, 23, 24, 255, 256, 65535, 65536, 2**32, -1, -24, -25, -(2**40), b"x" * 300, "é" * 30,
                 [None, [1, [2, "Key"]]], list(range(30))]:
        assert _cbor.dumps(item) == cbor2.dumps(item)  # type: ignore[arg-type]


# --- round trips -----------------------------------------------------------------------------------------

def test_round_trip_keeps_code_options_payload_and_addressing() -> None:
    client, server = pair()
    request = Message(Type.NON, Code.PUT, 7, b"tok", payload=b"body", remote=("192.0.2.1", 5683))
    request.opt.uri_host = "example.com"
    request.opt.uri_port = 61616
    request.opt.uri_path = ("a", "b")
    request.opt.uri_query = ("q=1",)
    request.opt.content_format = 50
    request.opt.add(65000, b"unknown elective")
    outer, binding = protect_request(client, request)
    assert outer.code is Code.POST and outer.type is Type.NON and outer.mid == 7 and outer.token == b"tok"
    assert outer.remote == ("192.0.2.1", 5683)
    assert [n for n, _ in outer.opt] == [OptionNumber.URI_HOST, OptionNumber.URI_PORT, OptionNumber.OSCORE]
    assert b"body" not in outer.payload
    plain, protector = unprotect_request(server, outer)
    assert plain == request and plain.remote == request.remote
    response = Message(Type.ACK, Code.CONTENT, 7, b"tok", payload=b"answer")
    response.opt.content_format = 0
    response.opt.max_age = 30
    protected = protector.protect(response)
    assert protected.code is Code.CHANGED and [n for n, _ in protected.opt] == [OptionNumber.OSCORE]
    assert unprotect_response(binding, protected) == response


def test_request_is_not_changed_and_each_protection_takes_a_new_sequence_number() -> None:
    client, _ = pair()
    request = get()
    before = request.copy()
    first, _ = protect_request(client, request)
    second, _ = protect_request(client, request)
    assert request == before
    assert OscoreOption.decode(first.opt.oscore or b"").sequence_number == 0  # type: ignore[arg-type]
    assert OscoreOption.decode(second.opt.oscore or b"").sequence_number == 1  # type: ignore[arg-type]
    assert first.payload != second.payload


def test_second_response_takes_a_partial_iv_and_never_reuses_the_nonce() -> None:
    client, server = pair()
    outer, binding = protect_request(client, get())
    _, protector = unprotect_request(server, outer)
    one = protector.protect(Message(code=Code.CONTENT, payload=b"1"))
    two = protector.protect(Message(code=Code.CONTENT, payload=b"2"))
    assert OscoreOption.decode(one.opt.oscore or b"").partial_iv is None
    assert OscoreOption.decode(two.opt.oscore or b"").partial_iv == b"\x00"
    assert unprotect_response(binding, one).payload == b"1"
    assert unprotect_response(binding, two).payload == b"2"


def test_other_algorithms_and_hashes_round_trip() -> None:
    for alg in ("AES-CCM-16-64-256", "AES-CCM-64-64-128", "AES-CCM-16-128-128", "A128GCM", "A256GCM",
                "ChaCha20/Poly1305", 10):
        for kdf in ("sha256", "sha512"):
            client, server = pair(algorithm=alg, kdf_hash=kdf)
            outer, binding = protect_request(client, get())
            plain, protector = unprotect_request(server, outer)
            assert plain.opt.uri_path == ("tv1",)
            response = protector.protect(Message(code=Code.CONTENT))
            assert unprotect_response(binding, response).code is Code.CONTENT


def test_sender_id_longer_than_the_nonce_allows_is_refused() -> None:
    with pytest.raises(ValueError, match="at most 7"):
        SecurityContext(master_secret=SECRET, sender_id=b"12345678", recipient_id=b"")
    with pytest.raises(ValueError, match="unsupported"):
        SecurityContext(master_secret=SECRET, sender_id=b"", recipient_id=b"", algorithm="A128CBC")


# --- option classes, Proxy-Uri, Observe -----------------------------------------------------------------

def test_option_classes() -> None:
    assert option_class(OptionNumber.URI_HOST) == "U"
    assert option_class(OptionNumber.PROXY_SCHEME) == "U"
    assert option_class(OptionNumber.HOP_LIMIT) == "U"
    assert option_class(OptionNumber.OBSERVE) == "EU"
    assert option_class(OptionNumber.NO_RESPONSE) == "EU"
    for inner in ("URI_PATH", "URI_QUERY", "ETAG", "IF_MATCH", "CONTENT_FORMAT", "MAX_AGE", "ACCEPT", "ECHO",
                  "BLOCK1", "BLOCK2", "SIZE1", "SIZE2", "LOCATION_PATH", "REQUEST_TAG"):
        assert option_class(OptionNumber[inner]) == "E", inner
    assert option_class(65000) == "E"  # unknown options are encrypted (§4.1)


def test_proxy_uri_is_decomposed_and_recomposed() -> None:
    client, server = pair()
    request = Message(code=Code.GET)
    request.opt.proxy_uri = "coap://example.com/resource?q=1"
    outer, _ = protect_request(client, request)
    assert outer.opt.proxy_uri == "coap://example.com"  # §4.1.3.3's example
    assert OptionNumber.URI_PATH not in outer.opt
    plain, _ = unprotect_request(server, outer)
    assert plain.opt.proxy_uri == "coap://example.com/resource?q=1"
    assert plain.opt.uri_path == () and plain.opt.uri_query == ()


def test_outer_class_e_options_are_discarded_and_inner_ones_win() -> None:
    client, server = pair()
    outer, _ = protect_request(client, get("secret"))
    outer.opt.uri_path = ("injected",)
    outer.opt.max_age = 5
    plain, _ = unprotect_request(server, outer)
    assert plain.opt.uri_path == ("secret",) and plain.opt.max_age is None


def test_observe_request_uses_fetch_and_both_observe_options() -> None:
    client, server = pair()
    request = get("obs")
    request.opt.observe = 0
    outer, binding = protect_request(client, request)
    assert outer.code is Code.FETCH and outer.opt.observe == 0
    plain, protector = unprotect_request(server, outer)
    assert plain.code is Code.GET and plain.opt.observe == 0

    notifications = []
    for n, body in ((5, b"a"), (6, b"b"), (7, b"c")):
        note = Message(code=Code.CONTENT, payload=body)
        note.opt.observe = n
        protected = protector.protect(note)
        assert protected.code is Code.CONTENT and protected.opt.observe == n
        assert OscoreOption.decode(protected.opt.oscore or b"").partial_iv is not None
        notifications.append(protected)
    server_seq = [OscoreOption.decode(p.opt.oscore or b"").sequence_number for p in notifications]
    got = unprotect_response(binding, notifications[0])
    assert got.payload == b"a" and got.opt.observe == (server_seq[0] or 0) + 1
    assert unprotect_response(binding, notifications[2]).payload == b"c"
    with pytest.raises(StaleNotification):  # reordered: older than one already accepted (§7.4.1)
        unprotect_response(binding, notifications[1])
    final = protector.protect(Message(code=Code.NOT_FOUND))
    assert final.code is Code.CHANGED
    assert unprotect_response(binding, final).code is Code.NOT_FOUND


def test_observe_removed_by_a_proxy_is_served_as_a_plain_request() -> None:
    client, server = pair()
    request = get("obs")
    request.opt.observe = 0
    outer, _ = protect_request(client, request)
    outer.opt.observe = None
    plain, _ = unprotect_request(server, outer)
    assert plain.opt.observe is None


# --- server errors (§8.2) --------------------------------------------------------------------------------

def test_unknown_kid_is_401_security_context_not_found() -> None:
    client, _ = pair()
    _, other = pair(client_id=b"\x07")
    outer, _ = protect_request(client, get())
    with pytest.raises(UnknownSecurityContext) as info:
        unprotect_request(other, outer)
    assert info.value.code is Code.UNAUTHORIZED and info.value.message == "Security context not found"
    assert (int(OptionNumber.MAX_AGE), 0) in info.value.options


def test_wrong_kid_context_is_unknown_context() -> None:
    client, server = pair(id_context=b"ctx1")
    outer, _ = protect_request(client, get())
    outer.opt.oscore = OscoreOption(b"\x00", b"", b"ctx2").encode()
    with pytest.raises(UnknownSecurityContext):
        unprotect_request(server, outer)


def test_wrong_key_is_400_decryption_failed() -> None:
    client, _ = pair()
    wrong = SecurityContext(master_secret=b"another secret!!", master_salt=SALT, sender_id=b"\x01",
                            recipient_id=b"")
    outer, _ = protect_request(client, get())
    with pytest.raises(DecryptionFailed) as info:
        unprotect_request(wrong, outer)
    assert info.value.code is Code.BAD_REQUEST and info.value.message == "Decryption failed"


@pytest.mark.parametrize("where", ["ciphertext", "tag", "partial_iv", "kid_context_added", "short"])
def test_tampering_is_decryption_failed(where: str) -> None:
    client, server = pair()
    outer, _ = protect_request(client, get())
    payload = bytearray(outer.payload)
    if where == "ciphertext":
        payload[0] ^= 1
    elif where == "tag":
        payload[-1] ^= 0x80
    elif where == "partial_iv":
        outer.opt.oscore = OscoreOption(b"\x05", b"").encode()
    elif where == "kid_context_added":
        server = SecurityContext(master_secret=SECRET, master_salt=SALT, sender_id=b"\x01",
                                 recipient_id=b"", id_context=b"")
        outer.opt.oscore = OscoreOption(b"\x00", b"", b"").encode()
    else:
        payload = payload[:3]
    outer.payload = bytes(payload)
    with pytest.raises(DecryptionFailed):
        unprotect_request(server, outer)
    assert server.replay_window.top == -1  # a failed request does not move the window


def test_tampered_outer_class_u_option_is_not_authenticated_but_inner_is() -> None:
    """Uri-Host is Class U: changing it does not break verification (that is the point of Class U)."""
    client, server = pair()
    outer, _ = protect_request(client, get())
    outer.opt.uri_host = "elsewhere"
    plain, _ = unprotect_request(server, outer)
    assert plain.opt.uri_host == "elsewhere" and plain.opt.uri_path == ("tv1",)


@pytest.mark.parametrize("value", [
    b"\x00",  # flags all zero but not empty
    b"\x20\x00",  # reserved bit
    b"\x06123456",  # reserved Partial IV length
    b"\x03\x01",  # Partial IV truncated
    b"\x02\x00\x01",  # Partial IV with a leading zero
    b"\x11\x00",  # kid context length missing
    b"\x11\x00\x05ab",  # kid context truncated
    b"\x01\x00zz",  # trailing bytes with no kid flag
])
def test_malformed_oscore_option_is_402(value: bytes) -> None:
    with pytest.raises(MalformedOscoreOption):
        OscoreOption.decode(value)
    _, server = pair()
    request = Message(code=Code.POST, payload=b"x" * 20)
    request.opt.oscore = value
    with pytest.raises(MalformedOscoreOption) as info:
        unprotect_request(server, request)
    assert info.value.code is Code.BAD_OPTION and info.value.message == "Failed to decode COSE"


def test_request_without_partial_iv_or_kid_is_malformed() -> None:
    _, server = pair()
    for value in (OscoreOption(kid=b"").encode(), OscoreOption(b"\x01").encode(), b""):
        request = Message(code=Code.POST, payload=b"x" * 20)
        request.opt.oscore = value
        with pytest.raises(MalformedOscoreOption):
            unprotect_request(server, request)


def test_repeated_oscore_option_is_malformed() -> None:
    client, server = pair()
    outer, _ = protect_request(client, get())
    outer.opt.add(OptionNumber.OSCORE, outer.opt.oscore or b"")
    with pytest.raises(MalformedOscoreOption):
        unprotect_request(server, outer)


def test_protected_response_code_in_a_request_is_malformed() -> None:
    """A request whose authenticated plaintext carries a response code (2.05) is refused with 4.02."""
    client, server = pair()
    piv = b"\x03"
    request = Message(code=Code.POST)
    request.opt.oscore = OscoreOption(piv, client.sender_id).encode()
    request.payload = client._seal(client.nonce(client.sender_id, piv), bytes([Code.CONTENT]),
                                   client.external_aad(client.sender_id, piv))
    with pytest.raises(MalformedOscoreOption):
        unprotect_request(server, request)


# --- replay window (§7.4) -------------------------------------------------------------------------------

def _request_with(client: SecurityContext, number: int) -> Message:
    client.sequence = InMemorySequence(number)
    return protect_request(client, get())[0]


def test_replayed_request_is_401_replay_detected() -> None:
    client, server = pair()
    outer, _ = protect_request(client, get())
    unprotect_request(server, outer)
    with pytest.raises(ReplayDetected) as info:
        unprotect_request(server, outer)
    assert info.value.code is Code.UNAUTHORIZED and info.value.message == "Replay detected"


def test_replay_window_edges() -> None:
    client, server = pair(replay_window=32)
    unprotect_request(server, _request_with(client, 100))
    unprotect_request(server, _request_with(client, 69))  # just inside: 100 - 31
    with pytest.raises(ReplayDetected):
        unprotect_request(server, _request_with(client, 68))  # just outside: 100 - 32
    with pytest.raises(ReplayDetected):
        unprotect_request(server, _request_with(client, 69))  # inside, but seen
    unprotect_request(server, _request_with(client, 99))  # inside, unseen
    unprotect_request(server, _request_with(client, 2**40 - 1))  # far ahead: the window jumps
    with pytest.raises(ReplayDetected):
        unprotect_request(server, _request_with(client, 101))


def test_replay_window_unit() -> None:
    window = ReplayWindow(4)
    assert window.is_fresh(0)
    window.accept(3)
    assert [window.is_fresh(n) for n in range(6)] == [True, True, True, False, True, True]
    window.accept(10)
    assert [window.is_fresh(n) for n in (6, 7, 8, 9, 10, 11)] == [False, True, True, True, False, True]
    window.accept(8)
    assert not window.is_fresh(8)
    back = ReplayWindow.from_json(window.to_json(), 4)
    assert [back.is_fresh(n) for n in range(14)] == [window.is_fresh(n) for n in range(14)]
    assert not ReplayWindow.from_json("unknown").initialized
    assert not ReplayWindow.from_json({"index": "x"}).initialized
    assert not ReplayWindow.from_json({"index": 0, "bitfield": 1 << 5000}).initialized
    low = ReplayWindow.from_json({"index": 5, "bitfield": 0}, 4)
    assert [low.is_fresh(n) for n in range(7)] == [False] * 5 + [True, True]


def test_aiocoap_window_semantics_survive_conversion() -> None:
    """aiocoap's {"index", "bitfield"}: numbers below index are old, bit i marks index + i as seen."""
    window = ReplayWindow.from_json({"index": 10, "bitfield": 0b101}, 32)
    assert [window.is_fresh(n) for n in range(9, 15)] == [False, False, True, False, True, True]


def test_b12_uninitialized_window_needs_an_echo_round_trip() -> None:
    client, server = pair(replay_window_initialized=False)
    assert not server.replay_window_initialized
    first, binding = protect_request(client, get())
    with pytest.raises(ReplayWindowUninitialized) as info:
        unprotect_request(server, first)
    assert isinstance(info.value, ReplayDetected) and info.value.code is Code.UNAUTHORIZED
    assert info.value.request.opt.uri_path == ("tv1",)
    # The 4.01 with Echo is protected with a fresh Partial IV, never the request's nonce.
    challenge = Message(code=Code.UNAUTHORIZED)
    challenge.opt.echo = b"fresh-echo"
    protected = info.value.protector.protect(challenge)
    assert OscoreOption.decode(protected.opt.oscore or b"").partial_iv is not None
    assert unprotect_response(binding, protected).opt.echo == b"fresh-echo"
    # The client repeats the request with the Echo; the runtime found it fresh and initializes.
    repeat = get()
    repeat.opt.echo = b"fresh-echo"
    second, binding2 = protect_request(client, repeat)
    with pytest.raises(ReplayWindowUninitialized) as info2:
        unprotect_request(server, second)
    assert info2.value.request.opt.echo == b"fresh-echo"
    server.initialize_replay_window(info2.value.protector)
    assert server.replay_window_initialized
    answer = info2.value.protector.protect(Message(code=Code.CONTENT))
    assert OscoreOption.decode(answer.opt.oscore or b"").partial_iv is None  # fresh now: may reuse
    assert unprotect_response(binding2, answer).code is Code.CONTENT
    with pytest.raises(ReplayDetected):  # the old, unproven request stays refused
        unprotect_request(server, first)
    with pytest.raises(ReplayDetected):
        unprotect_request(server, second)
    unprotect_request(server, protect_request(client, get())[0])


def test_initialize_replay_window_needs_this_contexts_protector() -> None:
    _, server = pair()
    with pytest.raises(ValueError):
        server.initialize_replay_window(object())


# --- client errors (§8.4) --------------------------------------------------------------------------------

def test_client_rejects_tampered_and_foreign_responses() -> None:
    client, server = pair()
    outer, binding = protect_request(client, get())
    _, protector = unprotect_request(server, outer)
    response = protector.protect(Message(code=Code.CONTENT, payload=b"ok"))
    tampered = response.copy(payload=response.payload[:-1] + bytes([response.payload[-1] ^ 1]))
    with pytest.raises(ResponseProtectionInvalid):
        unprotect_response(binding, tampered)
    _, other_binding = protect_request(client, get())  # a response bound to another request
    with pytest.raises(ResponseProtectionInvalid):
        unprotect_response(other_binding, response)
    bad_option = response.copy()
    bad_option.opt.oscore = b"\x07"
    with pytest.raises(ResponseProtectionInvalid):
        unprotect_response(binding, bad_option)
    other_kid = response.copy()
    other_kid.opt.oscore = OscoreOption(kid=b"\x09").encode()
    with pytest.raises(ResponseProtectionInvalid):
        unprotect_response(binding, other_kid)
    assert unprotect_response(binding, response).payload == b"ok"


def test_unprotected_error_response_is_reported_with_the_message() -> None:
    client, _ = pair()
    _, binding = protect_request(client, get())
    error = Message(Type.ACK, Code.UNAUTHORIZED, payload=b"Security context not found")
    with pytest.raises(UnprotectedErrorResponse) as info:
        unprotect_response(binding, error)
    assert info.value.response is error


# --- sequence numbers and their persistence (Appendix B.1.1) ---------------------------------------------

def test_in_memory_sequence_is_exhausted_after_2_40() -> None:
    client, _ = pair()
    client.sequence = InMemorySequence(2**40 - 1)
    protect_request(client, get())
    with pytest.raises(ContextExhausted):
        protect_request(client, get())


def test_reservation_survives_a_crash(tmp_path: object) -> None:
    directory = str(tmp_path)
    seq = SequenceFile(directory, reserve=4, lock=False)
    handed_out = [seq.take() for _ in range(11)]
    assert handed_out == list(range(11))
    on_disk = json.loads(read(os.path.join(directory, SEQUENCE_FILE)))
    assert on_disk["next-to-send"] > max(handed_out) and on_disk["received"] == "unknown"
    # Crash: no close(). The next process continues beyond anything handed out.
    again = SequenceFile(directory, reserve=4, lock=False)
    assert again.take() > max(handed_out)
    assert not again.replay_window().initialized  # window lost: Echo recovery (B.1.2)


def test_clean_close_records_the_exact_position_and_the_window(tmp_path: object) -> None:
    directory = str(tmp_path)
    seq = SequenceFile(directory, reserve=100, lock=False)
    for _ in range(3):
        seq.take()
    window = ReplayWindow()
    window.accept(7)
    seq.close(window)
    again = SequenceFile(directory, lock=False)
    assert again.take() == 3
    restored = again.replay_window()
    assert restored.initialized and not restored.is_fresh(7) and restored.is_fresh(8)


def test_reserve_grows_so_that_writes_become_rare(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    writes = []
    real = persistence_module.write_atomically
    monkeypatch.setattr(persistence_module, "write_atomically", lambda p, d: (writes.append(d), real(p, d)))
    seq = SequenceFile(str(tmp_path), reserve=2, reserve_limit=64, lock=False)
    for _ in range(1000):
        seq.take()
    assert len(writes) < 25


def test_atomic_write_leaves_no_partial_file_on_failure(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = str(tmp_path)
    seq = SequenceFile(directory, reserve=1, lock=False)
    seq.take()
    before = read(os.path.join(directory, SEQUENCE_FILE))

    def failing_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        seq.take()
    monkeypatch.undo()
    assert read(os.path.join(directory, SEQUENCE_FILE)) == before
    assert sorted(os.listdir(directory)) == [SEQUENCE_FILE]
    # The number whose reservation failed was not handed out; the next try hands it out.
    assert seq.take() == 1


def test_corrupt_sequence_file_is_a_credentials_error(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), SEQUENCE_FILE)
    for content in (b"{not json", b'{"next-to-send": -1}', b"[]", b'{"next-to-send": "3"}'):
        with open(path, "wb") as f:
            f.write(content)
        with pytest.raises(CredentialsError):
            SequenceFile(str(tmp_path), lock=False)


def test_directory_lock_keeps_a_second_user_out(tmp_path: object) -> None:
    first = SequenceFile(str(tmp_path))
    with pytest.raises(ContextUnavailable):
        SequenceFile(str(tmp_path))
    first.close()
    SequenceFile(str(tmp_path)).close()


# --- credentials in aiocoap's format ---------------------------------------------------------------------

def write_context(directory: str, settings: dict, secrets: dict | None = None) -> str:  # type: ignore[type-arg]
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "settings.json"), "w") as f:
        json.dump(settings, f)
    if secrets is not None:
        with open(os.path.join(directory, "secret.json"), "w") as f:
            json.dump(secrets, f)
    return directory


C1_CLIENT = {"sender-id_hex": "", "recipient-id_hex": "01", "salt_hex": "9e7ca92223786340"}
C1_SECRET = {"secret_hex": "0102030405060708090a0b0c0d0e0f10"}


def test_context_directory_in_aiocoap_format(tmp_path: object) -> None:
    directory = write_context(os.path.join(str(tmp_path), "client"), C1_CLIENT, C1_SECRET)
    ctx = load_context_directory(directory)
    assert ctx.sender_key.hex() == "f0910ed7295e6ad4b54fc793154302ff"
    assert ctx.algorithm.name == "AES-CCM-16-64-128" and ctx.kdf_hash == "sha256"
    assert ctx.next_sequence_number() == 0
    ctx.close()
    assert load_context_directory(directory).next_sequence_number() == 1


def test_context_directory_ascii_secret_and_options(tmp_path: object) -> None:
    directory = write_context(str(tmp_path), {
        "sender-id_ascii": "c", "recipient-id_ascii": "s", "secret_ascii": "hunter2",
        "id-context_hex": "37cbf3210017a2d3", "algorithm": "A128GCM", "kdf-hashfun": "sha384", "window": 64,
    })
    ctx = load_context_directory(directory, persist=False)
    assert ctx.sender_id == b"c" and ctx.id_context == ID_CONTEXT and ctx.algorithm.name == "A128GCM"
    assert ctx.replay_window.size == 64


@pytest.mark.parametrize("settings, secrets, match", [
    ({"sender-id_hex": "", "recipient-id_hex": "01"}, None, "'secret' is missing"),
    (C1_CLIENT, {"secret_hex": "zz"}, "hex"),
    ({**C1_CLIENT, "secret_hex": "00"}, C1_SECRET, "more than one file"),
    ({**C1_CLIENT, "algorithm": "ROT13"}, C1_SECRET, "unsupported"),
    ({**C1_CLIENT, "kdf-hashfun": "md5"}, C1_SECRET, "kdf-hashfun"),
    ({**C1_CLIENT, "window": "big"}, C1_SECRET, "window"),
    ({**C1_CLIENT, "secret": "raw"}, None, "suffix"),
    ({**C1_CLIENT, "sender-id_hex": "0001020304050607"}, C1_SECRET, "at most 7"),
])
def test_bad_context_directories(tmp_path: object, settings: dict, secrets: dict | None, match: str) -> None:  # type: ignore[type-arg]
    directory = write_context(str(tmp_path), settings, secrets)
    with pytest.raises(CredentialsError, match=match):
        load_context_directory(directory)
    if os.path.exists(os.path.join(directory, "lock")):
        SequenceFile(directory).close()  # a failed load released the lock


def test_credentials_map_by_uri_and_by_kid(tmp_path: object) -> None:
    base = str(tmp_path)
    write_context(os.path.join(base, "a"), C1_CLIENT, C1_SECRET)
    write_context(os.path.join(base, "b"), {"sender-id_hex": "02", "recipient-id_hex": "03", **C1_SECRET})
    credentials = {
        "coap://example.com/*": {"oscore": {"contextfile": "a/"}},
        "coap://example.com/public/*": {"unprotected": True},
        "coap://other/*": ":shared",
        ":shared": {"oscore": {"basedir": "b"}},
        "coaps://example.com/*": {"dtls": {"psk": {"ascii": "x"}, "client-identity": {"ascii": "y"}}},
    }
    path = os.path.join(base, "credentials.json")
    dump(credentials, path)
    with CredentialsMap.load(path) as cmap:
        a = cmap.context_for_uri("coap://example.com/sensor")
        assert a is not None and a.recipient_id == b"\x01" and a.name == "coap://example.com/*"
        assert cmap.context_for_uri("coap://example.com/public/x") is None
        b = cmap.context_for_uri("coap://other/x")
        assert b is not None and b.sender_id == b"\x02"
        assert cmap.context_for_uri("coap://nowhere/") is None
        assert cmap.context_for_uri("coaps://example.com/") is None
        assert cmap.find_context(b"\x03", None) is b
        assert cmap.find_context(b"\x01", None) is a
        assert cmap.find_context(b"\x01", b"wrong context") is None
        assert cmap.find_context(b"\x09", None) is None
        assert len(list(cmap)) == 2
    # close() recorded the positions and released the locks
    SequenceFile(os.path.join(base, "a")).close()


def test_credentials_map_shares_one_context_per_directory(tmp_path: object) -> None:
    write_context(os.path.join(str(tmp_path), "a"), C1_CLIENT, C1_SECRET)
    cmap = CredentialsMap.from_dict(
        {"coap://h1/*": {"oscore": {"basedir": "a"}}, "coap://h2/*": {"oscore": {"basedir": "a/"}}},
        base=str(tmp_path),
    )
    assert cmap.context_for_uri("coap://h1/") is cmap.context_for_uri("coap://h2/")
    cmap.close()


@pytest.mark.parametrize("data", [
    [], {"x": 5}, {"x": "no-colon"}, {"x": {"oscore": {}}}, {"x": {"oscore": "dir"}}, {"x": {"a": 1, "b": 2}},
])
def test_bad_credentials_maps(data: object) -> None:
    with pytest.raises(CredentialsError):
        CredentialsMap.from_dict(data)


def test_credentials_reference_loop_is_an_error(tmp_path: object) -> None:
    cmap = CredentialsMap.from_dict({"coap://h/*": ":a", ":a": ":b", ":b": ":a"})
    with pytest.raises(CredentialsError):
        cmap.context_for_uri("coap://h/")


def test_server_uses_credentials_map_as_lookup(tmp_path: object) -> None:
    write_context(os.path.join(str(tmp_path), "srv"),
                  {"sender-id_hex": "01", "recipient-id_hex": "", "salt_hex": "9e7ca92223786340"}, C1_SECRET)
    with CredentialsMap.from_dict({":client": {"oscore": {"basedir": "srv"}}}, base=str(tmp_path)) as cmap:
        client, _ = pair()
        outer, binding = protect_request(client, get())
        _, protector = unprotect_request(cmap, outer)
        assert protector.context.name == ":client"
        assert unprotect_response(binding, protector.protect(Message(code=Code.CONTENT))).code is Code.CONTENT
        _, stranger = pair(client_id=b"\x55")
        with pytest.raises(UnknownSecurityContext):
            unprotect_request(cmap, protect_request(pair(client_id=b"\x55")[0], get())[0])
        del stranger


# --- the optional dependency -----------------------------------------------------------------------------

def test_importing_needs_no_cryptography_and_using_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['cryptography'] = None\n"
        "import coapio, coapio.protocol.oscore as o\n"
        "try:\n"
        "    o.SecurityContext(master_secret=b'k', sender_id=b'', recipient_id=b'1')\n"
        "except o.MissingOscoreExtra as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install 'coapio[oscore]'" in out
