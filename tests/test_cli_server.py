"""coapio-server: the demo resources through the Context API, and the tool as a subprocess.

Subprocess servers bind ``127.0.0.1:0`` and announce the port they got on stderr, so no test guesses a
free port. ``main()`` calls ``trio.run``, so in-process tests of it are plain (synchronous) tests.
"""

from __future__ import annotations

import datetime
import errno
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Any

import attrs
import pytest
import trio
from conftest import require_binary

from coapio import Code, ContentFormat, Context
from coapio.cli import _common, server
from coapio.linkformat import parse_links

SERVER = [sys.executable, "-m", "coapio.cli.server"]
SUBPROCESS_LIMIT = 30  # seconds any one subprocess may take before the test fails


# --- the resources, in-process ------------------------------------------------------------------


@attrs.define
class Served:
    base: str
    client: Context


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    async with Context(bind="127.0.0.1:0", site=server.build_site()) as ctx, Context() as client:
        yield Served(f"coap://127.0.0.1:{ctx.endpoints[0].local[1]}", client)


async def test_root_welcomes_and_lists_the_resources(served: Served) -> None:
    response = await served.client.get(served.base + "/")
    assert response.code == Code.CONTENT
    assert response.opt.content_format == ContentFormat.TEXT_PLAIN
    text = response.payload.decode()
    assert text.startswith("Welcome to coapio")
    for href in ("/time", "/echo", "/whoami", "/.well-known/core"):
        assert f"  {href}\n" in text


async def test_time_is_current_utc_iso8601(served: Served) -> None:
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    response = await served.client.get(served.base + "/time")
    after = datetime.datetime.now(datetime.UTC)
    assert response.code == Code.CONTENT
    assert response.opt.content_format == ContentFormat.TEXT_PLAIN
    assert response.opt.max_age == 1
    stamp = datetime.datetime.strptime(response.payload.decode(), "%Y-%m-%dT%H:%M:%SZ")
    assert before <= stamp.replace(tzinfo=datetime.UTC) <= after


@pytest.mark.parametrize("method", ["post", "put"])
async def test_echo_answers_changed_with_payload_and_content_format(served: Served, method: str) -> None:
    send = getattr(served.client, method)
    response = await send(served.base + "/echo", b'{"a": 1}', content_format=ContentFormat.JSON)
    assert response.code == Code.CHANGED
    assert response.payload == b'{"a": 1}'
    assert response.opt.content_format == ContentFormat.JSON


async def test_echo_without_content_format_answers_without_one(served: Served) -> None:
    response = await served.client.post(served.base + "/echo", b"\x00\x01")
    assert (response.code, response.payload, response.opt.content_format) == (Code.CHANGED, b"\x00\x01", None)


async def test_echo_get_is_method_not_allowed(served: Served) -> None:
    response = await served.client.get(served.base + "/echo")
    assert response.code == Code.METHOD_NOT_ALLOWED


async def test_whoami_names_the_clients_address(served: Served) -> None:
    response = await served.client.get(served.base + "/whoami")
    assert response.code == Code.CONTENT
    client_port = served.client.endpoints[0].local[1]
    assert response.payload.decode() == f"127.0.0.1:{client_port}"


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
async def test_whoami_brackets_ipv6_addresses() -> None:
    async with Context(bind="[::1]:0", site=server.build_site()) as ctx, Context(bind="[::1]:0") as client:
        response = await client.get(f"coap://[::1]:{ctx.endpoints[0].local[1]}/whoami")
    assert response.payload.decode() == f"[::1]:{client.endpoints[0].local[1]}"


async def test_well_known_core_describes_the_resources(served: Served) -> None:
    response = await served.client.get(served.base + "/.well-known/core")
    assert response.code == Code.CONTENT
    assert response.opt.content_format == ContentFormat.LINK_FORMAT
    links = {link.href: link for link in parse_links(response.payload)}
    assert set(links) == {"/", "/echo", "/time", "/whoami"}
    assert links["/time"].get("rt") == "time"
    assert links["/time"].get("ct") == "0"


