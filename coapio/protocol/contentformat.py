"""CoAP Content-Format numbers (RFC 7252 §12.3) and their media types, from the IANA registry.

A Content-Format is one number standing for a media type, its parameters and a content coding. The
registry's entries are named members; any other number in 0..65535 still becomes a (cached, unnamed)
member, so that an option carrying a newer or experimental format is an unknown value, never a
decoding error. Unnamed members report the RFC 8075 media type ``application/coap-payload; cf=<n>``,
which exists exactly to name "the payload of Content-Format <n>" where no better name is known.
"""

from __future__ import annotations

import enum
import re

from ._enums import unnamed_member

__all__ = ["ContentFormat"]


class ContentFormat(enum.IntEnum):
    """The registered CoAP Content-Formats (IANA "CoAP Content-Formats" registry)."""

    TEXT_PLAIN = 0
    COSE_ENCRYPT0 = 16
    COSE_MAC0 = 17
    COSE_SIGN1 = 18
    ACE_CBOR = 19
    IMAGE_GIF = 21
    IMAGE_JPEG = 22
    IMAGE_PNG = 23
    LINK_FORMAT = 40
    XML = 41
    OCTET_STREAM = 42
    EXI = 47
    JSON = 50
    JSON_PATCH_JSON = 51
    MERGE_PATCH_JSON = 52
    CBOR = 60
    CWT = 61
    MULTIPART_CORE = 62
    CBOR_SEQ = 63
    EDHOC_CBOR_SEQ = 64
    CID_EDHOC_CBOR_SEQ = 65
    COSE_ENCRYPT = 96
    COSE_MAC = 97
    COSE_SIGN = 98
    COSE_KEY = 101
    COSE_KEY_SET = 102
    SENML_JSON = 110
    SENSML_JSON = 111
    SENML_CBOR = 112
    SENSML_CBOR = 113
    SENML_EXI = 114
    SENSML_EXI = 115
    YANG_DATA_CBOR_SID = 140
    COAP_GROUP_JSON = 256
    CONCISE_PROBLEM_DETAILS_CBOR = 257
    DOTS_CBOR = 271
    MISSING_BLOCKS_CBOR_SEQ = 272
    PKCS7_MIME_SERVER_GENERATED_KEY = 280
    PKCS7_MIME_CERTS_ONLY = 281
    PKCS8 = 284
    CSRATTRS = 285
    PKCS10 = 286
    PKIX_CERT = 287
    AIF_CBOR = 290
    AIF_JSON = 291
    SENML_XML = 310
    SENSML_XML = 311
    SENML_ETCH_JSON = 320
    SENML_ETCH_CBOR = 322
    YANG_DATA_CBOR = 340
    YANG_DATA_CBOR_NAME = 341
    TD_JSON = 432
    VND_OCF_CBOR = 10000
    OSCORE = 10001
    JAVASCRIPT = 10002
    JSON_DEFLATE = 11050
    CBOR_DEFLATE = 11060
    LWM2M_TLV = 11542
    LWM2M_JSON = 11543
    LWM2M_CBOR = 11544
    TEXT_CSS = 20000
    IMAGE_SVG_XML = 30000

    @classmethod
    def _missing_(cls, value: object) -> ContentFormat | None:
        """Give an unregistered number in 0..65535 an unnamed member, so decoding never fails on it."""
        return unnamed_member(cls, value, 0xFFFF, lambda v: f"CF_{v}")

    @classmethod
    def by_media_type(cls, text: str, *, encoding: str | None = None) -> ContentFormat:
        """The format registered for a media type such as ``'application/cbor'``.

        Type, subtype, parameter names and values compare case-insensitively (the registry never
        tells two entries apart by case); whitespace around ``;`` and ``=`` and the order of
        parameters do not matter, and quoted and unquoted parameter values are equal. A bare
        ``text/plain`` means the registry's ``text/plain; charset=utf-8`` (0). The content coding
        is ``encoding`` or an RFC 9193 ``@coding`` suffix (``'application/json@deflate'``).
        ``application/coap-payload; cf=<n>`` gives format ``n``, registered or not.

        Raises ValueError for text that is no media type or one the registry does not list.
        """
        key = _media_type_key(text)
        if key is None:
            raise ValueError(f"not a media type: {text!r}")
        type_, subtype, params, coding = key
        if encoding is not None:
            if coding is not None:
                raise ValueError(f"content coding given twice: {text!r} and encoding={encoding!r}")
            coding = encoding.strip().lower()
        if (type_, subtype) == ("application", "coap-payload") and coding is None:
            number = dict(params).get("cf") if len(params) == 1 else None
            if number is None or not number.isdigit() or int(number) > 0xFFFF:
                raise ValueError(f"application/coap-payload needs one cf=0..65535 parameter: {text!r}")
            return cls(int(number))
        member = _BY_MEDIA_TYPE.get((type_, subtype, params, coding))
        if member is None:
            coded = f" with content coding {coding!r}" if coding else ""
            raise ValueError(f"media type {text!r}{coded} is not in the CoAP Content-Formats registry")
        return member

    @classmethod
    def parse(cls, text: str) -> ContentFormat:
        """A format from user input: a number (``'60'``) or anything :meth:`by_media_type` accepts.

        Meant for command lines and configuration; raises ValueError naming the rejected text.
        """
        stripped = text.strip()
        if stripped.isascii() and stripped.isdigit():
            number = int(stripped)
            if number > 0xFFFF:
                raise ValueError(f"content format {text!r} is out of range 0..65535")
            return cls(number)
        try:
            return cls.by_media_type(stripped)
        except ValueError as exc:
            raise ValueError(f"{exc}; a content format is a number 0..65535 or a media type") from None

    @property
    def media_type(self) -> str:
        """The media type with its parameters, as the registry writes it (without the coding)."""
        entry = _REGISTRY.get(int(self))
        return entry[0] if entry is not None else f"application/coap-payload; cf={int(self)}"

    @property
    def encoding(self) -> str | None:
        """The content coding applied to the payload (``'deflate'``), or None for identity."""
        entry = _REGISTRY.get(int(self))
        return entry[1] if entry is not None else None

    @property
    def is_text(self) -> bool:
        """Whether the payload bytes are UTF-8 text that a CLI may print as they are.

        True for ``text/*``, JSON, XML, link-format and JavaScript (and their ``+json``/``+xml``
        relatives), false for anything carrying a content coding: compressed bytes are not text.
        """
        if self.encoding is not None:
            return False
        type_, subtype = _type_subtype(self.media_type)
        return (
            type_ == "text"
            or subtype in ("json", "xml", "link-format", "javascript")
            or subtype.endswith(("+json", "+xml"))
        )

    @property
    def is_json(self) -> bool:
        """Whether the payload bytes are one JSON text (``application/json`` or a ``+json`` type).

        Like :attr:`is_text` this describes the bytes as carried, so formats with a content coding
        are false; decode them first and look up ``by_media_type(cf.media_type)``.
        """
        if self.encoding is not None:
            return False
        subtype = _type_subtype(self.media_type)[1]
        return subtype == "json" or subtype.endswith("+json")

    @property
    def is_cbor(self) -> bool:
        """Whether the payload bytes are one CBOR data item (``application/cbor`` or ``+cbor``).

        CBOR sequences (``cbor-seq``) are not one item and are false, as are formats with a content
        coding (see :attr:`is_json`).
        """
        if self.encoding is not None:
            return False
        subtype = _type_subtype(self.media_type)[1]
        return subtype == "cbor" or subtype.endswith("+cbor")


