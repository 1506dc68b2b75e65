"""A CoAP client on trio: GET or POST, several requests at once, and timeouts by cancellation.

Examples (with ``examples/trio_server.py`` running)::

    python examples/trio_client.py coap://127.0.0.1:5683/hello
    python examples/trio_client.py coap://127.0.0.1:5683/hello --accept json
    python examples/trio_client.py coap://127.0.0.1:5683/echo --post 'ping'
    python examples/trio_client.py coap://127.0.0.1:5683/note --put 'buy milk' --if-match 1e17fa46
    python examples/trio_client.py coap://127.0.0.1:5683/note --etag 1e17fa46
    python examples/trio_client.py coap://127.0.0.1:5683/hello coap://127.0.0.1:5683/slow?delay=0.5
    python examples/trio_client.py coap://127.0.0.1:5683/slow?delay=10 --timeout 1

Every URI is requested at the same time, each in its own task of one nursery.
"""

from __future__ import annotations

import argparse
import os
import sys

import trio

import coapio
from coapio import Code, ContentFormat, Message
from coapio.error import CoapError, NetworkError, UriError

FORMATS = {"text": ContentFormat.TEXT_PLAIN, "json": ContentFormat.JSON, "link": ContentFormat.LINK_FORMAT}


def describe(response: Message) -> str:
    """One line for a response: its code, content format and payload (as text when it is text)."""
    parts = [str(response.code)]  # e.g. "2.05 Content"
    cf = response.opt.content_format
    if cf is not None:
        parts.append(f"[{ContentFormat(cf).media_type}]")
    if response.opt.etag is not None:
        parts.append(f"ETag {response.opt.etag.hex()}")
    if response.payload:
        if cf is None or ContentFormat(cf).is_text:
            parts.append(response.payload.decode("utf-8", "replace"))
        else:
            parts.append(f"<{len(response.payload)} bytes>")
    return " ".join(parts)


def build_request(uri: str, args: argparse.Namespace) -> Message:
    """The request for ``uri``: GET, or POST/PUT with a text payload, plus the options asked for."""
    if args.put is not None:
        code, payload = Code.PUT, args.put
    elif args.post is not None:
        code, payload = Code.POST, args.post
    else:
        code, payload = Code.GET, None
    request = coapio.Context.build(
        code, uri,
        payload=b"" if payload is None else payload.encode(),
        content_format=None if payload is None else ContentFormat.TEXT_PLAIN,
        accept=FORMATS[args.accept] if args.accept else None,
    )
    # Options without a keyword of their own are set through the typed accessors of `opt`.
    if args.etag:
        request.opt.etags = tuple(bytes.fromhex(e) for e in args.etag)  # "I have these versions"
    if args.if_match:
        request.opt.if_match = (bytes.fromhex(args.if_match),)  # "only if it is still this version"
    return request


def explain(error: CoapError) -> str:
    """A failure in words: the system's message for a network error (``Connection refused``), not its
    tuple of address fields."""
    if isinstance(error, NetworkError) and error.errno is not None:
        return os.strerror(error.errno)
    return f"{type(error).__name__}: {error}"


async def fetch(
    ctx: coapio.Context, uri: str, request: Message, args: argparse.Namespace, results: list[bool]
) -> None:
    """One request, bounded by the timeout; prints its outcome."""
    method = request.code.name
    try:
        # The caller's cancel scope *is* the timeout API: there is no timeout= argument anywhere.
        # When fail_after's deadline passes, the request is cancelled where it waits. coapio then
        # stops retransmitting it, frees its token at once (a late response is simply not matched
        # any more) and sends nothing further for it.
        with trio.fail_after(args.timeout):
            # ctx.get(uri) and ctx.post(uri, payload) are shortcuts for build() + request().
            response = await ctx.request(request)
    except trio.TooSlowError:
        print(f"{method} {uri}: no response within {args.timeout:g} s (request cancelled)")
        results.append(False)
        return
    except CoapError as e:
        # RequestTimedOut (retransmissions exhausted), ResetReceived, NetworkError (e.g. ICMP port
        # unreachable: nobody listens there), ResponseRejected.
        print(f"{method} {uri}: {explain(e)}")
        results.append(False)
        return
    print(f"{method} {uri}: {describe(response)}")
    results.append(response.code.is_successful() or response.code == Code.VALID)


async def run(args: argparse.Namespace, requests: list[tuple[str, Message]]) -> bool:
    results: list[bool] = []
    # A client-only context binds one ephemeral UDP port. Leaving the block ends every request
    # still running and closes the socket.
    async with coapio.Context() as ctx:
        async with trio.open_nursery() as nursery:
            for uri, request in requests:
                nursery.start_soon(fetch, ctx, uri, request, args, results)
        # Every request has finished or been cancelled: nothing may be left behind.
        counters = ctx.counters
        if args.verbose:
            print(f"afterwards: {counters}")
        assert counters.live_tokens == 0 and counters.open_exchanges == 0, counters
    return all(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="An example CoAP client on trio.")
    parser.add_argument("uris", nargs="+", metavar="URI", help="coap:// URI(s), requested concurrently")
    parser.add_argument("--post", metavar="TEXT", help="POST this text/plain payload instead of a GET")
    parser.add_argument("--put", metavar="TEXT", help="PUT this text/plain payload instead of a GET")
    parser.add_argument(
        "--etag", action="append", metavar="HEX", help="an ETag the client already has (repeatable)"
    )
    parser.add_argument("--if-match", metavar="HEX", help="send If-Match with this ETag")
    parser.add_argument("--accept", choices=sorted(FORMATS), help="the content format to ask for")
    parser.add_argument(
        "--timeout", type=float, default=5.0, metavar="SECONDS",
        help="give up on each request after this long (default: %(default)s)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print the context's counters")
    args = parser.parse_args(argv)
    # Build every request first: a bad URI is a mistake on the command line, reported in one line
    # before anything is sent (inside the nursery it would come out as an exception group).
    requests = []
    for uri in args.uris:
        try:
            requests.append((uri, build_request(uri, args)))
        except (UriError, ValueError) as e:  # ValueError: e.g. a path segment too long for CoAP
            print(f"{parser.prog}: error: invalid URI {uri!r}: {e}", file=sys.stderr)
            return 2
    status = 130  # unless the run completes: Ctrl-C
    try:
        status = 0 if trio.run(run, args, requests) else 1
    except* KeyboardInterrupt:  # `except*`: it may come out of a task group, wrapped in a group
        pass
    return status


if __name__ == "__main__":
    sys.exit(main())
