"""Translation between CoAP URIs and the request options that carry them (RFC 7252 §6.4/§6.5).

Covers coap and coaps (RFC 7252 §6) and coap+tcp, coaps+tcp, coap+ws, coaps+ws (RFC 8323 §8),
which share one decomposition and differ only in their default port.

Parsing is strict: anything RFC 3986 or the CoAP URI grammar does not allow raises
:class:`~coapio.error.UriError` instead of being guessed at, so that a URI never silently turns
into options its author did not mean. Where the RFCs leave room:

* The host is percent-decoded first and then ASCII-lower-cased, so ``%41`` and ``a`` name the same
  host (hosts are case-insensitive, RFC 3986 §3.2.2). A host that decodes to an IP address is one.
* Dot-segments are removed from the path *before* percent-decoding (RFC 3986 §5.2.4), so an
  encoded ``%2E%2E`` is an ordinary segment ``..``; :func:`compose_uri` writes such segments so.
* An empty query component (``coap://h/?``) gives no Uri-Query option, as a path of ``/`` gives no
  Uri-Path option (RFC 7252 §6.4 step 8); empty arguments between ``&`` are kept (``?a&`` gives
  ``a`` and ``""``). So a lone empty Uri-Path or Uri-Query value has no URI of its own: it reads
  back as no option at all.
* An IPv6 zone ID (RFC 6874, ``[fe80::1%25eth0]``) stays in :attr:`UriParts.host`, since the sender
  needs it to pick an interface, but never goes into Uri-Host: it only means something locally.
"""

from __future__ import annotations

import functools
import ipaddress
import string
import types
from collections.abc import Mapping, Sequence
from typing import TypeAlias

import attrs

from ..error import UriError

__all__ = ["DEFAULT_PORTS", "SCHEMES", "UriParts", "compose_uri", "split_uri", "uri_options"]

#: Each supported scheme's port when the URI gives none (RFC 7252 §6.1/§6.2, RFC 8323 §8).
DEFAULT_PORTS: Mapping[str, int] = types.MappingProxyType(
    {
        "coap": 5683,
        "coaps": 5684,
        "coap+tcp": 5683,
        "coaps+tcp": 5684,
        "coap+ws": 80,
        "coaps+ws": 443,
    }
)

#: The URI schemes this module understands.
SCHEMES: frozenset[str] = frozenset(DEFAULT_PORTS)

# Character classes of RFC 3986 §2 and §3.
_ALPHA = frozenset(string.ascii_letters)
_DIGIT = frozenset(string.digits)
_HEXDIG = frozenset(string.hexdigits)
_UNRESERVED = _ALPHA | _DIGIT | frozenset("-._~")
_SUB_DELIMS = frozenset("!$&'()*+,;=")
_PCHAR = _UNRESERVED | _SUB_DELIMS | frozenset(":@")
_SCHEME_CHARS = _ALPHA | _DIGIT | frozenset("+-.")

# What may appear literally in each parsed component ("%" starts a percent-encoding).
_REG_NAME_CHARS = _UNRESERVED | _SUB_DELIMS | {"%"}
_ZONE_CHARS = _UNRESERVED | {"%"}
_PATH_CHARS = _PCHAR | {"%", "/"}
_QUERY_CHARS = _PCHAR | {"%", "/", "?"}

# What RFC 7252 §6.5 leaves unencoded when composing; everything else is percent-encoded as UTF-8.
_HOST_SAFE = _UNRESERVED | _SUB_DELIMS
_SEGMENT_SAFE = _PCHAR
_QUERY_SAFE = (_PCHAR - {"&"}) | {"/", "?"}

_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_IPV4_CHARS = _DIGIT | {"."}

_IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


@attrs.frozen(slots=True)
class UriParts:
    """A CoAP URI taken apart into the values its request options need, in normalised form.

    Normalised means two URIs that RFC 7252 §6.3 calls equivalent give equal ``UriParts``.
    """

    #: Lower-cased scheme, one of :data:`SCHEMES`.
    scheme: str
    #: An IP address without brackets (``ipaddress``' compressed form, an IPv6 zone ID kept after
    #: ``%``), or a percent-decoded, ASCII-lower-cased registered name.
    host: str
    #: The explicit port, or the scheme's default.
    port: int
    #: Uri-Path option values, percent-decoded; ``coap://h`` and ``coap://h/`` both give ``()``.
    path: tuple[str, ...] = ()
    #: Uri-Query option values, percent-decoded.
    query: tuple[str, ...] = ()

    @property
    def host_is_ip(self) -> bool:
        """Whether the host is an IP address; as destination it needs no Uri-Host (§6.4 step 5)."""
        return _parse_ip(self.host) is not None

    @property
    def port_is_default(self) -> bool:
        """Whether the port is the scheme's default, which a composed URI leaves out."""
        return DEFAULT_PORTS.get(self.scheme) == self.port


