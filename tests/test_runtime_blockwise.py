"""Block-wise transfer (RFC 7959, Request-Tag of RFC 9175) through the runtime, client and server."""

from __future__ import annotations

import hashlib
import os
import socket

import attrs
import pytest
import trio
import trio.lowlevel
import trio.testing

from coapio import BlockValue, Code, Context, Message, Resource, Site, TransportTuning, Type
from coapio.error import ResponseRejected

LOCAL = ("127.0.0.1", 0)


class Store(Resource):
    """Keeps what is PUT; GET returns it; POST echoes it. Counts what its renderers saw."""

    def __init__(self, body: bytes = b"") -> None:
        super().__init__()
        self.body = body
        self.gets = 0
        self.seen: list[int] = []

    def render_get(self, request: Message) -> Message:
        self.gets += 1
        return Message(payload=self.body)

    def render_put(self, request: Message) -> Message:
        self.seen.append(len(request.payload))
        self.body = request.payload
        return Message(code=Code.CHANGED)

    async def render_post(self, request: Message) -> Message:
        self.seen.append(len(request.payload))
        await trio.lowlevel.checkpoint()
        return Message(code=Code.CHANGED, payload=request.payload[::-1])


def served(store: Store, tuning: TransportTuning | None = None) -> Context:
    site = Site()
    site.add("store", store)
    return Context(bind=[LOCAL], site=site, tuning=tuning)


def uri(ctx: Context) -> str:
    host, port = ctx.local_addresses[0]
    return f"coap://{host}:{port}/store"


