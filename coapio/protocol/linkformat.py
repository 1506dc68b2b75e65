"""RFC 6690 CoRE link format: parsing, serializing and query-filtering typed links, sans-IO.

Links keep what was written: the href as between ``<`` and ``>``, and every attribute in order,
repeated ones included, so that a parsed document can be inspected, filtered and written back
without loss. The parser is liberal only about whitespace (around ``,``, ``;`` and ``=``, and line
breaks between links, as RFC 6690 §5 prints them); anything else that the RFC 6690 §2 grammar does
not allow raises :class:`~coapio.error.LinkFormatError` naming the fault and its position.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import attrs

from ..error import LinkFormatError

__all__ = ["Link", "filter_links", "parse_links", "serialize_links"]

# RFC 6690 §2 (from RFC 5988 and RFC 5987): parameter names, unquoted values, and the optional "*"
# that marks an RFC 5987 extended parameter such as ``title*``.
_PARMNAME_RE = re.compile(r"[A-Za-z0-9!#$&+\-.^_`|~]+\*?")
_PTOKEN_RE = re.compile(r"[A-Za-z0-9!#$%&'()*+\-./:<=>?@\[\]^_`{|}~]+")
_QUOTED_RE = re.compile(r'"([^"\\]*(?:\\.[^"\\]*)*)"', re.DOTALL)
_ESCAPE_RE = re.compile(r"\\(.)", re.DOTALL)
_WS_RE = re.compile(r"[ \t\r\n]*")
# Characters a URI-Reference can never contain; seeing one means the "<...>" is not a reference.
_BAD_HREF_RE = re.compile(r"[\x00-\x20\x7f<>]")

# Attributes whose values RFC 6690 §2 writes quoted (relation-types, the anchor's DQUOTE
# URI-Reference, title's quoted-string); they are emitted quoted even when a ptoken would do.
_ALWAYS_QUOTED = frozenset({"rel", "rev", "rt", "if", "anchor", "title"})
# Attributes holding space-separated lists (RFC 6690 §3.1/§3.2, RFC 8288 relation types, and
# RFC 7252 §7.2.1 for ct): a query filter matches any single value of these.
_MULTI_VALUED = frozenset({"rel", "rev", "rt", "if", "ct"})


def _to_attributes(
    attributes: Iterable[tuple[str, str | None]],
) -> tuple[tuple[str, str | None], ...]:
    return tuple((name, value) for name, value in attributes)


def _check_href(_instance: object, _attribute: object, href: str) -> None:
    bad = _BAD_HREF_RE.search(href)
    if bad is not None:
        raise LinkFormatError(
            f"href {href!r} is not a URI-Reference: {bad.group()!r} at position {bad.start()}"
        )


def _check_attributes(
    _instance: object, _attribute: object, attributes: tuple[tuple[str, str | None], ...]
) -> None:
    for name, value in attributes:
        if not isinstance(name, str) or _PARMNAME_RE.fullmatch(name) is None:
            raise LinkFormatError(f"attribute name {name!r} is not an RFC 6690 parmname")
        if value is not None and not isinstance(value, str):
            raise LinkFormatError(f"value of attribute {name!r} is {value!r}, not a str or None")


@attrs.frozen(slots=True)
class Link:
    """One typed link: a target URI-Reference and its attributes, in document order.

    ``attributes`` holds ``(name, value)`` pairs; ``value`` is None for an attribute written without
    one (``obs``). The accessors and filters compare names case-insensitively, values exactly.
    Construction validates, so that every Link can be serialized and parsed back unchanged.
    """

    href: str = attrs.field(validator=_check_href)
    attributes: tuple[tuple[str, str | None], ...] = attrs.field(
        default=(), converter=_to_attributes, validator=_check_attributes
    )

    def get(self, name: str) -> str | None:
        """The first value of ``name``; None if it is absent or written without a value."""
        name = name.lower()
        for key, value in self.attributes:
            if key.lower() == name:
                return value
        return None

    def get_all(self, name: str) -> list[str | None]:
        """Every value of ``name`` in order (None for valueless occurrences); [] if absent."""
        name = name.lower()
        return [value for key, value in self.attributes if key.lower() == name]

    def values(self, name: str) -> list[str]:
        """The space-separated items of every occurrence of ``name``, e.g. all resource types.

        ``rt="a b";rt=c`` gives ``["a", "b", "c"]``. Meant for the list-valued attributes (rt, if,
        rel, rev, ct), where one link can carry several values in one or more occurrences.
        """
        return [item for value in self.get_all(name) if value is not None for item in value.split()]

    def resolve(self, base: str) -> str:
        """The absolute target URI, for a link read from the document at ``base``.

        RFC 6690 §2.1 rather than RFC 8288: a document's base URI is the *origin* (scheme and
        authority) of ``base``, not ``base`` itself, so ``<temp>`` from ``coap://h/.well-known/core``
        is ``coap://h/temp``; and when an ``anchor`` is present, the href is resolved against the
        anchor (itself resolved against that origin). Resolution is RFC 3986 §5.2.
        """
        origin = _base_origin(base)
        anchor = self.get("anchor")
        context = origin if anchor is None else _resolve_reference(origin, anchor)
        return _resolve_reference(context, self.href)

    def context(self, base: str) -> str:
        """The link's context URI (RFC 6690 §2.1): what the relation is *from*.

        The anchor resolved against the origin of ``base`` if there is one, otherwise the origin
        of the target URI (for a relative href, or a target without authority such as a URN, the
        origin of ``base``).
        """
        origin = _base_origin(base)
        anchor = self.get("anchor")
        if anchor is not None:
            return _resolve_reference(origin, anchor)
        return _origin(_resolve_reference(origin, self.href)) or origin

    def __str__(self) -> str:
        """This link in link format, e.g. ``</sensors/temp>;rt="temperature";if="sensor"``."""
        parts = [f"<{self.href}>"]
        for name, value in self.attributes:
            if value is None:
                parts.append(f";{name}")
            elif name.lower() in _ALWAYS_QUOTED or _PTOKEN_RE.fullmatch(value) is None:
                escaped = value.replace("\\", "\\\\").replace('"', '\\"')
                parts.append(f';{name}="{escaped}"')
            else:
                parts.append(f";{name}={value}")
        return "".join(parts)


def parse_links(text: str | bytes) -> list[Link]:
    """Parse a link-format document into its links; empty (or all-whitespace) text gives [].

    Bytes are decoded as UTF-8 (RFC 6690 §2). Raises LinkFormatError on anything else malformed:
    the message names the fault and its position (a character offset, or a byte offset for bad
    UTF-8).
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LinkFormatError(f"link format is not UTF-8: byte {exc.start}: {exc.reason}") from None
    return _Parser(text).links()


