"""Observe fan-out: one observable resource, N observers, K state changes; coapio against aiocoap.

Run as ``python benchmarks/observe_fanout.py [--observers 1000,10000] [--con]`` (or via ``nox -s bench``).

For each library and each N, three processes take part:

* the **server** (this file with ``_serve``), pinned to CPU 0: one observable resource ``/obs`` whose
  representation is the round number, a control resource ``/ctl`` (POST ``go K``) and ``/stats``;
* the **clients** (this file with ``_clients``), pinned to CPU 1: ``--sockets`` (100) client contexts of
  the same library, each with its own UDP socket (receive buffer raised to 4 MiB where the library lets
  us reach it), sharing the N registrations between them: one token per observer;
* this **driver**, which starts both, collects their JSON and prints the table.

Once all N observers are registered, the clients POST ``go K``; the server then changes the state K
times. Each round waits until the server has rendered the notification for every observer (both
libraries render ``render_get`` once per observer per notification) before the next change, so that
neither library may coalesce rounds: K·N notifications leave the server. Notifications are NON (aiocoap
is told so with ``transport_tuning=Unreliable``); with ``--con`` they are CON and every one is
acknowledged, which is the closed loop (and coapio holds an observer's next notification until the ACK).

Columns: ``server notif/s`` = notifications rendered and sent by the server / time from the first change
to the last render; ``server CPU %`` over that time; ``received`` = notifications the client
applications were handed (of K·N; counted in a callback for aiocoap, in each observation's iterator with
a buffer of K+2 for coapio, so neither drops any by design); ``delivered/s`` = received / time from the
first change to the last notification received; ``reg s`` = time to register all N observers (one
registration in flight per client socket); ``kernel drops`` = UDP datagrams the kernel dropped on a full
receive buffer during the run (``RcvbufErrors`` in /proc/net/snmp, machine-wide).

With ``--con`` and N = 1,000 the coapio server sends each round's CONs in one synchronous burst and the
ACKs coming back overflow its socket's default receive buffer (212 KB here): see ``kernel drops``; the
lost ACKs cost retransmissions (ACK_TIMEOUT, 2-3 s). That is measured as the library behaves.

The server keeps up to N observers (coapio's defaults allow 1,000 per resource and 10,000 in all: its
tuning is raised here to N).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _servers  # the benchmarks directory is not a package

HOST = _servers.HOST
LIBRARIES = ("coapio", "aiocoap")
RCVBUF = 4 * 1024 * 1024
#: After the server's last round, the clients give up waiting once nothing arrived for this long. A busy
#: client process (10,000 observations) hands notifications over in bursts up to a second apart.
QUIET = 3.0


# --- a library-neutral CoAP control request (raw UDP) -------------------------------------------------


def control(port: int, method: int, path: str, payload: bytes = b"", *, timeout: float = 5.0) -> bytes:
    """One CON request to ``/path``; returns the response payload (piggy-backed or separate).

    A ping from the server (RFC 9175 §2.4: it checks that we receive at our address before it answers
    with much more than we sent) gets a Reset, as from any CoAP endpoint.
    """
    token = os.urandom(4)
    deadline = time.monotonic() + timeout
    echo = b""  # an Echo value the server asked for (4.01 + Echo, RFC 9175 §2.4), sent back once
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        while time.monotonic() < deadline:
            mid = int.from_bytes(os.urandom(2), "big")
            encoded = path.encode()
            option = bytes([(11 << 4) | len(encoded)]) + encoded  # Uri-Path, short segments only
            if echo:  # Echo is option 252: delta 241 from Uri-Path (11) = 13 + 228
                option += bytes([(13 << 4) | len(echo), 241 - 13]) + echo
            datagram = struct.pack("!BBH", 0x44, method, mid) + token + option
            if payload:
                datagram += b"\xff" + payload
            s.sendto(datagram, (HOST, port))
            with contextlib.suppress(TimeoutError):
                while True:
                    data = s.recv(65536)
                    kind = data[0] >> 4  # version and type: 0x4 CON, 0x5 NON, 0x6 ACK, 0x7 RST
                    if len(data) == 4 and kind == 0x4 and data[1] == 0:  # a ping (RFC 9175 §2.4)
                        s.sendto(bytes((0x70, 0, data[2], data[3])), (HOST, port))
                        continue
                    if kind == 0x4 and data[4:8] == token:  # a separate CON response: acknowledge it
                        s.sendto(bytes((0x60, 0, data[2], data[3])), (HOST, port))
                    if data[4:8] == token and (kind != 0x6 or data[2:4] == datagram[2:4]):
                        if data[1] == 0x81 and not echo:  # 4.01: the server checks our address
                            echo = _echo_of(data)
                            if echo:
                                break
                        if data[1] >> 5 != 2:
                            raise RuntimeError(f"/{path}: response code {data[1] >> 5}.{data[1] & 31:02d}")
                        marker = data.find(b"\xff", 8)
                        return data[marker + 1:] if marker >= 0 else b""
    raise TimeoutError(f"no answer to /{path} on port {port}")


def _extended(nibble: int, data: bytes, pos: int) -> tuple[int, int]:
    """An option delta or length nibble with its extension bytes (RFC 7252 §3.1); value, next position."""
    if nibble == 13:
        return data[pos] + 13, pos + 1
    if nibble == 14:
        return (data[pos] << 8 | data[pos + 1]) + 269, pos + 2
    return nibble, pos


def _echo_of(data: bytes) -> bytes:
    """The Echo option's value in a response datagram with a 4-byte token, or b"" (minimal parser)."""
    pos, number = 8, 0
    while pos < len(data) and data[pos] != 0xFF:
        byte = data[pos]
        delta, pos = _extended(byte >> 4, data, pos + 1)
        length, pos = _extended(byte & 15, data, pos)
        number += delta
        if number == 252:
            return data[pos:pos + length]
        pos += length
    return b""


