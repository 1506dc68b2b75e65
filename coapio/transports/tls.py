"""TLS settings for ``coaps+tcp`` and ``coaps+ws``: standard-library ``ssl`` contexts with CoAP's ALPN.

RFC 8323 §8.2 names the ALPN protocol ``coap`` for CoAP over TLS; WebSockets negotiate ``http/1.1``
first (the CoAP part is the WebSocket subprotocol). Verification is on by default on the client: the
server's certificate must chain to the system's trust store, or to ``ca`` when given, and name the host
the URI names (or its IP address).
"""

from __future__ import annotations

import ssl

__all__ = ["ALPN_COAP", "client_context", "server_context"]

#: The ALPN protocol ID of CoAP over TLS (RFC 8323 §8.2).
ALPN_COAP = "coap"


def client_context(*, ca: str | None = None, cert: str | None = None, key: str | None = None,
                   websocket: bool = False) -> ssl.SSLContext:
    """A client context: the server is verified against ``ca`` (a PEM file) or the system's trust store,
    and its name checked; ``cert`` and ``key`` (PEM files) present a client certificate when asked."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    if cert is not None:
        context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"] if websocket else [ALPN_COAP])
    return context


def server_context(*, cert: str, key: str | None = None, ca: str | None = None,
                   websocket: bool = False) -> ssl.SSLContext:
    """A server context presenting ``cert`` (a PEM chain) with ``key``; with ``ca`` (a PEM file), clients
    must present a certificate that chains to it."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if ca is not None:
        context.load_verify_locations(ca)
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["http/1.1"] if websocket else [ALPN_COAP])
    return context
