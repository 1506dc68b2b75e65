"""A CoAP client inside an asyncio application: the coapio API, unchanged, through anyio.

Examples (with ``examples/asyncio_server.py`` running)::

    python examples/asyncio_client.py coap://127.0.0.1:5683/events --post 'door opened'
    python examples/asyncio_client.py coap://127.0.0.1:5683/events coap://127.0.0.1:5683/slow?delay=0.5
    python examples/asyncio_client.py coap://127.0.0.1:5683/slow?delay=10 --timeout 1

Requests run concurrently in an ``asyncio.TaskGroup``; each is bounded by ``asyncio.timeout`` and the
whole run by ``anyio.fail_after``: both are cancel scopes, and coapio treats them alike. Results travel
to a printer task through an ``asyncio.Queue``, as they might in a larger application.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import anyio

import coapio
from coapio import ContentFormat, Message
from coapio.error import CoapError, NetworkError, UriError


def describe(response: Message) -> str:
    text = response.payload.decode("utf-8", "replace")
    return f"{response.code} {text}" if text else str(response.code)


async def fetch(
    ctx: coapio.Context, uri: str, post: str | None, limit: float, out: asyncio.Queue[str | None]
) -> bool:
    method = "GET" if post is None else "POST"
    try:
        # asyncio's own timeout cancels the request like any other await: coapio stops
        # retransmitting it and frees its token; nothing more goes on the wire for it.
        async with asyncio.timeout(limit):
            if post is None:
                response = await ctx.get(uri)
            else:
                response = await ctx.post(uri, post.encode(), content_format=ContentFormat.TEXT_PLAIN)
    except TimeoutError:
        await out.put(f"{method} {uri}: no response within {limit:g} s (request cancelled)")
        return False
    except CoapError as e:
        # A network error in the system's words ("Connection refused"), not its tuple of address fields.
        if isinstance(e, NetworkError) and e.errno is not None:
            reason = os.strerror(e.errno)
        else:
            reason = f"{type(e).__name__}: {e}"
        await out.put(f"{method} {uri}: {reason}")
        return False
    await out.put(f"{method} {uri}: {describe(response)}")
    return response.code.is_successful()


async def printer(out: asyncio.Queue[str | None]) -> None:
    """Ordinary asyncio code consuming what the CoAP requests produce."""
    while (line := await out.get()) is not None:
        print(line, flush=True)


async def main(args: argparse.Namespace) -> bool:
    out: asyncio.Queue[str | None] = asyncio.Queue()
    printing = asyncio.create_task(printer(out))
    try:
        # anyio.fail_after works under asyncio too; it raises TimeoutError when the whole run overruns.
        with anyio.fail_after(args.total):
            async with coapio.Context() as ctx:
                async with asyncio.TaskGroup() as tg:
                    tasks = [
                        tg.create_task(fetch(ctx, uri, args.post, args.timeout, out))
                        for uri in args.uris
                    ]
                counters = ctx.counters
                assert counters.live_tokens == 0 and counters.open_exchanges == 0, counters
    finally:
        await out.put(None)
        await printing
    return all(task.result() for task in tasks)


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="An example CoAP client in an asyncio application.")
    parser.add_argument("uris", nargs="+", metavar="URI", help="coap:// URI(s), requested concurrently")
    parser.add_argument("--post", metavar="TEXT", help="POST this text/plain payload instead of a GET")
    parser.add_argument(
        "--timeout", type=float, default=5.0, metavar="SECONDS",
        help="give up on each request after this long (default: %(default)s)",
    )
    parser.add_argument(
        "--total", type=float, default=60.0, metavar="SECONDS",
        help="give up on the whole run after this long (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    for uri in args.uris:  # a bad URI is a mistake on the command line: one line, nothing sent
        try:
            Message(uri=uri)
        except (UriError, ValueError) as e:
            print(f"{parser.prog}: error: invalid URI {uri!r}: {e}", file=sys.stderr)
            return 2
    try:
        ok = asyncio.run(main(args))
    except KeyboardInterrupt:
        return 130
    except TimeoutError:
        print(f"gave up after {args.total:g} s in total", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(cli())
