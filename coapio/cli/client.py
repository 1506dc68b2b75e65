"""``coapio-client``: send one CoAP request (or observe a resource) from the command line.

The request is built and checked before any socket is opened, so every usage error is a one-line
message and exit status 2. The exchange itself runs under ``trio.run`` in a client-only
:class:`~coapio.Context`, which does block-wise transfer (RFC 7959) on its own; its outcome becomes the
exit status listed in ``--help``. ``--observe`` (RFC 7641) prints the response and every notification,
one per line, until Ctrl-C or SIGTERM, ``--observe-count``, ``--observe-for`` or the end of the observation.

Start-up matters for a tool run from scripts: this module imports only the standard library at the top,
and coapio's codec and runtime (and trio) once the arguments are parsed, so ``--help`` and ``--version``
return without loading them.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO

from .. import __version__
from ._common import (
    OneLineParser,
    colour,
    error_line,
    format_address,
    is_keyboard_interrupt,
    option_lines,
    printable,
    setup_logging,
    unwrap,
    wants_colour,
)

if TYPE_CHECKING:
    from ..protocol.contentformat import ContentFormat
    from ..protocol.message import Message
    from ..protocol.tuning import TransportTuning

__all__ = [
    "CONTENT_FORMAT_NAMES", "build_parser", "build_request", "format_payload", "main", "parse_block_size",
    "parse_observe_count", "parse_option", "parse_size",
]

PROG = "coapio-client"

EXIT_OK = 0
EXIT_ERROR_RESPONSE = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_NETWORK = 4
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM

METHODS = ("get", "post", "put", "delete", "fetch", "patch", "ipatch")
OBSERVABLE_METHODS = ("get", "fetch")
BLOCK_SIZES = tuple(16 << szx for szx in range(7))  # 16 ... 1024: SZX 0 ... 6 (RFC 7959 §2.2)

#: Short names for --content-format and --accept, besides numbers and media types.
CONTENT_FORMAT_NAMES = {
    "text": 0, "link": 40, "xml": 41, "octet": 42, "exi": 47, "json": 50, "json-patch": 51,
    "merge-patch": 52, "cbor": 60, "cwt": 61, "cbor-seq": 63, "senml-json": 110, "senml-cbor": 112,
}

#: When CoAP gives up without --timeout (RFC 7252 §4.8.2 with the default parameters): MAX_TRANSMIT_WAIT
#: for a CON request; a NON request is sent once and waited for MAX_TRANSMIT_SPAN. A test keeps these
#: in step with :class:`~coapio.TransportTuning`, which is not imported here for --help's sake.
CON_GIVE_UP = 93
NON_GIVE_UP = 45

DEFAULT_MAX_BODY = 8 * 1024 * 1024

#: The progress bar appears once a request has taken this long (seconds) ...
PROGRESS_DELAY = 1.0
#: ... and is rewritten this often.
PROGRESS_INTERVAL = 1.0

_EPILOG = f"""\
The payload is written to stdout (or to FILE with -o). When stdout is a terminal it is made
readable (--pretty forces this, --raw turns it off): text gets a final newline and control
characters escaped, JSON and link-format are pretty-printed, CBOR is shown in diagnostic notation
(RFC 8949 §8) when the cbor-diag package is installed (pip install 'coapio[cbor]'), and other binary
payloads as a hex dump. Otherwise (a pipe or a file) the payload bytes are written unchanged.

A --payload starting with '@' names a file ('@-' is stdin); write '@@' for a literal leading '@'.
When --content-format is CBOR-based (cbor, cbor-seq, ...), a text --payload is read as JSON or CBOR
diagnostic notation and sent as CBOR (needs cbor-diag); a file is sent as it is. A content format is
a number, a media type or a short name: {", ".join(CONTENT_FORMAT_NAMES)}.

-O NUM,VALUE takes an option number or name (e.g. Uri-Query, If-None-Match); VALUE follows the
option's format: a decimal number (or 0x hex) for uint options, text for string options, and for
opaque or unknown options text or 0x hex bytes; an empty VALUE sends an empty option. A value too
long or short for its option is a usage error. -q leaves only the exit status and error messages.

