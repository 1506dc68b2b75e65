"""The coaps:// transport on loopback (issue 14): coapio's client against coapio's server over DTLS PSK
and X.509, what resources see (``request.security``), failures that stay with their peer, the session
table's bounds, close_notify on exit, and hostile input (junk floods, half-open floods, spoofed hellos)."""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Any

import anyio
import pytest
import trio

pytest.importorskip("OpenSSL")
trustme = pytest.importorskip("trustme")

from dtls_support import make_certificates, until  # noqa: E402
from site_support import Counter, Store, WhoAmI  # noqa: E402

from coapio import Code, Context, Message, Resource, Site, TransportTuning, Type  # noqa: E402
from coapio.error import NetworkError, NoTransport  # noqa: E402
from coapio.protocol.dtls import DtlsCredentials, HandshakeFailed, Psk, records  # noqa: E402
from coapio.protocol.dtls.engine import Endpoint, State  # noqa: E402
from coapio.transports.dtls import DTLSTransport  # noqa: E402

PSK = Psk(b"client1", b"secret-key")
BIG = os.urandom(64 * 1024)





def site() -> tuple[Site, Counter]:
    s = Site()
    counter = Counter()
    s.add("whoami", WhoAmI())
    s.add("store", Store())
    s.add("counter", counter)
    return s, counter


def server_transport(ctx: Context) -> DTLSTransport:
    [transport] = [t for t in ctx.transports if isinstance(t, DTLSTransport)]
    return transport


def base_uri(ctx: Context) -> str:
    [uri] = [u for u in ctx.local_uris if u.startswith("coaps://")]
    return uri


def client(psk: Psk = PSK, **tuning: float) -> Context:
    return Context(dtls=DtlsCredentials(psk={"coaps://*": psk}), tuning=TransportTuning(**tuning))


SERVER_CREDS = DtlsCredentials(accepted={PSK.identity: PSK.key, b"client2": b"other-key"})


async def test_get_over_psk_shows_the_identity_to_the_resource_and_the_client() -> None:
    s, _ = site()
    async with Context(bind="coaps://127.0.0.1:0", site=s, dtls=SERVER_CREDS) as server:
        uri = base_uri(server)
        assert uri.startswith("coaps://127.0.0.1:")
        async with client() as ctx:
            with trio.fail_after(10):
                response = await ctx.get(uri + "/whoami")
                again = await ctx.get(uri + "/whoami")
            assert len(server_transport(server).sessions) == 1
        assert response.code is Code.CONTENT and response.payload == b"client1 (dtls-psk)"
        assert response.security is not None and response.security.method == "dtls-psk"
        assert response.remote == again.remote  # one session for both requests


async def test_observe_and_a_64_kib_block_wise_transfer_over_dtls() -> None:
    s, counter = site()
    async with Context(bind="coaps://127.0.0.1:0", site=s, dtls=SERVER_CREDS) as server:
        uri = base_uri(server)
        async with client() as ctx:
            with trio.fail_after(20):
                assert (await ctx.put(uri + "/store", BIG)).code is Code.CHANGED
                assert (await ctx.get(uri + "/store")).payload == BIG
                seen = []
                async with ctx.observe(uri + "/counter") as observation:
                    async for notification in observation:
                        seen.append(notification.payload)
                        if len(seen) == 3:
                            break
                        counter.bump()
                assert seen == [b"n=0", b"n=1", b"n=2"]
            await until(lambda: not counter.observers if hasattr(counter, "observers") else True)


async def test_an_unknown_identity_fails_its_requests_only() -> None:
    s, _ = site()
    async with Context(bind="coaps://127.0.0.1:0", site=s, dtls=SERVER_CREDS) as server:
        uri = base_uri(server)
        async with client() as good, client(Psk(b"stranger", b"secret-key")) as bad:
            with trio.fail_after(10):
                assert (await good.get(uri + "/whoami")).payload == b"client1 (dtls-psk)"
                with pytest.raises(HandshakeFailed, match="does not know this PSK identity"):
                    await bad.get(uri + "/whoami")
                assert (await good.get(uri + "/whoami")).payload == b"client1 (dtls-psk)"
                assert bad.counters.open_exchanges == 0 and bad.counters.live_tokens == 0
            transport = server_transport(server)
            assert [x.security.identity for x in transport.sessions if x.security] == ["client1"]


