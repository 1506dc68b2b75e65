"""``coapio-client``: send one CoAP request (or observe a resource) from the command line.

The request is built and checked before any socket is opened, so every usage error is a one-line
message and exit status 2. The exchange itself runs under ``trio.run`` in a client-only
:class:`~coapio.Context`, which does block-wise transfer (RFC 7959) on its own; its outcome becomes the
exit status listed in ``--help``. ``--observe`` (RFC 7641) prints the response and every notification,
one per line, until Ctrl-C, ``--observe-count`` or the end of the observation.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import pprint
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO, TextIO

import anyio
import attrs
import trio

from .. import __version__, error
from ..protocol.codes import Code
from ..protocol.contentformat import ContentFormat
from ..protocol.linkformat import parse_links
from ..protocol.message import Message
from ..protocol.options import SPECS, BlockValue, OptionFormat, OptionNumber, decode_uint, encode_uint
from ..protocol.tuning import TransportTuning
from ..runtime.context import Context
from ._common import error_line, format_address, is_keyboard_interrupt, setup_logging, unwrap

__all__ = [
    "build_parser", "format_payload", "main", "parse_block_size", "parse_observe_count", "parse_option",
]

PROG = "coapio-client"

EXIT_OK = 0
EXIT_ERROR_RESPONSE = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_NETWORK = 4
EXIT_INTERRUPTED = 130

METHODS = ("get", "post", "put", "delete", "fetch", "patch", "ipatch")
OBSERVABLE_METHODS = ("get", "fetch")
BLOCK_SIZES = tuple(16 << szx for szx in range(7))  # 16 ... 1024: SZX 0 ... 6 (RFC 7959 §2.2)

#: The progress bar appears once a request has taken this long (seconds) ...
PROGRESS_DELAY = 1.0
#: ... and is rewritten this often.
PROGRESS_INTERVAL = 1.0

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

Payloads larger than one block (--block-size, default 1024 bytes) go out block-wise (Block1),
and block-wise responses (Block2) are reassembled before they are printed. When standard error
is a terminal and a request takes longer than a second, a progress bar there counts the bytes
of the transfer out of the body's size (Size1 for an upload, the server's Size2 for a download);
it is erased when the request ends.

--observe writes the first response and then every notification as it arrives, each followed
by a newline unless it ends with one; with -v the code and Observe sequence number of each go
to stderr. It stops on Ctrl-C, after --observe-count responses (the first one included), or
when the server ends the observation (with a response without Observe: status 0 for a 2.xx,
1 for an error); --timeout bounds only the wait for the first response.

exit status:
  0    a 2.xx success response (with --observe also: Ctrl-C, or --observe-count reached)
  1    a 4.xx or 5.xx error response (the code and diagnostic payload go to stderr)
  2    usage error: bad arguments, URI, content format or option
  3    timeout: --timeout elapsed, or the retransmissions went unanswered
  4    network error: unreachable or closed port (ICMP), name resolution, Reset, bad response
  130  interrupted (Ctrl-C; with --observe only before the first response)
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
    parser.add_argument(
        "--block-size", metavar="BYTES",
        help="preferred block size for block-wise transfer: 16, 32, 64, 128, 256, 512 or 1024 "
        "(default: 1024, and the server chooses the response's block size)",
    )
    parser.add_argument(
        "--observe", action="store_true",
        help="observe the resource (GET or FETCH): print each notification as it arrives",
    )
    parser.add_argument(
        "--observe-count", metavar="N",
        help="with --observe: stop after N responses, the first one included",
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


def parse_block_size(text: str | None) -> int | None:
    """The SZX (0..6) of a ``--block-size`` of 16..1024 bytes, a power of two; raise :class:`UsageError`."""
    if text is None:
        return None
    try:
        size = int(text)
    except ValueError:
        size = -1
    if size not in BLOCK_SIZES:
        raise UsageError(f"--block-size must be 16, 32, 64, 128, 256, 512 or 1024, not {text!r}")
    return size.bit_length() - 5


def parse_observe_count(text: str | None, observe: bool) -> int | None:
    """The ``--observe-count`` as a positive number; raise :class:`UsageError`."""
    if text is None:
        return None
    if not observe:
        raise UsageError("--observe-count needs --observe")
    if not (text.isascii() and text.isdigit() and int(text) > 0):
        raise UsageError(f"--observe-count must be a positive whole number, not {text!r}")
    return int(text)


def build_request(args: argparse.Namespace, stdin: BinaryIO | None = None) -> Message:
    """The request the arguments describe; raise :class:`UsageError` for anything invalid.

    ``--payload @-`` reads ``stdin`` (default: the process's binary stdin). With ``--block-size`` the
    request carries Block2 (block 0 of that size) unless ``-O`` gave one: early negotiation of the
    response's block size (RFC 7959 §2.4), which the server may lower but not raise.
    """
    if args.observe and args.method not in OBSERVABLE_METHODS:
        raise UsageError(f"--observe needs the method GET or FETCH, not {args.method.upper()}")
    szx = parse_block_size(args.block_size)
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
    if szx is not None and OptionNumber.BLOCK2 not in request.opt:
        request.opt.block2 = BlockValue(0, False, szx)
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


def _write(stdout: TextIO, data: bytes | str) -> bool:
    """Write ``data``; False if the reader has gone away (a closed pipe)."""
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
        return False
    return True


def show_response(args: argparse.Namespace, response: Message, stdout: TextIO, stderr: TextIO) -> int:
    """Print ``response`` as the arguments ask and return the exit status."""
    return _show(args, response, stdout, stderr, first=True)[0]


def _show(
    args: argparse.Namespace, response: Message, stdout: TextIO, stderr: TextIO, *, first: bool
) -> tuple[int, bool]:
    """:func:`show_response`, and whether ``stdout`` is still open (False: the reader went away).

    With ``--observe`` each response becomes one line on ``stdout`` (a newline is added unless the output
    already ends with one); ``-v`` describes the ``first`` in full and later ones in one line each.
    """
    success = response.code.is_successful()
    if args.verbose:
        if first or not args.observe:
            _describe(response, stderr)
        else:
            print(_notification_line(response), file=stderr)
    if not success:
        if not args.verbose:
            print(str(response.code), file=stderr)
        if response.payload:
            print(response.payload.decode("utf-8", "replace").rstrip("\n"), file=stderr)
        stderr.flush()
        return EXIT_ERROR_RESPONSE, True
    stderr.flush()
    if args.quiet or not (response.payload or args.observe):
        return EXIT_OK, True
    data = format_payload(response.payload, response.opt.content_format, tty=stdout.isatty())
    if args.observe:
        if isinstance(data, str):
            data = _with_newline(data)
        elif not data.endswith(b"\n"):
            data += b"\n"
    return EXIT_OK, _write(stdout, data)


def _notification_line(response: Message) -> str:
    """``-v`` for a notification: its code and Observe value, or that it ended the observation."""
    sequence = response.opt.observe
    state = "final: no Observe" if sequence is None else f"Observe={sequence}"
    return f"{response.code} {state} payload={len(response.payload)} bytes"


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


@attrs.frozen
class Plan:
    """How to run the request, besides the request itself: what main() parsed from the arguments."""

    timeout: float | None = None
    tuning: TransportTuning = attrs.Factory(TransportTuning)
    observe_count: int | None = None


class _Progress:
    """What the runtime reported of a block-wise transfer: bytes moved and the body's size if known."""

    def __init__(self) -> None:
        self.done = 0
        self.total: int | None = None

    def __call__(self, done: int, total: int | None) -> None:
        self.done, self.total = done, total


def _progress_line(state: _Progress, elapsed: int) -> str:
    done_kib = state.done / 1024
    if state.total:
        fraction = min(1.0, state.done / state.total)
        bar = "#" * int(fraction * 20)
        return (f"[{bar:<20}] {fraction:4.0%} {done_kib:.0f} of {state.total / 1024:.0f} KiB, {elapsed} s")
    return f"{done_kib:.0f} KiB, {elapsed} s"


async def _show_progress(stderr: TextIO, state: _Progress) -> None:
    """The progress bar: after PROGRESS_DELAY, bytes moved of the body's size (Size1 for an upload, Size2
    for a download, when the server sends it) and the elapsed seconds; erased when the request ends."""
    start = trio.current_time()
    shown = False
    try:
        await trio.sleep(PROGRESS_DELAY)
        while True:
            elapsed = int(trio.current_time() - start)
            stderr.write(f"\r{PROG}: {_progress_line(state, elapsed)}\x1b[K")
            stderr.flush()
            shown = True
            await trio.sleep(PROGRESS_INTERVAL)
    finally:
        if shown:
            stderr.write("\r\x1b[K")
            stderr.flush()


async def _exchange(request: Message, plan: Plan, progress: TextIO | None = None) -> Message:
    """One request in a fresh context; with a ``progress`` stream, the progress bar on it meanwhile."""
    async with Context(tuning=plan.tuning) as ctx:
        with anyio.fail_after(plan.timeout):
            if progress is None:
                return await ctx.request(request)
            state = _Progress()
            if request.payload:
                state.total = len(request.payload)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_show_progress, progress, state)
                response = await ctx.request(request, progress=state)
                nursery.cancel_scope.cancel()
            return response


