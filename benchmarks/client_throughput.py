"""Client throughput: 64 concurrent GETs against libcoap's ``coap-server-notls``, coapio against aiocoap.

Run as ``python benchmarks/client_throughput.py [--duration 5] [--repeat 3]`` (``suite.py`` runs it with
everything else).

The server is libcoap's C server (``coap-server-notls -A 127.0.0.1 -p PORT``; ``GET /`` answers its
136-byte index text), fast enough that the Python client is what limits the rate. It runs pinned to
CPU 0, the client process to CPU 1 (``taskset``, when present and there are two CPUs); a fresh server
for every run.

The client is one context of the library (one UDP socket) running a closed loop: ``--concurrency`` (64)
tasks, each sending ``GET /`` and, once the response is in, the next one. ``--warmup`` s are not
counted; then responses (2.05) received during the next ``--duration`` s are counted: req/s.

* **coapio**: ``coapio.Context(tuning=coapio.TransportTuning(nstart=64))``, ``await ctx.get(uri)``. NSTART
  (RFC 7252 §4.7) limits outstanding requests to one server, 1 by default; raised to 64 for the run.
* **aiocoap** (0.4.x): ``Context.create_client_context()``, ``await ctx.request(Message(code=GET, uri=...,
  transport_tuning=T)).response`` with ``T`` a ``TransportTuning`` subclass whose ``NSTART`` is 64, as
  far as its API goes: aiocoap declares ``NSTART`` but its message layer does not read it; it keeps one
  CON exchange per server in flight and queues the rest (its ``MessageManager`` backlog). So with CON its
  64 requests go out one at a time. NON requests bypass that queue, so the ``NON`` shape is aiocoap's
  client with 64 requests really in flight (``T`` derived from ``aiocoap.Unreliable``).

Both loads are measured for both libraries (``--loads``). The issue's target (coapio's client at least
8 x aiocoap's) is judged by ``suite.py`` against aiocoap's *faster* shape, so that aiocoap's fixed NSTART
does not inflate the ratio.

Message IDs: coapio never reuses a message ID towards a server within EXCHANGE_LIFETIME (247 s), so one
socket has 65,536 requests to a server per 247 s. A run stops sending at ``--max-requests`` (60,000,
warm-up included), and the window then ends when the last response comes in: at coapio's rate that is
before ``--duration``; the JSON has each run's real window (``seconds``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _servers  # the benchmarks directory is not a package

HOST = _servers.HOST
LIBRARIES = ("coapio", "aiocoap")
LOADS = ("CON", "NON")
REQUEST_TIMEOUT = 10.0  # a request unanswered this long is counted as an error (and its task goes on)


class _Loop:
    """The closed loop's shared counters and clock."""

    def __init__(self, args: argparse.Namespace):
        self.t0 = time.monotonic()
        self.window_start = self.t0 + args.warmup
        self.window_end = self.window_start + args.duration
        self.max_requests = args.max_requests
        self.issued = 0
        self.ok = 0
        self.errors = 0
        self.last = self.window_start
        self.cpu0: float | None = None

    def may_send(self) -> bool:
        now = time.monotonic()
        if self.cpu0 is None and now >= self.window_start:
            self.cpu0 = _own_cpu()
        if now >= self.window_end or self.issued >= self.max_requests:
            return False
        self.issued += 1
        return True

    def done(self, ok: bool) -> None:
        now = time.monotonic()
        if self.window_start <= now <= self.window_end:
            if ok:
                self.ok += 1
            else:
                self.errors += 1
            self.last = now

    def result(self) -> dict[str, Any]:
        cpu1 = _own_cpu()
        seconds = self.last - self.window_start
        return {
            "ok": self.ok, "errors": self.errors, "issued": self.issued, "seconds": seconds,
            "rps": self.ok / seconds if seconds > 0 else 0.0,
            "client_cpu_pct": 100 * (cpu1 - self.cpu0) / seconds if self.cpu0 is not None and seconds > 0
            else None,
        }