async def test_a_wrong_key_fails_after_the_handshake_timeout_and_says_so() -> None:
    s, _ = site()
    async with Context(bind="coaps://127.0.0.1:0", site=s, dtls=SERVER_CREDS,
                       tuning=TransportTuning(handshake_timeout=1.5)) as server:
        uri = base_uri(server)
        async with client(Psk(PSK.identity, b"wrong"), handshake_timeout=1.5) as bad:
            with trio.fail_after(10), pytest.raises(HandshakeFailed, match="PSK is probably wrong"):
                await bad.get(uri + "/whoami")
        with trio.fail_after(5):
            await until(lambda: not server_transport(server).sessions)  # the half-open one expired


async def test_context_exit_sends_close_notify_to_every_session() -> None:
    s, _ = site()
    async with Context(bind="coaps://127.0.0.1:0", site=s, dtls=SERVER_CREDS) as server:
        uri = base_uri(server)
        transport = server_transport(server)
        async with client() as ctx:
            with trio.fail_after(10):
                await ctx.get(uri + "/whoami")
            [session] = transport.sessions
        with trio.fail_after(5):
            await until(lambda: session.state is State.CLOSED)
        assert not transport.sessions


async def test_idle_sessions_expire() -> None:
    s, _ = site()
    async with Context(bind="coaps://127.0.0.1:0", site=s, dtls=SERVER_CREDS,
                       tuning=TransportTuning(idle_timeout=0.3)) as server:
        async with client() as ctx:
            with trio.fail_after(10):
                await ctx.get(base_uri(server) + "/whoami")
                assert server_transport(server).sessions
                await until(lambda: not server_transport(server).sessions)
                # The server's close_notify ends the client's session too; a new request opens a new one.
                await until(lambda: not server_transport(ctx).sessions)
                assert (await ctx.get(base_uri(server) + "/whoami")).payload == b"client1 (dtls-psk)"


async def test_x509_with_client_certificates_names_the_subject(tmp_path: object) -> None:
    certs = make_certificates(tmp_path, trustme)  # type: ignore[arg-type]
    s, _ = site()
    creds = DtlsCredentials(cert=certs["cert"], key=certs["key"], ca=certs["ca"],
                            accepted={PSK.identity: PSK.key})
    async with Context(bind="coaps://127.0.0.1:0", site=s, dtls=creds) as server:
        uri = base_uri(server)
        async with Context(dtls=DtlsCredentials(cert=certs["client_cert"], key=certs["client_key"],
                                                ca=certs["ca"])) as ctx, client() as psk_ctx:
            with trio.fail_after(10):
                response = await ctx.get(uri + "/whoami")
                assert b"client.example" in response.payload and b"dtls-x509" in response.payload
                assert (await psk_ctx.get(uri + "/whoami")).payload == b"client1 (dtls-psk)"
        other = make_certificates(tmp_path, trustme, prefix="other-")  # type: ignore[arg-type]
        async with Context(dtls=DtlsCredentials(ca=other["ca"])) as ctx:
            with trio.fail_after(10), pytest.raises(HandshakeFailed, match="certificate is not accepted"):
                await ctx.get(uri + "/whoami")


class Secret(Resource):
    requires_security = True

    def render_get(self, request: Message) -> Message:
        return Message(payload=b"secret")


@pytest.mark.parametrize("with_psk", [False, True], ids=["cert-only", "psk-and-cert"])
async def test_a_client_without_credentials_is_anonymous_to_a_server_without_ca(
        tmp_path: object, with_psk: bool) -> None:
    """A server with a certificate but no ``ca`` asks for no client certificate: a client with no
    credentials gets a session, but its requests carry no security and ``requires_security`` refuses
    them (4.01); the client still names the server it verified."""
    certs = make_certificates(tmp_path, trustme)  # type: ignore[arg-type]
    s, _ = site()
    s.add("secret", Secret())
    accepted = {PSK.identity: PSK.key} if with_psk else {}
    creds = DtlsCredentials(cert=certs["cert"], key=certs["key"], accepted=accepted)
    async with Context(bind="coaps://127.0.0.1:0", site=s, dtls=creds) as server:
        uri = base_uri(server)
        async with Context(dtls=DtlsCredentials(ca=certs["ca"])) as ctx:
            with trio.fail_after(10):
                response = await ctx.get(uri + "/whoami")
                secret = await ctx.get(uri + "/secret")
            [session] = server_transport(server).sessions
            assert session.state is State.ESTABLISHED and session.security is None
        assert response.code is Code.CONTENT and response.payload == b"None"
        assert response.security is not None and response.security.method == "dtls-x509"
        assert secret.code is Code.UNAUTHORIZED
        if with_psk:
            async with client() as ctx:
                with trio.fail_after(10):
                    assert (await ctx.get(uri + "/secret")).payload == b"secret"


