"""docs/cli.rst documents every option and exit status that the tools' --help shows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from coapio.cli import client, server

DOC = (Path(__file__).parent.parent / "docs" / "cli.rst").read_text()


@pytest.mark.parametrize("module", [client, server], ids=["coapio-client", "coapio-server"])
def test_every_option_and_exit_status_of_help_is_documented(module: object) -> None:
    help_text = module.build_parser().format_help()  # type: ignore[attr-defined]
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", help_text)) - {"--help"}
    assert options, help_text
    missing = sorted(o for o in options if f"``{o}" not in DOC and f"{o} " not in DOC)
    assert not missing, f"options not in docs/cli.rst: {missing}"
    statuses = re.findall(r"^\s+(\d+)\s{2,}", help_text.split("exit status:")[1], flags=re.M)
    assert statuses
    for status in statuses:
        assert re.search(rf"^{status}\s+\S", DOC, flags=re.M), f"exit status {status} not documented"


@pytest.mark.parametrize("module", [client, server], ids=["coapio-client", "coapio-server"])
def test_the_usage_synopsis_names_every_option(module: object) -> None:
    # Issue 13, item 12: the coapio-server synopsis had no --workers.
    prog = module.PROG  # type: ignore[attr-defined]
    synopsis = re.search(rf"^   {prog} (.*?)\n\n", DOC, flags=re.M | re.S)
    assert synopsis, f"no usage synopsis for {prog}"
    listed = set(re.findall(r"(?<![\w-])(--?[A-Za-z][a-z-]*)", synopsis[1]))
    parser = module.build_parser()  # type: ignore[attr-defined]
    missing = [
        action.option_strings[-1]
        for action in parser._actions
        if action.option_strings and action.help != "==SUPPRESS==" and "--help" not in action.option_strings
        and not listed & set(action.option_strings)
    ]
    assert not missing, f"{prog}'s synopsis in docs/cli.rst lacks {missing}"
