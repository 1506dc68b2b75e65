"""coapio: a trio-native, structured-concurrency CoAP stack.

The public API is what ``__all__`` lists, plus the modules :mod:`coapio.error`, :mod:`coapio.uri`,
:mod:`coapio.linkformat`, :mod:`coapio.messagelayer` (the sans-IO RFC 7252 message layer),
:mod:`coapio.transports.base` (the transport interface) and :mod:`coapio.testing` (a seeded lossy link for
tests and benchmarks). Every other name may change between releases.

The package is laid out as its architecture: :mod:`coapio.protocol` is the sans-IO core,
:mod:`coapio.runtime` the anyio runtime (context, token manager, Pipes, server), :mod:`coapio.transports`
one module per transport. Names are imported on first use, so ``import coapio`` (and the command-line
tools' ``--help``) stay cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .error import CoapError as CoapError
    from .error import MessageFormatError as MessageFormatError
    from .protocol.codes import Code as Code
    from .protocol.codes import Type as Type
    from .protocol.contentformat import ContentFormat as ContentFormat
    from .protocol.message import Message as Message
    from .protocol.options import BlockValue as BlockValue
    from .protocol.options import OptionNumber as OptionNumber
    from .protocol.options import Options as Options
    from .protocol.peer import Peer as Peer
    from .protocol.security import Security as Security
    from .protocol.tuning import TransportTuning as TransportTuning
    from .runtime.client import Observation as Observation
    from .runtime.client import ResponseStream as ResponseStream
    from .runtime.context import Context as Context
    from .runtime.context import Counters as Counters
    from .runtime.pipe import Pipe as Pipe
    from .runtime.pipe import PipeEvent as PipeEvent
    from .runtime.pipe import ServerPipe as ServerPipe
    from .runtime.resource import Resource as Resource
    from .runtime.resource import Site as Site
    from .runtime.resource import check_preconditions as check_preconditions
    from .runtime.resource import validate_etag as validate_etag
    from .runtime.server import ObservableResource as ObservableResource
    from .transports.base import Transport as Transport
    from .transports.base import TransportEvents as TransportEvents

__version__ = "0.1.0.dev0"

_WHERE = {
    "BlockValue": "protocol.options",
    "CoapError": "error",
    "Code": "protocol.codes",
    "ContentFormat": "protocol.contentformat",
    "Context": "runtime.context",
    "Counters": "runtime.context",
    "Message": "protocol.message",
    "MessageFormatError": "error",
    "ObservableResource": "runtime.server",
    "Observation": "runtime.client",
    "OptionNumber": "protocol.options",
    "Options": "protocol.options",
    "Peer": "protocol.peer",
    "Pipe": "runtime.pipe",
    "PipeEvent": "runtime.pipe",
    "Resource": "runtime.resource",
    "Security": "protocol.security",
    "ResponseStream": "runtime.client",
    "ServerPipe": "runtime.pipe",
    "Site": "runtime.resource",
    "Transport": "transports.base",
    "TransportEvents": "transports.base",
    "TransportTuning": "protocol.tuning",
    "Type": "protocol.codes",
    "check_preconditions": "runtime.resource",
    "validate_etag": "runtime.resource",
}

__all__ = [*sorted(_WHERE), "__version__"]


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'coapio' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{where}", __name__), name)
    globals()[name] = value  # once imported, a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
