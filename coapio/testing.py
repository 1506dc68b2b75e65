"""A seeded lossy network for tests and benchmarks: a UDP relay on loopback that drops, duplicates, delays
and reorders datagrams.

Real protocol bugs hide in the paths that only a bad network takes (retransmission, deduplication,
re-registration), so tests need a bad network that is cheap, local and reproducible::

    async with Context(bind=[("127.0.0.1", 0)], site=site) as server:
        async with LossyRelay(server.local_addresses[0], loss=0.2, seed=1) as relay:
            async with Context(bind=[("127.0.0.1", 0)]) as client:
                await client.get(relay.uri("hello"))

Clients send to :attr:`LossyRelay.address`. Each client gets its own upstream socket, so the target sees
one distinct peer per client and its answers find their way back to the right client. Each direction
(:attr:`Direction.UP` towards the target, :attr:`Direction.DOWN` back) has its own :class:`Impairment`.

The relay is written against anyio, so it runs on trio (also under ``trio.testing.MockClock``: time spent
in delays is virtual) and on asyncio. Its tasks are one per socket plus one timer task, whose single heap
holds every delayed datagram: there is never a task or a timer per datagram.

Reproducibility: every random decision comes from ``random.Random(seed)``. So that the decisions do not
depend on how the event loop interleaves the clients, each client's two flows (up and down) draw from their
own generator, seeded from that one in the order the clients first appear: the n-th datagram of a flow
meets the same fate in every run with the same traffic.
"""

from __future__ import annotations

import enum
import heapq
import ipaddress
import math
import random
import socket
from collections.abc import Callable
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import attrs

__all__ = ["Direction", "Impairment", "LinkCounters", "LossyRelay", "Transit"]

Address = tuple[Any, ...]

_MAX_DATAGRAM = 65535
_DRAIN_BUDGET = 256  # datagrams read per wake-up before letting other tasks run


class Direction(enum.Enum):
    """Which way a datagram travels through the relay."""

    #: From a client towards the target.
    UP = "up"
    #: From the target back to a client.
    DOWN = "down"


