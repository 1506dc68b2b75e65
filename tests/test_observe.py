"""Unit tests of the RFC 7641 observe logic, with explicit time and no event loop."""

from __future__ import annotations

import bisect
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coapio import Code, Message, Type
from coapio.protocol.observe import (
    CON_INTERVAL,
    OBSERVE_DEREGISTER,
    OBSERVE_REGISTER,
    TICKS_PER_SECOND,
    ClientObservation,
    Observer,
    ObserverTable,
    Verdict,
    is_fresher,
)

CLIENT = ("127.0.0.1", 40000)
OTHER = ("127.0.0.1", 40001)
SERVER = ("127.0.0.1", 5683)
T0 = 1000.0


def registration(token: bytes = b"ob", remote: object = CLIENT, observe: int | None = OBSERVE_REGISTER,
                 code: Code = Code.GET, path: tuple[str, ...] = ("temp",)) -> Message:
    msg = Message(Type.CON, code, mid=7, token=token, remote=remote)
    msg.opt.uri_path = path
    msg.opt.accept = 0
    msg.opt.observe = observe
    return msg


def response(observe: int | None, code: Code = Code.CONTENT, max_age: int | None = None,
             payload: bytes = b"v") -> Message:
    msg = Message(Type.NON, code, mid=1, token=b"ob", payload=payload, remote=SERVER)
    msg.opt.observe = observe
    msg.opt.max_age = max_age
    return msg


def client(**kw: object) -> ClientObservation:
    return ClientObservation(registration(remote=SERVER), **kw)  # type: ignore[arg-type]


# --- is_fresher (§3.4) -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("v1", "v2", "fresher"),
    [
        (5, 6, True),
        (6, 5, False),
        (5, 5, False),  # a replay
        (0, (1 << 23) - 1, True),  # just under half the space ahead
        (0, 1 << 23, False),  # exactly half: ambiguous, not fresher
        (1 << 23, 0, False),  # V1 - V2 == 2**23 is not > 2**23
        ((1 << 23) + 1, 0, True),  # V1 - V2 > 2**23: V2 wrapped around
        ((1 << 24) - 1, 0, True),  # the wrap-around itself
        (0, (1 << 24) - 1, False),  # one step back across the wrap
        ((1 << 24) - 10, 5, True),
    ],
)
def test_is_fresher_compares_24_bit_serial_numbers(v1: int, v2: int, fresher: bool) -> None:
    assert is_fresher(v1, T0, v2, T0 + 1) is fresher


def test_is_fresher_accepts_anything_only_after_more_than_128_seconds() -> None:
    assert not is_fresher(10, T0, 9, T0 + 128.0)  # exactly 128 s: the numbers still decide
    assert is_fresher(10, T0, 9, T0 + 128.001)
    assert is_fresher(10, T0, 10, T0 + 128.5)  # even a replay, after that long


# --- server sequence numbers against the client's rule ------------------------------------------------------


@given(
    gaps=st.lists(st.one_of(st.just(0.0), st.floats(0, 2), st.floats(0, 300)), min_size=1, max_size=60),
    bursts=st.lists(st.integers(1, 2000), min_size=60, max_size=60),
)
def test_sequence_values_sent_within_256_seconds_are_ordered_by_the_client_rule(
    gaps: list[float], bursts: list[int]
) -> None:
    table: ObserverTable[str] = ObserverTable()
    now = T0
    obs = table.register("r", registration(), now)
    assert obs is not None
    sent: list[tuple[float, int]] = []
    for gap, burst in zip(gaps, bursts, strict=False):
        now += gap
        sent.extend((now, table.next_sequence(obs, now)) for _ in range(burst))
    times = [t for t, _ in sent]
    for i, (ta, va) in enumerate(sent[:-1]):
        # Values increase, so the next one and the last one within 256 s bound every pair in between.
        far = bisect.bisect_right(times, ta + 256) - 1
        for j in {i + 1, far} - {i}:
            if times[j] <= ta + 256:
                assert is_fresher(va, 0.0, sent[j][1], 0.0), (i, j, ta, times[j])


