"""coapio's runtime against aiocoap's, both ways, on loopback, in one asyncio event loop.

aiocoap is asyncio-only, so everything here runs on **asyncio** through anyio: this is also where
coapio's public API is proven to work on the asyncio backend, not only on trio.

How the tests run: every test is a plain (sync) function that hands its body to
``anyio.run(..., backend="asyncio")``. ``@pytest.mark.anyio`` cannot be used in this project: with
pytest-trio's ``trio_mode = true`` every ``async def`` test is auto-marked ``trio`` and pytest-trio swaps
the test function for a sync trio runner before anyio's ``pytest_pyfunc_call`` looks at it, so an
anyio-marked test would silently run on *trio* (checked: ``sniffio.current_async_library()`` is ``"trio"``
there). Each body asserts that it really runs on asyncio.

aiocoap is used only through its public API (``Context.create_client_context`` /
``create_server_context``, ``Message``, ``resource.Site``/``Resource``, ``error``).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import attrs
import pytest
import sniffio
from conftest import require_interop

from coapio import Code, ContentFormat, Context, Counters, Message, Resource, Site, TransportTuning, Type
from coapio.error import BadRequest
from coapio.protocol.linkformat import parse_links

require_interop("aiocoap")
import aiocoap  # noqa: E402 - only once the peer is known to be importable
import aiocoap.error as aerror  # noqa: E402 - only once the peer is known to be importable
import aiocoap.resource as aresource  # noqa: E402
from aiocoap import optiontypes  # noqa: E402

pytestmark = pytest.mark.interop

_TIMEOUT = 10.0  # per test body; a passing test takes well under a second
_IDLE = Counters(open_exchanges=0, live_tokens=0, live_handlers=0, dedup_entries=0)


def run_on_asyncio(body: Callable[[], Awaitable[None]]) -> None:
    """Run ``body`` on asyncio through anyio, bounded by :data:`_TIMEOUT`."""

    async def main() -> None:
        assert sniffio.current_async_library() == "asyncio"
        with anyio.fail_after(_TIMEOUT):
            await body()

    anyio.run(main, backend="asyncio")


def _assert_idle(ctx: Context) -> None:
    """No exchange, token or handler is left (dedup entries remain for CON/NON messages received)."""
    c = ctx.counters
    assert (c.open_exchanges, c.live_tokens, c.live_handlers) == (0, 0, 0), c


# =====================================================================================================
# 1. aiocoap client -> coapio server
# =====================================================================================================


class Text(Resource):
    link_attributes = {"rt": "greeting", "ct": 0, "title": "Plain text"}

    def render_get(self, request: Message) -> Message:
        response = Message(payload=b"hello from coapio")
        response.opt.content_format = ContentFormat.TEXT_PLAIN
        return response


class Slow(Resource):
    """An async renderer that outlasts the empty-ACK delay, so its response goes separately."""

    link_attributes = {"rt": "slow"}

    def __init__(self) -> None:
        super().__init__()
        self.finished = 0

    async def render_get(self, request: Message) -> Message:
        await anyio.sleep(0.5)
        self.finished += 1
        response = Message(payload=b"worth the wait")
        response.opt.content_format = ContentFormat.TEXT_PLAIN
        return response


class Echo(Resource):
    link_attributes = {"if": "echo"}

    def render_post(self, request: Message) -> Message:
        response = Message(payload=request.payload)
        if request.opt.content_format is not None:
            response.opt.content_format = request.opt.content_format
        return response


class Picky(Resource):
    def render_get(self, request: Message) -> Message:
        raise BadRequest("query 'x' is required")


class Broken(Resource):
    link_attributes = None  # hidden from /.well-known/core

    def render_get(self, request: Message) -> Message:
        raise RuntimeError("a bug in a renderer")


def _coapio_site() -> tuple[Site, Slow]:
    site = Site()
    slow = Slow()
    site.add("text", Text())
    site.add("slow", slow)
    site.add("echo", Echo())
    site.add("picky", Picky())
    site.add("broken", Broken())
    return site, slow


@asynccontextmanager
async def coapio_server(site: Site) -> AsyncIterator[tuple[Context, str]]:
    async with Context(bind=[("127.0.0.1", 0)], site=site) as ctx:
        port = ctx.transports[0].local[1]
        yield ctx, f"coap://127.0.0.1:{port}"


@asynccontextmanager
async def aiocoap_client() -> AsyncIterator[aiocoap.Context]:
    client = await aiocoap.Context.create_client_context(transports=["udp6"])
    try:
        yield client
    finally:
        await client.shutdown()


async def _arequest(client: aiocoap.Context, code: object, uri: str, **kwargs: object) -> aiocoap.Message:
    return await client.request(aiocoap.Message(code=code, uri=uri, **kwargs)).response


def test_aiocoap_client_gets_plain_renderer_text_piggybacked() -> None:
    async def body() -> None:
        site, _ = _coapio_site()
        async with coapio_server(site) as (ctx, base), aiocoap_client() as client:
            response = await _arequest(client, aiocoap.GET, base + "/text")
            assert response.code == aiocoap.CONTENT
            assert response.payload == b"hello from coapio"
            assert response.opt.content_format == 0
            assert response.mtype == aiocoap.ACK
            _assert_idle(ctx)

    run_on_asyncio(body)


def test_aiocoap_client_gets_async_renderer_response_separately() -> None:
    async def body() -> None:
        site, slow = _coapio_site()
        async with coapio_server(site) as (ctx, base), aiocoap_client() as client:
            start = anyio.current_time()
            response = await _arequest(client, aiocoap.GET, base + "/slow")
            assert anyio.current_time() - start >= 0.5
            assert response.code == aiocoap.CONTENT
            assert response.payload == b"worth the wait"
            assert response.opt.content_format == 0
            assert response.mtype == aiocoap.CON  # empty ACK first, then a separate CON response
            assert slow.finished == 1
            # aiocoap acknowledged the separate response before handing it over; the next exchange on
            # the same socket pair is answered only after coapio has read that ACK.
            assert (await _arequest(client, aiocoap.GET, base + "/text")).code == aiocoap.CONTENT
            _assert_idle(ctx)

    run_on_asyncio(body)


def test_aiocoap_client_posts_to_echo_and_gets_payload_and_format_back() -> None:
    async def body() -> None:
        site, _ = _coapio_site()
        async with coapio_server(site) as (_ctx, base), aiocoap_client() as client:
            payload = b'{"answer": 42, "text": "\xc3\xa4"}'
            response = await _arequest(
                client, aiocoap.POST, base + "/echo", payload=payload, content_format=50
            )
            assert response.code == aiocoap.CHANGED
            assert response.payload == payload
            assert response.opt.content_format == 50
            empty = await _arequest(client, aiocoap.POST, base + "/echo")
            assert empty.code == aiocoap.CHANGED
            assert empty.payload == b""
            assert empty.opt.content_format is None

    run_on_asyncio(body)


def test_aiocoap_client_sees_coapio_error_codes() -> None:
    async def body() -> None:
        site, _ = _coapio_site()
        async with coapio_server(site) as (ctx, base), aiocoap_client() as client:
            missing = await _arequest(client, aiocoap.GET, base + "/no/such/thing")
            assert missing.code == aiocoap.NOT_FOUND
            not_allowed = await _arequest(client, aiocoap.PUT, base + "/text", payload=b"x")
            assert not_allowed.code == aiocoap.METHOD_NOT_ALLOWED
            bad = await _arequest(client, aiocoap.GET, base + "/picky")
            assert bad.code == aiocoap.BAD_REQUEST
            assert bad.payload == b"query 'x' is required"  # the diagnostic payload
            broken = await _arequest(client, aiocoap.GET, base + "/broken")
            assert broken.code == aiocoap.INTERNAL_SERVER_ERROR
            # ... and the server goes on.
            assert (await _arequest(client, aiocoap.GET, base + "/text")).code == aiocoap.CONTENT
            _assert_idle(ctx)

    run_on_asyncio(body)


def test_aiocoap_client_reads_coapio_well_known_core() -> None:
    async def body() -> None:
        site, _ = _coapio_site()
        async with coapio_server(site) as (_ctx, base), aiocoap_client() as client:
            response = await _arequest(client, aiocoap.GET, base + "/.well-known/core")
            assert response.code == aiocoap.CONTENT
            assert response.opt.content_format == 40
            links = {link.href: link for link in parse_links(response.payload)}
            assert set(links) == {"/echo", "/picky", "/slow", "/text"}
            assert links["/text"].get("rt") == "greeting"
            assert links["/text"].get("ct") == "0"
            assert links["/text"].get("title") == "Plain text"
            assert links["/echo"].get("if") == "echo"
            filtered = await _arequest(client, aiocoap.GET, base + "/.well-known/core?rt=slow")
            assert [link.href for link in parse_links(filtered.payload)] == ["/slow"]

    run_on_asyncio(body)


def test_aiocoap_client_non_requests_get_non_responses_inline_and_separate() -> None:
    async def body() -> None:
        site, slow = _coapio_site()
        async with coapio_server(site) as (ctx, base), aiocoap_client() as client:
            response = await _arequest(
                client, aiocoap.GET, base + "/text", transport_tuning=aiocoap.Unreliable
            )
            assert response.code == aiocoap.CONTENT
            assert response.mtype == aiocoap.NON
            assert response.payload == b"hello from coapio"
            late = await _arequest(client, aiocoap.GET, base + "/slow", transport_tuning=aiocoap.Unreliable)
            assert late.code == aiocoap.CONTENT
            assert late.mtype == aiocoap.NON
            assert late.payload == b"worth the wait"
            assert slow.finished == 1
            _assert_idle(ctx)

    run_on_asyncio(body)


def test_aiocoap_client_unrecognized_critical_option_gets_4_02() -> None:
    async def body() -> None:
        site, _ = _coapio_site()
        async with coapio_server(site) as (_ctx, base), aiocoap_client() as client:
            request = aiocoap.Message(code=aiocoap.GET, uri=base + "/text")
            request.opt.add_option(optiontypes.OpaqueOption(65001, b"x"))  # odd number: critical
            response = await client.request(request).response
            assert response.code == aiocoap.BAD_OPTION
            assert b"65001" in response.payload
            # An elective unknown option is ignored.
            request = aiocoap.Message(code=aiocoap.GET, uri=base + "/text")
            request.opt.add_option(optiontypes.OpaqueOption(65000, b"x"))
            assert (await client.request(request).response).code == aiocoap.CONTENT

    run_on_asyncio(body)


def test_aiocoap_client_proxy_request_gets_5_05() -> None:
    async def body() -> None:
        site, _ = _coapio_site()
        async with coapio_server(site) as (_ctx, base), aiocoap_client() as client:
            request = aiocoap.Message(code=aiocoap.GET, uri=base + "/text")
            request.opt.proxy_uri = "coap://example.invalid/x"
            response = await client.request(request).response
            assert response.code == aiocoap.PROXYING_NOT_SUPPORTED

    run_on_asyncio(body)


def test_block_wise_post_from_aiocoap_reaches_the_renderer_whole_and_is_echoed_back() -> None:
    async def body() -> None:
        site, _ = _coapio_site()
        seen: list[int] = []

        class RecordingEcho(Echo):
            def render_post(self, request: Message) -> Message:
                seen.append(len(request.payload))
                return super().render_post(request)

        site.add("echo", RecordingEcho())
        big = bytes(range(256)) * 12  # 3072 bytes: aiocoap sends it in three Block1 blocks of 1024
        async with coapio_server(site) as (ctx, base), aiocoap_client() as client:
            response = await _arequest(client, aiocoap.POST, base + "/echo", payload=big)
            _assert_idle(ctx)
        # coapio reassembles the Block1 body, renders it once, and returns the echo through Block2.
        assert response.code == aiocoap.CHANGED
        assert response.payload == big, len(response.payload)
        assert seen == [len(big)], f"the renderer saw bodies of {seen} bytes"

    run_on_asyncio(body)


# =====================================================================================================
# 2. coapio client -> aiocoap server
# =====================================================================================================


class AText(aresource.Resource):
    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(payload=b"hello from aiocoap", content_format=0)


class AEcho(aresource.Resource):
    async def _echo(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(
            code=aiocoap.CHANGED, payload=request.payload, content_format=request.opt.content_format
        )

    async def render_put(self, request: aiocoap.Message) -> aiocoap.Message:
        return await self._echo(request)

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        return await self._echo(request)


class ASlow(aresource.Resource):
    """Sleeps past aiocoap's empty-ACK delay: aiocoap sends an empty ACK, then a separate response."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        await asyncio.sleep(self.delay)
        return aiocoap.Message(payload=b"slow but sure", content_format=0)


