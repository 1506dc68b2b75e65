"""coapio-client and coapio-server over TCP, TLS and WebSockets (RFC 8323; issue 11).

The client runs as a subprocess (``trio.run_process``) against the demo site served in-process on each of
``coap+tcp``, ``coaps+tcp``, ``coap+ws`` and ``coaps+ws``: GET with ``-v``, Observe with a count, a 64 KiB
PUT from a file read back byte-identical, ``--ca`` with the right and a wrong CA, client certificates. The
server runs as a subprocess and is found from its "listening on" line. Usage errors are checked in-process
with ``main()``, with ``trio.run`` made to fail: nothing may be started, let alone sent.

Certificates are made per test run with trustme; everything listens on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio

from coapio import Code, Context, Message, Resource
from coapio.cli import client, server
from coapio.transports.tls import server_context

trustme = pytest.importorskip("trustme")

CLIENT = [sys.executable, "-m", "coapio.cli.client"]
SERVER = [sys.executable, "-m", "coapio.cli.server"]
SUBPROCESS_LIMIT = 30  # seconds any one subprocess may take before the test fails
SCHEMES = ["coap+tcp", "coaps+tcp", "coap+ws", "coaps+ws"]
TLS = ("coaps+tcp", "coaps+ws")


@attrs.define
class Certs:
    directory: Path
    ca: trustme.CA
    ca_file: str  # the CA that signed the server's and the client's certificates
    other_ca_file: str  # a CA that signed nothing here
    server_chain: str  # the server's key and certificate chain in one PEM file
    client_chain: str  # the client's key and certificate in one file ...
    client_cert: str  # ... and in two
    client_key: str


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    directory = tmp_path_factory.mktemp("certs")
    ca, other = trustme.CA(), trustme.CA()
    paths = {name: str(directory / f"{name}.pem") for name in (
        "ca", "other", "server", "client", "client-cert", "client-key")}
    ca.cert_pem.write_to_path(paths["ca"])
    other.cert_pem.write_to_path(paths["other"])
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(paths["server"])
    issued = ca.issue_cert("client@example.com")
    issued.private_key_and_cert_chain_pem.write_to_path(paths["client"])
    issued.cert_chain_pems[0].write_to_path(paths["client-cert"])
    issued.private_key_pem.write_to_path(paths["client-key"])
    return Certs(directory, ca, paths["ca"], paths["other"], paths["server"], paths["client"],
                 paths["client-cert"], paths["client-key"])


class Store(Resource):
    """GET returns what the last PUT stored."""

    def __init__(self) -> None:
        super().__init__()
        self.data = b""

    def render_get(self, request: Message) -> Message:
        return Message(payload=self.data)

    def render_put(self, request: Message) -> Message:
        self.data = request.payload
        return Message(code=Code.CHANGED)


def _server_ssl(scheme: str, certs: Certs, *, require_client: bool = False) -> ssl.SSLContext | None:
    if scheme not in TLS:
        return None
    return server_context(cert=certs.server_chain, ca=certs.ca_file if require_client else None,
                          websocket=scheme.endswith("+ws"))


@contextlib.asynccontextmanager
async def serve(scheme: str, certs: Certs, *, require_client: bool = False) -> AsyncIterator[str]:
    """The demo site (and ``/store``) in-process on ``scheme``; yields its base URI."""
    if scheme.endswith("+ws"):
        pytest.importorskip("wsproto")
    site = server.build_site()
    site.add("store", Store())
    server_ssl = _server_ssl(scheme, certs, require_client=require_client)
    async with Context(bind=[f"{scheme}://127.0.0.1:0"], site=site, server_ssl=server_ssl) as ctx:
        [base] = [uri for uri in ctx.local_uris if uri.startswith(f"{scheme}://")]
        yield base


@pytest.fixture(params=SCHEMES)
async def base(request: pytest.FixtureRequest, certs: Certs) -> AsyncIterator[str]:
    async with serve(request.param, certs) as uri:
        yield uri


def _trust(base: str, certs: Certs) -> list[str]:
    """``--ca`` for a TLS URI (the test CA is in no system trust store), nothing otherwise."""
    return ["--ca", certs.ca_file] if base.startswith(TLS) else []


async def run_client(*args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(SUBPROCESS_LIMIT):
        return await trio.run_process([*CLIENT, *args], capture_stdout=True, capture_stderr=True,
                                      check=False)


def _one_error_line(result: subprocess.CompletedProcess[bytes]) -> str:
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("coapio-client: error: "), lines
    return lines[0]


# --- coapio-client against the demo site, on each scheme ----------------------------------------


async def test_get_block_wise_with_verbose_names_the_remote_as_a_uri(base: str, certs: Certs) -> None:
    result = await run_client("-v", *_trust(base, certs), f"{base}/large")
    assert result.returncode == 0, result.stderr
    assert result.stdout == server.large_text()  # 8 KiB: more than one block
    err = result.stderr.decode().splitlines()
    assert err[0] == "2.05 Content"
    assert err[1] == f"remote={base}"  # the scheme and the port, not just host:port
    assert re.fullmatch(r"token=[0-9a-f]+", err[2]), err  # no type or message ID over RFC 8323


async def test_whoami_names_the_clients_address(base: str, certs: Certs) -> None:
    result = await run_client(*_trust(base, certs), f"{base}/whoami")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(rb"127\.0\.0\.1:\d+", result.stdout), result.stdout


async def test_observe_with_a_count(base: str, certs: Certs) -> None:
    result = await run_client("--observe", "--observe-count", "2", *_trust(base, certs), f"{base}/time")
    assert result.returncode == 0, result.stderr
    stamps = result.stdout.decode().splitlines()
    assert len(stamps) == 2 and stamps[0] != stamps[1], stamps
    for stamp in stamps:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp)


async def test_64_kib_put_from_a_file_and_get_are_byte_identical(
    base: str, certs: Certs, tmp_path: Path
) -> None:
    data = os.urandom(64 * 1024)
    (tmp_path / "up.bin").write_bytes(data)
    put = await run_client("-m", "put", "--payload", f"@{tmp_path / 'up.bin'}", *_trust(base, certs),
                           f"{base}/store")
    assert (put.returncode, put.stdout, put.stderr) == (0, b"", b"")
    got = await run_client("-o", str(tmp_path / "down.bin"), *_trust(base, certs), f"{base}/store")
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "down.bin").read_bytes() == data


async def test_echo_returns_a_large_payload_from_stdin_unchanged(base: str, certs: Certs) -> None:
    data = os.urandom(20_000)
    with trio.fail_after(SUBPROCESS_LIMIT):
        result = await trio.run_process(
            [*CLIENT, "-m", "post", "--payload", "@-", *_trust(base, certs), f"{base}/echo"],
            stdin=data, capture_stdout=True, capture_stderr=True, check=False,
        )
    assert (result.returncode, result.stdout) == (0, data), result.stderr


# --- TLS: --ca, refused certificates, client certificates ---------------------------------------


@pytest.mark.parametrize("scheme", TLS)
async def test_a_certificate_from_another_ca_is_refused_in_one_line_with_exit_4(
    scheme: str, certs: Certs
) -> None:
    async with serve(scheme, certs) as base:
        for trust in (["--ca", certs.other_ca_file], []):  # a wrong CA; the system's trust store
            result = await run_client(*trust, f"{base}/whoami")
            assert (result.returncode, result.stdout) == (4, b""), (trust, result.stderr)
            line = _one_error_line(result)
            port = base.rsplit(":", 1)[1]
            assert f"the TLS certificate of 127.0.0.1:{port} was refused" in line, line


@pytest.mark.parametrize("scheme", TLS)
async def test_a_client_certificate_in_one_file_or_two(scheme: str, certs: Certs) -> None:
    async with serve(scheme, certs, require_client=True) as base:
        ca = ["--ca", certs.ca_file]
        one_file = ["--cert", certs.client_chain]
        for cert in (one_file, ["--cert", certs.client_cert, "--key", certs.client_key]):
            result = await run_client(*ca, *cert, f"{base}/whoami")
            assert result.returncode == 0, (cert, result.stderr)
            assert result.stdout.startswith(b"127.0.0.1:")
        refused = await run_client(*ca, f"{base}/whoami")
        assert (refused.returncode, refused.stdout) == (4, b""), refused.stderr
        assert "see --cert" in _one_error_line(refused)


# --- transport-specific failures ----------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_a_refused_connection_is_exit_4(scheme: str) -> None:
    with socket.socket() as sock:  # bound, not listening: the port refuses connections
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        result = await run_client(f"{scheme}://127.0.0.1:{port}/")
    assert result.returncode == 4, result.stderr
    line = _one_error_line(result)
    assert f"{scheme}://127.0.0.1:{port}" in line and "Errno None" not in line, line


async def test_a_silent_tcp_server_is_a_timeout_exit_3() -> None:
    with socket.socket() as sock:  # listening, never accepting: connected by the kernel, never answered
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = await run_client("--timeout", "0.5", f"coap+tcp://127.0.0.1:{port}/")
    assert result.returncode == 3, result.stderr
    assert _one_error_line(result) == (
        f"coapio-client: error: no response from coap+tcp://127.0.0.1:{port} within 0.5 s (--timeout)"
    )


def test_a_tcp_request_has_a_default_timeout() -> None:
    # Over TCP nothing gives up while the connection stays up: the tool bounds the wait as a CON's.
    args = client.build_parser().parse_args(["coap+tcp://127.0.0.1/"])
    plan = client.make_plan(args)
    client.plan_transport(plan, args, "coap+tcp")
    assert plan.timeout == client.CON_GIVE_UP and plan.default_timeout
    request = Message(code=Code.GET, uri="coap+tcp://127.0.0.1/")
    outcome = client._failure(TimeoutError(), request, plan.timeout, default_limit=True)
    assert outcome == (3, f"no response from coap+tcp://127.0.0.1:5683 within {client.CON_GIVE_UP} s "
                       "(the default over TCP and WebSockets; see --timeout)")



def test_a_broken_connection_failing_two_tasks_is_still_one_line() -> None:
    # A TLS server refusing the client's certificate can fail the request and, at the same moment, the
    # writer of its connection: the tool reports the coapio error, not a traceback of the group.
    import anyio

    from coapio.error import NetworkError

    request = Message(code=Code.GET, uri="coaps+tcp://127.0.0.1:5684/")
    plan = client.Plan()
    group = BaseExceptionGroup("nursery", [
        NetworkError("the connection to coaps+tcp://127.0.0.1:5684 closed"),
        BaseExceptionGroup("transport", [anyio.EndOfStream()]),
    ])
    assert client._group_failure(group, request, plan) == (
        4, "the connection to coaps+tcp://127.0.0.1:5684 closed (does the server want a client "
        "certificate? see --cert)"
    )
    bug = BaseExceptionGroup("nursery", [NetworkError("closed"), AssertionError("a bug")])
    assert client._group_failure(bug, request, plan) is None  # a bug among them is not hidden


# --- coapio-client: usage errors, before anything is started ------------------------------------


@pytest.fixture
def nothing_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """``trio.run`` fails the test: a usage error must stop the tool before any socket exists."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("trio.run was called")

    monkeypatch.setattr(trio, "run", refuse)


