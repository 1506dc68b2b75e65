"""CoAP over TCP (RFC 8323): server requests/s and latency against coapio and libcoap, with coapio's UDP
figure from the same run, and a client run; the ratios issue 11 asks for.

    python benchmarks/tcp_throughput.py                 # about 1.5 minutes
    python benchmarks/tcp_throughput.py --json          # one JSON object (what benchmarks/suite.py reads)

Server runs: a closed loop of ``--window`` GET / requests in flight over ``--connections`` TCP connections
(``tcpload.c``, built here with cc), against a server pinned to CPU 0 with the generator on CPU 1 —
``coapio`` over TCP, libcoap's ``coap-server-notls`` over TCP, and ``coapio`` over UDP under the UDP
generator (``loadgen.c``, 16 in flight over 8 ports, as in ``server_throughput.py``); median of
``--repeat`` runs of ``--duration`` seconds each. Client run: coapio's client, ``--concurrency`` GETs in
flight over one pooled TCP connection against ``coap-server-notls``, for ``--duration`` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _servers
import server_throughput

HERE = Path(__file__).resolve().parent


def build_tcpload(directory: Path) -> Path:
    exe = directory / "tcpload"
    subprocess.run([server_throughput.find_cc(), "-O2", "-o", str(exe), str(HERE / "tcpload.c")], check=True)
    return exe


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind((_servers.HOST, 0))
        return int(s.getsockname()[1])


def wait_tcp(proc: subprocess.Popen[bytes], port: int, timeout: float = 15.0) -> None:
    """Until something accepts on the port (the server is listening), or the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}):\n{_servers.server_log(port)}")
        try:
            socket.create_connection((_servers.HOST, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on TCP port {port} after {timeout} s")


def tcp_server(name: str, port: int, cpu: int | None) -> subprocess.Popen[bytes]:
    if name == "libcoap":
        return _servers.start_server("libcoap", port, cpu)
    command = [sys.executable, str(HERE / "_servers.py"), "coapio", "--port", str(port), "--tcp"]
    log = tempfile.TemporaryFile()  # noqa: SIM115  (read by server_log on failure)
    _servers._logs[port] = log
    return subprocess.Popen(_servers.pinned(command, cpu), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)


def measure_tcp(name: str, exe: Path, args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    for _ in range(args.repeat):
        port = free_tcp_port()
        proc = tcp_server(name, port, 0)
        try:
            wait_tcp(proc, port)
            cpu0, t0 = _servers.cpu_seconds(proc.pid), time.monotonic()
            cmd = [str(exe), "-c", str(args.connections), "-w", str(args.window), "-d", str(args.duration),
                   "-W", str(args.warmup), _servers.HOST, str(port)]
            out = server_throughput._run_json(_servers.pinned(cmd, 1), args.duration + args.warmup + 30)
            cpu1, t1 = _servers.cpu_seconds(proc.pid), time.monotonic()
            out["server_cpu_pct"] = None if cpu0 is None or cpu1 is None else 100 * (cpu1 - cpu0) / (t1 - t0)
            runs.append(out)
        finally:
            _servers.stop(proc)
    runs.sort(key=lambda r: r["requests_per_second"])
    chosen = dict(runs[(len(runs) - 1) // 2])
    chosen["rps_all"] = [round(r["requests_per_second"]) for r in runs]
    return chosen


def measure_udp(exe: Path, args: argparse.Namespace) -> dict[str, Any]:
    udp_args = argparse.Namespace(window=16, sockets=8, duration=args.duration, warmup=args.warmup,
                                  timeout_ms=1000)
    runs = []
    for _ in range(args.repeat):
        def generate(port: int, pids: list[int], cpu: int | None, load: str) -> dict[str, Any]:
            return server_throughput.run_loadgen(exe, port, pids, udp_args, cpu, load)
        runs.append(server_throughput.measure("coapio", "CON", generate, True))
    chosen = server_throughput.median_run(runs)
    return {"requests_per_second": chosen["rps"], "p50_ms": chosen.get("p50_us", 0) / 1000,
            "p99_ms": chosen.get("p99_us", 0) / 1000, "rps_all": chosen.get("rps_all")}


def measure_client(args: argparse.Namespace) -> dict[str, Any]:
    port = free_tcp_port()
    proc = _servers.start_server("libcoap", port, 0)
    try:
        wait_tcp(proc, port)
        code = CLIENT.format(uri=f"coap+tcp://{_servers.HOST}:{port}/", concurrency=args.concurrency,
                             duration=args.duration, warmup=args.warmup)
        out = subprocess.run(_servers.pinned([sys.executable, "-c", code], 1), capture_output=True,
                             text=True, timeout=args.duration + args.warmup + 60, check=True)
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return result
    finally:
        _servers.stop(proc)


CLIENT = """
import json, time, trio
from coapio import Context
async def main():
    latencies = []
    async with Context() as ctx:
        await ctx.get("{uri}")  # opens the connection
        measuring = False
        count = 0
        async def worker():
            nonlocal count
            while True:
                t = time.perf_counter()
                await ctx.get("{uri}")
                if measuring:
                    count += 1
                    latencies.append(time.perf_counter() - t)
        async with trio.open_nursery() as nursery:
            for _ in range({concurrency}):
                nursery.start_soon(worker)
            await trio.sleep({warmup})
            measuring = True
            t0 = time.perf_counter()
            await trio.sleep({duration})
            measuring = False
            elapsed = time.perf_counter() - t0
            nursery.cancel_scope.cancel()
    latencies.sort()
    print(json.dumps({{"requests_per_second": count / elapsed,
                      "p50_ms": 1000 * latencies[len(latencies) // 2],
                      "p99_ms": 1000 * latencies[len(latencies) * 99 // 100]}}))
trio.run(main)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tcpload = build_tcpload(Path(tmp))
        loadgen = server_throughput.build_loadgen(Path(tmp))
        results = {
            "coapio-tcp": measure_tcp("coapio", tcpload, args),
            "libcoap-tcp": measure_tcp("libcoap", tcpload, args),
            "coapio-udp": measure_udp(loadgen, args),
            "coapio-client-tcp": measure_client(args),
        }
    rps = {name: r["requests_per_second"] for name, r in results.items()}
    summary = {
        "results": results,
        "ratios": {
            "coapio_tcp_over_coapio_udp": rps["coapio-tcp"] / rps["coapio-udp"],
            "coapio_tcp_over_libcoap_tcp": rps["coapio-tcp"] / rps["libcoap-tcp"],
        },
        "setup": {"connections": args.connections, "window": args.window, "duration": args.duration,
                  "repeat": args.repeat, "client_concurrency": args.concurrency},
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"Server: GET /, {args.window} in flight over {args.connections} TCP connections (UDP: 16 over 8 "
          f"ports), median of {args.repeat} x {args.duration:g} s; server on CPU 0, generator on CPU 1")
    print(f"{'server':<18}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}  runs")
    for name, r in results.items():
        p50 = r.get("p50_ms")
        p99 = r.get("p99_ms")
        print(f"{name:<18}{r['requests_per_second']:>10,.0f}{p50 or 0:>9.3f}{p99 or 0:>9.3f}  "
              f"{r.get('rps_all', '')}")
    ratios = summary["ratios"]
    print(f"coapio TCP / coapio UDP:   {ratios['coapio_tcp_over_coapio_udp']:.2f}x  (target >= 0.8x)")
    print(f"coapio TCP / libcoap TCP:  {ratios['coapio_tcp_over_libcoap_tcp']:.2f}x  (target >= 0.4x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
