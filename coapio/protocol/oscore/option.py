"""The value of the OSCORE option (RFC 8613 §6.1): flags, Partial IV, kid context and kid.

Layout: one flag byte ``0 0 0 h k n n n`` (n: Partial IV length, k: kid present, h: kid context present),
then the Partial IV, then (if h) one length byte and the kid context, then (if k) the kid, which runs to
the end. An empty value means all flags zero. Decoding is strict: reserved bits, reserved Partial IV
lengths, a leading zero in the Partial IV or a truncated value raise
:class:`~coapio.protocol.oscore.errors.MalformedOscoreOption` (a 4.02 for a server).
"""

from __future__ import annotations

import attrs

from .errors import MalformedOscoreOption

__all__ = ["MAX_PARTIAL_IV", "OscoreOption", "partial_iv_bytes"]

#: The largest Sender Sequence Number: a Partial IV has at most 5 bytes (§6.1, §7.2.1).
MAX_PARTIAL_IV = 2**40 - 1


def partial_iv_bytes(number: int) -> bytes:
    """A sequence number as Partial IV: the shortest big-endian form, 0 as one zero byte (§6.1)."""
    return number.to_bytes(max(1, (number.bit_length() + 7) >> 3), "big")


@attrs.frozen(slots=True)
class OscoreOption:
    """A decoded OSCORE option value. ``None`` means absent; ``b""`` is a present, empty kid / context."""

    partial_iv: bytes | None = None
    kid: bytes | None = None
    kid_context: bytes | None = None

    @property
    def sequence_number(self) -> int | None:
        return None if self.partial_iv is None else int.from_bytes(self.partial_iv, "big")

    def encode(self) -> bytes:
        piv = self.partial_iv or b""
        if len(piv) > 5:
            raise ValueError("a Partial IV has at most 5 bytes")
        flags = len(piv)
        out = bytearray()
        out += piv
        if self.kid_context is not None:
            if len(self.kid_context) > 255:
                raise ValueError("a kid context has at most 255 bytes")
            flags |= 0x10
            out.append(len(self.kid_context))
            out += self.kid_context
        if self.kid is not None:
            flags |= 0x08
            out += self.kid
        if not flags:
            return b""
        return bytes((flags,)) + bytes(out)

    @classmethod
    def decode(cls, value: bytes) -> OscoreOption:
        if not value:
            return cls()
        flags = value[0]
        if flags & 0xE0:
            raise MalformedOscoreOption(f"reserved flag bits set in {flags:#04x}")
        if not flags:
            raise MalformedOscoreOption("a non-empty OSCORE option with all flags zero")
        n = flags & 0x07
        if n > 5:
            raise MalformedOscoreOption(f"reserved Partial IV length {n}")
        pos = 1 + n
        if pos > len(value):
            raise MalformedOscoreOption("Partial IV runs past the end of the option")
        piv = value[1:pos] if n else None
        if piv is not None and n > 1 and piv[0] == 0:
            raise MalformedOscoreOption("Partial IV with a leading zero byte")
        kid_context = None
        if flags & 0x10:
            if pos >= len(value):
                raise MalformedOscoreOption("kid context length missing")
            s = value[pos]
            pos += 1
            if pos + s > len(value):
                raise MalformedOscoreOption("kid context runs past the end of the option")
            kid_context = value[pos : pos + s]
            pos += s
        kid = None
        if flags & 0x08:
            kid = value[pos:]
        elif pos != len(value):
            raise MalformedOscoreOption("trailing bytes after the OSCORE option's fields")
        return cls(piv, kid, kid_context)
