"""A CoAP server offering the resources of the ETSI CoAP#4 plugtest (TD_COAP_CORE_*, TD_COAP_LINK_*,
TD_COAP_BLOCK_* and TD_COAP_OBS_*).

Run it with ``python examples/plugtest_server.py --bind HOST:PORT [--bind ...] [--obs-period S] [-v]``
(default ``[::]:5683``, observable resources changing every 5 s); ``-v`` logs every request. Import it
(by file path: ``examples/`` is not a package) for :func:`build_site`,
the site without any socket, or :func:`serve`, the server as a trio task.

Each resource class names the test descriptions it serves. The TDs themselves are in the repository
cabo/td-coap4 (``base.yml``, ``link.yml``, ``block.yml``): each TD's pre-conditions say what a resource
must do. Block-wise transfer is the runtime's: renderers return whole bodies and receive whole bodies.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import logging
import math
import signal
import sys
from collections.abc import Callable, Sequence

import anyio
import trio

import coapio
from coapio import Code, ContentFormat, Message, ObservableResource, Resource, Site
from coapio.error import NotAcceptable, NotFound
from coapio.protocol.linkformat import serialize_links
from coapio.protocol.observe import OBSERVE_REGISTER
from coapio.runtime.resource import WellKnownCore, check_preconditions, validate_etag

__all__ = ["OBS_PERIOD", "SEPARATE_DELAY", "build_site", "main", "resource_at", "serve", "serve_until_signal"]

log = logging.getLogger("plugtest")

#: How long /separate takes to answer: long enough for the server's empty ACK to go first.
SEPARATE_DELAY = 1.0
#: How often the observable resources (/obs, /obs-non, /obs-large, /obs-pumping) change while observed.
OBS_PERIOD = 5.0


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


class StoredText(PlugtestResource):
    """A resource holding a body and its Content-Format: GET returns them, PUT replaces them (2.04).

    Subclasses set ``content`` and ``content_format`` in their ``__init__``.
    """

    INITIAL = b""
    content: bytes
    content_format: int

    def render_get(self, request: Message) -> Message:
        self.note(request)
        return _text(self.content, content_format=self.content_format)

    def render_put(self, request: Message) -> Message:
        self.note(request)
        self.content = request.payload
        cf = request.opt.content_format
        self.content_format = ContentFormat.TEXT_PLAIN if cf is None else cf
        return Message(code=Code.CHANGED)


class TestResource(StoredText):
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
    """/location1/location2/location3, created by a POST to /test (TD_COAP_CORE_18), and /large-create/N,
    created by a POST to /large-create (TD_COAP_BLOCK_04): GET."""

    def __init__(self, content: bytes, content_format: int | None, *,
                 title: str = "Created by POST /test") -> None:
        super().__init__()
        self.link_attributes = {"title": title}
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


def _large_body(title: str, lines: int) -> bytes:
    """A text body of ``lines`` numbered lines (47 bytes each plus the title), for the block-wise TDs."""
    head = f"{title}\n".encode()
    line = b"%04d: coapio plugtest large resource, line %04d\n"
    return head + b"".join(line % (i, i) for i in range(lines))


class LargeResource(PlugtestResource):
    """/large: GET of a 2134-byte text, served in blocks (TD_COAP_BLOCK_01, 02, 06) and listed with its
    size as the sz attribute (TD_COAP_LINK_06).

    The renderer returns the whole body; the runtime cuts it into Block2 blocks: early negotiation (the
    client's Block2 in the first request sets the size) and late negotiation (block 0 of 1024 bytes, then
    the client may ask for smaller blocks at the same byte offset). The size is not a multiple of 16, so
    the last block is a runt at every block size.
    """

    BODY = _large_body("/large: the ETSI plugtest's large resource (TD_COAP_BLOCK_01, 02, 06)", 43)
    link_attributes = {"sz": len(BODY), "ct": ContentFormat.TEXT_PLAIN, "title": "Large resource"}

    def render_get(self, request: Message) -> Message:
        self.note(request)
        return _text(self.BODY)


class LargeUpdateResource(StoredText):
    """/large-update: GET returns the stored body, PUT replaces it (2.04; TD_COAP_BLOCK_03).

    A PUT larger than a block arrives with Block1: the runtime answers 2.31 Continue to each block and
    hands the renderer the reassembled body, then adds the last block's Block1 to the 2.04.
    """

    INITIAL = _large_body("/large-update: PUT a new body (TD_COAP_BLOCK_03)", 30)
    link_attributes = {"ct": ContentFormat.TEXT_PLAIN, "title": "Large, PUT updates it"}

    def __init__(self) -> None:
        super().__init__()
        self.content = self.INITIAL
        self.content_format: int = ContentFormat.TEXT_PLAIN


class LargeCreateResource(PlugtestResource):
    """/large-create: POST creates /large-create/N (N = 1, 2, ...) holding the (reassembled) request body,
    and answers 2.01 with the Location-Path options "large-create" and "N" (TD_COAP_BLOCK_04)."""

    link_attributes = {"title": "POST creates /large-create/N"}

    def __init__(self, site: Site) -> None:
        super().__init__()
        self.site = site
        self.created = 0

    def render_post(self, request: Message) -> Message:
        self.note(request)
        self.created += 1
        location = ("large-create", str(self.created))
        self.site.add(location, StoredResource(request.payload, request.opt.content_format,
                                               title="Created by POST /large-create"))
        response = Message(code=Code.CREATED)
        response.opt.location_path = location
        return response


class LargePostResource(PlugtestResource):
    """/large-post: POST answered 2.04 with a body larger than the request's (TD_COAP_BLOCK_05).

    The response is a header line followed by the request body, so both directions need blocks: the
    runtime reassembles the Block1 request, keeps the full response and serves its blocks to the
    following Block2 requests (RFC 7959 §2.7) without calling the renderer again.
    """

    link_attributes = {"title": "Large POST, large response"}

    @staticmethod
    def answer(body: bytes) -> bytes:
        """The response body for a request body (what a test expects back)."""
        return f"/large-post received {len(body)} bytes, sent back below:\n".encode() + body

    def render_post(self, request: Message) -> Message:
        self.note(request)
        return _text(self.answer(request.payload))


# --- observable resources (TD_COAP_OBS_*) ---------------------------------------------------------------


class PeriodicResource(PlugtestResource, ObservableResource):
    """Base of /obs, /obs-non, /obs-large, /obs-pumping: a text that changes every ``period`` seconds while
    someone observes it (TD_COAP_OBS_*), each change notified as CON (``confirmable``) or NON.

    The period runs on one shared ticker: :meth:`observation` runs once per observer, and at any time one
    of those tasks is the ticker while the others stand by; when the ticker's observer goes away (RST,
    deregistration, CON timeout) a standing-by task takes over at the same schedule, and when the last
    observer goes away no task is left, so nothing ticks without observers. Every 2.05 carries Max-Age
    just over the period, so a client can tell a silent server from a slow resource (TD_COAP_OBS_04).

    The content format an observer registered with is remembered (by registration): when it changes
    (a PUT to /obs with another Content-Format), that observer's next notification is 4.06 Not Acceptable
    and ends its observation (TD_COAP_OBS_08); new registrations get the new format.
    """

    confirmable = True
    #: Registrations remembered for the content-format check (oldest forgotten first beyond this).
    MAX_REMEMBERED = 4096

    def __init__(self, name: str, period: float) -> None:
        super().__init__()
        if not period > 0:
            raise ValueError(f"the period must be positive, got {period!r}")
        self.name = name
        self.period = period
        self.max_age = math.ceil(period) + 1
        self.link_attributes = {"obs": None, "ct": ContentFormat.TEXT_PLAIN, "title": self.TITLE}
        #: Changes made by the ticker so far.
        self.ticks = 0
        #: A PUT's payload replaces the ticking text until /obs-reset; None: the ticking text.
        self.stored: bytes | None = None
        self.content_format: int = ContentFormat.TEXT_PLAIN
        self.deleted = False
        #: Renderings of GET, and the tasks running observation() now (observers with a live task).
        self.renders = 0
        self.observations = 0
        self.ticker_running = False
        self._ticker_stopped = trio.Event()
        self._next_tick: float | None = None
        #: The last GET with Observe=0 rendered (a registration or re-registration, not a notification).
        self.last_registration: Message | None = None
        self._formats: dict[tuple[object, bytes], tuple[Message, int]] = {}
        self._change = trio.Event()

    TITLE = "Observable"

    # --- representation ---

    def text(self) -> bytes:
        """The current representation while no PUT replaced it."""
        return self.body_at(self.ticks)

    def body_at(self, state: int) -> bytes:
        """The ticking text in state ``state`` (subclasses vary its size)."""
        return f"{self.name}: state {state}".encode()

    def render_get(self, request: Message) -> Message:
        self.note(request)
        self.renders += 1
        self._changed()
        if self.deleted:
            raise NotFound(f"{self.name} was deleted (PUT creates it again, POST /obs-reset restores it)")
        if request.opt.observe == OBSERVE_REGISTER:
            self._check_format(request)
        response = _text(self.text() if self.stored is None else self.stored, self.content_format)
        response.opt.max_age = self.max_age
        return response

    def _check_format(self, request: Message) -> None:
        """4.06 for a notification whose observer registered under another content format.

        The runtime renders every notification with the very request object that registered the
        observer, so the same object seen again means a notification; another one, a (re-)registration.
        """
        key = (request.remote, request.token)
        seen = self._formats.get(key)
        if seen is not None and seen[0] is request:
            if seen[1] != self.content_format:
                raise NotAcceptable(f"{self.name} changed its content format to {self.content_format}")
            return
        self.last_registration = request
        self._formats.pop(key, None)
        self._formats[key] = (request, self.content_format)
        while len(self._formats) > self.MAX_REMEMBERED:
            del self._formats[next(iter(self._formats))]

    # --- changes ---

    def tick(self) -> None:
        """One periodic change: a new state, notified to every observer."""
        self.ticks += 1
        self.changed()

    def changed(self) -> None:
        """Notify every observer of the current state (a 4.04 to each, once deleted)."""
        self.notify(confirmable=self.confirmable)
        self._changed()

    def reset(self) -> None:
        """Back to the initial behaviour (POST /obs-reset): exists, ticking text, text/plain."""
        self.deleted = False
        self.stored = None
        self.content_format = ContentFormat.TEXT_PLAIN
        self.link_attributes = {"obs": None, "ct": ContentFormat.TEXT_PLAIN, "title": self.TITLE}
        self.changed()

    # --- the shared ticker ---

    async def observation(self, request: Message) -> None:
        """Runs while the observer registered by ``request`` stays; one such task at a time ticks."""
        self.observations += 1
        self._changed()
        try:
            while self.ticker_running:
                await self._ticker_stopped.wait()
            self.ticker_running = True
            try:
                await self._tick_forever()
            finally:
                self.ticker_running = False
                self._ticker_stopped.set()
                self._ticker_stopped = trio.Event()
        finally:
            self.observations -= 1
            self._formats.pop((request.remote, request.token), None)
            self._changed()

    async def _tick_forever(self) -> None:
        now = trio.current_time()
        if self._next_tick is None or self._next_tick < now:
            self._next_tick = now + self.period  # first observer (again): a full period from now
        while True:
            await trio.sleep_until(self._next_tick)
            self._next_tick = max(self._next_tick + self.period, trio.current_time())
            self.tick()

    # --- for tests and tools: wait for the resource's state, without polling ---

    def _changed(self) -> None:
        self._change.set()
        self._change = trio.Event()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds, checked after every rendering, change, registration and
        loss of an observer. Bound it with a cancel scope."""
        while not condition():
            await self._change.wait()


