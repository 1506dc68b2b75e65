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
    from ..protocol.message import Message

__all__ = [
    "OneLineParser", "colour", "error_line", "format_address", "is_keyboard_interrupt", "option_lines",
    "printable", "setup_logging", "unwrap", "wants_colour",
]

EXIT_OK = 0
EXIT_ERROR_RESPONSE = 1
EXIT_USAGE = 2


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
