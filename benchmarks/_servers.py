"""The servers that ``server_throughput.py`` measures, and how to start, probe and stop them.

Run as a script to start one Python server in the foreground (the benchmark does this in a child process,
pinned to one core)::

    python benchmarks/_servers.py coapio  --port 5683
    python benchmarks/_servers.py coapio  --port 5683 --backend asyncio
    python benchmarks/_servers.py coapio  --port 5683 --reuse-port      # one of N SO_REUSEPORT workers
    python benchmarks/_servers.py aiocoap --port 5683
    python benchmarks/_servers.py coapio  --port 5683 --cprofile /tmp/coapio.prof --seconds 8

Every server answers GET ``/`` with :data:`PAYLOAD` (136 bytes, the size of libcoap's ``coap-server``
index text, so that the three servers send datagrams of about the same size) on 127.0.0.1 only.

The benchmark's server names: ``coapio`` (on trio), ``coapio-asyncio`` (the same site and Context under
``anyio.run(..., backend="asyncio")``), ``aiocoap``, ``libcoap`` (``coap-server-notls``), and
``coapio-workersN``: N processes of the ``coapio`` server, each with ``Context(reuse_port=True)``, the
mechanism ``coapio-server --workers N`` uses (see :func:`start_workers`).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import IO, Any

#: The size of libcoap 4.3.1's index text (what ``coap-server`` answers on ``/``).
PAYLOAD_SIZE = 136
PAYLOAD = (b"coapio benchmark resource; its payload is as long as libcoap's index text. " * 2)[:PAYLOAD_SIZE]

HOST = "127.0.0.1"
SERVERS = ("coapio", "coapio-asyncio", "aiocoap", "libcoap")
WORKERS_PREFIX = "coapio-workers"


def worker_count(name: str) -> int | None:
    """N for a server named ``coapio-workersN``, else None."""
    if name.startswith(WORKERS_PREFIX) and name[len(WORKERS_PREFIX):].isdigit():
        return int(name[len(WORKERS_PREFIX):])
    return None


# --- the Python servers (run in the child process) ----------------------------------------------------


def run_coapio(port: int, seconds: float | None = None, *, backend: str = "trio", reuse_port: bool = False,
               announce: bool = False, tcp: bool = False) -> None:
    """Serve until SIGTERM/SIGINT (or for ``seconds``), on trio or on asyncio (coapio is written against
    anyio, so the same code runs on both). ``announce`` prints ``ready`` once the socket is bound, which
    is how the benchmark knows every SO_REUSEPORT worker has joined the port's group."""
    import anyio

    import coapio
    from coapio import Message, Resource, Site

    class Hello(Resource):
        def render_get(self, request: Message) -> Message:  # plain def: the inline fast path
            return Message(payload=PAYLOAD)

    site = Site(well_known_core=False)
    site.add("", Hello())

    async def main() -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            bind: list[Any] = [f"coap+tcp://{HOST}:{port}"] if tcp else [(HOST, port)]
            async with coapio.Context(bind=bind, site=site, reuse_port=reuse_port):
                if announce:
                    print("ready", flush=True)
                with anyio.move_on_after(math.inf if seconds is None else seconds):
                    async for _ in signals:
                        break

    anyio.run(main, backend=backend)


