"""The sans-IO DTLS engine (issue 14): handshakes in memory, the stateless cookie exchange, errors that
name their cause, close_notify; and the private OpenSSL binding the PSK support depends on."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("OpenSSL")
trustme = pytest.importorskip("trustme")

from dtls_support import ADDRESS, handshake, make_certificates, pump  # noqa: E402

from coapio.protocol.dtls import (  # noqa: E402
    DtlsCredentials,
    HandshakeFailed,
    Psk,
    SessionClosed,
    _binding,
    records,
)
from coapio.protocol.dtls.engine import Endpoint, State  # noqa: E402

PSK = Psk(b"client1", b"secret-key")


def psk_pair(**server: object) -> tuple[Endpoint, Endpoint]:
    server_creds = DtlsCredentials(accepted={PSK.identity: PSK.key}, **server)  # type: ignore[arg-type]
    return Endpoint(DtlsCredentials(), server=False), Endpoint(server_creds, server=True)


def test_the_private_openssl_binding_offers_what_psk_needs() -> None:
    """Fails loudly when a pyOpenSSL/cryptography upgrade removes the PSK callbacks or Connection._ssl."""
    _binding.check()
    from OpenSSL._util import lib

    assert lib.Cryptography_HAS_PSK
    for name in ("SSL_CTX_set_psk_client_callback", "SSL_CTX_set_psk_server_callback"):
        assert hasattr(lib, name), name


def test_psk_handshake_names_the_identity_on_both_sides() -> None:
    client_endpoint, server_endpoint = psk_pair()
    client, server = handshake(client_endpoint, server_endpoint, PSK)
    assert client.state is State.ESTABLISHED and server.state is State.ESTABLISHED
    assert server.security is not None and server.security.method == "dtls-psk"
    assert server.security.identity == "client1" and server.security.context is server
    client.send(b"\x40\x01\x00\x01")
    (datagram,) = client.datagrams_to_send()
    assert datagram[0] == records.APPLICATION_DATA
    assert server.receive(datagram, 0.0) == [b"\x40\x01\x00\x01"]


def test_cookie_exchange_is_stateless_and_never_amplifies() -> None:
    client_endpoint, server_endpoint = psk_pair()
    client = client_endpoint.connect("127.0.0.1", PSK, 0.0)
    hello = client.datagrams_to_send()[0]
    assert records.client_hello_cookie(hello) == b""
    listener = server_endpoint._listener
    for _ in range(3):  # the same hello, as from a spoofed address: only a HelloVerifyRequest each time
        session, reply = server_endpoint.accept(hello, ("192.0.2.1", 1234), 0.0)
        assert session is None and reply is not None
        assert len(reply) <= len(hello)
        assert server_endpoint._listener is listener  # nothing was allocated for the sender
    # The cookie is bound to the address: returned from another address it buys only another HVR.
    client.receive(server_endpoint.accept(hello, ADDRESS, 0.0)[1] or b"", 0.0)
    second = client.datagrams_to_send()[0]
    assert len(records.client_hello_cookie(second)) == 16
    session, reply = server_endpoint.accept(second, ("192.0.2.1", 1234), 0.0)
    assert session is None
    session, reply = server_endpoint.accept(second, ADDRESS, 0.0)
    assert session is not None and reply is None


def test_junk_reaches_no_openssl_state() -> None:
    _, server_endpoint = psk_pair()
    for junk in (b"", b"\x16", b"\x17\xfe\xfd" + bytes(20), b"\x16\xfe\xfd\x00\x01" + bytes(30), bytes(200)):
        assert server_endpoint.accept(junk, ADDRESS, 0.0) == (None, None)


def test_unknown_identity_fails_both_sides_with_the_cause() -> None:
    client_endpoint, server_endpoint = psk_pair()
    client, server = handshake(client_endpoint, server_endpoint, Psk(b"stranger", PSK.key))
    assert client.state is State.FAILED and server.state is State.FAILED
    assert isinstance(client.error, HandshakeFailed) and client.error.alert == 115
    assert "does not know this PSK identity" in str(client.error)
    assert "identity is unknown" in str(server.error)


def test_wrong_key_times_out_with_a_hint() -> None:
    """A Finished that does not decrypt is dropped silently (RFC 6347 §4.1.2.7): the client says why."""
    client_endpoint, server_endpoint = psk_pair()
    client, server = handshake(client_endpoint, server_endpoint, Psk(PSK.identity, b"another key"))
    assert client.state is State.HANDSHAKING
    deadline = client.next_deadline()
    assert deadline is not None and deadline <= client_endpoint.handshake_timeout
    client.on_timer(client_endpoint.handshake_timeout)
    server.on_timer(server_endpoint.handshake_timeout)
    assert client.state is State.FAILED and server.state is State.FAILED
    assert "PSK is probably wrong" in str(client.error)


def test_close_notify_ends_the_peer_session() -> None:
    client_endpoint, server_endpoint = psk_pair()
    client, server = handshake(client_endpoint, server_endpoint, PSK)
    client.close()
    for datagram in client.datagrams_to_send():
        server.receive(datagram, 1.0)
    assert client.state is State.CLOSED and server.state is State.CLOSED
    assert isinstance(server.error, SessionClosed)
    with pytest.raises(SessionClosed):
        client.send(b"late")


def test_the_handshake_timer_becomes_a_deadline_on_the_callers_clock() -> None:
    client_endpoint, _ = psk_pair()
    client = client_endpoint.connect("127.0.0.1", PSK, 100.0)
    assert client.datagrams_to_send()
    deadline = client.next_deadline()
    # OpenSSL's first retransmission timeout is one second (RFC 6347 §4.2.4.1), on our clock's scale.
    assert deadline is not None and 100.5 < deadline <= 101.0
    client.on_timer(100.1)  # not due: nothing is resent
    assert client.datagrams_to_send() == [] and client.state is State.HANDSHAKING
    client.on_timer(100.0 + client_endpoint.handshake_timeout)
    assert client.state is State.FAILED and "within 10 s" in str(client.error)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_certificates(tmp_path_factory.mktemp("certs"), trustme)


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_certificates(tmp_path_factory.mktemp("other"), trustme)


def test_x509_handshake_checks_the_host_and_names_the_subjects(certs: dict[str, str]) -> None:
    server_endpoint = Endpoint(DtlsCredentials(cert=certs["cert"], key=certs["key"], ca=certs["ca"]),
                               server=True)
    client_endpoint = Endpoint(DtlsCredentials(cert=certs["client_cert"], key=certs["client_key"],
                                               ca=certs["ca"]), server=False)
    client, server = handshake(client_endpoint, server_endpoint, None, host="127.0.0.1")
    assert client.state is State.ESTABLISHED, client.error
    assert server.security is not None and server.security.method == "dtls-x509"
    assert "client.example" in server.security.identity
    bad_host, _ = handshake(client_endpoint, server_endpoint, None, host="elsewhere.example")
    assert bad_host.state is State.FAILED and "does not name elsewhere.example" in str(bad_host.error)


def test_certificate_from_another_ca_is_refused_both_ways(certs: dict[str, str],
                                                          other_certs: dict[str, str]) -> None:
    server_endpoint = Endpoint(DtlsCredentials(cert=certs["cert"], key=certs["key"], ca=certs["ca"]),
                               server=True)
    stranger = Endpoint(DtlsCredentials(cert=other_certs["client_cert"], key=other_certs["client_key"],
                                        ca=certs["ca"]), server=False)
    client, server = handshake(stranger, server_endpoint, None)
    assert client.state is State.FAILED and server.state is State.FAILED
    assert "client's certificate is not accepted" in str(server.error)
    distrustful = Endpoint(DtlsCredentials(ca=other_certs["ca"]), server=False)
    client, server = handshake(distrustful, server_endpoint, None)
    assert client.state is State.FAILED
    assert "server's certificate is not accepted" in str(client.error)


def test_one_server_takes_psk_and_certificate_clients(certs: dict[str, str]) -> None:
    server_endpoint = Endpoint(DtlsCredentials(cert=certs["cert"], key=certs["key"],
                                               accepted={PSK.identity: PSK.key}), server=True)
    _, psk_server = handshake(Endpoint(DtlsCredentials(), server=False), server_endpoint, PSK)
    cert_client, cert_server = handshake(Endpoint(DtlsCredentials(ca=certs["ca"]), server=False),
                                         server_endpoint, None)
    assert psk_server.security is not None and psk_server.security.method == "dtls-psk"
    assert cert_client.state is State.ESTABLISHED, cert_client.error
    # Without ``ca`` the server asked for no client certificate: that client is anonymous, while the
    # client did verify the server and names its subject.
    assert cert_server.security is None
    assert cert_client.security is not None and cert_client.security.method == "dtls-x509"


def test_flights_are_cut_into_datagrams_no_larger_than_the_mtu(certs: dict[str, str]) -> None:
    server_endpoint = Endpoint(DtlsCredentials(cert=certs["cert"], key=certs["key"]), server=True, mtu=600)
    client_endpoint = Endpoint(DtlsCredentials(ca=certs["ca"]), server=False, mtu=600)
    client = client_endpoint.connect("127.0.0.1", None, 0.0)
    client.receive(server_endpoint.accept(client.datagrams_to_send()[0], ADDRESS, 0.0)[1] or b"", 0.0)
    server, _ = server_endpoint.accept(client.datagrams_to_send()[0], ADDRESS, 0.0)
    assert server is not None
    flight = server.datagrams_to_send()
    assert len(flight) > 1 and all(len(d) <= 600 for d in flight)
    for datagram in flight:
        client.receive(datagram, 0.0)
    pump(client, server)
    assert client.state is State.ESTABLISHED and server.state is State.ESTABLISHED


def test_a_psk_server_takes_clients_that_speak_only_ccm_8() -> None:
    """TLS_PSK_WITH_AES_128_CCM_8 is RFC 7252's mandatory PSK suite, and all that tinydtls speaks."""
    client_endpoint, server_endpoint = psk_pair()
    client_endpoint.client_context(PSK).set_cipher_list(b"PSK-AES128-CCM8:@SECLEVEL=0")
    client, server = handshake(client_endpoint, server_endpoint, PSK)
    assert server.state is State.ESTABLISHED, server.error
    assert client._connection.get_cipher_name() == "PSK-AES128-CCM8"


