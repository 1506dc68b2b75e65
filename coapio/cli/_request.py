"""How ``coapio-client`` turns its arguments into a request: content formats, payloads (with JSON or CBOR
diagnostic notation converted to CBOR), options, block and body sizes, tokens; every problem is a
:class:`UsageError` (one line, exit status 2) before anything is sent."""

from __future__ import annotations

import argparse
import math
import sys
from typing import TYPE_CHECKING, BinaryIO

from ._common import UsageError
from ._display import _cbor_diag, _cbor_kind, _quiet_stderr

if TYPE_CHECKING:
    from ..protocol.contentformat import ContentFormat
    from ..protocol.message import Message

OBSERVABLE_METHODS = ("get", "fetch")

#: The URI schemes coapio-client sends requests over: UDP, DTLS (``coaps``) and the four of RFC 8323.
SUPPORTED_SCHEMES = ("coap", "coaps", "coap+tcp", "coaps+tcp", "coap+ws", "coaps+ws")
#: The schemes over TLS, where --ca, --cert and --key apply.
TLS_SCHEMES = ("coaps+tcp", "coaps+ws")

BLOCK_SIZES = tuple(16 << szx for szx in range(7))  # 16 ... 1024: SZX 0 ... 6 (RFC 7959 §2.2)

#: Short names for --content-format and --accept, besides numbers and media types.
CONTENT_FORMAT_NAMES = {
    "text": 0, "link": 40, "xml": 41, "octet": 42, "exi": 47, "json": 50, "json-patch": 51,
    "merge-patch": 52, "cbor": 60, "cwt": 61, "cbor-seq": 63, "senml-json": 110, "senml-cbor": 112,
}


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
    if request.scheme not in SUPPORTED_SCHEMES:
        raise UsageError(f"scheme {request.scheme!r} is not supported; use {', '.join(SUPPORTED_SCHEMES)}")
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


def check_transport(args: argparse.Namespace, scheme: str) -> None:
    """Refuse the arguments that mean nothing over the URI's transport; raise :class:`UsageError`.

    ``--bind`` picks the UDP socket (a TCP or WebSocket connection is made from an address the system
    chooses) and ``--non`` a UDP message type (RFC 8323 messages have none); ``--ca``, ``--cert`` and
    ``--key`` are TLS settings, which with a scheme without TLS would protect nothing.
    """
    tls = [f"--{name}" for name in ("ca", "cert", "key") if getattr(args, name, None) is not None]
    if tls and scheme not in TLS_SCHEMES and scheme != "coaps":  # coaps: DTLS takes them too
        secure = "coaps+tcp:// or coaps+ws://" if scheme == "coap" else scheme.replace("coap+", "coaps+") + "://"
        raise UsageError(f"{tls[0]} is a TLS setting, and {scheme}:// has no TLS (use {secure})")
    if scheme == "coap":
        return
    if getattr(args, "bind", None) is not None:
        raise UsageError(f"--bind is for coap:// (UDP) only; a {scheme}:// connection is made from an "
                         "address the system chooses")
    if getattr(args, "non", False) and scheme != "coaps":  # DTLS carries the UDP message layer
        raise UsageError(f"--non is for coap:// and coaps:// only; {scheme}:// messages have no type "
                         "(RFC 8323)")
