"""Tests for coapio.protocol.uri: RFC 7252 §6.4 (URI -> options) and §6.5 (options -> URI)."""

from __future__ import annotations

import ipaddress
import string
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coapio.error import UriError
from coapio.protocol.uri import DEFAULT_PORTS, SCHEMES, UriParts, compose_uri, split_uri, uri_options

# ---------------------------------------------------------------------------------------------
# Schemes and ports


@pytest.mark.parametrize(
    ("scheme", "port"),
    [
        ("coap", 5683),
        ("coaps", 5684),
        ("coap+tcp", 5683),
        ("coaps+tcp", 5684),
        ("coap+ws", 80),
        ("coaps+ws", 443),
    ],
)
def test_each_scheme_has_its_default_port(scheme: str, port: int) -> None:
    assert DEFAULT_PORTS[scheme] == port
    parts = split_uri(f"{scheme}://example.com/a")
    assert parts == UriParts(scheme, "example.com", port, ("a",), ())
    assert parts.port_is_default
    assert compose_uri(scheme=scheme, host="example.com", port=port, path=["a"]) == (
        f"{scheme}://example.com/a"
    )


def test_schemes_are_exactly_the_six_coap_schemes() -> None:
    assert frozenset({"coap", "coaps", "coap+tcp", "coaps+tcp", "coap+ws", "coaps+ws"}) == SCHEMES
    assert set(DEFAULT_PORTS) == SCHEMES


def test_scheme_is_case_insensitive_and_lower_cased() -> None:
    assert split_uri("CoAPs+TCP://h/").scheme == "coaps+tcp"
    assert compose_uri(scheme="COAP", host="h") == "coap://h/"


def test_explicit_port_overrides_default() -> None:
    parts = split_uri("coap://h:61616/")
    assert parts.port == 61616
    assert not parts.port_is_default


def test_empty_port_means_default_port() -> None:
    assert split_uri("coap://h:/").port == 5683
    assert split_uri("coaps://h:").port == 5684


def test_port_with_leading_zeros_is_decimal() -> None:
    assert split_uri("coap://h:0005683/").port == 5683


def test_explicit_default_port_is_default() -> None:
    assert split_uri("coap+ws://h:80/").port_is_default


# ---------------------------------------------------------------------------------------------
# RFC 7252 §6.3 normalisation and equivalence


def test_rfc7252_section_6_3_example_uris_are_equivalent() -> None:
    uris = [
        "coap://example.com:5683/~sensors/temp.xml",
        "coap://EXAMPLE.com/%7Esensors/temp.xml",
        "coap://EXAMPLE.com:/%7esensors/temp.xml",
    ]
    expected = UriParts("coap", "example.com", 5683, ("~sensors", "temp.xml"), ())
    assert [split_uri(uri) for uri in uris] == [expected] * 3
    assert {_compose(split_uri(uri)) for uri in uris} == {"coap://example.com/~sensors/temp.xml"}


def test_host_percent_encoding_and_case_are_normalised() -> None:
    assert split_uri("coap://%41%62C.example/").host == "abc.example"


def test_host_non_ascii_is_percent_decoded_utf8_and_kept_as_is() -> None:
    assert split_uri("coap://%C3%89t%C3%A9.example/").host == "Été.example"


# ---------------------------------------------------------------------------------------------
# Hosts: IP literals and registered names


def test_ipv6_literal_without_port() -> None:
    parts = split_uri("coap://[2001:DB8::0001]/a")
    assert parts == UriParts("coap", "2001:db8::1", 5683, ("a",), ())
    assert parts.host_is_ip


def test_ipv6_literal_with_port() -> None:
    parts = split_uri("coap://[::1]:1234/")
    assert (parts.host, parts.port) == ("::1", 1234)


def test_ipv6_literal_with_empty_port_means_default() -> None:
    assert split_uri("coaps://[::1]:").port == 5684


