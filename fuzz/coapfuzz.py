"""Shared by the fuzz targets and the fuzz tests: a reference reading of RFC 7252's wire rules, seed
requests, a structure-aware mutator, and a model of what a coapio server must put on the wire for each
datagram.

The reference parser is written from RFC 7252 §3 alone, not from coapio's decoder, so that comparing the
two finds bugs in either. :class:`ServerModel` predicts the message layer's answer to every datagram
(§4.2/§4.3: RST for a malformed or unprocessable CON, silence for everything else that is malformed, 4.02
for an unrecognized critical option in a CON request, the cached reply for a duplicate, one response for a
request) and checks what the server really sent. It needs no hypothesis and no atheris, so that a plain
``random.Random`` can drive it as well as a coverage-guided fuzzer.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coapio import Code, Message, ObservableResource, Resource, Site
from coapio.protocol.options import KNOWN_OPTIONS, SPECS, UNIMPLEMENTED_CRITICAL

__all__ = [
    "RECOGNIZED",
    "SEEDS",
    "Expectation",
    "Parsed",
    "Rejected",
    "ServerModel",
    "encode",
    "fuzz_site",
    "known_bug",
    "main",
    "mutate",
    "option_chunks",
    "parse",
]

CON, NON, ACK, RST = 0, 1, 2, 3
#: The critical options a coapio UDP server processes (what its endpoints pass to the message layer).
RECOGNIZED = KNOWN_OPTIONS - UNIMPLEMENTED_CRITICAL
NO_RESPONSE = 258


# --- the reference parser (RFC 7252 §3) -------------------------------------------------------------


@dataclass(frozen=True)
class Parsed:
    """A well-formed datagram's fields, as RFC 7252 §3 defines them."""

    type: int
    code: int
    mid: int
    token: bytes = b""
    options: tuple[tuple[int, bytes], ...] = ()
    payload: bytes = b""


@dataclass(frozen=True)
class Rejected:
    """A datagram that is not a message. ``mid`` is None when there is no header to read it from;
    ``reset`` says whether §4.2 calls for a Reset (a CON whose header is readable)."""

    reason: str
    mid: int | None
    reset: bool


def parse(data: bytes) -> Parsed | Rejected:
    """Read ``data`` as RFC 7252 §3 says, accepting exactly the well-formed datagrams."""
    n = len(data)
    if n < 4:
        return Rejected("shorter than the header", None, False)
    version, mtype, tkl = data[0] >> 6, data[0] >> 4 & 3, data[0] & 15
    code, mid = data[1], data[2] << 8 | data[3]
    if version != 1:
        return Rejected("unknown version", mid, False)  # §3: silently ignored, even a CON

    def bad(reason: str) -> Rejected:
        return Rejected(reason, mid, mtype == CON)

    if tkl > 8:
        return bad("token length 9-15")
    if code == 0 and n > 4:
        return bad("Empty message with bytes after the message ID")
    pos = 4 + tkl
    if pos > n:
        return bad("token past the end")
    token = data[4:pos]
    options: list[tuple[int, bytes]] = []
    number = 0
    while pos < n:
        byte = data[pos]
        pos += 1
        if byte == 0xFF:
            if pos == n:
                return bad("payload marker without payload")
            return Parsed(mtype, code, mid, token, tuple(options), data[pos:])
        values = []
        for nibble in (byte >> 4, byte & 15):
            if nibble == 15:
                return bad("reserved nibble 15")
            extra = {13: 1, 14: 2}.get(nibble, 0)
            if pos + extra > n:
                return bad("option header past the end")
            value = nibble if not extra else int.from_bytes(data[pos : pos + extra], "big") + (
                13 if extra == 1 else 269
            )
            pos += extra
            values.append(value)
        delta, length = values
        number += delta
        if number > 65535:
            return bad("option number above 65535")
        if pos + length > n:
            return bad("option value past the end")
        options.append((number, data[pos : pos + length]))
        pos += length
    return Parsed(mtype, code, mid, token, tuple(options), b"")


def _ext(value: int) -> tuple[int, bytes]:
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes((value - 13,))
    return 14, (value - 269).to_bytes(2, "big")


