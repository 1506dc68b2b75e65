"""The UDP transport (``coap://``): one socket task per bound address, driving one sans-IO message layer.

The task drains its non-blocking socket until it would block, feeds every datagram to the
:class:`~coapio.protocol.messagelayer.MessageLayer`, turns the resulting events into calls on the
runtime's :class:`~coapio.transports.base.TransportEvents` (synchronously: no task or channel hand-off per
message), sends what the layer queued, and sleeps until the socket is readable or the layer's next
deadline — one timer per socket, never one per message. A send from another task (a requester, an async
handler) writes at once and moves the sleeping task's deadline earlier when needed.

ICMP errors (port or host unreachable) are read from the socket's error queue (``IP_RECVERR``), so a
request to a closed port fails at once instead of after MAX_TRANSMIT_WAIT.

A socket bound to a wildcard address learns each datagram's destination address (``IP_PKTINFO`` /
``IPV6_PKTINFO``) and answers that peer from the same address, as a client expects of a multi-homed
server; sockets bound to one address need none of that and keep the cheaper ``recvfrom`` path.
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import socket
import struct
import sys
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from ..error import NetworkError, RequestTimedOut, ResetReceived, ResponseRejected
from ..protocol.codes import Code, Type
from ..protocol.message import Message
from ..protocol.messagelayer import (
    Acknowledged,
    BadResponse,
    Event,
    MessageLayer,
    RequestReceived,
    Reset,
    ResponseReceived,
    TimedOut,
)
from ..protocol.options import KNOWN_OPTIONS, UNIMPLEMENTED_CRITICAL, OptionNumber
from ..protocol.peer import Peer
from ..protocol.tuning import TransportTuning
from .base import Transport, TransportEvents

__all__ = ["UDPTransport", "open_udp_socket", "parse_bind"]

Address = tuple[Any, ...]

log = logging.getLogger(__name__)

_IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
_IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
_MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
_IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
_CMSG_SPACE = 64
_MAX_SOURCES = 65536  # peers whose local address is remembered (the oldest are forgotten first)
_MAX_PEERS = 65536  # Peer values kept for reuse (a cache: equal Peers are the same peer)
_DRAIN_BUDGET = 512  # datagrams handled per wake-up before letting other tasks run
_MAX_DATAGRAM = 65535
#: Errors a send reports for an ICMP message (about this datagram's peer or, pending, an earlier one's).
_ICMP_ERRNOS = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN})


def parse_bind(bind: str | tuple[str, int]) -> tuple[str, int]:
    """``"host:port"``, ``"[v6]:port"``, ``"host"`` (port 5683) or a ``(host, port)`` tuple."""
    if isinstance(bind, tuple):
        return str(bind[0]), int(bind[1])
    text = bind.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unterminated IPv6 literal in {bind!r}")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"expected ':port' after the IPv6 literal in {bind!r}")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""  # a bare IPv6 address or a host name
    try:
        port = int(port_text) if port_text else 5683
    except ValueError:
        raise ValueError(f"invalid port in {bind!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} out of range in {bind!r}")
    return host or "::", port


def open_udp_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A bound, non-blocking UDP socket; ``::`` is dual-stack where the OS allows."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if family == socket.AF_INET and not _is_ipv4_literal(host):
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, _, _, _, sockaddr = infos[0]
        host = str(sockaddr[0])
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            if host in ("::", ""):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                # Linux queues ICMP errors of IPv4-mapped peers only with the IPv4 option set too.
                sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setblocking(False)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _is_ipv4_literal(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET, host)
    except OSError:
        return False
    return True


_Primitives = tuple[Callable[[], float], Callable[..., Any], Callable[[socket.socket], Awaitable[None]]]


def _primitives() -> _Primitives:
    """The clock, cancel scope and readiness wait of the running backend, without anyio's wrappers.

    anyio's versions add a layer per call on trio; on the socket task's loop that layer costs about as
    much as handling a datagram, so under trio the task uses trio's own (which anyio wraps anyway).
    trio is not imported here: if the application has not imported it, this is not a trio run.
    """
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:  # not in a trio run: asyncio, through anyio
            pass
        else:
            return trio.current_time, trio.CancelScope, trio.lowlevel.wait_readable
    return anyio.current_time, anyio.CancelScope, anyio.wait_readable


class UDPTransport(Transport):
    """One bound UDP socket and its message layer (``coap://``); :meth:`run` is its socket task.

    ``layer`` (the sans-IO :class:`~coapio.protocol.messagelayer.MessageLayer`) is readable for its
    ``stats``; ``local`` is the bound socket address. ``oscore``: pass messages carrying the OSCORE option
    up (the Context's credentials will process them) instead of refusing them as an unprocessed critical
    option.
    """

    schemes = frozenset({"coap"})

    def __init__(self, sock: socket.socket, tuning: TransportTuning, *, oscore: bool = False):
        self.sock = sock
        self._events: TransportEvents | None = None
        self._clock: Callable[[], float] = anyio.current_time
        # True while the socket task processes input: what is sent meanwhile goes out with the batch.
        self._processing = False
        self._peers: dict[Address, Peer] = {}
        self.family = sock.family
        self.local: Address = sock.getsockname()
        self.dual_stack = self.family == socket.AF_INET6 and not sock.getsockopt(
            socket.IPPROTO_IPV6, socket.IPV6_V6ONLY
        )
        self.layer = MessageLayer(
            tuning,
            expects_response=self._expects_response,
            # OSCORE is processed above the transport (by a Context with OSCORE credentials).
            recognized_options=KNOWN_OPTIONS - (UNIMPLEMENTED_CRITICAL - ({OptionNumber.OSCORE} if oscore
                                                                          else set())),
        )
        self._sleep: Any = None  # the cancel scope of the socket task's wait (trio's or anyio's)
        self._backlog: list[tuple[bytes, Peer]] = []
        self._closed = False
        # Wildcard sockets: peer -> the pktinfo control data that makes replies leave from the address
        # the peer used.
        self.pktinfo = self.local[0] in ("::", "0.0.0.0")
        self._sources: OrderedDict[Address, tuple[int, int, bytes]] = OrderedDict()
        self._destination: tuple[int, int, bytes] | None = None  # pktinfo of the last datagram read
        if self.pktinfo:
            if self.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVPKTINFO, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)

    def __repr__(self) -> str:
        return f"<UDPTransport {self.local!r}>"

    # --- addressing --------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def local_address(self) -> tuple[str, int]:
        return (str(self.local[0]), int(self.local[1]))

    def can_reach(self, family: int) -> bool:
        return family == self.family or (family == socket.AF_INET and self.dual_stack)

    def address_for(self, family: int, sockaddr: tuple[Any, ...]) -> Address:
        """The form in which this socket reports ``sockaddr`` (IPv4-mapped on a dual-stack socket)."""
        if family == socket.AF_INET and self.family == socket.AF_INET6:
            return ("::ffff:" + sockaddr[0], sockaddr[1], 0, 0)
        if family == socket.AF_INET6:
            return (sockaddr[0], sockaddr[1], 0, sockaddr[3] if len(sockaddr) > 3 else 0)
        return (sockaddr[0], sockaddr[1])

    def peer(self, address: Address) -> Peer:
        """The Peer for a socket address as this socket reports it (made once, then reused)."""
        peer = self._peers.get(address)
        if peer is None:
            if len(self._peers) >= _MAX_PEERS:
                self._peers.clear()
            peer = self._peers[address] = Peer("coap", address)
        return peer

    async def resolve(self, scheme: str, host: str, port: int) -> Peer | None:
        """The peer for ``host:port`` if this socket can reach its address family (names are resolved)."""
        if scheme != "coap":
            return None
        family, sockaddr = _literal(host, port)
        if family is None:
            try:
                infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            except OSError as e:
                raise NetworkError(f"cannot resolve {host!r}: {e}") from None
            for fam, _, _, _, addr in infos:
                if self.can_reach(fam):
                    family, sockaddr = fam, tuple(addr)
                    break
            else:
                return None
        if not self.can_reach(family):
            return None
        return self.peer(self.address_for(family, sockaddr))

    # --- sending (from any task) -------------------------------------------------------------------

    def send(self, message: Message, tuning: TransportTuning | None = None) -> None:
        self.layer.send(message, self._clock(), tuning=tuning)
        if not self._processing:
            self.flush()

    def respond(self, request: Message, response: Message | None, now: float, *,
                unverified: bool = False) -> None:
        layer = self.layer
        if response is None:
            if request.type is Type.CON:
                layer.acknowledge(request, now)
        elif unverified and request.type is Type.CON and not layer.unanswered(request):
            layer.respond(request, response, now, separate_type=Type.NON)
        else:
            layer.respond(request, response, now)
        if not self._processing:
            self.flush()

    def answered(self, request: Message) -> bool:
        return not self.layer.unanswered(request)

    def cancel(self, message: Message) -> None:
        self.layer.cancel(message, self._clock())
        if not self._processing:
            self.flush()  # a freed NSTART slot may let a queued request go

    def ping(self, peer: Peer) -> Message:
        ping = Message(Type.CON, Code.EMPTY, remote=peer)
        self.send(ping)
        return ping

    @property
    def open_exchanges(self) -> int:
        return self.layer.open_exchanges

    @property
    def dedup_entries(self) -> int:
        return self.layer.dedup_entries

    @property
    def limit_hits(self) -> Mapping[str, int]:
        return self.layer.limits.hits

    def _expects_response(self, token: bytes, remote: Any) -> bool:
        events = self._events
        return events is not None and events.expects_response(token, remote)

    def flush(self) -> None:
        """Write what the layer queued and make sure the socket task wakes for the next deadline."""
        out = self.layer.datagrams_to_send()
        if out:
            self._write(out)
        sleep = self._sleep
        if sleep is not None:
            deadline = self.layer.next_deadline()
            if deadline is not None and deadline < sleep.deadline:
                sleep.deadline = deadline

    def wake(self) -> None:
        """Make the socket task run its timers now (an upper layer has work for it)."""
        if self._sleep is not None:
            self._sleep.cancel()

    def _write(self, out: list[tuple[bytes, Peer]]) -> None:
        if self._backlog:
            self._hold(out)
            return
        for i, (data, remote) in enumerate(out):
            try:
                self._send_one(data, remote)
            except BlockingIOError:
                self._hold(out[i:])
                if self._sleep is not None:
                    self._sleep.cancel()  # let the socket task wait for writability
                return
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    # A local queue dropped the datagram (IP_RECVERR makes Linux say so): it is lost,
                    # as on the wire, and retransmission repairs it; the peer is not unreachable.
                    self.layer.stats.send_dropped += 1
                    continue
                if e.errno in _ICMP_ERRNOS:
                    # With IP_RECVERR, an ICMP error about an *earlier* datagram, to any peer, is reported
                    # by the next send, whatever its destination. The error queue names the peer it
                    # concerns; this datagram goes again unless its own peer was the one named.
                    if remote.address in self._read_error_queue():
                        continue
                    try:
                        self._send_one(data, remote)
                        continue
                    except BlockingIOError:
                        self._hold(out[i:])
                        if self._sleep is not None:
                            self._sleep.cancel()
                        return
                    except OSError as again:
                        if again.errno == errno.ENOBUFS:
                            self.layer.stats.send_dropped += 1
                            continue
                        e = again
                # A send error concerns one peer (unreachable, bad address): fail its exchanges only.
                self._network_error(remote, e)
                # Read what the error queue still holds, or the socket would wake the task for it again
                # and again (it stays readable while the queue has entries).
                self._read_error_queue()

    def _send_one(self, data: bytes, remote: Peer) -> None:
        address = remote.address
        sources = self._sources
        source = sources.get(address) if sources else None
        if source is None:
            self.sock.sendto(data, address)
        else:
            self.sock.sendmsg([data], [source], 0, address)

    def _hold(self, out: list[tuple[bytes, Peer]]) -> None:
        """Keep datagrams for when the socket is writable again, up to ``max_send_backlog``."""
        backlog = self._backlog
        room = self.layer.tuning.max_send_backlog - len(backlog)
        if len(out) > room:
            dropped = len(out) - max(room, 0)
            out = out[:max(room, 0)]
            self.layer.stats.send_dropped += dropped
            self.layer.limits.hit("max_send_backlog", anyio.current_time(),
                                  "the send buffer is full; %d datagrams dropped", dropped)
        backlog.extend(out)

    def _network_error(self, remote: Peer, error: OSError) -> None:
        """Nothing more goes to an unreachable peer: no retransmission, and its exchanges end."""
        if log.isEnabledFor(logging.DEBUG):
            log.debug("network error towards %s: %s", remote, error)
        self.layer.cancel_peer(remote, self._clock())
        if self._events is not None:
            self._events.peer_failed(remote, NetworkError(error.errno, f"{remote}: {error.strerror}"))

    # --- the socket task ---------------------------------------------------------------------------

    async def run(self, events: TransportEvents, *,
                  task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve the socket until cancelled, reporting to ``events``; the socket is closed on the way out.

        Cancellation (the context's exit) ends the loop at its next wait; nothing is sent afterwards.

        The wait sits in a cancel scope whose deadline is the next timer and which :meth:`wake` cancels.
        Entering a scope costs more than handling a datagram, so one scope lasts across wake-ups: its
        deadline is moved as timers come and go, and a new one is entered only after it fired.
        """
        sock = self.sock
        now_of, cancel_scope, wait_readable = _primitives()
        self._events = events
        self._clock = now_of
        process = self._process
        task_status.started()
        try:
            while True:
                now = now_of()
                deadline = process(now)
                if self._backlog:
                    await self._drain_backlog()
                    continue
                if deadline is not None and deadline <= now:
                    # More work is due at once (a fan-out in chunks): let the other tasks run first,
                    # which an already expired cancel scope would not do.
                    await anyio.lowlevel.checkpoint()
                    continue
                with cancel_scope(deadline=math.inf if deadline is None else deadline) as sleep:
                    self._sleep = sleep
                    while True:
                        await wait_readable(sock)
                        now = now_of()
                        deadline = process(now)
                        if self._backlog or (deadline is not None and deadline <= now):
                            break
                        sleep.deadline = math.inf if deadline is None else deadline
                self._sleep = None
        finally:
            self._closed = True
            self._sleep = None
            sock.close()

    def _process(self, now: float) -> float | None:
        """One wake-up's work: drain the socket, run due timers, send; return the next deadline."""
        layer = self.layer
        dispatch = self._dispatch
        events = self._events
        assert events is not None
        self._processing = True
        try:
            self._drain(now)
            # The upper layers' timers first: what they send now may be due before the layer's own timers
            # act (a held response's challenge must ride on the ACK the layer would otherwise send empty).
            upper = events.timer(now)
            deadline = layer.next_deadline()
            if deadline is not None and deadline <= now:
                for event in layer.on_timer(now):
                    dispatch(event, now)
                upper = events.timer(now)  # the events may have changed what the upper layers want
                deadline = layer.next_deadline()
            own = self._own_timers(now)
        finally:
            self._processing = False
        if upper is not None and (deadline is None or upper < deadline):
            deadline = upper
        if own is not None and (deadline is None or own < deadline):
            deadline = own
        out = layer.datagrams_to_send()
        if out:
            self._write(out)
        return deadline

    def _drain(self, now: float) -> None:
        """Read what the socket holds (up to a budget) and feed each datagram to the message layer.

        A subclass that decrypts datagrams first (DTLS) replaces this loop, and only this loop: the
        timers and the sending of :meth:`_process` are the same for it.
        """
        receive = self.layer.receive
        dispatch = self._dispatch
        peers = self._peers
        recvfrom = self._recv_with_destination if self.pktinfo else self.sock.recvfrom
        for _ in range(_DRAIN_BUDGET):
            try:
                data, address = recvfrom(_MAX_DATAGRAM)
            except BlockingIOError:
                break
            except OSError:
                self._read_error_queue()
                continue
            remote = peers.get(address)
            if remote is None:
                remote = self.peer(address)
            for event in receive(data, remote, now):
                dispatch(event, now)

    def _own_timers(self, now: float) -> float | None:
        """Timers of a subclass's own (DTLS handshakes, idle sessions): run what is due, return the next
        deadline. Plain UDP has none."""
        return None

    def _dispatch(self, event: Event, now: float) -> None:
        """One message-layer event, as the runtime hears of it (on the hot path: requests first)."""
        events = self._events
        assert events is not None
        kind = type(event)
        message = event.message
        if kind is RequestReceived:
            message.local = self.local_address_of_last_datagram() if self.pktinfo else self.local
            events.request_received(self, message, now)
        elif kind is ResponseReceived:
            events.response_received(message, now)
        elif kind is Acknowledged:
            events.delivered(message, now)
        elif kind is Reset:
            events.failed(message, ResetReceived(f"{message.remote} reset the request"), now)
        elif kind is TimedOut:
            events.failed(message, RequestTimedOut(
                f"no answer from {message.remote} after {self.layer.tuning.max_retransmit} "
                "retransmissions" if message.type is Type.CON else
                f"no response from {message.remote} to a NON request"
            ), now)
        elif isinstance(event, BadResponse):
            events.failed(message, ResponseRejected(event.reason), now)

    def _recv_with_destination(self, size: int) -> tuple[bytes, Address]:
        """``recvfrom`` that also notes which of our addresses the peer wrote to."""
        data, ancdata, _, remote = self.sock.recvmsg(size, _CMSG_SPACE)
        for level, kind, cdata in ancdata:
            if level == socket.IPPROTO_IPV6 and kind == _IPV6_PKTINFO:
                source = (level, kind, cdata[:20])  # in6_pktinfo: the address and the interface index
            elif level == socket.IPPROTO_IP and kind == _IP_PKTINFO:
                # in_pktinfo {ifindex, spec_dst, addr}: send from addr, let routing pick the interface
                source = (level, kind, b"\0\0\0\0" + cdata[8:12] + b"\0\0\0\0")
            else:
                continue
            self._destination = source
            sources = self._sources
            if sources.get(remote) != source:
                sources[remote] = source
                if len(sources) > _MAX_SOURCES:
                    sources.popitem(last=False)
            break
        return data, remote

    def local_address_of_last_datagram(self) -> Address:
        """The address the datagram just read was sent to (for a wildcard socket, from its pktinfo)."""
        source = self._destination
        if not self.pktinfo or source is None:
            return self.local
        level, _, data = source
        if level == socket.IPPROTO_IPV6:
            return (socket.inet_ntop(socket.AF_INET6, data[:16]), self.local[1], 0, 0)
        return (socket.inet_ntop(socket.AF_INET, data[4:8]), self.local[1])

    async def _drain_backlog(self) -> None:
        await anyio.wait_writable(self.sock)
        backlog, self._backlog = self._backlog, []
        self._write(backlog)

    def _read_error_queue(self) -> set[Address]:
        """Turn queued ICMP errors into network errors of the peers they concern; return their addresses."""
        sock = self.sock
        named: set[Address] = set()
        for _ in range(_DRAIN_BUDGET):
            try:
                _, ancdata, _, remote = sock.recvmsg(1, 1024, _MSG_ERRQUEUE)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EAGAIN:
                    break
                continue  # the pending error was consumed by recvmsg itself; read on
            code = errno.EHOSTUNREACH
            for level, kind, data in ancdata:
                if (level, kind) in ((socket.IPPROTO_IP, _IP_RECVERR), (socket.IPPROTO_IPV6, _IPV6_RECVERR)):
                    code = struct.unpack_from("=I", data)[0]
            named.add(remote)
            self._network_error(self.peer(remote), OSError(code, errno.errorcode.get(code, str(code))))
        return named


@functools.lru_cache(maxsize=1024)  # asked on every request; the answer depends only on its arguments
def _literal(host: str, port: int) -> tuple[int | None, tuple[Any, ...]]:
    """Recognise an IP literal without a resolver call (and normalise IPv6 to the kernel's form)."""
    try:
        packed = socket.inet_pton(socket.AF_INET6, host)
    except OSError:
        pass
    else:
        if packed[:12] == b"\0" * 10 + b"\xff\xff":  # IPv4-mapped: the IPv4 peer it stands for
            return socket.AF_INET, (socket.inet_ntop(socket.AF_INET, packed[12:]), port)
        return socket.AF_INET6, (socket.inet_ntop(socket.AF_INET6, packed), port, 0, 0)
    try:
        socket.inet_pton(socket.AF_INET, host)
    except OSError:
        return None, ()
    return socket.AF_INET, (host, port)
