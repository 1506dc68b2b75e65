"""The transport interface: what the runtime asks of a transport, and what a transport reports back.

A transport moves CoAP messages for some URI schemes. It runs as socket tasks in the Context's task group
(``await task_group.start(transport.run, events)``), sends requests and responses for the runtime, and
reports what arrives and what happened to what it sent through the :class:`TransportEvents` it was
started with, synchronously, on its own task: matching a response or rendering an inline resource costs
no task switch. Whatever protocol rules a transport follows (the RFC 7252 message layer for UDP, the
RFC 8323 connection state machine for TCP) live in its sans-IO core, not in the runtime.

The other end of every exchange is a :class:`Peer`: the scheme, the address as the transport reports it,
and, for connection-oriented transports, the connection. A request's scheme picks the transport; a scheme
no transport serves is an error before anything is sent, never a fallback to another transport.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

import anyio.abc

from ..protocol.peer import Peer

if TYPE_CHECKING:
    from ..error import CoapError
    from ..protocol.message import Message
    from ..protocol.tuning import TransportTuning

__all__ = ["Peer", "Transport", "TransportEvents"]


class TransportEvents(Protocol):
    """What a transport reports to the runtime, always synchronously on the transport's own task.

    The runtime implements this (its token manager and server); a transport holds the one it was started
    with and must not call it after its :meth:`Transport.run` returned.
    """

    def request_received(self, transport: Transport, request: Message, now: float) -> None:
        """A new request (not a duplicate): serve it; ``request.remote`` is its Peer."""

    def response_received(self, response: Message, now: float) -> None:
        """A response or notification (piggy-backed or separate) to one of our requests."""

    def delivered(self, message: Message, now: float) -> None:
        """The peer acknowledged ``message`` (a CON request or notification we sent)."""

    def failed(self, message: Message, exception: CoapError, now: float) -> None:
        """``message`` we sent will get no answer: reset, timed out, or its response was rejected."""

    def peer_failed(self, peer: Peer, exception: CoapError) -> None:
        """Nothing more can reach ``peer`` (an ICMP error, a closed connection): end its exchanges."""

    def expects_response(self, token: bytes, peer: Peer) -> bool:
        """Whether a request with ``token`` is waiting for a (separate) response from ``peer``."""

    def timer(self, now: float) -> float | None:
        """The runtime's own timers, run on every wake-up of a transport; returns when it next wants one."""


class Transport(abc.ABC):
    """The interface every transport implements; see the module docstring and docs/architecture.rst.

    Every method but :meth:`run` and :meth:`resolve` is synchronous and may be called from any task of
    the Context: it writes at once (or, on the transport's own task, when the current batch of input is
    done), and wakes the socket task when its timers changed.
    """

    #: The URI schemes this transport serves (``{"coap"}`` for UDP).
    schemes: frozenset[str]

    @abc.abstractmethod
    async def run(self, events: TransportEvents, *,
                  task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The socket task(s): serve until cancelled, then close every socket.

        Started with ``await task_group.start(transport.run, events)``; ``task_status.started()`` is
        called once the transport can send. Cancellation (the Context's exit) ends it at its next wait,
        and nothing is sent afterwards.
        """

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """True once :meth:`run` has ended (nothing can be sent any more)."""

    @abc.abstractmethod
    async def resolve(self, scheme: str, host: str, port: int) -> Peer | None:
        """The peer a request to ``host:port`` goes to, or None when this transport cannot reach it.

        May resolve a name or open a connection. Cancellation abandons the resolution; nothing was sent.
        Raises :class:`~coapio.error.NetworkError` when ``host`` cannot be resolved or connected to.
        """

    @abc.abstractmethod
    def send(self, message: Message, tuning: TransportTuning | None = None) -> None:
        """Send a request or a notification to ``message.remote``, reliably where its type asks for it.

        What becomes of it is reported through the events: a response, ``delivered`` or ``failed``.
        Raises (and sends nothing) when the transport cannot take it now: a full queue, message IDs
        exhausted, a peer it cannot reach.
        """

    @abc.abstractmethod
    def respond(self, request: Message, response: Message | None, now: float, *,
                unverified: bool = False) -> None:
        """Answer a received request; ``None`` means "no response" (No-Response, RFC 7967): the transport
        only does what its protocol needs (a UDP CON is still acknowledged).

        ``unverified``: the peer's address is not proven (RFC 9175 §2.4); a response that would be
        retransmitted (a separate CON over UDP) goes unreliably instead.
        """

    @abc.abstractmethod
    def answered(self, request: Message) -> bool:
        """Whether ``request`` already got its response (or an acknowledgement standing for it)."""

    @abc.abstractmethod
    def cancel(self, message: Message) -> None:
        """Loss of interest in a message we sent: stop retransmitting it and forget its exchange."""

    @abc.abstractmethod
    def ping(self, peer: Peer) -> Message:
        """Ask ``peer`` for a sign of life (a CoAP ping over UDP); returns the ping, whose failure arrives
        as ``failed(ping, ...)`` and whose answer needs no report."""

    def bert_message_size(self, peer: Peer) -> int | None:
        """The largest message to use for BERT blocks (RFC 8323 §6) with ``peer``, or None: no BERT.

        Only RFC 8323 connections on which both CSMs announced Block-Wise-Transfer with a Max-Message-Size
        above 1152 have BERT; the runtime passes this to the block-wise state machines, which then use
        SZX 7 with as many 1 KiB units as fit. None (the default: UDP, DTLS) keeps SZX 7 refused.
        """
        return None

    async def drain(self) -> None:
        """Write what is queued (the Context calls it on exit, between the token manager's shutdown —
        which queues deregistrations — and cancelling the transports). The Context bounds the wait;
        transports that write synchronously (UDP) have nothing to do."""
        return None  # a default for transports that write synchronously, not a missing implementation

    @property
    @abc.abstractmethod
    def open_exchanges(self) -> int:
        """Messages awaiting an acknowledgement or a queue slot (for :class:`~coapio.Counters`)."""

    @property
    def dedup_entries(self) -> int:
        """Entries kept to recognise duplicates (0 for transports that have none)."""
        return 0

    @property
    def limit_hits(self) -> Mapping[str, int]:
        """How often each bound of this transport was reached, by its name."""
        return {}

    @property
    def local_address(self) -> tuple[str, int] | None:
        """The (host, port) this transport listens on, if it listens."""
        return None
