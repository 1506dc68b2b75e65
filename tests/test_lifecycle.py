"""Lifecycle under stress: what cancellation, hanging handlers, context exit, unreachable peers and a
restarting server leave behind, each proven with the counters the runtime exposes (DESIGN.md §3).

Everything runs over real loopback sockets in virtual time (MockClock). The random-cancellation test runs
10,000 requests by default (about 12 s here); ``COAPIO_LONG=1`` runs 100,000 (about 160 s and 0.8 GB).
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AsyncExitStack

import pytest
import trio
import trio.lowlevel
import trio.testing

from coapio import (
    Code,
    Context,
    Message,
    ObservableResource,
    Resource,
    Site,
    TransportTuning,
    Type,
)
from coapio.error import NetworkError

LOCAL = ("127.0.0.1", 0)
LONG = os.environ.get("COAPIO_LONG") == "1"
#: Virtual seconds after which nothing sent before can still be retransmitted (MAX_TRANSMIT_WAIT is 93 s).
SETTLE = 300.0


# --- helpers ---------------------------------------------------------------------------------------------


def all_tasks() -> list[trio.lowlevel.Task]:
    """Every task of this trio run, found by walking the nursery tree from the root task."""
    found: list[trio.lowlevel.Task] = []
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        found.append(task)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return found


def coapio_tasks() -> Counter[str]:
    """The library's own tasks by name ("coapio transport", "coapio handler", ...)."""
    return Counter(t.name for t in all_tasks() if t.name.startswith("coapio"))


def uri(ctx: Context, path: str) -> str:
    host, port = ctx.local_addresses[0]
    return f"coap://{host}:{port}/{path}"


@contextlib.contextmanager
def real_time_limit(seconds: float) -> Iterator[None]:
    """Fail when the block takes more than ``seconds`` of wall-clock time. Under a MockClock a task that
    spins keeps virtual time from moving, so no virtual timeout would ever fire."""
    token = trio.lowlevel.current_trio_token()

    def expire() -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(scope.cancel)

    with trio.CancelScope() as scope:
        timer = threading.Timer(seconds, expire)
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
    if scope.cancelled_caught:
        raise AssertionError(f"still running after {seconds} s of real time")


