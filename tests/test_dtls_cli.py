"""coapio-client and coapio-server over coaps:// (issue 14): PSK from --psk/--identity and from
--credentials (aiocoap's JSON), certificates from --cert/--key/--ca, /whoami showing who the client
authenticated as; bad arguments and failed handshakes are one line and a non-zero exit."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
import trio

pytest.importorskip("OpenSSL")
trustme = pytest.importorskip("trustme")

from dtls_support import make_certificates  # noqa: E402

ROOT = str(pathlib.Path(__file__).resolve().parent.parent)
ENV = {**os.environ, "PYTHONPATH": ROOT}
LIMIT = 20.0
CREDENTIALS = {
    ":client1": {"dtls": {"psk": {"ascii": "secret-key"}, "client-identity": {"ascii": "client1"}}},
    "coaps://127.0.0.1:*/*": ":client1",
    "coap://oscore.example/*": {"edhoc-oscore": {"peer_cred": "elsewhere"}},  # not DTLS: ignored
}


@contextlib.asynccontextmanager
async def server(*args: str) -> AsyncIterator[int]:
    """``coapio-server ARGS --bind coaps://127.0.0.1:0``, once it announced its port; killed afterwards."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "coapio.cli.server", *args, "--bind", "coaps://127.0.0.1:0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    try:
        assert process.stderr is not None
        seen = b""
        with trio.fail_after(LIMIT):
            while b"\n" not in seen:
                chunk = await process.stderr.receive_some()
                assert chunk, f"the server exited early: {seen!r}"
                seen += chunk
        match = re.fullmatch(rb"coapio-server listening on coaps://127\.0\.0\.1:(\d+)\n", seen)
        assert match, seen
        yield int(match[1])
    finally:
        process.kill()
        with trio.move_on_after(5):
            await process.wait()


async def client(*args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(LIMIT):
        return await trio.run_process([sys.executable, "-m", "coapio.cli.client", *args],
                                      capture_stdout=True, capture_stderr=True, check=False, env=ENV)


async def serve_and_run(server_args: list[str], *client_args: str) -> subprocess.CompletedProcess[bytes]:
    async with server(*server_args) as port:
        return await client(*[a.replace("PORT", str(port)) for a in client_args])


@pytest.fixture
def credentials(tmp_path: pathlib.Path) -> str:
    path = tmp_path / "credentials.json"
    path.write_text(json.dumps(CREDENTIALS))
    return str(path)


async def test_psk_from_the_command_line_and_whoami(credentials: str) -> None:
    result = await serve_and_run(["--credentials", credentials], "--psk", "secret-key", "--identity",
                                 "client1", "coaps://127.0.0.1:PORT/whoami")
    assert result.returncode == 0, result.stderr
    whoami = rb"127\.0\.0\.1:\d+\nauthenticated as client1 \(dtls-psk\)\n?"
    assert re.fullmatch(whoami, result.stdout), result.stdout


async def test_psk_from_a_credentials_file(credentials: str) -> None:
    result = await serve_and_run(["--credentials", credentials], "--credentials", credentials,
                                 "coaps://127.0.0.1:PORT/whoami")
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith(b"client1 (dtls-psk)")


async def test_hex_psk_and_an_unknown_identity_is_one_line_and_status_4(credentials: str) -> None:
    result = await serve_and_run(["--credentials", credentials], "--psk", "0x7365637265742d6b6579",
                                 "--identity", "stranger", "coaps://127.0.0.1:PORT/whoami")
    assert result.returncode == 4
    assert result.stderr.count(b"\n") == 1 and b"does not know this PSK identity" in result.stderr
    assert result.stdout == b""


async def test_certificates_on_both_sides(tmp_path: pathlib.Path) -> None:
    certs = make_certificates(tmp_path, trustme)
    result = await serve_and_run(
        ["--cert", certs["cert"], "--key", certs["key"], "--ca", certs["ca"]],
        "--cert", certs["client_cert"], "--key", certs["client_key"], "--ca", certs["ca"],
        "coaps://127.0.0.1:PORT/whoami")
    assert result.returncode == 0, result.stderr
    assert b"CN=client.example" in result.stdout and result.stdout.rstrip().endswith(b"(dtls-x509)")
    other = make_certificates(tmp_path, trustme, prefix="other-")
    result = await serve_and_run(["--cert", certs["cert"], "--key", certs["key"]],
                                 "--ca", other["ca"], "coaps://127.0.0.1:PORT/whoami")
    assert result.returncode == 4 and result.stderr.count(b"\n") == 1
    assert b"certificate is not accepted" in result.stderr


@pytest.mark.parametrize(("program", "args", "fragment"), [
    ("client", ["--psk", "k", "coaps://127.0.0.1/"], "--psk and --identity go together"),
    ("client", ["--psk", "0xzz", "--identity", "i", "coaps://127.0.0.1/"], "not valid hex"),
    ("client", ["--credentials", "/nonexistent.json", "coaps://127.0.0.1/"], "No such file"),
    ("client", ["--psk", "k", "--identity", "i", "coap://127.0.0.1/"], "--psk is a DTLS setting"),
    ("client", ["--bind", "127.0.0.1:0", "coaps://127.0.0.1/"], "--bind is for coap://"),
    ("server", ["--bind", "coaps://127.0.0.1:0"], "a coaps bind needs --credentials FILE"),
    ("server", ["--bind", "coaps://127.0.0.1:0", "--cert", "/nonexistent.pem"], "no such file"),
    ("server", ["--credentials", "/x.json"], "--credentials: /x.json: [Errno 2] No such file"),
])
async def test_bad_arguments_are_one_line_and_status_2(program: str, args: list[str], fragment: str) -> None:
    with trio.fail_after(LIMIT):
        result = await trio.run_process([sys.executable, "-m", f"coapio.cli.{program}", *args],
                                        capture_stdout=True, capture_stderr=True, check=False, env=ENV)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count(b"\n") == 1 and fragment.encode() in result.stderr, result.stderr
