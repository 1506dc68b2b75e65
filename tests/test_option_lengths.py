"""Option values of a length the registry forbids are refused before sending (issue 13, item 2).

The typed accessors check lengths as values are set, so a request built from a URI or with ``opt.<name>``
cannot go out with an over-long option; raw ``Options.add`` stays unchecked on purpose (tests build
hostile messages with it). A server that receives one says which length is wrong in its 4.02.
"""

from __future__ import annotations

import socket

import pytest
import trio

from coapio import Code, Context, Message, Type
from coapio.cli.server import build_site
from coapio.protocol.options import OptionLengthError, Options, check_length


@pytest.mark.parametrize(
    "uri",
    [
        "coap://127.0.0.1/" + "a" * 256,
        "coap://127.0.0.1/?" + "q" * 256,
        "coap://" + "h" * 256 + "/",
    ],
)
def test_a_uri_with_an_overlong_part_is_refused(uri: str) -> None:
    with pytest.raises(OptionLengthError, match="must have at most 255"):
        Message(uri=uri)


def test_the_longest_allowed_values_are_accepted() -> None:
    message = Message(uri="coap://127.0.0.1/" + "a" * 255 + "?" + "q" * 255)
    message.opt.if_match = (b"x" * 8,)
    message.opt.uri_host = "h" * 255
    assert message.opt.uri_path == ("a" * 255,)


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("if_match", (b"x" * 9,), "If-Match (1) has 9 bytes; it must have at most 8"),
        ("etag", b"", "ETag (4) has 0 bytes; it must have at least 1"),
        ("uri_host", "h" * 300, "Uri-Host (3) has 300 bytes"),
        ("uri_query", ("q" * 300,), "Uri-Query (15) has 300 bytes"),
        ("content_format", 70000, "Content-Format (12) has 3 bytes; it must have at most 2"),
        ("observe", 1 << 24, "Observe (6) has 4 bytes"),
    ],
)
def test_typed_setters_check_the_length(name: str, value: object, problem: str) -> None:
    options = Options()
    with pytest.raises(OptionLengthError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        setattr(options, name, value)
    assert len(options) == 0  # nothing half-set
    assert isinstance(OptionLengthError("x"), ValueError)  # callers catching ValueError keep working


def test_an_echo_value_is_repeated_as_the_server_chose_it() -> None:
    options = Options()
    options.echo = b"e" * 41  # longer than RFC 9175 allows, but the server's business: no exception
    assert options.echo == b"e" * 41


def test_check_length_covers_raw_values_and_ignores_unregistered_numbers() -> None:
    with pytest.raises(OptionLengthError):
        check_length(11, b"a" * 256)
    check_length(11, b"a" * 255)
    check_length(65000, b"x" * 1000)


async def test_context_requests_cannot_carry_overlong_options() -> None:
    async with Context(bind="127.0.0.1:0") as ctx:
        with pytest.raises(OptionLengthError):
            await ctx.get("coap://127.0.0.1:9/" + "a" * 300)


async def test_the_4_02_for_an_overlong_critical_option_names_its_length() -> None:
    # A peer that sends one anyway (raw add) gets a diagnostic that says what is wrong.
    async with Context(bind="127.0.0.1:0", site=build_site()) as server:
        port = server.local_addresses[0][1]
        request = Message(Type.CON, Code.GET, 0x1234, b"t")
        request.opt.add(11, b"a" * 300)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(request.encode(), ("127.0.0.1", port))
            with trio.fail_after(5):
                await trio.lowlevel.wait_readable(sock)
            response = Message.decode(sock.recv(2048))
    assert response.code == Code.BAD_OPTION
    assert response.payload == b"option Uri-Path (11) has 300 bytes; it must have at most 255"
