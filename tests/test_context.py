"""The runtime over real loopback sockets: the cancellation contract, timing under a mock clock,
separate responses, deduplication, crash isolation and fail-fast network errors."""

from __future__ import annotations

import logging
import random
import socket
from collections.abc import AsyncIterator

import attrs
import pytest
import trio
import trio.testing

import coapio
from coapio import Code, Context, Message, Resource, Site, TransportTuning, Type
from coapio.error import NetworkError, RequestTimedOut, ResetReceived, ResponseRejected

LOCAL = ("127.0.0.1", 0)


class Counting(Resource):
    """Counts its calls; plain (inline) renderers."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def render_get(self, request: Message) -> Message:
        self.calls += 1
        return Message(payload=b"n=%d" % self.calls)

    def render_post(self, request: Message) -> Message:
        self.calls += 1
        return Message(code=Code.CHANGED, payload=request.payload)


class Slow(Resource):
    """An async renderer that takes a (virtual) second, and notes whether it was cancelled."""

    def __init__(self, delay: float = 1.0) -> None:
        super().__init__()
        self.delay = delay
        self.started = 0
        self.finished = 0
        self.cancelled = 0

    async def render_get(self, request: Message) -> Message:
        self.started += 1
        try:
            await trio.sleep(self.delay)
        except trio.Cancelled:
            self.cancelled += 1
            raise
        self.finished += 1
        return Message(payload=b"slow")


class Crashing(Resource):
    def render_get(self, request: Message) -> Message:
        raise RuntimeError("boom")

    async def render_post(self, request: Message) -> Message:
        raise KeyError("async boom")


class Unencodable(Resource):
    def render_get(self, request: Message) -> Message:
        response = Message()
        response.opt.add(11, b"x" * 70000)  # longer than any option can be
        return response


class WhereAmI(Resource):
    def render_get(self, request: Message) -> Message:
        return Message(payload=request.uri.encode())


class Refusing(Resource):
    def render_get(self, request: Message) -> Message:
        raise coapio.error.Forbidden("not for you")


def make_site() -> tuple[Site, Counting, Slow]:
    site = Site()
    counting, slow = Counting(), Slow()
    site.add("count", counting)
    site.add("slow", slow)
    site.add("crash", Crashing())
    site.add("refuse", Refusing())
    site.add("unencodable", Unencodable())
    site.add("where", WhereAmI())
    return site, counting, slow


@pytest.fixture
async def server() -> AsyncIterator[tuple[Context, Counting, Slow]]:
    site, counting, slow = make_site()
    async with Context(bind=[LOCAL], site=site) as ctx:
        yield ctx, counting, slow


def uri(ctx: Context, path: str) -> str:
    host, port = ctx.transports[0].local[:2]
    return f"coap://{host}:{port}/{path}"


class SilentPeer:
    """A UDP socket that receives and never answers; records when each datagram arrived."""

    def __init__(self) -> None:
        self.sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.arrivals: list[tuple[float, Message]] = []

    async def __aenter__(self) -> SilentPeer:
        await self.sock.bind(("127.0.0.1", 0))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.sock.close()

    @property
    def uri(self) -> str:
        return f"coap://127.0.0.1:{self.sock.getsockname()[1]}/x"

    async def run(self) -> None:
        while True:
            data = await self.sock.recv(2048)
            self.arrivals.append((trio.current_time(), Message.decode(data)))


# --- basics ----------------------------------------------------------------------------------------------


async def test_plain_and_async_renderers_answer(server: tuple[Context, Counting, Slow]) -> None:
    ctx, _, _ = server
    async with Context(bind=[LOCAL]) as client:
        response = await client.get(uri(ctx, "count"))
        assert (response.code, response.payload) == (Code.CONTENT, b"n=1")
        echoed = await client.post(uri(ctx, "count"), b"data", content_format=0)
        assert (echoed.code, echoed.payload) == (Code.CHANGED, b"data")
        with trio.fail_after(5):
            assert (await client.get(uri(ctx, "slow"))).payload == b"slow"


async def test_unknown_path_method_and_proxy_get_their_error_codes(
    server: tuple[Context, Counting, Slow],
) -> None:
    ctx, _, _ = server
    async with Context(bind=[LOCAL]) as client:
        assert (await client.get(uri(ctx, "nothing"))).code is Code.NOT_FOUND
        assert (await client.delete(uri(ctx, "count"))).code is Code.METHOD_NOT_ALLOWED
        proxied = Message(code=Code.GET, uri=uri(ctx, "count"))
        proxied.opt.proxy_scheme = "http"
        assert (await client.request(proxied)).code is Code.PROXYING_NOT_SUPPORTED


async def test_renderable_error_becomes_its_code_with_diagnostic(
    server: tuple[Context, Counting, Slow],
) -> None:
    ctx, _, _ = server
    async with Context(bind=[LOCAL]) as client:
        response = await client.get(uri(ctx, "refuse"))
        assert (response.code, response.payload) == (Code.FORBIDDEN, b"not for you")


async def test_server_survives_a_crashing_handler(
    server: tuple[Context, Counting, Slow], caplog: pytest.LogCaptureFixture
) -> None:
    ctx, _, _ = server
    caplog.set_level(logging.ERROR, logger="coapio")
    async with Context(bind=[LOCAL]) as client:
        assert (await client.get(uri(ctx, "crash"))).code is Code.INTERNAL_SERVER_ERROR
        assert (await client.post(uri(ctx, "crash"))).code is Code.INTERNAL_SERVER_ERROR
        assert (await client.get(uri(ctx, "unencodable"))).code is Code.INTERNAL_SERVER_ERROR
        assert (await client.get(uri(ctx, "count"))).code is Code.CONTENT
    assert "boom" in caplog.text and "async boom" in caplog.text


async def test_well_known_core_lists_the_site(server: tuple[Context, Counting, Slow]) -> None:
    ctx, _, _ = server
    async with Context(bind=[LOCAL]) as client:
        response = await client.get(uri(ctx, ".well-known/core"))
        assert response.opt.content_format == coapio.ContentFormat.LINK_FORMAT
        assert b"</count>" in response.payload and b"</slow>" in response.payload


async def test_non_request_gets_non_response(server: tuple[Context, Counting, Slow]) -> None:
    ctx, _, _ = server
    async with Context(bind=[LOCAL]) as client:
        response = await client.get(uri(ctx, "count"), con=False)
        assert response.type is Type.NON and response.code is Code.CONTENT


async def test_ipv6_loopback() -> None:
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    site, _, _ = make_site()
    async with Context(bind=[("::1", 0)], site=site) as server, Context(bind=[("::1", 0)]) as client:
        port = server.transports[0].local[1]
        response = await client.get(f"coap://[::1]:{port}/count")
        assert response.code is Code.CONTENT


async def test_dual_stack_client_reaches_ipv4_server(server: tuple[Context, Counting, Slow]) -> None:
    ctx, _, _ = server
    try:
        client_ctx = Context()  # binds [::]:0 dual-stack (or 0.0.0.0:0 without IPv6)
        async with client_ctx as client:
            assert (await client.get(uri(ctx, "count"))).code is Code.CONTENT
    except OSError as e:  # pragma: no cover - machines without any wildcard bind
        pytest.skip(f"cannot bind a wildcard socket: {e}")


# --- the cancellation contract (DESIGN.md §3) ------------------------------------------------------------


async def test_cancelled_requests_leave_nothing_behind_and_send_nothing_more(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """1,000 requests to a peer that never answers, cancelled at random points (queued, waiting for the
    first ACK, between retransmissions): afterwards no exchange, token or timer is left, and the peer
    receives no further datagram for any of them."""
    rng = random.Random(7)
    tuning = TransportTuning(nstart=100)
    async with SilentPeer() as peer, trio.open_nursery() as nursery:
        nursery.start_soon(peer.run)
        async with Context(bind=[LOCAL], tuning=tuning) as client:

            async def one(delay: float) -> None:
                with trio.move_on_after(delay):
                    await client.get(peer.uri)
                    raise AssertionError("the silent peer answered")

            async with trio.open_nursery() as requests:
                for _ in range(1000):
                    requests.start_soon(one, rng.uniform(0, 60))
            counters = client.counters
            assert (counters.open_exchanges, counters.live_tokens, counters.live_handlers) == (0, 0, 0)
            received = len(peer.arrivals)
            await trio.sleep(300)  # far past every retransmission any of them could have had
            assert len(peer.arrivals) == received, "a datagram was sent for a cancelled request"
            state = client.transports[0].layer._debug_state()
            assert state["exchanges"] == 0 and state["awaiting"] == 0
            assert client.transports[0].layer.next_deadline() is None
        nursery.cancel_scope.cancel()
    # The random cancel points covered every state: still queued behind NSTART (never sent), waiting
    # for the first ACK, and between retransmissions.
    mids = {m.mid for _, m in peer.arrivals}
    assert 100 <= len(mids) < 1000
    assert received > len(mids)


async def test_context_exit_cancels_handlers_and_runs_their_finally(
    autojump_clock: trio.testing.MockClock,
) -> None:
    site, _, slow = make_site()
    slow.delay = 1000
    async with Context(bind=[LOCAL], site=site) as server, Context(bind=[LOCAL]) as client:
        with trio.move_on_after(5):
            await client.get(uri(server, "slow"))
        assert server.counters.live_handlers == 1
        # the client is gone; the handler is still running until the server context ends
    assert slow.cancelled == 1 and slow.finished == 0


async def test_leaving_the_context_closes_its_sockets() -> None:
    async with Context(bind=[LOCAL]) as ctx:
        sock = ctx.transports[0].sock
    assert sock.fileno() == -1


async def test_request_after_exit_is_an_error() -> None:
    async with Context(bind=[LOCAL]) as ctx:
        pass
    with pytest.raises(RuntimeError):
        await ctx.get("coap://127.0.0.1:9/")


# --- timing under a mock clock --------------------------------------------------------------------------


async def test_retransmissions_follow_rfc_7252_timing_then_time_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with SilentPeer() as peer, trio.open_nursery() as nursery:
        nursery.start_soon(peer.run)
        async with Context(bind=[LOCAL]) as client:
            start = trio.current_time()
            with pytest.raises(RequestTimedOut):
                await client.get(peer.uri)
            gave_up = trio.current_time() - start
        nursery.cancel_scope.cancel()
    times = [t - start for t, _ in peer.arrivals]
    assert len(times) == 5 and len({m.mid for _, m in peer.arrivals}) == 1
    first = times[1]
    assert 2.0 <= first <= 3.0
    for i in range(1, 5):
        assert times[i] - times[i - 1] == pytest.approx(first * 2 ** (i - 1), rel=1e-6)
    assert gave_up == pytest.approx(first * 31, rel=1e-6) and gave_up <= 93


async def test_per_request_tuning_is_used(autojump_clock: trio.testing.MockClock) -> None:
    fast = TransportTuning(ack_timeout=0.5, ack_random_factor=1.0, max_retransmit=2)
    async with SilentPeer() as peer, trio.open_nursery() as nursery:
        nursery.start_soon(peer.run)
        async with Context(bind=[LOCAL]) as client:
            start = trio.current_time()
            with pytest.raises(RequestTimedOut):
                await client.request(Message(code=Code.GET, uri=peer.uri), tuning=fast)
            assert trio.current_time() - start == pytest.approx(0.5 * 7)
        nursery.cancel_scope.cancel()
    assert len(peer.arrivals) == 3


async def test_timeout_is_the_callers_cancel_scope(autojump_clock: trio.testing.MockClock) -> None:
    async with SilentPeer() as peer, trio.open_nursery() as nursery:
        nursery.start_soon(peer.run)
        async with Context(bind=[LOCAL]) as client:
            with pytest.raises(trio.TooSlowError):
                with trio.fail_after(10):
                    await client.get(peer.uri)
            assert client.counters.live_tokens == 0
            await trio.sleep(100)  # the context stays open past every retransmission it would have made
        nursery.cancel_scope.cancel()
    assert len(peer.arrivals) == 3  # at 0, ~2-3 and ~6-9 s: nothing after the cancellation at 10 s


# --- separate responses and deduplication on the wire ----------------------------------------------------


async def raw_exchange(sock: trio.socket.SocketType, data: bytes, count: int) -> list[Message]:
    await sock.send(data)
    return [Message.decode(await sock.recv(2048)) for _ in range(count)]


async def test_slow_handler_gets_empty_ack_then_separate_con_response(
    server: tuple[Context, Counting, Slow], autojump_clock: trio.testing.MockClock
) -> None:
    ctx, _, _ = server
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        await sock.connect(ctx.transports[0].local)
        request = Message(Type.CON, Code.GET, 0x4242, b"tok", uri="coap://127.0.0.1/slow")
        ack, separate = await raw_exchange(sock, request.encode(), 2)
        assert (ack.type, ack.code, ack.mid) == (Type.ACK, Code.EMPTY, 0x4242)
        assert (separate.type, separate.code, separate.token) == (Type.CON, Code.CONTENT, b"tok")
        assert separate.payload == b"slow"
        assert ctx.counters.open_exchanges == 1  # the separate CON response awaits its ACK
        await sock.send(Message(Type.ACK, Code.EMPTY, separate.mid).encode())
        await trio.testing.wait_all_tasks_blocked()
        assert ctx.counters.open_exchanges == 0


async def test_duplicate_con_gets_the_cached_response_without_rerunning_the_handler(
    server: tuple[Context, Counting, Slow],
) -> None:
    ctx, counting, _ = server
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock, trio.fail_after(5):
        await sock.connect(ctx.transports[0].local)
        request = Message(Type.CON, Code.POST, 0x0101, b"t", payload=b"once", uri="coap://127.0.0.1/count")
        [first] = await raw_exchange(sock, request.encode(), 1)
        [second] = await raw_exchange(sock, request.encode(), 1)
    assert counting.calls == 1
    assert first.encode() == second.encode() and first.type is Type.ACK


async def test_malformed_con_is_reset_and_other_exchanges_go_on(
    server: tuple[Context, Counting, Slow],
) -> None:
    ctx, _, _ = server
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock, trio.fail_after(5):
        await sock.connect(ctx.transports[0].local)
        [rst] = await raw_exchange(sock, bytes([0x40, 0x01, 0x77, 0x77, 0xF1]), 1)  # option delta nibble 15
        assert (rst.type, rst.mid) == (Type.RST, 0x7777)
        good = Message(Type.CON, Code.GET, 0x7778, b"g", uri="coap://127.0.0.1/count")
        [answer] = await raw_exchange(sock, good.encode(), 1)
        assert answer.code is Code.CONTENT


async def test_unexpected_separate_response_is_reset(autojump_clock: trio.testing.MockClock) -> None:
    async with Context(bind=[LOCAL]) as client:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock, trio.fail_after(5):
            await sock.connect(client.transports[0].local)
            stray = Message(Type.CON, Code.CONTENT, 0x3333, b"nobody")
            [rst] = await raw_exchange(sock, stray.encode(), 1)
            assert (rst.type, rst.mid) == (Type.RST, 0x3333)


# --- client-side failures -----------------------------------------------------------------------------


async def test_icmp_port_unreachable_fails_the_request_at_once() -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    closed_port = probe.getsockname()[1]
    probe.close()
    async with Context(bind=[LOCAL]) as client:
        with trio.fail_after(2), pytest.raises(NetworkError):
            await client.get(f"coap://127.0.0.1:{closed_port}/")
        assert client.counters.live_tokens == 0 and client.counters.open_exchanges == 0


async def test_reset_fails_the_request() -> None:
    async with Context(bind=[LOCAL]) as client:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            await sock.bind(("127.0.0.1", 0))

            async def reset_everything() -> None:
                data, addr = await sock.recvfrom(2048)
                await sock.sendto(Message(Type.RST, Code.EMPTY, Message.decode(data).mid).encode(), addr)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reset_everything)
                with trio.fail_after(5), pytest.raises(ResetReceived):
                    await client.get(f"coap://127.0.0.1:{sock.getsockname()[1]}/")


async def test_response_with_unrecognized_critical_option_is_rejected() -> None:
    async with Context(bind=[LOCAL]) as client:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            await sock.bind(("127.0.0.1", 0))

            async def bad_answer() -> None:
                data, addr = await sock.recvfrom(2048)
                req = Message.decode(data)
                resp = Message(Type.ACK, Code.CONTENT, req.mid, req.token)
                resp.opt.add(9, b"\x00" * 300)  # OSCORE (critical) longer than its 255-byte bound
                await sock.sendto(resp.encode(), addr)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(bad_answer)
                with trio.fail_after(5), pytest.raises(ResponseRejected):
                    await client.get(f"coap://127.0.0.1:{sock.getsockname()[1]}/")


async def test_concurrent_requests_obey_nstart(server: tuple[Context, Counting, Slow]) -> None:
    ctx, counting, _ = server
    for nstart in (1, 4):
        async with Context(bind=[LOCAL], tuning=attrs.evolve(TransportTuning(), nstart=nstart)) as client:
            peak = 0

            async def one(client: Context = client) -> None:
                nonlocal peak
                await client.get(uri(ctx, "count"))
                peak = max(peak, len(client.transports[0].layer._exchanges))

            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    for _ in range(40):
                        nursery.start_soon(one)
            assert peak <= nstart
    assert counting.calls == 80


async def test_name_resolution_failure_is_a_network_error() -> None:
    async with Context(bind=[LOCAL]) as client:
        with trio.fail_after(10), pytest.raises(NetworkError):
            await client.get("coap://no-such-host.invalid/")


async def test_bind_failure_is_a_plain_oserror() -> None:
    async with Context(bind=[LOCAL]) as first:
        taken = first.transports[0].local
        with pytest.raises(OSError):
            async with Context(bind=[taken]):
                pass


async def test_exception_in_the_body_comes_out_unwrapped() -> None:
    with pytest.raises(KeyError):
        async with Context(bind=[LOCAL]):
            raise KeyError("mine")


async def test_closed_ipv4_port_fails_fast_from_a_dual_stack_socket() -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    closed_port = probe.getsockname()[1]
    probe.close()
    try:
        client_ctx = Context()  # [::]:0, dual-stack: the IPv4 peer is IPv4-mapped
        async with client_ctx as client:
            assert client.transports[0].dual_stack
            with trio.fail_after(2), pytest.raises(NetworkError):
                await client.get(f"coap://127.0.0.1:{closed_port}/")
    except OSError as e:  # pragma: no cover - no IPv6 at all
        pytest.skip(f"no dual-stack socket here: {e}")


async def test_server_reads_the_request_uri_from_uri_host_or_its_own_address(
    server: tuple[Context, Counting, Slow],
) -> None:
    ctx, _, _ = server
    port = ctx.transports[0].local[1]
    async with Context(bind=[LOCAL]) as client:
        plain = await client.get(uri(ctx, "where") + "?a=1&b")
        assert plain.payload == f"coap://127.0.0.1:{port}/where?a=1&b".encode()
        named = Message(code=Code.GET, uri=uri(ctx, "where"))
        named.opt.uri_host = "sensor.example"
        named.opt.uri_port = 61616
        assert (await client.request(named)).payload == b"coap://sensor.example:61616/where"


async def test_local_addresses_name_the_bound_ports() -> None:
    async with Context(bind=[LOCAL, ("127.0.0.1", 0)]) as ctx:
        addresses = ctx.local_addresses
        assert [host for host, _ in addresses] == ["127.0.0.1", "127.0.0.1"]
        assert all(port > 0 for _, port in addresses) and addresses[0] != addresses[1]


async def test_shortcuts_add_raw_options(server: tuple[Context, Counting, Slow]) -> None:
    ctx, _, _ = server
    async with Context(bind=[LOCAL]) as client:
        response = await client.get(
            uri(ctx, "where"), options=[(coapio.OptionNumber.URI_QUERY, "k=v")], accept=0
        )
        assert response.payload.endswith(b"/where?k=v")


async def test_ctrl_c_in_a_socket_task_comes_out_as_keyboard_interrupt() -> None:
    class Interrupting(Resource):
        def render_get(self, request: Message) -> Message:
            raise KeyboardInterrupt  # what trio does when Ctrl-C lands while this task runs

    site = Site()
    site.add("ki", Interrupting())
    with pytest.raises(KeyboardInterrupt):
        async with Context(bind=[LOCAL], site=site) as server, Context(bind=[LOCAL]) as client:
            with trio.fail_after(5):
                await client.get(uri(server, "ki"))


async def test_an_internal_error_costs_one_request_not_the_endpoint(
    server: tuple[Context, Counting, Slow], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ctx, counting, _ = server
    real_serve = ctx._server._serve

    def broken_once(endpoint: object, request: Message, now: float) -> None:
        monkeypatch.setattr(ctx._server, "_serve", real_serve)
        raise ValueError("a bug in the dispatcher")

    monkeypatch.setattr(ctx._server, "_serve", broken_once)
    async with Context(bind=[LOCAL]) as client:
        with trio.fail_after(5):
            first = await client.get(uri(ctx, "count"))
            second = await client.get(uri(ctx, "count"))
    assert first.code == Code.INTERNAL_SERVER_ERROR
    assert second.code == Code.CONTENT and counting.calls == 1
    assert "internal error serving" in caplog.text


async def test_an_icmp_error_about_one_observer_is_not_blamed_on_the_next_one() -> None:
    """With IP_RECVERR the ICMP error about an earlier datagram is reported by the next send, whatever
    its destination: the error queue, not that send, says which peer is gone."""

    class Gauge(coapio.ObservableResource):
        def render_get(self, request: Message) -> Message:
            return Message(payload=b"42")

    site = Site()
    gauge = Gauge()
    site.add("g", gauge)
    async with Context(bind=[LOCAL], site=site) as server:
        address = server.transports[0].local
        sockets = []
        with trio.fail_after(5):
            for i in range(6):
                sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                await sock.bind(("127.0.0.1", 0))
                sockets.append(sock)
                register = Message(Type.CON, Code.GET, 1, b"tk%d" % i, uri=f"coap://127.0.0.1:{address[1]}/g")
                register.opt.uri_host = None
                register.opt.observe = 0
                await sock.sendto(register.encode(), address)
                await sock.recv(2048)
            sockets[1].close()  # observer 1 goes away; the others stay
            gauge.notify()
            await trio.testing.wait_all_tasks_blocked()
            left = sorted(int(o.token[2:]) for o in server._server.observers.all())
            assert left == [0, 2, 3, 4, 5]
            for i, sock in enumerate(sockets):
                if i != 1:
                    assert Message.decode(await sock.recv(2048)).payload == b"42"  # every live one notified
                    sock.close()
