"""DTLS record framing (coapio.protocol.dtls.records): splitting, packing, recognising a ClientHello;
fuzzed: any bytes decode or raise the library's own RecordError."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coapio.protocol.dtls import RecordError, records


def record(content_type: int, body: bytes, epoch: int = 0) -> bytes:
    return bytes([content_type, 0xFE, 0xFD]) + epoch.to_bytes(2, "big") + bytes(6) + \
        len(body).to_bytes(2, "big") + body


def client_hello(cookie: bytes = b"", session_id: bytes = b"") -> bytes:
    body = b"\xfe\xfd" + bytes(32) + bytes([len(session_id)]) + session_id + bytes([len(cookie)]) + cookie \
        + b"\x00\x02\xc0\xa8\x01\x00"
    handshake = b"\x01" + len(body).to_bytes(3, "big") + b"\x00\x00" + b"\x00\x00\x00" + \
        len(body).to_bytes(3, "big") + body
    return record(records.HANDSHAKE, handshake)


def test_split_and_pack_round_trip_within_the_mtu() -> None:
    parts = [record(22, bytes(300)), record(22, bytes(500)), record(20, b"\x01"), record(22, bytes(40))]
    assert records.split(b"".join(parts)) == parts
    datagrams = records.pack(parts, 850)
    assert b"".join(datagrams) == b"".join(parts)
    assert [len(d) for d in datagrams] == [313 + 513 + 14, 53]
    assert records.pack([record(22, bytes(2000))], 850) == [record(22, bytes(2000))]  # alone if too big


@pytest.mark.parametrize("data", [b"\x16\xfe\xfd", record(22, bytes(10))[:-1], b"\x05" + bytes(12),
                                  b"\x16\x03\x03" + bytes(10)])
def test_truncated_or_foreign_records_are_refused(data: bytes) -> None:
    with pytest.raises(RecordError):
        records.split(data)


def test_client_hello_is_recognised_and_its_cookie_read() -> None:
    hello = client_hello(b"c" * 16, b"s" * 4)
    assert records.is_client_hello(hello)
    assert records.client_hello_cookie(hello) == b"c" * 16
    assert records.client_hello_cookie(client_hello()) == b""
    assert not records.is_client_hello(record(22, b"\x01" + bytes(20), epoch=1))  # not epoch 0
    assert not records.is_client_hello(record(23, bytes(40)))
    with pytest.raises(RecordError):
        records.client_hello_cookie(client_hello(b"c" * 16)[:70])


@given(st.binary(max_size=300))
def test_split_decodes_or_raises_record_error(data: bytes) -> None:
    try:
        parts = records.split(data)
    except RecordError:
        return
    assert b"".join(parts) == data


@given(st.binary(max_size=200), st.integers(0, 3))
def test_client_hello_parsing_decodes_or_raises_record_error(tail: bytes, cut: int) -> None:
    for data in (tail, client_hello(tail[:32])[: len(client_hello(tail[:32])) - cut] + tail[32:],
                 b"\x16\xfe\xfd\x00\x00" + tail):
        try:
            cookie = records.client_hello_cookie(data)
        except RecordError:
            assert not records.is_client_hello(data) or len(data) >= 0
            continue
        assert records.is_client_hello(data) and len(cookie) <= 255