class ABig(aresource.Resource):
    """A representation larger than aiocoap's 1024-byte block: aiocoap answers with Block2."""

    body = bytes(range(256)) * 12

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(payload=self.body, content_format=42)


class AMissing(aresource.Resource):
    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        raise aerror.NotFound()


class AForbidden(aresource.Resource):
    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        raise aerror.Forbidden()


def _aiocoap_site() -> aresource.Site:
    site = aresource.Site()
    site.add_resource(["text"], AText())
    site.add_resource(["echo"], AEcho())
    site.add_resource(["slow"], ASlow(0.5))
    site.add_resource(["very-slow"], ASlow(60))
    site.add_resource(["big"], ABig())
    site.add_resource(["gone"], AMissing())
    site.add_resource(["secret"], AForbidden())
    site.add_resource([".well-known", "core"], aresource.WKCResource(site.get_resources_as_linkheader))
    return site


@asynccontextmanager
async def aiocoap_server() -> AsyncIterator[str]:
    """An aiocoap server on 127.0.0.1 at a free port (retried if another process takes it first)."""
    for _attempt in range(5):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        try:
            server = await aiocoap.Context.create_server_context(
                _aiocoap_site(), bind=("127.0.0.1", port), transports=["udp6"]
            )
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                continue
            raise
        break
    else:
        pytest.fail("no free UDP port for the aiocoap server after 5 attempts")
    try:
        yield f"coap://127.0.0.1:{port}"
    finally:
        await server.shutdown()


