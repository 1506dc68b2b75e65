"""CoAP over TCP, TLS and WebSockets (RFC 8323) against real peers, both ways, on loopback (issue 11).

Peers and what each speaks here:

* **libcoap 4.3.1**: ``coap+tcp`` (``coap-server-notls`` / ``coap-client-notls``) and ``coaps+tcp``
  (``coap-server-openssl`` / ``coap-client-openssl``, X.509). libcoap 4.3.1 has no WebSockets (they came
  with 4.3.2), so there is no ``coap+ws`` test with it. Its server listens on TCP at ``-p PORT`` and on
  TLS at ``PORT+1``; readiness and everything checked on its side is read from its ``-v 7`` output.
  These tests run on trio.
* **aiocoap 0.4.17**: all four schemes (its ``tcpserver``/``tcpclient``, ``tlsserver``/``tlsclient`` and
  ``ws`` transports, the last one through the ``websockets`` package). aiocoap is asyncio-only, so these
  tests run coapio and aiocoap in one asyncio loop through anyio, as tests/test_interop_aiocoap_runtime.py
  does. aiocoap's server ports are offsets of the ``bind`` port (TLS +1, WebSockets +3000, secure
  WebSockets +3001), so :func:`aiocoap_server` asks for the port that lands where it wants.

For each pair: GET, Observe (several notifications, then deregistration), a 64 KiB PUT then GET that
must come back byte-identical (block-wise over the reliable transport), and BERT (RFC 8323 §6): every
CSM, the peers' and coapio's, announces Block-Wise-Transfer with a Max-Message-Size over 1152, and the
tests prove that the transfers then go in SZX 7 blocks of several KiB both ways (the peer's log, or the
block options coapio's server saw and sent). aiocoap's first PUT on a new connection, whose first block
it sends as BERT before it has seen coapio's CSM, is taken too.
A certificate from a CA the client does not trust is refused, in both directions.

Certificates are made with trustme for the module, in a temporary directory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import re
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import attrs
import pytest
import sniffio
import trio
from conftest import require_binary, require_interop
from site_support import Counter, Store

from coapio import Code, Context, Message, Site
from coapio.error import NetworkError
from coapio.transports.tls import client_context, server_context

trustme = require_interop("trustme")
require_interop("aiocoap")
require_interop("websockets")  # aiocoap's ws transport
require_interop("wsproto")  # coapio's ws extra
import aiocoap  # noqa: E402 - only once the peer is known to be importable
import aiocoap.resource as aresource  # noqa: E402
from aiocoap.credentials import TLSCert  # noqa: E402

pytestmark = pytest.mark.interop

LIBCOAP_SCHEMES = ["coap+tcp", "coaps+tcp"]  # libcoap 4.3.1 has no WebSockets

AIOCOAP_SCHEMES = ["coap+tcp", "coaps+tcp", "coap+ws", "coaps+ws"]
BODY_SIZE = 64 * 1024
_TIMEOUT = 10.0  # per exchange or test body; a passing test takes well under that
_IDLE = (0, 0, 0)  # open exchanges, live tokens, live handlers


# --- certificates ------------------------------------------------------------------------------------


@attrs.frozen
class Certs:
    directory: str
    ca: str  # the CA that issued the servers' certificates (PEM)
    cert: str  # the server certificate alone (PEM), for libcoap's -c
    key: str  # its private key (PEM), for libcoap's -j
    chain: str  # key and certificate in one PEM file, for ssl.SSLContext.load_cert_chain
    other_ca: str  # a CA that issued nothing used here: trusting only it refuses every server


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    directory = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    files = {name: str(directory / f"{name}.pem") for name in ("ca", "cert", "key", "chain", "other_ca")}
    ca.cert_pem.write_to_path(files["ca"])
    issued.cert_chain_pems[0].write_to_path(files["cert"])
    issued.private_key_pem.write_to_path(files["key"])
    issued.private_key_and_cert_chain_pem.write_to_path(files["chain"])
    trustme.CA().cert_pem.write_to_path(files["other_ca"])
    return Certs(str(directory), **files)


def _coapio_server_ssl(scheme: str, certs: Certs) -> ssl.SSLContext | None:
    if not scheme.startswith("coaps"):
        return None
    return server_context(cert=certs.chain, websocket=scheme.endswith("+ws"))


def _coapio_client_ssl(scheme: str, ca: str) -> ssl.SSLContext:
    return client_context(ca=ca, websocket=scheme.endswith("+ws"))


def _free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- coapio's server side ------------------------------------------------------------------------------




def _coapio_site() -> tuple[Site, Store, Counter]:
    site = Site()
    store, counter = Store(), Counter()
    site.add("store", store)
    site.add("counter", counter)
    return site, store, counter


@contextlib.asynccontextmanager
async def coapio_server(scheme: str, certs: Certs) -> AsyncIterator[tuple[Context, str, Store, Counter]]:
    """A coapio server listening on ``scheme`` at 127.0.0.1 (ephemeral port); yields its base URI."""
    site, store, counter = _coapio_site()
    async with Context(bind=[f"{scheme}://127.0.0.1:0"], site=site,
                       server_ssl=_coapio_server_ssl(scheme, certs)) as ctx:
        [base] = [uri for uri in ctx.local_uris if uri.startswith(scheme + "://")]
        yield ctx, base, store, counter


def _idle(ctx: Context) -> tuple[int, int, int]:
    c = ctx.counters
    return c.open_exchanges, c.live_tokens, c.live_handlers


async def until(condition: Callable[[], bool]) -> None:
    """Return once ``condition()`` holds: state that other tasks change with no event to wait on (a
    connection's end processed by the server's tasks). Callers bound the wait; this polls."""
    while not condition():  # noqa: ASYNC110 - nothing to wait on but the state itself
        await anyio.sleep(0.01)


def _block_steps(progress: list[tuple[int, int | None]]) -> set[int]:
    """The sizes of the blocks a progress callback saw (the differences between its byte counts)."""
    done = [d for d, _ in progress]
    return {b - a for a, b in zip([0, *done], done, strict=False) if b != a}


def _assert_bert_steps(progress: list[tuple[int, int | None]]) -> None:
    """The transfer went in BERT blocks: every block but the last several KiB, a multiple of 1 KiB (a
    64 KiB body in 1 KiB blocks would take 64 steps)."""
    done = [d for d, _ in progress]
    steps = [b - a for a, b in zip([0, *done], done, strict=False) if b != a]
    assert steps[-1:] and sum(steps) == BODY_SIZE, progress
    assert all(step > 1024 and step % 1024 == 0 for step in steps[:-1]), steps
    assert len(steps) <= BODY_SIZE // 2048, steps


def _libcoap_blocks(log: str) -> list[tuple[str, str, str]]:
    """(1 or 2, NUM, size) of every Block1/Block2 option libcoap logged; size "BERT" for SZX 7."""
    return re.findall(r"Block([12]):(\d+)/[_M]/(\w+)", log)


def _assert_libcoap_bert(blocks: list[tuple[str, str, str]], log: str) -> None:
    """Block1 and Block2 were all BERT, their NUMs 0, k, 2k, ... up to 64 KiB with k > 1 KiB units."""
    assert {n for n, _, _ in blocks} == {"1", "2"}, log[-3000:]
    assert {size for _, _, size in blocks} == {"BERT"}, blocks
    for which in "12":
        nums = sorted({int(num) for n, num, _ in blocks if n == which})
        step = nums[1] - nums[0]
        assert step > 1 and nums == list(range(0, BODY_SIZE // 1024, step)), (which, nums)


# =====================================================================================================
# libcoap 4.3.1 (trio)
# =====================================================================================================


class Output:
    """A libcoap process's stdout and stderr, read as it comes, so that a test can wait for a line."""

    def __init__(self, process: trio.Process):
        self.process = process
        self.data = bytearray()
        self.eof = False
        self._changed = trio.Event()

    async def pump(self) -> None:
        assert self.process.stdout is not None
        async for chunk in self.process.stdout:
            self.data += chunk
            self._changed.set()
            self._changed = trio.Event()
        self.eof = True
        self._changed.set()

    async def wait_for(self, pattern: bytes, start: int = 0) -> re.Match[bytes]:
        """The first match of ``pattern`` in the output from ``start`` on, once it appears (callers bound
        the wait with ``trio.fail_after``); AssertionError if the process ends without it."""
        regex = re.compile(pattern)
        while True:
            match = regex.search(self.data, start)
            if match is not None:
                return match
            assert not self.eof, f"{pattern!r} never appeared in:\n{self.text()[-3000:]}"
            await self._changed.wait()

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


