"""A CoAP server offering the resources of the ETSI CoAP#4 plugtest (TD_COAP_CORE_* and TD_COAP_LINK_*).

Run it with ``python examples/plugtest_server.py --bind HOST:PORT [--bind ...] [-v]`` (default ``[::]:5683``);
``-v`` logs every request. Import it (by file path: ``examples/`` is not a package) for :func:`build_site`,
the site without any socket, or :func:`serve`, the server as a trio task.

Each resource class names the test descriptions it serves. The TDs themselves are in the repository
cabo/td-coap4 (``base.yml``, ``link.yml``): each TD's pre-conditions say what a resource must do.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import signal
import sys
from collections.abc import Sequence

import anyio
import trio

import coapio
from coapio import Code, ContentFormat, Message, Resource, Site
from coapio.error import NotAcceptable, NotFound
from coapio.linkformat import serialize_links
from coapio.resource import WellKnownCore, check_preconditions, validate_etag

__all__ = ["SEPARATE_DELAY", "build_site", "main", "resource_at", "serve", "serve_until_signal"]

log = logging.getLogger("plugtest")

#: How long /separate takes to answer: long enough for the server's empty ACK to go first.
SEPARATE_DELAY = 1.0


def _path(request: Message) -> str:
    return "/" + "/".join(request.opt.uri_path)


def _text(payload: str | bytes, content_format: int = ContentFormat.TEXT_PLAIN) -> Message:
    """A response with a payload and its Content-Format (the code defaults to the method's success code)."""
    response = Message(payload=payload.encode() if isinstance(payload, str) else payload)
    response.opt.content_format = content_format
    return response


class PlugtestResource(Resource):
    """Base of the plugtest resources: counts requests per method and logs each one (shown with ``-v``)."""

    def __init__(self) -> None:
        super().__init__()
        #: Requests handled, by method name ("GET", ...): tells a retransmission from a second request.
        self.requests: dict[str, int] = {}

    def note(self, request: Message) -> None:
        method = request.code.name
        self.requests[method] = self.requests.get(method, 0) + 1
        log.info("%s %s from %s (%s, mid %s, token %s, %r)", method, _path(request), request.remote,
                 request.type.name, request.mid, request.token.hex() or "-", request.opt)


class TestResource(PlugtestResource):
    """/test: GET, PUT, POST and DELETE (TD_COAP_CORE_01-08, 10, 12, 15, 18; LINK_08's non-matching entry).

    GET answers 2.05 with the current text and its Content-Format; PUT replaces it (2.04); DELETE restores the
    initial text (2.02; the resource stays, so the other TDs can still use it); POST creates a resource at
    /location1/location2/location3 holding the request's payload and answers 2.01 with three Location-Path
    options (TD_COAP_CORE_18).
    """

    INITIAL = b"Hello from the coapio plugtest server: this is /test"
    CREATED_AT = ("location1", "location2", "location3")
    link_attributes = {"title": "Default test resource"}

    def __init__(self, site: Site) -> None:
        super().__init__()
        self.site = site
        self.content = self.INITIAL
        self.content_format: int = ContentFormat.TEXT_PLAIN

    def render_get(self, request: Message) -> Message:
        self.note(request)
        return _text(self.content, content_format=self.content_format)

    def render_put(self, request: Message) -> Message:
        self.note(request)
        self.content = request.payload
        cf = request.opt.content_format
        self.content_format = ContentFormat.TEXT_PLAIN if cf is None else cf
        return Message(code=Code.CHANGED)

    def render_post(self, request: Message) -> Message:
        self.note(request)
        cf = request.opt.content_format
        self.site.add(self.CREATED_AT, StoredResource(request.payload, cf))
        response = Message(code=Code.CREATED)
        response.opt.location_path = self.CREATED_AT
        return response

    def render_delete(self, request: Message) -> Message:
        self.note(request)
        self.content = self.INITIAL
        self.content_format = ContentFormat.TEXT_PLAIN
        return Message(code=Code.DELETED)


class StoredResource(PlugtestResource):
    """/location1/location2/location3, created by a POST to /test (TD_COAP_CORE_18): GET and DELETE."""

    link_attributes = {"title": "Created by POST /test"}

    def __init__(self, content: bytes, content_format: int | None) -> None:
        super().__init__()
        self.content = content
        self.content_format = ContentFormat.OCTET_STREAM if content_format is None else content_format

    def render_get(self, request: Message) -> Message:
        self.note(request)
        return _text(self.content, content_format=self.content_format)


class SeparateResource(PlugtestResource):
    """/separate: GET answered only after ``delay`` seconds (TD_COAP_CORE_09, 11, 16, 17).

    An ``async`` renderer, so the server first acknowledges a CON request with an empty ACK and then sends
    the 2.05 as a separate CON; a NON request gets no ACK and a NON response.
    """

    link_attributes = {"title": "Resource answered separately"}

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.completed = 0

    async def render_get(self, request: Message) -> Message:
        self.note(request)
        await anyio.sleep(self.delay)
        self.completed += 1
        return _text(f"separate response after {self.delay:g} s ({request.type.name} request)")


class SegmentsResource(PlugtestResource):
    """/seg1/seg2/seg3: GET with three Uri-Path options (TD_COAP_CORE_13)."""

    link_attributes = {"title": "Long path resource"}

    def render_get(self, request: Message) -> Message:
        self.note(request)
        return _text("/seg1/seg2/seg3: " + " | ".join(request.opt.uri_path))


class QueryResource(PlugtestResource):
    """/query: GET echoing its Uri-Query options, one per line (TD_COAP_CORE_14)."""

    link_attributes = {"title": "Resource accepting query parameters"}

    def render_get(self, request: Message) -> Message:
        self.note(request)
        return _text("\n".join(request.opt.uri_query) or "(no query)")


class LocationQueryResource(PlugtestResource):
    """/location-query: POST answered 2.01 with Location-Query first=1 and second=2 (TD_COAP_CORE_19)."""

    link_attributes = {"title": "Answers POST with Location-Query options"}
    LOCATION_QUERY = ("first=1", "second=2")

    def render_post(self, request: Message) -> Message:
        self.note(request)
        response = Message(code=Code.CREATED)
        response.opt.location_query = self.LOCATION_QUERY
        return response


class MultiFormatResource(PlugtestResource):
    """/multi-format: GET as text/plain (Accept 0, or none) or application/xml (Accept 41); 4.06 for any
    other Accept (TD_COAP_CORE_20)."""

    link_attributes = {"title": "Resource in text/plain and application/xml",
                       "ct": "0 41"}
    TEXT = "status=0 value=42"
    XML = '<?xml version="1.0" encoding="utf-8"?><status value="0">42</status>'

    def render_get(self, request: Message) -> Message:
        self.note(request)
        accept = request.opt.accept
        if accept is None or accept == ContentFormat.TEXT_PLAIN:
            return _text(self.TEXT)
        if accept == ContentFormat.XML:
            return _text(self.XML, content_format=ContentFormat.XML)
        raise NotAcceptable("available as text/plain (0) and application/xml (41)")


class ValidateResource(PlugtestResource):
    """/validate: GET with an ETag (2.03 Valid when the request names the current one), PUT with
    If-Match / If-None-Match (4.12 when they fail); every PUT changes the ETag (TD_COAP_CORE_21, 22)."""

    link_attributes = {"title": "Resource which varies", "ct": 0}

    def __init__(self) -> None:
        super().__init__()
        self.content = b"initial content of /validate"
        self.content_format: int = ContentFormat.TEXT_PLAIN
        self.version = 0
        self.etag = self._make_etag()

    def _make_etag(self) -> bytes:
        data = b"%d\0%d\0%s" % (self.version, self.content_format, self.content)
        return hashlib.blake2b(data, digest_size=4).digest()

    def render_get(self, request: Message) -> Message:
        self.note(request)
        valid = validate_etag(request, self.etag)
        if valid is not None:
            return valid
        response = _text(self.content, content_format=self.content_format)
        response.opt.etag = self.etag
        return response

    def render_put(self, request: Message) -> Message:
        self.note(request)
        check_preconditions(request, self.etag)
        self.content = request.payload
        cf = request.opt.content_format
        self.content_format = ContentFormat.TEXT_PLAIN if cf is None else cf
        self.version += 1
        self.etag = self._make_etag()
        return Message(code=Code.CHANGED)


class CreateOnceResource(PlugtestResource):
    """/create1: does not exist until a PUT creates it (2.01); a PUT with If-None-Match then fails with
    4.12 (TD_COAP_CORE_23). GET answers 4.04 until created; DELETE removes it again."""

    def __init__(self) -> None:
        super().__init__()
        self.content: bytes | None = None
        self.content_format: int = ContentFormat.TEXT_PLAIN
        self.link_attributes = None  # not listed in /.well-known/core while it does not exist

    def render_get(self, request: Message) -> Message:
        self.note(request)
        if self.content is None:
            raise NotFound("/create1 does not exist yet: PUT creates it")
        return _text(self.content, content_format=self.content_format)

    def render_put(self, request: Message) -> Message:
        self.note(request)
        exists = self.content is not None
        check_preconditions(request, None, exists=exists)
        self.content = request.payload
        cf = request.opt.content_format
        self.content_format = ContentFormat.TEXT_PLAIN if cf is None else cf
        self.link_attributes = {"title": "Created by PUT"}
        return Message(code=Code.CHANGED if exists else Code.CREATED)

    def render_delete(self, request: Message) -> Message:
        self.note(request)
        self.content = None
        self.link_attributes = None
        return Message(code=Code.DELETED)


class LinkResource(PlugtestResource):
    """/link1, /link2, /link3: resources that exist for their link attributes (TD_COAP_LINK_02-05, 07, 08).

    rt values "Type1 Type2", "Type2 Type3", "Type1 Type3" and if values "If1", "If2", "foo" are the groups
    TD_COAP_LINK_04 and TD_COAP_LINK_05 ask for.
    """

    def __init__(self, name: str, rt: str, interface: str) -> None:
        super().__init__()
        self.name = name
        self.link_attributes = {"rt": rt, "if": interface, "title": "Link test resource"}

    def render_get(self, request: Message) -> Message:
        self.note(request)
        return _text(f"/{self.name}")


class EmptyTypeResource(PlugtestResource):
    """/empty-type: a resource whose rt attribute is the empty string, TD_COAP_LINK_04's fourth group (it
    matches rt=* in TD_COAP_LINK_03, never rt=Type2)."""

    link_attributes = {"rt": "", "title": "Resource with an empty resource type"}

    def render_get(self, request: Message) -> Message:
        self.note(request)
        return _text("/empty-type")


class LargeResource(PlugtestResource):
    """/large: the resource with an sz attribute (TD_COAP_LINK_06).

    Its body fits one datagram: coapio does not implement block-wise transfer yet and answers a request
    carrying Block2 with 4.02, so a larger body could not be fetched in blocks.
    """

    BODY = b"".join(b"%04d: coapio plugtest large resource, line %04d\n" % (i, i) for i in range(20))
    link_attributes = {"sz": len(BODY), "title": "Large resource"}

    def render_get(self, request: Message) -> Message:
        self.note(request)
        return _text(self.BODY)


class PathResource(PlugtestResource):
    """/path: a link-format document of its sub-resources, served with ct=40 (TD_COAP_LINK_09)."""

    link_attributes = {"ct": ContentFormat.LINK_FORMAT, "title": "Hierarchical link description entry"}

    def __init__(self, site: Site) -> None:
        super().__init__()
        self.site = site

    def render_get(self, request: Message) -> Message:
        self.note(request)
        links = [link for link in self.site.links() if link.href.startswith("/path/")]
        return _text(serialize_links(links), content_format=ContentFormat.LINK_FORMAT)


class SubPathResource(PlugtestResource):
    """/path/sub1, /path/sub2, /path/sub3: the entries /path lists (TD_COAP_LINK_09)."""

    link_attributes = {"title": "Hierarchical sub-resource"}

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def render_get(self, request: Message) -> Message:
        self.note(request)
        return _text(f"/path/{self.name}")


class LoggedWellKnownCore(WellKnownCore):
    """/.well-known/core, filtered by the query (TD_COAP_LINK_01-09), with the request logged for ``-v``."""

    def render_get(self, request: Message) -> Message:
        log.info("GET %s%s from %s", _path(request),
                 "?" + "&".join(request.opt.uri_query) if request.opt.uri_query else "", request.remote)
        return super().render_get(request)


def build_site(*, separate_delay: float = SEPARATE_DELAY) -> Site:
    """The plugtest's resources in a fresh :class:`coapio.Site` (each call starts from the initial state)."""
    site = Site(well_known_core=False)
    site.add(".well-known/core", LoggedWellKnownCore(site))
    site.add("test", TestResource(site))
    site.add("separate", SeparateResource(separate_delay))
    site.add("seg1/seg2/seg3", SegmentsResource())
    site.add("query", QueryResource())
    site.add("location-query", LocationQueryResource())
    site.add("multi-format", MultiFormatResource())
    site.add("validate", ValidateResource())
    site.add("create1", CreateOnceResource())
    site.add("link1", LinkResource("link1", "Type1 Type2", "If1"))
    site.add("link2", LinkResource("link2", "Type2 Type3", "If2"))
    site.add("link3", LinkResource("link3", "Type1 Type3", "foo"))
    site.add("empty-type", EmptyTypeResource())
    site.add("large", LargeResource())
    site.add("path", PathResource(site))
    for name in ("sub1", "sub2", "sub3"):
        site.add(("path", name), SubPathResource(name))
    return site


def resource_at(site: Site, path: str) -> Resource:
    """The resource ``site`` serves at ``path`` (e.g. ``"/validate"``), for inspecting its state."""
    found = site.resolve(tuple(path.strip("/").split("/")))
    if found is None:
        raise LookupError(f"nothing is served at {path}")
    return found[0]


async def serve(
    binds: Sequence[str] = ("[::]:5683",),
    *,
    site: Site | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the plugtest site (a fresh :func:`build_site` unless given) on ``binds`` until cancelled.

    ``task_status.started`` reports the bound addresses as ``host:port`` with the actual ports (so port 0
    can be used). Cancellation closes the sockets and stops every handler; nothing is left running.
    """
    site = build_site() if site is None else site
    async with coapio.Context(bind=list(binds), site=site) as ctx:
        addresses = [_format_address(endpoint.local) for endpoint in ctx.endpoints]
        print("coapio plugtest server listening on " + ", ".join(addresses), file=sys.stderr, flush=True)
        task_status.started(addresses)
        await ctx.serve_forever()


async def serve_until_signal(binds: Sequence[str]) -> None:
    """:func:`serve` until SIGINT or SIGTERM arrives, then stop cleanly (no KeyboardInterrupt traceback)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, binds)
            async for signum in signals:
                log.info("%s received: stopping", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def _format_address(local: tuple[object, ...]) -> str:
    host, port = str(local[0]), local[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: parse ``argv``, serve until SIGINT/SIGTERM, return the exit status."""
    parser = argparse.ArgumentParser(description="coapio server for the ETSI CoAP#4 plugtest TDs")
    parser.add_argument("--bind", action="append", metavar="HOST:PORT",
                        help="address to serve on, repeatable (default [::]:5683)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    status = 0
    try:
        trio.run(serve_until_signal, args.bind or ["[::]:5683"])
    except* OSError as group:  # e.g. the address is in use
        for exc in group.exceptions:
            print(f"plugtest_server: {exc}", file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
