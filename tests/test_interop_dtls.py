"""CoAP over DTLS against libcoap 4.3.1, both ways, on loopback (issue 14).

libcoap's OpenSSL and GnuTLS builds (``coap-client-openssl``/``-gnutls``, ``coap-server-openssl``/
``-gnutls``) against coapio: PSK and X.509, GET, Observe, a 64 KiB block-wise transfer that must come back
byte-identical; a wrong PSK, an unknown identity and a certificate from another CA each fail with a clear
error, and nothing stays behind or reaches other sessions. libcoap's client exits 0 even when its
handshake fails, so its output is what is checked. libcoap's server listens for DTLS on ``-p PORT`` + 1
and accepts any PSK identity with its one key (``-k``), so "unknown identity" is tested against coapio's
server only. Certificates are made with trustme for the module.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import socket
import subprocess
from collections.abc import AsyncIterator

import attrs
import pytest
import trio
from conftest import require_binary, require_interop
from site_support import Counter, Store, WhoAmI

from coapio import Code, Context, Site, TransportTuning

trustme = require_interop("trustme")
require_interop("OpenSSL")
from dtls_support import make_certificates, until  # noqa: E402

from coapio.protocol.dtls import DtlsCredentials, HandshakeFailed, Psk  # noqa: E402
from coapio.transports.dtls import DTLSTransport  # noqa: E402

pytestmark = pytest.mark.interop

LIBRARIES = ["openssl", "gnutls"]
BODY_SIZE = 64 * 1024
_TIMEOUT = 15.0
PSK = Psk(b"client1", b"secret-key")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_certificates(tmp_path_factory.mktemp("certs"), trustme)


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Certificates from a second CA, which nobody here trusts."""
    return make_certificates(tmp_path_factory.mktemp("other"), trustme)


# --- coapio's server ---------------------------------------------------------------------------------





@attrs.define
class Server:
    ctx: Context
    base: str
    store: Store
    counter: Counter

    @property
    def transport(self) -> DTLSTransport:
        [transport] = [t for t in self.ctx.transports if isinstance(t, DTLSTransport)]
        return transport


@contextlib.asynccontextmanager
async def coapio_server(certs: dict[str, str]) -> AsyncIterator[Server]:
    """coapio serving coaps at 127.0.0.1 with PSK identities and a certificate at once (client
    certificates must come from ``certs``' CA)."""
    site = Site()
    store, counter = Store(), Counter()
    site.add("whoami", WhoAmI())
    site.add("store", store)
    site.add("counter", counter)
    creds = DtlsCredentials(accepted={PSK.identity: PSK.key}, cert=certs["cert"], key=certs["key"],
                            ca=certs["ca"])
    async with Context(bind="coaps://127.0.0.1:0", site=site, dtls=creds,
                       tuning=TransportTuning(handshake_timeout=3)) as ctx:
        [base] = [uri for uri in ctx.local_uris if uri.startswith("coaps://")]
        yield Server(ctx, base, store, counter)


async def run_client(library: str, *args: str) -> str:
    """libcoap's client to its end; its output (its exit status says nothing)."""
    program = require_binary(f"coap-client-{library}")
    argv = [program, "-B", "5", *args]
    with trio.fail_after(_TIMEOUT):
        run = await trio.run_process(argv, capture_stdout=True, stderr=subprocess.STDOUT, check=False)
    return f"{argv}\nexit {run.returncode}\n" + run.stdout.decode("utf-8", "replace")


def psk_args(psk: Psk = PSK) -> list[str]:
    return ["-u", psk.identity.decode(), "-k", psk.key.decode()]


async def no_sessions_left(server: Server) -> None:
    with trio.fail_after(_TIMEOUT):
        await until(lambda: not server.transport.sessions)
        await until(lambda: (c := server.ctx.counters).open_exchanges == 0 and c.live_handlers == 0)


@pytest.mark.parametrize("library", LIBRARIES)
async def test_libcoap_client_gets_with_psk(library: str, certs: dict[str, str]) -> None:
    async with coapio_server(certs) as server:
        output = await run_client(library, *psk_args(), server.base + "/whoami")
        assert output.rstrip().endswith("client1 (dtls-psk)"), output


@pytest.mark.parametrize("library", LIBRARIES)
async def test_libcoap_client_gets_with_a_certificate(library: str, certs: dict[str, str]) -> None:
    async with coapio_server(certs) as server:
        output = await run_client(library, "-c", certs["client_cert"], "-j", certs["client_key"],
                                  "-C", certs["ca"], server.base + "/whoami")
        last = output.rstrip().splitlines()[-1]
        assert "CN=client.example" in last and last.endswith("(dtls-x509)"), output