def test_coapio_client_gets_text_from_aiocoap() -> None:
    async def body() -> None:
        async with aiocoap_server() as base, Context() as ctx:
            response = await ctx.get(base + "/text")
            assert response.code == Code.CONTENT
            assert response.type is Type.ACK
            assert response.payload == b"hello from aiocoap"
            assert response.opt.content_format == ContentFormat.TEXT_PLAIN
            _assert_idle(ctx)

    run_on_asyncio(body)


def test_coapio_client_put_and_post_echo_from_aiocoap() -> None:
    async def body() -> None:
        async with aiocoap_server() as base, Context() as ctx:
            payload = b"\x01\x02binary\xff"
            put = await ctx.put(base + "/echo", payload, content_format=ContentFormat.OCTET_STREAM)
            assert put.code == Code.CHANGED
            assert put.payload == payload
            assert put.opt.content_format == ContentFormat.OCTET_STREAM
            post = await ctx.post(base + "/echo", b'{"a": 1}', content_format=ContentFormat.JSON)
            assert post.code == Code.CHANGED
            assert post.payload == b'{"a": 1}'
            assert post.opt.content_format == ContentFormat.JSON
            _assert_idle(ctx)

    run_on_asyncio(body)


def test_coapio_client_receives_aiocoap_separate_response() -> None:
    async def body() -> None:
        async with aiocoap_server() as base, Context() as ctx:
            start = anyio.current_time()
            response = await ctx.get(base + "/slow")
            assert anyio.current_time() - start >= 0.5
            assert response.code == Code.CONTENT
            assert response.payload == b"slow but sure"
            assert response.type is Type.CON  # after aiocoap's empty ACK
            _assert_idle(ctx)
            assert ctx.counters.dedup_entries == 1  # the separate CON, acknowledged and remembered

    run_on_asyncio(body)


