"""CoAP options: the registry of option numbers and formats, and the ordered option container.

Options are kept as they travel: a list of ``(number, raw value bytes)`` in wire order. Decoding therefore
only slices, encoding only concatenates, and an option coapio does not know survives a round trip byte for
byte. Typed accessors (``opt.uri_path``, ``opt.block2``, ...) convert on access, where the cost is paid only
by the code that asks.
"""

from __future__ import annotations

import enum
from collections.abc import Container, Iterable, Iterator
from typing import Any, Generic, TypeVar, overload

import attrs

from ..error import BadOption, CoapError
from ._enums import unnamed_member

__all__ = [
    "BlockValue",
    "OptionFormat",
    "OptionLengthError",
    "OptionNumber",
    "OptionSpec",
    "Options",
    "check_length",
    "decode_uint",
    "encode_uint",
]


class OptionFormat(enum.Enum):
    """Value formats of RFC 7252 §3.2."""

    EMPTY = "empty"
    OPAQUE = "opaque"
    UINT = "uint"
    STRING = "string"


@attrs.frozen(slots=True)
class OptionSpec:
    """What the registry says of one option number."""

    name: str
    format: OptionFormat
    min_length: int
    max_length: int
    repeatable: bool


class OptionNumber(enum.IntEnum):
    """Option numbers from the IANA registry defined by RFC 7252, 7641, 7959, 7967, 8613, 8768, 9175, 9177.

    The properties derive the critical / unsafe / no-cache-key bits from the number (RFC 7252 §5.4.6), so they
    hold for unregistered numbers too: ``OptionNumber(2049).is_critical()``.
    """

    IF_MATCH = 1
    URI_HOST = 3
    ETAG = 4
    IF_NONE_MATCH = 5
    OBSERVE = 6
    URI_PORT = 7
    LOCATION_PATH = 8
    OSCORE = 9
    URI_PATH = 11
    CONTENT_FORMAT = 12
    MAX_AGE = 14
    URI_QUERY = 15
    HOP_LIMIT = 16
    ACCEPT = 17
    Q_BLOCK1 = 19
    LOCATION_QUERY = 20
    BLOCK2 = 23
    BLOCK1 = 27
    SIZE2 = 28
    Q_BLOCK2 = 31
    PROXY_URI = 35
    PROXY_SCHEME = 39
    SIZE1 = 60
    ECHO = 252
    NO_RESPONSE = 258
    REQUEST_TAG = 292

    @classmethod
    def _missing_(cls, value: object) -> OptionNumber | None:
        return unnamed_member(cls, value, 65535, lambda v: f"OPTION_{v}")

    def is_critical(self) -> bool:
        return bool(self & 1)

    def is_elective(self) -> bool:
        return not self & 1

    def is_unsafe(self) -> bool:
        return bool(self & 2)

    def is_no_cache_key(self) -> bool:
        return self & 0x1E == 0x1C

    @property
    def spec(self) -> OptionSpec | None:
        """The registry entry, or None for an option number coapio does not know."""
        return SPECS.get(self)


_E, _O, _U, _S = OptionFormat.EMPTY, OptionFormat.OPAQUE, OptionFormat.UINT, OptionFormat.STRING
_N = OptionNumber

