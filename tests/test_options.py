"""Options (coapio.options): the registry, the ordered container, typed accessors, uints, block values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coapio.protocol.options import (
    KNOWN_OPTIONS,
    SPECS,
    BlockValue,
    OptionFormat,
    OptionNumber,
    Options,
    decode_uint,
    encode_uint,
)

EM, OP, UI, ST = OptionFormat.EMPTY, OptionFormat.OPAQUE, OptionFormat.UINT, OptionFormat.STRING

# --- the registry -----------------------------------------------------------------------------------

# Transcribed from the option tables of RFC 7252 §5.10 (Table 4), RFC 7641 §2, RFC 7959 §2.1,
# RFC 7967 §2, RFC 8613 §2, RFC 8768 §3, RFC 9175 §2.2.1 and §3.2.1, RFC 9177 §4.1 (Table 1).
# (number, name, critical, unsafe, no-cache-key, repeatable, format, min length, max length)
RFC_TABLE = [
    (1, "If-Match", True, False, False, True, OP, 0, 8),
    (3, "Uri-Host", True, True, False, False, ST, 1, 255),
    (4, "ETag", False, False, False, True, OP, 1, 8),
    (5, "If-None-Match", True, False, False, False, EM, 0, 0),
    (6, "Observe", False, True, False, False, UI, 0, 3),
    (7, "Uri-Port", True, True, False, False, UI, 0, 2),
    (8, "Location-Path", False, False, False, True, ST, 0, 255),
    (9, "OSCORE", True, False, False, False, OP, 0, 255),
    (11, "Uri-Path", True, True, False, True, ST, 0, 255),
    (12, "Content-Format", False, False, False, False, UI, 0, 2),
    (14, "Max-Age", False, True, False, False, UI, 0, 4),
    (15, "Uri-Query", True, True, False, True, ST, 0, 255),
    (16, "Hop-Limit", False, False, False, False, UI, 1, 1),
    (17, "Accept", True, False, False, False, UI, 0, 2),
    (19, "Q-Block1", True, True, False, False, UI, 0, 3),
    (20, "Location-Query", False, False, False, True, ST, 0, 255),
    (23, "Block2", True, True, False, False, UI, 0, 3),
    (27, "Block1", True, True, False, False, UI, 0, 3),
    (28, "Size2", False, False, True, False, UI, 0, 4),
    (31, "Q-Block2", True, True, False, True, UI, 0, 3),
    (35, "Proxy-Uri", True, True, False, False, ST, 1, 1034),
    (39, "Proxy-Scheme", True, True, False, False, ST, 1, 255),
    (60, "Size1", False, False, True, False, UI, 0, 4),
    (252, "Echo", False, False, True, False, OP, 1, 40),
    (258, "No-Response", False, True, False, False, UI, 0, 1),
    (292, "Request-Tag", False, False, False, True, OP, 0, 8),
]


@pytest.mark.parametrize("row", RFC_TABLE, ids=[r[1] for r in RFC_TABLE])
def test_registered_option_bits_match_the_rfc_table(row):
    number, _, critical, unsafe, no_cache_key, *_ = row
    opt = OptionNumber(number)
    assert opt.is_critical() is critical
    assert opt.is_elective() is not critical
    assert opt.is_unsafe() is unsafe
    assert opt.is_no_cache_key() is no_cache_key


@pytest.mark.parametrize("row", RFC_TABLE, ids=[r[1] for r in RFC_TABLE])
def test_registered_option_spec_matches_the_rfc_table(row):
    number, name, _, _, _, repeatable, fmt, lo, hi = row
    spec = OptionNumber(number).spec
    assert spec is not None
    assert (spec.name, spec.format, spec.min_length, spec.max_length, spec.repeatable) == (
        name,
        fmt,
        lo,
        hi,
        repeatable,
    )


def test_registry_holds_exactly_the_rfc_options():
    assert set(SPECS) == {r[0] for r in RFC_TABLE}
    assert frozenset(SPECS) == KNOWN_OPTIONS
    assert {int(n) for n in OptionNumber} == set(SPECS)


@given(st.integers(0, 65535))
def test_bits_derive_from_the_number_for_every_option(number):
    opt = OptionNumber(number)
    assert opt.is_critical() == bool(number & 1)
    assert opt.is_unsafe() == bool(number & 2)
    assert opt.is_no_cache_key() == (number & 0x1E == 0x1C)
    # RFC 7252 §5.4.6: NoCacheKey is only meaningful for safe-to-forward options.
    assert not (opt.is_no_cache_key() and opt.is_unsafe())


def test_unregistered_number_is_an_unnamed_member_without_spec():
    opt = OptionNumber(2049)
    assert isinstance(opt, OptionNumber)
    assert opt.is_critical()
    assert opt.spec is None
    assert opt.name == "OPTION_2049"
    assert OptionNumber(2049) is opt


@pytest.mark.parametrize("number", [-1, 65536])
def test_number_outside_16_bits_is_not_an_option_number(number):
    with pytest.raises(ValueError):
        OptionNumber(number)


# --- the container ----------------------------------------------------------------------------------


def test_options_keep_wire_order_and_repeated_options_keep_insertion_order():
    opt = Options()
    opt.add(11, "b")
    opt.add(3, "h")
    opt.add(11, "c")
    opt.add(1, b"")
    opt.add(60, 5)
    opt.add(11, "a")
    assert list(opt) == [(1, b""), (3, b"h"), (11, b"b"), (11, b"c"), (11, b"a"), (60, b"\x05")]


@given(st.lists(st.tuples(st.integers(0, 65535), st.binary(max_size=4))))
def test_container_is_a_stable_sort_by_number(pairs):
    built = Options()
    for number, value in pairs:
        built.add(number, value)
    expected = sorted(pairs, key=lambda p: p[0])
    assert list(built) == expected
    assert list(Options(pairs)) == expected


def test_get_returns_first_value_and_get_all_every_value_in_order():
    opt = Options([(11, b"a"), (11, b"b"), (12, b"")])
    assert opt.get(11) == b"a"
    assert opt.get_all(11) == [b"a", b"b"]
    assert opt.get(12) == b""
    assert opt.get(13) is None
    assert opt.get_all(13) == []


def test_contains_len_and_bool():
    opt = Options([(11, b"a"), (11, b"b")])
    assert 11 in opt
    assert 12 not in opt
    assert len(opt) == 2
    assert opt
    assert not Options()


def test_replace_sets_values_and_keeps_other_options_in_place():
    opt = Options([(3, b"h"), (11, b"a"), (11, b"b"), (15, b"q")])
    opt.replace(11, ["x"])
    assert list(opt) == [(3, b"h"), (11, b"x"), (15, b"q")]
    opt.replace(11, [])
    assert list(opt) == [(3, b"h"), (15, b"q")]


def test_remove_deletes_every_value_and_tolerates_absence():
    opt = Options([(11, b"a"), (11, b"b"), (12, b"")])
    opt.remove(11)
    opt.remove(99)
    assert list(opt) == [(12, b"")]


@pytest.mark.parametrize(
    ("value", "raw"),
    [
        (b"\x00\x01", b"\x00\x01"),
        (bytearray(b"ab"), b"ab"),
        (memoryview(b"cd"), b"cd"),
        ("päth", "päth".encode()),
        (0, b""),
        (300, b"\x01\x2c"),
        (BlockValue(1, True, 6), b"\x1e"),
    ],
)
def test_add_converts_python_values_to_wire_bytes(value, raw):
    opt = Options()
    opt.add(2048, value)
    assert opt.get(2048) == raw
    assert type(opt.get(2048)) is bytes


@pytest.mark.parametrize(("value", "error"), [(True, TypeError), (1.5, TypeError), (-1, ValueError)])
def test_add_rejects_values_without_a_wire_form(value, error):
    with pytest.raises(error):
        Options().add(14, value)


@pytest.mark.parametrize("number", [-1, 65536])
def test_add_rejects_numbers_outside_16_bits(number):
    with pytest.raises(ValueError):
        Options().add(number, b"")


def test_options_compare_by_content_and_are_unhashable():
    assert Options([(11, b"a"), (3, b"h")]) == Options([(3, b"h"), (11, b"a")])
    assert Options([(11, b"a"), (11, b"b")]) != Options([(11, b"b"), (11, b"a")])
    assert Options() != [(11, b"a")]
    with pytest.raises(TypeError):
        hash(Options())


def test_copy_is_independent():
    original = Options([(11, b"a")])
    copied = original.copy()
    copied.add(11, b"b")
    copied.uri_host = "h"
    assert list(original) == [(11, b"a")]
    assert copied == Options([(3, b"h"), (11, b"a"), (11, b"b")])


def test_repr_names_registered_options_and_shows_unknown_ones_in_hex():
    text = repr(Options([(3, b"h"), (5, b""), (4, b"\xab"), (11, b"a"), (14, b"\x3c"), (2049, b"\x01")]))
    for part in ("Uri-Host='h'", "If-None-Match", "ETag=ab", "Uri-Path='a'", "Max-Age=60", "2049=01"):
        assert part in text


# --- typed accessors --------------------------------------------------------------------------------

# (attribute, option number, Python value, raw values on the wire, value when absent)
ACCESSORS = [
    ("if_match", 1, (b"", b"\x01\x02"), [b"", b"\x01\x02"], ()),
    ("uri_host", 3, "example.com", [b"example.com"], None),
    ("etag", 4, b"\x01\x02\x03", [b"\x01\x02\x03"], None),
    ("etags", 4, (b"a", b"bc"), [b"a", b"bc"], ()),
    ("if_none_match", 5, True, [b""], False),
    ("observe", 6, 0, [b""], None),
    ("observe", 6, 2**24 - 1, [b"\xff\xff\xff"], None),
    ("uri_port", 7, 5683, [b"\x16\x33"], None),
    ("location_path", 8, ("a", "b"), [b"a", b"b"], ()),
    ("oscore", 9, b"\x09\x00", [b"\x09\x00"], None),
    ("uri_path", 11, ("sensors", "", "tëmp"), [b"sensors", b"", "tëmp".encode()], ()),
    ("content_format", 12, 50, [b"\x32"], None),
    ("max_age", 14, 3600, [b"\x0e\x10"], None),
    ("uri_query", 15, ("unit=c", "x"), [b"unit=c", b"x"], ()),
    ("hop_limit", 16, 16, [b"\x10"], None),
    ("accept", 17, 60, [b"\x3c"], None),
    ("q_block1", 19, BlockValue(2, True, 4), [b"\x2c"], None),
    ("location_query", 20, ("q=1",), [b"q=1"], ()),
    ("block2", 23, BlockValue(5, False, 6), [b"\x56"], None),
    ("block1", 27, BlockValue(0, True, 2), [b"\x0a"], None),
    ("size2", 28, 1 << 20, [b"\x10\x00\x00"], None),
    ("q_block2", 31, BlockValue(0, False, 0), [b""], None),
    ("proxy_uri", 35, "coap://h/p", [b"coap://h/p"], None),
    ("proxy_scheme", 39, "coap", [b"coap"], None),
    ("size1", 60, 2**32 - 1, [b"\xff\xff\xff\xff"], None),
    ("echo", 252, b"\x00" * 8, [b"\x00" * 8], None),
    ("no_response", 258, 26, [b"\x1a"], None),
    ("request_tag", 292, b"t", [b"t"], None),
    ("request_tags", 292, (b"a", b""), [b"a", b""], ()),
]


@pytest.mark.parametrize(
    ("attr", "number", "value", "raw", "absent"), ACCESSORS, ids=[a[0] for a in ACCESSORS]
)
def test_accessor_set_get_delete_round_trip(attr, number, value, raw, absent):
    opt = Options([(0, b"first"), (65000, b"last")])
    assert getattr(opt, attr) == absent
    setattr(opt, attr, value)
    assert opt.get_all(number) == raw
    assert getattr(opt, attr) == value
    items = list(opt)
    assert (items[0], items[-1]) == ((0, b"first"), (65000, b"last"))  # the others stay in place
    delattr(opt, attr)
    assert number not in opt
    assert getattr(opt, attr) == absent
    assert list(opt) == [(0, b"first"), (65000, b"last")]


@pytest.mark.parametrize(
    ("attr", "number", "value", "raw", "absent"), ACCESSORS, ids=[a[0] for a in ACCESSORS]
)
def test_accessor_reads_what_decoded_raw_options_say(attr, number, value, raw, absent):
    assert getattr(Options([(number, r) for r in raw]), attr) == value


@pytest.mark.parametrize("attr", [a[0] for a in ACCESSORS if a[4] is None])
def test_setting_a_single_valued_accessor_to_none_removes_it(attr):
    number, value = next((a[1], a[2]) for a in ACCESSORS if a[0] == attr)
    opt = Options()
    setattr(opt, attr, value)
    setattr(opt, attr, None)
    assert number not in opt


def test_setting_an_accessor_replaces_every_previous_value():
    opt = Options([(11, b"old1"), (11, b"old2"), (12, b"\x00")])
    opt.uri_path = ("new",)
    opt.content_format = 0
    assert list(opt) == [(11, b"new"), (12, b"")]


def test_single_etag_accessor_reads_the_first_of_several():
    assert Options([(4, b"a"), (4, b"b")]).etag == b"a"


def test_if_none_match_false_removes_it():
    opt = Options([(5, b"")])
    opt.if_none_match = False
    assert 5 not in opt


def test_max_age_or_default_is_60_when_absent():
    assert Options().max_age_or_default == 60
    assert Options([(14, b"")]).max_age_or_default == 0
    assert Options([(14, b"\x0e\x10")]).max_age_or_default == 3600


@pytest.mark.parametrize(("attr", "value"), [("uri_path", "a/b"), ("location_query", "q=1")])
def test_repeatable_string_accessor_refuses_a_single_string(attr, value):
    with pytest.raises(TypeError):
        setattr(Options(), attr, value)


@pytest.mark.parametrize(("attr", "value"), [("if_match", b"\x01"), ("etags", bytearray(b"x"))])
def test_repeatable_opaque_accessor_refuses_a_single_bytes_value(attr, value):
    with pytest.raises(TypeError):
        setattr(Options(), attr, value)


def test_string_accessor_replaces_invalid_utf8_instead_of_raising():
    assert Options([(11, b"\xff")]).uri_path == ("\ufffd",)


# --- uint encoding ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "raw"),
    [
        (0, b""),
        (1, b"\x01"),
        (255, b"\xff"),
        (256, b"\x01\x00"),
        (65535, b"\xff\xff"),
        (65536, b"\x01\x00\x00"),
        (2**32 - 1, b"\xff\xff\xff\xff"),
    ],
)
def test_uint_encoding_is_shortest_big_endian(value, raw):
    assert encode_uint(value) == raw
    assert decode_uint(raw) == value


def test_negative_uint_is_refused():
    with pytest.raises(ValueError):
        encode_uint(-1)


@given(st.integers(0, 2**64))
def test_uint_round_trips_without_leading_zero(value):
    raw = encode_uint(value)
    assert decode_uint(raw) == value
    assert not raw.startswith(b"\x00")


@pytest.mark.parametrize("raw", [b"\x00", b"\x00\x00", b"\x00\x00\x00\x3c"])
def test_uint_decoding_tolerates_leading_zeros(raw):
    assert decode_uint(raw) == int.from_bytes(raw, "big")
    assert Options([(14, raw)]).max_age == int.from_bytes(raw, "big")


def test_uint_accessor_reads_leading_zeros_and_writes_shortest_form():
    opt = Options([(12, b"\x00\x00\x32")])
    assert opt.content_format == 50
    opt.content_format = opt.content_format
    assert opt.get(12) == b"\x32"


# --- block values -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("szx", "size"), [(s, 16 << s) for s in range(7)])
def test_block_size_is_two_to_the_szx_plus_four(szx, size):
    block = BlockValue.for_size(3, True, size)
    assert block == BlockValue(3, True, szx)
    assert block.size == size
    assert block.start == 3 * size
    assert not block.is_bert


@pytest.mark.parametrize("size", [0, 8, 15, 17, 24, 100, 1000, 2048, -16])
def test_for_size_refuses_sizes_that_are_not_a_power_of_two_from_16_to_1024(size):
    with pytest.raises(ValueError):
        BlockValue.for_size(0, False, size)


@pytest.mark.parametrize(
    ("block", "raw"),
    [
        (BlockValue(0, False, 0), b""),
        (BlockValue(0, True, 3), b"\x0b"),  # RFC 7959 notation 0/1/128
        (BlockValue(2, False, 2), b"\x22"),  # 2/0/64
        (BlockValue(1, True, 6), b"\x1e"),  # 1/1/1024
        (BlockValue(16, False, 6), b"\x01\x06"),
        (BlockValue((1 << 20) - 1, True, 6), b"\xff\xff\xfe"),
        (BlockValue(3, True, 7), b"\x3f"),  # BERT
    ],
)
def test_block_value_wire_form(block, raw):
    assert block.encode() == raw
    assert BlockValue.decode(raw) == block


def test_block_value_decoding_tolerates_leading_zeros():
    assert BlockValue.decode(b"\x00\x00\x1e") == BlockValue(1, True, 6)


@given(st.integers(0, (1 << 20) - 1), st.booleans(), st.integers(0, 7))
def test_block_value_round_trips(num, more, szx):
    block = BlockValue(num, more, szx)
    raw = block.encode()
    assert len(raw) <= 3
    assert BlockValue.decode(raw) == block


@pytest.mark.parametrize(("num", "szx"), [(-1, 0), (1 << 20, 0), (0, -1), (0, 8)])
def test_block_value_refuses_fields_out_of_range(num, szx):
    with pytest.raises(ValueError):
        BlockValue(num, False, szx)


def test_bert_block_has_size_1024_and_counts_1024_byte_units():
    block = BlockValue(3, False, 7)
    assert block.is_bert
    assert block.size == 1024
    assert block.start == 3 * 1024


def test_reduced_keeps_the_position_with_a_smaller_block():
    assert BlockValue(1, True, 6).reduced(4) == BlockValue(4, True, 4)
    assert BlockValue(1, True, 6).reduced(6) == BlockValue(1, True, 6)


def test_reduced_refuses_to_grow_the_block():
    with pytest.raises(ValueError):
        BlockValue(1, True, 4).reduced(5)


@given(st.integers(0, 1 << 12), st.integers(0, 6), st.data())
def test_reduced_keeps_the_start_offset(num, szx, data):
    smaller = data.draw(st.integers(0, szx))
    block = BlockValue(num, False, szx)
    assert block.reduced(smaller).start == block.start


@pytest.mark.parametrize("smaller", [6, 5, 0])
def test_reduced_bert_block_keeps_the_start_offset(smaller):
    block = BlockValue(3, False, 7)
    assert block.reduced(smaller).start == block.start == 3072


# --- unrecognized critical options (RFC 7252 §5.4.1) ------------------------------------------------


def test_unknown_critical_option_is_unrecognized():
    assert Options([(11, b"a"), (2049, b"")]).unrecognized_critical() == [2049]


def test_unknown_elective_option_is_not_listed():
    assert Options([(2048, b"x"), (65000, b"y" * 300)]).unrecognized_critical() == []


@pytest.mark.parametrize(
    ("number", "value"),
    [
        (3, b""),  # Uri-Host: 1..255
        (5, b"\x00"),  # If-None-Match: empty
        (7, b"\x00\x00\x16"),  # Uri-Port: 0..2
        (23, b"\x00\x00\x00\x16"),  # Block2: 0..3
        (17, b"\x01\x02\x03"),  # Accept: 0..2
        (35, b"x" * 1035),  # Proxy-Uri: 1..1034
        (1, b"x" * 9),  # If-Match: 0..8
    ],
)
def test_known_critical_option_with_out_of_range_length_is_unrecognized(number, value):
    assert Options([(number, value)]).unrecognized_critical() == [number]


@pytest.mark.parametrize(("number", "value"), [(3, b"h" * 255), (35, b"x" * 1034), (23, b"\x16" * 3)])
def test_known_critical_option_at_its_length_bounds_is_recognized(number, value):
    assert Options([(number, value)]).unrecognized_critical() == []


@pytest.mark.parametrize(("number", "value"), [(4, b"x" * 9), (14, b"\x01" * 5), (252, b"")])
def test_elective_option_with_out_of_range_length_is_not_listed(number, value):
    assert Options([(number, value)]).unrecognized_critical() == []


@pytest.mark.parametrize(("number", "value"), [(3, b"h"), (23, b"\x16"), (17, b"\x32"), (9, b"")])
def test_repeated_non_repeatable_critical_option_is_unrecognized_once(number, value):
    assert Options([(number, value)] * 3).unrecognized_critical() == [number]


@pytest.mark.parametrize(("number", "value"), [(1, b"\x01"), (11, b"a"), (15, b"q=1")])
def test_repeated_repeatable_critical_option_is_recognized(number, value):
    assert Options([(number, value)] * 2).unrecognized_critical() == []


def test_repeated_non_repeatable_elective_option_is_not_listed():
    assert Options([(12, b"")] * 2 + [(14, b"")] * 2).unrecognized_critical() == []


def test_repeated_q_block2_is_recognized():
    assert Options([(31, b"\x12"), (31, b"\x22")]).unrecognized_critical() == []


def test_unrecognized_options_are_listed_in_wire_order():
    opt = Options([(2049, b""), (3, b""), (23, b"\x01"), (23, b"\x02")])
    assert opt.unrecognized_critical() == [3, 23, 2049]


def test_custom_recognized_set_makes_known_options_unrecognized():
    opt = Options([(3, b"h"), (11, b"a"), (23, b"\x16")])
    assert opt.unrecognized_critical(recognized={11}) == [3, 23]
    assert opt.unrecognized_critical(recognized=KNOWN_OPTIONS) == []


def test_custom_recognized_set_accepts_an_unregistered_critical_option():
    assert Options([(2049, b"\x01")]).unrecognized_critical(recognized={2049}) == []