def closed_port() -> int:
    """A UDP port on 127.0.0.1 that nobody listens on (datagrams to it earn ICMP port unreachable)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port: int = probe.getsockname()[1]
    probe.close()
    return port


class SilentPeer:
    """A UDP socket that receives and never answers; counts datagrams and distinct message IDs."""

    def __init__(self) -> None:
        self.sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.arrivals = 0
        self.mids: set[tuple[tuple[str, int], int]] = set()

    async def __aenter__(self) -> SilentPeer:
        await self.sock.bind(("127.0.0.1", 0))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.sock.close()

    def uri(self, path: str = "x") -> str:
        return f"coap://127.0.0.1:{self.sock.getsockname()[1]}/{path}"

    async def run(self) -> None:
        while True:
            data, source = await self.sock.recvfrom(2048)
            self.arrivals += 1
            self.mids.add((source, int.from_bytes(data[2:4], "big")))


class Fast(Resource):
    def render_get(self, request: Message) -> Message:
        return Message(payload=b"fast")


class Slow(Resource):
    """An async renderer taking up to ``longest`` virtual seconds: the response goes separate after the
    empty ACK; counts how its tasks ended."""

    def __init__(self, rng: random.Random, longest: float = 4.0) -> None:
        super().__init__()
        self.rng = rng
        self.longest = longest
        self.started = self.finished = self.cancelled = 0

    async def render_get(self, request: Message) -> Message:
        self.started += 1
        try:
            await trio.sleep(self.rng.uniform(0, self.longest))
        except trio.Cancelled:
            self.cancelled += 1
            raise
        self.finished += 1
        return Message(payload=b"slow")


CHUNKED_BODY = bytes(range(250)) * 4


class Chunked(Resource):
    """1,000 bytes from an async renderer taking 0.1 s per rendering: a block-wise transfer takes time."""

    async def render_get(self, request: Message) -> Message:
        await trio.sleep(0.1)
        return Message(payload=CHUNKED_BODY)


class Ticker(ObservableResource):
    """An observable counter; :meth:`run` changes it every ``interval`` seconds, every fifth time CON."""

    def __init__(self, max_age: int | None = None) -> None:
        super().__init__()
        self.value = 0
        self.max_age = max_age

    def render_get(self, request: Message) -> Message:
        response = Message(payload=b"%d" % self.value)
        if self.max_age is not None:
            response.opt.max_age = self.max_age
        return response

    def bump(self, *, confirmable: bool = False) -> None:
        self.value += 1
        self.notify(confirmable=confirmable)

    async def run(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            self.bump(confirmable=self.value % 5 == 4)


# --- 1. cancellation at random points ----------------------------------------------------------------------


class Tally:
    """Which states the random cancellations hit, so that the test can show it covered each."""

    def __init__(self) -> None:
        self.kinds: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()


async def test_requests_cancelled_at_random_points_leave_nothing_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Requests of every kind, cancelled at random points: in an already cancelled scope, queued behind
    NSTART, waiting for an ACK or between retransmissions (to silent peers), after the empty ACK while the
    separate response is pending, after the response, in the middle of block-wise transfers, while
    registering an observation and while iterating its notifications. Afterwards no exchange, token,
    handler, task, timer or live deduplication entry is left on either side, and no client sends another
    request."""
    total = 100_000 if LONG else 10_000
    rng = random.Random(20261123)
    client_tuning = TransportTuning(nstart=8, max_queued_per_peer=100_000, block_szx=2)  # 64-byte blocks
    slow, chunked, ticker = Slow(random.Random(1)), Chunked(), Ticker()
    site = Site()
    site.add("fast", Fast())
    site.add("slow", slow)
    site.add("chunked", chunked)
    site.add("ticker", ticker)
    tally = Tally()
    baseline = len(all_tasks())
    started = time.perf_counter()

    async with AsyncExitStack() as stack:
        silent = [await stack.enter_async_context(SilentPeer()) for _ in range(2)]
        services = await stack.enter_async_context(trio.open_nursery())
        for peer in silent:
            services.start_soon(peer.run)
        # (the server's handler bounds would answer part of the load 5.03: not what this test is about)
        server_tuning = TransportTuning(max_handlers=100_000, max_handlers_per_peer=10_000)
        server = await stack.enter_async_context(Context(bind=[LOCAL], site=site, tuning=server_tuning))
        clients = [await stack.enter_async_context(Context(bind=[LOCAL], tuning=client_tuning))
                   for _ in range(max(4, total // 1000))]
        ticking = trio.CancelScope()

        async def tick() -> None:
            with ticking:
                await ticker.run(1.0)

        services.start_soon(tick)

        async def one(client: Context, kind: str, start: float, seed: int) -> None:
            r = random.Random(seed)
            await trio.sleep(start)
            tally.kinds[kind] += 1
            if kind == "precancelled":
                with trio.CancelScope() as scope:
                    scope.cancel()
                    await client.get(uri(server, "fast"))
                tally.outcomes["precancelled"] += scope.cancelled_caught
            elif kind in ("silent", "silent NON"):
                peer = r.choice(silent)
                # below the 62 s a CON may give up after (45 s for a NON's slot): every one is cancelled
                with trio.move_on_after(r.uniform(0, 60 if kind == "silent" else 40)):
                    await client.get(peer.uri(), con=kind == "silent")
                    raise AssertionError("a silent peer answered")
            elif kind == "fast":
                with trio.move_on_after(r.choice([0.0, 1.0])) as scope:
                    await client.get(uri(server, "fast"))
                    tally.outcomes["fast answered"] += 1
                    await trio.sleep(2.0)  # the cancellation comes after the response
            elif kind == "slow":
                with trio.move_on_after(r.uniform(0, 5)) as scope:
                    await client.get(uri(server, "slow"))
                    tally.outcomes["slow answered"] += 1
                tally.outcomes["slow cancelled"] += scope.cancelled_caught
            elif kind == "blockwise":
                moved = 0

                def progress(done: int, size: int | None) -> None:
                    nonlocal moved
                    moved = done

                with trio.move_on_after(r.uniform(0, 2.5)) as scope:
                    whole = await client.request(Message(code=Code.GET, uri=uri(server, "chunked")),
                                                 progress=progress)
                    assert whole.payload == CHUNKED_BODY
                    tally.outcomes["blockwise complete"] += 1
                if scope.cancelled_caught and 0 < moved < len(CHUNKED_BODY):
                    tally.outcomes["blockwise cancelled mid-transfer"] += 1
            else:
                stage = "observe cancelled while registering"
                with trio.move_on_after(r.choice([0.0, r.uniform(0, 10)])):
                    async with client.observe(uri(server, "ticker"), passive=r.random() < 0.3) as obs:
                        stage = "observe cancelled before a notification"
                        async for notification in obs:
                            if notification is not obs.initial:
                                stage = "observe cancelled while iterating"
                tally.outcomes[stage] += 1

        kinds = ["precancelled", "silent", "silent NON", "fast", "slow", "blockwise", "observe"]
        weights = [1, 3, 1, 1, 2, 1, 1]
        async with trio.open_nursery() as requests:
            for i in range(total):
                kind = rng.choices(kinds, weights)[0]
                requests.start_soon(one, clients[i % len(clients)], kind, rng.uniform(0, 60), rng.random())
        ticking.cancel()
        await trio.testing.wait_all_tasks_blocked()  # deregistrations in flight get their answers
        work_done = trio.current_time()

        # Nothing left on the clients, and nothing more sent but Resets to late responses.
        for client in clients:
            counters = client.counters
            assert (counters.open_exchanges, counters.live_tokens, counters.live_handlers) == (0, 0, 0)
        arrivals = [peer.arrivals for peer in silent]
        requests_sent = [c.transports[0].layer.stats.sent - c.transports[0].layer.stats.resets_sent
                         for c in clients]
        await trio.sleep(SETTLE)
        assert [peer.arrivals for peer in silent] == arrivals, "a cancelled request was (re)transmitted"
        assert [c.transports[0].layer.stats.sent - c.transports[0].layer.stats.resets_sent
                for c in clients] == requests_sent, "a client sent something other than a Reset"

        # The server finished its handlers; observers whose clients left (passively, or while the
        # registration was under way) are dropped by the Resets to the next notification.
        assert server.counters.live_handlers == 0 and slow.started == slow.finished
        ticker.bump()
        await trio.testing.wait_all_tasks_blocked()
        assert ticker.observer_count == 0
        await trio.sleep(SETTLE)
        for ctx in (server, *clients):
            layer = ctx.transports[0].layer
            counters = ctx.counters
            assert (counters.open_exchanges, counters.live_tokens, counters.live_handlers) == (0, 0, 0)
            state = layer._debug_state()
            assert (state["exchanges"], state["awaiting"], state["heap"]) == (0, 0, 0)
            assert layer.next_deadline() is None, "a timer is still set"
        assert server._server.next_deadline() is None
        assert coapio_tasks() == {"coapio transport": len(clients) + 1,
                                  "coapio token manager": len(clients) + 1}

        # Deduplication entries live for EXCHANGE_LIFETIME and are dropped lazily: once it has passed,
        # the next message leaves its own entry and nothing else.
        await trio.sleep(server.tuning.exchange_lifetime)
        for client in clients:
            assert (await client.get(uri(server, "fast"), con=False)).payload == b"fast"
            assert client.counters.dedup_entries == 1  # the NON response
        assert server.counters.dedup_entries == len(clients)  # one NON request from each
        services.cancel_scope.cancel()
    assert len(all_tasks()) == baseline and not coapio_tasks()

    elapsed = time.perf_counter() - started
    print(f"{total} requests in {elapsed:.1f} s real, {work_done:.0f} s virtual: "
          f"{dict(tally.kinds)} {dict(tally.outcomes)}; silent peers saw {sum(arrivals)} datagrams "
          f"with {sum(len(p.mids) for p in silent)} message IDs")
    # The random points covered every state.
    silent_requests = tally.kinds["silent"] + tally.kinds["silent NON"]
    silent_mids = sum(len(peer.mids) for peer in silent)
    assert silent_mids < silent_requests, "no request was cancelled while queued behind NSTART"
    assert sum(arrivals) > silent_mids, "no request was cancelled between retransmissions"
    assert tally.outcomes["precancelled"] == tally.kinds["precancelled"]
    for outcome in ("fast answered", "slow answered", "slow cancelled", "blockwise complete",
                    "blockwise cancelled mid-transfer", "observe cancelled while registering",
                    "observe cancelled before a notification", "observe cancelled while iterating"):
        assert tally.outcomes[outcome] > 0, outcome
    assert server.transports[0].layer.stats.resets_received > 0  # late separate responses were refused


async def test_a_request_in_an_already_cancelled_scope_sends_nothing() -> None:
    async with SilentPeer() as peer, trio.open_nursery() as nursery:
        nursery.start_soon(peer.run)
        async with Context(bind=[LOCAL]) as client:
            with trio.CancelScope() as scope:
                scope.cancel()
                await client.get(peer.uri())
            with trio.CancelScope() as scope:
                scope.cancel()
                async with client.observe(peer.uri()):
                    pass
            await trio.testing.wait_all_tasks_blocked()
            assert client.transports[0].layer.stats.sent == 0
        nursery.cancel_scope.cancel()
    assert peer.arrivals == 0


# --- 2. a handler that never returns ----------------------------------------------------------------------


class Hanging(Resource):
    """An async renderer that never returns; counts how many ran and how many ran their ``finally``."""

    def __init__(self) -> None:
        super().__init__()
        self.started = self.ended = 0

    async def render_get(self, request: Message) -> Message:
        self.started += 1
        try:
            await trio.sleep_forever()
        finally:
            self.ended += 1
        raise AssertionError("unreachable")


class Quick(Resource):
    async def render_get(self, request: Message) -> Message:
        await trio.lowlevel.checkpoint()
        return Message(payload=b"quick")


async def test_a_hanging_handler_neither_blocks_the_server_nor_outlives_its_exchange(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hanging = Hanging()
    site = Site()
    site.add("hang", hanging)
    site.add("fast", Fast())
    site.add("quick", Quick())
    async with Context(bind=[LOCAL], site=site) as server, Context(bind=[LOCAL]) as client:
        raw = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with raw:
            await raw.connect(server.transports[0].local)
            request = Message(Type.CON, Code.GET, 0x0100, b"hang", uri="coap://127.0.0.1/hang")
            await raw.send(request.encode())
            ack = Message.decode(await raw.recv(2048))
            assert (ack.type, ack.code, ack.mid) == (Type.ACK, Code.EMPTY, 0x0100)  # the empty ACK
            assert trio.current_time() == pytest.approx(server.tuning.empty_ack_delay)

            # Meanwhile, plain and async handlers answer, and more hanging requests change nothing.
            async def hang_too() -> None:
                await client.get(uri(server, "hang"))

            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(hang_too)
                with trio.fail_after(5):
                    for path in ("fast", "quick") * 50:
                        assert (await client.get(uri(server, path))).code is Code.CONTENT
                await trio.testing.wait_all_tasks_blocked()
                assert hanging.started == 21 and server.counters.live_handlers == 21
                # every hanging exchange is acknowledged: no retransmission, the tokens wait
                assert client.counters.open_exchanges == 0 and client.counters.live_tokens == 20

                # The client giving up is invisible on UDP: the server's handler goes on ...
                nursery.cancel_scope.cancel()
            assert client.counters.live_tokens == 0
            await trio.sleep(SETTLE)
            assert hanging.ended == 0 and server.counters.live_handlers == 21
            with trio.move_on_after(SETTLE):
                stray = await raw.recv(2048)
                raise AssertionError(f"the hanging exchange sent {Message.decode(stray)!r}")

            # ... unless the client says so: a new request with the token ends the old one (the token
            # now names the new exchange), and its handler's finally runs.
            again = Message(Type.CON, Code.GET, 0x0101, b"hang", uri="coap://127.0.0.1/quick")
            await raw.send(again.encode())
            answer = Message.decode(await raw.recv(2048))
            assert (answer.code, answer.payload) == (Code.CONTENT, b"quick")
            await trio.testing.wait_all_tasks_blocked()
            assert hanging.ended == 1 and server.counters.live_handlers == 20

        exit_started = trio.current_time()
        live = coapio_tasks()
        assert live["coapio handler"] == 20
    # The context's exit cancels the rest at once, and every finally runs.
    assert trio.current_time() == exit_started
    assert hanging.ended == hanging.started == 21 and not coapio_tasks()


# --- 3. leaving the context under load ----------------------------------------------------------------------


async def test_context_exit_under_heavy_load_is_prompt_and_closes_everything(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Four clients with 1,000 requests each (answered, waiting for slow or hanging async handlers,
    retransmitting to a silent peer, queued) and 25 observations each; the server mid-way through
    thousands of async handlers. Leaving the contexts takes no virtual time and well under a second of
    real time, fails every pending request, closes every socket and ends every task."""
    rng = random.Random(11)
    slow, hanging, ticker = Slow(random.Random(4), longest=60.0), Hanging(), Ticker()
    site = Site()
    site.add("fast", Fast())
    site.add("slow", slow)
    site.add("hang", hanging)
    site.add("ticker", ticker)
    many = TransportTuning(nstart=64, max_queued_per_peer=10_000)
    outcomes: Counter[str] = Counter()
    baseline = len(all_tasks())

    async def requester(client: Context, target: str) -> None:
        try:
            await client.get(target)
            outcomes["answered"] += 1
        except NetworkError:
            outcomes["failed by the exit"] += 1

    async def observer(client: Context, target: str) -> None:
        try:
            async with client.observe(target) as obs:
                async for _ in obs:
                    outcomes["notifications"] += 1
        except NetworkError:
            outcomes["observation ended by the exit"] += 1

    async with SilentPeer() as silent, trio.open_nursery() as services:
        services.start_soon(silent.run)
        services.start_soon(ticker.run, 0.5)
        # The deadline of this scope, set just before the exit, bounds it in virtual time (a fail_after
        # around the exit itself would not nest with the contexts' own scopes).
        with trio.CancelScope() as bound:
            async with trio.open_nursery() as load:  # the requesters outlive the contexts
                async with AsyncExitStack() as contexts:  # (closed early, below; this is for failures)
                    bounds = TransportTuning(max_handlers=10_000, max_handlers_per_peer=10_000)
                    server = await contexts.enter_async_context(
                        Context(bind=[LOCAL], site=site, tuning=bounds))
                    clients = [await contexts.enter_async_context(Context(bind=[LOCAL], tuning=many))
                               for _ in range(4)]
                    sockets = [endpoint.sock for ctx in (server, *clients) for endpoint in ctx.transports]
                    targets = [uri(server, "fast"), uri(server, "slow"), uri(server, "slow"),
                               uri(server, "hang"), silent.uri()]
                    for client in clients:
                        for _ in range(25):
                            load.start_soon(observer, client, uri(server, "ticker"))
                        for _ in range(1000):
                            load.start_soon(requester, client, rng.choice(targets))
                    await trio.sleep(10.0)
                    in_flight = sum(client.counters.live_tokens for client in clients)
                    handlers = server.counters.live_handlers
                    assert in_flight > 2500 and handlers > 1500 and ticker.observer_count == 100

                    virtual, real = trio.current_time(), time.perf_counter()
                    bound.deadline = virtual + 1.0
                    await contexts.aclose()
                    exit_real = time.perf_counter() - real
                    assert trio.current_time() == virtual, "leaving the contexts waited for something"
        assert not bound.cancelled_caught
        assert trio.current_time() == virtual, "a requester outlived the contexts"
        services.cancel_scope.cancel()

    print(f"exit with {in_flight} requests and {handlers} handlers in flight took {exit_real * 1000:.0f} ms"
          f" real; {dict(outcomes)}")
    assert exit_real < 5.0
    assert all(sock.fileno() == -1 for sock in sockets)
    assert slow.started == slow.finished + slow.cancelled and slow.cancelled > 0
    assert hanging.ended == hanging.started > 0
    assert outcomes["failed by the exit"] == in_flight - 100
    assert outcomes["observation ended by the exit"] == 100
    assert not coapio_tasks() and len(all_tasks()) == baseline


# --- 4. an unreachable peer ---------------------------------------------------------------------------------


async def test_icmp_port_unreachable_ends_every_exchange_and_observation_to_the_peer_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """300 requests to one server (acknowledged and waiting for their separate responses, waiting for an
    ACK, queued behind NSTART) and 20 observations of it; the server dies. The first datagram that draws
    an ICMP port unreachable ends all of them, at the same instant, and no request is retried."""
    hanging = Hanging()
    tickers = [Ticker(), Ticker()]
    site = Site()
    site.add("hang", hanging)
    site.add("a", tickers[0])
    site.add("b", tickers[1])
    ended: list[float] = []
    registered = trio.Semaphore(0)

    async with Context(bind=[LOCAL], tuning=TransportTuning(nstart=4, max_queued_per_peer=10_000)) as client:
        async with trio.open_nursery() as nursery:
            bounds = TransportTuning(max_handlers_per_peer=1000)
            async with Context(bind=[LOCAL], site=site, tuning=bounds) as server:

                async def requester() -> None:
                    with pytest.raises(NetworkError):
                        await client.get(uri(server, "hang"))
                    ended.append(trio.current_time())

                async def observer(path: str) -> None:
                    with pytest.raises(NetworkError):
                        async with client.observe(uri(server, path)) as obs:
                            registered.release()
                            async for _ in obs:
                                pass
                    ended.append(trio.current_time())

                for i in range(20):
                    nursery.start_soon(observer, "ab"[i % 2])
                for _ in range(20):
                    await registered.acquire()
                for _ in range(300):
                    nursery.start_soon(requester)
                await trio.sleep(5.0)
                layer = client.transports[0].layer
                acknowledged = hanging.started - len(layer._exchanges)
                queued = 300 - hanging.started
                assert acknowledged > 50 and queued > 50 and len(layer._exchanges) == 4
                assert client.counters.live_tokens == 320
                died, sent = trio.current_time(), layer.stats.sent
        # the nursery has joined: everything ended
        assert len(ended) == 320 and len(set(ended)) == 1, "the exchanges did not end at once"
        assert died < ended[0] <= died + client.tuning.ack_timeout * client.tuning.ack_random_factor
        # One retransmission drew the ICMP error; the rest is the observations' deregistrations (see
        # test_an_observation_ended_by_an_icmp_error_sends_no_deregistration).
        await trio.testing.wait_all_tasks_blocked()
        after = layer.stats.sent
        assert 1 <= after - sent <= 1 + client.tuning.nstart
        await trio.sleep(SETTLE)
        counters = client.counters
        assert (counters.open_exchanges, counters.live_tokens) == (0, 0)
        assert layer.stats.sent == after and layer.next_deadline() is None
    print(f"{acknowledged} acknowledged, {queued} queued and 20 observations ended "
          f"{ended[0] - died:.2f} s after the server died")


async def test_an_observation_ended_by_an_icmp_error_sends_no_deregistration(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ticker = Ticker()
    site = Site()
    site.add("ticker", ticker)
    async with Context(bind=[LOCAL]) as client:
        layer = client.transports[0].layer
        async with Context(bind=[LOCAL], site=site) as server:
            target = uri(server, "ticker")
            obs = await client.observe(target).__aenter__()
            assert obs.registered
        with pytest.raises(NetworkError):
            await client.get(target)  # draws the ICMP error, which ends the observation too
        assert await obs.__anext__() is obs.initial  # the iteration starts with the first response
        with pytest.raises(NetworkError):
            await obs.__anext__()
        sent = layer.stats.sent
        await obs.__aexit__(None, None, None)
        await trio.testing.wait_all_tasks_blocked()
        assert layer.stats.sent == sent, "a deregistration went to the unreachable peer"


async def test_icmp_port_unreachable_drops_every_observer_of_a_vanished_client_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client with 41 observations of three resources vanishes without deregistering (its socket is
    closed). The one notification of a resource it alone observed draws the ICMP error that drops all of
    them, on every resource, at once."""
    tickers = [Ticker() for _ in range(3)]
    site = Site()
    for i, ticker in enumerate(tickers):
        site.add(f"t{i}", ticker)
    with real_time_limit(30):
        async with Context(bind=[LOCAL], site=site) as server:
            async with Context(bind=[LOCAL]) as client:
                for path in ["t0"] + ["t1", "t2"] * 20:
                    # Never left, and passive: the client "crashes" with its observations open.
                    obs = client.observe(uri(server, path), passive=True)
                    await obs.__aenter__()
            assert [t.observer_count for t in tickers] == [1, 20, 20]
            layer = server.transports[0].layer
            sent = layer.stats.sent
            tickers[0].bump()
            await trio.testing.wait_all_tasks_blocked()
            assert layer.stats.sent == sent + 1
            assert [t.observer_count for t in tickers] == [0, 0, 0]
            assert server.counters.open_exchanges == 0
            for ticker in tickers:
                ticker.bump(confirmable=True)
            await trio.sleep(SETTLE)
            assert layer.stats.sent == sent + 1, "something more was sent to the vanished client"


async def test_the_socket_task_goes_idle_after_a_send_reports_an_icmp_error() -> None:
    dead = f"coap://127.0.0.1:{closed_port()}/x"
    async with Context(bind=[LOCAL], tuning=TransportTuning(nstart=2)) as client:
        endpoint = client.transports[0]
        with real_time_limit(1):
            # Two datagrams back to back: the second sendto() reports the ICMP error the first one drew.
            for token in (b"1", b"2"):
                endpoint.send(Message(Type.NON, Code.GET, uri=dead, token=token))
            await trio.testing.wait_all_tasks_blocked()  # never returns while a task spins
        assert endpoint.layer.open_exchanges == 0


# --- 5. a server that restarts ----------------------------------------------------------------------------


async def test_an_observer_reregisters_with_a_restarted_server_after_max_age(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """RFC 7641 §3.3.1: a client that hears nothing fresh within Max-Age re-registers. When the server
    restarted on the same port, forgetting its observers, that is how the client gets notifications again."""

    def serving(ticker: Ticker, bind: tuple[str, int]) -> Context:
        site = Site()
        site.add("ticker", ticker)
        return Context(bind=[bind], site=site)

    first = Ticker(max_age=10)
    async with Context(bind=[LOCAL]) as client, AsyncExitStack() as observation:
        async with serving(first, LOCAL) as old:
            port = old.local_addresses[0][1]
            obs = await observation.enter_async_context(client.observe(uri(old, "ticker")))
            assert (await obs.__anext__()).payload == b"0"
            first.bump()
            assert (await obs.__anext__()).payload == b"1"
            heard = trio.current_time()
        # The old server is gone; a new one on the same port continues the resource, knowing no observer.
        second = Ticker(max_age=10)
        second.value = first.value
        async with serving(second, ("127.0.0.1", port)) as new:
            assert second.observer_count == 0
            renewed = await obs.__anext__()  # no notification comes: the client re-registers
            assert renewed.payload == b"1" and obs.registered
            assert heard + 10 <= trio.current_time() <= heard + 10 + 6  # after Max-Age, plus a margin
            assert second.observer_count == 1
            for expected in (b"2", b"3"):
                second.bump()
                assert (await obs.__anext__()).payload == expected
            await observation.aclose()  # leaving deregisters from the new server
            await trio.testing.wait_all_tasks_blocked()
            assert second.observer_count == 0
            assert (new.counters.live_handlers, client.counters.live_tokens) == (0, 0)
