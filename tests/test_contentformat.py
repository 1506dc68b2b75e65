import pytest
from hypothesis import given
from hypothesis import strategies as st

from coapio.protocol.contentformat import ContentFormat

REGISTERED = list(ContentFormat)


def test_registry_numbers_match_their_media_types() -> None:
    assert int(ContentFormat.TEXT_PLAIN) == 0
    assert ContentFormat.TEXT_PLAIN.media_type == "text/plain; charset=utf-8"
    assert ContentFormat.COSE_SIGN1.media_type == 'application/cose; cose-type="cose-sign1"'
    assert int(ContentFormat.LINK_FORMAT) == 40
    assert ContentFormat.JSON.media_type == "application/json"
    assert int(ContentFormat.CBOR) == 60
    assert ContentFormat.YANG_DATA_CBOR_SID.media_type == "application/yang-data+cbor; id=sid"
    assert ContentFormat.YANG_DATA_CBOR.media_type == "application/yang-data+cbor"
    assert int(ContentFormat.OSCORE) == 10001
    assert int(ContentFormat.LWM2M_CBOR) == 11544
    assert int(ContentFormat.IMAGE_SVG_XML) == 30000


def test_deflate_formats_carry_the_encoding_separately() -> None:
    assert ContentFormat.JSON_DEFLATE.media_type == "application/json"
    assert ContentFormat.JSON_DEFLATE.encoding == "deflate"
    assert ContentFormat.CBOR_DEFLATE.encoding == "deflate"
    assert ContentFormat.JSON.encoding is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("application/json", ContentFormat.JSON),
        ("APPLICATION/Link-Format", ContentFormat.LINK_FORMAT),
        ("text/plain", ContentFormat.TEXT_PLAIN),
        ("text/plain;charset=utf-8", ContentFormat.TEXT_PLAIN),
        ("text/plain ; charset = UTF-8 ", ContentFormat.TEXT_PLAIN),
        ('text/plain; charset="utf-8"', ContentFormat.TEXT_PLAIN),
        ("application/cose; cose-type=cose-mac0", ContentFormat.COSE_MAC0),
        ('application/cose;cose-type="cose-encrypt0"', ContentFormat.COSE_ENCRYPT0),
        ("application/yang-data+cbor; id=sid", ContentFormat.YANG_DATA_CBOR_SID),
        ("application/yang-data+cbor", ContentFormat.YANG_DATA_CBOR),
        ("application/json@deflate", ContentFormat.JSON_DEFLATE),
        ("application/cbor @ DEFLATE", ContentFormat.CBOR_DEFLATE),
        ("application/coap-payload; cf=12345", ContentFormat(12345)),
        ("application/coap-payload; cf=60", ContentFormat.CBOR),
    ],
)
def test_by_media_type_is_liberal_about_case_whitespace_and_quoting(
    text: str, expected: ContentFormat
) -> None:
    assert ContentFormat.by_media_type(text) is expected


def test_by_media_type_ignores_parameter_order() -> None:
    # No registered entry has two parameters, so build the comparison key directly.
    from coapio.protocol.contentformat import _media_type_key

    assert _media_type_key("a/b; x=1; y=2") == _media_type_key("A/B;y=2;x=1")


def test_by_media_type_takes_the_encoding_as_keyword() -> None:
    assert ContentFormat.by_media_type("application/json", encoding="deflate") is (ContentFormat.JSON_DEFLATE)
    with pytest.raises(ValueError, match="twice"):
        ContentFormat.by_media_type("application/json@deflate", encoding="deflate")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "json",
        "application/",
        "application/nonexistent",
        "text/plain; charset=iso-8859-1",
        "application/cose",
        "application/json@gzip",
        "application/json; foo",
        'text/plain; charset="utf-8',
        "application/coap-payload",
        "application/coap-payload; cf=65536",
        "application/coap-payload; cf=x",
    ],
)
def test_by_media_type_rejects_unknown_or_malformed_text_with_value_error(text: str) -> None:
    with pytest.raises(ValueError, match=r"media type|coap-payload") as info:
        ContentFormat.by_media_type(text)
    assert not isinstance(info.value, KeyError)
    assert repr(text) in str(info.value)


