"""``coapio-client``: send one CoAP request from the command line and print the response.

The request is built and checked before any socket is opened, so every usage error is a one-line
message and exit status 2. The exchange itself runs under ``trio.run`` in a client-only
:class:`~coapio.Context`; its outcome becomes the exit status listed in ``--help``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import pprint
import sys
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO, TextIO

import anyio
import trio

from .. import __version__, error
from ..codes import Code
from ..contentformat import ContentFormat
from ..context import Context
from ..linkformat import parse_links
from ..message import Message
from ..options import SPECS, BlockValue, OptionFormat, OptionNumber, decode_uint, encode_uint
from ._common import error_line, format_address, is_keyboard_interrupt, setup_logging, unwrap

__all__ = ["build_parser", "format_payload", "main", "parse_option"]

PROG = "coapio-client"

EXIT_OK = 0
EXIT_ERROR_RESPONSE = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_NETWORK = 4
EXIT_INTERRUPTED = 130

METHODS = ("get", "post", "put", "delete", "fetch", "patch", "ipatch")

_EPILOG = """\
The payload is written to stdout. When stdout is a terminal it is made readable: text gets a
final newline, JSON and link-format are pretty-printed, CBOR too when the cbor2 package is
installed, and other binary payloads are shown as a hex dump. Otherwise (a pipe or a file) the
payload bytes are written unchanged. A --payload starting with '@' names a file ('@-' is
stdin); write '@@' for a literal leading '@'. -O NUM,VALUE takes an option number or name
(e.g. Uri-Query, If-None-Match); VALUE follows the option's format: a decimal number (or 0x
hex) for uint options, text for string options, and for opaque or unknown options text or 0x
hex bytes; an empty VALUE sends an empty option. -q leaves only the exit status and error
messages: no payload, no details.

exit status:
  0    a 2.xx success response
  1    a 4.xx or 5.xx error response (the code and diagnostic payload go to stderr)
  2    usage error: bad arguments, URI, content format or option
  3    timeout: --timeout elapsed, or the retransmissions went unanswered
  4    network error: unreachable or closed port (ICMP), name resolution, Reset, bad response
  130  interrupted (Ctrl-C)
