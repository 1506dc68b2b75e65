"""coapio's OSCORE (RFC 8613) against aiocoap's, end to end: real sockets on 127.0.0.1, both directions.

The sans-IO tests (tests/test_interop_aiocoap_oscore.py) prove the two protect and unprotect each other's
messages; these prove the runtimes do: GET, POST, Observe and 8 KiB block-wise bodies each way; several
client *processes* in a row on one context directory against one long-running server (the sequence
numbers persist); a server killed with SIGKILL and restarted (Appendix B.1.2, the Echo round trip); and
the refusals of §8.2 (a replayed, a tampered, an unknown-kid and an unprotected request). Also: a client
process killed mid-way never lets the next one reuse a sequence number, nor a killed server its own; a
retransmission is deduplicated, not taken for a replay; a clean restart keeps the replay window.

aiocoap 0.4.17 facts these tests rely on: its client answers a server's protected 4.01 + Echo by
repeating the request (B.1.2), and its server challenges that way after a crash; its client raises
``NotAProtectedMessage`` for any unprotected answer; it cannot cancel an OSCORE observation on the wire.

In-process parts run coapio and aiocoap in one asyncio event loop (coapio through anyio, as in
tests/test_interop_aiocoap_runtime.py); the processes are ``coapio-client``, ``coapio-server`` and
tests/aiocoap_oscore_peer.py (aiocoap's client, and its server behind ``OscoreSiteWrapper``). A
:class:`Relay` between a client and a server records every datagram: it counts the requests a client
sent (the B.1.2 repetition is a second one), captures one to replay, and flips a byte of one.

Context directories are in aiocoap's format; each client has its own (Sender ID), and the server
directories of a test are listed in one credentials file (``:client1`` …).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
import sniffio
from conftest import require_interop

from coapio import Code, Context, Message, ObservableResource, Resource, Site, TransportTuning, Type
from coapio.protocol.oscore import OscoreOption, UnprotectedErrorResponse

aiocoap = require_interop("aiocoap")
aoscore = require_interop("aiocoap.oscore")
require_interop("aiocoap.oscore_sitewrapper")
import aiocoap_oscore_peer as peer  # noqa: E402 - imports aiocoap, so only once it is known to be there

pytestmark = pytest.mark.interop

SECRET = "0102030405060708090a0b0c0d0e0f10"
SALT = "9e7ca92223786340"
HERE = Path(__file__).resolve().parent
PEER = str(HERE / "aiocoap_oscore_peer.py")
_TIMEOUT = 30.0  # per test body; each takes a few seconds at most


def run_on_asyncio(body: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        assert sniffio.current_async_library() == "asyncio"
        with anyio.fail_after(_TIMEOUT):
            await body()

    anyio.run(main, backend="asyncio")


async def wait_until(predicate: Callable[[], bool], what: str, seconds: float = 5.0) -> None:
    """Poll ``predicate`` until it holds (never a fixed sleep); fail after ``seconds``."""
    with anyio.move_on_after(seconds):
        while not predicate():  # noqa: ASYNC110 - nothing to wait on but the state itself
            await anyio.sleep(0.01)
    assert predicate(), f"timed out waiting for {what}"


# --- context directories and credentials files ------------------------------------------------------


def make_pair(base: Path, client_id: str, *, secret: str = SECRET) -> tuple[Path, Path]:
    """A client directory (Sender ID ``client_id``) and the server's directory for that client."""
    dirs = []
    for role, sender, recipient in (("client", client_id, ""), ("server", "", client_id)):
        directory = base / f"{role}-{client_id}"
        directory.mkdir()
        (directory / "settings.json").write_text(json.dumps(
            {"sender-id_hex": sender, "recipient-id_hex": recipient, "salt_hex": SALT}))
        (directory / "secret.json").write_text(json.dumps({"secret_hex": secret}))
        dirs.append(directory)
    return dirs[0], dirs[1]


def client_credentials(path: Path, port: int, directory: Path) -> Path:
    """A client's credentials file: everything on 127.0.0.1:``port`` is protected with ``directory``,
    named relative to the file (as coapio reads it; the processes run elsewhere)."""
    relative = os.path.relpath(directory, path.parent)
    path.write_text(json.dumps({f"coap://127.0.0.1:{port}/*": {"oscore": {"contextfile": f"{relative}/"}}}))
    return path


