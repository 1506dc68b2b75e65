"""Helpers for the ETSI CoAP#4 interop tests: the plugtest server in-process, libcoap's coap-client-notls
as a subprocess with its PDU log parsed, a lossy UDP gateway, and a raw UDP peer for hand-made datagrams.
"""

from __future__ import annotations

import importlib.util
import re
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import trio
from conftest import require_binary

from coapio import Context, Message, Site, TransportTuning
from coapio.error import MessageFormatError

ROOT = Path(__file__).resolve().parent.parent
PLUGTEST_PATH = ROOT / "examples" / "plugtest_server.py"
LOCALHOST = "127.0.0.1"


def load_plugtest() -> ModuleType:
    """``examples/plugtest_server.py`` as a module (``examples/`` is not a package)."""
    module = sys.modules.get("plugtest_server")
    if module is None:
        spec = importlib.util.spec_from_file_location("plugtest_server", PLUGTEST_PATH)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["plugtest_server"] = module
        spec.loader.exec_module(module)
    return module


# --- the server, in-process ----------------------------------------------------------------------------


@attrs.define
class Plugtest:
    """A running plugtest server: its context, site and address."""

    ctx: Context
    site: Site
    port: int

    @property
    def address(self) -> tuple[str, int]:
        return (LOCALHOST, self.port)

    def uri(self, path: str, port: int | None = None) -> str:
        return f"coap://{LOCALHOST}:{self.port if port is None else port}{path}"

    def resource(self, path: str) -> Any:
        return load_plugtest().resource_at(self.site, path)


@asynccontextmanager
async def plugtest_server(
    *, separate_delay: float | None = None, tuning: TransportTuning | None = None
) -> AsyncIterator[Plugtest]:
    """The plugtest site served on 127.0.0.1 (an ephemeral port) for the duration of the block."""
    module = load_plugtest()
    delay = module.SEPARATE_DELAY if separate_delay is None else separate_delay
    site = module.build_site(separate_delay=delay)
    # The plugtest's own tuning (see its TUNING), with whatever timing a test changes.
    tuning = attrs.evolve(tuning or module.TUNING, echo_amplification_check=False)
    async with Context(bind=[(LOCALHOST, 0)], site=site, tuning=tuning) as ctx:
        yield Plugtest(ctx, site, int(ctx.transports[0].local[1]))


