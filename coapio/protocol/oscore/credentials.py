"""OSCORE credentials in aiocoap's format: context directories, and the map from URI patterns to them.

A context directory holds ``settings.json`` and/or ``secret.json`` (``secrets.json`` is read too) whose
keys are ``sender-id``, ``recipient-id``, ``secret`` (required), ``salt``, ``id-context``, ``algorithm``
(default AES-CCM-16-64-128), ``kdf-hashfun`` (default sha256) and ``window`` (default 32). Byte values
take a ``_hex`` or ``_ascii`` suffix (``"sender-id_hex": "01"``); a key may appear in one file only. The
directory also holds :data:`~coapio.protocol.oscore.persistence.SEQUENCE_FILE`, aiocoap's
``sequence.json``, which coapio reads and writes in aiocoap's format.

A credentials file maps URI patterns (``*`` matches anything) or labels (``":name"``) to entries:
``{"oscore": {"contextfile": "dir/"}}`` (or ``"basedir"``, aiocoap's newer name), a string naming another
key (``":client1"``), or ``{"unprotected": true}``. Entries of other kinds (DTLS, TLS) are ignored here.
Relative directories are resolved against the credentials file's own directory.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

from .._credentials_file import read_credentials_file
from .algorithms import HASHES, algorithm
from .context import SecurityContext
from .errors import CredentialsError
from .persistence import SequenceFile
from .replay import DEFAULT_WINDOW

__all__ = ["CredentialsMap", "load_context_directory"]

_REQUIRED = ("sender-id", "recipient-id", "secret")


def _read_settings(directory: str) -> dict[str, Any]:
    data: dict[str, Any] = {}
    found = False
    for filename in ("settings.json", "secret.json", "secrets.json"):
        path = os.path.join(directory, filename)
        try:
            with open(path, "rb") as f:
                content = json.load(f)
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as e:
            raise CredentialsError(f"{path}: {e}") from None
        found = True
        if not isinstance(content, dict):
            raise CredentialsError(f"{path}: a JSON object is needed")
        for key, value in content.items():
            try:
                if key.endswith("_hex"):
                    key, value = key[:-4], bytes.fromhex(value)
                elif key.endswith("_ascii"):
                    key, value = key[:-6], value.encode("ascii")
            except (AttributeError, ValueError, UnicodeEncodeError):
                raise CredentialsError(f"{path}: {key} is not a valid hex or ASCII string") from None
            if key in data:
                raise CredentialsError(f"{directory}: {key!r} is given in more than one file")
            data[key] = value
    if not found:
        raise CredentialsError(f"{directory}: neither settings.json nor secret.json found")
    return data


def load_context_directory(
    directory: str, *, persist: bool = True, reserve: int = 16, name: str | None = None
) -> SecurityContext:
    """Derive the context a directory describes; with ``persist``, its sequence numbers survive restarts.

    ``persist=False`` reads the settings only and counts sequence numbers from 0 in memory — for tests
    of fixed keys only: two runs of such a context reuse nonces.
    """
    data = _read_settings(directory)
    for key in _REQUIRED:
        if key not in data:
            raise CredentialsError(f"{directory}: {key!r} is missing")
    for key in ("sender-id", "recipient-id", "secret", "salt", "id-context"):
        if key in data and not isinstance(data[key], bytes):
            raise CredentialsError(f"{directory}: {key!r} needs a _hex or _ascii suffix")
    alg_name = data.get("algorithm", "AES-CCM-16-64-128")
    hash_name = data.get("kdf-hashfun", "sha256")
    window = data.get("window", DEFAULT_WINDOW)
    try:
        alg = algorithm(alg_name)
    except ValueError as e:
        raise CredentialsError(f"{directory}: {e}") from None
    if hash_name not in HASHES:
        raise CredentialsError(f"{directory}: unsupported kdf-hashfun {hash_name!r}")
    if type(window) is not int or window < 1:
        raise CredentialsError(f"{directory}: 'window' must be a positive integer")
    sequence = SequenceFile(directory, reserve=reserve) if persist else None
    try:
        replay = sequence.replay_window(window) if sequence is not None else window
        ctx = SecurityContext(
            master_secret=data["secret"],
            master_salt=data.get("salt", b""),
            sender_id=data["sender-id"],
            recipient_id=data["recipient-id"],
            id_context=data.get("id-context"),
            algorithm=alg,
            kdf_hash=hash_name,
            replay_window=replay,
            sequence=sequence,
            name=name,
        )
    except ValueError as e:
        if sequence is not None:
            sequence.close()
        raise CredentialsError(f"{directory}: {e}") from None
    except BaseException:
        if sequence is not None:
            sequence.close()
        raise
    return ctx


_UNPROTECTED = object()


class CredentialsMap:
    """URI patterns and labels mapped to security contexts; a client looks up by URI, a server by kid.

    Call :meth:`close` (or use it as a context manager) so that each context records its sequence
    position and releases its directory.
    """

    def __init__(self) -> None:
        self._entries: dict[str, SecurityContext | str | object] = {}
        self._longest_first: list[str] | None = None  # the patterns in lookup order, made once
        self._by_kid: dict[bytes, list[SecurityContext]] = {}
        self._contexts: list[SecurityContext] = []

    @classmethod
    def load(cls, path: str, **options: Any) -> CredentialsMap:
        """Read a credentials JSON file; ``options`` go to :func:`load_context_directory`."""
        data, base = read_credentials_file(path, CredentialsError)
        return cls.from_dict(data, base=base, **options)

    @classmethod
    def from_dict(cls, data: Any, *, base: str = ".", **options: Any) -> CredentialsMap:
        if not isinstance(data, dict):
            raise CredentialsError("a credentials map is a JSON object")
        self = cls()
        loaded: dict[str, SecurityContext] = {}
        try:
            for key, value in data.items():
                self._entries[key] = self._entry(key, value, base, loaded, options)
        except BaseException:
            self.close()
            raise
        return self

    def _entry(
        self, key: str, value: Any, base: str, loaded: dict[str, SecurityContext], options: Mapping[str, Any]
    ) -> SecurityContext | str | object:
        if isinstance(value, str):
            if not value.startswith(":"):
                raise CredentialsError(f"{key}: a reference must start with ':'")
            return value
        if not isinstance(value, dict) or len(value) != 1:
            raise CredentialsError(f"{key}: an entry is an object with exactly one key")
        ((kind, body),) = value.items()
        if kind == "unprotected":
            return _UNPROTECTED
        if kind != "oscore":
            return None  # DTLS, TLS, EDHOC...: not OSCORE's business
        if not isinstance(body, dict):
            raise CredentialsError(f"{key}: 'oscore' takes an object")
        directory = body.get("basedir", body.get("contextfile"))
        if not isinstance(directory, str) or len(body) != 1:
            raise CredentialsError(f"{key}: 'oscore' takes exactly one of 'basedir' or 'contextfile'")
        real = os.path.realpath(os.path.join(base, directory))
        if real not in loaded:
            ctx = load_context_directory(real, name=key, **options)
            loaded[real] = ctx
            self._contexts.append(ctx)
            self._by_kid.setdefault(ctx.recipient_id, []).append(ctx)
        return loaded[real]

    def __iter__(self) -> Iterator[SecurityContext]:
        return iter(self._contexts)

    def context_for_uri(self, uri: str) -> SecurityContext | None:
        """The context for a request to ``uri``: the longest matching pattern wins, references are
        followed. None when nothing matches or the match says ``unprotected``."""
        order = self._longest_first
        if order is None or len(order) != len(self._entries):
            order = self._longest_first = sorted(self._entries, key=len, reverse=True)
        target = uri
        for _ in range(16):
            for pattern in order:
                if _matches(pattern, target):
                    entry = self._entries[pattern]
                    if isinstance(entry, str):
                        target = entry
                        break
                    return entry if isinstance(entry, SecurityContext) else None
            else:
                return None
        raise CredentialsError(f"credentials references for {uri} do not end")

    def find_context(self, kid: bytes, kid_context: bytes | None) -> SecurityContext | None:
        """The server's lookup: the context whose Recipient ID is ``kid`` (and ID Context, if sent)."""
        for ctx in self._by_kid.get(kid, ()):
            if kid_context is None or kid_context == ctx.id_context:
                return ctx
        return None

    def close(self) -> None:
        for ctx in self._contexts:
            ctx.close()

    def __enter__(self) -> CredentialsMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_patterns: dict[str, re.Pattern[str]] = {}


def _matches(pattern: str, target: str) -> bool:
    compiled = _patterns.get(pattern)
    if compiled is None:
        compiled = _patterns[pattern] = re.compile(re.escape(pattern).replace(r"\*", ".*"))
    return compiled.fullmatch(target) is not None
