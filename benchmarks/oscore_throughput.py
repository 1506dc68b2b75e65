"""OSCORE (RFC 8613): server requests/s of protected GETs, coapio against aiocoap's OSCORE server and
against the same coapio server unprotected, in one run (issue 12's "Speed": coapio ≥ 10x aiocoap).

    python benchmarks/oscore_throughput.py                  # 3 rounds of 5 s per server: about 1.5 minutes
    python benchmarks/oscore_throughput.py --json           # one JSON object (what benchmarks/suite.py reads)
    python benchmarks/oscore_throughput.py --servers coapio-oscore,aiocoap-oscore,coapio-plain,aiocoap-plain

Servers (each its own process on 127.0.0.1, pinned to CPU 0 with the generator on CPU 1; one resource
``/`` whose GET answers :data:`_servers.PAYLOAD`, 136 bytes, as in ``server_throughput.py``):

``coapio-oscore``
    ``coapio.Context(bind=..., site=site, credentials=FILE)`` under trio, FILE naming one server context
    directory (``{":client": {"oscore": {"contextfile": "server/"}}}``, what ``coapio-server
    --credentials FILE`` loads); the resource is a plain ``def render_get`` (the inline fast path).
    Protected GET / requests.
``aiocoap-oscore``
    aiocoap's server with the equivalent resource (``async def render_get``) wrapped in
    ``aiocoap.oscore_sitewrapper.OscoreSiteWrapper`` with the same credentials (what
    ``aiocoap-fileserver``/``aiocoap.cli.common`` do for ``--server-credentials``). Protected GET / requests.
``coapio-plain``
    The ``coapio-oscore`` server process, the same credentials loaded, sent unprotected GET / requests:
    the cost of OSCORE is the difference between the two rows.
``aiocoap-plain`` (not by default)
    The ``aiocoap-oscore`` server sent unprotected GET / requests.

The load: ``loadgen.c`` (built here with cc), a closed loop of ``--window`` CON requests in flight over
``--sockets`` client ports, as in ``server_throughput.py``. The protected requests are made in advance
(coapio's sans-IO ``protect_request`` with the client's context: one Sender Sequence Number each, in
increasing order; outer code POST with the OSCORE option, the ciphertext of ``GET /`` as payload) and
written to a file that ``loadgen --datagrams`` sends once each, in order, rewriting only the message ID and
the token, which OSCORE does not protect. So the generator spends the same few µs per request on a
protected request as on a plain one, and the servers' replay windows (32) see numbers at most ``--window``
out of order. Every server run starts from a fresh copy of the server context directory (no
``sequence.json``: keys never used, an empty replay window), so the same file is valid against every
run; no number is sent twice to one server state. A request counts when it is answered with 2.04 (the
outer code of a protected 2.05); unprotected 4.01 answers (a replay or an unknown context) are counted
apart and must be 0. After each load one more protected GET / (numbered after the file's) is sent and its
response decrypted with the client context: it must be 2.05 with the resource's payload, so the 2.04s
are the resource's answers, not protected errors. The file holds ``--max-rate`` times (warm-up +
duration) requests; if a server is faster, its window ends with the file (``window s`` shows it).

Rounds interleave the servers (coapio-oscore, aiocoap-oscore, coapio-plain, ...; ``--repeat`` rounds) and
each server's row is its median run: drifts of a shared machine hit all servers alike.

Run one of the servers in the foreground (what the benchmark starts; ``--cprofile`` for a profile)::

    python benchmarks/oscore_throughput.py --serve coapio --port 5683 --credentials creds.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _servers
import server_throughput

HERE = Path(__file__).resolve().parent

SERVERS = ("coapio-oscore", "aiocoap-oscore", "coapio-plain", "aiocoap-plain")
DEFAULT_SERVERS = ("coapio-oscore", "aiocoap-oscore", "coapio-plain")

#: The benchmark's context pair (fixed keys: a benchmark, not a deployment). The client's Sender ID is
#: 0x01, so every request carries kid 01; the server's is empty.
SECRET = "0102030405060708090a0b0c0d0e0f10"
SALT = "9e7ca92223786340"
CREDENTIALS_KEY = ":client"


# --- the servers (run in the child process) -------------------------------------------------------------


def serve_coapio(port: int, credentials: str | None, seconds: float | None) -> None:
    """The ``coapio`` server of ``_servers.run_coapio`` with ``credentials`` (a credentials file) added."""
    import trio

    import coapio
    from coapio import Message, Resource, Site

    class Hello(Resource):
        def render_get(self, request: Message) -> Message:  # plain def: the inline fast path
            return Message(payload=_servers.PAYLOAD)

    site = Site(well_known_core=False)
    site.add("", Hello())

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with coapio.Context(bind=[(_servers.HOST, port)], site=site, credentials=credentials):
                with trio.move_on_after(math.inf if seconds is None else seconds):
                    async for _ in signals:
                        break

    trio.run(main)


def serve_aiocoap(port: int, credentials: str | None, seconds: float | None) -> None:
    """aiocoap's server with ``_servers.run_aiocoap``'s resource, wrapped in OscoreSiteWrapper when
    ``credentials`` is given (as ``aiocoap.cli.common.server_context_from_arguments`` does)."""
    import asyncio

    import aiocoap
    import aiocoap.resource

    class Hello(aiocoap.resource.Resource):  # type: ignore[misc]
        async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
            return aiocoap.Message(payload=_servers.PAYLOAD)

    site: Any = aiocoap.resource.Site()
    site.add_resource((), Hello())
    server_credentials = None
    if credentials is not None:
        import aiocoap.credentials
        from aiocoap.oscore_sitewrapper import OscoreSiteWrapper

        server_credentials = aiocoap.credentials.CredentialsMap()
        with open(credentials, "rb") as f:
            server_credentials.load_from_dict(json.load(f))
        site = OscoreSiteWrapper(site, server_credentials)

    asyncio.run(_servers.serve_aiocoap(site, port, seconds, server_credentials=server_credentials))


def _serve_main(args: argparse.Namespace) -> int:
    def run() -> None:
        serve = serve_coapio if args.serve == "coapio" else serve_aiocoap
        serve(args.port, args.credentials, args.seconds)

    if args.cprofile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        try:
            run()
        finally:
            profiler.disable()
            profiler.dump_stats(args.cprofile)
    else:
        run()
    return 0


# --- contexts and protected requests ------------------------------------------------------------------


def make_contexts(directory: Path) -> tuple[Path, Path]:
    """A client and a server context directory in aiocoap's format (keys in settings.json, the secret in
    secret.json; no sequence.json: keys never used)."""
    dirs = []
    for role, sender, recipient in (("client", "01", ""), ("server", "", "01")):
        d = directory / role
        d.mkdir(parents=True)
        (d / "settings.json").write_text(json.dumps(
            {"sender-id_hex": sender, "recipient-id_hex": recipient, "salt_hex": SALT}))
        (d / "secret.json").write_text(json.dumps({"secret_hex": SECRET}))
        dirs.append(d)
    return dirs[0], dirs[1]


def fresh_server_credentials(template: Path, directory: Path) -> Path:
    """A fresh copy of the server context directory and a credentials file naming it: a server started
    with it has an empty replay window, whatever earlier runs sent."""
    context = directory / "server"
    shutil.copytree(template, context)
    path = directory / "credentials.json"
    path.write_text(json.dumps({CREDENTIALS_KEY: {"oscore": {"contextfile": str(context)}}}))
    return path


class Check:
    """One more protected GET /, numbered after the file's, sent after each load: its response must
    decrypt to 2.05 with the resource's payload (the outer 2.04 alone would also hide a protected 4.04)."""

    def __init__(self, datagram: bytes, binding: Any):
        self.datagram, self.binding = datagram, binding

    def verify(self, port: int, timeout: float = 2.0) -> None:
        import socket

        from coapio.protocol.codes import Code
        from coapio.protocol.message import Message
        from coapio.protocol.oscore import unprotect_response

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.sendto(self.datagram, (_servers.HOST, port))
            while True:
                response = Message.decode(sock.recv(2048))
                if response.token == self.datagram[4:12]:
                    break
        plain = unprotect_response(self.binding, response)
        if plain.code is not Code.CONTENT or plain.payload != _servers.PAYLOAD:
            raise RuntimeError(f"the protected check request was answered {plain.code} "
                               f"({len(plain.payload)} bytes), not 2.05 with the resource's payload")


