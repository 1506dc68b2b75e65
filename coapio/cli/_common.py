"""Helpers the command-line tools share: the one-line argument parser, address formatting, error
unwrapping, terminal-safe text, colour and logging set-up.

Only the standard library's cheap modules are imported here, so that ``--help`` and ``--version`` start
quickly; everything of coapio's runtime is imported by the tools after the arguments are parsed.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

if TYPE_CHECKING:
    import ssl

    from ..protocol.message import Message

__all__ = [
    "OneLineParser", "UsageError", "colour", "error_line", "format_address", "format_remote",
    "is_keyboard_interrupt", "option_lines", "printable", "setup_logging", "tls_context", "unwrap",
    "wants_colour",
]

EXIT_OK = 0
EXIT_ERROR_RESPONSE = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """An argument that makes no valid request or server; reported as one line with exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (``prog: error: ...``) and exit status 2.

    argparse's default prints the whole usage block first, which buries the message; ``--help`` still
    shows the usage in full.
    """

    def error(self, message: str) -> NoReturn:
        error_line(self.prog, f"{message} (see --help)")
        raise SystemExit(EXIT_USAGE)


def format_address(address: Any, *, unmap: bool = True) -> str:
    """``host:port`` for a Peer or socket address; IPv6 in brackets, IPv4-mapped IPv6 shown as IPv4
    (``unmap``)."""
    address = getattr(address, "address", address)  # a Peer (duck-typed: no runtime import here)
    if not isinstance(address, tuple) or len(address) < 2:
        return str(address)
    host, port = str(address[0]), address[1]
    if unmap and host.lower().startswith("::ffff:") and "." in host:
        host = host[7:]
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def format_remote(remote: Any) -> str:
    """A peer as the user wrote it: ``host:port`` for UDP (``coap``), ``scheme://host:port`` for the
    TCP, TLS and WebSocket schemes, where the address alone would not say which transport it is."""
    scheme = getattr(remote, "scheme", "coap")
    text = format_address(remote)
    return text if scheme == "coap" else f"{scheme}://{text}"


def unwrap(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-member exception groups, or ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def is_keyboard_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` is a KeyboardInterrupt, or an exception group holding one."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(KeyboardInterrupt) is not None
    return False


def error_line(prog: str, message: str, stream: TextIO | None = None) -> None:
    """Print ``prog: error: message`` as one line (newlines in ``message`` are flattened)."""
    text = " ".join(message.split())
    print(f"{prog}: error: {text}", file=stream or sys.stderr, flush=True)


# C0 and C1 control characters (and DEL) other than tab and newline: a peer's text must not move the
# cursor, change colours, set the window title or overwrite lines on the user's terminal.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with control characters shown as ``\\xNN`` escapes, for a terminal (tab and newline stay)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", text)


def wants_colour(stream: TextIO, setting: str = "auto") -> bool:
    """Colour for ``stream``: ``always``, ``never``, or (``auto``) a terminal, not with NO_COLOR/TERM=dumb."""
    if setting != "auto":
        return setting == "always"
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


_COLOURS = {"green": "32", "yellow": "33", "red": "31", "bold": "1", "dim": "2"}


def colour(text: str, name: str, enabled: bool) -> str:
    """``text`` in an ANSI colour when ``enabled``; unchanged otherwise."""
    return f"\x1b[{_COLOURS[name]}m{text}\x1b[0m" if enabled else text


def option_lines(message: Message) -> list[str]:
    """One ``Name=value`` line per option of ``message``, values in the option's own format."""
    from ..protocol.contentformat import ContentFormat
    from ..protocol.options import SPECS, BlockValue, OptionFormat, OptionNumber, decode_uint

    lines = []
    for number, raw in message.opt:
        spec = SPECS.get(number)
        if spec is None:
            lines.append(f"Option-{number}={raw.hex() or '(empty)'}")
        elif number in (OptionNumber.BLOCK1, OptionNumber.BLOCK2) and len(raw) <= 3:
            block = BlockValue.decode(raw)
            lines.append(f"{spec.name}={block.num}/{int(block.more)}/{block.size}")
        elif number in (OptionNumber.CONTENT_FORMAT, OptionNumber.ACCEPT):
            value = decode_uint(raw)
            media = ContentFormat(value).media_type if value <= 0xFFFF else "?"
            lines.append(f"{spec.name}={value} ({media})")
        elif spec.format is OptionFormat.UINT:
            lines.append(f"{spec.name}={decode_uint(raw)}")
        elif spec.format is OptionFormat.STRING:
            lines.append(f"{spec.name}={printable(raw.decode('utf-8', 'replace'))}")
        elif spec.format is OptionFormat.EMPTY:
            lines.append(spec.name)
        else:
            lines.append(f"{spec.name}={raw.hex() or '(empty)'}")
    return lines


