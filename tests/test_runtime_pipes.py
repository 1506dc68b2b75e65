"""Server Pipes (issue 10): ``render_to_pipe`` semantics, and every loss of interest UDP has — a Reset to a
notification, a deregistration, an ICMP error, token reuse, the server's exit, an unacknowledged CON
notification — cancels the producer's scope, so its ``finally`` runs, and leaves the counters at zero.

The resources use anyio only, so the scenarios marked so also run on asyncio (sync tests that call
``anyio.run``, as tests/test_backends.py does).
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable

import anyio
import anyio.lowlevel
import pytest
import trio
import trio.lowlevel
import trio.testing

from coapio import Code, Context, Message, Resource, ServerPipe, Site, Type
from coapio.error import BadRequest, RenderableError

LOCAL = ("127.0.0.1", 0)
BACKENDS = ["trio", "asyncio"]
#: Virtual seconds after which nothing sent before can still be retransmitted (MAX_TRANSMIT_WAIT is 93 s).
SETTLE = 300.0


# --- resources -------------------------------------------------------------------------------------------


class Run:
    """One producer (one ``render_to_pipe`` call): its request and how it ended."""

    def __init__(self, request: Message) -> None:
        self.request = request
        self.outcome: str | None = None  # "cancelled", "returned" or "raised"
        self.done = anyio.Event()


class Feed(Resource):
    """``render_to_pipe``: answers at once, then sends one notification per :meth:`push` (a query
    ``last`` makes the first response the last one). Records every producer and how it ended."""

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[Run] = []
        self._push, self._pull = anyio.create_memory_object_stream[tuple[bytes, bool]](math.inf)

    def push(self, payload: bytes, *, last: bool = False) -> None:
        self._push.send_nowait((payload, last))

    async def render_to_pipe(self, request: Message, pipe: ServerPipe) -> None:
        run = Run(request)
        self.runs.append(run)
        try:
            last = "last" in request.opt.uri_query
            pipe.add_response(Message(payload=b"0"), is_last=last)
            while not last:
                payload, last = await self._pull.receive()
                pipe.add_response(Message(payload=payload), is_last=last)
            run.outcome = "returned"
        except anyio.get_cancelled_exc_class():
            run.outcome = "cancelled"
            raise
        finally:
            run.done.set()


class Hold(Resource):
    """``render_to_pipe`` that waits forever before answering, unless the query says ``now``."""

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[Run] = []

    async def render_to_pipe(self, request: Message, pipe: ServerPipe) -> None:
        run = Run(request)
        self.runs.append(run)
        try:
            if "now" not in request.opt.uri_query:
                await anyio.sleep_forever()
            pipe.add_response(Message(payload=b"now"))
            run.outcome = "returned"
        except anyio.get_cancelled_exc_class():
            run.outcome = "cancelled"
            raise
        finally:
            run.done.set()


class Refuses(Resource):
    async def render_to_pipe(self, request: Message, pipe: ServerPipe) -> None:
        await anyio.lowlevel.checkpoint()
        raise BadRequest("no, thanks")


class Silent(Resource):
    """Returns without a response."""

    async def render_to_pipe(self, request: Message, pipe: ServerPipe) -> None:
        await anyio.lowlevel.checkpoint()


class NotLast(Resource):
    """Answers a request with ``is_last=False`` and then waits for more to send."""

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[Run] = []

    async def render_to_pipe(self, request: Message, pipe: ServerPipe) -> None:
        run = Run(request)
        self.runs.append(run)
        try:
            pipe.add_response(Message(payload=b"first"), is_last=False)
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            run.outcome = "cancelled"
            raise
        finally:
            run.done.set()


class Inline(Resource):
    """A plain ``def render_get``: reports the server's live handlers as seen while it renders."""

    def __init__(self) -> None:
        super().__init__()
        self.server: Context | None = None
        self.seen: list[tuple[int, str]] = []

    def render_get(self, request: Message) -> Message:
        assert self.server is not None
        self.seen.append((self.server.counters.live_handlers, trio.lowlevel.current_task().name))
        return Message(payload=b"inline")