def option_chunks(options: Sequence[tuple[int, bytes]]) -> list[bytes]:
    """Each option's header and value as written after the one before it (the options must be sorted)."""
    chunks, previous = [], 0
    for number, value in options:
        dnib, dext = _ext(number - previous)
        lnib, lext = _ext(len(value))
        chunks.append(bytes((dnib << 4 | lnib,)) + dext + lext + value)
        previous = number
    return chunks


def encode(msg: Parsed) -> bytes:
    """Write ``msg`` (its options sorted by number), independently of coapio's encoder."""
    head = bytes((0x40 | msg.type << 4 | len(msg.token), msg.code, msg.mid >> 8, msg.mid & 0xFF))
    body = b"".join(option_chunks(sorted(msg.options, key=lambda o: o[0])))
    return head + msg.token + body + (b"\xff" + msg.payload if msg.payload else b"")


# --- the site every server fuzzer serves -------------------------------------------------------------


class Hello(Resource):
    link_attributes = {"rt": "greeting", "ct": 0}

    def render_get(self, request: Message) -> Message:
        return Message(payload=b"hello")


class EchoBack(Resource):
    """POST answers with the request body; state-changing, so it requires a fresh Echo (RFC 9175 §2.3)."""

    requires_fresh = True

    def render_post(self, request: Message) -> Message:
        return Message(code=Code.CHANGED, payload=request.payload)


class Counter(ObservableResource):
    """An observable counter; ``bump()`` changes it and notifies the observers.

    It has no POST: a fuzzed request must never make the server send notifications, so that everything
    a fuzzer's peer receives while it sends is an answer to what it sent.
    """

    def __init__(self) -> None:
        super().__init__()
        self.value = 0

    def bump(self) -> None:
        self.value += 1
        self.notify()

    def render_get(self, request: Message) -> Message:
        return Message(payload=b"%d" % self.value)


class Big(Resource):
    """3000 bytes by GET (Block2); POST takes any body (Block1) and says how long it was."""

    BODY = bytes(range(256)) * 11 + b"end"

    def render_get(self, request: Message) -> Message:
        return Message(payload=self.BODY)

    def render_post(self, request: Message) -> Message:
        return Message(code=Code.CHANGED, payload=b"%d" % len(request.payload))


def fuzz_site() -> tuple[Site, dict[str, Resource]]:
    """The site the seeds address: plain GET and POST resources, an observable one, a block-wise one."""
    site = Site()
    resources: dict[str, Resource] = {"hello": Hello(), "echo": EchoBack(), "obs": Counter(), "big": Big()}
    for path, resource in resources.items():
        site.add(path, resource)
    return site, resources


# --- seeds and the mutator ----------------------------------------------------------------------------


