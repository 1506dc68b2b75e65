"""BERT, the Block-wise Extension for Reliable Transport (RFC 8323 §6): SZX 7, NUM in 1 KiB units.

Sans-IO first: the four block-wise state machines with ``bert`` round-trip any body at any message size
byte-identical, every message within the size, the figures of RFC 8323 §6 reproduced, and without
``bert`` SZX 7 is refused as before. Then coapio to coapio over ``coap+tcp`` and ``coaps+ws``: 64 KiB
PUT and GET, Block1+Block2, Observe, all in BERT blocks (the block options the server saw and sent are
checked), and over UDP SZX 7 is still a 4.00.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Iterator

import attrs
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from coapio import BlockValue, Code, Context, Message, ObservableResource, Resource, Site, TransportTuning
from coapio.error import BadRequest, ResponseRejected
from coapio.protocol.blockwise import (
    Block1Reassembler,
    Block1Sender,
    Block2Assembler,
    Complete,
    Continue,
    bert_payload_size,
    segment_response,
)
from coapio.protocol.codes import Type
from coapio.protocol.framing import encode_tcp
from coapio.transports.tls import client_context, server_context

PEER = ("192.0.2.1", 5683)
TOKEN = b"12345678"  # the longest token: what the runtime may pick after segmentation
EDGE_SIZES = [0, 1, 1023, 1024, 1025, 2047, 2048, 3 * 1024, 8 * 1024, 8 * 1024 + 1, 64 * 1024]


def request(code: Code = Code.GET, path: str = "status", payload: bytes = b"", **opts: object) -> Message:
    msg = Message(Type.CON, code, payload=payload, remote=PEER)
    msg.opt.uri_path = (path,)
    for name, value in opts.items():
        setattr(msg.opt, name, value)
    return msg


def content(body: bytes, code: Code = Code.CONTENT) -> Message:
    return Message(Type.CON, code, payload=body)


def body_of(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


def reassembler(max_szx: int = 6) -> Block1Reassembler:
    return Block1Reassembler(max_body=1 << 24, max_total=1 << 25, max_transfers=4, lifetime=247.0,
                             max_szx=max_szx)


def framed_size(message: Message) -> int:
    sized = message.copy(token=TOKEN)
    return len(encode_tcp(sized))


# --- sans-IO: Block1 (client sender, server reassembler) -----------------------------------------------


def put_through(body: bytes, max_message_size: int, path: str = "upload") -> tuple[bytes, list[Message]]:
    """A PUT of ``body`` from a BERT Block1Sender through a BERT Block1Reassembler; (body, requests)."""
    sender = Block1Sender(request(Code.PUT, path, body), szx=6, request_tag=b"tag1", bert=max_message_size)
    server = reassembler()
    sent: list[Message] = []
    step: Message | None = sender.first_request()
    offset = 0
    whole = None
    while step is not None:
        sent.append(step)
        assert framed_size(step) <= max_message_size
        block = step.opt.block1
        assert block is not None and block.szx == 7
        assert block.num * 1024 == offset  # NUM counts 1 KiB units (§6)
        if block.more:
            assert step.payload and len(step.payload) % 1024 == 0  # a non-final BERT block: k·1024
        offset += len(step.payload)
        result = server.feed(step, 0.0, bert=True)
        if isinstance(result, Continue):
            ack = result.response
            assert ack.code == Code.CONTINUE and ack.opt.block1 == BlockValue(block.num, True, 7)
        else:
            assert isinstance(result, Complete) and not block.more
            whole = result.request.payload
            ack = result.acknowledge(Message(code=Code.CHANGED))
            assert ack.opt.block1 == BlockValue(block.num, False, 7)  # "2.04 Changed, 1:24/0/BERT"
        step = sender.feed(ack)
    assert sender.final_response is not None and sender.final_response.code == Code.CHANGED
    assert whole is not None
    return whole, sent


@given(size=st.integers(0, 80_000), max_message_size=st.integers(1153, 40_000),
       path=st.text("abcdefghij", min_size=1, max_size=250))
def test_block1_bert_round_trips_any_body_at_any_message_size(size: int, max_message_size: int,
                                                              path: str) -> None:
    body = random.Random(size).randbytes(size)  # deterministic, for hypothesis to replay
    whole, sent = put_through(body, max_message_size, path)
    assert whole == body
    # Every block but the last is as large as the message allows (give or take the reserve for a larger
    # header and options added later): one more KiB would not fit.
    for step in sent[:-1]:
        larger = step.copy(payload=step.payload + bytes(1024))
        assert len(step.payload) == 1024 or framed_size(larger) > max_message_size - 16


@pytest.mark.parametrize("size", EDGE_SIZES)
def test_block1_bert_edge_sizes(size: int) -> None:
    body = body_of(size)
    whole, sent = put_through(body, 8320)
    assert whole == body
    expected = [8192] * (size // 8192) + ([size % 8192] if size % 8192 or not size else [])
    assert [len(s.payload) for s in sent] == expected


def test_rfc8323_figure_16_put_with_bert_blocks() -> None:
    """PUT 1:0/1/BERT(8192), 1:8/1/BERT(16384), 1:24/0/BERT(5683): each acknowledged with its own NUM."""
    body = body_of(8192 + 16384 + 5683)
    server = reassembler()
    blocks = [(0, True, body[:8192]), (8, True, body[8192:24576]), (24, False, body[24576:])]
    for num, more, chunk in blocks:
        result = server.feed(request(Code.PUT, "options", chunk, block1=BlockValue(num, more, 7)), 0.0,
                             bert=True)
        if more:
            assert isinstance(result, Continue)
            assert result.response.code == Code.CONTINUE
            assert result.response.opt.block1 == BlockValue(num, True, 7)
        else:
            assert isinstance(result, Complete)
            assert result.request.payload == body
            assert result.acknowledge(Message(code=Code.CHANGED)).opt.block1 == BlockValue(24, False, 7)


def test_a_non_final_bert_block_must_be_a_multiple_of_1024_bytes() -> None:
    server = reassembler()
    for size in (0, 1000, 1025, 2047):
        with pytest.raises(BadRequest, match="multiple of 1024"):
            server.feed(request(Code.PUT, "x", bytes(size), block1=BlockValue(0, True, 7)), 0.0, bert=True)
    # The final block may be any size, also more than 1 KiB.
    done = server.feed(request(Code.PUT, "x", bytes(3000), block1=BlockValue(0, False, 7)), 0.0, bert=True)
    assert isinstance(done, Complete) and len(done.request.payload) == 3000


def test_without_bert_szx_7_is_refused_as_before() -> None:
    server = reassembler()
    with pytest.raises(BadRequest, match="SZX 7"):
        server.feed(request(Code.PUT, "x", bytes(1024), block1=BlockValue(0, True, 7)), 0.0)
    assert server.stats.rejected == 1
    with pytest.raises(BadRequest, match="SZX 7"):
        segment_response(request(block2=BlockValue(0, False, 7)), content(bytes(3000)))
    assembler = Block2Assembler(request(), max_body=1 << 20)
    reply = content(bytes(1024))
    reply.opt.block2 = BlockValue(0, True, 7)
    with pytest.raises(ResponseRejected, match="SZX 7"):
        assembler.feed(reply)
    sender = Block1Sender(request(Code.PUT, "x", bytes(4096)), szx=6, request_tag=None)
    first = sender.first_request()
    assert first.opt.block1 == BlockValue(0, True, 6)
    ack = Message(code=Code.CONTINUE)
    ack.opt.block1 = BlockValue(0, True, 7)
    with pytest.raises(ResponseRejected, match="SZX 7"):
        sender.feed(ack)


def test_a_server_that_declines_bert_gets_the_rest_in_its_size() -> None:
    """RFC 8323 §6: a BERT option in a request may be answered with another SZX; the client continues
    after the bytes acknowledged, at the server's size (as RFC 7959 §2.5's late negotiation)."""
    body = body_of(20_000)
    sender = Block1Sender(request(Code.PUT, "x", body), szx=6, request_tag=None, bert=8320)
    first = sender.first_request()
    assert first.opt.block1 == BlockValue(0, True, 7) and len(first.payload) == 8192
    server = reassembler(max_szx=6)
    assert isinstance(server.feed(first, 0.0, bert=True), Continue)
    ack = Message(code=Code.CONTINUE)
    ack.opt.block1 = BlockValue(0, True, 6)  # declined: 1 KiB from now on
    second = sender.feed(ack)
    assert second is not None and second.opt.block1 == BlockValue(8, True, 6) and len(second.payload) == 1024


def test_a_reassembler_that_prefers_small_blocks_answers_bert_with_its_size() -> None:
    server = reassembler(max_szx=4)
    result = server.feed(request(Code.PUT, "x", bytes(2048), block1=BlockValue(0, True, 7)), 0.0, bert=True)
    assert isinstance(result, Continue) and result.response.opt.block1 == BlockValue(0, True, 4)
    # The client goes on at byte 2048 in 256-byte blocks: block 8.
    more = server.feed(request(Code.PUT, "x", bytes(256), block1=BlockValue(8, True, 4)), 0.0, bert=True)
    assert isinstance(more, Continue)


# --- sans-IO: Block2 (server segmentation, client assembler) -------------------------------------------


def get_through(body: bytes, max_message_size: int, path: str = "status") -> tuple[bytes, list[Message]]:
    """A GET of ``body`` segmented with BERT and joined by a BERT Block2Assembler; (body, responses)."""
    req = request(Code.GET, path)
    assembler = Block2Assembler(req, max_body=1 << 24, bert=True)
    response = segment_response(req, content(body), bert=max_message_size)
    responses = []
    offset = 0
    while True:
        responses.append(response)
        assert framed_size(response) <= max_message_size
        block = response.opt.block2
        if block is not None:
            assert block.szx == 7 and block.num * 1024 == offset
            if block.more:
                assert response.payload and len(response.payload) % 1024 == 0
            offset += len(response.payload)
        whole = assembler.feed(response)
        if whole is not None:
            return whole.payload, responses
        nxt = assembler.next_request()
        assert nxt.opt.block2 == BlockValue(offset // 1024, False, 7)  # the next NUM, offering BERT
        response = segment_response(nxt, content(body), bert=max_message_size)


@given(size=st.integers(0, 80_000), max_message_size=st.integers(1153, 40_000),
       path=st.text("abcdefghij", min_size=1, max_size=250))
def test_block2_bert_round_trips_any_body_at_any_message_size(size: int, max_message_size: int,
                                                              path: str) -> None:
    body = random.Random(size).randbytes(size)  # deterministic, for hypothesis to replay
    whole, responses = get_through(body, max_message_size, path)
    assert whole == body
    if len(responses) == 1:
        assert responses[0].opt.block2 is None  # it fit in one message: no block-wise at all


@pytest.mark.parametrize("size", EDGE_SIZES)
def test_block2_bert_edge_sizes(size: int) -> None:
    body = body_of(size)
    whole, responses = get_through(body, 8320)
    assert whole == body
    if size <= 8192:
        assert len(responses) == 1 and responses[0].opt.block2 is None
    else:
        expected = [8192] * (size // 8192) + ([size % 8192] if size % 8192 else [])
        assert [len(r.payload) for r in responses] == expected


def test_rfc8323_figure_15_get_with_bert_blocks() -> None:
    """2:0/1/BERT(3072), then GET 2:3/0/BERT answered 2:3/1/BERT(5120), then 2:8/0/BERT(4711): the NUM
    of each request is the KiB received so far. (The figure's sizes vary; here each block is as large
    as the message size the server is given allows.)"""
    body = body_of(3072 + 5120 + 4711)
    req = request()
    first = segment_response(req, content(body), bert=3072 + 100)
    assert first.opt.block2 == BlockValue(0, True, 7) and first.payload == body[:3072]
    assert first.opt.size2 == len(body)
    second = segment_response(request(block2=BlockValue(3, False, 7)), content(body), bert=5120 + 100)
    assert second.opt.block2 == BlockValue(3, True, 7) and second.payload == body[3072:8192]
    third = segment_response(request(block2=BlockValue(8, False, 7)), content(body), bert=8320)
    assert third.opt.block2 == BlockValue(8, False, 7) and third.payload == body[8192:]
    assert len({r.opt.etag for r in (first, second, third)}) == 1
    with pytest.raises(BadRequest, match="past the end"):
        segment_response(request(block2=BlockValue(13, False, 7)), content(body), bert=8320)


def test_a_block2_request_below_szx_7_gets_the_size_it_asked_for() -> None:
    body = body_of(10_000)
    out = segment_response(request(block2=BlockValue(2, False, 6)), content(body), bert=8320)
    assert out.opt.block2 == BlockValue(2, True, 6) and out.payload == body[2048:3072]


def test_the_assembler_accepts_bert_where_it_asked_for_1_kib() -> None:
    """SZX 7 in descriptive usage is SZX 6 that may carry more (§6): a server may answer that way."""
    body = body_of(12_000)
    assembler = Block2Assembler(request(), max_body=1 << 20, bert=True)
    assert assembler.feed(segment_response(request(), content(body))) is None  # 1 KiB block 0
    assert assembler.next_request().opt.block2 == BlockValue(1, False, 6)
    bert_reply = segment_response(request(block2=BlockValue(1, False, 7)), content(body), bert=8320)
    assert bert_reply.opt.block2 == BlockValue(1, True, 7) and len(bert_reply.payload) == 8192
    assert assembler.feed(bert_reply) is None
    nxt = assembler.next_request()
    assert nxt.opt.block2 == BlockValue(9, False, 7)
    whole = assembler.feed(segment_response(nxt, content(body), bert=8320))
    assert whole is not None and whole.payload == body


def test_the_assembler_rejects_a_non_final_bert_block_of_a_wrong_size() -> None:
    for size in (0, 1000, 3000):
        assembler = Block2Assembler(request(), max_body=1 << 20, bert=True)
        reply = content(bytes(size))
        reply.opt.block2 = BlockValue(0, True, 7)
        with pytest.raises(ResponseRejected, match="multiple of 1024"):
            assembler.feed(reply)


def test_a_notification_block_leaves_room_for_observe() -> None:
    """The Observe option is added after segmentation (the observer table numbers what is sent)."""
    for max_message_size in (1153, 2200, 8320, 9000):
        block = segment_response(request(observe=0), content(body_of(50_000)), bert=max_message_size)
        block.opt.observe = (1 << 24) - 1  # the longest Observe value
        assert framed_size(block) <= max_message_size


def test_bert_payload_size_counts_the_options_and_is_at_least_one_unit() -> None:
    small = request(path="a")
    assert bert_payload_size(small, 8320) == 8192
    crowded = request(path="p" * 200)
    assert bert_payload_size(crowded, 8320) == 7168  # 200 bytes of Uri-Path cost a unit
    assert bert_payload_size(crowded, 1153) == 1024  # never less than one unit


# --- end to end, coapio to coapio ----------------------------------------------------------------------


BODY = os.urandom(64 * 1024)


class Store(Resource):
    def __init__(self) -> None:
        super().__init__()
        self.data = BODY
        self.puts: list[int] = []

    def render_get(self, request: Message) -> Message:
        return Message(payload=self.data)

    def render_put(self, request: Message) -> Message:
        self.puts.append(len(request.payload))
        self.data = request.payload
        return Message(code=Code.CHANGED)

    def render_post(self, request: Message) -> Message:
        return Message(code=Code.CHANGED, payload=request.payload[::-1])


class Big(ObservableResource):
    """An observable 20 KiB representation: every notification needs several BERT blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.version = 0

    def render_get(self, request: Message) -> Message:
        return Message(payload=bytes([self.version]) * 20_000)

    def bump(self) -> None:
        self.version += 1
        self.notify()


