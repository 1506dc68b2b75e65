"""coapio-client: argument handling in-process, and the tool as a subprocess against coapio and libcoap.

``main()`` calls ``trio.run``, so in-process tests of it are plain (synchronous) tests; the subprocess tests
run the tool with ``trio.run_process`` next to a server living in the same trio test.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import importlib.util
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from conftest import require_binary

from coapio import (
    Code,
    ContentFormat,
    Context,
    Message,
    ObservableResource,
    Peer,
    Resource,
    Site,
    TransportTuning,
    Type,
    error,
)
from coapio.cli import client
from coapio.cli.server import build_site, large_text
from coapio.protocol.options import BlockValue

CLIENT = [sys.executable, "-m", "coapio.cli.client"]
SUBPROCESS_LIMIT = 30  # seconds any one subprocess may take before the test fails


# --- in-process: usage --------------------------------------------------------------------------


def test_help_documents_every_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert client.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: coapio-client")
    statuses = out.split("exit status:\n", 1)[1].splitlines()
    codes = [line.split()[0] for line in statuses if line[:3].strip().isdigit()]
    assert codes == ["0", "1", "2", "3", "4", "130"]


def test_missing_uri_is_an_argparse_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert client.main([]) == 2
    err = capsys.readouterr().err
    # Issue 13, item 11: one line, not argparse's usage block followed by the message.
    assert err == "coapio-client: error: the following arguments are required: URI (see --help)\n"


def test_unknown_method_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert client.main(["-m", "frobnicate", "coap://127.0.0.1/"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_verbose_and_quiet_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    assert client.main(["-v", "-q", "coap://127.0.0.1/"]) == 2
    assert "not allowed with" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["not a uri"], "invalid URI"),
        (["http://example.com/"], "unsupported scheme"),
        (["coap://[::1/"], "invalid URI"),
        (["coap://example.com/#frag"], "fragment"),
        (["--psk", "key", "coaps://127.0.0.1/"], "--psk and --identity go together"),
        (["--content-format", "text/nonsense", "coap://127.0.0.1/"], "--content-format"),
        (["--content-format", "70000", "coap://127.0.0.1/"], "out of range"),
        (["--accept", "application/bogus", "coap://127.0.0.1/"], "--accept"),
        (["-O", "Bogus-Option,1", "coap://127.0.0.1/"], "unknown option 'Bogus-Option'"),
        (["-O", ",1", "coap://127.0.0.1/"], "expected NUM,VALUE"),
        (["-O", "70000,x", "coap://127.0.0.1/"], "out of range"),
        (["-O", "12,text", "coap://127.0.0.1/"], "unsigned integer"),
        (["-O", "12,-1", "coap://127.0.0.1/"], "unsigned integer"),
        (["-O", "12,70000", "coap://127.0.0.1/"], "does not fit in 2 bytes"),
        (["-O", "4,0xabc", "coap://127.0.0.1/"], "not valid hex"),
        (["-O", "If-None-Match,yes", "coap://127.0.0.1/"], "takes no value"),
        (["--payload", "@/nonexistent/payload.bin", "coap://127.0.0.1/"], "cannot read payload file"),
        (["--payload", "@", "coap://127.0.0.1/"], "needs a file name"),
        (["--timeout", "0", "coap://127.0.0.1/"], "positive"),
        (["--timeout", "nan", "coap://127.0.0.1/"], "positive"),
        (["--timeout", "soon", "coap://127.0.0.1/"], "not a number"),
        (["--block-size", "100", "coap://127.0.0.1/"], "--block-size must be 16, 32"),
        (["--block-size", "8", "coap://127.0.0.1/"], "--block-size must be"),
        (["--block-size", "2048", "coap://127.0.0.1/"], "--block-size must be"),
        (["--block-size", "1k", "coap://127.0.0.1/"], "--block-size must be"),
        (["--observe-count", "3", "coap://127.0.0.1/"], "--observe-count needs --observe"),
        (["--observe", "--observe-count", "0", "coap://127.0.0.1/"], "positive whole number"),
        (["--observe", "--observe-count", "-1", "coap://127.0.0.1/"], "positive whole number"),
        (["--observe", "--observe-count", "two", "coap://127.0.0.1/"], "positive whole number"),
        (["--observe", "-m", "post", "coap://127.0.0.1/"], "--observe needs the method GET or FETCH"),
        # Issue 13, item 2: option values too long for their option are refused before anything is sent.
        (["coap://127.0.0.1/" + "a" * 300], "Uri-Path (11) has 300 bytes; it must have at most 255"),
        (["coap://127.0.0.1/?" + "q" * 300], "Uri-Query (15) has 300 bytes"),
        (["-O", "Uri-Host," + "h" * 300, "coap://127.0.0.1/"], "Uri-Host (3) has 300 bytes"),
        (["-O", "Uri-Query," + "q" * 300, "coap://127.0.0.1/"], "Uri-Query (15) has 300 bytes"),
        (["-O", "If-Match,0x" + "ab" * 9, "coap://127.0.0.1/"], "If-Match (1) has 9 bytes; it must have at"),
        (["-O", "ETag,0x" + "ab" * 9, "coap://127.0.0.1/"], "ETag (4) has 9 bytes"),
        (["-O", "Echo,", "coap://127.0.0.1/"], "Echo (252) has 0 bytes; it must have at least 1"),
        # Item 9: port 0 is not a port anything can be sent to.
        (["coap://127.0.0.1:0/x"], "port 0 cannot be sent to"),
        (["coap://[::1]:0/"], "port 0"),
        # Item 11: argparse's own errors are one line too.
        (["--bogus", "coap://127.0.0.1/"], "unrecognized arguments: --bogus"),
        (["--color", "pink", "coap://127.0.0.1/"], "--color: invalid choice"),
        (["--pretty", "--raw", "coap://127.0.0.1/"], "not allowed with"),
        # The new flags' values are checked like the others.
        (["--max-body-size", "0", "coap://127.0.0.1/"], "--max-body-size must be a positive number"),
        (["--max-body-size", "lots", "coap://127.0.0.1/"], "--max-body-size must be"),
        (["--observe-for", "2", "coap://127.0.0.1/"], "--observe-for needs --observe"),
        (["--observe", "--observe-for", "-1", "coap://127.0.0.1/"], "--observe-for must be a positive"),
        (["--token", "xyz", "coap://127.0.0.1/"], "--token 'xyz' is not hex"),
        (["--token", "00" * 9, "coap://127.0.0.1/"], "--token must be 1 to 8 bytes"),
        (["--bind", "[::1", "coap://127.0.0.1/"], "--bind"),
        (["--bind", "127.0.0.1:http", "coap://127.0.0.1/"], "the port must be a number"),
        (["-o", "/nonexistent/dir/out.bin", "coap://127.0.0.1/"], "no such directory"),
    ],
)
def test_bad_argument_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], fragment: str
) -> None:
    assert client.main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("coapio-client: error: ")
    assert fragment in lines[0]
    assert "Traceback" not in captured.err


def test_keyboard_interrupt_exits_130_quietly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(trio, "run", interrupted)
    assert client.main(["coap://127.0.0.1/"]) == 130
    assert capsys.readouterr() == ("", "")


def test_keyboard_interrupt_inside_an_exception_group_exits_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*args: object) -> int:
        raise BaseExceptionGroup("nursery", [KeyboardInterrupt()])

    monkeypatch.setattr(trio, "run", interrupted)
    assert client.main(["coap://127.0.0.1/"]) == 130
    assert capsys.readouterr() == ("", "")


# --- in-process: building the request -----------------------------------------------------------


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        ("12,50", (12, b"\x32")),  # Content-Format: uint
        ("Content-Format,0", (12, b"")),  # uint 0 is the empty string
        ("max-age,0x0100", (14, b"\x01\x00")),  # uint given in hex, names case-insensitive
        ("Uri-Query,a=b,c", (15, b"a=b,c")),  # string: only the first comma splits
        ("15,0x41", (15, b"0x41")),  # a string is text even when it looks like hex
        ("ETag,0xCAFE", (4, b"\xca\xfe")),  # opaque in hex
        ("ETag,tag", (4, b"tag")),  # opaque as UTF-8 text
        ("65000,0x00ff", (65000, b"\x00\xff")),  # unknown number: hex
        ("65000,héllo", (65000, "héllo".encode())),  # unknown number: UTF-8
        ("If-None-Match,", (5, b"")),  # empty option
        ("If-None-Match", (5, b"")),  # no comma: empty value
        ("2048,", (2048, b"")),
    ],
)
def test_option_argument_follows_the_registered_format(argument: str, expected: tuple[int, bytes]) -> None:
    assert client.parse_option(argument) == expected


def _args(*argv: str) -> argparse.Namespace:
    return client.build_parser().parse_args([*argv])


def test_request_carries_method_payload_formats_type_and_options() -> None:
    request = client.build_request(_args(
        "-m", "PuT", "--payload", "héllo", "--content-format", "application/json", "--accept", "60",
        "--non", "-O", "ETag,0x01", "-O", "Uri-Query,x=1", "coap://127.0.0.1:1234/a/b?y=2",
    ))
    assert request.code == Code.PUT
    assert request.type == Type.NON
    assert request.payload == "héllo".encode()
    assert request.opt.content_format == ContentFormat.JSON
    assert request.opt.accept == ContentFormat.CBOR
    assert request.opt.etag == b"\x01"
    assert request.opt.uri_path == ("a", "b")
    assert request.opt.uri_query == ("y=2", "x=1")
    assert request.remote == Peer("coap", ("127.0.0.1", 1234))


def test_payload_from_file_is_read_as_bytes(tmp_path: Path) -> None:
    data = bytes(range(256))
    path = tmp_path / "payload.bin"
    path.write_bytes(data)
    request = client.build_request(_args("-m", "post", "--payload", f"@{path}", "coap://127.0.0.1/"))
    assert request.payload == data


def test_payload_from_stdin_is_read_as_bytes() -> None:
    stdin = io.BytesIO(b"\x00\xffbinary")
    request = client.build_request(_args("-m", "post", "--payload", "@-", "coap://127.0.0.1/"), stdin)
    assert request.payload == b"\x00\xffbinary"


@pytest.mark.parametrize(("size", "szx"), [("16", 0), ("32", 1), ("64", 2), ("256", 4), ("1024", 6)])
def test_block_size_is_a_power_of_two_from_16_to_1024(size: str, szx: int) -> None:
    assert client.parse_block_size(size) == szx
    request = client.build_request(_args("--block-size", size, "coap://127.0.0.1/"))
    assert request.opt.block2 == BlockValue(0, False, szx)  # early negotiation of the response's size


def test_without_block_size_the_request_carries_no_block2() -> None:
    assert client.parse_block_size(None) is None
    assert client.build_request(_args("coap://127.0.0.1/")).opt.block2 is None


def test_an_explicit_block2_option_wins_over_block_size() -> None:
    request = client.build_request(_args("--block-size", "64", "-O", "Block2,0x01", "coap://127.0.0.1/"))
    assert request.opt.block2 == BlockValue(0, False, 1)


def test_double_at_sends_a_literal_at() -> None:
    request = client.build_request(_args("--payload", "@@home", "coap://127.0.0.1/"))
    assert request.payload == b"@home"


# --- in-process: showing the response -----------------------------------------------------------


def test_pipe_output_is_the_payload_unchanged() -> None:
    payload = b'{"a":[1,2]}'
    assert client.format_payload(payload, ContentFormat.JSON, tty=False) == payload
    assert client.format_payload(b"text", ContentFormat.TEXT_PLAIN, tty=False) == b"text"
    assert client.format_payload(b"\x00\x01", None, tty=False) == b"\x00\x01"


def test_terminal_output_pretty_prints_json() -> None:
    assert client.format_payload(b'{"a":[1,2]}', ContentFormat.JSON, tty=True) == (
        '{\n  "a": [\n    1,\n    2\n  ]\n}\n'
    )


def test_terminal_output_shows_invalid_json_as_text() -> None:
    assert client.format_payload(b"{nope", ContentFormat.JSON, tty=True) == "{nope\n"


def test_terminal_output_adds_a_final_newline_to_text() -> None:
    assert client.format_payload(b"hello", ContentFormat.TEXT_PLAIN, tty=True) == "hello\n"
    assert client.format_payload(b"hello\n", ContentFormat.TEXT_PLAIN, tty=True) == "hello\n"
    assert client.format_payload("grüß".encode(), None, tty=True) == "grüß\n"


def test_terminal_output_lists_one_link_per_line() -> None:
    payload = b'</a>;rt="x,y",</b>;ct=0'
    assert client.format_payload(payload, ContentFormat.LINK_FORMAT, tty=True) == (
        '</a>;rt="x,y"\n</b>;ct=0\n'
    )


def test_terminal_output_hex_dumps_binary() -> None:
    dump = client.format_payload(b"\x00\x01AB\xff", ContentFormat.OCTET_STREAM, tty=True)
    assert dump == "00000000  00 01 41 42 ff" + " " * 33 + "  |..AB.|\n"
    assert client.format_payload(b"\xff\xfe", None, tty=True) == client.format_payload(
        b"\xff\xfe", ContentFormat.OCTET_STREAM, tty=True
    )


def test_terminal_output_of_cbor_without_cbor_diag_is_a_hex_dump(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cbor_diag", None)  # makes `import cbor_diag` fail
    assert client.format_payload(b"\xa1\x61a\x01", ContentFormat.CBOR, tty=True) == (
        "00000000  a1 61 61 01" + " " * 36 + "  |.aa.|\n"
    )


needs_cbor_diag = pytest.mark.skipif(
    importlib.util.find_spec("cbor_diag") is None or importlib.util.find_spec("cbor2") is None,
    reason="needs the cbor extra (cbor2 and cbor-diag)",
)


@needs_cbor_diag
@pytest.mark.parametrize(
    ("hex_payload", "diagnostic"),
    [
        ("a1616101", '{"a": 1}'),
        ("a18001", "{[]: 1}"),  # a key that no Python dict could hold
        ("d9d9f7a0", "55799({})"),  # the self-described CBOR tag stays visible
        ("83f93e00f6f5", "[1.5_1, null, true]"),  # _1: a half-precision float
        ("4401020304", "h'01020304'"),
    ],
)
def test_terminal_output_of_cbor_is_diagnostic_notation(hex_payload: str, diagnostic: str) -> None:
    # Issue 13, item 7: RFC 8949 §8 diagnostic notation, not pprint of decoded Python objects.
    shown = client.format_payload(bytes.fromhex(hex_payload), ContentFormat.CBOR, tty=True)
    assert shown == diagnostic + "\n"


@needs_cbor_diag
def test_terminal_output_of_cbor_with_trailing_bytes_says_so() -> None:
    # Item 7: 81 01 02 is [1] followed by a stray 2; it must not be shown as just [1].
    shown = client.format_payload(bytes.fromhex("810102"), ContentFormat.CBOR, tty=True)
    assert isinstance(shown, str)
    assert shown.startswith("00000000  81 01 02")
    assert shown.splitlines()[-1].startswith("(not one CBOR data item:")
    assert "[1]" not in shown


@needs_cbor_diag
def test_hostile_cbor_is_shown_as_hex_without_crashing_or_noise(capfd: pytest.CaptureFixture[str]) -> None:
    # cbor-diag alone overflows the stack on deep nesting (the process dies) and panics on some valid
    # CBOR, printing a Rust backtrace: the client checks with cbor2 first and keeps file descriptor 2 quiet.
    deep = client.format_payload(b"\x81" * 100_000 + b"\x01", ContentFormat.CBOR, tty=True)
    assert isinstance(deep, str) and deep.endswith("(not one CBOR data item: maximum container nesting depth"
                                                   " (400) exceeded)\n")
    empty_chunks = client.format_payload(b"\x5f\xff", ContentFormat.CBOR, tty=True)  # (_ ): valid CBOR
    assert isinstance(empty_chunks, str)
    assert empty_chunks.startswith("00000000  5f ff") or empty_chunks.startswith("(_")
    assert capfd.readouterr() == ("", "")


@needs_cbor_diag
def test_terminal_output_of_a_cbor_sequence_shows_every_item() -> None:
    shown = client.format_payload(bytes.fromhex("0102a0"), ContentFormat.CBOR_SEQ, tty=True)
    assert isinstance(shown, str)
    assert [line.strip(", ") for line in shown.splitlines() if line.strip()] == ["1", "2", "{}"]


def _response(code: Code, payload: bytes = b"", content_format: int | None = None) -> Message:
    remote = ("::ffff:127.0.0.1", 5683, 0, 0)
    response = Message(Type.ACK, code, 7, b"\x01\x02", payload=payload, remote=remote)
    if content_format is not None:
        response.opt.content_format = content_format
    return response


def _show(*argv: str, response: Message) -> tuple[int, str, str]:
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    stderr = io.StringIO()
    status = client.show_response(_args(*argv, "coap://127.0.0.1/"), response, stdout, stderr)
    stdout.flush()
    return status, stdout.buffer.getvalue().decode(), stderr.getvalue()


def test_error_response_exits_1_with_code_and_diagnostic_on_stderr() -> None:
    assert _show(response=_response(Code.NOT_FOUND, b"no such thing")) == (
        1, "", "4.04 Not Found\nno such thing\n"
    )
    assert _show(response=_response(Code.INTERNAL_SERVER_ERROR)) == (1, "", "5.00 Internal Server Error\n")


def test_quiet_prints_no_payload_but_still_reports_errors() -> None:
    assert _show("-q", response=_response(Code.CONTENT, b"hello")) == (0, "", "")
    assert _show("-q", response=_response(Code.FORBIDDEN)) == (1, "", "4.03 Forbidden\n")


def test_verbose_prints_code_remote_and_options_one_per_line() -> None:
    response = _response(Code.CONTENT, b"hi", ContentFormat.TEXT_PLAIN)
    response.opt.max_age = 30
    response.opt.etag = b"\xca\xfe"
    response.opt.add(65000, b"\x01")
    status, out, err = _show("-v", response=response)
    assert (status, out) == (0, "hi")
    assert err.splitlines() == [
        "2.05 Content",
        "remote=127.0.0.1:5683",
        "type=ACK mid=7 token=0102",
        "ETag=cafe",
        "Content-Format=0 (text/plain; charset=utf-8)",
        "Max-Age=30",
        "Option-65000=01",
        "payload=2 bytes",
    ]


@pytest.mark.parametrize(
    ("exception", "status"),
    [
        (error.RequestTimedOut("gave up"), 3),
        (TimeoutError(), 3),
        (error.NetworkError(errno.ECONNREFUSED, "refused"), 4),
        (error.NetworkError("cannot resolve 'x.invalid'"), 4),
        (error.ResetReceived("rst"), 4),
        (error.ResponseRejected("bad option"), 4),
        (OSError(errno.ENETUNREACH, "unreachable"), 4),
    ],
)
def test_failures_map_to_exit_statuses(exception: Exception, status: int) -> None:
    request = Message(uri="coap://127.0.0.1/")
    outcome = client._failure(exception, request, 1.0)
    assert outcome is not None
    assert outcome[0] == status


def test_an_unexpected_exception_is_not_reported_as_a_failure() -> None:
    assert client._failure(ValueError("bug"), Message(uri="coap://127.0.0.1/"), None) is None


# --- subprocess against an in-process coapio server --------------------------------------------


class JsonResource(Resource):
    def render_get(self, request: Message) -> Message:
        response = Message(payload=b'{"temperature":21.5,"unit":"C"}')
        response.opt.content_format = ContentFormat.JSON
        return response


class OptionsResource(Resource):
    """Answers with the request's type and options, one ``number=hex`` per line."""

    def render_get(self, request: Message) -> Message:
        lines = [request.type.name] + [f"{number}={raw.hex()}" for number, raw in request.opt]
        return Message(payload="\n".join(lines).encode())


