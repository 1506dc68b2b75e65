"""Every performance figure of issue 5 in one run, and one table of the targets: met or NOT MET.

Run as ``python benchmarks/suite.py`` (or ``nox -s bench``)::

    python benchmarks/suite.py                      # the full run: about 8-10 minutes on 2 cores
    python benchmarks/suite.py --quick              # a smoke run of about a minute (figures not comparable)
    python benchmarks/suite.py --markdown           # the tables as Markdown, for docs/performance.md
    python benchmarks/suite.py --save run.json      # also keep every script's raw JSON ...
    python benchmarks/suite.py --load run.json --markdown   # ... and print the tables again from it
    python benchmarks/suite.py --only server,client # some steps only
    python benchmarks/suite.py --load run.json --write-doc docs/performance.md  # refresh the page's tables

It runs each benchmark script of this directory as its own process with ``--json`` (each stays runnable
on its own, with a readable table) and then prints: the targets of issue 5 with the measured figures,
the ratio and met / NOT MET; the absolute figures of every step; the machine; and the notes (generator
saturation, other processes' CPU use, failures). Steps, in order:

============  ==========================================================================================
``codec``     ``codec.py``: µs per encode/decode, coapio and aiocoap
``server``    ``server_throughput.py``: CON and NON load against coapio (trio), coapio on asyncio,
              aiocoap and libcoap; 1 and 2 SO_REUSEPORT workers; median of 3 runs of 5 s each
``memory``    ``server_memory.py``: coapio's VmRSS after 100,000 and 2,000,000 requests from fresh ports
``client``    ``client_throughput.py``: 64 concurrent GETs against coap-server-notls, coapio and aiocoap
``observe``   ``observe_fanout.py``: notifications/s to 1,000 and 10,000 observers, coapio and aiocoap
``blockwise`` ``blockwise_get.py``: a 1 MiB Block2 GET, coapio↔coapio and aiocoap↔aiocoap
``tcp``       ``tcp_throughput.py``: CoAP over TCP, coapio and libcoap servers (and coapio's UDP figure)
``dtls``      ``dtls_throughput.py``: CoAP over DTLS (PSK), coapio and libcoap's ``coap-server-openssl``:
              req/s after the handshake and handshakes/s
``oscore``    ``oscore_throughput.py``: OSCORE-protected GETs against coapio and aiocoap's OSCORE server,
              and the same coapio server unprotected; median of 3 interleaved runs of 5 s each
============  ==========================================================================================

Peers: aiocoap (``pip install -e '.[test]'``), libcoap's ``coap-server-notls`` (Debian: ``apt install
libcoap3-bin``), a C compiler for ``loadgen.c`` and ``taskset`` (util-linux) for pinning. A missing
peer shows as ``n/a`` with the reason in the targets table; nothing crashes. The exit status is 1 when a
step produced no result at all (or, with ``--strict``, when a target is not met), else 0.

The machine may be shared: for every step the suite measures the CPU time that *other* processes used
meanwhile (``/proc/stat`` minus the step's own processes), in % of one core; above 15 % the figures are
low and noisy, and the table says so.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OTHER_CPU_NOTE = 15.0  # % of one core used by unrelated processes during a step

# --- the steps --------------------------------------------------------------------------------------------


class Step:
    """One benchmark script: its arguments for the full and the quick run, and a bound on its time."""

    def __init__(self, name: str, script: str, full: list[str], quick: list[str], timeout: float):
        self.name, self.script, self.full, self.quick, self.timeout = name, script, full, quick, timeout


STEPS = [
    Step("codec", "codec.py", ["--repeat", "5"], ["--repeat", "1"], 300),
    Step("server", "server_throughput.py",
         ["--servers", "coapio,coapio-asyncio,aiocoap,libcoap", "--loads", "CON,NON", "--workers", "1,2",
          "--duration", "5", "--warmup", "1", "--repeat", "3"],
         ["--servers", "coapio,coapio-asyncio,aiocoap,libcoap", "--loads", "CON,NON", "--workers", "1,2",
          "--duration", "0.5", "--warmup", "0.3", "--repeat", "1"], 900),
    Step("memory", "server_memory.py", ["--requests", "100000,2000000"],
         ["--requests", "10000,60000", "--rotate", "50"], 960),
    Step("client", "client_throughput.py", ["--duration", "5", "--repeat", "3"],
         ["--duration", "0.5", "--warmup", "0.2", "--repeat", "1"], 600),
    Step("observe", "observe_fanout.py", ["--observers", "1000,10000"],
         ["--observers", "100,1000", "--notifications", "5000", "--timeout", "15"], 900),
    Step("blockwise", "blockwise_get.py", ["--size", str(1 << 20), "--repeat", "3"],
         ["--size", str(64 << 10), "--repeat", "1"], 600),
    Step("tcp", "tcp_throughput.py", ["--duration", "5", "--repeat", "3"],
         ["--duration", "0.5", "--warmup", "0.3", "--repeat", "1"], 600),
    Step("oscore", "oscore_throughput.py", ["--duration", "5", "--warmup", "1", "--repeat", "3"],
         ["--duration", "0.5", "--warmup", "0.3", "--repeat", "1"], 600),
    Step("dtls", "dtls_throughput.py", ["--duration", "5", "--repeat", "3"],
         ["--duration", "0.5", "--warmup", "0.3", "--repeat", "1"], 600),
]
STEP_NAMES = [s.name for s in STEPS]


def system_busy_seconds() -> float:
    """CPU time of all CPUs in user, nice and system mode or stolen, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0
    steal = fields[7] if len(fields) > 7 else 0
    return (fields[0] + fields[1] + fields[2] + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """CPU time of this process's waited-for descendants: a step's script and everything it started."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_step(step: Step, quick: bool) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE / step.script), "--json", *(step.quick if quick else step.full)]
    print(f"suite: {step.name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    busy0, kids0, t0 = system_busy_seconds(), children_cpu_seconds(), time.monotonic()
    record: dict[str, Any] = {"command": cmd[1:]}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=step.timeout, cwd=HERE.parent)
    except subprocess.TimeoutExpired:
        record["error"] = f"did not finish within {step.timeout:.0f} s"
        done = None
    busy1, kids1, t1 = system_busy_seconds(), children_cpu_seconds(), time.monotonic()
    record["seconds"] = t1 - t0
    record["other_cpu_pct"] = max(0.0, 100 * ((busy1 - busy0) - (kids1 - kids0)) / (t1 - t0))
    if done is not None:
        record["exit_status"] = done.returncode
        lines = [line for line in done.stdout.splitlines() if line.startswith(("{", "["))]
        if lines:
            record["data"] = json.loads(lines[-1])
        else:
            tail = done.stderr.strip().splitlines()
            record["error"] = tail[-1] if tail else f"exited {done.returncode} without a result"
    print(f"suite: {step.name}: {record['seconds']:.0f} s" + (f", ERROR: {record['error']}"
                                                            if "error" in record else ""),
          file=sys.stderr, flush=True)
    return record


# --- the machine and the peers ------------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def libcoap_server() -> str | None:
    return shutil.which("coap-server-notls") or shutil.which("coap-server")


def machine() -> dict[str, Any]:
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    libcoap = libcoap_server()
    libcoap_version = None
    if libcoap:
        try:
            out = subprocess.run([libcoap, "-h"], capture_output=True, text=True, timeout=5)
            words = [w for w in (out.stdout + out.stderr).split() if w.startswith("v") and w[1:2].isdigit()]
            libcoap_version = words[0] if words else "unknown version"
        except (OSError, subprocess.SubprocessError):
            libcoap_version = "unknown version"
    commit = None
    try:
        rev = subprocess.run(["git", "-C", str(HERE.parent), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)
        commit = rev.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    cc = next((c for c in (os.environ.get("CC"), "cc", "gcc", "clang") if c and shutil.which(c)), None)
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": model, "kernel": platform.release(), "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "coapio": _version("coapio"), "commit": commit, "aiocoap": _version("aiocoap"),
        "aiocoap_importable": _importable("aiocoap"),
        "libcoap": libcoap_version if libcoap else None, "cc": cc,
        "taskset": shutil.which("taskset") is not None,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


# --- the targets ------------------------------------------------------------------------------------------


class Target:
    """One line of issue 5's targets table: a figure, its comparison, the bound, and what was measured."""

    def __init__(self, figure: str, target: str, bound: float | None, higher_is_better: bool):
        self.figure, self.target, self.bound, self.higher = figure, target, bound, higher_is_better
        self.mine: str = "-"
        self.theirs: str = "-"
        self.ratio: float | None = None
        self.reason: str | None = None  # why there is no ratio
        self.note: str = ""

    def status(self) -> str:
        if self.ratio is None:
            return f"n/a: {self.reason}" if self.reason else "n/a"
        if self.bound is None:
            return "reported"  # a figure the issue asks for, without a bound
        met = self.ratio >= self.bound if self.higher else self.ratio <= self.bound
        return "met" if met else "NOT MET"


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "-" if value is None else format(value, spec) + unit


def _missing_reason(env: dict[str, Any], peer: str) -> str:
    if peer == "aiocoap" and not env.get("aiocoap_importable"):
        return "aiocoap is not installed (pip install -e '.[test]')"
    if peer == "libcoap" and not env.get("libcoap"):
        return "coap-server-notls is not installed (apt install libcoap3-bin)"
    return ""


def _short(text: str) -> str:
    """An error's first line, short enough for a table cell."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    first = lines[0] if lines else "failed"
    return first if len(first) <= 100 else first[:97] + "..."


def _error_of(step: dict[str, Any] | None, row: dict[str, Any] | None, env: dict[str, Any], peer: str) -> str:
    """Why a comparison has no figure: a skipped or failed step, a missing peer, a failed row."""
    if step is None:
        return "not run"
    if "error" in step:
        return f"step failed: {_short(step['error'])}"
    missing = _missing_reason(env, peer)
    if missing and (row is None or "error" in row):
        return missing
    if row is None:
        return "not measured"
    return _short(row.get("error", "no figure"))


def targets(run: dict[str, Any]) -> list[Target]:
    env = run["machine"]
    steps = run["steps"]
    out: list[Target] = []

    def data(name: str) -> Any:
        step = steps.get(name)
        return None if step is None else step.get("data")

    # Server throughput, p99, asyncio, workers.
    server = data("server") or {}
    rows = {(r.get("load"), r["server"]): r for r in server.get("results", [])}

    def ok(row: dict[str, Any] | None) -> bool:
        return row is not None and "error" not in row and bool(row.get("rps"))

    def rps_target(figure: str, target: str, bound: float, load: str, mine: str, theirs: str,
                   peer: str, key: str = "rps") -> None:
        t = Target(figure, target, bound, higher_is_better=key == "rps")
        a, b = rows.get((load, mine)), rows.get((load, theirs))
        if key == "rps":
            t.mine, t.theirs = (_fmt(r.get("rps") if ok(r) else None, ",.0f", " req/s") for r in (a, b))
        else:
            t.mine, t.theirs = (_fmt(r["p99_us"] / 1000 if ok(r) and r.get("p99_us") else None, ".2f", " ms")
                                for r in (a, b))
        if ok(a) and ok(b) and (key == "rps" or (a.get("p99_us") and b.get("p99_us"))):
            assert a is not None and b is not None
            t.ratio = a[key] / b[key]
        else:
            t.reason = _error_of(steps.get("server"), b if ok(a) else a, env, peer if ok(a) else "coapio")
        out.append(t)

    rps_target("server req/s, CON GET, 16 in flight over 8 ports, one core: coapio / aiocoap", "≥ 20x",
               20, "CON", "coapio", "aiocoap", "aiocoap")
    rps_target("the same: coapio / libcoap", "≥ 0.5x", 0.5, "CON", "coapio", "libcoap", "libcoap")
    rps_target("the same, NON: coapio / aiocoap", "≥ 20x", 20, "NON", "coapio", "aiocoap", "aiocoap")
    rps_target("server p99 latency at that load (CON): coapio / aiocoap", "≤ 0.2x", 0.2, "CON", "coapio",
               "aiocoap", "aiocoap", key="p99_us")
    rps_target("coapio on asyncio (anyio) / coapio on trio, CON", "≥ 0.7x", 0.7, "CON", "coapio-asyncio",
               "coapio", "coapio")

    # Client throughput.
    t = Target("client req/s, 64 concurrent GETs against coap-server-notls: coapio (CON, NSTART 64) / "
               "aiocoap (its faster of CON and NON)", "≥ 8x", 8, True)
    client = data("client") or {}
    crow = {(r["library"], r["load"]): r for r in client.get("results", [])}
    mine = crow.get(("coapio", "CON"))
    theirs = [r for r in (crow.get(("aiocoap", "CON")), crow.get(("aiocoap", "NON"))) if ok(r)]
    best = max(theirs, key=lambda r: r["rps"]) if theirs else None
    t.mine = _fmt(mine["rps"] if ok(mine) else None, ",.0f", " req/s")
    if best is not None:
        t.theirs = f"{best['rps']:,.0f} req/s ({best['load']})"
    if ok(mine) and best is not None:
        assert mine is not None
        t.ratio = mine["rps"] / best["rps"]
    else:
        failed = crow.get(("aiocoap", "CON")) if ok(mine) else mine
        t.reason = (_missing_reason(env, "libcoap")
                    or _error_of(steps.get("client"), failed, env, "aiocoap" if ok(mine) else "coapio"))
    out.append(t)

    # Memory.
    memory = data("memory") or {}
    mrow = next((r for r in memory.get("results", []) if r.get("server") == "coapio"), None)
    points = memory.get("config", {}).get("requests") or [100_000, 2_000_000]
    first, last = points[0], points[-1]
    t = Target(f"server RSS after {last:,} requests from many client ports / after {first:,}", "≤ 1.3x",
               1.3, False)
    if mrow is not None and "error" not in mrow:
        t.mine, t.theirs = f"{mrow['rss_last_mb']:.1f} MiB", f"{mrow['rss_first_mb']:.1f} MiB"
        t.ratio = mrow["ratio"]
        t.note = f"{mrow['ports']:,} client ports"
    else:
        t.reason = _error_of(steps.get("memory"), mrow, env, "coapio")
    out.append(t)

    # Observe fan-out.
    observe = data("observe") or []
    orows = {(r["library"], r["observers"]): r for r in observe if isinstance(r, dict)}
    for n in sorted({n for _, n in orows}) or [1000, 10000]:
        t = Target(f"Observe fan-out, {n:,} observers: server notifications/s, coapio / aiocoap", "≥ 5x", 5,
                   True)
        a, b = orows.get(("coapio", n)), orows.get(("aiocoap", n))
        good = [r is not None and "error" not in r and bool(r.get("server_rate")) for r in (a, b)]
        t.mine = _fmt(a["server_rate"] if good[0] and a else None, ",.0f", "/s")
        t.theirs = _fmt(b["server_rate"] if good[1] and b else None, ",.0f", "/s")
        if all(good) and a and b:
            t.ratio = a["server_rate"] / b["server_rate"]
        else:
            t.reason = _error_of(steps.get("observe"), b if good[0] else a, env,
                                 "aiocoap" if good[0] else "coapio")
        out.append(t)

    # Block-wise GET.
    blockwise = data("blockwise") or []
    brows = {(r["client"], r["server"]): r for r in blockwise if isinstance(r, dict)}
    a, b = brows.get(("coapio", "coapio")), brows.get(("aiocoap", "aiocoap"))
    size = _block_size(steps.get("blockwise"))
    t = Target(f"{size} Block2 GET: time, coapio client from coapio server / aiocoap from aiocoap", "≤ 0.5x",
               0.5, False)
    good = [r is not None and "error" not in r for r in (a, b)]
    t.mine = _fmt(a["median"] if good[0] and a else None, ".3f", " s")
    t.theirs = _fmt(b["median"] if good[1] and b else None, ".3f", " s")
    if all(good) and a and b:
        t.ratio = a["median"] / b["median"]
    else:
        t.reason = _error_of(steps.get("blockwise"), b if good[0] else a, env,
                             "aiocoap" if good[0] else "coapio")
    out.append(t)

    # Workers.
    rps_target("2 SO_REUSEPORT workers / 1 worker (same server, CON; workers one per CPU)", "≥ 1.5x", 1.5,
               "CON", "coapio-workers2", "coapio-workers1", "coapio")

    # CoAP over TCP (issue 11).
    tcp = data("tcp") or {}
    results = tcp.get("results", {}) if isinstance(tcp, dict) else {}
    for title, target, threshold, theirs_name in (
        ("server req/s over TCP, 16 in flight over 4 connections: coapio TCP / coapio UDP (same run)",
         "≥ 0.8x", 0.8, "coapio-udp"),
        ("the same: coapio TCP / libcoap TCP", "≥ 0.4x", 0.4, "libcoap-tcp"),
    ):
        t = Target(title, target, threshold, True)
        a, b = results.get("coapio-tcp"), results.get(theirs_name)
        t.mine = _fmt(a["requests_per_second"] if a else None, ",.0f", " req/s")
        t.theirs = _fmt(b["requests_per_second"] if b else None, ",.0f", " req/s")
        if a and b:
            t.ratio = a["requests_per_second"] / b["requests_per_second"]
        else:
            t.reason = _missing_reason(env, "libcoap") or "the tcp step gave no result"
        out.append(t)

    # OSCORE (issue 12).
    oscore = data("oscore") or {}
    orows_ = {r["server"]: r for r in oscore.get("results", [])} if isinstance(oscore, dict) else {}
    for title, target, bound, theirs_name, peer in (
        ("server req/s, OSCORE-protected GET, 16 in flight over 8 ports, one core: coapio / aiocoap "
         "(OscoreSiteWrapper)", "≥ 10x", 10.0, "aiocoap-oscore", "aiocoap"),
        ("the same: coapio OSCORE / coapio unprotected (same server, same run)", "-", None, "coapio-plain",
         "coapio"),
    ):
        t = Target(title, target, bound, True)
        a, b = orows_.get("coapio-oscore"), orows_.get(theirs_name)
        t.mine, t.theirs = (_fmt(r["rps"] if ok(r) else None, ",.0f", " req/s") for r in (a, b))
        if ok(a) and ok(b):
            assert a is not None and b is not None
            t.ratio = a["rps"] / b["rps"]
        else:
            t.reason = _error_of(steps.get("oscore"), b if ok(a) else a, env, peer if ok(a) else "coapio")
        out.append(t)

    # DTLS (issue 14): the best of the interleaved runs of each server.
    dtls = data("dtls") or {}
    for title, target, bound, load, key, unit in (
        ("server req/s over DTLS PSK (CCM_8), after the handshake, 16 in flight over 8 sessions: coapio / "
         "libcoap (coap-server-openssl)", "≥ 0.3x", 0.3, "requests", "rps", " req/s"),
        ("the same servers: full DTLS PSK handshakes/s (cookie exchange included), coapio / libcoap", "-",
         None, "handshakes", "hps", " hs/s"),
    ):
        t = Target(title, target, bound, True)
        a = (dtls.get("coapio") or {}).get(load) if isinstance(dtls, dict) else None
        b = (dtls.get("libcoap") or {}).get(load) if isinstance(dtls, dict) else None
        t.mine, t.theirs = (_fmt(r.get(key) if r else None, ",.0f", unit) for r in (a, b))
        if a and b and a.get(key) and b.get(key):
            t.ratio = a[key] / b[key]
        else:
            t.reason = _error_of(steps.get("dtls"), b if a else a, env, "libcoap" if a else "coapio")
        out.append(t)
    return out


def _block_size(step: dict[str, Any] | None) -> str:
    command = (step or {}).get("command", [])
    size = int(command[command.index("--size") + 1]) if "--size" in command else 1 << 20
    return f"{size >> 20} MiB" if size >= 1 << 20 and size % (1 << 20) == 0 else f"{size >> 10} KiB"


# --- rendering ----------------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool,
          numeric: Callable[[int], bool] = lambda i: i > 0) -> str:
    if markdown:
        align = ["---:" if numeric(i) else "---" for i in range(len(headers))]
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if numeric(i) else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()
    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *[line(r) for r in rows]])


def heading(text: str, markdown: bool) -> str:
    return f"\n### {text}\n" if markdown else f"\n{text}\n{'=' * len(text)}"


def render(run: dict[str, Any], markdown: bool) -> str:
    env, steps = run["machine"], run["steps"]
    parts: list[str] = []
    mode = "quick (smoke run: figures not comparable to the targets)" if run["quick"] else "full"
    parts.append(heading("Targets of issue 5", markdown))
    rows = []
    for t in targets(run):
        ratio = _fmt(t.ratio, ".2f", "x")
        rows.append([t.figure, t.mine, t.theirs, ratio, t.target, t.status()])
    parts.append(table(["figure", "coapio", "compared with", "ratio", "target", "status"], rows, markdown,
                       numeric=lambda i: i in (1, 2, 3)))
    aiocoap = env["aiocoap"] if env["aiocoap_importable"] else "not installed"
    parts.append(f"\nRun: {mode}, {env['date']}, {run['seconds'] / 60:.1f} min; coapio {env['coapio']} "
                 f"({env['commit']}), aiocoap {aiocoap}, libcoap {env['libcoap'] or 'not installed'}.")
    parts.append(f"Machine: {env['nproc']} CPUs ({env['cpu_model']}), Linux {env['kernel']}, "
                 f"{env['python_implementation']} {env['python']}; pinned with taskset: "
                 f"{'yes' if env['taskset'] else 'no (taskset not found)'}.")
    busy = [step["other_cpu_pct"] for step in steps.values() if step.get("other_cpu_pct") is not None]
    if busy and max(busy) > OTHER_CPU_NOTE:
        bold = "**" if markdown else ""
        parts.append(f"{bold}This run shared the machine{bold}: other processes used {min(busy):.0f}-"
                     f"{max(busy):.0f} % of a core during the steps, so the figures are low and noisy (see "
                     "the steps table); repeat it on a quiet machine.")
    parts.append(render_steps(steps, markdown))
    parts += render_absolute(steps, markdown)
    notes = collect_notes(steps)
    if notes:
        parts.append(heading("Notes", markdown))
        parts.append("\n".join(("- " if markdown else "* ") + n for n in notes))
    return "\n".join(parts) + "\n"


def render_steps(steps: dict[str, Any], markdown: bool) -> str:
    rows = []
    for name, step in steps.items():
        other = step.get("other_cpu_pct")
        busy = "" if other is None or other <= OTHER_CPU_NOTE else " (busy machine: figures low, noisy)"
        rows.append([name, _fmt(step.get("seconds"), ".0f"), _fmt(other, ".0f") + busy,
                     "ERROR: " + step["error"] if "error" in step else "ok"])
    return heading("Steps", markdown) + "\n" + table(
        ["step", "seconds", "other processes' CPU, % of a core", "result"], rows, markdown,
        numeric=lambda i: i == 1)


def render_absolute(steps: dict[str, Any], markdown: bool) -> list[str]:
    out = []

    def d(name: str) -> Any:
        return (steps.get(name) or {}).get("data")

    server = d("server")
    if server:
        cfg = server["config"]
        out.append(heading(f"Server throughput: GET /, {cfg['window']} in flight over {cfg['sockets']} "
                           f"client ports, median of {cfg['repeat']} x {cfg['duration_s']:g} s", markdown))
        rows = []
        for r in server["results"]:
            if "error" in r:
                rows.append([r.get("load", "-"), r["server"], "failed", *["-"] * 8])
                continue
            cpu = r.get("server_cpu_pct")
            per_cpu = r["rps"] / (cpu / 100) if cpu and cpu > 0 else None
            rows.append([r["load"], r["server"], _fmt(r["rps"], ",.0f"), _fmt(per_cpu, ",.0f"),
                         _fmt(r["p50_us"] / 1000, ".3f"),
                         _fmt(r["p99_us"] / 1000, ".3f"), str(r.get("lost", "-")),
                         _fmt(r.get("server_cpu_pct"), ".0f"), _fmt(r.get("loadgen_cpu_pct"), ".0f"),
                         _fmt(r.get("other_cpu_pct"), ".0f"), _fmt(r.get("rss_mb"), ".1f")])
        out.append(table(["load", "server", "req/s", "req per server CPU-s", "p50 ms", "p99 ms", "lost",
                          "server CPU %",
                          "loadgen CPU %", "other CPU %", "peak RSS MB"], rows, markdown,
                         numeric=lambda i: i > 1))
        out.append(f"Pinning: {cfg.get('pinning', '-')}. Generator: {cfg['generator']}. "
                   "req per server CPU-s = req/s / server CPU: the rate per core-second actually used, "
                   "less sensitive to a busy machine than req/s.")
    memory = d("memory")
    if memory:
        out.append(heading("Server memory: VmRSS after N requests from fresh client ports", markdown))
        rows = []
        for r in memory["results"]:
            if "error" in r:
                rows.append([r["server"], "failed: " + _short(r["error"]), "-", "-", "-", "-"])
                continue
            curve = ", ".join(f"{n // 1000:,}k: {mb:.1f}" for n, mb in r["rss_mb"])
            rows.append([r["server"], f"{r['ports']:,}", _fmt(r["rps"], ",.0f"), str(r["lost"]),
                         _fmt(r["ratio"], ".2f"), curve])
        out.append(table(["server", "client ports", "req/s", "lost", "ratio", "VmRSS MiB after N requests"],
                         rows, markdown, numeric=lambda i: i in (1, 2, 3, 4)))
    client = d("client")
    if client:
        cfg = client["config"]
        out.append(heading(f"Client throughput: {cfg['concurrency']} concurrent GETs against "
                           f"coap-server-notls, median of {cfg['repeat']}", markdown))
        rows = []
        for r in client["results"]:
            if "error" in r:
                rows.append([r["library"], r["load"], "failed: " + _short(r["error"]), "-", "-", "-"])
                continue
            rows.append([r["library"], r["load"], _fmt(r["rps"], ",.0f"), str(r["errors"]),
                         _fmt(r["seconds"], ".2f"), _fmt(r.get("client_cpu_pct"), ".0f")])
        out.append(table(["client", "load", "req/s", "errors", "window s", "client CPU %"], rows, markdown,
                         numeric=lambda i: i > 1))
        out.append("aiocoap's message layer keeps one CON per server in flight whatever its NSTART says; "
                   "its NON row has all 64 in flight.")
    observe = d("observe")
    if observe:
        out.append(heading("Observe fan-out: one resource, N observers, NON notifications", markdown))
        rows = []
        for r in observe:
            if "error" in r:
                failed = "failed: " + _short(r["error"])
                rows.append([r["library"], f"{r['observers']:,}", "-", failed, *["-"] * 4])
                continue
            rows.append([r["library"], f"{r['observers']:,}", str(r["rounds"]),
                         _fmt(r.get("server_rate"), ",.0f"), _fmt(r.get("server_cpu_pct"), ".0f"),
                         f"{r['received']:,}/{r['expected']:,}", _fmt(r.get("delivered_rate"), ",.0f"),
                         _fmt(r.get("register_s"), ".1f")])
        out.append(table(["library", "observers", "rounds", "server notif/s", "server CPU %", "received",
                          "delivered/s", "register s"], rows, markdown, numeric=lambda i: i > 0))
    blockwise = d("blockwise")
    if blockwise:
        size = _block_size(steps.get("blockwise"))
        out.append(heading(f"Block-wise GET of {size} (1024-byte blocks)", markdown))
        rows = []
        for r in blockwise:
            if "error" in r:
                rows.append([r["client"], r["server"], "failed: " + _short(r["error"]), "-", "-", "-"])
                continue
            rows.append([r["client"], r["server"], _fmt(r["median"], ".3f"), _fmt(r["min"], ".3f"),
                         _fmt(r["max"], ".3f"), _fmt(r.get("server_cpu_per_get"), ".3f")])
        out.append(table(["client", "server", "median s", "min s", "max s", "server CPU s/GET"], rows,
                         markdown, numeric=lambda i: i > 1))
    oscore = d("oscore")
    if oscore:
        cfg = oscore["config"]
        out.append(heading(f"OSCORE: GET / protected, {cfg['window']} in flight over {cfg['sockets']} "
                           f"client ports, median of {cfg['repeat']} x {cfg['duration_s']:g} s (servers "
                           "interleaved)", markdown))
        rows = []
        for r in oscore["results"]:
            if "error" in r:
                rows.append([r["server"], "failed: " + _short(r["error"]), *["-"] * 7])
                continue
            cpu = r.get("server_cpu_pct")
            per_cpu = r["rps"] / (cpu / 100) if cpu and cpu > 0 else None
            rows.append([r["server"], _fmt(r["rps"], ",.0f"), _fmt(per_cpu, ",.0f"),
                         _fmt(r["p50_us"] / 1000, ".3f"), _fmt(r["p99_us"] / 1000, ".3f"),
                         f"{r.get('unauthorized', 0)}/{r.get('errors', 0)}/{r.get('lost', 0)}",
                         _fmt(cpu, ".0f"), _fmt(r.get("loadgen_cpu_pct"), ".0f"),
                         _fmt(r.get("other_cpu_pct"), ".0f")])
        out.append(table(["server", "req/s", "req per server CPU-s", "p50 ms", "p99 ms", "4.01/errors/lost",
                          "server CPU %", "loadgen CPU %", "other CPU %"], rows, markdown,
                         numeric=lambda i: i > 0))
        out.append("Protected requests are made in advance (coapio's protect_request, one sequence number "
                   "each, in order) and replayed by loadgen.c --datagrams; only 2.04 answers count. Every "
                   "server run starts from a fresh copy of the server's context directory. coapio-plain is "
                   "the same coapio server process (credentials loaded) sent unprotected GET /.")
    codec = d("codec")
    if codec:
        out.append(heading("Codec: µs per message (median of timeit repeats)", markdown))
        rows = [[r["message"], r["operation"], str(r["bytes"]), _fmt(r["coapio_us"], ".2f"),
                 _fmt(r["aiocoap_us"], ".2f"), _fmt(r["ratio"], ".1f", "x")] for r in codec["results"]]
        out.append(table(["message", "operation", "bytes", "coapio µs", "aiocoap µs", "aiocoap / coapio"],
                         rows, markdown, numeric=lambda i: i > 1))
    return out


def _processes(server: str) -> int:
    prefix = "coapio-workers"
    return int(server[len(prefix):]) if server.startswith(prefix) and server[len(prefix):].isdigit() else 1


def collect_notes(steps: dict[str, Any]) -> list[str]:
    notes = []
    for name, step in steps.items():
        if "error" in step:
            notes.append(f"{name}: {step['error']}")
        data = step.get("data")
        if name == "server" and data:
            notes += [w for w in data.get("warnings", []) if not w.startswith("note: ") or "lost" in w]
            busy = [f"{r['server']} {r['load']} {r['other_cpu_pct']:.0f} %" for r in data["results"]
                    if r.get("other_cpu_pct", 0) > OTHER_CPU_NOTE]
            if busy:
                notes.append("server: other processes' CPU during the runs (% of a core): " + ", ".join(busy))
            idle = [f"{r['server']} {r['load']}" for r in data["results"]
                    if "error" not in r and 0 <= r.get("server_cpu_pct", -1) < 80 * _processes(r["server"])]
            if idle:
                notes.append("server: neither the server nor the generator saturated its core in: "
                             + ", ".join(idle) + " (a busy machine, or a window too small)")
        if name == "oscore" and isinstance(data, dict):
            # Errors, warnings (4.01 answers, a saturated generator), lost requests and a file that ran out;
            # not the per-run spread nor the busy-machine notes (the steps table has those).
            notes += [f"oscore: {w}" for w in data.get("warnings", []) if "lost" in w or "ran out" in w
                      or not (w.startswith("note: ") or ": median of " in w)]
        if name == "observe" and isinstance(data, list):
            for r in data:
                if r.get("kernel_drops"):
                    notes.append(f"observe: {r['library']} N={r['observers']:,}: {r['kernel_drops']:,} "
                                 "datagrams dropped by the kernel (full receive buffers, machine-wide)")
                if r.get("received", 0) > r.get("expected", r.get("received", 0)):
                    notes.append(f"observe: {r['library']} N={r['observers']:,}: the clients were handed "
                                 f"{r['received']:,} notifications, more than the {r['expected']:,} the "
                                 "server rendered (duplicates delivered to the application?)")
                if r.get("rounds_timed_out"):
                    notes.append(f"observe: {r['library']} N={r['observers']:,}: "
                                 f"{r['rounds_timed_out']} rounds timed out")
    return notes


# --- main ---------------------------------------------------------------------------------------------------

DOC_BEGIN = "<!-- begin: generated by benchmarks/suite.py -->"
DOC_END = "<!-- end: generated by benchmarks/suite.py -->"


def write_doc(path: Path, markdown: str) -> None:
    """Put the tables between the page's markers; the prose around them is kept as written."""
    text = path.read_text()
    start, end = text.find(DOC_BEGIN), text.find(DOC_END)
    if start < 0 or end < start:
        raise SystemExit(f"suite: {path} has no {DOC_BEGIN} ... {DOC_END} markers")
    path.write_text(text[:start + len(DOC_BEGIN)] + "\n" + markdown.strip("\n") + "\n" + text[end:])
    print(f"suite: wrote the tables into {path}", file=sys.stderr)



def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    parser.add_argument("--only", default=",".join(STEP_NAMES), help=f"steps to run ({','.join(STEP_NAMES)})")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    parser.add_argument("--save", metavar="FILE", help="write the raw results (JSON) to FILE")
    parser.add_argument("--load", metavar="FILE", help="print the tables of a saved run; run nothing")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is not met")
    parser.add_argument("--write-doc", metavar="FILE",
                        help=f"replace the part of FILE between {DOC_BEGIN} and {DOC_END} with the Markdown "
                             "tables (docs/performance.md)")
    args = parser.parse_args(argv)
    if args.load:
        run = json.loads(Path(args.load).read_text())
    else:
        only = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = sorted(set(only) - set(STEP_NAMES))
        if unknown:
            parser.error(f"--only: unknown step {', '.join(unknown)}; choose from {','.join(STEP_NAMES)}")
        t0 = time.monotonic()
        run = {"quick": args.quick, "machine": machine(), "steps": {}}
        if not run["machine"]["cc"]:
            print("suite: no C compiler (cc): the server and memory steps cannot build loadgen.c",
                  file=sys.stderr)
        for step in STEPS:
            if step.name in only:
                run["steps"][step.name] = run_step(step, args.quick)
        run["seconds"] = time.monotonic() - t0
        if args.save:
            Path(args.save).write_text(json.dumps(run, indent=1))
    print(render(run, args.markdown), end="")
    if args.write_doc:
        write_doc(Path(args.write_doc), render(run, markdown=True))
    failed = any("data" not in step for step in run["steps"].values())
    unmet = any(t.status() == "NOT MET" for t in targets(run))
    return 1 if failed or (args.strict and unmet) else 0


if __name__ == "__main__":
    sys.exit(main())
