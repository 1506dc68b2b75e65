"""A CoAP server inside an asyncio application: coapio runs on asyncio through anyio.

The application is ordinary asyncio code: an ``asyncio.Queue`` and a consumer task that processes
events. CoAP clients feed the queue:

``/events``
    POST adds its payload to the queue (5.03 Service Unavailable when the queue is full); GET lists
    the events the consumer has processed so far.
``/slow?delay=SECONDS``
    An ``async def`` renderer awaiting ``asyncio.sleep``: asyncio code works in renderers as it is.

Run it with ``python examples/asyncio_server.py`` and stop it with Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

import coapio
from coapio import Code, ContentFormat, Message, Resource, Site
from coapio.error import BadRequest, ServiceUnavailable


class Events(Resource):
    """POST: queue an event for the application. GET: what the application has processed."""

    link_attributes = {"rt": "example.events", "ct": 0}

    def __init__(self, queue: asyncio.Queue[str], processed: list[str]) -> None:
        super().__init__()
        self.queue = queue
        self.processed = processed

    def render_post(self, request: Message) -> Message:
        # A plain renderer runs inline on the socket task, so it must not block or await; put_nowait
        # never does. When the application falls behind, the client is told so instead of the
        # server buffering without bound.
        try:
            text = request.payload.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("events are UTF-8 text") from None
        if not text:
            raise BadRequest("an event needs a payload")
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            raise ServiceUnavailable("too many events waiting; try again later") from None
        return Message(code=Code.CHANGED)

    def render_get(self, request: Message) -> Message:
        response = Message(payload="\n".join(self.processed).encode())
        response.opt.content_format = ContentFormat.TEXT_PLAIN
        return response


class Slow(Resource):
    """GET ``?delay=SECONDS``: an async renderer using plain asyncio."""

    link_attributes = {"rt": "example.slow"}

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
        await asyncio.sleep(delay)  # cancelled like any await when the context closes
        return Message(payload=f"slept {delay:g} s".encode())


async def consume(queue: asyncio.Queue[str], processed: list[str]) -> None:
    """The application's own asyncio task: it knows nothing about CoAP."""
    while True:
        event = await queue.get()
        await asyncio.sleep(0.01)  # pretend to do some work
        processed.append(event)
        print(f"processed event: {event}", flush=True)
        queue.task_done()


async def main(bind: str) -> None:
    queue: asyncio.Queue[str] = asyncio.Queue(maxsize=16)
    processed: list[str] = []
    site = Site()
    site.add("events", Events(queue, processed))
    site.add("slow", Slow())

    consumer = asyncio.create_task(consume(queue, processed))
    try:
        # The same Context as under trio; anyio picks the asyncio backend because that is what runs.
        async with coapio.Context(bind=bind, site=site) as ctx:
            host, port = ctx.transports[0].local[:2]
            shown = f"[{host}]" if ":" in host else host
            print(f"serving on coap://{shown}:{port}/ (Ctrl-C to stop)", flush=True)
            await ctx.serve_forever()
    finally:
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="An example CoAP server in an asyncio application.")
    parser.add_argument(
        "--bind", default="127.0.0.1:5683", metavar="HOST:PORT",
        help="address to serve on (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    # Ctrl-C: asyncio.run cancels main(), the Context closes its socket on the way out, and
    # KeyboardInterrupt then leaves asyncio.run; there is nothing left to report.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.bind))


if __name__ == "__main__":
    cli()