def serialize_links(links: Iterable[Link]) -> str:
    """The link-format document for ``links``: comma-separated, without added whitespace."""
    return ",".join(str(link) for link in links)


def filter_links(links: Iterable[Link], query: Sequence[str]) -> list[Link]:
    """The links a ``/.well-known/core`` query selects (RFC 6690 §4.1).

    ``query`` holds the Uri-Query option values (already percent-decoded), e.g. ``["rt=temp*"]``;
    a single string is taken as one item. Each item is ``name=pattern``: ``href`` compares with the
    href as written, any other name with that attribute's value (any occurrence). A pattern ending in
    ``*`` is a prefix match, otherwise the comparison is exact; for the list-valued attributes rt,
    if, rel, rev and ct, it is made against each space-separated item. ``name=*`` selects links that
    have the attribute at all, and a valueless attribute counts as the empty value. Links without
    the attribute never match.

    RFC 6690 §4.1 defines a single filter; several items are accepted and must all match. An empty
    query selects everything. Items without ``=``, with an empty or invalid name, or with ``*``
    anywhere but at the end raise LinkFormatError (a server answers those with 4.00 Bad Request).
    """
    items = [query] if isinstance(query, str) else list(query)
    filters = [_parse_filter(item) for item in items]
    return [link for link in links if all(_matches(link, *f) for f in filters)]