@given(
    events=st.lists(
        st.tuples(
            st.one_of(st.just(0.0), st.floats(0, 5), st.floats(0, 200)),  # gap before sending
            st.floats(0, 100),  # network latency (RFC 7252 MAX_LATENCY)
            st.sampled_from(["send", "send", "send", "replay", "recreate"]),
        ),
        min_size=1,
        max_size=50,
    ),
)
def test_client_delivers_server_notifications_in_order_and_drops_replays_and_reordering(
    events: list[tuple[float, float, str]],
) -> None:
    table: ObserverTable[str] = ObserverTable()
    now = T0
    request = registration()
    obs = table.register("r", request, now)
    assert obs is not None
    arrivals: list[tuple[float, int, int]] = []  # (receive time, send index, Observe value)
    for gap, latency, action in events:
        now += gap
        if action == "recreate":  # the server lost the observer; the client re-registers, same token
            table.deregister(CLIENT, b"ob")
            obs = table.register("r", request, now)
            assert obs is not None
        if action == "replay" and arrivals:
            arrivals.append((now + latency, *arrivals[-1][1:]))
            continue
        arrivals.append((now + latency, len(arrivals), table.next_sequence(obs, now)))
    arrivals.sort(key=lambda a: a[0])

    observation = client()
    best: tuple[float, int] | None = None  # (receive time, send index) of the freshest delivered
    for received, index, value in arrivals:
        expected = best is None or index > best[1] or received > best[0] + 128
        verdict = observation.on_response(response(value), received)
        assert verdict is (Verdict.DELIVER if expected else Verdict.STALE), (received, index, value, best)
        if expected:
            best = (received, index)


def test_first_sequence_value_follows_the_clock_and_increases_by_at_least_one() -> None:
    table: ObserverTable[str] = ObserverTable()
    obs = table.register("r", registration(), T0)
    assert obs is not None
    first = table.next_sequence(obs, T0)
    assert first == int(T0 * TICKS_PER_SECOND) & 0xFFFFFF
    assert table.next_sequence(obs, T0) == first + 1  # same instant: still strictly increasing
    later = table.next_sequence(obs, T0 + 1000)
    assert later == int((T0 + 1000) * TICKS_PER_SECOND) & 0xFFFFFF
    assert 0 <= later < 1 << 24


def test_recreated_observer_at_the_same_instant_is_fresher_than_its_predecessor() -> None:
    table: ObserverTable[str] = ObserverTable()
    observation = client()
    obs = table.register("r", registration(), T0)
    assert obs is not None
    for _ in range(50):  # a burst runs ahead of the clock
        assert observation.on_response(response(table.next_sequence(obs, T0)), T0) is Verdict.DELIVER
    table.deregister(CLIENT, b"ob")
    again = table.register("r", registration(), T0)
    assert again is not None and again is not obs
    assert observation.on_response(response(table.next_sequence(again, T0)), T0) is Verdict.DELIVER


def test_observer_far_ahead_of_the_clock_waits_until_it_catches_up() -> None:
    table: ObserverTable[str] = ObserverTable()
    obs = table.register("r", registration(), T0)
    assert obs is not None
    obs.sequence = int(T0 * TICKS_PER_SECOND) + (1 << 22)  # as if 4M notifications went out just now
    table.notify("r", T0)
    assert table.due(T0) == []
    deadline = table.next_deadline()
    assert deadline is not None and T0 + 0.0 < deadline <= T0 + 1.0
    assert table.due(deadline) == [obs]
    before = obs.sequence
    msg = table.prepare_notification(obs, response(None), deadline)
    assert msg is not None and obs.sequence == before + 1


# --- client verdicts --------------------------------------------------------------------------------------


def test_first_response_with_observe_means_registered() -> None:
    obs = client()
    assert not obs.registered
    assert obs.on_response(response(12), T0) is Verdict.DELIVER
    assert obs.registered and obs.last_value == 12 and obs.last_time == T0


def test_response_without_observe_is_final_and_not_registered() -> None:
    obs = client()
    assert obs.on_response(response(None), T0) is Verdict.FINAL
    assert not obs.registered and obs.ended
    assert obs.next_deadline() is None
    assert obs.on_response(response(5), T0 + 1) is Verdict.STALE  # nothing after the end


