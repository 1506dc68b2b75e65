import pytest
from hypothesis import given
from hypothesis import strategies as st

from coapio.error import LinkFormatError
from coapio.protocol.linkformat import (
    _PARMNAME_RE,
    Link,
    _resolve_reference,
    filter_links,
    parse_links,
    serialize_links,
)

# The link values of RFC 6690 §5, with the RFC's line breaks.
RFC6690_SENSORS = """</sensors/temp>;if="sensor",
</sensors/light>;if="sensor\""""
RFC6690_ANCHORS = """</sensors>;ct=40;title="Sensor Index",
   </sensors/temp>;rt="temperature-c";if="sensor",
   </sensors/light>;rt="light-lux";if="sensor",
   <http://www.example.com/sensors/t123>;anchor="/sensors/temp"
   ;rel="describedby",
   </t>;anchor="/sensors/temp";rel="alternate\""""

DISCOVERY = parse_links(
    '</link1>;rt="Type1 Type2";if="If1";ct=40,'
    '</link2>;rt="Type2 Type3";if="If2";ct="0 40",'
    "</link3>;rt=Type3;if=foo;ct=60;obs,"
    "</other>;title=none"
)


def hrefs(links: list[Link]) -> list[str]:
    return [link.href for link in links]


# --- parsing -------------------------------------------------------------------------------------


def test_rfc6690_examples_parse_with_their_line_breaks() -> None:
    assert parse_links(RFC6690_SENSORS) == [
        Link("/sensors/temp", (("if", "sensor"),)),
        Link("/sensors/light", (("if", "sensor"),)),
    ]
    links = parse_links(RFC6690_ANCHORS)
    assert hrefs(links) == [
        "/sensors",
        "/sensors/temp",
        "/sensors/light",
        "http://www.example.com/sensors/t123",
        "/t",
    ]
    assert links[0].attributes == (("ct", "40"), ("title", "Sensor Index"))
    assert links[3].attributes == (("anchor", "/sensors/temp"), ("rel", "describedby"))


def test_empty_or_blank_input_has_no_links() -> None:
    assert parse_links("") == []
    assert parse_links(b"") == []
    assert parse_links(" \r\n\t") == []


def test_quoted_values_may_hold_commas_semicolons_and_escapes() -> None:
    (link,) = parse_links(r'</a>;title="one, two; three";x="say \"hi\" \\ back\slash"')
    assert link.get("title") == "one, two; three"
    assert link.get("x") == 'say "hi" \\ backslash'


def test_whitespace_around_separators_is_accepted() -> None:
    links = parse_links(' </a> ; rt = "x" ;obs ;ct= 40 ,\n\t</b>  ')
    assert links == [Link("/a", [("rt", "x"), ("obs", None), ("ct", "40")]), Link("/b")]


def test_valueless_attributes_are_kept_as_none() -> None:
    (link,) = parse_links("</s>;obs;rt=a;obs")
    assert link.attributes == (("obs", None), ("rt", "a"), ("obs", None))
    assert link.get("obs") is None
    assert link.get_all("obs") == [None, None]
    assert link.get_all("missing") == []


def test_repeated_attributes_keep_order_and_values_splits_them() -> None:
    (link,) = parse_links('</s>;rt="a b";if=x;rt=c;rt')
    assert link.get("rt") == "a b"
    assert link.get_all("rt") == ["a b", "c", None]
    assert link.values("rt") == ["a", "b", "c"]
    assert link.values("RT") == ["a", "b", "c"]
    assert link.values("title") == []


def test_extended_parameter_names_and_ptoken_values() -> None:
    (link,) = parse_links("</s>;title*=UTF-8'en'%e2%82%ac;type=text/plain;x=<a>?=@")
    assert link.attributes == (
        ("title*", "UTF-8'en'%e2%82%ac"),
        ("type", "text/plain"),
        ("x", "<a>?=@"),
    )


def test_bytes_are_decoded_as_utf8() -> None:
    (link,) = parse_links('</caf\u00e9>;title="\u00fcber"'.encode())
    assert link.href == "/caf\u00e9"
    assert link.get("title") == "\u00fcber"