def test_a_forged_record_is_dropped_and_the_session_goes_on() -> None:
    """The one-call hot path falls back to pyOpenSSL for anything but success: a record that does not
    decrypt is dropped silently (RFC 6347 §4.1.2.7), and the next genuine one is read."""
    client_endpoint, server_endpoint = psk_pair()
    client, server = handshake(client_endpoint, server_endpoint, PSK)
    genuine = client.seal(b"\x50\x01\x00\x07")
    forged = genuine[:-1] + bytes([genuine[-1] ^ 1])
    assert server.receive(forged, 1.0) == []
    assert server.state is State.ESTABLISHED
    assert server.receive(client.seal(b"\x50\x01\x00\x08"), 1.0) == [b"\x50\x01\x00\x08"]
    assert server.receive(genuine, 1.0) == [b"\x50\x01\x00\x07"]  # late, but never seen: taken
    assert server.receive(genuine, 1.0) == []  # a replay is dropped


def test_a_client_session_authenticates_only_the_names_its_server_proved(certs: dict[str, str]) -> None:
    server_endpoint = Endpoint(DtlsCredentials(cert=certs["cert"], key=certs["key"]), server=True)
    client, _ = handshake(Endpoint(DtlsCredentials(ca=certs["ca"]), server=False), server_endpoint, None,
                          host="localhost")
    assert client.authenticates("localhost", None) and client.authenticates("LOCALHOST", None)
    assert client.authenticates("127.0.0.1", None)  # the certificate names both
    assert not client.authenticates("elsewhere.example", None)
    assert not client.authenticates("localhost", PSK)  # another kind of credential


