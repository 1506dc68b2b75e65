"""One RFC 8323 connection's CoAP state: the signalling of §5 (CSM, Ping/Pong, Release, Abort), size limits.

:class:`Connection` is sans-IO, like the UDP message layer: the transport feeds it what it reads with
:meth:`~Connection.receive` (TCP: stream bytes split anywhere; WebSockets: one binary message per call),
writes what :meth:`~Connection.data_to_send` returns, and calls :meth:`~Connection.on_timer` at
:meth:`~Connection.next_deadline`. Requests and responses go in with :meth:`~Connection.send` and come
out as :class:`MessageReceived` events; the signalling messages never leave this class, only what they
mean (:class:`CsmReceived`, :class:`PongReceived`, ...).

The rules, all in :meth:`Connection._handle` and :meth:`Connection._signal`:

* Our CSM is queued on creation, so it is the first thing sent (§3.3, §5.3); the peer's must be the
  first thing received. Any other message before it is a protocol violation. Empty messages (0.00) are
  ignored at any time (§3.4: they "can always be sent and MUST be ignored"), and an Abort is accepted at
  any time (answering it would be pointless); neither counts as the CSM, so the CSM deadline still holds.
* CSM options are cumulative (§5.3): a later CSM changes only what it carries. Max-Message-Size (2,
  uint of 0-4 bytes) and Block-Wise-Transfer (4, empty) are understood; a value of another length is
  "a parameter problem with the value of an elective option" and an unknown critical (odd) option
  cannot be processed: both abort with Bad-CSM-Option naming it (§5.6). Unknown elective options are
  ignored (§5.2).
* Signalling option numbers belong to their code (§5.2: Custody is 2 in Ping and Pong, Max-Message-Size
  2 in a CSM, Alternative-Address 2 in a Release, Bad-CSM-Option 2 in an Abort), so they live here and
  not in the request/response option registry of :mod:`coapio.protocol.options`. An unknown critical
  option in any signalling message aborts (§5.2); elective options of a wrong length are ignored, as
  RFC 7252 §5.4.3 asks of any elective option it cannot use.
* A code in 7.00-7.31 that RFC 8323 does not assign (7.00, 7.06-7.31) is a message this endpoint cannot
  process; reliable transports reject such messages with an Abort (§5.6), as aiocoap does.
* A Ping is answered at once with a Pong carrying its token (§5.4). A Ping carrying Custody gets
  Custody back: everything received before the Ping has been handed to the application by then, in
  order, which is what this layer can vouch for ("processed" has no definition beyond that, §5.4.1).
* Sizes: a message over our Max-Message-Size is refused as soon as its length is known, before its body
  is buffered (:class:`~coapio.protocol.framing.FrameTooLarge`), and aborts. :meth:`Connection.send`
  raises :class:`MessageTooLarge` for a message over the peer's limit (1152 until its CSM says otherwise,
  §5.3.1) and queues nothing. A message's size is its whole encoded frame.
* A malformed frame aborts with 7.05 and a diagnostic payload (§5.6); after that, nothing more is
  received or sent. :class:`ProtocolViolation` tells the transport to write the Abort and close.
* Release (§5.5) and Abort end the connection: after :meth:`Connection.release` or
  :meth:`Connection.abort` nothing more can be sent; a received Abort closes it at once; a received
  Release is reported and the connection stays usable for messages in flight, except that new requests
  are refused (the peer asked to close it; they belong on a new connection).

Received messages carry ``type`` CON and ``mid`` None (see :mod:`coapio.protocol.framing`).
"""

from __future__ import annotations

import attrs

from ..error import CoapError
from .codes import Code
from .framing import FramingError, TcpDecoder, decode_ws, encode_tcp, encode_ws
from .message import Message, Remote
from .options import Options, decode_uint, encode_uint

__all__ = [
    "BASE_MAX_MESSAGE_SIZE",
    "AbortReceived",
    "Closed",
    "Connection",
    "ConnectionClosed",
    "CsmReceived",
    "Event",
    "MessageReceived",
    "MessageTooLarge",
    "PongReceived",
    "ProtocolViolation",
    "ReleaseReceived",
    "SignalOption",
]