class ObsResource(PeriodicResource):
    """/obs: observable, changes every period (5 s by default) with CON notifications (TD_COAP_OBS_01,
    04-12). PUT replaces the text (2.04, or 2.01 after a DELETE) and notifies at once (TD_COAP_OBS_09; a
    new Content-Format ends the observations with 4.06, TD_COAP_OBS_08); DELETE removes it, which
    notifies every observer with 4.04 and ends their observations (TD_COAP_OBS_07). POST /obs-reset
    restores it."""

    TITLE = "Observable (CON notifications)"

    def render_put(self, request: Message) -> Message:
        self.note(request)
        created = self.deleted
        self.deleted = False
        self.stored = request.payload
        cf = request.opt.content_format
        self.content_format = ContentFormat.TEXT_PLAIN if cf is None else cf
        self.link_attributes = {"obs": None, "ct": self.content_format, "title": self.TITLE}
        self.changed()
        return Message(code=Code.CREATED if created else Code.CHANGED)

    def render_delete(self, request: Message) -> Message:
        self.note(request)
        self.deleted = True
        self.link_attributes = None
        self.changed()
        return Message(code=Code.DELETED)


class ObsNonResource(PeriodicResource):
    """/obs-non: as /obs, with NON notifications (TD_COAP_OBS_02); GET only."""

    confirmable = False
    TITLE = "Observable (NON notifications)"