async def test_well_known_core_filters_by_resource_type(served: Served) -> None:
    response = await served.client.get(served.base + "/.well-known/core?rt=time")
    assert [link.href for link in parse_links(response.payload)] == ["/time"]


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (("127.0.0.1", 5683), "127.0.0.1:5683"),
        (("::ffff:10.0.0.1", 40000, 0, 0), "10.0.0.1:40000"),
        (("::1", 5683, 0, 0), "[::1]:5683"),
        (("::", 5683, 0, 0), "[::]:5683"),
        ("unix-socket", "unix-socket"),
    ],
)
def test_addresses_are_shown_as_host_port(address: Any, text: str) -> None:
    assert _common.format_address(address) == text


def test_local_mapped_addresses_can_stay_mapped() -> None:
    assert _common.format_address(("::ffff:10.0.0.1", 1, 0, 0), unmap=False) == "[::ffff:10.0.0.1]:1"


# --- main() in-process: usage and bind errors ---------------------------------------------------


def test_help_names_the_resources_and_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    assert server.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: coapio-server")
    assert "/whoami" in out
    statuses = out.split("exit status:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in statuses if line.strip()] == ["0", "1", "2"]


@pytest.mark.parametrize(
    "bind", ["127.0.0.1:port", "127.0.0.1:70000", "[::1", "[::1]5683", "[::1]:-1"]
)
def test_bad_bind_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], bind: str) -> None:
    assert server.main(["--bind", bind]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"coapio-server: error: bad --bind {bind!r}: ")