@pytest.mark.parametrize("observe", [None, 13])
def test_error_response_ends_the_observation(observe: int | None) -> None:
    obs = client()
    assert obs.on_response(response(12), T0) is Verdict.DELIVER
    assert obs.on_response(response(observe, code=Code.NOT_FOUND), T0 + 1) is Verdict.FINAL
    assert not obs.registered and obs.ended


def test_success_without_observe_after_notifications_is_final() -> None:
    obs = client()
    obs.on_response(response(12), T0)
    assert obs.on_response(response(None, code=Code.CONTENT), T0 + 1) is Verdict.FINAL


def test_reordered_and_replayed_notifications_are_stale() -> None:
    obs = client()
    assert obs.on_response(response(10), T0) is Verdict.DELIVER
    assert obs.on_response(response(12), T0 + 1) is Verdict.DELIVER
    assert obs.on_response(response(11), T0 + 2) is Verdict.STALE
    assert obs.on_response(response(12), T0 + 3) is Verdict.STALE
    assert obs.last_value == 12 and obs.last_time == T0 + 1
    assert obs.on_response(response(11), T0 + 1 + 128.5) is Verdict.DELIVER  # 128 s after the freshest


def test_notifications_across_the_24_bit_wrap_are_delivered() -> None:
    obs = client()
    assert obs.on_response(response((1 << 24) - 2), T0) is Verdict.DELIVER
    assert obs.on_response(response(3), T0 + 1) is Verdict.DELIVER
    assert obs.on_response(response((1 << 24) - 1), T0 + 2) is Verdict.STALE


def test_client_rejects_a_request_that_is_not_a_registration() -> None:
    with pytest.raises(ValueError):
        ClientObservation(registration(observe=None))
    with pytest.raises(ValueError):
        ClientObservation(registration(observe=OBSERVE_DEREGISTER))
    with pytest.raises(ValueError):
        ClientObservation(registration(code=Code.POST))
    ClientObservation(registration(code=Code.FETCH))


# --- client freshness and re-registration (§3.3.1) ---------------------------------------------------------


def test_freshness_deadline_is_max_age_plus_margin() -> None:
    obs = client(margin=5.0)
    assert obs.next_deadline() is None  # nothing to watch before the server accepted
    obs.on_response(response(1), T0)
    assert obs.next_deadline() == T0 + 60 + 5  # Max-Age absent: 60 s (RFC 7252 §5.10.5)
    obs.on_response(response(2, max_age=10), T0 + 20)
    assert obs.next_deadline() == T0 + 20 + 10 + 5
    assert not obs.refresh_due(T0 + 34.9)
    assert obs.refresh_due(T0 + 35)


def test_stale_notification_does_not_extend_freshness() -> None:
    obs = client(margin=1.0)
    obs.on_response(response(5, max_age=10), T0)
    obs.on_response(response(4, max_age=100), T0 + 5)
    assert obs.next_deadline() == T0 + 11


def test_jitter_spreads_the_deadline_within_its_range() -> None:
    deadlines = set()
    for seed in range(20):
        obs = client(margin=5.0, jitter=10.0, rng=random.Random(seed))
        obs.on_response(response(1, max_age=0), T0)
        deadline = obs.next_deadline()
        assert deadline is not None and T0 + 5 <= deadline <= T0 + 15
        deadlines.add(deadline)
    assert len(deadlines) > 1


def test_reregistration_request_repeats_token_and_options_and_pushes_the_deadline() -> None:
    obs = client(margin=2.0)
    obs.on_response(response(1, max_age=30), T0)
    assert obs.refresh_due(T0 + 32)
    msg = obs.reregistration_request(T0 + 32)
    assert msg.code is Code.GET and msg.token == b"ob" and msg.mid is None and msg.remote == SERVER
    assert msg.opt.observe == OBSERVE_REGISTER
    assert msg.opt == registration().opt
    assert not obs.refresh_due(T0 + 33)
    assert obs.next_deadline() == T0 + 32 + 30 + 2
    assert obs.on_response(response(2), T0 + 40) is Verdict.DELIVER


