"""How ``coapio-client`` shows a response: payload formatting (text, JSON, link-format, CBOR diagnostic
notation, hex dumps), escaping for terminals, the ``-v`` description, and writing to stdout or ``-o``."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
from typing import TYPE_CHECKING, Any, TextIO

from ._common import (
    EXIT_ERROR_RESPONSE,
    EXIT_OK,
    colour,
    format_remote,
    option_lines,
    printable,
    wants_colour,
)

if TYPE_CHECKING:
    import argparse

    from ..protocol.contentformat import ContentFormat
    from ..protocol.message import Message

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
    print(f"remote={format_remote(response.remote)}", file=stderr)
    if response.security is not None:
        print(f"authenticated as {response.security}", file=stderr)
    token = response.token.hex() or "-"
    if getattr(response.remote, "scheme", "coap") == "coap":
        print(f"type={response.type.name} mid={response.mid} token={token}", file=stderr)
    else:
        print(f"token={token}", file=stderr)  # RFC 8323 messages have no type and no message ID
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
