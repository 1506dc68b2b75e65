"""Block-wise transfer (RFC 7959) and Observe (RFC 7641) between coapio and its peers, on loopback.

* libcoap (``coap-server-notls``, ``coap-client-notls`` 4.3.1): a 1 MiB body through Block1 and Block2 in
  both directions, checked byte for byte (SHA-256), and an observation of libcoap's ``/time`` clock.
* aiocoap: block-wise GET, PUT and POST in both directions (3 kB and 200 kB bodies), and observation in
  both directions, including loss of interest on either side.

The libcoap tests run on trio (pytest-trio); the aiocoap tests run on asyncio through
``anyio.run(..., backend="asyncio")`` from sync test functions, as tests/test_interop_aiocoap_runtime.py
explains. Both reuse that module's and tests/test_interop_libcoap_server.py's helpers.

libcoap's ``/example_data`` keeps whatever a PUT stores, of any size (checked up to 1 MiB here; libcoap
reassembles Block1 itself, ``-L 1``, its default).
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import attrs
import pytest
import trio
from conftest import require_binary, require_interop

from coapio import Code, Context, Message, ObservableResource, Resource, Site, TransportTuning, Type

require_interop("aiocoap")
import aiocoap  # noqa: E402 - only once the peer is known to be importable
import aiocoap.resource as aresource  # noqa: E402
from test_interop_aiocoap_runtime import (  # noqa: E402
    aiocoap_client,
    coapio_server,
    run_on_asyncio,
)
from test_interop_libcoap_server import _libcoap_server  # noqa: E402

pytestmark = pytest.mark.interop

MIB = 1 << 20
CLIENT = "coap-client-notls"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _assert_idle(ctx: Context) -> None:
    c = ctx.counters
    assert (c.open_exchanges, c.live_tokens, c.live_handlers) == (0, 0, 0), c


async def _settles_idle(ctx: Context) -> None:
    """Idle once the peer has answered what is still outstanding (e.g. a fire-and-forget deregistration)."""
    await _eventually(lambda: ctx.counters.open_exchanges == 0)
    _assert_idle(ctx)


async def _eventually(condition: Callable[[], bool]) -> None:
    """Poll ``condition()`` until it is true, for at most 3 s (the state polled has no event to wait on)."""
    with anyio.fail_after(3):
        for _ in range(300):
            if condition():
                return
            await anyio.sleep(0.01)
        assert condition()


# =====================================================================================================
# libcoap
# =====================================================================================================


@pytest.fixture(scope="module")
def libcoap() -> Iterator[str]:
    with _libcoap_server("127.0.0.1") as port:
        yield f"coap://127.0.0.1:{port}"


@pytest.mark.parametrize(
    ("size", "szx"), [(MIB, 6), (64 * 1024, 2)], ids=["1MiB-in-1024B-blocks", "64KiB-in-64B-blocks"]
)
async def test_coapio_put_then_get_through_libcoap_example_data_is_byte_identical(
    libcoap: str, size: int, szx: int
) -> None:
    body = os.urandom(size)
    tuning = attrs.evolve(TransportTuning(), block_szx=szx)
    async with Context(tuning=tuning) as ctx:
        with trio.fail_after(60):
            put = await ctx.put(libcoap + "/example_data", body)
            assert put.code in (Code.CHANGED, Code.CREATED), put
            sent_for_put = ctx.transports[0].layer.stats.sent
            got = await ctx.get(libcoap + "/example_data")
        assert got.code == Code.CONTENT
        assert len(got.payload) == size
        assert sha256(got.payload) == sha256(body)
        blocks = size >> (szx + 4)
        assert sent_for_put >= blocks  # it really went in Block1 blocks of the chosen size
        assert got.opt.block2 is None and got.opt.size2 is None  # transfer artefacts are removed
        _assert_idle(ctx)


class Store(Resource):
    """Keeps the body of the last PUT and serves it back; counts how often each renderer ran."""

    def __init__(self) -> None:
        super().__init__()
        self.body = b""
        self.puts: list[int] = []

    def render_put(self, request: Message) -> Message:
        self.puts.append(len(request.payload))
        self.body = request.payload
        return Message(code=Code.CHANGED)

    def render_get(self, request: Message) -> Message:
        return Message(payload=self.body)


async def _coap_client(*args: str) -> None:
    exe = require_binary(CLIENT)
    result = await trio.run_process(
        [exe, "-B", "60", *args], capture_stdout=True, capture_stderr=True, check=False
    )
    assert result.returncode == 0, (args, result.returncode, result.stderr[-2000:])


@pytest.mark.parametrize(
    ("size", "block_args"), [(MIB, ()), (64 * 1024, ("-b", "64"))],
    ids=["1MiB-default-blocks", "64KiB-in-64B-blocks"],
)
async def test_libcoap_client_put_then_get_through_coapio_store_is_byte_identical(
    tmp_path: Path, size: int, block_args: tuple[str, ...]
) -> None:
    body = os.urandom(size)
    upload = tmp_path / "upload.bin"
    download = tmp_path / "download.bin"
    upload.write_bytes(body)
    store = Store()
    site = Site()
    site.add("store", store)
    async with Context(bind=[("127.0.0.1", 0)], site=site) as ctx:
        uri = f"coap://127.0.0.1:{ctx.local_addresses[0][1]}/store"
        with trio.fail_after(60):
            await _coap_client("-m", "put", "-f", str(upload), *block_args, uri)
            assert store.puts == [size]  # reassembled by coapio, rendered once with the whole body
            await _coap_client("-m", "get", "-o", str(download), *block_args, uri)
        _assert_idle(ctx)
    assert sha256(upload.read_bytes()) == sha256(store.body) == sha256(download.read_bytes()) == sha256(body)


async def test_coapio_observes_libcoap_time_then_leaving_stops_the_notifications(libcoap: str) -> None:
    async with Context() as ctx:
        stats = ctx.transports[0].layer.stats
        seen: list[tuple[bytes, int | None]] = []
        with trio.fail_after(8):  # libcoap notifies once a second
            async with ctx.observe(libcoap + "/time") as obs:
                assert obs.registered
                async for notification in obs:
                    assert notification.code == Code.CONTENT
                    seen.append((notification.payload, notification.opt.observe))
                    if len(seen) == 3:  # the initial response and at least two notifications
                        break
        observe_values = [v for _, v in seen]
        assert all(v is not None for v in observe_values)
        assert observe_values == sorted(observe_values), observe_values  # no wrap within seconds
        assert len({payload for payload, _ in seen}) >= 2  # the clock moved on
        # Leaving sent GET Observe=1 (an open exchange until libcoap answers it); that answer, and at
        # most one notification already in flight, may still arrive.
        await trio.sleep(1.2)
        settled = stats.received
        await trio.sleep(2.2)  # libcoap would have notified at least twice by now
        assert stats.received == settled, "libcoap went on notifying after the deregistration"
        assert stats.timeouts == 0 and stats.malformed == 0
        _assert_idle(ctx)


# =====================================================================================================
# aiocoap: block-wise
# =====================================================================================================

SIZES = pytest.mark.parametrize("size", [3000, 200_000], ids=["3kB", "200kB"])


def _body(size: int) -> bytes:
    return os.urandom(size)


class Blob(Resource):
    """GET answers ``body``; PUT stores; POST echoes (Block1 in, Block2 out)."""

    def __init__(self, body: bytes = b"") -> None:
        super().__init__()
        self.body = body
        self.rendered: list[tuple[str, int]] = []

    def render_get(self, request: Message) -> Message:
        return Message(payload=self.body)

    def render_put(self, request: Message) -> Message:
        self.rendered.append(("PUT", len(request.payload)))
        self.body = request.payload
        return Message(code=Code.CHANGED)

    def render_post(self, request: Message) -> Message:
        self.rendered.append(("POST", len(request.payload)))
        return Message(code=Code.CHANGED, payload=request.payload)


@SIZES
def test_aiocoap_client_gets_block2_representation_from_coapio(size: int) -> None:
    async def body() -> None:
        data = _body(size)
        site = Site()
        site.add("blob", Blob(data))
        async with coapio_server(site) as (ctx, base), aiocoap_client() as client:
            response = await client.request(aiocoap.Message(code=aiocoap.GET, uri=base + "/blob")).response
            assert response.code == aiocoap.CONTENT
            assert sha256(response.payload) == sha256(data)
            _assert_idle(ctx)

    run_on_asyncio(body)


@SIZES
def test_aiocoap_client_puts_and_posts_block1_bodies_to_coapio(size: int) -> None:
    async def body() -> None:
        data = _body(size)
        blob = Blob()
        site = Site()
        site.add("blob", blob)
        async with coapio_server(site) as (ctx, base), aiocoap_client() as client:
            put = await client.request(
                aiocoap.Message(code=aiocoap.PUT, uri=base + "/blob", payload=data)
            ).response
            assert put.code == aiocoap.CHANGED
            assert sha256(blob.body) == sha256(data)
            post = await client.request(
                aiocoap.Message(code=aiocoap.POST, uri=base + "/blob", payload=data)
            ).response
            assert post.code == aiocoap.CHANGED
            assert sha256(post.payload) == sha256(data)  # echoed back through Block2
            assert blob.rendered == [("PUT", size), ("POST", size)]  # each rendered once, whole
            _assert_idle(ctx)

    run_on_asyncio(body)


class ABlob(aresource.Resource):
    def __init__(self, body: bytes = b"") -> None:
        super().__init__()
        self.body = body

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(payload=self.body)

    async def render_put(self, request: aiocoap.Message) -> aiocoap.Message:
        self.body = request.payload
        return aiocoap.Message(code=aiocoap.CHANGED)

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(code=aiocoap.CHANGED, payload=request.payload)


@asynccontextmanager
async def aiocoap_site_server(site: aresource.Site) -> AsyncIterator[str]:
    """An aiocoap server for ``site`` on 127.0.0.1 at a free port."""
    server = None
    for _attempt in range(5):
        port = _free_port()
        try:
            server = await aiocoap.Context.create_server_context(
                site, bind=("127.0.0.1", port), transports=["udp6"]
            )
        except OSError:
            continue
        break
    if server is None:
        pytest.fail("no free UDP port for the aiocoap server after 5 attempts")
    try:
        yield f"coap://127.0.0.1:{port}"
    finally:
        await server.shutdown()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@SIZES
def test_coapio_client_gets_block2_representation_from_aiocoap(size: int) -> None:
    async def body() -> None:
        data = _body(size)
        site = aresource.Site()
        site.add_resource(["blob"], ABlob(data))
        async with aiocoap_site_server(site) as base, Context() as ctx:
            response = await ctx.get(base + "/blob")
            assert response.code == Code.CONTENT
            assert sha256(response.payload) == sha256(data)
            _assert_idle(ctx)

    run_on_asyncio(body)


@SIZES
def test_coapio_client_puts_and_posts_block1_bodies_to_aiocoap(size: int) -> None:
    async def body() -> None:
        data = _body(size)
        blob = ABlob()
        site = aresource.Site()
        site.add_resource(["blob"], blob)
        async with aiocoap_site_server(site) as base, Context() as ctx:
            put = await ctx.put(base + "/blob", data)
            assert put.code == Code.CHANGED
            assert sha256(blob.body) == sha256(data)
            post = await ctx.post(base + "/blob", data)
            assert post.code == Code.CHANGED
            assert sha256(post.payload) == sha256(data)  # Block1 up, then Block2 down
            _assert_idle(ctx)

    run_on_asyncio(body)


# =====================================================================================================
# aiocoap: observe
# =====================================================================================================

OBSERVED_SIZES = pytest.mark.parametrize("large", [False, True], ids=["small", "3kB-block2-notifications"])
_PADDING = bytes(range(256)) * 12  # makes a representation span three 1024-byte blocks


class Counter(ObservableResource):
    def __init__(self, *, large: bool) -> None:
        super().__init__()
        self.value = 0
        self.large = large

    def render_get(self, request: Message) -> Message:
        return Message(payload=_representation(self.value, self.large))


def _representation(value: int, large: bool) -> bytes:
    return b"%d:" % value + (_PADDING if large else b"")


def _value(payload: bytes) -> int:
    return int(payload.split(b":", 1)[0])


@OBSERVED_SIZES
def test_aiocoap_observes_coapio_in_order_and_cancelling_drops_the_observer(large: bool) -> None:
    async def body() -> None:
        counter = Counter(large=large)
        site = Site()
        site.add("counter", counter)
        async with coapio_server(site) as (ctx, base), aiocoap_client() as client:
            request = client.request(aiocoap.Message(code=aiocoap.GET, uri=base + "/counter", observe=0))
            first = await request.response
            assert first.code == aiocoap.CONTENT
            assert first.opt.observe is not None
            assert first.payload == _representation(0, large)
            assert counter.observer_count == 1
            values: list[int] = []

            async def consume() -> None:
                async for notification in request.observation:
                    assert notification.payload == _representation(_value(notification.payload), large)
                    values.append(_value(notification.payload))
                    if values[-1] == 5:
                        return

            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                for _ in range(5):
                    await anyio.sleep(0.03)  # let each one arrive: observe is lossy by design
                    counter.value += 1
                    counter.notify()
            assert values == [1, 2, 3, 4, 5]
            # aiocoap's cancellation is passive: its client forgets the token on the next notification and
            # answers a CON one after that with RST (an unknown NON it ignores). The RST drops the observer.
            request.observation.cancel()
            counter.value += 1
            counter.notify()
            await anyio.sleep(0.1)
            assert counter.observer_count == 1
            counter.value += 1
            counter.notify(confirmable=True)
            await _eventually(lambda: counter.observer_count == 0)
            _assert_idle(ctx)

    run_on_asyncio(body)


class ACounter(aresource.ObservableResource):
    def __init__(self, *, large: bool) -> None:
        super().__init__()
        self.value = 0
        self.large = large
        self.counts: list[int] = []

    def update_observation_count(self, newcount: int) -> None:
        self.counts.append(newcount)

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(payload=_representation(self.value, self.large))


@OBSERVED_SIZES
@pytest.mark.parametrize("passive", [False, True], ids=["active", "passive"])
def test_coapio_observes_aiocoap_and_leaving_the_block_deregisters(large: bool, passive: bool) -> None:
    async def body() -> None:
        counter = ACounter(large=large)
        site = aresource.Site()
        site.add_resource(["counter"], counter)
        async with aiocoap_site_server(site) as base, Context() as ctx:
            values: list[int] = []
            async with ctx.observe(base + "/counter", passive=passive, buffer=8) as obs:
                assert obs.registered
                assert counter.counts == [1]
                assert obs.initial is not None and obs.initial.payload == _representation(0, large)

                async def produce() -> None:
                    for _ in range(5):
                        await anyio.sleep(0.03)
                        counter.value += 1
                        counter.updated_state()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(produce)
                    async for notification in obs:
                        assert notification.code == Code.CONTENT
                        assert notification.payload == _representation(_value(notification.payload), large)
                        values.append(_value(notification.payload))
                        if values[-1] == 5:
                            break
            assert values == [0, 1, 2, 3, 4, 5]
            if passive:
                # Nothing is sent on leaving; the next notification is answered with RST.
                await anyio.sleep(0.1)
                assert counter.counts == [1]
                counter.value += 1
                counter.updated_state()
            await _eventually(lambda: counter.counts[-1] == 0)
            assert counter.counts == [1, 0]
            await _settles_idle(ctx)

    run_on_asyncio(body)


def test_coapio_observation_of_aiocoap_sees_con_notifications_acknowledged() -> None:
    """aiocoap sends CON notifications to a CON registration; coapio acknowledges each (no retransmission)."""

    async def body() -> None:
        counter = ACounter(large=False)
        site = aresource.Site()
        site.add_resource(["counter"], counter)
        async with aiocoap_site_server(site) as base, Context() as ctx:
            async with ctx.observe(base + "/counter", buffer=8) as obs:
                counter.value = 1
                counter.updated_state()
                with anyio.fail_after(3):
                    async for notification in obs:
                        if _value(notification.payload) == 1:
                            assert notification.type is Type.CON
                            break
            await _settles_idle(ctx)
        assert counter.counts == [1, 0]

    run_on_asyncio(body)