async def test_without_the_extra_coaps_is_a_clear_no_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    import coapio.protocol.dtls

    monkeypatch.setattr(coapio.protocol.dtls, "available", lambda: False)
    with pytest.raises(NoTransport, match=r"pip install 'coapio\[dtls\]'"):
        Context(bind="coaps://127.0.0.1:0", dtls=SERVER_CREDS)
    async with Context() as ctx:
        with pytest.raises(NoTransport, match=r"pip install 'coapio\[dtls\]'"):
            await ctx.get("coaps://127.0.0.1:9/")


# --- hostile input ---------------------------------------------------------------------------------


def hello(port: int = 0) -> tuple[bytes, socket.socket]:
    """An initial ClientHello from a real DTLS client engine, and a UDP socket to send it from."""
    session = Endpoint(DtlsCredentials(), server=False).connect("127.0.0.1", PSK, 0.0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    sock.setblocking(False)
    return session.datagrams_to_send()[0], sock


async def test_a_spoofed_client_hello_gets_only_a_hello_verify_request_no_larger_than_itself() -> None:
    s, _ = site()
    async with Context(bind="coaps://127.0.0.1:0", site=s, dtls=SERVER_CREDS) as server:
        transport = server_transport(server)
        data, sock = hello()
        with sock, trio.fail_after(5):
            tsock = trio.socket.from_stdlib_socket(sock)
            await tsock.sendto(data, transport.local_address)
            reply, _ = await tsock.recvfrom(65536)
            assert reply[0] == records.HANDSHAKE and reply[13] == 3  # HelloVerifyRequest
            assert len(reply) <= len(data)
            with trio.move_on_after(0.2):  # nothing else follows it
                extra = await tsock.recvfrom(65536)
                pytest.fail(f"more than one answer: {extra!r}")
        assert transport.sessions == [] and transport.cookie_exchanges == 1


async def test_half_open_handshakes_are_bounded_and_the_oldest_dropped() -> None:
    s, _ = site()
    async with Context(bind="coaps://127.0.0.1:0", site=s, dtls=SERVER_CREDS) as server:
        transport = server_transport(server)
        transport.max_handshakes = 8
        sockets = []
        try:
            with trio.fail_after(10):
                for _ in range(20):  # clients that complete the cookie exchange and then go quiet
                    engine = Endpoint(DtlsCredentials(), server=False)
                    session = engine.connect("127.0.0.1", PSK, 0.0)
                    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    await sock.bind(("127.0.0.1", 0))
                    sockets.append(sock)
                    await sock.sendto(session.datagrams_to_send()[0], transport.local_address)
                    reply, _ = await sock.recvfrom(65536)
                    session.receive(reply, 0.0)
                    await sock.sendto(session.datagrams_to_send()[0], transport.local_address)
                    await sock.recvfrom(65536)  # the server's first flight: the session is half-open
                    assert transport.half_open <= 8
                assert transport.half_open == 8
                assert server.limit_hits.get("max_handshakes") == 12
                # The newest survive: the last socket's address is still in the table.
                last = ("127.0.0.1", sockets[-1].getsockname()[1])
                assert last in {x.peer.address for x in transport.sessions}
                first = ("127.0.0.1", sockets[0].getsockname()[1])
                assert first not in {x.peer.address for x in transport.sessions}
                async with client() as ctx:  # a real client still gets in
                    assert (await ctx.get(base_uri(server) + "/whoami")).payload == b"client1 (dtls-psk)"
        finally:
            for sock in sockets:
                sock.close()


async def test_a_flood_of_junk_and_handshake_like_records_does_not_stop_a_real_client() -> None:
    s, _ = site()
    async with Context(bind="coaps://127.0.0.1:0", site=s, dtls=SERVER_CREDS) as server:
        transport = server_transport(server)
        target = transport.local_address
        data, sock = hello()
        junk = [os.urandom(n) for n in (1, 13, 60, 300, 1200)]
        junk += [b"\x16\xfe\xfd\x00\x00" + os.urandom(80), b"\x17\xfe\xfd\x00\x01" + os.urandom(60),
                 data[:40], data + os.urandom(30), b"\x15\xfe\xfd" + bytes(10) + b"\x00\x02\x02\x28"]
        stop = trio.Event()

        async def flood() -> None:
            tsock = trio.socket.from_stdlib_socket(sock)
            while not stop.is_set():
                for item in junk:
                    with contextlib.suppress(BlockingIOError):
                        await tsock.sendto(item, target)
                await trio.lowlevel.checkpoint()

        with sock:
            async with trio.open_nursery() as nursery, client() as ctx:
                nursery.start_soon(flood)
                with trio.fail_after(20):
                    for _ in range(20):
                        response = await ctx.get(base_uri(server) + "/whoami")
                        assert response.payload == b"client1 (dtls-psk)"
                assert len(transport.sessions) == 1  # only the real client's (the flood got HVRs)
                stop.set()
        assert transport.dropped > 0 and transport.cookie_exchanges > 0


async def test_a_peer_that_cannot_be_reached_fails_its_requests(tmp_path: object) -> None:
    quiet = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers: no ICMP either
    quiet.bind(("127.0.0.1", 0))
    with quiet:
        async with client(handshake_timeout=1.0) as ctx:
            with trio.fail_after(10), pytest.raises(NetworkError, match="no DTLS handshake"):
                await ctx.get(f"coaps://127.0.0.1:{quiet.getsockname()[1]}/whoami")
            assert ctx.counters.open_exchanges == 0 and ctx.counters.live_tokens == 0


async def test_asyncio_backend_works_too() -> None:
    async def main() -> bytes:
        s, _ = site()
        async with Context(bind="coaps://127.0.0.1:0", site=s, dtls=SERVER_CREDS) as server:
            async with client() as ctx:
                with anyio.fail_after(10):
                    return (await ctx.get(base_uri(server) + "/whoami")).payload

    assert await trio.to_thread.run_sync(lambda: anyio.run(main, backend="asyncio")) == \
        b"client1 (dtls-psk)"


async def test_a_closed_port_fails_at_once_and_leaves_no_session() -> None:
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now: the kernel answers with ICMP port unreachable
    async with client(handshake_timeout=30) as ctx:
        with trio.fail_after(5), pytest.raises(NetworkError):
            await ctx.get(f"coaps://127.0.0.1:{port}/whoami")
        assert server_transport(ctx).sessions == []


async def raw_handshake(sock: trio.socket.SocketType, target: tuple[str, int]) -> object:
    """A DTLS session with ``target`` over ``sock``, driven by hand (a client that restarts keeps its
    port, which coapio's own client never does)."""
    session = Endpoint(DtlsCredentials(), server=False).connect("127.0.0.1", PSK, 0.0)
    while session.state is not State.ESTABLISHED:
        for datagram in session.datagrams_to_send():
            await sock.sendto(datagram, target)
        reply, _ = await sock.recvfrom(65536)
        session.receive(reply, 0.0)
    for datagram in session.datagrams_to_send():
        await sock.sendto(datagram, target)
    return session


async def test_a_new_session_from_the_same_address_is_a_new_peer() -> None:
    """RFC 6347 §4.2.8: a ClientHello on an established session's address starts a new session (after
    the cookie exchange), which replaces the old one; its Peer differs, so nothing of the old session's
    exchanges is answered through the new one."""
    s, _ = site()
    async with Context(bind="coaps://127.0.0.1:0", site=s, dtls=SERVER_CREDS) as server:
        transport = server_transport(server)
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock, trio.fail_after(10):
            await sock.bind(("127.0.0.1", 0))
            await raw_handshake(sock, transport.local_address)
            await until(lambda: len(transport.sessions) == 1)
            [first] = transport.sessions
            await until(lambda: first.state is State.ESTABLISHED)
            await raw_handshake(sock, transport.local_address)
            await until(lambda: transport.sessions and transport.sessions[0] is not first)
            [second] = transport.sessions
            assert first.state is State.FAILED and "started a new DTLS session" in str(first.error)
            assert first.peer != second.peer and first.peer.address == second.peer.address


async def test_a_lost_flight_is_retransmitted_on_the_engines_timer() -> None:
    """A proxy drops the server's first answer (the HelloVerifyRequest): the client's DTLS timer resends
    its ClientHello, and the request goes through."""
    s, _ = site()
    async with Context(bind="coaps://127.0.0.1:0", site=s, dtls=SERVER_CREDS) as server:
        target = server_transport(server).local_address
        proxy = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        upstream = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        dropped = 0
        with proxy, upstream:
            await proxy.bind(("127.0.0.1", 0))
            await upstream.bind(("127.0.0.1", 0))
            client_address: list[object] = []

            async def forward_up() -> None:
                while True:
                    data, address = await proxy.recvfrom(65536)
                    client_address[:] = [address]
                    await upstream.sendto(data, target)

            async def forward_down() -> None:
                nonlocal dropped
                while True:
                    data, _ = await upstream.recvfrom(65536)
                    if dropped == 0:
                        dropped += 1
                        continue
                    await proxy.sendto(data, client_address[0])

            async with trio.open_nursery() as nursery:
                nursery.start_soon(forward_up)
                nursery.start_soon(forward_down)
                async with client() as ctx:
                    with trio.fail_after(10):
                        response = await ctx.get(f"coaps://127.0.0.1:{proxy.getsockname()[1]}/whoami")
                    assert response.payload == b"client1 (dtls-psk)"
                nursery.cancel_scope.cancel()
        assert dropped == 1


async def test_the_session_table_is_bounded_and_the_least_recently_active_makes_room() -> None:
    s, _ = site()
    async with Context(bind="coaps://127.0.0.1:0", site=s, dtls=SERVER_CREDS,
                       tuning=TransportTuning(max_connections=3)) as server:
        transport = server_transport(server)
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(client()) for _ in range(5)]
            with trio.fail_after(20):
                for ctx in clients:
                    assert (await ctx.get(base_uri(server) + "/whoami")).payload == b"client1 (dtls-psk)"
                    assert len(transport.sessions) <= 3
                # The oldest clients' sessions were closed (close_notify) to make room: theirs end too,
                # and their next request opens a new session.
                await until(lambda: not server_transport(clients[0]).sessions)
                assert (await clients[0].get(base_uri(server) + "/whoami")).code is Code.CONTENT
                assert len(transport.sessions) <= 3


