"""Unit tests of the RFC 7252 §4 message layer, with explicit time and no event loop."""

from __future__ import annotations

import itertools
import random

import attrs
import pytest

from coapio import Code, Message, Type
from coapio.error import MessageIdsExhausted
from coapio.protocol.messagelayer import (
    Acknowledged,
    BadResponse,
    MessageLayer,
    RequestReceived,
    Reset,
    ResponseReceived,
    SendQueueFull,
    TimedOut,
)
from coapio.protocol.options import BlockValue
from coapio.protocol.tuning import TransportTuning

CLIENT = ("127.0.0.1", 40000)
SERVER = ("127.0.0.1", 5683)


def layer(seed: int = 0, **tuning: object) -> MessageLayer:
    return MessageLayer(TransportTuning(**tuning), rng=random.Random(seed))  # type: ignore[arg-type]


def get(token: bytes = b"tk", remote: object = SERVER, mtype: Type = Type.CON) -> Message:
    msg = Message(mtype, Code.GET, token=token, remote=remote)
    msg.opt.uri_path = ("x",)
    return msg


def one(layer_: MessageLayer) -> bytes:
    out = layer_.datagrams_to_send()
    assert len(out) == 1, out
    return out[0][0]


def request_bytes(mid: int = 0x1234, mtype: Type = Type.CON, token: bytes = b"tk") -> bytes:
    return Message(mtype, Code.GET, mid, token).encode()


# --- message IDs ---


def test_message_ids_are_consecutive_per_peer_and_independent_between_peers() -> None:
    c = layer(nstart=10)
    other = ("127.0.0.1", 5684)
    msgs = [get(bytes([i])) for i in range(3)]
    for m in msgs:
        c.send(m, 0.0)
    m4 = get(b"o", remote=other)
    c.send(m4, 0.0)
    mids = [m.mid for m in msgs]
    assert mids == [mids[0], (mids[0] + 1) & 0xFFFF, (mids[0] + 2) & 0xFFFF]
    assert m4.mid is not None


def test_message_id_is_not_reused_within_exchange_lifetime() -> None:
    c = layer()
    lifetime = c.tuning.non_lifetime
    for _ in range(65536):
        c.send(Message(Type.NON, Code.CONTENT, token=b"", remote=CLIENT), 0.0)
    c.datagrams_to_send()
    with pytest.raises(MessageIdsExhausted) as info:
        c.send(Message(Type.NON, Code.CONTENT, remote=CLIENT), lifetime - 1)
    assert info.value.retry_at == pytest.approx(lifetime)
    c.send(Message(Type.NON, Code.CONTENT, remote=CLIENT), lifetime + 0.001)


def test_requests_wait_in_queue_when_message_ids_are_exhausted() -> None:
    c = layer(nstart=1)
    for _ in range(65536):
        c.send(Message(Type.NON, Code.CONTENT, remote=SERVER), 0.0)
    c.datagrams_to_send()
    req = get()
    c.send(req, 1.0)
    assert c.datagrams_to_send() == []
    assert c.next_deadline() == pytest.approx(c.tuning.non_lifetime)
    c.on_timer(c.tuning.non_lifetime)
    assert len(c.datagrams_to_send()) == 1 and req.mid is not None


# --- retransmission ---


@pytest.mark.parametrize("seed", range(5))
def test_con_is_retransmitted_with_randomised_exponential_backoff_then_given_up(seed: int) -> None:
    c = layer(seed)
    req = get()
    c.send(req, 0.0)
    sent_at = [0.0]
    c.datagrams_to_send()
    events = []
    while (deadline := c.next_deadline()) is not None:
        events += c.on_timer(deadline)
        if c.datagrams_to_send():
            sent_at.append(deadline)
    tuning = c.tuning
    assert len(sent_at) == 1 + tuning.max_retransmit
    first = sent_at[1] - sent_at[0]
    assert tuning.ack_timeout <= first <= tuning.ack_timeout * tuning.ack_random_factor
    gaps = [b - a for a, b in itertools.pairwise(sent_at)]
    for i, gap in enumerate(gaps):
        assert gap == pytest.approx(first * 2**i)
    assert events == [TimedOut(req)]
    assert c.stats.retransmissions == tuning.max_retransmit and c.stats.timeouts == 1
    assert c.open_exchanges == 0