@pytest.mark.parametrize("library", LIBRARIES)
async def test_libcoap_client_observes_then_deregisters(library: str, certs: dict[str, str]) -> None:
    async with coapio_server(certs) as server, trio.open_nursery() as nursery:

        async def notify() -> None:
            while True:
                await trio.sleep(0.05)  # the resource changes 20 times a second
                server.counter.bump()

        nursery.start_soon(notify)
        output = await run_client(library, *psk_args(), "-w", "-s", "1", server.base + "/counter")
        nursery.cancel_scope.cancel()
        received = [int(n) for n in re.findall(r"^n=(\d+)$", output, re.MULTILINE)]
        assert len(received) >= 5, output
        assert received == sorted(set(received)), output
        assert server.counter.observe_options[0] == 0 and 1 in server.counter.observe_options
        with trio.fail_after(_TIMEOUT):
            await until(lambda: server.counter.observer_count == 0)


@pytest.mark.parametrize("library", LIBRARIES)
async def test_libcoap_client_puts_then_gets_64_kib(library: str, certs: dict[str, str],
                                                     tmp_path: pathlib.Path) -> None:
    body = os.urandom(BODY_SIZE)
    sent, received = tmp_path / "sent.bin", tmp_path / "received.bin"
    sent.write_bytes(body)
    async with coapio_server(certs) as server:
        put = await run_client(library, *psk_args(), "-m", "put", "-f", str(sent), server.base + "/store")
        assert server.store.puts == [BODY_SIZE], put
        get = await run_client(library, *psk_args(), "-o", str(received), server.base + "/store")
        assert received.read_bytes() == body, get


async def _failing_client_leaves_nothing(server: Server, output: str) -> None:
    assert "dtls-psk" not in output and "dtls-x509" not in output, output
    # Another client, meanwhile and afterwards, is served as usual.
    async with Context(dtls=DtlsCredentials(psk={"*": PSK})) as ctx:
        with trio.fail_after(_TIMEOUT):
            assert (await ctx.get(server.base + "/whoami")).payload == b"client1 (dtls-psk)"
    await no_sessions_left(server)


@pytest.mark.parametrize("library", LIBRARIES)
async def test_libcoap_client_with_a_wrong_psk_fails(library: str, certs: dict[str, str]) -> None:
    async with coapio_server(certs) as server:
        output = await run_client(library, *psk_args(Psk(PSK.identity, b"wrong")), server.base + "/whoami")
        assert re.search(r"cannot send CoAP pdu|Alert|alert|timeout|failed", output), output
        await _failing_client_leaves_nothing(server, output)


@pytest.mark.parametrize("library", LIBRARIES)
async def test_libcoap_client_with_an_unknown_identity_fails(library: str, certs: dict[str, str]) -> None:
    async with coapio_server(certs) as server:
        output = await run_client(library, *psk_args(Psk(b"stranger", PSK.key)), server.base + "/whoami")
        assert re.search(r"unknown psk identity|'115'", output, re.IGNORECASE), output
        await _failing_client_leaves_nothing(server, output)


@pytest.mark.parametrize("library", LIBRARIES)
async def test_libcoap_client_certificate_from_another_ca_is_refused(
        library: str, certs: dict[str, str], other: dict[str, str]) -> None:
    async with coapio_server(certs) as server:
        output = await run_client(library, "-c", other["client_cert"], "-j", other["client_key"],
                                  "-C", certs["ca"], server.base + "/whoami")
        assert re.search(r"alert|Alert|cannot send CoAP pdu", output), output
        await _failing_client_leaves_nothing(server, output)
        # And libcoap refuses coapio's certificate when it trusts only another CA.
        output = await run_client(library, "-c", other["client_cert"], "-j", other["client_key"],
                                  "-C", other["ca"], server.base + "/whoami")
        assert "dtls-x509" not in output and re.search(r"certificate|verify|cannot send", output), output
        await no_sessions_left(server)


# --- libcoap's server ------------------------------------------------------------------------------


@attrs.define
class LibcoapServer:
    base: str
    output: bytearray