def test_ipv6_zone_id_is_kept_percent_decoded() -> None:
    assert split_uri("coap://[fe80::1%25eth0]/").host == "fe80::1%eth0"
    assert split_uri("coap://[FE80::1%25Eth%300]:9/").host == "fe80::1%Eth00"


def test_ipv4_address_is_an_ip_host() -> None:
    parts = split_uri("coap://192.0.2.1:5683/")
    assert parts.host == "192.0.2.1"
    assert parts.host_is_ip


@pytest.mark.parametrize("host", ["example.com", "01.2.3.4", "1.2.3.256", "a%3Ab"])
def test_registered_name_is_not_an_ip_host(host: str) -> None:
    assert not split_uri(f"coap://{host}/").host_is_ip


def test_registered_name_that_decodes_to_an_ip_address_is_that_address() -> None:
    parts = split_uri("coap://%31%39%32.0.2.1/")
    assert parts.host == "192.0.2.1"
    assert parts.host_is_ip


# ---------------------------------------------------------------------------------------------
# Path (§6.4 step 8)


@pytest.mark.parametrize("uri", ["coap://h", "coap://h/", "coap://h?x", "coap://h/?x"])
def test_empty_path_or_single_slash_gives_no_segments(uri: str) -> None:
    assert split_uri(uri).path == ()


def test_path_segments_are_percent_decoded() -> None:
    assert split_uri("coap://h/a%2Fb/%C3%A4/%25").path == ("a/b", "ä", "%")


def test_trailing_slash_gives_empty_last_segment() -> None:
    assert split_uri("coap://h/a/").path == ("a", "")


def test_empty_segments_are_kept() -> None:
    assert split_uri("coap://h//a//").path == ("", "a", "", "")


@pytest.mark.parametrize(
    ("path", "segments"),
    [
        ("/a/b/c/./../../g", ("a", "g")),
        ("/./a", ("a",)),
        ("/a/.", ("a", "")),
        ("/a/b/..", ("a", "")),
        ("/a/..", ()),
        ("/..", ()),
        ("/../../a", ("a",)),
        ("/a//..", ("a", "")),
        ("/a/.../b", ("a", "...", "b")),
        ("/.a/..b", (".a", "..b")),
    ],
)
def test_dot_segments_are_removed(path: str, segments: tuple[str, ...]) -> None:
    assert split_uri(f"coap://h{path}").path == segments


def test_percent_encoded_dots_are_ordinary_segments() -> None:
    assert split_uri("coap://h/%2E/%2e%2E/a").path == (".", "..", "a")


def test_path_keeps_pchar_delimiters_literally() -> None:
    assert split_uri("coap://h/a:b@c;d=e,f!$'()*+&").path == ("a:b@c;d=e,f!$'()*+&",)


# ---------------------------------------------------------------------------------------------
# Query (§6.4 step 9)


def test_query_is_split_at_ampersand_and_percent_decoded() -> None:
    parts = split_uri("coap://h/a?x=1&y=%C3%A4%26&z")
    assert parts.query == ("x=1", "y=ä&", "z")


def test_empty_query_component_gives_no_uri_query() -> None:
    assert split_uri("coap://h/?").query == ()
    assert split_uri("coap://h?").query == ()


def test_empty_query_arguments_between_ampersands_are_kept() -> None:
    assert split_uri("coap://h/?a&&b&").query == ("a", "", "b", "")
    assert split_uri("coap://h/?&").query == ("", "")


def test_query_may_contain_slash_and_question_mark() -> None:
    assert split_uri("coap://h/p?a/b?c").query == ("a/b?c",)
    assert split_uri("coap://h?a/b").path == ()


# ---------------------------------------------------------------------------------------------
# Errors: every invalid input raises UriError naming the fault


