"""coapio: a trio-native, structured-concurrency CoAP stack.

The public API is what ``__all__`` lists, plus the modules :mod:`coapio.error`, :mod:`coapio.uri`,
:mod:`coapio.linkformat`, :mod:`coapio.messagelayer` (the sans-IO RFC 7252 message layer) and
:mod:`coapio.testing` (a seeded lossy link for tests and benchmarks). Every other name may change between
releases.
"""

from .codes import Code, Type
from .contentformat import ContentFormat
from .context import Context, Counters, Observation
from .error import CoapError, MessageFormatError
from .message import Message
from .options import BlockValue, OptionNumber, Options
from .pipe import Pipe, PipeEvent
from .resource import Resource, Site, check_preconditions, validate_etag
from .server import ObservableResource
from .tuning import TransportTuning

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