def write_protected_requests(client_dir: Path, count: int, path: Path) -> tuple[dict[str, Any], Check]:
    """``count`` protected GET / requests (CON, message ID 0, an 8-byte zero token: the generator rewrites
    those) with sequence numbers 0, 1, 2, ... in a file of (2-byte length, datagram) records; and the
    check request (number ``count``)."""
    from coapio.protocol.codes import Code, Type
    from coapio.protocol.message import Message
    from coapio.protocol.oscore import load_context_directory, protect_request

    # persist=False: numbers from 0 in memory; the servers each start from fresh state (see the docstring).
    context = load_context_directory(str(client_dir), persist=False)
    t0 = time.perf_counter()
    sizes = set()
    with open(path, "wb") as f:
        chunk = []
        for _ in range(count):
            outer, _binding = protect_request(context, Message(Type.CON, Code.GET, 0, bytes(8)))
            data = outer.encode()
            sizes.add(len(data))
            chunk.append(struct.pack(">H", len(data)) + data)
            if len(chunk) >= 4096:
                f.write(b"".join(chunk))
                chunk.clear()
        f.write(b"".join(chunk))
    outer, binding = protect_request(context, Message(Type.CON, Code.GET, 0x5EC5, b"oscheck!"))
    context.close()
    made = {"requests": count, "seconds": time.perf_counter() - t0, "bytes": sorted(sizes)}
    return made, Check(outer.encode(), binding)


