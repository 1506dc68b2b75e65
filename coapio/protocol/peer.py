"""The peer: who is on the other end of an exchange, as a value that keys every table."""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["Peer"]


@attrs.frozen(slots=True, cache_hash=True, repr=False)
class Peer:
    """Who is on the other end: the scheme, the address, and for reliable transports the connection.

    ``address`` is a socket address as the transport reports it (an IPv4 peer of a dual-stack UDP socket
    is ``("::ffff:192.0.2.1", port, 0, 0)``), or, for a request not yet sent, the host and port as written
    in its URI. ``connection`` tells apart two connections from the same address (None for UDP). Peers are
    values: equal peers are the same peer, and they key every table of the runtime.
    """

    scheme: str
    address: tuple[Any, ...]
    connection: object | None = None

    @property
    def host(self) -> str:
        """The host, without the IPv4-mapped prefix of a dual-stack socket."""
        host = str(self.address[0])
        return host[7:] if host.startswith("::ffff:") and "." in host else host

    @property
    def port(self) -> int:
        return int(self.address[1])

    def __str__(self) -> str:
        host = self.host
        return f"{self.scheme}://[{host}]:{self.port}" if ":" in host else f"{self.scheme}://{host}:{self.port}"

    def __repr__(self) -> str:
        extra = "" if self.connection is None else f" via {self.connection!r}"
        return f"<Peer {self}{extra}>"
