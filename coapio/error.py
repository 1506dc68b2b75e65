"""The one hierarchy of coapio's errors; each knows the response code or wire action it maps to.

Three families:

* :class:`MessageFormatError` — bytes that are not a valid CoAP message. It carries :class:`WireAction`,
  what RFC 7252 §4.2/§4.3 tells the receiver to do (reset a CON, silently drop anything else).
* :class:`RenderableError` — a failure a server answers with a response code (4.04, 4.02, 5.03, ...).
  Handlers raise these; the server turns them into responses with a diagnostic payload.
* Client-side failures of an exchange: :class:`RequestTimedOut` (retransmissions exhausted),
  :class:`ResetReceived`, :class:`NetworkError` (ICMP and socket errors), :class:`ResponseRejected`,
  and :class:`NoTransport` (a scheme the Context has no transport for; nothing was sent).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from .protocol.codes import Code

__all__ = [
    "BadOption",
    "BadRequest",
    "CoapError",
    "Conflict",
    "CredentialsError",
    "Forbidden",
    "InternalServerError",
    "LinkFormatError",
    "MessageFormatError",
    "MessageIdsExhausted",
    "MethodNotAllowed",
    "NetworkError",
    "NoTransport",
    "NotAcceptable",
    "NotFound",
    "NotImplemented",
    "PreconditionFailed",
    "RenderableError",
    "RequestEntityIncomplete",
    "RequestEntityTooLarge",
    "RequestTimedOut",
    "ResetReceived",
    "ResponseRejected",
    "ServiceUnavailable",
    "Unauthorized",
    "UnsupportedContentFormat",
    "UriError",
    "WireAction",
]


class CoapError(Exception):
    """Base of every exception coapio raises on purpose."""


class WireAction(enum.Enum):
    """What a receiver puts on the wire for a message it cannot process."""

    #: Say nothing (ACK, RST, NON, or bytes too short to carry a message ID).
    DROP = "drop"
    #: Answer with a Reset echoing the message ID (a CON that cannot be processed, RFC 7252 §4.2).
    RESET = "reset"


class MessageFormatError(CoapError, ValueError):
    """Bytes that are not a well-formed CoAP message.

    ``action`` is what the receiver must do; ``mid`` is the message ID to echo in a Reset when the header
    was readable (``None`` otherwise).
    """

    def __init__(self, reason: str, *, action: WireAction = WireAction.DROP, mid: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.action = action
        self.mid = mid


class UriError(CoapError, ValueError):
    """A URI that cannot be turned into CoAP options (or options that make no URI)."""


class LinkFormatError(CoapError, ValueError):
    """Text that is not valid RFC 6690 link-format."""


class MessageIdsExhausted(CoapError):
    """Every message ID towards a peer was used within EXCHANGE_LIFETIME (RFC 7252 §4.4).

    ``retry_at`` is the time (on the caller's clock) when the oldest ID may be used again.
    """

    def __init__(self, remote: object, retry_at: float):
        super().__init__(f"all 65536 message IDs to {remote!r} used within EXCHANGE_LIFETIME")
        self.remote = remote
        self.retry_at = retry_at


class RequestTimedOut(CoapError, TimeoutError):
    """A confirmable message was retransmitted MAX_RETRANSMIT times without an acknowledgement."""


class ResetReceived(CoapError):
    """The peer answered with a Reset: it could not (or would not) process the message."""


class NetworkError(CoapError, OSError):
    """The network reported the peer unreachable (an ICMP error, a socket error)."""


class CredentialsError(CoapError, ValueError):
    """Credentials that cannot be used: an unreadable credentials file, a bad entry, a missing key file.

    Each security layer raises its own subclass (OSCORE's, DTLS's); catch this one for either.
    """


class NoTransport(CoapError, ValueError):
    """No transport of the Context serves the request's URI scheme (or it lacks the credentials).

    Raised before anything is sent: a request never falls back to another (weaker) transport.
    """


class ResponseRejected(CoapError):
    """A response that a client must not accept, e.g. one with an unrecognized critical option."""


class RenderableError(CoapError):
    """An error that a server answers with a response; subclasses fix ``code``.

    The message becomes the diagnostic payload (RFC 7252 §5.5.2), so keep it short and free of secrets.
    """

    code: Code = Code.INTERNAL_SERVER_ERROR

    def __init__(
        self,
        message: str = "",
        *,
        code: Code | None = None,
        options: Sequence[tuple[int, int | bytes | str]] = (),
    ):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        #: Options the error response must carry, e.g. Size1 with 4.13 or Max-Age with 5.03.
        self.options: list[tuple[int, int | bytes | str]] = list(options)


class BadRequest(RenderableError):
    code = Code.BAD_REQUEST


class Unauthorized(RenderableError):
    code = Code.UNAUTHORIZED


class BadOption(RenderableError):
    code = Code.BAD_OPTION


class Forbidden(RenderableError):
    code = Code.FORBIDDEN


class NotFound(RenderableError):
    code = Code.NOT_FOUND


class MethodNotAllowed(RenderableError):
    code = Code.METHOD_NOT_ALLOWED


class NotAcceptable(RenderableError):
    code = Code.NOT_ACCEPTABLE


class RequestEntityIncomplete(RenderableError):
    code = Code.REQUEST_ENTITY_INCOMPLETE


class Conflict(RenderableError):
    code = Code.CONFLICT


class PreconditionFailed(RenderableError):
    code = Code.PRECONDITION_FAILED


class RequestEntityTooLarge(RenderableError):
    code = Code.REQUEST_ENTITY_TOO_LARGE


class UnsupportedContentFormat(RenderableError):
    code = Code.UNSUPPORTED_CONTENT_FORMAT


class InternalServerError(RenderableError):
    code = Code.INTERNAL_SERVER_ERROR


class NotImplemented(RenderableError):
    code = Code.NOT_IMPLEMENTED


class ServiceUnavailable(RenderableError):
    code = Code.SERVICE_UNAVAILABLE
