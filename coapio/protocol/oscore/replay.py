"""The server's replay window over a Recipient Context's Partial IVs (RFC 8613 §7.4, Appendix B.1.2).

A sliding window anchored at the highest sequence number accepted so far: numbers above it are fresh,
numbers within ``size`` below it are fresh unless seen, anything older is rejected. After a restart the
window is *uninitialized* (nothing can be judged fresh) until an Echo round trip proves one request fresh;
that request's number then becomes the top and everything at or below it counts as seen (B.1.2).
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_WINDOW", "ReplayWindow"]

#: The window size when a context names none (aiocoap's default too).
DEFAULT_WINDOW = 32


class ReplayWindow:
    """Which request sequence numbers were seen. ``check`` before decrypting, ``accept`` after."""

    __slots__ = ("_full", "_seen", "initialized", "size", "top")

    def __init__(self, size: int = DEFAULT_WINDOW, *, initialized: bool = True):
        if size < 1:
            raise ValueError("a replay window holds at least one number")
        self.size = size
        #: The highest accepted sequence number; -1 before the first.
        self.top = -1
        #: Bit i set: ``top - i`` was seen.
        self._seen = 0
        self._full = (1 << size) - 1
        #: False after a restart until :meth:`initialize_from_fresh` (Appendix B.1.2).
        self.initialized = initialized

    def is_fresh(self, number: int) -> bool:
        """True if ``number`` was not seen and is not too old; always False while uninitialized."""
        if not self.initialized:
            return False
        if number > self.top:
            return True
        back = self.top - number
        return back < self.size and not (self._seen >> back) & 1

    def accept(self, number: int) -> None:
        """Mark ``number`` seen; call only after the request it came with verified."""
        if number > self.top:
            shift = number - self.top
            self._seen = ((self._seen << shift) | 1) & self._full if shift < self.size else 1
            self.top = number
        else:
            self._seen |= 1 << (self.top - number)

    def initialize_from_fresh(self, number: int) -> None:
        """Start over at a number known to be fresh: it and every lower number count as seen (B.1.2)."""
        self.top = number
        self._seen = self._full
        self.initialized = True

    # --- aiocoap's sequence.json representation: {"index": lowest undecided number, "bitfield": int} ----

    def to_json(self) -> dict[str, int] | str:
        """The window as aiocoap persists it (bit i of ``bitfield``: ``index + i`` seen), or "unknown"."""
        if not self.initialized:
            return "unknown"
        index = max(0, self.top - self.size + 1)
        bitfield = 0
        for back in range(self.size):
            number = self.top - back
            if number < index:
                break
            if (self._seen >> back) & 1:
                bitfield |= 1 << (number - index)
        return {"index": index, "bitfield": bitfield}

    @classmethod
    def from_json(cls, data: Any, size: int = DEFAULT_WINDOW) -> ReplayWindow:
        """Read :meth:`to_json`'s form; "unknown" (or anything unreadable) gives an uninitialized window."""
        window = cls(size, initialized=False)
        if not isinstance(data, dict):
            return window
        index, bitfield = data.get("index"), data.get("bitfield")
        if type(index) is not int or type(bitfield) is not int or index < 0 or bitfield < 0:
            return window
        if bitfield.bit_length() > max(size, 64) or index > 2**40:
            return window  # not a window aiocoap or coapio wrote: recover with Echo instead
        window.initialized = True
        if bitfield:
            window.top = index + bitfield.bit_length() - 1
            for number in range(index, window.top + 1):
                if (bitfield >> (number - index)) & 1:
                    window._seen |= 1 << (window.top - number) if window.top - number < size else 0
            # Numbers below index are old in aiocoap's reading; mark those still inside our window seen.
            for number in range(max(0, window.top - size + 1), index):
                window._seen |= 1 << (window.top - number)
        elif index:
            window.top = index - 1
            window._seen = window._full
        return window