def test_deregistration_request_is_observe_1_with_same_token_and_options() -> None:
    obs = client()
    obs.on_response(response(1), T0)
    msg = obs.deregistration_request()
    assert msg.code is Code.GET and msg.token == b"ob" and msg.mid is None
    assert msg.opt.observe == OBSERVE_DEREGISTER
    assert msg.opt.uri_path == ("temp",) and msg.opt.accept == 0
    assert obs.next_deadline() is None and not obs.refresh_due(T0 + 1e6)
    assert obs.on_response(response(2), T0 + 1) is Verdict.STALE  # crossing notifications are not delivered
    assert obs.on_response(response(None), T0 + 2) is Verdict.FINAL  # the deregistration's answer


# --- server: registration, limits, removal (§4.1, §3.6, §4.5) -----------------------------------------------


def test_register_adds_an_observer_keyed_by_remote_and_token() -> None:
    table: ObserverTable[str] = ObserverTable()
    obs = table.register("r", registration(), T0)
    assert isinstance(obs, Observer)
    assert (obs.remote, obs.token, obs.resource) == (CLIENT, b"ob", "r")
    assert table.get(CLIENT, b"ob") is obs and table.observers("r") == [obs]
    assert len(table) == 1 and table.count("r") == 1
    assert table.register("r", registration(token=b"o2"), T0) is not None
    assert table.register("r", registration(remote=OTHER), T0) is not None
    assert len(table) == 3


@pytest.mark.parametrize(
    "request_",
    [registration(observe=None), registration(observe=OBSERVE_DEREGISTER), registration(code=Code.POST)],
)
def test_only_get_or_fetch_with_observe_0_registers(request_: Message) -> None:
    table: ObserverTable[str] = ObserverTable()
    assert table.register("r", request_, T0) is None
    assert len(table) == 0


def test_reregistration_replaces_the_entry_and_keeps_its_sequence() -> None:
    table: ObserverTable[str] = ObserverTable()
    obs = table.register("r", registration(), T0)
    assert obs is not None
    value = table.next_sequence(obs, T0)
    newer = registration()
    newer.opt.accept = 50
    assert table.register("r", newer, T0 + 5) is obs
    assert len(table) == 1 and obs.request is newer and obs.registered_at == T0 + 5
    assert is_fresher(value, 0, table.next_sequence(obs, T0 + 5), 0)


def test_limit_per_resource_refuses_new_observers_but_not_reregistrations() -> None:
    table: ObserverTable[str] = ObserverTable(max_per_resource=2)
    a = table.register("r", registration(token=b"a"), T0)
    assert a is not None and table.register("r", registration(token=b"b"), T0) is not None
    assert table.register("r", registration(token=b"c"), T0) is None
    assert table.refused == 1
    assert table.register("r", registration(token=b"a"), T0 + 1) is a  # replacing does not grow
    assert table.register("s", registration(token=b"c"), T0) is not None  # another resource has room
    table.remove(a)
    assert table.register("r", registration(token=b"c2"), T0) is not None


def test_limit_total_refuses_registrations_beyond_it() -> None:
    table: ObserverTable[str] = ObserverTable(max_total=2)
    assert table.register("r", registration(token=b"a"), T0) is not None
    assert table.register("s", registration(token=b"b"), T0) is not None
    assert table.register("t", registration(token=b"c"), T0) is None
    assert len(table) == 2 and table.refused == 1


def test_same_token_for_another_resource_moves_the_observer_or_drops_it_when_full() -> None:
    table: ObserverTable[str] = ObserverTable(max_per_resource=1)
    obs = table.register("r", registration(), T0)
    assert table.register("s", registration(), T0 + 1) is obs
    assert obs is not None and obs.resource == "s" and table.count("r") == 0 and table.count("s") == 1
    assert table.register("t", registration(token=b"x"), T0) is not None
    assert table.register("t", registration(), T0 + 2) is None  # "t" is full: the old entry is gone too
    assert table.get(CLIENT, b"ob") is None and len(table) == 1 and not obs.active