@pytest.mark.parametrize(
    ("uri", "fault"),
    [
        ("coap://h/a#frag", "fragment"),
        ("coap://h/#", "fragment"),
        ("coap://h#", "fragment"),
        ("/a/b", "relative URI"),
        ("//h/a", "relative URI"),
        ("h/a", "relative URI"),
        ("", "relative URI"),
        (":/a", "relative URI"),
        ("1coap://h/", "relative URI"),
        ("http://h/", "unsupported scheme 'http'"),
        ("HTTPS://h/", "unsupported scheme 'https'"),
        ("coap:/h/a", "no authority"),
        ("coap:h", "no authority"),
        ("coap://user@h/", "userinfo"),
        ("coap://@h/", "userinfo"),
        ("coap://h:x/", "invalid port"),
        ("coap://h:65536/", "invalid port"),
        ("coap://h:-1/", "invalid port"),
        ("coap://h:1:2/", "invalid port"),
        ("coap://h:" + "9" * 5000 + "/", "invalid port"),
        ("coap://[::1]:99999/", "invalid port"),
        ("coap://[::g]/", "invalid IPv6 literal"),
        ("coap://[1.2.3.4]/", "invalid IPv6 literal"),
        ("coap://[::1/", "invalid IPv6 literal"),
        ("coap://[::1]x/", "after IPv6 literal"),
        ("coap://[fe80::1%eth0]/", "invalid IPv6 literal"),
        ("coap://[fe80::1%25]/", "invalid IPv6 literal"),
        ("coap://[fe80::1%25a%25b]/", "zone ID"),
        ("coap://[fe80::1%25a%2Fb]/", "zone ID"),
        ("coap://[fe80::1%25a:b]/", "zone ID"),
        ("coap://[v1.fe]/", "IPvFuture"),
        ("coap://[]/", "empty host"),
        ("coap:///a", "empty host"),
        ("coap://", "empty host"),
        ("coap://:5683/", "empty host"),
        ("coap://h/%zz", "invalid percent-encoding '%zz' in path"),
        ("coap://h/%4", "invalid percent-encoding '%4' in path"),
        ("coap://h/a%", "invalid percent-encoding '%' in path"),
        ("coap://h/?a=%+1", "invalid percent-encoding '%+1' in query"),
        ("coap://h%g0/", "invalid percent-encoding '%g0' in host"),
        ("coap://h/%FF", "not valid UTF-8"),
        ("coap://h/?%C3", "not valid UTF-8"),
        ("coap://%80/", "not valid UTF-8"),
        ("coap://h/é", "non-ASCII"),
        ("coap://hé/", "non-ASCII"),
        ("coap://h/a b", "invalid character ' ' in path"),
        ("coap://h/a[b]", "invalid character '[' in path"),
        ("coap://h/?a b", "invalid character ' ' in query"),
        ("coap://h_<x>/", "invalid character '<' in host"),
        (" coap://h/", "relative URI"),
        ("coap://h/\n", "invalid character '\\n' in path"),
    ],
)
def test_invalid_uri_raises_uri_error_naming_the_fault(uri: str, fault: str) -> None:
    with pytest.raises(UriError) as excinfo:
        split_uri(uri)
    assert fault in str(excinfo.value)


def test_uri_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        split_uri("http://h/")


# ---------------------------------------------------------------------------------------------
# Composing (§6.5)


def test_compose_without_path_gives_slash() -> None:
    assert compose_uri(host="example.com") == "coap://example.com/"


def test_compose_omits_default_port_and_writes_others() -> None:
    assert compose_uri(host="h", port=5683) == "coap://h/"
    assert compose_uri(scheme="coaps", host="h", port=5683) == "coaps://h:5683/"


def test_compose_brackets_ipv6_hosts_in_normal_form() -> None:
    assert compose_uri(host="2001:DB8:0::1", port=1) == "coap://[2001:db8::1]:1/"


def test_compose_encodes_ipv6_zone_id_with_percent_25() -> None:
    assert compose_uri(host="fe80::1%eth 0") == "coap://[fe80::1%25eth%200]/"