async def test_a_session_is_reused_only_for_names_its_certificate_covers(tmp_path: object) -> None:
    """One socket has one session per server address: a request for another name at that address may
    use it only when the server's certificate names that host too."""
    first = socket.getaddrinfo("localhost", 5684, type=socket.SOCK_DGRAM)[0]
    if first[4][0] != "127.0.0.1":
        pytest.skip("localhost does not resolve to 127.0.0.1 first here")
    certs = make_certificates(tmp_path, trustme, names=("localhost",))  # type: ignore[arg-type]
    s, _ = site()
    async with Context(bind="coaps://127.0.0.1:0", site=s,
                       dtls=DtlsCredentials(cert=certs["cert"], key=certs["key"])) as server:
        port = server_transport(server).local_address[1]
        async with Context(dtls=DtlsCredentials(ca=certs["ca"])) as ctx:
            with trio.fail_after(10):
                assert (await ctx.get(f"coaps://localhost:{port}/whoami")).code is Code.CONTENT
                with pytest.raises(NetworkError, match=r"authenticated for localhost, not 127\.0\.0\.1"):
                    await ctx.get(f"coaps://127.0.0.1:{port}/whoami")
                assert ctx.counters.live_tokens == 0


async def test_a_coaps_bind_without_credentials_to_serve_is_refused_before_binding() -> None:
    with pytest.raises(ValueError, match="coaps:// needs credentials"):
        Context(bind="coaps://127.0.0.1:0")
    with pytest.raises(ValueError, match="coaps:// needs credentials"):
        Context(bind="coaps://127.0.0.1:0", dtls=DtlsCredentials())


