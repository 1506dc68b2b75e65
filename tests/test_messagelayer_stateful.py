"""Two message layers over a lossy, duplicating, reordering link, driven by hypothesis.

Checks the promises of RFC 7252 §4 that matter to applications: a request reaches the server application
at most once however often the network repeats it; every exchange ends (acknowledged, answered, reset or
given up); a response reaches the client at most once; message IDs are not reused within their lifetime.
"""

from __future__ import annotations

import os
import random
from collections import Counter

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from coapio import Code, Message, Type
from coapio.protocol.messagelayer import (
    Acknowledged,
    Event,
    MessageLayer,
    RequestReceived,
    Reset,
    ResponseReceived,
    TimedOut,
)
from coapio.protocol.tuning import TransportTuning

CLIENT = ("127.0.0.1", 40000)
SERVER = ("127.0.0.1", 5683)
TERMINAL = (Acknowledged, ResponseReceived, TimedOut, Reset)


class LossyLink(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        tuning = TransportTuning(nstart=2, non_response_timeout=30.0)
        self.client = MessageLayer(tuning, rng=random.Random(1))
        self.server = MessageLayer(tuning, rng=random.Random(2))
        # Datagrams in the network: (sent at, to, data, from). RFC 7252 assumes none lives longer than
        # MAX_LATENCY; deduplication is only promised within that bound, so older ones are lost.
        self.wire: list[tuple[float, tuple[str, int], bytes, tuple[str, int]]] = []
        self.requests: dict[bytes, Message] = {}
        self.ended: set[bytes] = set()
        self.responses: Counter[bytes] = Counter()
        self.delivered: Counter[bytes] = Counter()
        self.unanswered: list[Message] = []
        self.mid_free_at: dict[int, float] = {}
        self.has_mid: set[bytes] = set()
        self.next_token = 0

    # --- plumbing ---

    def _collect(self) -> None:
        self._note_new_message_ids()
        for data, to in self.client.datagrams_to_send():
            self.wire.append((self.now, to, data, CLIENT))
        for data, to in self.server.datagrams_to_send():
            self.wire.append((self.now, to, data, SERVER))

    def _note_new_message_ids(self) -> None:
        tuning = self.client.tuning
        for token, msg in self.requests.items():
            if msg.mid is None or token in self.has_mid:
                continue
            self.has_mid.add(token)
            free_at = self.mid_free_at.get(msg.mid)
            assert free_at is None or free_at <= self.now, "message ID reused within its lifetime"
            lifetime = tuning.exchange_lifetime if msg.type is Type.CON else tuning.non_lifetime
            self.mid_free_at[msg.mid] = self.now + lifetime

    def _client_events(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, ResponseReceived):
                self.responses[event.message.token] += 1
                self.ended.add(event.message.token)
            elif isinstance(event, TERMINAL):
                self.ended.add(event.message.token)

    def _server_events(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, RequestReceived):
                self.delivered[event.message.token] += 1
                self.unanswered.append(event.message)

    def _deliver(self, sent: float, to: tuple[str, int], data: bytes, sender: tuple[str, int]) -> None:
        if self.now - sent > self.client.tuning.max_latency:
            return
        if to == SERVER:
            self._server_events(self.server.receive(data, sender, self.now))
        else:
            self._client_events(self.client.receive(data, sender, self.now))
        self._collect()

    def _run_timers_until(self, until: float) -> None:
        for _ in range(10_000):
            pending = (self.client.next_deadline(), self.server.next_deadline())
            deadlines = [d for d in pending if d is not None]
            if not deadlines or min(deadlines) > until:
                break
            self.now = max(self.now, min(deadlines))
            self._client_events(self.client.on_timer(self.now))
            self._server_events(self.server.on_timer(self.now))
            self._collect()
        else:
            raise AssertionError("a timer that never stops firing")
        self.now = max(self.now, until)

    # --- rules ---

    @rule(con=st.booleans())
    def send_request(self, con: bool) -> None:
        self.next_token += 1
        token = self.next_token.to_bytes(4, "big")
        msg = Message(Type.CON if con else Type.NON, Code.POST, token=token, remote=SERVER, payload=b"p")
        self.requests[token] = msg
        self.client.send(msg, self.now)
        self._collect()

    @precondition(lambda self: self.wire)
    @rule(index=st.integers(min_value=0))
    def deliver(self, index: int) -> None:
        self._deliver(*self.wire.pop(index % len(self.wire)))

    @precondition(lambda self: self.wire)
    @rule(index=st.integers(min_value=0))
    def drop(self, index: int) -> None:
        self.wire.pop(index % len(self.wire))

    @precondition(lambda self: self.wire)
    @rule(index=st.integers(min_value=0))
    def duplicate(self, index: int) -> None:
        self.wire.append(self.wire[index % len(self.wire)])

    @precondition(lambda self: self.unanswered)
    @rule(index=st.integers(min_value=0))
    def server_responds(self, index: int) -> None:
        request = self.unanswered.pop(index % len(self.unanswered))
        self.server.respond(request, Message(code=Code.CHANGED, payload=b"done"), self.now)
        self._collect()

    @rule(dt=st.floats(min_value=0.0, max_value=60.0))
    def time_passes(self, dt: float) -> None:
        self._run_timers_until(self.now + dt)

    # --- invariants ---

    @invariant()
    def each_request_reaches_the_server_application_at_most_once(self) -> None:
        assert all(n == 1 for n in self.delivered.values()), self.delivered

    @invariant()
    def each_response_reaches_the_client_at_most_once(self) -> None:
        assert all(n == 1 for n in self.responses.values()), self.responses

    def teardown(self) -> None:
        # A perfect network from now on: answer everything, deliver everything, let every timer run out.
        for _ in range(1000):
            while self.unanswered:
                self.server_responds(0)
            while self.wire:
                self._deliver(*self.wire.pop(0))
            if self.client.next_deadline() is None and self.server.next_deadline() is None:
                break
            self._run_timers_until(self.now + 1.0)
        assert set(self.requests) == self.ended, "some exchange never ended"
        assert self.client.open_exchanges == 0
        self.each_request_reaches_the_server_application_at_most_once()
        self.each_response_reaches_the_client_at_most_once()


LossyLink.TestCase.settings = settings(
    max_examples=int(os.environ.get("COAPIO_STATEFUL_EXAMPLES", "150")), stateful_step_count=60, deadline=None
)
test_message_layers_over_a_lossy_link = LossyLink.TestCase
