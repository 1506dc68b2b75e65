"""A small CoAP server on trio, showing the usual patterns of a coapio resource.

Resources:

``/hello``
    A plain ``def`` renderer: it runs inline on the socket task, the fast path. It honours Accept
    (text/plain or application/json) and answers 4.06 Not Acceptable for anything else.
``/slow?delay=SECONDS``
    An ``async def`` renderer that sleeps before answering, so the client first gets an empty ACK
    and later a separate response. Stopping the server cancels the sleep.
``/note``
    A resource with state and an ETag: GET sends the text with its ETag (2.03 Valid when the client
    already has it), PUT replaces it, optionally guarded by If-Match.
``/echo``
    POST returns the payload it was sent; errors are raised as ``coapio.error`` exceptions.

Run it with ``python examples/trio_server.py`` and stop it with Ctrl-C.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging

import trio

import coapio
from coapio import Code, ContentFormat, Message, Resource, Site
from coapio.error import (
    BadRequest,
    NotAcceptable,
    RequestEntityTooLarge,
    UnsupportedContentFormat,
)
from coapio.runtime.resource import check_preconditions, validate_etag

log = logging.getLogger("trio_server")


class Hello(Resource):
    """GET: a greeting, as text or JSON. A plain renderer: fast, and it must never block."""

    link_attributes = {"rt": "example.hello", "ct": "0 50", "title": "A greeting"}

    def render_get(self, request: Message) -> Message:
        accept = request.opt.accept
        if accept is None or accept == ContentFormat.TEXT_PLAIN:
            response = Message(payload=b"Hello, CoAP!")
            response.opt.content_format = ContentFormat.TEXT_PLAIN
        elif accept == ContentFormat.JSON:
            response = Message(payload=json.dumps({"greeting": "Hello, CoAP!"}).encode())
            response.opt.content_format = ContentFormat.JSON
        else:
            raise NotAcceptable("this resource speaks text/plain (0) and application/json (50)")
        # The code is left empty: coapio fills in the method's usual success code (2.05 for GET).
        return response


class Slow(Resource):
    """GET ``?delay=SECONDS``: answers after a while, from its own task and cancel scope."""

    link_attributes = {"rt": "example.slow", "title": "Answers after ?delay= seconds (at most 30)"}

    async def render_get(self, request: Message) -> Message:
        delay = 1.0
        for query in request.opt.uri_query:
            name, _, value = query.partition("=")
            if name == "delay":
                try:
                    delay = float(value)
                except ValueError:
                    raise BadRequest("delay must be a number of seconds") from None
        if not 0 <= delay <= 30:
            raise BadRequest("delay must be between 0 and 30 seconds")
        try:
            # Anything awaitable is fine here: a database query, another CoAP request, a sleep.
            await trio.sleep(delay)
        except trio.Cancelled:
            # The server is shutting down (leaving the Context cancels every handler), or the client
            # sent a new request with the same token. Nothing is sent for a cancelled handler. A UDP
            # client that merely gives up sends nothing either, so then this handler runs to the end
            # and the client rejects the late response with a Reset.
            log.info("a /slow request was cancelled before its %s s were up", delay)
            raise
        return Message(payload=f"slept {delay:g} s".encode())


class Note(Resource):
    """A short text with an ETag. GET may be answered 2.03 Valid; PUT honours If-Match."""

    link_attributes = {"rt": "example.note", "ct": 0}

    def __init__(self, text: str = "nothing yet") -> None:
        super().__init__()
        self._set(text.encode())

    def _set(self, text: bytes) -> None:
        self.text = text
        # Any value that changes whenever the representation changes will do (1 to 8 bytes).
        self.etag = hashlib.sha256(text).digest()[:4]

    def render_get(self, request: Message) -> Message:
        # The client sent the ETag of the version it already holds: say "still valid", send no payload.
        valid = validate_etag(request, self.etag)
        if valid is not None:
            return valid
        response = Message(payload=self.text)
        response.opt.content_format = ContentFormat.TEXT_PLAIN
        response.opt.etag = self.etag
        return response

    def render_put(self, request: Message) -> Message:
        if request.opt.content_format not in (None, ContentFormat.TEXT_PLAIN):
            raise UnsupportedContentFormat("a note is text/plain")
        if len(request.payload) > 256:
            raise RequestEntityTooLarge("a note is at most 256 bytes")
        # If-Match: <etag> makes the update conditional (4.12 Precondition Failed on a mismatch), so two
        # clients editing the same note cannot overwrite each other's changes unknowingly.
        check_preconditions(request, self.etag)
        self._set(request.payload)
        response = Message(code=Code.CHANGED)
        response.opt.etag = self.etag
        return response


class Echo(Resource):
    """POST: answers with the payload it got, in the same content format."""

    link_attributes = {"rt": "example.echo"}

    def render_post(self, request: Message) -> Message:
        if not request.payload:
            raise BadRequest("POST something to have it echoed")
        if len(request.payload) > 1024:
            raise RequestEntityTooLarge("at most 1024 bytes, please")
        response = Message(code=Code.CONTENT, payload=request.payload)
        response.opt.content_format = request.opt.content_format
        return response


def build_site() -> Site:
    site = Site()  # /.well-known/core is added for us, built from each resource's link_attributes
    site.add("hello", Hello())
    site.add("slow", Slow())
    site.add("note", Note())
    site.add("echo", Echo())
    return site


async def serve(bind: str) -> None:
    async with coapio.Context(bind=bind, site=build_site()) as ctx:
        host, port = ctx.transports[0].local[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"serving on coap://{shown}:{port}/ (Ctrl-C to stop)", flush=True)
        await ctx.serve_forever()
    # Leaving the block cancelled every handler still running and closed the socket.


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="An example CoAP server on trio.")
    parser.add_argument(
        "--bind", default="127.0.0.1:5683", metavar="HOST:PORT",
        help="address to serve on (default: %(default)s; use [::]:5683 for every address)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the server does")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        trio.run(serve, args.bind)
    except* KeyboardInterrupt:
        # Ctrl-C: trio raises KeyboardInterrupt in whichever task is running, possibly the socket
        # task inside the Context, and then it comes out of the Context's task group wrapped in a
        # BaseExceptionGroup; ``except*`` catches it either way. Leaving the Context's block has
        # cancelled and closed everything, so there is nothing left to report.
        pass


if __name__ == "__main__":
    main()