class RawPeer:
    """A plain UDP socket on 127.0.0.1 for speaking CoAP by hand; ``recv_nowait`` proves silence."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind(LOCAL)

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, message: Message, to: Context) -> None:
        self.sock.sendto(message.encode(), to.transports[0].local)

    async def recv(self) -> Message:
        while True:
            try:
                return Message.decode(self.sock.recv(2048))
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.sock)

    def recv_nowait(self) -> bytes:
        return self.sock.recv(2048)


def serve(path: str, resource: Resource, **kwargs: object) -> Context:
    site = Site()
    site.add(path, resource)
    return Context(bind=[LOCAL], site=site, **kwargs)  # type: ignore[arg-type]


def uri(ctx: Context, path: str) -> str:
    host, port = ctx.local_addresses[0]
    return f"coap://{host}:{port}/{path}"


async def until(predicate: Callable[[], bool], rounds: int = 50) -> None:
    """Poll ``predicate()`` each time every task is blocked (what is in flight on loopback is processed
    by then); fail if it does not hold within ``rounds`` such moments. Works on both backends."""
    for _ in range(rounds):
        if predicate():
            return
        await anyio.wait_all_tasks_blocked()
        await anyio.lowlevel.checkpoint()
    assert predicate(), "the counters did not return to zero"


def server_idle(server: Context) -> bool:
    counters = server.counters
    return counters.live_handlers == 0 and counters.observers == 0


def client_idle(client: Context) -> bool:
    counters = client.counters
    return counters.live_tokens == 0 and counters.open_exchanges == 0


# --- 1. loss of interest cancels the producer ---------------------------------------------------------------


async def test_a_reset_to_a_notification_cancels_render_to_pipe_and_runs_its_finally() -> None:
    """A passive observation left by the client: the next notification is answered with a Reset."""
    feed = Feed()
    async with serve("feed", feed) as server, Context(bind=[LOCAL]) as client:
        with trio.fail_after(5):
            async with client.observe(uri(server, "feed"), passive=True) as obs:
                assert obs.registered and obs.initial is not None and obs.initial.payload == b"0"
            await trio.testing.wait_all_tasks_blocked()
            assert feed.runs[0].outcome is None and server.counters.observers == 1  # nothing said yet
            resets = server.transports[0].layer.stats.resets_received
            feed.push(b"1")
            await feed.runs[0].done.wait()
            assert feed.runs[0].outcome == "cancelled"
            assert server.transports[0].layer.stats.resets_received == resets + 1
            await until(lambda: server_idle(server) and client_idle(client))
        assert len(feed.runs) == 1


async def deregistration_cancels_render_to_pipe() -> None:
    feed = Feed()
    async with serve("feed", feed) as server, Context(bind=[LOCAL]) as client:
        with anyio.fail_after(5):
            async with client.observe(uri(server, "feed")) as obs:
                assert obs.registered
                feed.push(b"1")
                assert (await obs.__anext__()).payload == b"0"
                assert (await obs.__anext__()).payload == b"1"
            await feed.runs[0].done.wait()  # the deregistration (GET, Observe: 1) arrived
            assert feed.runs[0].outcome == "cancelled"
            await until(lambda: server_idle(server) and client_idle(client))
        # The deregistration itself reached the resource as a plain GET and was answered once.
        assert [run.request.opt.observe for run in feed.runs] == [0, 1]
        assert all(run.outcome == "cancelled" for run in feed.runs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_deregistration_cancels_render_to_pipe_and_runs_its_finally(backend: str) -> None:
    anyio.run(deregistration_cancels_render_to_pipe, backend=backend)


async def test_an_icmp_error_cancels_render_to_pipe_and_runs_its_finally() -> None:
    """The client vanishes with a passive observation open (its socket closes, nothing is sent); the next
    notification draws ICMP port unreachable."""
    feed = Feed()
    async with serve("feed", feed) as server:
        with trio.fail_after(5):
            async with Context(bind=[LOCAL]) as client:
                obs = client.observe(uri(server, "feed"), passive=True)
                await obs.__aenter__()  # never left: the client "crashes" observing
                assert obs.registered
            assert client_idle(client)
            await trio.testing.wait_all_tasks_blocked()
            assert feed.runs[0].outcome is None and server.counters.observers == 1
            feed.push(b"1")
            await feed.runs[0].done.wait()
            assert feed.runs[0].outcome == "cancelled"
            await until(lambda: server_idle(server))
            assert server.counters.open_exchanges == 0


async def test_a_request_reusing_the_token_cancels_the_older_render_to_pipe() -> None:
    """RFC 7252 §5.3.1: a client that sends a new request with a token it used ends the old exchange."""
    hold = Hold()
    async with serve("hold", hold) as server:
        with RawPeer() as raw, trio.fail_after(5):
            raw.send(Message(Type.NON, Code.GET, 0x0100, b"TT", uri="coap://127.0.0.1/hold"), server)
            await until(lambda: len(hold.runs) == 1 and server.counters.live_handlers == 1)
            raw.send(Message(Type.NON, Code.GET, 0x0101, b"TT", uri="coap://127.0.0.1/hold?now"), server)
            await hold.runs[0].done.wait()
            assert hold.runs[0].outcome == "cancelled"
            answer = await raw.recv()
            assert (answer.token, answer.code, answer.payload) == (b"TT", Code.CONTENT, b"now")
            await until(lambda: server_idle(server))
            assert [run.outcome for run in hold.runs] == ["cancelled", "returned"]
            with pytest.raises(BlockingIOError):  # the cancelled producer answered nothing
                raw.recv_nowait()


async def test_the_server_contexts_exit_cancels_render_to_pipe_and_runs_its_finally() -> None:
    feed = Feed()
    async with Context(bind=[LOCAL]) as client:
        with trio.fail_after(5):
            async with serve("feed", feed) as server:
                obs = await client.observe(uri(server, "feed")).__aenter__()
                assert obs.registered and server.counters.live_handlers == 1
                await trio.testing.wait_all_tasks_blocked()
                assert feed.runs[0].outcome is None
            assert feed.runs[0].done.is_set() and feed.runs[0].outcome == "cancelled"
            assert server.counters.live_handlers == 0
            await obs.__aexit__(None, None, None)  # its deregistration draws ICMP: no matter
            await until(lambda: client_idle(client))


async def test_the_server_contexts_exit_leaves_no_observer_counted() -> None:
    feed = Feed()
    async with Context(bind=[LOCAL]) as client:
        with trio.fail_after(5):
            async with serve("feed", feed) as server:
                obs = await client.observe(uri(server, "feed")).__aenter__()
                assert obs.registered and server.counters.observers == 1
            assert feed.runs[0].outcome == "cancelled"
            await obs.__aexit__(None, None, None)
            assert server.counters.observers == 0


async def test_an_unacknowledged_con_notification_cancels_render_to_pipe_and_runs_its_finally(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A raw socket registers and then ignores everything. ``render_to_pipe`` cannot ask for a CON, so
    the notification sent 24 h after the registration is the CON one (RFC 7641 §4.5); after its last
    retransmission the observer is gone."""
    feed = Feed()
    async with serve("feed", feed) as server:
        with RawPeer() as raw:
            register = Message(Type.NON, Code.GET, 0x0100, b"ob", uri="coap://127.0.0.1/feed")
            register.opt.observe = 0
            raw.send(register, server)
            first = await raw.recv()
            assert first.opt.observe is not None and server.counters.observers == 1
            await trio.sleep(24 * 3600)
            feed.push(b"1")
            con = await raw.recv()
            assert (con.type, con.payload) == (Type.CON, b"1")
            with trio.fail_after(SETTLE):
                await feed.runs[0].done.wait()
            assert feed.runs[0].outcome == "cancelled"
            assert server.transports[0].layer.stats.timeouts >= 1
            await until(lambda: server_idle(server))
            assert server.counters.open_exchanges == 0


