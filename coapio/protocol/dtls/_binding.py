"""The one place that uses private parts of pyOpenSSL and cryptography's OpenSSL binding.

pyOpenSSL has public DTLS support (``DTLS_METHOD``, memory BIOs, ``DTLSv1_listen``, cookie callbacks,
``DTLSv1_get_timeout``) but no PSK API. OpenSSL's PSK callbacks are reachable through the cffi binding
that pyOpenSSL itself uses (``OpenSSL._util.lib``, from ``cryptography.hazmat.bindings``), and the
``SSL *`` of a connection is its private ``_ssl`` attribute. Everything that depends on those lives here,
the versions are pinned in the ``dtls`` extra, and :func:`check` (run by the tests and on first use)
fails loudly when an upgrade removes what is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from OpenSSL import SSL

from .errors import CredentialsError

try:
    from OpenSSL._util import ffi as _ffi
    from OpenSSL._util import lib as _lib
except ImportError:  # pragma: no cover - checked by check()
    _ffi = _lib = None

__all__ = ["check", "psk_identity", "set_psk_client", "set_psk_server"]

#: What this module needs from the binding.
_NEEDED = ("Cryptography_HAS_PSK", "SSL_CTX_set_psk_client_callback", "SSL_CTX_set_psk_server_callback",
           "SSL_CTX_use_psk_identity_hint")

# Identities the PSK server callback accepted, by the address of the SSL object (read once, after the
# handshake, by psk_identity): the callback cannot reach the Python Connection otherwise.
_identities: dict[int, bytes] = {}
# The cffi callbacks must live as long as the contexts they were installed in.
_keep: dict[int, tuple[SSL.Context, Any]] = {}


def check() -> None:
    """Raise ImportError naming what is missing when the installed pyOpenSSL/cryptography lacks the
    private pieces this module uses."""
    if _lib is None or _ffi is None:
        raise ImportError("OpenSSL._util.lib/ffi are gone: this pyOpenSSL is not supported by coapio's DTLS")
    missing = [name for name in _NEEDED if not hasattr(_lib, name)]
    if missing or not _lib.Cryptography_HAS_PSK:
        raise ImportError(f"the OpenSSL binding lacks {', '.join(missing) or 'PSK support'}: "
                          "this pyOpenSSL/cryptography is not supported by coapio's DTLS")
    if not hasattr(SSL.Connection(SSL.Context(SSL.DTLS_METHOD), None), "_ssl"):
        raise ImportError("pyOpenSSL's Connection._ssl is gone: not supported by coapio's DTLS")


def _pointer(ssl: Any) -> int:
    return int(_ffi.cast("uintptr_t", ssl))


def set_psk_server(context: SSL.Context, lookup: Callable[[bytes], bytes | None], hint: bytes = b"") -> None:
    """Accept PSK clients on ``context``: ``lookup(identity)`` returns the key, or None (unknown
    identity: the handshake fails with the alert unknown_psk_identity)."""

    def server_callback(ssl: Any, identity: Any, psk: Any, max_psk_len: int) -> int:
        try:
            name = _ffi.string(identity) if identity != _ffi.NULL else b""
            key = lookup(name)
            if key is None or len(key) > max_psk_len:
                return 0
            _ffi.memmove(psk, key, len(key))
            _identities[_pointer(ssl)] = name
            return len(key)
        except Exception:  # an exception must not cross into C; the handshake fails instead
            return 0

    callback = _ffi.callback("unsigned int(*)(SSL *, char *, unsigned char *, unsigned int)", server_callback)
    _lib.SSL_CTX_set_psk_server_callback(context._context, callback)
    if hint:
        _lib.SSL_CTX_use_psk_identity_hint(context._context, hint)
    _keep[id(context)] = (context, callback)


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
    _keep[id(context)] = (context, callback)


def release(context: SSL.Context) -> None:
    """Forget the callbacks kept for ``context`` (it is no longer used)."""
    _keep.pop(id(context), None)


def psk_identity(connection: SSL.Connection) -> bytes | None:
    """The PSK identity the server callback accepted for ``connection`` (taken: asked once)."""
    return _identities.pop(_pointer(connection._ssl), None)


def forget(connection: SSL.Connection) -> None:
    """Drop what was recorded for a connection that is going away (a failed handshake)."""
    _identities.pop(_pointer(connection._ssl), None)
