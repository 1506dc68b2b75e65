"""CoAP over DTLS (``coaps://``, RFC 7252 §9): credentials, record framing and the sans-IO engine.

:mod:`.credentials` and :mod:`.records` are plain Python; :mod:`.engine` needs the ``dtls`` extra
(pyOpenSSL) and is imported only by the DTLS transport.
"""

from .credentials import DtlsCredentials, Psk
from .errors import CredentialsError, DtlsError, HandshakeFailed, RecordError, SessionClosed

__all__ = ["CredentialsError", "DtlsCredentials", "DtlsError", "HandshakeFailed", "Psk", "RecordError",
           "SessionClosed", "available"]


def available() -> bool:
    """Whether the ``dtls`` extra (pyOpenSSL) is installed."""
    try:
        import OpenSSL.SSL  # noqa: F401
    except ImportError:
        return False
    return True
