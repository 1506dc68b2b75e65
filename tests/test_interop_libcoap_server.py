"""coapio's client against libcoap's example server (``coap-server-notls``) on loopback.

One server process per module (a sync, module-scoped fixture: pytest-trio's async fixtures are
function-scoped only). Its default resources, as its ``/.well-known/core`` lists them: ``/`` (a text
banner), ``/time`` (observable clock, text), ``/async?N`` (acknowledged at once with an empty ACK, the
response "done" follows as a separate CON after N whole seconds, N >= 1) and ``/example_data`` (GET/PUT).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import attrs
import pytest
import trio
from conftest import require_binary

from coapio import Code, ContentFormat, Context, Counters, TransportTuning, Type
from coapio.protocol.linkformat import parse_links

pytestmark = pytest.mark.interop

SERVER = "coap-server-notls"
_STARTUP_TIMEOUT = 5.0
_PING_WAIT = 0.2
_IDLE = Counters(open_exchanges=0, live_tokens=0, live_handlers=0, dedup_entries=0)


# --- the libcoap server process --------------------------------------------------------------------


def _free_udp_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _answers_ping(host: str, port: int) -> bool:
    """Send a CoAP ping (Empty CON, RFC 7252 §4.3) and wait briefly for the Reset that answers it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    mid = os.urandom(2)
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(_PING_WAIT)
        try:
            s.sendto(b"\x40\x00" + mid, (host, port))
            data, _ = s.recvfrom(2048)
        except OSError:  # timeout, or ICMP port unreachable while the server is still starting
            return False
    return len(data) >= 4 and data[0] >> 4 == 0b0111 and data[2:4] == mid  # v1, RST, same MID


def _port_bound(host: str, port: int) -> bool:
    """Whether some socket holds ``host:port`` (for a server that must not be made to send anything)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            return e.errno == errno.EADDRINUSE
    time.sleep(0.02)
    return False


@contextlib.contextmanager
def _libcoap_server(
    host: str, *extra: str, ready: Callable[[str, int], bool] = _answers_ping
) -> Iterator[int]:
    """Run ``coap-server-notls -A host -p PORT [extra...]`` until the block ends; yield PORT once
    ``ready`` says so (by default: once it answers a CoAP ping)."""
    path = require_binary(SERVER)
    for _attempt in range(5):
        port = _free_udp_port(host)
        proc = subprocess.Popen(
            [path, "-A", host, "-p", str(port), *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + _STARTUP_TIMEOUT
            while proc.poll() is None and time.monotonic() < deadline:
                if ready(host, port) and proc.poll() is None:
                    yield port
                    return
            # It exited (most likely the port was taken in between) or never answered: try another port.
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    pytest.fail(f"{SERVER} did not start answering on {host} within {_STARTUP_TIMEOUT} s (5 attempts)")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The base URI of a libcoap server on 127.0.0.1, shared by the module."""
    with _libcoap_server("127.0.0.1") as port:
        yield f"coap://127.0.0.1:{port}"


@pytest.fixture
def lossy_server() -> Iterator[str]:
    """A libcoap server that drops the first datagram it sends (``-l 1``); readiness is checked without
    making it send anything."""
    with _libcoap_server("127.0.0.1", "-l", "1", ready=_port_bound) as port:
        yield f"coap://127.0.0.1:{port}"


def _have_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture
def server_v6() -> Iterator[str]:
    if not _have_ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback (::1)")
    with _libcoap_server("::1") as port:
        yield f"coap://[::1]:{port}"


def _assert_idle(ctx: Context) -> None:
    """No exchange, token or handler is left (dedup entries may remain for received CON/NON messages)."""
    c = ctx.counters
    assert (c.open_exchanges, c.live_tokens, c.live_handlers) == (0, 0, 0), c


# --- tests -----------------------------------------------------------------------------------------


async def test_get_root_returns_libcoap_banner_text(server: str) -> None:
    async with Context() as ctx:
        with trio.fail_after(5):
            response = await ctx.get(server + "/")
        assert response.code == Code.CONTENT
        assert response.type is Type.ACK  # piggy-backed
        assert response.payload.startswith(b"This is a test server made with libcoap")
        # libcoap 4.3 leaves out Content-Format for text/plain (0); a later version may send it.
        assert response.opt.content_format in (None, ContentFormat.TEXT_PLAIN)
        _assert_idle(ctx)


async def test_well_known_core_lists_default_resources_in_link_format(server: str) -> None:
    async with Context() as ctx:
        with trio.fail_after(5):
            response = await ctx.get(server + "/.well-known/core")
    assert response.code == Code.CONTENT
    assert response.opt.content_format == ContentFormat.LINK_FORMAT
    links = {link.href: link for link in parse_links(response.payload)}
    assert {"/", "/time", "/async", "/example_data"} <= set(links)
    time_link = links["/time"]
    assert time_link.get("rt") == "ticks"
    assert time_link.get("if") == "clock"
    assert time_link.get("ct") == "0"
    assert "obs" in [name for name, _ in time_link.attributes]
    assert links["/"].get("title") == "General Info"


