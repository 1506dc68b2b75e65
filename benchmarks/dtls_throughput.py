"""DTLS (coaps://, PSK) server throughput: coapio against libcoap's ``coap-server-openssl``, in one run.

Run as ``python benchmarks/dtls_throughput.py [--duration 5] [--repeat 2]``.

Two loads, both from ``benchmarks/dtlsload.c`` (OpenSSL, compiled at run time with ``cc -O2 -lssl
-lcrypto``: a C compiler and the OpenSSL headers are needed):

* **requests**: ``--sessions`` (8) DTLS sessions are handshaken first, then ``--window`` (16) CON
  ``GET /`` requests stay in flight over them, each answer replaced at once by the next request;
  requests/s after the handshake, p50/p99 latency, lost requests (no retransmission).
* **handshakes**: ``--concurrent`` (8) clients run full handshakes back to back, each from a fresh port
  (cookie exchange included), ending each with close_notify; handshakes/s.

Both servers answer ``GET /`` with 136 bytes (libcoap's index text; coapio sends a payload of that
size), use the PSK identity ``client1``, and negotiate TLS_PSK_WITH_AES_128_CCM_8 (RFC 7252's mandatory
PSK suite; the generator offers only it). Each server runs pinned to CPU 0, the generator to CPU 1
(``taskset``, when it exists and there are two CPUs); the server's CPU use over the window is reported.
Runs of the two servers are interleaved (``--repeat``), and the best of the repeats is reported for
each, with coapio's figure as a fraction of libcoap's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _servers  # the benchmarks directory is not a package

IDENTITY, KEY = "client1", "secret-key"
SOURCE = Path(__file__).resolve().parent / "dtlsload.c"


def serve_coapio(port: int) -> None:
    """The coapio server (run in the child process): PSK identity ``client1``, ``GET /`` answered inline."""
    import anyio

    import coapio
    from coapio import Message, Resource, Site
    from coapio.protocol.dtls import DtlsCredentials

    class Hello(Resource):
        def render_get(self, request: Message) -> Message:
            return Message(payload=_servers.PAYLOAD)

    site = Site(well_known_core=False)
    site.add("", Hello())

    async def main() -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            credentials = DtlsCredentials(accepted={IDENTITY.encode(): KEY.encode()})
            async with coapio.Context(bind=[f"coaps://{_servers.HOST}:{port}"], site=site, dtls=credentials):
                print("ready", flush=True)
                async for _ in signals:
                    break

    anyio.run(main, backend="trio")


def build(directory: str) -> str:
    binary = os.path.join(directory, "dtlsload")
    subprocess.run(["cc", "-O2", "-o", binary, str(SOURCE), "-lssl", "-lcrypto"], check=True)
    return binary


def start(name: str, port: int, cpu: int | None) -> subprocess.Popen[bytes]:
    if name == "libcoap":
        exe = shutil.which("coap-server-openssl")
        if exe is None:
            raise SystemExit("coap-server-openssl (Debian package libcoap3-bin) is not on PATH")
        command = [exe, "-A", _servers.HOST, "-p", str(port - 1), "-k", KEY]  # DTLS on -p's port + 1
    else:
        command = [sys.executable, os.path.abspath(__file__), "--serve", str(port)]
    return subprocess.Popen(_servers.pinned(command, cpu), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def wait_ready(binary: str, port: int, proc: subprocess.Popen[bytes]) -> None:
    """Until one handshake with the server succeeds (bounded)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode}")
        result = run_load(binary, port, None, ["-m", "handshakes", "-c", "1", "-d", "0.3", "-W", "0"])
        if result and result["handshakes"] > 0:
            return
    raise SystemExit("the server never completed a handshake")


def run_load(binary: str, port: int, pid: int | None, args: list[str], cpu: int | None = None) -> Any:
    command = [binary, *args, "-u", IDENTITY, "-K", KEY, *(["-P", str(pid)] if pid else []),
               _servers.HOST, str(port)]
    run = subprocess.run(_servers.pinned(command, cpu), capture_output=True, timeout=120, check=False)
    if run.returncode != 0:
        return None
    return json.loads(run.stdout)


