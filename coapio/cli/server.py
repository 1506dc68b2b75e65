"""``coapio-server``: a small demo CoAP server, and :func:`build_site`, its resources.

Resources: ``/`` (a welcome text), ``/time`` (the current UTC time, observable: a notification every
second while observed), ``/large`` (8 KiB of text, served block-wise), ``/echo`` (POST/PUT answer with the
request's payload and Content-Format, block-wise both ways when large), ``/whoami`` (the client's address)
and the generated ``/.well-known/core``, the same on every transport: UDP, and with ``--bind URI`` TCP, TLS
and WebSockets (RFC 8323), Observe and block-wise included. Every renderer is a plain ``def``, so the
server answers on its socket tasks without spawning a task per request; only an observation of ``/time``
has a task, its ticker. Each resource offers one content format and answers an Accept asking for another
with 4.06 Not Acceptable (RFC 7252 §5.10.4). SIGINT (Ctrl-C) and SIGTERM stop it cleanly with status 0.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import errno
import functools
import math
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import anyio
import trio

from .. import __version__, error
from ..protocol.codes import Code
from ..protocol.contentformat import ContentFormat
from ..protocol.message import Message
from ..protocol.uri import DEFAULT_PORTS
from ..runtime.context import Context
from ..runtime.resource import Resource, Site
from ..runtime.server import ObservableResource
from ..transports.udp import open_udp_socket, parse_bind
from . import _dtls
from ._common import (
    OneLineParser,
    UsageError,
    error_line,
    format_address,
    is_keyboard_interrupt,
    load_credentials,
    setup_logging,
    tls_context,
    unwrap,
)
from ._trace import install_tracer

if TYPE_CHECKING:
    from ..protocol.dtls import DtlsCredentials

__all__ = ["LARGE_SIZE", "Echo", "Large", "Time", "Welcome", "WhoAmI", "build_site", "large_text", "main"]

PROG = "coapio-server"

EXIT_OK = 0
EXIT_CANNOT_BIND = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

DEFAULT_BIND = ("::", 5683)
FALLBACK_BIND = ("0.0.0.0", 5683)

#: The schemes of ``--bind URI`` besides ``coap://`` (UDP): TCP, TLS, WebSockets, secure WebSockets.
RELIABLE_SCHEMES = ("coap+tcp", "coaps+tcp", "coap+ws", "coaps+ws")
TLS_SCHEMES = ("coaps+tcp", "coaps+ws")

_TEXT = ContentFormat.TEXT_PLAIN


def _offer(request: Message, content_format: int | None) -> None:
    """Raise 4.06 Not Acceptable when the request's Accept asks for another format (RFC 7252 §5.10.4)."""
    accept = request.opt.accept
    if accept is not None and accept != content_format:
        offered = "no content format" if content_format is None else ContentFormat(content_format).media_type
        raise error.NotAcceptable(f"Accept {accept} cannot be served: this resource has {offered}")


def _text(payload: str, code: Code = Code.EMPTY) -> Message:
    message = Message(code=code, payload=payload.encode("utf-8"))
    message.opt.content_format = _TEXT
    return message


class Welcome(Resource):
    """``/``: names the server and lists the site's resources."""

    link_attributes = {"title": "Welcome", "ct": int(_TEXT)}

    def __init__(self, site: Site):
        super().__init__()
        self.site = site

    def render_get(self, request: Message) -> Message:
        _offer(request, _TEXT)
        hrefs = [link.href for link in self.site.links()] + ["/.well-known/core"]
        lines = [f"Welcome to coapio {__version__}, a trio-native CoAP server.", "Resources:"]
        lines += [f"  {href}" for href in hrefs]
        return _text("\n".join(lines) + "\n")


class Time(ObservableResource):
    """``/time``: the current UTC time in ISO 8601 (``2024-05-01T12:00:00Z``), observable.

    While observed, it notifies once per wall-clock second, just after the second changes, however many
    clients observe it. The runtime runs :meth:`observation` once per observer and cancels it when that
    observer goes away, so every observer's task ticks; they all sleep until the same second boundary and
    the first to wake notifies for everyone (``notify()`` sends at once to every observer, so one call per
    second is what keeps it at one notification per second). No observer, no task, no timer.

    ``clock`` (seconds since the epoch) is for tests.
    """

    link_attributes = {
        "rt": "time", "if": "core.rp", "obs": None, "title": "Current UTC time", "ct": int(_TEXT),
    }

    def __init__(self, clock: Callable[[], float] = time.time):
        super().__init__()
        self._clock = clock
        self._last_tick: int | None = None  # the second last notified for

    def render_get(self, request: Message) -> Message:
        _offer(request, _TEXT)
        now = datetime.datetime.fromtimestamp(self._clock(), datetime.UTC)
        response = _text(now.strftime("%Y-%m-%dT%H:%M:%SZ"))
        response.opt.max_age = 1  # a cached copy is stale after a second
        return response

    async def observation(self, request: Message) -> None:
        """Tick while this observer stays registered; cancelled when it leaves (see the class)."""
        while True:
            now = self._clock()
            await anyio.sleep(math.floor(now) + 1 - now + 0.001)
            tick = math.floor(self._clock())
            if tick != self._last_tick:  # another observer's task has not notified for this second yet
                self._last_tick = tick
                self.notify()