async def test_well_known_core_query_filter_is_sent_as_uri_query(server: str) -> None:
    async with Context() as ctx:
        with trio.fail_after(5):
            response = await ctx.get(server + "/.well-known/core?rt=ticks")
    assert response.code == Code.CONTENT
    assert [link.href for link in parse_links(response.payload)] == ["/time"]


async def test_get_time_returns_clock_text(server: str) -> None:
    async with Context() as ctx:
        with trio.fail_after(5):
            response = await ctx.get(server + "/time")
    assert response.code == Code.CONTENT
    assert response.opt.content_format in (None, ContentFormat.TEXT_PLAIN)
    assert response.opt.max_age == 1
    # libcoap formats the clock as strftime("%b %d %H:%M:%S"), e.g. "Nov 23 05:00:39".
    assert re.fullmatch(rb"[A-Z][a-z]{2} \d\d \d\d:\d\d:\d\d", response.payload), response.payload


async def test_async_resource_answers_with_a_separate_con_response(server: str) -> None:
    async with Context() as ctx:
        start = trio.current_time()
        with trio.fail_after(5):
            response = await ctx.get(server + "/async?1")
        elapsed = trio.current_time() - start
        assert response.code == Code.CONTENT
        assert response.payload == b"done"
        assert response.type is Type.CON  # separate, not piggy-backed on the (empty) ACK
        assert 0.9 <= elapsed < 4, elapsed  # libcoap delays by whole seconds
        _assert_idle(ctx)
        # The separate CON response was acknowledged and remembered for deduplication.
        assert ctx.counters.dedup_entries == 1


async def test_put_then_get_example_data_round_trips(server: str) -> None:
    payload = b"written by coapio \xe2\x9c\x93"
    async with Context() as ctx:
        with trio.fail_after(5):
            put = await ctx.put(server + "/example_data", payload, content_format=ContentFormat.TEXT_PLAIN)
            assert put.code in (Code.CHANGED, Code.CREATED)
            got = await ctx.get(server + "/example_data")
        assert got.code == Code.CONTENT
        assert got.payload == payload
        _assert_idle(ctx)


async def test_non_request_gets_non_response(server: str) -> None:
    async with Context() as ctx:
        with trio.fail_after(5):
            response = await ctx.get(server + "/", con=False)
        assert response.code == Code.CONTENT
        assert response.type is Type.NON
        assert response.payload.startswith(b"This is a test server")
        _assert_idle(ctx)  # the NON request's NSTART slot was released by the response


async def test_missing_path_is_4_04(server: str) -> None:
    async with Context() as ctx:
        with trio.fail_after(5):
            response = await ctx.get(server + "/no/such/resource")
    assert response.code == Code.NOT_FOUND


@pytest.mark.parametrize("nstart", [1, 50])
async def test_fifty_concurrent_requests_all_answered_with_their_own_tokens(server: str, nstart: int) -> None:
    paths = ["/", "/time", "/.well-known/core", "/no/such/resource", "/example_data"]
    results: list[tuple[bytes, bytes, Code, str]] = []

    async with Context(tuning=attrs.evolve(TransportTuning(), nstart=nstart)) as ctx:

        async def one(i: int) -> None:
            path = paths[i % len(paths)]
            request = Context.build(Code.GET, server + path)
            request.token = i.to_bytes(2, "big")  # request() sends a copy: the caller picks the token
            response = await ctx.request(request)
            results.append((request.token, response.token, response.code, path))

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for i in range(50):
                    nursery.start_soon(one, i)
        _assert_idle(ctx)

    assert len(results) == 50
    assert all(sent == received for sent, received, _, _ in results)
    assert len({sent for sent, _, _, _ in results}) == 50
    for _, _, code, path in results:
        assert code == (Code.NOT_FOUND if path == "/no/such/resource" else Code.CONTENT), path


async def test_cancelled_request_to_slow_resource_frees_everything(server: str) -> None:
    async with Context() as ctx:
        with trio.move_on_after(0.3) as scope:
            await ctx.get(server + "/async?30")  # empty ACK at once, the response only after 30 s
        assert scope.cancelled_caught
        assert ctx.counters == _IDLE
        # The NSTART slot (1 by default) is free again: the next request goes out at once.
        with trio.fail_after(2):
            response = await ctx.get(server + "/")
        assert response.code == Code.CONTENT
        _assert_idle(ctx)


async def test_ipv6_loopback(server_v6: str) -> None:
    async with Context() as ctx:
        with trio.fail_after(5):
            response = await ctx.get(server_v6 + "/")
            links = parse_links((await ctx.get(server_v6 + "/.well-known/core")).payload)
        assert response.code == Code.CONTENT
        assert response.payload.startswith(b"This is a test server made with libcoap")
        assert "/time" in {link.href for link in links}
        _assert_idle(ctx)


async def test_lost_response_is_recovered_by_retransmission(lossy_server: str) -> None:
    tuning = TransportTuning(ack_timeout=0.25)
    async with Context(tuning=tuning) as ctx:
        with trio.fail_after(5):
            response = await ctx.get(lossy_server + "/")
        assert response.code == Code.CONTENT
        assert response.payload.startswith(b"This is a test server made with libcoap")
        assert ctx.transports[0].layer.stats.retransmissions == 1
        _assert_idle(ctx)