#: number -> (format, min length, max length, repeatable), from the RFCs that define them.
SPECS: dict[int, OptionSpec] = {
    int(n): OptionSpec(n.name.replace("_", "-").title().replace("Etag", "ETag").replace("Oscore", "OSCORE"),
                       f, lo, hi, rep)
    for n, f, lo, hi, rep in [
        (_N.IF_MATCH, _O, 0, 8, True),
        (_N.URI_HOST, _S, 1, 255, False),
        (_N.ETAG, _O, 1, 8, True),
        (_N.IF_NONE_MATCH, _E, 0, 0, False),
        (_N.OBSERVE, _U, 0, 3, False),
        (_N.URI_PORT, _U, 0, 2, False),
        (_N.LOCATION_PATH, _S, 0, 255, True),
        (_N.OSCORE, _O, 0, 255, False),
        (_N.URI_PATH, _S, 0, 255, True),
        (_N.CONTENT_FORMAT, _U, 0, 2, False),
        (_N.MAX_AGE, _U, 0, 4, False),
        (_N.URI_QUERY, _S, 0, 255, True),
        (_N.HOP_LIMIT, _U, 1, 1, False),
        (_N.ACCEPT, _U, 0, 2, False),
        (_N.Q_BLOCK1, _U, 0, 3, False),
        (_N.LOCATION_QUERY, _S, 0, 255, True),
        (_N.BLOCK2, _U, 0, 3, False),
        (_N.BLOCK1, _U, 0, 3, False),
        (_N.SIZE2, _U, 0, 4, False),
        (_N.Q_BLOCK2, _U, 0, 3, True),  # RFC 9177 §4.1: several missing blocks in one request
        (_N.PROXY_URI, _S, 1, 1034, False),
        (_N.PROXY_SCHEME, _S, 1, 255, False),
        (_N.SIZE1, _U, 0, 4, False),
        (_N.ECHO, _O, 1, 40, False),
        (_N.NO_RESPONSE, _U, 0, 1, False),
        (_N.REQUEST_TAG, _O, 0, 8, True),
    ]
}

#: The option numbers coapio's codec knows; a receiver passes its own set when it supports fewer.
KNOWN_OPTIONS: frozenset[int] = frozenset(SPECS)

#: The critical options a transport does not process (Q-Block of RFC 9177; OSCORE unless the Context has
#: OSCORE credentials): a request carrying one is answered 4.02 (a NON one Reset) and a response
#: carrying one is rejected, instead of being misread.
UNIMPLEMENTED_CRITICAL: frozenset[int] = frozenset(
    {OptionNumber.Q_BLOCK1, OptionNumber.Q_BLOCK2, OptionNumber.OSCORE}
)


class OptionLengthError(CoapError, ValueError):
    """An option value whose length the registry does not allow (RFC 7252 §5.4.3, §5.10).

    Raised before anything is sent, because a peer would reject such a request with 4.02 (critical
    options) or silently ignore the option (elective ones), and neither says what was wrong.
    """


def _length_problem(number: int, length: int, spec: OptionSpec) -> str:
    bound = f"at most {spec.max_length}" if length > spec.max_length else f"at least {spec.min_length}"
    return f"option {spec.name} ({number}) has {length} bytes; it must have {bound}"


def check_length(number: int, raw: bytes) -> None:
    """Raise :class:`OptionLengthError` if ``raw`` is too long or short for a registered ``number``.

    :meth:`Options.add` stores raw values unchecked (so tests can build hostile messages); the typed
    attributes check, and so should any code that adds raw values taken from a user.
    """
    spec = SPECS.get(number)
    if spec is not None and not spec.min_length <= len(raw) <= spec.max_length:
        raise OptionLengthError(_length_problem(number, len(raw), spec))


def describe_unrecognized(options: Options, number: int) -> str:
    """Why ``number`` is an unrecognized critical option of ``options``: the diagnostic of a 4.02."""
    spec = SPECS.get(number)
    if spec is not None:
        for n, raw in options:
            if n == number and not spec.min_length <= len(raw) <= spec.max_length:
                return _length_problem(number, len(raw), spec)
        if len(options.get_all(number)) > 1 and not spec.repeatable:
            return f"option {spec.name} ({number}) is repeated but not repeatable"
    return f"unrecognized critical option {number}"


def encode_uint(value: int) -> bytes:
    """The shortest big-endian encoding of ``value`` (RFC 7252 §3.2: 0 is the empty string)."""
    if value < 0:
        raise ValueError(f"uint option value must not be negative, got {value}")
    return value.to_bytes((value.bit_length() + 7) >> 3, "big")


def decode_uint(raw: bytes) -> int:
    """Read a uint option value; leading zero bytes are tolerated, as RFC 7252 §3.2 asks of receivers."""
    return int.from_bytes(raw, "big")


