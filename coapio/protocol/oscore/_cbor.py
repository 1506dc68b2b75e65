"""The few CBOR items OSCORE writes (RFC 8949 §4.2.1 deterministic encoding), without a CBOR library.

OSCORE only *encodes* CBOR — the HKDF ``info`` array, the external AAD and the COSE ``Enc_structure`` — and
only integers, byte and text strings, arrays and null. Those fifty bytes of rules are cheaper to own than a
dependency whose encoder changed behaviour between major versions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

__all__ = ["CborItem", "dumps", "head"]

CborItem = Union[int, bytes, str, None, Sequence["CborItem"]]  # noqa: UP007 - a recursive alias


def head(major: int, n: int) -> bytes:
    """The initial bytes of an item of ``major`` type with argument ``n``."""
    if n < 24:
        return bytes((major << 5 | n,))
    if n < 0x100:
        return bytes((major << 5 | 24, n))
    if n < 0x10000:
        return bytes((major << 5 | 25,)) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes((major << 5 | 26,)) + n.to_bytes(4, "big")
    if n < 0x10000000000000000:
        return bytes((major << 5 | 27,)) + n.to_bytes(8, "big")
    raise ValueError("integer too large for CBOR's 64-bit argument")


def dumps(item: CborItem) -> bytes:
    """Encode ``item``; integers use the shortest form, as deterministic encoding requires."""
    if item is None:
        return b"\xf6"
    if isinstance(item, bool):
        raise TypeError("booleans are not used by OSCORE")
    if isinstance(item, int):
        return head(0, item) if item >= 0 else head(1, -1 - item)
    if isinstance(item, bytes):
        return head(2, len(item)) + item
    if isinstance(item, str):
        raw = item.encode("utf-8")
        return head(3, len(raw)) + raw
    return head(4, len(item)) + b"".join(dumps(x) for x in item)
