"""The sans-IO DTLS 1.2 engine over pyOpenSSL: datagrams in, datagrams and application data out, and
the next deadline; no sockets, no tasks, the time is an argument.

:class:`Endpoint` holds one side's OpenSSL contexts (made from :class:`DtlsCredentials`) and, on a server,
the stateless cookie exchange (RFC 6347 §4.2.1): a ClientHello without a valid cookie is answered by a
HelloVerifyRequest made by OpenSSL's ``DTLSv1_listen`` on one reused listener object, with an HMAC of the
client's address under a per-endpoint secret as the cookie, and nothing is remembered about the sender.
Only a ClientHello that returns the cookie (proving the address) becomes a :class:`Session`.

A :class:`Session` is one association with one peer: it handshakes (retransmitting its flight when
:meth:`Session.on_timer` finds OpenSSL's timer expired), then seals and opens application data, one CoAP
message per record and per datagram. A failed handshake, an alert or a close_notify puts it in a final
state with :attr:`Session.error` naming the cause.

OpenSSL's DTLS timer reads the wall clock itself; the engine turns its "seconds left" into a deadline on
the caller's clock when it is asked.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import hmac
import ipaddress
import os
from typing import Any

from OpenSSL import SSL

from ..security import Security
from . import _binding, records
from .credentials import DtlsCredentials, Psk
from .errors import CredentialsError, DtlsError, HandshakeFailed, RecordError, SessionClosed

__all__ = ["COOKIE_LIFETIME", "DEFAULT_MTU", "Endpoint", "Session", "State"]

#: The largest datagram the engine makes (IPv6's minimum MTU minus the IP and UDP headers is 1232; CoAP
#: messages of 1 KiB blocks fit with the DTLS overhead).
DEFAULT_MTU = 1280
_READ = 65536
_MAX_PENDING = 64  # plaintext datagrams held while a client handshakes
#: Cipher suites: RFC 7252 §9.1.3 names TLS_PSK_WITH_AES_128_CCM_8 and TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8
#: as mandatory; the current AEAD suites come first. PSK suites only with PSK, certificate suites only
#: with certificates, so a client never ends up negotiating a kind it has no credentials for.
#: CCM_8's 64-bit tag is below OpenSSL's default security level, which would refuse the one suite that
#: constrained peers (tinydtls, RFC 7252's mandatory PSK suite) speak; the PSK list therefore lowers the
#: level to 0. It only lists AEAD suites (RFC 7925 needs only CCM_8), and a PSK handshake has no
#: certificate whose key size the level would otherwise check. No CBC suite: with CBC, OpenSSL ends the
#: session on any record that fails its MAC (bad_record_mac), so one forged datagram would kill it.
_PSK_CIPHERS = "ECDHE-PSK-CHACHA20-POLY1305:PSK-AES128-GCM-SHA256:PSK-AES256-GCM-SHA384:PSK-AES128-CCM:" \
               "PSK-AES128-CCM8"
_PSK_LEVEL = ":@SECLEVEL=0"
_CERT_CIPHERS = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-CCM8:" \
                "ECDHE-ECDSA-AES128-CCM:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256:" \
                "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305"
_COOKIE_SIZE = 16
#: Seconds one cookie key is used (RFC 6347 §4.2.1 asks for a secret that changes now and then).
COOKIE_LIFETIME = 300.0

# TLS alert descriptions worth naming in an error (RFC 5246 §7.2, RFC 4279 §2).
_ALERTS = {
    0: "close_notify", 10: "unexpected_message", 20: "bad_record_mac", 40: "handshake_failure",
    42: "bad_certificate", 43: "unsupported_certificate", 44: "certificate_revoked",
    45: "certificate_expired", 46: "certificate_unknown", 47: "illegal_parameter", 48: "unknown_ca",
    49: "access_denied", 50: "decode_error", 51: "decrypt_error", 70: "protocol_version",
    71: "insufficient_security", 80: "internal_error", 90: "user_canceled", 110: "unsupported_extension",
    115: "unknown_psk_identity",
}
_CAUSES = {
    20: "the PSK does not match (bad record MAC)",
    51: "the PSK does not match (decrypt error)",
    115: "the server does not know this PSK identity",
    42: "the certificate was refused",
    48: "the certificate is from an unknown CA",
    46: "the certificate was not accepted",
    45: "the certificate has expired",
    40: "no cipher suite or credentials in common",
    71: "no cipher suite or credentials in common",
}
_CB_READ, _CB_WRITE, _CB_ALERT = 0x04, 0x08, 0x4000
#: The epoch of every record after the handshake (DTLS 1.2 without renegotiation, which is off).
_EPOCH = 1
# X.509 verification results worth naming (OpenSSL's X509_V_ERR_*).
_VERIFY_ERRORS = {
    2: "its issuer is unknown", 10: "it has expired", 9: "it is not yet valid",
    18: "it is self-signed and not trusted", 19: "its chain ends in an untrusted self-signed certificate",
    20: "it is not from a trusted CA", 21: "it is not from a trusted CA",
    62: "it does not name the host",
}


class State(enum.Enum):
    HANDSHAKING = "handshaking"
    ESTABLISHED = "established"
    CLOSED = "closed"
    FAILED = "failed"


def _min_record(cipher: str | None) -> int:
    """The shortest record body the negotiated suite can produce: explicit nonce and tag (an empty
    plaintext). OpenSSL treats a current-epoch record shorter than that as a fatal error."""
    if cipher is None:
        return 0
    if "CHACHA20" in cipher or cipher.endswith("CCM8"):
        return 16  # ChaCha20-Poly1305: no explicit nonce, 16-byte tag; CCM_8: 8-byte nonce, 8-byte tag
    if "GCM" in cipher or cipher.endswith("CCM"):
        return 24  # 8-byte explicit nonce, 16-byte tag
    return 16


def _subject(connection: SSL.Connection) -> str | None:
    """The peer certificate's subject; None without one, or when it cannot be parsed (a peer's
    certificate must never raise out of the handshake)."""
    try:
        cert = connection.get_peer_certificate(as_cryptography=True)
        return None if cert is None else cert.subject.rfc4514_string()
    except Exception:
        return None


class Session:
    """One DTLS association with one peer; see the module docstring.

    ``peer`` is for the owner (the transport puts the :class:`~coapio.Peer` there); ``security`` is what
    authenticated the peer, set once the handshake is done; ``error`` why the session ended, if it failed.
    """

    def __init__(self, endpoint: Endpoint, connection: SSL.Connection, *, server: bool, now: float,
                 psk: Psk | None = None):
        self.endpoint = endpoint
        self.server = server
        self.state = State.HANDSHAKING
        self.peer: Any = None
        self.security: Security | None = None
        self.error: DtlsError | None = None
        self.started = now
        self.last_activity = now
        self._connection = connection
        self._psk = psk
        self._out: list[bytes] = []
        self._pending: list[bytes] = []
        self._timer: float | None = None
        self._alert: tuple[bool, int] | None = None  # (received, description) of the last fatal alert
        self._verify_problem: str | None = None
        self._records: _binding.Records | None = None  # the hot path, once established
        self._min_record = 0  # the shortest valid encrypted record body, once established
        #: Records dropped unseen by OpenSSL once established (wrong epoch, too short to be genuine).
        self.discarded = 0
        #: The host a client expects the server's certificate to name.
        self.expected_host: str | None = None
        #: The PSK identity the server's callback accepted for this handshake.
        self.psk_identity: bytes | None = None
        connection.set_app_data(self)

    def __repr__(self) -> str:
        return f"<DTLS session {self.state.value} {self.peer}>"

    @property
    def established(self) -> bool:
        return self.state is State.ESTABLISHED

    def authenticates(self, host: str, psk: Psk | None) -> bool:
        """Whether this client session may carry requests for ``host`` that would use ``psk``: the same
        PSK, or certificates with the server's certificate naming ``host`` (checked once the handshake is
        done; a session still handshaking fits only the host it was opened for). A server-role session
        (the peer opened it as our client) never does: that peer was never verified as a server."""
        if self.server or psk != self._psk:
            return False
        if psk is not None or not self.endpoint.credentials.check_hostname:
            return True
        if self.expected_host is not None and host.lower() == self.expected_host.lower():
            return True
        if self.state is not State.ESTABLISHED:
            return False
        certificate = self._connection.get_peer_certificate(as_cryptography=True)
        return certificate is not None and _names_host(certificate, host)

    # --- input -----------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Begin (client) or go on with (server, after the cookie exchange) the handshake."""
        self._handshake(now)

    def receive(self, datagram: bytes, now: float) -> list[bytes]:
        """Take one datagram from the peer; return the application data it carried (each a CoAP
        message). Afterwards :meth:`datagrams_to_send` holds any handshake or alert records to send."""
        state = self.state
        if state is State.CLOSED or state is State.FAILED:
            return []
        # Only records that decrypt count as activity (``last_activity``): anyone can send junk from a
        # peer's address, and it must not keep a session from expiring.
        # The usual datagram is one application-data record: one read takes all of it (a second read,
        # to learn that nothing is left, would cost as much as the first).
        single = len(datagram) > 12 and datagram[0] == records.APPLICATION_DATA \
            and len(datagram) == records.HEADER_SIZE + (datagram[11] << 8 | datagram[12])
        if state is State.ESTABLISHED:
            # Records that cannot be genuine are dropped before OpenSSL sees them (RFC 6347 §4.1.2.7):
            # OpenSSL would end the session on some of them, so a forged datagram would kill it.
            if single:
                if datagram[3] != 0 or datagram[4] != _EPOCH \
                        or len(datagram) - records.HEADER_SIZE < self._min_record:
                    self.discarded += 1
                    return []
            else:
                datagram = self._plausible(datagram)
                if not datagram:
                    return []
        fast = self._records
        if single and fast is not None:
            plaintext = fast.open(datagram)
            if plaintext is not None:
                self.last_activity = now
                return [plaintext]
            return self._read_noting(datagram, single, now)
        try:
            self._connection.bio_write(datagram)
        except SSL.Error:
            return []
        if state is State.HANDSHAKING:
            self._handshake(now)
            if not self.established:
                return []
            self.last_activity = now
        return self._read_noting(datagram, single, now)

    def _read_noting(self, datagram: bytes, single: bool, now: float) -> list[bytes]:
        plaintexts = self._read(datagram, single)
        if plaintexts:
            self.last_activity = now
        return plaintexts

    def _plausible(self, datagram: bytes) -> bytes:
        """The records of ``datagram`` (an established session's input) that may be genuine: encrypted
        ones of the current epoch no shorter than the suite's minimum, and the earlier epoch's
        handshake records of a retransmitted flight; application data only of the current epoch."""
        try:
            found = records.split(datagram)
        except RecordError:
            self.discarded += 1
            return b""
        kept = []
        shortest = self._min_record
        for record in found:
            epoch = record[3] << 8 | record[4]
            if epoch > _EPOCH or (record[0] == records.APPLICATION_DATA and epoch != _EPOCH) \
                    or (epoch == _EPOCH and len(record) - records.HEADER_SIZE < shortest):
                self.discarded += 1
            else:
                kept.append(record)
        return b"".join(kept)

    def _read(self, datagram: bytes, single: bool) -> list[bytes]:
        """The plaintexts of what was written into the connection; a close_notify or an error ends it."""
        connection = self._connection
        plaintexts = []
        while True:
            try:
                plaintexts.append(connection.recv(_READ))
                if single:
                    break
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self._end(SessionClosed(f"{self._name()} closed the DTLS session"), State.CLOSED)
                break
            except SSL.Error as e:
                self._end(self._describe(e, "the DTLS session failed"), State.FAILED)
                break
        if datagram[0] != records.APPLICATION_DATA or self.state is not State.ESTABLISHED:
            self._collect()  # a retransmitted flight or an alert may need an answer (the peer learns why)
        return plaintexts

    def on_timer(self, now: float) -> None:
        """Retransmit the handshake flight when OpenSSL's timer ran out; give up after the endpoint's
        ``handshake_timeout``."""
        if self.state is not State.HANDSHAKING:
            return
        if now >= self.started + self.endpoint.handshake_timeout:
            text = f"no DTLS handshake with {self._name()} within {self.endpoint.handshake_timeout:g} s"
            if self._psk is not None and b"finished" in self._connection.get_state_string():
                # A record that does not decrypt is dropped silently in DTLS (RFC 6347 §4.1.2.7): a
                # server with another key for our identity never answers our Finished.
                text += ": our Finished went unanswered, so the PSK is probably wrong"
            self._end(HandshakeFailed(text), State.FAILED)
            return
        if self._timer is not None and now >= self._timer:
            try:
                self._connection.DTLSv1_handle_timeout()
            except SSL.Error as e:
                self._end(self._describe(e, "the DTLS handshake failed"), State.FAILED)
                return
            self._collect()
            self._arm(now)

    def next_deadline(self) -> float | None:
        """When :meth:`on_timer` must run next (None: no timer of the handshake is pending)."""
        if self.state is not State.HANDSHAKING:
            return None
        limit = self.started + self.endpoint.handshake_timeout
        return limit if self._timer is None else min(self._timer, limit)

    # --- output ----------------------------------------------------------------------------------

    def send(self, plaintext: bytes) -> None:
        """Queue one CoAP message: sealed at once when established, held (bounded) while handshaking.

        Raises :class:`DtlsError` when the session has ended."""
        state = self.state
        if state is State.ESTABLISHED:
            self._out.append(self.seal(plaintext))
        elif state is State.HANDSHAKING:
            if len(self._pending) < _MAX_PENDING:
                self._pending.append(plaintext)
        else:
            raise self.error or SessionClosed("the DTLS session is closed")

    def seal(self, plaintext: bytes) -> bytes:
        """The datagram carrying ``plaintext`` as one record (the session must be established)."""
        fast = self._records
        if fast is not None:
            sealed = fast.seal(plaintext)
            if sealed is not None:
                return sealed
        connection = self._connection  # pyOpenSSL's calls raise the error OpenSSL reports
        try:
            connection.send(plaintext)
            return connection.bio_read(_READ)
        except SSL.Error as e:
            error = self._describe(e, "the DTLS session failed")
            self._end(error, State.FAILED)
            raise error from None

    def abort(self, error: DtlsError) -> None:
        """End the session without sending anything (its peer is unreachable, or it was dropped)."""
        self._end(error, State.FAILED)

    def datagrams_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def close(self) -> None:
        """Send close_notify (once) and end the session."""
        if self.state is State.ESTABLISHED:
            with contextlib.suppress(SSL.Error):
                self._connection.shutdown()
            self._collect()
        self._end(SessionClosed("the DTLS session was closed"), State.CLOSED)

    # --- internals -------------------------------------------------------------------------------

    def _handshake(self, now: float) -> None:
        try:
            self._connection.do_handshake()
        except SSL.WantReadError:
            self._collect()
            self._arm(now)
            return
        except SSL.Error as e:
            self._collect()  # the alert that tells the peer
            self._end(self._describe(e, "the DTLS handshake failed"), State.FAILED)
            return
        self._collect()
        self._established()

    def _established(self) -> None:
        connection = self._connection
        self.state = State.ESTABLISHED
        self._timer = None
        self._records = _binding.Records(connection, self.endpoint.buffer)
        self._min_record = _min_record(connection.get_cipher_name())
        if self.server:
            # A server session names only what authenticated the client: its PSK identity, or a client
            # certificate verified against ``ca``. A certificate handshake without ``ca`` asked for no
            # client certificate, so that client is anonymous (``security`` stays None, and resources
            # with ``requires_security`` refuse it).
            identity = self.psk_identity
            if identity is not None:
                self.security = Security("dtls-psk", identity.decode("utf-8", "replace"), self)
            elif self.endpoint.credentials.ca is not None:
                subject = _subject(connection)
                self.security = None if subject is None else Security("dtls-x509", subject, self)
        elif self._psk is not None:
            self.security = Security("dtls-psk", self._psk.identity.decode("utf-8", "replace"), self)
        else:
            self.security = Security("dtls-x509", _subject(connection) or "", self)
        pending, self._pending = self._pending, []
        for plaintext in pending:
            self._out.append(self.seal(plaintext))

    def _arm(self, now: float) -> None:
        left = self._connection.DTLSv1_get_timeout()
        self._timer = None if left is None else now + left

    def _collect(self) -> None:
        """Move what OpenSSL wrote into datagrams of at most the MTU, cut at record boundaries."""
        chunks = []
        connection = self._connection
        while True:
            try:
                chunks.append(connection.bio_read(_READ))
            except SSL.Error:
                break
        if not chunks:
            return
        data = b"".join(chunks)
        try:
            self._out.extend(records.pack(records.split(data), self.endpoint.mtu))
        except RecordError:
            self._out.append(data)  # OpenSSL's own output: send it as it is

    def _end(self, error: DtlsError, state: State) -> None:
        if self.state is State.CLOSED or self.state is State.FAILED:
            return
        self.state = state
        self.error = error
        self._pending = []
        self._timer = None
        self._records = None

    def _name(self) -> str:
        return "the client" if self.server else "the server"

    def _alert_seen(self, received: bool, description: int) -> None:
        if description != 0 and self._alert is None:
            self._alert = (received, description)

    def _describe(self, exc: SSL.Error, what: str) -> HandshakeFailed:
        """An error naming the cause: the alert sent or received, a certificate problem, or OpenSSL's
        reason."""
        if self._verify_problem is not None:
            return HandshakeFailed(f"{what}: {self._verify_problem}", alert=42)
        alert = self._alert
        if alert is not None:
            received, description = alert
            name = _ALERTS.get(description, f"alert {description}")
            cause = _CAUSES.get(description)
            if not received and description == 115:
                cause = "the client's PSK identity is unknown"
            who = f"{self._name()} sent" if received else "sent"
            text = f"{what}: {cause} ({who} {name})" if cause else f"{what}: {who} {name}"
            return HandshakeFailed(text, alert=description)
        reasons = [part[2] for part in exc.args[0] if isinstance(part, tuple) and len(part) == 3] \
            if exc.args and isinstance(exc.args[0], list) else []
        return HandshakeFailed(f"{what}: {'; '.join(reasons) or exc}")


