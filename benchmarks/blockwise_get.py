"""Block-wise GET: the time to fetch a 1 MiB representation through Block2, coapio against aiocoap.

Run as ``python benchmarks/blockwise_get.py [--size 1048576] [--repeat 3]`` (or via ``nox -s bench``).

Each server runs in its own process pinned to CPU 0 (this file with ``_serve``) and answers ``GET /big``
with the same ``--size`` bytes (a plain ``def render_get`` for coapio, the inline fast path; aiocoap's
``async def``), 1024-byte blocks on both sides. The client runs in a second process pinned to CPU 1
(``_client``): one warm-up GET, then ``--repeat`` timed GETs, each checked against the SHA-256 of the
body. Pairs: coapio client ← coapio server and aiocoap client ← aiocoap server; ``--cross`` adds the two
mixed pairs, which tell the client's share of the time from the server's.

Columns: median / min / max seconds per GET, MiB/s at the median, and the server's CPU seconds per GET
(utime + stime from /proc over the timed GETs).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import signal
import statistics
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


def body_of(size: int) -> bytes:
    """The representation both servers serve (pseudo-random, reproducible)."""
    return random.Random(7252).randbytes(size)


# --- servers (child process) --------------------------------------------------------------------------


def serve_coapio(port: int, size: int) -> None:
    import trio

    import coapio
    from coapio import Message, Resource, Site

    body = body_of(size)

    class Big(Resource):
        def render_get(self, request: Message) -> Message:
            return Message(payload=body)

    class Hello(Resource):
        def render_get(self, request: Message) -> Message:
            return Message(payload=b"ready")

    site = Site(well_known_core=False)
    site.add("", Hello())
    site.add("big", Big())

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with coapio.Context(bind=[(HOST, port)], site=site):
                async for _ in signals:
                    break

    trio.run(main)


def serve_aiocoap(port: int, size: int) -> None:
    import aiocoap
    import aiocoap.resource

    body = body_of(size)

    class Big(aiocoap.resource.Resource):  # type: ignore[misc]
        async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
            return aiocoap.Message(payload=body)

    class Hello(aiocoap.resource.Resource):  # type: ignore[misc]
        async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
            return aiocoap.Message(payload=b"ready")

    async def main() -> None:
        site = aiocoap.resource.Site()
        site.add_resource((), Hello())
        site.add_resource(("big",), Big())
        await _servers.serve_aiocoap(site, port)

    asyncio.run(main())


# --- clients (child process) --------------------------------------------------------------------------


def client_coapio(uri: str, repeat: int, server_pid: int) -> dict[str, Any]:
    import trio

    import coapio

    async def main() -> dict[str, Any]:
        async with coapio.Context() as ctx:
            return await _timed(lambda: _coapio_get(ctx, uri), repeat, server_pid, trio.to_thread.run_sync)

    async def _coapio_get(ctx: coapio.Context, uri: str) -> bytes:
        with trio.fail_after(120):
            response = await ctx.get(uri)
        if response.code != coapio.Code.CONTENT:
            raise RuntimeError(f"GET {uri}: {response.code.dotted}")
        return response.payload

    return trio.run(main)


def client_aiocoap(uri: str, repeat: int, server_pid: int) -> dict[str, Any]:
    import aiocoap

    async def main() -> dict[str, Any]:
        ctx = await aiocoap.Context.create_client_context(transports=["udp6"])
        try:
            return await _timed(lambda: _aiocoap_get(ctx, uri), repeat, server_pid, asyncio.to_thread)
        finally:
            await ctx.shutdown()

    async def _aiocoap_get(ctx: aiocoap.Context, uri: str) -> bytes:
        request = ctx.request(aiocoap.Message(code=aiocoap.GET, uri=uri))
        response = await asyncio.wait_for(request.response, 120)
        if response.code != aiocoap.CONTENT:
            raise RuntimeError(f"GET {uri}: {response.code}")
        return bytes(response.payload)

    return asyncio.run(main())


async def _timed(get: Any, repeat: int, server_pid: int, to_thread: Any) -> dict[str, Any]:
    await get()  # warm-up (imports, caches, the server's first render)
    times, digests = [], set()
    cpu0 = _servers.cpu_seconds(server_pid)
    for _ in range(repeat):
        t0 = time.perf_counter()
        payload = await get()
        times.append(time.perf_counter() - t0)
        digests.add(hashlib.sha256(payload).hexdigest())
    cpu1 = _servers.cpu_seconds(server_pid)
    server_cpu = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / repeat
    return {"times": times, "digests": sorted(digests), "server_cpu_per_get": server_cpu}


# --- the driver -----------------------------------------------------------------------------------------


def _child(role: str, library: str, extra: Sequence[str]) -> list[str]:
    return [sys.executable, os.path.abspath(__file__), role, library, *extra]


def run_pair(client: str, server: str, args: argparse.Namespace, pin: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"client": client, "server": server}
    port = _servers.free_udp_port()
    proc = subprocess.Popen(
        _servers.pinned(_child("_serve", server, ["--port", str(port), "--size", str(args.size)]),
                        0 if pin else None),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _servers.wait_ready(proc, port)
        cmd = _child("_client", client, [
            "--port", str(port), "--repeat", str(args.repeat), "--server-pid", str(proc.pid),
        ])
        done = subprocess.run(_servers.pinned(cmd, 1 if pin else None), capture_output=True, text=True,
                              timeout=args.repeat * 150 + 150)
        if done.returncode != 0:
            row["error"] = _servers.error_line(done.stderr, f"client exited {done.returncode}")
            return row
        out = json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, RuntimeError, TimeoutError, json.JSONDecodeError) as e:
        row["error"] = f"{type(e).__name__}: {e}"
        return row
    finally:
        _servers.stop(proc)
    expected = hashlib.sha256(body_of(args.size)).hexdigest()
    if out["digests"] != [expected]:
        row["error"] = f"wrong body: sha256 {out['digests']} != {expected}"
        return row
    times = out["times"]
    row.update(median=statistics.median(times), min=min(times), max=max(times), times=times,
               server_cpu_per_get=out["server_cpu_per_get"])
    return row


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    mib = args.size / (1 << 20)
    print(f"\nBlock-wise GET of {args.size:,} bytes (1024-byte blocks, {args.size // 1024} exchanges), "
          f"median of {args.repeat}; server on CPU 0, client on CPU 1")
    header = (f"{'client':<8} {'server':<8} {'median s':>9} {'min s':>7} {'max s':>7} {'MiB/s':>7} "
              f"{'server CPU s/GET':>17}")
    print(header)
    print("-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['client']:<8} {r['server']:<8} failed: {r['error']}")
            continue
        cpu = r["server_cpu_per_get"]
        print(f"{r['client']:<8} {r['server']:<8} {r['median']:>9.3f} {r['min']:>7.3f} {r['max']:>7.3f} "
              f"{mib / r['median']:>7.2f} {'-' if cpu is None else format(cpu, '.3f'):>17}")
    by_pair = {(r["client"], r["server"]): r for r in rows if "error" not in r}
    c, a = by_pair.get(("coapio", "coapio")), by_pair.get(("aiocoap", "aiocoap"))
    if c and a:
        ratio = a["median"] / c["median"]
        print(f"\nratio aiocoap/coapio of the median time (above 1: coapio is faster): {ratio:.2f}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("_serve", "_client"):
        return _child_main(argv)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=1 << 20, help="bytes (default 1 MiB)")
    parser.add_argument("--repeat", type=int, default=3, help="timed GETs per pair (median reported)")
    parser.add_argument("--cross", action="store_true", help="also coapio↔aiocoap mixed pairs")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    pairs = [("coapio", "coapio"), ("aiocoap", "aiocoap")]
    if args.cross:
        pairs += [("coapio", "aiocoap"), ("aiocoap", "coapio")]
    rows = [run_pair(client, server, args, pin) for client, server in pairs]
    if args.json:
        print(json.dumps(rows))
    else:
        print_table(rows, args)
    return 1 if any("error" in r for r in rows) else 0


def _child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("role")
    parser.add_argument("library", choices=LIBRARIES)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, default=1 << 20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--server-pid", type=int, default=0)
    args = parser.parse_args(argv)
    if args.role == "_serve":
        (serve_coapio if args.library == "coapio" else serve_aiocoap)(args.port, args.size)
        return 0
    uri = f"coap://{HOST}:{args.port}/big"
    client = client_coapio if args.library == "coapio" else client_aiocoap
    result = client(uri, args.repeat, args.server_pid)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