def test_coapio_client_sees_aiocoap_error_codes() -> None:
    async def body() -> None:
        async with aiocoap_server() as base, Context() as ctx:
            assert (await ctx.get(base + "/gone")).code == Code.NOT_FOUND
            assert (await ctx.get(base + "/secret")).code == Code.FORBIDDEN
            assert (await ctx.get(base + "/no/such/path")).code == Code.NOT_FOUND
            assert (await ctx.post(base + "/text", b"x")).code == Code.METHOD_NOT_ALLOWED
            _assert_idle(ctx)

    run_on_asyncio(body)


def test_coapio_client_parses_aiocoap_well_known_core() -> None:
    async def body() -> None:
        async with aiocoap_server() as base, Context() as ctx:
            response = await ctx.get(base + "/.well-known/core")
        assert response.code == Code.CONTENT
        assert response.opt.content_format == ContentFormat.LINK_FORMAT
        links = parse_links(response.payload)
        hrefs = {link.href for link in links}
        assert {"/text", "/echo", "/slow", "/gone", "/secret", "/.well-known/core"} <= hrefs
        # aiocoap advertises itself with an absolute link (rel="impl-info").
        assert any(link.get("rel") == "impl-info" and "aiocoap" in link.href for link in links)

    run_on_asyncio(body)


