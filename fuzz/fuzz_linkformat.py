"""Fuzz target: RFC 6690 link-format documents and /.well-known/core queries.

An input is a document, optionally followed by a NUL byte and ``&``-separated query items. Checks:
parsing gives links or a LinkFormatError, never another exception; parsed links serialize to a document
that parses back to the same links; every link resolves against a CoAP base; filtering by the query
gives a subset of the links or a LinkFormatError. See fuzz/README.md for running it.
"""

from __future__ import annotations

import contextlib

try:
    import atheris
except ImportError:
    atheris = None

with atheris.instrument_imports() if atheris is not None else contextlib.nullcontext():
    import coapfuzz

    from coapio.error import LinkFormatError
    from coapio.protocol.linkformat import filter_links, parse_links, serialize_links

BASE = "coap://[2001:db8::1]:61616/.well-known/core"


def TestOneInput(data: bytes) -> None:  # the name atheris and libFuzzer use
    document, _, query = data.partition(b"\0")
    try:
        links = parse_links(document)
    except LinkFormatError:
        return
    again = parse_links(serialize_links(links))
    assert again == links, f"{document!r}: {links} came back as {again}"
    for link in links:
        assert isinstance(link.resolve(BASE), str) and isinstance(link.context(BASE), str)
    items = query.decode("utf-8", "replace").split("&") if query else []
    try:
        selected = filter_links(links, items)
    except LinkFormatError:
        return
    assert all(link in links for link in selected)


SEEDS = [
    b'</sensors/temp>;rt="temperature-c";if="sensor",</sensors/light>;rt="light-lux";if="sensor"',
    b'<http://www.example.com/sensors/t123>;anchor="/sensors/temp";rel="describedby"',
    b'</t>;anchor="/sensors/temp";rel="alternate",</obs>;obs;ct=0;title="a \\"quoted\\" title"',
    b"</big>;sz=3000;ct=\"0 40\",\n </x>;title*=UTF-8'de'n%c3%a4chste\0rt=temp*&if=sensor",
    b'</hello>;rt=greeting;ct=0\0href=/hel*',
    b"",
    b"<>",
]


if __name__ == "__main__":
    coapfuzz.main(TestOneInput, SEEDS, atheris)