@attrs.frozen(slots=True)
class BlockValue:
    """A Block1/Block2 (and Q-Block) option value, RFC 7959 §2.2.

    ``szx`` 0..6 means a block size of ``2 ** (szx + 4)`` bytes (16..1024); 7 is BERT, only valid over
    reliable transports (RFC 8323 §6), where a block is a multiple of 1024 bytes.
    """

    num: int
    more: bool
    szx: int

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.num < 1 << 20:
            raise ValueError(f"block number {self.num} outside 0..1048575")
        if not 0 <= self.szx <= 7:
            raise ValueError(f"block SZX {self.szx} outside 0..7")

    @classmethod
    def for_size(cls, num: int, more: bool, size: int) -> BlockValue:
        """The block value for a block size in bytes (a power of two, 16..1024)."""
        szx = size.bit_length() - 5
        if not 0 <= szx <= 6 or size != 1 << (szx + 4):
            raise ValueError(f"block size must be a power of two from 16 to 1024, got {size}")
        return cls(num, more, szx)

    @classmethod
    def decode(cls, raw: bytes) -> BlockValue:
        """Parse a Block1/Block2 value; raise :class:`~coapio.error.BadOption` unless it has 0-3 bytes."""
        if len(raw) > 3:
            raise BadOption(f"a Block option value has at most 3 bytes (RFC 7959 §2.2), not {len(raw)}")
        v = decode_uint(raw)
        return cls(v >> 4, bool(v & 8), v & 7)

    def encode(self) -> bytes:
        return encode_uint(self.num << 4 | self.more << 3 | self.szx)

    @property
    def is_bert(self) -> bool:
        return self.szx == 7

    @property
    def size(self) -> int:
        """Bytes in a block (1024 for BERT, whose blocks are multiples of that)."""
        return 1 << (min(self.szx, 6) + 4)

    @property
    def start(self) -> int:
        """Offset of this block's first byte in the whole body."""
        return self.num * self.size

    def reduced(self, szx: int) -> BlockValue:
        """The same position expressed with a smaller block size (late negotiation, RFC 7959 §2.5)."""
        if szx > self.szx:
            raise ValueError("a block size can only be reduced")
        return BlockValue(self.num << (min(self.szx, 6) - szx), self.more, szx)


T = TypeVar("T")


class _Accessor(Generic[T]):
    """A typed view of one option inside :class:`Options` (a descriptor, so mypy sees the value types)."""

    __slots__ = ("max_length", "min_length", "number")

    def __init__(self, number: OptionNumber, *, checked: bool = True):
        self.number = int(number)
        spec = SPECS[self.number]
        self.min_length, self.max_length = (spec.min_length, spec.max_length) if checked else (0, 1 << 16)

    def _load(self, raw: list[bytes]) -> T:
        raise NotImplementedError

    def _store(self, value: T) -> list[bytes]:
        raise NotImplementedError

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> _Accessor[T]: ...
    @overload
    def __get__(self, obj: Options, owner: type[Any]) -> T: ...
    def __get__(self, obj: Options | None, owner: type[Any]) -> T | _Accessor[T]:
        if obj is None:
            return self
        return self._load(obj.get_all(self.number))

    def __set__(self, obj: Options, value: T) -> None:
        raws = self._store(value)
        lo, hi = self.min_length, self.max_length
        for raw in raws:
            if not lo <= len(raw) <= hi:  # the one check a set costs: out-of-range values never go out
                raise OptionLengthError(_length_problem(self.number, len(raw), SPECS[self.number]))
        obj.replace(self.number, raws)

    def __delete__(self, obj: Options) -> None:
        obj.remove(self.number)


class _Uint(_Accessor[int | None]):
    __slots__ = ()

    def _load(self, raw: list[bytes]) -> int | None:
        return decode_uint(raw[0]) if raw else None

    def _store(self, value: int | None) -> list[bytes]:
        return [] if value is None else [encode_uint(value)]


class _String(_Accessor[str | None]):
    __slots__ = ()

    def _load(self, raw: list[bytes]) -> str | None:
        return raw[0].decode("utf-8", "replace") if raw else None

    def _store(self, value: str | None) -> list[bytes]:
        return [] if value is None else [value.encode("utf-8")]


class _Strings(_Accessor[tuple[str, ...]]):
    __slots__ = ()

    def _load(self, raw: list[bytes]) -> tuple[str, ...]:
        return tuple(r.decode("utf-8", "replace") for r in raw)

    def _store(self, value: tuple[str, ...]) -> list[bytes]:
        if isinstance(value, str):
            raise TypeError("a repeatable string option takes a sequence of strings, not one string")
        return [v.encode("utf-8") for v in value]


