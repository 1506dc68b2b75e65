"""Message types and codes (coapio.protocol.codes): values, classes, predicates, unregistered codes, text."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coapio.protocol.codes import Code, Type


def test_types_have_the_rfc7252_wire_values():
    assert [(t.name, int(t)) for t in Type] == [("CON", 0), ("NON", 1), ("ACK", 2), ("RST", 3)]


# RFC 7252 §12.1.1 and §12.1.2, verbatim: every method and response code the base specification registers.
RFC7252_CODES = [
    ("0.01", "GET"),
    ("0.02", "POST"),
    ("0.03", "PUT"),
    ("0.04", "DELETE"),
    ("2.01", "CREATED"),
    ("2.02", "DELETED"),
    ("2.03", "VALID"),
    ("2.04", "CHANGED"),
    ("2.05", "CONTENT"),
    ("4.00", "BAD_REQUEST"),
    ("4.01", "UNAUTHORIZED"),
    ("4.02", "BAD_OPTION"),
    ("4.03", "FORBIDDEN"),
    ("4.04", "NOT_FOUND"),
    ("4.05", "METHOD_NOT_ALLOWED"),
    ("4.06", "NOT_ACCEPTABLE"),
    ("4.12", "PRECONDITION_FAILED"),
    ("4.13", "REQUEST_ENTITY_TOO_LARGE"),
    ("4.15", "UNSUPPORTED_CONTENT_FORMAT"),
    ("5.00", "INTERNAL_SERVER_ERROR"),
    ("5.01", "NOT_IMPLEMENTED"),
    ("5.02", "BAD_GATEWAY"),
    ("5.03", "SERVICE_UNAVAILABLE"),
    ("5.04", "GATEWAY_TIMEOUT"),
    ("5.05", "PROXYING_NOT_SUPPORTED"),
]

# Codes added by later RFCs: 7959 (block-wise), 8132 (FETCH/PATCH), 8516, 8768, 8323 (signals).
EXTENSION_CODES = [
    ("0.00", "EMPTY"),
    ("0.05", "FETCH"),
    ("0.06", "PATCH"),
    ("0.07", "IPATCH"),
    ("2.31", "CONTINUE"),
    ("4.08", "REQUEST_ENTITY_INCOMPLETE"),
    ("4.09", "CONFLICT"),
    ("4.22", "UNPROCESSABLE_ENTITY"),
    ("4.29", "TOO_MANY_REQUESTS"),
    ("5.08", "HOP_LIMIT_REACHED"),
    ("7.01", "CSM"),
    ("7.02", "PING"),
    ("7.03", "PONG"),
    ("7.04", "RELEASE"),
    ("7.05", "ABORT"),
]


def _byte(dotted: str) -> int:
    cls, detail = dotted.split(".")
    return int(cls) << 5 | int(detail)


@pytest.mark.parametrize(("dotted", "name"), RFC7252_CODES + EXTENSION_CODES)
def test_registered_code_has_its_rfc_value_and_name(dotted, name):
    code = Code[name]
    assert int(code) == _byte(dotted)
    assert code.dotted == dotted
    assert Code(_byte(dotted)) is code


def test_every_named_code_is_one_the_rfcs_register():
    assert {c.name for c in Code} == {name for _, name in RFC7252_CODES + EXTENSION_CODES}


def test_class_and_detail_split_the_byte_three_five():
    assert Code.CONTENT.code_class == 2
    assert Code.CONTENT.detail == 5
    assert Code.CONTINUE.detail == 31
    assert Code.ABORT.code_class == 7


@given(st.integers(0, 255))
def test_any_byte_is_a_code_and_dotted_round_trips(value):
    code = Code(value)
    assert int(code) == value
    assert code.code_class << 5 | code.detail == value
    assert _byte(code.dotted) == value
    assert len(code.dotted) == 4


def test_unregistered_code_becomes_an_unnamed_member():
    code = Code(0x46)
    assert isinstance(code, Code)
    assert code.dotted == "2.06"
    assert code.name == "CODE_2_06"
    assert code not in list(Code)  # iteration lists only the registered codes
    assert code.is_response()
    assert code.is_successful()


def test_unregistered_code_is_one_cached_object():
    assert Code(0x9F) is Code(0x9F)


@pytest.mark.parametrize("value", [-1, 256, 1000])
def test_value_outside_one_byte_is_not_a_code(value):
    with pytest.raises(ValueError):
        Code(value)


def test_non_integer_is_not_a_code():
    with pytest.raises(ValueError):
        Code("2.05")  # type: ignore[arg-type]


@given(st.integers(0, 255))
def test_each_code_is_in_exactly_the_range_its_class_gives(value):
    code = Code(value)
    cls = value >> 5
    assert code.is_request() == (cls == 0 and value != 0)
    assert code.is_response() == (2 <= cls <= 5)
    assert code.is_successful() == (cls == 2)
    assert code.is_signal() == (cls == 7)


@pytest.mark.parametrize(
    ("code", "is_request", "is_response", "is_successful", "is_signal"),
    [
        (Code.EMPTY, False, False, False, False),
        (Code.GET, True, False, False, False),
        (Code.IPATCH, True, False, False, False),
        (Code(0x1F), True, False, False, False),  # 0.31: an unregistered method is still a request
        (Code(0x20), False, False, False, False),  # class 1 is reserved
        (Code.CREATED, False, True, True, False),
        (Code.CONTINUE, False, True, True, False),
        (Code(0x60), False, True, False, False),  # 3.00: reserved, yet in the response range
        (Code.NOT_FOUND, False, True, False, False),
        (Code.PROXYING_NOT_SUPPORTED, False, True, False, False),
        (Code(0xC0), False, False, False, False),  # class 6 is reserved
        (Code.CSM, False, False, False, True),
        (Code(0xFF), False, False, False, True),
    ],
)
def test_code_predicates(code, is_request, is_response, is_successful, is_signal):
    assert code.is_request() is is_request
    assert code.is_response() is is_response
    assert code.is_successful() is is_successful
    assert code.is_signal() is is_signal


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (Code.CONTENT, "2.05 Content"),
        (Code.NOT_FOUND, "4.04 Not Found"),
        (Code.GET, "0.01 Get"),
        (Code.INTERNAL_SERVER_ERROR, "5.00 Internal Server Error"),
    ],
)
def test_str_is_dotted_code_and_readable_name(code, text):
    assert str(code) == text


def test_str_of_unregistered_code_starts_with_its_dotted_form():
    assert str(Code(0x46)).startswith("2.06 ")


def test_codes_compare_as_integers():
    assert Code.CONTENT == 69
    assert Code.GET < Code.CONTENT < Code.NOT_FOUND
