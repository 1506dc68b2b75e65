"""Server throughput: coapio, aiocoap and libcoap's ``coap-server-notls`` under the same load, in one run.

Run as ``python benchmarks/server_throughput.py [--duration 5]`` (``benchmarks/suite.py`` runs it with
everything else).

Servers (``--servers``): ``coapio`` (trio), ``coapio-asyncio`` (the same site and Context on asyncio,
through anyio), ``aiocoap`` and ``libcoap``; ``--workers 1,2`` adds ``coapio-workers1`` and
``coapio-workers2``: 1 and 2 processes of the ``coapio`` server sharing the port with SO_REUSEPORT
(``Context(reuse_port=True)``, what ``coapio-server --workers N`` runs), measured under the CON load.

Each server runs as its own process on 127.0.0.1 (a free port), pinned to CPU 0 with ``taskset`` when
it exists and the machine has two or more CPUs; the load generator runs pinned to CPU 1. Workers are
pinned one per CPU (worker i to CPU i mod the CPU count); with two or more the generator is left
unpinned: pinning it would put it on one worker's core and starve that worker, while unpinned the
scheduler gives it whatever either core has to spare. The 1-worker row is pinned like every other
server (worker on CPU 0, generator on CPU 1): the best one process can do is the baseline, so the ratio
of N workers to one is not flattered by a handicapped baseline.

The load is a closed loop of GET ``/`` requests (``--loads``: CON, NON, or both in one run),
``--window`` (16) in flight spread over ``--sockets`` (8) client ports, every answer immediately
replaced by a new request. Every server answers with a 136-byte payload (libcoap's index text; the
Python servers send a payload of the same size).

The load generator is ``benchmarks/loadgen.c``, compiled at run time with ``cc -O2`` into a temporary
directory (a C compiler is required). It warms up for ``--warmup`` s, measures for ``--duration`` s, and
reports requests/s (2.05 answers to requests sent in the window), p50/p99 latency, lost requests
(unanswered after ``--timeout-ms``; there are no retransmissions), its own CPU use and the server's.

Why the generator is not the bottleneck: its CPU use is measured in every run ("loadgen CPU %"); while it
stays well below one core and the server's is near 100 %, the server is what limits the rate. A warning
is printed when the generator passes 80 % of a core. ``--self-test`` adds a row for a canned-response C
"server" (``loadgen --echo-server``): the rate the generator can drive when the server does almost
nothing, far above what the Python servers reach. ``--external-coapload PATH`` drives the servers with
the independent ``coapload`` tool instead, to cross-check the figures.

The machine may be shared: CPU time used by other processes during each run is measured from
/proc/stat and reported when it is large enough to distort the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _servers  # the benchmarks directory is not a package

HERE = Path(__file__).resolve().parent
LOADGEN_SOURCE = HERE / "loadgen.c"
GENERATOR_CPU_WARNING = 80.0  # % of one core
OTHER_CPU_NOTE = 15.0  # % of one core used by unrelated processes during a run


# --- building and running the generators ------------------------------------------------------------


def find_cc() -> str:
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate and shutil.which(candidate):
            return candidate
    raise SystemExit(
        "server_throughput: a C compiler (cc) is required to build benchmarks/loadgen.c "
        "(or pass --external-coapload PATH)"
    )


def build_loadgen(directory: Path) -> Path:
    exe = directory / "loadgen"
    cmd = [find_cc(), "-O2", "-Wall", "-o", str(exe), str(LOADGEN_SOURCE)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise SystemExit(f"building the load generator failed:\n{' '.join(cmd)}\n{result.stderr}")
    return exe


def system_busy_seconds() -> float:
    """CPU time (all CPUs) spent in user and system mode or stolen by the hypervisor, from /proc/stat.

    Interrupt and softirq time is left out: on loopback most of it is the benchmark's own network traffic.
    """
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0
    user, nice, system = fields[0], fields[1], fields[2]
    steal = fields[7] if len(fields) > 7 else 0
    return (user + nice + system + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


@contextlib.contextmanager
def other_cpu(result: dict[str, Any], server_pids: Sequence[int]) -> Iterator[None]:
    """Measure CPU used by processes other than the server and the generator during the block."""
    busy0, srv0, kids0, t0 = (system_busy_seconds(), servers_cpu_seconds(server_pids),
                              children_cpu_seconds(), time.monotonic())
    yield
    busy1, srv1, kids1, t1 = (system_busy_seconds(), servers_cpu_seconds(server_pids),
                              children_cpu_seconds(), time.monotonic())
    ours = (kids1 - kids0) + ((srv1 - srv0) if srv0 is not None and srv1 is not None else 0.0)
    result["other_cpu_pct"] = max(0.0, 100.0 * ((busy1 - busy0) - ours) / (t1 - t0))


def run_loadgen(exe: Path, port: int, server_pids: Sequence[int], args: argparse.Namespace,
                cpu: int | None, load: str) -> dict[str, Any]:
    cmd = [str(exe), "-w", str(args.window), "-k", str(args.sockets), "-d", str(args.duration),
           "-W", str(args.warmup), "-T", str(args.timeout_ms), "-P", ",".join(map(str, server_pids))]
    if load == "NON":
        cmd.append("-N")
    cmd += [_servers.HOST, str(port)]
    result: dict[str, Any] = {}
    with other_cpu(result, server_pids):
        out = _run_json(_servers.pinned(cmd, cpu), args.warmup + args.duration + args.timeout_ms / 1000 + 30)
    out.update(result)
    return out


def run_coapload(exe: str, port: int, server_pids: Sequence[int], args: argparse.Namespace,
                 cpu: int | None, load: str) -> dict[str, Any]:
    """The independent ``coapload``: a warm-up run, then a measured one (CPU measured from outside)."""
    def command(seconds: float) -> list[str]:
        cmd = [exe, "-w", str(args.window), "-k", str(args.sockets), "-d", str(seconds),
               "-T", str(args.timeout_ms), "--drain", str(args.timeout_ms / 1000), "--json"]
        if load == "NON":
            cmd.append("-N")
        return _servers.pinned([*cmd, _servers.HOST, str(port)], cpu)

    budget = args.duration + args.timeout_ms / 1000 + 30
    if args.warmup > 0:
        _run_json(command(args.warmup), budget)
    result: dict[str, Any] = {}
    srv0, kids0, t0 = servers_cpu_seconds(server_pids), children_cpu_seconds(), time.monotonic()
    with other_cpu(result, server_pids):
        out = _run_json(command(args.duration), budget)
    srv1, kids1, t1 = servers_cpu_seconds(server_pids), children_cpu_seconds(), time.monotonic()
    out["generator"] = "coapload"
    out["loadgen_cpu_pct"] = 100.0 * (kids1 - kids0) / (t1 - t0)
    out["server_cpu_pct"] = 100.0 * (srv1 - srv0) / (t1 - t0) if srv0 is not None and srv1 is not None else -1
    out.update(result)
    return out


def servers_cpu_seconds(pids: Sequence[int]) -> float | None:
    """utime + stime summed over the server's processes; None when one of them cannot be read."""
    total = 0.0
    for pid in pids:
        seconds = _servers.cpu_seconds(pid)
        if seconds is None:
            return None
        total += seconds
    return total