def test_give_up_happens_within_max_transmit_wait() -> None:
    for seed in range(20):
        c = layer(seed)
        c.send(get(), 0.0)
        last = 0.0
        while (d := c.next_deadline()) is not None:
            if c.on_timer(d):
                last = d
        assert c.tuning.ack_timeout * 31 <= last <= c.tuning.max_transmit_wait


def test_tuning_can_be_overridden_per_exchange() -> None:
    c = layer()
    fast = TransportTuning(ack_timeout=0.1, ack_random_factor=1.0, max_retransmit=1)
    req = get()
    c.send(req, 0.0, tuning=fast)
    assert c.next_deadline() == pytest.approx(0.1)
    assert c.on_timer(0.1) == []
    assert c.on_timer(0.31) == [TimedOut(req)]


def test_ack_stops_retransmission() -> None:
    c = layer()
    req = get()
    c.send(req, 0.0)
    c.datagrams_to_send()
    events = c.receive(Message(Type.ACK, Code.EMPTY, req.mid).encode(), SERVER, 1.0)
    assert events == [Acknowledged(req)]
    assert c.next_deadline() is None
    assert c.on_timer(100.0) == [] and c.datagrams_to_send() == []


def test_piggybacked_response_ends_the_exchange_and_names_its_request() -> None:
    c = layer()
    req = get()
    c.send(req, 0.0)
    c.datagrams_to_send()
    resp = Message(Type.ACK, Code.CONTENT, req.mid, req.token, payload=b"v").encode()
    [event] = c.receive(resp, SERVER, 0.5)
    assert isinstance(event, ResponseReceived) and event.request is req
    assert event.message.payload == b"v"
    assert c.next_deadline() is None


def test_reset_ends_the_exchange_with_a_reset_event() -> None:
    c = layer()
    req = get()
    c.send(req, 0.0)
    assert c.receive(Message(Type.RST, Code.EMPTY, req.mid).encode(), SERVER, 0.1) == [Reset(req)]
    assert c.next_deadline() is None


def test_unexpected_ack_and_reset_are_ignored() -> None:
    c = layer()
    assert c.receive(Message(Type.ACK, Code.EMPTY, 7).encode(), SERVER, 0.0) == []
    assert c.receive(Message(Type.RST, Code.EMPTY, 7).encode(), SERVER, 0.0) == []
    assert c.datagrams_to_send() == []


def test_ack_from_another_peer_does_not_match() -> None:
    c = layer()
    req = get()
    c.send(req, 0.0)
    assert c.receive(Message(Type.ACK, Code.EMPTY, req.mid).encode(), ("127.0.0.2", 5683), 0.1) == []
    assert c.next_deadline() is not None


# --- server side: dedup, piggy-backing, separate responses -----------------------------------------------


def test_duplicate_con_gets_cached_response_without_a_second_delivery() -> None:
    s = layer()
    [event] = s.receive(request_bytes(), CLIENT, 0.0)
    assert isinstance(event, RequestReceived)
    s.respond(event.message, Message(code=Code.CONTENT, payload=b"once"), 0.0)
    first = one(s)
    assert Message.decode(first).type is Type.ACK
    assert s.receive(request_bytes(), CLIENT, 5.0) == []
    assert one(s) == first
    assert s.stats.duplicates == 1


def test_duplicate_con_while_handler_runs_gets_empty_ack_and_response_goes_separate() -> None:
    s = layer()
    [event] = s.receive(request_bytes(), CLIENT, 0.0)
    assert s.receive(request_bytes(), CLIENT, 0.1) == []
    ack = Message.decode(one(s))
    assert (ack.type, ack.code, ack.mid) == (Type.ACK, Code.EMPTY, 0x1234)
    s.respond(event.message, Message(code=Code.CONTENT), 1.0)
    sep = Message.decode(one(s))
    assert sep.type is Type.CON and sep.mid != 0x1234 and sep.token == b"tk"


