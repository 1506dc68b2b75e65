"""RFC 7641 observation state, sans-IO: the client's and the server's bookkeeping of notifications.

No sockets, tasks or clock: every method that needs the time takes ``now`` (the runtime's monotonic clock,
in seconds, never decreasing). The runtime sends what these objects build and asks them when to wake up.

Client (:class:`ClientObservation`), one per ``ctx.observe()``::

    obs = ClientObservation(request)                     # request: GET/FETCH with Observe=0
    match obs.on_response(response, now):                # every response routed to the token
        case Verdict.DELIVER: put(response)              # newest wins in the consumer's channel
        case Verdict.STALE: pass                         # reordered or replayed: drop
        case Verdict.FINAL: put(response); close()       # the observation is over
    if obs.refresh_due(now): send(obs.reregistration_request(now))   # wake up at obs.next_deadline()
    on leaving the block: send(obs.deregistration_request()), or free the token (RST on the next one)

Server (:class:`ObserverTable`), one per context::

    on GET/FETCH Observe=0:  o = table.register(resource, request, now)
                             if o: response.opt.observe = table.next_sequence(o, now)  # else no Observe
    on Observe=1, or any other request with the same (remote, token):  table.deregister(remote, token)
    on resource change:      table.notify(resource, now, confirmable=...)
    in the endpoint loop:    for o in table.due(now):
                                 msg = table.prepare_notification(o, render(o.request), now)
                                 if msg is not None: layer.send(msg, now)
                             sleep until min(layer.next_deadline(), table.next_deadline())
    on message-layer events: Acknowledged -> table.on_acknowledged(msg, now)
                             Reset -> table.on_reset(msg);  TimedOut -> table.on_timeout(msg)

Ordering and congestion (§4.5, §4.5.1), kept deliberately simple: an observer has at most one CON
notification outstanding and nothing else is sent to it meanwhile; every state change only sets
``pending``, and the state is rendered when the notification actually goes out, so a slow or lossy
observer costs O(1) memory and sees the newest state, never a queue. Optional NON pacing:
``min_interval`` (§4.5.1 recommends at most one NON per RTT, or per 3 s without an RTT estimate).
"""

from __future__ import annotations

import enum
import heapq
import math
import random
from collections.abc import Hashable
from typing import Generic, TypeVar

from .codes import Code, Type
from .message import Message, Remote

__all__ = [
    "CON_INTERVAL",
    "OBSERVE_DEREGISTER",
    "OBSERVE_REGISTER",
    "REORDERING_WINDOW",
    "TICKS_PER_SECOND",
    "ClientObservation",
    "Observer",
    "ObserverTable",
    "Verdict",
    "is_fresher",
]

#: Observe option values in a GET/FETCH request (RFC 7641 §2).
OBSERVE_REGISTER = 0
OBSERVE_DEREGISTER = 1

_MASK = (1 << 24) - 1
_HALF = 1 << 23
#: §3.4: after this long without a fresher notification, a client stops comparing sequence numbers.
REORDERING_WINDOW = 128.0
#: §4.5: a server sends a notification as CON instead of NON at least this often.
CON_INTERVAL = 24 * 3600.0
#: The server's sequence numbers follow a clock of this many ticks per second (see ObserverTable).
TICKS_PER_SECOND = 1 << 14
#: How far an observer's sequence may run ahead of that clock; with the clock's own 2**22 ticks per 256 s
#: this keeps any two values sent within 256 s (128 s plus up to 128 s of latency) under 2**23 apart.
_MAX_LEAD = (1 << 22) - 2

_Ident = tuple[Remote, bytes]


def is_fresher(v1: int, t1: float, v2: int, t2: float) -> bool:
    """RFC 7641 §3.4: is the notification (``v2`` received at ``t2``) newer than (``v1`` received at ``t1``)?

    ``(V1 < V2 and V2 - V1 < 2**23) or (V1 > V2 and V1 - V2 > 2**23) or T2 > T1 + 128 s``: serial-number
    arithmetic on 24 bits (so it survives the wrap-around), and the time term so that a client recovers
    when the server restarts its sequence instead of dropping everything as stale. Equal values are a
    replay, not fresher, unless 128 s have passed.
    """
    return (v1 < v2 and v2 - v1 < _HALF) or (v1 > v2 and v1 - v2 > _HALF) or t2 > t1 + REORDERING_WINDOW