def test_deregistration_or_request_without_observe_removes_the_observer() -> None:
    table: ObserverTable[str] = ObserverTable()
    obs = table.register("r", registration(), T0)
    assert table.deregister(CLIENT, b"ob") is obs
    assert obs is not None and not obs.active and len(table) == 0 and table.observers("r") == []
    assert table.deregister(CLIENT, b"ob") is None
    assert not table.remove(obs)


def test_reset_to_a_notification_removes_the_observer() -> None:
    table: ObserverTable[str] = ObserverTable()
    obs = table.register("r", registration(), T0)
    assert obs is not None
    table.notify("r", T0)
    [due] = table.due(T0)
    msg = table.prepare_notification(due, response(None), T0)
    assert msg is not None and msg.type is Type.NON
    assert table.on_reset(msg) is obs
    assert len(table) == 0 and table.on_reset(msg) is None


def test_unacknowledged_con_notification_removes_the_observer() -> None:
    table: ObserverTable[str] = ObserverTable()
    obs = table.register("r", registration(), T0)
    assert obs is not None
    table.notify("r", T0, confirmable=True)
    msg = table.prepare_notification(obs, response(None), T0)
    assert msg is not None and msg.type is Type.CON
    table.notify("r", T0 + 1)
    assert table.on_timeout(msg) is obs
    assert len(table) == 0 and table.due(T0 + 100) == [] and table.next_deadline() is None


def test_timeout_of_a_message_without_observe_is_not_an_observers_timeout() -> None:
    table: ObserverTable[str] = ObserverTable()
    table.register("r", registration(), T0)
    plain = Message(Type.CON, Code.CONTENT, token=b"ob", remote=CLIENT)
    assert table.on_timeout(plain) is None
    assert len(table) == 1


def test_remove_remote_drops_all_its_observers() -> None:
    table: ObserverTable[str] = ObserverTable()
    table.register("r", registration(token=b"a"), T0)
    table.register("s", registration(token=b"b"), T0)
    table.register("r", registration(remote=OTHER), T0)
    assert len(table.remove_remote(CLIENT)) == 2
    assert len(table) == 1 and table.get(OTHER, b"ob") is not None


# --- server: notifications, CON every 24 h, congestion (§4.2 - §4.5) ----------------------------------------


def test_notification_is_addressed_stamped_and_non_by_default() -> None:
    table: ObserverTable[str] = ObserverTable()
    obs = table.register("r", registration(), T0)
    assert obs is not None
    first = table.next_sequence(obs, T0)  # the registration's response
    assert table.notify("r", T0 + 1) == 1
    assert table.next_deadline() == T0 + 1
    assert table.due(T0 + 1) == [obs]
    msg = table.prepare_notification(obs, response(None, payload=b"22"), T0 + 1)
    assert msg is not None
    assert (msg.type, msg.token, msg.remote, msg.mid) == (Type.NON, b"ob", CLIENT, None)
    assert msg.opt.observe is not None and is_fresher(first, 0, msg.opt.observe, 0)
    assert not obs.pending and table.due(T0 + 2) == [] and table.next_deadline() is None


def test_con_when_the_resource_asks() -> None:
    table: ObserverTable[str] = ObserverTable()
    obs = table.register("r", registration(), T0)
    assert obs is not None
    assert table.notification_type(obs, T0) is Type.NON
    assert table.notification_type(obs, T0, confirmable=True) is Type.CON
    table.notify("r", T0, confirmable=True)
    table.notify("r", T0)  # coalesced: the owed notification stays CON
    msg = table.prepare_notification(obs, response(None), T0)
    assert msg is not None and msg.type is Type.CON


def test_a_con_notification_at_least_every_24_hours() -> None:
    table: ObserverTable[str] = ObserverTable()
    obs = table.register("r", registration(), T0)
    assert obs is not None

    def send(now: float) -> Message:
        table.notify("r", now)
        [due] = table.due(now)
        msg = table.prepare_notification(due, response(None), now)
        assert msg is not None
        return msg

    assert send(T0 + CON_INTERVAL - 1).type is Type.NON
    con = send(T0 + CON_INTERVAL)  # 24 h since the registration, when the client last proved alive
    assert con.type is Type.CON and obs.last_con_at == T0 + CON_INTERVAL
    assert table.on_acknowledged(con, T0 + CON_INTERVAL + 1) is obs
    assert send(T0 + CON_INTERVAL + 2).type is Type.NON
    assert send(T0 + 2 * CON_INTERVAL).type is Type.CON