def test_compose_writes_ipv4_hosts_as_they_are() -> None:
    assert compose_uri(host="192.0.2.1") == "coap://192.0.2.1/"


def test_compose_percent_encodes_and_lower_cases_registered_names() -> None:
    assert compose_uri(host="Ex ample:é.COM") == "coap://ex%20ample%3A%C3%A9.com/"


def test_compose_path_keeps_unreserved_sub_delims_colon_and_at() -> None:
    segment = "az09-._~!$&'()*+,;=:@"
    assert compose_uri(host="h", path=[segment]) == f"coap://h/{segment}"


def test_compose_path_encodes_everything_else_as_utf8() -> None:
    assert compose_uri(host="h", path=["a/b", "c?d", "%", "ä", " "]) == (
        "coap://h/a%2Fb/c%3Fd/%25/%C3%A4/%20"
    )


def test_compose_encodes_dot_segments_so_they_survive() -> None:
    uri = compose_uri(host="h", path=[".", "..", "..."])
    assert uri == "coap://h/%2E/%2E%2E/..."
    assert split_uri(uri).path == (".", "..", "...")


def test_compose_query_keeps_slash_question_mark_and_encodes_ampersand() -> None:
    uri = compose_uri(host="h", query=["a=b/c?d:@", "x&y", "#"])
    assert uri == "coap://h/?a=b/c?d:@&x%26y&%23"
    assert split_uri(uri).query == ("a=b/c?d:@", "x&y", "#")


def test_compose_single_empty_query_reads_back_as_no_query() -> None:
    # §6.5 step 8 writes "?" for one empty Uri-Query; §6.4 step 9 reads "?" as no Uri-Query.
    uri = compose_uri(host="h", query=[""])
    assert uri == "coap://h/?"
    assert split_uri(uri).query == ()


def test_compose_single_empty_path_segment_reads_back_as_no_path() -> None:
    uri = compose_uri(host="h", path=[""])
    assert uri == "coap://h/"
    assert split_uri(uri).path == ()


@pytest.mark.parametrize(
    ("kwargs", "fault"),
    [
        ({"scheme": "http", "host": "h"}, "unsupported scheme 'http'"),
        ({"host": ""}, "empty host"),
        ({"host": "h", "port": 65536}, "invalid port"),
        ({"host": "h", "port": -1}, "invalid port"),
        ({"host": "h", "path": ["\ud800"]}, "UTF-8"),
        ({"host": "h", "query": ["\udfff"]}, "UTF-8"),
        ({"host": "\ud800"}, "UTF-8"),
    ],
)
def test_compose_rejects_invalid_options(kwargs: dict[str, Any], fault: str) -> None:
    with pytest.raises(UriError, match=fault):
        compose_uri(**kwargs)


def test_compose_rejects_a_str_as_path() -> None:
    with pytest.raises(TypeError):
        compose_uri(host="h", path="a/b")  # str is a Sequence[str] to the type checker


# ---------------------------------------------------------------------------------------------
# Uri-Host and Uri-Port (§6.4 steps 5-7)


def test_registered_name_gives_uri_host_and_direct_request_no_uri_port() -> None:
    assert uri_options(split_uri("coap://Example.com:999/")) == ("example.com", None)


def test_ip_host_that_is_the_destination_gives_no_uri_host() -> None:
    assert uri_options(split_uri("coap://192.0.2.1/")) == (None, None)
    parts = split_uri("coap://[2001:db8::1]/")
    assert uri_options(parts, destination_host="2001:DB8:0::1") == (None, None)


def test_ip_host_differing_from_destination_gives_uri_host_ip_literal() -> None:
    parts = split_uri("coap://[fe80::1%25eth0]/")
    assert uri_options(parts, destination_host="2001:db8::2") == ("[fe80::1]", None)
    parts = split_uri("coap://192.0.2.1/")
    assert uri_options(parts, destination_host="192.0.2.2") == ("192.0.2.1", None)


