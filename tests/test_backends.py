"""The public API on both anyio backends: trio natively, asyncio through anyio.

Each scenario is a plain coroutine written against anyio only, run once per backend with ``anyio.run``
(sync tests, so that pytest-trio's trio mode does not claim them).
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import anyio
import pytest

from coapio import Code, Context, Message, Resource, Site
from coapio.error import NetworkError, NotFound

BACKENDS = ["trio", "asyncio"]
LOCAL = ("127.0.0.1", 0)


class Hello(Resource):
    link_attributes = {"rt": "greeting"}

    def render_get(self, request: Message) -> Message:
        return Message(payload=b"hello")


class Later(Resource):
    async def render_get(self, request: Message) -> Message:
        await anyio.sleep(0.3)  # longer than the empty-ACK delay: a separate response
        return Message(payload=b"later")

    def render_delete(self, request: Message) -> Message:
        raise NotFound("gone already")


class Forever(Resource):
    def __init__(self) -> None:
        super().__init__()
        self.cancelled = anyio.Event()

    async def render_get(self, request: Message) -> Message:
        try:
            await anyio.sleep_forever()
        finally:
            self.cancelled.set()
        raise AssertionError("unreachable")


def site() -> tuple[Site, Forever]:
    s = Site()
    s.add("hello", Hello())
    s.add("later", Later())
    forever = Forever()
    s.add("forever", forever)
    return s, forever


def run(scenario: Callable[[], Awaitable[None]], backend: str) -> None:
    anyio.run(scenario, backend=backend)


def base(ctx: Context) -> str:
    host, port = ctx.transports[0].local[:2]
    return f"coap://{host}:{port}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_client_and_server_answer(backend: str) -> None:
    async def scenario() -> None:
        server_site, _ = site()
        async with Context(bind=[LOCAL], site=server_site) as server, Context(bind=[LOCAL]) as client:
            with anyio.fail_after(5):
                assert (await client.get(base(server) + "/hello")).payload == b"hello"
                assert (await client.get(base(server) + "/later")).payload == b"later"
                gone = await client.delete(base(server) + "/later")
                assert (gone.code, gone.payload) == (Code.NOT_FOUND, b"gone already")
                wkc = await client.get(base(server) + "/.well-known/core")
                assert b'</hello>;rt="greeting"' in wkc.payload

    run(scenario, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cancelled_request_frees_everything_on_both_ends(backend: str) -> None:
    async def scenario() -> None:
        server_site, forever = site()
        async with Context(bind=[LOCAL], site=server_site) as server, Context(bind=[LOCAL]) as client:
            with anyio.move_on_after(0.5) as scope:
                await client.get(base(server) + "/forever")
            assert scope.cancelled_caught
            counters = client.counters
            assert (counters.open_exchanges, counters.live_tokens) == (0, 0)
            assert server.counters.live_handlers == 1
        # leaving the server's context cancelled the handler and ran its finally
        assert forever.cancelled.is_set()

    run(scenario, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fail_after_is_the_timeout_api(backend: str) -> None:
    async def scenario() -> None:
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 0))
        try:
            async with Context(bind=[LOCAL]) as client:
                with pytest.raises(TimeoutError):
                    with anyio.fail_after(0.3):
                        await client.get(f"coap://127.0.0.1:{silent.getsockname()[1]}/")
                assert client.counters.live_tokens == 0
        finally:
            silent.close()

    run(scenario, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_icmp_error_fails_fast(backend: str) -> None:
    async def scenario() -> None:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        async with Context(bind=[LOCAL]) as client:
            with anyio.fail_after(2), pytest.raises(NetworkError):
                await client.get(f"coap://127.0.0.1:{port}/")

    run(scenario, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_concurrent_requests(backend: str) -> None:
    async def scenario() -> None:
        server_site, _ = site()
        async with Context(bind=[LOCAL], site=server_site) as server, Context(bind=[LOCAL]) as client:
            results: list[bytes] = []

            async def one() -> None:
                results.append((await client.get(base(server) + "/hello")).payload)

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    for _ in range(100):
                        tg.start_soon(one)
            assert results == [b"hello"] * 100
            assert client.counters.live_tokens == 0

    run(scenario, backend)