def test_coapio_client_non_request_to_aiocoap() -> None:
    async def body() -> None:
        async with aiocoap_server() as base, Context() as ctx:
            response = await ctx.get(base + "/text", con=False)
            assert response.code == Code.CONTENT
            assert response.type is Type.NON
            assert response.payload == b"hello from aiocoap"
            _assert_idle(ctx)

    run_on_asyncio(body)


def test_coapio_client_concurrent_requests_to_aiocoap_get_their_own_responses() -> None:
    async def body() -> None:
        results: list[tuple[bytes, bytes, bytes, bytes]] = []
        async with aiocoap_server() as base, Context(
            tuning=attrs.evolve(TransportTuning(), nstart=20)
        ) as ctx:

            async def one(i: int) -> None:
                payload = f"request {i}".encode()
                request = Context.build(Code.POST, base + "/echo", payload=payload)
                request.token = os.urandom(8)  # request() sends a copy: the caller picks the token to see it
                response = await ctx.request(request)
                assert response.code == Code.CHANGED
                results.append((request.token, response.token, payload, response.payload))

            async with anyio.create_task_group() as tg:
                for i in range(30):
                    tg.start_soon(one, i)
            _assert_idle(ctx)
        assert len(results) == 30
        assert len({sent for sent, _, _, _ in results}) == 30
        for sent, received, payload, echoed in results:
            assert sent == received
            assert payload == echoed

    run_on_asyncio(body)


def test_coapio_cancelled_request_to_aiocoap_frees_everything() -> None:
    async def body() -> None:
        async with aiocoap_server() as base, Context() as ctx:
            with anyio.move_on_after(0.5) as scope:
                await ctx.get(base + "/very-slow")  # aiocoap sends an empty ACK, the response never
            assert scope.cancelled_caught
            assert ctx.counters == _IDLE
            # NSTART (1) is free again: the next request is answered at once.
            with anyio.fail_after(2):
                assert (await ctx.get(base + "/text")).code == Code.CONTENT
            _assert_idle(ctx)

    run_on_asyncio(body)


def test_coapio_client_reassembles_aiocoap_block2_response() -> None:
    async def body() -> None:
        async with aiocoap_server() as base, Context() as ctx:
            response = await ctx.get(base + "/big")
            _assert_idle(ctx)
        assert response.code == Code.CONTENT
        assert response.payload == ABig.body, (len(response.payload), response.opt.block2)
        assert response.opt.content_format == 42
        assert response.opt.block2 is None  # a transfer artefact, not part of the whole response

    run_on_asyncio(body)


# =====================================================================================================
# Both at once: one coapio context serving aiocoap while it requests from aiocoap, in one loop
# =====================================================================================================


def test_coapio_serves_and_requests_at_the_same_time_against_aiocoap() -> None:
    async def body() -> None:
        site, slow = _coapio_site()
        async with aiocoap_server() as abase, coapio_server(site) as (ctx, cbase), \
                aiocoap_client() as client:
            got: dict[str, bytes] = {}

            async def coapio_side() -> None:
                got["coapio"] = (await ctx.get(abase + "/slow")).payload

            async def aiocoap_side() -> None:
                got["aiocoap"] = (await _arequest(client, aiocoap.GET, cbase + "/slow")).payload

            async with anyio.create_task_group() as tg:
                tg.start_soon(coapio_side)
                tg.start_soon(aiocoap_side)
            assert got == {"coapio": b"slow but sure", "aiocoap": b"worth the wait"}
            assert slow.finished == 1
            assert (await _arequest(client, aiocoap.GET, cbase + "/text")).code == aiocoap.CONTENT
            _assert_idle(ctx)

    run_on_asyncio(body)