@functools.lru_cache(maxsize=512)  # a client asks for the same few URIs again and again
def split_uri(uri: str) -> UriParts:
    """Take an absolute CoAP URI apart into option values (RFC 7252 §6.4, RFC 8323 §8).

    Raises :class:`~coapio.error.UriError` naming the fault for anything that is not a valid
    CoAP URI: a relative reference, another scheme, a fragment, userinfo, a bad port, IP literal
    or percent-encoding, and so on.
    """
    if not uri.isascii():
        raise UriError("non-ASCII character in URI (percent-encode it as UTF-8)")
    if "#" in uri:
        raise UriError("URI has a fragment")
    scheme, colon, rest = uri.partition(":")
    if not colon or not scheme or scheme[0] not in _ALPHA or not _SCHEME_CHARS.issuperset(scheme):
        raise UriError("relative URI: an absolute URI with a scheme is needed")
    scheme = scheme.translate(_ASCII_LOWER)
    if scheme not in DEFAULT_PORTS:
        raise UriError(f"unsupported scheme {scheme!r}")
    if not rest.startswith("//"):
        raise UriError("URI has no authority ('//' and a host must follow the scheme)")
    rest = rest[2:]

    end = len(rest)
    for delimiter in "/?":
        found = rest.find(delimiter)
        if found != -1:
            end = min(end, found)
    authority, rest = rest[:end], rest[end:]
    path, question, query = rest.partition("?")

    host, port_text = _split_authority(authority)
    return UriParts(
        scheme=scheme,
        host=host,
        port=_parse_port(port_text, scheme),
        path=_split_path(path),
        query=_split_query(query) if question else (),
    )


def compose_uri(
    *,
    scheme: str = "coap",
    host: str,
    port: int | None = None,
    path: Sequence[str] = (),
    query: Sequence[str] = (),
) -> str:
    """Build the normalised URI of a request's options (RFC 7252 §6.5), inverting :func:`split_uri`.

    ``host`` is a Uri-Host value or the destination IP address (IPv6 without brackets); the default
    port is left out. Segments ``.`` and ``..`` are written percent-encoded so that they survive.
    """
    if isinstance(path, str) or isinstance(query, str):
        raise TypeError("path and query are sequences of option values, not a single str")
    scheme = scheme.translate(_ASCII_LOWER)
    default_port = DEFAULT_PORTS.get(scheme)
    if default_port is None:
        raise UriError(f"unsupported scheme {scheme!r}")
    if port is None:
        port = default_port
    elif not 0 <= port <= 0xFFFF:
        raise UriError(f"invalid port {port!r}")

    authority = _compose_host(host)
    if port != default_port:
        authority = f"{authority}:{port}"
    resource = "".join("/" + _compose_segment(segment) for segment in path) or "/"
    if query:
        resource += "?" + "&".join(_encode(argument, _QUERY_SAFE, "query") for argument in query)
    return f"{scheme}://{authority}{resource}"


@functools.lru_cache(maxsize=512)
def uri_options(
    parts: UriParts,
    *,
    destination_host: str | None = None,
    destination_port: int | None = None,
) -> tuple[str | None, int | None]:
    """Return the ``(Uri-Host, Uri-Port)`` values a request for ``parts`` needs; ``None`` omits one.

    Per RFC 7252 §6.4 steps 5-7 the options only say what the destination address does not:
    Uri-Host is left out when the host is an IP address that is the destination address, Uri-Port
    when the port is the destination port. The destination defaults to the URI's own host and port
    (a direct request); pass the address actually sent to when it differs, e.g. via a proxy.
    A registered name always gives a Uri-Host, since a server takes a missing one to mean the
    destination's IP literal (RFC 7252 §5.10.1).
    """
    uri_host: str | None = None
    address = _parse_ip(parts.host)
    if address is None:
        uri_host = parts.host
    elif destination_host is not None and address != _parse_ip(destination_host):
        # §6.4 step 5: the value is the <host> component, i.e. an IP-literal keeps its brackets.
        # A zone ID only means something on this node, so it is not sent.
        if isinstance(address, ipaddress.IPv6Address):
            uri_host = f"[{address.compressed.partition('%')[0]}]"
        else:
            uri_host = address.compressed

    if destination_port is None:
        destination_port = parts.port
    uri_port = parts.port if parts.port != destination_port else None
    return uri_host, uri_port


def _parse_ip(host: str) -> _IPAddress | None:
    """The address ``host`` spells, or ``None`` for a registered name; cheap for ordinary names."""
    try:
        if ":" in host:
            return ipaddress.IPv6Address(host)
        if host and _IPV4_CHARS.issuperset(host):
            return ipaddress.IPv4Address(host)
    except ValueError:
        pass
    return None


def _check_chars(text: str, allowed: frozenset[str], component: str) -> None:
    if not allowed.issuperset(text):
        bad = next(char for char in text if char not in allowed)
        raise UriError(f"invalid character {bad!r} in {component}")


