"""Block-wise transfers (coapio.blockwise): RFC 7959 segmentation and reassembly, RFC 9175 §3 Request-Tag."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coapio.error import (
    BadRequest,
    RenderableError,
    RequestEntityIncomplete,
    RequestEntityTooLarge,
    ResponseRejected,
    ServiceUnavailable,
)
from coapio.protocol.blockwise import (
    Block1Reassembler,
    Block1Sender,
    Block2Assembler,
    Complete,
    Continue,
    block_window,
    blockwise_key,
    derive_etag,
    segment_response,
)
from coapio.protocol.codes import Code, Type
from coapio.protocol.message import Message
from coapio.protocol.options import BlockValue, OptionNumber

PEER = ("192.0.2.1", 5683)


def request(code: Code = Code.GET, path: str = "status", payload: bytes = b"", **opts: object) -> Message:
    msg = Message(Type.CON, code, token=b"\x01", payload=payload, remote=PEER)
    msg.opt.uri_path = (path,)
    for name, value in opts.items():
        setattr(msg.opt, name, value)
    return msg


def content(body: bytes, code: Code = Code.CONTENT, **opts: object) -> Message:
    msg = Message(Type.ACK, code, payload=body)
    for name, value in opts.items():
        setattr(msg.opt, name, value)
    return msg


def b(num: int, more: bool, size: int) -> BlockValue:
    return BlockValue.for_size(num, more, size)


def body_of(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


def reassembler(**kw: object) -> Block1Reassembler:
    args: dict[str, object] = dict(max_body=4096, max_total=16384, max_transfers=4, lifetime=247.0)
    args.update(kw)
    return Block1Reassembler(**args)  # type: ignore[arg-type]


# --- helpers ----------------------------------------------------------------------------------------


def test_block_window_slices_and_sets_more():
    data = body_of(40)
    assert block_window(data, b(0, False, 16)) == (data[:16], True)
    assert block_window(data, b(2, False, 16)) == (data[32:], False)
    assert block_window(data, b(1, False, 32)) == (data[32:], False)
    assert block_window(data, b(3, False, 16)) == (b"", False)


def test_derived_etag_is_stable_per_body_and_content_format():
    assert derive_etag(content(b"abc")) == derive_etag(content(b"abc"))
    assert len(derive_etag(content(b"abc"))) == 8
    assert derive_etag(content(b"abc")) != derive_etag(content(b"abd"))
    assert derive_etag(content(b"abc", content_format=0)) != derive_etag(content(b"abc", content_format=50))


def test_blockwise_key_follows_rfc9175_section_3_3():
    base = request(Code.PUT)
    same = request(Code.PUT, size1=300, block1=b(3, True, 64))
    same.token = b"\x09"
    same.opt.echo = b"\x01\x02\x03\x04"
    same.opt.block2 = b(0, False, 64)
    assert blockwise_key(base) == blockwise_key(same)
    tagged = request(Code.PUT, request_tag=b"t")
    assert blockwise_key(tagged) != blockwise_key(base)
    assert blockwise_key(request(Code.POST)) != blockwise_key(base)
    assert blockwise_key(request(Code.PUT, path="other")) != blockwise_key(base)
    elsewhere = request(Code.PUT)
    elsewhere.remote = ("192.0.2.2", 5683)
    assert blockwise_key(elsewhere) != blockwise_key(base)


# --- segment_response (server, Block2) --------------------------------------------------------------


def test_small_body_without_block2_goes_out_unchanged():
    resp = content(body_of(1024))
    assert segment_response(request(), resp) is resp


def test_size_request_gets_size2_even_without_segmentation():
    out = segment_response(request(size2=0), content(body_of(10)))
    assert out.opt.size2 == 10 and out.opt.block2 is None


def test_large_body_becomes_block_0_with_size2_and_etag():
    body = body_of(3000)
    out = segment_response(request(), content(body))
    assert out.opt.block2 == BlockValue(0, True, 6)
    assert out.payload == body[:1024]
    assert out.opt.size2 == 3000
    assert out.opt.etag == derive_etag(content(body))


def test_existing_etag_is_kept():
    out = segment_response(request(), content(body_of(3000), etag=b"v1"))
    assert out.opt.etags == (b"v1",)


def test_early_negotiation_uses_the_clients_smaller_size():
    out = segment_response(request(block2=b(0, False, 32)), content(body_of(100)))
    assert out.opt.block2 == b(0, True, 32) and len(out.payload) == 32


def test_request_block2_always_gets_block2_even_for_one_block():
    out = segment_response(request(block2=b(0, False, 1024)), content(b"tiny"))
    assert out.opt.block2 == b(0, False, 1024) and out.payload == b"tiny"


def test_larger_client_size_is_reduced_keeping_the_byte_offset():
    body = body_of(1000)
    out = segment_response(request(block2=b(1, False, 256)), content(body), max_szx=2)
    assert out.opt.block2 == b(4, True, 64)
    assert out.payload == body[256:320]


def test_late_negotiation_by_the_client_is_a_slice_at_the_new_size():
    body = body_of(300)
    out = segment_response(request(block2=b(2, False, 64)), content(body))
    assert out.opt.block2 == b(2, True, 64) and out.payload == body[128:192]


def test_size2_on_later_blocks_only_when_asked():
    body = body_of(300)
    assert segment_response(request(block2=b(1, False, 64)), content(body)).opt.size2 is None
    assert segment_response(request(block2=b(1, False, 64), size2=0), content(body)).opt.size2 == 300


def test_block_past_the_end_is_bad_request():
    with pytest.raises(BadRequest):
        segment_response(request(block2=b(5, False, 64)), content(body_of(320)))


def test_block_0_of_an_empty_body_is_an_empty_last_block():
    out = segment_response(request(block2=b(0, False, 64)), content(b""))
    assert out.opt.block2 == b(0, False, 64) and out.payload == b""


def test_szx_7_in_a_block2_request_is_bad_request():
    with pytest.raises(BadRequest):
        segment_response(request(block2=BlockValue(0, False, 7)), content(body_of(3000)))


def test_error_responses_and_presegmented_responses_pass_through():
    err = content(b"x" * 2000, code=Code.NOT_FOUND)
    assert segment_response(request(block2=b(3, False, 64)), err) is err
    done = content(b"x" * 64, block2=b(1, True, 64))
    assert segment_response(request(block2=b(1, False, 64)), done) is done


# --- RFC 7959 §3 example flows, message by message ---------------------------------------------------


def test_rfc7959_example_simple_blockwise_get():
    """§3.1, simple block-wise GET: GET -> 2:0/1/128, 2:1/0/128 -> 2:1/1/128, 2:2/0/128 -> 2:2/0/128."""
    body = body_of(300)
    asm = Block2Assembler(request(), max_body=10_000)
    req = asm.first_request()
    assert req.opt.block2 is None
    resp = segment_response(req, content(body), max_szx=3)
    assert resp.opt.block2 == b(0, True, 128)
    assert asm.feed(resp) is None
    req = asm.next_request()
    assert req.opt.block2 == b(1, False, 128)
    resp = segment_response(req, content(body), max_szx=3)
    assert resp.opt.block2 == b(1, True, 128)
    assert asm.feed(resp) is None
    req = asm.next_request()
    assert req.opt.block2 == b(2, False, 128)
    resp = segment_response(req, content(body), max_szx=3)
    assert resp.opt.block2 == b(2, False, 128)
    final = asm.feed(resp)
    assert final is not None and final.payload == body
    assert final.opt.block2 is None and final.opt.size2 is None and final.code == Code.CONTENT


def test_rfc7959_example_early_negotiation():
    """§3.1, early negotiation: GET 2:0/0/64 -> 2:0/1/64, 2:1/0/64 -> 2:1/1/64, 2:2/0/64 -> 2:2/0/64."""
    body = body_of(150)
    asm = Block2Assembler(request(), max_body=10_000, preferred_szx=2)
    seen = []
    req = asm.first_request()
    while True:
        seen.append(req.opt.block2)
        resp = segment_response(req, content(body))
        seen.append(resp.opt.block2)
        final = asm.feed(resp)
        if final is not None:
            break
        req = asm.next_request()
    assert seen == [b(0, False, 64), b(0, True, 64), b(1, False, 64), b(1, True, 64),
                    b(2, False, 64), b(2, False, 64)]
    assert final.payload == body


def test_rfc7959_example_late_negotiation():
    """§3.1, late negotiation: GET -> 2:0/1/128; the client goes on with 2:2/0/64, 2:3/0/64, 2:4/0/64."""
    body = body_of(300)
    asm = Block2Assembler(request(), max_body=10_000, preferred_szx=2)
    plain = request()  # the runtime sent the request without Block2 and feeds its response
    resp = segment_response(plain, content(body), max_szx=3)
    assert resp.opt.block2 == b(0, True, 128)
    assert asm.feed(resp) is None
    flow = []
    while True:
        req = asm.next_request()
        resp = segment_response(req, content(body))
        flow.append((req.opt.block2, resp.opt.block2))
        final = asm.feed(resp)
        if final is not None:
            break
    assert flow == [(b(2, False, 64), b(2, True, 64)), (b(3, False, 64), b(3, True, 64)),
                    (b(4, False, 64), b(4, False, 64))]
    assert final.payload == body


def test_rfc7959_example_blockwise_put():
    """§3.2, atomic PUT: 1:0/1/128 -> 2.31 1:0/1/128, 1:1/1/128 -> 2.31, 1:2/0/128 -> 2.04 1:2/0/128."""
    body = body_of(300)
    sender = Block1Sender(request(Code.PUT, "options", body), szx=3, request_tag=None)
    server = reassembler()
    req = sender.first_request()
    assert req.opt.block1 == b(0, True, 128) and req.opt.size1 == 300
    out = server.feed(req, 0.0)
    assert isinstance(out, Continue)
    assert out.response.code == Code.CONTINUE and out.response.opt.block1 == b(0, True, 128)
    req = sender.feed(out.response)
    assert req is not None and req.opt.block1 == b(1, True, 128) and req.opt.size1 is None
    out = server.feed(req, 1.0)
    assert isinstance(out, Continue) and out.response.opt.block1 == b(1, True, 128)
    req = sender.feed(out.response)
    assert req is not None and req.opt.block1 == b(2, False, 128) and len(req.payload) == 44
    done = server.feed(req, 2.0)
    assert isinstance(done, Complete)
    assert done.request.payload == body and done.request.opt.block1 is None
    final = done.acknowledge(content(b"", code=Code.CHANGED))
    assert final.opt.block1 == b(2, False, 128)
    assert sender.feed(final) is None
    assert sender.final_response is final and not sender.needs_block2


def test_rfc7959_example_blockwise_put_with_late_negotiation():
    """§3.2, PUT with late negotiation: 1:0/1/128 -> 2.31 1:0/1/32, then 1:4, 1:5, 1:6/0/32 -> 2.04."""
    body = body_of(200)
    sender = Block1Sender(request(Code.PUT, "options", body), szx=3, request_tag=None)
    server = reassembler(max_szx=1)
    flow = []
    req: Message | None = sender.first_request()
    while req is not None:
        out = server.feed(req, 0.0)
        resp = out.response if isinstance(out, Continue) else out.acknowledge(content(b"", Code.CHANGED))
        flow.append((req.opt.block1, resp.code, resp.opt.block1))
        req = sender.feed(resp)
    assert flow == [
        (b(0, True, 128), Code.CONTINUE, b(0, True, 32)),
        (b(4, True, 32), Code.CONTINUE, b(4, True, 32)),
        (b(5, True, 32), Code.CONTINUE, b(5, True, 32)),
        (b(6, False, 32), Code.CHANGED, b(6, False, 32)),
    ]
    assert isinstance(out, Complete) and out.request.payload == body


def test_rfc7959_example_combined_block1_block2_post():
    """§3.3, Block1+Block2 POST: 1:0..1:2/0/128 -> 2.04 2:0/1/128 1:2/0/128; then 2:1..2:3/0/128."""
    request_body, response_body = body_of(300), body_of(500)[::-1]
    sender = Block1Sender(request(Code.POST, "options", request_body), szx=3, request_tag=b"\x07")
    server = reassembler()
    req: Message | None = sender.first_request()
    while True:
        assert req is not None and req.opt.request_tag == b"\x07"
        out = server.feed(req, 0.0)
        if isinstance(out, Complete):
            break
        req = sender.feed(out.response)
    assert out.request.payload == request_body
    full = content(response_body, code=Code.CHANGED)
    resp = out.acknowledge(segment_response(out.request, full, max_szx=3))
    assert resp.opt.block1 == b(2, False, 128) and resp.opt.block2 == b(0, True, 128)
    assert server.remember_response(out.request, full, 0.0)
    assert sender.feed(resp) is None and sender.needs_block2
    asm = Block2Assembler(sender.continuation_request(), max_body=10_000)
    assert asm.feed(sender.final_response) is None  # type: ignore[arg-type]
    flow = []
    while True:
        req = asm.next_request()
        assert req.opt.block1 is None and req.payload == b"" and req.opt.request_tag == b"\x07"
        cached = server.cached_response(req, 1.0)
        assert cached is full
        resp = segment_response(req, cached, max_szx=3)
        flow.append((req.opt.block2, resp.opt.block2))
        final = asm.feed(resp)
        if final is not None:
            server.forget_response(req)
            break
    assert flow == [(b(1, False, 128), b(1, True, 128)), (b(2, False, 128), b(2, True, 128)),
                    (b(3, False, 128), b(3, False, 128))]
    assert final.payload == response_body and final.code == Code.CHANGED
    assert server.stats.buffered_bytes == 0 and server.stats.cached_responses == 0


# --- Block2Assembler (client) ------------------------------------------------------------------------


def _serve_all(asm: Block2Assembler, body_for, max_szx: int = 2) -> Message:
    req = asm.first_request()
    while True:
        final = asm.feed(segment_response(req, content(body_for())))
        if final is not None:
            return final
        req = asm.next_request()


def test_etag_change_restarts_once_from_block_0():
    served = []

    def render() -> bytes:  # the resource changes after the first block
        served.append(1)
        return body_of(200) if len(served) == 1 else body_of(200)[::-1]

    asm = Block2Assembler(request(), max_body=10_000, preferred_szx=2)
    final = _serve_all(asm, render)
    assert final.payload == body_of(200)[::-1] and asm.restarts == 1


def test_etag_changing_again_after_the_restart_is_rejected():
    counter = iter(range(100))
    asm = Block2Assembler(request(), max_body=10_000, preferred_szx=2)
    with pytest.raises(ResponseRejected, match="ETag"):
        _serve_all(asm, lambda: bytes([next(counter)]) * 200)


def test_error_response_mid_transfer_is_final():
    asm = Block2Assembler(request(), max_body=10_000, preferred_szx=2)
    assert asm.feed(segment_response(asm.first_request(), content(body_of(200)))) is None
    err = content(b"gone", code=Code.NOT_FOUND)
    assert asm.feed(err) is err
    with pytest.raises(RuntimeError):
        asm.next_request()


def test_response_without_block2_mid_transfer_is_final():
    asm = Block2Assembler(request(), max_body=10_000, preferred_szx=2)
    asm.feed(segment_response(asm.first_request(), content(body_of(200))))
    plain = content(b"whole")
    assert asm.feed(plain) is plain


def test_unblocked_first_response_is_returned_as_is():
    asm = Block2Assembler(request(), max_body=10_000)
    resp = content(b"small")
    assert asm.feed(resp) is resp


def test_wrong_block_number_is_rejected():
    body = body_of(200)
    asm = Block2Assembler(request(), max_body=10_000, preferred_szx=2)
    asm.feed(segment_response(asm.first_request(), content(body)))
    with pytest.raises(ResponseRejected, match="byte"):
        asm.feed(segment_response(request(block2=b(2, False, 64)), content(body)))


def test_short_non_final_block_is_rejected():
    asm = Block2Assembler(request(), max_body=10_000)
    with pytest.raises(ResponseRejected):
        asm.feed(content(b"x" * 10, block2=b(0, True, 64)))


def test_server_raising_the_block_size_is_rejected():
    body = body_of(500)
    asm = Block2Assembler(request(), max_body=10_000, preferred_szx=2)
    assert asm.feed(segment_response(asm.first_request(), content(body))) is None
    assert asm.feed(segment_response(asm.next_request(), content(body))) is None
    assert asm.next_request().opt.block2 == b(2, False, 64)
    with pytest.raises(ResponseRejected, match="raised"):
        asm.feed(content(body[128:256], block2=b(1, True, 128), etag=derive_etag(content(body))))


def test_body_over_max_body_is_rejected_without_buffering_it():
    body = body_of(1000)
    asm = Block2Assembler(request(), max_body=300, preferred_szx=2)
    with pytest.raises(ResponseRejected, match="300"):  # Size2 on block 0 says it all
        asm.feed(segment_response(asm.first_request(), content(body)))
    asm = Block2Assembler(request(), max_body=300, preferred_szx=2)
    resp = segment_response(asm.first_request(), content(body))
    resp.opt.size2 = None
    with pytest.raises(ResponseRejected, match="300"):
        for _ in range(10):
            assert asm.feed(resp) is None
            resp = segment_response(asm.next_request(), content(body))
            resp.opt.size2 = None


def test_bert_block2_is_rejected():
    asm = Block2Assembler(request(), max_body=10_000)
    with pytest.raises(ResponseRejected, match="BERT"):
        asm.feed(content(b"x" * 1024, block2=BlockValue(0, True, 7)))


def test_later_blocks_are_requested_without_observe():
    body = body_of(200)
    asm = Block2Assembler(request(observe=0), max_body=10_000)
    notification = segment_response(request(observe=0), content(body, observe=7), max_szx=2)
    assert asm.feed(notification) is None
    req = asm.next_request()
    assert req.opt.observe is None and req.opt.block2 == b(1, False, 64)
    final = None
    while final is None:
        final = asm.feed(segment_response(req, content(body, observe=7)))
        if final is None:
            req = asm.next_request()
    assert final.opt.observe == 7 and final.payload == body


def test_assembler_rejects_invalid_szx():
    with pytest.raises(ValueError):
        Block2Assembler(request(), max_body=1, preferred_szx=7)


# --- Block1Sender (client) ---------------------------------------------------------------------------


def test_sender_puts_size1_on_block_0_and_the_tag_on_every_block():
    sender = Block1Sender(request(Code.PUT, payload=body_of(100)), szx=1, request_tag=b"tag")
    first = sender.first_request()
    assert first.opt.size1 == 100 and first.opt.request_tags == (b"tag",) and first.mid is None
    nxt = sender.feed(content(b"", Code.CONTINUE, block1=b(0, True, 32)))
    assert nxt is not None and nxt.opt.size1 is None and nxt.opt.request_tags == (b"tag",)
    assert nxt.payload == body_of(100)[32:64]


def test_sender_follows_a_smaller_size_from_2_31_at_the_right_offset():
    body = body_of(2000)
    sender = Block1Sender(request(Code.PUT, payload=body), szx=6, request_tag=None)
    sender.first_request()
    nxt = sender.feed(content(b"", Code.CONTINUE, block1=b(0, True, 256)))
    assert nxt is not None and nxt.opt.block1 == b(4, True, 256)
    assert nxt.payload == body[1024:1280]


def test_sender_restarts_smaller_after_4_13_with_a_smaller_block1():
    body = body_of(300)
    sender = Block1Sender(request(Code.PUT, payload=body), szx=6, request_tag=None)
    sender.first_request()
    again = sender.feed(content(b"", Code.REQUEST_ENTITY_TOO_LARGE, block1=b(0, False, 64), size1=4096))
    assert again is not None and again.opt.block1 == b(0, True, 64) and again.opt.size1 == 300
    assert again.payload == body[:64] and sender.restarts == 1


def test_sender_ends_on_4_13_without_a_smaller_size():
    sender = Block1Sender(request(Code.PUT, payload=body_of(300)), szx=4, request_tag=None)
    sender.first_request()
    resp = content(b"", Code.REQUEST_ENTITY_TOO_LARGE, size1=100)
    assert sender.feed(resp) is None and sender.final_response is resp


@pytest.mark.parametrize("code", [Code.REQUEST_ENTITY_INCOMPLETE, Code.INTERNAL_SERVER_ERROR, Code.CHANGED])
def test_sender_ends_on_any_other_final_code(code):
    sender = Block1Sender(request(Code.PUT, payload=body_of(300)), szx=4, request_tag=None)
    sender.first_request()
    resp = content(b"", code)
    assert sender.feed(resp) is None and sender.final_response is resp
    with pytest.raises(RuntimeError):
        sender.feed(resp)


def test_sender_continues_on_success_with_block1_more_from_a_non_atomic_server():
    sender = Block1Sender(request(Code.PUT, payload=body_of(300)), szx=4, request_tag=None)
    sender.first_request()
    nxt = sender.feed(content(b"", Code.CHANGED, block1=b(0, True, 256)))
    assert nxt is not None and nxt.opt.block1 == b(1, False, 256)


def test_sender_rejects_continue_after_the_last_block():
    sender = Block1Sender(request(Code.PUT, payload=body_of(10)), szx=4, request_tag=None)
    assert sender.first_request().opt.block1 == b(0, False, 256)
    with pytest.raises(ResponseRejected):
        sender.feed(content(b"", Code.CONTINUE, block1=b(0, True, 256)))


def test_sender_rejects_an_acknowledgement_of_another_block():
    sender = Block1Sender(request(Code.PUT, payload=body_of(300)), szx=4, request_tag=None)
    sender.first_request()
    with pytest.raises(ResponseRejected):
        sender.feed(content(b"", Code.CONTINUE, block1=b(3, True, 256)))


def test_continuation_request_drops_block1_size1_and_body_but_keeps_the_tag():
    sender = Block1Sender(request(Code.POST, payload=body_of(30)), szx=4, request_tag=b"\x01")
    sender.first_request()
    final = content(b"x" * 16, Code.CHANGED, block2=b(0, True, 16), block1=b(0, False, 256))
    assert sender.feed(final) is None
    assert sender.needs_block2
    cont = sender.continuation_request()
    assert cont.payload == b"" and cont.opt.block1 is None and cont.opt.size1 is None
    assert cont.opt.request_tags == (b"\x01",) and cont.code == Code.POST


# --- Block1Reassembler (server) ----------------------------------------------------------------------


def put_block(num: int, more: bool, size: int, body: bytes, **opts: object) -> Message:
    blk = b(num, more, size)
    chunk, _ = block_window(body, blk)
    return request(Code.PUT, "upload", chunk, block1=blk, **opts)


def test_single_block_completes_without_keeping_state():
    server = reassembler()
    done = server.feed(put_block(0, False, 64, b"abc"), 0.0)
    assert isinstance(done, Complete) and done.request.payload == b"abc"
    assert server.stats.transfers == 0 and server.stats.completed == 1


def test_block_without_its_predecessors_is_incomplete():
    server = reassembler()
    body = body_of(200)
    with pytest.raises(RequestEntityIncomplete):
        server.feed(put_block(1, True, 64, body), 0.0)
    server.feed(put_block(0, True, 64, body), 0.0)
    with pytest.raises(RequestEntityIncomplete):
        server.feed(put_block(2, True, 64, body), 0.0)
    assert isinstance(server.feed(put_block(1, True, 64, body), 0.0), Continue)  # the transfer survived


def test_duplicate_block_is_acknowledged_again_without_storing_it_twice():
    server = reassembler()
    body = body_of(200)
    server.feed(put_block(0, True, 64, body), 0.0)
    server.feed(put_block(1, True, 64, body), 0.0)
    again = server.feed(put_block(1, True, 64, body), 0.0)
    assert isinstance(again, Continue) and again.response.opt.block1 == b(1, True, 64)
    assert server.stats.buffered_bytes == 128
    with pytest.raises(RequestEntityIncomplete):  # same position, different bytes
        server.feed(request(Code.PUT, "upload", b"z" * 64, block1=b(1, True, 64)), 0.0)


def test_size1_over_max_body_is_4_13_with_size1():
    server = reassembler(max_body=1000)
    with pytest.raises(RequestEntityTooLarge) as info:
        server.feed(put_block(0, True, 64, body_of(2000), size1=2000), 0.0)
    assert info.value.options == [(OptionNumber.SIZE1, 1000)]


def test_body_growing_over_max_body_is_4_13_and_dropped():
    server = reassembler(max_body=100)
    body = body_of(200)
    server.feed(put_block(0, True, 64, body), 0.0)
    with pytest.raises(RequestEntityTooLarge) as info:
        server.feed(put_block(1, True, 64, body), 0.0)
    assert (OptionNumber.SIZE1, 100) in info.value.options
    assert server.stats.transfers == 0 and server.stats.buffered_bytes == 0


def test_total_memory_limit_is_4_13_and_never_exceeded():
    server = reassembler(max_total=200, max_transfers=10)
    body = body_of(1000)
    server.feed(put_block(0, True, 64, body, request_tag=b"a"), 0.0)
    server.feed(put_block(1, True, 64, body, request_tag=b"a"), 0.0)
    server.feed(put_block(0, True, 64, body, request_tag=b"b"), 0.0)
    with pytest.raises(RequestEntityTooLarge):
        server.feed(put_block(1, True, 64, body, request_tag=b"b"), 0.0)
    assert server.stats.buffered_bytes == 128 <= 200


def test_too_many_transfers_is_5_03_with_max_age():
    server = reassembler(max_transfers=2, lifetime=100.0)
    body = body_of(200)
    server.feed(put_block(0, True, 64, body, request_tag=b"a"), 0.0)
    server.feed(put_block(0, True, 64, body, request_tag=b"b"), 10.0)
    with pytest.raises(ServiceUnavailable) as info:
        server.feed(put_block(0, True, 64, body, request_tag=b"c"), 40.0)
    assert info.value.options == [(OptionNumber.MAX_AGE, 60)]


def test_idle_transfers_expire_and_then_blocks_are_incomplete():
    server = reassembler(lifetime=10.0)
    body = body_of(200)
    server.feed(put_block(0, True, 64, body, request_tag=b"old"), 0.0)
    server.feed(put_block(0, True, 64, body, request_tag=b"busy"), 0.0)
    server.feed(put_block(1, True, 64, body, request_tag=b"busy"), 8.0)
    assert server.next_deadline() == 10.0
    assert isinstance(server.feed(put_block(2, True, 64, body, request_tag=b"busy"), 12.0), Continue)
    assert server.stats.expired == 1 and server.stats.transfers == 1
    with pytest.raises(RequestEntityIncomplete):
        server.feed(put_block(1, True, 64, body, request_tag=b"old"), 12.0)
    server.expire(100.0)
    assert server.stats.transfers == 0 and server.stats.buffered_bytes == 0
    assert server.next_deadline() is None


def test_block_0_replaces_a_transfer_with_the_same_key():
    server = reassembler()
    first, second = body_of(200), body_of(200)[::-1]
    server.feed(put_block(0, True, 64, first), 0.0)
    server.feed(put_block(1, True, 64, first), 0.0)
    server.feed(put_block(0, True, 64, second), 0.0)
    assert server.stats.buffered_bytes == 64
    server.feed(put_block(1, True, 64, second), 0.0)
    server.feed(put_block(2, True, 64, second), 0.0)
    done = server.feed(put_block(3, False, 64, second), 0.0)
    assert isinstance(done, Complete) and done.request.payload == second


def test_request_tags_keep_concurrent_transfers_apart():
    server = reassembler()
    one, two = body_of(150), bytes(reversed(body_of(150)))
    for num in range(2):
        server.feed(put_block(num, True, 64, one, request_tag=b"1"), 0.0)
        server.feed(put_block(num, True, 64, two, request_tag=b"2"), 0.0)
    done_two = server.feed(put_block(2, False, 64, two, request_tag=b"2"), 0.0)
    done_one = server.feed(put_block(2, False, 64, one, request_tag=b"1"), 0.0)
    assert isinstance(done_one, Complete) and done_one.request.payload == one
    assert isinstance(done_two, Complete) and done_two.request.payload == two


def test_wrong_sized_non_final_block_is_bad_request():
    server = reassembler()
    with pytest.raises(BadRequest):
        server.feed(request(Code.PUT, "upload", b"x" * 10, block1=b(0, True, 64)), 0.0)
    with pytest.raises(BadRequest):
        server.feed(request(Code.PUT, "upload", b"x" * 65, block1=b(0, False, 64)), 0.0)


def test_bert_block1_is_bad_request():
    with pytest.raises(BadRequest):
        reassembler().feed(request(Code.PUT, "upload", b"x" * 1024, block1=BlockValue(0, True, 7)), 0.0)


def test_continue_offers_the_servers_smaller_size():
    out = reassembler(max_szx=2).feed(put_block(0, True, 1024, body_of(3000)), 0.0)
    assert isinstance(out, Continue) and out.response.opt.block1 == b(0, True, 64)


def test_feed_requires_block1():
    with pytest.raises(ValueError):
        reassembler().feed(request(Code.PUT), 0.0)


def test_cached_responses_count_against_memory_and_expire():
    server = reassembler(max_total=1000, lifetime=10.0)
    post = request(Code.POST, "calc")
    assert server.remember_response(post, content(body_of(600)), 0.0)
    assert not server.remember_response(request(Code.POST, "other"), content(body_of(600)), 0.0)
    assert server.stats.buffered_bytes == 600 and server.stats.cached_responses == 1
    assert server.cached_response(request(Code.POST, "calc"), 1.0) is None  # no Block2: not a follow-up
    follow = request(Code.POST, "calc", block2=b(1, False, 64))
    assert server.cached_response(follow, 5.0) is not None
    assert server.cached_response(follow, 14.0) is not None  # refreshed at 5.0
    assert server.cached_response(follow, 30.0) is None
    assert server.stats.buffered_bytes == 0


# --- properties --------------------------------------------------------------------------------------

bodies = st.binary(max_size=10_240)
szxs = st.integers(0, 6)


@given(body=bodies, client_szx=st.none() | szxs, server_szxs=st.lists(szxs, min_size=1, max_size=12))
def test_segment_and_assemble_round_trip_the_exact_body(body, client_szx, server_szxs):
    # The server's size may shrink between requests (late negotiation); it never grows.
    limits = sorted(server_szxs, reverse=True)
    asm = Block2Assembler(request(), max_body=len(body), preferred_szx=client_szx)
    req = asm.first_request()
    for i in range(10_000):
        resp = segment_response(req, content(body), max_szx=limits[min(i, len(limits) - 1)])
        final = asm.feed(resp)
        if final is not None:
            break
        req = asm.next_request()
    assert final.payload == body


def _deliver(sender: Block1Sender, server: Block1Reassembler, now: float = 0.0) -> Complete | Message:
    req: Message | None = sender.first_request()
    while req is not None:
        try:
            out = server.feed(req, now)
        except RenderableError as exc:
            resp = Message(code=exc.code)
            for number, value in exc.options:
                resp.opt.add(number, value)
            assert sender.feed(resp) is None
            return resp
        if isinstance(out, Complete):
            final = out.acknowledge(content(b"", Code.CHANGED))
            assert sender.feed(final) is None
            return out
        req = sender.feed(out.response)
    raise AssertionError("the sender stopped without a final response")


@given(body=bodies, szx=szxs, server_szx=szxs, tag=st.none() | st.binary(max_size=8))
def test_block1_sender_and_reassembler_deliver_the_exact_body(body, szx, server_szx, tag):
    server = reassembler(max_body=10_240, max_total=10_240, max_szx=server_szx)
    sender = Block1Sender(request(Code.PUT, "upload", body), szx=szx, request_tag=tag)
    out = _deliver(sender, server)
    assert isinstance(out, Complete) and out.request.payload == body
    assert server.stats.buffered_bytes == 0


@given(size=st.integers(1001, 10_240), szx=szxs)
def test_oversized_body_gets_4_13_with_size1_on_the_first_block(size, szx):
    server = reassembler(max_body=1000, max_total=1000)
    sender = Block1Sender(request(Code.PUT, "upload", body_of(size)), szx=szx, request_tag=None)
    out = _deliver(sender, server)
    assert isinstance(out, Message) and out.code == Code.REQUEST_ENTITY_TOO_LARGE
    assert out.opt.size1 == 1000
    assert server.stats.buffered_bytes == 0 and server.stats.rejected == 1


@given(
    bodies_=st.lists(st.binary(max_size=2000), min_size=2, max_size=4),
    szx=st.integers(0, 3),
    schedule=st.lists(st.integers(0, 3), max_size=400),
)
def test_interleaved_transfers_with_different_request_tags_stay_apart(bodies_, szx, schedule):
    server = reassembler(max_body=2000, max_total=10_000, max_transfers=4)
    senders = [
        Block1Sender(request(Code.PUT, "upload", body), szx=szx, request_tag=bytes([i]))
        for i, body in enumerate(bodies_)
    ]
    pending: dict[int, Message] = {i: s.first_request() for i, s in enumerate(senders)}
    results: dict[int, bytes] = {}
    order = [i % len(senders) for i in schedule] + [i for i in range(len(senders)) for _ in range(200)]
    for i in order:
        req = pending.get(i)
        if req is None:
            continue
        out = server.feed(req, 0.0)
        if isinstance(out, Complete):
            results[i] = out.request.payload
            del pending[i]
        else:
            nxt = senders[i].feed(out.response)
            assert nxt is not None
            pending[i] = nxt
    assert results == dict(enumerate(bodies_))


LIBRARY_ERRORS = (BadRequest, RequestEntityIncomplete, RequestEntityTooLarge, ServiceUnavailable)


FUZZ_OPS = st.sampled_from(["next", "next", "next", "again", "back", "skip", "zero", "short", "long", "tag"])


@given(
    body=(st.sampled_from([16, 17, 100, 1024, 1025, 2048, 3000]) | st.integers(1, 3000)).map(body_of),
    steps=st.lists(st.tuples(FUZZ_OPS, st.integers(0, 6)), max_size=120),
)
def test_fuzzed_block_sequences_continue_complete_or_raise_library_errors(body, steps):
    """A client walking the body with random sizes, retries, gaps, restarts and damaged blocks."""
    server = reassembler(max_body=2048, max_total=2500, max_transfers=2)
    cursor = 0  # the byte the server acknowledged last
    for op, szx in steps:
        while szx and cursor % (16 << szx):
            szx -= 1  # the sizes that can continue from the cursor
        num = {"again": max(0, cursor // (16 << szx) - 1), "back": max(0, cursor // (16 << szx) - 2),
               "skip": cursor // (16 << szx) + 1, "zero": 0}.get(op, cursor // (16 << szx))
        blk = BlockValue(num, False, szx)
        chunk, more = block_window(body, blk)
        # A damaged final block is indistinguishable from a shorter body, so only non-final ones are damaged.
        if op == "short" and more:
            chunk = chunk[:-1]
        elif op == "long" and more:
            chunk += b"!"
        req = request(Code.PUT, "upload", chunk, block1=BlockValue(num, more, szx))
        if op == "tag":
            req.opt.request_tag = b"x"
        try:
            out = server.feed(req, 0.0)
        except LIBRARY_ERRORS:
            pass
        else:
            if isinstance(out, Complete):
                assert out.request.payload == body
                cursor = 0
            else:
                assert isinstance(out, Continue) and out.response.code == Code.CONTINUE
                if op != "tag":
                    cursor = max(cursor, blk.start + len(chunk))
        assert 0 <= server.stats.buffered_bytes <= 2500
        assert server.stats.transfers <= 2
