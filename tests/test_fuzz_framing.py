"""Fuzzing of the RFC 8323 decoders: ``TcpDecoder.feed``, ``decode_ws`` and ``Connection.receive``.

The rule, as in test_fuzz_decoders.py: a decoder returns messages or raises the library's own error
(:class:`~coapio.protocol.framing.FramingError`), and the connection turns anything into events
(a :class:`~coapio.protocol.reliable.ProtocolViolation` and an Abort at worst), never an exception.
The checks themselves live in fuzz/fuzz_framing.py, the atheris target; here hypothesis drives them with
random bytes and with valid streams damaged by bit flips, truncations, insertions and deletions.

Longer runs: ``HYPOTHESIS_PROFILE=fuzz COAPIO_FUZZ_EXAMPLES=100000 pytest tests/test_fuzz_framing.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from strategies import messages

from coapio.error import CoapError
from coapio.protocol.framing import FramingError, TcpDecoder, decode_ws, encode_tcp, encode_ws
from coapio.protocol.reliable import Connection, Event, ProtocolViolation

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fuzz"))
import coapfuzz
import fuzz_framing

CSM = fuzz_framing.CSM


@st.composite
def damaged(draw: st.DrawFn, encode: object) -> bytes:
    """Valid frames (TCP or WebSocket) damaged by one to four edits."""
    msgs = draw(st.lists(messages(), min_size=1, max_size=3))
    data = bytearray(b"".join(encode(m) for m in msgs))  # type: ignore[operator]
    for _ in range(draw(st.integers(1, 4))):
        operation = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite"]))
        if operation == "insert":
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif not data:
            continue
        elif operation == "flip":
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
        elif operation == "truncate":
            del data[draw(st.integers(0, len(data) - 1)) :]
        elif operation == "delete":
            at = draw(st.integers(0, len(data) - 1))
            del data[at : at + draw(st.integers(1, 8))]
        else:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@given(st.binary(max_size=600))
@example(b"\x11\x01\x02\xff")
@example(b"\x10" + bytes.fromhex("f0ffffffff01"))
def test_fuzz_random_bytes_through_every_rfc8323_decoder(data: bytes) -> None:
    fuzz_framing.TestOneInput(data)


@given(st.integers(0, 31), damaged(encode_tcp))
def test_fuzz_damaged_tcp_streams(control: int, data: bytes) -> None:
    fuzz_framing.TestOneInput(bytes((control | 16,)) + data)


@given(st.integers(0, 31), damaged(encode_ws))
def test_fuzz_damaged_websocket_messages(control: int, data: bytes) -> None:
    fuzz_framing.TestOneInput(bytes((control | 16,)) + data)


@given(st.binary(max_size=300), st.integers(1, 4000))
def test_decoders_raise_only_framing_errors_for_any_limit(data: bytes, limit: int) -> None:
    for decode in (lambda: TcpDecoder(limit).feed(data), lambda: decode_ws(data, limit)):
        try:
            decode()
        except FramingError:
            pass
        except CoapError as error:  # pragma: no cover - a failure message, not a path
            raise AssertionError(f"{data.hex()}: {type(error).__name__} is not a FramingError") from error


@given(st.lists(st.binary(max_size=64), max_size=8), st.booleans())
def test_connection_receive_never_raises_and_aborts_at_most_once(
    chunks: list[bytes], websocket: bool
) -> None:
    conn = Connection(client=True, websocket=websocket, max_message_size=256)
    first = (b"\x00" + CSM[1:]) if websocket else CSM
    events: list[Event] = list(conn.receive(first, 0))
    for chunk in chunks:
        events += conn.receive(chunk, 1)
    assert sum(isinstance(e, ProtocolViolation) for e in events) <= 1
    conn.on_timer(1e9)
    conn.data_to_send()


def test_fuzz_target_runs_its_seeds_and_replays_a_corpus_without_atheris(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seeds = fuzz_framing.seeds()
    for seed in seeds:
        fuzz_framing.TestOneInput(seed)
    for i, seed in enumerate(seeds[:5]):
        (tmp_path / f"input-{i}").write_bytes(seed)
    monkeypatch.setattr(sys, "argv", ["fuzz_framing.py", str(tmp_path), "-max_total_time=1"])
    coapfuzz.main(fuzz_framing.TestOneInput, [], atheris=None)
    assert "replayed 5 inputs" in capsys.readouterr().out