def _probability(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be a probability in [0, 1], got {value!r}")


def _delay_range(instance: object, attribute: attrs.Attribute[tuple[float, float]],
                 value: tuple[float, float]) -> None:
    low, high = value
    if not 0.0 <= low <= high:
        raise ValueError(f"delay must be (low, high) with 0 <= low <= high, got {value!r}")


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


def _pair(value: tuple[float, float]) -> tuple[float, float]:
    low, high = value
    return float(low), float(high)


@attrs.frozen(slots=True)
class Impairment:
    """What the network does to the datagrams of one direction.

    Each datagram is dropped with probability ``loss``; a survivor is sent twice with probability
    ``duplicate``; each copy is delayed by a uniform random time in ``delay`` (seconds; copies with
    different delays overtake each other); and with probability ``reorder`` it is held back until the
    next datagram of the same client and direction has gone out, or for at most ``hold`` seconds.
    """

    loss: float = attrs.field(default=0.0, validator=_probability)
    duplicate: float = attrs.field(default=0.0, validator=_probability)
    delay: tuple[float, float] = attrs.field(default=(0.0, 0.0), converter=_pair, validator=_delay_range)
    reorder: float = attrs.field(default=0.0, validator=_probability)
    hold: float = attrs.field(default=1.0, validator=_positive)


@attrs.define(slots=True)
class LinkCounters:
    """What the relay did in one direction; plain ints, for tests and benchmark reports.

    Once every delayed copy has gone out, ``forwarded + send_failed == received - dropped + duplicated``.
    """

    #: Datagrams that arrived at the relay.
    received: int = 0
    #: Datagrams discarded on purpose (``loss``).
    dropped: int = 0
    #: Extra copies made (``duplicate``).
    duplicated: int = 0
    #: Copies held back by a non-zero delay.
    delayed: int = 0
    #: Datagrams held back to let the next one overtake them (``reorder``).
    reordered: int = 0
    #: Copies handed to the kernel.
    forwarded: int = 0
    #: Copies the kernel refused (a full socket buffer): lost, as a congested link would lose them.
    send_failed: int = 0


@attrs.frozen(slots=True)
class Transit:
    """One datagram's arrival at the relay and its fate, as reported to the ``on_datagram`` hook.

    ``time`` is the arrival time (``anyio.current_time()``), which on loopback is the time the sender sent
    it: counting the UP transits of one message ID counts its transmissions, lost ones included.
    """

    time: float
    direction: Direction
    #: The client's address: the sender for UP, the receiver for DOWN.
    client: Address
    data: bytes
    #: The delay of each copy that will go out: empty if the datagram was dropped, two if duplicated.
    delays: tuple[float, ...]
    #: Held back for reordering.
    held: bool

    @property
    def dropped(self) -> bool:
        return not self.delays


class _Flow:
    """One client's datagrams in one direction: where they go, and the flow's own random stream."""

    __slots__ = ("client", "counters", "dest", "direction", "held", "rng", "sock")

    def __init__(self, client: Address, direction: Direction, sock: socket.socket, dest: Address,
                 rng: random.Random, counters: LinkCounters):
        self.client = client
        self.direction = direction
        self.sock = sock
        self.dest = dest
        self.rng = rng
        self.counters = counters
        self.held: _Held | None = None


class _Held:
    """A datagram held back for reordering, with the delays its copies were given on arrival."""

    __slots__ = ("data", "delays")

    def __init__(self, data: bytes, delays: tuple[float, ...]):
        self.data = data
        self.delays = delays


class _Client:
    __slots__ = ("down", "up", "upstream")

    def __init__(self, upstream: socket.socket, up: _Flow, down: _Flow):
        self.upstream = upstream
        self.up = up
        self.down = down


async def _drain_forever(sock: socket.socket, arrive: Callable[[bytes, Address, float], None]) -> None:
    """Hand every datagram ``sock`` receives to ``arrive``, draining up to a budget per wake-up."""
    while True:
        now = anyio.current_time()
        for _ in range(_DRAIN_BUDGET):
            try:
                data, source = sock.recvfrom(_MAX_DATAGRAM)
            except BlockingIOError:
                break
            except OSError:
                continue  # an error report about an earlier send; nothing to relay
            arrive(data, source, now)
        else:
            await anyio.lowlevel.checkpoint()  # the budget ran out: let the other tasks run
            continue
        await anyio.wait_readable(sock)


class LossyRelay:
    """A UDP relay between clients and ``target`` that impairs the datagrams; see the module docstring.

    ``loss``, ``duplicate``, ``delay`` and ``reorder`` describe both directions; ``up`` and ``down``
    replace that description for one direction. :attr:`impairment` may be changed while the relay runs
    (to heal the network, say). ``on_datagram`` is called with a :class:`Transit` for every datagram that
    arrives, on the relay's socket task: keep it quick. Only loopback addresses are used: the target must
    be one, and the relay binds to the loopback address of the target's family.

    Leaving ``async with`` closes every socket and discards the datagrams still held back.
    """

    def __init__(
        self,
        target: tuple[str, int],
        *,
        loss: float = 0.0,
        duplicate: float = 0.0,
        delay: tuple[float, float] = (0.0, 0.0),
        reorder: float = 0.0,
        up: Impairment | None = None,
        down: Impairment | None = None,
        seed: int = 0,
        on_datagram: Callable[[Transit], object] | None = None,
    ):
        host, port = str(target[0]), int(target[1])
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"the target must be a loopback IP literal, got {host!r}") from None
        if not ip.is_loopback:
            raise ValueError(f"the target must be a loopback address, got {host!r}")
        self._family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        self._loopback = "::1" if ip.version == 6 else "127.0.0.1"
        self.target: Address = (str(ip), port)
        both = Impairment(loss=loss, duplicate=duplicate, delay=delay, reorder=reorder)
        #: The impairment of each direction.
        self.impairment: dict[Direction, Impairment] = {
            Direction.UP: up or both,
            Direction.DOWN: down or both,
        }
        #: What happened in each direction so far.
        self.counters: dict[Direction, LinkCounters] = {d: LinkCounters() for d in Direction}
        self.on_datagram = on_datagram
        self._rng = random.Random(seed)
        self._clients: dict[Address, _Client] = {}
        self._front: socket.socket | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        # The timer heap: (due, sequence, flow, what) where what is a copy's bytes or a held datagram.
        self._heap: list[tuple[float, int, _Flow, bytes | _Held]] = []
        self._seq = 0
        self._timer_sleep: anyio.CancelScope | None = None
        self._sockets: list[socket.socket] = []

    # --- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> LossyRelay:
        if self._task_group is not None:
            raise RuntimeError("a LossyRelay can be entered only once")
        self._front = self._open_socket()
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        task_group.start_soon(self._serve_front, name="coapio relay front")
        task_group.start_soon(self._run_timers, name="coapio relay timers")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        """Cancel the relay's tasks and close its sockets; the body's own exception comes out unwrapped."""
        task_group = self._task_group
        assert task_group is not None
        task_group.cancel_scope.cancel()
        try:
            return await task_group.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            if exc is not None and group.exceptions == (exc,):
                return False
            raise
        finally:
            for sock in self._sockets:
                sock.close()
            self._heap.clear()
            for client in self._clients.values():
                client.up.held = client.down.held = None

    def _open_socket(self) -> socket.socket:
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((self._loopback, 0))
        except BaseException:
            sock.close()
            raise
        self._sockets.append(sock)
        return sock

    # --- addressing --------------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """Where clients send to: the relay's (host, port)."""
        if self._front is None or self._front.fileno() == -1:
            raise RuntimeError("the relay is not running (use `async with LossyRelay(...)`)")
        name = self._front.getsockname()
        return str(name[0]), int(name[1])

    def uri(self, path: str = "") -> str:
        """A ``coap://`` URI that reaches ``path`` on the target through the relay."""
        host, port = self.address
        if ":" in host:
            host = f"[{host}]"
        return f"coap://{host}:{port}/{path.lstrip('/')}"

    @property
    def clients(self) -> int:
        """How many distinct clients have sent through the relay."""
        return len(self._clients)

    @property
    def pending(self) -> int:
        """Delayed copies and held datagrams that have not gone out yet (O(n): for tests)."""
        return sum(1 for _, _, flow, what in self._heap if isinstance(what, bytes) or flow.held is what)

    # --- the sockets' tasks ------------------------------------------------------------------------

    async def _serve_front(self) -> None:
        """Read clients' datagrams and send them upstream, each client from its own socket."""
        assert self._front is not None
        clients = self._clients

        def arrive(data: bytes, source: Address, now: float) -> None:
            client = clients.get(source)
            if client is None:
                client = self._new_client(source)
            self._arrive(client.up, data, now)

        await _drain_forever(self._front, arrive)

    def _new_client(self, address: Address) -> _Client:
        upstream = self._open_socket()
        counters = self.counters
        rng = self._rng
        up = _Flow(address, Direction.UP, upstream, self.target,
                   random.Random(rng.getrandbits(64)), counters[Direction.UP])
        assert self._front is not None
        down = _Flow(address, Direction.DOWN, self._front, address,
                     random.Random(rng.getrandbits(64)), counters[Direction.DOWN])
        client = self._clients[address] = _Client(upstream, up, down)
        assert self._task_group is not None
        self._task_group.start_soon(self._serve_upstream, client, name="coapio relay upstream")
        return client

    async def _serve_upstream(self, client: _Client) -> None:
        """Read the target's answers to one client and send them back to it."""
        flow = client.down
        host, port = self.target[0], self.target[1]

        def arrive(data: bytes, source: Address, now: float) -> None:
            if source[0] == host and source[1] == port:
                self._arrive(flow, data, now)

        await _drain_forever(client.upstream, arrive)

    async def _run_timers(self) -> None:
        """Send the delayed copies and release the held datagrams as they fall due."""
        heap = self._heap
        while True:
            now = anyio.current_time()
            while heap and heap[0][0] <= now:
                _, _, flow, what = heapq.heappop(heap)
                if isinstance(what, bytes):
                    self._send(flow, what)
                elif flow.held is what:  # nobody overtook it within `hold`: it goes out now
                    flow.held = None
                    self._emit(flow, what.data, what.delays, now)
            deadline = heap[0][0] if heap else math.inf
            with anyio.CancelScope(deadline=deadline) as sleep:
                self._timer_sleep = sleep
                await anyio.sleep_forever()
            self._timer_sleep = None

    # --- the fate of a datagram --------------------------------------------------------------------

    def _arrive(self, flow: _Flow, data: bytes, now: float) -> None:
        """Decide a datagram's fate with its flow's generator, and act on it."""
        impairment = self.impairment[flow.direction]
        counters = flow.counters
        counters.received += 1
        rng = flow.rng
        delays: tuple[float, ...] = ()
        held = False
        if not (impairment.loss and rng.random() < impairment.loss):
            copies = 2 if impairment.duplicate and rng.random() < impairment.duplicate else 1
            low, high = impairment.delay
            delays = (low,) * copies if low == high else tuple(rng.uniform(low, high) for _ in range(copies))
            held = (flow.held is None and bool(impairment.reorder) and rng.random() < impairment.reorder)
        hook = self.on_datagram
        if hook is not None:
            hook(Transit(now, flow.direction, flow.client, data, delays, held))
        if not delays:
            counters.dropped += 1
            return
        counters.duplicated += len(delays) - 1
        if held:
            counters.reordered += 1
            waiting = flow.held = _Held(data, delays)
            self._schedule(now + impairment.hold, flow, waiting)
            return
        self._emit(flow, data, delays, now)
        overtaken = flow.held
        if overtaken is not None:
            flow.held = None
            self._emit(flow, overtaken.data, overtaken.delays, now)

    def _emit(self, flow: _Flow, data: bytes, delays: tuple[float, ...], now: float) -> None:
        for delay in delays:
            if delay > 0:
                flow.counters.delayed += 1
                self._schedule(now + delay, flow, data)
            else:
                self._send(flow, data)

    def _schedule(self, due: float, flow: _Flow, what: bytes | _Held) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, flow, what))
        sleep = self._timer_sleep
        if sleep is not None and due < sleep.deadline:
            sleep.deadline = due

    @staticmethod
    def _send(flow: _Flow, data: bytes) -> None:
        try:
            flow.sock.sendto(data, flow.dest)
        except OSError:
            flow.counters.send_failed += 1
        else:
            flow.counters.forwarded += 1
