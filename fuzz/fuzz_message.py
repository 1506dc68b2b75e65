"""Fuzz target: one datagram through coapio's UDP codec and option accessors.

Checks, for any bytes: ``Message.decode`` agrees with coapfuzz's reference parser (the same datagrams
accepted, the same fields, the same RFC 7252 §4.2 wire action and message ID for the rejected ones); an
accepted datagram re-encodes to the same bytes; and every typed option accessor either returns a value or
raises a coapio error. See fuzz/README.md for running it.
"""

from __future__ import annotations

import contextlib
import random

try:
    import atheris
except ImportError:
    atheris = None

with atheris.instrument_imports() if atheris is not None else contextlib.nullcontext():
    import coapfuzz

    from coapio import Message
    from coapio.error import CoapError, MessageFormatError, WireAction
    from coapio.protocol.options import Options, _Accessor

#: Every typed accessor of Options (uri_path, block2, observe, ...), by attribute name.
ACCESSORS = sorted(name for name, value in vars(Options).items() if isinstance(value, _Accessor))


def check_decode(data: bytes) -> Message | None:
    """Decode ``data`` and compare with the reference parser; the message, or None if rejected."""
    expected = coapfuzz.parse(data)
    try:
        msg = Message.decode(data)
    except MessageFormatError as error:
        assert isinstance(expected, coapfuzz.Rejected), f"{data.hex()}: coapio rejected {expected}: {error}"
        assert error.mid == expected.mid, f"{data.hex()}: mid {error.mid}, expected {expected.mid}"
        action = WireAction.RESET if expected.reset else WireAction.DROP
        assert error.action is action, f"{data.hex()}: {error.action} ({error}), expected {action}"
        return None
    assert isinstance(expected, coapfuzz.Parsed), f"{data.hex()}: coapio accepted what is {expected}"
    fields = (msg.type, msg.code, msg.mid, msg.token, tuple(msg.opt), msg.payload)
    assert fields == (expected.type, expected.code, expected.mid, expected.token, expected.options,
                      expected.payload), f"{data.hex()}: decoded as {msg!r}, expected {expected}"
    assert msg.encode() == data, f"{data.hex()}: re-encoded as {msg.encode().hex()}"
    return msg


def read_every_option(opt: Options) -> None:
    """Each accessor gives a value or a coapio error, never another exception."""
    for name in ACCESSORS:
        with contextlib.suppress(CoapError):
            getattr(opt, name)
    repr(opt)
    with contextlib.suppress(CoapError):
        _ = opt.max_age_or_default


def TestOneInput(data: bytes) -> None:  # the name atheris and libFuzzer use
    msg = check_decode(data)
    if msg is not None:
        read_every_option(msg.opt)
        repr(msg)
        assert msg.wire_size == len(data)


def seeds() -> list[bytes]:
    rng = random.Random(2)
    return [coapfuzz.encode(seed) for seed in coapfuzz.SEEDS] + [coapfuzz.mutate(rng) for _ in range(40)]


if __name__ == "__main__":
    coapfuzz.main(TestOneInput, seeds(), atheris)