@attrs.define
class Seen:
    """What the server received (before reassembly) and sent."""

    requests: list[Message] = attrs.Factory(list)
    responses: list[Message] = attrs.Factory(list)

    def block1(self) -> list[tuple[BlockValue, int]]:
        return [(r.opt.block1, len(r.payload)) for r in self.requests if r.opt.block1 is not None]

    def block2(self) -> list[tuple[BlockValue, int]]:
        return [(r.opt.block2, len(r.payload)) for r in self.responses if r.opt.block2 is not None]


def record(server: Context, scheme: str) -> Seen:
    [transport] = [t for t in server.transports if scheme in t.schemes]
    seen = Seen()
    events = server._events
    received, respond, send = events.request_received, transport.respond, transport.send

    def receiving(endpoint: object, request: Message, now: float) -> None:
        seen.requests.append(request.copy())
        received(endpoint, request, now)

    def responding(request: Message, response: Message | None, now: float, **kwargs: bool) -> None:
        if response is not None:
            seen.responses.append(response)
        respond(request, response, now, **kwargs)

    def sending(message: Message, tuning: TransportTuning | None = None) -> None:
        seen.responses.append(message)  # notifications
        send(message, tuning)

    events.request_received = receiving  # type: ignore[method-assign, assignment]
    transport.respond = responding  # type: ignore[method-assign]
    transport.send = sending  # type: ignore[method-assign]
    return seen