# --- 2. render_to_pipe semantics ---------------------------------------------------------------------------


async def notifications_in_order() -> None:
    feed = Feed()
    async with serve("feed", feed) as server, Context(bind=[LOCAL]) as client:
        with anyio.fail_after(5):
            async with client.observe(uri(server, "feed"), buffer=8) as obs:
                for i in range(1, 5):
                    feed.push(b"%d" % i)
                seen = [await obs.__anext__() for _ in range(5)]
        assert [m.payload for m in seen] == [b"0", b"1", b"2", b"3", b"4"]
        values = [m.opt.observe for m in seen]
        assert all(v is not None for v in values)
        assert values == sorted(values) and len(set(values)) == 5, values


@pytest.mark.parametrize("backend", BACKENDS)
def test_render_to_pipe_responses_to_a_registration_arrive_in_order_with_increasing_observe(
    backend: str,
) -> None:
    anyio.run(notifications_in_order, backend=backend)


async def test_is_last_sends_a_final_response_without_observe_and_ends_the_iteration() -> None:
    feed = Feed()
    async with serve("feed", feed) as server, Context(bind=[LOCAL]) as client:
        with trio.fail_after(5):
            async with client.observe(uri(server, "feed")) as obs:
                feed.push(b"1")
                feed.push(b"end", last=True)
                seen = [m async for m in obs]
                assert obs.final is not None and obs.final.payload == b"end"
                assert obs.final.opt.observe is None
            assert [m.payload for m in seen][-1] == b"end"
            assert feed.runs[0].outcome == "returned"  # it ended the observation: not loss of interest
            await until(lambda: server_idle(server) and client_idle(client))


