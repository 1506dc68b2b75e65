"""The RFC 7252 §4 message layer of one endpoint, sans-IO: datagrams and the current time in, datagrams,
events and the next deadline out.

One :class:`MessageLayer` holds every piece of per-endpoint state: message-ID allocation per peer,
retransmission of CON messages, deduplication of received messages (with the cached reply re-sent for a
duplicate CON), the choice between piggy-backed and separate responses, NSTART and PROBING_RATE per
peer. It never reads a clock: every call takes ``now``, and :meth:`MessageLayer.next_deadline` says
when :meth:`MessageLayer.on_timer` wants to be called. All timed state sits in one heap and a few FIFO
tables that expire lazily, so there is no timer per message and no scan of a whole table.

Typical driving loop (what the runtime's socket task does)::

    for datagram, remote in socket_drain():
        for event in layer.receive(datagram, remote, now): ...
    sock.send_all(layer.datagrams_to_send())
    sleep_until(layer.next_deadline())
    layer.on_timer(now)
"""

from __future__ import annotations

import heapq
import logging
import math
import random
from collections import OrderedDict, deque
from collections.abc import Callable, Container
from typing import Any

import attrs

from ..error import CoapError, MessageFormatError, MessageIdsExhausted, WireAction
from ._limits import LimitLog
from .codes import Code, Type
from .message import Message, Remote
from .options import KNOWN_OPTIONS, OptionNumber, describe_unrecognized
from .tuning import TransportTuning

__all__ = [
    "Acknowledged",
    "BadResponse",
    "Event",
    "MessageLayer",
    "RequestReceived",
    "Reset",
    "ResponseReceived",
    "SendQueueFull",
    "Stats",
    "TimedOut",
]

log = logging.getLogger(__name__)


# --- events --------------------------------------------------------------------------------------------


@attrs.define(slots=True, eq=True)
class RequestReceived:
    """A new request (duplicates are never reported); answer it with :meth:`MessageLayer.respond`."""

    message: Message


@attrs.define(slots=True, eq=True)
class ResponseReceived:
    """A response: piggy-backed on an ACK, or a separate CON (already acknowledged) or NON message.

    ``request`` is the CON request it was piggy-backed on, when that is known from the message ID.
    """

    message: Message
    request: Message | None = None


@attrs.define(slots=True, eq=True)
class BadResponse:
    """A response that had to be rejected (RFC 7252 §5.4.1: an unrecognized critical option)."""

    message: Message
    reason: str


@attrs.define(slots=True, eq=True)
class Acknowledged:
    """An empty ACK for ``message``, a CON we sent: its retransmission stops; a response may follow."""

    message: Message


@attrs.define(slots=True, eq=True)
class Reset:
    """The peer answered ``message`` (a CON, or a tracked NON) with a Reset."""

    message: Message


@attrs.define(slots=True, eq=True)
class TimedOut:
    """``message`` (a CON) was sent 1 + MAX_RETRANSMIT times and never acknowledged; or a NON request's
    NSTART slot was released without a response (then ``message.type`` is NON)."""

    message: Message


Event = RequestReceived | ResponseReceived | BadResponse | Acknowledged | Reset | TimedOut


class SendQueueFull(CoapError):
    """More requests are waiting for NSTART towards one peer than ``max_queued_per_peer`` allows."""


@attrs.define(slots=True)
class Stats:
    """Counters for tests and monitoring; plain ints, cheap to keep."""

    received: int = 0
    sent: int = 0
    malformed: int = 0
    duplicates: int = 0
    retransmissions: int = 0
    timeouts: int = 0
    resets_sent: int = 0
    resets_received: int = 0
    dedup_evicted: int = 0
    #: Datagrams dropped because the socket task's send backlog was full (``max_send_backlog``).
    send_dropped: int = 0


#: Tables are keyed by (peer, message ID); the ID is typed optional only because Message.mid is.
_Key = tuple[Remote, int | None]


# --- internal state ------------------------------------------------------------------------------------