class ObsLargeResource(PeriodicResource):
    """/obs-large: every representation is larger than a block (about 1.5 kB), so the response to the
    registration and every notification carry Block2 block 0, and the client fetches the rest with
    GETs (TD_COAP_OBS_13)."""

    TITLE = "Large observable (Block2 notifications)"

    def body_at(self, state: int) -> bytes:
        return _large_body(f"{self.name}: state {state}", 32)


class ObsPumpingResource(PeriodicResource):
    """/obs-pumping: the size varies with the state: even states are a short line, odd states about
    1.5 kB, so notifications alternate between a single payload and Block2 (TD_COAP_OBS_14)."""

    TITLE = "Observable of varying size"

    def body_at(self, state: int) -> bytes:
        if state % 2 == 0:
            return f"{self.name}: state {state} (small)".encode()
        return _large_body(f"{self.name}: state {state} (large)", 32)


class ObsResetResource(PlugtestResource):
    """/obs-reset: POST restores the observable resources to their initial behaviour (2.04): /obs exists
    again after TD_COAP_OBS_07's DELETE, in text/plain after TD_COAP_OBS_08's PUT, ticking after
    TD_COAP_OBS_09's. Not a TD resource itself; the plugtest's servers offered one to run the OBS TDs
    one after another."""

    link_attributes = {"title": "POST resets /obs*"}

    def __init__(self, resources: Sequence[PeriodicResource]) -> None:
        super().__init__()
        self.resources = list(resources)

    def render_post(self, request: Message) -> Message:
        self.note(request)
        for resource in self.resources:
            resource.reset()
        return Message(code=Code.CHANGED)

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


