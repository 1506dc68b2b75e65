"""Micro-benchmark of the CoAP-over-UDP codec: coapio against aiocoap, in one run.

Run as ``python benchmarks/codec.py [--repeat N] [--json]``. Prints µs per message (the median of several
``timeit`` repeats) and the ratio aiocoap / coapio, for two messages:

* a typical GET request: CON, 4-byte token, Uri-Path "sensors"/"temp", Uri-Query "unit=c";
* a 2.05 Content ACK (piggy-backed notification): ETag, Observe, Content-Format, Max-Age, 20-byte payload.

coapio's ``decode`` only slices option values out (they are converted when read), while aiocoap's
builds an object per option. So "decode + read options" times decoding followed by reading every
option's value through the typed accessors, in both libraries; compare that row for the full cost.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import statistics
import sys
import timeit
from collections.abc import Callable
from functools import partial
from typing import Any

from coapio import Code, Message, Options, Type

TOKEN = bytes.fromhex("a1b2c3d4")
PAYLOAD = b'{"t":21.5,"u":"cel"}'  # 20 bytes


def coapio_request() -> Message:
    opt = Options()
    opt.uri_path = ("sensors", "temp")
    opt.uri_query = ("unit=c",)
    return Message(Type.CON, Code.GET, 0x1234, TOKEN, opt)


def coapio_response() -> Message:
    opt = Options()
    opt.etag = b"\x5a\x3c\x00\x01"
    opt.observe = 4711
    opt.content_format = 50
    opt.max_age = 30
    return Message(Type.ACK, Code.CONTENT, 0x1234, TOKEN, opt, PAYLOAD)


def read_request(msg: Any) -> tuple[Any, ...]:
    return (msg.opt.uri_path, msg.opt.uri_query)


def read_response(msg: Any) -> tuple[Any, ...]:
    return (msg.opt.etag, msg.opt.observe, msg.opt.content_format, msg.opt.max_age)


def aiocoap_message(msg: Message) -> Any:
    """The same message built with aiocoap's public API."""
    import aiocoap  # type: ignore[import-untyped]
    from aiocoap.numbers import Code as ACode  # type: ignore[import-untyped]
    from aiocoap.numbers import OptionNumber
    from aiocoap.numbers import Type as AType

    theirs = aiocoap.Message(code=ACode(int(msg.code)), payload=msg.payload)
    theirs.mtype = AType(int(msg.type))
    theirs.mid = msg.mid
    theirs.token = msg.token
    for number, raw in msg.opt:
        theirs.opt.add_option(OptionNumber(number).create_option(decode=raw))
    return theirs


def decode_and_read(decode: Callable[[bytes], Any], read: Callable[[Any], object], data: bytes) -> object:
    return read(decode(data))


def per_call_us(func: Callable[[], object], repeat: int) -> float:
    """Median µs per call over ``repeat`` runs, each long enough (about 0.2 s) to be measured well."""
    timer = timeit.Timer(func)
    number, _ = timer.autorange()
    return statistics.median(timer.repeat(repeat=repeat, number=number)) / number * 1e6


def measure(repeat: int) -> tuple[str | None, list[dict[str, Any]]]:
    """aiocoap's version (None when it is not installed) and one row per message and operation."""
    try:
        import aiocoap

        aiocoap_version: str | None = importlib.metadata.version("aiocoap")
    except ImportError:
        aiocoap, aiocoap_version = None, None

    cases = [
        ("GET request", coapio_request(), read_request),
        ("2.05 ACK + 4 options", coapio_response(), read_response),
    ]
    rows = []
    for name, msg, read in cases:
        data = msg.encode()
        theirs = aiocoap_message(msg) if aiocoap else None
        if theirs is not None:
            assert theirs.encode() == data, "both libraries must encode the same bytes"
        decode = aiocoap.Message.decode if aiocoap else None
        ops: list[tuple[str, Callable[[], object], Callable[[], object] | None]] = [
            (
                "decode (coapio: lazy)",
                partial(Message.decode, data),
                decode and partial(decode, data),
            ),
            (
                "decode + read options",
                partial(decode_and_read, Message.decode, read, data),
                decode and partial(decode_and_read, decode, read, data),
            ),
            ("encode", msg.encode, theirs and theirs.encode),
        ]
        for operation, ours, other in ops:
            ours_us = per_call_us(ours, repeat)
            other_us = None if other is None else per_call_us(other, repeat)
            rows.append({"message": name, "operation": operation, "bytes": len(data), "coapio_us": ours_us,
                         "aiocoap_us": other_us, "ratio": None if other_us is None else other_us / ours_us})
    return aiocoap_version, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="timeit repeats per figure (median)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    aiocoap_version, rows = measure(args.repeat)
    if args.json:
        print(json.dumps({"python": platform.python_version(), "aiocoap": aiocoap_version, "results": rows}))
        return
    print(
        f"Python {platform.python_version()} ({platform.python_implementation()}), {sys.platform}; "
        f"aiocoap {aiocoap_version or 'not installed'}"
    )
    print()
    header = (
        f"{'message':<22} {'operation':<24} {'bytes':>5} {'coapio µs':>10} {'aiocoap µs':>11} {'ratio':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        other = "-" if r["aiocoap_us"] is None else f"{r['aiocoap_us']:.2f}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.1f}x"
        print(f"{r['message']:<22} {r['operation']:<24} {r['bytes']:>5} {r['coapio_us']:>10.2f} {other:>11} "
              f"{ratio:>7}")
    print()
    print("ratio = aiocoap time / coapio time (higher: coapio faster). Median of timeit repeats.")
    print("coapio's plain decode defers option parsing; 'decode + read options' is the like-for-like row.")


if __name__ == "__main__":
    main()