GET, POST = 1, 2


# --- servers (child process, pinned) ------------------------------------------------------------------


class _Stats:
    """What the server measures about the notification rounds."""

    def __init__(self) -> None:
        self.renders = 0
        self.target = 0
        self.first: float | None = None
        self.last_render: float | None = None
        self.done: float | None = None
        self.cpu0 = 0.0
        self.cpu1 = 0.0
        self.rounds_timed_out = 0
        self.round_event: Any = None

    def rendered(self) -> None:
        self.renders += 1
        self.last_render = time.monotonic()
        if self.renders >= self.target and self.round_event is not None:
            self.round_event.set()

    def as_json(self, observers: int) -> bytes:
        return json.dumps({
            "observers": observers, "renders": self.renders, "first": self.first,
            "last_render": self.last_render, "done": self.done, "cpu": self.cpu1 - self.cpu0,
            "rounds_timed_out": self.rounds_timed_out,
        }).encode()


def _process_cpu() -> float:
    t = os.times()
    return t.user + t.system


def serve_coapio(port: int, max_observers: int) -> None:
    import signal

    import attrs
    import trio
    import trio.lowlevel

    import coapio
    from coapio import Code, Message, ObservableResource, Resource, Site

    stats = _Stats()

    class Obs(ObservableResource):
        value = 0
        counting = False

        def render_get(self, request: Message) -> Message:
            if self.counting:
                stats.rendered()
            return Message(payload=b"%d" % self.value)

    obs = Obs()
    nursery: trio.Nursery | None = None

    async def rounds(k: int, con: bool) -> None:
        n = obs.observer_count
        stats.__init__()  # type: ignore[misc]
        obs.counting = True
        stats.cpu0 = _process_cpu()
        stats.first = time.monotonic()
        for i in range(k):
            stats.target = n * (i + 1)
            stats.round_event = trio.Event()
            obs.value = i + 1
            obs.notify(confirmable=con)
            if stats.renders < stats.target:
                with trio.move_on_after(10) as scope:
                    await stats.round_event.wait()
                stats.rounds_timed_out += scope.cancelled_caught
            await trio.lowlevel.checkpoint()
        stats.done = time.monotonic()
        stats.cpu1 = _process_cpu()
        obs.counting = False

    class Control(Resource):
        def render_post(self, request: Message) -> Message:
            _, k, mode = request.payload.decode().split()
            assert nursery is not None
            nursery.start_soon(rounds, int(k), mode == "con")
            return Message(code=Code.CHANGED)

    class Stats(Resource):
        def render_get(self, request: Message) -> Message:
            return Message(payload=stats.as_json(obs.observer_count))

    class Hello(Resource):
        def render_get(self, request: Message) -> Message:
            return Message(payload=b"ready")

    site = Site(well_known_core=False)
    site.add("", Hello())
    site.add("obs", obs)
    site.add("ctl", Control())
    site.add("stats", Stats())
    tuning = attrs.evolve(
        coapio.TransportTuning(), max_observers=max_observers, max_observers_per_resource=max_observers
    )

    async def main() -> None:
        nonlocal nursery
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with coapio.Context(bind=[(HOST, port)], site=site, tuning=tuning), \
                    trio.open_nursery() as nursery:
                async for _ in signals:
                    break
                nursery.cancel_scope.cancel()

    trio.run(main)


