"""``coapio-client``: send one CoAP request (or observe a resource) from the command line.

The request is built and checked before any socket is opened, so every usage error is a one-line
message and exit status 2. The exchange itself runs under ``trio.run`` in a client-only
:class:`~coapio.Context`, which does block-wise transfer (RFC 7959) on its own; its outcome becomes the
exit status listed in ``--help``. ``--observe`` (RFC 7641) prints the response and every notification,
one per line, until Ctrl-C or SIGTERM, ``--observe-count``, ``--observe-for`` or the end of the observation.

Start-up matters for a tool run from scripts: this module imports only the standard library at the top,
and coapio's codec and runtime (and trio) once the arguments are parsed, so ``--help`` and ``--version``
return without loading them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from .. import __version__
from . import _dtls
from ._common import (
    EXIT_OK,
    OneLineParser,
    UsageError,
    error_line,
    format_address,
    format_remote,
    is_keyboard_interrupt,
    load_credentials,
    setup_logging,
    tls_context,
    unwrap,
)
from ._display import OutputError, _show, format_payload, show_response
from ._request import (
    CONTENT_FORMAT_NAMES,
    TLS_SCHEMES,
    _parse_seconds,
    build_request,
    check_transport,
    parse_block_size,
    parse_local,
    parse_observe_count,
    parse_option,
    parse_size,
)

if TYPE_CHECKING:
    import ssl

    from ..protocol.dtls import DtlsCredentials
    from ..protocol.message import Message
    from ..protocol.tuning import TransportTuning

__all__ = [
    "CONTENT_FORMAT_NAMES", "build_parser", "build_request", "format_payload", "main", "parse_block_size",
    "parse_observe_count", "parse_option", "parse_size",
]

PROG = "coapio-client"

EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_NETWORK = 4
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM

METHODS = ("get", "post", "put", "delete", "fetch", "patch", "ipatch")


#: When CoAP gives up without --timeout (RFC 7252 §4.8.2 with the default parameters): MAX_TRANSMIT_WAIT
#: for a CON request; a NON request is sent once and waited for MAX_TRANSMIT_SPAN. A test keeps these
#: in step with :class:`~coapio.TransportTuning`, which is not imported here for --help's sake.
CON_GIVE_UP = 93
NON_GIVE_UP = 45

DEFAULT_MAX_BODY = 8 * 1024 * 1024

#: The progress bar appears once a request has taken this long (seconds) ...
PROGRESS_DELAY = 1.0
#: ... and is rewritten this often.
PROGRESS_INTERVAL = 1.0

_EPILOG = f"""\
The payload is written to stdout (or to FILE with -o). When stdout is a terminal it is made
readable (--pretty forces this, --raw turns it off): text gets a final newline and control
characters escaped, JSON and link-format are pretty-printed, CBOR is shown in diagnostic notation
(RFC 8949 §8) when the cbor-diag package is installed (pip install 'coapio[cbor]'), and other binary
payloads as a hex dump. Otherwise (a pipe or a file) the payload bytes are written unchanged.

A --payload starting with '@' names a file ('@-' is stdin); write '@@' for a literal leading '@'.
When --content-format is CBOR-based (cbor, cbor-seq, ...), a text --payload is read as JSON or CBOR
diagnostic notation and sent as CBOR (needs cbor-diag); a file is sent as it is. A content format is
a number, a media type or a short name: {", ".join(CONTENT_FORMAT_NAMES)}.

-O NUM,VALUE takes an option number or name (e.g. Uri-Query, If-None-Match); VALUE follows the
option's format: a decimal number (or 0x hex) for uint options, text for string options, and for
opaque or unknown options text or 0x hex bytes; an empty VALUE sends an empty option. A value too
long or short for its option is a usage error. -q leaves only the exit status and error messages.

Payloads larger than one block (--block-size, default 1024 bytes) go out block-wise (Block1),
and block-wise responses (Block2) are reassembled, up to --max-body-size, before they are printed.
When standard error is a terminal and a request takes longer than a second, a progress bar there
counts the bytes of the upload and then of the download; it is erased when the request ends.

