"""The client request path (issue 10): the caller's scope bounds every kind of request, ``request()`` never
changes its argument, a scheme without a transport is refused before anything is sent, the token manager
is a supervised service (its failure ends the Context), ``poke()``, the shutdown order, and trio stays
unimported under asyncio.

Peers that must misbehave (never answer, answer only the first block, ignore a ping) are plain UDP sockets
on 127.0.0.1; timing is virtual (MockClock) wherever retransmissions matter.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import anyio
import anyio.lowlevel
import pytest
import trio
import trio.lowlevel
import trio.testing

from coapio import BlockValue, Code, Context, Message, Resource, ServerPipe, Site, TransportTuning, Type
from coapio.error import NetworkError, NoTransport, RequestTimedOut

LOCAL = ("127.0.0.1", 0)
BACKENDS = ["trio", "asyncio"]
#: Virtual seconds after which nothing sent before can still be retransmitted (MAX_TRANSMIT_WAIT is 93 s).
SETTLE = 300.0


# --- helpers ---------------------------------------------------------------------------------------------


class RawPeer:
    """A plain UDP socket on 127.0.0.1 that speaks CoAP by hand (on either backend)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind(LOCAL)
        self.port: int = self.sock.getsockname()[1]

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def uri(self, path: str = "x") -> str:
        return f"coap://127.0.0.1:{self.port}/{path}"

    async def recv(self) -> tuple[Message, tuple[str, int]]:
        while True:
            try:
                data, source = self.sock.recvfrom(4096)
            except BlockingIOError:
                await anyio.wait_readable(self.sock)
            else:
                return Message.decode(data), source

    def drain(self) -> list[Message]:
        """Every datagram queued right now (what was sent to us so far: loopback delivers at once)."""
        queued = []
        while True:
            try:
                queued.append(Message.decode(self.sock.recv(4096)))
            except BlockingIOError:
                return queued

    def reply(self, message: Message, to: tuple[str, int]) -> None:
        self.sock.sendto(message.encode(), to)


def tasks() -> list[trio.lowlevel.Task]:
    """Every task of this trio run (as tests/test_lifecycle.py walks the nursery tree)."""
    found: list[trio.lowlevel.Task] = []
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        found.append(task)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return found


def leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner)
    else:
        yield exc


def idle(ctx: Context) -> bool:
    counters = ctx.counters
    return (counters.live_tokens, counters.open_exchanges, counters.live_handlers, counters.observers) == (
        0, 0, 0, 0)


async def until(predicate: object, rounds: int = 50) -> None:
    """Poll ``predicate()`` each time every task is blocked; fail if it does not hold within ``rounds``."""
    assert callable(predicate)
    for _ in range(rounds):
        if predicate():
            return
        await anyio.wait_all_tasks_blocked()
        await anyio.lowlevel.checkpoint()
    assert predicate()


def uri(ctx: Context, path: str) -> str:
    host, port = ctx.local_addresses[0]
    return f"coap://{host}:{port}/{path}"


def snapshot(message: Message) -> tuple[object, ...]:
    """Everything a caller could see change on a Message."""
    return (message.type, message.code, message.mid, message.token, list(message.opt),
            message.payload, message.remote, message.scheme, message.local)


BODY = bytes(range(256)) * 12  # 3,072 bytes: three blocks of 1,024


class Recorder(Resource):
    """Records each request; GET answers BODY (block-wise), POST the length of what arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Message] = []

    def render_get(self, request: Message) -> Message:
        self.requests.append(request)
        return Message(payload=BODY if "big" in request.opt.uri_query else b"small")

    def render_post(self, request: Message) -> Message:
        self.requests.append(request)
        return Message(payload=b"%d" % len(request.payload))


class Registrations(Resource):
    """``render_to_pipe`` that answers a registration with its running number and keeps observing."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Message] = []

    async def render_to_pipe(self, request: Message, pipe: ServerPipe) -> None:
        self.requests.append(request)
        if request.opt.observe != 0:
            pipe.add_response(Message(payload=b"not a registration"))
            return
        count = sum(r.opt.observe == 0 for r in self.requests)
        pipe.add_response(Message(payload=b"%d" % count), is_last=False)
        await anyio.sleep_forever()