#: Max-Message-Size before a CSM says otherwise (RFC 8323 §5.3.1, from RFC 7252 §4.6).
BASE_MAX_MESSAGE_SIZE = 1152
#: Diagnostic payloads we send are cut to this many bytes (at a character boundary).
_MAX_DIAGNOSTIC = 256


class SignalOption:
    """Signalling option numbers, per code (RFC 8323 §5.3-§5.6; the "CoAP Signaling Option Numbers")."""

    MAX_MESSAGE_SIZE = 2  # 7.01 CSM, uint 0-4 bytes, base value 1152
    BLOCK_WISE_TRANSFER = 4  # 7.01 CSM, empty
    CUSTODY = 2  # 7.02 Ping, 7.03 Pong, empty
    ALTERNATIVE_ADDRESS = 2  # 7.04 Release, string 1-255 bytes, repeatable
    HOLD_OFF = 4  # 7.04 Release, uint 0-3 bytes
    BAD_CSM_OPTION = 2  # 7.05 Abort, uint 0-2 bytes


#: The options each signalling code understands: number -> (min length, max length).
_KNOWN: dict[int, dict[int, tuple[int, int]]] = {
    Code.CSM: {SignalOption.MAX_MESSAGE_SIZE: (0, 4), SignalOption.BLOCK_WISE_TRANSFER: (0, 0)},
    Code.PING: {SignalOption.CUSTODY: (0, 0)},
    Code.PONG: {SignalOption.CUSTODY: (0, 0)},
    Code.RELEASE: {SignalOption.ALTERNATIVE_ADDRESS: (1, 255), SignalOption.HOLD_OFF: (0, 3)},
    Code.ABORT: {SignalOption.BAD_CSM_OPTION: (0, 2)},
}


class MessageTooLarge(CoapError, ValueError):
    """A message larger than the peer's Max-Message-Size (RFC 8323 §5.3.1); nothing was queued."""

    def __init__(self, size: int, limit: int):
        super().__init__(f"message of {size} bytes exceeds the peer's Max-Message-Size {limit}")
        self.size = size
        self.limit = limit


class ConnectionClosed(CoapError):
    """The connection was aborted or released: nothing more can be sent on it."""


# --- events ------------------------------------------------------------------------------------------------


class Event:
    """Base of what :meth:`Connection.receive` and :meth:`Connection.on_timer` report."""

    __slots__ = ()


@attrs.frozen(slots=True)
class MessageReceived(Event):
    """A request, response or other non-signalling message (``type`` CON, ``mid`` None)."""

    message: Message


@attrs.frozen(slots=True)
class CsmReceived(Event):
    """The peer's CSM, with the settings now in force (the first one, or a later update)."""

    max_message_size: int
    block_wise: bool


@attrs.frozen(slots=True)
class PongReceived(Event):
    """The answer to a Ping we sent (matched by token)."""

    token: bytes
    custody: bool = False


@attrs.frozen(slots=True)
class ReleaseReceived(Event):
    """The peer asks us to close the connection (RFC 8323 §5.5); new requests are refused from now on.

    ``alternative_address`` is the first Alternative-Address ("host:port" authority), if any;
    ``alternative_addresses`` all of them. ``hold_off`` is seconds not to reconnect, or None.
    """

    diagnostic: str
    alternative_address: str | None = None
    hold_off: int | None = None
    alternative_addresses: tuple[str, ...] = ()


@attrs.frozen(slots=True)
class AbortReceived(Event):
    """The peer aborted the connection (RFC 8323 §5.6); a :class:`Closed` follows."""

    diagnostic: str
    bad_csm_option: int | None = None


@attrs.frozen(slots=True)
class ProtocolViolation(Event):
    """The peer broke RFC 8323; we aborted: the 7.05 is in ``data_to_send()``, then close. A
    :class:`Closed` follows."""

    diagnostic: str
    bad_csm_option: int | None = None


