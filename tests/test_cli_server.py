"""coapio-server: the demo resources through the Context API, and the tool as a subprocess.

Subprocess servers bind ``127.0.0.1:0`` and announce the port they got on stderr, so no test guesses a
free port. ``main()`` calls ``trio.run``, so in-process tests of it are plain (synchronous) tests.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from conftest import require_binary

from coapio import Code, ContentFormat, Context, Message, ObservableResource
from coapio.cli import _common, server
from coapio.protocol.linkformat import parse_links
from coapio.protocol.options import BlockValue

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
        yield Served(f"coap://127.0.0.1:{ctx.transports[0].local[1]}", client)


async def test_root_welcomes_and_lists_the_resources(served: Served) -> None:
    response = await served.client.get(served.base + "/")
    assert response.code == Code.CONTENT
    assert response.opt.content_format == ContentFormat.TEXT_PLAIN
    text = response.payload.decode()
    assert text.startswith("Welcome to coapio")
    for href in ("/time", "/large", "/echo", "/whoami", "/.well-known/core"):
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


async def test_large_is_8_kib_of_deterministic_text_served_block_wise(served: Served) -> None:
    body = server.large_text()
    assert len(body) == server.LARGE_SIZE == 8192
    assert body == server.large_text()
    assert body.isascii() and body.count(b"\n") == 128
    response = await served.client.get(served.base + "/large")  # Block2, reassembled by the runtime
    assert (response.code, response.payload) == (Code.CONTENT, body)
    assert response.opt.content_format == ContentFormat.TEXT_PLAIN


async def test_large_first_block_says_block2_and_size2(served: Served) -> None:
    request = Message(code=Code.GET, uri=served.base + "/large")
    request.opt.block2 = BlockValue(0, False, 2)  # early negotiation: 64-byte blocks
    async with Context() as raw:
        transport = await raw._route(request)
        first = await raw._path.exchange(transport, request, None)  # one exchange: the first block only
    assert first.opt.block2 == BlockValue(0, True, 2)
    assert first.opt.size2 == server.LARGE_SIZE
    assert first.payload == server.large_text()[:64]


@pytest.mark.parametrize("method", ["post", "put"])
async def test_echo_returns_a_large_payload_unchanged(served: Served, method: str) -> None:
    data = os.urandom(100 * 1024)  # 100 blocks up (Block1), 100 blocks back (Block2)
    send = getattr(served.client, method)
    with trio.fail_after(SUBPROCESS_LIMIT):
        response = await send(served.base + "/echo", data, content_format=ContentFormat.OCTET_STREAM)
    assert (response.code, response.opt.content_format) == (Code.CHANGED, ContentFormat.OCTET_STREAM)
    assert response.payload == data


def _stamp(message: Message) -> datetime.datetime:
    return datetime.datetime.strptime(message.payload.decode(), "%Y-%m-%dT%H:%M:%SZ")


async def test_time_notifies_every_second_while_observed(served: Served) -> None:
    stamps = []
    with trio.fail_after(10):
        async with served.client.observe(served.base + "/time") as observation:
            assert observation.registered
            async for notification in observation:
                assert notification.opt.observe is not None
                assert notification.opt.max_age == 1
                stamps.append(_stamp(notification))
                if len(stamps) == 4:
                    break
    # One per second, each just after the second changed: consecutive seconds. (The first step may be 2 s
    # when the registration is answered just before a second ends and the ticker starts just after.)
    steps = [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)]
    assert steps[0] in (1.0, 2.0) and steps[1:] == [1.0, 1.0], stamps


class CountingTime(server.Time):
    """/time that counts its notify() calls (each one sends a notification to every observer)."""

    def __init__(self) -> None:
        super().__init__()
        self.notifies = 0

    def notify(self, *, confirmable: bool = False) -> None:
        self.notifies += 1
        super().notify(confirmable=confirmable)


async def test_time_ticks_once_per_second_however_many_observe() -> None:
    clock = CountingTime()
    site = server.build_site()
    site.add("time", clock)
    async with Context(bind="127.0.0.1:0", site=site) as ctx, Context() as client:
        uri = f"coap://127.0.0.1:{ctx.transports[0].local[1]}/time"
        received = [0, 0, 0]

        async def observe(index: int) -> None:
            async with client.observe(uri) as observation:
                async for _ in observation:
                    received[index] += 1

        start = trio.current_time()
        with trio.move_on_after(3.5):
            async with trio.open_nursery() as nursery:
                for index in range(3):
                    nursery.start_soon(observe, index)
        elapsed = trio.current_time() - start
        # One notify() per elapsed second, not one per observer per second (that would be ~9 here).
        assert 2 <= clock.notifies <= elapsed + 1, (clock.notifies, elapsed)
        assert all(n >= 3 for n in received), received  # the registration's response + the ticks
        # Leaving the blocks deregistered the observers, which cancelled their ticking tasks.
        await trio.testing.wait_all_tasks_blocked()  # the deregistrations (sent on leaving) are read
        assert clock.observer_count == 0 and ctx.counters.live_handlers == 0
        notifies = clock.notifies
        await trio.sleep(1.2)
        assert clock.notifies == notifies  # nobody observes: no ticking


async def test_time_stops_ticking_when_the_observer_resets() -> None:
    async with Context(bind="127.0.0.1:0", site=server.build_site()) as ctx, Context() as client:
        uri = f"coap://127.0.0.1:{ctx.transports[0].local[1]}/time"
        with trio.fail_after(10):
            async with client.observe(uri, passive=True) as observation:
                await observation.__anext__()  # the registration's response
                await observation.__anext__()  # the first tick
                assert ctx.counters.live_handlers == 1  # the observation task
        # passive: the next notification is answered with a Reset, which ends the observation
        found = ctx.site.resolve(("time",)) if ctx.site is not None else None
        assert found is not None and isinstance(found[0], ObservableResource)
        found[0].notify()  # the next notification now, rather than at the next tick
        await trio.testing.wait_all_tasks_blocked()
        assert ctx.counters.live_handlers == 0


async def test_whoami_names_the_clients_address(served: Served) -> None:
    response = await served.client.get(served.base + "/whoami")
    assert response.code == Code.CONTENT
    client_port = served.client.transports[0].local[1]
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
        response = await client.get(f"coap://[::1]:{ctx.transports[0].local[1]}/whoami")
    assert response.payload.decode() == f"[::1]:{client.transports[0].local[1]}"


async def test_well_known_core_describes_the_resources(served: Served) -> None:
    response = await served.client.get(served.base + "/.well-known/core")
    assert response.code == Code.CONTENT
    assert response.opt.content_format == ContentFormat.LINK_FORMAT
    links = {link.href: link for link in parse_links(response.payload)}
    assert set(links) == {"/", "/echo", "/large", "/time", "/whoami"}
    assert links["/time"].get("rt") == "time"
    assert links["/time"].get("ct") == "0"
    assert links["/time"].get_all("obs") == [None]  # observable
    assert links["/large"].get("sz") == str(server.LARGE_SIZE)


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

    def __init__(self, *, bind: list[tuple[str, int]], site: object, reuse_port: bool = False,
                 **security: object) -> None:
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


@contextlib.asynccontextmanager
async def start_server(*args: str, suffix: bytes = b"") -> AsyncIterator[Running]:
    """``coapio-server --bind 127.0.0.1:0 ARGS``, once it announced its port; killed (with any workers)
    on the way out."""
    process = await trio.lowlevel.open_process(
        [*SERVER, *args, "--bind", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert process.stderr is not None
        seen = b""
        with trio.fail_after(SUBPROCESS_LIMIT):
            while b"\n" not in seen:
                chunk = await process.stderr.receive_some()
                assert chunk, f"the server exited early: {seen!r}"
                seen += chunk
        announced = rb"coapio-server listening on 127\.0\.0\.1:(\d+)" + re.escape(suffix) + rb"\n"
        match = re.fullmatch(announced, seen)
        assert match, seen
        yield Running(process, int(match[1]), seen)
    finally:
        with contextlib.suppress(OSError):
            for child in _children(process.pid):
                os.kill(child, signal.SIGKILL)
        process.kill()
        with trio.move_on_after(5):
            await process.wait()


@pytest.fixture
async def running_server() -> AsyncIterator[Running]:
    async with start_server() as running:
        yield running


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
    assert hrefs == {"/", "/echo", "/large", "/time", "/whoami"}


@pytest.mark.interop
async def test_libcoap_client_observes_time_for_5_seconds(running_server: Running) -> None:
    result = await coap_client("-s", "5", f"coap://127.0.0.1:{running_server.port}/time")
    assert result.returncode == 0, result.stderr
    stamps = re.findall(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", result.stdout)
    assert len(stamps) >= 3 + 1, result.stdout  # the registration's response and one tick per second
    assert len(set(stamps)) == len(stamps), result.stdout  # every notification a new second


@pytest.mark.interop
async def test_libcoap_client_gets_large_block_wise(running_server: Running) -> None:
    result = await coap_client("-b", "64", f"coap://127.0.0.1:{running_server.port}/large")
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip(b"\n") == server.large_text().rstrip(b"\n")


@pytest.mark.interop
async def test_libcoap_client_puts_a_large_file_to_echo(running_server: Running, tmp_path: Path) -> None:
    data = os.urandom(20 * 1024).hex().encode()  # text: libcoap prints the payload it gets back
    path = tmp_path / "data.txt"
    path.write_bytes(data)
    result = await coap_client(
        "-m", "put", "-b", "256", "-f", str(path), f"coap://127.0.0.1:{running_server.port}/echo"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip(b"\n") == data


async def run_coapio_client(*args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(SUBPROCESS_LIMIT):
        return await trio.run_process(
            [sys.executable, "-m", "coapio.cli.client", *args],
            capture_stdout=True, capture_stderr=True, check=False,
        )


async def test_coapio_client_observes_time_three_times(running_server: Running) -> None:
    result = await run_coapio_client(
        "--observe", "--observe-count", "3", "-v", f"coap://127.0.0.1:{running_server.port}/time"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout
    assert all(re.fullmatch(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", line) for line in lines), lines
    assert len(set(lines)) == 3
    err = result.stderr.decode()
    sequence = [int(n) for n in re.findall(r"^(?:2\.05 Content )?Observe=(\d+)", err, re.M)]
    assert len(sequence) == 3 and sequence == sorted(set(sequence)), result.stderr


async def test_coapio_client_puts_100_kib_to_echo(running_server: Running, tmp_path: Path) -> None:
    data = os.urandom(100 * 1024)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    result = await run_coapio_client(
        "-m", "put", "--payload", f"@{path}", f"coap://127.0.0.1:{running_server.port}/echo"
    )
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).hexdigest() == hashlib.sha256(data).hexdigest()


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


# --- --workers: several processes on one port (SO_REUSEPORT) ----------------------------------


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _children(pid: int) -> list[int]:
    """The child processes of ``pid``, whichever of its threads started them (trio forks from a thread)."""
    children: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            children += [int(child) for child in f.read().split()]
    return children


@pytest.fixture
async def workers_server() -> AsyncIterator[Running]:
    async with start_server("--workers", "2", suffix=b" (2 workers)") as running:
        yield running


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc")
async def test_workers_share_the_port_and_answer(workers_server: Running) -> None:
    assert len(_children(workers_server.process.pid)) == 2
    async with Context(bind=[("127.0.0.1", 0)]) as ctx1, Context(bind=[("127.0.0.1", 0)]) as ctx2:
        for ctx in (ctx1, ctx2):
            with trio.fail_after(5):
                response = await ctx.get(f"coap://127.0.0.1:{workers_server.port}/whoami")
            assert response.payload.decode() == f"127.0.0.1:{ctx.local_addresses[0][1]}"


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc")
async def test_ctrl_c_stops_every_worker(workers_server: Running) -> None:
    children = _children(workers_server.process.pid)
    workers_server.process.send_signal(signal.SIGINT)
    rest = await _finish(workers_server.process)
    assert workers_server.process.returncode == 0 and b"Traceback" not in rest
    assert not [child for child in children if _alive(child)]


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc")
async def test_a_dying_worker_takes_the_server_down_with_status_1(workers_server: Running) -> None:
    os.kill(_children(workers_server.process.pid)[0], signal.SIGKILL)
    rest = await _finish(workers_server.process)
    assert workers_server.process.returncode == 1
    assert b"exited with status" in rest and b"Traceback" not in rest


@pytest.mark.parametrize("count", ["0", "65", "two"])
def test_bad_worker_count_is_a_usage_error(capsys: pytest.CaptureFixture[str], count: str) -> None:
    assert server.main(["--workers", count]) == 2
    err = capsys.readouterr().err
    assert "--workers" in err and "Traceback" not in err


# --- issue 13: what a user trips over -------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/time", "/large", "/whoami"])
async def test_an_accept_the_resource_cannot_serve_gets_4_06(served: Served, path: str) -> None:
    # Item 1: the demo server ignored Accept (RFC 7252 §5.10.4 requires 4.06 Not Acceptable).
    response = await served.client.get(served.base + path, accept=ContentFormat.JSON)
    assert response.code == Code.NOT_ACCEPTABLE
    assert b"text/plain" in response.payload
    response = await served.client.get(served.base + path, accept=ContentFormat.TEXT_PLAIN)
    assert response.code == Code.CONTENT


async def test_echo_answers_4_06_for_an_accept_other_than_the_payloads_format(served: Served) -> None:
    response = await served.client.post(
        served.base + "/echo", b"{}", content_format=ContentFormat.JSON, accept=ContentFormat.CBOR
    )
    assert response.code == Code.NOT_ACCEPTABLE
    response = await served.client.post(
        served.base + "/echo", b"{}", content_format=ContentFormat.JSON, accept=ContentFormat.JSON
    )
    assert (response.code, response.payload) == (Code.CHANGED, b"{}")


async def test_observing_with_an_unservable_accept_is_refused(served: Served) -> None:
    request = Message(code=Code.GET, uri=served.base + "/time")
    request.opt.accept = ContentFormat.CBOR
    with trio.fail_after(5):
        async with served.client.observe(request) as observation:
            responses = [response async for response in observation]
    assert [r.code for r in responses] == [Code.NOT_ACCEPTABLE]


@pytest.mark.interop
async def test_libcoap_client_with_accept_json_gets_4_06(running_server: Running) -> None:
    result = await coap_client("-v", "6", "-A", "50", f"coap://127.0.0.1:{running_server.port}/time")
    assert b"4.06" in result.stdout + result.stderr, result


def test_argparse_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    # Item 11: argparse printed its usage block before the message.
    assert server.main(["--frobnicate"]) == 2
    assert capsys.readouterr().err == (
        "coapio-server: error: unrecognized arguments: --frobnicate (see --help)\n"
    )


async def test_verbose_logs_every_request_and_response() -> None:
    # Item 8: the server logged no request or error.
    async with start_server("-v") as running:
        async with Context(bind=[("127.0.0.1", 0)]) as ctx:
            with trio.fail_after(5):
                await ctx.get(f"coap://127.0.0.1:{running.port}/nothing/here")
        assert running.process.stderr is not None
        log = b""
        with trio.fail_after(SUBPROCESS_LIMIT):
            while b"4.04 Not Found" not in log:
                chunk = await running.process.stderr.receive_some()
                assert chunk, log
                log += chunk
    lines = log.decode().splitlines()
    received = r"received CON from 127\.0\.0\.1:\d+: GET /nothing/here mid=\d+"
    assert any(re.search(received, line) for line in lines)
    assert any(re.search(r"sent ACK to 127\.0\.0\.1:\d+: 4\.04 Not Found mid=\d+", line) for line in lines)


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs Linux pidfd_open")
async def test_workers_die_with_a_killed_supervisor() -> None:
    # Item 5: kill -9 of the supervisor left both workers serving, re-parented to PID 1.
    async with start_server("--workers", "2", suffix=b" (2 workers)") as running:
        children = _children(running.process.pid)
        assert len(children) == 2
        pidfds = [os.pidfd_open(child) for child in children]
        try:
            running.process.kill()  # SIGKILL: no chance to clean up
            with trio.fail_after(SUBPROCESS_LIMIT):
                for pidfd in pidfds:
                    await trio.lowlevel.wait_readable(pidfd)  # readable once that process has exited
        finally:
            for pidfd in pidfds:
                os.close(pidfd)
    assert not [child for child in children if _alive(child)]
