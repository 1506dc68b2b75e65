"""Sender Sequence Numbers that survive a restart (RFC 8613 Appendix B.1.1), in a context directory.

Reusing a sequence number reuses an AES-CCM nonce, which gives away plaintext and the authentication key;
so a number is only handed out after a higher one is on disk. The file is written *before* use with a
reserve ahead of the numbers in use (first ``reserve``, doubling up to ``reserve_limit``), so a crash skips
at most one reserve and never repeats a number. Each write goes to a temporary file that is fsynced and
then renamed over the old one: the file is always either the old or the new state, never a torn one.

The file is aiocoap's ``sequence.json`` in aiocoap's format — ``{"next-to-send": N, "received": ...}``,
where ``received`` is the replay window (``{"index", "bitfield"}``) or ``"unknown"`` — so a context
directory moves between aiocoap and coapio. While a process uses the directory, ``received`` says
"unknown": a crash then makes the next start recover the window with Echo (Appendix B.1.2); a clean
:meth:`SequenceFile.close` records the window and the exact next number. Like aiocoap, the directory is
locked (``flock`` on its ``lock`` file), so two processes never share a context.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any

from .errors import ContextExhausted, ContextUnavailable, CredentialsError
from .option import MAX_PARTIAL_IV
from .replay import DEFAULT_WINDOW, ReplayWindow

__all__ = ["SEQUENCE_FILE", "SequenceFile", "write_atomically"]

SEQUENCE_FILE = "sequence.json"


def write_atomically(path: str, data: bytes) -> None:
    """Replace ``path`` by ``data`` so that a crash leaves the old or the new content, nothing between."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".sequence-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable where directories can be fsynced
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class SequenceFile:
    """The persistent :class:`~coapio.protocol.oscore.context.SequenceNumbers` of one context directory.

    Opening it locks the directory and marks the replay window "unknown" on disk (it is now in use);
    :meth:`replay_window` gives the window to start with. Writes block for an fsync once per reserve.
    """

    def __init__(self, directory: str, *, reserve: int = 16, reserve_limit: int = 4096, lock: bool = True):
        if reserve < 1 or reserve_limit < reserve:
            raise ValueError("reserve must be at least 1 and at most reserve_limit")
        self.directory = directory
        self.path = os.path.join(directory, SEQUENCE_FILE)
        self._reserve = reserve
        self._reserve_limit = reserve_limit
        self._lock_fd: int | None = self._lock() if lock else None
        try:
            self.next, self._received = self._load()
            #: Numbers below this may be handed out without writing first.
            self.reserved_until = self.next
            self._write(self.next)
        except BaseException:
            self._unlock()
            raise
        self.closed = False

    def _lock(self) -> int | None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - no flock on this platform: no lock
            return None
        fd = os.open(os.path.join(self.directory, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ContextUnavailable(
                f"the OSCORE context in {self.directory} is in use by another process"
            ) from None
        return fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def _load(self) -> tuple[int, Any]:
        try:
            with open(self.path, "rb") as f:
                data = json.load(f)
        except FileNotFoundError:
            return 0, None  # keys never used: an empty, initialized window
        except (OSError, ValueError) as e:
            raise CredentialsError(f"{self.path}: {e}") from None
        next_to_send = data.get("next-to-send") if isinstance(data, dict) else None
        if type(next_to_send) is not int or not 0 <= next_to_send <= MAX_PARTIAL_IV + 1:
            raise CredentialsError(f"{self.path}: no valid 'next-to-send'")
        return next_to_send, data.get("received", "unknown")

    def replay_window(self, size: int = DEFAULT_WINDOW) -> ReplayWindow:
        """The window this start may use: empty for unused keys, as recorded after a clean shutdown,
        or uninitialized (Echo recovery, B.1.2) after a crash."""
        if self._received is None:
            return ReplayWindow(size)
        return ReplayWindow.from_json(self._received, size)

    def _write(self, next_to_send: int, window: ReplayWindow | None = None) -> None:
        received = window.to_json() if window is not None else "unknown"
        body = json.dumps({"next-to-send": next_to_send, "received": received}).encode()
        write_atomically(self.path, body)

    def take(self) -> int:
        number = self.next
        if number > MAX_PARTIAL_IV:
            raise ContextExhausted("all 2**40 sender sequence numbers of this context are used")
        if self.closed:
            raise ContextUnavailable("the sequence file is closed")
        if number >= self.reserved_until:
            until = min(number + self._reserve, MAX_PARTIAL_IV + 1)
            self._write(until)  # durable before the number is used
            self.reserved_until = until
            self._reserve = min(self._reserve * 2, self._reserve_limit)
        self.next = number + 1
        return number

    def close(self, window: ReplayWindow | None = None) -> None:
        """Record the exact next number (and the window, if given) and release the directory."""
        if self.closed:
            return
        self.closed = True
        try:
            self._write(self.next, window)
        finally:
            self._unlock()