def serve_aiocoap(port: int, max_observers: int) -> None:

    import aiocoap
    import aiocoap.resource

    stats = _Stats()
    background: set[asyncio.Task[None]] = set()

    class Obs(aiocoap.resource.ObservableResource):  # type: ignore[misc]
        value = 0
        counting = False
        tuning: Any = aiocoap.Unreliable

        async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
            if self.counting:
                stats.rendered()
            return aiocoap.Message(payload=b"%d" % self.value, transport_tuning=self.tuning)

    obs = Obs()

    async def rounds(k: int, con: bool) -> None:
        n = len(obs._observations)
        stats.__init__()  # type: ignore[misc]
        obs.tuning = aiocoap.Reliable if con else aiocoap.Unreliable
        obs.counting = True
        stats.cpu0 = _process_cpu()
        stats.first = time.monotonic()
        for i in range(k):
            stats.target = n * (i + 1)
            stats.round_event = asyncio.Event()
            obs.value = i + 1
            obs.updated_state()
            if stats.renders < stats.target:
                try:
                    await asyncio.wait_for(stats.round_event.wait(), 10)
                except TimeoutError:
                    stats.rounds_timed_out += 1
            await asyncio.sleep(0)
        stats.done = time.monotonic()
        stats.cpu1 = _process_cpu()
        obs.counting = False

    class Control(aiocoap.resource.Resource):  # type: ignore[misc]
        async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
            _, k, mode = request.payload.decode().split()
            task = asyncio.get_running_loop().create_task(rounds(int(k), mode == "con"))
            background.add(task)
            task.add_done_callback(background.discard)
            return aiocoap.Message(code=aiocoap.CHANGED)

    class Stats(aiocoap.resource.Resource):  # type: ignore[misc]
        async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
            return aiocoap.Message(payload=stats.as_json(len(obs._observations)))

    class Hello(aiocoap.resource.Resource):  # type: ignore[misc]
        async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
            return aiocoap.Message(payload=b"ready")

    async def main() -> None:
        site = aiocoap.resource.Site()
        site.add_resource((), Hello())
        site.add_resource(("obs",), obs)
        site.add_resource(("ctl",), Control())
        site.add_resource(("stats",), Stats())
        await _servers.serve_aiocoap(site, port)

    asyncio.run(main())


# --- clients (child process, pinned) ------------------------------------------------------------------


class _Received:
    def __init__(self) -> None:
        self.count = 0
        self.last: float | None = None
        self.registered = 0
        self.failed = 0

    def notification(self, payload: bytes) -> None:
        if payload != b"0":  # the registration's response carries round 0
            self.count += 1
            self.last = time.monotonic()