def _usage(capsys: pytest.CaptureFixture[str], prog: str) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"{prog}: error: "), lines
    return lines[0]


def _encrypted_key(certs: Certs) -> str:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(Path(certs.client_key).read_bytes(), password=None)
    path = certs.directory / "encrypted-key.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"secret")))
    return str(path)


@pytest.mark.usefixtures("nothing_runs")
@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--psk", "k", "--identity", "i", "coaps+tcp://127.0.0.1/"], "--psk is a DTLS setting"),
        (["--cert", "{missing}", "coaps+tcp://127.0.0.1/"], "cannot read --cert '{missing}': No such file"),
        (["--ca", "{missing}", "coaps+ws://127.0.0.1/"], "cannot read --ca '{missing}': No such file"),
        (["--cert", "{client_cert}", "--key", "{missing}", "coaps+tcp://127.0.0.1/"], "cannot read --key"),
        (["--ca", "{client_key}", "coaps+tcp://127.0.0.1/"], "--ca '{client_key}' holds no PEM certificate"),
        (["--cert", "{client_cert}", "coaps+tcp://127.0.0.1/"], "without --key, its private key"),
        (["--cert", "{client_cert}", "--key", "{ca}", "coaps+tcp://127.0.0.1/"], "not a PEM certificate and"),
        (["--cert", "{client_cert}", "--key", "{encrypted}", "coaps+tcp://127.0.0.1/"], "is encrypted"),
        (["--key", "{client_key}", "coaps+tcp://127.0.0.1/"], "--key needs --cert"),
        (["--ca", "{ca}", "coap+tcp://127.0.0.1/"], "coap+tcp:// has no TLS (use coaps+tcp://)"),
        (["--cert", "{client_chain}", "coap://127.0.0.1/"], "coap:// has no TLS"),
        (["--bind", "127.0.0.1", "coap+tcp://127.0.0.1/"], "--bind is for coap:// (UDP) only"),
        (["--non", "coap+ws://127.0.0.1/"], "--non is for coap:// and coaps:// only"),
        (["coap+tcp://127.0.0.1:0/"], "port 0 cannot be sent to"),
    ],
)
def test_client_usage_errors_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], certs: Certs, argv: list[str], fragment: str
) -> None:
    names = {"missing": str(certs.directory / "missing.pem"), "client_cert": certs.client_cert,
             "client_key": certs.client_key, "client_chain": certs.client_chain, "ca": certs.ca_file}
    if any("{encrypted}" in a for a in argv):
        names["encrypted"] = _encrypted_key(certs)
    assert client.main([a.format(**names) for a in argv]) == 2
    assert fragment.format(**names) in _usage(capsys, "coapio-client")