Payloads larger than one block (--block-size, default 1024 bytes) go out block-wise (Block1),
and block-wise responses (Block2) are reassembled, up to --max-body-size, before they are printed.
When standard error is a terminal and a request takes longer than a second, a progress bar there
counts the bytes of the upload and then of the download; it is erased when the request ends.

--observe writes the first response and then every notification as it arrives, each followed
by a newline unless it ends with one; with -v the code and Observe sequence number of each go
to stderr. It stops (deregistering on the wire) on Ctrl-C or SIGTERM, after --observe-count
responses (the first one included), --observe-for seconds after the first response, or when the
server ends the observation (with a response without Observe: status 0 for a 2.xx, 1 for an
error); --timeout bounds only the wait for the first response.

exit status:
  0    a 2.xx success response, or none because No-Response suppressed it (with --observe
       also: Ctrl-C or SIGTERM, --observe-count or --observe-for reached)
  1    a 4.xx or 5.xx error response (the code and diagnostic payload go to stderr)
  2    usage error: bad arguments, URI, content format, option or payload
  3    timeout: --timeout elapsed, or CoAP gave up waiting for an answer
  4    network error: unreachable or closed port (ICMP), name resolution, Reset, bad response
  130  interrupted (Ctrl-C; with --observe only before the first response; SIGTERM: 143)