def _run_json(cmd: list[str], timeout: float) -> dict[str, Any]:
    # subprocess.run kills the child on timeout and on any exception (KeyboardInterrupt included).
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"no JSON from {' '.join(cmd)}:\n{proc.stdout}\n{proc.stderr}")
    data: dict[str, Any] = json.loads(lines[-1])
    return data


# --- one server ---------------------------------------------------------------------------------------


def measure(name: str, load: str, generate: Any, pin: bool,
            echo_exe: Path | None = None) -> dict[str, Any]:
    """Start server ``name``, run the load against it, stop it; one result row."""
    port = _servers.free_udp_port()
    workers = _servers.worker_count(name)
    cpus = os.cpu_count() or 1
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if workers is not None:
            # One worker per CPU; with more than one, the generator floats (see the module docstring).
            gen_cpu = 1 if pin and workers == 1 else None
            pinning = ("not pinned" if not pin else "worker on CPU 0, generator on CPU 1" if workers == 1
                       else f"worker i on CPU i mod {cpus}, generator unpinned")
            procs = _servers.start_workers(workers, port, [i % cpus if pin else None for i in range(workers)])
        else:
            server_cpu, gen_cpu = (0, 1) if pin else (None, None)
            pinning = "server on CPU 0, generator on CPU 1" if pin else "not pinned"
            if name == "echo":
                assert echo_exe is not None
                procs = [subprocess.Popen(
                    _servers.pinned([str(echo_exe), "--echo-server", str(port),
                                     "--payload", str(_servers.PAYLOAD_SIZE)], server_cpu),
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )]
            else:
                procs = [_servers.start_server(name, port, server_cpu)]
        _servers.wait_ready(procs[0], port)
        pids = [proc.pid for proc in procs]
        each0, t0 = [_servers.cpu_seconds(pid) for pid in pids], time.monotonic()
        result = generate(port, pids, gen_cpu, load)
        each1, t1 = [_servers.cpu_seconds(pid) for pid in pids], time.monotonic()
        peaks = [_servers.max_rss_mb(pid) for pid in pids]
        result["rss_mb"] = None if None in peaks else sum(p for p in peaks if p is not None)
        if workers is not None:
            # Over the whole generator run (warm-up included): how evenly the kernel spread the clients.
            result["worker_cpu_pct"] = [None if a is None or b is None else round(100 * (b - a) / (t1 - t0))
                                        for a, b in zip(each0, each1, strict=True)]
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} server died during the run:\n{_servers.server_log(port)}")
    finally:
        for proc in procs:
            _servers.stop(proc)
    result.update(server=name, load=load, pinning=pinning)
    return result


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median requests/s (the lower middle one for an even count), with the spread."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return runs[-1]
    ordered = sorted(good, key=lambda r: r["rps"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    if len(good) > 1:
        chosen["runs"] = len(good)
        chosen["rps_all"] = [round(r["rps"], 1) for r in good]
    return chosen


# --- output -------------------------------------------------------------------------------------------


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Ratios of one load's rows: coapio against aiocoap and libcoap, asyncio against trio, 2 workers
    against 1 (requests/s: higher is better for the first; p99: lower is better)."""
    pairs = [("coapio", "aiocoap"), ("coapio", "libcoap"), ("coapio-asyncio", "coapio")]
    workers = sorted(n for n in (_servers.worker_count(name) for name in results) if n is not None)
    prefix = _servers.WORKERS_PREFIX
    pairs += [(f"{prefix}{n}", f"{prefix}{workers[0]}") for n in workers[1:]]
    out: dict[str, dict[str, float]] = {}
    for mine_name, other in pairs:
        mine, theirs = results.get(mine_name), results.get(other)
        if mine is None or theirs is None or "error" in mine or "error" in theirs:
            continue
        r: dict[str, float] = {}
        if theirs.get("rps"):
            r["rps"] = mine["rps"] / theirs["rps"]
        if theirs.get("p99_us"):
            r["p99"] = mine["p99_us"] / theirs["p99_us"]
        out[f"{mine_name}/{other}"] = r
    return out


def warnings_for(results: Sequence[dict[str, Any]]) -> list[str]:
    notes = []
    for r in results:
        label = f"{r['server']} {r.get('load', '')}".rstrip()
        if "error" in r:
            notes.append(f"ERROR: {label}: {r['error']}")
            continue
        gen = r.get("loadgen_cpu_pct", 0.0)
        srv = r.get("server_cpu_pct", -1.0)
        workers = _servers.worker_count(r["server"]) or 1
        if r["server"] == "echo":
            python = [x["rps"] for x in results if x["server"] in ("coapio", "aiocoap") and "error" not in x]
            factor = f", {r['rps'] / max(python):.1f}x the fastest Python server" if python else ""
            notes.append(f"self-test: the generator drove {r['rps']:,.0f} req/s against a do-nothing C "
                         f"responder{factor}, using {gen:.0f} % of a core")
        elif gen > GENERATOR_CPU_WARNING:
            notes.append(f"WARNING: {label}: the load generator used {gen:.0f} % of a core: "
                         "its figures may be limited by the generator, not the server")
        elif 0 <= srv < 80 * workers:
            notes.append(f"note: {label}: neither the server ({srv:.0f} %) nor the generator "
                         f"({gen:.0f} %) used a whole core each: the window may be too small to saturate it, "
                         "or the machine is busy")
        if r.get("worker_cpu_pct"):
            notes.append(f"{label}: CPU % of each worker (whole run): "
                         + ", ".join("-" if x is None else str(x) for x in r["worker_cpu_pct"]))
        if r.get("other_cpu_pct", 0.0) > OTHER_CPU_NOTE:
            notes.append(f"note: {label}: other processes used {r['other_cpu_pct']:.0f} % of a core "
                         "during the run (a shared machine): figures may be low and noisy")
        if r.get("runs"):
            spread = ", ".join(f"{x:,.0f}" for x in r["rps_all"])
            notes.append(f"{label}: median of {r['runs']} runs; req/s of each: {spread}")
        if r.get("lost"):
            notes.append(f"note: {label}: {r['lost']} requests lost (unanswered after the timeout)")
    return notes


def fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, int | float) and value < 0):
        return "-"
    return format(value, spec)


def print_table(results: Sequence[dict[str, Any]], args: argparse.Namespace, pinning: str,
                generator: str) -> None:
    print(f"server throughput: GET /, {args.window} in flight over {args.sockets} client ports, "
          f"{args.duration:g} s measured after {args.warmup:g} s warm-up, timeout {args.timeout_ms} ms"
          + (f", median of {args.repeat} runs" if args.repeat > 1 else ""))
    print(f"generator: {generator}; {pinning}; {platform.python_implementation()} "
          f"{platform.python_version()}, {os.cpu_count()} CPUs")
    header = ["load", "server", "req/s", "p50 ms", "p99 ms", "lost", "server CPU %", "loadgen CPU %",
              "other CPU %", "RSS MB", "resp B"]
    rows = [header]
    for r in results:
        if "error" in r:
            rows.append([r.get("load", "-"), r["server"], "failed", *["-"] * (len(header) - 3)])
            continue
        resp = r.get("response_bytes")
        rows.append([
            r["load"], r["server"], fmt(r.get("rps"), ",.0f"), fmt(r.get("p50_us", 0) / 1000, ".3f"),
            fmt(r.get("p99_us", 0) / 1000, ".3f"), str(r.get("lost", "-")),
            fmt(r.get("server_cpu_pct"), ".0f"), fmt(r.get("loadgen_cpu_pct"), ".0f"),
            fmt(r.get("other_cpu_pct"), ".0f"), fmt(r.get("rss_mb"), ".1f"),
            fmt(resp, "d") if isinstance(resp, int) else "-",
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in
                        enumerate(zip(row, widths, strict=True))))
        if n == 0:
            print("  ".join("-" * w for w in widths))
    for load in args.loads:
        by_name = {r["server"]: r for r in results if r.get("load") == load}
        for label, r in ratios(by_name).items():
            parts = []
            if "rps" in r:
                parts.append(f"req/s {r['rps']:.2f}x")
            if "p99" in r:
                parts.append(f"p99 {r['p99']:.2f}x")
            print(f"{load} {label}: {', '.join(parts)}")
    for note in warnings_for(results):
        print(note)


# --- main ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per server (5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds, not measured (1)")
    parser.add_argument("--window", type=int, default=16, help="requests in flight (16)")
    parser.add_argument("--sockets", type=int, default=8, help="client ports the window is spread over (8)")
    parser.add_argument("--servers", default=",".join(_servers.SERVERS),
                        help=f"comma-separated subset of {','.join(_servers.SERVERS)} (all)")
    parser.add_argument("--workers", default="",
                        help="comma-separated worker counts to measure under CON, e.g. 1,2 (none)")
    parser.add_argument("--loads", default="CON,NON", help="CON, NON or CON,NON (both, the default)")
    parser.add_argument("--non", action="store_true", help="the same as --loads NON")
    parser.add_argument("--timeout-ms", type=int, default=1000,
                        help="a request unanswered this long is lost (no retransmission; 1000)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure each server N times (interleaved) and report the median run (1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--self-test", action="store_true",
                        help="also measure a canned-response C echo 'server': the generator's ceiling")
    parser.add_argument("--external-coapload", metavar="PATH",
                        help="drive the servers with this coapload binary instead of loadgen.c")
    parser.add_argument("--build-coapload", action="store_true",
                        help="with --external-coapload: run `make` in the binary's directory first")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes with taskset")
    args = parser.parse_args(argv)
    names = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = [s for s in names if s not in _servers.SERVERS]
    if unknown:
        parser.error(f"--servers: unknown {', '.join(unknown)}; choose from {','.join(_servers.SERVERS)}")
    args.server_names = names
    try:
        args.worker_counts = [int(x) for x in args.workers.split(",") if x.strip()]
    except ValueError:
        parser.error("--workers: comma-separated whole numbers")
    args.loads = ["NON"] if args.non else [x.strip().upper() for x in args.loads.split(",") if x.strip()]
    if not args.loads or any(x not in ("CON", "NON") for x in args.loads):
        parser.error("--loads: CON, NON or CON,NON")
    if not names and not args.worker_counts:
        parser.error("nothing to measure: give --servers and/or --workers")
    if (args.window < 1 or args.sockets < 1 or args.duration <= 0 or args.warmup < 0 or args.timeout_ms < 1
            or args.repeat < 1 or any(n < 1 for n in args.worker_counts)):
        parser.error("--window, --sockets, --duration, --timeout-ms, --repeat and --workers must be positive")
    return args


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the servers


def plan(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(load, server) pairs in measuring order; workers only under the CON load (their target's)."""
    pairs = []
    for load in args.loads:
        names = list(args.server_names)
        if args.self_test:
            names.insert(0, "echo")
        if load == "CON" or args.loads == ["NON"]:
            names += [f"{_servers.WORKERS_PREFIX}{n}" for n in args.worker_counts]
        pairs += [(load, name) for name in names]
    return pairs


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    pin = not args.no_pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    pinning = ("server pinned to CPU 0, generator to CPU 1 (taskset); 2+ workers one per CPU, generator "
               "unpinned" if pin else "not pinned (no taskset, a single CPU, or --no-pin)")

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="coapio-bench-") as tmp:
        exe = build_loadgen(Path(tmp)) if (args.self_test or not args.external_coapload) else None
        if args.external_coapload:
            coapload = os.path.abspath(args.external_coapload)
            if args.build_coapload:
                subprocess.run(["make", "-C", os.path.dirname(coapload)], check=True, timeout=120)
            if not os.access(coapload, os.X_OK):
                raise SystemExit(f"--external-coapload: {coapload} is not an executable (build it with make)")
            generator = f"coapload ({coapload})"

            def generate(port: int, pids: list[int], cpu: int | None, load: str) -> dict[str, Any]:
                return run_coapload(coapload, port, pids, args, cpu, load)
        else:
            assert exe is not None
            generator = "benchmarks/loadgen.c (cc -O2)"

            def generate(port: int, pids: list[int], cpu: int | None, load: str) -> dict[str, Any]:
                return run_loadgen(exe, port, pids, args, cpu, load)

        pairs = plan(args)
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {pair: [] for pair in pairs}
        try:
            for round_ in range(args.repeat):  # rounds interleave the servers: drifts hit all alike
                for load, name in pairs:
                    if runs[load, name] and "error" in runs[load, name][-1]:
                        continue
                    if not args.json:
                        print(f"measuring {name} {load} ({round_ + 1}/{args.repeat}) ...",
                              file=sys.stderr, flush=True)
                    try:
                        runs[load, name].append(measure(name, load, generate, pin, echo_exe=exe))
                    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                        # One server failing (libcoap not installed, a crash) must not hide the others.
                        runs[load, name].append({"server": name, "load": load,
                                                 "error": f"{type(e).__name__}: {e}"})
        finally:
            _servers.close_logs()
        results = [median_run(runs[pair]) for pair in pairs]

    if args.json:
        print(json.dumps({
            "config": {
                "loads": args.loads, "window": args.window, "sockets": args.sockets,
                "duration_s": args.duration, "warmup_s": args.warmup, "timeout_ms": args.timeout_ms,
                "repeat": args.repeat, "pinned": pin, "pinning": pinning, "generator": generator,
                "python": platform.python_version(), "cpus": os.cpu_count(),
            },
            "results": results,
            "ratios": {load: ratios({r["server"]: r for r in results if r.get("load") == load})
                       for load in args.loads},
            "warnings": warnings_for(results),
        }))
    else:
        print_table(results, args, pinning, generator)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