@pytest.mark.parametrize(
    ("text", "fault", "position"),
    [
        ("</a>,", "trailing ','", 4),
        ("</a>, \n", "trailing ','", 4),
        (",</a>", "expected '<'", 0),
        ("/a", "expected '<'", 0),
        ("</a>,/b", "expected '<'", 5),
        ("</a>,,</b>", "expected '<'", 5),
        ("</a", "unterminated '<'", 0),
        ('</a>;title="x', "unterminated quoted", 11),
        ('</a>;title="x\\"', "unterminated quoted", 11),
        ("</a>;", "attribute name", 5),
        ("</a>;=x", "attribute name", 5),
        ("</a>;;rt=x", "attribute name", 5),
        ("</a>;*=x", "attribute name", 5),
        ("</a>;rt=", "expected a value", 8),
        ("</a>;rt=,</b>", "expected a value", 8),
        ("</a>;rt=a b", "expected ',' or ';'", 10),
        ("</a>x", "expected ',' or ';'", 4),
        ('</a>;t="x"y', "expected ',' or ';'", 10),
        ("</a b>", "' ' inside", 3),
        ("<</a>", "'<' inside", 1),
        ("</a\n>", "'\\n' inside", 3),
    ],
)
def test_malformed_input_names_fault_and_position(text: str, fault: str, position: int) -> None:
    with pytest.raises(LinkFormatError, match="at position") as info:
        parse_links(text)
    message = str(info.value)
    assert fault in message
    assert message.endswith(f"at position {position}")


def test_invalid_utf8_is_a_link_format_error() -> None:
    with pytest.raises(LinkFormatError, match="not UTF-8: byte 5"):
        parse_links(b"</a>;\xc3(")


# --- Link values ---------------------------------------------------------------------------------


def test_link_accepts_any_iterable_of_pairs_and_is_hashable() -> None:
    link = Link("/a", [("rt", "x"), ("obs", None)])
    assert link.attributes == (("rt", "x"), ("obs", None))
    assert hash(link) == hash(Link("/a", (("rt", "x"), ("obs", None))))


@pytest.mark.parametrize("href", ["/a b", "/a>", "<", "/\x00", "/a\tb"])
def test_link_rejects_hrefs_that_cannot_be_written(href: str) -> None:
    with pytest.raises(LinkFormatError, match="not a URI-Reference"):
        Link(href)


@pytest.mark.parametrize("name", ["", "a b", "a=b", "*", "a,b", "t**"])
def test_link_rejects_attribute_names_that_cannot_be_written(name: str) -> None:
    with pytest.raises(LinkFormatError, match="parmname"):
        Link("/a", [(name, "x")])


# --- serializing ---------------------------------------------------------------------------------


def test_serialize_quotes_rfc6690_quoted_attributes_and_non_ptokens() -> None:
    links = [
        Link("/s", [("rt", "temp"), ("if", "sensor"), ("ct", "40"), ("sz", "1024"), ("obs", None)]),
        Link("/t", [("ct", "0 40"), ("title", "A"), ("x", 'a"b\\c'), ("e", "")]),
        Link("/u", [("anchor", "/s"), ("rel", "alternate"), ("rev", "x"), ("y", "a,b")]),
    ]
    assert serialize_links(links) == (
        '</s>;rt="temp";if="sensor";ct=40;sz=1024;obs,'
        '</t>;ct="0 40";title="A";x="a\\"b\\\\c";e="",'
        '</u>;anchor="/s";rel="alternate";rev="x";y="a,b"'
    )
    assert str(links[0]) == '</s>;rt="temp";if="sensor";ct=40;sz=1024;obs'


def test_rfc6690_example_survives_a_round_trip_without_whitespace() -> None:
    links = parse_links(RFC6690_ANCHORS)
    text = serialize_links(links)
    assert "\n" not in text and " ;" not in text
    assert parse_links(text) == links