async def _observe(args: argparse.Namespace, request: Message, plan: Plan) -> int:
    """Observe and print until Ctrl-C, ``--observe-count`` or the end of the observation.

    Ctrl-C is taken as a signal here, not as KeyboardInterrupt, so the observation ends in order:
    leaving its block sends the deregistration (GET with Observe=1) before the context closes.
    """
    stdout, stderr = sys.stdout, sys.stderr
    shown = 0
    status = EXIT_OK
    interrupted = False
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async with Context(tuning=plan.tuning) as ctx, trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                nonlocal interrupted
                async for _ in signals:
                    interrupted = True
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
            try:
                async with contextlib.AsyncExitStack() as stack:
                    with anyio.fail_after(plan.timeout):
                        observation = await stack.enter_async_context(ctx.observe(request))
                    async for response in observation:
                        shown += 1
                        status, still_open = _show(args, response, stdout, stderr, first=shown == 1)
                        if not still_open or shown == plan.observe_count:
                            break
            finally:
                nursery.cancel_scope.cancel()
    if interrupted and not shown:
        return EXIT_INTERRUPTED
    return status


async def _run(args: argparse.Namespace, request: Message, plan: Plan) -> int:
    stdout, stderr = sys.stdout, sys.stderr
    if args.verbose >= 2:
        print(f"{request.code.name} {request.uri} ({request.type.name}, {len(request.payload)} bytes)",
              file=stderr, flush=True)
    progress = stderr if stderr.isatty() and not args.quiet else None
    try:
        if args.observe:
            return await _observe(args, request, plan)
        response = await _exchange(request, plan, progress)
    except BaseException as raised:
        exc = unwrap(raised)
        outcome = _failure(exc, request, plan.timeout) if isinstance(exc, Exception) else None
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
        szx = parse_block_size(args.block_size)
        count = parse_observe_count(args.observe_count, args.observe)
        request = build_request(args)
    except UsageError as e:
        error_line(PROG, str(e))
        return EXIT_USAGE
    except KeyboardInterrupt:  # while reading the payload from stdin
        return EXIT_INTERRUPTED
    tuning = TransportTuning() if szx is None else attrs.evolve(TransportTuning(), block_szx=szx)
    plan = Plan(timeout, tuning, count)
    if args.verbose >= 2:
        setup_logging(2)
    try:
        return trio.run(_run, args, request, plan)
    except BaseException as e:
        if is_keyboard_interrupt(e):
            return EXIT_INTERRUPTED
        raise


if __name__ == "__main__":
    sys.exit(main())