class _Received:
    """Deduplication entry of one received CON/NON: when it expires and what to send for a duplicate."""

    __slots__ = ("expires", "live", "reply")

    def __init__(self, expires: float):
        self.expires = expires
        self.reply: bytes | None = None
        self.live = True  # False once dropped from the cache; its bytes no longer count


class _Outgoing:
    """A CON we sent that waits for an ACK or RST, and its retransmission schedule."""

    __slots__ = ("data", "deadline", "done", "is_request", "key", "message", "peer", "retries",
                 "timeout", "tuning")

    def __init__(self, message: Message, data: bytes, peer: _Peer, tuning: TransportTuning,
                 timeout: float, now: float):
        self.message = message
        self.data = data
        self.peer = peer
        self.key = (message.remote, message.mid)
        self.tuning = tuning
        self.timeout = timeout
        self.deadline = now + timeout
        self.retries = 0
        self.done = False
        self.is_request = message.code.is_request()


class _NonRequest:
    """A NON request holding an NSTART slot until its response, a cancel, or ``non_timeout``."""

    __slots__ = ("deadline", "done", "message", "peer")

    def __init__(self, message: Message, peer: _Peer, deadline: float):
        self.message = message
        self.peer = peer
        self.deadline = deadline
        self.done = False


class _Peer:
    """Per-peer state: message IDs used recently, NSTART accounting and queue, probing pacing."""

    __slots__ = ("deadline", "done", "free_at", "next_mid", "next_probe_at", "non_requests",
                 "outstanding", "queue", "remote", "unanswered_since", "used")

    def __init__(self, remote: Remote, first_mid: int):
        self.remote = remote
        self.next_mid = first_mid
        # When each recently handed-out MID becomes free again, in allocation order. Only the front can
        # be the next ID to reuse, so pruning from the front keeps exactly what still matters.
        self.used: deque[float] = deque()
        self.free_at = 0.0  # when every MID handed out to this peer is free again
        self.outstanding = 0
        self.queue: deque[tuple[Message, TransportTuning]] = deque()
        self.non_requests: dict[bytes, _NonRequest] = {}
        self.unanswered_since: float | None = None
        self.next_probe_at = 0.0
        self.deadline = 0.0  # when a blocked queue wants another look (probing or MID exhaustion)
        self.done = False  # never: lets the timer heap treat peers like the other timed objects

    def idle(self) -> bool:
        return not (self.outstanding or self.queue or self.non_requests)


_Timed = _Outgoing | _NonRequest | _Peer


def _empty(type_bits: int, mid: int) -> bytes:
    return bytes((type_bits, 0, mid >> 8, mid & 0xFF))


_ACK_BITS = 0x60  # version 1, ACK, no token
_RST_BITS = 0x70  # version 1, RST, no token