def test_duplicate_non_is_dropped() -> None:
    s = layer()
    assert len(s.receive(request_bytes(mtype=Type.NON), CLIENT, 0.0)) == 1
    assert s.receive(request_bytes(mtype=Type.NON), CLIENT, 1.0) == []


def test_same_message_id_after_exchange_lifetime_is_a_new_request() -> None:
    s = layer()
    [event] = s.receive(request_bytes(), CLIENT, 0.0)
    s.respond(event.message, Message(code=Code.CONTENT), 0.0)
    later = s.tuning.exchange_lifetime + 1
    assert len(s.receive(request_bytes(), CLIENT, later)) == 1


def test_same_message_id_from_another_peer_is_not_a_duplicate() -> None:
    s = layer()
    assert len(s.receive(request_bytes(), CLIENT, 0.0)) == 1
    assert len(s.receive(request_bytes(), ("127.0.0.1", 40001), 0.0)) == 1


def test_slow_handler_gets_empty_ack_after_the_configured_delay() -> None:
    s = layer(empty_ack_delay=0.5)
    [event] = s.receive(request_bytes(), CLIENT, 0.0)
    assert s.next_deadline() == pytest.approx(0.5)
    s.on_timer(0.49)
    assert s.datagrams_to_send() == []
    s.on_timer(0.5)
    ack = Message.decode(one(s))
    assert ack.type is Type.ACK and ack.code is Code.EMPTY
    s.respond(event.message, Message(code=Code.CONTENT, payload=b"late"), 3.0)
    sep = Message.decode(one(s))
    assert sep.type is Type.CON and sep.payload == b"late"
    assert s.next_deadline() is not None  # the separate CON response is retransmitted until acknowledged


def test_separate_response_may_be_non_when_asked() -> None:
    s = layer()
    [event] = s.receive(request_bytes(), CLIENT, 0.0)
    s.acknowledge(event.message, 0.0)
    assert Message.decode(one(s)).code is Code.EMPTY
    s.respond(event.message, Message(code=Code.CONTENT), 0.1, separate_type=Type.NON)
    assert Message.decode(one(s)).type is Type.NON
    assert s.next_deadline() is None


def test_non_request_gets_non_response() -> None:
    s = layer()
    [event] = s.receive(request_bytes(mtype=Type.NON), CLIENT, 0.0)
    s.respond(event.message, Message(code=Code.CONTENT), 0.0)
    resp = Message.decode(one(s))
    assert resp.type is Type.NON and resp.token == b"tk"


def test_con_ping_is_answered_with_reset() -> None:
    s = layer()
    assert s.receive(Message(Type.CON, Code.EMPTY, 99).encode(), CLIENT, 0.0) == []
    rst = Message.decode(one(s))
    assert (rst.type, rst.code, rst.mid) == (Type.RST, Code.EMPTY, 99)


def test_empty_non_is_silently_ignored() -> None:
    s = layer()
    assert s.receive(Message(Type.NON, Code.EMPTY, 99).encode(), CLIENT, 0.0) == []
    assert s.datagrams_to_send() == []


def test_con_with_reserved_code_class_is_reset() -> None:
    s = layer()
    assert s.receive(Message(Type.CON, Code(0x20), 5, b"t").encode(), CLIENT, 0.0) == []
    assert Message.decode(one(s)).type is Type.RST


def test_malformed_con_is_reset_and_malformed_non_is_dropped() -> None:
    s = layer()
    bad_con = bytes([0x4F, 0x01, 0x12, 0x34])  # token length 15
    assert s.receive(bad_con, CLIENT, 0.0) == []
    rst = Message.decode(one(s))
    assert (rst.type, rst.mid) == (Type.RST, 0x1234)
    bad_non = bytes([0x5F, 0x01, 0x12, 0x35])
    assert s.receive(bad_non, CLIENT, 0.0) == []
    assert s.receive(b"\x40", CLIENT, 0.0) == []
    assert s.datagrams_to_send() == []
    assert s.stats.malformed == 3


def test_malformed_datagram_does_not_disturb_other_exchanges() -> None:
    s = layer()
    [event] = s.receive(request_bytes(0x10), CLIENT, 0.0)
    s.receive(bytes([0x40, 0x01, 0x10, 0x00, 0xF0]), CLIENT, 0.0)  # delta nibble 15
    s.datagrams_to_send()
    s.respond(event.message, Message(code=Code.CONTENT), 0.0)
    assert Message.decode(one(s)).type is Type.ACK


