"""Compatibility alias of :mod:`coapio.protocol.uri` (a documented public module path)."""

from .protocol.uri import *  # noqa: F403
from .protocol.uri import __all__ as __all__
