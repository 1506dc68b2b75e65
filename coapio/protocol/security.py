"""What authenticated a received message: the one value resources read, whatever the security layer."""

from __future__ import annotations

import attrs

__all__ = ["Security"]


@attrs.frozen(slots=True)
class Security:
    """How a request (or response) was authenticated, and as whom (``Message.security``).

    Set by the layer that verified it: OSCORE for a protected request, the DTLS transport for anything
    received over an established session. A message that arrived unprotected has ``security`` None, so
    ``request.security is None`` is the test a resource needs to refuse plaintext.

    ``method`` is ``"oscore"``, ``"dtls-psk"`` or ``"dtls-x509"``; ``identity`` is what the credentials
    name the peer by (an OSCORE context's credentials key, a PSK identity, a certificate's subject).
    ``context`` is the layer's own object (the OSCORE security context, the DTLS session): for
    applications that need more than the identity; it is not part of equality.
    """

    method: str
    identity: str
    context: object = attrs.field(default=None, eq=False, repr=False)

    def __str__(self) -> str:
        return f"{self.identity} ({self.method})"