def assert_bert_blocks(blocks: list[tuple[BlockValue, int]], total: int) -> None:
    """SZX 7 throughout, NUM = KiB before the block, 8 KiB per non-final block (8320-byte messages)."""
    assert blocks and all(block.szx == 7 for block, _ in blocks), blocks
    offset = 0
    for i, (block, size) in enumerate(blocks):
        assert block.num * 1024 == offset and block.more == (i < len(blocks) - 1), blocks
        if block.more:
            assert size == 8192, blocks
        offset += size
    assert offset == total, blocks


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    directory = tmp_path_factory.mktemp("certs")
    ca_file, chain = str(directory / "ca.pem"), str(directory / "server.pem")
    ca.cert_pem.write_to_path(ca_file)
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(chain)
    yield ca_file, chain


@pytest.fixture(params=["coap+tcp", "coaps+ws"])
async def bert_pair(request: pytest.FixtureRequest, tls: tuple[str, str]
                    ) -> AsyncIterator[tuple[str, Context, Context, Store, Big, Seen]]:
    scheme = request.param
    server_ssl = client_ssl = None
    if scheme == "coaps+ws":
        pytest.importorskip("wsproto")
        ca_file, chain = tls
        server_ssl, client_ssl = server_context(cert=chain, websocket=True), client_context(ca=ca_file,
                                                                                             websocket=True)
    site, store, big = Site(), Store(), Big()
    site.add("store", store)
    site.add("big", big)
    async with Context(bind=[f"{scheme}://127.0.0.1:0"], site=site, server_ssl=server_ssl) as server, \
            Context(client_ssl=client_ssl) as client:
        [base] = [uri for uri in server.local_uris if uri.startswith(scheme + "://")]
        yield base, server, client, store, big, record(server, scheme)


