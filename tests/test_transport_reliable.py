"""The RFC 8323 transports end to end, coapio to coapio on loopback: ``coap+tcp``, ``coaps+tcp``,
``coap+ws`` and ``coaps+ws``, each with GET, Observe and block-wise both ways; a closed connection fails
its pending requests and is loss of interest for the server's Pipes on it; TLS verification; the
handshake deadline and the connection bounds.

Certificates are made per test run with trustme.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import AsyncIterator, Iterator

import attrs
import pytest
import trio
import trio.testing

from coapio import Code, Context, Message, ObservableResource, Resource, ServerPipe, Site, TransportTuning
from coapio.error import NetworkError
from coapio.transports.tls import client_context, server_context

trustme = pytest.importorskip("trustme")

SCHEMES = ["coap+tcp", "coaps+tcp", "coap+ws", "coaps+ws"]
BODY = os.urandom(64 * 1024)


class Store(Resource):
    """GET returns what the last PUT stored (64 KiB travel block-wise both ways)."""

    def __init__(self) -> None:
        super().__init__()
        self.data = BODY

    def render_get(self, request: Message) -> Message:
        return Message(payload=self.data)

    def render_put(self, request: Message) -> Message:
        self.data = request.payload
        return Message(code=Code.CHANGED)


class Counter(ObservableResource):
    def __init__(self) -> None:
        super().__init__()
        self.value = 0

    def render_get(self, request: Message) -> Message:
        return Message(payload=str(self.value).encode())

    def bump(self) -> None:
        self.value += 1
        self.notify()


class Slow(Resource):
    """``render_to_pipe`` that never answers; records that its producer was cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self.started = trio.Event()
        self.cancelled = trio.Event()

    async def render_to_pipe(self, request: Message, pipe: ServerPipe) -> None:
        self.started.set()
        try:
            await trio.sleep_forever()
        finally:
            self.cancelled.set()


