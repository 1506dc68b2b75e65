"""The UDP transport: one socket task per bound address, driving one sans-IO message layer.

The task drains its non-blocking socket until it would block, feeds every datagram to the
:class:`~coapio.messagelayer.MessageLayer`, hands the resulting events to the context's dispatcher
(synchronously: no task or channel hand-off per message), sends what the layer queued, and sleeps until
the socket is readable or the layer's next deadline — one timer per endpoint, never one per message.
Other tasks that send (a requester, an async handler) call :meth:`UDPEndpoint.flush`, which writes at
once and moves the sleeping task's deadline earlier when needed.

ICMP errors (port or host unreachable) are read from the socket's error queue (``IP_RECVERR``), so a
request to a closed port fails at once instead of after MAX_TRANSMIT_WAIT.

A socket bound to a wildcard address learns each datagram's destination address (``IP_PKTINFO`` /
``IPV6_PKTINFO``) and answers that peer from the same address, as a client expects of a multi-homed
server; sockets bound to one address need none of that and keep the cheaper ``recvfrom`` path.
"""

from __future__ import annotations

import errno
import logging
import math
import socket
import struct
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import trio

from ..protocol.message import Message, Remote
from ..protocol.messagelayer import Event, MessageLayer
from ..protocol.options import KNOWN_OPTIONS, UNIMPLEMENTED_CRITICAL
from ..protocol.tuning import TransportTuning

__all__ = ["UDPEndpoint", "open_udp_socket", "parse_bind"]

log = logging.getLogger(__name__)

_IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
_IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
_MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
_IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
_CMSG_SPACE = 64
_MAX_SOURCES = 65536  # peers whose local address is remembered (the oldest are forgotten first)
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
    """
    try:
        trio.lowlevel.current_task()
    except RuntimeError:  # not in a trio run: asyncio, through anyio
        return anyio.current_time, anyio.CancelScope, anyio.wait_readable
    return trio.current_time, trio.CancelScope, trio.lowlevel.wait_readable


class UDPEndpoint:
    """One bound UDP socket and its message layer; :meth:`run` is its socket task."""

    def __init__(
        self,
        sock: socket.socket,
        tuning: TransportTuning,
        dispatch: Callable[[UDPEndpoint, Event, float], None],
        on_network_error: Callable[[Remote, OSError], None],
        expects_response: Callable[[bytes, Remote], bool],
        upper_timer: Callable[[float], float | None] | None = None,
    ):
        self.sock = sock
        # The layers above (reassembly expiry, observer pacing) share this task's one timer: called on
        # every wake-up with the time, it does what is due and returns when it next wants to run.
        self._upper_timer = upper_timer
        self.family = sock.family
        self.local: Remote = sock.getsockname()
        self.dual_stack = self.family == socket.AF_INET6 and not sock.getsockopt(
            socket.IPPROTO_IPV6, socket.IPV6_V6ONLY
        )
        self.layer = MessageLayer(
            tuning,
            expects_response=expects_response,
            recognized_options=KNOWN_OPTIONS - UNIMPLEMENTED_CRITICAL,
        )
        self._dispatch = dispatch
        self._on_network_error = on_network_error
        self._sleep: Any = None  # the cancel scope of the socket task's wait (trio's or anyio's)
        self._backlog: list[tuple[bytes, Remote]] = []
        self.closed = False
        # Wildcard sockets: peer -> the pktinfo control data that makes replies leave from the address
        # the peer used.
        self.pktinfo = self.local[0] in ("::", "0.0.0.0")
        self._sources: OrderedDict[Remote, tuple[int, int, bytes]] = OrderedDict()
        self._destination: tuple[int, int, bytes] | None = None  # pktinfo of the last datagram read
        if self.pktinfo:
            if self.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVPKTINFO, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)

    def __repr__(self) -> str:
        return f"<UDPEndpoint {self.local!r}>"

    # --- addressing --------------------------------------------------------------------------------

    def can_reach(self, family: int) -> bool:
        return family == self.family or (family == socket.AF_INET and self.dual_stack)

    def remote_for(self, family: int, sockaddr: tuple[Any, ...]) -> Remote:
        """The form in which this socket reports ``sockaddr`` (IPv4-mapped on a dual-stack socket)."""
        if family == socket.AF_INET and self.family == socket.AF_INET6:
            return ("::ffff:" + sockaddr[0], sockaddr[1], 0, 0)
        if family == socket.AF_INET6:
            return (sockaddr[0], sockaddr[1], 0, sockaddr[3] if len(sockaddr) > 3 else 0)
        return (sockaddr[0], sockaddr[1])

    # --- sending (from any task) -------------------------------------------------------------------

    def send(self, message: Message, tuning: TransportTuning | None = None) -> None:
        self.layer.send(message, anyio.current_time(), tuning=tuning)
        self.flush()

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

    def _write(self, out: list[tuple[bytes, Remote]]) -> None:
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
                    if remote in self._read_error_queue():
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

    def _send_one(self, data: bytes, remote: Remote) -> None:
        sources = self._sources
        source = sources.get(remote) if sources else None
        if source is None:
            self.sock.sendto(data, remote)
        else:
            self.sock.sendmsg([data], [source], 0, remote)

    def _hold(self, out: list[tuple[bytes, Remote]]) -> None:
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

    def _network_error(self, remote: Remote, error: OSError) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("network error towards %r: %s", remote, error)
        self._on_network_error(remote, error)

    # --- the socket task ---------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve the socket until cancelled; the socket is closed on the way out.

        Cancellation (the context's exit) ends the loop at its next wait; nothing is sent afterwards.

        The wait sits in a cancel scope whose deadline is the next timer and which :meth:`wake` cancels.
        Entering a scope costs more than handling a datagram, so one scope lasts across wake-ups: its
        deadline is moved as timers come and go, and a new one is entered only after it fired.
        """
        sock = self.sock
        now_of, cancel_scope, wait_readable = _primitives()
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
            self.closed = True
            self._sleep = None
            sock.close()

    def _process(self, now: float) -> float | None:
        """One wake-up's work: drain the socket, run due timers, send; return the next deadline."""
        layer = self.layer
        receive = layer.receive
        dispatch = self._dispatch
        recvfrom = self._recv_with_destination if self.pktinfo else self.sock.recvfrom
        for _ in range(_DRAIN_BUDGET):
            try:
                data, remote = recvfrom(_MAX_DATAGRAM)
            except BlockingIOError:
                break
            except OSError:
                self._read_error_queue()
                continue
            for event in receive(data, remote, now):
                dispatch(self, event, now)
        # The upper layers' timers first: what they send now may be due before the layer's own timers
        # act (a held response's challenge must ride on the ACK the layer would otherwise send empty).
        upper = self._upper_timer(now) if self._upper_timer is not None else None
        deadline = layer.next_deadline()
        if deadline is not None and deadline <= now:
            for event in layer.on_timer(now):
                dispatch(self, event, now)
            if self._upper_timer is not None:
                upper = self._upper_timer(now)  # the events may have changed what the upper layers want
            deadline = layer.next_deadline()
        if upper is not None and (deadline is None or upper < deadline):
            deadline = upper
        out = layer.datagrams_to_send()
        if out:
            self._write(out)
        return deadline

    def _recv_with_destination(self, size: int) -> tuple[bytes, Remote]:
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

    def local_address_of_last_datagram(self) -> Remote:
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

    def _read_error_queue(self) -> set[Remote]:
        """Turn queued ICMP errors into network errors of the peers they concern; return those peers."""
        sock = self.sock
        named: set[Remote] = set()
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
            self._network_error(remote, OSError(code, errno.errorcode.get(code, str(code))))
        return named
