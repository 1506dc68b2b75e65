"""Fuzzing of every decoder of untrusted bytes that the other test modules leave unfuzzed, and a smoke run of
the atheris targets in fuzz/.

The rule: a decoder returns a value or raises a coapio error (:mod:`coapio.error`), never anything else.
Where each decoder is fuzzed:

* ``Message.decode``: random, version-1 and lightly damaged bytes in test_message.py; here structure-aware
  mutations of valid requests (fuzz/coapfuzz.py), compared field by field and action by action with a
  reference parser written from RFC 7252 §3, plus the §3 edge cases one by one.
* Typed options of decoded messages (``opt.block2``, ``opt.observe``, ...): here.
* ``BlockValue.decode``: round trips in test_options.py; any bytes here.
* Link format: random text and bytes in test_linkformat.py; here damaged valid documents and queries.
* URIs: ``split_uri`` of random text in test_uri.py; here ``compose_uri`` of any option values and the
  ``uri`` of decoded requests.
* Content formats: ``ContentFormat.parse`` (command-line text; ValueError by design) in
  test_contentformat.py; here the client's payload formatter, which parses payloads by content format.
* Observe, Echo and No-Response values, and the block-wise client state machines fed hostile responses:
  here.
* The server as a whole: fuzz/fuzz_server.py's sans-IO harness here, real sockets in test_fuzz_server.py.

Longer runs: ``HYPOTHESIS_PROFILE=fuzz COAPIO_FUZZ_EXAMPLES=100000 pytest tests/test_fuzz_decoders.py``.
"""

from __future__ import annotations

import importlib
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from coapio import BlockValue, Code, ContentFormat, Message, Type
from coapio.cli.client import format_payload
from coapio.error import CoapError, MessageFormatError, ResponseRejected, UriError, WireAction
from coapio.protocol.blockwise import Block1Sender, Block2Assembler
from coapio.protocol.echo import EchoGuard
from coapio.protocol.observe import ClientObservation, Verdict
from coapio.protocol.options import OptionNumber, Options
from coapio.protocol.uri import compose_uri, split_uri

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fuzz"))
import coapfuzz
import fuzz_linkformat
import fuzz_message
import fuzz_server
import fuzz_uri
from strategies import REGISTERED_NUMBERS
from strategies import options as option_values

randoms = st.randoms(use_true_random=False)
SERVER = ("127.0.0.1", 5683)


# --- the UDP codec ---------------------------------------------------------------------------------------


@given(randoms)
def test_fuzz_structured_mutations_decode_as_the_reference_parser_says(rng: random.Random) -> None:
    fuzz_message.TestOneInput(coapfuzz.mutate(rng))


RESET, DROP = WireAction.RESET, WireAction.DROP


@pytest.mark.parametrize(
    ("datagram", "outcome"),
    [
        ("", (DROP, None)),  # no header: nothing to echo
        ("400112", (DROP, None)),
        ("40001234", "ok"),  # a ping
        ("4000123400", (RESET, 0x1234)),  # Empty with a byte after the message ID
        ("6000123400", (DROP, 0x1234)),  # the same as an ACK
        ("80011234", (DROP, 0x1234)),  # version 2: ignored, even a CON
        ("c0001234", (DROP, 0x1234)),
        ("4901123400000000000000000000", (RESET, 0x1234)),  # token length 9
        ("4f011234", (RESET, 0x1234)),  # token length 15
        ("5f011234", (DROP, 0x1234)),
        ("41011234", (RESET, 0x1234)),  # a token byte missing
        ("40011234ff", (RESET, 0x1234)),  # payload marker, no payload
        ("50011234ff", (DROP, 0x1234)),
        ("40011234ff00", "ok"),
        ("40011234d0", (RESET, 0x1234)),  # delta 13 without its extension byte
        ("40011234e000", (RESET, 0x1234)),  # delta 14 with one of its two extension bytes
        ("40011234f0", (RESET, 0x1234)),  # delta nibble 15 outside the payload marker
        ("400112340f", (RESET, 0x1234)),  # length nibble 15
        ("40011234d1ff", (RESET, 0x1234)),  # option 268 announces a byte that is not there
        ("40011234e0fef2", "ok"),  # option 65535
        ("40011234e0fef3", (RESET, 0x1234)),  # option 65536
        ("40011234e0fef210", (RESET, 0x1234)),  # 65535 + 1
        ("400112340d00" + "61" * 13, "ok"),  # length 13
        ("400112340d00" + "61" * 12, (RESET, 0x1234)),
        ("400112340e0000" + "61" * 269, "ok"),  # length 269
        ("400112340e0001" + "61" * 269, (RESET, 0x1234)),
        ("53011234abcd", (DROP, 0x1234)),  # NON: token past the end
    ],
)
def test_rfc7252_section3_edge_cases(datagram: str, outcome: object) -> None:
    data = bytes.fromhex(datagram)
    reference = coapfuzz.parse(data)
    if outcome == "ok":
        assert isinstance(reference, coapfuzz.Parsed)
        assert Message.decode(data).encode() == data
        return
    action, mid = outcome  # type: ignore[misc]
    assert isinstance(reference, coapfuzz.Rejected)
    assert (RESET if reference.reset else DROP, reference.mid) == (action, mid)
    with pytest.raises(MessageFormatError) as caught:
        Message.decode(data)
    assert (caught.value.action, caught.value.mid) == (action, mid)