class _Opaque(_Accessor[bytes | None]):
    __slots__ = ()

    def _load(self, raw: list[bytes]) -> bytes | None:
        return raw[0] if raw else None

    def _store(self, value: bytes | None) -> list[bytes]:
        return [] if value is None else [bytes(value)]


class _Opaques(_Accessor[tuple[bytes, ...]]):
    __slots__ = ()

    def _load(self, raw: list[bytes]) -> tuple[bytes, ...]:
        return tuple(raw)

    def _store(self, value: tuple[bytes, ...]) -> list[bytes]:
        if isinstance(value, bytes | bytearray):
            raise TypeError("a repeatable opaque option takes a sequence of bytes values")
        return [bytes(v) for v in value]


class _Flag(_Accessor[bool]):
    __slots__ = ()

    def _load(self, raw: list[bytes]) -> bool:
        return bool(raw)

    def _store(self, value: bool) -> list[bytes]:
        return [b""] if value else []


class _Block(_Accessor[BlockValue | None]):
    __slots__ = ()

    def _load(self, raw: list[bytes]) -> BlockValue | None:
        return BlockValue.decode(raw[0]) if raw else None

    def _store(self, value: BlockValue | None) -> list[bytes]:
        return [] if value is None else [value.encode()]


OptionValue = bytes | str | int | BlockValue