def test_parse_accepts_numbers_and_media_types() -> None:
    assert ContentFormat.parse("60") is ContentFormat.CBOR
    assert ContentFormat.parse(" 0 ") is ContentFormat.TEXT_PLAIN
    assert ContentFormat.parse("65535") is ContentFormat(65535)
    assert ContentFormat.parse("application/senml+json") is ContentFormat.SENML_JSON
    assert ContentFormat.parse("application/json@deflate") is ContentFormat.JSON_DEFLATE


@pytest.mark.parametrize("text", ["65536", "-1", "1.5", "", "cbor", "0x3c", "²", "application/x"])
def test_parse_rejects_bad_input_naming_it(text: str) -> None:
    with pytest.raises(ValueError) as info:
        ContentFormat.parse(text)
    assert repr(text.strip()) in str(info.value) or repr(text) in str(info.value)


def test_unregistered_numbers_become_cached_unnamed_members() -> None:
    cf = ContentFormat(12345)
    assert cf is ContentFormat(12345)
    assert cf == 12345
    assert cf.name == "CF_12345"
    assert cf.media_type == "application/coap-payload; cf=12345"
    assert cf.encoding is None
    assert not (cf.is_text or cf.is_json or cf.is_cbor)
    assert cf not in REGISTERED
    assert ContentFormat(65535).name == "CF_65535"


@pytest.mark.parametrize("value", [-1, 65536, 1 << 32, "60", 1.0, None, True])
def test_out_of_range_or_non_integer_values_are_rejected(value: object) -> None:
    with pytest.raises(ValueError):
        ContentFormat(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cf", "text", "json", "cbor"),
    [
        (ContentFormat.TEXT_PLAIN, True, False, False),
        (ContentFormat.TEXT_CSS, True, False, False),
        (ContentFormat.LINK_FORMAT, True, False, False),
        (ContentFormat.XML, True, False, False),
        (ContentFormat.IMAGE_SVG_XML, True, False, False),
        (ContentFormat.JAVASCRIPT, True, False, False),
        (ContentFormat.JSON, True, True, False),
        (ContentFormat.SENML_JSON, True, True, False),
        (ContentFormat.LWM2M_JSON, True, True, False),
        (ContentFormat.CBOR, False, False, True),
        (ContentFormat.SENML_CBOR, False, False, True),
        (ContentFormat.YANG_DATA_CBOR_SID, False, False, True),
        (ContentFormat.CBOR_SEQ, False, False, False),
        (ContentFormat.OCTET_STREAM, False, False, False),
        (ContentFormat.IMAGE_PNG, False, False, False),
        (ContentFormat.EXI, False, False, False),
        (ContentFormat.JSON_DEFLATE, False, False, False),
        (ContentFormat.CBOR_DEFLATE, False, False, False),
    ],
)
def test_classification_describes_the_payload_bytes_as_carried(
    cf: ContentFormat, text: bool, json: bool, cbor: bool
) -> None:
    assert (cf.is_text, cf.is_json, cf.is_cbor) == (text, json, cbor)


@given(st.sampled_from(REGISTERED))
def test_every_member_round_trips_through_its_media_type(cf: ContentFormat) -> None:
    assert ContentFormat.by_media_type(cf.media_type, encoding=cf.encoding) is cf
    assert ContentFormat.parse(str(int(cf))) is cf
    spelled = cf.media_type if cf.encoding is None else f"{cf.media_type}@{cf.encoding}"
    assert ContentFormat.parse(spelled) is cf
    assert ContentFormat.by_media_type(spelled.upper().replace(";", " ; ")) is cf


@given(st.integers(0, 0xFFFF))
def test_every_number_has_a_member_whose_media_type_leads_back_to_it(number: int) -> None:
    cf = ContentFormat(number)
    assert cf == number
    assert ContentFormat.by_media_type(cf.media_type, encoding=cf.encoding) is cf


@given(st.text())
def test_parse_raises_only_value_error(text: str) -> None:
    try:
        cf = ContentFormat.parse(text)
    except ValueError:
        return
    assert isinstance(cf, ContentFormat)
