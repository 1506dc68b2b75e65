"""The server side of a Context: routes requests to resources and turns renderers' results into
responses, with block-wise transfer (RFC 7959) and observation (RFC 7641) around them.

Plain ``def`` renderers run inline on the transport's socket task (the fast path: no Pipe, no task);
``async def`` renderers and ``render_to_pipe`` get a :class:`~coapio.runtime.pipe.ServerPipe` and a task
under its producer scope, which the client's loss of interest cancels. Protocol rules live in the sans-IO
modules (:mod:`coapio.protocol.blockwise`, :mod:`coapio.protocol.observe`); this module only drives them,
through the :class:`~coapio.transports.base.Transport` interface.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from .. import error
from ..protocol._limits import LimitLog
from ..protocol.blockwise import Block1Reassembler, Complete, Continue, segment_response
from ..protocol.codes import Code, Type
from ..protocol.echo import AMPLIFICATION_FACTOR, EchoGuard
from ..protocol.message import Message
from ..protocol.observe import OBSERVE_REGISTER, Observer, ObserverTable
from ..protocol.options import OptionNumber
from ..protocol.peer import Peer
from ..protocol.tuning import TransportTuning
from ..transports.base import Transport
from .pipe import ServerPipe
from .resource import Handler, Resource, Site, _rest_of_path, error_response, make_response
from .tokens import TokenManager

if TYPE_CHECKING:
    from ..protocol.oscore import ContextLookup

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
_OSCORE = int(OptionNumber.OSCORE)
#: RFC 7967 §2.1: the No-Response bit that suppresses each response class.
_NO_RESPONSE_BITS = {2: 0x02, 4: 0x08, 5: 0x10}


def _client_of(peer: Peer) -> Peer:
    """Who the per-client bounds count: the peer itself over UDP, the host over a connection (a client
    opening more connections must not get more handlers)."""
    if peer.connection is None:
        return peer
    return Peer(peer.scheme, (peer.host,))


#: :func:`coapio.runtime.oscore.serve_protected`, imported on the first protected request (it needs the
#: oscore modules, which a server without OSCORE never loads).
_serve_protected: Callable[..., None] | None = None


def _load_oscore() -> Callable[..., None]:
    global _serve_protected
    from .oscore import serve_protected

    _serve_protected = serve_protected
    return serve_protected


def _authorized(request: Message, required: bool | Collection[str]) -> bool:
    """Whether ``request`` was authenticated as a resource's ``requires_security`` asks."""
    security = request.security
    if security is None:
        return False
    return required is True or security.identity in required  # type: ignore[operator]


def _failure_response(handler: Handler, request: Message, exc: Exception) -> Message:
    """What a renderer's exception becomes: a library error its code, anything else a logged 5.00."""
    if isinstance(exc, error.RenderableError):
        return error_response(exc)
    log.error("renderer %r failed on %r", handler.function, request, exc_info=exc)
    return Message(code=Code.INTERNAL_SERVER_ERROR)


class ObservableResource(Resource):
    """A resource clients can observe (RFC 7641): call :meth:`notify` when its state changes.

    Each observer gets its own rendering of ``render_get`` for every notification (so Accept and query
    options are honoured per observer), inline on the transport's task: a fan-out to thousands of
    observers costs no task each. Notifications are NON, with a CON at least every 24 hours and whenever
    ``notify(confirmable=True)`` asks. A subclass may define ``async def observation(self, request)``: it
    runs for as long as that one observer stays registered, in the producer scope of the observer's
    :class:`~coapio.runtime.pipe.ServerPipe`, which the observer's loss of interest (Reset,
    deregistration, an unacknowledged CON, an ICMP error, the context's exit) cancels — its ``finally``
    runs. For responses that are not re-renderings of one state, implement ``render_to_pipe`` instead.
    """

    link_attributes: Any = {"obs": None}
    #: Per-observer task, e.g. to subscribe to a data source while someone watches (None: no task).
    observation: Callable[[Message], Awaitable[None]] | None = None

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