def test_registered_name_gives_uri_host_whatever_the_destination() -> None:
    parts = split_uri("coap://example.com/")
    assert uri_options(parts, destination_host="192.0.2.1") == ("example.com", None)
    assert uri_options(parts, destination_host="example.com") == ("example.com", None)


def test_uri_port_only_when_port_differs_from_destination_port() -> None:
    parts = split_uri("coap://192.0.2.1:7777/")
    assert uri_options(parts, destination_port=7777) == (None, None)
    assert uri_options(parts, destination_port=5683) == (None, 7777)
    default = split_uri("coap://192.0.2.1/")
    assert uri_options(default, destination_port=6000) == (None, 5683)


# ---------------------------------------------------------------------------------------------
# Properties: round trips and fuzzing


def _compose(parts: UriParts) -> str:
    return compose_uri(
        scheme=parts.scheme, host=parts.host, port=parts.port, path=parts.path, query=parts.query
    )


def _ascii_lower(text: str) -> str:
    return text.translate(str.maketrans(string.ascii_uppercase, string.ascii_lowercase))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_zoned_ipv6(host: str) -> bool:
    try:
        return "%" in ipaddress.IPv6Address(host).compressed
    except ValueError:
        return False


_reg_names = st.text(min_size=1).map(_ascii_lower).filter(lambda name: not _is_ip(name))
_ipv4 = st.ip_addresses(v=4).map(str)
_ipv6 = st.ip_addresses(v=6).map(lambda address: address.compressed)
_ipv6_zoned = st.builds(
    "{}%{}".format, st.ip_addresses(v=6).map(lambda address: address.compressed), st.text(min_size=1)
).filter(_is_zoned_ipv6)
_hosts = st.one_of(_reg_names, _ipv4, _ipv6, _ipv6_zoned)
# A lone empty value is the one option list that has no URI of its own (see the module docstring).
_option_lists = st.lists(st.text()).filter(lambda values: values != [""]).map(tuple)


@st.composite
def _uri_parts(draw: st.DrawFn) -> UriParts:
    return UriParts(
        scheme=draw(st.sampled_from(sorted(SCHEMES))),
        host=draw(_hosts),
        port=draw(st.integers(0, 0xFFFF)),
        path=draw(_option_lists),
        query=draw(_option_lists),
    )


@given(_uri_parts())
def test_split_inverts_compose(parts: UriParts) -> None:
    assert split_uri(_compose(parts)) == parts


@given(_uri_parts())
def test_composed_uri_is_already_normalised(parts: UriParts) -> None:
    uri = _compose(parts)
    assert uri.isascii()
    assert _compose(split_uri(uri)) == uri


@given(st.text())
def test_fuzz_split_returns_parts_or_raises_uri_error(text: str) -> None:
    try:
        parts = split_uri(text)
    except UriError:
        return
    assert isinstance(parts, UriParts)


_uri_alphabet = st.sampled_from(
    [
        *"aAzZ09-._~!$&'()*+,;=:@/?#[]% <>\"\\^`{|}\t\né",
        "%25",
        "%2E",
        "%2e",
        "%41",
        "%C3%A4",
        "%FF",
        "%3A",
        "::1",
        "fe80::1",
        "1.2.3.4",
        "..",
        ".",
    ]
)


@given(st.sampled_from([*sorted(SCHEMES), "COAP", "http"]), st.lists(_uri_alphabet).map("".join))
def test_fuzz_uri_like_text_splits_into_stable_normal_form(scheme: str, rest: str) -> None:
    try:
        parts = split_uri(f"{scheme}://{rest}")
    except UriError:
        return
    normal = _compose(parts)
    assert split_uri(normal) == parts
    assert _compose(split_uri(normal)) == normal