def _enlarge(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)


def _wait_plan(args: argparse.Namespace) -> tuple[int, bytes]:
    expected = args.observers * args.rounds
    return expected, b"go %d %s" % (args.rounds, b"con" if args.con else b"non")


async def _drive(args: argparse.Namespace, got: _Received, sleep: Any, to_thread: Any) -> dict[str, Any]:
    expected, command = _wait_plan(args)
    await to_thread(lambda: control(args.port, POST, "ctl", command))
    deadline = time.monotonic() + args.timeout
    server: dict[str, Any] = {}
    last_count, quiet_since = -1, time.monotonic()
    while time.monotonic() < deadline and got.count < expected:
        await sleep(0.2)
        if got.count != last_count:
            last_count, quiet_since = got.count, time.monotonic()
        server = json.loads(await to_thread(lambda: control(args.port, GET, "stats")))
        if server.get("done") and time.monotonic() - quiet_since > QUIET:
            break  # the server has finished and nothing arrived for a while: the rest was lost
    while not server.get("done") and time.monotonic() < deadline:
        await sleep(0.2)
        server = json.loads(await to_thread(lambda: control(args.port, GET, "stats")))
    return server


def clients_coapio(args: argparse.Namespace) -> dict[str, Any]:
    import trio

    import coapio

    got = _Received()
    uri = f"coap://{HOST}:{args.port}/obs"
    tuning = coapio.TransportTuning()  # NSTART 1: one registration in flight per socket
    result: dict[str, Any] = {}

    async def observer(ctx: coapio.Context, all_registered: trio.Event) -> None:
        try:
            async with ctx.observe(uri, buffer=args.rounds + 2) as obs:
                got.registered += 1
                if got.registered == args.observers:
                    all_registered.set()
                async for notification in obs:
                    got.notification(notification.payload)
        except coapio.error.CoapError:
            got.failed += 1

    layer_stats: list[Any] = []

    async def one_socket(share: int, all_registered: trio.Event, stop: trio.Event) -> None:
        async with coapio.Context(tuning=tuning) as ctx, trio.open_nursery() as nursery:
            _enlarge(ctx.transports[0].sock)
            layer_stats.append(ctx.transports[0].layer.stats)
            for _ in range(share):
                nursery.start_soon(observer, ctx, all_registered)
            await stop.wait()
            nursery.cancel_scope.cancel()

    async def main() -> None:
        all_registered, stop = trio.Event(), trio.Event()
        async with trio.open_nursery() as nursery:
            t0 = time.monotonic()
            for share in _shares(args.observers, args.sockets):
                nursery.start_soon(one_socket, share, all_registered, stop)
            with trio.fail_after(args.timeout):
                await all_registered.wait()
            result["register_s"] = time.monotonic() - t0
            result["server"] = await _drive(args, got, trio.sleep, trio.to_thread.run_sync)
            stop.set()

    trio.run(main)
    result["datagrams"] = {key: sum(getattr(st, key) for st in layer_stats)
                           for key in ("received", "duplicates", "malformed", "resets_sent")}
    return result | {"received": got.count, "last": got.last, "failed": got.failed}