class _Parser:
    """A cursor over one document; each method consumes one production of the RFC 6690 grammar."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, message: str, pos: int | None = None) -> LinkFormatError:
        where = self.pos if pos is None else pos
        return LinkFormatError(f"{message} at position {where}")

    def skip_ws(self) -> None:
        match = _WS_RE.match(self.text, self.pos)
        assert match is not None  # the pattern matches the empty string
        self.pos = match.end()

    def links(self) -> list[Link]:
        # Link = link-value-list; link-value-list = [ link-value *[ "," link-value ] ]
        text, links = self.text, list[Link]()
        self.skip_ws()
        if self.pos == len(text):
            return links
        while True:
            links.append(self.link_value())
            self.skip_ws()
            if self.pos == len(text):
                return links
            if text[self.pos] != ",":
                raise self.fail(f"expected ',' or ';' but found {text[self.pos]!r}")
            comma = self.pos
            self.pos += 1
            self.skip_ws()
            if self.pos == len(text):
                raise self.fail("trailing ',' with no link after it", comma)

    def link_value(self) -> Link:
        # link-value = "<" URI-Reference ">" *( ";" link-param )
        text, start = self.text, self.pos
        if text[start] != "<":
            raise self.fail(f"expected '<' to start a link but found {text[start]!r}")
        end = text.find(">", start + 1)
        if end < 0:
            raise self.fail("unterminated '<': no '>' after it", start)
        href = text[start + 1 : end]
        bad = _BAD_HREF_RE.search(href)
        if bad is not None:
            raise self.fail(f"{bad.group()!r} inside '<...>'", start + 1 + bad.start())
        self.pos = end + 1
        attributes: list[tuple[str, str | None]] = []
        while True:
            before = self.pos
            self.skip_ws()
            if self.pos == len(text) or text[self.pos] != ";":
                self.pos = before
                return Link(href, attributes)
            self.pos += 1
            self.skip_ws()
            attributes.append(self.link_param())

    def link_param(self) -> tuple[str, str | None]:
        # link-extension = parmname [ "=" ( ptoken / quoted-string ) ]
        text = self.text
        name_match = _PARMNAME_RE.match(text, self.pos)
        if name_match is None:
            found = repr(text[self.pos]) if self.pos < len(text) else "end of input"
            raise self.fail(f"expected an attribute name after ';' but found {found}")
        name = name_match.group()
        self.pos = name_match.end()
        before = self.pos
        self.skip_ws()
        if self.pos == len(text) or text[self.pos] != "=":
            self.pos = before
            return name, None
        self.pos += 1
        self.skip_ws()
        if self.pos < len(text) and text[self.pos] == '"':
            quoted = _QUOTED_RE.match(text, self.pos)
            if quoted is None:
                raise self.fail(f"unterminated quoted value of {name!r}")
            self.pos = quoted.end()
            return name, _ESCAPE_RE.sub(r"\1", quoted.group(1))
        token = _PTOKEN_RE.match(text, self.pos)
        if token is None:
            found = repr(text[self.pos]) if self.pos < len(text) else "end of input"
            raise self.fail(f"expected a value for {name!r} after '=' but found {found}")
        self.pos = token.end()
        return name, token.group()


def _parse_filter(item: str) -> tuple[str, str, bool]:
    """One query item as (lower-case name, pattern without its '*', whether it is a prefix)."""
    name, eq, pattern = item.partition("=")
    if not eq:
        raise LinkFormatError(f"query item {item!r} is not name=value")
    if name != "href" and _PARMNAME_RE.fullmatch(name) is None:
        raise LinkFormatError(f"query item {item!r} does not start with an attribute name")
    prefix = pattern.endswith("*")
    if prefix:
        pattern = pattern[:-1]
    if "*" in pattern:
        raise LinkFormatError(f"query item {item!r} has '*' before its end")
    return name.lower(), pattern, prefix


def _matches(link: Link, name: str, pattern: str, prefix: bool) -> bool:
    if name == "href":
        candidates = [link.href]
    else:
        values = link.get_all(name)
        if not values:
            return False
        if prefix and not pattern:
            return True
        if name in _MULTI_VALUED:
            candidates = [item for v in values if v is not None for item in v.split()]
        else:
            candidates = ["" if v is None else v for v in values]
    if prefix:
        return any(c.startswith(pattern) for c in candidates)
    return pattern in candidates


# RFC 3986 Appendix B: split a URI-Reference into scheme, authority, path, query and fragment,
# keeping "absent" (None) apart from "empty" as §5.2 requires.
_URI_RE = re.compile(r"(?:([^:/?#]+):)?(?://([^/?#]*))?([^?#]*)(?:\?([^#]*))?(?:#(.*))?", re.DOTALL)

_Parts = tuple[str | None, str | None, str, str | None, str | None]


def _split(uri: str) -> _Parts:
    match = _URI_RE.fullmatch(uri)
    assert match is not None  # every string matches
    scheme, authority, path, query, fragment = match.groups()
    return scheme, authority, path, query, fragment


def _origin(uri: str) -> str | None:
    """``scheme://authority`` of ``uri``, or None if it has no authority (a URN, a relative ref)."""
    scheme, authority, _, _, _ = _split(uri)
    if scheme is None or authority is None:
        return None
    return f"{scheme}://{authority}"


