"""Observe (RFC 7641) through the runtime: registration, notifications, every way an observation ends,
and the cancellation contract on both sides."""

from __future__ import annotations

import socket

import trio
import trio.testing

from coapio import Code, Context, Message, ObservableResource, Site, Type
from coapio.error import NotFound

LOCAL = ("127.0.0.1", 0)


class Counter(ObservableResource):
    """An observable counter; ``observation()`` records its lifetime, as a real data-source hook would."""

    def __init__(self, max_age: int | None = None) -> None:
        super().__init__()
        self.value = 0
        self.deleted = False
        self.max_age = max_age
        self.renders = 0
        self.observations_started = 0
        self.observations_ended = 0

    def render_get(self, request: Message) -> Message:
        if self.deleted:
            raise NotFound("deleted")
        self.renders += 1
        response = Message(payload=b"%d" % self.value)
        if self.max_age is not None:
            response.opt.max_age = self.max_age
        return response

    async def observation(self, request: Message) -> None:
        self.observations_started += 1
        try:
            await trio.sleep_forever()
        finally:
            self.observations_ended += 1

    def render_delete(self, request: Message) -> Message:
        self.deleted = True
        return Message(code=Code.DELETED)

    def bump(self, *, confirmable: bool = False) -> None:
        self.value += 1
        self.notify(confirmable=confirmable)


def serve(resource: Counter) -> Context:
    site = Site()
    site.add("counter", resource)
    return Context(bind=[LOCAL], site=site)


def uri(ctx: Context) -> str:
    host, port = ctx.local_addresses[0]
    return f"coap://{host}:{port}/counter"


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


async def test_notifications_arrive_in_order_after_the_initial_response() -> None:
    counter = Counter()
    async with serve(counter) as server, Context(bind=[LOCAL]) as client:
        async with client.observe(uri(server)) as obs:
            assert obs.registered and obs.initial is not None and obs.initial.payload == b"0"
            seen = [(await obs.__anext__()).payload]  # the initial response is the first item
            for _ in range(3):
                counter.bump()
                seen.append((await obs.__anext__()).payload)
            assert seen == [b"0", b"1", b"2", b"3"]
            assert counter.observer_count == 1


async def test_leaving_the_block_deregisters_and_cancels_the_servers_observation_scope() -> None:
    counter = Counter()
    async with serve(counter) as server, Context(bind=[LOCAL]) as client:
        async with client.observe(uri(server)) as obs:
            assert obs.registered
            await settle()
            assert counter.observations_started == 1
        await settle()
        assert counter.observer_count == 0
        assert counter.observations_ended == 1  # its finally ran
        assert server.counters.live_handlers == 0
        assert (client.counters.live_tokens, client.counters.open_exchanges) == (0, 0)


async def test_passive_cancellation_resets_the_next_notification() -> None:
    counter = Counter()
    async with serve(counter) as server, Context(bind=[LOCAL]) as client:
        async with client.observe(uri(server), passive=True):
            pass
        await settle()
        assert counter.observer_count == 1  # nothing said yet
        counter.bump()  # the NON notification is answered with a Reset...
        await settle()
        assert counter.observer_count == 0  # ...which removes the observer
        assert counter.observations_ended == 1


async def test_slow_consumer_sees_the_newest_notification() -> None:
    counter = Counter()
    async with serve(counter) as server, Context(bind=[LOCAL]) as client:
        async with client.observe(uri(server)) as obs:
            await obs.__anext__()  # the initial response
            for _ in range(20):
                counter.bump()
                await settle()
            assert (await obs.__anext__()).payload == b"20"


async def test_an_error_notification_ends_the_iteration() -> None:
    counter = Counter()
    async with serve(counter) as server, Context(bind=[LOCAL]) as client:
        async with client.observe(uri(server)) as obs:
            items = []
            counter.deleted = True
            counter.notify()
            async for item in obs:
                items.append(item.code)
            assert items == [Code.CONTENT, Code.NOT_FOUND]
            assert obs.final is not None and obs.final.code is Code.NOT_FOUND
        await settle()
        assert counter.observer_count == 0