class Diagnostic(Resource):
    def render_get(self, request: Message) -> Message:
        raise error.NotFound("gone fishing")


class Counter(ObservableResource):
    """An observable number the test changes (``bump``); ``gone`` makes it answer 4.04 from then on."""

    def __init__(self) -> None:
        super().__init__()
        self.value = 0
        self.gone = False

    def bump(self) -> None:
        self.value += 1
        self.notify()

    def render_get(self, request: Message) -> Message:
        if self.gone:
            raise error.NotFound("counter removed")
        return Message(payload=str(self.value).encode())


def _test_site() -> Site:
    site = build_site()
    site.add("json", JsonResource())
    site.add("options", OptionsResource())
    site.add("diagnostic", Diagnostic())
    site.add("counter", Counter())
    return site


@attrs.define
class Served:
    """The in-process coapio server: its port, its counter, and the block sizes of the requests it got."""

    port: int
    counter: Counter
    blocks: list[tuple[int | None, int | None]]  # (Block1 size, Block2 size) of every request


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    site = _test_site()
    resolved = site.resolve(("counter",))
    assert resolved is not None and isinstance(resolved[0], Counter)
    async with Context(bind="127.0.0.1:0", site=site) as ctx:
        blocks: list[tuple[int | None, int | None]] = []
        serve = ctx._server._serve

        def recording(endpoint: Any, request: Message, now: float) -> None:
            block1, block2 = request.opt.block1, request.opt.block2
            blocks.append((block1 and block1.size, block2 and block2.size))
            serve(endpoint, request, now)

        ctx._server._serve = recording  # type: ignore[method-assign]
        yield Served(ctx.transports[0].local[1], resolved[0], blocks)


