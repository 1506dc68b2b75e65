"""The DTLS (``coaps://``) options of the command-line tools: ``--psk``/``--identity`` (client), and with
the ``dtls`` entries of ``--credentials FILE`` (aiocoap's credentials JSON, an option of both tools that
OSCORE reads too) and ``--cert``/``--key``/``--ca``, read into
:class:`~coapio.protocol.dtls.DtlsCredentials`; every problem is a one-line usage error."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ._common import UsageError

if TYPE_CHECKING:
    from ..protocol.dtls import DtlsCredentials

__all__ = ["add_client_arguments", "credentials", "refuse_unless_coaps"]


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--psk", metavar="KEY",
                        help="coaps: the pre-shared key (ASCII, or hex after 0x); needs --identity")
    parser.add_argument("--identity", metavar="ID", help="coaps: the PSK identity to present with --psk")


def refuse_unless_coaps(args: argparse.Namespace, scheme: str) -> None:
    """``--psk`` and ``--identity`` mean nothing without DTLS: a usage error."""
    given = [f"--{name}" for name in ("psk", "identity") if getattr(args, name, None)]
    if given and scheme != "coaps":
        raise UsageError(f"{given[0]} is a DTLS setting, and {scheme}:// has no DTLS (use coaps://)")


def _key(text: str) -> bytes:
    if text.lower().startswith("0x"):
        try:
            return bytes.fromhex(text[2:])
        except ValueError:
            raise UsageError(f"--psk {text!r} is not valid hex after 0x") from None
    try:
        return text.encode("ascii")
    except UnicodeEncodeError:
        raise UsageError("--psk must be ASCII (or hex after 0x)") from None


def credentials(args: argparse.Namespace, *, server: bool) -> DtlsCredentials:
    """The DTLS credentials the arguments give; raise :class:`UsageError` (a missing extra included)."""
    from ..protocol.dtls import CredentialsError, DtlsCredentials, Psk, available

    if not available():
        raise UsageError("coaps:// needs pyOpenSSL: pip install 'coapio[dtls]'")
    ca, cert, key = (getattr(args, name, None) for name in ("ca", "cert", "key"))
    path = getattr(args, "credentials", None)
    psk, identity = getattr(args, "psk", None), getattr(args, "identity", None)
    if (psk is None) != (identity is None):
        raise UsageError("--psk and --identity go together")
    if key is not None and cert is None:
        raise UsageError("--key needs --cert (the certificate the key belongs to)")
    try:
        if path is not None:
            creds = DtlsCredentials.load(path, cert=cert, key=key, ca=ca)
        else:
            creds = DtlsCredentials(cert=cert, key=key, ca=ca)
        if psk is not None and identity is not None:
            creds.add_client_psk("*", Psk(identity.encode("utf-8"), _key(psk)))
        if server:
            if not (creds.has_psk or creds.has_certificate):
                raise UsageError("a coaps bind needs --credentials FILE (PSK identities) or --cert FILE")
            from ..protocol.dtls.engine import Endpoint

            Endpoint(creds, server=True)  # reads the certificate files now: a bad one is a usage error
        elif cert is not None or ca is not None:
            from ..protocol.dtls.engine import Endpoint

            Endpoint(creds, server=False).client_context(None)
    except CredentialsError as e:
        raise UsageError(str(e)) from None
    except Exception as e:  # OpenSSL refusing a file (not PEM, a key that does not match)
        if type(e).__module__.startswith("OpenSSL"):
            raise UsageError(f"cannot use the certificate files: {e}") from None
        raise
    return creds