def test_serialize_of_nothing_is_empty() -> None:
    assert serialize_links([]) == ""


HREFS = st.text(st.characters(exclude_categories=("Cc", "Cs"), exclude_characters=" <>"))
NAMES = st.from_regex(_PARMNAME_RE, fullmatch=True)
VALUES = st.none() | st.text(st.characters(codec="utf-8"))
LINKS = st.builds(Link, HREFS, st.lists(st.tuples(NAMES, VALUES), max_size=5).map(tuple))


@given(st.lists(LINKS, max_size=5))
def test_parse_inverts_serialize(links: list[Link]) -> None:
    text = serialize_links(links)
    assert parse_links(text) == links
    assert parse_links(text.encode()) == links


# --- fuzzing -------------------------------------------------------------------------------------


def _parses_or_raises_link_format_error(data: str | bytes) -> None:
    try:
        links = parse_links(data)
    except LinkFormatError:
        return
    assert isinstance(links, list)
    assert parse_links(serialize_links(links)) == links


@given(st.text())
def test_fuzz_text(text: str) -> None:
    _parses_or_raises_link_format_error(text)


@given(st.binary())
def test_fuzz_bytes(data: bytes) -> None:
    _parses_or_raises_link_format_error(data)


@given(st.text(alphabet='<>;,="\\ \n*/abrt'))
def test_fuzz_grammar_characters(text: str) -> None:
    _parses_or_raises_link_format_error(text)


# --- filtering (RFC 6690 §4.1) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (["rt=Type1"], ["/link1"]),
        (["rt=Type2"], ["/link1", "/link2"]),
        (["rt=Type"], []),
        (["rt=Type*"], ["/link1", "/link2", "/link3"]),
        (["rt=Type1 Type2"], []),
        (["rt=*"], ["/link1", "/link2", "/link3"]),
        (["href=/link*"], ["/link1", "/link2", "/link3"]),
        (["href=/link2"], ["/link2"]),
        (["href=/link"], []),
        (["href=*"], ["/link1", "/link2", "/link3", "/other"]),
        (["if=If*"], ["/link1", "/link2"]),
        (["if=If2"], ["/link2"]),
        (["ct=40"], ["/link1", "/link2"]),
        (["ct=0"], ["/link2"]),
        (["ct=4*"], ["/link1", "/link2"]),
        (["title=none"], ["/other"]),
        (["title=no*"], ["/other"]),
        (["title=no"], []),
        (["obs=*"], ["/link3"]),
        (["obs="], ["/link3"]),
        (["sz=*"], []),
        (["RT=Type1"], ["/link1"]),
        (["rt=type1"], []),
        ([], ["/link1", "/link2", "/link3", "/other"]),
        (["rt=Type2", "if=If2"], ["/link2"]),
        (["rt=Type2", "if=foo"], []),
    ],
)
def test_filter_selects_matching_links(query: list[str], expected: list[str]) -> None:
    assert hrefs(filter_links(DISCOVERY, query)) == expected


def test_filter_matches_any_occurrence_of_a_repeated_attribute() -> None:
    links = parse_links("</a>;rt=x;rt=y,</b>;title=p;title=q")
    assert hrefs(filter_links(links, ["rt=y"])) == ["/a"]
    assert hrefs(filter_links(links, ["title=q"])) == ["/b"]


def test_filter_on_the_rfc6690_example() -> None:
    links = parse_links(RFC6690_ANCHORS)
    assert hrefs(filter_links(links, ["rt=light-lux"])) == ["/sensors/light"]
    assert hrefs(filter_links(links, ["if=sensor"])) == ["/sensors/temp", "/sensors/light"]
    assert hrefs(filter_links(links, ["anchor=/sensors/temp"])) == [
        "http://www.example.com/sensors/t123",
        "/t",
    ]


def test_filter_takes_a_single_string_as_one_item() -> None:
    assert hrefs(filter_links(DISCOVERY, "rt=Type3")) == ["/link2", "/link3"]