# Media type (with parameters) and content coding of each registered format, as the registry lists
# them. Keyed by number rather than stored on the members so that unnamed members need no special case.
_REGISTRY: dict[int, tuple[str, str | None]] = {
    0: ("text/plain; charset=utf-8", None),
    16: ('application/cose; cose-type="cose-encrypt0"', None),
    17: ('application/cose; cose-type="cose-mac0"', None),
    18: ('application/cose; cose-type="cose-sign1"', None),
    19: ("application/ace+cbor", None),
    21: ("image/gif", None),
    22: ("image/jpeg", None),
    23: ("image/png", None),
    40: ("application/link-format", None),
    41: ("application/xml", None),
    42: ("application/octet-stream", None),
    47: ("application/exi", None),
    50: ("application/json", None),
    51: ("application/json-patch+json", None),
    52: ("application/merge-patch+json", None),
    60: ("application/cbor", None),
    61: ("application/cwt", None),
    62: ("application/multipart-core", None),
    63: ("application/cbor-seq", None),
    64: ("application/edhoc+cbor-seq", None),
    65: ("application/cid-edhoc+cbor-seq", None),
    96: ('application/cose; cose-type="cose-encrypt"', None),
    97: ('application/cose; cose-type="cose-mac"', None),
    98: ('application/cose; cose-type="cose-sign"', None),
    101: ("application/cose-key", None),
    102: ("application/cose-key-set", None),
    110: ("application/senml+json", None),
    111: ("application/sensml+json", None),
    112: ("application/senml+cbor", None),
    113: ("application/sensml+cbor", None),
    114: ("application/senml-exi", None),
    115: ("application/sensml-exi", None),
    140: ("application/yang-data+cbor; id=sid", None),
    256: ("application/coap-group+json", None),
    257: ("application/concise-problem-details+cbor", None),
    271: ("application/dots+cbor", None),
    272: ("application/missing-blocks+cbor-seq", None),
    280: ("application/pkcs7-mime; smime-type=server-generated-key", None),
    281: ("application/pkcs7-mime; smime-type=certs-only", None),
    284: ("application/pkcs8", None),
    285: ("application/csrattrs", None),
    286: ("application/pkcs10", None),
    287: ("application/pkix-cert", None),
    290: ("application/aif+cbor", None),
    291: ("application/aif+json", None),
    310: ("application/senml+xml", None),
    311: ("application/sensml+xml", None),
    320: ("application/senml-etch+json", None),
    322: ("application/senml-etch+cbor", None),
    340: ("application/yang-data+cbor", None),
    341: ("application/yang-data+cbor; id=name", None),
    432: ("application/td+json", None),
    10000: ("application/vnd.ocf+cbor", None),
    10001: ("application/oscore", None),
    10002: ("application/javascript", None),
    11050: ("application/json", "deflate"),
    11060: ("application/cbor", "deflate"),
    11542: ("application/vnd.oma.lwm2m+tlv", None),
    11543: ("application/vnd.oma.lwm2m+json", None),
    11544: ("application/vnd.oma.lwm2m+cbor", None),
    20000: ("text/css", None),
    30000: ("image/svg+xml", None),
}