# --- one run ------------------------------------------------------------------------------------------


def measure(name: str, exe: Path, datagrams: Path, check: Check, template: Path, tmp: Path, run_no: int,
            args: argparse.Namespace, pin: bool) -> dict[str, Any]:
    """Start ``name`` with fresh context state, drive it, stop it: one run's result."""
    library, mode = name.split("-")
    workdir = tmp / f"run{run_no}-{name}"
    workdir.mkdir()
    credentials = fresh_server_credentials(template, workdir)
    port = _servers.free_udp_port()
    server_cpu, gen_cpu = (0, 1) if pin else (None, None)
    command = [sys.executable, str(HERE / "oscore_throughput.py"), "--serve", library, "--port", str(port),
               "--credentials", str(credentials)]
    log = tempfile.TemporaryFile()  # noqa: SIM115  (read by server_log on failure; closed by close_logs)
    _servers._logs[port] = log
    proc = subprocess.Popen(_servers.pinned(command, server_cpu), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    try:
        _servers.wait_ready(proc, port)  # an unprotected GET /: it uses no sequence number
        cmd = [str(exe), "-w", str(args.window), "-k", str(args.sockets), "-d", str(args.duration),
               "-W", str(args.warmup), "-T", str(args.timeout_ms), "-P", str(proc.pid)]
        if mode == "oscore":
            cmd += ["--datagrams", str(datagrams)]
        cmd += [_servers.HOST, str(port)]
        result: dict[str, Any] = {}
        with server_throughput.other_cpu(result, [proc.pid]):
            out = server_throughput._run_json(_servers.pinned(cmd, gen_cpu),
                                              args.warmup + args.duration + args.timeout_ms / 1000 + 30)
        out.update(result)
        out["rss_mb"] = _servers.max_rss_mb(proc.pid)
        if mode == "oscore":
            check.verify(port)  # after the load: its number is above every number the file used
            out["verified"] = True
        if proc.poll() is not None:
            raise RuntimeError(f"{name} server died during the run:\n{_servers.server_log(port)}")
    finally:
        _servers.stop(proc)
    out["server"] = name
    if out.get("ok", 0) == 0:
        raise RuntimeError(f"no request answered with {out.get('ok_code', '?')} (errors "
                           f"{out.get('errors')}, 4.01 {out.get('unauthorized')}, lost {out.get('lost')})")
    return out


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    out = {}
    for mine, theirs in (("coapio-oscore", "aiocoap-oscore"), ("coapio-oscore", "coapio-plain"),
                         ("aiocoap-oscore", "aiocoap-plain")):
        a, b = results.get(mine), results.get(theirs)
        if a and b and "error" not in a and "error" not in b and b.get("rps"):
            out[f"{mine}/{theirs}"] = a["rps"] / b["rps"]
    return out


def warnings_for(results: Sequence[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    notes = []
    for r in results:
        name = r["server"]
        if "error" in r:
            notes.append(f"ERROR: {name}: {r['error']}")
            continue
        if r.get("unauthorized") or r.get("errors"):
            notes.append(f"WARNING: {name}: {r.get('unauthorized', 0)} unprotected 4.01 (replay/refusal) and "
                         f"{r.get('errors', 0)} other error answers in the window")
        gen, srv = r.get("loadgen_cpu_pct", 0.0), r.get("server_cpu_pct", -1.0)
        if gen > server_throughput.GENERATOR_CPU_WARNING:
            notes.append(f"WARNING: {name}: the load generator used {gen:.0f} % of a core: its figure may be "
                         "limited by the generator")
        elif 0 <= srv < 80:
            notes.append(f"note: {name}: neither the server ({srv:.0f} %) nor the generator ({gen:.0f} %) "
                         "used a whole core: a busy machine, or a window too small")
        if r.get("datagrams") and r.get("duration_s", args.duration) < 0.95 * args.duration:
            notes.append(f"note: {name}: the {r['datagrams']:,} protected requests ran out after "
                         f"{r['duration_s']:.2f} s of the {args.duration:g} s window (raise --max-rate)")
        if r.get("other_cpu_pct", 0.0) > server_throughput.OTHER_CPU_NOTE:
            notes.append(f"note: {name}: other processes used {r['other_cpu_pct']:.0f} % of a core during "
                         "the run (a shared machine): figures may be low and noisy")
        if r.get("lost"):
            notes.append(f"note: {name}: {r['lost']} requests lost (unanswered after the timeout)")
        if r.get("runs", 1) > 1:
            notes.append(f"{name}: median of {r['runs']} runs; req/s of each: "
                         + ", ".join(f"{x:,.0f}" for x in r["rps_all"]))
    return notes


def fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, int | float) and value < 0):
        return "-"
    return format(value, spec)


def print_table(summary: dict[str, Any]) -> None:
    cfg = summary["config"]
    print(f"OSCORE server throughput: GET /, {cfg['window']} CON in flight over {cfg['sockets']} client "
          f"ports, {cfg['duration_s']:g} s measured after {cfg['warmup_s']:g} s warm-up, median of "
          f"{cfg['repeat']} interleaved runs")
    print(f"generator: {cfg['generator']}; {cfg['pinning']}; {cfg['python_implementation']} {cfg['python']}")
    header = ["server", "req/s", "req/CPU-s", "p50 ms", "p99 ms", "ok code", "4.01", "errors", "lost",
              "server CPU %", "loadgen CPU %", "other CPU %", "window s", "RSS MB", "req B", "resp B"]
    rows = [header]
    for r in summary["results"]:
        if "error" in r:
            rows.append([r["server"], "failed", *["-"] * (len(header) - 2)])
            continue
        cpu = r.get("server_cpu_pct")
        per_cpu = r["rps"] / (cpu / 100) if cpu and cpu > 0 else None
        rows.append([
            r["server"], fmt(r["rps"], ",.0f"), fmt(per_cpu, ",.0f"),
            fmt(r["p50_us"] / 1000, ".3f"), fmt(r["p99_us"] / 1000, ".3f"),
            r.get("ok_code", "2.05"), str(r.get("unauthorized", 0)), str(r.get("errors", 0)),
            str(r.get("lost", 0)), fmt(r.get("server_cpu_pct"), ".0f"), fmt(r.get("loadgen_cpu_pct"), ".0f"),
            fmt(r.get("other_cpu_pct"), ".0f"), fmt(r.get("duration_s"), ".2f"), fmt(r.get("rss_mb"), ".1f"),
            str(r.get("request_bytes", "-")), fmt(r.get("response_bytes"), "d"),
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for n, row in enumerate(rows):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                        enumerate(zip(row, widths, strict=True))))
        if n == 0:
            print("  ".join("-" * w for w in widths))
    targets = {"coapio-oscore/aiocoap-oscore": " (target >= 10x)"}
    for label, value in summary["ratios"].items():
        print(f"{label}: {value:.2f}x{targets.get(label, '')}")
    gen = summary["datagrams"]
    print(f"protected requests: {gen['requests']:,} made in {gen['seconds']:.1f} s with coapio's "
          f"protect_request ({'/'.join(map(str, gen['bytes']))} bytes each); req/CPU-s = req/s / server CPU "
          "(the rate per core-second the server really had: less sensitive to a busy machine)")
    for note in summary["warnings"]:
        print(note)


# --- main ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per run (5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds, not measured (1)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="interleaved rounds; each row is the median (3)")
    parser.add_argument("--window", type=int, default=16, help="requests in flight (16; at most 32, the "
                        "servers' replay window)")
    parser.add_argument("--sockets", type=int, default=8, help="client ports the window is spread over (8)")
    parser.add_argument("--timeout-ms", type=int, default=1000, help="a request unanswered this long is lost")
    parser.add_argument("--servers", default=",".join(DEFAULT_SERVERS),
                        help=f"comma-separated, from {','.join(SERVERS)} ({','.join(DEFAULT_SERVERS)})")
    parser.add_argument("--max-rate", type=float, default=20000,
                        help="protected requests made per second of warm-up + duration (20000)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes with taskset")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    serve = parser.add_argument_group("serving (what the benchmark runs in its child processes)")
    serve.add_argument("--serve", choices=("coapio", "aiocoap"), help="run this server in the foreground")
    serve.add_argument("--port", type=int, help="with --serve")
    serve.add_argument("--credentials", help="with --serve: a credentials file (none: plain CoAP only)")
    serve.add_argument("--seconds", type=float, help="with --serve: stop after this many seconds")
    serve.add_argument("--cprofile", metavar="FILE", help="with --serve: profile, dump the stats to FILE")
    args = parser.parse_args(argv)
    if args.serve:
        if args.port is None:
            parser.error("--serve needs --port")
        return args
    args.server_names = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = [s for s in args.server_names if s not in SERVERS]
    if unknown or not args.server_names:
        parser.error(f"--servers: choose from {','.join(SERVERS)}")
    if (args.duration <= 0 or args.warmup < 0 or args.repeat < 1 or args.sockets < 1 or args.max_rate <= 0
            or not 1 <= args.window <= 32):
        parser.error("--duration, --repeat, --sockets, --max-rate must be positive; --window 1..32")
    return args


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the servers


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        return _serve_main(args)
    signal.signal(signal.SIGTERM, _terminate)
    pin = not args.no_pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    pinning = "server pinned to CPU 0, generator to CPU 1 (taskset)" if pin else "not pinned"
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in args.server_names}
    with tempfile.TemporaryDirectory(prefix="coapio-oscore-bench-") as tmp_name:
        tmp = Path(tmp_name)
        exe = server_throughput.build_loadgen(tmp)
        client_dir, server_template = make_contexts(tmp / "contexts")
        count = math.ceil(args.max_rate * (args.warmup + args.duration))
        datagrams = tmp / "protected-requests.bin"
        made, check = write_protected_requests(client_dir, count, datagrams)
        request_bytes = "/".join(map(str, made["bytes"]))
        run_no = 0
        try:
            for round_ in range(args.repeat):  # rounds interleave the servers: drifts hit all alike
                for name in args.server_names:
                    if runs[name] and "error" in runs[name][-1]:
                        continue
                    if not args.json:
                        print(f"measuring {name} ({round_ + 1}/{args.repeat}) ...", file=sys.stderr,
                              flush=True)
                    run_no += 1
                    try:
                        r = measure(name, exe, datagrams, check, server_template, tmp, run_no, args, pin)
                        r["request_bytes"] = request_bytes if name.endswith("-oscore") else "12"
                        runs[name].append(r)
                    except Exception as e:  # one server failing must not hide the others
                        runs[name].append({"server": name, "error": f"{type(e).__name__}: {e}"})
        finally:
            _servers.close_logs()
    results = [server_throughput.median_run(runs[name]) for name in args.server_names]
    summary = {
        "config": {
            "servers": args.server_names, "window": args.window, "sockets": args.sockets,
            "duration_s": args.duration, "warmup_s": args.warmup, "timeout_ms": args.timeout_ms,
            "repeat": args.repeat, "pinned": pin, "pinning": pinning,
            "generator": "benchmarks/loadgen.c (cc -O2), protected requests replayed with --datagrams",
            "python": platform.python_version(), "python_implementation": platform.python_implementation(),
            "cpus": os.cpu_count(),
        },
        "datagrams": made,
        "results": results,
        "ratios": ratios({r["server"]: r for r in results}),
        "warnings": warnings_for(results, args),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print_table(summary)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
