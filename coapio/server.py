"""The server side of a Context: routes requests to resources and turns renderers' results into
responses, with block-wise transfer (RFC 7959) and observation (RFC 7641) around them.

Plain ``def`` renderers run inline on the endpoint's socket task (the fast path); ``async def`` ones get a
task under a cancel scope that the client's loss of interest cancels. Protocol rules live in the sans-IO
modules (:mod:`coapio.blockwise`, :mod:`coapio.observe`); this module only drives them.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import attrs

from . import error
from ._limits import LimitLog
from .blockwise import Block1Reassembler, Complete, Continue, segment_response
from .codes import Code, Type
from .echo import AMPLIFICATION_FACTOR, EchoGuard
from .message import Message, Remote
from .observe import OBSERVE_REGISTER, Observer, ObserverTable
from .options import OptionNumber
from .resource import Handler, Resource, Site, _rest_of_path, error_response, make_response
from .tuning import TransportTuning
from .udp import UDPEndpoint

__all__ = ["ObservableResource", "ServerDispatch"]

log = logging.getLogger(__name__)


_SAFE_METHODS = frozenset({Code.GET, Code.FETCH})
_FANOUT_CHUNK = 128  # notifications sent per socket-task wake-up
_SPECIAL_REQUEST_OPTIONS = frozenset(
    {OptionNumber.PROXY_URI, OptionNumber.PROXY_SCHEME, OptionNumber.BLOCK1, OptionNumber.BLOCK2}
)
_LOWEST_SPECIAL = min(_SPECIAL_REQUEST_OPTIONS)
assert _LOWEST_SPECIAL <= OptionNumber.NO_RESPONSE
_URI_PATH = int(OptionNumber.URI_PATH)
#: RFC 7967 §2.1: the No-Response bit that suppresses each response class.
_NO_RESPONSE_BITS = {2: 0x02, 4: 0x08, 5: 0x10}


def _failure_response(handler: Handler, request: Message, exc: Exception) -> Message:
    """What a renderer's exception becomes: a library error its code, anything else a logged 5.00."""
    if isinstance(exc, error.RenderableError):
        return error_response(exc)
    log.error("renderer %r failed on %r", handler.function, request, exc_info=exc)
    return Message(code=Code.INTERNAL_SERVER_ERROR)


class ObservableResource(Resource):
    """A resource clients can observe (RFC 7641): call :meth:`notify` when its state changes.

    Each observer gets its own rendering of ``render_get`` for every notification (so Accept and query
    options are honoured per observer). Notifications are NON, with a CON at least every 24 hours and
    whenever ``notify(confirmable=True)`` asks. An optional ``async def observation(self, request)`` runs
    for as long as one observer stays registered, in a cancel scope that the observer's loss of interest
    (Reset, deregistration, an unacknowledged CON, the context's exit) cancels — its ``finally`` runs.
    """

    link_attributes: Any = {"obs": None}

    def __init__(self) -> None:
        super().__init__()
        self._servers: set[ServerDispatch] = set()

    def notify(self, *, confirmable: bool = False) -> None:
        """Tell every observer that the state changed; they get the newest state, never a backlog."""
        for server in list(self._servers):
            server.notify(self, confirmable)

    @property
    def observer_count(self) -> int:
        return sum(server.observers.count(self) for server in self._servers)


class _ServerExchange:
    """An async handler's task: the request and the cancel scope that loss of interest cancels."""

    __slots__ = ("request", "scope")

    def __init__(self, request: Message):
        self.request = request
        self.scope = anyio.CancelScope()


class _Held:
    """A response waiting for its unverified peer to answer a ping (see the amplification section)."""

    __slots__ = ("deadline", "done", "endpoint", "request", "response")

    def __init__(self, deadline: float, endpoint: UDPEndpoint, request: Message, response: Message):
        self.deadline = deadline
        self.endpoint = endpoint
        self.request = request
        self.response = response
        self.done = False