class Options:
    """The options of one message, in wire order (ascending number; repeated options keep their order).

    Raw access works for any number (``add``, ``get``, ``get_all``, ``replace``, ``remove``); the named
    attributes convert between wire bytes and Python values using the registry's formats.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[int, bytes]] = ()):
        self._items: list[tuple[int, bytes]] = []
        for number, value in items:
            self.add(number, value)

    @classmethod
    def _from_sorted(cls, items: list[tuple[int, bytes]]) -> Options:
        """Adopt a list already in wire order (the decoder's fast path)."""
        self = cls.__new__(cls)
        self._items = items
        return self

    # --- raw access -----------------------------------------------------------------------------------

    def add(self, number: int, value: OptionValue) -> None:
        """Append a value for ``number`` after any values it already has."""
        if not 0 <= number <= 65535:
            raise ValueError(f"option number {number} outside 0..65535")
        raw = _to_raw(number, value)
        items = self._items
        if not items or items[-1][0] <= number:
            items.append((number, raw))
            return
        i = len(items)
        while i and items[i - 1][0] > number:
            i -= 1
        items.insert(i, (number, raw))

    def get_all(self, number: int) -> list[bytes]:
        return [v for n, v in self._items if n == number]

    def get(self, number: int) -> bytes | None:
        """The first raw value of ``number``, or None."""
        for n, v in self._items:
            if n == number:
                return v
        return None

    def __contains__(self, number: object) -> bool:
        for n, _ in self._items:  # noqa: SIM110 - a plain loop: no generator object on the hot path
            if n == number:
                return True
        return False

    def replace(self, number: int, values: Iterable[OptionValue]) -> None:
        """Set the values of ``number`` (none removes it), keeping every other option where it was."""
        self.remove(number)
        for v in values:
            self.add(number, v)

    def remove(self, number: int) -> None:
        self._items = [item for item in self._items if item[0] != number]

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Options):
            return NotImplemented
        return self._items == other._items

    __hash__ = None  # type: ignore[assignment]  # mutable

    def copy(self) -> Options:
        return Options._from_sorted(list(self._items))

    def __repr__(self) -> str:
        parts = []
        for number, raw in self._items:
            spec = SPECS.get(number)
            if spec is None:
                parts.append(f"{number}={raw.hex() or '-'}")
            elif spec.format is OptionFormat.UINT:
                parts.append(f"{spec.name}={decode_uint(raw)}")
            elif spec.format is OptionFormat.STRING:
                parts.append(f"{spec.name}={raw.decode('utf-8', 'replace')!r}")
            elif spec.format is OptionFormat.EMPTY:
                parts.append(spec.name)
            else:
                parts.append(f"{spec.name}={raw.hex() or '-'}")
        return f"<Options {', '.join(parts)}>"

    # --- validity (RFC 7252 §5.4) ----------------------------------------------------------------------

    def unrecognized_critical(self, recognized: Container[int] = KNOWN_OPTIONS) -> list[int]:
        """Critical options the receiver must reject the message for (RFC 7252 §5.4.1, §5.4.3, §5.4.5).

        A critical option is unrecognized when its number is not in ``recognized``, when its length is
        outside the registered bounds, or when it is repeated although not repeatable. A server answers
        such a request 4.02 Bad Option; a client rejects such a response.
        """
        bad: list[int] = []
        previous = -1
        for number, raw in self._items:
            if not number & 1:
                previous = number
                continue
            spec = SPECS.get(number)
            # The registry's bounds apply to the options it knows; an application that recognizes an
            # unregistered critical option vouches for its values itself.
            if (
                number not in recognized
                or (spec is not None and not spec.min_length <= len(raw) <= spec.max_length)
                or (spec is not None and number == previous and not spec.repeatable)
            ) and number not in bad:
                bad.append(number)
            previous = number
        return bad

    # --- typed accessors -------------------------------------------------------------------------------

    if_match = _Opaques(OptionNumber.IF_MATCH)
    uri_host = _String(OptionNumber.URI_HOST)
    etag = _Opaque(OptionNumber.ETAG)  # a response carries one; see `etags` for a request's list
    etags = _Opaques(OptionNumber.ETAG)
    if_none_match = _Flag(OptionNumber.IF_NONE_MATCH)
    observe = _Uint(OptionNumber.OBSERVE)
    uri_port = _Uint(OptionNumber.URI_PORT)
    location_path = _Strings(OptionNumber.LOCATION_PATH)
    oscore = _Opaque(OptionNumber.OSCORE)
    uri_path = _Strings(OptionNumber.URI_PATH)
    content_format = _Uint(OptionNumber.CONTENT_FORMAT)
    max_age = _Uint(OptionNumber.MAX_AGE)
    uri_query = _Strings(OptionNumber.URI_QUERY)
    hop_limit = _Uint(OptionNumber.HOP_LIMIT)
    accept = _Uint(OptionNumber.ACCEPT)
    q_block1 = _Block(OptionNumber.Q_BLOCK1)
    location_query = _Strings(OptionNumber.LOCATION_QUERY)
    block2 = _Block(OptionNumber.BLOCK2)
    block1 = _Block(OptionNumber.BLOCK1)
    size2 = _Uint(OptionNumber.SIZE2)
    q_block2 = _Block(OptionNumber.Q_BLOCK2)
    proxy_uri = _String(OptionNumber.PROXY_URI)
    proxy_scheme = _String(OptionNumber.PROXY_SCHEME)
    size1 = _Uint(OptionNumber.SIZE1)
    # Unchecked: a client repeats the Echo value a server chose (RFC 9175 §2.2.2), whatever its length.
    echo = _Opaque(OptionNumber.ECHO, checked=False)
    no_response = _Uint(OptionNumber.NO_RESPONSE)
    request_tag = _Opaque(OptionNumber.REQUEST_TAG)  # a single Request-Tag, as a client sends it
    request_tags = _Opaques(OptionNumber.REQUEST_TAG)

    @property
    def max_age_or_default(self) -> int:
        """Max-Age with RFC 7252 §5.10.5's default of 60 seconds when absent.

        A value longer than the option's 4 bytes is malformed; like any unrecognized elective option
        (§5.4.1, §5.4.3) it is ignored, so the default applies.
        """
        raw = self.get(OptionNumber.MAX_AGE)
        return 60 if raw is None or len(raw) > 4 else decode_uint(raw)


def _to_raw(number: int, value: OptionValue) -> bytes:
    """Encode a Python value for ``number``: bytes pass through, others follow the registered format."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, BlockValue):
        return value.encode()
    if isinstance(value, bool):
        raise TypeError("use Options.add(number, b'') for an empty option")
    if isinstance(value, int):
        return encode_uint(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"cannot encode {type(value).__name__} as the value of option {number}")