# --- coapio-server as a subprocess --------------------------------------------------------------


@attrs.define
class Running:
    process: trio.Process
    uris: list[str]  # what its "listening on" line names


@contextlib.asynccontextmanager
async def start_server(*args: str) -> AsyncIterator[Running]:
    """``coapio-server ARGS``, once it has announced where it listens (read from its stderr); killed on
    the way out."""
    process = await trio.lowlevel.open_process([*SERVER, *args], stderr=subprocess.PIPE)
    try:
        assert process.stderr is not None
        seen = b""
        with trio.fail_after(SUBPROCESS_LIMIT):
            while b"\n" not in seen:
                chunk = await process.stderr.receive_some()
                assert chunk, f"the server exited early: {seen!r}"
                seen += chunk
        match = re.fullmatch(rb"coapio-server listening on (.*)\n", seen)
        assert match, seen
        yield Running(process, match[1].decode().split(", "))
    finally:
        process.kill()
        with trio.move_on_after(5):
            await process.wait()


async def test_server_answers_over_tcp_and_websockets() -> None:
    pytest.importorskip("wsproto")
    async with start_server("--bind", "coap+tcp://127.0.0.1:0", "--bind", "coap+ws://127.0.0.1:0") as running:
        assert [uri.split("://")[0] for uri in running.uris] == ["coap+tcp", "coap+ws"], running.uris
        for uri in running.uris:
            assert re.fullmatch(r"coap\+(tcp|ws)://127\.0\.0\.1:\d+", uri)
            result = await run_client(f"{uri}/whoami")
            assert result.returncode == 0, result.stderr
            assert re.fullmatch(rb"127\.0\.0\.1:\d+", result.stdout), result.stdout
            large = await run_client(f"{uri}/large")
            assert (large.returncode, large.stdout) == (0, server.large_text())


