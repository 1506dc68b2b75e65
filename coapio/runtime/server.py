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

from .. import error
from ..protocol._limits import LimitLog
from ..protocol.blockwise import Block1Reassembler, Complete, Continue, segment_response
from ..protocol.codes import Code, Type
from ..protocol.echo import EchoGuard
from ..protocol.message import Message, Remote
from ..protocol.observe import OBSERVE_REGISTER, Observer, ObserverTable
from ..protocol.options import OptionNumber
from ..protocol.tuning import TransportTuning
from ..transports.udp import UDPEndpoint
from .resource import Handler, Resource, Site, _rest_of_path, error_response, make_response

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
                self._run_async, endpoint, handler, request, rest, complete, remote, name="coapio handler"
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
                         rest: tuple[str, ...], complete: Complete | None, remote: Remote) -> None:
        """An async renderer in its own cancel scope; loss of interest cancels it and sends nothing.

        ``remote`` is the client the slot was counted for (the handler may change ``request.remote``).
        """
        try:
            await self._run_async_counted(endpoint, handler, request, rest, complete)
        finally:
            self._running -= 1
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
            block2 = request.opt.block2
            size = self._block_size if block2 is None else min(block2.size, self._block_size)
            if response.code.is_successful() and len(response.payload) > size:
                # Only a response with a Block2 phase to come is kept (and takes a transfer slot).
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
                and self.echo.amplification_risk(request, response, now)):
            self._challenge(endpoint, request, now)
            return
        self._send_response(endpoint, request, response, now)

    def _send_response(self, endpoint: UDPEndpoint, request: Message, response: Message, now: float) -> None:
        separate_type = None
        if (self.tuning.echo_amplification_check and request.type is Type.CON
                and not endpoint.layer.unanswered(request)
                and not self.echo.address_verified(request.remote, now)):
            # Already acknowledged (a slow handler): a separate CON would be retransmitted to an address
            # that may never acknowledge it, multiplying what it receives; a NON goes once.
            separate_type = Type.NON
        try:
            endpoint.layer.respond(request, response, now, separate_type=separate_type)
        except error.MessageIdsExhausted as e:
            log.warning("dropping a separate response: %s", e)
        except (ValueError, TypeError, OverflowError):
            # The renderer built a message that cannot go on the wire; never let that stop the endpoint.
            log.exception("cannot encode the response to %r", request)
            endpoint.layer.respond(request, Message(code=Code.INTERNAL_SERVER_ERROR), now)

    # --- amplification mitigation (RFC 9175 §2.4) ----------------------------------------------------
    #
    # With ``echo_amplification_check`` a response more than three times its request's size, and any
    # Observe registration (its notifications would follow without further requests), goes only to an
    # address that has returned an Echo value of ours: the proof RFC 9175 §2.4 recommends, because only
    # the requester can put it in a request. Until then the request is answered 4.01 with an Echo value
    # (the challenge fits the allowance; a request too small even for that gets a bare 4.01). A Reset to
    # a CoAP ping would not do: any CoAP endpoint resets pings, so a spoofer could aim a server at one.

    def _challenge(self, endpoint: UDPEndpoint, request: Message, now: float) -> None:
        """Answer with 4.01 + Echo; never as a retransmitted CON, whatever became of the request."""
        if request.opt.observe == OBSERVE_REGISTER:
            # A registration answered with an error is no registration (RFC 7641 §4.1).
            self._drop_observer(self.observers.deregister(request.remote, request.token))
        self._send_response(endpoint, request, self.echo.amplification_challenge(request, now), now)

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
        for observer in self.observers.remove_remote(remote):
            self._drop_observer(observer)

    def on_acknowledged(self, message: Message, now: float) -> None:
        # An observer owed newer state becomes due again; this socket task sends it after the drain.
        if message.opt.observe is not None:
            self.observers.on_acknowledged(message, now)

    def on_reset(self, message: Message) -> None:
        if message.opt.observe is not None or self.observers.get(message.remote, message.token):
            self._drop_observer(self.observers.on_reset(message))

    def on_timeout(self, message: Message) -> None:
        if message.opt.observe is not None:
            self._drop_observer(self.observers.on_timeout(message))

    def next_deadline(self) -> float | None:
        """When the server wants to run again: notifications due or owed (pacing), reassembly expiry."""
        if self._due:
            return -math.inf  # more of a fan-out to send, right after the next drain
        if not self.observers and not self.reassembler:
            return None  # the common case on a busy server: asked on every wake-up, answered cheaply
        deadlines = [d for d in (self.observers.next_deadline(), self.reassembler.next_deadline()) if d]
        return min(deadlines) if deadlines else None

    def on_timer(self, now: float) -> None:
        if not self._due and not self.observers and not self.reassembler:
            return
        self.reassembler.expire(now)
        if self._due or self.observers.next_deadline() is not None:
            self.send_due(now)

    @property
    def live_handlers(self) -> int:
        return len(self.incoming) + len(self._observation_scopes)

