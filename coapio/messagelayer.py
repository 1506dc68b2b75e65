"""Compatibility alias of :mod:`coapio.protocol.messagelayer` (a documented public module path)."""

from .protocol.messagelayer import *  # noqa: F403
from .protocol.messagelayer import __all__ as __all__