async def test_64_kib_put_and_get_go_in_bert_blocks(
    bert_pair: tuple[str, Context, Context, Store, Big, Seen]
) -> None:
    base, _server, client, store, _big, seen = bert_pair
    data = os.urandom(64 * 1024)
    with trio.fail_after(10):
        put = await client.put(base + "/store", data)
        got = await client.get(base + "/store")
    assert put.code == Code.CHANGED and store.puts == [len(data)]
    assert got.payload == data
    assert_bert_blocks(seen.block1(), len(data))
    assert_bert_blocks(seen.block2(), len(data))
    assert len(seen.requests) == 8 + 8  # 8 messages up, 8 requests for the 8 blocks down (not 64 + 64)
    [transport] = [t for t in client.transports if base.split(":")[0] in t.schemes]
    [conn] = transport._conns  # type: ignore[attr-defined]
    assert conn.proto.bert and conn.proto.peer_block_wise


async def test_a_body_that_fits_one_message_goes_without_block_options(
    bert_pair: tuple[str, Context, Context, Store, Big, Seen]
) -> None:
    base, _server, client, store, _big, seen = bert_pair
    data = os.urandom(5000)  # more than a 1 KiB block, less than a message
    with trio.fail_after(10):
        assert (await client.put(base + "/store", data)).code == Code.CHANGED
        assert (await client.get(base + "/store")).payload == data
    assert seen.block1() == [] and seen.block2() == []
    assert len(seen.requests) == 2 and store.puts == [5000]