@attrs.define
class Certs:
    ca: trustme.CA
    server_ssl: ssl.SSLContext
    client_ssl: ssl.SSLContext
    ws_server_ssl: ssl.SSLContext
    ws_client_ssl: ssl.SSLContext
    ca_file: str


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Certs]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    directory = tmp_path_factory.mktemp("certs")
    ca_file = str(directory / "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    chain = str(directory / "server.pem")
    cert.private_key_and_cert_chain_pem.write_to_path(chain)
    yield Certs(
        ca, server_context(cert=chain), client_context(ca=ca_file),
        server_context(cert=chain, websocket=True), client_context(ca=ca_file, websocket=True), ca_file,
    )


def _site() -> tuple[Site, Store, Counter, Slow]:
    site = Site()
    store, counter, slow = Store(), Counter(), Slow()
    site.add("store", store)
    site.add("counter", counter)
    site.add("slow", slow)
    return site, store, counter, slow


def _ssl_for(scheme: str, certs: Certs) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    if not scheme.startswith("coaps"):
        return None, None
    if scheme.endswith("ws"):
        return certs.ws_server_ssl, certs.ws_client_ssl
    return certs.server_ssl, certs.client_ssl


@pytest.fixture(params=SCHEMES)
async def pair(request: pytest.FixtureRequest, certs: Certs) -> AsyncIterator[tuple[str, Context, Context]]:
    scheme = request.param
    if scheme.endswith("ws"):
        pytest.importorskip("wsproto")
    server_ssl, client_ssl = _ssl_for(scheme, certs)
    site, _, _, _ = _site()
    async with Context(bind=[f"{scheme}://127.0.0.1:0"], site=site, server_ssl=server_ssl) as server, \
            Context(client_ssl=client_ssl) as client:
        [base] = [uri for uri in server.local_uris if uri.startswith(scheme + "://")]
        yield base, server, client


async def test_get_over_each_scheme(pair: tuple[str, Context, Context]) -> None:
    base, _, client = pair
    with trio.fail_after(10):
        response = await client.get(base + "/store")
    assert response.code == Code.CONTENT
    assert response.payload == BODY  # 64 KiB: block-wise (Block2) over the reliable transport
    assert response.remote is not None and response.remote.scheme == base.split("://")[0]


async def test_64_kib_put_and_get_are_byte_identical(pair: tuple[str, Context, Context]) -> None:
    base, _, client = pair
    data = os.urandom(64 * 1024)
    with trio.fail_after(10):
        put = await client.put(base + "/store", data)
        assert put.code == Code.CHANGED
        got = await client.get(base + "/store")
    assert got.payload == data


async def test_observe_over_each_scheme(pair: tuple[str, Context, Context]) -> None:
    base, server, client = pair
    counter = server.site.resolve(("counter",))[0]  # type: ignore[union-attr]
    assert isinstance(counter, Counter)
    with trio.fail_after(10):
        async with client.observe(base + "/counter") as obs:
            assert obs.registered and obs.initial is not None and obs.initial.payload == b"0"
            seen = []
            async for notification in obs:
                if notification is obs.initial:
                    counter.bump()
                    continue
                seen.append(notification.payload)
                if len(seen) == 3:
                    break
                counter.bump()
        assert seen == [b"1", b"2", b"3"]
        while counter.observer_count:  # the deregistration travels on the connection
            await trio.testing.wait_all_tasks_blocked(0.01)


async def test_requests_share_one_pooled_connection(pair: tuple[str, Context, Context]) -> None:
    base, _, client = pair
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(client.get, base + "/counter")
    [transport] = [t for t in client.transports if base.split("://")[0] in t.schemes]
    assert transport.connections == 1  # type: ignore[attr-defined]


async def test_a_closed_connection_fails_pending_requests_and_cancels_server_pipes(
    pair: tuple[str, Context, Context],
) -> None:
    base, server, client = pair
    slow = server.site.resolve(("slow",))[0]  # type: ignore[union-attr]
    assert isinstance(slow, Slow)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            outcome: list[BaseException] = []

            async def pending() -> None:
                try:
                    await client.get(base + "/slow")
                except NetworkError as e:
                    outcome.append(e)

            nursery.start_soon(pending)
            await slow.started.wait()
            [transport] = [t for t in server.transports if base.split("://")[0] in t.schemes]
            for conn in list(transport._conns):  # type: ignore[attr-defined]
                conn.close()  # the server drops the connection
            await slow.cancelled.wait()  # loss of interest reached the producer
        assert len(outcome) == 1 and "closed" in str(outcome[0])
    assert client.counters.live_tokens == 0
    assert server.counters.live_handlers == 0


async def test_a_certificate_from_another_ca_is_refused(certs: Certs) -> None:
    site, _, _, _ = _site()
    other = trustme.CA()
    other_file = os.path.join(os.path.dirname(certs.ca_file), "other.pem")
    other.cert_pem.write_to_path(other_file)
    async with Context(bind=["coaps+tcp://127.0.0.1:0"], site=site, server_ssl=certs.server_ssl) as server, \
            Context(client_ssl=client_context(ca=other_file)) as client:
        with trio.fail_after(10), pytest.raises(NetworkError, match="certificate"):
            await client.get(server.local_uris[-1] + "/counter")


async def test_a_client_that_connects_and_sends_nothing_is_dropped() -> None:
    site, _, _, _ = _site()
    tuning = TransportTuning(handshake_timeout=0.5)
    async with Context(bind=["coap+tcp://127.0.0.1:0"], site=site, tuning=tuning) as server:
        port = int(server.local_uris[-1].rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.settimeout(5)
            with trio.fail_after(5):
                data = await trio.to_thread.run_sync(raw.recv, 4096)  # our CSM first
                assert data
                rest = b""
                while True:
                    chunk = await trio.to_thread.run_sync(raw.recv, 4096)
                    if not chunk:
                        break  # closed by the server after the deadline
                    rest += chunk
        [transport] = [t for t in server.transports if "coap+tcp" in t.schemes]
        with trio.fail_after(5):
            while transport.connections:  # type: ignore[attr-defined]
                await trio.testing.wait_all_tasks_blocked(0.01)


async def test_connections_beyond_the_per_peer_bound_are_closed_at_once() -> None:
    site, _, _, _ = _site()
    tuning = TransportTuning(max_connections_per_peer=2)
    async with Context(bind=["coap+tcp://127.0.0.1:0"], site=site, tuning=tuning) as server:
        port = int(server.local_uris[-1].rsplit(":", 1)[1])
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        try:
            for s in socks:
                s.settimeout(5)
            with trio.fail_after(5):
                first = [await trio.to_thread.run_sync(s.recv, 4096) for s in socks[:2]]
                third = await trio.to_thread.run_sync(socks[2].recv, 4096)
            assert all(first)  # a CSM each
            assert third == b""  # closed without a word
            assert server.limit_hits.get("max_connections", 0) >= 1
        finally:
            for s in socks:
                s.close()


def test_bind_uri_for_tls_without_a_certificate_is_refused() -> None:
    with pytest.raises(ValueError, match="certificate"):
        Context(bind=["coaps+tcp://127.0.0.1:0"])


async def test_a_context_limited_to_some_schemes_refuses_the_others() -> None:
    from coapio.error import NoTransport

    async with Context(schemes={"coaps+tcp"}) as client:
        with pytest.raises(NoTransport, match="not sent"):
            await client.get("coap+tcp://127.0.0.1:9/")



async def test_a_malformed_frame_aborts_its_connection_only() -> None:
    """RFC 8323 §5.6: garbage on one connection is answered 7.05 Abort with a diagnostic and that connection
    closes; a client on another connection goes on undisturbed."""
    site, _, _, _ = _site()
    async with Context(bind=["coap+tcp://127.0.0.1:0"], site=site) as server, Context() as client:
        base = server.local_uris[-1]
        port = int(base.rsplit(":", 1)[1])
        with trio.fail_after(10):
            assert (await client.get(base + "/counter")).payload == b"0"
            with socket.create_connection(("127.0.0.1", port)) as raw:
                raw.settimeout(5)
                # An empty CSM, then a frame with the reserved token length 15.
                raw.sendall(b"\x00\xe1" + b"\x0f\x01")
                received = b""
                while True:
                    chunk = await trio.to_thread.run_sync(raw.recv, 4096)
                    if not chunk:
                        break
                    received += chunk
            assert b"\xe5" in received  # a 7.05 Abort came before the close
            assert (await client.get(base + "/counter")).payload == b"0"  # the other connection is fine


@pytest.mark.parametrize("scheme", ["coap+tcp", "coap+ws"])
def test_reliable_transports_work_on_asyncio(scheme: str) -> None:
    """The same exchange under ``anyio.run(..., backend="asyncio")``: plain TCP must not use the socket
    directly there (asyncio's transport owns it)."""
    if scheme.endswith("ws"):
        pytest.importorskip("wsproto")
    import anyio

    async def main() -> bytes:
        site, _, _, _ = _site()
        async with Context(bind=[f"{scheme}://127.0.0.1:0"], site=site) as server, Context() as client:
            with anyio.fail_after(10):
                response = await client.get(server.local_uris[-1] + "/store")
        return response.payload

    assert anyio.run(main, backend="asyncio") == BODY


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_leaving_the_client_context_deregisters_over_each_scheme(scheme: str, certs: Certs) -> None:
    """The token manager's deregistrations at the Context's exit are written before the connection
    closes (over TLS too, where closing first would drop them)."""
    if scheme.endswith("ws"):
        pytest.importorskip("wsproto")
    server_ssl, client_ssl = _ssl_for(scheme, certs)
    deregistered = trio.Event()

    class Watched(Counter):
        def render_get(self, request: Message) -> Message:
            if request.opt.observe == 1:
                deregistered.set()  # the GET with Observe: 1 arrived (not just the connection's end)
            return super().render_get(request)

    site = Site()
    site.add("counter", Watched())
    async with Context(bind=[f"{scheme}://127.0.0.1:0"], site=site, server_ssl=server_ssl) as server:
        base = server.local_uris[-1]
        with trio.fail_after(10):
            async with Context(client_ssl=client_ssl) as client:
                obs = client.observe(base + "/counter")
                await obs.__aenter__()  # left open: the Context's exit deregisters it
            await deregistered.wait()


@pytest.mark.parametrize("garbage", [b"garbage\r\n\r\n", b"GET /.well-known/coap HTTP/1.1\r\nHost: x\r\n\r\n",
                                     b"GET /\xff HTTP/1.1\r\n\r\n"])
async def test_a_bad_websocket_handshake_costs_that_connection_only(garbage: bytes) -> None:
    """Malformed HTTP, a GET without Upgrade, a non-ASCII target: the server closes that connection and
    goes on serving (the handshake's errors never reach the transport's task group)."""
    pytest.importorskip("wsproto")
    site, _, _, _ = _site()
    async with Context(bind=["coap+ws://127.0.0.1:0"], site=site) as server, Context() as client:
        base = server.local_uris[-1]
        port = int(base.rsplit(":", 1)[1])
        with trio.fail_after(10):
            with socket.create_connection(("127.0.0.1", port)) as raw:
                raw.settimeout(5)
                raw.sendall(garbage)
                while await trio.to_thread.run_sync(raw.recv, 4096):
                    pass  # whatever the answer, the server closes the connection
            assert (await client.get(base + "/counter")).payload == b"0"


async def test_the_per_client_handler_bound_counts_a_host_not_a_connection() -> None:
    """Two connections from one host share ``max_handlers_per_peer``: more connections buy a client no
    more handlers (over UDP the bound is per address and port, as before)."""
    site, _, _, slow = _site()
    tuning = TransportTuning(max_handlers_per_peer=1)
    async with Context(bind=["coap+tcp://127.0.0.1:0"], site=site, tuning=tuning) as server, \
            Context() as first, Context() as second:
        base = server.local_uris[-1]
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(first.get, base + "/slow")
                await slow.started.wait()
                refused = await second.get(base + "/slow")  # another connection, the same host
                nursery.cancel_scope.cancel()
        assert refused.code == Code.SERVICE_UNAVAILABLE
        assert server.limit_hits.get("max_handlers_per_peer") == 1
