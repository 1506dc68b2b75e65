"""Echo (RFC 9175 §2) and No-Response (RFC 7967), sans-IO and through the runtime."""

from __future__ import annotations

import socket

import attrs
import trio
import trio.testing

from coapio import Code, Context, Message, Resource, Site, TransportTuning, Type
from coapio.protocol.echo import EchoGuard

LOCAL = ("127.0.0.1", 0)
PEER = ("127.0.0.1", 40000)


def request(echo: bytes | None = None, remote: object = PEER) -> Message:
    msg = Message(Type.CON, Code.POST, 1, b"t", payload=b"x", remote=remote)
    if echo is not None:
        msg.opt.echo = echo
    return msg


# --- Echo, sans-IO ----------------------------------------------------------------------------------------


def test_echo_value_is_fresh_only_for_its_peer_and_only_for_a_while() -> None:
    guard = EchoGuard(freshness=10.0)
    value = guard.make(PEER, 100.0)
    assert guard.is_fresh(request(value), 105.0)
    assert not guard.is_fresh(request(value), 111.0)  # too old
    assert not guard.is_fresh(request(value, remote=("127.0.0.1", 40001)), 101.0)  # another peer
    forged = value[:4] + bytes(8)
    assert not guard.is_fresh(request(forged), 101.0)
    assert not guard.is_fresh(request(), 101.0)


def test_large_response_to_an_unverified_peer_is_an_amplification_risk() -> None:
    guard = EchoGuard()
    small = request()
    big = Message(code=Code.CONTENT, payload=b"y" * 200)
    assert guard.amplification_risk(small, big, 0.0)
    assert not guard.amplification_risk(small, Message(code=Code.CONTENT, payload=b"y" * 10), 0.0)
    value = guard.make(PEER, 0.0)
    assert not guard.amplification_risk(request(value), big, 1.0)  # the Echo proves the address...
    assert not guard.amplification_risk(small, big, 2.0)  # ...and the peer stays verified for a while
    assert guard.amplification_risk(small, big, 1000.0)


def test_the_allowance_counts_the_token_and_covers_observe_registrations() -> None:
    guard = EchoGuard()
    small = Message(Type.CON, Code.GET, 1, b"12345678", remote=PEER)  # 12 bytes: 36 allowed
    fits = Message(code=Code.CONTENT, payload=b"y" * 23)  # 28 bytes, 36 with the token it will carry
    assert not guard.amplification_risk(small, fits, 0.0)
    assert guard.amplification_risk(small, Message(code=Code.CONTENT, payload=b"y" * 24), 0.0)
    registration = small.copy()
    registration.opt.observe = 0  # notifications would follow without further requests
    assert guard.amplification_risk(registration, Message(code=Code.CONTENT), 0.0)
    assert not guard.amplification_risk(registration, Message(code=Code.NOT_FOUND), 0.0)


def test_the_amplification_challenge_fits_even_the_smallest_request() -> None:
    guard = EchoGuard()
    tiny = Message(Type.CON, Code.GET, 1, remote=PEER)  # 4 bytes: a 4.01 with Echo (18) would not fit
    assert guard.amplification_challenge(tiny, 0.0).opt.echo is None
    usual = Message(Type.CON, Code.GET, 1, b"tk", uri="coap://h/some/path")
    usual.remote = PEER
    assert guard.amplification_challenge(usual, 0.0).opt.echo is not None


def test_verified_peers_are_bounded() -> None:
    guard = EchoGuard(max_verified=10)
    for port in range(100):
        peer = ("127.0.0.1", port)
        guard.is_fresh(request(guard.make(peer, 0.0), remote=peer), 0.0)
    assert len(guard._verified) == 10


# --- Echo through the runtime -------------------------------------------------------------------------------


class Actuator(Resource):
    requires_fresh = True

    def __init__(self) -> None:
        super().__init__()
        self.posts = 0

    def render_post(self, request: Message) -> Message:
        self.posts += 1
        return Message(code=Code.CHANGED)

    def render_get(self, request: Message) -> Message:
        return Message(payload=b"z" * 500)


def site(resource: Resource) -> Site:
    s = Site()
    s.add("r", resource)
    return s


def uri(ctx: Context) -> str:
    host, port = ctx.local_addresses[0]
    return f"coap://{host}:{port}/r"


async def test_fresh_resource_challenges_and_the_client_retries_with_echo_transparently() -> None:
    actuator = Actuator()
    async with Context(bind=[LOCAL], site=site(actuator)) as server, Context(bind=[LOCAL]) as client:
        response = await client.post(uri(server), b"on")
        assert response.code is Code.CHANGED and actuator.posts == 1
        assert (await client.get(uri(server))).code is Code.CONTENT  # safe methods need no proof


async def test_raw_request_without_echo_gets_4_01_with_an_echo_value() -> None:
    actuator = Actuator()
    async with Context(bind=[LOCAL], site=site(actuator)) as server:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock, trio.fail_after(5):
            await sock.connect(server.transports[0].sock.getsockname())
            await sock.send(Message(Type.CON, Code.POST, 9, b"t", uri="coap://h/r").encode())
            reply = Message.decode(await sock.recv(2048))
    assert reply.code is Code.UNAUTHORIZED and reply.opt.echo is not None and len(reply.opt.echo) == 12
    assert actuator.posts == 0


GUARDED = attrs.evolve(TransportTuning(), echo_amplification_check=True)