def _own_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def client_coapio(args: argparse.Namespace) -> dict[str, Any]:
    import anyio

    import coapio

    uri = f"coap://{HOST}:{args.port}/"
    con = args.load == "CON"
    tuning = coapio.TransportTuning(nstart=args.concurrency)

    async def main() -> dict[str, Any]:
        async with coapio.Context(tuning=tuning) as ctx:
            await ctx.get(uri)  # resolve, bind, first exchange outside the loop
            loop = _Loop(args)

            async def worker() -> None:
                while loop.may_send():
                    try:
                        with anyio.fail_after(REQUEST_TIMEOUT):
                            response = await ctx.get(uri, con=con)
                        loop.done(response.code == coapio.Code.CONTENT)
                    except (coapio.error.CoapError, TimeoutError):
                        loop.done(False)

            async with anyio.create_task_group() as tg:
                for _ in range(args.concurrency):
                    tg.start_soon(worker)
            return loop.result()

    return anyio.run(main, backend="trio")


def client_aiocoap(args: argparse.Namespace) -> dict[str, Any]:
    import aiocoap

    logging.getLogger("coap").setLevel(logging.ERROR)
    uri = f"coap://{HOST}:{args.port}/"
    base = aiocoap.Unreliable if args.load == "NON" else aiocoap.TransportTuning

    class Tuning(base):  # type: ignore[misc, valid-type]
        NSTART = args.concurrency  # declared by aiocoap; its message layer does not consult it (0.4.x)

    tuning = Tuning()

    async def main() -> dict[str, Any]:
        ctx = await aiocoap.Context.create_client_context(transports=["udp6"])
        try:
            await ctx.request(aiocoap.Message(code=aiocoap.GET, uri=uri)).response
            loop = _Loop(args)

            async def worker() -> None:
                while loop.may_send():
                    try:
                        request = ctx.request(aiocoap.Message(code=aiocoap.GET, uri=uri,
                                                              transport_tuning=tuning))
                        response = await asyncio.wait_for(request.response, REQUEST_TIMEOUT)
                        loop.done(response.code == aiocoap.CONTENT)
                    except (aiocoap.error.Error, TimeoutError):
                        loop.done(False)

            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
            return loop.result()
        finally:
            await ctx.shutdown()

    return asyncio.run(main())


# --- the driver -----------------------------------------------------------------------------------------


def libcoap_server() -> str | None:
    return shutil.which("coap-server-notls") or shutil.which("coap-server")