# RFC 9110 token and quoted-string; parameters may carry whitespace around ";" and "=".
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_HEAD_RE = re.compile(rf"\s*({_TOKEN})/({_TOKEN})")
_PARAM_RE = re.compile(rf'\s*;\s*({_TOKEN})\s*=\s*({_TOKEN}|"(?:[^"\\]|\\.)*")', re.DOTALL)
_TAIL_RE = re.compile(rf"\s*(?:@\s*({_TOKEN}))?\s*")
_ESCAPE_RE = re.compile(r"\\(.)", re.DOTALL)

_Key = tuple[str, str, tuple[tuple[str, str], ...], str | None]


def _media_type_key(text: str) -> _Key | None:
    """Normalise a media type (with optional ``@coding``) to a comparable key; None if malformed."""
    match = _HEAD_RE.match(text)
    if match is None:
        return None
    type_, subtype = match.group(1).lower(), match.group(2).lower()
    pos = match.end()
    params = []
    while (param := _PARAM_RE.match(text, pos)) is not None:
        value = param.group(2)
        if value.startswith('"'):
            value = _ESCAPE_RE.sub(r"\1", value[1:-1])
        params.append((param.group(1).lower(), value.lower()))
        pos = param.end()
    tail = _TAIL_RE.fullmatch(text, pos)
    if tail is None:
        return None
    coding = tail.group(1)
    return type_, subtype, tuple(sorted(params)), coding.lower() if coding else None


def _type_subtype(media_type: str) -> tuple[str, str]:
    head = media_type.split(";", 1)[0].strip().lower()
    type_, _, subtype = head.partition("/")
    return type_, subtype


def _build_index() -> dict[_Key, ContentFormat]:
    index: dict[_Key, ContentFormat] = {}
    for number, (media_type, coding) in _REGISTRY.items():
        key = _media_type_key(media_type)
        assert key is not None and key[3] is None, media_type
        key = (*key[:3], coding)
        assert key not in index, f"registry entries {index[key]} and {number} collide"
        index[key] = ContentFormat(number)
    # The registry lists only the UTF-8 text/plain; a bare one (US-ASCII by RFC 2046, a subset) is it.
    index["text", "plain", (), None] = ContentFormat.TEXT_PLAIN
    return index


_BY_MEDIA_TYPE = _build_index()
assert set(_REGISTRY) == {int(member) for member in ContentFormat}