class _Ping:
    """A reachability check in flight: the Empty CON, the endpoint it went from, and whether it is
    retransmitted."""

    __slots__ = ("endpoint", "message", "retransmitted")

    def __init__(self, message: Message, endpoint: UDPEndpoint, retransmitted: bool):
        self.message = message
        self.endpoint = endpoint
        self.retransmitted = retransmitted


class ServerDispatch:
    """Serves one Context's site; created by the Context, fed by its endpoints' socket tasks."""

    def __init__(self, site: Site | None, tuning: TransportTuning):
        self.site = site
        self.tuning = tuning
        self.task_group: anyio.abc.TaskGroup | None = None
        self.incoming: dict[tuple[bytes, Remote], _ServerExchange] = {}
        # Async handlers started and not yet finished, in total and per client (the handler bounds).
        self._running = 0
        self._running_per_peer: dict[Remote, int] = {}
        #: The bounds this server reached (counts by name), logged at most once per interval.
        self.limits = LimitLog(log, tuning.limit_log_interval)
        # Reachability checks in flight (a CoAP ping per unverified peer), and the responses they hold
        # by peer and in the order they expire (one wait for all, so arrival order is expiry order).
        self._pings: dict[Remote, _Ping] = {}
        self._held: dict[Remote, list[_Held]] = {}
        self._held_order: deque[_Held] = deque()
        self._held_observers: dict[Remote, set[Observer[ObservableResource]]] = {}
        self.reassembler = Block1Reassembler(
            max_body=tuning.max_body_size,
            max_total=tuning.max_reassembly_bytes,
            max_transfers=tuning.max_block_transfers,
            max_per_peer=tuning.max_block_transfers_per_peer,
            lifetime=tuning.exchange_lifetime,
            max_szx=tuning.block_szx,
        )
        self.observers: ObserverTable[ObservableResource] = ObserverTable(
            max_total=tuning.max_observers, max_per_resource=tuning.max_observers_per_resource
        )
        self.echo = EchoGuard(freshness=tuning.echo_freshness)
        self._block_size = 1 << (tuning.block_szx + 4)
        self._observer_endpoint: dict[tuple[Remote, bytes], UDPEndpoint] = {}
        # Each observation's content format, fixed by its first response (RFC 7641 §4.2).
        self._formats: dict[tuple[Remote, bytes], int | None] = {}
        # Notifications owed and due, sent by the socket tasks a chunk per wake-up (see send_due).
        self._due: deque[Observer[ObservableResource]] = deque()
        #: Set by the Context: wakes the socket tasks so that they send what is due.
        self.wake: Callable[[], None] = lambda: None
        self._observation_scopes: dict[tuple[Remote, bytes], anyio.CancelScope] = {}

    def close(self) -> None:
        """Detach from observable resources (the context is ending; its tasks are being cancelled)."""
        for observer in self.observers.all():
            observer.resource._servers.discard(self)
        self._observation_scopes.clear()

    # --- requests ------------------------------------------------------------------------------------

    def serve(self, endpoint: UDPEndpoint, request: Message, now: float) -> None:
        """Route a request: a plain renderer answers inline, an async one gets a task."""
        site = self.site
        if site is None:
            return self._respond(endpoint, request, Message(code=Code.NOT_FOUND), now)
        opt = request.opt
        items = opt._items
        complete: Complete | None = None
        # Options are sorted: a request whose highest option is below Block2 (the lowest special
        # number) is the common case and skips the special cases without looking at each option.
        if items and items[-1][0] >= _LOWEST_SPECIAL and any(
            number in _SPECIAL_REQUEST_OPTIONS for number, _ in items
        ):
            if OptionNumber.PROXY_URI in opt or OptionNumber.PROXY_SCHEME in opt:
                return self._respond(endpoint, request, Message(code=Code.PROXYING_NOT_SUPPORTED), now)
            if OptionNumber.BLOCK1 in opt:
                try:
                    result = self.reassembler.feed(request, now)
                except error.RenderableError as e:
                    if isinstance(e, error.ServiceUnavailable | error.RequestEntityTooLarge):
                        self.limits.hit("block-wise reassembly", now, "%s from %r", e, request.remote)
                    return self._respond(endpoint, request, error_response(e), now)
                if isinstance(result, Continue):
                    return self._respond(endpoint, request, result.response, now)
                complete = result
                request = result.request
            else:
                block = opt.block2
                if block is not None and block.num > 0:
                    cached = self.reassembler.cached_response(request, now)
                    if cached is not None:
                        size = 1 << (min(block.szx, self.tuning.block_szx) + 4)
                        if (block.num + 1) * size >= len(cached.payload):
                            self.reassembler.forget_response(request)  # its last block goes out now
                        return self._respond(endpoint, request, cached, now, full=True)
                    if request.code not in _SAFE_METHODS:
                        # A later block of a response to a request that must not run twice, and the
                        # response is gone: RFC 7959 §2.7 leaves only "incomplete" as the answer.
                        incomplete = error.RequestEntityIncomplete("no response to continue")
                        return self._respond(endpoint, request, error_response(incomplete), now)
        if self.observers:
            self._forget_observer_on_plain_request(request)
        # Uri-Path read straight from the sorted options: this runs for every request.
        found = site.resolve(tuple([value.decode("utf-8", "replace") for number, value in items
                                    if number == _URI_PATH]))
        if found is None:
            return self._respond(endpoint, request, Message(code=Code.NOT_FOUND), now)
        resource, rest = found
        handler = resource.handler(request.code)
        if handler is None:
            return self._respond(endpoint, request, Message(code=Code.METHOD_NOT_ALLOWED), now)
        if (resource.requires_fresh and request.code not in _SAFE_METHODS
                and not self.echo.is_fresh(request, now)):
            return self._respond(endpoint, request, self.echo.challenge(request, now), now)
        if handler.is_async:
            assert self.task_group is not None
            remote = request.remote
            per_peer = self._running_per_peer.get(remote, 0)
            if self._running >= self.tuning.max_handlers or per_peer >= self.tuning.max_handlers_per_peer:
                return self._overloaded(endpoint, request, now, per_peer)
            self._running += 1
            self._running_per_peer[remote] = per_peer + 1
            self.task_group.start_soon(
                self._run_async, endpoint, handler, request, rest, complete, name="coapio handler"
            )
            return None
        reset = _rest_of_path.set(rest) if rest else None
        try:
            response = self._render_sync(handler, request)
        finally:
            if reset is not None:
                _rest_of_path.reset(reset)
        self._finish(endpoint, request, resource, response, complete, now)
        return None

    def _overloaded(self, endpoint: UDPEndpoint, request: Message, now: float, per_peer: int) -> None:
        """At a handler bound: 5.03 with Max-Age for a CON request (RFC 7252 §5.9.3.4), nothing for a NON."""
        if per_peer >= self.tuning.max_handlers_per_peer:
            self.limits.hit("max_handlers_per_peer", now, "%d handlers running for %r", per_peer,
                            request.remote)
        else:
            self.limits.hit("max_handlers", now, "%d handlers running", self._running)
        if request.type is Type.NON:
            return
        # No diagnostic payload: an overloaded server answers as briefly as it can (and so never more
        # than an unverified source may receive, RFC 9175 §2.4).
        response = Message(code=Code.SERVICE_UNAVAILABLE)
        response.opt.max_age = self.tuning.overload_max_age
        self._respond(endpoint, request, response, now)

    @staticmethod
    def _render_sync(handler: Handler, request: Message) -> Message:
        try:
            return make_response(request, handler.function(request))
        except Exception as e:
            return _failure_response(handler, request, e)

    async def _run_async(self, endpoint: UDPEndpoint, handler: Handler, request: Message,
                         rest: tuple[str, ...], complete: Complete | None) -> None:
        """An async renderer in its own cancel scope; loss of interest cancels it and sends nothing."""
        try:
            await self._run_async_counted(endpoint, handler, request, rest, complete)
        finally:
            self._running -= 1
            remote = request.remote
            left = self._running_per_peer[remote] - 1
            if left:
                self._running_per_peer[remote] = left
            else:
                del self._running_per_peer[remote]

    async def _run_async_counted(self, endpoint: UDPEndpoint, handler: Handler, request: Message,
                                 rest: tuple[str, ...], complete: Complete | None) -> None:
        key = (request.token, request.remote)
        exchange = _ServerExchange(request)
        previous = self.incoming.get(key)
        if previous is not None:
            previous.scope.cancel()  # the client reused the token: it lost interest in the older request
        self.incoming[key] = exchange
        if rest:
            _rest_of_path.set(rest)
        response: Message | None = None
        try:
            with exchange.scope:
                function: Callable[[Message], Awaitable[Message]] = handler.function  # type: ignore[assignment]
                try:
                    response = make_response(request, await function(request))
                except Exception as e:
                    response = _failure_response(handler, request, e)
        finally:
            if self.incoming.get(key) is exchange:
                del self.incoming[key]
        if response is not None and not endpoint.closed:
            now = anyio.current_time()
            self._finish(endpoint, request, handler.resource, response, complete, now)
            endpoint.flush()

    def _finish(self, endpoint: UDPEndpoint, request: Message, resource: Resource, response: Message,
                complete: Complete | None, now: float) -> None:
        """Observe registration, Block1 acknowledgement and Block2 segmentation, then send."""
        if isinstance(resource, ObservableResource):
            if request.opt.observe is not None:
                self._observe_request(endpoint, request, resource, response, now)
            elif request.code == Code.DELETE and response.code == Code.DELETED:
                # RFC 7641 §3.2/§4.2: the resource is gone; every observation ends with 4.04.
                for observer in self.observers.observers(resource):
                    self._send_error_notification(observer, Code.NOT_FOUND, b"the resource was deleted", now)
        if complete is not None:
            if response.code.is_successful() and response.payload:
                self.reassembler.remember_response(request, response, now)
            self._respond(endpoint, request, response, now, full=True, complete=complete)
        else:
            self._respond(endpoint, request, response, now, full=True)

    def _respond(self, endpoint: UDPEndpoint, request: Message, response: Message, now: float, *,
                 full: bool = False, complete: Complete | None = None) -> None:
        items = request.opt._items
        # Block2 and No-Response are the highest-numbered request options these checks read.
        plain = not items or items[-1][0] < _LOWEST_SPECIAL
        try:
            if full and (len(response.payload) > self._block_size
                         or (not plain and OptionNumber.BLOCK2 in request.opt)):
                response = segment_response(request, response, max_szx=self.tuning.block_szx)
            if complete is not None:
                response = complete.acknowledge(response)
        except error.RenderableError as e:
            response = error_response(e)
        raw = None if plain else request.opt.get(OptionNumber.NO_RESPONSE)
        if raw and int.from_bytes(raw, "big") & _NO_RESPONSE_BITS.get(response.code >> 5, 0):
            # RFC 7967: the client wants no response of this class; a CON is still acknowledged.
            if request.type is Type.CON:
                endpoint.layer.acknowledge(request, now)
            return
        if (self.tuning.echo_amplification_check and not self.echo.address_verified(request.remote, now)
                and self._amplifies(endpoint, request, response, now)):
            if not self._hold(endpoint, request, response, now):
                self._challenge(endpoint, request, now)
            return
        self._send_response(endpoint, request, response, now)

    def _send_response(self, endpoint: UDPEndpoint, request: Message, response: Message, now: float) -> None:
        try:
            endpoint.layer.respond(request, response, now)
        except error.MessageIdsExhausted as e:
            log.warning("dropping a separate response: %s", e)
        except (ValueError, TypeError, OverflowError):
            # The renderer built a message that cannot go on the wire; never let that stop the endpoint.
            log.exception("cannot encode the response to %r", request)
            endpoint.layer.respond(request, Message(code=Code.INTERNAL_SERVER_ERROR), now)

    # --- amplification mitigation (RFC 9175 §2.4) ----------------------------------------------------
    #
    # A response more than three times its request's size goes only to a peer that has shown it receives
    # at its source address. Two proofs are accepted, because common clients support one or the other:
    # an Echo value returned after a 4.01 challenge (the RFC's mechanism; libcoap, coapio), and a Reset to
    # a CoAP ping (every RFC 7252 endpoint must send one; aiocoap answers at once, libcoap only to the
    # ping's retransmission). So the response waits while a ping goes out; if no Reset comes within
    # ``reachability_wait`` the request is answered with the challenge instead (still piggy-backed, so
    # nothing is retransmitted to the unverified address), and a Reset that comes later verifies the peer
    # for its next requests. A spoofed source receives the ping and its retransmissions, or a challenge.

    def _amplifies(self, endpoint: UDPEndpoint, request: Message, response: Message, now: float) -> bool:
        """Whether ``response`` exceeds the allowance to the request's unverified source address."""
        size = response.wire_size + len(request.token)  # the layer adds the request's token
        if size <= AMPLIFICATION_FACTOR * request.wire_size:
            return False
        if not self.echo.is_verified(request, now):
            return True
        # A valid Echo value verified the peer just now: its ping, if any, has no purpose left.
        ping = self._pings.pop(request.remote, None)
        if ping is not None:
            ping.endpoint.layer.cancel(ping.message, now)
        self._release(request.remote, now)
        return False

    def _hold(self, endpoint: UDPEndpoint, request: Message, response: Message, now: float) -> bool:
        """Keep a response for an unverified peer until it answers a ping, or ``reachability_wait``.

        False when too many responses wait already or no ping can be sent: then challenge at once.
        """
        if len(self._held_order) >= self.tuning.max_unverified_held:
            self.limits.hit("max_unverified_held", now, "%d responses wait for their peers' reachability",
                            len(self._held_order))
            return False
        if request.remote not in self._pings:
            # The ping, and the challenge should it go unanswered, must together fit the allowance of
            # the request that caused them; so this ping is sent once, not retransmitted.
            challenge_bytes = 4 + len(request.token) + 1 + 1 + 12  # header, token, Echo option
            if 4 + challenge_bytes > AMPLIFICATION_FACTOR * request.wire_size:
                return False
        if not self._ping(endpoint, request.remote, now, retransmit=False):
            return False
        held = _Held(now + self.tuning.reachability_wait, endpoint, request, response)
        self._held.setdefault(request.remote, []).append(held)
        self._held_order.append(held)
        return True

    def _ping(self, endpoint: UDPEndpoint, remote: Remote, now: float, *, retransmit: bool) -> bool:
        """Make sure a reachability check of ``remote`` is in flight; False if none can be sent.

        A ping for a held response goes once (its budget is the request's allowance, and the Echo
        challenge follows if it is not answered at once). A ping for owed notifications is retransmitted
        like any CON (at most 4 bytes times MAX_RETRANSMIT + 1), because some clients (libcoap) reset
        only a ping they see twice; it is sent once per verification, not per notification.
        """
        if remote in self._pings:
            return True
        if len(self._pings) >= self.tuning.max_unverified_held:
            return False
        ping = Message(Type.CON, Code.EMPTY, remote=remote)
        tuning = endpoint.layer.tuning
        if not retransmit:
            tuning = attrs.evolve(tuning, max_retransmit=0)
        try:
            endpoint.layer.send(ping, now, tuning=tuning)
        except error.CoapError as e:
            log.warning("cannot check the reachability of %r: %s", remote, e)
            return False
        self._pings[remote] = _Ping(ping, endpoint, retransmit)
        return True

    def _challenge(self, endpoint: UDPEndpoint, request: Message, now: float) -> None:
        """Answer with 4.01 + Echo; never as a retransmitted CON, whatever became of the request."""
        if request.opt.observe == OBSERVE_REGISTER:
            # A registration answered with an error is no registration (RFC 7641 §4.1).
            self._drop_observer(self.observers.deregister(request.remote, request.token))
        response = self.echo.challenge(request, now)
        if response.wire_size + len(request.token) > AMPLIFICATION_FACTOR * request.wire_size:
            response = Message(code=Code.UNAUTHORIZED)  # not even the challenge fits: nothing but the code
        if request.type is Type.CON and not endpoint.layer.unanswered(request):
            # Already acknowledged (a slow handler): a separate CON would be retransmitted to an address
            # that may never acknowledge it; a NON goes once.
            try:
                endpoint.layer.respond(request, response, now, separate_type=Type.NON)
            except error.MessageIdsExhausted as e:
                log.warning("dropping a separate response: %s", e)
            return
        self._send_response(endpoint, request, response, now)

    def _expire_held(self, now: float) -> None:
        """Challenge the requests whose ping was not answered within ``reachability_wait``."""
        order = self._held_order
        touched: set[UDPEndpoint] = set()
        while order and (order[0].done or order[0].deadline <= now):
            held = order.popleft()
            if held.done:
                continue
            held.done = True
            waiting = self._held.get(held.request.remote)
            if waiting is not None:
                waiting.remove(held)
                if not waiting:
                    del self._held[held.request.remote]
            if not held.endpoint.closed:
                self._challenge(held.endpoint, held.request, now)
                touched.add(held.endpoint)
        for endpoint in touched:
            endpoint.flush()

    def _reachability_answered(self, remote: Remote, now: float) -> None:
        """The peer answered the ping: it is verified."""
        del self._pings[remote]
        self.echo.mark_verified(remote, now)
        self._release(remote, now)

    def _release(self, remote: Remote, now: float) -> None:
        """A verified peer gets what waited for it: held responses, owed notifications."""
        touched: set[UDPEndpoint] = set()
        for held in self._held.pop(remote, ()):
            held.done = True
            if not held.endpoint.closed:
                self._send_response(held.endpoint, held.request, held.response, now)
                touched.add(held.endpoint)
        for endpoint in touched:
            endpoint.flush()
        waiting = self._held_observers.pop(remote, None)
        if waiting:
            for observer in waiting:
                self.observers.reschedule(observer, now)
            self.wake()

    def _reachability_failed(self, remote: Remote, now: float | None) -> None:
        """No answer to the ping: the source address was not the requester's, or it is gone (``now`` is
        None for an ICMP error: no second try). Observers owed notifications get one retransmitted ping."""
        ping = self._pings.pop(remote, None)
        touched: set[UDPEndpoint] = set()
        for held in self._held.pop(remote, ()):
            # The ping failed before its wait was over (a short ACK_TIMEOUT): challenge now instead.
            held.done = True
            if now is not None and not held.endpoint.closed:
                self._challenge(held.endpoint, held.request, now)
                touched.add(held.endpoint)
        for endpoint in touched:
            endpoint.flush()
        waiting = self._held_observers.get(remote)
        if not waiting:
            return
        if (ping is not None and not ping.retransmitted and now is not None
                and self._ping(ping.endpoint, remote, now, retransmit=True)):
            return
        del self._held_observers[remote]
        for observer in waiting:
            self._drop_observer(observer if self.observers.remove(observer) else None)

    # --- observation ---------------------------------------------------------------------------------

    def _observe_request(self, endpoint: UDPEndpoint, request: Message, resource: ObservableResource,
                         response: Message, now: float) -> None:
        """Register or deregister the client for a GET/FETCH carrying Observe (RFC 7641 §4.1, §3.6)."""
        if request.opt.observe != OBSERVE_REGISTER or not response.code.is_successful():
            self._drop_observer(self.observers.deregister(request.remote, request.token))
            return
        observer = self.observers.register(resource, request, now)
        if observer is None:
            # Refused (limits): the response goes without Observe, which §4.1 allows.
            self.limits.hit("max_observers", now, "%d observers; registration from %r refused",
                            len(self.observers), request.remote)
            return
        key = (request.remote, request.token)
        self._observer_endpoint[key] = endpoint
        resource._servers.add(self)
        response.opt.observe = self.observers.next_sequence(observer, now)
        self._formats[key] = response.opt.content_format
        observation = getattr(resource, "observation", None)
        if observation is not None and key not in self._observation_scopes and self.task_group is not None:
            scope = anyio.CancelScope()
            self._observation_scopes[key] = scope
            self.task_group.start_soon(self._run_observation, observation, request, scope, key,
                                       name="coapio observation")

    async def _run_observation(self, observation: Callable[[Message], Awaitable[None]], request: Message,
                               scope: anyio.CancelScope, key: tuple[Remote, bytes]) -> None:
        try:
            with scope:
                await observation(request)
        except Exception:
            log.exception("observation handler %r failed", observation)
        finally:
            if self._observation_scopes.get(key) is scope:
                del self._observation_scopes[key]

    def _forget_observer_on_plain_request(self, request: Message) -> None:
        """A request without Observe on an observation's token ends it (RFC 7641 §3.6, §4.1)."""
        if request.opt.observe is None and self.observers:
            self._drop_observer(self.observers.deregister(request.remote, request.token))

    def _drop_observer(self, observer: Observer[ObservableResource] | None) -> None:
        """Loss of interest: forget the observer and cancel its observation's scope."""
        if observer is None:
            return
        key = (observer.remote, observer.token)
        self._observer_endpoint.pop(key, None)
        self._formats.pop(key, None)
        scope = self._observation_scopes.pop(key, None)
        if scope is not None:
            scope.cancel()
        if not self.observers.count(observer.resource):
            observer.resource._servers.discard(self)

    def notify(self, resource: ObservableResource, confirmable: bool) -> None:
        """Mark the resource's observers owed a notification and wake the socket tasks to send them."""
        self.observers.notify(resource, anyio.current_time(), confirmable=confirmable)
        self.wake()

    def send_due(self, now: float) -> None:
        """Render and send the notifications due now, at most ``_FANOUT_CHUNK`` per call.

        A fan-out to thousands of observers is sent in chunks between which the socket task drains its
        socket: sent in one burst, the acknowledgements of CON notifications would overflow the
        socket's receive buffer and be dropped by the kernel, forcing retransmissions.
        """
        due = self._due
        due.extend(self.observers.due(now))
        touched: set[UDPEndpoint] = set()
        for _ in range(min(len(due), _FANOUT_CHUNK)):
            observer = due.popleft()
            endpoint = self._observer_endpoint.get((observer.remote, observer.token))
            if endpoint is None or endpoint.closed:
                self._drop_observer(observer if self.observers.remove(observer) else None)
                continue
            if self.tuning.echo_amplification_check and not self.echo.address_verified(observer.remote, now):
                # Every notification exceeds what one registration allows towards an address that has
                # not shown it is the observer's (§2.4): it waits for the reachability check, still owed.
                if self._ping(endpoint, observer.remote, now, retransmit=True):
                    self._held_observers.setdefault(observer.remote, set()).add(observer)
                else:
                    self._drop_observer(observer if self.observers.remove(observer) else None)
                touched.add(endpoint)
                continue
            resource = observer.resource
            handler = resource.handler(observer.request.code)
            if handler is None or handler.is_async:
                # Async renderers cannot run inline; they render in a task of their own.
                if handler is not None and self.task_group is not None:
                    self.task_group.start_soon(self._notify_async, observer, handler, name="coapio notify")
                continue
            response = self._render_sync(handler, observer.request)
            self._send_notification(endpoint, observer, response, now)
            touched.add(endpoint)
        for endpoint in touched:
            endpoint.flush()

    async def _notify_async(self, observer: Observer[ObservableResource], handler: Handler) -> None:
        function: Callable[[Message], Awaitable[Message]] = handler.function  # type: ignore[assignment]
        try:
            response = make_response(observer.request, await function(observer.request))
        except Exception as e:
            response = _failure_response(handler, observer.request, e)
        endpoint = self._observer_endpoint.get((observer.remote, observer.token))
        if endpoint is not None and not endpoint.closed:
            self._send_notification(endpoint, observer, response, anyio.current_time())
            endpoint.flush()

    def _send_notification(self, endpoint: UDPEndpoint, observer: Observer[ObservableResource],
                           response: Message, now: float) -> None:
        if (response.code.is_successful()
                and response.opt.content_format != self._formats.get((observer.remote, observer.token))):
            # RFC 7641 §4.2: notifications keep the first response's content format; a server that
            # cannot says 4.06 and ends the observation.
            response = Message(code=Code.NOT_ACCEPTABLE, payload=b"the content format changed")
        try:
            # A notification larger than a block carries its first block (RFC 7959 §2.6), in the size the
            # observer asked for at registration. Segment first: the table tracks what is really sent.
            if len(response.payload) > self._block_size or OptionNumber.BLOCK2 in observer.request.opt:
                response = segment_response(observer.request, response, max_szx=self.tuning.block_szx)
        except error.RenderableError as e:
            response = error_response(e)
        message = self.observers.prepare_notification(observer, response, now)
        if message is None:
            return
        if not observer.active:
            self._drop_observer(observer)  # an error response ended the observation (RFC 7641 §4.2)
        try:
            endpoint.layer.send(message, now)
        except (error.CoapError, ValueError) as e:
            log.warning("cannot notify %r: %s", observer.remote, e)

    def _send_error_notification(
        self, observer: Observer[ObservableResource], code: Code, diagnostic: bytes, now: float
    ) -> None:
        endpoint = self._observer_endpoint.get((observer.remote, observer.token))
        if endpoint is None or endpoint.closed:
            self._drop_observer(observer if self.observers.remove(observer) else None)
            return
        observer.in_flight = None  # the end of the observation goes out even behind an unacknowledged CON
        self._send_notification(endpoint, observer, Message(code=code, payload=diagnostic), now)
        if observer.active:  # pacing held it back: end the observation all the same
            self._drop_observer(observer if self.observers.remove(observer) else None)

    def on_network_error(self, remote: Remote) -> None:
        """The peer is unreachable (ICMP): its observations end now, not after a CON times out."""
        if remote in self._pings:
            self._pings.pop(remote)
            self._reachability_failed(remote, None)
        for observer in self.observers.remove_remote(remote):
            self._drop_observer(observer)

    def on_acknowledged(self, message: Message, now: float) -> None:
        # An observer owed newer state becomes due again; this socket task sends it after the drain.
        if message.opt.observe is not None:
            self.observers.on_acknowledged(message, now)

    def on_reset(self, message: Message) -> None:
        ping = self._pings.get(message.remote)
        if ping is not None and ping.message is message:
            self._reachability_answered(message.remote, anyio.current_time())
            return
        if message.opt.observe is not None or self.observers.get(message.remote, message.token):
            self._drop_observer(self.observers.on_reset(message))

    def on_timeout(self, message: Message) -> None:
        ping = self._pings.get(message.remote)
        if ping is not None and ping.message is message:
            self._reachability_failed(message.remote, anyio.current_time())
            return
        if message.opt.observe is not None:
            self._drop_observer(self.observers.on_timeout(message))

    def next_deadline(self) -> float | None:
        """When the server wants to run again: notifications due or owed (pacing), reassembly expiry."""
        if self._due:
            return -math.inf  # more of a fan-out to send, right after the next drain
        if not self.observers and not self.reassembler and not self._held_order:
            return None  # the common case on a busy server: asked on every wake-up, answered cheaply
        deadlines = [d for d in (self.observers.next_deadline(), self.reassembler.next_deadline(),
                                 self._held_order[0].deadline if self._held_order else None) if d]
        return min(deadlines) if deadlines else None

    def on_timer(self, now: float) -> None:
        if not self._due and not self.observers and not self.reassembler and not self._held_order:
            return
        if self._held_order:
            self._expire_held(now)
        self.reassembler.expire(now)
        if self._due or self.observers.next_deadline() is not None:
            self.send_due(now)

    @property
    def live_handlers(self) -> int:
        return len(self.incoming) + len(self._observation_scopes)