def test_cookies_expire_with_the_key_that_made_them() -> None:
    from coapio.protocol.dtls.engine import COOKIE_LIFETIME

    client_endpoint, server_endpoint = psk_pair()
    client = client_endpoint.connect("127.0.0.1", PSK, 0.0)
    client.receive(server_endpoint.accept(client.datagrams_to_send()[0], ADDRESS, 0.0)[1] or b"", 0.0)
    with_cookie = client.datagrams_to_send()[0]
    # One rotation later the cookie is still good; two rotations later it only buys a new HVR.
    session, _ = server_endpoint.accept(with_cookie, ADDRESS, COOKIE_LIFETIME)
    assert session is not None
    server_endpoint.accept(with_cookie, ("192.0.2.9", 1), 2 * COOKIE_LIFETIME)  # rotates again
    session, reply = server_endpoint.accept(with_cookie, ADDRESS, 2 * COOKIE_LIFETIME)
    assert session is None and reply is not None


_FUZZ_CLIENT, _FUZZ_SERVER = psk_pair()
_FUZZ_SESSIONS = handshake(_FUZZ_CLIENT, _FUZZ_SERVER, PSK)


@given(st.binary(max_size=400), st.sampled_from([b"", b"\x16\xfe\xfd\x00\x00", b"\x17\xfe\xfd\x00\x01",
                                                 b"\x15\xfe\xfd\x00\x01", b"\x14\xfe\xfd\x00\x00"]))
