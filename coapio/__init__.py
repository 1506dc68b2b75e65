"""coapio: a trio-native, structured-concurrency CoAP stack.

The public API is what ``__all__`` lists, plus the modules :mod:`coapio.error`, :mod:`coapio.uri`,
:mod:`coapio.linkformat`, :mod:`coapio.messagelayer` (the sans-IO RFC 7252 message layer) and
:mod:`coapio.testing` (a seeded lossy link for tests and benchmarks). Every other name may change between
releases.
"""

from .error import CoapError, MessageFormatError
from .protocol.codes import Code, Type
from .protocol.contentformat import ContentFormat
from .protocol.message import Message
from .protocol.options import BlockValue, OptionNumber, Options
from .protocol.tuning import TransportTuning
from .runtime.context import Context, Counters, Observation
from .runtime.pipe import Pipe, PipeEvent
from .runtime.resource import Resource, Site, check_preconditions, validate_etag
from .runtime.server import ObservableResource

__version__ = "0.1.0.dev0"

__all__ = [
    "BlockValue",
    "CoapError",
    "Code",
    "ContentFormat",
    "Context",
    "Counters",
    "Message",
    "MessageFormatError",
    "ObservableResource",
    "Observation",
    "OptionNumber",
    "Options",
    "Pipe",
    "PipeEvent",
    "Resource",
    "Site",
    "TransportTuning",
    "Type",
    "__version__",
    "check_preconditions",
    "validate_etag",
]
