"""The runtime over a lossy network: :class:`coapio.testing.LossyRelay` between real loopback sockets, with
20 % loss in each direction, in virtual time (trio's MockClock).

What must hold however many datagrams are lost: a CON request completes with the right payload or gives
up exactly on RFC 7252's schedule; a request's handler never runs twice; block-wise bodies arrive
byte-identical; an observation converges to the resource's latest state. The first part of the module tests
the relay itself (routing, each impairment, reproducibility, both anyio backends).

``COAPIO_LOSSY_REQUESTS`` sets the number of GET requests of the big run (default 10,000, about 4 s; at
least a few thousand, so that some give up), e.g.
``COAPIO_LOSSY_REQUESTS=100000 pytest tests/test_lossy.py -k ten_thousand``.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

import anyio
import pytest
import trio
import trio.testing

from coapio import Code, Context, Message, ObservableResource, Resource, Site, TransportTuning, Type
from coapio.error import RequestTimedOut
from coapio.testing import Direction, Impairment, LossyRelay, Transit

LOCAL = ("127.0.0.1", 0)
LOSS = 0.2
REQUESTS = int(os.environ.get("COAPIO_LOSSY_REQUESTS", "10000"))
MIB = 1 << 20


class Echo(Resource):
    """GET answers the query string; plain ``def``, so it runs inline."""

    def render_get(self, request: Message) -> Message:
        return Message(payload=request.opt.uri_query[0].encode())


def header(data: bytes) -> tuple[Type, int, int, bytes]:
    """Type, code, message ID and token of a datagram, without a full decode."""
    first = data[0]
    return Type((first >> 4) & 3), data[1], int.from_bytes(data[2:4], "big"), data[4 : 4 + (first & 15)]


class Wire:
    """The relay's hook: what crossed it, by token. ``requests`` holds every transmission of a CON request
    (lost ones too) as (time, message ID); ``down`` every datagram towards a client as (type, code,
    dropped)."""

    def __init__(self) -> None:
        self.requests: dict[bytes, list[tuple[float, int]]] = {}
        self.down: dict[bytes, list[tuple[Type, int, bool]]] = {}

    def __call__(self, transit: Transit) -> None:
        mtype, code, mid, token = header(transit.data)
        if transit.direction is Direction.UP:
            if mtype is Type.CON and 0 < code < 32:
                self.requests.setdefault(token, []).append((transit.time, mid))
        elif token:
            self.down.setdefault(token, []).append((mtype, code, transit.dropped))


def check_retransmission_schedule(sent: list[tuple[float, int]], tuning: TransportTuning) -> float:
    """Assert RFC 7252 §4.2's schedule for one CON (one message ID, at most MAX_RETRANSMIT + 1 copies, the
    gap doubling from an initial timeout in [ACK_TIMEOUT, ACK_TIMEOUT * ACK_RANDOM_FACTOR]); return that
    initial timeout (NaN if the CON went out once)."""
    assert len({mid for _, mid in sent}) == 1, "a retransmission changed the message ID"
    assert 1 <= len(sent) <= tuning.max_retransmit + 1
    if len(sent) == 1:
        return math.nan
    first = sent[0][0]
    initial = sent[1][0] - first
    assert tuning.ack_timeout <= initial <= tuning.ack_timeout * tuning.ack_random_factor
    for k, (t, _) in enumerate(sent):
        assert t - first == pytest.approx(initial * ((1 << k) - 1))
    return initial


# --- the relay itself ------------------------------------------------------------------------------------


class Peer:
    """A plain UDP socket on loopback; records (time, source, data) and can answer each datagram."""

    def __init__(self, answer: Callable[[bytes], bytes | None] = lambda data: None,
                 family: socket.AddressFamily = socket.AF_INET) -> None:
        self.sock = trio.socket.socket(family, socket.SOCK_DGRAM)
        self.family = family
        self.answer = answer
        self.arrivals: list[tuple[float, tuple[str, int], bytes]] = []

    async def bind(self) -> None:
        await self.sock.bind(("::1" if self.family == socket.AF_INET6 else "127.0.0.1", 0))

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port

    async def run(self) -> None:
        while True:
            data, source = await self.sock.recvfrom(65535)
            self.arrivals.append((trio.current_time(), source[:2], data))
            reply = self.answer(data)
            if reply is not None:
                await self.sock.sendto(reply, source)

    def payloads(self) -> list[bytes]:
        return [data for _, _, data in self.arrivals]


async def test_relay_gives_each_client_its_own_upstream_peer_and_routes_answers_back() -> None:
    async with trio.open_nursery() as nursery:
        target = Peer(answer=lambda data: b"re:" + data)
        await target.bind()
        nursery.start_soon(target.run)
        async with LossyRelay(target.address) as relay:
            alice, bob = Peer(), Peer()
            for client in (alice, bob):
                await client.bind()
                nursery.start_soon(client.run)
            for i in range(3):
                await alice.sock.sendto(b"a%d" % i, relay.address)
                await bob.sock.sendto(b"b%d" % i, relay.address)
            await trio.testing.wait_all_tasks_blocked()
            assert alice.payloads() == [b"re:a0", b"re:a1", b"re:a2"]
            assert bob.payloads() == [b"re:b0", b"re:b1", b"re:b2"]
            assert {source for _, source, _ in alice.arrivals} == {relay.address}
            sources = {data[:1]: source for _, source, data in target.arrivals}
            assert len(set(sources.values())) == 2 == relay.clients
            assert sources[b"a"] not in (alice.address, bob.address, relay.address)
            for direction in Direction:
                counters = relay.counters[direction]
                assert (counters.received, counters.forwarded, counters.dropped) == (6, 6, 0)
        nursery.cancel_scope.cancel()


async def test_relay_rejects_targets_beyond_loopback_and_bad_impairments() -> None:
    for target in [("192.0.2.1", 5683), ("localhost", 5683), ("::", 5683)]:
        with pytest.raises(ValueError):
            LossyRelay(target)
    for bad in [{"loss": 1.5}, {"duplicate": -0.1}, {"delay": (2.0, 1.0)}, {"reorder": 2.0}]:
        with pytest.raises(ValueError):
            LossyRelay(("127.0.0.1", 5683), **bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Impairment(hold=0)


async def send_through(impairment: Impairment, count: int, *, seed: int = 0,
                       gap: float = 0.0) -> tuple[LossyRelay, Peer, list[float]]:
    """Send ``count`` numbered datagrams from one client through a relay with ``impairment`` upstream;
    return the relay (closed), the target with its arrivals, and the send times."""
    sent: list[float] = []
    async with trio.open_nursery() as nursery:
        target = Peer()
        await target.bind()
        nursery.start_soon(target.run)
        async with LossyRelay(target.address, up=impairment, seed=seed) as relay:
            client = Peer()
            await client.bind()
            for i in range(count):
                sent.append(trio.current_time())
                await client.sock.sendto(b"%d" % i, relay.address)
                await trio.sleep(gap)
            await trio.sleep(impairment.delay[1] + impairment.hold + 1)  # virtual: let every copy out
            assert relay.pending == 0
        nursery.cancel_scope.cancel()
    return relay, target, sent


async def test_relay_drops_at_the_given_rate_and_the_same_seed_gives_the_same_fates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rough = Impairment(loss=0.3, duplicate=0.1, delay=(0.0, 0.5), reorder=0.1)
    first, target1, _ = await send_through(rough, 2000, seed=5, gap=0.01)
    _, target2, _ = await send_through(rough, 2000, seed=5, gap=0.01)
    _, target3, _ = await send_through(rough, 2000, seed=6, gap=0.01)
    assert target1.payloads() == target2.payloads() != target3.payloads()
    counters = first.counters[Direction.UP]
    assert counters.received == 2000
    assert 0.25 < counters.dropped / 2000 < 0.35
    assert 0.05 < counters.duplicated / (2000 - counters.dropped) < 0.15
    assert counters.forwarded == counters.received - counters.dropped + counters.duplicated
    assert len(target1.arrivals) == counters.forwarded
    assert counters.reordered > 0 and counters.delayed > 0
    assert first.counters[Direction.DOWN].received == 0


async def test_relay_delays_each_copy_within_the_range(autojump_clock: trio.testing.MockClock) -> None:
    relay, target, sent = await send_through(Impairment(delay=(1.0, 2.0), duplicate=1.0), 50, gap=0.5)
    assert relay.counters[Direction.UP].delayed == 100
    for (t, _, data) in target.arrivals:
        assert 1.0 <= t - sent[int(data)] <= 2.0
    assert Counter(target.payloads()) == {b"%d" % i: 2 for i in range(50)}


async def test_relay_reorder_lets_the_next_datagram_overtake_or_releases_after_hold(
    autojump_clock: trio.testing.MockClock,
) -> None:
    relay, target, sent = await send_through(Impairment(reorder=1.0, hold=3.0), 5)
    # 0 is held and overtaken by 1, 2 by 3; nothing overtakes 4, which goes out after `hold`.
    assert target.payloads() == [b"1", b"0", b"3", b"2", b"4"]
    assert target.arrivals[-1][0] - sent[4] == pytest.approx(3.0)
    assert relay.counters[Direction.UP].reordered == 3


async def test_relay_impairs_each_direction_on_its_own(autojump_clock: trio.testing.MockClock) -> None:
    site = Site()
    site.add("echo", Echo())
    async with Context(bind=[LOCAL], site=site) as server, Context(bind=[LOCAL]) as client:
        async with LossyRelay(server.local_addresses[0], up=Impairment(duplicate=1.0),
                              down=Impairment(loss=1.0)) as relay:
            with pytest.raises(RequestTimedOut):
                await client.get(relay.uri("echo?x"))
            relay.impairment[Direction.DOWN] = Impairment()  # the network heals
            assert (await client.get(relay.uri("echo?y"))).payload == b"y"
    up, down = relay.counters[Direction.UP], relay.counters[Direction.DOWN]
    assert (up.received, up.duplicated, up.forwarded) == (6, 6, 12)
    # The server answers every duplicate from its cache, so the answers come in pairs too.
    assert (down.received, down.dropped, down.forwarded) == (12, 10, 2)
    assert server.transports[0].layer.stats.duplicates == 10


async def test_relay_over_ipv6_loopback() -> None:
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    site = Site()
    site.add("echo", Echo())
    async with Context(bind=[("::1", 0)], site=site) as server, Context(bind=[("::1", 0)]) as client:
        async with LossyRelay(("::1", server.local_addresses[0][1])) as relay:
            assert relay.address[0] == "::1" and relay.uri("echo").startswith("coap://[::1]:")
            assert (await client.get(relay.uri("echo?six"))).payload == b"six"


async def test_leaving_the_relay_closes_its_sockets_and_discards_what_it_holds() -> None:
    async with trio.open_nursery() as nursery:
        target = Peer()
        await target.bind()
        nursery.start_soon(target.run)
        async with LossyRelay(target.address, delay=(100.0, 100.0)) as relay:
            client = Peer()
            await client.bind()
            await client.sock.sendto(b"late", relay.address)
            await trio.testing.wait_all_tasks_blocked()
            assert relay.pending == 1
            sockets = list(relay._sockets)
        assert len(sockets) == 2 and all(s.fileno() == -1 for s in sockets)
        with pytest.raises(RuntimeError):
            relay.address  # noqa: B018
        with pytest.raises(KeyError):  # the body's exception, not an exception group
            async with LossyRelay(target.address):
                raise KeyError("body")
        assert relay.pending == 0 and target.arrivals == []
        nursery.cancel_scope.cancel()


def test_relay_runs_on_asyncio() -> None:
    """The relay is written against anyio: the same exchange over asyncio, in real time (no loss, so no
    retransmission waits; duplicates and millisecond delays)."""

    async def scenario() -> tuple[int, int]:
        site = Site()
        site.add("echo", Echo())
        async with Context(bind=[LOCAL], site=site) as server, Context(bind=[LOCAL]) as client:
            async with LossyRelay(server.local_addresses[0], duplicate=0.5, delay=(0.0, 0.002),
                                  seed=3) as relay:
                with anyio.fail_after(10):
                    for i in range(20):
                        assert (await client.get(relay.uri(f"echo?{i}"))).payload == b"%d" % i
            up = relay.counters[Direction.UP]
            return up.duplicated, up.delayed, server.transports[0].layer.stats.duplicates

    duplicated, delayed, deduplicated = anyio.run(scenario, backend="asyncio")
    assert duplicated > 0 and delayed > 0 and deduplicated > 0


# --- the runtime through 20 % loss each way -----------------------------------------------------------


async def test_ten_thousand_con_requests_complete_or_give_up_on_rfc_7252_schedule(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Each request completes with its own payload or raises RequestTimedOut; one that gave up went out
    exactly MAX_RETRANSMIT + 1 times and gave up ACK_TIMEOUT * (2**(MAX_RETRANSMIT + 1) - 1) times its
    random factor after its first transmission (RFC 7252 §4.2, §4.8.2: MAX_TRANSMIT_WAIT at most)."""
    # Ten clients with NSTART 8 each: 80 requests in flight, so that the run is not serial.
    tuning = TransportTuning(nstart=8)
    site = Site()
    site.add("echo", Echo())
    wire = Wire()
    outcomes: dict[bytes, tuple[bool, float]] = {}  # token -> (completed, when it ended)

    async def worker(client: Context, numbers: range) -> None:
        for n in numbers:
            request = client.build(Code.GET, relay.uri(f"echo?{n}"))
            request.token = os.urandom(8)  # request() sends a copy: the caller picks the token to see it
            try:
                response = await client.request(request)
            except RequestTimedOut:
                outcomes[request.token] = (False, trio.current_time())
            else:
                assert (response.code, response.payload) == (Code.CONTENT, b"%d" % n)
                outcomes[request.token] = (True, trio.current_time())

    async with Context(bind=[LOCAL], site=site) as server:
        async with LossyRelay(server.local_addresses[0], loss=LOSS, seed=1, on_datagram=wire) as relay:
            async with AsyncExitStack() as stack:
                clients = [await stack.enter_async_context(Context(bind=[LOCAL], tuning=tuning))
                           for _ in range(10)]
                async with trio.open_nursery() as nursery:
                    for c, client in enumerate(clients):
                        share = range(c, REQUESTS, len(clients))
                        for w in range(tuning.nstart):
                            nursery.start_soon(worker, client, share[w :: tuning.nstart])
                for client in clients:
                    counters = client.counters
                    assert (counters.open_exchanges, counters.live_tokens) == (0, 0)

    assert len(outcomes) == REQUESTS and set(wire.requests) == set(outcomes)
    gave_up = [token for token, (completed, _) in outcomes.items() if not completed]
    for token, (completed, ended) in outcomes.items():
        sent = wire.requests[token]
        initial = check_retransmission_schedule(sent, tuning)
        if not completed:
            assert len(sent) == tuning.max_retransmit + 1
            waited = ended - sent[0][0]
            assert waited == pytest.approx(initial * ((2 << tuning.max_retransmit) - 1))
            low = tuning.ack_timeout * ((2 << tuning.max_retransmit) - 1)
            assert low <= waited <= tuning.max_transmit_wait
    # 0.36 ** 5: a request gives up with probability 0.6 %, about 60 of 10,000.
    assert 0 < len(gave_up) < REQUESTS * 0.02
    for direction in Direction:
        counters = relay.counters[direction]
        assert abs(counters.dropped / counters.received - LOSS) < 0.02
        assert counters.forwarded == counters.received - counters.dropped


