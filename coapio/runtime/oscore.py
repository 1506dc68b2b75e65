"""OSCORE in the runtime (RFC 8613): the server's unprotect step and the view of a transport that protects.

The client side lives in the token manager, the one place a request is sent: a request whose URI the
credentials map to a security context is protected there (every retry, re-registration and
deregistration with a fresh sequence number) and its responses are unprotected before anything else
sees them, so block-wise (inner, RFC 8613 §4.1.3.4.1), Echo and Observe run on the plaintext above it.

The server side is :func:`serve_protected`: a request carrying the OSCORE option is verified and
decrypted before routing, then served like any other request through a :class:`ProtectingTransport`, a
view of the transport it came by that protects every response, notification and error sent for it. The
errors of §8.2 (an undecodable option, an unknown context, a replay, a failed decryption) are answered
unprotected, to a confirmable request only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from ..error import BadOption, RenderableError
from ..protocol.codes import Type
from ..protocol.echo import AMPLIFICATION_FACTOR
from ..protocol.message import Message
from ..protocol.oscore import (
    ContextLookup,
    OscoreError,
    ReplayWindowUninitialized,
    ResponseProtector,
    unprotect_request,
)
from ..protocol.peer import Peer
from ..protocol.tuning import TransportTuning
from ..transports.base import Transport, TransportEvents

if TYPE_CHECKING:
    from ..protocol.blockwise import Complete
    from ..protocol.echo import EchoGuard

__all__ = ["ProtectingTransport", "serve_protected"]

log = logging.getLogger(__name__)

#: The unprotected answer of a server without OSCORE credentials (RFC 7252 §5.4.1: a critical option it
#: does not process).
NOT_SUPPORTED = BadOption("OSCORE is not supported by this server")


class ProtectingTransport(Transport):
    """The transport a protected request came by, as its server-side exchange sees it: every response and
    notification sent through it is protected with the request's :class:`ResponseProtector`.

    One is made per protected request; it holds no socket and runs no task (``run`` is not for it). The
    message layer below sees only protected messages, with the type, ID, token and peer of the plaintext
    ones, so deduplication, acknowledgements and observers' tables work unchanged.
    """

    def __init__(self, inner: Transport, protector: ResponseProtector, outer: Complete | None = None):
        self.inner = inner
        self.protector = protector
        self.schemes = inner.schemes
        #: The outer block-wise transfer the request arrived by: its response acknowledges the last block.
        self.outer = outer

    def protect(self, message: Message) -> Message:
        return self.protector.protect(message)

    async def run(self, events: TransportEvents, *,
                  task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        raise RuntimeError("a ProtectingTransport is a view of another transport, not one to run")

    @property
    def closed(self) -> bool:
        return self.inner.closed

    async def resolve(self, scheme: str, host: str, port: int) -> Peer | None:
        return await self.inner.resolve(scheme, host, port)

    def send(self, message: Message, tuning: TransportTuning | None = None) -> None:
        self.inner.send(self.protector.protect(message), tuning)

    def respond(self, request: Message, response: Message | None, now: float, *,
                unverified: bool = False) -> None:
        protected = None if response is None else self.protector.protect(response)
        if protected is not None and self.outer is not None:
            protected = self.outer.acknowledge(protected)
            self.outer = None
        self.inner.respond(request, protected, now, unverified=unverified)

    def answered(self, request: Message) -> bool:
        return self.inner.answered(request)

    def cancel(self, message: Message) -> None:
        self.inner.cancel(message)

    def ping(self, peer: Peer) -> Message:
        return self.inner.ping(peer)

    def bert_message_size(self, peer: Peer) -> int | None:
        return None  # inner blocks stay within 1 KiB: the protected message must fit where plain ones do

    @property
    def open_exchanges(self) -> int:
        return 0  # counted by the transport itself

    @property
    def limit_hits(self) -> Mapping[str, int]:
        return {}


def serve_protected(
    contexts: ContextLookup | None,
    endpoint: Transport,
    request: Message,
    now: float,
    echo: EchoGuard,
    serve: Callable[[Transport, Message, float], None],
    respond: Callable[[Transport, Message, Message, float], None],
    outer: Complete | None = None,
) -> None:
    """Verify and decrypt ``request`` (it carries the OSCORE option), then ``serve`` the plaintext through a
    :class:`ProtectingTransport`; answer what cannot be unprotected with ``respond``, unprotected.

    After a restart that lost the replay window (Appendix B.1.2) a request that verified is answered with
    a protected 4.01 carrying an Echo value, and its repetition with that value restarts the window.
    ``outer``: the request was reassembled from outer blocks (§4.1.3.4.2); the response acknowledges them.
    """
    if contexts is None:
        _refuse(endpoint, request, NOT_SUPPORTED, now, respond)
        return
    try:
        plain, protector = unprotect_request(contexts, request)
    except ReplayWindowUninitialized as e:
        plain, protector = e.request, e.protector
        view = ProtectingTransport(endpoint, protector, outer)
        if not echo.is_fresh(plain, now):
            respond(view, plain, echo.challenge(plain, now), now)
            return
        protector.context.initialize_replay_window(protector)
    except OscoreError as e:
        log.info("OSCORE request from %s refused: %s", request.remote, getattr(e, "reason", e))
        if isinstance(e, RenderableError):
            _refuse(endpoint, request, e, now, respond)
        return
    else:
        view = ProtectingTransport(endpoint, protector, outer)
    plain.security = protector.context.security
    serve(view, plain, now)


def _refuse(endpoint: Transport, request: Message, exc: RenderableError, now: float,
            respond: Callable[[Transport, Message, Message, float], None]) -> None:
    """§8.2: the error goes unprotected and only to a CON request; a NON one is dropped silently."""
    from .resource import error_response

    if request.type is Type.CON:
        response = error_response(exc)
        if response.wire_size + len(request.token) > AMPLIFICATION_FACTOR * request.wire_size:
            response.payload = b""  # never more than three times what an unverified source sent
        respond(endpoint, request, response, now)
