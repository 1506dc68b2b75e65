"""The errors of CoAP over DTLS: a failed or closed session, malformed records, unusable credentials.

They derive from coapio's own hierarchy (:mod:`coapio.error`): a session that fails is a
:class:`~coapio.error.NetworkError` of its peer (its pending requests fail with it), bad credentials are
a ``ValueError`` found before anything is sent.
"""

from __future__ import annotations

from ... import error
from ...error import CoapError, NetworkError

__all__ = ["CredentialsError", "DtlsError", "HandshakeFailed", "RecordError", "SessionClosed"]


class DtlsError(NetworkError):
    """A DTLS session with a peer cannot carry messages (any more); the message names the cause."""


class HandshakeFailed(DtlsError):
    """The DTLS handshake failed: wrong PSK, unknown identity, a certificate that does not verify, an
    alert from the peer, or no answer within ``handshake_timeout``. ``alert`` is the TLS alert
    description number when one was sent or received (e.g. 115, unknown_psk_identity), else None."""

    def __init__(self, reason: str, *, alert: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.alert = alert

    def __str__(self) -> str:
        return self.reason


class SessionClosed(DtlsError):
    """The peer closed the session (close_notify or a fatal alert after the handshake), or it expired."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "DTLS session closed"


class RecordError(CoapError, ValueError):
    """Bytes that are not a well-formed sequence of DTLS records (RFC 6347 §4.1)."""


class CredentialsError(error.CredentialsError):
    """DTLS credentials that cannot be used: a bad key encoding, a missing file, an unknown entry."""
