"""Credentials: one file, in aiocoap's JSON format, for every security layer of a :class:`~coapio.Context`.

The file maps URI patterns (``"coap://host/*"``: the client's choice of credentials for a request) and
labels (``":client1"``: what a server accepts) to entries such as ``{"oscore": {"contextfile": "dir/"}}``
or ``{"dtls": {"psk": {"ascii": "..."}, "client-identity": {"ascii": "..."}}}``.
Each layer reads the entries of its own kind and ignores the others, so one file serves a client and a
server, OSCORE and (with the ``dtls`` extra) DTLS. See docs/security.rst.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .error import CredentialsError
from .protocol._credentials_file import read_credentials_file
from .protocol.oscore import CredentialsMap, SecurityContext

if TYPE_CHECKING:
    from .protocol.dtls import DtlsCredentials

__all__ = ["Credentials", "CredentialsError"]


class Credentials:
    """The security material of a Context: OSCORE contexts by URI pattern and by kid, and the DTLS
    pre-shared keys of ``coaps://`` (a :class:`~coapio.protocol.dtls.DtlsCredentials`).

    Made with :meth:`load` (a file) or :meth:`from_dict` (its parsed JSON). OSCORE contexts keep their
    sequence numbers in their directories: :meth:`close` (or ``with``) records the final position and
    releases the directories' locks, so that another process may use them. A Context given a path
    instead of a Credentials object loads and closes them itself.
    """

    def __init__(self, *, oscore: CredentialsMap | None = None, dtls: DtlsCredentials | None = None):
        #: The OSCORE security contexts (None when the credentials name none).
        self.oscore = oscore
        #: The DTLS credentials (None when the credentials name no pre-shared key).
        self.dtls = dtls

    @classmethod
    def load(cls, path: str | os.PathLike[str], **options: Any) -> Credentials:
        """Read a credentials file; relative directories in it are taken from the file's directory.

        ``options`` go to :func:`~coapio.protocol.oscore.load_context_directory` (``persist``,
        ``reserve``). Raises :class:`CredentialsError` (OSCORE's or DTLS's subclass) for a file or entry
        that cannot be used, and
        :class:`~coapio.protocol.oscore.MissingOscoreExtra` when it names OSCORE contexts and the
        ``oscore`` extra is not installed.
        """
        data, base = read_credentials_file(path, CredentialsError)
        return cls.from_dict(data, base=base, **options)

    @classmethod
    def from_dict(cls, data: Any, *, base: str = ".", **options: Any) -> Credentials:
        """Credentials from a parsed credentials file; ``base`` anchors relative directories."""
        from .protocol.dtls import DtlsCredentials  # plain Python: the dtls extra is needed to use it

        oscore = CredentialsMap.from_dict(data, base=base, **options)
        try:
            dtls = DtlsCredentials.from_dict(data, base=base)
        except BaseException:
            oscore.close()
            raise
        return cls(oscore=oscore if any(True for _ in oscore) else None, dtls=dtls if dtls.has_psk else None)

    def oscore_for(self, uri: str) -> SecurityContext | None:
        """The OSCORE context a request to ``uri`` is protected with, or None (sent unprotected)."""
        return None if self.oscore is None else self.oscore.context_for_uri(uri)

    def close(self) -> None:
        """Record each OSCORE context's sequence position and release its directory. Idempotent."""
        if self.oscore is not None:
            self.oscore.close()

    def __enter__(self) -> Credentials:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
