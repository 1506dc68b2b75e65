"""Fuzz target: CoAP URIs taken apart into request options and composed back (RFC 7252 §6.4/§6.5).

The input bytes are read as Latin-1, one character per byte, so that non-ASCII text is fuzzed too.
Checks: ``split_uri`` gives parts or a UriError, never another exception; a URI that splits composes
to a normal form that splits to the same parts and composes to itself; ``uri_options`` works on every
split URI. See fuzz/README.md for running it.
"""

from __future__ import annotations

import contextlib

try:
    import atheris
except ImportError:
    atheris = None

with atheris.instrument_imports() if atheris is not None else contextlib.nullcontext():
    import coapfuzz

    from coapio.error import UriError
    from coapio.protocol.uri import compose_uri, split_uri, uri_options


def TestOneInput(data: bytes) -> None:  # the name atheris and libFuzzer use
    text = data.decode("latin-1")
    try:
        parts = split_uri(text)
    except UriError:
        return
    normal = compose_uri(scheme=parts.scheme, host=parts.host, port=parts.port, path=parts.path,
                         query=parts.query)
    assert split_uri(normal) == parts, f"{text!r} -> {normal!r} -> {split_uri(normal)}, not {parts}"
    assert compose_uri(scheme=parts.scheme, host=parts.host, port=parts.port, path=parts.path,
                       query=parts.query) == normal
    uri_options(parts)
    uri_options(parts, destination_host="127.0.0.1", destination_port=1)


SEEDS = [
    b"coap://example.org/sensors/temp?unit=C&x",
    b"coaps://[2001:db8::2:1]:5684/.well-known/core?rt=temp*",
    b"coap+tcp://%41b.example/%2E%2E/a/../b/./c/?",
    b"coap://[fe80::1%25eth0]:0/%C3%A4%2F?%26=%3D",
    b"COAP://1.2.3.4:00065535",
    b"coaps+ws://h/a%00b",
    b"coap://h:/#frag",
]


if __name__ == "__main__":
    coapfuzz.main(TestOneInput, SEEDS, atheris)