# --- options ---------------------------------------------------------------------------------------------


@given(randoms)
def test_fuzz_typed_options_of_decoded_datagrams_read_or_raise_coapio_errors(rng: random.Random) -> None:
    data = coapfuzz.mutate(rng)
    try:
        msg = Message.decode(data)
    except MessageFormatError:
        return
    fuzz_message.read_every_option(msg.opt)


@given(option_values(numbers=st.sampled_from(REGISTERED_NUMBERS), max_options=12))
def test_fuzz_typed_options_read_any_registered_option_value(opt: Options) -> None:
    fuzz_message.read_every_option(opt)
    assert isinstance(opt.no_response if OptionNumber.NO_RESPONSE in opt else 0, int)


@given(st.binary(max_size=3))
def test_fuzz_block_value_decodes_any_value_of_at_most_three_bytes(raw: bytes) -> None:
    block = BlockValue.decode(raw)
    assert block.encode() == raw.lstrip(b"\0")


def test_block_value_decode_of_an_overlong_value_raises_a_coapio_error() -> None:
    """RFC 7959 §2.2 gives Block options 0-3 bytes; a longer value is malformed, and a decoder says so with
    its own error (found by fuzzing: it was the constructor's plain ValueError)."""
    with pytest.raises(CoapError):
        BlockValue.decode(b"\x01\x00\x00\x00")


# --- Observe, Echo, No-Response ----------------------------------------------------------------------------


def _registration() -> Message:
    request = Message(Type.CON, Code.GET, 1, b"ob", remote=SERVER)
    request.opt.uri_path = ("obs",)
    request.opt.observe = 0
    return request


@given(
    st.lists(
        st.tuples(
            st.sampled_from([Code.CONTENT, Code.VALID, Code.CHANGED, Code.NOT_FOUND, Code.BAD_GATEWAY]),
            st.none() | st.binary(max_size=4),  # Observe, including malformed 4-byte values
            st.none() | st.binary(max_size=8),  # Max-Age, including values longer than its 4 bytes
            st.floats(0, 1e6),
        ),
        max_size=12,
    )
)
def test_fuzz_observation_classifies_any_response(responses: list[tuple[Code, bytes | None, bytes | None,
                                                                        float]]) -> None:
    observation = ClientObservation(_registration())
    for code, observe, max_age, now in responses:
        response = Message(Type.NON, code, 2, b"ob", remote=SERVER)
        if observe is not None:
            response.opt.add(OptionNumber.OBSERVE, observe)
        if max_age is not None:
            response.opt.add(OptionNumber.MAX_AGE, max_age)
        assert isinstance(observation.on_response(response, now), Verdict)
        deadline = observation.next_deadline()
        assert deadline is None or deadline >= now


def test_notification_with_an_overlong_max_age_is_delivered_with_the_default_freshness() -> None:
    """Max-Age has 0-4 bytes (RFC 7252 §5.10.5); a longer value must be treated like an unrecognized
    elective option (§5.4.3), i.e. ignored, giving the default of 60 s. Found by fuzzing: 200 bytes from a
    hostile server made ``on_response`` raise OverflowError and so ended the user's ``async for``."""
    observation = ClientObservation(_registration())
    notification = Message(Type.NON, Code.CONTENT, 2, b"ob", remote=SERVER)
    notification.opt.observe = 5
    notification.opt.add(OptionNumber.MAX_AGE, b"\xff" * 200)
    assert observation.on_response(notification, 100.0) is Verdict.DELIVER
    assert observation.next_deadline() == 100.0 + 60 + observation.margin