def test_request_with_unrecognized_critical_option_gets_bad_option() -> None:
    s = layer()
    msg = Message(Type.CON, Code.GET, 1, b"token123", uri="coap://h/some/resource")
    msg.opt.add(2049, b"x")
    assert s.receive(msg.encode(), CLIENT, 0.0) == []
    resp = Message.decode(one(s))
    assert (resp.type, resp.code, resp.mid) == (Type.ACK, Code.BAD_OPTION, 1)
    assert b"2049" in resp.payload


def test_bad_option_diagnostic_is_left_out_when_it_would_amplify() -> None:
    """RFC 9175 §2.4: the reply to a tiny request stays within three times its size."""
    s = layer()
    msg = Message(Type.CON, Code.GET, 1, b"t")
    msg.opt.add(2049, b"x")
    data = msg.encode()
    assert s.receive(data, CLIENT, 0.0) == []
    reply = one(s)
    resp = Message.decode(reply)
    assert (resp.code, resp.payload) == (Code.BAD_OPTION, b"")
    assert len(reply) <= 3 * len(data)


def test_non_request_with_unrecognized_critical_option_is_rejected_with_reset() -> None:
    s = layer()
    msg = Message(Type.NON, Code.GET, 2, b"t")
    msg.opt.add(2049, b"x")
    assert s.receive(msg.encode(), CLIENT, 0.0) == []
    rst = Message.decode(one(s))
    assert (rst.type, rst.code, rst.mid) == (Type.RST, Code.EMPTY, 2)


def test_request_with_unrecognized_elective_option_is_delivered() -> None:
    s = layer()
    msg = Message(Type.CON, Code.GET, 1, b"t")
    msg.opt.add(2050, b"x")
    assert len(s.receive(msg.encode(), CLIENT, 0.0)) == 1


def test_recognized_options_can_be_narrowed() -> None:
    s = MessageLayer(recognized_options={11})
    msg = Message(Type.CON, Code.GET, 1, b"t")
    msg.opt.block2 = BlockValue(0, False, 6)
    assert s.receive(msg.encode(), CLIENT, 0.0) == []
    assert Message.decode(one(s)).code is Code.BAD_OPTION


# --- client side: separate and rejected responses ---


def test_separate_con_response_is_acknowledged_and_delivered_once() -> None:
    c = layer()
    resp = Message(Type.CON, Code.CONTENT, 0x55, b"tk").encode()
    [event] = c.receive(resp, SERVER, 0.0)
    assert isinstance(event, ResponseReceived) and event.request is None
    ack = Message.decode(one(c))
    assert (ack.type, ack.code, ack.mid) == (Type.ACK, Code.EMPTY, 0x55)
    assert c.receive(resp, SERVER, 1.0) == []
    assert one(c) == ack.encode()


@pytest.mark.parametrize("mtype", [Type.CON, Type.NON])
def test_unexpected_separate_response_is_rejected_with_reset(mtype: Type) -> None:
    c = MessageLayer(expects_response=lambda token, remote: token == b"ok")
    assert c.receive(Message(mtype, Code.CONTENT, 0x56, b"no").encode(), SERVER, 0.0) == []
    rst = Message.decode(one(c))
    assert (rst.type, rst.mid) == (Type.RST, 0x56)
    assert c.receive(Message(mtype, Code.CONTENT, 0x57, b"ok").encode(), SERVER, 0.0) != []


def test_separate_con_response_with_unrecognized_critical_option_is_reset_and_reported() -> None:
    c = layer()
    msg = Message(Type.CON, Code.CONTENT, 0x55, b"tk")
    msg.opt.add(65001, b"")
    [event] = c.receive(msg.encode(), SERVER, 0.0)
    assert isinstance(event, BadResponse)
    assert Message.decode(one(c)).type is Type.RST