def run_aiocoap(port: int, seconds: float | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or for ``seconds``)."""
    import asyncio

    import aiocoap
    import aiocoap.resource

    class Hello(aiocoap.resource.Resource):  # type: ignore[misc]
        async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
            return aiocoap.Message(payload=PAYLOAD)

    site = aiocoap.resource.Site()
    site.add_resource((), Hello())
    asyncio.run(serve_aiocoap(site, port, seconds))


async def serve_aiocoap(site: Any, port: int, seconds: float | None = None, **context: Any) -> None:
    """Serve an aiocoap site on HOST:port until SIGTERM/SIGINT (or for ``seconds``); ``context`` goes to
    ``create_server_context`` (e.g. ``server_credentials``)."""
    import asyncio

    import aiocoap

    ctx = await aiocoap.Context.create_server_context(site, bind=(HOST, port), **context)
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def finish() -> None:
        if not done.done():
            done.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, finish)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done, seconds)
    await ctx.shutdown()


def _serve_main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("server", choices=("coapio", "aiocoap"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cprofile", metavar="FILE", help="profile with cProfile, dump stats to FILE")
    parser.add_argument("--seconds", type=float, help="stop after this many seconds")
    parser.add_argument("--backend", choices=("trio", "asyncio"), default="trio", help="coapio only")
    parser.add_argument("--reuse-port", action="store_true", help="coapio only: SO_REUSEPORT")
    parser.add_argument("--announce", action="store_true", help="coapio only: print 'ready' when bound")
    parser.add_argument("--tcp", action="store_true", help="coapio only: serve CoAP over TCP (RFC 8323)")
    args = parser.parse_args(argv)

    def run(port: int, seconds: float | None) -> None:
        if args.server == "aiocoap":
            run_aiocoap(port, seconds)
        else:
            run_coapio(port, seconds, backend=args.backend, reuse_port=args.reuse_port,
                       announce=args.announce, tcp=args.tcp)
    if args.cprofile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        try:
            run(args.port, args.seconds)
        finally:
            profiler.disable()
            profiler.dump_stats(args.cprofile)
    else:
        run(args.port, args.seconds)


# --- starting, probing and stopping (used by the benchmark) ---------------------------------------------


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that was free a moment ago (the server binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def server_command(name: str, port: int) -> list[str]:
    if name == "libcoap":
        exe = shutil.which("coap-server-notls") or shutil.which("coap-server")
        if exe is None:
            raise FileNotFoundError("libcoap's coap-server-notls (or coap-server) is not on PATH")
        return [exe, "-A", HOST, "-p", str(port)]
    me = [sys.executable, os.path.abspath(__file__)]
    if name in ("coapio", "aiocoap"):
        return [*me, name, "--port", str(port)]
    if name == "coapio-asyncio":
        return [*me, "coapio", "--port", str(port), "--backend", "asyncio"]
    raise ValueError(f"unknown server {name!r} (choose from {', '.join(SERVERS)}, {WORKERS_PREFIX}N)")


def pinned(command: list[str], cpu: int | None) -> list[str]:
    """``command`` under ``taskset -c cpu`` when taskset exists (taskset execs it: same PID)."""
    taskset = shutil.which("taskset")
    if cpu is None or taskset is None:
        return command
    return [taskset, "-c", str(cpu), *command]


def start_server(name: str, port: int, cpu: int | None) -> subprocess.Popen[bytes]:
    """Start server ``name`` on ``port``; its stderr goes to a temporary file (a pipe could fill up)."""
    log = tempfile.TemporaryFile()  # noqa: SIM115  (kept open for server_log(); see close_logs())
    try:
        return subprocess.Popen(
            pinned(server_command(name, port), cpu),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            start_new_session=True,  # a terminal's Ctrl-C goes to the benchmark, which stops us in order
        )
    finally:
        _logs[port] = log


_logs: dict[int, IO[bytes]] = {}


def start_workers(count: int, port: int, cpus: Sequence[int | None], *,
                  timeout: float = 15.0) -> list[subprocess.Popen[bytes]]:
    """``count`` coapio server processes sharing ``port`` with SO_REUSEPORT, worker i on ``cpus[i]``.

    This is what ``coapio-server --workers N`` does (one ``Context(reuse_port=True)`` per process; the
    kernel hashes each client address to one of them), with the benchmark's site instead of the demo's,
    so that one worker is the ``coapio`` row's server. Returns once every worker has bound the port (each
    prints ``ready``): until then the kernel would hash some clients to a group that lacks a worker.
    """
    import select

    log = tempfile.TemporaryFile()  # noqa: SIM115  (kept open for server_log(); see close_logs())
    _logs[port] = log
    command = [sys.executable, os.path.abspath(__file__), "coapio", "--port", str(port), "--reuse-port",
               "--announce"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(count):
            procs.append(subprocess.Popen(
                pinned(command, cpus[i]), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                start_new_session=True,
            ))
        deadline = time.monotonic() + timeout
        for proc in procs:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            line = proc.stdout.readline() if ready else b""
            if line.strip() != b"ready":
                raise RuntimeError(f"a worker did not start (status {proc.poll()}):\n{server_log(port)}")
            proc.stdout.close()  # it prints nothing more
        return procs
    except BaseException:
        for proc in procs:
            stop(proc)
        raise


def close_logs() -> None:
    while _logs:
        _logs.popitem()[1].close()


def server_log(port: int) -> str:
    log = _logs.get(port)
    if log is None:
        return ""
    log.seek(0)
    return log.read()[-4000:].decode(errors="replace")


def probe(port: int, *, timeout: float = 0.3) -> bool:
    """One CON GET ``/``; True when a 2.05 response with our token comes back.

    A CoAP ping from the server (an empty CON: a server checking that we receive at our address before
    it sends a response much larger than the request, RFC 9175 §2.4) is answered with a Reset, as any
    CoAP endpoint does. An empty ACK (a separate response follows) is waited through.
    """
    token = os.urandom(8)
    mid = int.from_bytes(os.urandom(2), "big")
    request = bytes((0x48, 0x01, mid >> 8, mid & 0xFF)) + token
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(request, (HOST, port))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                data = s.recv(2048)
                if len(data) == 4 and data[0] == 0x40 and data[1] == 0:  # ping: Reset it
                    s.sendto(bytes((0x70, 0, data[2], data[3])), (HOST, port))
                    continue
                if len(data) >= 12 and data[0] & 0x0F == 8 and data[1] == 0x45 and data[4:12] == token:
                    if data[0] >> 4 == 0x5:  # a separate CON response: acknowledge it
                        s.sendto(bytes((0x60, 0, data[2], data[3])), (HOST, port))
                    return True
        except OSError:  # timeout, or ICMP port unreachable (not listening yet)
            return False
    return False


def error_line(stderr: str, default: str = "failed") -> str:
    """The line of a child's stderr that names its exception: the last ``SomeError: ...`` line (one
    inside an exception group rather than the group's), with the group traceback's ``|`` and ``+``
    stripped; else the last line."""
    lines = [line.strip(" |+-\t") for line in stderr.splitlines()]
    lines = [line for line in lines if line]

    def exception_name(line: str) -> str:
        name = line.split(":", 1)[0].rsplit(".", 1)[-1]
        return name if name.isidentifier() and name.endswith(("Error", "Exception", "Exit", "Timeout",
                                                                  "TimedOut", "Received", "Group")) else ""

    named = [line for line in lines if exception_name(line)]
    innermost = [line for line in named if "Group" not in exception_name(line)]
    return (innermost or named or lines or [default])[-1]


def wait_ready(proc: subprocess.Popen[bytes], port: int, *, timeout: float = 15.0) -> None:
    """Probe until the server answers; raise if it exits or stays silent past ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited with status {proc.returncode} before answering:\n{server_log(port)}"
            )
        if probe(port):
            return
        time.sleep(0.05)
    raise TimeoutError(f"server on port {port} did not answer a GET / within {timeout} s")


def max_rss_mb(pid: int) -> float | None:
    """The process's peak resident set size (VmHWM), in MiB; None when /proc has no answer."""
    return _status_kb(pid, "VmHWM:")


def rss_mb(pid: int) -> float | None:
    """The process's current resident set size (VmRSS), in MiB; None when /proc has no answer."""
    return _status_kb(pid, "VmRSS:")


def _status_kb(pid: int, field: str) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` from /proc/PID/stat, in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen[bytes], *, grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; always reaps the process."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(grace)


if __name__ == "__main__":
    _serve_main()