#: The size of ``/large``'s representation in bytes.
LARGE_SIZE = 8192


def large_text() -> bytes:
    """``/large``'s body: 128 numbered lines of 64 bytes of ASCII text, the same on every call."""
    filler = "The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs."
    lines = [f"{n:04d} {filler}"[:63] + "\n" for n in range(LARGE_SIZE // 64)]
    return "".join(lines).encode("ascii")


class Large(Resource):
    """``/large``: 8 KiB of text, more than one block, so the runtime serves it block-wise (RFC 7959)."""

    link_attributes = {"title": "8 KiB of text (block-wise)", "ct": int(_TEXT), "sz": LARGE_SIZE}

    def __init__(self) -> None:
        super().__init__()
        self._body = large_text()

    def render_get(self, request: Message) -> Message:
        _offer(request, _TEXT)
        response = Message(payload=self._body)
        response.opt.content_format = _TEXT
        return response


class Echo(Resource):
    """``/echo``: POST and PUT answer 2.04 with the request's payload and Content-Format (4.06 for an
    Accept that asks for another one).

    A large payload arrives with Block1 and leaves with Block2: the runtime reassembles the request (up
    to ``TransportTuning.max_body_size``, 8 MiB by default) and segments the response. It has no GET
    renderer, so a GET gets 4.05 Method Not Allowed from the site.
    """

    link_attributes = {"title": "Echoes POST and PUT payloads"}

    def render_post(self, request: Message) -> Message:
        content_format = request.opt.content_format
        _offer(request, content_format)
        response = Message(code=Code.CHANGED, payload=request.payload)
        if content_format is not None:
            response.opt.content_format = content_format
        return response

    render_put = render_post


class WhoAmI(Resource):
    """``/whoami``: the client's address as ``host:port`` (IPv6 in brackets) and, for a request that was
    authenticated (OSCORE, DTLS), a second line with the identity its credentials gave it."""

    link_attributes = {"title": "Your address and identity", "ct": int(_TEXT)}

    def render_get(self, request: Message) -> Message:
        _offer(request, _TEXT)
        text = format_address(request.remote)
        if request.security is not None:
            text += f"\nauthenticated as {request.security}"
        return _text(text)


def build_site() -> Site:
    """The demo server's resources (``/.well-known/core`` is generated by the :class:`Site`)."""
    site = Site()
    site.add("", Welcome(site))
    site.add("time", Time())
    site.add("large", Large())
    site.add("echo", Echo())
    site.add("whoami", WhoAmI())
    return site


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description=(
            "Serve the coapio demo resources /, /time (observable), /large, /echo, /whoami and\n"
            "/.well-known/core over CoAP/UDP, and with --bind URI over TCP, TLS and WebSockets too,\n"
            "until Ctrl-C or SIGTERM."
        ),
        epilog=(
            "Without --bind the server listens on [::]:5683 (IPv6 and IPv4), or on 0.0.0.0:5683\n"
            "where IPv6 is unavailable.\n"
            "\n"
            "--bind takes HOST[:PORT] or coap://HOST[:PORT] for UDP, coap+tcp:// and coaps+tcp:// for\n"
            "TCP and TLS, coap+ws:// and coaps+ws:// for WebSockets over TCP and TLS (RFC 8323; the\n"
            "WebSockets need pip install 'coapio[ws]'); a URI without a port takes its scheme's\n"
            "default (5683, 5684, 80, 443). The coaps schemes need --cert FILE, the server's PEM\n"
            "certificate chain, with its key in it or in --key FILE; --ca FILE makes TLS clients\n"
            "present a certificate signed by that CA. coaps:// is DTLS (pip install 'coapio[dtls]'):\n"
            "it takes --cert/--key/--ca as TLS does and/or --credentials FILE, aiocoap's credentials\n"
            "JSON whose dtls entries list the PSK identities clients may use; /whoami shows who the\n"
            "client authenticated as. The ready line names every address listened\n"
            "on: UDP as HOST:PORT, the others as URIs. --workers serves UDP binds only.\n"
            "\n"
            "exit status:\n"
            "  0    stopped by Ctrl-C (SIGINT) or SIGTERM\n"
            "  1    cannot bind an address (e.g. already in use)\n"
            "  2    usage error (e.g. a malformed or unresolvable --bind, a coaps bind without --cert)\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--bind", metavar="HOST[:PORT]|URI", action="append", default=[],
        help="address to listen on (repeatable): HOST[:PORT] for UDP (IPv6 as [addr]:port; the port "
        "defaults to 5683), or a URI: coap://, coap+tcp://, coaps+tcp://, coap+ws://, coaps+ws://",
    )
    parser.add_argument(
        "--cert", metavar="FILE",
        help="for coaps+tcp and coaps+ws binds (required there): the server's certificate chain (PEM), "
        "with its key unless --key",
    )
    parser.add_argument("--key", metavar="FILE", help="the private key of --cert (PEM, unencrypted)")
    parser.add_argument(
        "--ca", metavar="FILE",
        help="for coaps binds: require client certificates, signed by this CA (PEM)",
    )
    parser.add_argument(
        "--credentials", metavar="FILE",
        help="a credentials file in aiocoap's JSON format: the OSCORE contexts it lists are accepted "
        "(the demo resources answer protected requests too; /whoami shows the identity)",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0,
        help="log every request and response over UDP to stderr (-vv: also empty messages and every "
        "option)"
    )
    parser.add_argument(
        "--workers", metavar="N", type=_worker_count, default=1,
        help="serve from N processes sharing the port (SO_REUSEPORT; one per core; UDP binds only); "
        "default 1",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _bind_text(binds: Sequence[tuple[str, int] | str]) -> str:
    """UDP addresses as ``host:port``, the other transports as the URIs they were given."""
    return ", ".join(b if isinstance(b, str) else format_address(b, unmap=False) for b in binds)


def parse_server_bind(text: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of a ``--bind``: ``HOST[:PORT]`` is UDP (``coap``), as is ``coap://…``;
    ``coap+tcp://``, ``coaps+tcp://``, ``coap+ws://`` and ``coaps+ws://`` name the other transports, and
    a URI without a port takes its scheme's default. Raise ValueError."""
    if "://" not in text:
        return ("coap", *parse_bind(text))
    scheme, rest = text.split("://", 1)
    scheme = scheme.lower()
    if scheme not in ("coap", "coaps") and scheme not in RELIABLE_SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; use HOST:PORT or coap://, coaps:// (DTLS), "
                         f"{', '.join(s + '://' for s in RELIABLE_SCHEMES)}")
    rest = rest.rstrip("/")
    if "/" in rest or "?" in rest:
        raise ValueError("a --bind URI names an address only, not a path")
    if not rest:
        raise ValueError("no host (write e.g. 0.0.0.0 or [::])")
    host, port = parse_bind(rest)
    has_port = (rest.rsplit("]", 1)[-1] if rest.startswith("[") else rest).count(":") == 1
    return scheme, host, port if has_port else DEFAULT_PORTS[scheme]


def _uri(scheme: str, host: str, port: int) -> str:
    return f"{scheme}://{format_address((host, port), unmap=False)}"


def _announced(context: Context, udp: bool) -> str:
    """What the ready line names: the UDP sockets as ``host:port`` (only when UDP was asked for: a context
    always has one, an ephemeral one otherwise) and every other listener as its URI."""
    names = []
    for uri in context.local_uris:
        if uri.startswith("coap://"):
            if udp:
                names.append(uri.removeprefix("coap://"))
        else:
            names.append(uri)
    return ", ".join(names)


def _server_ssl(args: argparse.Namespace, listen: Sequence[str]) -> ssl.SSLContext | None:
    """The TLS context of the coaps binds in ``listen`` (URIs), from --cert, --key and --ca; raise
    :class:`UsageError` for a coaps bind without --cert, TLS files without a coaps bind, or a file that
    cannot be used. One context serves both coaps schemes: its ALPN list offers ``coap`` (coaps+tcp)
    and ``http/1.1`` (the WebSocket handshake of coaps+ws) as the binds need."""
    schemes = {uri.split("://", 1)[0] for uri in listen}
    secure = [uri for uri in listen if uri.split("://", 1)[0] in TLS_SCHEMES]
    given = [f"--{name}" for name in ("cert", "key", "ca") if getattr(args, name) is not None]
    if not secure:
        if given and not any(uri.startswith("coaps://") for uri in listen):
            raise UsageError(f"{given[0]} is for coaps+tcp:// and coaps+ws:// binds, and there is none")
        return None
    if args.cert is None:
        raise UsageError(f"--bind {secure[0]} needs --cert FILE (the server's PEM certificate chain; "
                         "--key FILE unless the key is in it)")
    context = tls_context(args.ca, args.cert, args.key, server=True)
    alpn = (["coap"] if "coaps+tcp" in schemes else []) + (["http/1.1"] if "coaps+ws" in schemes else [])
    context.set_alpn_protocols(alpn)
    return context


async def _until_supervisor_dies() -> None:
    """Return when the supervisor is gone: a worker's stdin is a pipe whose other end only the supervisor
    holds, so it reads end-of-file however the supervisor ended, ``kill -9`` included. (PR_SET_PDEATHSIG
    would not do: it fires when the *thread* that started the worker ends, and trio starts processes
    from worker threads that come and go.)"""
    async with trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())) as stdin:
        while await stdin.receive_some():
            pass


async def _serve(
    binds: list[tuple[str, int]], explicit: bool, *, worker: bool = False, verbose: int = 0,
    listen: Sequence[str] = (), server_ssl: ssl.SSLContext | None = None, credentials: Any = None,
    dtls: DtlsCredentials | None = None,
) -> int:
    """Open the context (falling back to IPv4 for the default bind), announce it, wait for a signal (or,
    for a worker, for its supervisor to go away).

    ``listen`` holds the URIs of the TCP, TLS and WebSocket listeners, ``server_ssl`` the TLS context of
    the coaps ones; ``binds`` the UDP addresses (none: only the ephemeral socket every context has).

    The signal receiver stays installed until the context has closed, so a second Ctrl-C during the
    shutdown is absorbed instead of interrupting it half-way. With ``-v`` every datagram is logged.
    """
    site = build_site()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with contextlib.AsyncExitStack() as stack:
            while True:
                try:
                    opening = Context(bind=[*binds, *listen], site=site, reuse_port=worker,
                                      server_ssl=server_ssl, credentials=credentials, dtls=dtls)
                    context = await stack.enter_async_context(opening)
                except BaseException as raised:
                    exc = unwrap(raised)
                    if not isinstance(exc, OSError):
                        raise
                    if not explicit and not listen and binds == [DEFAULT_BIND] and exc.errno in (
                        errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL
                    ):
                        binds = [FALLBACK_BIND]  # no IPv6 on this host
                        continue
                    reason = exc.strerror or str(exc)
                    if isinstance(exc, socket.gaierror):
                        error_line(PROG, f"cannot resolve --bind {_bind_text([*binds, *listen])}: {reason}")
                        return EXIT_USAGE
                    error_line(PROG, f"cannot bind {_bind_text([*binds, *listen])}: {reason}")
                    return EXIT_CANNOT_BIND
                break
            if verbose:
                install_tracer(context)
            if worker:
                print("ready", flush=True)  # to the supervising process, which announces the server
            else:
                addresses = _announced(context, udp=bool(binds))
                print(f"{PROG} listening on {addresses}", file=sys.stderr, flush=True)
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    async for _ in signals:
                        break
                    nursery.cancel_scope.cancel()

                nursery.start_soon(stop_on_signal)
                if worker:
                    await _until_supervisor_dies()
                    nursery.cancel_scope.cancel()
    return EXIT_OK


def _reserve(binds: list[tuple[str, int]], explicit: bool) -> list[socket.socket]:
    """Bind one SO_REUSEPORT socket per address, in the group the workers join: it fixes the port when 0
    was asked for, and proves the address can be had, before any worker starts."""
    while True:
        sockets: list[socket.socket] = []
        try:
            for host, port in binds:
                sockets.append(open_udp_socket(host, port, reuse_port=True))
            return sockets
        except OSError as exc:
            for sock in sockets:
                sock.close()
            if not explicit and binds == [DEFAULT_BIND] and exc.errno in (
                errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL
            ):
                binds = [FALLBACK_BIND]
                continue
            raise


async def _supervise(binds: list[tuple[str, int]], explicit: bool, workers: int, verbose: int) -> int:
    """Run ``workers`` server processes on the same addresses (SO_REUSEPORT) until a signal comes.

    The kernel hashes each client's source address to one worker, so a client's retransmissions and
    duplicates meet the same deduplication state. The reserved sockets are closed once every worker is
    ready: until then they are part of the group, and a datagram the kernel hands them is lost (a CON is
    retransmitted). A worker that dies takes the server down: status 1. A supervisor that dies (even by
    ``kill -9``) takes the workers down: each watches its stdin, a pipe from here, for end-of-file.
    """
    try:
        reserved = _reserve(binds, explicit)
    except OSError as exc:
        if isinstance(exc, socket.gaierror):
            error_line(PROG, f"cannot resolve --bind {_bind_text(binds)}: {exc.strerror or exc}")
            return EXIT_USAGE
        error_line(PROG, f"cannot bind {_bind_text(binds)}: {exc.strerror or exc}")
        return EXIT_CANNOT_BIND
    locals_ = [sock.getsockname() for sock in reserved]
    command = [sys.executable, "-m", "coapio.cli.server", "--worker", *(["-v"] * verbose)]
    for address in locals_:
        command += ["--bind", format_address(address, unmap=False)]
    processes: list[trio.Process] = []
    status = EXIT_OK
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            for _ in range(workers):
                # stdin: a pipe that closes when this process ends in any way; the workers watch it.
                processes.append(await trio.lowlevel.open_process(
                    command, stdin=subprocess.PIPE, stdout=subprocess.PIPE
                ))
            with trio.fail_after(30):
                for process in processes:
                    assert process.stdout is not None
                    if (await process.stdout.receive_some(64)).strip() != b"ready":
                        error_line(PROG, "a worker failed to start")
                        return EXIT_CANNOT_BIND
            for sock in reserved:
                sock.close()
            print(f"{PROG} listening on {_bind_text(locals_)} ({workers} workers)", file=sys.stderr,
                  flush=True)
            stopped = trio.Event()
            async with trio.open_nursery() as nursery:

                async def watch(process: trio.Process) -> None:
                    nonlocal status
                    await process.wait()
                    if not stopped.is_set():
                        error_line(PROG, f"worker {process.pid} exited with status {process.returncode}")
                        status = 1
                    nursery.cancel_scope.cancel()

                for process in processes:
                    nursery.start_soon(watch, process)
                async for _ in signals:
                    stopped.set()
                    break
                nursery.cancel_scope.cancel()
        finally:
            for sock in reserved:
                sock.close()
            for process in processes:
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
            with trio.move_on_after(10):
                for process in processes:
                    await process.wait()
            for process in processes:
                if process.returncode is None:
                    process.kill()
    return status


def _worker_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= count <= 64:
        raise argparse.ArgumentTypeError(f"must be 1..64, not {count}")
    return count


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server with ``argv`` (default: the command line) and return its exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error argparse has already reported
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    binds: list[tuple[str, int]] = []  # UDP
    listen: list[str] = []  # the other transports, as URIs
    for text in args.bind:
        try:
            scheme, host, port = parse_server_bind(text)
        except ValueError as e:
            error_line(PROG, f"bad --bind {text!r}: {e}")
            return EXIT_USAGE
        if scheme == "coap":
            binds.append((host, port))
        else:
            listen.append(_uri(scheme, host, port))
    try:
        server_ssl = _server_ssl(args, listen)
        dtls = _dtls.credentials(args, server=True) if any(u.startswith("coaps://") for u in listen) else None
        if listen and args.workers > 1:
            raise UsageError(
                f"--workers shares UDP ports only, and --bind {listen[0]} is not UDP: serve TCP and "
                "WebSockets from one process (drop --workers)"
            )
        if args.credentials is not None and args.workers > 1:
            raise UsageError("--credentials cannot be shared by --workers: an OSCORE context's sequence "
                             "numbers belong to one process (drop --workers)")
        credentials = None if args.credentials is None else load_credentials(args.credentials)
    except UsageError as e:
        error_line(PROG, str(e))
        return EXIT_USAGE
    setup_logging(args.verbose)
    if not binds and not listen:
        binds, explicit = [DEFAULT_BIND], False
    else:
        explicit = True
    try:
        if args.workers > 1:
            return trio.run(_supervise, binds, explicit, args.workers, args.verbose)
        return trio.run(functools.partial(
            _serve, binds, explicit, worker=args.worker, verbose=args.verbose, listen=listen,
            server_ssl=server_ssl, credentials=credentials, dtls=dtls,
        ))
    except BaseException as e:
        if is_keyboard_interrupt(e):  # Ctrl-C before the signal handler was installed
            return EXIT_INTERRUPTED
        raise
    finally:
        if credentials is not None:
            credentials.close()  # records the OSCORE sequence numbers and replay windows
        if argv is None:
            # The server has stopped; one more Ctrl-C during the interpreter's own shutdown (joining
            # threads) would print "Exception ignored ... KeyboardInterrupt". Let it end the process
            # quietly instead, the default way.
            signal.signal(signal.SIGINT, signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())
