"""The COSE AEAD algorithms and the HKDF of OSCORE (RFC 8613 §3.2.1, RFC 9053), over ``cryptography``.

``cryptography`` is imported on first use, so ``import coapio`` never needs it; without it, using OSCORE
raises :class:`~coapio.protocol.oscore.errors.MissingOscoreExtra` naming the extra to install.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from .errors import MissingOscoreExtra

__all__ = ["ALGORITHMS", "HASHES", "Aead", "AeadAlgorithm", "algorithm", "hkdf"]


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives.ciphers import aead
    except ImportError:  # pragma: no cover - exercised by a subprocess test
        raise MissingOscoreExtra("cryptography") from None
    return aead


@attrs.frozen(slots=True)
class AeadAlgorithm:
    """One COSE AEAD algorithm: its name and number in the COSE registry, and its sizes in bytes."""

    name: str
    number: int
    key_length: int
    nonce_length: int
    tag_length: int
    #: The ``cryptography`` class: "AESCCM", "AESGCM" or "ChaCha20Poly1305".
    construction: str

    def cipher(self, key: bytes) -> Aead:
        """A ready cipher for ``key``: made once per key, as making one costs more than a small message."""
        return Aead(self, key)


class Aead:
    """Encrypts and decrypts with one key; ``decrypt`` returns None on any verification failure."""

    __slots__ = ("_impl", "tag_length")

    def __init__(self, alg: AeadAlgorithm, key: bytes):
        if len(key) != alg.key_length:
            raise ValueError(f"{alg.name} needs a {alg.key_length}-byte key, got {len(key)}")
        mod = _crypto()
        if alg.construction == "AESCCM":
            self._impl = mod.AESCCM(key, tag_length=alg.tag_length)
        else:
            self._impl = getattr(mod, alg.construction)(key)
        self.tag_length = alg.tag_length

    def encrypt(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self._impl.encrypt(nonce, plaintext, aad)  # type: ignore[no-any-return]

    @property
    def encrypt_function(self) -> Callable[[bytes, bytes, bytes], bytes]:
        """:meth:`encrypt` without the wrapper's call (encryption cannot fail but for misuse)."""
        return self._impl.encrypt  # type: ignore[no-any-return]

    def decrypt(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes | None:
        if len(ciphertext) < self.tag_length:
            return None
        try:
            return self._impl.decrypt(nonce, ciphertext, aad)  # type: ignore[no-any-return]
        except Exception:  # InvalidTag, and ValueError for lengths the construction refuses
            return None


def _ccm(name: str, number: int, nonce: int, tag: int, key: int) -> AeadAlgorithm:
    return AeadAlgorithm(name, number, key, nonce, tag, "AESCCM")


#: Every algorithm coapio offers, by COSE name (the names aiocoap's context files use) and by number.
ALGORITHMS: dict[str | int, AeadAlgorithm] = {}
for _alg in (
    _ccm("AES-CCM-16-64-128", 10, 13, 8, 16),  # the mandatory one (§3.2.1)
    _ccm("AES-CCM-16-64-256", 11, 13, 8, 32),
    _ccm("AES-CCM-64-64-128", 12, 7, 8, 16),
    _ccm("AES-CCM-64-64-256", 13, 7, 8, 32),
    _ccm("AES-CCM-16-128-128", 30, 13, 16, 16),
    _ccm("AES-CCM-16-128-256", 31, 13, 16, 32),
    _ccm("AES-CCM-64-128-128", 32, 7, 16, 16),
    _ccm("AES-CCM-64-128-256", 33, 7, 16, 32),
    AeadAlgorithm("A128GCM", 1, 16, 12, 16, "AESGCM"),
    AeadAlgorithm("A192GCM", 2, 24, 12, 16, "AESGCM"),
    AeadAlgorithm("A256GCM", 3, 32, 12, 16, "AESGCM"),
    AeadAlgorithm("ChaCha20/Poly1305", 24, 32, 12, 16, "ChaCha20Poly1305"),
):
    ALGORITHMS[_alg.name] = ALGORITHMS[_alg.number] = _alg

#: The HKDF hash functions a context may name (``kdf-hashfun``): HKDF-SHA-256 is the default (§3.2.1).
HASHES = ("sha256", "sha384", "sha512")


def algorithm(name_or_number: str | int | AeadAlgorithm) -> AeadAlgorithm:
    """Look an algorithm up by COSE name or number; ValueError for one coapio does not offer."""
    if isinstance(name_or_number, AeadAlgorithm):
        return name_or_number
    try:
        return ALGORITHMS[name_or_number]
    except KeyError:
        raise ValueError(f"unsupported OSCORE AEAD algorithm {name_or_number!r}") from None


def hkdf(hash_name: str, salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    """HKDF (RFC 5869) extract-and-expand; an empty salt means the RFC's string of zeros."""
    try:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    except ImportError:  # pragma: no cover
        raise MissingOscoreExtra("cryptography") from None
    if hash_name not in HASHES:
        raise ValueError(f"unsupported HKDF hash function {hash_name!r}")
    hash_alg: hashes.HashAlgorithm
    if hash_name == "sha256":
        hash_alg = hashes.SHA256()
    elif hash_name == "sha384":
        hash_alg = hashes.SHA384()
    else:
        hash_alg = hashes.SHA512()
    return HKDF(algorithm=hash_alg, length=length, salt=salt or None, info=info).derive(ikm)