async def test_amplification_check_asks_unverified_peers_for_echo_first() -> None:
    """RFC 9175 §2.4: a 500-byte answer to a 14-byte request waits for an Echo round trip."""
    async with Context(bind=[LOCAL], site=site(Actuator()), tuning=GUARDED) as server:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock, trio.fail_after(5):
            await sock.connect(server.transports[0].sock.getsockname())
            get = Message(Type.CON, Code.GET, 10, b"t", uri="coap://h/r")
            await sock.send(get.encode())
            data = await sock.recv(2048)
            challenge = Message.decode(data)
            assert challenge.code is Code.UNAUTHORIZED and len(data) <= 3 * len(get.encode())
            get.mid, get.opt.echo = 11, challenge.opt.echo
            await sock.send(get.encode())
            answer = Message.decode(await sock.recv(2048))
            assert answer.code is Code.CONTENT and len(answer.payload) == 500
            # Verified now: the next large answer comes at once, without Echo.
            get.mid, get.opt.echo = 12, None
            await sock.send(get.encode())
            assert len(Message.decode(await sock.recv(2048)).payload) == 500
        async with Context(bind=[LOCAL]) as client:  # coapio's client does the round trip by itself
            assert len((await client.get(uri(server))).payload) == 500


async def test_a_ping_reset_does_not_verify_a_peer() -> None:
    """Any CoAP endpoint resets a ping, so a Reset proves nothing about who sent a request: a spoofer
    could aim the server at one. Only an Echo value returned in a request verifies."""
    async with Context(bind=[LOCAL], site=site(Actuator()), tuning=GUARDED) as server:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock, trio.fail_after(5):
            await sock.connect(server.transports[0].sock.getsockname())
            await sock.send(Message(Type.CON, Code.GET, 10, b"t", uri="coap://h/r").encode())
            assert Message.decode(await sock.recv(2048)).code is Code.UNAUTHORIZED
        assert not server._server.echo._verified


async def test_an_observe_registration_from_an_unverified_peer_is_challenged() -> None:
    """Notifications would follow a registration without further requests: register only verified peers."""
    async with Context(bind=[LOCAL], site=site(Actuator()), tuning=GUARDED) as server:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock, trio.fail_after(5):
            await sock.connect(server.transports[0].sock.getsockname())
            register = Message(Type.CON, Code.GET, 10, b"t", uri="coap://h/r")
            register.opt.observe = 0
            await sock.send(register.encode())
            assert Message.decode(await sock.recv(2048)).code is Code.UNAUTHORIZED
        assert not server._server.observers


async def test_without_the_check_a_large_response_goes_at_once() -> None:
    async with Context(bind=[LOCAL], site=site(Actuator())) as server:  # the default
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock, trio.fail_after(5):
            await sock.connect(server.transports[0].sock.getsockname())
            await sock.send(Message(Type.CON, Code.GET, 10, b"t", uri="coap://h/r").encode())
            assert len(Message.decode(await sock.recv(2048)).payload) == 500


# --- No-Response --------------------------------------------------------------------------------------------


class Sink(Resource):
    def __init__(self) -> None:
        super().__init__()
        self.received: list[bytes] = []

    def render_put(self, request: Message) -> Message:
        self.received.append(request.payload)
        return Message(code=Code.CHANGED)

    def render_post(self, request: Message) -> Message:
        raise ValueError("a bug: 5.00")


async def raw(server: Context, message: Message) -> Message | None:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        await sock.connect(server.transports[0].sock.getsockname())
        await sock.send(message.encode())
        with trio.move_on_after(1):
            return Message.decode(await sock.recv(2048))
    return None


async def test_server_suppresses_the_classes_no_response_names(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sink = Sink()
    async with Context(bind=[LOCAL], site=site(sink)) as server:
        con = Message(Type.CON, Code.PUT, 20, b"t", payload=b"a", uri="coap://h/r")
        con.opt.no_response = 0x02
        ack = await raw(server, con)
        assert ack is not None and (ack.type, ack.code) == (Type.ACK, Code.EMPTY)  # acknowledged only
        non = Message(Type.NON, Code.PUT, 21, b"u", payload=b"b", uri="coap://h/r")
        non.opt.no_response = 0x02
        assert await raw(server, non) is None  # nothing at all
        errors = Message(Type.NON, Code.POST, 22, b"v", uri="coap://h/r")
        errors.opt.no_response = 0x02  # success suppressed, but 5.00 is still wanted
        reply = await raw(server, errors)
        assert reply is not None and reply.code is Code.INTERNAL_SERVER_ERROR
    assert sink.received == [b"a", b"b"]


async def test_client_request_with_no_response_completes_when_the_exchange_ends() -> None:
    sink = Sink()
    async with Context(bind=[LOCAL], site=site(sink)) as server, Context(bind=[LOCAL]) as client:
        with trio.fail_after(5):
            con = Context.build(Code.PUT, uri(server), payload=b"c", options=[(258, 0x02)])
            assert (await client.request(con)).code is Code.EMPTY
            non = Context.build(Code.PUT, uri(server), payload=b"d", con=False, options=[(258, 0x1A)])
            assert (await client.request(non)).code is Code.EMPTY
            failing = Context.build(Code.POST, uri(server), options=[(258, 0x02)])
            assert (await client.request(failing)).code is Code.INTERNAL_SERVER_ERROR
        await trio.testing.wait_all_tasks_blocked()
        assert client.counters.live_tokens == 0
    assert sink.received[0] == b"c"