def test_reregistration_restarts_the_24_hour_clock() -> None:
    table: ObserverTable[str] = ObserverTable()
    obs = table.register("r", registration(), T0)
    assert obs is not None
    table.register("r", registration(), T0 + CON_INTERVAL - 10)
    assert table.notification_type(obs, T0 + CON_INTERVAL + 10) is Type.NON


def test_slow_observer_keeps_one_owed_notification_while_a_con_is_in_flight() -> None:
    table: ObserverTable[str] = ObserverTable()
    slow = table.register("r", registration(token=b"slow"), T0)
    fast = table.register("r", registration(token=b"fast"), T0)
    assert slow is not None and fast is not None
    table.notify("r", T0, confirmable=True)
    sent = {o.token: table.prepare_notification(o, response(None), T0) for o in table.due(T0)}
    assert set(sent) == {b"slow", b"fast"}
    assert table.on_acknowledged(sent[b"fast"], T0 + 0.1) is fast  # type: ignore[arg-type]
    for i in range(1000):  # the resource keeps changing; the slow observer never answers
        now = T0 + 1 + i * 0.01
        table.notify("r", now)
        for o in table.due(now):
            assert o is fast
            assert table.prepare_notification(o, response(None), now) is not None
    assert slow.pending and slow.in_flight is sent[b"slow"]
    assert len(table._heap) <= 4  # no queue per change
    assert table.prepare_notification(slow, response(None), T0 + 20) is None  # refused while in flight
    assert table.on_acknowledged(sent[b"slow"], T0 + 30) is slow  # type: ignore[arg-type]
    assert table.due(T0 + 30) == [slow]  # exactly one notification: the newest state
    msg = table.prepare_notification(slow, response(None, payload=b"newest"), T0 + 30)
    assert msg is not None and msg.payload == b"newest" and msg.type is Type.NON
    assert table.due(T0 + 31) == []


def test_acknowledgement_of_an_unknown_message_is_ignored() -> None:
    table: ObserverTable[str] = ObserverTable()
    table.register("r", registration(), T0)
    assert table.on_acknowledged(response(1), T0) is None


def test_error_notification_ends_the_observation_without_observe() -> None:
    table: ObserverTable[str] = ObserverTable()
    obs = table.register("r", registration(), T0)
    assert obs is not None
    table.notify("r", T0)
    msg = table.prepare_notification(obs, response(None, code=Code.NOT_FOUND), T0)
    assert msg is not None and msg.opt.observe is None and msg.token == b"ob"
    assert len(table) == 0 and not obs.active
    assert table.prepare_notification(obs, response(None), T0 + 1) is None


def test_min_interval_paces_notifications_and_coalesces_changes() -> None:
    table: ObserverTable[str] = ObserverTable(min_interval=3.0)
    obs = table.register("r", registration(), T0)
    assert obs is not None
    table.notify("r", T0)
    [due] = table.due(T0)
    assert table.prepare_notification(due, response(None), T0) is not None
    for dt in (0.5, 1.0, 2.0):
        table.notify("r", T0 + dt)
        assert table.due(T0 + dt) == []
    assert table.next_deadline() == T0 + 3.0
    assert table.due(T0 + 3.0) == [obs]
    assert table.prepare_notification(obs, response(None), T0 + 3.0) is not None
    assert table.due(T0 + 10) == []


def test_notifying_a_resource_without_observers_costs_nothing() -> None:
    table: ObserverTable[str] = ObserverTable()
    assert table.notify("nobody", T0) == 0
    assert table.next_deadline() is None and table.due(T0) == []


def test_removed_observer_is_not_returned_by_due() -> None:
    table: ObserverTable[str] = ObserverTable()
    table.register("r", registration(), T0)
    table.notify("r", T0)
    table.deregister(CLIENT, b"ob")
    assert table.next_deadline() is None and table.due(T0) == []