--observe writes the first response and then every notification as it arrives, each followed
by a newline unless it ends with one; with -v the code and Observe sequence number of each go
to stderr. It stops (deregistering on the wire) on Ctrl-C or SIGTERM, after --observe-count
responses (the first one included), --observe-for seconds after the first response, or when the
server ends the observation (with a response without Observe: status 0 for a 2.xx, 1 for an
error); --timeout bounds only the wait for the first response.

The URI's scheme picks the transport: coap:// is UDP; coap+tcp:// and coaps+tcp:// are TCP and
TLS, coap+ws:// and coaps+ws:// WebSockets over TCP and TLS (RFC 8323; the WebSockets need
pip install 'coapio[ws]'); coaps:// is DTLS (pip install 'coapio[dtls]'). Over TLS and DTLS the
server's certificate
must chain to the system's trust store, or to --ca FILE, and name the URI's host; --cert FILE
presents a client certificate (its key in the same PEM file, or in --key FILE). A missing or
unusable certificate file is a usage error; a certificate the other side refuses is status 4.
--bind is for coap:// only, --non for coap:// and coaps://, --ca, --cert and --key for the coaps
schemes. Over DTLS a pre-shared key comes from --psk KEY with --identity ID, or from --credentials
FILE (the dtls entries of aiocoap's credentials JSON, by URI pattern); a failed DTLS handshake
(wrong key, unknown identity, refused certificate) is status 4 with the cause.

exit status:
  0    a 2.xx success response, or none because No-Response suppressed it (with --observe
       also: Ctrl-C or SIGTERM, --observe-count or --observe-for reached)
  1    a 4.xx or 5.xx error response (the code and diagnostic payload go to stderr)
  2    usage error: bad arguments, URI, content format, option or payload
  3    timeout: --timeout elapsed, or CoAP gave up waiting for an answer
  4    network error: unreachable or closed port (ICMP), name resolution, Reset, bad response,
       a refused connection or TLS certificate, a connection closed before the response
  130  interrupted (Ctrl-C; with --observe only before the first response; SIGTERM: 143)
"""





def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description=(
            "Send one CoAP request over UDP, TCP, TLS or WebSockets (the URI's scheme says which) and\n"
            "print the response payload."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-m", "--method", type=str.lower, choices=METHODS, default="get",
        help="request method (default: get; case-insensitive)",
    )
    parser.add_argument(
        "--payload", metavar="TEXT|@FILE|@-",
        help="request payload: UTF-8 text, the bytes of FILE, or stdin",
    )
    parser.add_argument(
        "--content-format", metavar="CF",
        help="Content-Format of the payload: a number, media type or short name (e.g. json, cbor)",
    )
    parser.add_argument("--accept", metavar="CF", help="Accept option: a number, media type or short name")
    parser.add_argument(
        "--non", action="store_true",
        help="coap:// only: send a non-confirmable (NON) request instead of CON"
    )
    parser.add_argument(
        "-O", "--option", metavar="NUM,VALUE", action="append", default=[], dest="options",
        help="add an option (repeatable); see below",
    )
    parser.add_argument(
        "--token", metavar="HEX", help="the request's token, 1 to 8 bytes in hex (default: random)"
    )
    parser.add_argument(
        "--no-set-hostname", dest="set_hostname", action="store_false",
        help="send no Uri-Host option, even when the URI names a host by name",
    )
    parser.add_argument(
        "--bind", metavar="HOST[:PORT]",
        help="coap:// only: local address to send from (default: any address, an ephemeral port)",
    )
    parser.add_argument(
        "--timeout", metavar="SECONDS",
        help=f"give up after SECONDS (default: when CoAP gives up, about {CON_GIVE_UP} s for a CON "
        f"request, {NON_GIVE_UP} s for a NON one; {CON_GIVE_UP} s over TCP and WebSockets)",
    )
    parser.add_argument(
        "--ca", metavar="FILE",
        help="coaps+tcp/coaps+ws: trust servers whose certificate this CA (PEM) signed, instead of the "
        "system's trust store",
    )
    parser.add_argument(
        "--cert", metavar="FILE",
        help="coaps+tcp/coaps+ws: present this client certificate (PEM; with its key unless --key)",
    )
    parser.add_argument(
        "--key", metavar="FILE", help="the private key of --cert (PEM, unencrypted)",
    )
    _dtls.add_client_arguments(parser)
    parser.add_argument(
        "--block-size", metavar="BYTES",
        help="preferred block size for block-wise transfer: 16, 32, 64, 128, 256, 512 or 1024 "
        "(default: 1024, and the server chooses the response's block size)",
    )
    parser.add_argument(
        "--max-body-size", metavar="BYTES",
        help="the largest block-wise response to reassemble, in bytes or with a suffix k, M or G "
        "(powers of 1024; default: 8M)",
    )
    parser.add_argument(
        "--observe", action="store_true",
        help="observe the resource (GET or FETCH): print each notification as it arrives",
    )
    parser.add_argument(
        "--observe-count", metavar="N",
        help="with --observe: stop after N responses, the first one included",
    )
    parser.add_argument(
        "--observe-for", metavar="SECONDS",
        help="with --observe: stop SECONDS after the first response",
    )
    parser.add_argument(
        "-o", "--output", metavar="FILE",
        help="write the payload's bytes to FILE instead of stdout (with --observe: the latest one)",
    )
    parser.add_argument(
        "--credentials", metavar="FILE",
        help="a credentials file in aiocoap's JSON format: requests to URIs it maps to an OSCORE context "
        "are protected with it (see the security page of the docs)",
    )
    look = parser.add_mutually_exclusive_group()
    look.add_argument(
        "--pretty", dest="readable", action="store_const", const=True, default=None,
        help="make the payload readable even when stdout is not a terminal",
    )
    look.add_argument(
        "--raw", dest="readable", action="store_const", const=False,
        help="write the payload's bytes unchanged even to a terminal",
    )
    parser.add_argument(
        "--color", choices=("auto", "always", "never"), default="auto",
        help="colour the response code on stderr: auto (the default: only on a terminal), always, never",
    )
    chatter = parser.add_mutually_exclusive_group()
    chatter.add_argument(
        "-v", "--verbose", action="count", default=0,
        help="print the response code, remote address (a URI for TCP, TLS and WebSockets) and options "
        "to stderr (-vv: also every UDP datagram sent and received, retransmissions and blocks included)",
    )
    chatter.add_argument(
        "-q", "--quiet", action="store_true", help="print nothing but error messages"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "uri", metavar="URI",
        help="the resource: coap:// (UDP), coap+tcp://, coaps+tcp:// (TLS), coap+ws:// or coaps+ws:// "
        "(WebSockets), e.g. coap://[::1]/time",
    )
    return parser


# --- running -------------------------------------------------------------------------------------


def _failure(
    exc: BaseException, request: Message, limit: float | None, *, bind: str | None = None,
    default_limit: bool = False, cert: bool = True,
) -> tuple[int, str] | None:
    """Exit status and message for a failed exchange; None for an exception that is not ours to report.

    ``default_limit``: ``limit`` is the default bound of a TCP or WebSocket request, not ``--timeout``.
    ``cert``: a client certificate was given (without one, a TLS connection the server closes gets a
    hint that it may want one).
    """
    import ssl

    import anyio

    from .. import error
    from ..protocol.codes import Type

    peer = format_remote(request.remote)
    if isinstance(exc, error.RequestTimedOut):
        if request.type is Type.NON:
            return EXIT_TIMEOUT, (
                f"no response from {peer} (a NON request is sent once, and CoAP stopped waiting after "
                f"about {NON_GIVE_UP} s)"
            )
        return EXIT_TIMEOUT, f"no answer from {peer} (the CoAP retransmissions gave up)"
    if isinstance(exc, TimeoutError):
        source = "the default over TCP and WebSockets; see --timeout" if default_limit else "--timeout"
        within = "" if limit is None else f" within {limit:g} s ({source})"
        return EXIT_TIMEOUT, f"no response from {peer}{within}"
    if isinstance(exc, error.ResetReceived):
        return EXIT_NETWORK, f"{peer} answered with a Reset (RST)"
    if isinstance(exc, error.ResponseRejected):
        hint = " (see --max-body-size)" if "exceeds the limit" in str(exc) else ""
        return EXIT_NETWORK, f"rejected the response from {peer}: {exc}{hint}"
    if isinstance(exc, error.NetworkError) and exc.errno is not None:
        return EXIT_NETWORK, f"{peer}: {os.strerror(exc.errno)}"
    if isinstance(exc, error.NetworkError):
        message = exc.strerror or str(exc)  # NetworkError(None, text) would read "[Errno None] text"
        if not cert and request.scheme in TLS_SCHEMES and "closed" in message:
            message += " (does the server want a client certificate? see --cert)"
        return EXIT_NETWORK, message
    if isinstance(exc, error.NoTransport):  # e.g. coap+ws:// without wsproto
        return EXIT_NETWORK, str(exc)
    if isinstance(exc, anyio.BrokenResourceError | anyio.ClosedResourceError | anyio.EndOfStream):
        # A TCP or WebSocket connection that broke under the transport (a TLS server refusing the
        # client's certificate after the handshake, say).
        hint = ""
        if not cert and request.scheme in TLS_SCHEMES:
            hint = " (does the server want a client certificate? see --cert)"
        return EXIT_NETWORK, f"the connection to {peer} broke{hint}"
    if isinstance(exc, ssl.SSLError):
        return EXIT_NETWORK, f"TLS with {peer} failed: {exc.reason or exc}"
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
        if bind is not None:
            return EXIT_NETWORK, f"cannot bind --bind {bind}: {reason}"
        return EXIT_NETWORK, reason
    if isinstance(exc, error.CoapError):  # e.g. an OSCORE context that cannot protect any more
        return EXIT_NETWORK, str(exc)
    return None


class Plan:
    """How to run the request, besides the request itself: what main() parsed from the arguments."""

    def __init__(
        self,
        timeout: float | None = None,
        tuning: TransportTuning | None = None,
        observe_count: int | None = None,
        *,
        observe_for: float | None = None,
        bind: tuple[str, int] | None = None,
        trace: bool = False,
        client_ssl: ssl.SSLContext | None = None,
        default_timeout: bool = False,
        cert: bool = False,
        credentials: Any = None,
    ):
        if tuning is None:
            from ..protocol.tuning import TransportTuning

            tuning = TransportTuning()
        self.timeout = timeout
        self.tuning = tuning
        self.observe_count = observe_count
        self.observe_for = observe_for
        self.bind = bind
        self.trace = trace
        #: For coaps+tcp:// and coaps+ws://: how to verify the server, which certificate to present.
        self.client_ssl = client_ssl
        #: For coaps:// (DTLS): the credentials (--psk/--identity, --credentials, --cert/--key/--ca).
        self.dtls: DtlsCredentials | None = None
        #: ``timeout`` is the default bound of a TCP or WebSocket request, not --timeout.
        self.default_timeout = default_timeout
        #: A client certificate was given (--cert).
        self.cert = cert
        #: The loaded --credentials (a :class:`~coapio.credentials.Credentials`), or None.
        self.credentials = credentials

    @property
    def bind_text(self) -> str | None:
        return None if self.bind is None else format_address(self.bind, unmap=False)


class _Progress:
    """What the runtime reported of a block-wise transfer: which way, bytes moved and the body's size.

    ``upload`` is the request body's size when it goes out block-wise: the reports count it first, and
    the next report after it was all acknowledged is the first of the response's download.
    """

    def __init__(self, upload: int | None = None) -> None:
        self.upload = upload
        self.phase = "upload" if upload else "download"
        self.done = 0
        self.total: int | None = upload

    def __call__(self, done: int, total: int | None) -> None:
        if self.phase == "upload" and self.done >= (self.upload or 0):
            self.phase = "download"
        self.done, self.total = done, total


def _progress_line(state: _Progress, elapsed: int) -> str:
    done_kib = state.done / 1024
    if state.total:
        fraction = min(1.0, state.done / state.total)
        bar = "#" * int(fraction * 20)
        return (f"{state.phase} [{bar:<20}] {fraction:4.0%} {done_kib:.0f} of {state.total / 1024:.0f} KiB, "
                f"{elapsed} s")
    return f"{state.phase} {done_kib:.0f} KiB, {elapsed} s"


async def _show_progress(stderr: TextIO, state: _Progress) -> None:
    """The progress bar: after PROGRESS_DELAY, bytes moved of the body's size (Size1 for an upload, Size2
    for a download, when the server sends it) and the elapsed seconds; erased when the request ends."""
    import trio

    start = trio.current_time()
    shown = False
    try:
        await trio.sleep(PROGRESS_DELAY)
        while True:
            elapsed = int(trio.current_time() - start)
            stderr.write(f"\r{PROG}: {_progress_line(state, elapsed)}\x1b[K")
            stderr.flush()
            shown = True
            await trio.sleep(PROGRESS_INTERVAL)
    finally:
        if shown:
            stderr.write("\r\x1b[K")
            stderr.flush()


@contextlib.asynccontextmanager
async def _context(plan: Plan) -> Any:
    """The client context the plan asks for, with the wire trace of ``-vv``."""
    from ..runtime.context import Context

    async with Context(
        bind=None if plan.bind is None else [plan.bind], tuning=plan.tuning, client_ssl=plan.client_ssl,
        credentials=plan.credentials,
        dtls=plan.dtls,
    ) as ctx:
        if plan.trace:
            from ._trace import install_tracer

            install_tracer(ctx)
        yield ctx


async def _exchange(request: Message, plan: Plan, progress: TextIO | None = None) -> Message:
    """One request in a fresh context; with a ``progress`` stream, the progress bar on it meanwhile."""
    import anyio
    import trio

    async with _context(plan) as ctx:
        with anyio.fail_after(plan.timeout):
            if progress is None:
                response: Message = await ctx.request(request)
                return response
            block = 1 << (plan.tuning.block_szx + 4)
            state = _Progress(len(request.payload) if len(request.payload) > block else None)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_show_progress, progress, state)
                response = await ctx.request(request, progress=state)
                nursery.cancel_scope.cancel()
            return response


async def _observe(args: argparse.Namespace, request: Message, plan: Plan) -> int:
    """Observe and print until a signal, ``--observe-count``, ``--observe-for`` or the end of the observation.

    SIGINT (Ctrl-C) and SIGTERM (``kill``, ``timeout``) are taken as signals here, not as
    KeyboardInterrupt or death, so the observation ends in order: leaving its block sends the
    deregistration (GET with Observe=1) before the context closes.
    """
    import signal

    import anyio
    import trio

    stdout, stderr = sys.stdout, sys.stderr
    shown = 0
    status = EXIT_OK
    received: int | None = None
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with _context(plan) as ctx, trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                nonlocal received
                async for signum in signals:
                    received = signum
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
            try:
                async with contextlib.AsyncExitStack() as stack:
                    with anyio.fail_after(plan.timeout):
                        observation = await stack.enter_async_context(ctx.observe(request))
                    with trio.CancelScope() as duration:
                        async for response in observation:
                            shown += 1
                            status, still_open = _show(args, response, stdout, stderr, first=shown == 1)
                            if not still_open or shown == plan.observe_count:
                                break
                            if shown == 1 and plan.observe_for is not None:
                                duration.deadline = trio.current_time() + plan.observe_for
            finally:
                nursery.cancel_scope.cancel()
    if received is not None and not shown:
        return EXIT_TERMINATED if received == signal.SIGTERM else EXIT_INTERRUPTED
    return status


async def _run(args: argparse.Namespace, request: Message, plan: Plan) -> int:
    stdout, stderr = sys.stdout, sys.stderr
    if args.verbose >= 2:
        kind = f"{request.type.name}, " if request.scheme == "coap" else ""
        print(f"{request.code.name} {request.uri} ({kind}{len(request.payload)} bytes)", file=stderr,
              flush=True)
    progress = stderr if stderr.isatty() and not args.quiet else None
    try:
        if args.observe:
            return await _observe(args, request, plan)
        response = await _exchange(request, plan, progress)
        return show_response(args, response, stdout, stderr)
    except BaseException as raised:
        exc = unwrap(raised)
        if isinstance(exc, OutputError):
            error_line(PROG, str(exc), stderr)
            return EXIT_USAGE
        outcome = _group_failure(exc, request, plan)
        if outcome is None:
            raise
        status, message = outcome
        error_line(PROG, message, stderr)
        return status


def _group_failure(exc: BaseException, request: Message, plan: Plan) -> tuple[int, str] | None:
    """:func:`_failure` for ``exc``, or for an exception group whose every exception is a failure to
    report: the first coapio error among them (a connection that breaks can fail the request and, at the
    same moment, a task of its transport). None when anything in it is not ours to report."""
    from .. import error

    def failure(leaf: BaseException) -> tuple[int, str] | None:
        if not isinstance(leaf, Exception):
            return None
        return _failure(leaf, request, plan.timeout, bind=plan.bind_text, default_limit=plan.default_timeout,
                        cert=plan.cert)

    if not isinstance(exc, BaseExceptionGroup):
        return failure(exc)
    leaves: list[BaseException] = []
    pending: list[BaseException] = [exc]
    while pending:
        item = pending.pop(0)
        if isinstance(item, BaseExceptionGroup):
            pending.extend(item.exceptions)
        else:
            leaves.append(item)
    leaves.sort(key=lambda leaf: not isinstance(leaf, error.CoapError))  # stable: coapio's first
    outcomes = [failure(leaf) for leaf in leaves]
    if not outcomes or None in outcomes:
        return None
    return outcomes[0]


def make_plan(args: argparse.Namespace) -> Plan:
    """Everything but the request and its transport that the arguments ask for; raise
    :class:`UsageError`."""
    from ..protocol.tuning import TransportTuning

    timeout = _parse_seconds(args.timeout, "--timeout")
    szx = parse_block_size(args.block_size)
    max_body = parse_size(args.max_body_size)
    count = parse_observe_count(args.observe_count, args.observe)
    observe_for = _parse_seconds(args.observe_for, "--observe-for")
    if observe_for is not None and not args.observe:
        raise UsageError("--observe-for needs --observe")
    bind = None if args.bind is None else parse_local(args.bind)
    if args.output is not None:
        directory = os.path.dirname(os.path.abspath(args.output))
        if not os.path.isdir(directory):
            raise UsageError(f"-o {args.output!r}: no such directory {directory!r}")
    tuning = TransportTuning(
        block_szx=6 if szx is None else szx, max_body_size=max_body or DEFAULT_MAX_BODY
    )
    plan = Plan(timeout, tuning, count, observe_for=observe_for, bind=bind, trace=args.verbose >= 2)
    if args.credentials is not None:
        plan.credentials = load_credentials(args.credentials)
    return plan


def plan_transport(plan: Plan, args: argparse.Namespace, scheme: str) -> None:
    """Complete ``plan`` for a request over ``scheme``: refuse the arguments that mean nothing there, read
    and check the TLS files (before anything is sent), and bound a TCP or WebSocket request that has no
    --timeout; raise :class:`UsageError`."""
    check_transport(args, scheme)
    _dtls.refuse_unless_coaps(args, scheme)
    if scheme == "coaps":
        plan.dtls = _dtls.credentials(args, server=False)
    if scheme in TLS_SCHEMES:
        plan.client_ssl = tls_context(
            args.ca, args.cert, args.key, server=False, websocket=scheme.endswith("+ws")
        )
        plan.cert = args.cert is not None
    if plan.timeout is None and scheme != "coap":
        # A reliable transport never gives up on its own while the connection stays up: bound the wait
        # as CoAP bounds a CON request over UDP.
        plan.timeout = float(CON_GIVE_UP)
        plan.default_timeout = True


def main(argv: Sequence[str] | None = None) -> int:
    """Run the tool with ``argv`` (default: the command line) and return its exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error argparse has already reported
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    plan = None
    try:
        plan = make_plan(args)
        request = build_request(args)
        plan_transport(plan, args, request.scheme)
    except UsageError as e:
        if plan is not None and plan.credentials is not None:
            plan.credentials.close()
        error_line(PROG, str(e))
        return EXIT_USAGE
    except KeyboardInterrupt:  # while reading the payload from stdin
        return EXIT_INTERRUPTED
    if args.verbose:
        setup_logging(0 if args.verbose == 1 else 2)  # -v: the library's warnings; -vv: everything
    else:
        # Every outcome is reported as the exit status and at most one line: the library's own log
        # records (a connection's failure, logged where it happens) would repeat it, with a traceback.
        import logging

        logging.getLogger("coapio").addHandler(logging.NullHandler())
    import trio

    try:
        status: int = trio.run(_run, args, request, plan)
        return status
    except BaseException as e:
        if is_keyboard_interrupt(e):
            return EXIT_INTERRUPTED
        raise
    finally:
        if plan.credentials is not None:
            plan.credentials.close()  # records the OSCORE sequence numbers used


if __name__ == "__main__":
    sys.exit(main())