def _psk_accepted(connection: SSL.Connection, identity: bytes) -> None:
    session = connection.get_app_data()
    if isinstance(session, Session):
        session.psk_identity = identity


def _info(connection: SSL.Connection, where: int, ret: int) -> None:
    """OpenSSL's info callback: note the first fatal alert each way (it names the cause of a failure)."""
    if where & _CB_ALERT and ret >> 8 == 2:
        session = connection.get_app_data()
        if isinstance(session, Session):
            session._alert_seen(bool(where & _CB_READ), ret & 0xFF)


class Endpoint:
    """One side's DTLS configuration and, for a server, its stateless cookie exchange.

    ``server_name`` callers pass per session; ``mtu`` bounds every datagram made; ``handshake_timeout``
    (seconds) bounds each handshake.
    """

    def __init__(self, credentials: DtlsCredentials, *, server: bool, mtu: int = DEFAULT_MTU,
                 handshake_timeout: float = 10.0):
        _binding.check()
        self.credentials = credentials
        self.server = server
        self.mtu = mtu
        self.handshake_timeout = handshake_timeout
        # The cookie key changes every COOKIE_LIFETIME seconds; a cookie made with the previous one is
        # still good (a client between its two hellos), older ones are not.
        self._secret = os.urandom(32)
        self._previous = self._secret
        self._rotated: float | None = None
        self._client_contexts: dict[tuple[Psk | None, bool], SSL.Context] = {}
        self._server_context: SSL.Context | None = None
        self._listener: SSL.Connection | None = None
        self._cookie_input = b""
        #: The plaintext/ciphertext buffer of the sessions' hot path (one at a time uses it).
        self.buffer = _binding.record_buffer()
        if server:
            if not (credentials.has_psk or credentials.has_certificate):
                raise CredentialsError("a coaps server needs PSK identities or a certificate")
            self._server_context = self._make_server_context()
            self._listener = self._new_listener()

    # --- contexts --------------------------------------------------------------------------------

    def _base_context(self) -> SSL.Context:
        context = SSL.Context(SSL.DTLS_METHOD)
        context.set_min_proto_version(0xFEFD)  # DTLS 1.2; pyOpenSSL names no DTLS versions
        context.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_TICKET | SSL.OP_NO_RENEGOTIATION)
        # No session resumption: OpenSSL calls no PSK callback when it resumes a session, so the
        # resumed session would not know its client's identity. Every session is a full handshake.
        context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        context.set_info_callback(_info)
        return context

    def _make_server_context(self) -> SSL.Context:
        credentials = self.credentials
        context = self._base_context()
        ciphers = []
        if credentials.has_psk:
            _binding.set_psk_server(context, credentials.server_psk, _psk_accepted)
            ciphers.append(_PSK_CIPHERS)
        if credentials.cert is not None:
            self._load_certificate(context)
            ciphers.append(_CERT_CIPHERS)
            if credentials.ca is not None:
                context.load_verify_locations(credentials.ca)
                context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)
        # With certificates too, the level stays at the default (a client's certificate key is checked
        # by it), and CCM_8 clients are refused: a server for constrained PSK peers is PSK-only.
        level = _PSK_LEVEL if credentials.cert is None else ""
        context.set_cipher_list((":".join(ciphers) + level).encode())
        context.set_options(SSL.OP_CIPHER_SERVER_PREFERENCE)
        context.set_cookie_generate_callback(self._cookie)
        context.set_cookie_verify_callback(self._cookie_ok)
        return context

    def _load_certificate(self, context: SSL.Context) -> None:
        credentials = self.credentials
        assert credentials.cert is not None
        try:
            context.use_certificate_chain_file(credentials.cert)
            context.use_privatekey_file(credentials.key or credentials.cert)
            context.check_privatekey()
        except SSL.Error as e:
            raise CredentialsError(f"cannot use {credentials.cert} / {credentials.key}: {e}") from None

    def client_context(self, psk: Psk | None) -> SSL.Context:
        """The client context for servers reached with ``psk`` (None: certificates)."""
        key = (psk, psk is None)
        context = self._client_contexts.get(key)
        if context is None:
            context = self._base_context()
            if psk is not None:
                _binding.set_psk_client(context, psk.identity, psk.key)
                context.set_cipher_list((_PSK_CIPHERS + _PSK_LEVEL).encode())
            else:
                credentials = self.credentials
                context.set_cipher_list(_CERT_CIPHERS.encode())
                if credentials.cert is not None:
                    self._load_certificate(context)
                if credentials.ca is not None:
                    context.load_verify_locations(credentials.ca)
                else:
                    context.set_default_verify_paths()
                context.set_verify(SSL.VERIFY_PEER, self._verify)
            self._client_contexts[key] = context
        return context

    # --- sessions --------------------------------------------------------------------------------

    def connect(self, host: str, psk: Psk | None, now: float) -> Session:
        """A client session to ``host`` (a name or an IP literal, checked against the server's
        certificate) using ``psk`` (None: certificates); its ClientHello is in
        :meth:`Session.datagrams_to_send`."""
        connection = SSL.Connection(self.client_context(psk), None)
        connection.set_connect_state()
        connection.set_ciphertext_mtu(self.mtu)
        if psk is None and not _is_ip(host):
            connection.set_tlsext_host_name(host.encode("idna"))
        session = Session(self, connection, server=False, now=now, psk=psk)
        session.expected_host = host
        session.start(now)
        return session

    def accept(self, datagram: bytes, address: tuple[Any, ...],
               now: float) -> tuple[Session | None, bytes | None]:
        """A datagram from an address without a session: ``(session, None)`` when it is a ClientHello
        with a valid cookie (the session has its first flight queued), ``(None, reply)`` with the
        HelloVerifyRequest to send (never larger than ``datagram``), or ``(None, None)``: drop it.

        Nothing is kept about the sender unless a session is returned.
        """
        listener = self._listener
        if listener is None or not records.is_client_hello(datagram):
            return None, None
        if self._rotated is None:
            self._rotated = now
        elif now - self._rotated >= COOKIE_LIFETIME:
            self._previous, self._secret = self._secret, os.urandom(32)
            self._rotated = now
        self._cookie_input = repr(address[:2]).encode()
        try:
            try:
                listener.bio_write(datagram)
                listener.DTLSv1_listen()
            except SSL.WantReadError:
                reply = b""
                with contextlib.suppress(SSL.Error):
                    reply = listener.bio_read(_READ)
                if not reply or len(reply) > len(datagram):
                    return None, None  # no answer larger than what caused it (RFC 6347 §4.2.1)
                return None, reply
            except SSL.Error:
                self._listener = self._new_listener()  # it may hold half a record; start afresh
                return None, None
            # The cookie is valid: the listener becomes this client's session, and a new one listens.
            # (OpenSSL checks the cookie once more as the handshake goes on, hence the input is kept.)
            self._listener = self._new_listener()
            session = Session(self, listener, server=True, now=now)
            session.start(now)
            return session, None
        finally:
            self._cookie_input = b""

    def _new_listener(self) -> SSL.Connection:
        assert self._server_context is not None
        listener = SSL.Connection(self._server_context, None)
        listener.set_accept_state()
        listener.set_ciphertext_mtu(self.mtu)
        return listener

    # --- callbacks -------------------------------------------------------------------------------

    def _cookie(self, connection: SSL.Connection, secret: bytes | None = None) -> bytes:
        key = self._secret if secret is None else secret
        return hmac.new(key, self._cookie_input, hashlib.sha256).digest()[:_COOKIE_SIZE]

    def _cookie_ok(self, connection: SSL.Connection, cookie: bytes) -> bool:
        return hmac.compare_digest(cookie, self._cookie(connection)) or \
            hmac.compare_digest(cookie, self._cookie(connection, self._previous))

    def _verify(self, connection: SSL.Connection, certificate: Any, errno: int, depth: int, ok: int) -> bool:
        """OpenSSL's verify callback. An exception here would escape ``do_handshake`` (pyOpenSSL
        re-raises it) and end the socket task: a certificate that cannot be parsed fails its handshake
        only."""
        session = connection.get_app_data()
        try:
            return self._check_certificate(session, certificate, errno, depth, ok)
        except Exception as e:
            if isinstance(session, Session):
                who = "the client's" if session.server else "the server's"
                session._verify_problem = f"{who} certificate cannot be read: {type(e).__name__}: {e}"
            return False

    def _check_certificate(self, session: Any, certificate: Any, errno: int, depth: int, ok: int) -> bool:
        if not ok:
            if isinstance(session, Session) and session._verify_problem is None:
                who = "the client's" if session.server else "the server's"
                session._verify_problem = (f"{who} certificate is not accepted: "
                                           f"{_VERIFY_ERRORS.get(errno, f'X.509 error {errno}')}")
            return False
        if depth == 0 and isinstance(session, Session) and not session.server \
                and self.credentials.check_hostname:
            host = session.expected_host
            if host is not None and not _names_host(certificate.to_cryptography(), host):
                session._verify_problem = f"the server's certificate does not name {host}"
                return False
        return True


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _names_host(certificate: Any, host: str) -> bool:
    """Whether the certificate's subjectAltName names ``host`` (DNS, with a leftmost wildcard, or IP)."""
    from cryptography import x509

    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    if _is_ip(host):
        address = ipaddress.ip_address(host)
        return any(ip == address for ip in names.get_values_for_type(x509.IPAddress))
    wanted = host.rstrip(".").lower()
    for name in names.get_values_for_type(x509.DNSName):
        name = name.rstrip(".").lower()
        if name == wanted:
            return True
        if name.startswith("*.") and "." in wanted and wanted.split(".", 1)[1] == name[2:]:
            return True
    return False