class Ledger(Resource):
    """POST records its payload (a unique request ID) and echoes it: ``runs`` counts each ID's runs."""

    def __init__(self, runs: Counter[bytes]) -> None:
        super().__init__()
        self.runs = runs

    def render_post(self, request: Message) -> Message:
        self.runs[request.payload] += 1
        return Message(code=Code.CHANGED, payload=request.payload)


class SlowLedger(Ledger):
    """An async POST that takes longer than the empty-ACK delay: its response goes separately, as a CON
    that the server itself must retransmit."""

    async def render_post(self, request: Message) -> Message:
        await trio.sleep(5)
        return super().render_post(request)


async def test_post_handlers_run_exactly_once_per_answered_request_and_never_twice(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runs: Counter[bytes] = Counter()
    site = Site()
    site.add("ledger", Ledger(runs))
    site.add("slow", SlowLedger(runs))
    tuning = TransportTuning(nstart=8)
    wire = Wire()
    answered: dict[bytes, bytes] = {}  # ID -> token
    timed_out: dict[bytes, bytes] = {}
    abandoned: dict[bytes, bytes] = {}  # acknowledged, but the separate response never came

    async def worker(client: Context, ids: list[bytes]) -> None:
        for ident in ids:
            path = "slow" if ident.startswith(b"s") else "ledger"
            request = client.build(Code.POST, relay.uri(path), payload=ident)
            request.token = os.urandom(8)  # request() sends a copy: the caller picks the token to see it
            # Once acknowledged, a request waits for its separate response as long as the caller lets it:
            # this scope is that bound, far past the time by which the server gives up on its response.
            with trio.move_on_after(600):
                try:
                    response = await client.request(request)
                except RequestTimedOut:
                    timed_out[ident] = request.token
                else:
                    assert (response.code, response.payload) == (Code.CHANGED, ident)
                    answered[ident] = request.token
                continue
            abandoned[ident] = request.token

    ids = [b"p%d" % i for i in range(2000)] + [b"s%d" % i for i in range(1000)]
    async with Context(bind=[LOCAL], site=site) as server:
        async with LossyRelay(server.local_addresses[0], loss=LOSS, seed=2, on_datagram=wire) as relay:
            async with AsyncExitStack() as stack:
                clients = [await stack.enter_async_context(Context(bind=[LOCAL], tuning=tuning))
                           for _ in range(4)]
                async with trio.open_nursery() as nursery:
                    for c, client in enumerate(clients):
                        share = ids[c :: len(clients)]
                        for w in range(tuning.nstart):
                            nursery.start_soon(worker, client, share[w :: tuning.nstart])
        layer = server.transports[0].layer

    assert len(answered) + len(timed_out) + len(abandoned) == len(ids)
    assert max(runs.values()) == 1, "a handler ran twice"
    assert all(runs[ident] == 1 for ident in answered)
    assert any(runs[ident] == 1 for ident in timed_out)  # ran, but every answer was lost
    for ident, token in abandoned.items():
        # The server sent its separate response 1 + MAX_RETRANSMIT times and the network lost every copy.
        assert ident.startswith(b"s") and runs[ident] == 1
        copies = wire.down.get(token, [])
        separate = [dropped for mtype, code, dropped in copies if mtype is Type.CON and code >= 64]
        assert len(separate) == tuning.max_retransmit + 1 and all(separate)
    assert layer.stats.duplicates > 0  # retransmitted requests met the deduplication cache


class Store(Resource):
    """GET returns the body; PUT replaces it."""

    def __init__(self, body: bytes = b"") -> None:
        super().__init__()
        self.body = body

    def render_get(self, request: Message) -> Message:
        return Message(payload=self.body)

    def render_put(self, request: Message) -> Message:
        self.body = request.payload
        return Message(code=Code.CHANGED)


# A transfer of 1 MiB is 1024 block exchanges. With 20 % loss each way one transmission gets its answer
# back with probability 0.64, so with the default MAX_RETRANSMIT of 4 an exchange gives up with
# probability 0.36 ** 5 (0.6 %), and some exchange of the 1024 almost surely would (99.8 %): the transfer
# would fail as RFC 7252 says it must. 12 retransmissions bring an exchange's failure down to 0.36 ** 13
# (2e-6) and the transfer's to 0.2 %; the relay's seed makes the outcome the same on every run. Both
# sides get the tuning: the server's deduplication must last the client's longer EXCHANGE_LIFETIME.
BLOCK_TUNING = TransportTuning(max_retransmit=12)


async def transfer(call: Callable[[Context, LossyRelay], Awaitable[Message]], store: Store,
                   seed: int) -> tuple[Message, LossyRelay]:
    site = Site()
    site.add("store", store)
    async with Context(bind=[LOCAL], site=site, tuning=BLOCK_TUNING) as server:
        async with LossyRelay(server.local_addresses[0], loss=LOSS, seed=seed) as relay:
            async with Context(bind=[LOCAL], tuning=BLOCK_TUNING) as client:
                response = await call(client, relay)
    return response, relay


async def test_one_mib_block1_put_arrives_byte_identical(autojump_clock: trio.testing.MockClock) -> None:
    body = os.urandom(MIB)
    store = Store()
    response, relay = await transfer(lambda c, r: c.put(r.uri("store"), body), store, seed=3)
    assert response.code is Code.CHANGED
    assert hashlib.sha256(store.body).digest() == hashlib.sha256(body).digest()
    assert relay.counters[Direction.UP].dropped > 0


async def test_one_mib_block2_get_arrives_byte_identical(autojump_clock: trio.testing.MockClock) -> None:
    body = os.urandom(MIB)
    response, relay = await transfer(lambda c, r: c.get(r.uri("store")), Store(body), seed=4)
    assert response.code is Code.CONTENT
    assert hashlib.sha256(response.payload).digest() == hashlib.sha256(body).digest()
    assert relay.counters[Direction.DOWN].dropped > 0


class Gauge(ObservableResource):
    def __init__(self) -> None:
        super().__init__()
        self.value = 0

    def render_get(self, request: Message) -> Message:
        return Message(payload=b"%d" % self.value)

    def update(self, value: int, *, confirmable: bool) -> None:
        self.value = value
        self.notify(confirmable=confirmable)


async def test_observations_converge_to_the_latest_state_despite_lost_notifications(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """RFC 7641 promises eventual consistency, not every state: notifications are lost, but each observer
    ends up with the latest value, through a later notification, a CON notification (every tenth here),
    or its re-registration when the last notification's Max-Age (60 s) runs out. Every observer is made to
    lose the last state's notification, so the re-registration path is taken, not just hoped for."""
    updates, observers = 200, 20
    gauge = Gauge()
    site = Site()
    site.add("gauge", gauge)
    registrations: dict[bytes, set[int]] = {}  # token -> message IDs of its GETs with Observe=0

    def count_registrations(transit: Transit) -> None:
        if transit.direction is Direction.UP:
            message = Message.decode(transit.data)
            if message.code is Code.GET and message.opt.observe == 0:
                registrations.setdefault(message.token, set()).add(message.mid)

    histories: list[list[list[int]]] = [[] for _ in range(observers)]  # per observer, per registration
    registered = [trio.Event() for _ in range(observers)]
    last_update = math.inf
    converged: list[float] = []

    async def watch(client: Context, history: list[list[int]], ready: trio.Event) -> None:
        while True:  # what an application that wants the state does: observe again after an error
            seen: list[int] = []
            history.append(seen)
            try:
                async with client.observe(relay.uri("gauge")) as obs:
                    ready.set()
                    async for notification in obs:
                        seen.append(int(notification.payload))
                        if seen[-1] == updates:
                            converged.append(trio.current_time() - last_update)
                            return
            except RequestTimedOut:
                pass  # the registration or a re-registration went unanswered 1 + MAX_RETRANSMIT times

    async with Context(bind=[LOCAL], site=site) as server:
        async with LossyRelay(server.local_addresses[0], loss=LOSS, seed=5,
                              on_datagram=count_registrations) as relay:
            async with AsyncExitStack() as stack:
                clients = [await stack.enter_async_context(Context(bind=[LOCAL])) for _ in range(observers)]
                with trio.fail_after(3600):
                    async with trio.open_nursery() as nursery:
                        for client, history, ready in zip(clients, histories, registered, strict=True):
                            nursery.start_soon(watch, client, history, ready)
                        for ready in registered:
                            await ready.wait()
                        for value in range(1, updates):
                            await trio.sleep(1)
                            gauge.update(value, confirmable=value % 10 == 5)
                        await trio.sleep(1)
                        # The last state's notifications are all lost (a burst on the downlink): an
                        # observer not waiting for a CON's acknowledgement finds it only by re-registering
                        # once the previous notification's Max-Age has run out.
                        relay.impairment[Direction.DOWN] = Impairment(loss=1.0)
                        gauge.update(updates, confirmable=False)
                        await trio.testing.wait_all_tasks_blocked()
                        relay.impairment[Direction.DOWN] = Impairment(loss=LOSS)
                        last_update = trio.current_time()

    for history in histories:
        assert history[-1][-1] == updates
        for seen in history:
            assert seen == sorted(set(seen)), "a notification went backwards or was delivered twice"
        assert sum(map(len, history)) <= updates, "no notification was lost"  # 0..updates: one more
    assert len(converged) == observers
    # Re-registrations reuse the observation's token with a new message ID.
    reregistrations = sum(len(mids) - 1 for mids in registrations.values())
    assert reregistrations >= sum(delay > 60 for delay in converged) > 0