@pytest.mark.parametrize("size", [0, 1024, 1025, 10_000, 300_000])
async def test_get_of_any_size_arrives_whole(size: int) -> None:
    body = os.urandom(size)
    store = Store(body)
    async with served(store) as server, Context(bind=[LOCAL]) as client:
        response = await client.get(uri(server))
    assert response.code is Code.CONTENT and response.payload == body
    assert response.opt.block2 is None
    assert store.gets == max(1, -(-size // 1024))  # the server renders statelessly, once per block


@pytest.mark.parametrize("size", [1025, 50_000])
async def test_put_of_a_large_body_reaches_the_renderer_once_and_whole(size: int) -> None:
    body = os.urandom(size)
    store = Store()
    async with served(store) as server, Context(bind=[LOCAL]) as client:
        response = await client.put(uri(server), body)
    assert response.code is Code.CHANGED
    assert store.seen == [size] and store.body == body


async def test_large_post_with_large_response_goes_block1_then_block2() -> None:
    body = os.urandom(5000)
    store = Store()
    async with served(store) as server, Context(bind=[LOCAL]) as client:
        response = await client.post(uri(server), body)
    assert response.code is Code.CHANGED and response.payload == body[::-1]
    assert store.seen == [5000]  # rendered once: later Block2 requests are served from the cache


async def test_small_blocks_are_used_when_configured() -> None:
    body = os.urandom(3000)
    store = Store(body)
    small = attrs.evolve(TransportTuning(), block_szx=2)  # 64-byte blocks
    async with served(store, small) as server, Context(bind=[LOCAL], tuning=small) as client:
        assert (await client.get(uri(server))).payload == body
        await client.put(uri(server), body[::-1])
    assert store.gets == -(-3000 // 64) and store.body == body[::-1]


async def test_concurrent_transfers_to_one_resource_stay_apart() -> None:
    bodies = [bytes([i]) * 20_000 for i in range(4)]
    store = Store()
    seen: list[bytes] = []
    original = store.render_put

    def record(request: Message) -> Message:
        seen.append(request.payload)
        return original(request)

    store._handlers[Code.PUT] = attrs.evolve(store._handlers[Code.PUT], function=record)
    tuning = attrs.evolve(TransportTuning(), nstart=4)
    async with (
        served(store) as server,
        Context(bind=[LOCAL], tuning=tuning) as client,
        trio.open_nursery() as nursery,
    ):
        for body in bodies:
            nursery.start_soon(client.put, uri(server), body)
    assert sorted(seen) == sorted(bodies)  # Request-Tag kept the four reassemblies apart


async def test_body_over_the_server_limit_gets_4_13_with_size1() -> None:
    store = Store()
    limited = attrs.evolve(TransportTuning(), max_body_size=4096)
    async with served(store, limited) as server, Context(bind=[LOCAL]) as client:
        response = await client.put(uri(server), os.urandom(10_000))
    assert response.code is Code.REQUEST_ENTITY_TOO_LARGE
    assert response.opt.size1 == 4096 and store.seen == []
    assert server._server.reassembler.stats.buffered_bytes == 0


async def test_response_over_the_client_limit_is_rejected() -> None:
    store = Store(os.urandom(20_000))
    limited = attrs.evolve(TransportTuning(), max_body_size=8192)
    async with served(store) as server, Context(bind=[LOCAL], tuning=limited) as client:
        with pytest.raises(ResponseRejected, match=r"limit of 8192"):
            await client.get(uri(server))
        assert client.counters.live_tokens == 0


async def test_block1_out_of_order_gets_4_08_and_nothing_is_rendered() -> None:
    store = Store()
    async with served(store) as server:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock, trio.fail_after(5):
            await sock.connect(server.transports[0].sock.getsockname())
            request = Message(Type.CON, Code.PUT, 7, b"t", payload=b"x" * 64, uri="coap://h/store")
            request.opt.block1 = BlockValue(3, True, 2)  # block 3 without 0..2
            await sock.send(request.encode())
            reply = Message.decode(await sock.recv(2048))
    assert reply.code is Code.REQUEST_ENTITY_INCOMPLETE and store.seen == []


async def test_random_access_to_one_block() -> None:
    body = bytes(range(256)) * 20
    store = Store(body)
    async with served(store) as server, Context(bind=[LOCAL]) as client:
        request = Message(code=Code.GET, uri=uri(server))
        request.opt.block2 = BlockValue(5, False, 4)  # bytes 1280..1535 only
        response = await client.request(request)
        assert response.payload == body[1280:1536]
        assert response.opt.block2 == BlockValue(5, True, 4)
        early = Message(code=Code.GET, uri=uri(server))
        early.opt.block2 = BlockValue(0, False, 3)  # block 0: just the preferred size, 128 bytes
        assert (await client.request(early)).payload == body
    assert store.gets == 1 + -(-len(body) // 128)


async def test_one_mebibyte_round_trip_is_byte_identical() -> None:
    body = os.urandom(1 << 20)
    store = Store()
    async with served(store) as server, Context(bind=[LOCAL]) as client:
        with trio.fail_after(60):
            await client.put(uri(server), body)
            back = await client.get(uri(server))
    assert hashlib.sha256(back.payload).digest() == hashlib.sha256(body).digest()
    assert server._server.reassembler.stats.buffered_bytes == 0


async def test_cancelled_block_transfer_frees_the_client_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = Store(os.urandom(100_000))
    async with served(store) as server, Context(bind=[LOCAL]) as client:
        with trio.move_on_after(0):  # cancelled before or during the first block
            await client.get(uri(server))
        counters = client.counters
        assert (counters.open_exchanges, counters.live_tokens) == (0, 0)


def test_request_tag_is_a_fresh_value_per_block1_transfer() -> None:
    """Two transfers of the same body get different Request-Tags (RFC 9175 §3.4)."""
    tags: list[bytes] = []

    async def main() -> None:
        store = Store()
        original = store.render_put

        def record(request: Message) -> Message:
            tags.append(b"".join(request.opt.request_tags))
            return original(request)

        store._handlers[Code.PUT] = attrs.evolve(store._handlers[Code.PUT], function=record)
        async with served(store) as server, Context(bind=[LOCAL]) as client:
            for _ in range(2):
                await client.put(uri(server), b"z" * 3000)

    trio.run(main)
    assert len(tags) == 2 and tags[0] != tags[1] and all(tags)




async def test_a_client_preferring_small_blocks_asks_for_them_early() -> None:
    body = os.urandom(1000)
    store = Store(body)
    small = attrs.evolve(TransportTuning(), block_szx=3)  # 128 bytes
    async with served(store) as server, Context(bind=[LOCAL], tuning=small) as client:
        assert (await client.get(uri(server))).payload == body
    assert store.gets == 8  # the server answered in the client's size from block 0 on