def _opts(*pairs: tuple[int, bytes | str | int]) -> tuple[tuple[int, bytes], ...]:
    out = []
    for number, value in pairs:
        if isinstance(value, str):
            value = value.encode()
        elif isinstance(value, int):
            value = value.to_bytes((value.bit_length() + 7) // 8, "big")
        out.append((number, value))
    return tuple(sorted(out, key=lambda o: o[0]))


_GET, _POST, _PUT, _FETCH = 1, 2, 3, 5
#: Valid datagrams for the fuzz site: requests of every kind it serves, and a few that it must refuse.
SEEDS: tuple[Parsed, ...] = (
    Parsed(CON, _GET, 0x1000, b"t1", _opts((11, "hello"))),
    Parsed(NON, _GET, 0x1001, b"t2", _opts((11, "hello"), (17, 0))),
    Parsed(CON, _POST, 0x1002, b"t3", _opts((11, "echo"), (12, 0)), b"ping"),
    Parsed(CON, _POST, 0x1003, b"t4", _opts((11, "echo"), (252, bytes(12))), b"fresh?"),
    Parsed(CON, _GET, 0x1004, b"t5", _opts((6, 0), (11, "obs"))),
    Parsed(NON, _GET, 0x1005, b"t6", _opts((6, 0), (11, "obs"), (17, 0))),
    Parsed(CON, _GET, 0x1006, b"t5", _opts((6, 1), (11, "obs"))),
    Parsed(CON, _POST, 0x1007, b"t7", _opts((11, "obs")), b"41"),
    Parsed(CON, _FETCH, 0x1008, b"t8", _opts((6, 0), (11, "obs"), (12, 50)), b"{}"),
    Parsed(CON, _GET, 0x1009, b"t9", _opts((11, "big"), (23, 0x14))),  # Block2 1/0/256
    Parsed(CON, _GET, 0x100A, b"ta", _opts((11, "big"), (23, 0x06), (28, 0))),  # early negotiation + Size2
    Parsed(CON, _POST, 0x100B, b"tb", _opts((11, "big"), (27, 0x0C), (60, 40), (292, b"rt")), bytes(16)),
    Parsed(CON, _POST, 0x100C, b"tc", _opts((11, "big"), (27, 0x10), (292, b"rt")), bytes(10)),
    Parsed(CON, _GET, 0x100D, b"td", _opts((11, ".well-known"), (11, "core"), (15, "rt=gr*"))),
    Parsed(CON, _GET, 0x100E, b"te", _opts((4, b"\x01\x02"), (5, b""), (11, "hello"), (17, 0))),
    Parsed(CON, _PUT, 0x100F, b"tf", _opts((11, "hello")), b"x"),
    Parsed(CON, _GET, 0x1010, b"tg", _opts((11, "nothing"), (11, "here"))),
    Parsed(CON, _GET, 0x1011, b"th", _opts((11, "hello"), (NO_RESPONSE, 0x1A))),
    Parsed(NON, _GET, 0x1012, b"ti", _opts((11, "hello"), (NO_RESPONSE, 0x02))),
    Parsed(CON, _GET, 0x1013, b"tj", _opts((3, "example.org"), (7, 5683), (11, "hello"), (14, 60))),
    Parsed(CON, _GET, 0x1014, b"tk", _opts((9, b""), (11, "hello"))),  # OSCORE: not implemented, 4.02
    Parsed(CON, _GET, 0x1015, b"tl", _opts((11, "hello"), (35, "coap://elsewhere/"))),  # Proxy-Uri: 5.05
    Parsed(CON, 0, 0x1016),  # a ping
    Parsed(ACK, 0, 0x1017),
    Parsed(RST, 0, 0x1018),
    Parsed(CON, 69, 0x1019, b"tm", _opts((12, 0)), b"unasked"),  # a 2.05 nobody asked for
    Parsed(NON, 69, 0x101A, b"tn", _opts((6, 7)), b"stray notification"),
)

_INTERESTING_BYTES = (0x00, 0x01, 0x0C, 0x0D, 0x0E, 0x0F, 0x10, 0xD0, 0xDD, 0xE0, 0xEE, 0xF0, 0xFE, 0xFF)
_INTERESTING_NUMBERS = (
    1, 3, 4, 5, 6, 7, 8, 9, 11, 12, 14, 15, 17, 19, 23, 27, 28, 31, 35, 39, 60, 252, 258, 292,
    13, 268, 269, 2049, 65535, 65534,
)
_STRUCTURED = (
    "option_insert", "option_drop", "option_duplicate", "option_value", "token", "code", "type",
    "payload", "no_response", "splice",
)
_BYTEWISE = (
    "flip", "flip", "truncate", "overwrite", "insert", "delete", "shuffle", "huge_delta", "huge_length",
    "nibble15", "version", "tkl", "empty_with_bytes", "marker_only", "reserved_code",
)


def _random_value(rng: random.Random) -> bytes:
    size = rng.choice((0, 1, 2, 3, 4, 5, 8, 9, 12, 13, 40, 41, 255, 256, 268, 269, 300, 1100))
    return rng.randbytes(size)


def _mutate_structure(msg: Parsed, op: str, rng: random.Random) -> Parsed:
    options = list(msg.options)
    if op == "option_insert" or (op in ("option_drop", "option_duplicate", "option_value") and not options):
        number = rng.randrange(65536) if rng.randrange(10) >= 8 else rng.choice(_INTERESTING_NUMBERS)
        options.append((number, _random_value(rng)))
    elif op == "option_drop":
        del options[rng.randrange(len(options))]
    elif op == "option_duplicate":
        options.append(rng.choice(options))
    elif op == "option_value":
        i = rng.randrange(len(options))
        options[i] = (options[i][0], _random_value(rng))
    elif op == "no_response":
        options.append((NO_RESPONSE, bytes((rng.choice((0, 2, 8, 16, 26, 255)),))))
    elif op == "token":
        return _replace(msg, token=rng.randbytes(rng.randint(0, 8)))
    elif op == "code":
        return _replace(msg, code=rng.choice((0, 1, 2, 3, 4, 5, 6, 7, 8, 31, 32, 33, 64, 69, 128, 160, 191,
                                              192, 224, 225, 255)))
    elif op == "type":
        return _replace(msg, type=rng.randrange(4))
    elif op == "payload":
        return _replace(msg, payload=_random_value(rng))
    else:  # splice: another seed's options or payload
        other = rng.choice(SEEDS)
        if rng.randrange(2):
            return _replace(msg, options=other.options)
        return _replace(msg, payload=other.payload)
    if msg.code == 0:
        return msg  # an Empty message carries no options (the byte-wise mutations break that rule)
    return _replace(msg, options=tuple(sorted(options, key=lambda o: o[0])))


def _replace(msg: Parsed, **changes: object) -> Parsed:
    fields = {"type": msg.type, "code": msg.code, "mid": msg.mid, "token": msg.token,
              "options": msg.options, "payload": msg.payload}
    fields.update(changes)
    if fields["code"] == 0:
        fields.update(token=b"", options=(), payload=b"")
    return Parsed(**fields)  # type: ignore[arg-type]


def _mutate_bytes(data: bytearray, op: str, rng: random.Random, msg: Parsed) -> bytearray:
    head = 4 + len(msg.token)
    if op == "insert":
        at = rng.randint(0, len(data))
        data[at:at] = rng.randbytes(rng.randint(1, 8))
    elif not data:
        return data
    elif op == "flip":
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif op == "truncate":
        del data[rng.randrange(len(data)) :]
    elif op == "overwrite":
        data[rng.randrange(len(data))] = rng.choice(_INTERESTING_BYTES)
    elif op == "delete":
        at = rng.randrange(len(data))
        del data[at : at + rng.randint(1, 8)]
    elif op == "shuffle" and msg.options:
        # Options in another order: the deltas then add up to other numbers, or past 65535.
        chunks = option_chunks(msg.options)
        rng.shuffle(chunks)
        tail = b"\xff" + msg.payload if msg.payload else b""
        data = bytearray(data[:head]) + b"".join(chunks) + tail
    elif op in ("huge_delta", "huge_length", "nibble15"):
        # One option header with an extended or reserved nibble, and extension bytes that may be missing.
        dnib = rng.choice((13, 14, 15)) if op != "huge_length" else rng.randrange(13)
        lnib = rng.choice((13, 14, 15)) if op != "huge_delta" else rng.randrange(13)
        header = bytes((dnib << 4 | lnib,)) + rng.randbytes(rng.choice((0, 1, 2, 3, 4)))
        at = rng.randint(min(head, len(data)), len(data))
        data[at:at] = header + rng.randbytes(rng.choice((0, 1, 12, 13, 300)))
    elif op == "version":
        data[0] = data[0] & 0x3F | rng.choice((0, 2, 3)) << 6
    elif op == "tkl":
        data[0] = data[0] & 0xF0 | rng.randint(9, 15)
    elif len(data) < 2:
        return data
    elif op == "empty_with_bytes":
        data[1] = 0
        if len(data) == 4:
            data += rng.choice((b"\xff", b"\xffx", b"\x11", b"tok"))
    elif op == "marker_only":
        data += b"\xff"
    elif op == "reserved_code":
        data[1] = rng.choice((32, 33, 63, 192, 200, 224, 255))
    return data


def mutate(rng: random.Random, seed: Parsed | None = None) -> bytes:
    """A datagram derived from a seed (``rng``'s choice unless given) by one to three mutations.

    The seed gets a random message ID, and half the time a random token, before it is mutated.

    Structured mutations keep the framing valid and change what the server must do with the request;
    byte-wise ones break the framing in the ways RFC 7252 §3 calls message format errors. A few inputs
    are plain random bytes.
    """
    if rng.randrange(100) >= 97:  # rare, and not what hypothesis shrinks towards
        return rng.randbytes(rng.choice((0, 1, 3, 4, 5, 8, 20, 100)))
    msg = seed if seed is not None else rng.choice(SEEDS)
    if msg.code:
        # A fresh message ID (or every CON would be a duplicate), and often a fresh token.
        token = msg.token if rng.randrange(2) else rng.randbytes(rng.randint(0, 8))
        msg = _replace(msg, mid=rng.randrange(65536), token=token)
    steps = rng.choice((1, 1, 1, 2, 2, 3))
    structured = [rng.choice(_STRUCTURED) for _ in range(rng.randint(0, steps))]
    for op in structured:
        msg = _mutate_structure(msg, op, rng)
    data = bytearray(encode(msg))
    for _ in range(steps - len(structured)):
        data = _mutate_bytes(data, rng.choice(_BYTEWISE), rng, msg)
    return bytes(data)


# --- what a server must answer (RFC 7252 §4 and §5.4.1) ------------------------------------------------


def known_bug(data: bytes, block_szx: int) -> str | None:
    """The xfail test showing a library bug that ``data`` triggers in a server whose tuning has
    ``block_szx``, or None. The fuzzers skip such inputs (and count them) so that they look for new bugs.
    Add a case when an xfail test is written for a finding; delete it once the test passes. (None now:
    the Block2 that a small-block server could not reduce, the first case, is fixed.)
    """
    return None


def bad_critical_option(options: Sequence[tuple[int, bytes]]) -> int | None:
    """The first critical option a coapio server must refuse (§5.4.1, §5.4.3, §5.4.5), or None."""
    previous = -1
    for number, value in options:
        if number & 1:
            spec = SPECS.get(number)
            if number not in RECOGNIZED:
                return number
            if spec is not None and (not spec.min_length <= len(value) <= spec.max_length
                                     or (number == previous and not spec.repeatable)):
                return number
        previous = number
    return None


@dataclass
class Expectation:
    """What the server must send for one datagram; :meth:`check` compares the datagrams it did send."""

    data: bytes
    kind: str  # silent | reset | duplicate | bad_option | served | unexpected_response
    message: Parsed | None = None
    mid: int | None = None
    original: Expectation | None = None  # for a duplicate: the first copy's expectation
    may_suppress: bool = False  # a No-Response option may silence a served request's response
    notes: list[str] = field(default_factory=list)
    #: What the server answered (filled in by ServerModel.learn); a duplicate CON must get it again.
    reply: bytes | None = None

    @property
    def replies(self) -> range:
        """How many datagrams may answer it."""
        if self.kind == "silent":
            return range(0, 1)
        if self.kind == "served" and self.message is not None and self.message.type == NON:
            return range(0 if self.may_suppress else 1, 2)
        return range(1, 2)

    def check(self, sent: list[bytes]) -> None:
        """Raise AssertionError, naming the datagram, unless ``sent`` is what RFC 7252 asks for."""
        where = f"datagram {self.data.hex()} ({self.kind})"
        assert len(sent) in self.replies, f"{where}: expected {self.replies} replies, got {sent!r}"
        if not sent:
            return
        [reply] = sent
        answer = parse(reply)
        assert isinstance(answer, Parsed), f"{where}: the server sent a malformed datagram {reply.hex()}"
        msg = self.message
        if self.kind == "duplicate":
            assert self.original is not None
            cached = self.original.reply
            assert reply == cached, f"{where}: a duplicate got {reply.hex()}, not {cached!r}"
        elif self.kind in ("reset", "unexpected_response"):
            assert reply == self._reset(), f"{where}: not a Reset: {answer}"
        elif msg is not None and msg.type == CON:  # bad_option or served: an ACK with the message ID
            assert (answer.type, answer.mid) == (ACK, msg.mid), f"{where}: not its ACK: {answer}"
            if answer.code == 0:
                assert self.may_suppress, f"{where}: an empty ACK but no response was suppressed"
            else:
                self._check_response(answer, where)
        else:  # a NON request: a NON response with its token, or a Reset for a bad critical option
            if self.kind == "bad_option":
                assert reply == self._reset(), f"{where}: not a Reset: {answer}"
            else:
                assert answer.type == NON, f"{where}: a NON request answered by {answer}"
                self._check_response(answer, where)

    def _reset(self) -> bytes:
        assert self.mid is not None
        return bytes((0x70, 0, self.mid >> 8, self.mid & 0xFF))

    def _check_response(self, answer: Parsed, where: str) -> None:
        msg = self.message
        assert msg is not None
        assert answer.token == msg.token, f"{where}: the response's token is {answer.token.hex()}"
        assert 64 <= answer.code < 192, f"{where}: {answer.code >> 5}.{answer.code & 31:02d} is no response"
        if self.kind == "bad_option":
            assert answer.code == Code.BAD_OPTION, f"{where}: got {Code(answer.code)}, not 4.02"
        else:
            assert answer.code != Code.INTERNAL_SERVER_ERROR, f"{where}: 5.00 (a crashed renderer?)"


class ServerModel:
    """The message-layer state of one coapio server as seen by the peers that talk to it.

    It predicts from each datagram alone plus deduplication (which it tracks per peer and message ID,
    separately for CON and NON, like the server), so it is exact as long as entries neither expire nor
    get evicted: a peer must not send more than the dedup capacity, or for longer than NON_LIFETIME.
    """

    def __init__(self) -> None:
        self._con: dict[tuple[object, int], Expectation] = {}
        self._non: set[tuple[object, int]] = set()
        #: (peer, token) of every request served with an Observe option: all a notification may go to.
        self.observing: set[tuple[object, bytes]] = set()

    def expect(self, data: bytes, remote: object) -> Expectation:
        msg = parse(data)
        if isinstance(msg, Rejected):
            if msg.reset:
                return Expectation(data, "reset", mid=msg.mid, notes=[msg.reason])
            return Expectation(data, "silent", notes=[msg.reason])
        is_request, is_response = 1 <= msg.code < 32, 64 <= msg.code < 192
        if msg.type in (ACK, RST) or not (is_request or is_response):
            # An ACK or RST is never answered; a ping (Empty CON) or a CON of a reserved class is reset.
            kind = "reset" if msg.type == CON else "silent"
            return Expectation(data, kind, msg, mid=msg.mid)
        key = (remote, msg.mid)
        if msg.type == CON and key in self._con:
            return Expectation(data, "duplicate", msg, mid=msg.mid, original=self._con[key])
        if msg.type == NON and key in self._non:
            return Expectation(data, "silent", msg, mid=msg.mid, notes=["duplicate NON"])
        if is_response:  # nobody asked a fuzzer's peer for anything: rejected, NON too
            expectation = Expectation(data, "unexpected_response", msg, mid=msg.mid)
        elif bad_critical_option(msg.options) is not None:
            expectation = Expectation(data, "bad_option", msg, mid=msg.mid)
        else:
            suppress = any(number == NO_RESPONSE and int.from_bytes(value, "big") & 0x1A
                           for number, value in msg.options)
            expectation = Expectation(data, "served", msg, mid=msg.mid, may_suppress=suppress)
        if msg.type == CON:
            self._con[key] = expectation
        else:
            self._non.add(key)
        return expectation

    def learn(self, expectation: Expectation, sent: list[bytes], remote: object) -> None:
        """Note what ``sent`` answered (a duplicate CON must get the same) and who may be observing now."""
        msg = expectation.message
        if msg is None:
            return
        if expectation.kind == "served" and any(number == 6 for number, _ in msg.options):
            # Perhaps an observer now, even when No-Response kept the registration's response back.
            self.observing.add((remote, msg.token))
        if sent:
            expectation.reply = sent[0]


# --- running a target: atheris when installed, otherwise replaying inputs ------------------------------


def main(test_one_input: Callable[[bytes], None], seeds: Sequence[bytes], atheris: Any) -> None:
    """The command line of every target; see fuzz/README.md.

    With atheris, arguments go to libFuzzer, and an empty corpus directory is first filled with the
    seeds. ``--replay`` (implied without atheris) runs each file named, each file in each directory
    named, or else the built-in seeds, once, and says how many ran.
    """
    argv = list(sys.argv)
    replay = "--replay" in argv or atheris is None
    argv = [arg for arg in argv if arg != "--replay"]
    paths = [Path(arg) for arg in argv[1:] if not arg.startswith("-")]
    if not replay:
        for path in paths:
            if path.is_dir() and not any(path.iterdir()):
                for i, seed in enumerate(seeds):
                    (path / f"seed-{i:03d}").write_bytes(seed)
        atheris.Setup(argv, test_one_input)
        atheris.Fuzz()
        return
    inputs: list[bytes] = []
    for path in paths:
        files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        inputs.extend(p.read_bytes() for p in files)
    for data in inputs or seeds:
        test_one_input(data)
    print(f"{Path(argv[0]).name}: replayed {len(inputs or seeds)} inputs without a failure")