def aiocoap_client_credentials(path: Path, port: int, directory: Path) -> Path:
    """The same for aiocoap's client (``basedir``, aiocoap's newer name for ``contextfile``)."""
    path.write_text(json.dumps({f"coap://127.0.0.1:{port}/*": {"oscore": {"basedir": f"{directory}/"}}}))
    return path


def server_credentials(path: Path, **directories: Path) -> Path:
    """A server's credentials file accepting each ``label=directory`` (as ``:label``)."""
    path.write_text(json.dumps({f":{label}": {"oscore": {"basedir": f"{directory}/"}}
                                for label, directory in directories.items()}))
    return path


def sequence(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "sequence.json").read_text())  # type: ignore[no-any-return]


def outer(datagram: bytes) -> Message:
    return Message.decode(datagram)


def partial_iv(datagram: bytes) -> int | None:
    """The sequence number a protected request was sent with (None: not a protected request)."""
    option = outer(datagram).opt.oscore
    return None if option is None else OscoreOption.decode(option).sequence_number


# --- a UDP relay ---------------------------------------------------------------------------------------


class Relay:
    """Forwards a client's datagrams to ``target`` and the answers back; records both directions.

    ``mangle`` (if set) rewrites the next client datagram, once. ``target`` may change (a restarted
    server on another port).
    """

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.requests: list[bytes] = []
        self.responses: list[bytes] = []
        self.mangle: Callable[[bytes], bytes] | None = None
        self.drop_responses = 0  # how many of the next server datagrams to lose
        self.port = 0
        self._sock: anyio.abc.UDPSocket | None = None

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with await anyio.create_udp_socket(local_host="127.0.0.1") as sock:
            self.port = sock.extra(anyio.abc.SocketAttribute.local_port)
            self._sock = sock
            task_status.started()
            client: tuple[str, int] | None = None
            async for data, (host, port) in sock:
                if (host, port) == self.target:
                    self.responses.append(data)
                    if self.drop_responses:
                        self.drop_responses -= 1
                        continue
                    if client is not None:
                        await sock.sendto(data, *client)
                    continue
                client = (host, port)
                if self.mangle is not None:
                    data, self.mangle = self.mangle(data), None
                self.requests.append(data)
                await sock.sendto(data, *self.target)

    async def resend(self, datagram: bytes) -> None:
        """Send ``datagram`` to the server again from the relay's address: a client's retransmission."""
        assert self._sock is not None
        await self._sock.sendto(datagram, *self.target)

    def sequence_numbers(self, since: int = 0) -> set[int | None]:
        """The distinct sequence numbers of the requests relayed since ``since`` (retransmissions: one)."""
        return {partial_iv(d) for d in self.requests[since:]}


@asynccontextmanager
async def relay_to(port: int) -> AsyncIterator[Relay]:
    relay = Relay(port)
    async with anyio.create_task_group() as tg:
        await tg.start(relay.run)
        yield relay
        tg.cancel_scope.cancel()


async def raw_exchange(port: int, datagram: bytes) -> Message:
    """Send ``datagram`` from a fresh socket (so no message-ID deduplication applies) and decode the
    answer."""
    async with await anyio.create_connected_udp_socket("127.0.0.1", port, local_host="127.0.0.1") as sock:
        await sock.send(datagram)
        with anyio.fail_after(5):
            return outer(await sock.receive())


# --- processes --------------------------------------------------------------------------------------------


async def _read_line(stream: anyio.abc.ByteReceiveStream) -> str:
    data = b""
    with anyio.fail_after(10):
        while b"\n" not in data:
            data += await stream.receive()
    return data.decode()


