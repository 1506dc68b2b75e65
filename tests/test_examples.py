"""The programs in ``examples/`` run as documented: each server answers each client, on loopback only.

Every program runs as a subprocess, bounded by a timeout and killed in ``finally``; servers get a free
port on 127.0.0.1 and are stopped with SIGINT, the way a user stops them with Ctrl-C.
"""

from __future__ import annotations

import ast
import contextlib
import itertools
import os
import selectors
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from coapio import Code, Message, Type

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PROGRAMS = ["trio_server.py", "trio_client.py", "asyncio_server.py", "asyncio_client.py"]
CLIENT_TIMEOUT = 15.0


def free_udp_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (the kernel picked it for us)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def _read_line(proc: subprocess.Popen[str], deadline: float) -> str:
    """The next line of ``proc``'s stdout, or fail once ``deadline`` (monotonic) has passed."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise AssertionError("the server did not report that it is serving in time")
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"the server exited early with status {proc.wait(1)}")
            return line


@contextmanager
def example_server(program: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Start ``examples/<program>`` on a free loopback port; yield its base URI and the process."""
    port = free_udp_port()
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / program), "--bind", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    try:
        line = _read_line(proc, time.monotonic() + 10)
        assert line.startswith(f"serving on coap://127.0.0.1:{port}/"), line
        yield f"coap://127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=5)