def clients_aiocoap(args: argparse.Namespace) -> dict[str, Any]:
    import aiocoap

    warnings.simplefilter("ignore", DeprecationWarning)  # register_callback: the lossless interface
    got = _Received()
    uri = f"coap://{HOST}:{args.port}/obs"
    result: dict[str, Any] = {}

    async def observer(ctx: aiocoap.Context, gate: asyncio.Semaphore, keep: list[Any]) -> None:
        async with gate:
            try:
                request = ctx.request(aiocoap.Message(code=aiocoap.GET, uri=uri, observe=0))
                await request.response
            except aiocoap.error.Error:
                got.failed += 1
                return
        request.observation.register_callback(lambda m: got.notification(m.payload))
        keep.append(request)
        got.registered += 1

    async def main() -> None:
        contexts = [await aiocoap.Context.create_client_context(transports=["udp6"])
                    for _ in range(args.sockets)]
        keep: list[Any] = []
        try:
            for ctx in contexts:
                with contextlib.suppress(Exception):
                    ri = ctx.request_interfaces[0]
                    _enlarge(ri.token_interface.message_interface.transport.get_extra_info("socket"))
            t0 = time.monotonic()
            gate = asyncio.Semaphore(args.sockets)  # as many in flight as coapio's clients (NSTART 1 each)
            shares = _shares(args.observers, args.sockets)
            await asyncio.wait_for(asyncio.gather(*(
                observer(ctx, gate, keep) for ctx, share in zip(contexts, shares, strict=True)
                for _ in range(share)
            )), args.timeout)
            result["register_s"] = time.monotonic() - t0
            result["server"] = await _drive(args, got, asyncio.sleep, asyncio.to_thread)
        finally:
            for request in keep:
                with contextlib.suppress(Exception):
                    request.observation.cancel()
            for ctx in contexts:
                await ctx.shutdown()

    asyncio.run(main())
    return result | {"received": got.count, "last": got.last, "failed": got.failed}


def udp_receive_buffer_errors() -> int | None:
    """The kernel's count of datagrams dropped because a socket's receive buffer was full."""
    try:
        with open("/proc/net/snmp") as f:
            lines = [line.split() for line in f if line.startswith("Udp:")]
        return int(lines[1][lines[0].index("RcvbufErrors")])
    except (OSError, ValueError, IndexError):
        return None


def _shares(total: int, parts: int) -> list[int]:
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


# --- the driver -----------------------------------------------------------------------------------------


def _child(role: str, library: str, extra: Sequence[str]) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), role, library, *extra]