def _readable(path: str, option: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise UsageError(f"cannot read {option} {path!r}: {e.strerror or e}") from None


def _why(e: ssl.SSLError) -> str:
    """OpenSSL's reason, as `` (REASON)``; nothing for the uninformative "PEM lib"."""
    return f" ({e.reason.replace('_', ' ').lower()})" if e.reason else ""


class _EncryptedKey(Exception):
    pass


def _no_passphrase() -> bytes:
    raise _EncryptedKey  # asked for a passphrase: the key is encrypted


def tls_context(
    ca: str | None, cert: str | None, key: str | None, *, server: bool, websocket: bool = False
) -> ssl.SSLContext:
    """The TLS context of ``--ca``, ``--cert`` and ``--key`` (PEM files), checked before anything is sent
    or bound; every problem is a :class:`UsageError`.

    ``--key`` may be left out when the ``--cert`` file holds the private key too (one PEM file with both,
    as many tools write them); ``--key`` without ``--cert`` is an error. A key protected by a passphrase
    is refused (a script must not stop at a prompt): decrypt it first. A client (``server=False``)
    verifies the server against ``ca``, or the system's trust store without it, and presents ``cert``
    when asked; a server presents ``cert`` (required) and, with ``ca``, requires client certificates
    signed by it. The context is :mod:`coapio.transports.tls`'s, ALPN included (``websocket``).
    """
    import ssl

    from ..transports.tls import client_context, server_context

    if key is not None and cert is None:
        raise UsageError("--key needs --cert (the certificate the key belongs to)")
    for path, option in ((ca, "--ca"), (cert, "--cert"), (key, "--key")):
        if path is not None:
            _readable(path, option)
    # Each file is tried on its own first, for an error that names it (and for no passphrase prompt).
    if ca is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(ca)
        except ssl.SSLError as e:
            raise UsageError(f"--ca {ca!r} holds no PEM certificate{_why(e)}") from None
    if cert is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=_no_passphrase)
        except _EncryptedKey:
            raise UsageError(f"the key in {key or cert!r} is encrypted; give it decrypted "
                             "(e.g. openssl pkey -in KEY -out PLAIN)") from None
        except ssl.SSLError as e:
            if key is None:
                raise UsageError(f"--cert {cert!r} must hold a PEM certificate and, without --key, its "
                                 f"private key{_why(e)}") from None
            raise UsageError(f"--cert {cert!r} and --key {key!r} are not a PEM certificate and its "
                             f"private key{_why(e)}") from None
    if server:
        if cert is None:
            raise UsageError("TLS needs --cert FILE (and --key FILE unless the key is in it)")
        return server_context(cert=cert, key=key, ca=ca, websocket=websocket)
    return client_context(ca=ca, cert=cert, key=key, websocket=websocket)


def setup_logging(verbosity: int) -> None:
    """WARNING by default, INFO with one ``-v``, DEBUG with two; a concise format on stderr."""
    import logging

    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def load_credentials(path: str) -> Any:
    """``--credentials FILE``: the :class:`~coapio.credentials.Credentials` it describes, or a
    :class:`UsageError` saying in one line why not (an unreadable file, a bad entry, a context directory
    in use by another process, the ``oscore`` extra missing)."""
    from ..error import CredentialsError
    from ..protocol.oscore import ContextUnavailable, MissingOscoreExtra

    try:
        from ..credentials import Credentials

        return Credentials.load(path)
    except (CredentialsError, ContextUnavailable, MissingOscoreExtra) as e:
        raise UsageError(f"--credentials: {e}") from None
