"""CoAP message types and codes (RFC 7252 §3 and §12.1, extended by RFC 7959, 8132, 8323, 8768, 9175).

A code is one byte, ``class << 5 | detail``, written ``c.dd``. Codes that no registered name covers still
decode: they become unnamed members (``Code(0x46)`` is ``2.06``) so that a peer using a newer code is never
a decoding error, only an unknown value.
"""

from __future__ import annotations

import enum

from ._enums import unnamed_member

__all__ = ["Code", "Type"]


class Type(enum.IntEnum):
    """The four CoAP message types (RFC 7252 §4)."""

    CON = 0
    NON = 1
    ACK = 2
    RST = 3


def _c(cls: int, detail: int) -> int:
    return cls << 5 | detail


class Code(enum.IntEnum):
    """Every registered request method, response code and RFC 8323 signal code."""

    EMPTY = _c(0, 0)

    # Methods (RFC 7252 §12.1.1, RFC 8132)
    GET = _c(0, 1)
    POST = _c(0, 2)
    PUT = _c(0, 3)
    DELETE = _c(0, 4)
    FETCH = _c(0, 5)
    PATCH = _c(0, 6)
    IPATCH = _c(0, 7)

    # Success (RFC 7252 §12.1.2, RFC 7959 §2.9.1)
    CREATED = _c(2, 1)
    DELETED = _c(2, 2)
    VALID = _c(2, 3)
    CHANGED = _c(2, 4)
    CONTENT = _c(2, 5)
    CONTINUE = _c(2, 31)

    # Client errors (RFC 7252, RFC 7959, RFC 8132, RFC 8516)
    BAD_REQUEST = _c(4, 0)
    UNAUTHORIZED = _c(4, 1)
    BAD_OPTION = _c(4, 2)
    FORBIDDEN = _c(4, 3)
    NOT_FOUND = _c(4, 4)
    METHOD_NOT_ALLOWED = _c(4, 5)
    NOT_ACCEPTABLE = _c(4, 6)
    REQUEST_ENTITY_INCOMPLETE = _c(4, 8)
    CONFLICT = _c(4, 9)
    PRECONDITION_FAILED = _c(4, 12)
    REQUEST_ENTITY_TOO_LARGE = _c(4, 13)
    UNSUPPORTED_CONTENT_FORMAT = _c(4, 15)
    UNPROCESSABLE_ENTITY = _c(4, 22)
    TOO_MANY_REQUESTS = _c(4, 29)

    # Server errors (RFC 7252, RFC 8768)
    INTERNAL_SERVER_ERROR = _c(5, 0)
    NOT_IMPLEMENTED = _c(5, 1)
    BAD_GATEWAY = _c(5, 2)
    SERVICE_UNAVAILABLE = _c(5, 3)
    GATEWAY_TIMEOUT = _c(5, 4)
    PROXYING_NOT_SUPPORTED = _c(5, 5)
    HOP_LIMIT_REACHED = _c(5, 8)

    # Signals (RFC 8323 §5)
    CSM = _c(7, 1)
    PING = _c(7, 2)
    PONG = _c(7, 3)
    RELEASE = _c(7, 4)
    ABORT = _c(7, 5)

    @classmethod
    def _missing_(cls, value: object) -> Code | None:
        """Give an unregistered but well-formed code an unnamed member, so decoding never fails on it."""
        return unnamed_member(cls, value, 0xFF, lambda v: f"CODE_{v >> 5}_{v & 0x1F:02d}")

    @property
    def code_class(self) -> int:
        """The class digit: 0 request/empty, 2 success, 4 client error, 5 server error, 7 signal."""
        return self >> 5

    @property
    def detail(self) -> int:
        return self & 0x1F

    @property
    def dotted(self) -> str:
        """The code as RFC 7252 writes it, e.g. ``"2.05"``."""
        return f"{self >> 5}.{self & 0x1F:02d}"

    def is_request(self) -> bool:
        return 1 <= self <= 31

    def is_response(self) -> bool:
        return 64 <= self < 192

    def is_successful(self) -> bool:
        return 64 <= self < 96

    def is_signal(self) -> bool:
        return 224 <= self <= 255

    def __str__(self) -> str:
        name = _DISPLAY_NAMES.get(self.name) or self.name.replace("_", " ").title()
        return f"{self.dotted} {name}"


_DISPLAY_NAMES = {"IPATCH": "iPATCH", "CSM": "CSM", "EMPTY": "Empty"}