def run_one(library: str, observers: int, args: argparse.Namespace, pin: bool) -> dict[str, Any]:
    port = _servers.free_udp_port()
    rounds = args.rounds or max(5, args.notifications // observers)
    row: dict[str, Any] = {"library": library, "observers": observers, "rounds": rounds}
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally clause below
    server = subprocess.Popen(
        _servers.pinned(_child("_serve", library, ["--port", str(port), "--max", str(observers)]),
                        0 if pin else None),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
    )
    try:
        _servers.wait_ready(server, port)
        cmd = _child("_clients", library, [
            "--port", str(port), "--observers", str(observers), "--rounds", str(rounds),
            "--sockets", str(args.sockets), "--timeout", str(args.timeout), *(["--con"] if args.con else []),
        ])
        drops0 = udp_receive_buffer_errors()
        done = subprocess.run(_servers.pinned(cmd, 1 if pin else None), capture_output=True, text=True,
                              timeout=args.timeout * 3 + 60)
        if done.returncode != 0:
            row["error"] = _servers.error_line(done.stderr)
            return row
        out = json.loads(done.stdout.strip().splitlines()[-1])
        row["client_datagrams"] = out.get("datagrams")
        drops1 = udp_receive_buffer_errors()
        row["kernel_drops"] = None if drops0 is None or drops1 is None else drops1 - drops0
    except (subprocess.TimeoutExpired, RuntimeError, TimeoutError, json.JSONDecodeError) as e:
        row["error"] = f"{type(e).__name__}: {e}"
        return row
    finally:
        _servers.stop(server)
        if server.returncode not in (0, -15) and "error" not in row:
            log.seek(0)
            row["error"] = f"server exited {server.returncode}: {log.read()[-300:].decode(errors='replace')}"
        log.close()
    srv = out["server"]
    expected = observers * rounds
    span = (srv["last_render"] or srv["first"]) - srv["first"] if srv.get("first") else 0.0
    row.update(
        register_s=out["register_s"], expected=expected, renders=srv["renders"],
        server_rate=srv["renders"] / span if span > 0 else None,
        # The CPU time is read at the start and the end of the rounds, so divide by that span.
        server_cpu_pct=(100 * srv["cpu"] / (srv["done"] - srv["first"])
                        if srv.get("done") and srv.get("first") and srv["done"] > srv["first"] else None),
        received=out["received"], failed=out["failed"], rounds_timed_out=srv["rounds_timed_out"],
    )
    if out["last"] and out["received"]:
        row["delivered_rate"] = out["received"] / (out["last"] - srv["first"])
    return row


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    kind = "CON" if args.con else "NON"
    print(f"\nObserve fan-out ({kind} notifications), server on CPU 0, clients on CPU 1, "
          f"{args.sockets} client sockets")
    header = (f"{'library':<8} {'N':>6} {'K':>3} {'reg s':>6} {'server notif/s':>15} {'server CPU %':>12} "
              f"{'received':>16} {'delivered/s':>12} {'kernel drops':>12}")
    print(header)
    print("-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['library']:<8} {r['observers']:>6} {r['rounds']:>3}  failed: {r['error']}")
            continue
        received = f"{r['received']}/{r['expected']}"
        print(f"{r['library']:<8} {r['observers']:>6} {r['rounds']:>3} {r['register_s']:>6.2f} "
              f"{_fmt(r.get('server_rate'), ',.0f'):>15} {_fmt(r.get('server_cpu_pct'), '.0f'):>12} "
              f"{received:>16} {_fmt(r.get('delivered_rate'), ',.0f'):>12} "
              f"{_fmt(r.get('kernel_drops'), 'd'):>12}")
    print("\nratios coapio/aiocoap (higher is better for coapio):")
    for n in sorted({r["observers"] for r in rows}):
        pair = {r["library"]: r for r in rows if r["observers"] == n and "error" not in r}
        if set(pair) >= set(LIBRARIES):
            c, a = pair["coapio"], pair["aiocoap"]
            parts = []
            for key, label in (("server_rate", "server notif/s"), ("delivered_rate", "delivered/s")):
                if c.get(key) and a.get(key):
                    parts.append(f"{label} x{c[key] / a[key]:.1f}")
            print(f"  N={n}: " + ", ".join(parts))
    notes = [f"{r['library']} N={r['observers']}: {r['rounds_timed_out']} round(s) timed out (10 s) "
             "waiting for renders" for r in rows if r.get("rounds_timed_out")]
    notes += [f"{r['library']} N={r['observers']}: {r['failed']} registration(s) failed"
              for r in rows if r.get("failed")]
    for note in notes:
        print("note:", note)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("_serve", "_clients"):
        return _child_main(argv)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--observers", default="1000,10000", help="comma-separated N values")
    parser.add_argument("--libraries", default=",".join(LIBRARIES))
    parser.add_argument("--rounds", type=int, default=0, help="K (default: --notifications / N, at least 5)")
    parser.add_argument("--notifications", type=int, default=50_000, help="K·N to aim for (default 50,000)")
    parser.add_argument("--sockets", type=int, default=100, help="client sockets (contexts) per run")
    parser.add_argument("--con", action="store_true", help="CON notifications (each acknowledged)")
    parser.add_argument("--timeout", type=float, default=30.0, help="bound on registration and on delivery")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    rows = []
    for n in (int(x) for x in args.observers.split(",")):
        for library in args.libraries.split(","):
            rows.append(run_one(library, n, args, pin))
    if args.json:
        print(json.dumps(rows))
    else:
        print_table(rows, args)
    _servers.close_logs()
    return 1 if any("error" in r for r in rows) else 0


def _child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("role")
    parser.add_argument("library", choices=LIBRARIES)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max", type=int, default=10_000)
    parser.add_argument("--observers", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--sockets", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--con", action="store_true")
    args = parser.parse_args(argv)
    if args.role == "_serve":
        (serve_coapio if args.library == "coapio" else serve_aiocoap)(args.port, args.max)
        return 0
    result = (clients_coapio if args.library == "coapio" else clients_aiocoap)(args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