SPOOFED = bytes([23, 0xFE, 0xFD, 0, 1]) + (10**6).to_bytes(6, "big") + b"\x00\x01" + b"\x00"


async def test_one_spoofed_short_record_leaves_the_session_established_and_the_client_served() -> None:
    """The reviewer's 14-byte epoch-1 record from the client's address (sent here from the client's own
    socket, which is what a spoofed source looks like to the server) used to end the server's session
    with internal_error and black-hole the client; it is now dropped unseen by OpenSSL."""
    s, _ = site()
    async with Context(bind="coaps://127.0.0.1:0", site=s, dtls=SERVER_CREDS) as server:
        transport = server_transport(server)
        uri = base_uri(server)
        async with client(ack_timeout=0.2, max_retransmit=2) as ctx:
            with trio.fail_after(10):
                assert (await ctx.get(uri + "/whoami")).payload == b"client1 (dtls-psk)"
                [session] = transport.sessions
                client_transport = server_transport(ctx)
                [client_session] = client_transport.sessions
                client_transport.sock.sendto(SPOOFED, client_session.peer.address)
                await until(lambda: session.discarded == 1)
                assert session.state is State.ESTABLISHED, session.error
                assert (await ctx.get(uri + "/whoami")).payload == b"client1 (dtls-psk)"
            assert transport.sessions == [session] and client_transport.sessions == [client_session]
            assert client_session.state is State.ESTABLISHED