async def test_a_resource_that_cannot_be_observed_gives_one_final_response() -> None:
    site = Site()

    class Plain(Counter.__mro__[2]):  # a plain Resource
        def render_get(self, request: Message) -> Message:
            return Message(payload=b"once")

    site.add("plain", Plain())
    async with Context(bind=[LOCAL], site=site) as server, Context(bind=[LOCAL]) as client:
        host, port = server.local_addresses[0]
        async with client.observe(f"coap://{host}:{port}/plain") as obs:
            assert not obs.registered
            assert [m.payload async for m in obs] == [b"once"]


async def test_confirmable_notifications_and_their_acknowledgement() -> None:
    counter = Counter()
    async with serve(counter) as server, Context(bind=[LOCAL]) as client:
        async with client.observe(uri(server)) as obs:
            await obs.__anext__()
            counter.bump(confirmable=True)
            note = await obs.__anext__()
            assert note.type is Type.CON and note.payload == b"1"
            await settle()
            assert server.counters.open_exchanges == 0  # our ACK arrived


async def test_client_reregisters_when_max_age_runs_out(autojump_clock: trio.testing.MockClock) -> None:
    counter = Counter(max_age=10)
    async with serve(counter) as server, Context(bind=[LOCAL]) as client:
        async with client.observe(uri(server)) as obs:
            await obs.__anext__()
            renders = counter.renders
            with trio.move_on_after(20):  # no notification for longer than Max-Age + margin
                await obs.__anext__()
            assert counter.renders > renders  # the re-registration was rendered
            assert counter.observer_count == 1  # and replaced the entry, not added one


async def test_vanished_client_is_dropped_after_an_unacknowledged_con_notification(
    autojump_clock: trio.testing.MockClock,
) -> None:
    counter = Counter()
    async with serve(counter) as server:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            await sock.connect(server.transports[0].sock.getsockname())
            register = Message(Type.CON, Code.GET, 1, b"obs", uri="coap://h/counter")
            register.opt.observe = 0
            await sock.send(register.encode())
            await sock.recv(2048)  # the registration's response; from now on we say nothing
            assert counter.observer_count == 1
            counter.bump(confirmable=True)
            await trio.sleep(100)  # beyond MAX_TRANSMIT_WAIT
        assert counter.observer_count == 0 and counter.observations_ended == 1


async def test_plain_get_with_the_same_token_ends_the_observation() -> None:
    counter = Counter()
    async with serve(counter) as server:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock, trio.fail_after(5):
            await sock.connect(server.transports[0].sock.getsockname())
            register = Message(Type.CON, Code.GET, 1, b"obs", uri="coap://h/counter")
            register.opt.observe = 0
            await sock.send(register.encode())
            first = Message.decode(await sock.recv(2048))
            assert first.opt.observe is not None
            plain = Message(Type.CON, Code.GET, 2, b"obs", uri="coap://h/counter")
            await sock.send(plain.encode())
            second = Message.decode(await sock.recv(2048))
            assert second.opt.observe is None
        await settle()
        assert counter.observer_count == 0


async def test_observer_limit_answers_without_observe() -> None:
    import attrs

    from coapio import TransportTuning

    counter = Counter()
    site = Site()
    site.add("counter", counter)
    tuning = attrs.evolve(TransportTuning(), max_observers_per_resource=2)
    async with Context(bind=[LOCAL], site=site, tuning=tuning) as server, Context(bind=[LOCAL]) as client:
        async with client.observe(uri(server)) as a, client.observe(uri(server)) as b:
            async with client.observe(uri(server)) as c:
                assert a.registered and b.registered and not c.registered
            assert counter.observer_count == 2


async def test_context_exit_ends_observations_on_both_sides() -> None:
    counter = Counter()
    async with serve(counter) as server, Context(bind=[LOCAL]) as client:
        obs = await client.observe(uri(server)).__aenter__()
        assert obs.registered
        # the client left without deregistering (its context is gone): the next notification is
        # answered by nobody — the server keeps the observer until a CON times out or a Reset comes
    assert counter.observations_ended == counter.observations_started == 1