def stop_with_ctrl_c(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    """Send SIGINT as Ctrl-C would; return the exit status and the rest of the output."""
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the server did not stop on SIGINT") from None
    return proc.returncode, out, err


def client(program: str, *args: str, expect: int = 0) -> str:
    """Run an example client to completion; return its stdout after checking its exit status."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / program), *args],
        capture_output=True, text=True, timeout=CLIENT_TIMEOUT, env=_env(),
    )
    assert done.returncode == expect, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout


@pytest.mark.parametrize("program", PROGRAMS)
def test_every_example_has_help(program: str) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / program), "--help"],
        capture_output=True, text=True, timeout=CLIENT_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:")


def test_trio_client_against_trio_server() -> None:
    with example_server("trio_server.py") as (base, proc):
        out = client("trio_client.py", f"{base}/hello", f"{base}/slow?delay=0.3", f"{base}/.well-known/core")
        assert f"GET {base}/hello: 2.05 Content [text/plain; charset=utf-8] Hello, CoAP!" in out
        assert f"GET {base}/slow?delay=0.3: 2.05 Content slept 0.3 s" in out
        assert '</hello>;rt="example.hello";ct="0 50"' in out
        assert "</note>;rt=\"example.note\";ct=0" in out

        out = client("trio_client.py", f"{base}/hello", "--accept", "json")
        assert '2.05 Content [application/json] {"greeting": "Hello, CoAP!"}' in out
        out = client("trio_client.py", f"{base}/hello", "--accept", "link", expect=1)
        assert "4.06 Not Acceptable" in out

        out = client("trio_client.py", f"{base}/echo", "--post", "ping")
        assert out == f"POST {base}/echo: 2.05 Content [text/plain; charset=utf-8] ping\n"
        out = client("trio_client.py", f"{base}/echo", "--post", "", expect=1)
        assert "4.00 Bad Request POST something to have it echoed" in out

        # The note's ETag: 2.03 Valid for a current ETag, If-Match guards a PUT.
        out = client("trio_client.py", f"{base}/note")
        etag = out.split("ETag ")[1].split()[0]
        assert out.rstrip().endswith("nothing yet")
        assert "2.03 Valid" in client("trio_client.py", f"{base}/note", "--etag", etag)
        out = client("trio_client.py", f"{base}/note", "--put", "milk", "--if-match", "00", expect=1)
        assert "4.12 Precondition Failed" in out
        assert "2.04 Changed" in client("trio_client.py", f"{base}/note", "--put", "milk", "--if-match", etag)
        out = client("trio_client.py", f"{base}/note", "--etag", etag)
        assert out.rstrip().endswith("milk") and "2.05 Content" in out

        returncode, _, err = stop_with_ctrl_c(proc)
        assert (returncode, err) == (0, ""), err


def test_a_timeout_cancels_the_request() -> None:
    with example_server("trio_server.py") as (base, _):
        started = time.monotonic()
        out = client("trio_client.py", f"{base}/slow?delay=20", "--timeout", "0.3", "--verbose", expect=1)
        assert time.monotonic() - started < 10
        assert "no response within 0.3 s (request cancelled)" in out
        assert "open_exchanges=0, live_tokens=0" in out

        out = client("asyncio_client.py", f"{base}/slow?delay=20", "--timeout", "0.3", expect=1)
        assert "no response within 0.3 s (request cancelled)" in out


def test_asyncio_client_against_asyncio_server() -> None:
    with example_server("asyncio_server.py") as (base, proc):
        out = client("asyncio_client.py", f"{base}/events", "--post", "door opened")
        assert out == f"POST {base}/events: 2.04 Changed\n"
        out = client("asyncio_client.py", f"{base}/events", "--post", "", expect=1)
        assert "4.00 Bad Request an event needs a payload" in out
        out = client("asyncio_client.py", f"{base}/events", f"{base}/slow?delay=0.3")
        assert f"GET {base}/events: 2.05 Content door opened" in out
        assert f"GET {base}/slow?delay=0.3: 2.05 Content slept 0.3 s" in out
        out = client("asyncio_client.py", f"{base}/missing", expect=1)
        assert "4.04 Not Found" in out

        returncode, rest, err = stop_with_ctrl_c(proc)
        assert (returncode, err) == (0, ""), err
        assert "processed event: door opened" in rest


def test_the_clients_speak_to_either_server() -> None:
    with example_server("asyncio_server.py") as (base, _):
        assert "2.04 Changed" in client("trio_client.py", f"{base}/events", "--post", "from trio")
    with example_server("trio_server.py") as (base, _):
        assert "2.05 Content ping" in client("asyncio_client.py", f"{base}/echo", "--post", "ping")


def test_client_reports_an_unreachable_server() -> None:
    port = free_udp_port()  # nobody listens there any more
    out = client("trio_client.py", f"coap://127.0.0.1:{port}/hello", "--timeout", "2", expect=1)
    assert f"GET coap://127.0.0.1:{port}/hello:" in out


@pytest.mark.parametrize("program", ["trio_server.py", "asyncio_server.py"])
def test_ctrl_c_on_a_busy_server_exits_quietly(program: str) -> None:
    # Under load, trio may raise KeyboardInterrupt inside the Context's socket task, so that it leaves
    # the Context wrapped in an exception group; the example must still exit without a traceback.
    with example_server(program) as (base, proc):
        port = int(base.rsplit(":", 1)[1])
        datagrams = [
            Message(Type.NON, Code.GET, mid=mid, token=b"x", uri=f"{base}/hello").encode()
            for mid in range(2000)
        ]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flood:
            flood.setblocking(False)
            for datagram in datagrams:
                with contextlib.suppress(BlockingIOError):
                    flood.sendto(datagram, ("127.0.0.1", port))
            returncode, _, err = stop_with_ctrl_c(proc)
        assert (returncode, err) == (0, ""), err


def _tutorial_python_blocks() -> list[tuple[int, str]]:
    lines = (Path(__file__).resolve().parent.parent / "docs" / "tutorial.rst").read_text().splitlines()
    blocks: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        if line.strip() == ".. code-block:: python":
            body = list(itertools.takewhile(lambda s: not s.strip() or s.startswith("   "), lines[i + 1 :]))
            blocks.append((i + 1, textwrap.dedent("\n".join(body))))
    return blocks


def test_tutorial_snippets_compile() -> None:
    # The tutorial's snippets talk to a server, so they are not run here (the example programs they
    # come from are); they must at least be valid Python, where ``await`` is allowed at the top level.
    blocks = _tutorial_python_blocks()
    assert blocks
    for lineno, code in blocks:
        compile(code, f"docs/tutorial.rst:{lineno}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


@pytest.mark.parametrize("program", ["trio_client.py", "asyncio_client.py"])
def test_a_bad_uri_is_one_line_and_exit_2(program: str) -> None:
    # Issue 13, item 13: trio_client.py printed ~40 lines of nested exception groups.
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / program), "bad uri"],
        capture_output=True, text=True, timeout=CLIENT_TIMEOUT, env=_env(),
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"{program}: error: invalid URI 'bad uri': relative URI: an absolute URI with a scheme is needed\n"
    )


@pytest.mark.parametrize("program", ["trio_client.py", "asyncio_client.py"])
def test_a_refused_request_is_explained_in_words(program: str) -> None:
    # Item 13: "NetworkError: [Errno 111] ('::ffff:127.0.0.1', 5999, 0, 0): ECONNREFUSED".
    port = free_udp_port()
    out = client(program, f"coap://127.0.0.1:{port}/hello", "--timeout", "5", expect=1)
    assert out == f"GET coap://127.0.0.1:{port}/hello: Connection refused\n"