def test_piggybacked_response_with_unrecognized_critical_option_is_reported() -> None:
    c = layer()
    req = get()
    c.send(req, 0.0)
    resp = Message(Type.ACK, Code.CONTENT, req.mid, req.token)
    resp.opt.add(9999, b"")
    [event] = c.receive(resp.encode(), SERVER, 0.0)
    assert isinstance(event, BadResponse)
    assert c.next_deadline() is None


# --- NSTART, cancel, probing ---


def test_nstart_queues_requests_until_the_outstanding_one_is_acknowledged() -> None:
    c = layer()
    a, b = get(b"a"), get(b"b")
    c.send(a, 0.0)
    c.send(b, 0.0)
    assert len(c.datagrams_to_send()) == 1 and b.mid is None
    c.receive(Message(Type.ACK, Code.EMPTY, a.mid).encode(), SERVER, 0.3)
    assert len(c.datagrams_to_send()) == 1 and b.mid is not None


def test_nstart_can_be_raised() -> None:
    c = layer(nstart=3)
    for t in (b"a", b"b", b"c", b"d"):
        c.send(get(t), 0.0)
    assert len(c.datagrams_to_send()) == 3


def test_nstart_slot_is_freed_when_a_request_gives_up() -> None:
    c = layer(seed=3)
    a, b = get(b"a"), get(b"b")
    c.send(a, 0.0)
    c.send(b, 0.0)
    while b.mid is None:
        c.on_timer(c.next_deadline())  # type: ignore[arg-type]
    assert c.stats.timeouts == 1


def test_send_queue_is_bounded() -> None:
    c = layer(max_queued_per_peer=2)
    c.send(get(b"a"), 0.0)
    c.send(get(b"b"), 0.0)
    c.send(get(b"c"), 0.0)
    with pytest.raises(SendQueueFull):
        c.send(get(b"d"), 0.0)


def test_cancel_stops_retransmission_and_frees_the_slot() -> None:
    c = layer()
    a, b = get(b"a"), get(b"b")
    c.send(a, 0.0)
    c.send(b, 0.0)
    c.datagrams_to_send()
    c.cancel(a, 1.0)
    assert len(c.datagrams_to_send()) == 1 and b.mid is not None  # b started at once
    c.cancel(b, 1.0)
    assert c.next_deadline() is None and c.open_exchanges == 0
    c.on_timer(1000.0)
    assert c.datagrams_to_send() == []


def test_cancel_removes_a_queued_request() -> None:
    c = layer()
    a, b = get(b"a"), get(b"b")
    c.send(a, 0.0)
    c.send(b, 0.0)
    c.cancel(b, 0.0)
    c.receive(Message(Type.ACK, Code.EMPTY, a.mid).encode(), SERVER, 0.1)
    assert len(c.datagrams_to_send()) == 1 and b.mid is None


def test_non_request_holds_its_slot_until_the_response() -> None:
    c = layer()
    a, b = get(b"a", mtype=Type.NON), get(b"b", mtype=Type.NON)
    c.send(a, 0.0)
    c.send(b, 0.0)
    assert len(c.datagrams_to_send()) == 1
    resp = Message(Type.NON, Code.CONTENT, 0x77, b"a").encode()
    assert len(c.receive(resp, SERVER, 0.2)) == 1
    assert len(c.datagrams_to_send()) == 1 and b.mid is not None


def test_non_request_without_response_releases_its_slot_after_the_timeout() -> None:
    c = layer(non_response_timeout=10.0)
    a, b = get(b"a", mtype=Type.NON), get(b"b", mtype=Type.NON)
    c.send(a, 0.0)
    c.send(b, 0.0)
    c.datagrams_to_send()
    assert c.next_deadline() == pytest.approx(10.0)
    assert c.on_timer(10.0) == [TimedOut(a)]
    assert b.mid is not None


def test_reset_to_a_non_request_is_reported() -> None:
    c = layer()
    a = get(b"a", mtype=Type.NON)
    c.send(a, 0.0)
    assert c.receive(Message(Type.RST, Code.EMPTY, a.mid).encode(), SERVER, 0.1) == [Reset(a)]
    assert c.open_exchanges == 0