def test_observation_on_asyncio_too() -> None:
    import anyio

    async def main() -> None:
        counter = Counter.__new__(Counter)
        Counter.__init__(counter)

        async def observation(request: Message) -> None:  # no trio here: anyio only
            await anyio.sleep_forever()

        counter.observation = observation  # type: ignore[method-assign]
        site = Site()
        site.add("counter", counter)
        async with Context(bind=[LOCAL], site=site) as server, Context(bind=[LOCAL]) as client:
            with anyio.fail_after(5):
                async with client.observe(uri(server)) as obs:
                    await obs.__anext__()
                    counter.bump()
                    assert (await obs.__anext__()).payload == b"1"

    anyio.run(main, backend="asyncio")




async def test_con_fan_out_to_a_thousand_observers_needs_no_retransmission() -> None:
    """The server sends a large fan-out in chunks and lets other tasks (and its socket) drain in between,
    so the observers' acknowledgements are not dropped by an overflowing receive buffer, which would force
    retransmissions. Only the fan-out is measured: registration and deregistration are bursts of their own.
    """
    import attrs

    from coapio import TransportTuning

    counter = Counter()
    site = Site()
    site.add("counter", counter)
    many = attrs.evolve(TransportTuning(), nstart=1000, max_observers_per_resource=1000)
    async with Context(bind=[LOCAL], site=site, tuning=many) as server, Context(
        bind=[LOCAL], tuning=many
    ) as client:
        layer = server.transports[0].layer
        got: list[bytes] = []
        all_notified = trio.Event()
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                ready = trio.Semaphore(0)

                async def observer() -> None:
                    async with client.observe(uri(server)) as obs:
                        await obs.__anext__()
                        ready.release()
                        got.append((await obs.__anext__()).payload)
                        if len(got) == 1000:
                            all_notified.set()
                        await all_notified.wait()

                for _ in range(1000):
                    nursery.start_soon(observer)
                for _ in range(1000):
                    await ready.acquire()
                await trio.testing.wait_all_tasks_blocked()
                assert counter.observer_count == 1000
                before = layer.stats.retransmissions
                counter.bump(confirmable=True)
                await all_notified.wait()
                await trio.testing.wait_all_tasks_blocked()
                assert layer.stats.retransmissions == before
                assert server.counters.open_exchanges == 0  # every CON notification was acknowledged
        assert got == [b"1"] * 1000


async def test_delete_of_an_observed_resource_ends_its_observations_with_4_04() -> None:
    counter = Counter()
    async with serve(counter) as server, Context(bind=[LOCAL]) as client:
        with trio.fail_after(5):
            async with client.observe(uri(server)) as obs:
                assert (await client.delete(uri(server))).code is Code.DELETED
                assert [m.code async for m in obs] == [Code.CONTENT, Code.NOT_FOUND]
        await settle()
        assert counter.observer_count == 0 and counter.observations_ended == 1


async def test_a_content_format_change_ends_the_observation_with_4_06() -> None:
    class Shifty(Counter):
        def render_get(self, request: Message) -> Message:
            response = super().render_get(request)
            response.opt.content_format = 50 if self.value else 0
            return response

    shifty = Shifty()
    async with serve(shifty) as server, Context(bind=[LOCAL]) as client:
        with trio.fail_after(5):
            async with client.observe(uri(server)) as obs:
                shifty.bump()  # now JSON: notifications may not change format (RFC 7641 §4.2)
                assert [m.code async for m in obs] == [Code.CONTENT, Code.NOT_ACCEPTABLE]
        await settle()
        assert shifty.observer_count == 0


async def test_an_unreachable_observer_is_dropped_at_once() -> None:
    """An observer whose port is closed (the client died without deregistering) is dropped on the ICMP
    error of the next notification, not after MAX_TRANSMIT_WAIT of retransmissions."""
    counter = Counter()
    async with serve(counter) as server:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await sock.connect(server.transports[0].sock.getsockname())
        register = Message(Type.CON, Code.GET, 1, b"obs", uri="coap://h/counter")
        register.opt.observe = 0
        await sock.send(register.encode())
        with trio.fail_after(5):
            await sock.recv(2048)
        sock.close()  # gone, silently
        counter.bump(confirmable=True)
        # On loopback the ICMP error is queued while the notification is being sent; once every task
        # is blocked again, the socket task has read it.
        await trio.testing.wait_all_tasks_blocked(cushion=0.01)
        assert counter.observer_count == 0 and counter.observations_ended == 1
        assert server.counters.open_exchanges == 0  # and no retransmission to the dead port