def _free_udp_port_pair() -> int:
    """A port P with P and P - 1 free for UDP (libcoap takes both: CoAP on P - 1, DTLS on P)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port - 1))
            except OSError:
                continue
        return port


@contextlib.asynccontextmanager
async def libcoap_server(library: str, *args: str) -> AsyncIterator[LibcoapServer]:
    """libcoap's example server with ``args`` (credentials), DTLS at 127.0.0.1; ready once it logs the
    DTLS endpoint; stopped on leaving."""
    program = require_binary(f"coap-server-{library}")
    async with trio.open_nursery() as nursery:
        for _attempt in range(5):
            port = _free_udp_port_pair()
            argv = [program, "-A", "127.0.0.1", "-p", str(port - 1), "-v", "7", *args]
            process = await trio.lowlevel.open_process(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            output = bytearray()
            changed = trio.Event()

            async def pump(process: trio.Process = process, output: bytearray = output) -> None:
                nonlocal changed
                assert process.stdout is not None
                async for chunk in process.stdout:
                    output += chunk
                    changed.set()
                    changed = trio.Event()

            nursery.start_soon(pump)
            try:
                with trio.fail_after(5):
                    pattern = re.compile(rb"created DTLS +endpoint 127\.0\.0\.1:%d|cannot create" % port)
                    while (ready := pattern.search(output)) is None:
                        await changed.wait()
                if ready.group().startswith(b"created"):
                    yield LibcoapServer(f"coaps://127.0.0.1:{port}", output)
                    return
            finally:
                with trio.CancelScope(shield=True):
                    process.terminate()
                    with trio.move_on_after(5):
                        await process.wait()
                    if process.returncode is None:
                        process.kill()
                        await process.wait()
    pytest.fail(f"{program} did not start listening in 5 attempts")


def psk_client(psk: Psk = PSK) -> Context:
    return Context(dtls=DtlsCredentials(psk={"coaps://127.0.0.1:*": psk}),
                   tuning=TransportTuning(handshake_timeout=3))


def _idle(ctx: Context) -> tuple[int, int]:
    return ctx.counters.open_exchanges, ctx.counters.live_tokens


@pytest.mark.parametrize("library", LIBRARIES)
async def test_coapio_client_gets_from_libcoap_with_psk(library: str) -> None:
    async with libcoap_server(library, "-k", PSK.key.decode()) as server, psk_client() as ctx:
        with trio.fail_after(_TIMEOUT):
            response = await ctx.get(server.base + "/")
        assert response.payload.startswith(b"This is a test server made with libcoap"), response
        assert response.security is not None and str(response.security) == "client1 (dtls-psk)"
        assert _idle(ctx) == (0, 0)


@pytest.mark.parametrize("library", LIBRARIES)
async def test_coapio_client_gets_from_libcoap_with_certificates(library: str, certs: dict[str, str]) -> None:
    server_args = ("-c", certs["cert"], "-j", certs["key"], "-C", certs["ca"])
    async with libcoap_server(library, *server_args) as server, \
            Context(dtls=DtlsCredentials(cert=certs["client_cert"], key=certs["client_key"],
                                         ca=certs["ca"])) as ctx:
        with trio.fail_after(_TIMEOUT):
            response = await ctx.get(server.base + "/")
        assert response.payload.startswith(b"This is a test server made with libcoap"), response
        assert response.security is not None and response.security.method == "dtls-x509"


@pytest.mark.parametrize("library", LIBRARIES)
async def test_coapio_client_observes_libcoap_then_deregisters(library: str) -> None:
    async with libcoap_server(library, "-k", PSK.key.decode()) as server, psk_client() as ctx:
        uri = server.base + "/example_data"
        with trio.fail_after(_TIMEOUT):
            assert (await ctx.put(uri, b"v0")).code.is_successful()
            seen: list[bytes] = []
            async with ctx.observe(uri) as observation:
                async for notification in observation:
                    seen.append(notification.payload)
                    if len(seen) == 4:
                        break
                    assert (await ctx.put(uri, b"v%d" % len(seen))).code.is_successful()
            assert seen == [b"v0", b"v1", b"v2", b"v3"]
            while b"removed subscription" not in server.output:  # noqa: ASYNC110 - libcoap's log
                await trio.sleep(0.01)
            await until(lambda: _idle(ctx) == (0, 0))


@pytest.mark.parametrize("library", LIBRARIES)
async def test_coapio_client_puts_then_gets_64_kib_at_libcoap(library: str) -> None:
    body = os.urandom(BODY_SIZE)
    async with libcoap_server(library, "-k", PSK.key.decode()) as server, psk_client() as ctx:
        uri = server.base + "/example_data"
        with trio.fail_after(_TIMEOUT * 2):
            put = await ctx.put(uri, body)
            assert put.code in (Code.CREATED, Code.CHANGED), put
            got = await ctx.get(uri)
        assert got.payload == body


@pytest.mark.parametrize("library", LIBRARIES)
async def test_coapio_client_with_a_wrong_psk_fails_clearly(library: str) -> None:
    async with libcoap_server(library, "-k", PSK.key.decode()) as server, \
            psk_client(Psk(PSK.identity, b"wrong")) as bad, psk_client() as good:
        with trio.fail_after(_TIMEOUT):
            assert (await good.get(server.base + "/")).code is Code.CONTENT
            with pytest.raises(HandshakeFailed, match="PSK is probably wrong"):
                await bad.get(server.base + "/")
            assert _idle(bad) == (0, 0)
            assert (await good.get(server.base + "/")).code is Code.CONTENT  # untouched


@pytest.mark.parametrize("library", LIBRARIES)
async def test_coapio_client_refuses_a_certificate_from_another_ca(
        library: str, certs: dict[str, str], other: dict[str, str]) -> None:
    async with libcoap_server(library, "-c", certs["cert"], "-j", certs["key"]) as server, \
            Context(dtls=DtlsCredentials(ca=other["ca"])) as ctx:
        with trio.fail_after(_TIMEOUT), pytest.raises(HandshakeFailed, match="certificate is not accepted"):
            await ctx.get(server.base + "/")
        assert _idle(ctx) == (0, 0)