class Hold(Resource):
    async def render_get(self, request: Message) -> Message:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


def serve(**resources: Resource) -> Context:
    site = Site()
    for path, resource in resources.items():
        site.add(path, resource)
    return Context(bind=[LOCAL], site=site)


# --- 4. the caller's scope bounds every request ------------------------------------------------------------


async def scope_bounds_a_request() -> None:
    with RawPeer() as peer:
        async with Context(bind=[LOCAL]) as client:
            message = Message(Type.CON, Code.GET, uri=peer.uri())
            with anyio.move_on_after(0.3) as scope:
                await client.request(message)
            assert scope.cancelled_caught
            assert idle(client)
            # nothing is left to retransmit: the message layer has no timer for it
            assert client.transports[0].layer.next_deadline() is None
            assert [m.code for m in peer.drain()] == [Code.GET]


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_callers_scope_bounds_a_request_and_frees_everything(backend: str) -> None:
    anyio.run(scope_bounds_a_request, backend=backend)


async def test_after_a_cancelled_request_nothing_more_is_sent(autojump_clock: trio.testing.MockClock) -> None:
    with RawPeer() as peer:
        async with Context(bind=[LOCAL]) as client:
            with trio.move_on_after(5):  # after one retransmission (ACK_TIMEOUT is 2-3 s)
                await client.get(peer.uri())
            sent = peer.drain()
            assert len(sent) == 2 and len({m.mid for m in sent}) == 1
            assert idle(client)
            await trio.sleep(SETTLE)
            assert peer.drain() == []


async def test_the_callers_scope_bounds_a_stream(autojump_clock: trio.testing.MockClock) -> None:
    with RawPeer() as peer:
        async with Context(bind=[LOCAL]) as client:
            with trio.move_on_after(5) as scope:
                async with client.stream(Message(Type.CON, Code.GET, uri=peer.uri())) as responses:
                    async for _ in responses:
                        raise AssertionError("nothing answers")
            assert scope.cancelled_caught and idle(client)
            assert len(peer.drain()) == 2
            await trio.sleep(SETTLE)
            assert peer.drain() == []


async def test_the_callers_scope_bounds_entering_an_observation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with RawPeer() as peer:
        async with Context(bind=[LOCAL]) as client:
            with trio.move_on_after(5) as scope:
                async with client.observe(peer.uri()):
                    raise AssertionError("nothing answers")
            assert scope.cancelled_caught and idle(client)
            sent = peer.drain()
            assert len(sent) == 2 and all(m.opt.observe == 0 for m in sent)
            await trio.sleep(SETTLE)
            assert peer.drain() == [], "a registration never answered needs no deregistration"