def test_hostile_datagrams_neither_raise_nor_break_an_established_session(tail: bytes, head: bytes) -> None:
    client, server = _FUZZ_SESSIONS
    data = head + tail
    session, reply = _FUZZ_SERVER.accept(data, ("192.0.2.1", 9), 0.0)
    assert session is None or session.state in (State.HANDSHAKING, State.FAILED)
    assert reply is None or len(reply) <= len(data)
    server.receive(data, 0.0)
    server.datagrams_to_send()
    assert server.state is State.ESTABLISHED
    assert server.receive(client.seal(b"\x50\x01\x00\x09"), 0.0) == [b"\x50\x01\x00\x09"]


def _record(content_type: int, epoch: int, body: bytes, sequence: int = 10**6) -> bytes:
    return bytes([content_type, 0xFE, 0xFD]) + epoch.to_bytes(2, "big") + sequence.to_bytes(6, "big") \
        + len(body).to_bytes(2, "big") + body


@pytest.mark.parametrize("suite", ["ECDHE-PSK-CHACHA20-POLY1305", "PSK-AES128-GCM-SHA256", "PSK-AES128-CCM8",
                                   "PSK-AES128-CCM"])
def test_records_too_short_or_of_another_epoch_never_end_an_established_session(suite: str) -> None:
    """OpenSSL ends a session on a current-epoch record shorter than the suite's explicit nonce and tag
    (internal_error): one spoofed 14-byte datagram used to kill it. Such records, and application data
    of another epoch, are dropped before OpenSSL sees them, alone or several to a datagram."""
    client_endpoint, server_endpoint = psk_pair()
    client_endpoint.client_context(PSK).set_cipher_list(f"{suite}:@SECLEVEL=0".encode())
    client, server = handshake(client_endpoint, server_endpoint, PSK)
    assert server._connection.get_cipher_name() == suite
    spoofed = _record(records.APPLICATION_DATA, 1, b"\x00")  # the reviewer's 14-byte datagram
    assert len(spoofed) == 14 and server.receive(spoofed, 1.0) == [] and server.discarded == 1
    for content_type in (records.APPLICATION_DATA, records.ALERT, records.HANDSHAKE, 20):
        for epoch in (0, 1, 2):
            for length in range(0, 30):
                for session in (server, client):
                    body = bytes(length)
                    session.receive(_record(content_type, epoch, body), 1.0)
                    session.receive(_record(content_type, epoch, body) * 2, 1.0)
                    assert session.state is State.ESTABLISHED, (content_type, epoch, length, session.error)
    assert server.datagrams_to_send() == [] and client.datagrams_to_send() == []
    assert server.receive(client.seal(b"\x50\x01\x00\x0a"), 2.0) == [b"\x50\x01\x00\x0a"]
    assert client.receive(server.seal(b"\x60\x45\x00\x0a"), 2.0) == [b"\x60\x45\x00\x0a"]
    assert server.last_activity == 2.0


def test_no_cbc_suite_is_negotiated_and_the_server_chooses() -> None:
    """With CBC any forged record fails its MAC and OpenSSL ends the session (bad_record_mac); CBC is
    not offered or accepted, and the server's preference decides the suite."""
    client_endpoint, server_endpoint = psk_pair()
    client_endpoint.client_context(PSK).set_cipher_list(b"PSK-AES128-CBC-SHA256:@SECLEVEL=0")
    client, server = handshake(client_endpoint, server_endpoint, PSK)
    assert client.state is State.FAILED and server.state is not State.ESTABLISHED
    client_endpoint, server_endpoint = psk_pair()
    client_endpoint.client_context(PSK).set_cipher_list(b"PSK-AES128-CCM8:PSK-AES128-GCM-SHA256:@SECLEVEL=0")
    client, server = handshake(client_endpoint, server_endpoint, PSK)
    assert server._connection.get_cipher_name() == "PSK-AES128-GCM-SHA256"


def test_a_session_that_fails_sends_its_alert_so_the_peer_ends_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """When OpenSSL does end a session on input (here a CBC suite forced on both ends, where any record
    that fails its MAC is fatal), the alert goes to the peer, which ends its session instead of keeping
    a dead one."""
    from coapio.protocol.dtls import engine

    monkeypatch.setattr(engine, "_PSK_CIPHERS", "PSK-AES128-CBC-SHA256")
    client_endpoint, server_endpoint = psk_pair()
    client, server = handshake(client_endpoint, server_endpoint, PSK)
    assert server.state is State.ESTABLISHED, server.error
    server.receive(_record(records.APPLICATION_DATA, 1, bytes(160)), 1.0)
    assert server.state is State.FAILED
    alerts = server.datagrams_to_send()
    assert alerts and alerts[0][0] == records.ALERT
    for datagram in alerts:
        client.receive(datagram, 1.0)
    assert client.state is State.FAILED and "bad_record_mac" in str(client.error)


