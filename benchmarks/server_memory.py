"""Server memory under a long load from many client ports: RSS after 100,000 and after 2,000,000 requests.

Run as ``python benchmarks/server_memory.py [--requests 100000,2000000] [--rotate 200]`` (``suite.py``
runs it with everything else).

A server that remembers something per client address or per message (deduplication entries, per-peer
tables, cached responses) grows with the number of clients unless that state is bounded. This benchmark
starts one server (pinned to CPU 0; ``coapio`` by default) and drives it with ``loadgen.c`` (pinned to
CPU 1): a closed loop of CON GET ``/``, ``--window`` (16) in flight over ``--sockets`` (16) client
sockets, each socket replaced by a fresh one, on a source port never used before in the run, after
``--rotate`` (200) requests. So 2,000,000 requests come from about 10,000 different client ports, and
every (port, message ID) pair is new: nothing is answered from a deduplication cache, every request
adds an entry. The generator reads the server's ``VmRSS`` (``/proc/PID/status``) when the N-th request
has completed, for each N in ``--requests`` (and a few points between, for the curve); the figure is
``RSS(last) / RSS(first)``. The target (issue 5) is at most 1.3 for 2,000,000 against 100,000.

coapio bounds its deduplication table (``TransportTuning.max_dedup_entries``, 50,000 by default, and
``max_dedup_bytes``), so it is full well before the first reading: what the ratio shows is whatever else
grows (per-peer state, fragmentation, leaks). The server logs once that it reached the bound; that is
expected. At coapio's rate a 2,000,000-request run takes one to two minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _servers  # the benchmarks directory is not a package
import server_throughput

TARGET_RATIO = 1.3
#: Never plan to use more than this share of the ephemeral port range (other programs need ports too).
PORT_SHARE = 0.6


def ephemeral_ports() -> int:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 28232  # Linux's default range 32768-60999
    return high - low + 1


def readings(points: Sequence[int]) -> list[int]:
    """The requested points plus a few between the first and the last, for the curve."""
    first, last = points[0], points[-1]
    extra = [first + (last - first) * k // 4 for k in (1, 2, 3)]
    return sorted(set(points) | {x for x in extra if first < x < last})


def run(name: str, args: argparse.Namespace, exe: Path, pin: bool) -> dict[str, Any]:
    total = args.points[-1]
    rotate = args.rotate
    budget = int(ephemeral_ports() * PORT_SHARE)
    if total // rotate + args.sockets > budget:
        rotate = -(-total // (budget - args.sockets))  # fewer fresh ports, still many
    port = _servers.free_udp_port()
    row: dict[str, Any] = {"server": name, "requests": total, "rotate": rotate}
    proc = None
    try:
        proc = _servers.start_server(name, port, 0 if pin else None)
        _servers.wait_ready(proc, port)
        marks = readings(args.points)
        cmd = [str(exe), "-W", "0", "-d", str(args.max_seconds), "-n", str(total), "-R", str(rotate),
               "-w", str(args.window), "-k", str(args.sockets), "-T", "1000", "-P", str(proc.pid),
               "--rss-at", ",".join(map(str, marks)), _servers.HOST, str(port)]
        result: dict[str, Any] = {}
        with server_throughput.other_cpu(result, [proc.pid]):
            out = server_throughput._run_json(_servers.pinned(cmd, 1 if pin else None), args.max_seconds + 60)
        if proc.poll() is not None:
            raise RuntimeError(f"{name} server died during the run:\n{_servers.server_log(port)}")
        row.update(result)
        row["peak_rss_mb"] = _servers.max_rss_mb(proc.pid)
    except (OSError, ValueError, RuntimeError, subprocess.SubprocessError) as e:
        row["error"] = f"{type(e).__name__}: {e}"
        return row
    finally:
        if proc is not None:
            _servers.stop(proc)
    curve = [(n, kb / 1024) for n, kb in out["rss_at"] if kb >= 0]
    row.update(
        rss_mb=curve, rps=out["rps"], seconds=out["duration_s"], completed=out["completed_total"],
        ok=out["ok"], lost=out["lost"], ports=out["sockets_opened"], server_cpu_pct=out["server_cpu_pct"],
        loadgen_cpu_pct=out["loadgen_cpu_pct"], pings=out.get("pings"),
    )
    by_n = dict(curve)
    first, last = by_n.get(args.points[0]), by_n.get(args.points[-1])
    if first and last:
        row.update(rss_first_mb=first, rss_last_mb=last, ratio=last / first)
    else:
        row["error"] = f"missing RSS readings (completed {out['completed_total']} of {total} requests)"
    return row


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    first, last = args.points[0], args.points[-1]
    print(f"Server memory: CON GET /, {args.window} in flight over {args.sockets} client sockets, a fresh "
          f"source port every --rotate requests per socket; VmRSS after N requests")
    header = (f"{'server':<15} {'ports':>6} {'req/s':>8} {'lost':>5} "
              f"{f'RSS@{first:,}':>13} {f'RSS@{last:,}':>15} {'ratio':>6} {'peak MB':>8}  curve (MB)")
    print(header)
    print("-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['server']:<15} failed: {r['error']}")
            continue
        curve = ", ".join(f"{n // 1000}k:{mb:.1f}" for n, mb in r["rss_mb"])
        print(f"{r['server']:<15} {r['ports']:>6} {r['rps']:>8,.0f} {r['lost']:>5} "
              f"{r['rss_first_mb']:>13.1f} {r['rss_last_mb']:>15.1f} {r['ratio']:>6.2f} "
              f"{r['peak_rss_mb'] or 0:>8.1f}  {curve}")
        if r.get("other_cpu_pct", 0) > server_throughput.OTHER_CPU_NOTE:
            print(f"note: {r['server']}: other processes used {r['other_cpu_pct']:.0f} % of a core "
                  "during the run")
    print(f"target: RSS after {last:,} requests <= {TARGET_RATIO} x RSS after {first:,}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--servers", default="coapio",
                        help=f"comma-separated, of {','.join(_servers.SERVERS)} (coapio)")
    parser.add_argument("--requests", default="100000,2000000",
                        help="the readings to compare: first,last (more may be given; 100000,2000000)")
    parser.add_argument("--rotate", type=int, default=200, help="requests per client port (200)")
    parser.add_argument("--window", type=int, default=16, help="requests in flight (16)")
    parser.add_argument("--sockets", type=int, default=16, help="client sockets at a time (16)")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="bound on one server's run (900)")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        args.points = sorted({int(x) for x in args.requests.split(",") if x.strip()})
    except ValueError:
        parser.error("--requests: comma-separated whole numbers")
    if len(args.points) < 2 or args.points[0] < 1 or not 1 <= args.rotate <= 65536:
        parser.error("--requests needs two positive counts; --rotate is 1..65536")
    names = [x.strip() for x in args.servers.split(",") if x.strip()]
    pin = not args.no_pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    with tempfile.TemporaryDirectory(prefix="coapio-bench-") as tmp:
        exe = server_throughput.build_loadgen(Path(tmp))
        try:
            rows = [run(name, args, exe, pin) for name in names]
        finally:
            _servers.close_logs()
    if args.json:
        print(json.dumps({"config": {"requests": args.points, "window": args.window, "sockets": args.sockets,
                                     "pinned": pin, "python": platform.python_version()},
                          "results": rows, "target_ratio": TARGET_RATIO}))
    else:
        print_table(rows, args)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
