"""OSCORE in the runtime (issue 12), coapio on both ends over real sockets on loopback: protected requests
and responses on UDP and TCP, inner block-wise both ways, Observe, the B.1.2 recovery after a lost replay
window, the unprotected errors of §8.2 (replay, tampering, unknown kid, malformed option), what a server
without credentials and a client without them do, ``requires_security``, and the credentials' lifecycle.

The aiocoap interop tests are in test_interop_aiocoap_oscore.py (sans-IO) and
test_interop_aiocoap_oscore_e2e.py (end to end).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest
import trio

from coapio import Code, Context, Message, ObservableResource, Resource, Site, Type
from coapio.credentials import Credentials
from coapio.error import ResponseRejected
from coapio.protocol.options import BlockValue, OptionNumber
from coapio.protocol.oscore import (
    SEQUENCE_FILE,
    ContextUnavailable,
    ResponseProtectionInvalid,
    UnprotectedErrorResponse,
    load_context_directory,
    protect_request,
    unprotect_response,
)

pytest.importorskip("cryptography")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "0102030405060708090a0b0c0d0e0f10"
BODY = bytes(range(256)) * 40  # 10 KiB: block-wise both ways, several blocks


def make_pair(base: str, name: str = "pair", *, client_id: str = "01",
              secret: str = SECRET) -> tuple[str, str]:
    """A client and a server context directory (aiocoap's format) sharing keys."""
    dirs = []
    for role, sender, recipient in (("client", client_id, ""), ("server", "", client_id)):
        directory = os.path.join(base, name, role)
        os.makedirs(directory)
        with open(os.path.join(directory, "settings.json"), "w") as f:
            json.dump({"sender-id_hex": sender, "recipient-id_hex": recipient,
                       "salt_hex": "9e7ca92223786340"}, f)
        with open(os.path.join(directory, "secret.json"), "w") as f:
            json.dump({"secret_hex": secret}, f)
        dirs.append(directory)
    return dirs[0], dirs[1]


class Hello(Resource):
    """GET says who asked; POST and PUT echo the body (block-wise when large)."""

    def render_get(self, request: Message) -> Message:
        if "big" in request.opt.uri_query:
            return Message(payload=BODY)
        return Message(payload=f"hello {request.security}".encode())

    def render_post(self, request: Message) -> Message:
        return Message(code=Code.CHANGED, payload=request.payload)


class Private(Resource):
    requires_security = {":client1"}

    def render_get(self, request: Message) -> Message:
        return Message(payload=b"secret")


class Counter(ObservableResource):
    def __init__(self) -> None:
        super().__init__()
        self.value = 0

    def render_get(self, request: Message) -> Message:
        return Message(payload=str(self.value).encode())


def build_site() -> tuple[Site, Counter]:
    site = Site()
    counter = Counter()
    site.add("hello", Hello())
    site.add("private", Private())
    site.add("p", Private())  # a name short enough for a request smaller than the refusal's diagnostic
    site.add("counter", counter)
    return site, counter


def write_json(path: str, data: object) -> str:
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def accepting(tmp: str, server_dir: str, name: str = "server.json") -> str:
    """A server's credentials file accepting ``server_dir``'s context as ``:client1``."""
    return write_json(os.path.join(tmp, name), {":client1": {"oscore": {"contextfile": server_dir}}})


def using(tmp: str, base: str, client_dir: str, name: str = "client.json") -> str:
    """A client's credentials file protecting every request under ``base`` with ``client_dir``'s context."""
    return write_json(os.path.join(tmp, name), {f"{base}/*": {"oscore": {"contextfile": client_dir}}})


def lose_replay_window(server_dir: str) -> None:
    """What a crash leaves: the sequence file says the replay window is unknown (Appendix B.1.2)."""
    write_json(os.path.join(server_dir, SEQUENCE_FILE), {"next-to-send": 100, "received": "unknown"})


def next_to_send(directory: str) -> int:
    with open(os.path.join(directory, SEQUENCE_FILE)) as f:
        return int(json.load(f)["next-to-send"])


@pytest.fixture
def pair(tmp_path: Any) -> tuple[str, str]:
    return make_pair(str(tmp_path))


@asynccontextmanager
async def server_and_client(tmp: str, pair: tuple[str, str], *, bind: str = "127.0.0.1:0",
                            site: Site | None = None) -> AsyncIterator[tuple[Context, Context, str]]:
    """A server accepting ``pair``'s server context as ``:client1``, a client using the client context for
    every URI of that server, and the server's base URI."""
    client_dir, server_dir = pair
    async with Context(bind=bind, site=site or build_site()[0],
                       credentials=accepting(tmp, server_dir)) as server:
        scheme = bind.split("://")[0] if "://" in bind else "coap"
        base = next(uri for uri in server.local_uris if uri.startswith(f"{scheme}://"))
        async with Context(credentials=using(tmp, base, client_dir)) as client:
            yield server, client, base


@asynccontextmanager
async def scripted_peer(tmp: str | None, client_dir: str | None) -> AsyncIterator[tuple[Any, Context, int]]:
    """A raw UDP socket on loopback that a test scripts as the server, a client Context (protecting its
    requests to that socket with ``client_dir``'s context, if given) and the socket's port."""
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        await peer.bind(("127.0.0.1", 0))
        port = peer.getsockname()[1]
        creds = None
        if tmp is not None and client_dir is not None:
            creds = using(tmp, f"coap://127.0.0.1:{port}", client_dir)
        async with Context(credentials=creds) as client:
            yield peer, client, port


# --- protected exchanges ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bind", ["127.0.0.1:0", "coap+tcp://127.0.0.1:0"])
async def test_get_and_post_are_protected_and_carry_the_identity(tmp_path: Any, pair: tuple[str, str],
                                                                 bind: str) -> None:
    async with server_and_client(str(tmp_path), pair, bind=bind) as (_, client, base):
        response = await client.get(f"{base}/hello")
        assert response.code == Code.CONTENT
        assert response.payload == b"hello :client1 (oscore)"
        assert response.security is not None and response.security.method == "oscore"
        response = await client.post(f"{base}/hello", b"ping")
        assert (response.code, response.payload) == (Code.CHANGED, b"ping")


@pytest.mark.parametrize("bind", ["127.0.0.1:0", "coap+tcp://127.0.0.1:0"])
async def test_large_bodies_go_block_wise_inside_the_protection(tmp_path: Any, pair: tuple[str, str],
                                                                 bind: str) -> None:
    async with server_and_client(str(tmp_path), pair, bind=bind) as (_, client, base):
        response = await client.get(f"{base}/hello?big")
        assert response.payload == BODY
        assert response.security is not None
        response = await client.post(f"{base}/hello", BODY)
        assert response.payload == BODY


async def test_every_datagram_on_the_wire_is_protected(tmp_path: Any, pair: tuple[str, str]) -> None:
    """The plaintext (path, payload) never crosses the wire; the outer codes are POST and 2.04."""
    async with server_and_client(str(tmp_path), pair) as (_, client, base):
        seen: list[bytes] = []
        transport: Any = client.transports[0]
        original = transport._send_one

        def spy(data: bytes, remote: Any) -> None:
            seen.append(data)
            original(data, remote)

        transport._send_one = spy
        response = await client.post(f"{base}/hello", b"the secret payload " * 150)
        assert response.code == Code.CHANGED
        assert len(seen) >= 3  # block-wise: several protected requests
        for data in seen:
            message = Message.decode(data)
            assert message.code == Code.POST
            assert OptionNumber.OSCORE in message.opt
            assert OptionNumber.URI_PATH not in message.opt and OptionNumber.BLOCK1 not in message.opt
            assert b"secret payload" not in data and b"hello" not in data


async def test_observe_over_oscore_notifications_are_protected_and_ordered(
        tmp_path: Any, pair: tuple[str, str]) -> None:
    site, counter = build_site()
    async with server_and_client(str(tmp_path), pair, site=site) as (_, client, base):
        async with client.observe(f"{base}/counter") as observation:
            assert observation.initial is not None
            assert observation.initial.payload == b"0"
            assert observation.registered
            seen = [b"0"]
            numbers = [observation.initial.opt.observe]
            counter.value += 1
            counter.notify()
            async for notification in observation:
                if notification.payload == b"0":
                    continue  # the initial response again (the iteration starts with it)
                assert notification.security is not None
                seen.append(notification.payload)
                numbers.append(notification.opt.observe)
                if len(seen) == 4:
                    break
                counter.value += 1
                counter.notify()
            else:
                pytest.fail("the observation ended")
        assert seen == [b"0", b"1", b"2", b"3"]
        assert numbers == sorted(numbers)  # derived from the protected Partial IVs: increasing
        with trio.fail_after(5):
            while counter.observer_count:  # noqa: ASYNC110 - nothing to wait on but the state itself
                await trio.sleep(0.01)  # the deregistration crosses loopback


# --- B.1.2: a server that lost its replay window ---------------------------------------------------------


async def test_a_server_that_lost_its_replay_window_recovers_it_with_echo(tmp_path: Any,
                                                                          pair: tuple[str, str]) -> None:
    lose_replay_window(pair[1])
    async with server_and_client(str(tmp_path), pair) as (server, client, base):
        credentials = server.credentials
        assert credentials is not None and credentials.oscore is not None
        [context] = list(credentials.oscore)
        assert not context.replay_window_initialized
        response = await client.get(f"{base}/hello")
        assert response.payload == b"hello :client1 (oscore)"
        assert context.replay_window_initialized


async def test_an_old_request_is_not_acted_on_after_the_window_was_lost(tmp_path: Any,
                                                                        pair: tuple[str, str]) -> None:
    """After the restart, a request that verifies gets the protected 4.01 challenge, never the resource."""
    client_dir, server_dir = pair
    lose_replay_window(server_dir)
    client_ctx = load_context_directory(client_dir, persist=False)
    async with Context(bind="127.0.0.1:0", site=build_site()[0],
                       credentials=accepting(str(tmp_path), server_dir)) as server:
        port = server.local_addresses[0][1]
        request = Message(Type.CON, Code.POST, 7, b"tk", payload=b"replayed")
        request.opt.uri_path = ("hello",)
        outer, binding = protect_request(client_ctx, request)
        reply = await exchange_raw(port, outer.encode())
        plain = unprotect_response(binding, reply)
        assert plain.code == Code.UNAUTHORIZED and plain.opt.echo is not None


# --- what a server answers unprotected (RFC 8613 §8.2) ---------------------------------------------------


async def exchange_raw(port: int, datagram: bytes, *, expect_reply: bool = True) -> Message:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect(("127.0.0.1", port))
        sock.send(datagram)
        tsock = trio.socket.from_stdlib_socket(sock)
        if not expect_reply:
            with trio.move_on_after(0.5):
                data = await tsock.recv(2048)
                return Message.decode(data)
            return Message(code=Code.EMPTY)
        with trio.fail_after(5):
            data = await tsock.recv(2048)
        return Message.decode(data)


@pytest.fixture
async def raw_server(tmp_path: Any, pair: tuple[str, str]) -> AsyncIterator[tuple[int, Any]]:
    client_dir, server_dir = pair
    async with Context(bind="127.0.0.1:0", site=build_site()[0],
                       credentials=accepting(str(tmp_path), server_dir)) as server:
        yield server.local_addresses[0][1], load_context_directory(client_dir, persist=False)


def protected_get(client_ctx: Any, mid: int, path: str = "hello") -> tuple[Message, Any]:
    request = Message(Type.CON, Code.GET, mid, mid.to_bytes(2, "big"))
    request.opt.uri_path = (path,)
    return protect_request(client_ctx, request)


async def test_a_replayed_request_gets_an_unprotected_4_01(raw_server: tuple[int, Any]) -> None:
    port, client_ctx = raw_server
    outer, binding = protected_get(client_ctx, 1)
    first = await exchange_raw(port, outer.encode())
    assert unprotect_response(binding, first).code == Code.CONTENT
    outer.mid = 2  # the same protected request again, as a new message (a replay, not a duplicate)
    second = await exchange_raw(port, outer.encode())
    assert second.code == Code.UNAUTHORIZED
    assert second.payload == b"Replay detected"
    assert OptionNumber.OSCORE not in second.opt and second.opt.max_age == 0


async def test_a_tampered_request_gets_4_00_and_costs_nothing(raw_server: tuple[int, Any]) -> None:
    port, client_ctx = raw_server
    outer, binding = protected_get(client_ctx, 3)
    data = bytearray(outer.encode())
    data[-1] ^= 0x01
    reply = await exchange_raw(port, bytes(data))
    assert (reply.code, reply.payload) == (Code.BAD_REQUEST, b"Decryption failed")
    # The failed request did not move the replay window: the genuine one still goes through.
    reply = await exchange_raw(port, outer.encode())
    assert unprotect_response(binding, reply).payload == b"hello :client1 (oscore)"


async def test_an_unknown_kid_and_a_malformed_option_are_refused(raw_server: tuple[int, Any],
                                                                tmp_path: Any) -> None:
    port, _ = raw_server
    stranger_dir, _ = make_pair(str(tmp_path), "stranger", client_id="77")
    outer, _ = protected_get(load_context_directory(stranger_dir, persist=False), 4)
    reply = await exchange_raw(port, outer.encode())
    assert (reply.code, reply.payload) == (Code.UNAUTHORIZED, b"Security context not found")
    bad = Message(Type.CON, Code.POST, 5, b"x")
    bad.opt.add(OptionNumber.OSCORE, b"\x07")  # flag bits announce a 7-byte Partial IV that is not there
    bad.payload = b"\x00" * 16
    reply = await exchange_raw(port, bad.encode())
    assert (reply.code, reply.payload) == (Code.BAD_OPTION, b"Failed to decode COSE")


async def test_a_non_request_that_fails_is_dropped_silently(raw_server: tuple[int, Any]) -> None:
    port, client_ctx = raw_server
    outer, _ = protected_get(client_ctx, 6)
    outer.type = Type.NON
    data = bytearray(outer.encode())
    data[-1] ^= 0x01
    reply = await exchange_raw(port, bytes(data), expect_reply=False)
    assert reply.code == Code.EMPTY  # nothing came back


async def test_a_server_without_credentials_refuses_the_critical_option(pair: tuple[str, str]) -> None:
    client_ctx = load_context_directory(pair[0], persist=False)
    async with Context(bind="127.0.0.1:0", site=build_site()[0]) as server:
        port = server.local_addresses[0][1]
        outer, _ = protected_get(client_ctx, 8)
        reply = await exchange_raw(port, outer.encode())
        assert reply.code == Code.BAD_OPTION
        outer.type = Type.NON
        outer.mid = 9
        reply = await exchange_raw(port, outer.encode())
        assert reply.type is Type.RST  # RFC 7252 §5.4.1: a NON with an unprocessed critical option


async def test_an_unprotected_request_to_a_resource_that_requires_security(tmp_path: Any,
                                                                           pair: tuple[str, str]) -> None:
    async with server_and_client(str(tmp_path), pair) as (_, client, base):
        assert (await client.get(f"{base}/private")).payload == b"secret"
        async with Context() as plain:
            response = await plain.get(f"{base}/private")
            assert response.code == Code.UNAUTHORIZED
            assert response.payload == b"needs authentication"


async def test_the_refusal_of_an_unauthenticated_request_stays_within_the_amplification_allowance(
        raw_server: tuple[int, Any]) -> None:
    """A tiny unprotected request to a resource that requires security: the 4.01 loses its diagnostic
    rather than sending an unverified source more than three times what it sent."""
    port, _ = raw_server
    small = Message(Type.CON, Code.GET, 11, b"")
    small.opt.uri_path = ("p",)
    reply = await exchange_raw(port, small.encode())
    assert (reply.code, reply.payload) == (Code.UNAUTHORIZED, b"")
    assert len(reply.encode()) <= 3 * len(small.encode())
    larger = Message(Type.CON, Code.GET, 12, b"12345678")
    larger.opt.uri_path = ("private",)
    reply = await exchange_raw(port, larger.encode())
    assert (reply.code, reply.payload) == (Code.UNAUTHORIZED, b"needs authentication")


async def test_another_identity_is_not_let_in(tmp_path: Any) -> None:
    first = make_pair(str(tmp_path), "a", client_id="01")
    second = make_pair(str(tmp_path), "b", client_id="02")
    creds = write_json(str(tmp_path / "s.json"), {
        ":client1": {"oscore": {"contextfile": first[1]}},
        ":client2": {"oscore": {"contextfile": second[1]}},
    })
    async with Context(bind="127.0.0.1:0", site=build_site()[0], credentials=creds) as server:
        base = server.local_uris[0]
        async with Context(credentials=using(str(tmp_path), base, second[0])) as client:
            assert (await client.get(f"{base}/hello")).payload == b"hello :client2 (oscore)"
            response = await client.get(f"{base}/private")
            assert (response.code, response.payload) == (Code.UNAUTHORIZED, b"not authorized")


# --- the client's side -----------------------------------------------------------------------------------


async def test_a_client_with_the_wrong_key_gets_a_clear_error(tmp_path: Any, pair: tuple[str, str]) -> None:
    wrong, _ = make_pair(str(tmp_path), "wrong", secret="ff" * 16)
    _, server_dir = pair
    async with Context(bind="127.0.0.1:0", site=build_site()[0],
                       credentials=accepting(str(tmp_path), server_dir)) as server:
        base = server.local_uris[0]
        async with Context(credentials=using(str(tmp_path), base, wrong)) as client:
            with pytest.raises(UnprotectedErrorResponse) as caught:
                await client.get(f"{base}/hello")
            assert caught.value.response.code == Code.BAD_REQUEST
            assert "Decryption failed" in str(caught.value)
            assert client.counters.live_tokens == 0


async def test_a_response_that_does_not_verify_fails_the_request(tmp_path: Any,
                                                                 pair: tuple[str, str]) -> None:
    """A peer answering with a protected response made with other keys: ResponseProtectionInvalid."""
    _, other_server = make_pair(str(tmp_path), "other", secret="ee" * 16)
    server_ctx = load_context_directory(other_server, persist=False)
    async with scripted_peer(str(tmp_path), pair[0]) as (peer, client, port):
        async with trio.open_nursery() as nursery:
            async def fake_server() -> None:
                from coapio.protocol.oscore.protection import ResponseProtector

                data, address = await peer.recvfrom(2048)
                request = Message.decode(data)
                protector = ResponseProtector(server_ctx, b"\x01", b"\x00", False)
                reply = protector.protect(Message(Type.ACK, Code.CONTENT, payload=b"forged"))
                reply.mid, reply.token = request.mid, request.token
                await peer.sendto(reply.encode(), address)

            nursery.start_soon(fake_server)
            with pytest.raises(ResponseProtectionInvalid):
                await client.get(f"coap://127.0.0.1:{port}/hello")


async def test_a_protected_response_to_a_plain_request_is_rejected() -> None:
    async with scripted_peer(None, None) as (peer, client, port):
        async with trio.open_nursery() as nursery:
            async def fake_server() -> None:
                data, address = await peer.recvfrom(2048)
                request = Message.decode(data)
                reply = Message(Type.ACK, Code.CHANGED, request.mid, request.token, payload=b"\x00" * 9)
                reply.opt.add(OptionNumber.OSCORE, b"")
                await peer.sendto(reply.encode(), address)

            nursery.start_soon(fake_server)
            with pytest.raises(ResponseRejected):
                await client.get(f"coap://127.0.0.1:{port}/hello")


# --- credentials and their lifecycle ---------------------------------------------------------------------


async def test_sequence_numbers_survive_successive_contexts(tmp_path: Any, pair: tuple[str, str]) -> None:
    client_dir, server_dir = pair
    async with Context(bind="127.0.0.1:0", site=build_site()[0],
                       credentials=accepting(str(tmp_path), server_dir)) as server:
        base = server.local_uris[0]
        client_creds = using(str(tmp_path), base, client_dir)
        positions = []
        for _ in range(3):
            async with Context(credentials=client_creds) as client:
                assert (await client.get(f"{base}/hello")).code == Code.CONTENT
            positions.append(next_to_send(client_dir))
        assert positions == [1, 2, 3]  # recorded exactly on a clean exit, and never reused


def test_a_context_directory_is_used_by_one_owner_at_a_time(tmp_path: Any, pair: tuple[str, str]) -> None:
    client_dir, _ = pair
    creds = write_json(str(tmp_path / "c.json"), {"coap://*": {"oscore": {"contextfile": client_dir}}})
    with Credentials.load(creds):
        with pytest.raises(ContextUnavailable):
            Context(credentials=creds)
    Context(credentials=creds).credentials.close()  # type: ignore[union-attr]  # released: usable again


def test_a_uri_the_credentials_do_not_name_goes_unprotected(tmp_path: Any, pair: tuple[str, str]) -> None:
    client_dir, _ = pair
    creds = {
        "coap://device/*": {"oscore": {"contextfile": client_dir}},
        "coap://device/public/*": {"unprotected": True},
        "coap+tcp://device/*": ":dev",
        ":dev": {"oscore": {"contextfile": client_dir}},
    }
    with Credentials.from_dict(creds, base="/") as credentials:
        assert credentials.oscore_for("coap://device/a") is not None
        assert credentials.oscore_for("coap+tcp://device/a") is credentials.oscore_for("coap://device/a")
        assert credentials.oscore_for("coap://device/public/x") is None
        assert credentials.oscore_for("coap://elsewhere/a") is None


def test_credentials_without_oscore_entries_have_no_oscore() -> None:
    assert Credentials.from_dict({"coap://x/*": {"unprotected": True}}).oscore is None


def _cli(module: str, *args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", f"coapio.cli.{module}", *args]


async def test_the_cli_tools_talk_oscore(tmp_path: Any, pair: tuple[str, str]) -> None:
    client_dir, server_dir = pair
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server_creds = write_json(str(tmp_path / "s.json"), {":client1": {"oscore": {"contextfile": server_dir}}})
    client_creds = write_json(str(tmp_path / "c.json"),
                              {f"coap://127.0.0.1:{port}/*": {"oscore": {"contextfile": client_dir}}})
    env = {**os.environ, "PYTHONPATH": ROOT}
    async with trio.open_nursery() as nursery:
        server = await nursery.start(_run_server, _cli("server", "--bind", f"127.0.0.1:{port}",
                                                       "--credentials", server_creds), env)
        try:
            result = await trio.run_process(
                _cli("client", "-v", "--credentials", client_creds, f"coap://127.0.0.1:{port}/whoami"),
                capture_stdout=True, capture_stderr=True, env=env, check=False)
            assert result.returncode == 0, result.stderr
            assert b"authenticated as :client1 (oscore)" in result.stdout
            assert b"authenticated as" in result.stderr  # -v
            result = await trio.run_process(
                _cli("client", "--credentials", client_creds, f"coap://127.0.0.1:{port}/large"),
                capture_stdout=True, capture_stderr=True, env=env, check=False)
            assert result.returncode == 0 and len(result.stdout) == 8192
        finally:
            server.terminate()
    bad = await trio.run_process(_cli("client", "--credentials", str(tmp_path / "missing.json"),
                                      "coap://127.0.0.1/"),
                                 capture_stdout=True, capture_stderr=True, env=env, check=False)
    assert bad.returncode == 2
    assert bad.stderr.decode().count("\n") == 1 and "--credentials" in bad.stderr.decode()


async def _run_server(command: list[str], env: dict[str, str],
                      task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    process = await trio.lowlevel.open_process(command, stderr=-1, env=env)
    assert process.stderr is not None
    buffer = b""
    with trio.fail_after(20):
        while b"listening" not in buffer:
            chunk = await process.stderr.receive_some()
            assert chunk, buffer
            buffer += chunk
    task_status.started(process)
    await process.wait()



# --- outer block-wise (RFC 8613 §4.1.3.4.2): what a fragmenting proxy sends -----------------------------


async def test_a_protected_request_in_outer_blocks_is_reassembled_then_unprotected(
        raw_server: tuple[int, Any]) -> None:
    port, client_ctx = raw_server
    request = Message(Type.CON, Code.POST, 0, b"ob", payload=BODY[:3000])
    request.opt.uri_path = ("hello",)
    outer, binding = protect_request(client_ctx, request)
    whole = outer.payload
    size = 1024
    pieces = [whole[i:i + size] for i in range(0, len(whole), size)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect(("127.0.0.1", port))
        tsock = trio.socket.from_stdlib_socket(sock)
        for num, piece in enumerate(pieces):
            fragment = outer.copy(mid=100 + num, payload=piece)
            fragment.opt.block1 = BlockValue(num, num < len(pieces) - 1, 6)
            await tsock.send(fragment.encode())
            with trio.fail_after(5):
                reply = Message.decode(await tsock.recv(4096))
            if num < len(pieces) - 1:
                assert reply.code == Code.CONTINUE and OptionNumber.OSCORE not in reply.opt
    assert reply.opt.block1 == BlockValue(len(pieces) - 1, False, 6)  # the outer transfer acknowledged
    reply.opt.block1 = None
    plain = unprotect_response(binding, reply)
    # The echoed body is larger than a block: its first inner block, as the server segments plaintext.
    assert (plain.code, plain.payload) == (Code.CHANGED, BODY[:1024])
    assert plain.opt.block2 == BlockValue(0, True, 6)


async def test_a_protected_response_in_outer_blocks_is_fetched_and_reassembled(
        tmp_path: Any, pair: tuple[str, str]) -> None:
    client_dir, server_dir = pair
    server_ctx = load_context_directory(server_dir, persist=False)
    async with scripted_peer(str(tmp_path), client_dir) as (peer, client, port):
        async with trio.open_nursery() as nursery:
            async def fragmenting_proxy() -> None:
                from coapio.protocol.oscore import unprotect_request

                data, address = await peer.recvfrom(4096)
                request = Message.decode(data)
                _, protector = unprotect_request(server_ctx, request)
                protected = protector.protect(Message(Type.ACK, Code.CONTENT, payload=BODY[:2500]))
                whole = protected.payload
                num = 0
                while True:
                    piece = whole[num * 512:(num + 1) * 512]
                    more = (num + 1) * 512 < len(whole)
                    reply = protected.copy(mid=request.mid, token=request.token, payload=piece)
                    reply.opt.block2 = BlockValue(num, more, 5)
                    await peer.sendto(reply.encode(), address)
                    if not more:
                        return
                    data, address = await peer.recvfrom(4096)
                    request = Message.decode(data)
                    assert request.opt.block2 == BlockValue(num + 1, False, 5)
                    num += 1

            nursery.start_soon(fragmenting_proxy)
            response = await client.get(f"coap://127.0.0.1:{port}/hello")
            assert response.payload == BODY[:2500]
            assert response.security is not None


async def test_a_flood_of_bad_protected_requests_disturbs_no_genuine_client(tmp_path: Any,
                                                                            pair: tuple[str, str]) -> None:
    """Random OSCORE options and ciphertexts, known and unknown kids, CON and NON, while a real client is
    served: every genuine request succeeds and the server holds nothing for the junk afterwards."""
    import random

    rng = random.Random(1234)
    async with server_and_client(str(tmp_path), pair) as (server, client, base):
        port = server.local_addresses[0][1]
        junk = []
        for i in range(600):
            bad = Message(rng.choice([Type.CON, Type.NON]), Code.POST, i, rng.randbytes(rng.randint(0, 8)))
            kid = rng.choice([b"", b"\x01", b"\x77", rng.randbytes(3)])
            piv = rng.randbytes(rng.randint(0, 5))
            flags = len(piv) | (0x08 if kid or rng.random() < 0.5 else 0)
            value = bytes([flags]) + piv + kid if rng.random() < 0.8 else rng.randbytes(rng.randint(0, 12))
            bad.opt.add(OptionNumber.OSCORE, value)
            bad.payload = rng.randbytes(rng.randint(0, 64))
            junk.append(bad.encode())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.connect(("127.0.0.1", port))
            async with trio.open_nursery() as nursery:
                async def flood() -> None:
                    for datagram in junk:
                        with suppress(BlockingIOError):
                            sock.send(datagram)
                        await trio.lowlevel.checkpoint()

                nursery.start_soon(flood)
                for i in range(20):
                    response = await client.post(f"{base}/hello", str(i).encode())
                    assert response.payload == str(i).encode()
        assert server.counters.live_handlers == 0
        assert server.counters.live_tokens == 0


# --- one credentials file for OSCORE and DTLS -------------------------------------------------------------


async def test_one_credentials_file_gives_oscore_inside_dtls(tmp_path: Any, pair: tuple[str, str]) -> None:
    """The server's file accepts a DTLS PSK identity and an OSCORE context; the client's file names both
    for the server's coaps:// URIs: the request travels OSCORE-protected inside the DTLS session, and the
    resource sees the OSCORE identity (the end-to-end one)."""
    pytest.importorskip("OpenSSL")
    client_dir, server_dir = pair
    dtls = {"dtls": {"psk": {"ascii": "secret-key"}, "client-identity": {"ascii": "client1"}}}
    server_creds = write_json(str(tmp_path / "s.json"), {
        ":client1": {"oscore": {"contextfile": server_dir}},
        ":psk1": dtls,
    })
    with Credentials.load(server_creds) as loaded:
        assert loaded.oscore is not None and loaded.dtls is not None and loaded.dtls.has_psk
    async with Context(bind="coaps://127.0.0.1:0", site=build_site()[0], credentials=server_creds) as server:
        base = next(uri for uri in server.local_uris if uri.startswith("coaps://"))
        client_creds = write_json(str(tmp_path / "c.json"), {
            f"{base}/*": {"oscore": {"contextfile": client_dir}},
            "coaps://127.0.0.1:*": ":psk",
            ":psk": dtls,
        })
        async with Context(credentials=client_creds) as client:
            response = await client.get(f"{base}/hello")
            assert response.payload == b"hello :client1 (oscore)"
            assert response.security is not None and response.security.method == "oscore"
