"""DTLS credentials: pre-shared keys by URI pattern (client) and by identity (server), and X.509 files.

A client picks one PSK identity and key per server by the longest URI pattern (``*`` matches anything)
that matches ``coaps://host:port/``; a server accepts every identity the credentials list. Certificates
are PEM files: ``cert`` (the chain, own certificate first) with ``key`` presented to the peer, ``ca`` the
trust anchors a peer's certificate must chain to. A client checks the server's host name or IP address
against its certificate unless ``check_hostname`` is off.

:meth:`DtlsCredentials.from_dict` reads the ``dtls`` entries of aiocoap's credentials JSON::

    {"coaps://device.example/*": {"dtls": {"psk": {"ascii": "secret"}, "client-identity": {"ascii": "me"}}},
     ":client1": {"dtls": {"psk": {"hex": "73656372657421"}, "client-identity": {"ascii": "client1"}}},
     "coaps://other.example/*": ":client1"}

Entries of other kinds (``oscore``, ``tlscert``) are ignored here; OSCORE reads its own. Nothing in this
module needs the ``dtls`` extra, so credentials can be loaded and checked without it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import attrs

from .._credentials_file import read_credentials_file
from .errors import CredentialsError

__all__ = ["DtlsCredentials", "Psk"]


@attrs.frozen(slots=True, repr=False)
class Psk:
    """One pre-shared key and the identity it goes by (both bytes; the key is never shown)."""

    identity: bytes
    key: bytes = attrs.field()

    @key.validator
    def _check(self, attribute: object, value: bytes) -> None:
        if not self.identity or not value:
            raise CredentialsError("a PSK needs a non-empty identity and key")
        if len(value) > 256 or len(self.identity) > 128:
            raise CredentialsError("a PSK identity is at most 128 bytes and a key at most 256")

    def __repr__(self) -> str:
        return f"Psk(identity={self.identity!r}, key=<{len(self.key)} bytes>)"


def _pattern(key: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in key.split("*")) + r"\Z", re.DOTALL)


class DtlsCredentials:
    """What a coaps endpoint authenticates with; see the module docstring.

    ``psk`` maps client URI patterns to the :class:`Psk` to use for matching servers; ``accepted`` maps
    the PSK identities a server accepts to their keys (a :class:`Psk` listed in ``psk`` is accepted too).
    ``cert``/``key``/``ca`` are PEM file names. A server with both PSKs and a certificate accepts either
    kind of client on one endpoint.
    """

    def __init__(
        self,
        *,
        psk: Mapping[str, Psk] | None = None,
        accepted: Mapping[bytes, bytes] | None = None,
        cert: str | None = None,
        key: str | None = None,
        ca: str | None = None,
        check_hostname: bool = True,
    ):
        self._client: list[tuple[str, re.Pattern[str], Psk]] = []
        self._accepted: dict[bytes, bytes] = {}
        for pattern, value in (psk or {}).items():
            self.add_client_psk(pattern, value)
        for identity, secret in (accepted or {}).items():
            self.accept(Psk(identity, secret))
        if key is not None and cert is None:
            raise CredentialsError("a private key without a certificate (pass cert too)")
        for name in (cert, key, ca):
            if name is not None and not os.path.isfile(name):
                raise CredentialsError(f"{name}: no such file")
        self.cert = cert
        self.key = key
        self.ca = ca
        self.check_hostname = check_hostname

    def add_client_psk(self, pattern: str, psk: Psk) -> None:
        """Use ``psk`` for servers whose ``coaps://host:port/`` matches ``pattern``; it is accepted from
        clients too (the same file configures both ends, as in aiocoap)."""
        self._client.append((pattern, _pattern(pattern), psk))
        self._client.sort(key=lambda entry: -len(entry[0]))  # the longest pattern wins
        self.accept(psk)

    def accept(self, psk: Psk) -> None:
        """Let a server accept clients presenting ``psk.identity`` with ``psk.key``."""
        known = self._accepted.get(psk.identity)
        if known is not None and known != psk.key:
            raise CredentialsError(f"PSK identity {psk.identity!r} is listed with two different keys")
        self._accepted[psk.identity] = psk.key

    def client_psk(self, host: str, port: int) -> Psk | None:
        """The PSK to present to the server at ``host:port`` (the longest matching pattern), or None."""
        if not self._client:
            return None
        literal = f"[{host}]" if ":" in host else host
        candidates = [f"coaps://{literal}:{port}/"]
        if port == 5684:
            candidates.append(f"coaps://{literal}/")
        for _, regex, psk in self._client:
            if any(regex.match(uri) for uri in candidates):
                return psk
        return None

    def server_psk(self, identity: bytes) -> bytes | None:
        """The key of an accepted PSK identity, or None."""
        return self._accepted.get(identity)

    @property
    def has_psk(self) -> bool:
        return bool(self._accepted)

    @property
    def has_certificate(self) -> bool:
        return self.cert is not None

    @classmethod
    def load(cls, path: str, **options: Any) -> DtlsCredentials:
        """Read a credentials JSON file (aiocoap's format); ``options`` as for the constructor."""
        data, base = read_credentials_file(path, CredentialsError)
        return cls.from_dict(data, base=base, **options)

    @classmethod
    def from_dict(cls, data: Any, *, base: str = ".", **options: Any) -> DtlsCredentials:
        """The ``dtls`` entries of a parsed credentials map (``base`` is where relative file names in it
        would be resolved; the DTLS entries name none). ``options`` go to the constructor."""
        if not isinstance(data, dict):
            raise CredentialsError("a credentials map is a JSON object")
        self = cls(**options)
        for key, value in data.items():
            if not isinstance(key, str):
                raise CredentialsError(f"credentials key {key!r} is not a string")
            target, seen = value, {key}
            while isinstance(target, str):  # a reference to a labelled entry: ":client1"
                if target in seen or target not in data:
                    raise CredentialsError(f"{key!r} refers to {target!r}, which is "
                                           f"{'circular' if target in seen else 'not in the map'}")
                seen.add(target)
                target = data[target]
            if not isinstance(target, dict) or "dtls" not in target:
                continue  # OSCORE, TLS or unprotected entries: not ours
            psk = _psk_entry(key, target["dtls"])
            if key.startswith(":"):
                self.accept(psk)
            else:
                self.add_client_psk(key, psk)
        return self


def _psk_entry(key: str, entry: Any) -> Psk:
    if not isinstance(entry, dict):
        raise CredentialsError(f"{key!r}: a dtls entry is an object")
    unknown = set(entry) - {"psk", "client-identity"}
    if unknown:
        raise CredentialsError(f"{key!r}: unknown dtls field(s) {', '.join(sorted(unknown))}")
    if "psk" not in entry or "client-identity" not in entry:
        raise CredentialsError(f"{key!r}: a dtls entry needs 'psk' and 'client-identity'")
    return Psk(_bytes(key, "client-identity", entry["client-identity"]), _bytes(key, "psk", entry["psk"]))


def _bytes(key: str, field: str, value: Any) -> bytes:
    if isinstance(value, dict) and len(value) == 1:
        (kind, text), = value.items()
        try:
            if kind == "ascii" and isinstance(text, str):
                return text.encode("ascii")
            if kind == "hex" and isinstance(text, str):
                return bytes.fromhex(text.replace("-", "").replace(" ", ""))
        except (UnicodeEncodeError, ValueError):
            raise CredentialsError(f"{key!r}: {field} is not valid {kind}") from None
    raise CredentialsError(f'{key!r}: {field} must be {{"ascii": "..."}} or {{"hex": "..."}}')
