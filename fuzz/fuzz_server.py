"""Fuzz target: datagrams into a coapio server without sockets — the sans-IO message layer and the
server dispatch of a real (never entered) Context — checking every answer against coapfuzz's model.

An input is a sequence of records ``control (1 byte), length (2 bytes, big-endian), datagram``; a
length that runs past the end takes the rest. The control byte's low two bits pick one of four peers;
bit 2 advances the clock by 0.1 s; bit 3 makes the observable resource change after the datagram, so
that its observers get notifications. Run ``python fuzz/fuzz_server.py --help`` under atheris, or see
fuzz/README.md.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

try:
    import atheris
except ImportError:
    atheris = None

with atheris.instrument_imports() if atheris is not None else contextlib.nullcontext():
    import coapfuzz

    from coapio import Context, Peer, TransportTuning
    from coapio.protocol.messagelayer import MessageLayer
    from coapio.runtime.context import _Events
    from coapio.runtime.resource import Resource
    from coapio.transports.udp import UDPTransport

PEERS = [Peer("coap", ("127.0.0.1", 40000 + i)) for i in range(4)]
LOCAL = ("127.0.0.1", 5683)
#: The server's settings in this target and in tests/test_fuzz_server.py: blocks smaller than the largest
#: a client may ask for, so that reducing them is fuzzed too; few observers per resource, so that one
#: notification round stays one chunk. The amplification check is off: the model predicts what a server
#: sends at once, and the check may hold a response back until the peer has shown it is reachable.
TUNING = TransportTuning(block_szx=5, max_observers_per_resource=64, echo_amplification_check=False)


class _Endpoint(UDPTransport):
    """The UDP transport without its socket: the harness feeds its layer and reads what it queued."""

    def __init__(self, layer: MessageLayer, events: Any, clock: Any):  # no socket, so no super().__init__
        self.layer = layer
        self._events = events
        self._clock = clock
        self._processing = True  # nothing is written: the harness reads the layer's output itself
        self._closed = False
        self._peers = {}
        self.local = LOCAL
        self.pktinfo = False  # bound to one address: the local address is always ``local``


class Harness:
    """One server (its layer, dispatch and site) and the model that predicts its answers."""

    def __init__(self, tuning: TransportTuning = TUNING) -> None:
        site, self.resources = coapfuzz.fuzz_site()
        self.context = Context(bind=[LOCAL], site=site, tuning=tuning)  # never entered: no socket
        server = self.context._server
        # ServerDispatch.notify reads the event loop's clock; here time is an argument.
        server.notify = lambda resource, confirmable: server.observers.notify(  # type: ignore[method-assign]
            resource, self.now, confirmable=confirmable
        )
        tokens = self.context._tokens
        layer = MessageLayer(tuning, expects_response=tokens.expects_response,
                             recognized_options=coapfuzz.RECOGNIZED, rng=random.Random(0))
        self.endpoint = _Endpoint(layer, _Events(tokens, server), lambda: self.now)
        self.model = coapfuzz.ServerModel()
        self.now = 1000.0
        self.block_szx = tuning.block_szx
        self.datagrams = 0
        self.skipped = 0

    def feed(self, datagram: bytes, peer: Any) -> None:
        """One datagram from ``peer``: the server's immediate answer must be what the model expects."""
        if coapfuzz.known_bug(datagram, self.block_szx):
            self.skipped += 1
            return
        self.datagrams += 1
        self.now += 0.001
        expectation = self.model.expect(datagram, peer)
        layer = self.endpoint.layer
        for event in layer.receive(datagram, peer, self.now):
            self.endpoint._dispatch(event, self.now)
        out = layer.datagrams_to_send()
        assert all(to == peer for _, to in out), f"answers to {datagram.hex()} went elsewhere: {out}"
        sent = [data for data, _ in out]
        expectation.check(sent)
        self.model.learn(expectation, sent, peer)
        self.background()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.endpoint.layer.on_timer(self.now)
        self.background()

    def change_observable(self) -> None:
        resource: Resource = self.resources["obs"]
        resource.bump()  # type: ignore[attr-defined]
        self.background()

    def background(self) -> None:
        """What the server sends on its own (the socket task's timers): only notifications to observers."""
        self.context._server.on_timer(self.now)
        for data, to in self.endpoint.layer.datagrams_to_send():
            message = coapfuzz.parse(data)
            assert isinstance(message, coapfuzz.Parsed), f"malformed notification {data.hex()}"
            assert message.type in (coapfuzz.CON, coapfuzz.NON) and 64 <= message.code < 192, message
            assert (to, message.token) in self.model.observing, f"{message} to {to}, who never observed"


def records(data: bytes) -> Iterator[tuple[int, bytes]]:
    """The (control, datagram) records of an input; see the module docstring."""
    pos = 0
    while pos < len(data):
        control = data[pos]
        length = int.from_bytes(data[pos + 1 : pos + 3], "big")
        datagram = data[pos + 3 : pos + 3 + length]
        pos += 3 + length
        yield control, datagram


def pack(items: list[tuple[int, bytes]]) -> bytes:
    return b"".join(bytes((control,)) + len(d).to_bytes(2, "big") + d for control, d in items)


def TestOneInput(data: bytes) -> None:  # the name atheris and libFuzzer use
    harness = Harness(TUNING)
    for control, datagram in records(data):
        if control & 4:
            harness.advance(0.1)
        harness.feed(datagram, PEERS[control & 3])
        if control & 8:
            harness.change_observable()


def seeds() -> list[bytes]:
    """Every seed as one record, all seeds in one input, and a few mutated sessions."""
    valid = [coapfuzz.encode(seed) for seed in coapfuzz.SEEDS]
    out = [pack([(0, d)]) for d in valid]
    out.append(pack([(i & 3 | (8 if i % 5 == 0 else 0), d) for i, d in enumerate(valid)]))
    rng = random.Random(1)
    for _ in range(8):
        out.append(pack([(rng.randrange(16), coapfuzz.mutate(rng)) for _ in range(30)]))
    return out


if __name__ == "__main__":
    coapfuzz.main(TestOneInput, seeds(), atheris)