@attrs.frozen(slots=True)
class Closed(Event):
    """Nothing more can be sent or received on this connection."""


# --- the connection ----------------------------------------------------------------------------------------


def _diagnostic(payload: bytes) -> str:
    return payload.decode("utf-8", "replace")


def _diagnostic_payload(text: str) -> bytes:
    return text.encode("utf-8")[:_MAX_DIAGNOSTIC].decode("utf-8", "ignore").encode("utf-8")


class Connection:
    """One RFC 8323 connection's CoAP state: CSM exchange, size limits, Ping/Pong, Release, Abort.

    ``client`` is True for the Connection Initiator. ``max_message_size`` is what we announce and
    enforce on what we receive; ``block_wise`` whether we announce Block-Wise-Transfer. Without the
    peer's CSM within ``csm_timeout`` seconds of ``now``, :meth:`on_timer` aborts. ``scheme`` and
    ``remote`` are set on every received message (the scheme defaults to ``coap+tcp`` or ``coap+ws``).

    Readable state: ``peer_csm_received``, ``peer_max_message_size``, ``peer_block_wise``, ``bert``,
    ``closed`` (nothing more can be sent), ``peer_released``.
    """

    def __init__(
        self,
        *,
        client: bool,
        websocket: bool,
        max_message_size: int = BASE_MAX_MESSAGE_SIZE,
        block_wise: bool = False,
        csm_timeout: float | None = None,
        now: float = 0.0,
        scheme: str | None = None,
        remote: Remote = None,
    ):
        if not 64 <= max_message_size <= 0xFFFFFFFF:
            raise ValueError(f"max_message_size {max_message_size} outside 64..4294967295")
        self.client = client
        self.websocket = websocket
        self.max_message_size = max_message_size
        self.block_wise = block_wise
        self.scheme = scheme or ("coap+ws" if websocket else "coap+tcp")
        self.remote = remote
        self.peer_csm_received = False
        self.peer_max_message_size = BASE_MAX_MESSAGE_SIZE
        self.peer_block_wise = False
        self.peer_released = False
        self.closed = False
        self._csm_deadline = None if csm_timeout is None else now + csm_timeout
        self._decoder = None if websocket else TcpDecoder(max_message_size, scheme=self.scheme, remote=remote)
        self._encode = encode_ws if websocket else encode_tcp
        self._out: list[bytes] = []
        csm = Message(code=Code.CSM)
        csm.opt.add(SignalOption.MAX_MESSAGE_SIZE, encode_uint(max_message_size))
        if block_wise:
            csm.opt.add(SignalOption.BLOCK_WISE_TRANSFER, b"")
        self._queue(csm)

    # --- readable state ---------------------------------------------------------------------------------

    @property
    def bert(self) -> bool:
        """Whether both sides indicated BERT (RFC 8323 §5.3.2, §6): Block-Wise-Transfer together with a
        Max-Message-Size above 1152. Only then may Block1/Block2 carry SZX 7."""
        return (
            self.block_wise and self.max_message_size > BASE_MAX_MESSAGE_SIZE
            and self.peer_block_wise and self.peer_max_message_size > BASE_MAX_MESSAGE_SIZE
        )

    # --- input ----------------------------------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> list[Event]:
        """Process what was read: stream bytes (TCP, any split) or exactly one WebSocket message.

        Never raises for anything the peer sends: a malformed or oversized message becomes a
        :class:`ProtocolViolation` (and an Abort in ``data_to_send()``). After close, input is ignored.
        """
        if self.closed:
            return []
        events: list[Event] = []
        error: FramingError | None = None
        messages: list[Message]
        if self._decoder is not None:
            try:
                messages = self._decoder.feed(data)
            except FramingError as caught:
                messages, error = caught.messages, caught
        else:
            try:
                messages = [decode_ws(data, self.max_message_size, scheme=self.scheme, remote=self.remote)]
            except FramingError as caught:
                messages, error = [], caught
        for msg in messages:
            self._handle(msg, events)
            if self.closed:
                return events
        if error is not None:
            self._violation(error.reason, events)
        return events

    def on_timer(self, now: float) -> list[Event]:
        """Act on a deadline reached by ``now``: without the peer's CSM by its deadline, abort."""
        events: list[Event] = []
        deadline = self.next_deadline()
        if deadline is not None and now >= deadline:
            self._violation("no CSM received in time", events)
        return events

    def next_deadline(self) -> float | None:
        """When :meth:`on_timer` must be called (the peer's CSM deadline), or None."""
        if self.closed or self.peer_csm_received:
            return None
        return self._csm_deadline

    def connection_lost(self) -> list[Event]:
        """The transport's connection ended (EOF, reset, closed by us): [Closed()] unless already closed."""
        if self.closed:
            return []
        self.closed = True
        return [Closed()]

    # --- output ---------------------------------------------------------------------------------------------

    def send(self, message: Message) -> None:
        """Queue a request, response or notification (or an Empty keep-alive, §3.4).

        Raise :class:`ConnectionClosed` after an abort or release (and for a request once the peer sent
        a Release), :class:`MessageTooLarge` when the encoded message exceeds the peer's
        Max-Message-Size, ValueError for a signalling code (use :meth:`ping`, :meth:`release`,
        :meth:`abort`) or a message no framing allows (e.g. a token over 8 bytes). Nothing is queued
        when it raises.
        """
        if self.closed:
            raise ConnectionClosed("the connection is closed")
        code = message.code
        if code >= 0xE0:
            raise ValueError(f"signalling code {code.dotted}: use ping(), release() or abort()")
        if self.peer_released and code.is_request():
            raise ConnectionClosed("the peer released the connection; send requests on a new one")
        data = self._encode(message)
        if len(data) > self.peer_max_message_size:
            raise MessageTooLarge(len(data), self.peer_max_message_size)
        self._out.append(data)

    def ping(self, token: bytes = b"", custody: bool = False) -> None:
        """Queue a Ping (RFC 8323 §5.4); its Pong arrives as :class:`PongReceived` with ``token``.

        With ``custody``, ask the peer to answer only once it has processed everything we sent before.
        """
        if self.closed:
            raise ConnectionClosed("the connection is closed")
        ping = Message(code=Code.PING, token=token)
        if custody:
            ping.opt.add(SignalOption.CUSTODY, b"")
        self._queue(ping)

    def release(
        self, diagnostic: str = "", alternative_address: str | None = None, hold_off: int | None = None
    ) -> None:
        """Queue a Release (RFC 8323 §5.5) and close: nothing more is sent or received after it.

        ``alternative_address`` ("host:port") asks the peer to reconnect there instead; ``hold_off``
        asks it not to reconnect for that many seconds. Send the responses still owed first: this layer
        leaves it to the transport to close once the Release is written.
        """
        if self.closed:
            raise ConnectionClosed("the connection is closed")
        release = Message(code=Code.RELEASE, payload=_diagnostic_payload(diagnostic))
        if alternative_address is not None:
            raw = alternative_address.encode("utf-8")
            if not 1 <= len(raw) <= 255:
                raise ValueError("an Alternative-Address has 1 to 255 bytes")
            release.opt.add(SignalOption.ALTERNATIVE_ADDRESS, raw)
        if hold_off is not None:
            if not 0 <= hold_off < 1 << 24:
                raise ValueError("Hold-Off is 0 to 16777215 seconds")
            release.opt.add(SignalOption.HOLD_OFF, encode_uint(hold_off))
        self._queue(release)
        self.closed = True

    def abort(self, diagnostic: str, bad_csm_option: int | None = None) -> None:
        """Queue an Abort (RFC 8323 §5.6) with a diagnostic payload and close; a no-op once closed."""
        if self.closed:
            return
        self._queue_abort(diagnostic, bad_csm_option)

    def data_to_send(self) -> list[bytes]:
        """What to write, in order: TCP byte chunks, or one element per WebSocket binary message."""
        out, self._out = self._out, []
        return out

    def has_data_to_send(self) -> bool:
        """Whether :meth:`data_to_send` has something (without taking it)."""
        return bool(self._out)

    # --- internals: the rules -------------------------------------------------------------------------------

    def _queue(self, message: Message) -> None:
        self._out.append(self._encode(message))

    def _queue_abort(self, diagnostic: str, bad_csm_option: int | None) -> None:
        abort = Message(code=Code.ABORT, payload=_diagnostic_payload(diagnostic))
        if bad_csm_option is not None:
            abort.opt.add(SignalOption.BAD_CSM_OPTION, encode_uint(bad_csm_option & 0xFFFF))
        self._queue(abort)
        self.closed = True

    def _violation(self, diagnostic: str, events: list[Event], bad_csm_option: int | None = None) -> None:
        self._queue_abort(diagnostic, bad_csm_option)
        events.append(ProtocolViolation(diagnostic, bad_csm_option))
        events.append(Closed())

    def _handle(self, msg: Message, events: list[Event]) -> None:
        code = msg.code
        if code == Code.EMPTY:
            return  # §3.4: can always be sent and MUST be ignored
        if code == Code.ABORT:
            self._signal(msg, events)
        elif not self.peer_csm_received and code != Code.CSM:
            self._violation(f"expected a CSM as the first message, got {code.dotted}", events)
        elif code >= 0xE0:
            self._signal(msg, events)
        else:
            events.append(MessageReceived(msg))

    def _signal(self, msg: Message, events: list[Event]) -> None:
        code = msg.code
        known = _KNOWN.get(code)
        if known is None:
            self._violation(f"unknown signalling code {code.dotted}", events)
            return
        usable = Options()  # the known options of allowed lengths, for the code's handler below
        for number, raw in msg.opt:
            bounds = known.get(number)
            if bounds is None:
                if number & 1 and code != Code.ABORT:  # an Abort is never answered with another
                    name = "CSM option" if code == Code.CSM else f"critical option in {code.dotted}"
                    self._violation(
                        f"unknown {name} {number}", events, number if code == Code.CSM else None
                    )
                    return
                continue  # unknown elective: ignored (§5.2, §5.4)
            if not bounds[0] <= len(raw) <= bounds[1]:
                if code == Code.CSM:
                    self._violation(f"CSM option {number} has {len(raw)} bytes", events, number)
                    return
                continue  # an elective option it cannot use is ignored (RFC 7252 §5.4.3)
            usable.add(number, raw)
        if code == Code.CSM:
            raw_size = usable.get(SignalOption.MAX_MESSAGE_SIZE)  # the first; repeats are ignored
            if raw_size is not None:
                self.peer_max_message_size = decode_uint(raw_size)
            if SignalOption.BLOCK_WISE_TRANSFER in usable:
                self.peer_block_wise = True  # cumulative: a later CSM without it does not revoke it
            self.peer_csm_received = True
            events.append(CsmReceived(self.peer_max_message_size, self.peer_block_wise))
        elif code == Code.PING:
            custody = SignalOption.CUSTODY in usable
            pong = Message(code=Code.PONG, token=msg.token)
            if custody:
                pong.opt.add(SignalOption.CUSTODY, b"")
            self._queue(pong)
        elif code == Code.PONG:
            events.append(PongReceived(msg.token, SignalOption.CUSTODY in usable))
        elif code == Code.RELEASE:
            addresses = tuple(
                raw.decode("utf-8", "replace") for raw in usable.get_all(SignalOption.ALTERNATIVE_ADDRESS)
            )
            raw_hold_off = usable.get(SignalOption.HOLD_OFF)
            self.peer_released = True
            events.append(ReleaseReceived(
                _diagnostic(msg.payload),
                addresses[0] if addresses else None,
                None if raw_hold_off is None else decode_uint(raw_hold_off),
                addresses,
            ))
        else:  # Abort
            raw_bad = usable.get(SignalOption.BAD_CSM_OPTION)
            self.closed = True
            bad = None if raw_bad is None else decode_uint(raw_bad)
            events.append(AbortReceived(_diagnostic(msg.payload), bad))
            events.append(Closed())