# --- client ----------------------------------------------------------------------------------------------


class Verdict(enum.Enum):
    """What the client does with one response of an observation."""

    #: A notification fresher than any so far (§3.4): hand it to the consumer.
    DELIVER = "deliver"
    #: Older than one already delivered, a replay, or after the user left: drop it.
    STALE = "stale"
    #: No Observe option or not 2.xx (§3.2, §4.2): the last item; the observation is over.
    FINAL = "final"


class ClientObservation:
    """The client side of one observation: classifies responses, and knows when to re-register.

    ``request`` is the registration (GET or FETCH with Observe=0); a copy of it is the template for the
    re-registration and the deregistration. Freshness (§3.3.1): a notification is fresh for its Max-Age
    (60 s when absent, RFC 7252 §5.10.5); when nothing fresher came within Max-Age plus ``margin`` plus a
    random ``jitter`` (so that many clients do not re-register in step), the server has probably forgotten
    us and the runtime re-registers. Not before: §3.3.1 recommends against re-registering while fresh.
    """

    def __init__(self, request: Message, *, margin: float = 5.0, jitter: float = 0.0,
                 rng: random.Random | None = None):
        if request.opt.observe != OBSERVE_REGISTER or request.code not in (Code.GET, Code.FETCH):
            raise ValueError("an observation starts with a GET or FETCH carrying Observe=0")
        if margin <= 0 or jitter < 0:
            raise ValueError("margin must be positive and jitter not negative")
        self.request = request.copy(mid=None)
        self.margin = margin
        self.jitter = jitter
        self._rng = rng or random.Random()
        #: The server accepted the registration: the newest response carried Observe.
        self.registered = False
        #: A FINAL response arrived; nothing more will be delivered.
        self.ended = False
        #: deregistration_request() was called: no more deliveries or re-registrations.
        self.cancelled = False
        #: Observe value and local receive time of the freshest notification (§3.4's V1 and T1).
        self.last_value: int | None = None
        self.last_time: float | None = None
        self._max_age = 60
        self._deadline: float | None = None

    def on_response(self, response: Message, now: float) -> Verdict:
        """Classify a response with the observation's token, received at ``now``."""
        if self.ended:
            return Verdict.STALE
        value = response.opt.observe
        if value is None or not response.code.is_successful():
            self.ended = True
            self.registered = False
            self._deadline = None
            return Verdict.FINAL
        if self.cancelled:
            return Verdict.STALE
        value &= _MASK  # a 4-byte value is malformed; read it as the 24 bits §4.4 defines
        if (self.last_value is not None and self.last_time is not None
                and not is_fresher(self.last_value, self.last_time, value, now)):
            return Verdict.STALE
        self.registered = True
        self.last_value = value
        self.last_time = now
        self._max_age = response.opt.max_age_or_default
        self._deadline = now + self._max_age + self._slack()
        return Verdict.DELIVER

    def _slack(self) -> float:
        return self.margin + (self._rng.uniform(0.0, self.jitter) if self.jitter else 0.0)

    def next_deadline(self) -> float | None:
        """When the freshness of the newest notification runs out (None: nothing to watch)."""
        if self.ended or self.cancelled or not self.registered:
            return None
        return self._deadline

    def refresh_due(self, now: float) -> bool:
        """True when the runtime should send :meth:`reregistration_request` now."""
        deadline = self.next_deadline()
        return deadline is not None and now >= deadline

    def reregistration_request(self, now: float) -> Message:
        """A new registration, same token and options (§3.3.1); the server gets one more Max-Age + margin
        to answer before the next attempt. Also what ``pipe.poke()`` sends."""
        self._deadline = now + self._max_age + self._slack()
        return self.request.copy(mid=None)

    def deregistration_request(self) -> Message:
        """The request that ends the observation actively (§3.6): same method, token and options, Observe=1.

        Its response (without Observe) comes back as FINAL; notifications crossing it are STALE.
        """
        self.cancelled = True
        self._deadline = None
        msg = self.request.copy(mid=None)
        msg.opt.observe = OBSERVE_DEREGISTER
        return msg


