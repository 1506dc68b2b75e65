"""The RFC 8323 connection state machine (coapio.protocol.reliable.Connection), without any I/O.

Each test names the rule it proves; the section numbers are RFC 8323's.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import messages

from coapio.error import CoapError
from coapio.protocol.codes import Code, Type
from coapio.protocol.framing import TcpDecoder, decode_ws, encode_tcp, encode_ws
from coapio.protocol.message import Message
from coapio.protocol.options import Options
from coapio.protocol.reliable import (
    AbortReceived,
    Closed,
    Connection,
    ConnectionClosed,
    CsmReceived,
    Event,
    MessageReceived,
    MessageTooLarge,
    PongReceived,
    ProtocolViolation,
    ReleaseReceived,
)


def frames(conn: Connection) -> list[Message]:
    """Decode what ``conn`` wants to send."""
    out = conn.data_to_send()
    if conn.websocket:
        return [decode_ws(chunk, 1 << 30) for chunk in out]
    return TcpDecoder(1 << 30).feed(b"".join(out))


def deliver(src: Connection, dst: Connection, now: float = 0.0) -> list[Event]:
    events: list[Event] = []
    for chunk in src.data_to_send():
        events += dst.receive(chunk, now)
    return events


def pair(websocket: bool = False, **server: object) -> tuple[Connection, Connection]:
    """A client and a server that exchanged their CSMs."""
    client = Connection(client=True, websocket=websocket)
    srv = Connection(client=False, websocket=websocket, **server)  # type: ignore[arg-type]
    assert deliver(client, srv) == [CsmReceived(1152, False)]
    deliver(srv, client)
    return client, srv


def peer_frame(conn: Connection, msg: Message) -> bytes:
    return encode_ws(msg) if conn.websocket else encode_tcp(msg)


def csm(*options: tuple[int, bytes]) -> Message:
    return Message(code=Code.CSM, opt=Options(options))


def put(size: int) -> Message:
    return Message(code=Code.PUT, token=b"t", payload=b"x" * size)


def aborted(conn: Connection) -> Message:
    (abort,) = frames(conn)
    assert abort.code == Code.ABORT
    return abort


both = pytest.mark.parametrize("websocket", [False, True], ids=["tcp", "ws"])


# --- §5.3 the CSM first ---------------------------------------------------------------------------------


@both
def test_our_csm_is_queued_first_with_our_settings(websocket: bool) -> None:
    conn = Connection(client=True, websocket=websocket, max_message_size=8192, block_wise=True)
    (first,) = frames(conn)
    assert first.code == Code.CSM
    assert list(first.opt) == [(2, (8192).to_bytes(2, "big")), (4, b"")]
    plain = Connection(client=False, websocket=websocket)
    assert list(frames(plain)[0].opt) == [(2, (1152).to_bytes(2, "big"))]


@both
def test_csm_first_on_both_sides_then_requests_flow_both_ways(websocket: bool) -> None:
    client = Connection(client=True, websocket=websocket, block_wise=True, max_message_size=4096)
    server = Connection(client=False, websocket=websocket, block_wise=True, max_message_size=2048)
    request = Message(code=Code.GET, token=b"t1", uri="coap+tcp://h/x")
    client.send(request)  # the initiator may send before the acceptor's CSM (§3.3)
    events = deliver(client, server)
    assert events[0] == CsmReceived(4096, True)
    assert isinstance(events[1], MessageReceived)
    assert events[1].message == request.copy(type=Type.CON, mid=None)
    assert events[1].message.scheme == ("coap+ws" if websocket else "coap+tcp")
    assert server.peer_csm_received and server.peer_block_wise and server.bert
    server.send(Message(Type.ACK, Code.CONTENT, 7, b"t1", payload=b"hi"))
    events = deliver(server, client)
    assert events[0] == CsmReceived(2048, True)
    assert isinstance(events[1], MessageReceived) and events[1].message.payload == b"hi"
    assert client.peer_max_message_size == 2048 and client.bert


def test_bert_needs_block_wise_and_a_max_message_size_over_1152_on_both_sides() -> None:
    client, server = pair(block_wise=True, max_message_size=4096)
    assert server.peer_block_wise is False and not client.bert and not server.bert
    small = Connection(client=True, websocket=False, block_wise=True)  # 1152: block-wise, no BERT
    small.receive(encode_tcp(csm((2, (4096).to_bytes(2, "big")), (4, b""))), 0)
    assert small.peer_block_wise and not small.bert


@both
def test_a_request_before_the_peers_csm_is_a_protocol_violation(websocket: bool) -> None:
    server = Connection(client=False, websocket=websocket)
    server.data_to_send()
    events = server.receive(peer_frame(server, Message(code=Code.GET, token=b"x")), 0)
    assert events == [ProtocolViolation("expected a CSM as the first message, got 0.01"), Closed()]
    assert server.closed
    assert aborted(server).payload == b"expected a CSM as the first message, got 0.01"


@pytest.mark.parametrize("code", [Code.PING, Code.PONG, Code.RELEASE, Code.CONTENT])
def test_any_message_but_csm_abort_or_empty_before_the_csm_aborts(code: Code) -> None:
    server = Connection(client=False, websocket=False)
    server.data_to_send()
    events = server.receive(encode_tcp(Message(code=code)), 0)
    assert isinstance(events[0], ProtocolViolation) and events[-1] == Closed()


def test_empty_messages_are_ignored_at_any_time_and_do_not_count_as_the_csm() -> None:
    server = Connection(client=False, websocket=False, csm_timeout=5, now=0)
    server.data_to_send()
    assert server.receive(b"\x00\x00" * 3, 1) == []
    assert not server.peer_csm_received and server.next_deadline() == 5
    server.receive(encode_tcp(csm()), 2)
    assert server.receive(b"\x00\x00", 3) == [] and server.data_to_send() == []


def test_a_later_csm_updates_only_what_it_carries() -> None:
    client, _server = pair()
    events = client.receive(encode_tcp(csm((2, (9000).to_bytes(2, "big")), (4, b""))), 1)
    assert events == [CsmReceived(9000, True)]
    events = client.receive(encode_tcp(csm()), 2)  # §5.3: cumulative; an empty CSM is a no-op
    assert events == [CsmReceived(9000, True)]
    events = client.receive(encode_tcp(csm((2, (600).to_bytes(2, "big")))), 3)
    assert events == [CsmReceived(600, True)]
    assert client.peer_max_message_size == 600 and client.peer_block_wise


def test_unknown_elective_csm_options_are_ignored() -> None:
    server = Connection(client=False, websocket=False)
    events = server.receive(encode_tcp(csm((6, b"\x01"), (2, b"\x10\x00"), (1000, b"zz"))), 0)
    assert events == [CsmReceived(4096, False)]
    assert not server.closed


@pytest.mark.parametrize("number", [1, 3, 5, 2049])
def test_an_unknown_critical_csm_option_aborts_with_bad_csm_option(number: int) -> None:
    server = Connection(client=False, websocket=False)
    server.data_to_send()
    events = server.receive(encode_tcp(csm((2, b"\x10\x00"), (number, b""))), 0)
    assert events == [ProtocolViolation(f"unknown CSM option {number}", number), Closed()]
    abort = aborted(server)
    assert abort.opt.get_all(2) == [number.to_bytes((number.bit_length() + 7) // 8, "big")]
    assert abort.payload == f"unknown CSM option {number}".encode()


@pytest.mark.parametrize(("number", "value"), [(2, b"\x00\x00\x10\x00\x00"), (4, b"\x00")])
def test_a_csm_option_of_a_wrong_length_aborts_with_bad_csm_option(number: int, value: bytes) -> None:
    server = Connection(client=False, websocket=False)
    server.data_to_send()
    events = server.receive(encode_tcp(csm((number, value))), 0)
    assert isinstance(events[0], ProtocolViolation) and events[0].bad_csm_option == number
    assert aborted(server).opt.get(2) == bytes((number,))


def test_without_the_peers_csm_by_the_deadline_on_timer_aborts() -> None:
    server = Connection(client=False, websocket=False, csm_timeout=10, now=100)
    server.data_to_send()
    assert server.next_deadline() == 110
    assert server.on_timer(109.9) == []
    assert server.on_timer(110) == [ProtocolViolation("no CSM received in time"), Closed()]
    assert aborted(server).payload == b"no CSM received in time"
    assert server.next_deadline() is None and server.closed


def test_the_csm_deadline_is_gone_once_the_csm_arrives() -> None:
    server = Connection(client=False, websocket=False, csm_timeout=10, now=0)
    assert Connection(client=True, websocket=False).next_deadline() is None  # no timeout given
    server.receive(encode_tcp(csm()), 1)
    assert server.next_deadline() is None and server.on_timer(50) == []


# --- sizes, both ways (§5.3.1) --------------------------------------------------------------------------


@both
def test_send_over_the_peers_limit_raises_message_too_large_and_queues_nothing(websocket: bool) -> None:
    client = Connection(client=True, websocket=websocket)
    client.data_to_send()
    big = Message(code=Code.PUT, token=b"t", payload=b"x" * 1200)
    with pytest.raises(MessageTooLarge) as caught:
        client.send(big)  # before the peer's CSM: the base value 1152
    assert caught.value.limit == 1152 and isinstance(caught.value, CoapError)
    assert client.data_to_send() == []
    client.receive(peer_frame(client, csm((2, (4096).to_bytes(2, "big")))), 0)
    client.send(big)
    (sent,) = frames(client)
    assert sent.payload == big.payload
    exact = next(n for n in range(2000) if len(peer_frame(client, put(n))) == 1152)
    tight = Connection(client=True, websocket=websocket)
    tight.data_to_send()
    tight.send(put(exact))  # exactly the limit
    assert len(tight.data_to_send()[0]) == 1152
    with pytest.raises(MessageTooLarge):
        tight.send(put(exact + 1))
    assert tight.data_to_send() == []


def test_an_incoming_message_over_our_limit_aborts_before_its_body_arrives() -> None:
    _client, server = pair(max_message_size=1000)
    header = bytes.fromhex("e1") + (5000 - 269).to_bytes(2, "big")  # announces 5000 bytes, token 1
    events = server.receive(header, 1)
    assert len(events) == 2 and isinstance(events[0], ProtocolViolation) and events[1] == Closed()
    assert "exceeds Max-Message-Size 1000" in events[0].diagnostic
    assert b"exceeds" in aborted(server).payload
    assert server.receive(b"x" * 5000, 2) == []  # nothing more is read


def test_an_incoming_websocket_message_over_our_limit_aborts() -> None:
    _client, server = pair(websocket=True, max_message_size=1000)
    events = server.receive(encode_ws(Message(code=Code.PUT, token=b"t", payload=b"x" * 1000)), 1)
    assert isinstance(events[0], ProtocolViolation) and events[-1] == Closed()


# --- malformed input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("hexdata", ["0901" + "00" * 9, "1045ff", "1045f0", "2045b4ab", "0100aa"])
def test_a_malformed_frame_aborts_with_a_diagnostic_and_closes(hexdata: str) -> None:
    _client, server = pair()
    good = encode_tcp(Message(code=Code.GET, token=b"g"))
    events = server.receive(good + bytes.fromhex(hexdata) + good, 1)
    assert isinstance(events[0], MessageReceived)  # what came before the bad frame still counts
    assert isinstance(events[1], ProtocolViolation) and events[1].diagnostic
    assert events[2:] == [Closed()]
    assert aborted(server).payload.decode() == events[1].diagnostic
    assert server.receive(good, 2) == []


def test_websocket_len_must_be_zero() -> None:
    _client, server = pair(websocket=True)
    events = server.receive(encode_tcp(Message(code=Code.GET, token=b"g", payload=b"abc")), 1)
    assert isinstance(events[0], ProtocolViolation) and "Len nibble" in events[0].diagnostic


@pytest.mark.parametrize("detail", [0, 6, 31])
def test_an_unassigned_signalling_code_aborts(detail: int) -> None:
    _client, server = pair()
    events = server.receive(encode_tcp(Message(code=Code(7 << 5 | detail))), 1)
    assert events == [ProtocolViolation(f"unknown signalling code 7.{detail:02d}"), Closed()]


def test_send_refuses_signalling_codes() -> None:
    client, _ = pair()
    with pytest.raises(ValueError, match="signalling"):
        client.send(Message(code=Code.PING))


# --- §5.4 Ping and Pong ---------------------------------------------------------------------------------


@both
def test_a_ping_is_answered_with_a_pong_carrying_its_token(websocket: bool) -> None:
    client, server = pair(websocket=websocket)
    client.ping(b"\x42")
    assert deliver(client, server) == []
    (pong,) = frames(server)
    assert (pong.code, pong.token, list(pong.opt)) == (Code.PONG, b"\x42", [])
    server.ping(b"\x42")
    assert deliver(server, client) == []
    assert deliver(client, server) == [PongReceived(b"\x42", False)]


def test_custody_in_a_ping_is_echoed_in_the_pong_after_the_earlier_messages() -> None:
    client, server = pair()
    client.send(Message(code=Code.GET, token=b"r"))
    client.ping(b"p", custody=True)
    events = deliver(client, server)
    assert isinstance(events[0], MessageReceived)  # handed over before the Pong claims custody
    (pong,) = frames(server)
    assert (pong.code, pong.token, list(pong.opt)) == (Code.PONG, b"p", [(2, b"")])
    server.ping(b"q", custody=True)
    deliver(server, client)
    assert deliver(client, server) == [PongReceived(b"q", True)]


def test_signalling_messages_ignore_unknown_elective_options_and_abort_on_critical_ones() -> None:
    _client, server = pair()
    events = server.receive(encode_tcp(Message(code=Code.PING, token=b"1", opt=Options([(4, b"x")]))), 1)
    assert events == [] and frames(server)[0].code == Code.PONG
    events = server.receive(encode_tcp(Message(code=Code.PING, token=b"2", opt=Options([(7, b"")]))), 2)
    assert events == [ProtocolViolation("unknown critical option in 7.02 7"), Closed()]
    assert aborted(server).opt.get(2) is None  # Bad-CSM-Option is for CSM options only


# --- §5.5 Release ---------------------------------------------------------------------------------------


def test_release_is_sent_with_its_options_and_closes_our_side() -> None:
    client, server = pair()
    client.release("going away", alternative_address="example.org:5684", hold_off=30)
    assert client.closed
    with pytest.raises(ConnectionClosed):
        client.send(Message(code=Code.GET))
    with pytest.raises(ConnectionClosed):
        client.ping()
    events = deliver(client, server)
    assert events == [ReleaseReceived("going away", "example.org:5684", 30, ("example.org:5684",))]


def test_after_the_peers_release_responses_still_go_out_but_requests_do_not() -> None:
    _client, server = pair()
    server.receive(encode_tcp(Message(code=Code.RELEASE, opt=Options([(2, b"a:1"), (2, b"b:2")]))), 1)
    assert server.peer_released and not server.closed
    server.send(Message(code=Code.CONTENT, token=b"t"))  # a response owed before the Release
    assert frames(server)[0].code == Code.CONTENT
    with pytest.raises(ConnectionClosed):
        server.send(Message(code=Code.GET, token=b"u"))


def test_a_release_with_bad_option_values_is_still_a_release() -> None:
    _client, server = pair()
    release = Message(code=Code.RELEASE, opt=Options([(4, b"\x01\x02\x03\x04")]))  # Hold-Off: 0-3 bytes
    events = server.receive(encode_tcp(release), 1)
    assert events == [ReleaseReceived("", None, None, ())]


# --- §5.6 Abort -----------------------------------------------------------------------------------------


def test_abort_sends_7_05_with_diagnostic_and_bad_csm_option_and_closes() -> None:
    client, server = pair()
    client.abort("bye", bad_csm_option=1000)
    assert client.closed
    client.abort("again")  # a no-op once closed
    events = deliver(client, server)
    assert events == [AbortReceived("bye", 1000), Closed()]
    assert server.closed
    with pytest.raises(ConnectionClosed):
        server.send(Message(code=Code.CONTENT))


def test_an_abort_is_accepted_even_before_the_csm_and_never_answered() -> None:
    server = Connection(client=False, websocket=False)
    server.data_to_send()
    abort = Message(code=Code.ABORT, payload=b"no", opt=Options([(3, b"")]))  # even with a critical option
    assert server.receive(encode_tcp(abort), 0) == [AbortReceived("no", None), Closed()]
    assert server.data_to_send() == []


def test_nothing_can_be_sent_or_received_after_close() -> None:
    _client, server = pair()
    server.abort("x")
    server.data_to_send()
    for action in (
        lambda: server.send(Message(code=Code.CONTENT)),
        lambda: server.ping(),
        lambda: server.release(),
    ):
        with pytest.raises(ConnectionClosed):
            action()
    assert server.receive(encode_tcp(Message(code=Code.GET)), 1) == []
    assert server.data_to_send() == [] and server.next_deadline() is None


def test_connection_lost_reports_closed_once() -> None:
    client, _ = pair()
    assert client.connection_lost() == [Closed()]
    assert client.connection_lost() == [] and client.closed


# --- any split of the stream ----------------------------------------------------------------------------


@given(
    st.lists(messages(codes=st.sampled_from([Code.GET, Code.CONTENT, Code.NOT_FOUND])), max_size=5),
    st.lists(st.integers(0, 5000), max_size=10),
)
def test_events_do_not_depend_on_how_the_stream_is_split(msgs: list[Message], cuts: list[int]) -> None:
    stream = encode_tcp(csm()) + b"".join(encode_tcp(m) for m in msgs)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    server = Connection(client=False, websocket=False, max_message_size=1 << 20)
    events: list[Event] = []
    for a, b in zip([0, *points], [*points, len(stream)], strict=True):
        events += server.receive(stream[a:b], 0)
    assert events == [CsmReceived(1152, False)] + [
        MessageReceived(m.copy(type=Type.CON, mid=None)) for m in msgs
    ]