def free_udp_port() -> int:
    """A port that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


# --- libcoap's client ----------------------------------------------------------------------------------

_PDU_RE = re.compile(
    r"^v:1 t:(?P<type>CON|NON|ACK|RST) c:(?P<code>\S+) i:(?P<mid>[0-9a-f]+) \{(?P<token>[0-9a-f]*)\} "
    r"\[(?P<options>.*?)\](?: :: (?P<payload>.*))?$"
)
_OPTION_SPLIT_RE = re.compile(r", (?=[A-Za-z0-9-]+:)")
_REQUEST_CODES = {"GET", "POST", "PUT", "DELETE", "FETCH", "PATCH", "IPATCH"}


@attrs.frozen
class Pdu:
    """One PDU as coap-client-notls logs it at ``-v 7``: ``v:1 t:ACK c:2.05 i:f999 {01} [ ... ] :: '...'``."""

    direction: str  # "sent" or "received"
    type: str  # CON, NON, ACK, RST
    code: str  # "GET", "2.05", "0.00", ...
    mid: int
    token: bytes
    options: tuple[tuple[str, str], ...]
    payload_text: str | None  # as libcoap printed it (quoted), or None without payload
    line: str

    def option(self, name: str) -> list[str]:
        return [value for key, value in self.options if key == name]

    @property
    def is_request(self) -> bool:
        return self.code in _REQUEST_CODES

    @property
    def is_response(self) -> bool:
        return self.code[:1] in "2345" and "." in self.code

    @property
    def is_empty(self) -> bool:
        return self.code == "0.00"


def parse_pdus(output: str) -> list[Pdu]:
    """The PDUs in a coap-client-notls ``-v 7`` log, each with the direction its log line announced."""
    pdus: list[Pdu] = []
    direction: str | None = None
    for line in output.splitlines():
        match = _PDU_RE.match(line)
        if match is None:
            if "PDU presented by app" in line:
                direction = None  # the PDU as built; it is logged again when it is sent
            elif " sent " in line and " bytes" in line:
                direction = "sent"
            elif " received " in line and " bytes" in line:
                direction = "received"
            continue
        if direction is None:
            continue
        raw_options = match["options"].strip()
        options: list[tuple[str, str]] = []
        if raw_options:
            for item in _OPTION_SPLIT_RE.split(raw_options):
                name, _, value = item.partition(":")
                options.append((name, value))
        pdus.append(Pdu(direction, match["type"], match["code"], int(match["mid"], 16),
                        bytes.fromhex(match["token"]), tuple(options), match["payload"], line))
        direction = None
    return pdus


@attrs.frozen
class ClientRun:
    """What one coap-client-notls run did: its exit status, log, PDUs and the payload it wrote (``-o``)."""

    argv: tuple[str, ...]
    returncode: int
    output: str
    payload: bytes
    pdus: tuple[Pdu, ...]

    @property
    def sent(self) -> list[Pdu]:
        return [p for p in self.pdus if p.direction == "sent"]

    @property
    def received(self) -> list[Pdu]:
        return [p for p in self.pdus if p.direction == "received"]

    @property
    def request(self) -> Pdu:
        """The first request sent."""
        for pdu in self.sent:
            if pdu.is_request:
                return pdu
        raise AssertionError("coap-client-notls sent no request\n" + self.transcript)

    @property
    def response(self) -> Pdu:
        """The last response received."""
        for pdu in reversed(self.received):
            if pdu.is_response:
                return pdu
        raise AssertionError("coap-client-notls received no response\n" + self.transcript)

    @property
    def transcript(self) -> str:
        """The command line and the whole log, for assertion messages."""
        return "$ " + " ".join(self.argv) + "\n" + self.output


async def coap_client(
    *args: str, uri: str, wait: float = 5.0, kill_after: float = 15.0, verbosity: int = 7
) -> ClientRun:
    """Run ``coap-client-notls -v 7 -U -B wait -o FILE *args uri`` to its end (killed after ``kill_after`` s).

    ``-U`` keeps Uri-Port out of the request, as a client talking to the default port would send it.
    """
    exe = require_binary("coap-client-notls")
    with tempfile.TemporaryDirectory(prefix="coapio-etsi-") as tmp:
        out = trio.Path(tmp) / "payload"
        argv = (exe, "-v", str(verbosity), "-U", "-B", f"{wait:g}", "-o", str(out), *args, uri)
        with trio.fail_after(kill_after):
            proc = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
        payload = await out.read_bytes() if await out.exists() else b""
    output = proc.stdout.decode("utf-8", "replace") + proc.stderr.decode("utf-8", "replace")
    return ClientRun(argv, proc.returncode, output, payload, tuple(parse_pdus(output)))


# --- a lossy gateway (CoAP_CFG_LOSSY) --------------------------------------------------------------------

C2S, S2C = "client->server", "server->client"


@attrs.frozen
class Datagram:
    direction: str
    data: bytes
    message: Message | None  # None when it does not decode
    dropped: bool

    def __repr__(self) -> str:
        return f"<{self.direction}{' DROPPED' if self.dropped else ''} {self.message!r}>"


DropRule = Callable[[str, Message | None], bool]


def drop_first(direction: str, predicate: Callable[[Message], bool]) -> DropRule:
    """A rule dropping the first datagram in ``direction`` whose message satisfies ``predicate``."""
    done = False

    def rule(where: str, message: Message | None) -> bool:
        nonlocal done
        if done or where != direction or message is None or not predicate(message):
            return False
        done = True
        return True

    return rule


class Gateway:
    """A UDP relay between one client and the server that records every datagram and drops chosen ones."""

    def __init__(self, server: tuple[str, int], drop: DropRule | None = None):
        self.server = server
        self.drop = drop or (lambda _where, _message: False)
        self.log: list[Datagram] = []
        self.port = 0
        self._client: Any = None
        self._changed = trio.Event()

    def uri(self, path: str) -> str:
        return f"coap://{LOCALHOST}:{self.port}{path}"

    def datagrams(
        self, direction: str, predicate: Callable[[Message], bool] = lambda m: True
    ) -> list[Datagram]:
        return [d for d in self.log if d.direction == direction and d.message is not None
                and predicate(d.message)]

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds (checked after each datagram); bound it with a cancel scope."""
        while not condition():
            await self._changed.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        down = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        up = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with down, up:
            await down.bind((LOCALHOST, 0))
            await up.bind((LOCALHOST, 0))
            self.port = down.getsockname()[1]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._relay, down, up, C2S)
                nursery.start_soon(self._relay, up, down, S2C)
                task_status.started()

    async def _relay(self, src: trio.socket.SocketType, dst: trio.socket.SocketType, direction: str) -> None:
        while True:
            try:
                data, addr = await src.recvfrom(65535)
            except OSError:  # an ICMP error for an earlier datagram
                continue
            if direction == C2S:
                self._client = addr
                target = self.server
            elif self._client is None:
                continue
            else:
                target = self._client
            try:
                message: Message | None = Message.decode(data, addr)
            except MessageFormatError:
                message = None
            dropped = self.drop(direction, message)
            self.log.append(Datagram(direction, data, message, dropped))
            if not dropped:
                with suppress(OSError):
                    await dst.sendto(data, target)
            self._changed.set()
            self._changed = trio.Event()

    @property
    def transcript(self) -> str:
        return "\n".join(repr(d) for d in self.log)


@asynccontextmanager
async def gateway(server: tuple[str, int], drop: DropRule | None = None) -> AsyncIterator[Gateway]:
    gw = Gateway(server, drop)
    async with trio.open_nursery() as nursery:
        await nursery.start(gw.run)
        yield gw
        nursery.cancel_scope.cancel()


# --- a raw UDP peer ---------------------------------------------------------------------------------------


class RawPeer:
    """A bare UDP socket for datagrams no CoAP client API sends (empty tokens, pings, resets)."""

    def __init__(self, server: tuple[str, int]):
        self.server = server
        self.sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    async def __aenter__(self) -> RawPeer:
        await self.sock.bind((LOCALHOST, 0))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.sock.close()

    async def send(self, message: Message | bytes) -> bytes:
        data = message if isinstance(message, bytes) else message.encode()
        await self.sock.sendto(data, self.server)
        return data

    async def receive(self) -> tuple[Message, bytes]:
        """The next datagram from the server, decoded (bound the wait with a cancel scope)."""
        while True:
            data, addr = await self.sock.recvfrom(65535)
            if tuple(addr[:2]) == self.server:
                return Message.decode(data, addr), data