class _Exchange(ServerPipe):
    """A ServerPipe and what the server needs to answer through it."""

    __slots__ = ("complete", "resource", "transport")

    def __init__(self, server: ServerDispatch, transport: Transport, request: Message, resource: Resource,
                 complete: Complete | None):
        super().__init__(request, server._pipe_response)
        self.transport = transport
        self.resource = resource
        self.complete = complete


class ServerDispatch:
    """Serves one Context's site; created by the Context, fed by its endpoints' socket tasks."""

    def __init__(self, site: Site | None, tuning: TransportTuning, tokens: TokenManager,
                 oscore: ContextLookup | None = None):
        self.site = site
        #: The OSCORE security contexts this server accepts (None: protected requests get 4.02).
        self.oscore = oscore
        self.tuning = tuning
        self.task_group: anyio.abc.TaskGroup | None = None
        self._tokens = tokens
        self._incoming = tokens._incoming  # read on every request: token reuse ends an older exchange
        # Async handlers started and not yet finished, in total and per client (the handler bounds).
        self._running = 0
        self._running_per_peer: dict[Peer, int] = {}
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
        self.observers: ObserverTable[Resource] = ObserverTable(
            max_total=tuning.max_observers, max_per_resource=tuning.max_observers_per_resource
        )
        self.echo = EchoGuard(freshness=tuning.echo_freshness)
        self._block_size = 1 << (tuning.block_szx + 4)
        self._observer_transport: dict[tuple[Peer, bytes], Transport] = {}
        # Each observation's content format, fixed by its first response (RFC 7641 §4.2).
        self._formats: dict[tuple[Peer, bytes], int | None] = {}
        # Observers with a Pipe: render_to_pipe observations, and ObservableResource.observation() tasks.
        self._observer_pipes: dict[tuple[Peer, bytes], _Exchange] = {}
        # render_to_pipe notifications that pacing held back (sent when the observer is due again).
        self._held: dict[tuple[Peer, bytes], Message] = {}
        # Notifications owed and due, sent by the socket tasks a chunk per wake-up (see send_due).
        self._due: deque[Observer[Resource]] = deque()
        #: Set by the Context: wakes the socket tasks so that they send what is due.
        self.wake: Callable[[], None] = lambda: None

    def close(self) -> None:
        """Detach from observable resources and end every observer's Pipe (the context is ending)."""
        for observer in self.observers.all():
            if isinstance(observer.resource, ObservableResource):
                observer.resource._servers.discard(self)
            self.observers.remove(observer)
        for pipe in list(self._observer_pipes.values()):
            pipe.close()
        self._observer_pipes.clear()

    # --- requests ------------------------------------------------------------------------------------

    def serve(self, transport: Transport, request: Message, now: float) -> None:
        """Route a request: a plain renderer answers inline, an async one or ``render_to_pipe`` gets a
        ServerPipe and a task. Called by the transports on their tasks (``request_received``)."""
        try:
            self._serve(transport, request, now)
        except Exception:
            # A bug of ours must cost one request, not the socket task and every exchange on it.
            log.exception("internal error serving %r", request)
            if not transport.answered(request):
                transport.respond(request, Message(code=Code.INTERNAL_SERVER_ERROR), now)

    def _serve(self, endpoint: Transport, request: Message, now: float) -> None:
        opt = request.opt
        items = opt._items
        # Options are sorted: only a request whose first option is at most OSCORE's number may carry it.
        if items and items[0][0] <= _OSCORE and _OSCORE in opt:
            serve_protected = _serve_protected or _load_oscore()
            outer: Complete | None = None
            if self.oscore is not None and OptionNumber.BLOCK1 in opt:
                # Outer block-wise (RFC 8613 §4.1.3.4.2): a proxy cut the protected message in pieces;
                # they are put together below OSCORE, and only the whole is unprotected.
                try:
                    result = self.reassembler.feed(request, now)
                except error.RenderableError as e:
                    return self._respond(endpoint, request, error_response(e), now)
                if isinstance(result, Continue):
                    return self._respond(endpoint, request, result.response, now)
                outer, request = result, result.request
            # Unprotected before anything else reads the request; served again as its plaintext.
            return serve_protected(self.oscore, endpoint, request, now, self.echo, self._serve,
                                   self._respond, outer)
        if self._incoming:
            self._tokens.incoming_request(request)
        site = self.site
        if site is None:
            return self._respond(endpoint, request, Message(code=Code.NOT_FOUND), now)
        complete: Complete | None = None
        # Options are sorted: a request whose highest option is below Block2 (the lowest special
        # number) is the common case and skips the special cases without looking at each option.
        if items and items[-1][0] >= _LOWEST_SPECIAL and any(
            number in _SPECIAL_REQUEST_OPTIONS for number, _ in items
        ):
            if OptionNumber.PROXY_URI in opt or OptionNumber.PROXY_SCHEME in opt:
                return self._respond(endpoint, request, Message(code=Code.PROXYING_NOT_SUPPORTED), now)
            if OptionNumber.BLOCK1 in opt:
                block1 = opt.block1
                if (block1 is not None and not block1.more and request.code not in _SAFE_METHODS
                        and self._requires_fresh(site, items) and not self.echo.is_fresh(request, now)):
                    # Challenge the last block before it completes the transfer (RFC 9175 §2.3): the
                    # client repeats that block with the Echo value, and the transfer completes then.
                    return self._respond(endpoint, request, self.echo.challenge(request, now), now)
                try:
                    # BERT (RFC 8323 §6): SZX 7 is valid only from a connection whose CSMs announced it.
                    bert = endpoint.bert_message_size(request.remote) is not None
                    result = self.reassembler.feed(request, now, bert=bert)
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
                        return self._respond(endpoint, request, cached, now, full=True, cached=True)
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
        if resource.requires_security and not _authorized(request, resource.requires_security):
            refusal = Message(code=Code.UNAUTHORIZED,
                              payload=b"not authorized" if request.security else b"needs authentication")
            if refusal.wire_size + len(request.token) > AMPLIFICATION_FACTOR * request.wire_size:
                refusal.payload = b""  # never more than three times what an unverified source sent
            return self._respond(endpoint, request, refusal, now)
        if handler.is_async:
            assert self.task_group is not None
            assert isinstance(request.remote, Peer)
            remote = _client_of(request.remote)
            per_peer = self._running_per_peer.get(remote, 0)
            if self._running >= self.tuning.max_handlers or per_peer >= self.tuning.max_handlers_per_peer:
                return self._overloaded(endpoint, request, now, per_peer)
            pipe = _Exchange(self, endpoint, request, resource, complete)
            self._tokens.add_incoming(pipe)
            self._start(pipe, handler, rest, remote)
            return None
        reset = _rest_of_path.set(rest) if rest else None
        try:
            response = self._render_sync(handler, request)
        finally:
            if reset is not None:
                _rest_of_path.reset(reset)
        self._finish(endpoint, request, resource, response, complete, now)
        return None

    @staticmethod
    def _requires_fresh(site: Site, items: list[tuple[int, bytes]]) -> bool:
        """Whether the resource a request's Uri-Path names wants fresh requests (``requires_fresh``)."""
        found = site.resolve(tuple([value.decode("utf-8", "replace") for number, value in items
                                    if number == _URI_PATH]))
        return found is not None and found[0].requires_fresh

    def _overloaded(self, endpoint: Transport, request: Message, now: float, per_peer: int) -> None:
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
            return make_response(request, handler.function(request))  # type: ignore[call-arg]
        except Exception as e:
            return _failure_response(handler, request, e)

    def _start(self, pipe: _Exchange, handler: Handler | None, rest: tuple[str, ...], remote: Peer,
               observation: Callable[[Message], Awaitable[None]] | None = None) -> None:
        assert self.task_group is not None
        self._running += 1
        self._running_per_peer[remote] = self._running_per_peer.get(remote, 0) + 1
        self.task_group.start_soon(self._run_pipe, pipe, handler, rest, remote, observation,
                                   name="coapio handler")

    async def _run_pipe(self, pipe: _Exchange, handler: Handler | None, rest: tuple[str, ...], remote: Peer,
                        observation: Callable[[Message], Awaitable[None]] | None) -> None:
        """A producer in its Pipe's scope: an async renderer, ``render_to_pipe``, or an observation task.

        ``remote`` is the client the slot was counted for (the handler may change ``request.remote``).
        """
        if rest:
            _rest_of_path.set(rest)
        request = pipe.request
        try:
            with pipe.producer_scope:
                try:
                    if observation is not None:
                        await observation(request)
                    elif handler is not None and handler.streams:
                        await handler.function(request, pipe)  # type: ignore[call-arg, misc]
                    elif handler is not None:
                        function: Callable[[Message], Awaitable[Message]] = handler.function  # type: ignore[assignment]
                        pipe.add_response(await function(request))
                except Exception as e:
                    if observation is not None:
                        log.exception("observation handler %r failed", observation)
                    elif pipe.interested and handler is not None:
                        pipe.add_response(_failure_response(handler, request, e))
                if handler is not None and pipe.interested and not pipe.observing:
                    # A producer that returned without a final response: the client must not wait for one.
                    log.error("%r returned without a response to %r", handler.function, request)
                    pipe.add_response(Message(code=Code.INTERNAL_SERVER_ERROR, payload=b"no response"))
        finally:
            self._running -= 1
            left = self._running_per_peer[remote] - 1
            if left:
                self._running_per_peer[remote] = left
            else:
                del self._running_per_peer[remote]
            self._tokens.remove_incoming(pipe)
            if handler is not None and pipe.observing and pipe.interested:
                # The producer is gone while the client observes: nothing more will come, so forget the
                # observer (the client re-registers after Max-Age and meets a new producer).
                observer = self.observers.get(request.remote, request.token)
                self._drop_observer(observer if observer is not None and self.observers.remove(observer)
                                    else None)

    def _pipe_response(self, pipe: ServerPipe, message: Message, is_last: bool) -> None:
        """What a ServerPipe's producer sends: the response, or a notification of its observation."""
        assert isinstance(pipe, _Exchange)
        request = pipe.request
        transport = pipe.transport
        if transport.closed:
            pipe.close()
            return
        now = anyio.current_time()
        try:
            response = make_response(request, message)
        except TypeError as e:
            log.error("%r sent a bad response: %s", pipe.resource, e)
            response = Message(code=Code.INTERNAL_SERVER_ERROR)
            is_last = True
        if not pipe.responded:
            pipe.responded = True
            observe = (not is_last and request.opt.observe == OBSERVE_REGISTER
                       and request.code in _SAFE_METHODS and response.code.is_successful())
            self._finish(transport, request, pipe.resource, response, pipe.complete, now,
                         observe=observe, pipe=pipe)
            if not pipe.observing:
                # No observation (none asked, or refused): there can be no second response.
                if is_last:
                    pipe.finish()
                else:
                    pipe.close()
        else:
            observer = self.observers.get(request.remote, request.token)
            if observer is None:
                pipe.close()
                return
            if is_last:
                pipe.finish()  # the producer ended it: not loss of interest, so its scope is not cancelled
                self._observer_pipes.pop((observer.remote, observer.token), None)
                self._end_observation(observer, response, now)
            else:
                self._send_notification(transport, observer, response, now)
                if observer.pending:  # pacing held it back: the newest one goes when the observer is due
                    self._held[(observer.remote, observer.token)] = response

    def _finish(self, endpoint: Transport, request: Message, resource: Resource, response: Message,
                complete: Complete | None, now: float, *, observe: bool = False,
                pipe: _Exchange | None = None) -> None:
        """Observe registration, Block1 acknowledgement and Block2 segmentation, then send."""
        if pipe is not None:
            if observe or request.opt.observe is not None:
                self._observe_request(endpoint, request, resource, response, now,
                                      pipe=pipe if observe else None)
        elif isinstance(resource, ObservableResource):
            if request.opt.observe is not None:
                self._observe_request(endpoint, request, resource, response, now)
            elif request.code == Code.DELETE and response.code == Code.DELETED:
                # RFC 7641 §3.2/§4.2: the resource is gone; every observation ends with 4.04.
                for observer in self.observers.observers(resource):
                    self._send_error_notification(observer, Code.NOT_FOUND, b"the resource was deleted", now)
        if complete is not None:
            block2 = request.opt.block2
            size = self._block_size if block2 is None else min(block2.size, self._block_size)
            # Only a response that may have a Block2 phase to come is kept (and takes a transfer slot);
            # _respond forgets it at once when it went in one message after all (BERT).
            cached = (response.code.is_successful() and len(response.payload) > size
                      and self.reassembler.remember_response(request, response, now))
            self._respond(endpoint, request, response, now, full=True, complete=complete, cached=cached)
        else:
            self._respond(endpoint, request, response, now, full=True)

    def _respond(self, endpoint: Transport, request: Message, response: Message, now: float, *,
                 full: bool = False, complete: Complete | None = None, cached: bool = False) -> None:
        """Segment (``full``: the whole rendered response), acknowledge Block1, and send. ``cached``: the
        response is kept for its Block2 phase (RFC 7959 §2.7) and is forgotten once its last block goes."""
        items = request.opt._items
        # Block2 and No-Response are the highest-numbered request options these checks read.
        plain = not items or items[-1][0] < _LOWEST_SPECIAL
        try:
            if full and (len(response.payload) > self._block_size
                         or (not plain and OptionNumber.BLOCK2 in request.opt)):
                response = segment_response(request, response, max_szx=self.tuning.block_szx,
                                            bert=endpoint.bert_message_size(request.remote))
            if complete is not None:
                response = complete.acknowledge(response)
        except error.RenderableError as e:
            response = error_response(e)
        if cached:
            block2 = response.opt.block2
            if block2 is None or not block2.more:
                self.reassembler.forget_response(request)  # its last block goes out now
        raw = None if plain else request.opt.get(OptionNumber.NO_RESPONSE)
        if raw and int.from_bytes(raw, "big") & _NO_RESPONSE_BITS.get(response.code >> 5, 0):
            # RFC 7967: the client wants no response of this class; a CON is still acknowledged.
            endpoint.respond(request, None, now)
            return
        if (self.tuning.echo_amplification_check and not self.echo.address_verified(request.remote, now)
                and self.echo.amplification_risk(request, response, now)):
            self._challenge(endpoint, request, now)
            return
        self._send_response(endpoint, request, response, now)

    def _send_response(self, endpoint: Transport, request: Message, response: Message, now: float) -> None:
        # Already acknowledged (a slow handler): a separate CON would be retransmitted to an address that
        # may never acknowledge it, multiplying what it receives; the transport sends it unreliably.
        unverified = (self.tuning.echo_amplification_check
                      and not self.echo.address_verified(request.remote, now))
        try:
            endpoint.respond(request, response, now, unverified=unverified)
        except error.MessageIdsExhausted as e:
            log.warning("dropping a separate response: %s", e)
        except (ValueError, TypeError, OverflowError):
            # The renderer built a message that cannot go on the wire; never let that stop the endpoint.
            log.exception("cannot encode the response to %r", request)
            endpoint.respond(request, Message(code=Code.INTERNAL_SERVER_ERROR), now)

    # --- amplification mitigation (RFC 9175 §2.4) ----------------------------------------------------
    #
    # With ``echo_amplification_check`` a response more than three times its request's size, and any
    # Observe registration (its notifications would follow without further requests), goes only to an
    # address that has returned an Echo value of ours: the proof RFC 9175 §2.4 recommends, because only
    # the requester can put it in a request. Until then the request is answered 4.01 with an Echo value
    # (the challenge fits the allowance; a request too small even for that gets a bare 4.01). A Reset to
    # a CoAP ping would not do: any CoAP endpoint resets pings, so a spoofer could aim a server at one.

    def _challenge(self, endpoint: Transport, request: Message, now: float) -> None:
        """Answer with 4.01 + Echo; never as a retransmitted CON, whatever became of the request."""
        if request.opt.observe == OBSERVE_REGISTER:
            # A registration answered with an error is no registration (RFC 7641 §4.1).
            self._drop_observer(self.observers.deregister(request.remote, request.token))
        self._send_response(endpoint, request, self.echo.amplification_challenge(request, now), now)

    # --- observation ---------------------------------------------------------------------------------

    def _observe_request(self, endpoint: Transport, request: Message, resource: Resource,
                         response: Message, now: float, *, pipe: _Exchange | None = None) -> None:
        """Register or deregister the client for a GET/FETCH carrying Observe (RFC 7641 §4.1, §3.6)."""
        if request.opt.observe != OBSERVE_REGISTER or not response.code.is_successful() or (
                pipe is None and not isinstance(resource, ObservableResource)):
            self._drop_observer(self.observers.deregister(request.remote, request.token))
            return
        observer = self.observers.register(resource, request, now)
        if observer is None:
            # Refused (limits): the response goes without Observe, which §4.1 allows.
            self.limits.hit("max_observers", now, "%d observers; registration from %r refused",
                            len(self.observers), request.remote)
            return
        remote = request.remote
        assert isinstance(remote, Peer)
        key = (remote, request.token)
        self._observer_transport[key] = endpoint
        response.opt.observe = self.observers.next_sequence(observer, now)
        self._formats[key] = response.opt.content_format
        if pipe is not None:
            older = self._observer_pipes.get(key)
            if older is not None and older is not pipe:
                older.close()  # a re-registration with the same token: the new request's producer takes over
            pipe.observing = True
            self._observer_pipes[key] = pipe
        elif isinstance(resource, ObservableResource):
            resource._servers.add(self)
            observation = resource.observation
            if observation is not None and key not in self._observer_pipes and self.task_group is not None:
                hook = _Exchange(self, endpoint, request, resource, None)
                hook.responded = hook.observing = True
                self._observer_pipes[key] = hook
                self._start(hook, None, (), _client_of(remote), observation)

    def _forget_observer_on_plain_request(self, request: Message) -> None:
        """A request without Observe on an observation's token ends it (RFC 7641 §3.6, §4.1)."""
        if request.opt.observe is None and self.observers:
            self._drop_observer(self.observers.deregister(request.remote, request.token))

    def _drop_observer(self, observer: Observer[Resource] | None) -> None:
        """Loss of interest: forget the observer and cancel its Pipe's producer scope."""
        if observer is None:
            return
        key = (observer.remote, observer.token)
        self._observer_transport.pop(key, None)
        self._formats.pop(key, None)
        self._held.pop(key, None)
        pipe = self._observer_pipes.pop(key, None)
        if pipe is not None:
            pipe.close()
        resource = observer.resource
        if isinstance(resource, ObservableResource) and not self.observers.count(resource):
            resource._servers.discard(self)

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
        for _ in range(min(len(due), _FANOUT_CHUNK)):
            observer = due.popleft()
            key = (observer.remote, observer.token)
            endpoint = self._observer_transport.get(key)
            if endpoint is None or endpoint.closed:
                self._drop_observer(observer if self.observers.remove(observer) else None)
                continue
            if self._held:
                held = self._held.pop(key, None)
                if held is not None:
                    self._send_notification(endpoint, observer, held, now)
                    continue
            resource = observer.resource
            handler = resource.handler(observer.request.code)
            if handler is None or handler.streams:
                continue  # a render_to_pipe observation's notifications come from its producer
            if handler.is_async:
                # Async renderers cannot run inline; they render in a task of their own.
                if self.task_group is not None:
                    self.task_group.start_soon(self._notify_async, observer, handler, name="coapio notify")
                continue
            response = self._render_sync(handler, observer.request)
            self._send_notification(endpoint, observer, response, now)


    async def _notify_async(self, observer: Observer[Resource], handler: Handler) -> None:
        function: Callable[[Message], Awaitable[Message]] = handler.function  # type: ignore[assignment]
        try:
            response = make_response(observer.request, await function(observer.request))
        except Exception as e:
            response = _failure_response(handler, observer.request, e)
        endpoint = self._observer_transport.get((observer.remote, observer.token))
        if endpoint is not None and not endpoint.closed:
            self._send_notification(endpoint, observer, response, anyio.current_time())

    def _send_notification(self, endpoint: Transport, observer: Observer[Resource],
                           response: Message, now: float, *, final: bool = False) -> None:
        if (response.code.is_successful()
                and response.opt.content_format != self._formats.get((observer.remote, observer.token))):
            # RFC 7641 §4.2: notifications keep the first response's content format; a server that
            # cannot says 4.06 and ends the observation.
            response = Message(code=Code.NOT_ACCEPTABLE, payload=b"the content format changed")
        try:
            # A notification larger than a block carries its first block (RFC 7959 §2.6), in the size the
            # observer asked for at registration. Segment first: the table tracks what is really sent.
            if len(response.payload) > self._block_size or OptionNumber.BLOCK2 in observer.request.opt:
                response = segment_response(observer.request, response, max_szx=self.tuning.block_szx,
                                            bert=endpoint.bert_message_size(observer.remote))
        except error.RenderableError as e:
            response = error_response(e)
        message = self.observers.prepare_notification(observer, response, now)
        if message is None:
            return
        if final and message.opt.observe is not None:
            message.opt.observe = None  # a response without Observe ends the observation (RFC 7641 §3.2)
            self.observers.remove(observer)
        if not observer.active:
            self._drop_observer(observer)  # an error response ended the observation (RFC 7641 §4.2)
        try:
            if self.oscore is not None:
                from .oscore import ProtectingTransport

                if isinstance(endpoint, ProtectingTransport):
                    # The message layer reports the protected message: that is what is in flight.
                    protected = endpoint.protect(message)
                    if observer.in_flight is message:
                        observer.in_flight = protected
                    endpoint.inner.send(protected)
                    return
            endpoint.send(message)
        except (error.CoapError, ValueError) as e:
            log.warning("cannot notify %r: %s", observer.remote, e)

    def _send_error_notification(
        self, observer: Observer[Resource], code: Code, diagnostic: bytes, now: float
    ) -> None:
        self._end_observation(observer, Message(code=code, payload=diagnostic), now)

    def _end_observation(self, observer: Observer[Resource], response: Message, now: float) -> None:
        """Send the response that ends an observation (no Observe option, RFC 7641 §3.2), whatever pacing
        or an unacknowledged CON would say, and forget the observer."""
        endpoint = self._observer_transport.get((observer.remote, observer.token))
        if endpoint is None or endpoint.closed:
            self._drop_observer(observer if self.observers.remove(observer) else None)
            return
        observer.in_flight = None  # the end of the observation goes out even behind an unacknowledged CON
        observer.last_sent_at = None  # and without waiting for pacing
        self._send_notification(endpoint, observer, response, now, final=True)
        if observer.active:  # pacing held it back: end the observation all the same
            self._drop_observer(observer if self.observers.remove(observer) else None)

    def on_network_error(self, remote: Peer) -> None:
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

    def timer(self, now: float) -> float | None:
        """Run on every wake-up of a transport's task: do what is due, say when to run next."""
        if not self._due and not self.observers and not self.reassembler:
            return None  # the common case on a busy server: asked on every wake-up, answered cheaply
        self.on_timer(now)
        return self.next_deadline()

    def on_timer(self, now: float) -> None:
        if not self._due and not self.observers and not self.reassembler:
            return
        self.reassembler.expire(now)
        if self._due or self.observers.next_deadline() is not None:
            self.send_due(now)

    @property
    def live_handlers(self) -> int:
        return self._running

