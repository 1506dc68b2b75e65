"""Compatibility alias of :mod:`coapio.protocol.linkformat` (a documented public module path)."""

from .protocol.linkformat import *  # noqa: F403
from .protocol.linkformat import __all__ as __all__