"""


class UsageError(Exception):
    """An argument that makes no valid request; reported as one line with exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
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
        help="Content-Format of the payload: a number, media type or short name (e.g. json, cbor)",
    )
    parser.add_argument("--accept", metavar="CF", help="Accept option: a number, media type or short name")
    parser.add_argument(
        "--non", action="store_true", help="send a non-confirmable (NON) request instead of CON"
    )
    parser.add_argument(
        "-O", "--option", metavar="NUM,VALUE", action="append", default=[], dest="options",
        help="add an option (repeatable); see below",
    )
    parser.add_argument(
        "--token", metavar="HEX", help="the request's token, 1 to 8 bytes in hex (default: random)"
    )
    parser.add_argument(
        "--no-set-hostname", dest="set_hostname", action="store_false",
        help="send no Uri-Host option, even when the URI names a host by name",
    )
    parser.add_argument(
        "--bind", metavar="HOST[:PORT]",
        help="local address to send from (default: any address, an ephemeral port)",
    )
    parser.add_argument(
        "--timeout", metavar="SECONDS",
        help=f"give up after SECONDS (default: when CoAP gives up, about {CON_GIVE_UP} s for a CON "
        f"request, {NON_GIVE_UP} s for a NON one)",
    )
    parser.add_argument(
        "--block-size", metavar="BYTES",
        help="preferred block size for block-wise transfer: 16, 32, 64, 128, 256, 512 or 1024 "
        "(default: 1024, and the server chooses the response's block size)",
    )
    parser.add_argument(
        "--max-body-size", metavar="BYTES",
        help="the largest block-wise response to reassemble, in bytes or with a suffix k, M or G "
        "(powers of 1024; default: 8M)",
    )
    parser.add_argument(
        "--observe", action="store_true",
        help="observe the resource (GET or FETCH): print each notification as it arrives",
    )
    parser.add_argument(
        "--observe-count", metavar="N",
        help="with --observe: stop after N responses, the first one included",
    )
    parser.add_argument(
        "--observe-for", metavar="SECONDS",
        help="with --observe: stop SECONDS after the first response",
    )
    parser.add_argument(
        "-o", "--output", metavar="FILE",
        help="write the payload's bytes to FILE instead of stdout (with --observe: the latest one)",
    )
    look = parser.add_mutually_exclusive_group()
    look.add_argument(
        "--pretty", dest="readable", action="store_const", const=True, default=None,
        help="make the payload readable even when stdout is not a terminal",
    )
    look.add_argument(
        "--raw", dest="readable", action="store_const", const=False,
        help="write the payload's bytes unchanged even to a terminal",
    )
    parser.add_argument(
        "--color", choices=("auto", "always", "never"), default="auto",
        help="colour the response code on stderr: auto (the default: only on a terminal), always, never",
    )
    chatter = parser.add_mutually_exclusive_group()
    chatter.add_argument(
        "-v", "--verbose", action="count", default=0,
        help="print the response code, remote address and options to stderr (-vv: also every "
        "datagram sent and received, retransmissions and blocks included)",
    )
    chatter.add_argument(
        "-q", "--quiet", action="store_true", help="print nothing but error messages"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("uri", metavar="URI", help="the resource, e.g. coap://[::1]/time")
    return parser


# --- building the request ------------------------------------------------------------------------


def _content_format(text: str, what: str) -> ContentFormat:
    from ..protocol.contentformat import ContentFormat

    short = CONTENT_FORMAT_NAMES.get(text.strip().lower())
    if short is not None:
        return ContentFormat(short)
    try:
        return ContentFormat.parse(text)
    except ValueError as e:
        raise UsageError(f"{what}: {e}") from None


def _read_payload(spec: str, stdin: BinaryIO | None) -> bytes:
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


def _cbor_diag() -> Any | None:
    """The cbor-diag package (the ``cbor`` extra, with cbor2), or None where they are not installed."""
    try:
        importlib.import_module("cbor2")
        return importlib.import_module("cbor_diag")
    except ImportError:
        return None


def _cbor_kind(content_format: ContentFormat) -> str | None:
    """``"item"`` for a format of one CBOR data item, ``"seq"`` for a CBOR sequence (RFC 8742), else None."""
    if content_format.is_cbor:
        return "item"
    if content_format.encoding is None and content_format.media_type.split(";")[0].endswith("cbor-seq"):
        return "seq"
    return None


def _to_cbor(text: str, content_format: ContentFormat) -> bytes:
    """A text payload for a CBOR-based content format, read as JSON or diagnostic notation."""
    cbor_diag = _cbor_diag()
    if cbor_diag is None:
        raise UsageError(
            f"--content-format {content_format.media_type} turns the --payload text into CBOR, which "
            "needs the cbor-diag package: pip install 'coapio[cbor]' (or send a CBOR file with @FILE)"
        )
    try:
        with _quiet_stderr():
            encoded: bytes = cbor_diag.diag2cbor(text, seq=_cbor_kind(content_format) == "seq")
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # ValueError; also a panic of the native parser (a BaseException)
        reason = (str(e).splitlines() or ["invalid"])[0].split(". Expected")[0]
        raise UsageError(f"--payload is neither JSON nor CBOR diagnostic notation: {reason}") from None
    return encoded


def _option_number(text: str) -> int:
    from ..protocol.options import OptionNumber

    text = text.strip()
    if text.isascii() and text.isdigit():
        number = int(text)
        if number > 0xFFFF:
            raise UsageError(f"option number {number} is out of range 0..65535")
        return number
    key = text.upper().replace("-", "_")
    member = OptionNumber.__members__.get(key)
    if member is None:
        raise UsageError(f"unknown option {text!r}: give a number or a registered name like Uri-Query")
    return int(member)


def _hex(text: str, name: str) -> bytes:
    try:
        return bytes.fromhex(text[2:])
    except ValueError:
        raise UsageError(f"option {name}: {text!r} is not valid hex (two digits per byte)") from None


def parse_option(argument: str) -> tuple[int, bytes]:
    """The option number and raw value of a ``-O NUM,VALUE`` argument; raise :class:`UsageError`."""
    from ..protocol.options import (
        SPECS,
        OptionFormat,
        OptionLengthError,
        check_length,
        decode_uint,
        encode_uint,
    )

    number_text, _, text = argument.partition(",")
    if not number_text.strip():
        raise UsageError(f"-O {argument!r}: expected NUM,VALUE")
    number = _option_number(number_text)
    spec = SPECS.get(number)
    name = spec.name if spec is not None else str(number)
    fmt = spec.format if spec is not None else OptionFormat.OPAQUE
    if not text:
        raw = b""
    elif fmt is OptionFormat.EMPTY:
        raise UsageError(f"option {name} takes no value (write -O {number_text.strip()},)")
    elif fmt is OptionFormat.STRING:
        raw = text.encode("utf-8")
    elif fmt is OptionFormat.UINT:
        assert spec is not None
        if text[:2].lower() == "0x":
            value = decode_uint(_hex(text, name))
        elif text.isascii() and text.isdigit():
            value = int(text)
        else:
            raise UsageError(f"option {name} takes an unsigned integer, not {text!r}")
        raw = encode_uint(value)
        if len(raw) > spec.max_length:
            raise UsageError(f"option {name}: {value} does not fit in {spec.max_length} bytes")
    elif text[:2].lower() == "0x":
        raw = _hex(text, name)
    else:
        raw = text.encode("utf-8")
    try:
        check_length(number, raw)
    except OptionLengthError as e:
        raise UsageError(f"-O {number_text.strip()}: {e}") from None
    return number, raw


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


def parse_size(text: str | None, what: str = "--max-body-size") -> int | None:
    """A positive byte count, with an optional suffix k, M or G (powers of 1024); or :class:`UsageError`."""
    if text is None:
        return None
    digits, scale = text.strip(), 1
    if digits[-1:].lower() in ("k", "m", "g"):
        scale = 1024 ** ("kmg".index(digits[-1].lower()) + 1)
        digits = digits[:-1]
    if not (digits.isascii() and digits.isdigit() and int(digits) > 0):
        raise UsageError(f"{what} must be a positive number of bytes (suffix k, M or G), not {text!r}")
    return int(digits) * scale


def parse_observe_count(text: str | None, observe: bool) -> int | None:
    """The ``--observe-count`` as a positive number; raise :class:`UsageError`."""
    if text is None:
        return None
    if not observe:
        raise UsageError("--observe-count needs --observe")
    if not (text.isascii() and text.isdigit() and int(text) > 0):
        raise UsageError(f"--observe-count must be a positive whole number, not {text!r}")
    return int(text)


def _parse_seconds(text: str | None, what: str) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{what} {text!r} is not a number of seconds") from None
    if not (value > 0 and math.isfinite(value)):
        raise UsageError(f"{what} must be a positive number of seconds, not {text!r}")
    return value


def _parse_token(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        token = bytes.fromhex(text[2:] if text[:2].lower() == "0x" else text)
    except ValueError:
        raise UsageError(f"--token {text!r} is not hex (two digits per byte)") from None
    if not 1 <= len(token) <= 8:
        raise UsageError(f"--token must be 1 to 8 bytes (RFC 7252 §5.3.1), not {len(token)}")
    return token


def parse_local(text: str) -> tuple[str, int]:
    """``--bind``: ``HOST``, ``HOST:PORT``, ``[V6]`` or ``[V6]:PORT``; the port defaults to 0 (ephemeral)."""
    text = text.strip()
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise UsageError(f"--bind {text!r}: write an IPv6 address as [ADDRESS] or [ADDRESS]:PORT")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    if port_text and not (port_text.isascii() and port_text.isdigit() and int(port_text) <= 0xFFFF):
        raise UsageError(f"--bind {text!r}: the port must be a number 0..65535")
    return host or "::", int(port_text or 0)


def build_request(args: argparse.Namespace, stdin: BinaryIO | None = None) -> Message:
    """The request the arguments describe; raise :class:`UsageError` for anything invalid.

    ``--payload @-`` reads ``stdin`` (default: the process's binary stdin). With ``--block-size`` the
    request carries Block2 (block 0 of that size) unless ``-O`` gave one: early negotiation of the
    response's block size (RFC 7959 §2.4), which the server may lower but not raise.
    """
    from .. import error
    from ..protocol.codes import Code, Type
    from ..protocol.message import Message
    from ..protocol.options import BlockValue, OptionLengthError, OptionNumber

    if args.observe and args.method not in OBSERVABLE_METHODS:
        raise UsageError(f"--observe needs the method GET or FETCH, not {args.method.upper()}")
    szx = parse_block_size(args.block_size)
    content_format = (
        None if args.content_format is None else _content_format(args.content_format, "--content-format")
    )
    accept = None if args.accept is None else _content_format(args.accept, "--accept")
    options = [parse_option(o) for o in args.options]
    token = _parse_token(getattr(args, "token", None))
    payload = b""
    if args.payload is not None:
        if args.payload.startswith("@") and not args.payload.startswith("@@"):
            payload = _read_payload(args.payload, stdin)
        else:
            text = args.payload[1:] if args.payload.startswith("@@") else args.payload
            if content_format is not None and _cbor_kind(content_format):
                payload = _to_cbor(text, content_format)
            else:
                payload = text.encode("utf-8")
    try:
        request = Message(Type.NON if args.non else Type.CON, Code[args.method.upper()], payload=payload,
                          uri=args.uri)
    except (error.UriError, OptionLengthError) as e:
        raise UsageError(f"invalid URI {args.uri!r}: {e}") from None
    if request.scheme != "coap":
        raise UsageError(f"scheme {request.scheme!r} is not supported yet; use coap://")
    if request.remote is not None and request.remote.port == 0:
        raise UsageError(f"invalid URI {args.uri!r}: port 0 cannot be sent to")
    if content_format is not None:
        request.opt.content_format = int(content_format)
    if accept is not None:
        request.opt.accept = int(accept)
    if not getattr(args, "set_hostname", True):
        request.opt.uri_host = None
    for number, raw in options:
        request.opt.add(number, raw)  # checked by parse_option
    if szx is not None and OptionNumber.BLOCK2 not in request.opt:
        request.opt.block2 = BlockValue(0, False, szx)
    if token is not None:
        request.token = token
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


def _cbor_problem(payload: bytes, sequence: bool) -> str | None:
    """Why ``payload`` is not well-formed CBOR (one item, or a sequence), by cbor2; None if it is.

    A server's bytes are checked before cbor-diag sees them: its parser recurses without a limit (deep
    nesting overflows the stack and kills the process) and panics on some inputs, while cbor2 bounds the
    nesting depth and reports every problem as an exception.
    """
    import io

    cbor2: Any = importlib.import_module("cbor2")
    stream = io.BytesIO(payload)
    decoder = cbor2.CBORDecoder(stream)
    try:
        decoder.decode()
        while sequence and stream.tell() < len(payload):
            decoder.decode()
    except Exception as e:
        return str(e) or type(e).__name__
    if stream.tell() < len(payload):
        rest = len(payload) - stream.tell()
        return f"{rest} more byte{'s' if rest > 1 else ''} after the first item"
    return None


@contextlib.contextmanager
def _quiet_stderr() -> Any:
    """Keep a native library's panic message off the terminal (file descriptor 2, not sys.stderr)."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cbor_text(payload: bytes, sequence: bool) -> str:
    """CBOR in diagnostic notation (RFC 8949 §8) by cbor-diag; a hex dump without it, or for bad CBOR."""
    cbor_diag = _cbor_diag()
    if cbor_diag is None:
        return _hexdump(payload)
    problem = _cbor_problem(payload, sequence)
    if problem is not None:
        what = "a CBOR sequence" if sequence else "one CBOR data item"
        return _hexdump(payload) + f"(not {what}: {printable(problem)})\n"
    try:
        with _quiet_stderr():
            return _with_newline(printable(cbor_diag.cbor2diag(payload, seq=sequence)))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # cbor-diag's panics (pyo3's PanicException) are BaseExceptions
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        return _hexdump(payload) + f"(cbor-diag cannot show this CBOR: {printable(reason)})\n"


def format_payload(payload: bytes, content_format: int | None, *, tty: bool) -> bytes | str:
    """What to write for a payload: the bytes unchanged, or (``tty``: made readable) text for a person."""
    if not tty:
        return payload
    from ..protocol.contentformat import ContentFormat
    from ..protocol.linkformat import parse_links

    cf: ContentFormat | None = None
    if content_format is not None and 0 <= content_format <= 0xFFFF:
        cf = ContentFormat(content_format)
    if cf is None:
        try:
            return _with_newline(printable(payload.decode("utf-8")))
        except UnicodeDecodeError:
            return _hexdump(payload)
    if cf.is_json:
        try:
            return json.dumps(json.loads(payload), indent=2, ensure_ascii=False) + "\n"
        except ValueError:
            pass  # not JSON after all: show it as text
    elif cf == ContentFormat.LINK_FORMAT:
        try:
            return "".join(f"{printable(str(link))}\n" for link in parse_links(payload))
        except (ValueError, UnicodeDecodeError):
            pass
    elif kind := _cbor_kind(cf):
        return _cbor_text(payload, kind == "seq")
    if cf.is_text:
        return _with_newline(printable(payload.decode("utf-8", "replace")))
    return _hexdump(payload)


def _describe(response: Message, stderr: TextIO, colours: bool) -> None:
    print(colour(str(response.code), _code_colour(response), colours), file=stderr)
    print(f"remote={format_address(response.remote)}", file=stderr)
    print(f"type={response.type.name} mid={response.mid} token={response.token.hex() or '-'}", file=stderr)
    for line in option_lines(response):
        print(line, file=stderr)
    print(f"payload={len(response.payload)} bytes", file=stderr)


def _code_colour(response: Message) -> str:
    return "green" if response.code.is_successful() else "red"


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


class OutputError(Exception):
    """The ``-o`` file cannot be written."""


def _write_file(path: str, data: bytes) -> None:
    """Replace ``path``'s content with ``data`` (through a temporary file: a reader never sees half)."""
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temporary, "wb") as f:
            f.write(data)
        os.replace(temporary, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise OutputError(f"cannot write -o {path!r}: {e.strerror or e}") from None


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
    observe = getattr(args, "observe", False)
    colours = wants_colour(stderr, getattr(args, "color", "auto"))
    if not int(response.code):
        # No-Response (RFC 7967) suppressed the response the request asked not to get: a success.
        if args.verbose:
            print("no response: suppressed by the No-Response option, as asked", file=stderr, flush=True)
        return EXIT_OK, True
    success = response.code.is_successful()
    if args.verbose:
        if first or not observe:
            _describe(response, stderr, colours)
        else:
            print(colour(_notification_line(response), _code_colour(response), colours), file=stderr)
    if not success:
        if not args.verbose:
            print(colour(str(response.code), "red", colours), file=stderr)
        if response.payload:
            diagnostic = response.payload.decode("utf-8", "replace").rstrip("\n")
            print(printable(diagnostic) if stderr.isatty() else diagnostic, file=stderr)
        stderr.flush()
        return EXIT_ERROR_RESPONSE, True
    stderr.flush()
    output = getattr(args, "output", None)
    if output is not None:
        _write_file(output, response.payload)
        return EXIT_OK, True
    if args.quiet or not (response.payload or observe):
        return EXIT_OK, True
    readable = args.readable if getattr(args, "readable", None) is not None else stdout.isatty()
    data = format_payload(response.payload, response.opt.content_format, tty=readable)
    if observe:
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


def _failure(
    exc: BaseException, request: Message, limit: float | None, *, bind: str | None = None
) -> tuple[int, str] | None:
    """Exit status and message for a failed exchange; None for an exception that is not ours to report."""
    from .. import error
    from ..protocol.codes import Type

    peer = format_address(request.remote)
    if isinstance(exc, error.RequestTimedOut):
        if request.type is Type.NON:
            return EXIT_TIMEOUT, (
                f"no response from {peer} (a NON request is sent once, and CoAP stopped waiting after "
                f"about {NON_GIVE_UP} s)"
            )
        return EXIT_TIMEOUT, f"no answer from {peer} (the CoAP retransmissions gave up)"
    if isinstance(exc, TimeoutError):
        within = "" if limit is None else f" within {limit:g} s (--timeout)"
        return EXIT_TIMEOUT, f"no response from {peer}{within}"
    if isinstance(exc, error.ResetReceived):
        return EXIT_NETWORK, f"{peer} answered with a Reset (RST)"
    if isinstance(exc, error.ResponseRejected):
        hint = " (see --max-body-size)" if "exceeds the limit" in str(exc) else ""
        return EXIT_NETWORK, f"rejected the response from {peer}: {exc}{hint}"
    if isinstance(exc, error.NetworkError) and exc.errno is not None:
        return EXIT_NETWORK, f"{peer}: {os.strerror(exc.errno)}"
    if isinstance(exc, error.NetworkError):
        return EXIT_NETWORK, str(exc)
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
        if bind is not None:
            return EXIT_NETWORK, f"cannot bind --bind {bind}: {reason}"
        return EXIT_NETWORK, reason
    return None


class Plan:
    """How to run the request, besides the request itself: what main() parsed from the arguments."""

    def __init__(
        self,
        timeout: float | None = None,
        tuning: TransportTuning | None = None,
        observe_count: int | None = None,
        *,
        observe_for: float | None = None,
        bind: tuple[str, int] | None = None,
        trace: bool = False,
    ):
        if tuning is None:
            from ..protocol.tuning import TransportTuning

            tuning = TransportTuning()
        self.timeout = timeout
        self.tuning = tuning
        self.observe_count = observe_count
        self.observe_for = observe_for
        self.bind = bind
        self.trace = trace

    @property
    def bind_text(self) -> str | None:
        return None if self.bind is None else format_address(self.bind, unmap=False)


class _Progress:
    """What the runtime reported of a block-wise transfer: which way, bytes moved and the body's size.

    ``upload`` is the request body's size when it goes out block-wise: the reports count it first, and
    the next report after it was all acknowledged is the first of the response's download.
    """

    def __init__(self, upload: int | None = None) -> None:
        self.upload = upload
        self.phase = "upload" if upload else "download"
        self.done = 0
        self.total: int | None = upload

    def __call__(self, done: int, total: int | None) -> None:
        if self.phase == "upload" and self.done >= (self.upload or 0):
            self.phase = "download"
        self.done, self.total = done, total


def _progress_line(state: _Progress, elapsed: int) -> str:
    done_kib = state.done / 1024
    if state.total:
        fraction = min(1.0, state.done / state.total)
        bar = "#" * int(fraction * 20)
        return (f"{state.phase} [{bar:<20}] {fraction:4.0%} {done_kib:.0f} of {state.total / 1024:.0f} KiB, "
                f"{elapsed} s")
    return f"{state.phase} {done_kib:.0f} KiB, {elapsed} s"


async def _show_progress(stderr: TextIO, state: _Progress) -> None:
    """The progress bar: after PROGRESS_DELAY, bytes moved of the body's size (Size1 for an upload, Size2
    for a download, when the server sends it) and the elapsed seconds; erased when the request ends."""
    import trio

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


@contextlib.asynccontextmanager
async def _context(plan: Plan) -> Any:
    """The client context the plan asks for, with the wire trace of ``-vv``."""
    from ..runtime.context import Context

    async with Context(bind=None if plan.bind is None else [plan.bind], tuning=plan.tuning) as ctx:
        if plan.trace:
            from ._trace import install_tracer

            install_tracer(ctx)
        yield ctx


async def _exchange(request: Message, plan: Plan, progress: TextIO | None = None) -> Message:
    """One request in a fresh context; with a ``progress`` stream, the progress bar on it meanwhile."""
    import anyio
    import trio

    async with _context(plan) as ctx:
        with anyio.fail_after(plan.timeout):
            if progress is None:
                response: Message = await ctx.request(request)
                return response
            block = 1 << (plan.tuning.block_szx + 4)
            state = _Progress(len(request.payload) if len(request.payload) > block else None)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_show_progress, progress, state)
                response = await ctx.request(request, progress=state)
                nursery.cancel_scope.cancel()
            return response


async def _observe(args: argparse.Namespace, request: Message, plan: Plan) -> int:
    """Observe and print until a signal, ``--observe-count``, ``--observe-for`` or the end of the observation.

    SIGINT (Ctrl-C) and SIGTERM (``kill``, ``timeout``) are taken as signals here, not as
    KeyboardInterrupt or death, so the observation ends in order: leaving its block sends the
    deregistration (GET with Observe=1) before the context closes.
    """
    import signal

    import anyio
    import trio

    stdout, stderr = sys.stdout, sys.stderr
    shown = 0
    status = EXIT_OK
    received: int | None = None
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with _context(plan) as ctx, trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                nonlocal received
                async for signum in signals:
                    received = signum
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
            try:
                async with contextlib.AsyncExitStack() as stack:
                    with anyio.fail_after(plan.timeout):
                        observation = await stack.enter_async_context(ctx.observe(request))
                    with trio.CancelScope() as duration:
                        async for response in observation:
                            shown += 1
                            status, still_open = _show(args, response, stdout, stderr, first=shown == 1)
                            if not still_open or shown == plan.observe_count:
                                break
                            if shown == 1 and plan.observe_for is not None:
                                duration.deadline = trio.current_time() + plan.observe_for
            finally:
                nursery.cancel_scope.cancel()
    if received is not None and not shown:
        return EXIT_TERMINATED if received == signal.SIGTERM else EXIT_INTERRUPTED
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
        return show_response(args, response, stdout, stderr)
    except BaseException as raised:
        exc = unwrap(raised)
        if isinstance(exc, OutputError):
            error_line(PROG, str(exc), stderr)
            return EXIT_USAGE
        outcome = (
            _failure(exc, request, plan.timeout, bind=plan.bind_text) if isinstance(exc, Exception) else None
        )
        if outcome is None:
            raise
        status, message = outcome
        error_line(PROG, message, stderr)
        return status


def make_plan(args: argparse.Namespace) -> Plan:
    """Everything but the request that the arguments ask for; raise :class:`UsageError`."""
    from ..protocol.tuning import TransportTuning

    timeout = _parse_seconds(args.timeout, "--timeout")
    szx = parse_block_size(args.block_size)
    max_body = parse_size(args.max_body_size)
    count = parse_observe_count(args.observe_count, args.observe)
    observe_for = _parse_seconds(args.observe_for, "--observe-for")
    if observe_for is not None and not args.observe:
        raise UsageError("--observe-for needs --observe")
    bind = None if args.bind is None else parse_local(args.bind)
    if args.output is not None:
        directory = os.path.dirname(os.path.abspath(args.output))
        if not os.path.isdir(directory):
            raise UsageError(f"-o {args.output!r}: no such directory {directory!r}")
    tuning = TransportTuning(
        block_szx=6 if szx is None else szx, max_body_size=max_body or DEFAULT_MAX_BODY
    )
    return Plan(timeout, tuning, count, observe_for=observe_for, bind=bind, trace=args.verbose >= 2)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tool with ``argv`` (default: the command line) and return its exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error argparse has already reported
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        plan = make_plan(args)
        request = build_request(args)
    except UsageError as e:
        error_line(PROG, str(e))
        return EXIT_USAGE
    except KeyboardInterrupt:  # while reading the payload from stdin
        return EXIT_INTERRUPTED
    if args.verbose >= 2:
        setup_logging(2)
    import trio

    try:
        status: int = trio.run(_run, args, request, plan)
        return status
    except BaseException as e:
        if is_keyboard_interrupt(e):
            return EXIT_INTERRUPTED
        raise


if __name__ == "__main__":
    sys.exit(main())
