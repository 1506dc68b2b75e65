"""Sphinx configuration for the coapio documentation.

Build with ``nox -s docs`` or ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
The build needs no network: no intersphinx inventories and no theme beyond Sphinx's own alabaster.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

import attrs
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util import logging

import coapio
from coapio.protocol import options as _options

# -- Project ----------------------------------------------------------------------------------------

project = "coapio"
author = "The coapio developers"
copyright = "the coapio developers"
release = coapio.__version__
version = release

# -- General ----------------------------------------------------------------------------------------

# napoleon is deliberately absent: coapio's docstrings are plain reST prose, and napoleon would
# read the "Always 1: ..." style first line of an attribute docstring as "<type>: <description>".
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "myst_parser",  # performance.md and reliability.md stay plain Markdown, readable on GitHub
]

exclude_patterns = ["_build"]
nitpicky = False
# ``single backquotes`` in docstrings render as inline code, never as an unresolvable reference.
default_role = "literal"
highlight_language = "python3"

# -- autodoc ----------------------------------------------------------------------------------------

autodoc_default_options = {
    "members": True,
    "undoc-members": True,
}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# Show defaults as written (``KNOWN_OPTIONS`` rather than a 26-item frozenset repr).
autodoc_preserve_defaults = True

# -- HTML -------------------------------------------------------------------------------------------

html_theme = "alabaster"
html_title = f"coapio {release}"
html_theme_options = {
    "description": "A trio-native, structured-concurrency CoAP stack",
    "fixed_sidebar": True,
    "page_width": "1100px",
    "sidebar_width": "230px",
}

# -- Local hooks ------------------------------------------------------------------------------------

#: Modules whose every ``__all__`` name must end up documented (checked at the end of reading).
PUBLIC_MODULES = [
    "coapio",
    "coapio.protocol.codes",
    "coapio.protocol.contentformat",
    "coapio.error",
    "coapio.protocol.linkformat",
    "coapio.protocol.message",
    "coapio.protocol.messagelayer",
    "coapio.protocol.options",
    "coapio.testing",
    "coapio.protocol.tuning",
    "coapio.protocol.uri",
]

_logger = logging.getLogger("coapio.docs")

_ATTRS_DEFAULT = re.compile(r"attr_dict\['(\w+)'\]\.default")


def _attrs_defaults(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, signature: str | None,
    return_annotation: str | None,
) -> tuple[str | None, str | None] | None:
    """Show an attrs class's real defaults; preserved source would say ``attr_dict['x'].default``."""
    if signature is None or not attrs.has(obj) or "attr_dict[" not in signature:
        return None
    fields = attrs.fields_dict(obj)
    return _ATTRS_DEFAULT.sub(lambda m: repr(fields[m.group(1)].default), signature), return_annotation


# Accessor class in coapio.protocol.options -> (value type, the value that removes the option).
_ACCESSOR_TYPES = {
    "_Uint": ("``int | None``", "``None``"),
    "_String": ("``str | None``", "``None``"),
    "_Strings": ("``tuple[str, ...]``, one item per occurrence", "``()``"),
    "_Opaque": ("``bytes | None``", "``None``"),
    "_Opaques": ("``tuple[bytes, ...]``, one item per occurrence", "``()``"),
    "_Flag": ("``bool`` (whether it is present)", "``False``"),
    "_Block": (":class:`~coapio.BlockValue` or ``None``", "``None``"),
}


def _accessor_doc(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """Describe each typed option accessor of :class:`coapio.Options` (they carry no docstring)."""
    if what != "attribute" or not isinstance(obj, _options._Accessor) or lines:
        return
    number = _options.OptionNumber(obj.number)
    spec = number.spec
    label = spec.name if spec is not None else number.name
    kind = type(obj).__name__
    value, empty = _ACCESSOR_TYPES.get(kind, ("a converted value", "``None``"))
    lines.append(f"The {label} option (number {int(number)}) as {value}.")
    if kind in ("_Opaque", "_String", "_Uint", "_Block") and spec is not None and spec.repeatable:
        lines.append("Reading gives the first occurrence; assigning leaves exactly one.")
    lines.append(f"Assigning replaces the option's values; {empty} or ``del`` removes it.")


def _check_public_names(app: Sphinx, env: BuildEnvironment) -> None:
    """Warn (an error under ``-W``) for any public name that no page documents."""
    objects = env.get_domain("py").objects  # type: ignore[attr-defined]
    for modname in PUBLIC_MODULES:
        module = importlib.import_module(modname)
        if modname not in objects:
            _logger.warning("module %s is not documented", modname)
        for name in getattr(module, "__all__", ()):
            if name.startswith("__"):
                continue
            if f"{modname}.{name}" not in objects:
                _logger.warning("public name %s.%s is not documented", modname, name)


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("autodoc-process-signature", _attrs_defaults)
    app.connect("autodoc-process-docstring", _accessor_doc)
    app.connect("env-check-consistency", _check_public_names)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