async def test_block1_and_block2_post_go_in_bert_blocks(
    bert_pair: tuple[str, Context, Context, Store, Big, Seen]
) -> None:
    base, server, client, _store, _big, seen = bert_pair
    data = os.urandom(30_000)
    with trio.fail_after(10):
        echoed = await client.post(base + "/store", data)
    assert echoed.payload == data[::-1]
    assert_bert_blocks(seen.block1(), len(data))
    assert_bert_blocks(seen.block2(), len(data))
    assert server._server.reassembler.stats.cached_responses == 0  # forgotten after its last block


async def test_large_notifications_come_in_bert_blocks(
    bert_pair: tuple[str, Context, Context, Store, Big, Seen]
) -> None:
    base, _server, client, _store, big, seen = bert_pair
    with trio.fail_after(10):
        async with client.observe(base + "/big") as observation:
            versions = []
            async for notification in observation:
                assert len(notification.payload) == 20_000 and len(set(notification.payload)) == 1
                versions.append(notification.payload[0])
                if len(versions) == 3:
                    break
                big.bump()
    assert versions == [0, 1, 2]
    block2 = seen.block2()
    assert block2 and all(block.szx == 7 for block, _ in block2), block2
    assert {size for block, size in block2 if block.more} == {8192}, block2
    assert sum(1 for r in seen.responses if r.opt.observe is not None and r.opt.block2 is not None) >= 3