def free_port_pair() -> int:
    while True:
        port = _servers.free_udp_port()
        try:
            with __import__("socket").socket(2, 2) as s:  # AF_INET, SOCK_DGRAM
                s.bind((_servers.HOST, port - 1))
        except OSError:
            continue
        return port


def measure(binary: str, name: str, args: argparse.Namespace, pin: bool) -> dict[str, Any]:
    port = free_port_pair()
    two = pin and (os.cpu_count() or 1) >= 2
    proc = start(name, port, 0 if two else None)
    try:
        wait_ready(binary, port, proc)
        requests = run_load(binary, port, proc.pid,
                            ["-m", "requests", "-k", str(args.sessions), "-w", str(args.window),
                             "-d", str(args.duration), "-W", str(args.warmup)], 1 if two else None)
        handshakes = run_load(binary, port, proc.pid,
                              ["-m", "handshakes", "-c", str(args.concurrent), "-d", str(args.duration),
                               "-W", str(args.warmup)], 1 if two else None)
    finally:
        _servers.stop(proc)
    return {"requests": requests, "handshakes": handshakes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per load (5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds (1)")
    parser.add_argument("--sessions", type=int, default=8, help="DTLS sessions of the request load (8)")
    parser.add_argument("--window", type=int, default=16, help="requests in flight (16)")
    parser.add_argument("--concurrent", type=int, default=8, help="handshakes in progress at once (8)")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved runs per server; the best counts")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes with taskset")
    args = parser.parse_args()
    if args.serve is not None:
        serve_coapio(args.serve)
        return
    results: dict[str, list[dict[str, Any]]] = {"coapio": [], "libcoap": []}
    with tempfile.TemporaryDirectory() as directory:
        binary = build(directory)
        for _ in range(args.repeat):
            for name in ("coapio", "libcoap"):
                print(f"measuring {name} ...", file=sys.stderr, flush=True)
                results[name].append(measure(binary, name, args, not args.no_pin))

    def best(name: str, load: str, key: str) -> dict[str, Any]:
        runs = [r[load] for r in results[name] if r[load]]
        return max(runs, key=lambda r: r[key]) if runs else {}

    table = {name: {"requests": best(name, "requests", "rps"), "handshakes": best(name, "handshakes", "hps")}
             for name in results}
    if args.json:
        print(json.dumps(table))  # one line: what benchmarks/suite.py reads
        return
    print(f"DTLS PSK server throughput: GET /, {args.window} in flight over {args.sessions} sessions; "
          f"handshakes from {args.concurrent} clients; {args.duration:g} s measured, best of {args.repeat}")
    print(f"{'server':8} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'lost':>5} {'CPU %':>6}   "
          f"{'hs/s':>7} {'CPU %':>6}  cipher")
    for name in ("coapio", "libcoap"):
        r, h = table[name]["requests"], table[name]["handshakes"]
        print(f"{name:8} {r.get('rps', math.nan):8,.0f} {r.get('p50_ms', math.nan):7.3f} "
              f"{r.get('p99_ms', math.nan):7.3f} {r.get('lost', 0):5} {r.get('server_cpu', math.nan):6.0f}   "
              f"{h.get('hps', math.nan):7,.0f} {h.get('server_cpu', math.nan):6.0f}  {r.get('cipher', '?')}")
    c, lib = table["coapio"], table["libcoap"]
    if c["requests"] and lib["requests"] and c["handshakes"] and lib["handshakes"]:
        print(f"coapio / libcoap: requests {c['requests']['rps'] / lib['requests']['rps']:.2f}x, "
              f"handshakes {c['handshakes']['hps'] / lib['handshakes']['hps']:.2f}x")


if __name__ == "__main__":
    main()