async def test_the_callers_scope_bounds_iterating_an_observation_and_then_deregisters(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with RawPeer() as peer:
        async with Context(bind=[LOCAL]) as client, trio.open_nursery() as nursery:
            left = trio.Event()

            async def observe() -> None:
                with trio.move_on_after(10) as scope:
                    async with client.observe(peer.uri()) as obs:
                        assert obs.registered
                        async for _ in obs:
                            pass
                assert scope.cancelled_caught
                left.set()

            nursery.start_soon(observe)
            registration, source = await peer.recv()
            answer = Message(Type.ACK, Code.CONTENT, registration.mid, registration.token, payload=b"v")
            answer.opt.observe = 5
            peer.reply(answer, source)
            await left.wait()
            deregistration, source = await peer.recv()
            assert (deregistration.token, deregistration.opt.observe) == (registration.token, 1)
            peer.reply(Message(Type.ACK, Code.CONTENT, deregistration.mid, deregistration.token), source)
            await until(lambda: idle(client))
            await trio.sleep(SETTLE)
            assert peer.drain() == []


async def test_the_callers_scope_bounds_a_blockwise_get(autojump_clock: trio.testing.MockClock) -> None:
    """The peer answers block 0 of three, then ignores the request for block 1."""
    with RawPeer() as peer:
        async with Context(bind=[LOCAL]) as client, trio.open_nursery() as nursery:
            done = trio.Event()

            async def fetch() -> None:
                with trio.move_on_after(10) as scope:
                    await client.get(peer.uri())
                assert scope.cancelled_caught
                done.set()

            nursery.start_soon(fetch)
            first, source = await peer.recv()
            block = Message(Type.ACK, Code.CONTENT, first.mid, first.token, payload=BODY[:1024])
            block.opt.block2 = BlockValue(0, True, 6)
            block.opt.size2 = len(BODY)
            peer.reply(block, source)
            await done.wait()
            asked = peer.drain()
            assert asked and all(m.opt.block2 is not None and m.opt.block2.num == 1 for m in asked)
            assert idle(client)
            await trio.sleep(SETTLE)
            assert peer.drain() == []


# --- request() leaves its argument as it was -------------------------------------------------------------


async def test_request_leaves_a_plain_get_unchanged_and_a_second_send_uses_a_new_token() -> None:
    recorder = Recorder()
    async with serve(r=recorder) as server, Context(bind=[LOCAL]) as client:
        message = Message(Type.CON, Code.GET, uri=uri(server, "r"))
        before = snapshot(message)
        with trio.fail_after(5):
            assert (await client.request(message)).payload == b"small"
            assert snapshot(message) == before
            assert (await client.request(message)).payload == b"small"
        assert snapshot(message) == before and message.token == b"" and message.mid is None
        first, second = recorder.requests
        assert first.token and second.token and first.token != second.token


async def test_request_leaves_a_get_answered_block_wise_unchanged() -> None:
    """With small blocks the request path adds Block2 (early negotiation) — to its own copy."""
    recorder = Recorder()
    async with serve(r=recorder) as server, Context(bind=[LOCAL]) as client:
        message = Message(Type.CON, Code.GET, uri=uri(server, "r?big"))
        before = snapshot(message)
        with trio.fail_after(5):
            assert (await client.request(message)).payload == BODY
            assert snapshot(message) == before and message.opt.block2 is None
            small = TransportTuning(block_szx=2)
            assert (await client.request(message, tuning=small)).payload == BODY
        assert snapshot(message) == before and message.opt.block2 is None
        assert len(recorder.requests) == 3 + len(BODY) // 64


async def test_request_leaves_a_large_block1_post_unchanged() -> None:
    recorder = Recorder()
    async with serve(r=recorder) as server, Context(bind=[LOCAL]) as client:
        message = Message(Type.CON, Code.POST, uri=uri(server, "r"), payload=BODY)
        message.opt.content_format = 42
        before = snapshot(message)
        with trio.fail_after(5):
            assert (await client.request(message)).payload == b"%d" % len(BODY)
        assert snapshot(message) == before and message.opt.block1 is None
        assert message.payload is BODY


async def test_observe_and_stream_leave_their_message_unchanged() -> None:
    registrations = Registrations()
    async with serve(obs=registrations) as server, Context(bind=[LOCAL]) as client:
        message = Message(Type.CON, Code.GET, uri=uri(server, "obs"))
        before = snapshot(message)
        with trio.fail_after(5):
            async with client.observe(message) as obs:
                assert obs.registered
            assert snapshot(message) == before and message.opt.observe is None
            message.opt.observe = 0
            before = snapshot(message)
            async with client.stream(message) as responses:
                assert (await responses.__anext__()).payload == b"2"
            assert snapshot(message) == before
        tokens = [r.token for r in registrations.requests if r.opt.observe == 0]
        assert len(tokens) == 2 and tokens[0] != tokens[1]


class Fresh(Resource):
    """Requires proof of freshness (RFC 9175 §2.3) for a POST; answers the length of the body."""

    requires_fresh = True

    def render_post(self, request: Message) -> Message:
        return Message(payload=b"%d" % len(request.payload))


async def test_the_one_echo_retry_answers_a_freshness_challenge_and_leaves_the_message_unchanged() -> None:
    async with serve(fresh=Fresh()) as server, Context(bind=[LOCAL]) as client:
        message = Message(Type.CON, Code.POST, uri=uri(server, "fresh"), payload=b"small")
        before = snapshot(message)
        with trio.fail_after(5):
            response = await client.request(message)
        assert (response.code, response.payload) == (Code.CHANGED, b"5")
        assert snapshot(message) == before and message.opt.echo is None


async def test_the_echo_retry_answers_a_freshness_challenge_to_a_block1_post() -> None:
    async with serve(fresh=Fresh()) as server, Context(bind=[LOCAL]) as client:
        with trio.fail_after(5):
            response = await client.post(uri(server, "fresh"), BODY)
        assert (response.code, response.payload) == (Code.CHANGED, b"%d" % len(BODY))


# --- 5. no fallback to a weaker transport ------------------------------------------------------------------


def listening_pair() -> tuple[socket.socket, socket.socket]:
    """A UDP socket and a listening TCP socket on the same 127.0.0.1 port number."""
    for _ in range(20):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.setblocking(False)
        udp.bind(LOCAL)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.bind(("127.0.0.1", udp.getsockname()[1]))
        except OSError as e:
            udp.close()
            tcp.close()
            if e.errno != errno.EADDRINUSE:
                raise
            continue
        tcp.listen()
        tcp.setblocking(False)
        return udp, tcp
    raise AssertionError("no port free for both UDP and TCP")


@pytest.mark.parametrize("scheme", ["coaps", "coap+tcp", "coaps+tcp", "coap+ws", "coaps+ws"])
async def test_a_scheme_without_a_transport_raises_no_transport_and_sends_nothing(scheme: str) -> None:
    """Each of these schemes has a transport, so the Context is limited to ``coap``
    (``Context(schemes=...)``): nothing falls back to plain UDP."""
    udp, tcp = listening_pair()
    port = udp.getsockname()[1]
    target = f"{scheme}://127.0.0.1:{port}/secret"
    limit = {"coap"}
    with udp, tcp:
        async with Context(bind=[LOCAL], schemes=limit) as client:
            with trio.fail_after(5):
                attempts = [
                    lambda: client.get(target),
                    lambda: client.request(Message(Type.NON, Code.POST, uri=target, payload=b"x" * 4000)),
                ]
                for attempt in attempts:
                    with pytest.raises(NoTransport) as info:
                        await attempt()
                    assert f"{scheme}://" in str(info.value) and "not sent" in str(info.value)
                with pytest.raises(NoTransport):
                    async with client.observe(target):
                        pass
                with pytest.raises(NoTransport):
                    async with client.stream(Message(Type.CON, Code.GET, uri=target)):
                        pass
                assert idle(client) and client.transports[0].layer.stats.sent == 0
                # Nothing went to the UDP port: the first datagram it gets is this plain request.
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(lambda: client.get(f"coap://127.0.0.1:{port}/marker", con=False))
                    while True:
                        try:
                            first = Message.decode(udp.recv(4096))
                            break
                        except BlockingIOError:
                            await trio.lowlevel.wait_readable(udp)
                    nursery.cancel_scope.cancel()
            assert first.opt.uri_path == ("marker",)
        with pytest.raises(BlockingIOError):
            tcp.accept()  # and nobody connected to the TCP port


# --- 6. the token manager is a supervised service ----------------------------------------------------------


async def test_the_token_manager_is_a_task_started_in_the_context() -> None:
    async with Context(bind=[LOCAL]):
        names = [t.name for t in tasks()]
        assert names.count("coapio token manager") == 1
    assert "coapio token manager" not in [t.name for t in tasks()]


async def test_a_failure_of_the_token_manager_ends_the_context(monkeypatch: pytest.MonkeyPatch) -> None:
    body_cancelled = False

    def broken(now: float) -> None:
        raise RuntimeError("token manager broke")

    with trio.fail_after(5):
        with pytest.raises(BaseException) as info:
            async with Context(bind=[LOCAL]) as ctx:
                monkeypatch.setattr(ctx._tokens, "_run_timers", broken)
                ctx._tokens._wake_at(trio.current_time())
                try:
                    await trio.sleep_forever()
                except trio.Cancelled:
                    body_cancelled = True
                    raise
    assert body_cancelled
    assert [type(e) for e in leaves(info.value)] == [RuntimeError], info.value
    assert not [t for t in tasks() if t.name.startswith("coapio")]


# --- 7. poke() ---------------------------------------------------------------------------------------------


async def test_poke_on_an_observation_reregisters_at_once_with_the_same_token() -> None:
    registrations = Registrations()
    async with serve(obs=registrations) as server, Context(bind=[LOCAL]) as client:
        with trio.fail_after(5):
            async with client.observe(uri(server, "obs")) as obs:
                assert (await obs.__anext__()).payload == b"1"
                obs.poke()
                assert (await obs.__anext__()).payload == b"2"  # the answer to the re-registration
                assert obs.registered
        first, second = registrations.requests[:2]
        assert (first.opt.observe, second.opt.observe) == (0, 0) and first.token == second.token


async def acknowledged_and_silent(peer: RawPeer, client: Context) -> tuple[Message, tuple[str, int]]:
    """The peer's side of a CON GET it acknowledges with an empty ACK and then leaves unanswered."""
    request, source = await peer.recv()
    peer.reply(Message(Type.ACK, Code.EMPTY, request.mid), source)
    await until(lambda: client.counters.open_exchanges == 0)
    return request, source


async def test_poke_on_a_silent_request_pings_and_an_unanswered_ping_ends_it_with_request_timed_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with RawPeer() as peer:
        async with Context(bind=[LOCAL]) as client:
            async with client.stream(Message(Type.CON, Code.GET, uri=peer.uri())) as responses:
                await acknowledged_and_silent(peer, client)
                started = trio.current_time()
                responses.poke()
                ping, _ = await peer.recv()
                assert (ping.type, ping.code, ping.token) == (Type.CON, Code.EMPTY, b"")
                with trio.fail_after(SETTLE), pytest.raises(RequestTimedOut):
                    await responses.__anext__()
                assert trio.current_time() - started <= client.tuning.max_transmit_wait
                assert all(m.code is Code.EMPTY and m.mid == ping.mid for m in peer.drain())
            await until(lambda: idle(client))


async def test_poke_on_a_silent_request_whose_ping_is_reset_raises_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A Reset is the answer a ping asks for: the peer is alive, and the request goes on waiting."""
    with RawPeer() as peer:
        async with Context(bind=[LOCAL]) as client:
            async with client.stream(Message(Type.CON, Code.GET, uri=peer.uri())) as responses:
                request, source = await acknowledged_and_silent(peer, client)
                responses.poke()
                ping, _ = await peer.recv()
                peer.reply(Message(Type.RST, Code.EMPTY, ping.mid), source)
                with trio.move_on_after(SETTLE) as scope:
                    await responses.__anext__()
                assert scope.cancelled_caught, "the answered ping ended the request"
                assert peer.drain() == []  # no retransmission of an answered ping
                late = Message(Type.NON, Code.CONTENT, 0x4242, request.token, payload=b"late")
                peer.reply(late, source)
                with trio.fail_after(5):
                    assert [m.payload async for m in responses] == [b"late"]
            await until(lambda: idle(client))


async def test_a_ping_answered_with_an_empty_ack_is_forgotten() -> None:
    """There is no public counter for pings in flight, so this looks at the token manager's table."""
    with RawPeer() as peer:
        async with Context(bind=[LOCAL]) as client:
            with trio.fail_after(5):
                async with client.stream(Message(Type.CON, Code.GET, uri=peer.uri())) as responses:
                    _, source = await acknowledged_and_silent(peer, client)
                    responses.poke()
                    ping, _ = await peer.recv()
                    peer.reply(Message(Type.ACK, Code.EMPTY, ping.mid), source)
                    await until(lambda: client.counters.open_exchanges == 0)
                await until(lambda: idle(client))
            assert not client._tokens._pings


# --- 8. shutdown order -------------------------------------------------------------------------------------


async def shutdown_scenario(empty_ack_delay: float) -> tuple[Context, Registrations, list[BaseException]]:
    """A client leaves its Context with a live (not passive) observation of a server and a GET to the
    same server pending in another task; returns once that GET failed and the server settled."""
    registrations = Registrations()
    site = Site()
    site.add("obs", registrations)
    site.add("hold", Hold())
    tuning = TransportTuning(empty_ack_delay=empty_ack_delay)
    failures: list[BaseException] = []
    async with Context(bind=[LOCAL], site=site, tuning=tuning) as server, trio.open_nursery() as nursery:
        failed = trio.Event()

        async def pending(client: Context) -> None:
            try:
                await client.get(uri(server, "hold"))
            except NetworkError as e:
                failures.append(e)
            failed.set()

        async with Context(bind=[LOCAL]) as client:
            observation = client.observe(uri(server, "obs"))  # never left
            await observation.__aenter__()
            nursery.start_soon(pending, client)
            await until(lambda: server.counters.live_handlers == 2)
            assert client.counters.live_tokens == 2 and server.counters.observers == 1
            if empty_ack_delay < 1:
                await trio.sleep(1)  # virtual: the GET is acknowledged (empty ACK), its response pending
                assert client.counters.open_exchanges == 0
        await failed.wait()
        assert client.counters.live_tokens == 0
        await until(lambda: server.counters.observers == 0, rounds=10)
        nursery.cancel_scope.cancel()
    return server, registrations, failures


async def test_leaving_the_context_deregisters_live_observations_and_fails_pending_requests(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10):
        _, registrations, failures = await shutdown_scenario(empty_ack_delay=0.2)
    assert len(failures) == 1 and "the CoAP context was closed" in str(failures[0])
    assert [r.opt.observe for r in registrations.requests] == [0, 1]  # the deregistration arrived


async def test_leaving_the_context_deregisters_even_while_a_con_to_the_peer_awaits_its_ack() -> None:
    """The pending GET is not acknowledged yet (the server's empty ACK would come after 60 s), so it holds
    the peer's one NSTART slot when the Context exits."""
    with trio.fail_after(5):
        _, registrations, failures = await shutdown_scenario(empty_ack_delay=60)
    assert len(failures) == 1 and "the CoAP context was closed" in str(failures[0])
    assert [r.opt.observe for r in registrations.requests] == [0, 1]


# --- 9. trio stays unimported under asyncio ----------------------------------------------------------------


SCRIPT = textwrap.dedent("""
    import sys

    import anyio

    from coapio import Context, Message, ObservableResource, Resource, Site


    class Hello(Resource):
        def render_get(self, request):
            return Message(payload=b"hello" * 500)


    class Later(Resource):
        async def render_get(self, request):
            await anyio.sleep(0)
            return Message(payload=b"later")


    class Feed(Resource):
        async def render_to_pipe(self, request, pipe):
            pipe.add_response(Message(payload=b"0"), is_last=False)
            pipe.add_response(Message(payload=b"1"), is_last=True)


    async def main():
        site = Site()
        site.add("hello", Hello())
        site.add("later", Later())
        site.add("feed", Feed())
        async with Context(bind=[("127.0.0.1", 0)], site=site) as server, \\
                Context(bind=[("127.0.0.1", 0)]) as client:
            host, port = server.local_addresses[0]
            base = f"coap://{host}:{port}"
            with anyio.fail_after(5):
                assert (await client.get(base + "/hello")).payload == b"hello" * 500
                assert (await client.get(base + "/later")).payload == b"later"
                async with client.observe(base + "/feed") as obs:
                    assert [m.payload async for m in obs] == [b"0", b"1"]


    anyio.run(main, backend="asyncio")
    assert "trio" not in sys.modules, sorted(name for name in sys.modules if "trio" in name)
    print("no trio")
""")


def test_trio_is_not_imported_when_running_under_asyncio() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60,
                            env=env, check=False)
    assert result.returncode == 0 and result.stdout.strip() == "no trio", result.stderr