@attrs.define
class LibcoapServer:
    base: str
    output: Output


@contextlib.asynccontextmanager
async def libcoap_server(scheme: str, certs: Certs) -> AsyncIterator[LibcoapServer]:
    """libcoap's example server, debug output on, serving ``scheme`` at 127.0.0.1 (TLS: with a
    certificate from ``certs.ca``). Ready once it logs the endpoint; stopped on leaving."""
    if scheme == "coap+tcp":
        program, label = require_binary("coap-server-notls"), b"TCP "
    else:
        program, label = require_binary("coap-server-openssl"), b"TLS "
    async with trio.open_nursery() as nursery:
        for _attempt in range(5):
            port = _free_tcp_port()
            if scheme == "coap+tcp":
                argv = [program, "-A", "127.0.0.1", "-p", str(port), "-v", "7"]
            else:  # TLS listens on -p's port + 1
                argv = [program, "-A", "127.0.0.1", "-p", str(port - 1), "-v", "7",
                        "-c", certs.cert, "-j", certs.key]
            process = await trio.lowlevel.open_process(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            output = Output(process)
            nursery.start_soon(output.pump)
            try:
                with trio.fail_after(5):
                    ready = await output.wait_for(
                        rb"created %s endpoint 127\.0\.0\.1:%d|cannot create" % (label, port))
                if ready.group().startswith(b"created"):
                    yield LibcoapServer(f"{scheme}://127.0.0.1:{port}", output)
                    return
                # A port was taken in between (it logs that and runs on without the endpoint): retry.
            finally:
                with trio.CancelScope(shield=True):
                    process.terminate()
                    with trio.move_on_after(5):
                        await process.wait()
                    if process.returncode is None:
                        process.kill()
                        await process.wait()
    pytest.fail(f"{program} did not start listening on {scheme} in 5 attempts")


async def run_libcoap_client(scheme: str, *args: str) -> str:
    """Run libcoap's client (``-notls`` for coap+tcp, ``-openssl`` for coaps+tcp) to its end; its
    stdout and stderr. Its exit status says nothing (it exits 0 after a failed handshake too)."""
    program = require_binary("coap-client-notls" if scheme == "coap+tcp" else "coap-client-openssl")
    argv = [program, "-B", "5", *args]
    with trio.fail_after(_TIMEOUT):
        run = await trio.run_process(argv, capture_stdout=True, stderr=subprocess.STDOUT, check=False)
    return f"{argv}\nexit {run.returncode}\n" + run.stdout.decode("utf-8", "replace")


def _libcoap_tls_args(scheme: str, ca: str) -> list[str]:
    return ["-C", ca] if scheme == "coaps+tcp" else []


# --- coapio client -> libcoap server -----------------------------------------------------------------


@pytest.mark.parametrize("scheme", LIBCOAP_SCHEMES)
async def test_coapio_client_gets_from_libcoap_server(scheme: str, certs: Certs) -> None:
    async with libcoap_server(scheme, certs) as server, \
            Context(client_ssl=_coapio_client_ssl(scheme, certs.ca)) as ctx:
        with trio.fail_after(_TIMEOUT):
            response = await ctx.get(server.base + "/")
        assert response.code == Code.CONTENT
        assert response.payload.startswith(b"This is a test server made with libcoap")
        assert response.remote is not None and response.remote.scheme == scheme
        assert _idle(ctx) == _IDLE
        # libcoap saw a CoAP connection of the right kind (not, say, a UDP fallback).
        assert f"{'TLS' if scheme == 'coaps+tcp' else 'TCP'} : session" in server.output.text()


@pytest.mark.parametrize("scheme", LIBCOAP_SCHEMES)
async def test_coapio_client_observes_libcoap_server_then_deregisters(scheme: str, certs: Certs) -> None:
    """libcoap's /example_data is observable and notifies on every PUT: the PUTs go over the same
    connection; leaving the block deregisters (GET with Observe: 1), which libcoap logs."""
    async with libcoap_server(scheme, certs) as server, \
            Context(client_ssl=_coapio_client_ssl(scheme, certs.ca)) as ctx:
        uri = server.base + "/example_data"
        with trio.fail_after(_TIMEOUT):
            assert (await ctx.put(uri, b"v0")).code.is_successful()
            seen: list[bytes] = []
            async with ctx.observe(uri) as obs:
                async for notification in obs:
                    assert notification.code == Code.CONTENT
                    seen.append(notification.payload)
                    if len(seen) == 4:
                        break
                    assert (await ctx.put(uri, b"v%d" % len(seen))).code.is_successful()
            assert seen == [b"v0", b"v1", b"v2", b"v3"]
            # The deregistration reached libcoap while the connection is still open.
            await server.output.wait_for(rb"removed subscription")
            await until(lambda: _idle(ctx) == _IDLE)  # the deregistration's response is on its way
        assert b"Observe:1, Uri-Path:example_data" in server.output.data


@pytest.mark.parametrize("scheme", LIBCOAP_SCHEMES)
async def test_coapio_client_puts_then_gets_64_kib_at_libcoap_server(scheme: str, certs: Certs) -> None:
    body = os.urandom(BODY_SIZE)
    async with libcoap_server(scheme, certs) as server, \
            Context(client_ssl=_coapio_client_ssl(scheme, certs.ca)) as ctx:
        uri = server.base + "/example_data"
        with trio.fail_after(_TIMEOUT):
            put = await ctx.put(uri, body)
            assert put.code in (Code.CREATED, Code.CHANGED), put
            got = await ctx.get(uri)
        assert got.code == Code.CONTENT
        assert got.payload == body
        assert _idle(ctx) == _IDLE


@pytest.mark.parametrize("scheme", LIBCOAP_SCHEMES)
async def test_coapio_client_and_libcoap_server_use_bert_both_ways(scheme: str, certs: Certs) -> None:
    """Both CSMs announce Block-Wise-Transfer with a Max-Message-Size over 1152 (BERT, RFC 8323 §6):
    the PUT goes up and the GET comes down in SZX 7 blocks of several KiB, byte-identical."""
    body = os.urandom(BODY_SIZE)
    async with libcoap_server(scheme, certs) as server, \
            Context(client_ssl=_coapio_client_ssl(scheme, certs.ca)) as ctx:
        uri = server.base + "/example_data"
        up: list[tuple[int, int | None]] = []
        down: list[tuple[int, int | None]] = []
        with trio.fail_after(_TIMEOUT):
            await ctx.request(Context.build(Code.PUT, uri, payload=body), progress=lambda *p: up.append(p))
            got = await ctx.request(Context.build(Code.GET, uri), progress=lambda *p: down.append(p))
        assert got.payload == body
        _assert_bert_steps(up)
        _assert_bert_steps(down)
        [conn] = _reliable_transport(ctx, scheme)._conns  # type: ignore[attr-defined]
        assert conn.proto.bert
        log = server.output.text()
        csms = re.findall(r"c:CSM i:0000 \{\} \[ ([^\]]*)\]", log)
        assert len(csms) == 2 and all("Block-Wise-Transfer" in csm for csm in csms), csms  # both offer
        assert "Remote end did not indicate CSM support" not in log
        _assert_libcoap_bert(_libcoap_blocks(log), log)


async def test_coapio_client_refuses_libcoap_certificate_from_another_ca(certs: Certs) -> None:
    async with libcoap_server("coaps+tcp", certs) as server, \
            Context(client_ssl=_coapio_client_ssl("coaps+tcp", certs.other_ca)) as ctx:
        with trio.fail_after(_TIMEOUT), pytest.raises(NetworkError, match="certificate") as caught:
            await ctx.get(server.base + "/")
        assert "refused" in str(caught.value) and "127.0.0.1" in str(caught.value), caught.value
        assert _idle(ctx) == _IDLE


# --- libcoap client -> coapio server -----------------------------------------------------------------


@pytest.mark.parametrize("scheme", LIBCOAP_SCHEMES)
async def test_libcoap_client_gets_from_coapio_server(scheme: str, certs: Certs) -> None:
    async with coapio_server(scheme, certs) as (ctx, base, _store, counter):
        output = await run_libcoap_client(scheme, *_libcoap_tls_args(scheme, certs.ca), "-m", "get",
                                          base + "/counter")
        assert output.rstrip().endswith("n=0"), output
        assert counter.observe_options == [None], output
        assert _idle(ctx) == _IDLE


@pytest.mark.parametrize("scheme", LIBCOAP_SCHEMES)
async def test_libcoap_client_observes_coapio_server_then_deregisters(scheme: str, certs: Certs) -> None:
    """``-s 1``: libcoap observes for a second, then deregisters with a GET carrying Observe: 1; the
    server forgets the observer (and its Pipe) before libcoap closes the connection."""
    async with coapio_server(scheme, certs) as (ctx, base, _store, counter), trio.open_nursery() as nursery:

        async def notify() -> None:
            while True:
                await trio.sleep(0.05)  # the resource changes 20 times a second
                counter.bump()

        nursery.start_soon(notify)
        output = await run_libcoap_client(scheme, *_libcoap_tls_args(scheme, certs.ca), "-w", "-s", "1",
                                          "-m", "get", base + "/counter")
        nursery.cancel_scope.cancel()
        received = [int(n) for n in re.findall(r"^n=(\d+)$", output, re.MULTILINE)]
        assert len(received) >= 5, output  # the first response and several notifications
        assert received == sorted(set(received)), output  # in order, none twice
        assert counter.observe_options[0] == 0 and 1 in counter.observe_options, counter.observe_options
        with trio.fail_after(_TIMEOUT):
            await until(lambda: counter.observer_count == 0 and _idle(ctx) == _IDLE)


@pytest.mark.parametrize("scheme", LIBCOAP_SCHEMES)
async def test_libcoap_client_puts_then_gets_64_kib_at_coapio_server(
    scheme: str, certs: Certs, tmp_path: pathlib.Path
) -> None:
    body = os.urandom(BODY_SIZE)
    sent, received = trio.Path(tmp_path / "sent.bin"), trio.Path(tmp_path / "received.bin")
    await sent.write_bytes(body)
    tls = _libcoap_tls_args(scheme, certs.ca)
    async with coapio_server(scheme, certs) as (ctx, base, store, _counter):
        put = await run_libcoap_client(scheme, *tls, "-m", "put", "-f", str(sent), base + "/store")
        assert store.puts == [BODY_SIZE], put  # reassembled, rendered once
        assert store.data == body
        get = await run_libcoap_client(scheme, *tls, "-m", "get", "-o", str(received), base + "/store")
        assert await received.read_bytes() == body, get
        assert _idle(ctx) == _IDLE


@pytest.mark.parametrize("scheme", LIBCOAP_SCHEMES)
async def test_libcoap_client_and_coapio_server_use_bert_both_ways(
    scheme: str, certs: Certs, tmp_path: pathlib.Path
) -> None:
    """Both CSMs offer BERT: libcoap's PUT arrives and its GET is answered in SZX 7 blocks."""
    body = os.urandom(BODY_SIZE)
    sent, received = trio.Path(tmp_path / "sent.bin"), trio.Path(tmp_path / "received.bin")
    await sent.write_bytes(body)
    tls = _libcoap_tls_args(scheme, certs.ca)
    async with coapio_server(scheme, certs) as (_ctx, base, store, _counter):
        output = await run_libcoap_client(scheme, *tls, "-v", "7", "-m", "put", "-f", str(sent),
                                          base + "/store")
        output += await run_libcoap_client(scheme, *tls, "-v", "7", "-m", "get", "-o", str(received),
                                           base + "/store")
    assert store.puts == [BODY_SIZE], output
    assert await received.read_bytes() == body
    csms = re.findall(r"c:CSM i:0000 \{\} \[ ([^\]]*)\]", output)
    assert csms and all("Block-Wise-Transfer" in csm for csm in csms), csms  # both sides offer BERT
    assert "Remote end did not indicate CSM support" not in output
    _assert_libcoap_bert(_libcoap_blocks(output), output)


async def test_libcoap_client_with_the_wrong_ca_fails_against_coapio_server(certs: Certs) -> None:
    async with coapio_server("coaps+tcp", certs) as (ctx, base, _store, counter):
        output = await run_libcoap_client("coaps+tcp", "-C", certs.other_ca, "-m", "get", base + "/counter")
        assert "certificate verify failed" in output, output
        assert "n=0" not in output, output
        assert counter.observe_options == []  # nothing reached the resource
        transport = _reliable_transport(ctx, "coaps+tcp")
        with trio.fail_after(_TIMEOUT):  # the failed handshake left nothing behind
            await until(lambda: transport.connections == 0 and _idle(ctx) == _IDLE)  # type: ignore[attr-defined]


# =====================================================================================================
# aiocoap 0.4.17 (asyncio, in the same loop as coapio)
# =====================================================================================================


def run_on_asyncio(body: Callable[[], Awaitable[None]]) -> None:
    """Run ``body`` on asyncio through anyio, bounded by :data:`_TIMEOUT`."""

    async def main() -> None:
        assert sniffio.current_async_library() == "asyncio"
        with anyio.fail_after(_TIMEOUT):
            await body()

    anyio.run(main, backend="asyncio")


class AStore(aresource.ObservableResource):
    """aiocoap's side: GET returns what the last PUT stored; every PUT notifies the observers."""

    def __init__(self) -> None:
        super().__init__()
        self.data = b"hello from aiocoap"
        self.observer_counts: list[int] = []
        self.no_observers = anyio.Event()  # set when the count drops to 0
        self.puts: list[int] = []

    def update_observation_count(self, newcount: int) -> None:
        self.observer_counts.append(newcount)
        if newcount == 0:
            self.no_observers.set()

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(payload=self.data)

    async def render_put(self, request: aiocoap.Message) -> aiocoap.Message:
        self.puts.append(len(request.payload))
        self.data = request.payload
        self.updated_state()
        return aiocoap.Message(code=aiocoap.CHANGED)


# aiocoap binds each transport at an offset from the ``bind`` port it is given.
_AIOCOAP_TRANSPORT = {
    "coap+tcp": ("tcpserver", 0),
    "coaps+tcp": ("tlsserver", 1),
    "coap+ws": ("ws", 3000),
    "coaps+ws": ("ws", 3001),  # plain WebSockets at +3000 too
}


@contextlib.asynccontextmanager
async def aiocoap_server(scheme: str, cert_chain: str) -> AsyncIterator[tuple[str, AStore]]:
    """An aiocoap server for ``scheme`` on 127.0.0.1 presenting ``cert_chain`` (TLS); its base URI."""
    site = aresource.Site()
    store = AStore()
    site.add_resource(["store"], store)
    server_ssl = None
    if scheme.startswith("coaps"):
        server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ssl.load_cert_chain(cert_chain)
    transport, offset = _AIOCOAP_TRANSPORT[scheme]
    for _attempt in range(5):
        port = _free_tcp_port()
        if port - offset <= 0:
            continue
        try:
            server = await aiocoap.Context.create_server_context(
                site, bind=("127.0.0.1", port - offset), transports=[transport], _ssl_context=server_ssl)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                continue  # the port (or the one next to it) was taken in between
            raise
        break
    else:
        pytest.fail(f"no free port for aiocoap's {scheme} server after 5 attempts")
    try:
        yield f"{scheme}://127.0.0.1:{port}", store
    finally:
        _forget_failed_handshakes(server)
        await server.shutdown()


def _forget_failed_handshakes(server: aiocoap.Context) -> None:
    """Work around aiocoap 0.4.17: its TLS server keeps a connection whose handshake failed in its pool
    (asyncio never called connection_made), and its shutdown then fails formatting that connection's
    name (AttributeError: no _remote_hostinfo). Leave such connections out before shutting down."""
    from aiocoap.transports.tcp import TCPServer

    for interface in server.request_interfaces:
        transport = getattr(interface, "token_interface", None)
        if isinstance(transport, TCPServer):
            transport._pool = {c for c in transport._pool if c._transport is not None}


@contextlib.asynccontextmanager
async def aiocoap_client(base: str, ca: str) -> AsyncIterator[aiocoap.Context]:
    client = await aiocoap.Context.create_client_context(transports=["tcpclient", "tlsclient", "ws"])
    if base.startswith("coaps"):
        # aiocoap looks its TLS trust up by "scheme://host:port/*".
        client.client_credentials[base + "/*"] = TLSCert(certfile=ca)
    try:
        yield client
    finally:
        await client.shutdown()


async def _arequest(client: aiocoap.Context, code: object, uri: str, **kwargs: object) -> aiocoap.Message:
    return await client.request(aiocoap.Message(code=code, uri=uri, **kwargs)).response


def _reliable_transport(ctx: Context, scheme: str) -> object:
    [transport] = [t for t in ctx.transports if scheme in t.schemes]
    return transport


# --- coapio client -> aiocoap server -----------------------------------------------------------------


@pytest.mark.parametrize("scheme", AIOCOAP_SCHEMES)
def test_coapio_client_gets_from_aiocoap_server(scheme: str, certs: Certs) -> None:
    async def body() -> None:
        async with aiocoap_server(scheme, certs.chain) as (base, _store), \
                Context(client_ssl=_coapio_client_ssl(scheme, certs.ca)) as ctx:
            response = await ctx.get(base + "/store")
            assert response.code == Code.CONTENT
            assert response.payload == b"hello from aiocoap"
            assert response.remote is not None and response.remote.scheme == scheme
            assert _idle(ctx) == _IDLE

    run_on_asyncio(body)


@pytest.mark.parametrize("scheme", AIOCOAP_SCHEMES)
def test_coapio_client_observes_aiocoap_server_then_deregisters(scheme: str, certs: Certs) -> None:
    async def body() -> None:
        async with aiocoap_server(scheme, certs.chain) as (base, store), \
                Context(client_ssl=_coapio_client_ssl(scheme, certs.ca)) as ctx:
            uri = base + "/store"
            assert (await ctx.put(uri, b"v0")).code == Code.CHANGED
            seen: list[bytes] = []
            async with ctx.observe(uri) as obs:
                async for notification in obs:
                    seen.append(notification.payload)
                    if len(seen) == 4:
                        break
                    assert (await ctx.put(uri, b"v%d" % len(seen))).code == Code.CHANGED
            assert seen == [b"v0", b"v1", b"v2", b"v3"]
            assert store.observer_counts[:1] == [1]
            # The deregistration (GET, Observe: 1) ends aiocoap's observation while the connection stays.
            await store.no_observers.wait()
            assert _reliable_transport(ctx, scheme).connections == 1  # type: ignore[attr-defined]
            await until(lambda: _idle(ctx) == _IDLE)  # the deregistration's response is on its way

    run_on_asyncio(body)


@pytest.mark.parametrize("scheme", AIOCOAP_SCHEMES)
def test_coapio_client_puts_then_gets_64_kib_at_aiocoap_server_in_bert_blocks(
    scheme: str, certs: Certs
) -> None:
    """Both CSMs offer BERT (Block-Wise-Transfer, Max-Message-Size over 1152): both directions go in SZX 7
    blocks of several KiB, and the body comes back byte-identical."""

    async def body() -> None:
        data = os.urandom(BODY_SIZE)
        async with aiocoap_server(scheme, certs.chain) as (base, store), \
                Context(client_ssl=_coapio_client_ssl(scheme, certs.ca)) as ctx:
            uri = base + "/store"
            up: list[tuple[int, int | None]] = []
            down: list[tuple[int, int | None]] = []
            put = await ctx.request(Context.build(Code.PUT, uri, payload=data),
                                    progress=lambda *p: up.append(p))
            assert put.code == Code.CHANGED
            assert store.puts == [BODY_SIZE]
            got = await ctx.request(Context.build(Code.GET, uri), progress=lambda *p: down.append(p))
            assert got.code == Code.CONTENT
            assert got.payload == data
            _assert_bert_steps(up)
            _assert_bert_steps(down)
            [conn] = _reliable_transport(ctx, scheme)._conns  # type: ignore[attr-defined]
            assert conn.proto.peer_block_wise and conn.proto.peer_max_message_size > 1152  # offers BERT
            assert conn.proto.bert
            assert _idle(ctx) == _IDLE

    run_on_asyncio(body)


@pytest.mark.parametrize("scheme", ["coaps+tcp", "coaps+ws"])
def test_coapio_client_refuses_aiocoap_certificate_from_another_ca(scheme: str, certs: Certs) -> None:
    async def body() -> None:
        async with aiocoap_server(scheme, certs.chain) as (base, _store), \
                Context(client_ssl=_coapio_client_ssl(scheme, certs.other_ca)) as ctx:
            with pytest.raises(NetworkError, match="certificate") as caught:
                await ctx.get(base + "/store")
            assert "refused" in str(caught.value), caught.value
            assert _idle(ctx) == _IDLE

    run_on_asyncio(body)


# --- aiocoap client -> coapio server -----------------------------------------------------------------


@pytest.mark.parametrize("scheme", AIOCOAP_SCHEMES)
def test_aiocoap_client_gets_from_coapio_server(scheme: str, certs: Certs) -> None:
    async def body() -> None:
        async with coapio_server(scheme, certs) as (ctx, base, _store, _counter), \
                aiocoap_client(base, certs.ca) as client:
            response = await _arequest(client, aiocoap.GET, base + "/store")
            assert response.code == aiocoap.CONTENT
            assert response.payload == b"hello from coapio"
            assert _idle(ctx) == _IDLE

    run_on_asyncio(body)


@pytest.mark.parametrize("scheme", AIOCOAP_SCHEMES)
def test_aiocoap_client_observes_coapio_server_and_its_leaving_ends_the_observation(
    scheme: str, certs: Certs
) -> None:
    """aiocoap 0.4.17 does not deregister on the wire over RFC 8323 transports (cancelling only stops
    its callbacks); it leaves with a Release and a closed connection, which ends the observation."""

    async def body() -> None:
        async with coapio_server(scheme, certs) as (ctx, base, _store, counter):
            async with aiocoap_client(base, certs.ca) as client:
                request = client.request(aiocoap.Message(code=aiocoap.GET, uri=base + "/counter", observe=0))
                first = await request.response
                assert first.payload == b"n=0" and first.opt.observe is not None
                seen: list[bytes] = []
                counter.bump()
                async for notification in request.observation:
                    seen.append(notification.payload)
                    if len(seen) == 3:
                        break
                    counter.bump()
                assert seen == [b"n=1", b"n=2", b"n=3"]
                assert counter.observer_count == 1
            await until(lambda: counter.observer_count == 0 and _idle(ctx) == _IDLE)

    run_on_asyncio(body)


@pytest.mark.parametrize("scheme", AIOCOAP_SCHEMES)
def test_aiocoap_client_puts_then_gets_64_kib_at_coapio_server_in_bert_blocks(
    scheme: str, certs: Certs
) -> None:
    """On a connection whose CSMs have been exchanged (a GET first), aiocoap follows coapio's CSM, which
    offers BERT: the PUT arrives and the GET is answered in SZX 7 blocks that fill coapio's announced
    8320-byte messages, and the body round-trips byte-identical."""

    async def body() -> None:
        data = os.urandom(BODY_SIZE)
        async with coapio_server(scheme, certs) as (ctx, base, store, _counter), \
                aiocoap_client(base, certs.ca) as client:
            first = await _arequest(client, aiocoap.GET, base + "/store")
            assert first.code == aiocoap.CONTENT
            assert first.remote.maximum_block_size_exp == 7  # coapio's CSM offers BERT
            exchanges = _record_exchanges(ctx, scheme)
            put = await _arequest(client, aiocoap.PUT, base + "/store", payload=data)
            assert put.code == aiocoap.CHANGED, (put, put.payload)
            assert store.puts == [BODY_SIZE]  # reassembled, rendered once
            got = await _arequest(client, aiocoap.GET, base + "/store")
            assert got.code == aiocoap.CONTENT
            assert got.payload == data
            assert _idle(ctx) == _IDLE
            _assert_bert_exchanges(exchanges)

    run_on_asyncio(body)


@attrs.define
class Exchanges:
    requests: list[Message] = attrs.Factory(list)  # as received, before reassembly
    responses: list[Message] = attrs.Factory(list)  # as sent


def _record_exchanges(ctx: Context, scheme: str) -> Exchanges:
    """Every request coapio's server receives on ``scheme`` from now on, and every response it sends."""
    transport = _reliable_transport(ctx, scheme)
    events = ctx._events  # what the transports report requests to
    received, respond = events.request_received, transport.respond  # type: ignore[attr-defined]
    seen = Exchanges()

    def receiving(endpoint: object, request: Message, now: float) -> None:
        seen.requests.append(request.copy())
        received(endpoint, request, now)

    def responding(request: Message, response: Message | None, now: float, **kwargs: bool) -> None:
        if response is not None:
            seen.responses.append(response)
        respond(request, response, now, **kwargs)

    events.request_received = receiving  # type: ignore[method-assign, assignment]
    transport.respond = responding  # type: ignore[attr-defined]
    return seen


def _assert_bert_exchanges(seen: Exchanges, *, first_block: int = 8192) -> None:
    """A 64 KiB PUT then GET went in BERT blocks: every Block1 and Block2 is SZX 7, NUM counts KiB, and
    the blocks after the first carry 8 KiB each (what 8320-byte messages hold)."""
    block1 = [(request.opt.block1, len(request.payload)) for request in seen.requests
              if request.opt.block1 is not None]
    block2 = [(response.opt.block2, len(response.payload)) for response in seen.responses
              if response.opt.block2 is not None]
    for blocks in (block1, block2):
        assert blocks and all(block.szx == 7 for block, _ in blocks), blocks
        offset = 0
        for i, (block, size) in enumerate(blocks):
            assert block.num * 1024 == offset, blocks
            assert block.more == (i < len(blocks) - 1), blocks
            if block.more and i > 0:
                assert size == 8192, blocks
            offset += size
        assert offset == BODY_SIZE, blocks
    assert block1[0][1] == first_block, block1
    assert len(block2) == 8, block2


@pytest.mark.parametrize("scheme", AIOCOAP_SCHEMES)
def test_aiocoap_client_puts_64_kib_on_a_new_connection_to_coapio_server(scheme: str, certs: Certs) -> None:
    """aiocoap picks its first block before the peer's CSM arrives and assumes BERT: 1:0/1/BERT with
    1 KiB. coapio announces BERT, so it takes that block, and the rest come as 8 KiB BERT blocks once
    aiocoap has read coapio's CSM; the GET after it is answered in BERT blocks too."""

    async def body() -> None:
        data = os.urandom(BODY_SIZE)
        async with coapio_server(scheme, certs) as (ctx, base, store, _counter), \
                aiocoap_client(base, certs.ca) as client:
            exchanges = _record_exchanges(ctx, scheme)
            put = await _arequest(client, aiocoap.PUT, base + "/store", payload=data)
            assert put.code == aiocoap.CHANGED, (put, put.payload)
            assert store.data == data
            got = await _arequest(client, aiocoap.GET, base + "/store")
            assert got.payload == data
            _assert_bert_exchanges(exchanges, first_block=1024)

    run_on_asyncio(body)

