"""The README's example runs as written, on trio and on asyncio, even beside the Quickstart's server
(issue 13, item 12: it bound 127.0.0.1:5683 and failed with a traceback while ``coapio-server`` ran)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def _python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README, flags=re.M | re.S)


@contextlib.contextmanager
def quickstart_server_port() -> Iterator[None]:
    """Hold UDP port 5683 on 127.0.0.1 as the Quickstart's ``coapio-server`` would (if it is free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        with contextlib.suppress(OSError):  # already taken: by a real server, which is just as good
            sock.bind(("127.0.0.1", 5683))
        yield


def test_the_readme_has_one_example() -> None:
    assert len(_python_blocks()) == 1


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_the_readme_example_runs_beside_the_quickstart_server(
    backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _python_blocks()[0]
    assert code.rstrip().endswith("trio.run(main)")
    if backend == "asyncio":  # what the README says: the same main, under asyncio.run
        code = code.rstrip().removesuffix("trio.run(main)") + "asyncio.run(main())\n"
    namespace: dict[str, object] = {"__name__": "__readme__", "asyncio": asyncio}
    with quickstart_server_port():
        exec(compile(code, "README.md", "exec"), namespace)
    assert capsys.readouterr().out == "2.05 Content b'hello'\n"