@given(st.binary(max_size=64), st.integers(0, 65535), st.floats(0, 2**33), st.booleans())
@example(b"\0" * 12, 1, 0.0, False)
def test_fuzz_echo_guard_judges_any_echo_value(value: bytes, port: int, now: float, genuine: bool) -> None:
    guard = EchoGuard(secret=b"k" * 32)
    request = Message(Type.CON, Code.POST, 1, b"e", remote=("127.0.0.1", port))
    if genuine:
        value = guard.make(request.remote, now)[: len(value) or 12]
    request.opt.add(OptionNumber.ECHO, value)
    age = guard.age(request, now)
    assert age is None or 0 <= age < 2**32
    assert isinstance(guard.is_fresh(request, now), bool)
    assert isinstance(guard.is_verified(request, now), bool)


@given(st.binary(max_size=8))
def test_fuzz_no_response_reads_any_value(raw: bytes) -> None:
    request = Message(Type.NON, Code.GET, 1, b"n", remote=SERVER)
    request.opt.add(OptionNumber.NO_RESPONSE, raw)
    assert request.opt.no_response == int.from_bytes(raw, "big")


# --- block-wise clients fed hostile responses ---------------------------------------------------------------


def _hostile_responses(option: OptionNumber) -> st.SearchStrategy[list[Message]]:
    codes = st.sampled_from([Code.CONTENT, Code.CHANGED, Code.CONTINUE, Code.REQUEST_ENTITY_TOO_LARGE,
                             Code.REQUEST_ENTITY_INCOMPLETE, Code.BAD_REQUEST, Code.CREATED])

    def build(code: Code, block: bytes | None, etag: bytes | None, size: bytes | None,
              length: int) -> Message:
        response = Message(Type.ACK, code, 1, b"b", payload=b"x" * length, remote=SERVER)
        if block is not None:
            response.opt.add(option, block)
        if etag is not None:
            response.opt.add(OptionNumber.ETAG, etag)
        if size is not None:
            response.opt.add(OptionNumber.SIZE2, size)
        return response

    block_values = st.none() | st.binary(max_size=3) | st.builds(
        lambda num, more, szx: BlockValue(num, more, szx).encode(),
        st.integers(0, 8) | st.integers(0, (1 << 20) - 1), st.booleans(), st.integers(0, 7),
    )
    lengths = st.sampled_from([0, 1, 15, 16, 17, 32, 64, 256, 512, 1023, 1024, 1025])
    etags, sizes = st.none() | st.binary(max_size=2), st.none() | st.binary(max_size=5)
    one = st.builds(build, codes, block_values, etags, sizes, lengths)
    return st.lists(one, min_size=1, max_size=10)


@given(_hostile_responses(OptionNumber.BLOCK2), st.none() | st.integers(0, 6))
def test_fuzz_block2_assembler_completes_continues_or_rejects(responses: list[Message],
                                                              preferred: int | None) -> None:
    request = Message(Type.CON, Code.GET, None, b"b", remote=SERVER)
    assembler = Block2Assembler(request, max_body=4096, preferred_szx=preferred)
    assembler.first_request()
    for response in responses:
        try:
            whole = assembler.feed(response)
        except ResponseRejected:
            return
        if whole is not None:
            return
        assert assembler.next_request().opt.block2 is not None


@given(_hostile_responses(OptionNumber.BLOCK1), st.integers(0, 6), st.integers(0, 3000))
def test_fuzz_block1_sender_continues_finishes_or_rejects(responses: list[Message], szx: int,
                                                          size: int) -> None:
    request = Message(Type.CON, Code.PUT, None, b"b", payload=bytes(size), remote=SERVER)
    sender = Block1Sender(request, szx=szx, request_tag=b"t")
    sender.first_request()
    for response in responses:
        try:
            step = sender.feed(response)
        except ResponseRejected:
            return
        if step is None:
            assert sender.final_response is response
            if sender.needs_block2:
                sender.continuation_request()
            return
        assert step.opt.block1 is not None


# --- content formats, link format, URIs -------------------------------------------------------------------


