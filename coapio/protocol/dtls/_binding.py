"""The one place that uses private parts of pyOpenSSL and cryptography's OpenSSL binding.

pyOpenSSL has public DTLS support (``DTLS_METHOD``, memory BIOs, ``DTLSv1_listen``, cookie callbacks,
``DTLSv1_get_timeout``) but no PSK API. OpenSSL's PSK callbacks are reachable through the cffi binding
that pyOpenSSL itself uses (``OpenSSL._util.lib``, from ``cryptography.hazmat.bindings``); a context's
``SSL_CTX *`` is its private ``_context``, and the callback finds the Python connection of its ``SSL *``
in pyOpenSSL's private ``Connection._reverse_mapping``. Everything that depends on those lives here, the
versions are pinned in the ``dtls`` extra, and :func:`check` (run by the tests and by every
:class:`~coapio.protocol.dtls.engine.Endpoint`) fails loudly when an upgrade removes what is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from OpenSSL import SSL

from .errors import CredentialsError

try:
    from OpenSSL._util import ffi as _ffi
    from OpenSSL._util import lib as _lib
except ImportError:  # pragma: no cover - reported by check()
    _ffi = _lib = None

__all__ = ["Records", "check", "record_buffer", "set_psk_client", "set_psk_server"]

#: What this module needs from the binding.
_NEEDED = ("Cryptography_HAS_PSK", "SSL_CTX_set_psk_client_callback", "SSL_CTX_set_psk_server_callback",
           "SSL_read", "SSL_write", "BIO_read", "BIO_write")
#: The largest plaintext of one DTLS record (RFC 6347 §4.1: 2^14 bytes), and of the ciphertext read back.
_RECORD = 16384 + 2048
#: The attribute of a pyOpenSSL Context that keeps its cffi callback alive as long as the context.
_KEEP = "_coapio_psk_callback"


def check() -> None:
    """Raise ImportError naming what is missing when the installed pyOpenSSL/cryptography lacks the
    private pieces this module uses."""
    if _lib is None or _ffi is None:
        raise ImportError("OpenSSL._util.lib/ffi are gone: this pyOpenSSL is not supported by coapio's DTLS")
    missing = [name for name in _NEEDED if not hasattr(_lib, name)]
    if missing or not _lib.Cryptography_HAS_PSK:
        raise ImportError(f"the OpenSSL binding lacks {', '.join(missing) or 'PSK support'}: "
                          "this pyOpenSSL/cryptography is not supported by coapio's DTLS")
    context = SSL.Context(SSL.DTLS_METHOD)
    connection = SSL.Connection(context, None)
    if not hasattr(context, "_context") or not hasattr(connection, "_ssl") \
            or not hasattr(connection, "_into_ssl") or not hasattr(connection, "_from_ssl") \
            or SSL.Connection._reverse_mapping.get(connection._ssl) is not connection:
        raise ImportError("pyOpenSSL's Context._context or Connection._ssl/_into_ssl/_from_ssl/"
                          "_reverse_mapping changed: this pyOpenSSL is not supported by coapio's DTLS")


def set_psk_server(context: SSL.Context, lookup: Callable[[bytes], bytes | None],
                   accepted: Callable[[SSL.Connection, bytes], None]) -> None:
    """Accept PSK clients on ``context``: ``lookup(identity)`` returns the key, or None (unknown
    identity: the handshake fails with the alert unknown_psk_identity); ``accepted(connection,
    identity)`` is told which identity a connection's handshake uses."""

    def server_callback(ssl: Any, identity: Any, psk: Any, max_psk_len: int) -> int:
        try:
            name = _ffi.string(identity) if identity != _ffi.NULL else b""
            key = lookup(name)
            connection = SSL.Connection._reverse_mapping.get(ssl)
            if key is None or len(key) > max_psk_len or connection is None:
                return 0
            _ffi.memmove(psk, key, len(key))
            accepted(connection, name)
            return len(key)
        except Exception:  # an exception must not cross into C; the handshake fails instead
            return 0

    callback = _ffi.callback("unsigned int(*)(SSL *, char *, unsigned char *, unsigned int)", server_callback)
    _lib.SSL_CTX_set_psk_server_callback(context._context, callback)
    setattr(context, _KEEP, callback)


def set_psk_client(context: SSL.Context, identity: bytes, key: bytes) -> None:
    """Offer PSK on ``context`` with ``identity`` and ``key`` (whatever hint the server sends)."""
    if not identity or not key:
        raise CredentialsError("a PSK needs a non-empty identity and key")

    def client_callback(ssl: Any, hint: Any, out_identity: Any, max_identity_len: int, psk: Any,
                        max_psk_len: int) -> int:
        if len(identity) + 1 > max_identity_len or len(key) > max_psk_len:
            return 0
        _ffi.memmove(out_identity, identity + b"\0", len(identity) + 1)
        _ffi.memmove(psk, key, len(key))
        return len(key)

    callback = _ffi.callback(
        "unsigned int(*)(SSL *, char *, char *, unsigned int, unsigned char *, unsigned int)",
        client_callback,
    )
    _lib.SSL_CTX_set_psk_client_callback(context._context, callback)
    setattr(context, _KEEP, callback)


def record_buffer() -> Any:
    """A buffer for :class:`Records` that one endpoint's sessions share (they are used one at a time)."""
    return _ffi.new("char[]", _RECORD)


class Records:
    """Application data in and out of an established memory-BIO connection in one OpenSSL call each way.

    pyOpenSSL's ``bio_write``/``recv``/``send``/``bio_read`` allocate a buffer and check the error queue
    on every call, which costs more than the cryptography of a CoAP-sized record; this is the hot path of
    every DTLS message. Anything but plain success returns None, and the caller asks pyOpenSSL, which
    raises the error OpenSSL reports (a closed session, an alert, a record that did not decrypt).
    """

    __slots__ = ("_buffer", "_in", "_out", "_ssl")

    def __init__(self, connection: SSL.Connection, buffer: Any):
        self._ssl = connection._ssl
        self._in = connection._into_ssl
        self._out = connection._from_ssl
        self._buffer = buffer  # shared by an endpoint's sessions: each call copies its result out

    def open(self, datagram: bytes) -> bytes | None:
        """Write ``datagram`` into the connection and read one record's plaintext; None: no plaintext
        (ask pyOpenSSL's ``recv`` why: it raises WantReadError when there is simply nothing)."""
        if _lib.BIO_write(self._in, datagram, len(datagram)) != len(datagram):
            return None
        n = _lib.SSL_read(self._ssl, self._buffer, _RECORD)
        if n <= 0:
            return None
        return _ffi.buffer(self._buffer, n)[:]  # type: ignore[no-any-return]

    def seal(self, plaintext: bytes) -> bytes | None:
        """The datagram carrying ``plaintext`` as one record; None when OpenSSL refused to write it."""
        if _lib.SSL_write(self._ssl, plaintext, len(plaintext)) != len(plaintext):
            return None
        n = _lib.BIO_read(self._out, self._buffer, _RECORD)
        if n <= 0:
            return None
        return _ffi.buffer(self._buffer, n)[:]  # type: ignore[no-any-return]