# --- server ----------------------------------------------------------------------------------------------

K = TypeVar("K", bound=Hashable)


class Observer(Generic[K]):
    """One entry of a resource's list of observers, identified by (remote, token) (§4.1).

    The runtime reads ``request`` to render each notification for this observer (Accept, query, ETags)
    and ``remote``/``token`` to route; the rest is the table's state, readable for tests and metrics.
    """

    __slots__ = ("_due", "active", "con_requested", "in_flight", "last_con_at", "last_sent_at",
                 "pending", "registered_at", "request", "resource", "sequence")

    def __init__(self, resource: K, request: Message, now: float, sequence: int):
        self.resource = resource
        self.request = request
        self.registered_at = now
        #: When the client last had to prove it is alive: registration or the last CON notification sent.
        self.last_con_at = now
        self.last_sent_at: float | None = None
        #: The resource changed since the last notification: one is owed to this observer.
        self.pending = False
        #: The next notification must be CON (a notify(confirmable=True) was coalesced into it).
        self.con_requested = False
        #: The CON notification awaiting its ACK; while set, nothing else is sent (§4.5.1).
        self.in_flight: Message | None = None
        #: The last sequence number issued, unbounded; the Observe value is its low 24 bits.
        self.sequence = sequence
        self.active = True
        self._due: float | None = None

    @property
    def remote(self) -> Remote:
        return self.request.remote

    @property
    def token(self) -> bytes:
        return self.request.token

    def __repr__(self) -> str:
        return (f"<Observer {self.resource!r} remote={self.remote!r} token={self.token.hex() or '-'} "
                f"seq={self.sequence & _MASK} pending={self.pending} in_flight={self.in_flight is not None}>")