async def test_a_smaller_block_szx_turns_bert_off() -> None:
    """``block_szx`` below 6 asks for small blocks: no Block-Wise-Transfer in the CSM, so no BERT."""
    site, store = Site(), Store()
    site.add("store", store)
    tuning = TransportTuning(block_szx=4)
    async with Context(bind=["coap+tcp://127.0.0.1:0"], site=site, tuning=tuning) as server, \
            Context(tuning=tuning) as client:
        [base] = [uri for uri in server.local_uris if uri.startswith("coap+tcp://")]
        seen = record(server, "coap+tcp")
        with trio.fail_after(10):
            await client.put(base + "/store", bytes(2000))
        assert {block.szx for block, _ in seen.block1()} == {4}
        [transport] = [t for t in client.transports if "coap+tcp" in t.schemes]
        [conn] = transport._conns  # type: ignore[attr-defined]
        assert not conn.proto.block_wise and not conn.proto.peer_block_wise and not conn.proto.bert


async def test_udp_still_answers_szx_7_with_4_00() -> None:
    site, store = Site(), Store()
    site.add("store", store)
    async with Context(bind=[("127.0.0.1", 0)], site=site) as server, Context() as client:
        host, port = server.local_addresses[0]
        uri = f"coap://{host}:{port}/store"
        with trio.fail_after(10):
            get = Context.build(Code.GET, uri)
            get.opt.block2 = BlockValue(1, False, 7)
            response = await client.request(get)
            assert response.code == Code.BAD_REQUEST
            assert response.payload == b"Block2: SZX 7 (BERT) is not supported on this transport"
            put = Context.build(Code.PUT, uri, payload=bytes(1024))
            put.opt.block1 = BlockValue(0, True, 7)
            response = await client.request(put)
            assert response.code == Code.BAD_REQUEST
            assert response.payload == b"Block1: SZX 7 (BERT) is not supported on this transport"
    assert store.puts == []
