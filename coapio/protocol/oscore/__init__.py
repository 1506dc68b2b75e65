"""OSCORE (RFC 8613), sans-IO: security contexts, message protection, replay window, persisted sequence.

Nothing here sends or waits; the runtime calls four functions on the request path::

    outer, binding = protect_request(ctx, request)             # client, before sending
    response = unprotect_response(binding, outer_response)      # client, for each response
    request, protector = unprotect_request(credentials, outer) # server, before routing
    outer_response = protector.protect(response)                # server, for each response/notification

The errors of :mod:`.errors` say what a server answers (unprotected) and what a client drops. Needs the
``oscore`` extra (``cryptography``); importing this package does not, using a context does.
"""

from .algorithms import ALGORITHMS, AeadAlgorithm
from .context import InMemorySequence, SecurityContext, SequenceNumbers
from .credentials import CredentialsMap, load_context_directory
from .errors import (
    ContextExhausted,
    ContextUnavailable,
    CredentialsError,
    DecryptionFailed,
    MalformedOscoreOption,
    MissingOscoreExtra,
    OscoreError,
    ReplayDetected,
    ReplayWindowUninitialized,
    ResponseProtectionInvalid,
    StaleNotification,
    UnknownSecurityContext,
)
from .option import OscoreOption
from .persistence import SEQUENCE_FILE, SequenceFile
from .protection import (
    ContextLookup,
    RequestBinding,
    ResponseProtector,
    UnprotectedErrorResponse,
    is_protected,
    option_class,
    protect_request,
    unprotect_request,
    unprotect_response,
)
from .replay import DEFAULT_WINDOW, ReplayWindow

__all__ = [
    "ALGORITHMS",
    "DEFAULT_WINDOW",
    "SEQUENCE_FILE",
    "AeadAlgorithm",
    "ContextExhausted",
    "ContextLookup",
    "ContextUnavailable",
    "CredentialsError",
    "CredentialsMap",
    "DecryptionFailed",
    "InMemorySequence",
    "MalformedOscoreOption",
    "MissingOscoreExtra",
    "OscoreError",
    "OscoreOption",
    "ReplayDetected",
    "ReplayWindow",
    "ReplayWindowUninitialized",
    "RequestBinding",
    "ResponseProtectionInvalid",
    "ResponseProtector",
    "SecurityContext",
    "SequenceFile",
    "SequenceNumbers",
    "StaleNotification",
    "UnknownSecurityContext",
    "UnprotectedErrorResponse",
    "is_protected",
    "load_context_directory",
    "option_class",
    "protect_request",
    "unprotect_request",
    "unprotect_response",
]