@asynccontextmanager
async def process(command: list[str]) -> AsyncIterator[anyio.abc.Process]:
    """A long-running process, killed (if it still runs) when the block ends."""
    proc = await anyio.open_process(command, stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await proc.wait()
        await proc.aclose()


@asynccontextmanager
async def coapio_server_process(credentials: Path,
                                port: int = 0) -> AsyncIterator[tuple[anyio.abc.Process, int]]:
    """``coapio-server --credentials``; yields the process and the port it announced."""
    command = [sys.executable, "-m", "coapio.cli.server", "--credentials", str(credentials),
               "--bind", f"127.0.0.1:{port}"]
    async with process(command) as proc:
        assert proc.stderr is not None
        line = await _read_line(proc.stderr)
        assert "listening on 127.0.0.1:" in line, line
        yield proc, int(line.rsplit(":", 1)[1])


@asynccontextmanager
async def aiocoap_server_process(credentials: Path) -> AsyncIterator[tuple[anyio.abc.Process, int]]:
    async with process([sys.executable, PEER, "server", str(credentials)]) as proc:
        assert proc.stdout is not None
        line = await _read_line(proc.stdout)
        assert line.startswith("port "), line
        yield proc, int(line.split()[1])


async def kill(proc: anyio.abc.Process) -> None:
    proc.send_signal(signal.SIGKILL)
    with anyio.fail_after(5):
        await proc.wait()


async def coapio_client(credentials: Path, uri: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    """One ``coapio-client --credentials`` process."""
    with anyio.fail_after(20):
        return await anyio.run_process(
            [sys.executable, "-m", "coapio.cli.client", "--credentials", str(credentials), *args, uri],
            check=False)


async def aiocoap_client_process(credentials: Path, method: str, uri: str,
                                 payload: bytes = b"") -> dict[str, Any]:
    """One aiocoap client process (tests/aiocoap_oscore_peer.py); its JSON result."""
    with anyio.fail_after(20):
        done = await anyio.run_process(
            [sys.executable, PEER, "client", str(credentials), method, uri, payload.hex()], check=False)
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)  # type: ignore[no-any-return]


# --- aiocoap in this process ------------------------------------------------------------------------------


def _release(credentials: Any) -> None:
    """Store and unlock aiocoap's contexts now, not whenever they are garbage-collected."""
    for item in list(credentials.values()):
        if getattr(item, "lockfile", None) is not None:
            item._destroy()


@asynccontextmanager
async def aiocoap_server(credentials: Path) -> AsyncIterator[tuple[int, peer.Counter]]:
    """aiocoap's OSCORE server (tests/aiocoap_oscore_peer.py's site) in this event loop."""
    creds = peer.load_credentials(str(credentials))
    context, port, counter = await peer.start_server(creds)
    try:
        yield port, counter
    finally:
        await context.shutdown()
        _release(creds)


@asynccontextmanager
async def aiocoap_client(port: int | None = None, directory: Path | None = None) -> AsyncIterator[Any]:
    """aiocoap's client; with ``directory`` its OSCORE transport protects requests to 127.0.0.1:``port``."""
    client = await aiocoap.Context.create_client_context(transports=["oscore", "udp6"])
    if directory is not None:
        client.client_credentials.load_from_dict(
            {f"coap://127.0.0.1:{port}/*": {"oscore": {"basedir": f"{directory}/"}}})
    try:
        yield client
    finally:
        await client.shutdown()
        _release(client.client_credentials)


async def arequest(client: Any, code: Any, uri: str, **kwargs: Any) -> Any:
    with anyio.fail_after(10):
        return await client.request(aiocoap.Message(code=code, uri=uri, **kwargs)).response


# --- coapio's server site ---------------------------------------------------------------------------------


class Hello(Resource):
    def __init__(self) -> None:
        super().__init__()
        self.served = 0

    def render_get(self, request: Message) -> Message:
        self.served += 1
        return Message(payload=f"hello {request.security}".encode())


class Echo(Resource):
    def render_post(self, request: Message) -> Message:
        return Message(code=Code.CHANGED, payload=request.payload)


class Large(Resource):
    def render_get(self, request: Message) -> Message:
        return Message(payload=peer.LARGE)


class Secret(Resource):
    requires_security = {":client1"}

    def render_get(self, request: Message) -> Message:
        return Message(payload=b"for :client1 only")


class Counter(ObservableResource):
    """Notifies every 50 ms while observed; counts the observation tasks running and ended."""

    def __init__(self) -> None:
        super().__init__()
        self.value = 0
        self.running = 0
        self.ended = 0

    def render_get(self, request: Message) -> Message:
        return Message(payload=b"%d" % self.value)

    async def observation(self, request: Message) -> None:  # type: ignore[override]
        self.running += 1
        try:
            while True:
                await anyio.sleep(0.05)
                self.value += 1
                self.notify()
        finally:
            self.running -= 1
            self.ended += 1


class Served:
    def __init__(self) -> None:
        self.site = Site()
        self.hello, self.counter = Hello(), Counter()
        self.site.add("hello", self.hello)
        self.site.add("echo", Echo())
        self.site.add("large", Large())
        self.site.add("secret", Secret())
        self.site.add("counter", self.counter)


@asynccontextmanager
async def coapio_server(credentials: Path) -> AsyncIterator[tuple[Context, int, Served]]:
    served = Served()
    async with Context(bind=[("127.0.0.1", 0)], site=served.site, credentials=str(credentials)) as ctx:
        yield ctx, ctx.transports[0].local[1], served


# =====================================================================================================
# 1. GET, POST, Observe and 8 KiB bodies, both ways
# =====================================================================================================


def test_coapio_client_aiocoap_server_get_post_observe_blockwise(tmp_path: Path) -> None:
    client_dir, server_dir = make_pair(tmp_path, "01")

    async def body() -> None:
        async with aiocoap_server(server_credentials(tmp_path / "server.json", client1=server_dir)) as (
                port, counter):
            base = f"coap://127.0.0.1:{port}"
            creds = client_credentials(tmp_path / "client.json", port, client_dir)
            async with Context(bind=[("127.0.0.1", 0)], credentials=str(creds)) as ctx:
                hello = await ctx.get(base + "/hello")
                assert hello.code is Code.CONTENT and hello.payload == b"hello from aiocoap"
                assert hello.security is not None and hello.security.method == "oscore"
                assert hello.security.identity == f"coap://127.0.0.1:{port}/*"  # the credentials' key
                assert (await ctx.get(base + "/whoami")).payload == b"[':client1']"

                posted = await ctx.post(base + "/echo", b"ping \x00\xff")
                assert posted.code is Code.CHANGED and posted.payload == b"ping \x00\xff"

                large = await ctx.get(base + "/large")
                assert large.code is Code.CONTENT and large.payload == peer.LARGE
                body8k = os.urandom(8192)
                echoed = await ctx.post(base + "/echo", body8k)
                assert echoed.code is Code.CHANGED and echoed.payload == body8k

                values = []
                async with ctx.observe(base + "/counter") as obs:
                    async for note in obs:
                        assert note.code is Code.CONTENT and note.security is not None
                        values.append(int(note.payload))
                        if len(values) == 4:
                            break
                    assert counter.observers == 1
                assert values == sorted(set(values)), values  # the first response and 3 notifications
                await wait_until(lambda: counter.observers == 0, "aiocoap to drop the observer")
            assert sequence(client_dir)["next-to-send"] > 0

    run_on_asyncio(body)


def test_aiocoap_client_coapio_server_get_post_observe_blockwise(tmp_path: Path) -> None:
    client_dir, server_dir = make_pair(tmp_path, "01")

    async def body() -> None:
        async with coapio_server(server_credentials(tmp_path / "server.json", client1=server_dir)) as (
                _ctx, port, served):
            async with aiocoap_client(port, client_dir) as client:
                base = f"coap://127.0.0.1:{port}"
                hello = await arequest(client, aiocoap.GET, base + "/hello")
                assert hello.code == aiocoap.CONTENT and hello.payload == b"hello :client1 (oscore)"

                posted = await arequest(client, aiocoap.POST, base + "/echo", payload=b"ping \x00\xff")
                assert posted.code == aiocoap.CHANGED and posted.payload == b"ping \x00\xff"

                large = await arequest(client, aiocoap.GET, base + "/large")
                assert large.code == aiocoap.CONTENT and large.payload == peer.LARGE
                body8k = os.urandom(8192)
                echoed = await arequest(client, aiocoap.POST, base + "/echo", payload=body8k)
                assert echoed.code == aiocoap.CHANGED and echoed.payload == body8k

                secret = await arequest(client, aiocoap.GET, base + "/secret")
                assert secret.code == aiocoap.CONTENT and secret.payload == b"for :client1 only"

                request = client.request(aiocoap.Message(code=aiocoap.GET, uri=base + "/counter", observe=0))
                with anyio.fail_after(10):
                    first = await request.response
                    assert first.code == aiocoap.CONTENT and first.opt.observe is not None
                    values = [int(first.payload)]
                    async for note in request.observation:
                        values.append(int(note.payload))
                        if len(values) == 4:
                            break
                assert values == sorted(set(values)), values
                assert served.counter.running == 1 and served.counter.observer_count == 1
                # aiocoap 0.4.17 cannot cancel an OSCORE observation on the wire (transports/oscore.py: "no
                # way yet to cancel observations exists"): cancel() stops the notifications reaching us, and
                # only closing the client's socket makes coapio's next notification fail (ICMP port
                # unreachable), which ends the observation and cancels its producer task.
                request.observation.cancel()
            await wait_until(lambda: served.counter.running == 0 and served.counter.observer_count == 0,
                             "coapio's observation to end")
            assert served.counter.ended == 1

    run_on_asyncio(body)


def test_coapio_client_retransmits_the_same_protected_request(tmp_path: Path) -> None:
    """A lost response: coapio's CON retransmission is the same protected datagram (same sequence
    number, not re-protected), and aiocoap's deduplication answers it instead of seeing a replay."""
    client_dir, server_dir = make_pair(tmp_path, "01")

    async def body() -> None:
        async with aiocoap_server(server_credentials(tmp_path / "server.json", client1=server_dir)) as (
                port, _), relay_to(port) as relay:
            creds = client_credentials(tmp_path / "client.json", relay.port, client_dir)
            async with Context(bind=[("127.0.0.1", 0)], credentials=str(creds),
                               tuning=TransportTuning(ack_timeout=0.2)) as ctx:
                relay.drop_responses = 1
                hello = await ctx.get(f"coap://127.0.0.1:{relay.port}/hello")
                assert hello.code is Code.CONTENT and hello.payload == b"hello from aiocoap"
                assert len(relay.requests) == 2 and relay.requests[0] == relay.requests[1]
                assert len(relay.responses) == 2 and outer(relay.responses[1]).opt.oscore is not None

    run_on_asyncio(body)


# =====================================================================================================
# 2. Successive client processes on one context directory: the sequence numbers persist
# =====================================================================================================


def test_successive_coapio_client_processes_against_aiocoap_server(tmp_path: Path) -> None:
    client_dir, server_dir = make_pair(tmp_path, "01")

    async def body() -> None:
        async with aiocoap_server(server_credentials(tmp_path / "server.json", client1=server_dir)) as (
                port, _):
            creds = client_credentials(tmp_path / "client.json", port, client_dir)
            base = f"coap://127.0.0.1:{port}"
            positions = []
            for n in range(4):
                if n % 2:
                    done = await coapio_client(creds, base + "/echo", "-m", "post", "--payload", f"run {n}")
                    expected = f"run {n}".encode()
                else:
                    done = await coapio_client(creds, base + "/whoami")
                    expected = b"[':client1']"
                assert done.returncode == 0, done.stderr.decode()
                assert done.stdout.rstrip(b"\n") == expected
                positions.append(sequence(client_dir)["next-to-send"])
            assert positions == sorted(set(positions)) and positions[0] >= 1, positions

            # a client process killed while it observes (no clean exit) reserved numbers ahead on disk:
            # the next process starts above them, and aiocoap (which would refuse a replay) accepts it
            command = [sys.executable, "-m", "coapio.cli.client", "--credentials", str(creds), "--observe",
                       base + "/counter"]
            async with process(command) as observer:
                assert observer.stdout is not None
                assert (await _read_line(observer.stdout)).strip().isdigit()
                await kill(observer)
            assert sequence(client_dir)["received"] == "unknown"  # what a crash leaves
            killed_at = sequence(client_dir)["next-to-send"]
            done = await coapio_client(creds, base + "/whoami")
            assert done.returncode == 0 and done.stdout == b"[':client1']", done
            assert sequence(client_dir)["next-to-send"] > killed_at

            # a process that used many numbers (past the first reservations) and was killed: what is on
            # disk is above every number it used, so the next process reuses none (aiocoap's window of
            # 32 would see a reuse among the last ones as a replay)
            start = sequence(client_dir)["next-to-send"]
            async with process([sys.executable, "-c", BURST, str(creds), base + "/hello", "40"]) as burst:
                assert burst.stdout is not None
                assert await _read_line(burst.stdout) == "sent 40\n"
                await kill(burst)
            assert sequence(client_dir)["next-to-send"] >= start + 40
            done = await coapio_client(creds, base + "/hello")
            assert done.returncode == 0 and done.stdout == b"hello from aiocoap", done

    run_on_asyncio(body)


#: A coapio client process that sends N protected GETs one after the other, says so, and waits to be killed.
BURST = """
import sys, anyio, coapio
async def main(creds, uri, n):
    async with coapio.Context(bind=[("127.0.0.1", 0)], credentials=creds) as ctx:
        for _ in range(n):
            assert (await ctx.get(uri)).code is coapio.Code.CONTENT
        print("sent", n, flush=True)
        await anyio.sleep_forever()
anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
"""


def test_successive_aiocoap_client_processes_against_coapio_server(tmp_path: Path) -> None:
    client_dir, server_dir = make_pair(tmp_path, "01")

    async def body() -> None:
        server_creds = server_credentials(tmp_path / "server.json", client1=server_dir)
        async with coapio_server_process(server_creds) as (proc, port):
            creds = aiocoap_client_credentials(tmp_path / "aclient.json", port, client_dir)
            base = f"coap://127.0.0.1:{port}"
            positions = []
            for _ in range(3):
                got = await aiocoap_client_process(creds, "GET", base + "/whoami")
                assert got.get("code") == "2.05", got
                assert bytes.fromhex(got["payload_hex"]).endswith(b"\nauthenticated as :client1 (oscore)")
                positions.append(sequence(client_dir)["next-to-send"])
            echoed = await aiocoap_client_process(creds, "POST", base + "/echo", b"x" * 8192)
            assert echoed == {"code": "2.04", "payload_hex": (b"x" * 8192).hex()}
            positions.append(sequence(client_dir)["next-to-send"])
            assert positions == sorted(set(positions)), positions
            proc.terminate()  # a clean exit records the replay window
            with anyio.fail_after(10):
                assert await proc.wait() == 0
        assert isinstance(sequence(server_dir)["received"], dict)

    run_on_asyncio(body)


# =====================================================================================================
# 3. A server killed and restarted: the replay window is re-established with Echo (Appendix B.1.2)
# =====================================================================================================


def test_coapio_server_restart_after_sigkill(tmp_path: Path) -> None:
    client_dir, server_dir = make_pair(tmp_path, "01")
    server_creds = server_credentials(tmp_path / "server.json", client1=server_dir)

    server_pivs: list[int | None] = []  # the server's own sequence numbers (its 4.01 Echo challenges)

    async def body() -> None:
        async with coapio_server_process(server_creds) as (proc, port), relay_to(port) as relay:
            acreds = tmp_path / "aclient.json"
            aiocoap_client_credentials(acreds, relay.port, client_dir)
            uri = f"coap://127.0.0.1:{relay.port}/whoami"
            assert (await aiocoap_client_process(acreds, "GET", uri)).get("code") == "2.05"
            assert len(relay.sequence_numbers()) == 1
            assert [partial_iv(r) for r in relay.responses] == [None]  # the request's nonce, reused
            before_kill = relay.requests[-1]
            await kill(proc)
        assert sequence(server_dir)["received"] == "unknown"

        # aiocoap's client: the first request is answered with a protected 4.01 + Echo, it repeats it
        async with coapio_server_process(server_creds, port) as (proc, _), relay_to(port) as relay:
            aiocoap_client_credentials(acreds, relay.port, client_dir)
            uri = f"coap://127.0.0.1:{relay.port}/whoami"
            got = await aiocoap_client_process(acreds, "GET", uri)
            assert got.get("code") == "2.05", got
            assert bytes.fromhex(got["payload_hex"]).endswith(b"authenticated as :client1 (oscore)")
            assert len(relay.sequence_numbers()) == 2  # the request and its repetition with Echo
            assert len(relay.responses) >= 2
            # neither the request the server did not act on (answered with Echo) nor one from before the
            # crash is accepted now: the window restarted at the repetition, everything below is "seen"
            for old in (relay.requests[0], before_kill):
                replayed = await raw_exchange(port, old)
                assert replayed.code is Code.UNAUTHORIZED and replayed.payload == b"Replay detected"
                assert replayed.opt.oscore is None
            since = len(relay.requests)
            assert (await aiocoap_client_process(acreds, "POST", uri.replace("whoami", "echo"), b"again")
                    ) == {"code": "2.04", "payload_hex": b"again".hex()}
            assert len(relay.sequence_numbers(since)) == 1  # the window is known again: no more Echo
            server_pivs.extend(p for p in map(partial_iv, relay.responses) if p is not None)
            await kill(proc)

        # coapio's client does the same repetition
        async with coapio_server_process(server_creds, port) as (proc, _), relay_to(port) as relay:
            creds = client_credentials(tmp_path / "client.json", relay.port, client_dir)
            done = await coapio_client(creds, f"coap://127.0.0.1:{relay.port}/whoami")
            assert done.returncode == 0, done.stderr.decode()
            assert done.stdout.endswith(b"authenticated as :client1 (oscore)")
            assert len(relay.sequence_numbers()) == 2
            server_pivs.extend(p for p in map(partial_iv, relay.responses) if p is not None)
        # a server killed twice never reuses a sequence number of its own (B.1.1): no AES-CCM nonce reuse
        assert len(server_pivs) == 2 and server_pivs[0] < server_pivs[1], server_pivs

    run_on_asyncio(body)


def test_coapio_server_clean_restart_keeps_the_replay_window(tmp_path: Path) -> None:
    """SIGTERM: the server records its replay window; restarted, it refuses an old request at once and
    needs no Echo round trip for a new one."""
    client_dir, server_dir = make_pair(tmp_path, "01")
    server_creds = server_credentials(tmp_path / "server.json", client1=server_dir)
    acreds = tmp_path / "aclient.json"

    async def body() -> None:
        async with coapio_server_process(server_creds) as (proc, port), relay_to(port) as relay:
            aiocoap_client_credentials(acreds, relay.port, client_dir)
            uri = f"coap://127.0.0.1:{relay.port}/whoami"
            assert (await aiocoap_client_process(acreds, "GET", uri)).get("code") == "2.05"
            captured = relay.requests[-1]
            proc.terminate()
            with anyio.fail_after(10):
                assert await proc.wait() == 0
        window = sequence(server_dir)["received"]
        assert isinstance(window, dict), window

        async with coapio_server_process(server_creds, port) as (proc, _), relay_to(port) as relay:
            replayed = await raw_exchange(port, captured)
            assert replayed.code is Code.UNAUTHORIZED and replayed.payload == b"Replay detected"
            aiocoap_client_credentials(acreds, relay.port, client_dir)
            uri = f"coap://127.0.0.1:{relay.port}/whoami"
            assert (await aiocoap_client_process(acreds, "GET", uri)).get("code") == "2.05"
            assert len(relay.sequence_numbers()) == 1  # no Echo round trip

    run_on_asyncio(body)


def test_aiocoap_server_restart_after_sigkill(tmp_path: Path) -> None:
    client_dir, server_dir = make_pair(tmp_path, "01")
    server_creds = server_credentials(tmp_path / "server.json", client1=server_dir)

    async def body() -> None:
        async with aiocoap_server_process(server_creds) as (proc, port), relay_to(port) as relay:
            creds = client_credentials(tmp_path / "client.json", relay.port, client_dir)
            uri = f"coap://127.0.0.1:{relay.port}/hello"
            done = await coapio_client(creds, uri)
            assert done.returncode == 0 and done.stdout == b"hello from aiocoap", done
            assert len(relay.sequence_numbers()) == 1
            await kill(proc)
            assert sequence(server_dir)["received"] == "unknown"

            async with aiocoap_server_process(server_creds) as (_, port2):
                relay.target = ("127.0.0.1", port2)
                since = len(relay.requests)
                done = await coapio_client(creds, uri)
                assert done.returncode == 0 and done.stdout == b"hello from aiocoap", done
                assert len(relay.sequence_numbers(since)) == 2  # aiocoap challenged (Echo), coapio repeated
                for old in (relay.requests[since], relay.requests[0]):  # aiocoap refuses them as coapio does
                    replayed = await raw_exchange(port2, old)
                    assert replayed.code is Code.UNAUTHORIZED and replayed.payload == b"Replay detected"
                since = len(relay.requests)
                done = await coapio_client(creds, uri)
                assert done.returncode == 0, done
                assert len(relay.sequence_numbers(since)) == 1

    run_on_asyncio(body)


# =====================================================================================================
# 4. Refusals: replayed, tampered, unknown kid, unprotected; a wrong key against aiocoap
# =====================================================================================================


def _flip_last_byte(datagram: bytes) -> bytes:
    return datagram[:-1] + bytes([datagram[-1] ^ 0x01])  # the end of the ciphertext (the tag)


def test_coapio_server_refuses_replayed_tampered_unknown_and_unprotected(tmp_path: Path) -> None:
    client_dir, server_dir = make_pair(tmp_path, "01")
    other_dir, other_server_dir = make_pair(tmp_path, "02")  # :client2, not allowed on /secret
    stranger_dir, _ = make_pair(tmp_path, "99")  # a context the server does not list
    creds = server_credentials(tmp_path / "server.json", client1=server_dir, client2=other_server_dir)

    async def body() -> None:
        async with coapio_server(creds) as (_ctx, port, served), relay_to(port) as relay:
            uri = f"coap://127.0.0.1:{relay.port}/hello"
            async with aiocoap_client(relay.port, client_dir) as client:
                ok = await arequest(client, aiocoap.GET, uri)
                assert ok.code == aiocoap.CONTENT and served.hello.served == 1
                captured = relay.requests[-1]
                assert partial_iv(captured) is not None

                # the same datagram from the same address (a CON retransmission after a lost answer): the
                # message layer's deduplication answers it again, with the same protected response
                answered = len(relay.responses)
                await relay.resend(captured)
                await wait_until(lambda: len(relay.responses) > answered, "the retransmission's answer")
                assert relay.responses[-1] == relay.responses[answered - 1]
                assert served.hello.served == 1

                # the same datagram again, from another socket: refused unprotected, not served again
                replayed = await raw_exchange(port, captured)
                assert replayed.code is Code.UNAUTHORIZED and replayed.payload == b"Replay detected"
                assert replayed.opt.oscore is None
                assert served.hello.served == 1

                # replayed as NON, it is dropped without an answer (§8.2): a CON replay sent right after
                # it from the same socket is the first thing answered
                as_non, as_con = outer(captured), outer(captured)
                as_non.type, as_non.mid, as_con.mid = Type.NON, 0x1111, 0x2222
                async with await anyio.create_connected_udp_socket("127.0.0.1", port,
                                                                   local_host="127.0.0.1") as sock:
                    await sock.send(as_non.encode())
                    await sock.send(as_con.encode())
                    with anyio.fail_after(5):
                        first_answer = outer(await sock.receive())
                assert first_answer.mid == 0x2222 and first_answer.payload == b"Replay detected"

                # a flipped ciphertext byte
                relay.mangle = _flip_last_byte
                # aiocoap's client reports any unprotected answer to an OSCORE request so, whatever its code
                with pytest.raises(aoscore.NotAProtectedMessage):
                    await arequest(client, aiocoap.GET, uri)
                tampered = outer(relay.responses[-1])
                assert tampered.code is Code.BAD_REQUEST and tampered.payload == b"Decryption failed"
                assert tampered.opt.oscore is None and served.hello.served == 1

                # the client goes on: its next request verifies
                assert (await arequest(client, aiocoap.GET, uri)).code == aiocoap.CONTENT
                assert served.hello.served == 2

            # a kid the server does not know
            async with aiocoap_client(relay.port, stranger_dir) as stranger:
                with pytest.raises(aoscore.NotAProtectedMessage):
                    await arequest(stranger, aiocoap.GET, uri)
                unknown = outer(relay.responses[-1])
                assert unknown.code is Code.UNAUTHORIZED and unknown.payload == b"Security context not found"
                assert unknown.opt.oscore is None and served.hello.served == 2

            # authenticated, but as another identity than the resource requires: a protected 4.01
            async with aiocoap_client(port, other_dir) as other:
                base = f"coap://127.0.0.1:{port}"
                hello2 = await arequest(other, aiocoap.GET, base + "/hello")
                assert hello2.payload == b"hello :client2 (oscore)"
                denied = await arequest(other, aiocoap.GET, base + "/secret")
                assert denied.code == aiocoap.UNAUTHORIZED and denied.payload == b"not authorized"

            # no OSCORE at all: a requires_security resource refuses, an open one answers
            async with aiocoap_client() as plain:
                base = f"coap://127.0.0.1:{port}"
                refused = await arequest(plain, aiocoap.GET, base + "/secret")
                assert refused.code == aiocoap.UNAUTHORIZED
                open_ = await arequest(plain, aiocoap.GET, base + "/hello")
                assert open_.code == aiocoap.CONTENT and open_.payload == b"hello None"

    run_on_asyncio(body)


def test_wrong_key_coapio_client_against_aiocoap_server(tmp_path: Path) -> None:
    _, server_dir = make_pair(tmp_path, "01")
    wrong_base = tmp_path / "wrong"
    wrong_base.mkdir()
    wrong_dir, _ = make_pair(wrong_base, "01", secret="ff" * 16)  # the right kid, another Master Secret

    async def body() -> None:
        async with aiocoap_server(server_credentials(tmp_path / "server.json", client1=server_dir)) as (
                port, _):
            creds = client_credentials(tmp_path / "client.json", port, wrong_dir)
            uri = f"coap://127.0.0.1:{port}/hello"
            async with Context(bind=[("127.0.0.1", 0)], credentials=str(creds)) as ctx:
                with pytest.raises(UnprotectedErrorResponse) as info:
                    await ctx.get(uri)
            assert info.value.response.code is Code.BAD_REQUEST
            assert info.value.response.payload == b"Decryption failed"
            assert "4.00 Decryption failed" in str(info.value)

            done = await coapio_client(creds, uri)
            assert done.returncode == 4 and done.stdout == b""  # 4: a response it rejected
            assert b"answered the OSCORE request unprotected: 4.00 Decryption failed" in done.stderr, (
                done.stderr)

    run_on_asyncio(body)