def test_unresolvable_bind_host_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert server.main(["--bind", "no-such-host.invalid:0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("coapio-server: error: cannot resolve --bind no-such-host.invalid:0: ")
    assert err.count("\n") == 1


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_port_in_use_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str], busy_port: int) -> None:
    assert server.main(["--bind", f"127.0.0.1:{busy_port}"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"coapio-server: error: cannot bind 127.0.0.1:{busy_port}: Address already in use\n"
    )


class _FakeContext:
    """Stands in for Context: fails to bind with the errno given for each host, recording the attempts."""

    failures: dict[str, int] = {}
    attempts: list[list[tuple[str, int]]] = []

    def __init__(self, *, bind: list[tuple[str, int]], site: object) -> None:
        self.bind = bind

    async def __aenter__(self) -> _FakeContext:
        self.attempts.append(self.bind)
        code = self.failures[self.bind[0][0]]
        raise BaseExceptionGroup("nursery", [OSError(code, os.strerror(code))])

    async def __aexit__(self, *exc: tuple[type[BaseException], BaseException, TracebackType]) -> None:
        raise AssertionError("never entered")


def test_default_bind_falls_back_to_ipv4_without_ipv6(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(server, "Context", _FakeContext)
    monkeypatch.setattr(_FakeContext, "attempts", [])
    monkeypatch.setattr(_FakeContext, "failures", {"::": errno.EAFNOSUPPORT, "0.0.0.0": errno.EADDRINUSE})
    assert server.main([]) == 1
    assert _FakeContext.attempts == [[("::", 5683)], [("0.0.0.0", 5683)]]
    assert capsys.readouterr().err == (
        "coapio-server: error: cannot bind 0.0.0.0:5683: Address already in use\n"
    )


def test_explicit_ipv6_bind_does_not_fall_back(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(server, "Context", _FakeContext)
    monkeypatch.setattr(_FakeContext, "attempts", [])
    monkeypatch.setattr(_FakeContext, "failures", {"::": errno.EAFNOSUPPORT})
    assert server.main(["--bind", "[::]:5683"]) == 1
    assert _FakeContext.attempts == [[("::", 5683)]]
    assert capsys.readouterr().err.startswith("coapio-server: error: cannot bind [::]:5683: ")


async def test_context_bind_failure_raises_oserror(busy_port: int) -> None:
    with pytest.raises(OSError):
        async with Context(bind=f"127.0.0.1:{busy_port}"):
            pass


# --- the coapio-server subprocess ---------------------------------------------------------------


@attrs.define
class Running:
    process: trio.Process
    port: int
    stderr: bytes  # what it printed up to and including the listening line


@pytest.fixture
async def running_server() -> AsyncIterator[Running]:
    process = await trio.lowlevel.open_process(
        [*SERVER, "--bind", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert process.stderr is not None
        seen = b""
        with trio.fail_after(SUBPROCESS_LIMIT):
            while b"\n" not in seen:
                chunk = await process.stderr.receive_some()
                assert chunk, f"the server exited early: {seen!r}"
                seen += chunk
        match = re.fullmatch(rb"coapio-server listening on 127\.0\.0\.1:(\d+)\n", seen)
        assert match, seen
        yield Running(process, int(match[1]), seen)
    finally:
        process.kill()
        with trio.move_on_after(5):
            await process.wait()


async def coap_client(*args: str) -> subprocess.CompletedProcess[bytes]:
    binary = require_binary("coap-client-notls")
    with trio.fail_after(SUBPROCESS_LIMIT):
        return await trio.run_process(
            [binary, "-B", "10", *args], capture_stdout=True, capture_stderr=True, check=False
        )


async def _finish(process: trio.Process) -> bytes:
    """Wait for ``process`` to exit (bounded) and return the rest of its stderr."""
    assert process.stderr is not None
    with trio.fail_after(10):
        rest = b"".join([chunk async for chunk in process.stderr])
        await process.wait()
    return rest


@pytest.mark.interop
async def test_libcoap_client_gets_the_root_with_2_05(running_server: Running) -> None:
    result = await coap_client("-v", "6", "-m", "get", f"coap://127.0.0.1:{running_server.port}/")
    assert result.returncode == 0, result.stderr
    assert b"Welcome to coapio" in result.stdout
    assert b"c:2.05" in result.stdout + result.stderr  # libcoap's log line of the response


@pytest.mark.interop
async def test_libcoap_client_gets_time(running_server: Running) -> None:
    result = await coap_client("-m", "get", f"coap://127.0.0.1:{running_server.port}/time")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\n?", result.stdout), result.stdout


@pytest.mark.interop
async def test_libcoap_client_posts_to_echo(running_server: Running) -> None:
    result = await coap_client(
        "-v", "6", "-m", "post", "-e", "data", f"coap://127.0.0.1:{running_server.port}/echo"
    )
    assert result.returncode == 0, result.stderr
    assert b"c:2.04" in result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == b"data"


@pytest.mark.interop
async def test_libcoap_client_asks_whoami(running_server: Running) -> None:
    result = await coap_client("-m", "get", f"coap://127.0.0.1:{running_server.port}/whoami")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(rb"127\.0\.0\.1:\d+\n?", result.stdout), result.stdout


@pytest.mark.interop
async def test_libcoap_client_discovers_the_resources(running_server: Running) -> None:
    result = await coap_client("-m", "get", f"coap://127.0.0.1:{running_server.port}/.well-known/core")
    assert result.returncode == 0, result.stderr
    hrefs = {link.href for link in parse_links(result.stdout.strip())}
    assert hrefs == {"/", "/echo", "/time", "/whoami"}


async def test_coapio_client_talks_to_coapio_server(running_server: Running) -> None:
    with trio.fail_after(SUBPROCESS_LIMIT):
        result = await trio.run_process(
            [sys.executable, "-m", "coapio.cli.client", f"coap://127.0.0.1:{running_server.port}/whoami"],
            capture_stdout=True, capture_stderr=True, check=False,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"127.0.0.1:")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_signal_stops_the_server_promptly_and_quietly(running_server: Running, signum: int) -> None:
    running_server.process.send_signal(signum)
    rest = await _finish(running_server.process)
    assert running_server.process.returncode == 0
    assert rest == b""
    assert b"Traceback" not in running_server.stderr


async def test_repeated_ctrl_c_during_shutdown_stays_quiet(running_server: Running) -> None:
    for _ in range(3):  # an impatient operator, or a wrapper that forwards the signal again
        running_server.process.send_signal(signal.SIGINT)
    rest = await _finish(running_server.process)
    # A signal that lands after the shutdown finished may still end the process the usual way for
    # Ctrl-C (status 130, or killed by SIGINT once Python restored the default handler); what must
    # never happen is a traceback from a shutdown interrupted half-way.
    assert running_server.process.returncode in (0, 130, -signal.SIGINT)
    assert rest == b"", rest.decode(errors="replace")


async def test_port_in_use_as_a_subprocess(running_server: Running) -> None:
    with trio.fail_after(SUBPROCESS_LIMIT):
        result = await trio.run_process(
            [*SERVER, "--bind", f"127.0.0.1:{running_server.port}"],
            capture_stdout=True, capture_stderr=True, check=False,
        )
    assert result.returncode == 1
    assert result.stderr == (
        f"coapio-server: error: cannot bind 127.0.0.1:{running_server.port}: Address already in use\n"
    ).encode()