@given(st.binary(max_size=200), st.none() | st.sampled_from(list(ContentFormat)) | st.integers(0, 2**32))
@example(b"\xff\xfe", int(ContentFormat.TEXT_PLAIN))
@example(b'{"a": [1, 2', int(ContentFormat.JSON))
@example(b"</a>;x,", int(ContentFormat.LINK_FORMAT))
@example(b"\x9f\x01", int(ContentFormat.CBOR))
def test_fuzz_client_payload_formatter_shows_any_payload(payload: bytes, content_format: int | None) -> None:
    assert isinstance(format_payload(payload, content_format, tty=True), str | bytes)


def _damage(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randint(0, len(out))
        operation = rng.randrange(4)
        if operation == 0:
            out[at:at] = rng.choice([b"<", b">", b";", b",", b"=", b'"', b"\\", b" ", b"\0", b"*", b"\xc3"])
        elif operation == 1:
            del out[at : at + rng.randint(1, 4)]
        elif operation == 2 and out:
            out[min(at, len(out) - 1)] ^= 1 << rng.randrange(8)
        else:
            out[at:at] = rng.choice(fuzz_linkformat.SEEDS)
    return bytes(out)


@given(st.sampled_from(fuzz_linkformat.SEEDS), randoms)
def test_fuzz_damaged_link_documents_and_queries_parse_or_raise_link_format_errors(
    seed: bytes, rng: random.Random
) -> None:
    fuzz_linkformat.TestOneInput(_damage(seed, rng))


_segments = st.text(max_size=12) | st.sampled_from([".", "..", "", "%", "%2e", "a/b", "?", "&", "\udcff"])


@given(
    st.text(max_size=20) | st.sampled_from(["::1", "fe80::1%eth0", "1.2.3.4", "[::1]", "H%41", "\ud800"]),
    st.none() | st.integers(-2, 70000),
    st.lists(_segments, max_size=4),
    st.lists(_segments, max_size=3),
    st.sampled_from(["coap", "coaps", "COAP+TCP", "coaps+ws", "http"]),
)
def test_fuzz_compose_uri_of_any_option_values_gives_a_uri_or_a_uri_error(
    host: str, port: int | None, path: list[str], query: list[str], scheme: str
) -> None:
    try:
        uri = compose_uri(scheme=scheme, host=host, port=port, path=path, query=query)
    except UriError:
        return
    assert split_uri(uri).scheme == scheme.lower()


@given(randoms)
def test_fuzz_uri_of_a_decoded_request_is_a_uri_or_a_uri_error(rng: random.Random) -> None:
    try:
        msg = Message.decode(coapfuzz.mutate(rng), SERVER)
    except MessageFormatError:
        return
    try:
        uri = msg.uri
    except UriError:
        return
    split_uri(uri)


@given(st.binary(max_size=80))
def test_fuzz_uri_target_on_arbitrary_bytes(data: bytes) -> None:
    fuzz_uri.TestOneInput(data)


# --- the sans-IO server, and the fuzz targets themselves ------------------------------------------------


@given(randoms, st.integers(1, 40))
def test_fuzz_sans_io_server_answers_every_datagram_as_the_model_says(rng: random.Random, count: int) -> None:
    session = [(rng.randrange(16), coapfuzz.mutate(rng)) for _ in range(count)]
    fuzz_server.TestOneInput(fuzz_server.pack(session))


TARGETS = ["fuzz_message", "fuzz_linkformat", "fuzz_uri", "fuzz_server"]


def _seeds(module: ModuleType) -> list[bytes]:
    return list(module.seeds() if hasattr(module, "seeds") else module.SEEDS)


@pytest.mark.parametrize("name", TARGETS)
def test_fuzz_target_runs_its_seeds(name: str) -> None:
    module = importlib.import_module(name)
    for seed in _seeds(module):
        module.TestOneInput(seed)


@pytest.mark.parametrize("name", TARGETS)
def test_fuzz_target_replays_a_corpus_directory_without_atheris(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module = importlib.import_module(name)
    for i, seed in enumerate(_seeds(module)[:5]):
        (tmp_path / f"input-{i}").write_bytes(seed)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", str(tmp_path), "-max_total_time=1"])
    coapfuzz.main(module.TestOneInput, [], atheris=None)
    assert f"replayed {min(5, len(_seeds(module)))} inputs" in capsys.readouterr().out