async def test_server_over_tls_with_udp_names_every_transport(certs: Certs) -> None:
    pytest.importorskip("wsproto")
    async with start_server("--bind", "127.0.0.1:0", "--bind", "coaps+tcp://127.0.0.1:0",
                            "--bind", "coaps+ws://127.0.0.1:0", "--cert", certs.server_chain) as running:
        udp, tls, wss = running.uris
        assert re.fullmatch(r"127\.0\.0\.1:\d+", udp)  # UDP as host:port, as before
        assert tls.startswith("coaps+tcp://127.0.0.1:") and wss.startswith("coaps+ws://127.0.0.1:")
        for uri in (tls, wss):
            refused = await run_client("--ca", certs.other_ca_file, f"{uri}/")
            assert refused.returncode == 4
            assert "was refused" in _one_error_line(refused)
        for uri in (f"coap://{udp}", tls, wss):
            trust = _trust(uri, certs)
            result = await run_client(*trust, "--observe", "--observe-count", "2", f"{uri}/time")
            assert result.returncode == 0, (uri, result.stderr)
            assert len(result.stdout.splitlines()) == 2


async def test_server_requires_client_certificates_with_ca(certs: Certs) -> None:
    async with start_server("--bind", "coaps+tcp://127.0.0.1:0", "--cert", certs.server_chain,
                            "--ca", certs.ca_file) as running:
        [uri] = running.uris
        accepted = await run_client("--ca", certs.ca_file, "--cert", certs.client_chain, f"{uri}/whoami")
        assert accepted.returncode == 0, accepted.stderr
        refused = await run_client("--ca", certs.ca_file, f"{uri}/whoami")
        assert refused.returncode == 4
        _one_error_line(refused)