def _base_origin(base: str) -> str:
    origin = _origin(base)
    if origin is None:
        raise ValueError(f"base URI {base!r} has no scheme and authority to resolve against")
    return origin


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, step by step as the RFC writes it."""
    rest, output = path, list[str]()
    while rest:
        if rest.startswith("../"):
            rest = rest[3:]
        elif rest.startswith(("./", "/./")):
            rest = rest[2:]
        elif rest == "/.":
            rest = "/"
        elif rest.startswith("/../") or rest == "/..":
            rest = "/" + rest[4:]
            if output:
                output.pop()
        elif rest in (".", ".."):
            rest = ""
        else:
            end = rest.find("/", 1)
            if end < 0:
                end = len(rest)
            output.append(rest[:end])
            rest = rest[end:]
    return "".join(output)


def _resolve_reference(base: str, reference: str) -> str:
    """RFC 3986 §5.2.2 strict resolution of ``reference`` against the absolute URI ``base``.

    Written out because ``urllib.parse.urljoin`` only resolves schemes it has listed (not coap).
    """
    b_scheme, b_authority, b_path, b_query, _ = _split(base)
    r_scheme, r_authority, r_path, r_query, r_fragment = _split(reference)
    scheme: str | None
    authority: str | None
    query: str | None
    if r_scheme is not None:
        scheme, authority, path, query = r_scheme, r_authority, _remove_dot_segments(r_path), r_query
    else:
        scheme = b_scheme
        if r_authority is not None:
            authority, path, query = r_authority, _remove_dot_segments(r_path), r_query
        else:
            authority = b_authority
            if r_path == "":
                path, query = b_path, r_query if r_query is not None else b_query
            else:
                if r_path.startswith("/"):
                    path = _remove_dot_segments(r_path)
                elif b_authority is not None and b_path == "":
                    path = _remove_dot_segments("/" + r_path)
                else:
                    path = _remove_dot_segments(b_path[: b_path.rfind("/") + 1] + r_path)
                query = r_query
    # §5.3 recomposition.
    result = f"{scheme}:" if scheme is not None else ""
    if authority is not None:
        result += f"//{authority}"
    result += path
    if query is not None:
        result += f"?{query}"
    if r_fragment is not None:
        result += f"#{r_fragment}"
    return result
