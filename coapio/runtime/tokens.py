"""The token manager: the service that matches responses to requests and turns loss of interest into wire
actions, for requests we send (outgoing) and requests we serve (incoming), keyed by (token, peer).

It runs as a task of the Context (``await task_group.start(tokens.run)``) that owns the timers above the
transports — an observation's re-registration when its last notification went stale (RFC 7641 §3.3.1) —
and the shutdown order: on the Context's exit it deregisters the live observations while the transports
can still send, then fails every pending request with a clear error, then cancels every incoming Pipe.
If it fails, the Context fails with it.

Matching is not done by that task: a transport calls :meth:`TokenManager.response_received` & co.
synchronously on its own task, so a response reaches its Pipe without a task switch. The one Echo retry of
the client (RFC 9175 §2.2.2: a 4.01 carrying Echo asks for the request again with that value) happens here
too, for every kind of request, and :meth:`TokenManager.request` is the one place a request is sent.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import attrs

from ..error import CoapError, NetworkError, RequestTimedOut, ResponseRejected
from ..protocol.codes import Code, Type
from ..protocol.message import Message
from ..protocol.observe import ClientObservation, Verdict
from ..protocol.options import BlockValue, OptionNumber
from ..protocol.peer import Peer
from ..protocol.tuning import TransportTuning
from ..transports.base import Transport
from .pipe import Pipe, ServerPipe

if TYPE_CHECKING:
    from ..protocol.oscore import RequestBinding, SecurityContext

__all__ = ["TokenManager"]

_OSCORE = int(OptionNumber.OSCORE)
_BLOCK2 = int(OptionNumber.BLOCK2)

log = logging.getLogger(__name__)


class _Outgoing:
    """One request in flight (or one observation): its Pipe, where it went, and what was sent last."""

    __slots__ = ("binding", "echo_retried", "message", "observation", "outer_body", "passive", "pipe",
                 "plain", "security", "transport", "tuning")

    def __init__(self, pipe: Pipe, transport: Transport, tuning: TransportTuning | None,
                 observation: ClientObservation | None, passive: bool = False,
                 security: SecurityContext | None = None):
        self.pipe = pipe
        self.transport = transport
        self.tuning = tuning
        self.observation = observation
        self.message = pipe.request  # the newest message sent for it (a retry, a re-registration)
        self.plain = pipe.request  # the same before OSCORE protected it
        self.echo_retried = False
        self.passive = passive  # an observation that ends by Resetting the next notification
        self.security = security  # the OSCORE context protecting it (RFC 8613), or None
        self.binding: RequestBinding | None = None  # what verifies the responses to the newest message
        self.outer_body: bytearray | None = None  # a protected response arriving in outer blocks


def suppresses_success(request: Message) -> bool:
    """Whether the request's No-Response option asks for no 2.xx response (RFC 7967 §2.1)."""
    value = request.opt.no_response
    return value is not None and bool(value & 0x02)