async def test_a_client_whose_server_lost_the_session_handshakes_afresh_on_its_next_request() -> None:
    """A server that restarted (or ended the session without its alert arriving) drops the client's
    records unseen; the request that times out drops the client's session, and the next one
    handshakes afresh instead of being black-holed for good."""
    from coapio.error import RequestTimedOut
    from coapio.protocol.dtls.errors import SessionClosed

    s, _ = site()
    async with Context(bind="coaps://127.0.0.1:0", site=s, dtls=SERVER_CREDS) as server:
        transport = server_transport(server)
        uri = base_uri(server)
        async with client(ack_timeout=0.1, max_retransmit=1) as ctx:
            with trio.fail_after(10):
                assert (await ctx.get(uri + "/whoami")).payload == b"client1 (dtls-psk)"
                client_transport = server_transport(ctx)
                [old] = client_transport.sessions
                [forgotten] = transport.sessions
                transport._remove(forgotten, SessionClosed("the server restarted"))  # nothing is sent
                with pytest.raises(RequestTimedOut):
                    await ctx.get(uri + "/whoami")
                assert old.state is not State.ESTABLISHED and old not in client_transport.sessions
                assert (await ctx.get(uri + "/whoami")).payload == b"client1 (dtls-psk)"
            [new] = client_transport.sessions
            assert new is not old and new.state is State.ESTABLISHED


async def test_an_icmp_error_does_not_end_an_established_session() -> None:
    """ICMP is not authenticated: a forged port unreachable about an established peer (reported by the
    socket's error queue, here handed to the transport's error path directly) fails that peer's pending
    exchanges at most, and the session goes on."""
    import errno

    s, _ = site()
    async with Context(bind="coaps://127.0.0.1:0", site=s, dtls=SERVER_CREDS) as server:
        transport = server_transport(server)
        uri = base_uri(server)
        async with client() as ctx:
            with trio.fail_after(10):
                assert (await ctx.get(uri + "/whoami")).payload == b"client1 (dtls-psk)"
                [session] = transport.sessions
                transport._network_error(session.peer, OSError(errno.ECONNREFUSED, "Connection refused"))
                assert transport.sessions == [session] and session.state is State.ESTABLISHED
                client_transport = server_transport(ctx)
                [client_session] = client_transport.sessions
                client_transport._network_error(client_session.peer,
                                                OSError(errno.ECONNREFUSED, "Connection refused"))
                assert client_transport.sessions == [client_session]
                assert (await ctx.get(uri + "/whoami")).payload == b"client1 (dtls-psk)"
            assert transport.sessions == [session] and client_transport.sessions == [client_session]