@pytest.mark.parametrize("item", ["rt", "", "=x", "r t=x", "rt=a*b", "rt=**", ",=x"])
def test_filter_rejects_malformed_query_items(item: str) -> None:
    with pytest.raises(LinkFormatError, match=repr(item).replace("*", r"\*")):
        filter_links(DISCOVERY, [item])


# --- resolution (RFC 3986 §5, RFC 6690 §2.1) -----------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        # RFC 3986 §5.4.1 and §5.4.2, base "http://a/b/c/d;p?q".
        ("g:h", "g:h"),
        ("g", "http://a/b/c/g"),
        ("./g", "http://a/b/c/g"),
        ("g/", "http://a/b/c/g/"),
        ("/g", "http://a/g"),
        ("//g", "http://g"),
        ("?y", "http://a/b/c/d;p?y"),
        ("g?y", "http://a/b/c/g?y"),
        ("#s", "http://a/b/c/d;p?q#s"),
        ("g;x?y#s", "http://a/b/c/g;x?y#s"),
        ("", "http://a/b/c/d;p?q"),
        (".", "http://a/b/c/"),
        ("..", "http://a/b/"),
        ("../g", "http://a/b/g"),
        ("../..", "http://a/"),
        ("../../../g", "http://a/g"),
        ("/./g", "http://a/g"),
        ("/../g", "http://a/g"),
        ("g.", "http://a/b/c/g."),
        ("..g", "http://a/b/c/..g"),
        ("./g/.", "http://a/b/c/g/"),
        ("g/../h", "http://a/b/c/h"),
        ("g;x=1/../y", "http://a/b/c/y"),
        ("g?y/../x", "http://a/b/c/g?y/../x"),
        ("g#s/../x", "http://a/b/c/g#s/../x"),
        ("http:g", "http:g"),
    ],
)
def test_reference_resolution_follows_rfc3986(reference: str, expected: str) -> None:
    assert _resolve_reference("http://a/b/c/d;p?q", reference) == expected


def test_resolution_works_for_coap_schemes() -> None:
    assert _resolve_reference("coap://h/a/b", "c") == "coap://h/a/c"
    assert _resolve_reference("coaps+tcp://[::1]:5684/a/", "../x?q") == "coaps+tcp://[::1]:5684/x?q"


def test_resolve_uses_the_origin_of_the_document_as_base() -> None:
    base = "coap://[2001:db8::1]:5683/.well-known/core"
    assert Link("/sensors/temp").resolve(base) == "coap://[2001:db8::1]:5683/sensors/temp"
    assert Link("sensors/temp").resolve(base) == "coap://[2001:db8::1]:5683/sensors/temp"
    assert Link("coap://other/x").resolve(base) == "coap://other/x"
    assert Link("//other/x").resolve(base) == "coap://other/x"


def test_resolve_uses_the_anchor_as_context_of_the_href() -> None:
    links = parse_links(RFC6690_ANCHORS)
    base = "coap://host/.well-known/core"
    assert [link.resolve(base) for link in links] == [
        "coap://host/sensors",
        "coap://host/sensors/temp",
        "coap://host/sensors/light",
        "http://www.example.com/sensors/t123",
        "coap://host/t",
    ]
    assert Link("temp", [("anchor", "/sensors/")]).resolve(base) == "coap://host/sensors/temp"
    assert Link("t", [("anchor", "coap://other/a/b")]).resolve(base) == "coap://other/a/t"


def test_context_is_the_anchor_or_the_origin_of_the_target() -> None:
    base = "coap://host/.well-known/core"
    links = parse_links(RFC6690_ANCHORS)
    assert links[0].context(base) == "coap://host"
    assert links[3].context(base) == "coap://host/sensors/temp"
    assert Link("http://example.com/x").context(base) == "http://example.com"
    assert Link("urn:x:y").context(base) == "coap://host"


@pytest.mark.parametrize("base", ["/relative", "urn:x:y", ""])
def test_resolve_needs_a_base_with_an_authority(base: str) -> None:
    with pytest.raises(ValueError, match="base URI"):
        Link("/a").resolve(base)