"""


class UsageError(Exception):
    """An argument that makes no valid request; reported as one line with exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Send one CoAP request over UDP and print the response payload.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-m", "--method", type=str.lower, choices=METHODS, default="get",
        help="request method (default: get; case-insensitive)",
    )
    parser.add_argument(
        "--payload", metavar="TEXT|@FILE|@-",
        help="request payload: UTF-8 text, the bytes of FILE, or stdin",
    )
    parser.add_argument(
        "--content-format", metavar="CF",
        help="Content-Format of the payload: a number or media type (e.g. application/json)",
    )
    parser.add_argument("--accept", metavar="CF", help="Accept option: a number or media type")
    parser.add_argument(
        "--non", action="store_true", help="send a non-confirmable (NON) request instead of CON"
    )
    parser.add_argument(
        "-O", "--option", metavar="NUM,VALUE", action="append", default=[], dest="options",
        help="add an option (repeatable); see below",
    )
    parser.add_argument(
        "--timeout", metavar="SECONDS",
        help="give up after SECONDS (default: when CoAP's retransmissions give up, about 93 s)",
    )
    chatter = parser.add_mutually_exclusive_group()
    chatter.add_argument(
        "-v", "--verbose", action="count", default=0,
        help="print the response code, remote address and options to stderr (-vv: also debug logs)",
    )
    chatter.add_argument(
        "-q", "--quiet", action="store_true", help="print nothing but error messages"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("uri", metavar="URI", help="the resource, e.g. coap://[::1]/time")
    return parser


# --- building the request ------------------------------------------------------------------------


def _content_format(text: str, what: str) -> ContentFormat:
    try:
        return ContentFormat.parse(text)
    except ValueError as e:
        raise UsageError(f"{what}: {e}") from None


def _read_payload(spec: str, stdin: BinaryIO | None) -> bytes:
    if not spec.startswith("@"):
        return spec.encode("utf-8")
    if spec.startswith("@@"):
        return spec[1:].encode("utf-8")
    name = spec[1:]
    if name == "-":
        return (stdin or sys.stdin.buffer).read()
    if not name:
        raise UsageError("--payload @ needs a file name ('@-' reads stdin)")
    try:
        with open(name, "rb") as f:
            return f.read()
    except OSError as e:
        raise UsageError(f"cannot read payload file {name!r}: {e.strerror or e}") from None


def _option_number(text: str) -> OptionNumber:
    text = text.strip()
    if text.isascii() and text.isdigit():
        number = int(text)
        if number > 0xFFFF:
            raise UsageError(f"option number {number} is out of range 0..65535")
        return OptionNumber(number)
    key = text.upper().replace("-", "_")
    member = OptionNumber.__members__.get(key)
    if member is None:
        raise UsageError(f"unknown option {text!r}: give a number or a registered name like Uri-Query")
    return member


def _hex(text: str, name: str) -> bytes:
    try:
        return bytes.fromhex(text[2:])
    except ValueError:
        raise UsageError(f"option {name}: {text!r} is not valid hex (two digits per byte)") from None


def parse_option(argument: str) -> tuple[int, bytes]:
    """The option number and raw value of a ``-O NUM,VALUE`` argument; raise :class:`UsageError`."""
    number_text, _, text = argument.partition(",")
    if not number_text.strip():
        raise UsageError(f"-O {argument!r}: expected NUM,VALUE")
    number = _option_number(number_text)
    spec = SPECS.get(number)
    name = spec.name if spec is not None else str(int(number))
    if not text:
        return int(number), b""
    fmt = spec.format if spec is not None else OptionFormat.OPAQUE
    if fmt is OptionFormat.EMPTY:
        raise UsageError(f"option {name} takes no value (write -O {number_text.strip()},)")
    if fmt is OptionFormat.STRING:
        return int(number), text.encode("utf-8")
    if fmt is OptionFormat.UINT:
        assert spec is not None
        if text[:2].lower() == "0x":
            raw = _hex(text, name)
            value = decode_uint(raw)
        elif text.isascii() and text.isdigit():
            value = int(text)
        else:
            raise UsageError(f"option {name} takes an unsigned integer, not {text!r}")
        raw = encode_uint(value)
        if len(raw) > spec.max_length:
            raise UsageError(f"option {name}: {value} does not fit in {spec.max_length} bytes")
        return int(number), raw
    if text[:2].lower() == "0x":
        return int(number), _hex(text, name)
    return int(number), text.encode("utf-8")


def build_request(args: argparse.Namespace, stdin: BinaryIO | None = None) -> Message:
    """The request the arguments describe; raise :class:`UsageError` for anything invalid.

    ``--payload @-`` reads ``stdin`` (default: the process's binary stdin).
    """
    content_format = (
        None if args.content_format is None else _content_format(args.content_format, "--content-format")
    )
    accept = None if args.accept is None else _content_format(args.accept, "--accept")
    options = [parse_option(o) for o in args.options]
    payload = b"" if args.payload is None else _read_payload(args.payload, stdin)
    try:
        request = Context.build(
            Code[args.method.upper()], args.uri, payload=payload,
            content_format=content_format, accept=accept, con=not args.non,
        )
    except error.UriError as e:
        raise UsageError(f"invalid URI {args.uri!r}: {e}") from None
    if request.scheme != "coap":
        raise UsageError(f"scheme {request.scheme!r} is not supported yet; use coap://")
    for number, raw in options:
        request.opt.add(number, raw)
    return request


# --- showing the response ------------------------------------------------------------------------


def _hexdump(data: bytes) -> str:
    lines = []
    for offset in range(0, len(data), 16):
        chunk = data[offset : offset + 16]
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        lines.append(f"{offset:08x}  {chunk.hex(' '):<47}  |{text}|\n")
    return "".join(lines)


def _with_newline(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"


def _pretty_cbor(payload: bytes) -> str | None:
    try:
        cbor2: Any = importlib.import_module("cbor2")
    except ImportError:
        return None
    try:
        return _with_newline(pprint.pformat(cbor2.loads(payload), sort_dicts=False))
    except Exception:
        return None


def format_payload(payload: bytes, content_format: int | None, *, tty: bool) -> bytes | str:
    """What to write for a payload: the bytes unchanged, or (for a terminal, ``tty``) readable text."""
    if not tty:
        return payload
    cf: ContentFormat | None = None
    if content_format is not None and 0 <= content_format <= 0xFFFF:
        cf = ContentFormat(content_format)
    if cf is None:
        try:
            return _with_newline(payload.decode("utf-8"))
        except UnicodeDecodeError:
            return _hexdump(payload)
    if cf.is_json:
        try:
            return json.dumps(json.loads(payload), indent=2, ensure_ascii=False) + "\n"
        except ValueError:
            pass  # not JSON after all: show it as text
    elif cf == ContentFormat.LINK_FORMAT:
        try:
            return "".join(f"{link}\n" for link in parse_links(payload))
        except (ValueError, UnicodeDecodeError):
            pass
    elif cf.is_cbor:
        return _pretty_cbor(payload) or _hexdump(payload)
    if cf.is_text:
        return _with_newline(payload.decode("utf-8", "replace"))
    return _hexdump(payload)


def _option_lines(message: Message) -> Iterator[str]:
    for number, raw in message.opt:
        spec = SPECS.get(number)
        if spec is None:
            yield f"Option-{number}={raw.hex() or '(empty)'}"
        elif number in (OptionNumber.BLOCK1, OptionNumber.BLOCK2) and len(raw) <= 3:
            block = BlockValue.decode(raw)
            yield f"{spec.name}={block.num}/{int(block.more)}/{block.size}"
        elif number in (OptionNumber.CONTENT_FORMAT, OptionNumber.ACCEPT):
            value = decode_uint(raw)
            media = ContentFormat(value).media_type if value <= 0xFFFF else "?"
            yield f"{spec.name}={value} ({media})"
        elif spec.format is OptionFormat.UINT:
            yield f"{spec.name}={decode_uint(raw)}"
        elif spec.format is OptionFormat.STRING:
            yield f"{spec.name}={raw.decode('utf-8', 'replace')}"
        elif spec.format is OptionFormat.EMPTY:
            yield spec.name
        else:
            yield f"{spec.name}={raw.hex() or '(empty)'}"


def _describe(response: Message, stderr: TextIO) -> None:
    print(str(response.code), file=stderr)
    print(f"remote={format_address(response.remote)}", file=stderr)
    print(f"type={response.type.name} mid={response.mid} token={response.token.hex() or '-'}", file=stderr)
    for line in _option_lines(response):
        print(line, file=stderr)
    print(f"payload={len(response.payload)} bytes", file=stderr)


def _write(stdout: TextIO, data: bytes | str) -> None:
    try:
        stdout.flush()
        if isinstance(data, str):
            encoding = getattr(stdout, "encoding", None) or "utf-8"
            data = data.encode(encoding, "replace")
        stdout.buffer.write(data)
        stdout.buffer.flush()
    except BrokenPipeError:
        # The reader went away (`| head`): say nothing, and keep the interpreter's final flush quiet.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stdout.fileno())


def show_response(args: argparse.Namespace, response: Message, stdout: TextIO, stderr: TextIO) -> int:
    """Print ``response`` as the arguments ask and return the exit status."""
    success = response.code.is_successful()
    if args.verbose:
        _describe(response, stderr)
    if not success:
        if not args.verbose:
            print(str(response.code), file=stderr)
        if response.payload:
            print(response.payload.decode("utf-8", "replace").rstrip("\n"), file=stderr)
        stderr.flush()
        return EXIT_ERROR_RESPONSE
    stderr.flush()
    if response.payload and not args.quiet:
        tty = stdout.isatty()
        _write(stdout, format_payload(response.payload, response.opt.content_format, tty=tty))
    return EXIT_OK


# --- running -------------------------------------------------------------------------------------


def _failure(exc: BaseException, request: Message, limit: float | None) -> tuple[int, str] | None:
    """Exit status and message for a failed exchange; None for an exception that is not ours to report."""
    peer = format_address(request.remote)
    if isinstance(exc, error.RequestTimedOut):
        return EXIT_TIMEOUT, f"no answer from {peer} (the CoAP retransmissions gave up)"
    if isinstance(exc, TimeoutError):
        within = "" if limit is None else f" within {limit:g} s (--timeout)"
        return EXIT_TIMEOUT, f"no response from {peer}{within}"
    if isinstance(exc, error.ResetReceived):
        return EXIT_NETWORK, f"{peer} answered with a Reset (RST)"
    if isinstance(exc, error.ResponseRejected):
        return EXIT_NETWORK, f"rejected the response from {peer}: {exc}"
    if isinstance(exc, error.NetworkError) and exc.errno is not None:
        return EXIT_NETWORK, f"{peer}: {os.strerror(exc.errno)}"
    if isinstance(exc, OSError):
        return EXIT_NETWORK, str(exc)
    return None


async def _exchange(request: Message, limit: float | None) -> Message:
    async with Context() as ctx:
        if limit is None:
            return await ctx.request(request)
        with anyio.fail_after(limit):
            return await ctx.request(request)


async def _run(args: argparse.Namespace, request: Message, limit: float | None) -> int:
    stdout, stderr = sys.stdout, sys.stderr
    if args.verbose >= 2:
        print(f"{request.code.name} {request.uri} ({request.type.name}, {len(request.payload)} bytes)",
              file=stderr, flush=True)
    try:
        response = await _exchange(request, limit)
    except BaseException as raised:
        exc = unwrap(raised)
        outcome = _failure(exc, request, limit) if isinstance(exc, Exception) else None
        if outcome is None:
            raise
        status, message = outcome
        error_line(PROG, message, stderr)
        return status
    return show_response(args, response, stdout, stderr)


def _parse_timeout(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--timeout {text!r} is not a number of seconds") from None
    if not (value > 0 and math.isfinite(value)):
        raise UsageError(f"--timeout must be a positive number of seconds, not {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tool with ``argv`` (default: the command line) and return its exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error argparse has already reported
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        timeout = _parse_timeout(args.timeout)
        request = build_request(args)
    except UsageError as e:
        error_line(PROG, str(e))
        return EXIT_USAGE
    except KeyboardInterrupt:  # while reading the payload from stdin
        return EXIT_INTERRUPTED
    if args.verbose >= 2:
        setup_logging(2)
    try:
        return trio.run(_run, args, request, timeout)
    except BaseException as e:
        if is_keyboard_interrupt(e):
            return EXIT_INTERRUPTED
        raise


if __name__ == "__main__":
    sys.exit(main())