# --- coapio-server: usage errors ----------------------------------------------------------------


@pytest.mark.usefixtures("nothing_runs")
@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--bind", "coaps+tcp://127.0.0.1:0"], "--bind coaps+tcp://127.0.0.1:0 needs --cert FILE"),
        (["--bind", "coaps+ws://127.0.0.1:0"], "needs --cert FILE"),
        (["--bind", "coaps+tcp://127.0.0.1:0", "--cert", "{missing}"], "cannot read --cert '{missing}'"),
        (["--bind", "coaps+tcp://127.0.0.1:0", "--cert", "{client_cert}"], "without --key, its private key"),
        (["--bind", "coaps+ws://127.0.0.1:0", "--cert", "{server}", "--ca", "{missing}"], "cannot read --ca"),
        (["--bind", "coap+tcp://127.0.0.1:0", "--cert", "{server}"], "--cert is for coaps+tcp:// and"),
        (["--ca", "{ca}"], "--ca is for coaps+tcp:// and coaps+ws:// binds"),
        (["--bind", "coaps://127.0.0.1:0"], "a coaps bind needs --credentials FILE"),
        (["--bind", "http://127.0.0.1:0"], "unknown scheme 'http'"),
        (["--bind", "coap+tcp://127.0.0.1:0/path"], "an address only, not a path"),
        (["--bind", "coap+tcp://127.0.0.1:x"], "bad --bind 'coap+tcp://127.0.0.1:x'"),
        (["--bind", "coap+tcp://127.0.0.1:0", "--workers", "2"], "--workers shares UDP ports only"),
    ],
)
def test_server_usage_errors_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], certs: Certs, argv: list[str], fragment: str
) -> None:
    names = {"missing": str(certs.directory / "missing.pem"), "client_cert": certs.client_cert,
             "server": certs.server_chain, "ca": certs.ca_file}
    assert server.main([a.format(**names) for a in argv]) == 2
    assert fragment.format(**names) in _usage(capsys, "coapio-server")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:5000", ("coap", "127.0.0.1", 5000)),
        ("coap://127.0.0.1:5000", ("coap", "127.0.0.1", 5000)),
        ("coap+tcp://[::1]:5000", ("coap+tcp", "::1", 5000)),
        ("COAP+TCP://127.0.0.1", ("coap+tcp", "127.0.0.1", 5683)),
        ("coaps+tcp://127.0.0.1/", ("coaps+tcp", "127.0.0.1", 5684)),
        ("coap+ws://[::]", ("coap+ws", "::", 80)),
        ("coaps+ws://0.0.0.0", ("coaps+ws", "0.0.0.0", 443)),
    ],
)
def test_server_bind_uris_take_their_schemes_default_port(text: str, expected: tuple[str, str, int]) -> None:
    assert server.parse_server_bind(text) == expected


def test_a_tcp_port_in_use_is_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert server.main(["--bind", f"coap+tcp://127.0.0.1:{port}"]) == 1
    assert _usage(capsys, "coapio-server") == (
        f"coapio-server: error: cannot bind coap+tcp://127.0.0.1:{port}: Address already in use"
    )

