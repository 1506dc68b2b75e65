"""The ``.. code-block:: python`` examples of the docs run as written, so the guide cannot rot.

Each top-level section of a page runs in a fresh namespace (its examples build on each other, but not on
other sections). Outlines that are not meant to run use a plain ``::`` literal block instead.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = ["index.rst", "protocol.rst"]


def _sections(page: str) -> list[tuple[str, list[tuple[int, str]]]]:
    """(section title, [(line number, code)]) for every top-level section of ``page`` with examples."""
    lines = (DOCS / page).read_text(encoding="utf-8").splitlines()
    sections: list[tuple[str, list[tuple[int, str]]]] = [("(top)", [])]
    i = 0
    while i < len(lines):
        line = lines[i]
        underline = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and underline.startswith("---") and set(underline) == {"-"}:
            sections.append((line.strip(), []))
        if line.strip() == ".. code-block:: python":
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            body: list[str] = []
            while j < len(lines) and (not lines[j].strip() or lines[j].startswith("   ")):
                body.append(lines[j])
                j += 1
            sections[-1][1].append((i + 1, textwrap.dedent("\n".join(body))))
            i = j
            continue
        i += 1
    return [(title, blocks) for title, blocks in sections if blocks]


CASES = [
    pytest.param(page, blocks, id=f"{page}:{title}")
    for page in PAGES
    for title, blocks in _sections(page)
]


@pytest.mark.parametrize(("page", "blocks"), CASES)
def test_documentation_examples_run_as_written(page: str, blocks: list[tuple[int, str]]) -> None:
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for lineno, code in blocks:
        exec(compile(code, f"docs/{page}:{lineno}", "exec"), namespace)