def test_a_client_offering_a_previous_session_gets_a_full_handshake_and_its_identity() -> None:
    """The reviewer's r12_resume: OpenSSL calls no PSK callback on resumption, so a resumed PSK session
    named no identity. Resumption is off: offering the old session leads to a full handshake that names
    the identity."""
    from OpenSSL import SSL
    from OpenSSL._util import lib

    from coapio.protocol.dtls.engine import Session

    client_endpoint, server_endpoint = psk_pair()

    def run(previous: object, address: tuple[str, int]) -> tuple[SSL.Connection, Session]:
        connection = SSL.Connection(client_endpoint.client_context(PSK), None)
        connection.set_connect_state()
        connection.set_ciphertext_mtu(1280)
        if previous is not None:
            connection.set_session(previous)  # type: ignore[arg-type]
        client = Session(client_endpoint, connection, server=False, now=0.0, psk=PSK)
        client.start(0.0)
        _, reply = server_endpoint.accept(client.datagrams_to_send()[0], address, 0.0)
        client.receive(reply or b"", 0.0)
        server, _ = server_endpoint.accept(client.datagrams_to_send()[0], address, 0.0)
        assert server is not None
        pump(client, server)
        assert client.state is State.ESTABLISHED and server.state is State.ESTABLISHED, server.error
        return connection, server

    first, _ = run(None, ADDRESS)
    again, server = run(first.get_session(), ("127.0.0.1", 40001))
    assert not lib.SSL_session_reused(again._ssl)
    assert server.security is not None and str(server.security) == "client1 (dtls-psk)"


def test_a_certificate_that_cannot_be_parsed_fails_its_handshake_only(certs: dict[str, str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception while reading a certificate in the verify callback (pyOpenSSL re-raises it from
    do_handshake) or in naming the subject used to escape the engine and end the socket task."""
    from OpenSSL import SSL

    from coapio.protocol.dtls import engine

    def broken(*args: object, **kwargs: object) -> bool:
        raise ValueError("malformed subjectAltName")

    monkeypatch.setattr(engine, "_names_host", broken)
    server_endpoint = Endpoint(DtlsCredentials(cert=certs["cert"], key=certs["key"]), server=True)
    client, server = handshake(Endpoint(DtlsCredentials(ca=certs["ca"]), server=False), server_endpoint, None)
    assert client.state is State.FAILED and "certificate cannot be read" in str(client.error)
    monkeypatch.undo()

    def unreadable(self: SSL.Connection, *, as_cryptography: bool = False) -> object:
        raise ValueError("unparsable certificate")

    server_endpoint = Endpoint(DtlsCredentials(cert=certs["cert"], key=certs["key"], ca=certs["ca"]),
                               server=True)
    client_endpoint = Endpoint(DtlsCredentials(cert=certs["client_cert"], key=certs["client_key"],
                                               ca=certs["ca"], check_hostname=False), server=False)
    monkeypatch.setattr(SSL.Connection, "get_peer_certificate", unreadable)
    client, server = handshake(client_endpoint, server_endpoint, None)
    assert server.state is State.ESTABLISHED and server.security is None  # not named: not trusted
    assert client.state is State.ESTABLISHED


def test_only_records_that_decrypt_count_as_activity() -> None:
    """Junk from a peer's address (a forged record, a short one) must not keep its session alive."""
    client_endpoint, server_endpoint = psk_pair()
    client, server = handshake(client_endpoint, server_endpoint, PSK, now=1.0)
    assert server.last_activity == 1.0
    genuine = client.seal(b"\x50\x01\x00\x07")
    forged = genuine[:-1] + bytes([genuine[-1] ^ 1])
    assert server.receive(forged, 5.0) == [] and server.receive(forged + forged, 5.0) == []
    assert server.receive(_record(records.APPLICATION_DATA, 1, b"\x00"), 5.0) == []
    assert server.last_activity == 1.0 and server.state is State.ESTABLISHED
    assert server.receive(genuine, 6.0) == [b"\x50\x01\x00\x07"] and server.last_activity == 6.0