async def test_half_open_handshakes_never_evict_established_sessions() -> None:
    """The reviewer's r2_evict: with the table full of established sessions, clients without any
    credentials that only complete the cookie exchange used to close one established session each.
    They are now kept half-open, and an established session makes room only for a handshake that
    finishes."""
    s, _ = site()
    async with Context(bind="coaps://127.0.0.1:0", site=s, dtls=SERVER_CREDS,
                       tuning=TransportTuning(max_connections=3)) as server:
        transport = server_transport(server)
        uri = base_uri(server)
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(client()) for _ in range(3)]
            with trio.fail_after(20):
                for ctx in clients:
                    assert (await ctx.get(uri + "/whoami")).payload == b"client1 (dtls-psk)"
                legit = list(transport.sessions)
                assert len(legit) == 3 and all(x.state is State.ESTABLISHED for x in legit)
                for _ in range(3):
                    sock = stack.enter_context(trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                    await sock.bind(("127.0.0.1", 0))
                    attacker = Endpoint(DtlsCredentials(), server=False).connect("127.0.0.1", Psk(b"x", b"y"),
                                                                                 0.0)
                    await sock.sendto(attacker.datagrams_to_send()[0], transport.local_address)
                    reply, _ = await sock.recvfrom(65536)  # the HelloVerifyRequest
                    attacker.receive(reply, 0.0)
                    await sock.sendto(attacker.datagrams_to_send()[0], transport.local_address)
                    await sock.recvfrom(65536)  # the server's flight: the session is half-open
                await until(lambda: transport.half_open == 3)
                assert all(x.state is State.ESTABLISHED for x in legit), [x.error for x in legit]
                for ctx in clients:
                    assert (await ctx.get(uri + "/whoami")).payload == b"client1 (dtls-psk)"
                assert all(x in transport.sessions for x in legit)
                # A client that does finish its handshake makes room: the least recently active goes.
                async with client() as newcomer:
                    assert (await newcomer.get(uri + "/whoami")).payload == b"client1 (dtls-psk)"
                    established = [x for x in transport.sessions if x.state is State.ESTABLISHED]
                    assert len(established) == 3 and legit[0] not in established


@contextlib.asynccontextmanager
async def two_established_clients() -> Any:
    """A DTLS server and two clients that each made one request (the first is the least recently
    active session): yields the server, its transport, the two client Contexts and the server's URI."""
    s, _ = site()
    async with Context(bind="coaps://127.0.0.1:0", site=s, dtls=SERVER_CREDS) as server:
        transport = server_transport(server)
        uri = base_uri(server)
        async with client() as first, client() as second:
            with trio.fail_after(10):
                assert (await first.get(uri + "/whoami")).code is Code.CONTENT
                assert (await second.get(uri + "/whoami")).code is Code.CONTENT
            yield server, transport, first, second, uri


async def test_datagrams_that_do_not_decrypt_are_not_activity() -> None:
    """A forged record from a client's address neither refreshes its session's idle time nor moves it
    to the recently active end of the table (the next to make room stays the next)."""
    async with two_established_clients() as (_, transport, first, _second, uri):
        with trio.fail_after(10):
            older = next(iter(transport._idle))
            before = older.last_activity
            first_transport = server_transport(first)
            [first_session] = first_transport.sessions
            assert older.peer.address[1] == first_transport.local_address[1]
            forged = bytes([23, 0xFE, 0xFD, 0, 1]) + (10**6).to_bytes(6, "big") + b"\x00\x40" + bytes(64)
            first_transport.sock.sendto(forged, first_session.peer.address)
            first_transport.sock.sendto(SPOOFED, first_session.peer.address)  # processed after it
            await until(lambda: older.discarded == 1)
            assert next(iter(transport._idle)) is older and older.last_activity == before
            assert (await first.get(uri + "/whoami")).code is Code.CONTENT
            assert next(iter(transport._idle)) is not older and older.last_activity > before


async def test_what_we_send_moves_a_session_to_the_recently_active_end() -> None:
    """Sending refreshes a session's idle time and its place in the table together, so idle expiry (which
    walks the table from its least recently active end) never stops at a session just written to."""
    async with two_established_clients() as (_, transport, _first, _second, _uri):
        older = next(iter(transport._idle))
        transport.send(Message(Type.NON, Code.GET, token=b"x", remote=older.peer))  # synchronous
        assert next(iter(transport._idle)) is not older
        assert list(transport._idle)[-1] is older


async def test_our_requests_never_use_a_session_a_client_opened() -> None:
    """A session a peer opened as our client (server role) never verified that peer as a server: a
    request of ours to its address is refused instead of sent over it, and the session goes on."""
    s, _ = site()
    creds = DtlsCredentials(accepted={PSK.identity: PSK.key}, psk={"coaps://*": PSK})
    async with Context(bind="coaps://127.0.0.1:0", site=s, dtls=creds) as server:
        transport = server_transport(server)
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock, trio.fail_after(10):
            await sock.bind(("127.0.0.1", 0))
            await raw_handshake(sock, transport.local_address)
            await until(lambda: len(transport.sessions) == 1 and transport.sessions[0].established)
            [inbound] = transport.sessions
            assert inbound.server and not inbound.authenticates("127.0.0.1", PSK)
            port = sock.getsockname()[1]
            with pytest.raises(NetworkError, match="opened by that peer as a client"):
                await server.get(f"coaps://127.0.0.1:{port}/whoami")
            assert transport.sessions == [inbound] and inbound.state is State.ESTABLISHED