async def test_a_final_first_response_to_a_registration_makes_no_observer() -> None:
    feed = Feed()
    async with serve("feed", feed) as server, Context(bind=[LOCAL]) as client:
        with trio.fail_after(5):
            async with client.observe(uri(server, "feed") + "?last") as obs:
                assert not obs.registered and obs.initial is not None and obs.initial.opt.observe is None
                assert [m.payload async for m in obs] == [b"0"]
            await feed.runs[0].done.wait()
            assert feed.runs[0].outcome == "returned"
            await until(lambda: server_idle(server) and client_idle(client))


async def test_a_non_observe_request_gets_one_response_and_the_producer_is_cancelled() -> None:
    not_last = NotLast()
    async with serve("more", not_last) as server, Context(bind=[LOCAL]) as client:
        with trio.fail_after(5):
            response = await client.get(uri(server, "more"))
            assert (response.code, response.payload, response.opt.observe) == (Code.CONTENT, b"first", None)
            await not_last.runs[0].done.wait()
            assert not_last.runs[0].outcome == "cancelled"
            await until(lambda: server_idle(server) and client_idle(client))


async def test_a_producer_raising_a_renderable_error_answers_with_its_code() -> None:
    async with serve("refuses", Refuses()) as server, Context(bind=[LOCAL]) as client:
        with trio.fail_after(5):
            response = await client.get(uri(server, "refuses"))
            assert (response.code, response.payload) == (Code.BAD_REQUEST, b"no, thanks")
            assert issubclass(BadRequest, RenderableError)
            await until(lambda: server_idle(server) and client_idle(client))


async def test_a_producer_returning_without_a_response_answers_5_00() -> None:
    async with serve("silent", Silent()) as server, Context(bind=[LOCAL]) as client:
        with trio.fail_after(5):
            response = await client.get(uri(server, "silent"))
            assert response.code is Code.INTERNAL_SERVER_ERROR
            await until(lambda: server_idle(server) and client_idle(client))


async def test_a_plain_def_render_get_still_runs_inline_without_a_task() -> None:
    inline = Inline()
    async with serve("inline", inline) as server, Context(bind=[LOCAL]) as client:
        inline.server = server
        with trio.fail_after(5):
            for _ in range(3):
                assert (await client.get(uri(server, "inline"))).payload == b"inline"
        # no handler task, and the renderer ran on the transport's socket task itself
        assert inline.seen == [(0, "coapio transport")] * 3