def build_site(*, separate_delay: float = SEPARATE_DELAY, obs_period: float = OBS_PERIOD) -> Site:
    """The plugtest's resources in a fresh :class:`coapio.Site` (each call starts from the initial state);
    ``obs_period`` is how often the observable resources change while observed."""
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
    site.add("large-update", LargeUpdateResource())
    site.add("large-create", LargeCreateResource(site))
    site.add("large-post", LargePostResource())
    observable = [ObsResource("/obs", obs_period), ObsNonResource("/obs-non", obs_period),
                  ObsLargeResource("/obs-large", obs_period), ObsPumpingResource("/obs-pumping", obs_period)]
    for resource in observable:
        site.add(resource.name.strip("/"), resource)
    site.add("obs-reset", ObsResetResource(observable))
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


#: The ETSI test descriptions fix every message of an exchange, and a plugtest runs on a closed lab
#: network: this server answers as they describe, without the amplification mitigation (RFC 9175 §2.4)
#: that a server on an open network should turn on (see TransportTuning.echo_amplification_check).
TUNING = coapio.TransportTuning(echo_amplification_check=False)


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
    async with coapio.Context(bind=list(binds), site=site, tuning=TUNING) as ctx:
        addresses = [_format_address(endpoint.local) for endpoint in ctx.transports]
        print("coapio plugtest server listening on " + ", ".join(addresses), file=sys.stderr, flush=True)
        task_status.started(addresses)
        await ctx.serve_forever()


async def serve_until_signal(binds: Sequence[str], obs_period: float = OBS_PERIOD) -> None:
    """:func:`serve` until SIGINT or SIGTERM arrives, then stop cleanly (no KeyboardInterrupt traceback)."""
    site = build_site(obs_period=obs_period)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(serve, binds, site=site))
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
    parser.add_argument("--obs-period", type=float, default=OBS_PERIOD, metavar="SECONDS",
                        help=f"how often the observable resources change (default {OBS_PERIOD:g})")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    if not args.obs_period > 0:
        parser.error("--obs-period must be positive")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    status = 0
    try:
        trio.run(serve_until_signal, args.bind or ["[::]:5683"], args.obs_period)
    except* OSError as group:  # e.g. the address is in use
        for exc in group.exceptions:
            print(f"plugtest_server: {exc}", file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
