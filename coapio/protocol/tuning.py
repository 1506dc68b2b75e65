"""Transmission parameters (RFC 7252 §4.8) and the memory bounds of the message layer, as one value.

The RFC's derived times (§4.8.2) are properties, so changing ACK_TIMEOUT or MAX_RETRANSMIT moves
EXCHANGE_LIFETIME and friends with them, as the RFC requires.
"""

from __future__ import annotations

import attrs

__all__ = ["TransportTuning"]


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


def _at_least_one(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, got {value!r}")


@attrs.frozen(slots=True)
class TransportTuning:
    """How an endpoint paces, retries and remembers; pass a changed copy with ``attrs.evolve``.

    The first group are RFC 7252 §4.8.1's parameters with their defaults. ``empty_ack_delay`` is how long
    a server waits for its handler before acknowledging a CON request with an empty ACK (the response then
    follows as a separate message). The ``max_*`` bounds keep memory finite under load or attack: when the
    deduplication cache is full its oldest entries are forgotten early — a duplicate of a forgotten CON that
    arrives late would then be processed a second time, which is the documented price of a bounded cache.
    """

    ack_timeout: float = attrs.field(default=2.0, validator=_positive)
    ack_random_factor: float = 1.5
    max_retransmit: int = 4
    nstart: int = attrs.field(default=1, validator=_at_least_one)
    default_leisure: float = 5.0
    probing_rate: float = attrs.field(default=1.0, validator=_positive)  # bytes per second
    max_latency: float = 100.0

    empty_ack_delay: float = 0.2
    #: How long a NON request holds its NSTART slot when no response comes (None: MAX_TRANSMIT_SPAN).
    non_response_timeout: float | None = None

    max_dedup_entries: int = attrs.field(default=50_000, validator=_at_least_one)
    max_dedup_bytes: int = attrs.field(default=32 * 1024 * 1024, validator=_at_least_one)
    max_queued_per_peer: int = attrs.field(default=1_000, validator=_at_least_one)
    max_tracked_non: int = attrs.field(default=10_000, validator=_at_least_one)
    #: Peers whose message-ID state is kept (those sent CON/NON messages of our own); idle ones beyond
    #: the bound are forgotten least recently used first.
    max_peers: int = attrs.field(default=4_096, validator=_at_least_one)

    #: Block-wise transfer (RFC 7959): the preferred block size as SZX (6: 1024 bytes), the largest body
    #: a request or response may reassemble to, and the server's bounds on reassembly in progress.
    block_szx: int = attrs.field(default=6, validator=attrs.validators.in_(range(7)))
    max_body_size: int = attrs.field(default=8 * 1024 * 1024, validator=_at_least_one)
    max_reassembly_bytes: int = attrs.field(default=32 * 1024 * 1024, validator=_at_least_one)
    max_block_transfers: int = attrs.field(default=128, validator=_at_least_one)
    max_block_transfers_per_peer: int = attrs.field(default=8, validator=_at_least_one)
    #: Observe (RFC 7641): the server's bounds on observers; more registrations get plain responses.
    max_observers: int = attrs.field(default=10_000, validator=_at_least_one)
    max_observers_per_resource: int = attrs.field(default=1_000, validator=_at_least_one)
    #: Server handlers (async renderers) running at once, in total and for one client; beyond them a
    #: CON request is answered 5.03 Service Unavailable with Max-Age ``overload_max_age`` and a NON
    #: request is dropped. Plain (``def``) renderers run inline and never accumulate.
    max_handlers: int = attrs.field(default=1_000, validator=_at_least_one)
    max_handlers_per_peer: int = attrs.field(default=64, validator=_at_least_one)
    overload_max_age: int = attrs.field(default=5, validator=attrs.validators.ge(0))
    #: Datagrams held by a socket task while the kernel's send buffer is full; beyond, new ones are
    #: dropped (CON messages are retransmitted; the rest is UDP's usual loss).
    max_send_backlog: int = attrs.field(default=4_096, validator=_at_least_one)
    #: How often, at most, a log line says that one of these bounds was reached (they are counted always).
    limit_log_interval: float = attrs.field(default=60.0, validator=_positive)
    #: Amplification mitigation (RFC 9175 §2.4): a response more than three times its request's size,
    #: and any Observe registration, goes only to an address that has returned an Echo value (it gets a
    #: 4.01 challenge first; coapio's and libcoap's clients repeat the request with it, aiocoap 0.4's do
    #: only under OSCORE). Off by default for that reason; turn it on for a server on an open network.
    #: ``echo_freshness`` is how old an Echo value may be to count as fresh for resources that require
    #: freshness (§2.3).
    echo_amplification_check: bool = False
    echo_freshness: float = attrs.field(default=10.0, validator=_positive)
    #: Reliable transports (RFC 8323: TCP, TLS, WebSockets). Connections a server accepts at once, in
    #: total and from one IP address (beyond them a new connection is closed at once), and a client keeps
    #: open; requests one connection carries at once before later ones wait for a slot.
    max_connections: int = attrs.field(default=1_024, validator=_at_least_one)
    max_connections_per_peer: int = attrs.field(default=16, validator=_at_least_one)
    max_pending_per_connection: int = attrs.field(default=1_000, validator=_at_least_one)
    #: The Max-Message-Size announced in our CSM (RFC 8323 §5.3.1): a larger incoming message aborts the
    #: connection (7.05) without being buffered. 1152 is the RFC's default; more lets BERT carry
    #: several 1 KiB blocks per message.
    max_message_size: int = attrs.field(default=8 * 1024 + 128, validator=_at_least_one)
    #: Seconds a new connection has to finish its TCP/TLS/WebSocket handshake and send its CSM; a peer
    #: that connects and sends nothing is dropped after it.
    handshake_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: Seconds a client's pooled connection with nothing in flight stays open, and the longest one write
    #: may block (a peer that stops reading loses its connection then); how long a Ping (``poke()``)
    #: waits for its Pong. A server keeps a quiet client's connection (an observer may be waiting), within
    #: ``max_connections`` and ``max_connections_per_peer``.
    idle_timeout: float = attrs.field(default=120.0, validator=_positive)
    ping_timeout: float = attrs.field(default=10.0, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.ack_random_factor < 1:
            raise ValueError("ack_random_factor must be at least 1")
        if self.max_retransmit < 0:
            raise ValueError("max_retransmit must not be negative")

    @property
    def processing_delay(self) -> float:
        return self.ack_timeout

    @property
    def max_transmit_span(self) -> float:
        """Longest time from the first to the last transmission of a CON (45 s by default)."""
        return self.ack_timeout * ((1 << self.max_retransmit) - 1) * self.ack_random_factor

    @property
    def max_transmit_wait(self) -> float:
        """Longest time from the first transmission of a CON until giving up (93 s by default)."""
        return self.ack_timeout * ((1 << (self.max_retransmit + 1)) - 1) * self.ack_random_factor

    @property
    def max_rtt(self) -> float:
        return 2 * self.max_latency + self.processing_delay

    @property
    def exchange_lifetime(self) -> float:
        """How long a CON's message ID stays in use (247 s by default)."""
        return self.max_transmit_span + 2 * self.max_latency + self.processing_delay

    @property
    def non_lifetime(self) -> float:
        """How long a NON's message ID stays in use (145 s by default)."""
        return self.max_transmit_span + self.max_latency

    @property
    def non_timeout(self) -> float:
        t = self.non_response_timeout
        return self.max_transmit_span if t is None else t
