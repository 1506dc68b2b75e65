"""The DTLS transport (``coaps://``): the UDP message layer over per-peer DTLS sessions, on one socket task.

It is the UDP transport (:mod:`coapio.transports.udp`) with a session table between the socket and the
message layer: every datagram from an address with a session is opened by that session's
:class:`~coapio.protocol.dtls.engine.Session`, and every datagram the layer sends is sealed by the
session of its :class:`~coapio.Peer` (``Peer("coaps", address, connection=session)``, so a new session
from the same address is a new peer). The plain UDP transport's code path is untouched.

A datagram from an address without a session reaches the engine's stateless cookie exchange only if it
looks like a ClientHello; anything else is dropped. The table is bounded: ``max_connections``
established sessions (a new client makes room, closing the least recently active one, only once its own
handshake is done; a table full of half-open ones answers no new client), and ``max_handshakes``
half-open ones (the oldest half-open one is dropped for a new one); sessions quiet for ``idle_timeout``
are closed, handshakes that take longer than ``handshake_timeout`` fail. Handshake retransmissions and
these expiries are folded into the socket task's one deadline. A failed handshake or an alert fails
that peer's exchanges only (``peer_failed`` with a :class:`~coapio.protocol.dtls.HandshakeFailed`
naming the cause). On the Context's exit every established session gets a close_notify
(:meth:`DTLSTransport.drain`).

A client request opens a session on first use (in :meth:`DTLSTransport.resolve`); what the message
layer sends meanwhile is held by the session and sealed once the handshake is done.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from typing import Any

import anyio

from ..error import NetworkError
from ..protocol.codes import Type
from ..protocol.dtls import DtlsCredentials
from ..protocol.dtls.engine import Endpoint, Session, State
from ..protocol.dtls.errors import DtlsError, SessionClosed
from ..protocol.dtls.records import HANDSHAKE, is_client_hello
from ..protocol.message import Message
from ..protocol.messagelayer import Event, RequestReceived, ResponseReceived, TimedOut
from ..protocol.peer import Peer
from ..protocol.tuning import TransportTuning
from .udp import _DRAIN_BUDGET, _MAX_DATAGRAM, Address, UDPTransport

__all__ = ["DTLSTransport"]

log = logging.getLogger(__name__)

#: Half-open handshakes kept at once (a spoofed address cannot get one: the cookie exchange comes first).
MAX_HANDSHAKES = 64

_ESTABLISHED = State.ESTABLISHED
_HANDSHAKING = State.HANDSHAKING


class DTLSTransport(UDPTransport):
    """One UDP socket carrying DTLS sessions (``coaps://``); ``server`` answers ClientHellos.

    ``credentials`` say how this end authenticates (see :class:`~coapio.protocol.dtls.DtlsCredentials`).
    """

    schemes = frozenset({"coaps"})

    def __init__(self, sock: Any, tuning: TransportTuning, credentials: DtlsCredentials, *,
                 server: bool, max_handshakes: int = MAX_HANDSHAKES, oscore: bool = False):
        super().__init__(sock, tuning, oscore=oscore)
        self.credentials = credentials
        self.server = Endpoint(credentials, server=True, handshake_timeout=tuning.handshake_timeout) \
            if server else None
        self.client = Endpoint(credentials, server=False, handshake_timeout=tuning.handshake_timeout)
        self.max_handshakes = max_handshakes
        self._sessions: dict[Address, Session] = {}
        self._half_open: OrderedDict[Session, None] = OrderedDict()  # oldest first
        self._idle: OrderedDict[Session, None] = OrderedDict()  # established, least recently active first
        #: How many datagrams were dropped before reaching a session (junk, unsolicited records).
        self.dropped = 0
        #: HelloVerifyRequests sent (cookie exchanges started).
        self.cookie_exchanges = 0

    def __repr__(self) -> str:
        return f"<DTLSTransport {self.local!r}>"

    # --- sessions ----------------------------------------------------------------------------------

    @property
    def sessions(self) -> list[Session]:
        """The sessions in the table (established and half-open)."""
        return list(self._sessions.values())

    @property
    def half_open(self) -> int:
        return len(self._half_open)

    def peer(self, address: Address) -> Peer:
        """The Peer of the session with ``address`` (one without a session has no connection)."""
        session = self._sessions.get(address)
        if session is not None:
            peer: Peer = session.peer
            return peer
        return Peer("coaps", address)

    async def resolve(self, scheme: str, host: str, port: int) -> Peer | None:
        """The Peer of the session with ``host:port``, opening one (sending its ClientHello) if there is
        none. The handshake goes on in the socket task; what is sent meanwhile waits for it. Cancellation
        abandons a name resolution; a session once opened stays in the table."""
        if scheme != "coaps":
            return None
        target = await super().resolve("coap", host, port)
        if target is None:
            return None
        address = target.address
        session = self._sessions.get(address)
        psk = self.credentials.client_psk(host, port)
        if session is not None and session.state in (_ESTABLISHED, _HANDSHAKING):
            if session.server:
                # Our requests go only over sessions we opened and in which we verified the server.
                raise NetworkError(f"the DTLS session with {session.peer} was opened by that peer as a "
                                   "client, so it was never verified as a server; the request was not sent")
            if not session.authenticates(host, psk):
                # One socket has one session per server address; it was authenticated for another name.
                raise NetworkError(f"the DTLS session with {session.peer} was authenticated for "
                                   f"{session.expected_host}, not {host}; the request was not sent")
            peer: Peer = session.peer
            return peer
        if len(self._sessions) >= self.layer.tuning.max_connections:
            self._evict_idle_or_fail()
        now = self._clock()
        session = self.client.connect(host, psk, now)
        self._add(session, address)
        self._send_handshake(session)
        self._check(session, now)
        self.wake()  # the socket task takes the handshake's timer into its deadline
        peer = session.peer
        return peer

    def _evict_idle_or_fail(self) -> None:
        if self._idle:
            oldest = next(iter(self._idle))
            self._close_session(oldest, SessionClosed("closed to make room for a new DTLS session"))
        else:
            raise NetworkError(f"{len(self._sessions)} DTLS sessions are handshaking (max_connections); "
                               "the request was not sent")

    def _add(self, session: Session, address: Address) -> None:
        session.peer = Peer("coaps", address, session)
        old = self._sessions.get(address)
        if old is not None:  # the client started afresh: its old session is gone
            self._remove(old, SessionClosed(f"{old.peer} started a new DTLS session"))
        self._sessions[address] = session
        if session.state is _HANDSHAKING:
            half_open = self._half_open
            half_open[session] = None
            if len(half_open) > self.max_handshakes:
                oldest = next(iter(half_open))
                self.layer.limits.hit("max_handshakes", self._clock(),
                                      "too many DTLS handshakes at once; the oldest was dropped")
                self._remove(oldest, SessionClosed("dropped: too many DTLS handshakes at once"))

    def _remove(self, session: Session, error: DtlsError) -> None:
        """Forget ``session`` and fail its peer's exchanges (nothing more is sent to it)."""
        peer = session.peer
        if self._sessions.get(peer.address) is session:
            del self._sessions[peer.address]
        self._half_open.pop(session, None)
        self._idle.pop(session, None)
        session.abort(error)  # no-op for a session that has ended already
        self.layer.cancel_peer(peer, self._clock())
        events = self._events
        if events is not None:
            events.peer_failed(peer, error)

    def _close_session(self, session: Session, error: DtlsError) -> None:
        session.close()
        self._send_handshake(session)
        self._remove(session, error)

    def _check(self, session: Session, now: float) -> None:
        """Act on a session's change of state: established, failed or closed."""
        state = session.state
        if state is _ESTABLISHED:
            if session in self._half_open:
                del self._half_open[session]
                idle = self._idle
                idle[session] = None
                limit = self.layer.tuning.max_connections
                while len(idle) > limit:
                    oldest = next(iter(idle))
                    if oldest is session:
                        break
                    self._close_session(oldest, SessionClosed("closed to make room for a new DTLS session"))
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("DTLS session with %s established (%s)", session.peer, session.security)
        elif state is not _HANDSHAKING:
            error = session.error or SessionClosed("the DTLS session ended")
            if log.isEnabledFor(logging.DEBUG):
                log.debug("DTLS session with %s ended: %s", session.peer, error)
            self._remove(session, error)

    def _send_handshake(self, session: Session) -> None:
        """Send what a session queued itself (handshake flights, alerts, held messages once sealed)."""
        for datagram in session.datagrams_to_send():
            self._send_raw(datagram, session.peer.address)

    def _send_raw(self, data: bytes, address: Address) -> None:
        try:
            sources = self._sources
            source = sources.get(address) if sources else None
            if source is None:
                self.sock.sendto(data, address)
            else:
                self.sock.sendmsg([data], [source], 0, address)
        except OSError:
            self.layer.stats.send_dropped += 1  # lost as on the wire; the handshake retransmits

    # --- sending -----------------------------------------------------------------------------------

    def _send_one(self, data: bytes, remote: Peer) -> None:
        session = remote.connection
        if not isinstance(session, Session):
            return  # a Reset the layer made for an address without a session: nothing to seal it with
        if session.state is _ESTABLISHED:
            try:
                sealed = session.seal(data)
            except NetworkError:
                return  # the session failed; the socket task reports it
            address = remote.address
            sources = self._sources
            source = sources.get(address) if sources else None
            if source is None:
                self.sock.sendto(sealed, address)
            else:
                self.sock.sendmsg([sealed], [source], 0, address)
            session.last_activity = self._clock()
            idle = self._idle
            if session in idle:
                idle.move_to_end(session)  # idle expiry walks the table in order of activity
        elif session.state is _HANDSHAKING:
            session.send(data)  # held until the handshake is done

    def _network_error(self, remote: Peer, error: OSError) -> None:
        """An ICMP error about a peer: its pending exchanges fail. A session still handshaking is gone
        too (a new request starts a new one); an established one is kept, since ICMP is not
        authenticated and anyone can forge it (idle expiry ends a session whose peer really is gone)."""
        super()._network_error(remote, error)
        session = remote.connection
        if isinstance(session, Session) and session.state is not _ESTABLISHED \
                and self._sessions.get(remote.address) is session:
            del self._sessions[remote.address]
            self._half_open.pop(session, None)
            self._idle.pop(session, None)
            session.abort(DtlsError(f"{remote} is unreachable: {error.strerror or error}"))

    async def drain(self) -> None:
        """Send close_notify to every established session (the Context's exit); synchronous, so
        cancellation cannot interrupt it."""
        for session in list(self._sessions.values()):
            if session.state is _ESTABLISHED:
                session.close()
                self._send_handshake(session)
        await anyio.lowlevel.checkpoint()

    # --- the socket task ---------------------------------------------------------------------------

    def _dispatch(self, event: Event, now: float) -> None:
        kind = type(event)
        if kind is RequestReceived or kind is ResponseReceived:
            message: Message = event.message
            session = message.remote.connection
            if isinstance(session, Session):
                message.security = session.security
        super()._dispatch(event, now)
        if kind is TimedOut:
            self._timed_out(event.message)

    def _timed_out(self, message: Message) -> None:
        """A request of ours went unanswered over a session: the server may have lost it (a restart, a
        failure whose alert never arrived) and drops our records unseen, so the session is dropped and
        the next request handshakes afresh."""
        session = message.remote.connection
        if message.type is Type.CON and message.code.is_request() and isinstance(session, Session) \
                and not session.server and self._sessions.get(message.remote.address) is session:
            self._close_session(session, SessionClosed(
                f"no answer from {message.remote}: its DTLS session was dropped"))

    def _drain(self, now: float) -> None:
        """Read the socket through the sessions: a datagram from an address without a session goes to
        the stateless cookie exchange; what a session decrypts goes to the message layer."""
        receive = self.layer.receive
        dispatch = self._dispatch
        sessions = self._sessions
        idle = self._idle
        recvfrom = self._recv_with_destination if self.pktinfo else self.sock.recvfrom
        for _ in range(_DRAIN_BUDGET):
            try:
                data, address = recvfrom(_MAX_DATAGRAM)
            except BlockingIOError:
                break
            except OSError:
                self._read_error_queue()
                continue
            if not data:
                self.dropped += 1
                continue
            session = sessions.get(address)
            if session is None or (data[:1] == b"\x16" and session.state is _ESTABLISHED
                                   and is_client_hello(data)):
                session = self._accept(data, address, now)
                if session is None:
                    continue
                plaintexts: list[bytes] = []
            else:
                plaintexts = session.receive(data, now)
                if session.state is _ESTABLISHED:
                    if session in idle:
                        if plaintexts:  # only what decrypted is activity
                            idle.move_to_end(session)
                    else:
                        self._check(session, now)
                else:
                    self._check(session, now)
            if session._out:
                self._send_handshake(session)
            peer = session.peer
            for plaintext in plaintexts:
                for event in receive(plaintext, peer, now):
                    dispatch(event, now)

    def _own_timers(self, now: float) -> float | None:
        return self._session_timers(now)

    def _accept(self, data: bytes, address: Address, now: float) -> Session | None:
        """A datagram from an address without a (usable) session: the stateless cookie exchange."""
        server = self.server
        if server is None or data[:1] != bytes((HANDSHAKE,)):
            self.dropped += 1
            return None
        session, reply = server.accept(data, address, now)
        if reply is not None:
            self.cookie_exchanges += 1
            self._send_raw(reply, address)
            return None
        if session is None:
            self.dropped += 1
            return None
        if len(self._sessions) >= self.layer.tuning.max_connections and address not in self._sessions \
                and not self._idle:
            self.layer.limits.hit("max_connections", now, "DTLS session table full; a client was refused")
            self.dropped += 1
            return None
        # A full table of established sessions still takes the new client half-open (bounded by
        # max_handshakes); an established session makes room only once the new one is established
        # (see _check), so a client that merely completes the cookie exchange evicts nobody.
        self._add(session, address)
        self._check(session, now)
        return session

    def _session_timers(self, now: float) -> float | None:
        """Handshake retransmissions and timeouts, idle expiry; the earliest deadline among them."""
        deadline = math.inf
        if self._half_open:
            for session in list(self._half_open):
                due = session.next_deadline()
                if due is not None and due <= now:
                    session.on_timer(now)
                    self._send_handshake(session)
                    self._check(session, now)
                    due = session.next_deadline() if session.state is _HANDSHAKING else None
                if due is not None and due < deadline:
                    deadline = due
        idle = self._idle
        if idle:
            timeout = self.layer.tuning.idle_timeout
            while idle:
                oldest = next(iter(idle))
                expires = oldest.last_activity + timeout
                if expires > now:
                    if expires < deadline:
                        deadline = expires
                    break
                self._close_session(oldest, SessionClosed(f"the DTLS session with {oldest.peer} was idle "
                                                          f"for {timeout:g} s"))
        return None if deadline == math.inf else deadline
