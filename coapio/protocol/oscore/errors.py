"""The errors of OSCORE processing (RFC 8613), each mapped to what the receiver must answer.

A server answers the request errors of §8.2 *unprotected* (it has no context, or cannot trust the request),
so they are :class:`~coapio.error.RenderableError` subclasses with the code and diagnostic the RFC names,
and an Outer Max-Age of 0 so that no proxy caches them (§4.1.3.1). Per §8.2 a server answers them only to a
confirmable request; a non-confirmable one is dropped silently. Client-side failures reject the response.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ... import error
from ...error import BadOption, BadRequest, CoapError, ResponseRejected, Unauthorized
from ..options import OptionNumber

if TYPE_CHECKING:
    from ..message import Message

__all__ = [
    "ContextExhausted",
    "ContextUnavailable",
    "CredentialsError",
    "DecryptionFailed",
    "MalformedOscoreOption",
    "MissingOscoreExtra",
    "OscoreError",
    "ReplayDetected",
    "ReplayWindowUninitialized",
    "ResponseProtectionInvalid",
    "StaleNotification",
    "UnknownSecurityContext",
]

_NO_CACHE = ((int(OptionNumber.MAX_AGE), 0),)


class OscoreError(CoapError):
    """Base of every OSCORE error."""


class MissingOscoreExtra(OscoreError, ImportError):
    """The optional dependencies of OSCORE are not installed."""

    def __init__(self, missing: str):
        super().__init__(f"OSCORE needs the {missing!r} package: pip install 'coapio[oscore]'")


class MalformedOscoreOption(OscoreError, BadOption):
    """The OSCORE option or the COSE object cannot be decoded (§8.2 step 2: 4.02 Bad Option)."""

    def __init__(self, reason: str = "Failed to decode COSE"):
        super().__init__("Failed to decode COSE", options=_NO_CACHE)
        #: What exactly was wrong; kept off the wire, for logs.
        self.reason = reason


class UnknownSecurityContext(OscoreError, Unauthorized):
    """No security context matches the request's kid / kid context (§8.2 step 3: 4.01 Unauthorized)."""

    def __init__(self) -> None:
        super().__init__("Security context not found", options=_NO_CACHE)


class ReplayDetected(OscoreError, Unauthorized):
    """The request's Partial IV was seen before or fell out of the replay window (§7.4: 4.01)."""

    def __init__(self) -> None:
        super().__init__("Replay detected", options=_NO_CACHE)


class ReplayWindowUninitialized(ReplayDetected):
    """A request verified, but its freshness is unknown: the replay window was lost (Appendix B.1.2).

    The runtime answers with a *protected* 4.01 carrying a fresh Echo value, via ``protector.protect(...)``
    (which never reuses the request's nonce here), and when the client repeats the request with that Echo,
    calls :meth:`SecurityContext.initialize_replay_window` with the repeated request's protector. Left
    unhandled, it is an unprotected 4.01 "Replay detected", which is safe but makes no progress.
    """

    def __init__(self, request: Message, protector: Any):
        super().__init__()
        #: The decrypted request (not yet known to be fresh: do not act on it).
        self.request = request
        #: A :class:`~coapio.protocol.oscore.ResponseProtector` for answering it.
        self.protector = protector


class DecryptionFailed(OscoreError, BadRequest):
    """The COSE object did not verify: wrong key, tampered data (§8.2 step 6: 4.00 Bad Request)."""

    def __init__(self) -> None:
        super().__init__("Decryption failed", options=_NO_CACHE)


class ResponseProtectionInvalid(OscoreError, ResponseRejected):
    """A protected response that does not verify (§8.4): the client drops it, never shows it."""


class StaleNotification(ResponseProtectionInvalid):
    """A notification whose Partial IV is not above the observation's Notification Number (§7.4.1)."""


class ContextExhausted(OscoreError):
    """The sender sequence number reached 2**40 - 1 (§7.2.1): the context needs renewing."""


class ContextUnavailable(OscoreError):
    """A security context cannot be used: its directory is locked by another process, or unreadable."""


class CredentialsError(OscoreError, error.CredentialsError):
    """A credentials file or context directory that cannot be loaded."""
