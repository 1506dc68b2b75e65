"""Hypothesis strategies for CoAP values and datagrams, shared by the codec, message-layer and interop tests.

Two independent sources of test input:

* :func:`messages` builds :class:`coapio.Message` values (any type, any code including unregistered ones,
  any option number 0..65535 with values up to 300 bytes), for ``decode(encode(m)) == m``;
* :func:`valid_datagrams` / :func:`datagram_parts` write the bytes by hand, from RFC 7252 §3 alone and
  without coapio's encoder, including forms an encoder never produces (uint values with leading zeros),
  for ``encode(decode(b)) == b``.

:func:`mutated_datagrams` damages valid datagrams (bit flips, truncations, insertions, deletions) for
fuzzing decoders.
"""

from __future__ import annotations

from typing import NamedTuple

from hypothesis import strategies as st

from coapio.protocol.codes import Code, Type
from coapio.protocol.message import Message
from coapio.protocol.options import SPECS, OptionFormat, Options

__all__ = [
    "BOUNDARY_NUMBERS",
    "REGISTERED_NUMBERS",
    "Datagram",
    "codes",
    "datagram_parts",
    "messages",
    "mids",
    "mutated_datagrams",
    "option_header",
    "option_numbers",
    "options",
    "tokens",
    "types",
    "valid_datagrams",
]

#: Option numbers with a registry entry in coapio.
REGISTERED_NUMBERS: list[int] = sorted(SPECS)
#: Numbers where the delta encoding changes form (RFC 7252 §3.1: 13 and 269 start the extended forms).
BOUNDARY_NUMBERS: list[int] = [0, 12, 13, 14, 268, 269, 270, 65535]
_UINT_NUMBERS = frozenset(n for n, spec in SPECS.items() if spec.format is OptionFormat.UINT)


def types() -> st.SearchStrategy[Type]:
    return st.sampled_from(Type)


def codes() -> st.SearchStrategy[Code]:
    """Registered codes and, as often, any byte at all (unregistered codes become unnamed members)."""
    return st.one_of(st.sampled_from(list(Code)), st.integers(0, 255).map(Code))


def mids() -> st.SearchStrategy[int]:
    return st.integers(0, 0xFFFF)


def tokens() -> st.SearchStrategy[bytes]:
    return st.binary(max_size=8)


def option_numbers() -> st.SearchStrategy[int]:
    """Registered numbers, encoding boundaries and anything in 0..65535."""
    return st.one_of(
        st.sampled_from(REGISTERED_NUMBERS),
        st.sampled_from(BOUNDARY_NUMBERS),
        st.integers(0, 65535),
    )


def options(
    numbers: st.SearchStrategy[int] | None = None,
    values: st.SearchStrategy[bytes] | None = None,
    max_options: int = 8,
) -> st.SearchStrategy[Options]:
    """An :class:`Options` of raw ``(number, value)`` pairs (values 0..300 bytes by default)."""
    pairs = st.tuples(
        option_numbers() if numbers is None else numbers,
        st.binary(max_size=300) if values is None else values,
    )
    return st.lists(pairs, max_size=max_options).map(Options)


@st.composite
def messages(
    draw: st.DrawFn,
    types: st.SearchStrategy[Type] = types(),  # noqa: B008 - strategies are immutable values
    codes: st.SearchStrategy[Code] = codes(),  # noqa: B008
    options: st.SearchStrategy[Options] = options(),  # noqa: B008
    payloads: st.SearchStrategy[bytes] = st.binary(max_size=300),  # noqa: B008
) -> Message:
    """A message ready to encode (it has a message ID); an Empty (0.00) one carries nothing else."""
    mtype = draw(types)
    code = draw(codes)
    mid = draw(mids())
    if code == Code.EMPTY:
        return Message(mtype, code, mid)
    return Message(mtype, code, mid, draw(tokens()), draw(options), draw(payloads))


# --- hand-built datagrams (independent of coapio's encoder) ------------------------------------------


def _nibble_and_extension(value: int) -> tuple[int, bytes]:
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes((value - 13,))
    return 14, (value - 269).to_bytes(2, "big")


def option_header(delta: int, length: int) -> bytes:
    """The option header of RFC 7252 §3.1 for ``delta`` and ``length`` (each at most 65535 + 269)."""
    dnib, dext = _nibble_and_extension(delta)
    lnib, lext = _nibble_and_extension(length)
    return bytes((dnib << 4 | lnib,)) + dext + lext


class Datagram(NamedTuple):
    """A hand-built datagram and the fields it was built from."""

    data: bytes
    type: int
    code: int
    mid: int
    token: bytes
    options: list[tuple[int, bytes]]
    payload: bytes


def _raw_value(number: int) -> st.SearchStrategy[bytes]:
    if number in _UINT_NUMBERS:
        # A uint, possibly with leading zero bytes: legal on the wire, never produced by an encoder.
        return st.builds(
            lambda value, zeros: b"\0" * zeros + value.to_bytes((value.bit_length() + 7) // 8, "big"),
            st.integers(0, 2**32 - 1),
            st.integers(0, 3),
        )
    return st.binary(max_size=300)


@st.composite
def datagram_parts(draw: st.DrawFn) -> Datagram:
    """A valid CoAP-over-UDP datagram, written byte by byte from RFC 7252 §3."""
    mtype = draw(st.integers(0, 3))
    code = draw(st.integers(0, 255))
    mid = draw(mids())
    token, opts, payload = b"", [], b""
    if code != 0:
        token = draw(tokens())
        numbers = sorted(draw(st.lists(option_numbers(), max_size=8)))
        opts = [(number, draw(_raw_value(number))) for number in numbers]
        payload = draw(st.binary(max_size=300))
    out = bytearray((0x40 | mtype << 4 | len(token), code, mid >> 8, mid & 0xFF))
    out += token
    previous = 0
    for number, value in opts:
        out += option_header(number - previous, len(value))
        out += value
        previous = number
    if payload:
        out += b"\xff" + payload
    return Datagram(bytes(out), mtype, code, mid, token, opts, payload)


def valid_datagrams() -> st.SearchStrategy[bytes]:
    return datagram_parts().map(lambda d: d.data)


@st.composite
def mutated_datagrams(draw: st.DrawFn) -> bytes:
    """A valid datagram damaged by one to four bit flips, truncations, insertions or deletions."""
    data = bytearray(draw(valid_datagrams()))
    for _ in range(draw(st.integers(1, 4))):
        operation = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite"]))
        if operation == "insert":
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif not data:
            continue
        elif operation == "flip":
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif operation == "truncate":
            del data[draw(st.integers(0, len(data) - 1)) :]
        elif operation == "delete":
            at = draw(st.integers(0, len(data) - 1))
            del data[at : at + draw(st.integers(1, 8))]
        else:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)