class ObserverTable(Generic[K]):
    """Every observer of every resource of one server, keyed by (remote, token), with bounded size.

    ``K`` is whatever hashable the runtime uses for a resource (the object or its path). Registrations
    beyond ``max_per_resource`` or ``max_total`` are refused (register() returns None and the runtime
    answers without Observe, which §4.1 allows); existing observers are never evicted for newcomers.

    Sequence numbers (§4.4) are per observer and strictly increasing: each is ``max(previous + 1,
    floor(now * TICKS_PER_SECOND))``, a counter that follows a clock. Following the clock bounds the jump
    between any two notifications sent within 256 s below 2**23 (so the client's §3.4 rule orders them,
    even with 128 s of latency), and makes a re-created observer for the same client (after a timeout, a
    refused re-registration, a deregistration) start ahead of its predecessor; a new observer also starts
    above every value this table issued. Bursts faster than the clock may run at most ``_MAX_LEAD`` ahead
    of it: beyond that an observer stays pending until the clock catches up (over 16384 notifications per
    second sustained, to one client).

    CON notifications (§4.5): when the resource asks for one, and at least once every ``con_interval``
    (24 h) since the client last proved alive; a CON that is never acknowledged, or a Reset to any
    notification, removes the observer.
    """

    def __init__(self, *, max_total: int = 10_000, max_per_resource: int = 1_000,
                 con_interval: float = CON_INTERVAL, min_interval: float = 0.0):
        self.max_total = max_total
        self.max_per_resource = max_per_resource
        self.con_interval = con_interval
        self.min_interval = min_interval
        #: Registrations refused because of the limits.
        self.refused = 0
        self._by_id: dict[_Ident, Observer[K]] = {}
        self._by_resource: dict[K, dict[_Ident, Observer[K]]] = {}
        self._heap: list[tuple[float, int, Observer[K]]] = []
        self._seq = 0
        self._high = -1  # the highest sequence number issued so far

    # --- membership (§4.1, §3.6) -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._by_id)

    def count(self, resource: K) -> int:
        members = self._by_resource.get(resource)
        return len(members) if members else 0

    def observers(self, resource: K) -> list[Observer[K]]:
        members = self._by_resource.get(resource)
        return list(members.values()) if members else []

    def all(self) -> list[Observer[K]]:
        """Every observer of every resource."""
        return list(self._by_id.values())

    def get(self, remote: Remote, token: bytes) -> Observer[K] | None:
        return self._by_id.get((remote, token))

    def register(self, resource: K, request: Message, now: float) -> Observer[K] | None:
        """Add the client of ``request`` (GET/FETCH, Observe=0) to ``resource``'s observers, or refuse.

        The same (remote, token) again replaces the entry in place (§4.1: never listed twice), keeping
        its sequence so that the client's ordering holds; if it now names another resource that is full,
        the old entry is removed and None returned. None means: answer without an Observe option.
        """
        if request.opt.observe != OBSERVE_REGISTER or request.code not in (Code.GET, Code.FETCH):
            return None
        ident = (request.remote, request.token)
        obs = self._by_id.get(ident)
        if obs is not None:
            if obs.resource == resource:
                self._refresh(obs, request, now)
                return obs
            self._unlink(obs, ident)  # the token now names a request for another resource
        members = self._by_resource.get(resource)
        full = members is not None and len(members) >= self.max_per_resource
        if full or len(self._by_id) >= self.max_total:
            self.refused += 1
            if obs is not None:
                obs.active = False
                obs._due = None
            return None
        if obs is None:
            obs = Observer(resource, request, now, max(math.floor(now * TICKS_PER_SECOND) - 1, self._high))
        else:
            obs.resource = resource
            self._refresh(obs, request, now)
        self._by_id[ident] = obs
        if members is None:
            members = self._by_resource[resource] = {}
        members[ident] = obs
        return obs

    @staticmethod
    def _refresh(obs: Observer[K], request: Message, now: float) -> None:
        obs.request = request
        obs.registered_at = obs.last_con_at = now
        obs.pending = False  # the response to this request carries the current state

    def deregister(self, remote: Remote, token: bytes) -> Observer[K] | None:
        """Remove the observer (remote, token) and return it (None if there was none).

        Call it for a GET with Observe=1 (§3.6, then answer it as a plain GET, without Observe) and for
        any other request from the same remote with the same token: the token now names that exchange.
        """
        obs = self._by_id.get((remote, token))
        if obs is not None:
            self.remove(obs)
        return obs

    def remove(self, observer: Observer[K]) -> bool:
        """Drop ``observer``; False if it was already gone. The runtime cancels its handler's scope."""
        ident = (observer.remote, observer.token)
        if self._by_id.get(ident) is not observer:
            return False
        self._unlink(observer, ident)
        observer.active = False
        observer._due = None
        return True

    def remove_remote(self, remote: Remote) -> list[Observer[K]]:
        """Drop every observer of ``remote`` (a closed connection, a network error); O(observers)."""
        gone = [obs for (r, _), obs in self._by_id.items() if r == remote]
        for obs in gone:
            self.remove(obs)
        return gone

    def _unlink(self, obs: Observer[K], ident: _Ident) -> None:
        del self._by_id[ident]
        members = self._by_resource[obs.resource]
        del members[ident]
        if not members:
            del self._by_resource[obs.resource]

    # --- notifications (§4.2 - §4.5) ---------------------------------------------------------------------

    def notify(self, resource: K, now: float, *, confirmable: bool = False) -> int:
        """``resource`` changed: owe each of its observers a notification; :meth:`due` says when to send.

        Repeated calls before a notification goes out coalesce into one (the newest state); with
        ``confirmable`` that one is sent CON. Returns the number of observers.
        """
        members = self._by_resource.get(resource)
        if not members:
            return 0
        for obs in members.values():
            obs.pending = True
            if confirmable:
                obs.con_requested = True
            self._schedule(obs, now)
        return len(members)

    def due(self, now: float) -> list[Observer[K]]:
        """Observers to which a notification may go out now: render and :meth:`prepare_notification` each."""
        out: list[Observer[K]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            t, _, obs = heapq.heappop(heap)
            if obs._due != t:
                continue  # superseded or removed
            obs._due = None
            if not obs.pending or obs.in_flight is not None:
                continue
            ready = self._ready_at(obs, now)
            if ready > now:
                self._push(ready, obs)
            else:
                out.append(obs)
        if len(heap) > 64 and len(heap) > 4 * len(self._by_id):
            self._heap = [item for item in heap if item[2]._due == item[0]]
            heapq.heapify(self._heap)
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`due` next has observers to return (None: nothing owed)."""
        heap = self._heap
        while heap and heap[0][2]._due != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def next_sequence(self, observer: Observer[K], now: float) -> int:
        """The Observe value (24 bits) for the next response to ``observer``, e.g. the registration's.

        Always issued (a response cannot wait), so the lead limit applies only to notifications via due().
        """
        value = max(observer.sequence + 1, math.floor(now * TICKS_PER_SECOND))
        observer.sequence = value
        if value > self._high:
            self._high = value
        return value & _MASK

    def notification_type(self, observer: Observer[K], now: float, confirmable: bool = False) -> Type:
        """CON when asked (now or by a coalesced notify) or when the last CON is 24 h old (§4.5); else NON."""
        if confirmable or observer.con_requested or now - observer.last_con_at >= self.con_interval:
            return Type.CON
        return Type.NON

    def prepare_notification(self, observer: Observer[K], response: Message, now: float, *,
                             confirmable: bool = False) -> Message | None:
        """Address ``response`` (rendered now for ``observer.request``) to the observer and stamp it.

        Sets token, remote, type and Observe, and clears ``pending``. A non-2.xx response ends the
        observation (§4.2): it goes out without Observe and the observer is removed. Returns None, and
        keeps the notification owed, if the observer may not be sent to now (a CON in flight, pacing) or
        is gone; then don't send.
        """
        if not observer.active or observer.in_flight is not None or self._ready_at(observer, now) > now:
            if observer.active:
                observer.pending = True
                self._schedule(observer, now)
            return None
        mtype = self.notification_type(observer, now, confirmable)
        response.token = observer.token
        response.remote = observer.remote
        response.mid = None
        response.type = mtype
        observer.pending = False
        observer.con_requested = False
        observer.last_sent_at = now
        if not response.code.is_successful():
            response.opt.observe = None
            self.remove(observer)
            return response
        response.opt.observe = self.next_sequence(observer, now)
        if mtype is Type.CON:
            observer.in_flight = response
            observer.last_con_at = now
        return response

    # --- message-layer events ----------------------------------------------------------------------------

    def on_acknowledged(self, message: Message, now: float) -> Observer[K] | None:
        """A CON notification was acknowledged: the observer may be sent its owed state (via due())."""
        obs = self._by_id.get((message.remote, message.token))
        if obs is None or obs.in_flight is not message:
            return None
        obs.in_flight = None
        if obs.pending:
            self._schedule(obs, now)
        return obs

    def on_reset(self, message: Message) -> Observer[K] | None:
        """The client answered a notification (or the registration's response) with RST: it lost
        interest (§3.6, §4.2). Removes and returns the observer."""
        return self.deregister(message.remote, message.token)

    def on_timeout(self, message: Message) -> Observer[K] | None:
        """A CON carrying Observe was never acknowledged: the client is gone (§4.5). Removes and returns
        the observer."""
        if message.type is not Type.CON or message.opt.observe is None:
            return None
        return self.deregister(message.remote, message.token)

    # --- scheduling --------------------------------------------------------------------------------------

    def _ready_at(self, obs: Observer[K], now: float) -> float:
        """The earliest time >= now at which a notification may go to ``obs`` (pacing, sequence lead)."""
        t = now
        if self.min_interval and obs.last_sent_at is not None:
            t = max(t, obs.last_sent_at + self.min_interval)
        tick = obs.sequence + 1 - _MAX_LEAD  # the clock must have reached this for the next value
        if math.floor(t * TICKS_PER_SECOND) < tick:
            t = tick / TICKS_PER_SECOND
            while math.floor(t * TICKS_PER_SECOND) < tick:
                t = math.nextafter(t, math.inf)
        return t

    def _schedule(self, obs: Observer[K], now: float) -> None:
        if obs.in_flight is not None or not obs.active:
            return  # on_acknowledged() reschedules; a removed observer is owed nothing
        t = self._ready_at(obs, now)
        if obs._due is None or t < obs._due:
            self._push(t, obs)

    def _push(self, t: float, obs: Observer[K]) -> None:
        obs._due = t
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, obs))