def test_reset_to_a_non_notification_is_reported() -> None:
    s = layer()
    note = Message(Type.NON, Code.CONTENT, token=b"ob", remote=CLIENT)
    note.opt.observe = 5
    s.send(note, 0.0)
    assert s.receive(Message(Type.RST, Code.EMPTY, note.mid).encode(), CLIENT, 0.1) == [Reset(note)]


def test_unresponsive_peer_is_paced_at_probing_rate() -> None:
    c = layer(nstart=5, probing_rate=2.0)
    a = get(b"a")
    c.send(a, 0.0)
    c.datagrams_to_send()
    # Nothing heard for longer than ACK_TIMEOUT: the peer counts as unresponsive.
    b, d = get(b"b"), get(b"d")
    c.send(b, 3.0)
    size = len(one(c))
    c.send(d, 3.0)
    assert c.datagrams_to_send() == []
    assert c.next_deadline() == pytest.approx(min(3.0 + size / 2.0, c.next_deadline() or 0))
    c.on_timer(3.0 + size / 2.0)
    assert d.mid is not None
    # Hearing from the peer ends the pacing.
    c.receive(Message(Type.ACK, Code.EMPTY, a.mid).encode(), SERVER, 3.5)
    e = get(b"e")
    c.send(e, 3.5)
    assert e.mid is not None


# --- bounded memory ---


def test_dedup_cache_is_bounded_by_entries_dropping_the_oldest() -> None:
    s = layer(max_dedup_entries=100)
    for mid in range(1000):
        [event] = s.receive(request_bytes(mid), CLIENT, 0.0)
        s.respond(event.message, Message(code=Code.CONTENT, payload=b"x" * 10), 0.0)
    assert s.dedup_entries == 100
    assert s.stats.dedup_evicted == 900
    assert s.receive(request_bytes(999), CLIENT, 1.0) == []  # recent: still a duplicate
    assert len(s.receive(request_bytes(0), CLIENT, 1.0)) == 1  # evicted: processed again (the price)


def test_dedup_cache_is_bounded_by_bytes() -> None:
    s = layer(max_dedup_bytes=10_000)
    for mid in range(1000):
        [event] = s.receive(request_bytes(mid), CLIENT, 0.0)
        s.respond(event.message, Message(code=Code.CONTENT, payload=b"x" * 500), 0.0)
    assert s.dedup_bytes <= 10_000 + 600


def test_dedup_entries_expire_lazily() -> None:
    s = layer()
    for mid in range(100):
        [event] = s.receive(request_bytes(mid), CLIENT, 0.0)
        s.respond(event.message, Message(code=Code.CONTENT), 0.0)
    s.receive(request_bytes(5000), CLIENT, s.tuning.exchange_lifetime + 1)
    assert s.dedup_entries == 1


def test_idle_peers_are_forgotten_after_exchange_lifetime() -> None:
    s = layer()
    for port in range(100):
        s.send(Message(Type.NON, Code.CONTENT, remote=("127.0.0.1", port)), 0.0)
    s.send(Message(Type.NON, Code.CONTENT, remote=CLIENT), s.tuning.exchange_lifetime + 1)
    assert s._debug_state()["peers"] == 1


def test_tuning_derived_times_follow_rfc_7252_defaults() -> None:
    t = TransportTuning()
    assert t.max_transmit_span == 45
    assert t.max_transmit_wait == 93
    assert t.exchange_lifetime == 247
    assert t.non_lifetime == 145
    assert attrs.evolve(t, ack_timeout=1.0).exchange_lifetime == pytest.approx(223.5)


def test_cancel_peer_stops_everything_towards_an_unreachable_peer() -> None:
    c = layer(nstart=2)
    a, b, q = get(b"a"), get(b"b", mtype=Type.NON), get(b"q")
    for m in (a, b, q):
        c.send(m, 0.0)
    c.datagrams_to_send()
    other = get(b"o", remote=("127.0.0.2", 5683))
    c.send(other, 0.0)
    c.datagrams_to_send()
    ended = c.cancel_peer(SERVER, 1.0)
    assert {m.token for m in ended} == {b"a", b"b", b"q"}
    assert q.mid is None  # the queued request never went out
    c.on_timer(100.0)
    assert [remote for _, remote in c.datagrams_to_send()] == [("127.0.0.2", 5683)] * 4  # only the other
