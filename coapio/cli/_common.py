"""Helpers the command-line tools share: address formatting, error unwrapping, logging set-up."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

from ..protocol.peer import Peer

__all__ = ["error_line", "format_address", "is_keyboard_interrupt", "setup_logging", "unwrap"]


def format_address(address: Any, *, unmap: bool = True) -> str:
    """``host:port`` for a Peer or socket address; IPv6 in brackets, IPv4-mapped IPv6 shown as IPv4
    (``unmap``)."""
    if isinstance(address, Peer):
        address = address.address
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


def setup_logging(verbosity: int) -> None:
    """WARNING by default, INFO with one ``-v``, DEBUG with two; a concise format on stderr."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