def _decode(text: str, component: str) -> str:
    """Percent-decode ``text`` (already checked to be ASCII) and read the bytes as UTF-8."""
    if "%" not in text:
        return text
    first, *chunks = text.split("%")
    octets = bytearray(first, "ascii")
    for chunk in chunks:
        hex_digits = chunk[:2]
        if len(hex_digits) != 2 or not _HEXDIG.issuperset(hex_digits):
            raise UriError(f"invalid percent-encoding {'%' + hex_digits!r} in {component}")
        octets.append(int(hex_digits, 16))
        octets += chunk[2:].encode("ascii")
    try:
        return octets.decode("utf-8")
    except UnicodeDecodeError:
        raise UriError(f"percent-encoded {component} is not valid UTF-8") from None


def _split_authority(authority: str) -> tuple[str, str]:
    """Return the normalised host and the (unparsed) port text of an authority component."""
    if "@" in authority:
        raise UriError("URI has userinfo ('user@'), which CoAP URIs do not allow")
    if authority.startswith("["):
        close = authority.find("]")
        if close == -1:
            raise UriError("invalid IPv6 literal: no closing ']'")
        after = authority[close + 1 :]
        if after and not after.startswith(":"):
            raise UriError(f"invalid character {after[0]!r} after IPv6 literal")
        return _parse_ip_literal(authority[1:close]), after[1:]

    host, _, port_text = authority.partition(":")
    if not host:
        raise UriError("empty host")
    _check_chars(host, _REG_NAME_CHARS, "host")
    name = _decode(host, "host").translate(_ASCII_LOWER)
    address = _parse_ip(name)
    return (name if address is None else address.compressed), port_text


def _parse_ip_literal(literal: str) -> str:
    """Normalise the inside of ``[...]``: an IPv6 address, optionally with an RFC 6874 zone ID."""
    if not literal:
        raise UriError("empty host")
    if literal[0] in "vV":
        raise UriError("IPvFuture literals are not supported")
    text, percent, zone = literal.partition("%")
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        raise UriError(f"invalid IPv6 literal {literal!r}") from None
    if not percent:
        return address.compressed
    if not zone.startswith("25") or len(zone) == 2:
        raise UriError(f"invalid IPv6 literal {literal!r}: a zone ID is '%25' and 1+ characters")
    _check_chars(zone[2:], _ZONE_CHARS, "IPv6 zone ID")
    zone = _decode(zone[2:], "IPv6 zone ID")
    try:
        return ipaddress.IPv6Address(f"{address.compressed}%{zone}").compressed
    except ValueError:
        raise UriError(f"invalid IPv6 zone ID {zone!r}") from None


def _parse_port(text: str, scheme: str) -> int:
    """An empty or missing port means the default (RFC 7252 §6.3: ``coap://h:/`` equals ``coap://h/``)."""
    if not text:
        return DEFAULT_PORTS[scheme]
    digits = text.lstrip("0") or "0"
    if not _DIGIT.issuperset(text) or len(digits) > 5 or int(digits) > 0xFFFF:
        raise UriError(f"invalid port {text!r}")
    return int(digits)


def _split_path(path: str) -> tuple[str, ...]:
    """§6.4 step 8, after removing dot-segments (RFC 3986 §5.2.4) from the still-encoded path."""
    if path in ("", "/"):
        return ()
    _check_chars(path, _PATH_CHARS, "path")
    # The path follows an authority, so it is empty or starts with "/"; every segment after that
    # "/" is one Uri-Path. A final "." or ".." leaves the path ending in "/", i.e. an empty segment.
    segments = path[1:].split("/")
    kept: list[str] = []
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if segment in (".", ".."):
            if segment == ".." and kept:
                kept.pop()
            if index == last:
                kept.append("")
        else:
            kept.append(segment)
    if kept == [""]:
        return ()
    return tuple(_decode(segment, "path") for segment in kept)


def _split_query(query: str) -> tuple[str, ...]:
    """§6.4 step 9: a Uri-Query per ``&``-separated argument; an empty query gives none."""
    if not query:
        return ()
    _check_chars(query, _QUERY_CHARS, "query")
    return tuple(_decode(argument, "query") for argument in query.split("&"))


def _encode(value: str, safe: frozenset[str], component: str) -> str:
    """Percent-encode the UTF-8 form of ``value``, leaving the characters in ``safe`` as is."""
    try:
        octets = value.encode("utf-8")
    except UnicodeEncodeError:
        raise UriError(f"{component} value {value!r} is not encodable as UTF-8") from None
    return "".join(chr(octet) if chr(octet) in safe else f"%{octet:02X}" for octet in octets)


def _compose_segment(segment: str) -> str:
    if segment in (".", ".."):
        # Written literally they would be removed as dot-segments; encoded they are kept.
        return "%2E" * len(segment)
    return _encode(segment, _SEGMENT_SAFE, "path")


def _compose_host(host: str) -> str:
    if not host:
        raise UriError("empty host")
    address = _parse_ip(host)
    if isinstance(address, ipaddress.IPv6Address):
        text, _, zone = address.compressed.partition("%")
        if zone:
            text = f"{text}%25{_encode(zone, _UNRESERVED, 'IPv6 zone ID')}"
        return f"[{text}]"
    if address is not None:
        return address.compressed
    return _encode(host.translate(_ASCII_LOWER), _HOST_SAFE, "host")