class TokenManager:
    """See the module docstring. Created and started by the Context; its tables are private."""

    def __init__(self, token_length: int = 8, tuning: TransportTuning | None = None):
        if not 1 <= token_length <= 8:
            raise ValueError("token_length must be 1..8 (RFC 7252 §5.3.1)")
        self.token_length = token_length
        self._tuning = tuning or TransportTuning()
        self._outgoing: dict[tuple[bytes, Peer], _Outgoing] = {}
        self._incoming: dict[tuple[bytes, Peer], ServerPipe] = {}
        self._pings: dict[int, tuple[Message, _Outgoing]] = {}  # id(ping) -> (ping, whose poke)
        self._timers: list[tuple[float, int, _Outgoing]] = []  # observations' re-registration deadlines
        self._timer_seq = 0
        self._sleep: anyio.CancelScope | None = None
        self._running = False
        self._closed = False

    # --- the service ---------------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The service task: run the timers until cancelled, then shut down (see the module docstring).

        Cancellation (the Context's exit) ends it; on the way out it does what :meth:`shutdown` does.
        """
        self._running = True
        task_status.started()
        try:
            while True:
                deadline = self._next_deadline()
                with anyio.CancelScope(deadline=math.inf if deadline is None else deadline) as sleep:
                    self._sleep = sleep
                    await anyio.sleep_forever()
                self._sleep = None
                self._run_timers(anyio.current_time())
        finally:
            self._sleep = None
            self._running = False
            self.shutdown()

    def _wake_at(self, deadline: float | None) -> None:
        sleep = self._sleep
        if deadline is not None and sleep is not None and deadline < sleep.deadline:
            sleep.deadline = deadline

    def _next_deadline(self) -> float | None:
        timers = self._timers
        while timers:
            t, _, entry = timers[0]
            state = entry.observation
            if state is not None and state.next_deadline() == t and self._live(entry):
                return t
            heapq.heappop(timers)  # superseded, or the observation is over
        return None

    def _schedule(self, entry: _Outgoing) -> None:
        state = entry.observation
        deadline = None if state is None else state.next_deadline()
        if deadline is not None:
            self._timer_seq += 1
            heapq.heappush(self._timers, (deadline, self._timer_seq, entry))
            self._wake_at(deadline)

    def _run_timers(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            t, _, entry = heapq.heappop(timers)
            state = entry.observation
            if state is None or state.next_deadline() != t or not self._live(entry):
                continue
            if state.refresh_due(now) and not entry.transport.closed:
                # Nothing fresh within Max-Age: the server may have forgotten us (RFC 7641 §3.3.1).
                entry.echo_retried = False
                self._send(entry, state.reregistration_request(now))
            self._schedule(entry)

    def _live(self, entry: _Outgoing) -> bool:
        request = entry.pipe.request
        return self._outgoing.get((request.token, request.remote)) is entry

    def shutdown(self) -> None:
        """Deregister live observations, fail pending requests, cancel incoming Pipes. Idempotent."""
        if self._closed:
            return
        self._closed = True
        entries = list(self._outgoing.values())
        self._outgoing.clear()
        self._pings.clear()
        for entry in entries:
            if not entry.transport.closed:
                entry.transport.cancel(entry.message)  # no retransmission after the exit; frees NSTART
        for entry in entries:
            state = entry.observation
            if (state is not None and state.registered and not state.ended and not entry.passive
                    and not entry.transport.closed):
                # The last thing this endpoint says to the peer goes at once, beyond NSTART: queued
                # behind other observations' deregistrations it would never leave.
                tuning = attrs.evolve(entry.tuning or self._tuning, nstart=65535)
                try:
                    self._transmit(entry.transport, self._wire(entry, state.deregistration_request()),
                                   tuning)
                except (CoapError, OSError, ValueError) as e:
                    log.debug("no deregistration on exit: %s", e)
        closed = NetworkError("the CoAP context was closed")
        for entry in entries:
            entry.pipe.add_exception(closed)
        for pipe in list(self._incoming.values()):
            pipe.close()
        self._incoming.clear()

    # --- the client side -------------------------------------------------------------------------------

    def new_token(self, peer: Peer) -> bytes:
        """A random token (RFC 7252 §5.3.1: unguessable, so off-path responses cannot be spoofed)."""
        while True:
            token = os.urandom(self.token_length)
            if (token, peer) not in self._outgoing:
                return token

    def request(self, transport: Transport, message: Message, tuning: TransportTuning | None, *,
                observe: bool = False, buffer: int = 1, passive: bool = False,
                security: SecurityContext | None = None) -> Pipe:
        """Send ``message`` (ours to change: the runtime's copy) and return the Pipe of its responses.

        The one place a request is sent. ``observe`` makes an observation: its Pipe streams notifications
        (the newest ``buffer``), and re-registration and deregistration are done here (``passive``: not
        even on the Context's exit; the next notification is Reset instead). ``security`` protects it
        with OSCORE: every message sent for it (retries, re-registrations, the deregistration) with a
        fresh sequence number, and its responses are unprotected before the Pipe sees them. Raises at
        once when the transport refuses the message (a full queue, message IDs exhausted) or OSCORE
        cannot protect it; nothing is sent then.
        """
        if self._closed or not self._running:
            raise RuntimeError("the CoAP context is not running")
        peer = message.remote
        assert isinstance(peer, Peer)
        if not message.token:
            message.token = self.new_token(peer)
        key = (message.token, peer)
        if key in self._outgoing:
            raise ValueError(f"token {message.token.hex()} is already in use towards {peer}")
        pipe = Pipe(message, buffer=buffer, newest_wins=observe)
        entry = _Outgoing(pipe, transport, tuning, ClientObservation(message) if observe else None, passive,
                          security)
        if security is not None:
            entry.message = self._wire(entry, message)
        self._outgoing[key] = entry
        try:
            self._transmit(transport, entry.message, tuning)
        except BaseException:
            del self._outgoing[key]
            pipe.close()
            raise
        if message.type is Type.NON and not observe and suppresses_success(message):
            # RFC 7967: nothing will come back for a NON whose success is suppressed; it is done once sent.
            pipe.add_response(Message(Type.NON, Code.EMPTY, remote=peer))
        return pipe

    def _send(self, entry: _Outgoing, message: Message) -> None:
        try:
            entry.message = self._wire(entry, message)
            self._transmit(entry.transport, entry.message, entry.tuning)
        except (CoapError, ValueError) as e:
            entry.pipe.add_exception(e if isinstance(e, CoapError) else NetworkError(str(e)))

    @staticmethod
    def _wire(entry: _Outgoing, message: Message) -> Message:
        """What goes on the wire for ``message`` of ``entry``: itself, or its OSCORE-protected form."""
        entry.plain = message
        security = entry.security
        if security is None:
            return message
        from ..protocol.oscore import protect_request

        outer, entry.binding = protect_request(security, message)
        return outer

    @staticmethod
    def _transmit(transport: Transport, message: Message, tuning: TransportTuning | None) -> None:
        message.mid = None
        transport.send(message, tuning)

    def release(self, pipe: Pipe, *, deregister: bool = False) -> None:
        """The requester lost interest (it has its answer, left, or was cancelled): close the Pipe, stop
        retransmission, forget the token; ``deregister`` ends a registered observation on the wire."""
        pipe.close()
        request = pipe.request
        key = (request.token, request.remote)
        entry = self._outgoing.get(key)
        if entry is None or entry.pipe is not pipe:
            return
        del self._outgoing[key]
        if self._pings:
            for ident, (_, owner) in list(self._pings.items()):
                if owner is entry:
                    del self._pings[ident]
        transport = entry.transport
        if transport.closed:
            return
        transport.cancel(entry.message)
        state = entry.observation
        if deregister and state is not None and state.registered and not state.ended:
            # Fire and forget: its answer finds no entry and is dropped (or Reset, if separate).
            try:
                self._transmit(transport, self._wire(entry, state.deregistration_request()), entry.tuning)
            except (CoapError, ValueError) as e:
                log.debug("cannot deregister from %s: %s", request.remote, e)

    def poke(self, pipe: Pipe) -> None:
        """Ask for a sign of life: re-register an observation now, else ping the peer. What comes of it
        arrives on the Pipe (a notification, or the exception that ends it), never as a return value."""
        request = pipe.request
        entry = self._outgoing.get((request.token, request.remote))
        if entry is None or entry.pipe is not pipe or entry.transport.closed:
            return
        state = entry.observation
        if state is not None and not state.ended:
            entry.echo_retried = False
            self._send(entry, state.reregistration_request(anyio.current_time()))
            self._schedule(entry)
            return
        assert isinstance(request.remote, Peer)
        try:
            ping = entry.transport.ping(request.remote)
        except CoapError as e:  # the connection is gone: that is what poke() found out
            entry.pipe.add_exception(e)
            return
        self._pings[id(ping)] = (ping, entry)

    def observation(self, pipe: Pipe) -> ClientObservation | None:
        """The observe state of an observation's Pipe (None for a plain request, or once it is over)."""
        request = pipe.request
        entry = self._outgoing.get((request.token, request.remote))
        return entry.observation if entry is not None and entry.pipe is pipe else None

    @property
    def live_tokens(self) -> int:
        return len(self._outgoing)

    # --- events from the transports (synchronous, on their tasks) --------------------------------------

    def expects_response(self, token: bytes, peer: Peer) -> bool:
        return (token, peer) in self._outgoing

    def response_received(self, response: Message, now: float) -> None:
        entry = self._outgoing.get((response.token, response.remote))
        if entry is None:
            return
        if entry.binding is not None:
            if _BLOCK2 in response.opt:
                whole = self._outer_block(entry, response)
                if whole is None:
                    return
                response = whole
            unprotected = self._unprotect(entry, response)
            if unprotected is None:
                return
            response = unprotected
        else:
            items = response.opt._items
            if items and items[0][0] <= _OSCORE and _OSCORE in response.opt:
                self.failed(entry.message, ResponseRejected(
                    f"{response.remote} sent an OSCORE-protected response to an unprotected request"), now)
                return
        if response.code is Code.UNAUTHORIZED and self._echo_retry(entry, response):
            return
        state = entry.observation
        if state is None:
            entry.pipe.add_response(response)  # a plain request's pipe ends with its response
            return
        verdict = state.on_response(response, now)
        if verdict is Verdict.STALE:
            return
        entry.pipe.add_response(response, is_last=verdict is Verdict.FINAL)
        self._schedule(entry)

    def _outer_block(self, entry: _Outgoing, response: Message) -> Message | None:
        """Outer block-wise (RFC 8613 §4.1.3.4.2): a proxy cut the protected response in pieces. Ask for
        the rest by repeating the protected request with the next outer Block2, and return the whole
        protected response once it is in (None meanwhile, or when the transfer failed)."""
        block = response.opt.block2
        assert block is not None
        if entry.observation is not None:
            log.info("a notification in outer blocks from %s dropped (not supported)", response.remote)
            return None
        body = entry.outer_body
        if block.num == 0:
            body = entry.outer_body = bytearray()
        if body is None or len(body) != block.start:
            entry.pipe.add_exception(ResponseRejected(f"{response.remote} sent outer block {block.num} "
                                                      "out of order"))
            return None
        body += response.payload
        limit = (entry.tuning or self._tuning).max_body_size
        if len(body) > limit:
            entry.pipe.add_exception(ResponseRejected(f"the protected response exceeds the limit of {limit} "
                                                      "bytes (max_body_size)"))
            return None
        if block.more:
            follow = entry.message.copy(mid=None)  # the same protected request: no new sequence number
            follow.opt.block2 = BlockValue(block.num + 1, False, block.szx)
            entry.message = follow
            try:
                self._transmit(entry.transport, follow, entry.tuning)
            except (CoapError, ValueError) as e:
                entry.pipe.add_exception(e if isinstance(e, CoapError) else NetworkError(str(e)))
            return None
        whole = response.copy(payload=bytes(body))
        whole.opt.block2 = None
        entry.outer_body = None
        return whole

    def _unprotect(self, entry: _Outgoing, response: Message) -> Message | None:
        """The plaintext of a response to a protected request, or None when it is dropped (RFC 8613 §8.4).

        A response that does not verify ends a plain request with the error; for an observation it is
        dropped (a forged notification must not end it), as is a notification older than one accepted.
        An unprotected response (the server's 4.01/4.02/4.00 about the protection) ends either.
        """
        from ..protocol.oscore import (
            ResponseProtectionInvalid,
            StaleNotification,
            UnprotectedErrorResponse,
            unprotect_response,
        )

        binding = entry.binding
        assert binding is not None
        try:
            plain = unprotect_response(binding, response)
            plain.security = binding.context.security
            return plain
        except StaleNotification:
            return None
        except UnprotectedErrorResponse as e:
            e.args = (f"{response.remote} answered the OSCORE request unprotected: {response.code.dotted} "
                      f"{response.payload.decode('utf-8', 'replace')}".rstrip(),)
            error: ResponseRejected = e
        except ResponseProtectionInvalid as e:
            if entry.observation is not None:
                log.info("notification from %s dropped: %s", response.remote, e)
                return None
            error = e
        if entry.observation is not None:
            entry.observation.ended = True
        entry.pipe.add_exception(error)
        return None

    def _echo_retry(self, entry: _Outgoing, response: Message) -> bool:
        """RFC 9175 §2.2.2: a 4.01 with an Echo value the request did not carry asks for the request
        again with it. Done once per request, so a server that keeps challenging gets its 4.01 through.
        Under OSCORE the Echo value is inside the protection, so the retry is of the plaintext request."""
        echo = response.opt.echo
        sent = entry.plain
        if echo is None or entry.echo_retried or sent.opt.echo == echo or sent.opt.observe == 1:
            return False
        entry.echo_retried = True
        retry = sent.copy(mid=None)
        retry.opt.echo = echo
        self._send(entry, retry)
        return True

    def delivered(self, message: Message, now: float) -> None:
        if self._pings and self._pings.pop(id(message), None) is not None:
            return  # a ping acknowledged (RFC 7252 §4.2 allows an empty ACK instead of a Reset): alive
        entry = self._outgoing.get((message.token, message.remote))
        if entry is not None and entry.message is message and suppresses_success(message):
            # RFC 7967: the acknowledgement is all a CON whose success is suppressed will get.
            entry.pipe.add_response(Message(Type.ACK, Code.EMPTY, message.mid, remote=message.remote))

    def failed(self, message: Message, exception: CoapError, now: float) -> None:
        if self._pings:
            ping = self._pings.pop(id(message), None)
            if ping is not None:
                if ping[0] is message and isinstance(exception, RequestTimedOut) and self._live(ping[1]):
                    ping[1].pipe.add_exception(RequestTimedOut(f"{message.remote} did not answer a ping"))
                return
        entry = self._outgoing.get((message.token, message.remote))
        if entry is None:
            return
        # A plain request fails only for its own newest message; an observation for any message with its
        # token (a re-registration that times out or is reset ends the observation too).
        if entry.observation is None and entry.message is not message and not isinstance(
                exception, ResponseRejected):
            return
        if entry.observation is not None:
            entry.observation.ended = True  # nothing to deregister: the exchange with the server is over
        entry.pipe.add_exception(exception)

    def peer_failed(self, peer: Peer, exception: CoapError) -> None:
        """Nothing more reaches ``peer``: its requests fail, and its incoming Pipes lose interest."""
        for (_, entry_peer), entry in list(self._outgoing.items()):
            if entry_peer == peer:
                if entry.observation is not None:
                    entry.observation.ended = True
                entry.pipe.add_exception(exception)
        for key in [key for key in self._incoming if key[1] == peer]:
            self._incoming.pop(key).close()

    # --- the server side -------------------------------------------------------------------------------

    def incoming_request(self, request: Message) -> None:
        """A new request: one that reuses the token of a running one from the same peer ends the older
        (the client lost interest in it, RFC 7252 §5.3.1)."""
        if self._incoming:
            older = self._incoming.pop((request.token, request.remote), None)
            if older is not None:
                older.close()

    def add_incoming(self, pipe: ServerPipe) -> None:
        request = pipe.request
        assert isinstance(request.remote, Peer)
        self._incoming[(request.token, request.remote)] = pipe

    def remove_incoming(self, pipe: ServerPipe) -> None:
        key = (pipe.request.token, pipe.request.remote)
        if self._incoming.get(key) is pipe:
            del self._incoming[key]

    def incoming(self) -> Iterator[ServerPipe]:
        return iter(list(self._incoming.values()))