class MessageLayer:
    """All RFC 7252 §4 state of one endpoint. See the module docstring for how to drive it.

    ``tuning`` applies to every exchange unless :meth:`send` is given another. ``recognized_options`` are
    the critical options this endpoint processes: a request with any other critical option is answered 4.02
    here, and such a response is rejected, so the layers above never see them. ``expects_response(token,
    remote)`` tells whether a separate response is awaited (the token manager's table): one that is not is
    rejected with a Reset (RFC 7252 §5.3.2; for a notification this is RFC 7641 §3.6's deregistration).
    """

    def __init__(
        self,
        tuning: TransportTuning | None = None,
        *,
        rng: random.Random | None = None,
        recognized_options: Container[int] = KNOWN_OPTIONS,
        expects_response: Callable[[bytes, Remote], bool] | None = None,
    ):
        self.tuning = tuning or TransportTuning()
        # The derived lifetimes are properties of a frozen value: compute them once, not per message.
        self._con_lifetime = self.tuning.exchange_lifetime
        self._non_lifetime = self.tuning.non_lifetime
        self.recognized_options = recognized_options
        self.expects_response = expects_response
        self.stats = Stats()
        #: The bounds this layer reached (counts by name), logged at most once per interval.
        self.limits = LimitLog(log, self.tuning.limit_log_interval)
        self._rng = rng or random.Random()
        self._out: list[tuple[bytes, Remote]] = []
        # Received CON / NON by (remote, mid), insertion-ordered = expiry-ordered (one lifetime each).
        self._dedup_con: OrderedDict[_Key, _Received] = OrderedDict()
        self._dedup_non: OrderedDict[_Key, _Received] = OrderedDict()
        self._dedup_bytes = 0
        self._purge_at = math.inf  # no dedup entry expires before this time
        # CON requests not yet answered or acknowledged, in arrival order (for the empty-ACK delay).
        self._awaiting: OrderedDict[_Key, tuple[float, _Received]] = OrderedDict()
        self._exchanges: dict[_Key, _Outgoing] = {}
        # NON requests and notifications we sent, for matching a Reset: (remote, mid) -> (expires, message)
        self._sent_non: OrderedDict[_Key, tuple[float, Message]] = OrderedDict()
        self._peers: OrderedDict[Remote, _Peer] = OrderedDict()
        self._heap: list[tuple[float, int, _Timed]] = []
        self._seq = 0

    # --- introspection -----------------------------------------------------------------------------

    @property
    def open_exchanges(self) -> int:
        """CON messages awaiting an ACK plus NON requests and queued requests holding or awaiting a slot."""
        return len(self._exchanges) + sum(
            len(p.non_requests) + len(p.queue) for p in self._peers.values()
        )

    @property
    def dedup_entries(self) -> int:
        return len(self._dedup_con) + len(self._dedup_non)

    @property
    def dedup_bytes(self) -> int:
        return self._dedup_bytes

    # --- output ------------------------------------------------------------------------------------

    def datagrams_to_send(self) -> list[tuple[bytes, Remote]]:
        """Everything queued for the wire since the last call, in order."""
        out = self._out
        if out:
            self._out = []
            self.stats.sent += len(out)
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`on_timer` next has work, or None when nothing is timed."""
        heap = self._heap
        while heap and heap[0][2].done:
            heapq.heappop(heap)
        deadline = heap[0][0] if heap else None
        if self._awaiting:
            first = next(iter(self._awaiting.values()))[0] + self.tuning.empty_ack_delay
            if deadline is None or first < deadline:
                deadline = first
        return deadline

    # --- receiving ---------------------------------------------------------------------------------

    def receive(self, datagram: bytes, remote: Remote, now: float) -> list[Event]:
        """Process one datagram from ``remote``; return what the application must hear of it."""
        stats = self.stats
        stats.received += 1
        try:
            msg = Message.decode(datagram, remote)
        except MessageFormatError as e:
            stats.malformed += 1
            if e.action is WireAction.RESET and e.mid is not None:
                self._out.append((_empty(_RST_BITS, e.mid), remote))
                stats.resets_sent += 1
            return []
        peer = self._peers.get(remote)
        if peer is not None:
            # The peer answers: PROBING_RATE (§4.7) no longer applies, nor does a hold it imposed.
            peer.unanswered_since = None
            peer.next_probe_at = 0.0
        mtype = msg.type
        if mtype is Type.ACK:
            return self._receive_ack(msg, now)
        if mtype is Type.RST:
            return self._receive_rst(msg, now)
        return self._receive_con_non(msg, peer, now)

    def _receive_con_non(self, msg: Message, peer: _Peer | None, now: float) -> list[Event]:
        code = msg.code
        is_con = msg.type is Type.CON
        remote = msg.remote
        mid: int = msg.mid  # type: ignore[assignment]  # decoded messages always have one
        is_request = 0 < code < 32
        if not is_request and not 64 <= code < 192:
            # An Empty CON is a ping (§4.3); any other code class is not for this layer: reject.
            if is_con:
                self._out.append((_empty(_RST_BITS, mid), remote))
                self.stats.resets_sent += 1
            return []

        key = (remote, mid)
        table = self._dedup_con if is_con else self._dedup_non
        entry = table.get(key)
        if entry is not None and entry.expires > now:
            self.stats.duplicates += 1
            if is_con:
                if entry.reply is None:
                    # Still being processed: acknowledge now, the response will come separately.
                    self._awaiting.pop(key, None)
                    self._set_reply(entry, _empty(_ACK_BITS, mid))
                self._out.append((entry.reply, remote))  # type: ignore[arg-type]
            return []
        if entry is not None:
            del table[key]
            self._forget(entry)
        entry = self._remember(is_con, key, now)

        if is_request:
            bad = msg.opt.unrecognized_critical(self.recognized_options)
            if bad:
                if is_con:
                    reasons = "; ".join(describe_unrecognized(msg.opt, number) for number in bad)
                    self._reply_error(msg, entry, Code.BAD_OPTION, reasons, now)
                else:
                    # §5.4.1: a NON with one is rejected (§4.3: ignored, here with a Reset), not answered.
                    self._set_reply(entry, _empty(_RST_BITS, mid))
                    self._out.append((entry.reply, remote))  # type: ignore[arg-type]
                    self.stats.resets_sent += 1
                return []
            if is_con:
                self._awaiting[key] = (now, entry)
            return [RequestReceived(msg)]

        # A separate response (or a notification).
        expects = self.expects_response
        if expects is not None and not expects(msg.token, remote):
            # Nobody waits for it: reject it, for NON too, so that an observing server drops us.
            self._set_reply(entry, _empty(_RST_BITS, mid))
            self._out.append((entry.reply, remote))  # type: ignore[arg-type]
            self.stats.resets_sent += 1
            return []
        bad = msg.opt.unrecognized_critical(self.recognized_options)
        if bad:
            if is_con:
                self._set_reply(entry, _empty(_RST_BITS, mid))
                self._out.append((entry.reply, remote))  # type: ignore[arg-type]
                self.stats.resets_sent += 1
            return [BadResponse(msg, f"unrecognized critical option {bad[0]}")]
        if is_con:
            self._set_reply(entry, _empty(_ACK_BITS, mid))
            self._out.append((entry.reply, remote))  # type: ignore[arg-type]
        if peer is not None:
            nonreq = peer.non_requests.pop(msg.token, None)
            if nonreq is not None:
                nonreq.done = True
                self._release(peer, now)
        return [ResponseReceived(msg)]

    def _receive_ack(self, msg: Message, now: float) -> list[Event]:
        exch = self._exchanges.pop((msg.remote, msg.mid), None)
        if exch is None:
            return []  # §4.2: an unexpected ACK is silently ignored
        self._finish(exch, now)
        code = msg.code
        if code == Code.EMPTY:
            return [Acknowledged(exch.message)]
        if 64 <= code < 192:
            bad = msg.opt.unrecognized_critical(self.recognized_options)
            if bad:
                return [BadResponse(msg, f"unrecognized critical option {bad[0]}")]
            return [ResponseReceived(msg, exch.message)]
        # An ACK carrying a request code is meaningless; the CON is acknowledged all the same.
        return [Acknowledged(exch.message)]

    def _receive_rst(self, msg: Message, now: float) -> list[Event]:
        if msg.code != Code.EMPTY:
            return []  # §4.2 allows only Empty resets; anything else is ignored
        self.stats.resets_received += 1
        key = (msg.remote, msg.mid)
        exch = self._exchanges.pop(key, None)
        if exch is not None:
            self._finish(exch, now)
            return [Reset(exch.message)]
        sent = self._sent_non.pop(key, None)
        if sent is not None:
            message = sent[1]
            peer = self._peers.get(msg.remote)
            if peer is not None:
                nonreq = peer.non_requests.get(message.token)
                if nonreq is not None and nonreq.message is message:
                    del peer.non_requests[message.token]
                    nonreq.done = True
                    self._release(peer, now)
            return [Reset(message)]
        return []

    # --- answering requests ------------------------------------------------------------------------

    def respond(self, request: Message, response: Message, now: float,
                *, separate_type: Type | None = None) -> None:
        """Send ``response`` to ``request`` (an earlier :class:`RequestReceived`).

        For a CON request not yet acknowledged the response is piggy-backed on the ACK (its type and
        message ID are set here) and cached for duplicates. Otherwise it goes as a separate message of
        ``separate_type`` (default: CON for a CON request, NON for a NON request) with a new message ID.
        Raises :class:`~coapio.error.MessageIdsExhausted` if a separate response finds no free ID.
        """
        response.remote = request.remote
        response.token = request.token
        key = (request.remote, request.mid)
        if request.type is Type.CON:
            waiting = self._awaiting.pop(key, None)
            if waiting is not None:
                response.type = Type.ACK
                response.mid = request.mid
                data = response.encode()
                self._set_reply(waiting[1], data)
                self._out.append((data, request.remote))
                return
            response.type = separate_type or Type.CON
        else:
            response.type = separate_type or Type.NON
        response.mid = None
        self._transmit(self._peer(request.remote, now), response, self.tuning, now)

    def unanswered(self, request: Message) -> bool:
        """Whether a CON request is still waiting for its piggy-backed response (or empty ACK)."""
        return (request.remote, request.mid) in self._awaiting

    def acknowledge(self, request: Message, now: float) -> None:
        """Acknowledge a CON request with an empty ACK now, if not done yet (its response goes separate)."""
        key = (request.remote, request.mid)
        waiting = self._awaiting.pop(key, None)
        if waiting is not None:
            reply = _empty(_ACK_BITS, request.mid)  # type: ignore[arg-type]
            self._set_reply(waiting[1], reply)
            self._out.append((reply, request.remote))

    def _reply_error(self, request: Message, entry: _Received, code: Code, diagnostic: str,
                     now: float) -> None:
        payload = diagnostic.encode()
        if 5 + len(request.token) + len(payload) > 3 * request.wire_size:
            # The diagnostic is a courtesy: never let it make the reply more than three times the
            # request, the most an unverified source address may receive (RFC 9175 §2.4).
            payload = b""
        response = Message(code=code, payload=payload)
        if request.type is Type.CON:
            self._awaiting[(request.remote, request.mid)] = (now, entry)
        self.respond(request, response, now)

    # --- sending -----------------------------------------------------------------------------------

    def send(self, message: Message, now: float, *, tuning: TransportTuning | None = None) -> None:
        """Send a message to ``message.remote``; CON messages are retransmitted until acknowledged.

        Requests (CON or NON) obey NSTART: beyond it they wait in the peer's queue (and are paced by
        PROBING_RATE while the peer does not answer). ``message.mid`` is allocated when the message first
        goes out. Raises :class:`SendQueueFull` when the peer's queue is full, and, for a non-request,
        :class:`~coapio.error.MessageIdsExhausted`.
        """
        tuning = tuning or self.tuning
        mtype = message.type
        if mtype is Type.ACK or mtype is Type.RST:
            self._out.append((message.encode(), message.remote))
            return
        peer = self._peer(message.remote, now)
        if message.code.is_request():
            if len(peer.queue) >= tuning.max_queued_per_peer:
                raise SendQueueFull(f"{len(peer.queue)} requests already queued for {peer.remote!r}")
            peer.queue.append((message, tuning))
            self._pump(peer, now)
        else:
            self._transmit(peer, message, tuning, now)

    def cancel(self, message: Message, now: float) -> None:
        """Loss of interest in ``message``: no further transmission of it, and its NSTART slot is freed.

        Harmless for messages already finished. A response that still arrives for it is reported as
        usual and is for the layer above to ignore.
        """
        peer = self._peers.get(message.remote)
        if peer is None:
            return
        if message.mid is not None:
            exch = self._exchanges.get((message.remote, message.mid))
            if exch is not None and exch.message is message:
                del self._exchanges[exch.key]
                self._finish(exch, now)
                return
        nonreq = peer.non_requests.get(message.token)
        if nonreq is not None and nonreq.message is message:
            del peer.non_requests[message.token]
            nonreq.done = True
            self._release(peer, now)
            return
        for i, (queued, _) in enumerate(peer.queue):
            if queued is message:
                del peer.queue[i]
                return

    def cancel_peer(self, remote: Remote, now: float) -> list[Message]:
        """The network says ``remote`` is unreachable (ICMP): stop every exchange with it at once.

        Returns the messages whose exchanges ended (CONs awaiting an ACK, NON requests holding a slot,
        queued requests), for the layers above to fail or forget.
        """
        ended: list[Message] = []
        peer = self._peers.get(remote)
        if peer is not None:
            # The queue goes first: finishing an exchange frees its NSTART slot, which would start
            # the next queued request towards this very peer.
            ended.extend(message for message, _ in peer.queue)
            peer.queue.clear()
            for nonreq in peer.non_requests.values():
                nonreq.done = True
                ended.append(nonreq.message)
            peer.outstanding -= len(peer.non_requests)
            peer.non_requests.clear()
        for key in [key for key in self._exchanges if key[0] == remote]:
            exch = self._exchanges.pop(key)
            self._finish(exch, now)
            ended.append(exch.message)
        return ended

    def _peer(self, remote: Remote, now: float) -> _Peer:
        peers = self._peers
        peer = peers.get(remote)
        if peer is None:
            self._expire_peers(now)
            peer = peers[remote] = _Peer(remote, self._rng.randrange(65536))
        return peer

    def _expire_peers(self, now: float) -> None:
        """Forget idle peers all of whose message IDs are free again (least recently used first).

        Past ``max_peers``, the least recently used idle peer is forgotten even while message IDs sent
        to it are within their lifetime: a new record for it starts at a random ID, so reusing one of
        those IDs too early (which the peer would take for a duplicate) is a 1 in 65536 chance per
        message, the price of a bounded table, like the deduplication cache's.
        """
        peers = self._peers
        while peers:
            peer = next(iter(peers.values()))
            if not peer.idle():
                break
            if peer.free_at > now:
                if len(peers) < self.tuning.max_peers:
                    break
                self.limits.hit("max_peers", now, "%d peers; forgetting the least recently used early",
                                len(peers))
            del peers[peer.remote]

    def _allocate_mid(self, peer: _Peer, now: float, lifetime: float) -> int:
        used = peer.used
        while used and used[0] <= now:
            used.popleft()
        if len(used) >= 65536:
            raise MessageIdsExhausted(peer.remote, used[0])
        mid = peer.next_mid
        peer.next_mid = (mid + 1) & 0xFFFF
        free = now + lifetime
        used.append(free)
        if free > peer.free_at:
            peer.free_at = free
        self._peers.move_to_end(peer.remote)
        return mid

    def _pump(self, peer: _Peer, now: float) -> None:
        """Start queued requests while NSTART, PROBING_RATE and free message IDs allow."""
        queue = peer.queue
        while queue:
            message, tuning = queue[0]
            if peer.outstanding >= tuning.nstart:
                return
            if (peer.unanswered_since is not None
                    and now - peer.unanswered_since >= tuning.ack_timeout
                    and now < peer.next_probe_at):
                self._schedule_peer(peer, peer.next_probe_at)
                return
            try:
                self._transmit(peer, message, tuning, now)
            except MessageIdsExhausted as e:
                self._schedule_peer(peer, e.retry_at)
                return
            queue.popleft()

    def _schedule_peer(self, peer: _Peer, when: float) -> None:
        if peer.deadline == 0.0 or when < peer.deadline:
            peer.deadline = when
            self._push(when, peer)

    def _transmit(self, peer: _Peer, message: Message, tuning: TransportTuning, now: float) -> None:
        """First transmission: allocate the ID, encode, and start whatever the message's type needs."""
        is_con = message.type is Type.CON
        if message.mid is None:
            if tuning is self.tuning:  # the derived lifetimes are properties: use the cached ones
                lifetime = self._con_lifetime if is_con else self._non_lifetime
            else:
                lifetime = tuning.exchange_lifetime if is_con else tuning.non_lifetime
            message.mid = self._allocate_mid(peer, now, lifetime)
        data = message.encode()
        self._out.append((data, message.remote))
        is_request = 0 < message.code < 32
        if peer.unanswered_since is not None and now - peer.unanswered_since >= tuning.ack_timeout:
            peer.next_probe_at = now + len(data) / tuning.probing_rate
        if is_con:
            timeout = tuning.ack_timeout * self._rng.uniform(1.0, tuning.ack_random_factor)
            exch = _Outgoing(message, data, peer, tuning, timeout, now)
            self._exchanges[exch.key] = exch
            self._push(exch.deadline, exch)
            if is_request:
                peer.outstanding += 1
        else:
            if is_request:
                nonreq = _NonRequest(message, peer, now + tuning.non_timeout)
                old = peer.non_requests.get(message.token)
                if old is not None:
                    old.done = True
                    peer.outstanding -= 1
                peer.non_requests[message.token] = nonreq
                self._push(nonreq.deadline, nonreq)
                peer.outstanding += 1
            if is_request or OptionNumber.OBSERVE in message.opt:
                self._track_non(message, now, self._non_lifetime if tuning is self.tuning
                                else tuning.non_lifetime)
        if (is_con or is_request) and peer.unanswered_since is None:
            peer.unanswered_since = now

    def _track_non(self, message: Message, now: float, lifetime: float) -> None:
        """Remember a NON we sent so that a Reset to it can be reported (bounded, oldest dropped)."""
        sent = self._sent_non
        limit = self.tuning.max_tracked_non
        while sent and (len(sent) >= limit or next(iter(sent.values()))[0] <= now):
            sent.popitem(last=False)
        sent[(message.remote, message.mid)] = (now + lifetime, message)

    def _release(self, peer: _Peer, now: float) -> None:
        peer.outstanding -= 1
        if peer.queue:
            self._pump(peer, now)

    def _finish(self, exch: _Outgoing, now: float) -> None:
        """End a CON exchange that was removed from ``_exchanges``."""
        exch.done = True
        if exch.is_request:
            self._release(exch.peer, now)

    # --- timers ------------------------------------------------------------------------------------

    def _push(self, deadline: float, obj: _Timed) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, obj))

    def on_timer(self, now: float) -> list[Event]:
        """Do everything due at ``now``: retransmit, give up, send delayed empty ACKs, start queued
        requests; return the events (:class:`TimedOut`) that resulted."""
        events: list[Event] = []
        awaiting = self._awaiting
        if awaiting:
            delay = self.tuning.empty_ack_delay
            while awaiting:
                key, (arrived, entry) = next(iter(awaiting.items()))
                if arrived + delay > now:  # the very expression next_deadline() reports
                    break
                del awaiting[key]
                reply = _empty(_ACK_BITS, key[1])  # type: ignore[arg-type]
                self._set_reply(entry, reply)
                self._out.append((reply, key[0]))
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, obj = heapq.heappop(heap)
            if obj.done or obj.deadline != deadline:
                continue
            if isinstance(obj, _Outgoing):
                if obj.retries < obj.tuning.max_retransmit:
                    obj.retries += 1
                    obj.timeout *= 2
                    obj.deadline = deadline + obj.timeout
                    self._out.append((obj.data, obj.message.remote))
                    self.stats.retransmissions += 1
                    self._push(obj.deadline, obj)
                else:
                    if self._exchanges.get(obj.key) is obj:  # (a forgotten peer's ID may have been reused)
                        del self._exchanges[obj.key]
                    self.stats.timeouts += 1
                    self._finish(obj, now)
                    events.append(TimedOut(obj.message))
            elif isinstance(obj, _NonRequest):
                obj.done = True
                peer = obj.peer
                if peer.non_requests.get(obj.message.token) is obj:
                    del peer.non_requests[obj.message.token]
                self._release(peer, now)
                events.append(TimedOut(obj.message))
            else:
                obj.deadline = 0.0
                self._pump(obj, now)
        if len(heap) > 64 and len(heap) > 4 * (len(self._exchanges) + len(self._peers)):
            self._heap = [item for item in heap if not item[2].done]
            heapq.heapify(self._heap)
        return events

    # --- deduplication cache -----------------------------------------------------------------------

    def _remember(self, is_con: bool, key: _Key, now: float) -> _Received:
        """Insert a dedup entry, first dropping expired entries and, past the bounds, the oldest ones.

        Both tables are in expiry order, so the earliest expiry of their fronts is all that needs
        watching: ``_purge_at`` holds it (or something earlier, which only costs one extra look).
        """
        con, non = self._dedup_con, self._dedup_non
        if now >= self._purge_at:
            self._purge_expired(now)
        tuning = self.tuning
        if len(con) + len(non) >= tuning.max_dedup_entries or self._dedup_bytes > tuning.max_dedup_bytes:
            self._evict_oldest(now)
        if is_con:
            entry = con[key] = _Received(now + self._con_lifetime)
        else:
            entry = non[key] = _Received(now + self._non_lifetime)
        if entry.expires < self._purge_at:
            self._purge_at = entry.expires
        return entry

    def _purge_expired(self, now: float) -> None:
        purge_at = math.inf
        for table in (self._dedup_con, self._dedup_non):
            while table:
                oldest = next(iter(table.values()))
                if oldest.expires > now:
                    purge_at = min(purge_at, oldest.expires)
                    break
                del table[next(iter(table))]
                self._forget(oldest)
        self._purge_at = purge_at

    def _evict_oldest(self, now: float) -> None:
        """Forget the oldest entries until the cache is a little under its bounds.

        A little under (1/256 of the entry bound): a server at its bound evicts a batch now and then
        instead of one entry per request, which costs less and forgets nothing it would not soon forget.
        """
        con, non = self._dedup_con, self._dedup_non
        tuning = self.tuning
        max_entries = tuning.max_dedup_entries - (tuning.max_dedup_entries >> 8)
        while (con or non) and (
            len(con) + len(non) >= max_entries
            or self._dedup_bytes > tuning.max_dedup_bytes
        ):
            # Evict whichever front entry arrived first (their lifetimes differ).
            if con and non:
                con_arrival = next(iter(con.values())).expires - self._con_lifetime
                non_arrival = next(iter(non.values())).expires - self._non_lifetime
                table = con if con_arrival <= non_arrival else non
            else:
                table = con or non
            self._forget(table.popitem(last=False)[1])
            self.stats.dedup_evicted += 1
        # Early: a late duplicate of what was just forgotten would be processed again.
        self.limits.hit("max_dedup", now, "%d entries, %d bytes; forgetting the oldest early",
                        len(con) + len(non), self._dedup_bytes)

    def _set_reply(self, entry: _Received, reply: bytes) -> None:
        if entry.live:
            if entry.reply is not None:
                self._dedup_bytes -= len(entry.reply)
            self._dedup_bytes += len(reply)
        entry.reply = reply

    def _forget(self, entry: _Received) -> None:
        if entry.live and entry.reply is not None:
            self._dedup_bytes -= len(entry.reply)
        entry.live = False

    def _debug_state(self) -> dict[str, Any]:
        """A snapshot of table sizes, for tests and leak hunting."""
        return {
            "exchanges": len(self._exchanges),
            "dedup": self.dedup_entries,
            "dedup_bytes": self._dedup_bytes,
            "awaiting": len(self._awaiting),
            "sent_non": len(self._sent_non),
            "peers": len(self._peers),
            "heap": len(self._heap),
        }