@pytest.fixture
def coapio_port(served: Served) -> int:
    return served.port


async def run_client(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(SUBPROCESS_LIMIT):
        return await trio.run_process(
            [*CLIENT, *args], stdin=stdin, capture_stdout=True, capture_stderr=True, check=False
        )


async def test_get_text_writes_the_payload_unchanged_to_a_pipe(coapio_port: int) -> None:
    result = await run_client(f"coap://127.0.0.1:{coapio_port}/whoami")
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    assert result.stdout.startswith(b"127.0.0.1:")
    assert not result.stdout.endswith(b"\n")


async def test_post_sends_payload_and_content_format(coapio_port: int) -> None:
    result = await run_client(
        "-m", "POST", "--payload", '{"x": 1}', "--content-format", "application/json", "-v",
        f"coap://127.0.0.1:{coapio_port}/echo",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b'{"x": 1}'
    err = result.stderr.decode().splitlines()
    assert err[0] == "2.04 Changed"
    assert f"remote=127.0.0.1:{coapio_port}" in err
    assert "Content-Format=50 (application/json)" in err


async def test_put_payload_from_file(coapio_port: int, tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(200)))
    result = await run_client("-m", "put", "--payload", f"@{path}", f"coap://127.0.0.1:{coapio_port}/echo")
    assert result.returncode == 0, result.stderr
    assert result.stdout == bytes(range(200))


async def test_post_payload_from_stdin(coapio_port: int) -> None:
    result = await run_client(
        "-m", "post", "--payload", "@-", f"coap://127.0.0.1:{coapio_port}/echo", stdin=b"\x00from stdin\xff"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"\x00from stdin\xff"


async def test_raw_options_reach_the_server(coapio_port: int) -> None:
    result = await run_client(
        "-O", "ETag,0xcafe", "-O", "65000,hello", "-O", "2048,", "-O", "Accept,60",
        f"coap://127.0.0.1:{coapio_port}/options",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "CON"
    assert {"4=cafe", "11=6f7074696f6e73", "17=3c", "2048=", "65000=68656c6c6f"} <= set(lines[1:])


async def test_non_sends_a_non_confirmable_request(coapio_port: int) -> None:
    result = await run_client("--non", f"coap://127.0.0.1:{coapio_port}/options")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines()[0] == "NON"


async def test_verbose_shows_code_remote_and_options(coapio_port: int) -> None:
    result = await run_client("-v", f"coap://127.0.0.1:{coapio_port}/time")
    assert result.returncode == 0, result.stderr
    err = result.stderr.decode().splitlines()
    assert err[0] == "2.05 Content"
    assert err[1] == f"remote=127.0.0.1:{coapio_port}"
    assert "Content-Format=0 (text/plain; charset=utf-8)" in err
    assert "Max-Age=1" in err


async def test_quiet_prints_nothing(coapio_port: int) -> None:
    result = await run_client("-q", f"coap://127.0.0.1:{coapio_port}/time")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


async def test_not_found_exits_1(coapio_port: int) -> None:
    result = await run_client(f"coap://127.0.0.1:{coapio_port}/no/such/thing")
    assert (result.returncode, result.stdout, result.stderr) == (1, b"", b"4.04 Not Found\n")


async def test_error_diagnostic_goes_to_stderr(coapio_port: int) -> None:
    result = await run_client(f"coap://127.0.0.1:{coapio_port}/diagnostic")
    assert (result.returncode, result.stdout) == (1, b"")
    assert result.stderr == b"4.04 Not Found\ngone fishing\n"


async def test_method_not_allowed_exits_1(coapio_port: int) -> None:
    result = await run_client(f"coap://127.0.0.1:{coapio_port}/echo")
    assert (result.returncode, result.stderr) == (1, b"4.05 Method Not Allowed\n")


async def test_json_is_raw_in_a_pipe(coapio_port: int) -> None:
    result = await run_client(f"coap://127.0.0.1:{coapio_port}/json")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b'{"temperature":21.5,"unit":"C"}'


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
async def test_json_is_pretty_on_a_terminal(coapio_port: int) -> None:
    controller, terminal = os.openpty()
    try:
        with trio.fail_after(SUBPROCESS_LIMIT):
            result = await trio.run_process(
                [*CLIENT, f"coap://127.0.0.1:{coapio_port}/json"],
                stdout=terminal, capture_stderr=True, check=False,
            )
        os.close(terminal)
        terminal = -1
        output = _drain(controller)
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    assert result.returncode == 0, result.stderr
    text = output.decode().replace("\r\n", "\n")
    assert json.loads(text) == {"temperature": 21.5, "unit": "C"}
    assert text == '{\n  "temperature": 21.5,\n  "unit": "C"\n}\n'


def _drain(fd: int) -> bytes:
    """Everything written to a pty whose other side is closed (EIO marks the end on Linux)."""
    chunks = []
    for _ in range(1000):
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


@contextlib.contextmanager
def silent_udp_socket(host: str = "127.0.0.1") -> Iterator[socket.socket]:
    """A bound UDP socket that never answers: requests to it go unanswered, without ICMP errors."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        yield sock


def closed_port(host: str) -> int:
    """A port nobody listens on right now (bound once, then released)."""
    with silent_udp_socket(host) as sock:
        port: int = sock.getsockname()[1]
    return port


def _has_ipv6_loopback() -> bool:
    try:
        with silent_udp_socket("::1"):
            return True
    except OSError:
        return False


async def test_timeout_exits_3() -> None:
    with silent_udp_socket() as sock:
        port = sock.getsockname()[1]
        result = await run_client("--timeout", "0.5", f"coap://127.0.0.1:{port}/")
    assert (result.returncode, result.stdout) == (3, b"")
    assert result.stderr.decode() == (
        f"coapio-client: error: no response from 127.0.0.1:{port} within 0.5 s (--timeout)\n"
    )


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
async def test_closed_port_exits_4_at_once() -> None:
    port = closed_port("::1")
    with trio.fail_after(SUBPROCESS_LIMIT):
        result = await run_client("--timeout", "20", f"coap://[::1]:{port}/")
    assert (result.returncode, result.stdout) == (4, b"")
    assert result.stderr.decode() == f"coapio-client: error: [::1]:{port}: Connection refused\n"


async def test_closed_ipv4_port_exits_4_at_once() -> None:
    port = closed_port("127.0.0.1")
    result = await run_client("--timeout", "2", f"coap://127.0.0.1:{port}/")
    assert result.returncode == 4, result.stderr


async def test_context_reports_icmp_port_unreachable_for_an_ipv4_peer() -> None:
    port = closed_port("127.0.0.1")
    async with Context() as ctx:
        with pytest.raises(error.NetworkError), trio.fail_after(2):
            await ctx.get(f"coap://127.0.0.1:{port}/")


async def test_unresolvable_name_exits_4() -> None:
    result = await run_client("--timeout", "20", "coap://no-such-host.invalid/")
    assert (result.returncode, result.stdout) == (4, b"")
    line = result.stderr.decode()
    assert line.startswith("coapio-client: error: cannot resolve 'no-such-host.invalid'")
    assert line.count("\n") == 1


async def test_sigint_exits_130_without_a_traceback() -> None:
    with silent_udp_socket() as sock:
        port = sock.getsockname()[1]
        process = await trio.lowlevel.open_process(
            [*CLIENT, f"coap://127.0.0.1:{port}/"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            with trio.fail_after(SUBPROCESS_LIMIT):
                await trio.lowlevel.wait_readable(sock)  # the request arrived: the client is in trio.run
                process.send_signal(signal.SIGINT)
                await process.wait()
                assert process.stderr is not None
                err = b"".join([chunk async for chunk in process.stderr])
        finally:
            process.kill()
            await process.wait()
    assert process.returncode == 130
    assert err == b""


# --- subprocess: observe -------------------------------------------------------------------------


async def observe_client(
    *args: str, react: Callable[[int, trio.Process], None] = lambda index, process: None
) -> subprocess.CompletedProcess[bytes]:
    """Run the client, calling ``react(index, process)`` as soon as its line number ``index`` is out."""
    process = await trio.lowlevel.open_process(
        [*CLIENT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = bytearray(), bytearray()
    try:
        assert process.stdout is not None and process.stderr is not None
        stdout, stderr = process.stdout, process.stderr
        with trio.fail_after(SUBPROCESS_LIMIT):
            async with trio.open_nursery() as nursery:

                async def drain_stderr() -> None:
                    async for chunk in stderr:
                        err.extend(chunk)

                nursery.start_soon(drain_stderr)
                seen = 0
                async for chunk in stdout:
                    out.extend(chunk)
                    while out.count(b"\n") > seen:
                        react(seen, process)
                        seen += 1
            await process.wait()
    finally:
        process.kill()
        with trio.move_on_after(5):
            await process.wait()
    return subprocess.CompletedProcess(args, process.returncode, bytes(out), bytes(err))


async def test_observe_prints_each_notification_on_its_own_line(served: Served) -> None:
    result = await observe_client(
        "--observe", "--observe-count", "3", f"coap://127.0.0.1:{served.port}/counter",
        react=lambda index, process: served.counter.bump(),
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, b"0\n1\n2\n", b"")
    assert served.counter.value == 3  # the third bump came after the count was reached


async def test_observe_verbose_shows_the_sequence_numbers(served: Served) -> None:
    result = await observe_client(
        "--observe", "--observe-count", "3", "-v", f"coap://127.0.0.1:{served.port}/counter",
        react=lambda index, process: served.counter.bump(),
    )
    assert (result.returncode, result.stdout) == (0, b"0\n1\n2\n")
    err = result.stderr.decode().splitlines()
    assert err[0] == "2.05 Content"
    assert f"remote=127.0.0.1:{served.port}" in err
    first = next(int(line[8:]) for line in err if line.startswith("Observe="))
    later = [re.fullmatch(r"2\.05 Content Observe=(\d+) payload=1 bytes", line) for line in err[-2:]]
    assert all(later), err
    sequence = [first] + [int(m[1]) for m in later if m]
    assert sequence == sorted(set(sequence)), sequence  # strictly increasing


async def test_observe_ended_by_an_error_exits_1(served: Served) -> None:
    def remove(index: int, process: trio.Process) -> None:
        served.counter.gone = True
        served.counter.notify()

    result = await observe_client("--observe", f"coap://127.0.0.1:{served.port}/counter", react=remove)
    assert (result.returncode, result.stdout) == (1, b"0\n")
    assert result.stderr == b"4.04 Not Found\ncounter removed\n"


async def test_observe_of_a_plain_resource_prints_its_one_response(served: Served) -> None:
    result = await observe_client("--observe", f"coap://127.0.0.1:{served.port}/whoami")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(rb"127\.0\.0\.1:\d+\n", result.stdout), result.stdout  # ended: no Observe


async def test_observe_ctrl_c_exits_0_and_deregisters(served: Served) -> None:
    def interrupt(index: int, process: trio.Process) -> None:
        assert served.counter.observer_count == 1
        process.send_signal(signal.SIGINT)

    result = await observe_client("--observe", f"coap://127.0.0.1:{served.port}/counter", react=interrupt)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"0\n", b"")
    # The client sent its GET with Observe=1 before exiting; once every task here is blocked again, the
    # in-process server has read it.
    await trio.testing.wait_all_tasks_blocked()
    assert served.counter.observer_count == 0


async def test_observe_ctrl_c_before_the_first_response_exits_130() -> None:
    with silent_udp_socket() as sock:
        port = sock.getsockname()[1]
        process = await trio.lowlevel.open_process(
            [*CLIENT, "--observe", f"coap://127.0.0.1:{port}/"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            with trio.fail_after(SUBPROCESS_LIMIT):
                await trio.lowlevel.wait_readable(sock)  # the registration arrived
                process.send_signal(signal.SIGINT)
                await process.wait()
                assert process.stderr is not None
                err = b"".join([chunk async for chunk in process.stderr])
        finally:
            process.kill()
            await process.wait()
    assert (process.returncode, err) == (130, b"")


async def test_observe_timeout_bounds_the_first_response() -> None:
    with silent_udp_socket() as sock:
        port = sock.getsockname()[1]
        result = await run_client("--observe", "--timeout", "0.5", f"coap://127.0.0.1:{port}/")
    assert (result.returncode, result.stdout) == (3, b"")
    assert b"within 0.5 s (--timeout)" in result.stderr


# --- subprocess: block-wise and the progress line -------------------------------------------------


async def test_large_put_from_file_goes_out_with_block1_and_comes_back_whole(
    served: Served, tmp_path: Path
) -> None:
    data = os.urandom(100 * 1024)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    result = await run_client("-m", "put", "--payload", f"@{path}", f"coap://127.0.0.1:{served.port}/echo")
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).hexdigest() == hashlib.sha256(data).hexdigest()
    assert served.blocks.count((1024, None)) == 100  # every block up is 1024 bytes
    assert served.blocks.count((None, 1024)) == 99  # and the echo comes back in 1024-byte blocks


async def test_block_size_64_sets_both_directions(served: Served, tmp_path: Path) -> None:
    data = os.urandom(10 * 1024)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    result = await run_client(
        "-m", "post", "--block-size", "64", "--payload", f"@{path}", f"coap://127.0.0.1:{served.port}/echo"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == data
    # Block1 in 64-byte blocks (each also asking for 64-byte response blocks), then Block2 in 64 bytes.
    assert served.blocks == [(64, 64)] * 160 + [(None, 64)] * 159


async def test_block_size_16_fetches_large_in_16_byte_blocks(served: Served) -> None:
    result = await run_client("--block-size", "16", f"coap://127.0.0.1:{served.port}/large")
    assert result.returncode == 0, result.stderr
    assert result.stdout == large_text()
    assert served.blocks == [(None, 16)] * (len(large_text()) // 16)


async def _run_with_stderr_on_a_terminal(*args: str) -> tuple[int, bytes, str]:
    controller, terminal = os.openpty()
    try:
        with trio.fail_after(SUBPROCESS_LIMIT):
            result = await trio.run_process(
                [*CLIENT, *args], stderr=terminal, capture_stdout=True, check=False
            )
        os.close(terminal)
        terminal = -1
        err = _drain(controller)
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    return result.returncode, result.stdout, err.decode()


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
async def test_progress_line_on_a_terminal_after_a_second() -> None:
    with silent_udp_socket() as sock:
        port = sock.getsockname()[1]
        status, out, err = await _run_with_stderr_on_a_terminal(
            "-m", "put", "--payload", "x" * 3000, "--timeout", "2.5", f"coap://127.0.0.1:{port}/"
        )
    assert (status, out) == (3, b"")
    # Nothing acknowledged yet: 0 of the request body's 3000 bytes (Size1), after 1 s and after 2 s.
    assert "\rcoapio-client: upload [                    ]   0% 0 of 3 KiB, 1 s\x1b[K" in err
    assert "\rcoapio-client: upload [                    ]   0% 0 of 3 KiB, 2 s\x1b[K" in err
    progress, _, rest = err.rpartition("\r\x1b[K")  # erased before the error message
    assert progress
    assert rest.replace("\r\n", "\n") == (
        f"coapio-client: error: no response from 127.0.0.1:{port} within 2.5 s (--timeout)\n"
    )


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
async def test_no_progress_line_for_a_quick_request_or_with_quiet(served: Served) -> None:
    status, out, err = await _run_with_stderr_on_a_terminal(f"coap://127.0.0.1:{served.port}/large")
    assert (status, out, err) == (0, large_text(), "")
    with silent_udp_socket() as sock:
        port = sock.getsockname()[1]
        status, out, err = await _run_with_stderr_on_a_terminal(
            "-q", "--timeout", "1.5", f"coap://127.0.0.1:{sock.getsockname()[1]}/"
        )
    assert status == 3
    assert "KiB" not in err
    assert err.endswith(f"no response from 127.0.0.1:{port} within 1.5 s (--timeout)\r\n")


# --- subprocess against libcoap's coap-server ---------------------------------------------------


@pytest.fixture
async def libcoap_port() -> AsyncIterator[int]:
    server = require_binary("coap-server-notls")
    port = closed_port("127.0.0.1")
    process = await trio.lowlevel.open_process(
        [server, "-A", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        await _wait_until_answering(f"coap://127.0.0.1:{port}/")
        yield port
    finally:
        process.kill()
        with trio.move_on_after(5):
            await process.wait()


async def _wait_until_answering(uri: str) -> None:
    async with Context(bind="127.0.0.1:0") as ctx:  # an IPv4 socket reports ICMP errors at once
        for _ in range(100):
            try:
                with trio.fail_after(0.5):
                    await ctx.get(uri)
                return
            except (TimeoutError, error.NetworkError):
                await trio.sleep(0.05)  # poll interval while the server starts: bounded by the loop
        raise RuntimeError(f"{uri} never answered")


@pytest.mark.interop
async def test_libcoap_get_root_text(libcoap_port: int) -> None:
    result = await run_client(f"coap://127.0.0.1:{libcoap_port}/")
    assert result.returncode == 0, result.stderr
    assert b"libcoap" in result.stdout


@pytest.mark.interop
async def test_libcoap_get_time_verbose(libcoap_port: int) -> None:
    result = await run_client("-v", f"coap://127.0.0.1:{libcoap_port}/time")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    err = result.stderr.decode().splitlines()
    assert err[0] == "2.05 Content"
    assert err[1] == f"remote=127.0.0.1:{libcoap_port}"
    assert "Max-Age=1" in err  # libcoap's /time sends no Content-Format


@pytest.mark.interop
async def test_libcoap_well_known_core_is_link_format(libcoap_port: int) -> None:
    result = await run_client("-v", f"coap://127.0.0.1:{libcoap_port}/.well-known/core")
    assert result.returncode == 0, result.stderr
    assert b"</time>" in result.stdout
    assert "Content-Format=40 (application/link-format)" in result.stderr.decode().splitlines()


@pytest.mark.interop
async def test_libcoap_put_from_file_then_get(libcoap_port: int, tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_bytes(b"stored by coapio-client")
    uri = f"coap://127.0.0.1:{libcoap_port}/example_data"
    put = await run_client("-m", "put", "--payload", f"@{path}", "--content-format", "text/plain", uri)
    assert put.returncode == 0, put.stderr
    get = await run_client(uri)
    assert (get.returncode, get.stdout) == (0, b"stored by coapio-client")


@pytest.mark.interop
async def test_libcoap_put_from_stdin_then_get_non(libcoap_port: int) -> None:
    uri = f"coap://127.0.0.1:{libcoap_port}/example_data"
    put = await run_client("-m", "put", "--payload", "@-", uri, stdin=b"via stdin")
    assert put.returncode == 0, put.stderr
    get = await run_client("--non", "-O", "Accept,0", uri)
    assert (get.returncode, get.stdout) == (0, b"via stdin")


@pytest.mark.interop
async def test_libcoap_not_found_exits_1(libcoap_port: int) -> None:
    result = await run_client(f"coap://127.0.0.1:{libcoap_port}/no/such/resource")
    assert (result.returncode, result.stdout) == (1, b"")
    assert result.stderr.decode().splitlines()[0] == "4.04 Not Found"


@pytest.mark.interop
async def test_libcoap_observe_time_twice(libcoap_port: int) -> None:
    # libcoap's /time notifies every second while observed.
    result = await observe_client(
        "--observe", "--observe-count", "2", "-v", f"coap://127.0.0.1:{libcoap_port}/time"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and lines[0] != lines[1], result.stdout
    assert re.search(rb"^2\.05 Content Observe=\d+ payload=\d+ bytes$", result.stderr, re.M), result.stderr


@pytest.mark.interop
@pytest.mark.parametrize(("size", "block_size"), [(100 * 1024, None), (20 * 1024, "64")])
async def test_libcoap_large_put_from_file_then_get(
    libcoap_port: int, tmp_path: Path, size: int, block_size: str | None
) -> None:
    data = os.urandom(size)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    uri = f"coap://127.0.0.1:{libcoap_port}/example_data"
    extra = ["--block-size", block_size] if block_size else []
    put = await run_client(*extra, "-m", "put", "--payload", f"@{path}", uri)
    assert put.returncode == 0, put.stderr
    get = await run_client(*extra, uri)
    assert get.returncode == 0, get.stderr
    assert hashlib.sha256(get.stdout).hexdigest() == hashlib.sha256(data).hexdigest()


@pytest.mark.interop
async def test_libcoap_follows_the_block_size_of_the_request(libcoap_port: int) -> None:
    uri = f"coap://127.0.0.1:{libcoap_port}/example_data"
    async with Context(bind="127.0.0.1:0") as ctx:
        with trio.fail_after(10):
            await ctx.put(uri, os.urandom(3000))
            request = client.build_request(_args("--block-size", "64", uri))
            transport = await ctx._route(request)
            first = await ctx._path.exchange(transport, request, None)  # one exchange: the first block only
    assert (first.code, first.opt.block2, first.opt.size2) == (Code.CONTENT, BlockValue(0, True, 2), 3000)
    assert len(first.payload) == 64


# --- runtime bugs found while building the CLI ----------------------------------------------------


async def test_observation_ends_when_its_reregistration_times_out() -> None:
    quick = attrs.evolve(TransportTuning(), ack_timeout=0.1, max_retransmit=1)  # a CON gives up in 0.45 s
    async with Context(bind="127.0.0.1:0", tuning=quick) as client:
        server = Context(bind="127.0.0.1:0", site=build_site())
        await server.__aenter__()
        port = server.transports[0].local[1]
        async with client.observe(f"coap://127.0.0.1:{port}/time") as observation:
            await observation.__anext__()  # registered; /time's Max-Age is 1 s
            await server.__aexit__(None, None, None)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent, trio.fail_after(9):
                silent.bind(("127.0.0.1", port))  # the server's port now swallows datagrams, without ICMP
                with pytest.raises(error.RequestTimedOut):  # the re-registration is due after 1 + 5 s
                    async for _ in observation:
                        pass


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
async def test_progress_bar_follows_a_slow_download_with_its_size2() -> None:
    class SlowLarge(Resource):
        async def render_get(self, request: Message) -> Message:
            await trio.sleep(0.15)  # per block: the 8 KiB in 512-byte blocks take about 2.4 s
            return Message(payload=large_text())

    site = Site()
    site.add("slow", SlowLarge())
    async with Context(bind=[("127.0.0.1", 0)], site=site) as server:
        port = server.local_addresses[0][1]
        status, out, err = await _run_with_stderr_on_a_terminal(
            "--block-size", "512", f"coap://127.0.0.1:{port}/slow"
        )
    assert (status, out) == (0, large_text())
    lines = [line for line in err.split("\r") if "KiB" in line]
    assert lines, err
    assert all(" of 8 KiB, " in line for line in lines), lines  # the total is the server's Size2
    percents = [int(line.split("%")[0].split()[-1]) for line in lines]
    assert 0 < percents[0] < 100 and percents == sorted(percents)


# --- issue 13: what a user trips over -------------------------------------------------------------


def test_short_content_format_names() -> None:
    request = client.build_request(_args("--content-format", "JSON", "--accept", "cbor", "coap://127.0.0.1/"))
    assert (request.opt.content_format, request.opt.accept) == (ContentFormat.JSON, ContentFormat.CBOR)
    for name, number in client.CONTENT_FORMAT_NAMES.items():
        assert client.build_request(_args("--accept", name, "coap://127.0.0.1/")).opt.accept == number


@needs_cbor_diag
@pytest.mark.parametrize(
    ("content_format", "payload", "expected"),
    [
        ("cbor", '{"a": 1}', "a1616101"),  # JSON
        ("application/cbor", "[1, h'ff', true]", "830141fff5"),  # diagnostic notation
        ("cbor-seq", "1, 2", "0102"),  # a CBOR sequence
        ("json", '{"a": 1}', b'{"a": 1}'.hex()),  # not CBOR-based: sent as written
    ],
)
def test_a_text_payload_for_a_cbor_format_is_sent_as_cbor(
    content_format: str, payload: str, expected: str
) -> None:
    request = client.build_request(_args(
        "-m", "post", "--content-format", content_format, "--payload", payload, "coap://127.0.0.1/"
    ))
    assert request.payload.hex() == expected


def test_a_cbor_payload_from_a_file_is_sent_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "data.cbor"
    path.write_bytes(b"\xa1\x61a\x01")
    request = client.build_request(_args("--content-format", "cbor", "--payload", f"@{path}", "coap://h/"))
    assert request.payload == b"\xa1\x61a\x01"


def test_cbor_conversion_without_cbor_diag_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "cbor_diag", None)
    assert client.main(["-m", "post", "--content-format", "cbor", "--payload", "{}", "coap://h/"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'coapio[cbor]'" in err


@needs_cbor_diag
def test_bad_diagnostic_notation_is_a_one_line_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert client.main(["-m", "post", "--content-format", "cbor", "--payload", "[1,", "coap://h/"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("coapio-client: error: --payload is neither JSON nor CBOR diagnostic notation")
    assert err.count("\n") == 1


def test_token_and_no_set_hostname() -> None:
    request = client.build_request(_args("--token", "0a0B", "coap://localhost:7/x"))
    assert (request.token, request.opt.uri_host) == (b"\x0a\x0b", "localhost")
    request = client.build_request(_args("--no-set-hostname", "coap://localhost:7/x"))
    assert request.opt.uri_host is None and request.opt.uri_path == ("x",)
    assert request.remote == Peer("coap", ("localhost", 7))  # still sent to that host


@pytest.mark.parametrize(
    ("text", "size"), [("1", 1), ("4096", 4096), ("4k", 4096), ("16M", 16 << 20), ("1g", 1 << 30)]
)
def test_max_body_size_takes_bytes_or_a_binary_suffix(text: str, size: int) -> None:
    assert client.parse_size(text) == size
    plan = client.make_plan(_args("--max-body-size", text, "coap://127.0.0.1/"))
    assert plan.tuning.max_body_size == size


def test_the_default_give_up_times_are_those_of_the_transport() -> None:
    # Item 4: --help said about 93 s for every request; a NON request gives up after MAX_TRANSMIT_SPAN.
    tuning = TransportTuning()
    assert round(tuning.max_transmit_wait) == client.CON_GIVE_UP
    assert round(tuning.non_timeout) == client.NON_GIVE_UP
    help_text = " ".join(client.build_parser().format_help().split())
    expected = f"about {client.CON_GIVE_UP} s for a CON request, {client.NON_GIVE_UP} s for a NON one"
    assert expected in help_text


def test_a_non_request_that_times_out_is_not_blamed_on_retransmissions() -> None:
    # Item 4: a NON request is never retransmitted, so "the retransmissions gave up" was wrong.
    request = client.build_request(_args("--non", "coap://127.0.0.1:9/"))
    outcome = client._failure(error.RequestTimedOut("gave up"), request, None)
    assert outcome is not None
    status, message = outcome
    assert status == 3
    assert "retransmission" not in message
    assert "NON request is sent once" in message and f"about {client.NON_GIVE_UP} s" in message


def test_a_response_suppressed_by_no_response_is_success() -> None:
    # Item 3: the runtime reports a suppressed response as an empty message; that is what was asked for.
    assert _show(response=Message(Type.ACK, Code.EMPTY, 7)) == (0, "", "")
    status, out, err = _show("-v", response=Message(Type.ACK, Code.EMPTY, 7))
    assert (status, out) == (0, "")
    assert "suppressed by the No-Response option" in err


def test_terminal_output_escapes_control_characters() -> None:
    # Item 10: a server's escape sequences must not reach the terminal raw.
    evil = b"\x1b]0;pwned\x07\x1b[2J\rred\xc2\x9b1m\ttab\n"  # \xc2\x9b: the C1 CSI in UTF-8
    shown = client.format_payload(evil, ContentFormat.TEXT_PLAIN, tty=True)
    assert shown == "\\x1b]0;pwned\\x07\\x1b[2J\\x0dred\\x9b1m\ttab\n"
    assert client.format_payload(evil, None, tty=True) == shown
    assert client.format_payload(evil, ContentFormat.TEXT_PLAIN, tty=False) == evil  # a pipe gets bytes
    links = client.format_payload(b'</a>;title="\x1b[31m"', ContentFormat.LINK_FORMAT, tty=True)
    assert isinstance(links, str) and "\x1b" not in links


class _FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_error_diagnostic_and_options_are_escaped_on_a_terminal() -> None:
    response = _response(Code.NOT_FOUND, b"gone\x1b[2J")
    response.opt.location_path = ("\x1b[31m",)
    stderr = _FakeTerminal()
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    status = client.show_response(_args("-v", "--color", "never", "coap://h/"), response, stdout, stderr)
    assert status == 1
    assert "\x1b" not in stderr.getvalue()
    assert "gone\\x1b[2J" in stderr.getvalue() and "Location-Path=\\x1b[31m" in stderr.getvalue()


@pytest.mark.parametrize(("setting", "coloured"), [("always", True), ("never", False), ("auto", True)])
def test_colour_only_on_a_terminal_or_when_asked(
    monkeypatch: pytest.MonkeyPatch, setting: str, coloured: bool
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    for stderr, tty in ((_FakeTerminal(), True), (io.StringIO(), False)):
        stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
        args = _args("-v", "--color", setting, "coap://h/")
        client.show_response(args, _response(Code.CONTENT), stdout, stderr)
        expected = coloured and (tty or setting == "always")
        assert ("\x1b[32m2.05 Content\x1b[0m" in stderr.getvalue()) == expected, (setting, tty)


def test_no_color_turns_automatic_colour_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    stderr = _FakeTerminal()
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    client.show_response(_args("coap://h/"), _response(Code.NOT_FOUND), stdout, stderr)
    assert stderr.getvalue() == "4.04 Not Found\n"


def test_raw_and_pretty_override_the_terminal_check() -> None:
    payload = b'{"a":1}'
    terminal = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    terminal.isatty = lambda: True  # type: ignore[method-assign]
    response = _response(Code.CONTENT, payload, 50)
    client.show_response(_args("--raw", "coap://h/"), response, terminal, io.StringIO())
    terminal.flush()
    assert terminal.buffer.getvalue() == payload  # type: ignore[attr-defined]
    pipe = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    client.show_response(_args("--pretty", "coap://h/"), response, pipe, io.StringIO())
    pipe.flush()
    assert pipe.buffer.getvalue() == b'{\n  "a": 1\n}\n'


def test_progress_labels_the_upload_and_then_the_download() -> None:
    # Item 15: a block-wise PUT with a block-wise response drew two unlabelled bars one after the other.
    state = client._Progress(upload=3000)
    assert client._progress_line(state, 1).startswith("upload [")
    state(1024, 3000)
    state(3000, 3000)
    assert client._progress_line(state, 2).startswith("upload [####################] 100%")
    state(1024, 8192)
    assert client._progress_line(state, 3) == "download [##                  ]  12% 1 of 8 KiB, 3 s"
    state(8192, 8192)
    assert client._progress_line(state, 4).startswith("download [####################] 100%")
    state = client._Progress()  # a download only
    state(512, None)
    assert client._progress_line(state, 1) == "download 0 KiB, 1 s"


def test_help_and_version_import_neither_the_runtime_nor_trio(tmp_path: Path) -> None:
    # Item 16: --version and --help loaded the whole runtime (0.55 s). The package's own __init__ is
    # made lazy elsewhere; here a bare package object stands in for it, and the tool must not need more.
    root = Path(client.__file__).resolve().parent.parent
    script = textwrap.dedent(f"""
        import io, sys, types, contextlib
        package = types.ModuleType("coapio")
        package.__path__ = [{str(root)!r}]
        package.__version__ = "9.9"
        sys.modules["coapio"] = package
        from coapio.cli import client
        for argv in (["--version"], ["--help"]):
            with contextlib.redirect_stdout(io.StringIO()) as out:
                assert client.main(argv) == 0
            assert out.getvalue(), argv
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("trio", "anyio", "attrs")
                       or m.startswith(("coapio.runtime", "coapio.transports", "coapio.protocol")))
        print(heavy)
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=SUBPROCESS_LIMIT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[]\n"


async def test_no_response_for_success_exits_0_quietly(coapio_port: int) -> None:
    # Item 3: "-O No-Response,2" printed "0.00 Empty" and exited 1.
    for extra in ([], ["--non"]):
        result = await run_client(*extra, "-O", "No-Response,2", f"coap://127.0.0.1:{coapio_port}/time")
        assert (result.returncode, result.stdout, result.stderr) == (0, b"", b""), extra


async def test_no_response_still_reports_an_unsuppressed_error(coapio_port: int) -> None:
    result = await run_client("-O", "No-Response,2", f"coap://127.0.0.1:{coapio_port}/no/such/thing")
    assert (result.returncode, result.stderr) == (1, b"4.04 Not Found\n")


async def test_very_verbose_logs_options_and_every_block(coapio_port: int) -> None:
    # Item 8: -vv showed neither blocks nor options.
    result = await run_client("-vv", "--block-size", "1024", f"coap://127.0.0.1:{coapio_port}/large")
    assert result.returncode == 0, result.stderr
    err = result.stderr.decode()
    for num in range(8):
        assert f"Block2={num}/0/1024" in err  # each request
        assert f"Block2={num}/{int(num < 7)}/1024" in err  # each response block
    assert err.count("sent CON to 127.0.0.1") == 8
    assert "Size2=8192" in err and "Uri-Path=large" in err


async def test_very_verbose_shows_retransmissions() -> None:
    # Item 8: a retransmission is logged as such; the client is stopped as soon as the server saw it.
    with silent_udp_socket() as sock:
        port = sock.getsockname()[1]
        process = await trio.lowlevel.open_process(
            [*CLIENT, "-vv", f"coap://127.0.0.1:{port}/"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            with trio.fail_after(SUBPROCESS_LIMIT):
                for _ in range(2):  # the request, then its first retransmission (after 2 to 3 s)
                    await trio.lowlevel.wait_readable(sock)
                    sock.recv(2048)
                assert process.stderr is not None
                err = b""
                while b"(retransmission 1)" not in err:  # logged just after the send
                    chunk = await process.stderr.receive_some()
                    assert chunk, err
                    err += chunk
                process.send_signal(signal.SIGINT)
                await process.wait()
        finally:
            process.kill()
            await process.wait()
    line = next(line for line in err.decode().splitlines() if "(retransmission 1)" in line)
    expected = rf"sent CON to 127\.0\.0\.1:{port}: GET / mid=\d+ token=[0-9a-f]{{16}} \(retransmission 1\)$"
    assert re.search(expected, line), line


async def test_max_body_size_limits_and_allows_a_download(coapio_port: int) -> None:
    # Item 14: the 8 MiB limit could not be changed from the command line.
    uri = f"coap://127.0.0.1:{coapio_port}/large"
    small = await run_client("--max-body-size", "4k", uri)
    assert (small.returncode, small.stdout) == (4, b"")
    assert b"exceeds the limit of 4096" in small.stderr and b"--max-body-size" in small.stderr
    exact = await run_client("--max-body-size", "8192", uri)
    assert (exact.returncode, exact.stdout) == (0, large_text())


async def test_output_file_gets_the_payload_bytes(coapio_port: int, tmp_path: Path) -> None:
    path = tmp_path / "large.txt"
    result = await run_client("-o", str(path), f"coap://127.0.0.1:{coapio_port}/large")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    assert path.read_bytes() == large_text()
    failed = await run_client("-o", str(tmp_path / "missing.txt"), f"coap://127.0.0.1:{coapio_port}/nothing")
    assert failed.returncode == 1
    assert not (tmp_path / "missing.txt").exists()  # an error response writes no file


async def test_pretty_makes_a_pipe_readable(coapio_port: int) -> None:
    result = await run_client("--pretty", f"coap://127.0.0.1:{coapio_port}/json")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b'{\n  "temperature": 21.5,\n  "unit": "C"\n}\n'


async def test_bind_sets_the_local_address_and_port(coapio_port: int) -> None:
    port = closed_port("127.0.0.1")
    result = await run_client("--bind", f"127.0.0.1:{port}", f"coap://127.0.0.1:{coapio_port}/whoami")
    assert (result.returncode, result.stdout) == (0, f"127.0.0.1:{port}".encode())
    with silent_udp_socket() as busy:
        taken = busy.getsockname()[1]
        result = await run_client("--bind", f"127.0.0.1:{taken}", f"coap://127.0.0.1:{coapio_port}/whoami")
    assert result.returncode == 4
    assert result.stderr.decode() == (
        f"coapio-client: error: cannot bind --bind 127.0.0.1:{taken}: Address already in use\n"
    )


async def test_token_goes_on_the_wire(coapio_port: int) -> None:
    result = await run_client("-v", "--token", "c0ffee", f"coap://127.0.0.1:{coapio_port}/time")
    assert result.returncode == 0, result.stderr
    assert "token=c0ffee" in result.stderr.decode().splitlines()[2]


async def test_observe_for_stops_and_deregisters(served: Served) -> None:
    start = trio.current_time()
    result = await observe_client("--observe", "--observe-for", "0.5", f"coap://127.0.0.1:{served.port}/counter")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"0\n", b"")
    assert trio.current_time() - start >= 0.5
    await trio.testing.wait_all_tasks_blocked()
    assert served.counter.observer_count == 0


def test_observe_into_a_file_keeps_the_latest_whole(tmp_path: Path) -> None:
    path = tmp_path / "counter.txt"
    args = _args("--observe", "-o", str(path), "coap://h/")
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    for n, payload in enumerate([b"first, longer", b"2nd", b"3"]):
        shown = client._show(args, _response(Code.CONTENT, payload), stdout, io.StringIO(), first=n == 0)
        assert shown == (0, True)
        assert path.read_bytes() == payload  # replaced, never appended to or left half-written
    assert stdout.buffer.getvalue() == b""  # type: ignore[attr-defined]
    assert [p.name for p in tmp_path.iterdir()] == ["counter.txt"]  # no temporary file left behind


async def test_observe_sigterm_exits_0_and_deregisters(served: Served) -> None:
    # Item 6: SIGTERM (kill, timeout) exited 143 and left the registration behind.
    def terminate(index: int, process: trio.Process) -> None:
        assert served.counter.observer_count == 1
        process.send_signal(signal.SIGTERM)

    result = await observe_client("--observe", f"coap://127.0.0.1:{served.port}/counter", react=terminate)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"0\n", b"")
    await trio.testing.wait_all_tasks_blocked()
    assert served.counter.observer_count == 0


async def test_observe_sigterm_before_the_first_response_exits_143() -> None:
    with silent_udp_socket() as sock:
        port = sock.getsockname()[1]
        process = await trio.lowlevel.open_process(
            [*CLIENT, "--observe", f"coap://127.0.0.1:{port}/"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            with trio.fail_after(SUBPROCESS_LIMIT):
                await trio.lowlevel.wait_readable(sock)
                process.send_signal(signal.SIGTERM)
                await process.wait()
        finally:
            process.kill()
            await process.wait()
    assert process.returncode == 143
