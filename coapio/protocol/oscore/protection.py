"""Protecting and unprotecting CoAP messages with OSCORE (RFC 8613 §4, §5, §8).

Four calls, one per step of an exchange::

    client:  outer, binding = protect_request(ctx, request)
    server:  request, protector = unprotect_request(contexts, outer)   # contexts: a context or a lookup
    server:  outer = protector.protect(response)                       # each response / notification
    client:  response = unprotect_response(binding, outer)

Options are split by class (§4.1): Class U options (Uri-Host, Uri-Port, Proxy-Scheme, Hop-Limit, the
OSCORE option, the authority part of a Proxy-Uri) stay outside; Observe and No-Response go both inside and
outside; every other option — Block1/Block2/Size1/Size2 included, since the block-wise layer above OSCORE
segments the plaintext (inner block-wise, §4.1.3.4.1) — is encrypted. A receiver discards Outer copies of
Class E options: only the authenticated inner values count. The outer code is POST, or FETCH for an
Observe request; responses are 2.04, or 2.05 for notifications (§4.2).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from ...error import MessageFormatError, UriError
from ..codes import Code, Type
from ..message import Message
from ..options import OptionNumber, Options
from .context import SecurityContext
from .errors import (
    DecryptionFailed,
    MalformedOscoreOption,
    ReplayDetected,
    ReplayWindowUninitialized,
    ResponseProtectionInvalid,
    StaleNotification,
    UnknownSecurityContext,
)
from .option import OscoreOption, partial_iv_bytes

__all__ = [
    "ContextLookup",
    "RequestBinding",
    "ResponseProtector",
    "UnprotectedErrorResponse",
    "is_protected",
    "option_class",
    "protect_request",
    "unprotect_request",
    "unprotect_response",
]

_N = OptionNumber
_EDHOC = 21  # RFC 9668: Class U
#: Class U only: routing information a proxy needs; never encrypted.
_OUTER_ONLY = frozenset(
    {_N.URI_HOST, _N.URI_PORT, _N.PROXY_URI, _N.PROXY_SCHEME, _N.HOP_LIMIT, _N.OSCORE, _EDHOC}
)
#: Class E and U: the inner value is authoritative, the outer one lets proxies do their part.
_BOTH = frozenset({_N.OBSERVE, _N.NO_RESPONSE})
_OSCORE, _OBSERVE = int(_N.OSCORE), int(_N.OBSERVE)
_SPECIAL_INNER = frozenset({int(_N.OBSERVE), int(_N.PROXY_URI)})


def option_class(number: int) -> str:
    """"U" (outer only), "EU" (both) or "E" (inner only; unknown options too, §4.1)."""
    if number in _OUTER_ONLY:
        return "U"
    if number in _BOTH:
        return "EU"
    return "E"


def is_protected(message: Message) -> bool:
    """Whether ``message`` carries an OSCORE option, i.e. needs unprotecting."""
    return _N.OSCORE in message.opt


class ContextLookup(Protocol):
    """What a server asks to find the context of a request (e.g. a CredentialsMap)."""

    def find_context(self, kid: bytes, kid_context: bytes | None) -> SecurityContext | None: ...


class UnprotectedErrorResponse(ResponseProtectionInvalid):
    """The server answered without OSCORE: typically its 4.01/4.02/4.00 that it could not unprotect."""

    def __init__(self, response: Message):
        super().__init__(f"unprotected {response.code} response to an OSCORE request")
        self.response = response


# --- plaintext (§5.3) ---------------------------------------------------------------------------------

def _plaintext(code: Code, options: Options, payload: bytes) -> bytes:
    if not options._items:  # the common response: code and payload only
        return bytes((code, 0xFF)) + payload if payload else bytes((code,))
    # The codec writes code, options and payload marker exactly as the plaintext needs them; drop its
    # 4-byte header and keep the code byte.
    encoded = Message(Type.CON, code, 0, b"", options, payload).encode()
    return bytes((code,)) + encoded[4:]


def _parse_plaintext(plaintext: bytes) -> Message:
    if not plaintext:
        raise MalformedOscoreOption("empty plaintext")
    try:
        return Message.decode(b"\x40" + plaintext[:1] + b"\x00\x00" + plaintext[1:])
    except MessageFormatError as e:
        raise MalformedOscoreOption(f"plaintext: {e.reason}") from None


def _oscore_option(message: Message) -> OscoreOption:
    values = message.opt.get_all(_N.OSCORE)
    if not values:
        raise ValueError("the message carries no OSCORE option")
    if len(values) > 1:
        raise MalformedOscoreOption("the OSCORE option is repeated")
    return OscoreOption.decode(values[0])


def _outer_message(template: Message, code: Code, options: Options, payload: bytes) -> Message:
    new = Message(template.type, code, template.mid, template.token, options, payload,
                  remote=template.remote, scheme=template.scheme)
    new.local = template.local
    return new


def _merge(outer: Iterable[tuple[int, bytes]], inner: Options) -> Options:
    """The unprotected options: the outer Class U ones and every inner one (outer Class E copies dropped)."""
    merged = Options._from_sorted([item for item in inner])
    for number, value in outer:
        if number in _OUTER_ONLY and number != _N.OSCORE:
            merged.add(number, value)
    return merged


# --- client: requests ---------------------------------------------------------------------------------

class RequestBinding:
    """What a client keeps of a protected request to verify its responses (§5.4's request_kid/piv).

    For an observation it also holds the Notification Number: the highest Partial IV of the
    notifications accepted so far (§4.1.3.5.2, §7.4.1).
    """

    __slots__ = ("aad", "context", "nonce", "notification_number", "observe", "request_kid", "request_piv")

    def __init__(self, context: SecurityContext, request_piv: bytes, observe: bool,
                 nonce: bytes | None = None, aad: bytes | None = None):
        self.context = context
        self.request_kid = context.sender_id
        self.request_piv = request_piv
        self.observe = observe
        self.notification_number: int | None = None
        # The request's nonce and external AAD: a response without Partial IV reuses both.
        self.nonce = nonce if nonce is not None else context.nonce(context.sender_id, request_piv)
        self.aad = aad if aad is not None else context.external_aad(context.sender_id, request_piv)

    def __repr__(self) -> str:
        return f"<RequestBinding {self.context!r} piv={self.request_piv.hex()}>"


def protect_request(context: SecurityContext, request: Message) -> tuple[Message, RequestBinding]:
    """Protect ``request`` with a fresh sequence number; the outer message keeps type, ID, token, remote.

    ``request`` is not changed. A Proxy-Uri is decomposed (§4.1.3.3): its path and query are encrypted,
    the outer Proxy-Uri keeps scheme and authority only.
    """
    if not request.code.is_request():
        raise ValueError(f"protect_request needs a request, not {request.code}")
    inner = Options()
    outer = Options()
    for number, value in request.opt:
        cls = option_class(number)
        if number == _N.PROXY_URI:
            try:
                from ..uri import compose_uri, split_uri

                parts = split_uri(value.decode("utf-8"))
            except (UnicodeDecodeError, UriError) as e:
                raise ValueError(f"cannot decompose Proxy-Uri for OSCORE: {e}") from None
            for segment in parts.path:
                inner.add(_N.URI_PATH, segment)
            for argument in parts.query:
                inner.add(_N.URI_QUERY, argument)
            base = compose_uri(scheme=parts.scheme, host=parts.host, port=parts.port).rstrip("/")
            outer.add(_N.PROXY_URI, base)
            continue
        if cls != "E" and number != _N.OSCORE:
            outer.add(number, value)
        if cls != "U":
            inner.add(number, value)
    observe = _N.OBSERVE in request.opt
    sequence = context.next_sequence_number()
    piv = partial_iv_bytes(sequence)
    option = OscoreOption(piv, context.sender_id, context.id_context)
    outer.add(_N.OSCORE, option.encode())
    nonce = context.nonce(context.sender_id, piv)
    aad = context.external_aad(context.sender_id, piv)
    ciphertext = context._seal(nonce, _plaintext(request.code, inner, request.payload), aad)
    code = Code.FETCH if observe else Code.POST
    return (_outer_message(request, code, outer, ciphertext),
            RequestBinding(context, piv, observe, nonce, aad))


def unprotect_response(binding: RequestBinding, response: Message) -> Message:
    """Verify and decrypt a response to the request behind ``binding`` (§8.4).

    Raises :class:`UnprotectedErrorResponse` for a response without OSCORE option,
    :class:`StaleNotification` for a notification older than one already accepted, and
    :class:`ResponseProtectionInvalid` for anything that does not verify. For a notification, the
    Observe value of the result is derived from its authenticated Partial IV (PIV + 1, modulo 2**24; 0
    for a first notification that carries none), so RFC 7641 ordering follows what the server signed,
    not the outer Observe value any proxy could change.
    """
    if not is_protected(response):
        raise UnprotectedErrorResponse(response)
    ctx = binding.context
    try:
        option = _oscore_option(response)
    except MalformedOscoreOption as e:
        raise ResponseProtectionInvalid(f"malformed OSCORE option: {e.reason}") from None
    if option.kid is not None and option.kid != ctx.recipient_id:
        raise ResponseProtectionInvalid("the response names another sender")
    piv = option.partial_iv
    nonce = binding.nonce if piv is None else ctx.nonce(ctx.recipient_id, piv)
    plaintext = ctx._open(nonce, response.payload, binding.aad)
    if plaintext is None:
        raise ResponseProtectionInvalid("decryption failed")
    try:
        inner = _parse_plaintext(plaintext)
    except MalformedOscoreOption as e:
        raise ResponseProtectionInvalid(e.reason) from None
    if not inner.code.is_response():
        raise ResponseProtectionInvalid(f"the protected code {inner.code} is not a response")
    options = _merge(response.opt, inner.opt)
    number = option.sequence_number
    if binding.observe:
        last = binding.notification_number
        if last is not None and (number is None or number <= last):
            raise StaleNotification("a notification not newer than one already received")
        if number is not None:
            binding.notification_number = number
        if _N.OBSERVE in inner.opt:
            options.observe = 0 if number is None else (number + 1) & 0xFFFFFF
    return _outer_message(response, inner.code, options, inner.payload)


# --- server: requests and responses -------------------------------------------------------------------

class ResponseProtector:
    """Protects the responses to one unprotected request: the request's kid and Partial IV bound in.

    The first response reuses the request's nonce and carries no Partial IV (§5.4), unless it is a
    notification or the request's freshness is unknown (Appendix B.1.2): a nonce is never used twice.
    Every later response and every notification takes a new sequence number.
    """

    __slots__ = ("_aad", "_can_reuse_nonce", "_nonce", "context", "request_kid", "request_piv")

    def __init__(self, context: SecurityContext, request_kid: bytes, request_piv: bytes, can_reuse: bool,
                 nonce: bytes | None = None, aad: bytes | None = None):
        self.context = context
        self.request_kid = request_kid
        self.request_piv = request_piv
        self._can_reuse_nonce = can_reuse
        # The request's nonce (for a first response without Partial IV) and the external AAD of every
        # response to it, computed once.
        self._nonce = nonce
        self._aad = aad if aad is not None else context.external_aad(request_kid, request_piv)

    @property
    def sequence_number(self) -> int:
        return int.from_bytes(self.request_piv, "big")

    def __repr__(self) -> str:
        return f"<ResponseProtector {self.context!r} request piv={self.request_piv.hex()}>"

    def protect(self, response: Message) -> Message:
        """The protected form of ``response`` (a 2.xx/4.xx/5.xx with its options and payload)."""
        if not response.code.is_response():
            raise ValueError(f"protect needs a response, not {response.code}")
        ctx = self.context
        notification = False
        inner_items: list[tuple[int, bytes]] = []  # both in wire order, as the response's options are
        outer_items: list[tuple[int, bytes]] = []
        for number, value in response.opt._items:
            if number == _OSCORE:
                continue
            if number == _OBSERVE:
                notification = True
                outer_items.append((number, value))
                inner_items.append((number, b""))  # the client orders by Partial IV, not by this value
            elif number in _OUTER_ONLY:
                outer_items.append((number, value))
            elif number in _BOTH:
                outer_items.append((number, value))
                inner_items.append((number, value))
            else:
                inner_items.append((number, value))
        inner = Options._from_sorted(inner_items)
        outer = Options._from_sorted(outer_items)
        if self._can_reuse_nonce and not notification:
            self._can_reuse_nonce = False
            nonce = self._nonce
            if nonce is None:
                nonce = ctx.nonce(self.request_kid, self.request_piv)
            if outer_items:
                outer.add(_OSCORE, b"")  # no Partial IV, no kid: an empty option
            else:
                outer_items.append((_OSCORE, b""))
        else:
            self._can_reuse_nonce = False
            piv = partial_iv_bytes(ctx.next_sequence_number())
            nonce = ctx.nonce(ctx.sender_id, piv)
            outer.add(_N.OSCORE, OscoreOption(piv).encode())
        ciphertext = ctx._seal(nonce, _plaintext(response.code, inner, response.payload), self._aad)
        return _outer_message(response, Code.CONTENT if notification else Code.CHANGED, outer, ciphertext)


def _plain_inner(items: list[tuple[int, bytes]]) -> bool:
    """Whether inner request options need none of the merge's special cases (Observe, Proxy-Uri)."""
    for number, _ in items:  # noqa: SIM110 - a plain loop: no generator object on the hot path
        if number in _SPECIAL_INNER:
            return False
    return True


def _simple_request_option(value: bytes) -> tuple[bytes, bytes] | None:
    """(Partial IV, kid) of the usual request option — flags with only k set, a Partial IV of 1-5 bytes
    without a leading zero, a kid — read in place; None for every other form (the full decoder's job)."""
    if not value:
        return None
    flags = value[0]
    n = flags & 0x07
    if flags & 0xF8 == 0x08 and 1 <= n <= 5 and len(value) > n and (n == 1 or value[1]):
        return value[1:1 + n], value[1 + n:]
    return None


def unprotect_request(
    contexts: SecurityContext | ContextLookup, request: Message
) -> tuple[Message, ResponseProtector]:
    """Verify and decrypt a protected request (§8.2); the runtime answers the errors unprotected.

    Raises :class:`MalformedOscoreOption` (4.02), :class:`UnknownSecurityContext` (4.01),
    :class:`ReplayDetected` (4.01), :class:`DecryptionFailed` (4.00), and
    :class:`ReplayWindowUninitialized` when the request verified but the window was lost (B.1.2). The
    replay window only advances for a request that verified.
    """
    items = request.opt._items
    simple = _simple_request_option(items[0][1]) if len(items) == 1 and items[0][0] == _OSCORE else None
    if simple is not None:
        piv, kid = simple
        kid_context = None
    else:
        option = _oscore_option(request)
        if option.partial_iv is None or option.kid is None:
            raise MalformedOscoreOption("a request needs a Partial IV and a kid")
        piv, kid, kid_context = option.partial_iv, option.kid, option.kid_context
    if isinstance(contexts, SecurityContext):
        ctx: SecurityContext | None = contexts
        if kid != contexts.recipient_id or (kid_context is not None and kid_context != contexts.id_context):
            ctx = None
    else:
        ctx = contexts.find_context(kid, kid_context)
    if ctx is None:
        raise UnknownSecurityContext()
    sequence = int.from_bytes(piv, "big")
    window = ctx.replay_window
    if window.initialized and not window.is_fresh(sequence):
        raise ReplayDetected()
    nonce = ctx.nonce(kid, piv)
    aad = ctx.external_aad(kid, piv)
    plaintext = ctx._open(nonce, request.payload, aad)
    if plaintext is None:
        raise DecryptionFailed()
    inner = _parse_plaintext(plaintext)
    if not 1 <= inner.code < 32:  # Code.is_request, without the call
        raise MalformedOscoreOption(f"the protected code {inner.code} is not a request method")
    protector = ResponseProtector(ctx, kid, piv, window.initialized, nonce, aad)
    if len(items) == 1 and _plain_inner(inner.opt._items):
        # The common case: the OSCORE option is the only outer one, so the plaintext message is the
        # request, with the outer addressing.
        inner.type, inner.mid, inner.token = request.type, request.mid, request.token
        inner.remote, inner.scheme, inner.local = request.remote, request.scheme, request.local
        if not window.initialized:
            raise ReplayWindowUninitialized(inner, protector)
        window.accept(sequence)
        return inner, protector
    options = _merge(request.opt, inner.opt)
    if _N.OBSERVE not in request.opt:
        options.remove(_N.OBSERVE)  # a proxy dropped the registration: serve it as a plain request
    proxy_uri = options.proxy_uri
    if proxy_uri is not None:
        from ..uri import compose_uri, split_uri

        try:
            parts = split_uri(proxy_uri)
        except UriError:
            raise MalformedOscoreOption("outer Proxy-Uri is not a URI") from None
        options.proxy_uri = compose_uri(
            scheme=parts.scheme, host=parts.host, port=parts.port,
            path=options.uri_path, query=options.uri_query,
        )
        options.uri_path = ()
        options.uri_query = ()
    plain = _outer_message(request, inner.code, options, inner.payload)
    if not window.initialized:
        raise ReplayWindowUninitialized(plain, protector)
    window.accept(sequence)
    return plain, protector