def run_one(library: str, load: str, args: argparse.Namespace, pin: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"library": library, "load": load}
    exe = libcoap_server()
    if exe is None:
        row["error"] = "libcoap's coap-server-notls is not installed (apt install libcoap3-bin)"
        return row
    port = _servers.free_udp_port()
    server = subprocess.Popen(
        _servers.pinned([exe, "-A", HOST, "-p", str(port)], 0 if pin else None),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _servers.wait_ready(server, port)
        cmd = [sys.executable, os.path.abspath(__file__), "_client", library, "--port", str(port),
               "--load", load, "--concurrency", str(args.concurrency), "--duration", str(args.duration),
               "--warmup", str(args.warmup), "--max-requests", str(args.max_requests)]
        cpu0 = _servers.cpu_seconds(server.pid)
        done = subprocess.run(_servers.pinned(cmd, 1 if pin else None), capture_output=True, text=True,
                              timeout=args.warmup + args.duration + REQUEST_TIMEOUT + 60)
        cpu1 = _servers.cpu_seconds(server.pid)
        if done.returncode != 0:
            row["error"] = _servers.error_line(done.stderr, f"client exited {done.returncode}")
            return row
        row.update(json.loads(done.stdout.strip().splitlines()[-1]))
        if cpu0 is not None and cpu1 is not None:
            row["server_cpu_s"] = cpu1 - cpu0
    except (OSError, RuntimeError, TimeoutError, subprocess.SubprocessError, json.JSONDecodeError) as e:
        row["error"] = f"{type(e).__name__}: {e}"
    finally:
        _servers.stop(server)
    return row


def median_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = sorted((r for r in runs if "error" not in r), key=lambda r: r["rps"])
    if not good:
        return runs[-1]
    chosen = dict(good[(len(good) - 1) // 2])
    chosen["runs"] = len(good)
    chosen["rps_all"] = [round(r["rps"], 1) for r in good]
    return chosen


def ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """coapio's CON figure against each aiocoap shape and against aiocoap's best."""
    by = {(r["library"], r["load"]): r for r in rows if "error" not in r and r.get("rps")}
    mine = by.get(("coapio", "CON"))
    out: dict[str, float] = {}
    if mine is None:
        return out
    theirs = {load: by[("aiocoap", load)]["rps"] for load in LOADS if ("aiocoap", load) in by}
    for load, rps in theirs.items():
        out[f"coapio CON / aiocoap {load}"] = mine["rps"] / rps
    if theirs:
        out["coapio CON / aiocoap best"] = mine["rps"] / max(theirs.values())
    if ("coapio", "NON") in by and "NON" in theirs:
        out["coapio NON / aiocoap NON"] = by[("coapio", "NON")]["rps"] / theirs["NON"]
    return out


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\nClient throughput: {args.concurrency} concurrent GET / against coap-server-notls, one client "
          f"context, {args.duration:g} s after {args.warmup:g} s warm-up (at most {args.max_requests:,} "
          f"requests), median of {args.repeat}; server on CPU 0, client on CPU 1")
    header = (f"{'library':<8} {'load':<4} {'req/s':>8} {'errors':>6} {'window s':>8} {'client CPU %':>12}"
              "  runs")
    print(header)
    print("-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['library']:<8} {r['load']:<4} failed: {r['error']}")
            continue
        cpu = r.get("client_cpu_pct")
        print(f"{r['library']:<8} {r['load']:<4} {r['rps']:>8,.0f} {r['errors']:>6} {r['seconds']:>8.2f} "
              f"{'-' if cpu is None else format(cpu, '.0f'):>12}  "
              + ", ".join(f"{x:,.0f}" for x in r.get("rps_all", [])))
    for label, value in ratios(rows).items():
        print(f"{label}: {value:.1f}x")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_client":
        return _child_main(argv[1:])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _common_options(parser)
    parser.add_argument("--libraries", default=",".join(LIBRARIES))
    parser.add_argument("--loads", default=",".join(LOADS), help="CON, NON or CON,NON (both)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per library and load (median; 3)")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    pin = not args.no_pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    shapes = [(lib, load) for lib in args.libraries.split(",") for load in args.loads.upper().split(",")]
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {shape: [] for shape in shapes}
    for _ in range(args.repeat):  # interleaved, so that a busy spell hits every shape alike
        for shape in shapes:
            if runs[shape] and "error" in runs[shape][-1]:
                continue
            runs[shape].append(run_one(*shape, args, pin))
    rows = [median_row(runs[shape]) for shape in shapes]
    _servers.close_logs()
    if args.json:
        print(json.dumps({"config": {"concurrency": args.concurrency, "duration_s": args.duration,
                                     "warmup_s": args.warmup, "repeat": args.repeat, "pinned": pin,
                                     "max_requests": args.max_requests},
                          "results": rows, "ratios": ratios(rows)}))
    else:
        print_table(rows, args)
    return 1 if any("error" in r for r in rows) else 0


def _common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight (64)")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds (5)")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds not measured (0.5)")
    parser.add_argument("--max-requests", type=int, default=60_000,
                        help="requests per run, warm-up included (60,000: below 65,536 message IDs)")


def _child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("library", choices=LIBRARIES)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--load", choices=LOADS, default="CON")
    _common_options(parser)
    args = parser.parse_args(argv)
    result = (client_coapio if args.library == "coapio" else client_aiocoap)(args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
