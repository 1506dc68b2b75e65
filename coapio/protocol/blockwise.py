"""Block-wise transfer state machines (RFC 7959, with RFC 9175 §3 Request-Tag), sans-IO.

Four pieces, one per role, each driven by the runtime with messages (and, on the server, the time):

* :func:`segment_response` — server, Block2: cut the block a request asks for out of a full response.
* :class:`Block2Assembler` — client, Block2: request the blocks of a response in order and join them.
* :class:`Block1Sender` — client, Block1: send a large request body block by block.
* :class:`Block1Reassembler` — server, Block1: join the blocks of request bodies, bounded in memory.

Nothing here touches a socket, a task or a clock. Message IDs are left ``None`` and tokens are copied from
the request the caller passes in; the runtime assigns both for every block exchange.

BERT (RFC 8323 §6, SZX 7) is for RFC 8323 connections on which both sides announced it in their CSM; the
caller says so with a parameter (``bert``), so that UDP pays nothing and refuses SZX 7 as RFC 7959 §2.2
asks. A BERT block's NUM counts 1 KiB units; a non-final BERT block carries a multiple of 1024 bytes, a
final one any number. Where a parameter gives the peer's Max-Message-Size, a block carries as many 1 KiB
units as fit in it besides the message's header and options (:func:`bert_payload_size`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import attrs

from ..error import (
    BadRequest,
    RenderableError,
    RequestEntityIncomplete,
    RequestEntityTooLarge,
    ResponseRejected,
    ServiceUnavailable,
)
from .codes import Code
from .message import Message, Remote
from .options import BlockValue, OptionNumber, Options

__all__ = [
    "Block1Reassembler",
    "Block1Sender",
    "Block2Assembler",
    "Complete",
    "Continue",
    "ReassemblyStats",
    "bert_payload_size",
    "block_window",
    "blockwise_key",
    "derive_etag",
    "segment_response",
]

_BLOCK1 = int(OptionNumber.BLOCK1)
_BLOCK2 = int(OptionNumber.BLOCK2)
_SIZE1 = int(OptionNumber.SIZE1)
_SIZE2 = int(OptionNumber.SIZE2)
_MAX_NUM = (1 << 20) - 1
#: Bytes a BERT message needs besides its options and payload, counted at their largest: the TCP header
#: (Len/TKL, a 4-byte extended length, the code), an 8-byte token (the runtime picks it later), the payload
#: marker, and 12 bytes for options added after segmentation (a notification's Observe, a Block1
#: acknowledgement: at most 6 bytes each).
_BERT_RESERVE = 6 + 8 + 1 + 12


# --- small helpers -------------------------------------------------------------------------------------


def block_window(payload: bytes, block: BlockValue) -> tuple[bytes, bool]:
    """The bytes of ``block`` within ``payload`` and whether more follow (the M bit, RFC 7959 §2.2)."""
    start = block.start
    end = start + block.size
    return payload[start:end], end < len(payload)


def bert_payload_size(message: Message, max_message_size: int) -> int:
    """The payload of one BERT block of ``message``: the whole 1 KiB units that fit in
    ``max_message_size`` beside its header and options (RFC 8323 §6), and at least one.

    ``message`` carries the options the block will carry (its payload is not counted). A message size
    leaves room for the largest header and token, so the runtime may pick either later.
    """
    payload = len(message.payload)
    overhead = message.wire_size - (payload + 1 if payload else 0) - 4 - len(message.token) + _BERT_RESERVE
    return max(1, (max_message_size - overhead) >> 10) << 10


def derive_etag(response: Message) -> bytes:
    """An 8-byte ETag for a response that has none: a hash of its Content-Format and payload.

    RFC 7959 §2.4 asks a server to send an ETag with every block so that a client can tell when the
    representation changed between blocks; RFC 9175 §3.8 makes that a MUST for body integrity and forbids
    one ETag for two representations. A content hash satisfies both without server state: it is the same
    for every block of one body and (short of a 64-bit collision) differs for any other body.

    The hash is Python's own 64-bit keyed hash of ``bytes``, which each bytes object computes once and
    caches: a resource that returns the same body object for every block pays for hashing it once, not
    once per block (a cryptographic hash here made a 1 MiB transfer cost O(size²)). Its key is random per
    process, so the ETags of a restarted server differ — which tells clients the truth: they cannot
    assume the representation survived the restart.
    """
    content_format = response.opt.get(OptionNumber.CONTENT_FORMAT) or b""
    value = hash(response.payload) ^ (int.from_bytes(content_format, "big") + 1) * 0x9E3779B97F4A7C15
    return (value & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")


def blockwise_key(request: Message) -> Hashable:
    """What identifies a request's block-wise operation (RFC 9175 §3.3).

    "All options except elective NoCacheKey and except Block1/2", plus the code and the peer. Request-Tag
    is therefore part of the key (it exists to vary it), while Size1, Size2 and Echo are not. The token is
    not: a client may use a new token for every block.
    """
    opts = tuple(
        (number, value)
        for number, value in request.opt
        if number != _BLOCK1
        and number != _BLOCK2
        and not (not number & 1 and number & 0x1E == 0x1C)  # elective and NoCacheKey
    )
    return (_hashable(request.remote), _hashable(request.local), int(request.code), opts)


def _hashable(value: Any) -> Hashable:
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value  # type: ignore[no-any-return]


def _check_szx(block: BlockValue, where: str) -> None:
    # RFC 7959 §2.2: SZX 7 is reserved and leads to 4.00 in a request; RFC 8323 §6 gives it to BERT,
    # which only reliable transports may use.
    if block.szx == 7:
        raise BadRequest(f"{where}: SZX 7 (BERT) is not supported on this transport")


# --- server, Block2 ------------------------------------------------------------------------------------


def segment_response(request: Message, response: Message, *, max_szx: int = 6,
                     bert: int | None = None) -> Message:
    """The block of ``response`` that ``request`` asks for (RFC 7959 §2.4, §4; the examples of §3.1).

    Call it with the full rendered response of every request. The server stays stateless: each Block2
    request re-renders the resource and gets its slice.

    * Without Block2 in the request, a body that fits in one block of ``max_szx`` goes out unchanged;
      a larger one becomes block 0 at ``max_szx`` (late negotiation, the client follows our size).
    * With Block2 (early negotiation or a later block), the block size is the smaller of the client's and
      ``max_szx`` (§2.4: "the block size indicated or a smaller size"); a smaller size than the client's
      keeps the client's byte offset, so block N at SZX s becomes block N·2^(s-s') at SZX s'.
    * Size2 goes with block 0 and, when the request carried Size2 (a "size request", §4), with any
      response; an ETag is added when the response has none (:func:`derive_etag`).
    * Only successful responses are segmented; an error's diagnostic passes through unchanged. A response
      that already carries Block2 was segmented by its resource and passes through too.

    ``bert`` is the peer's Max-Message-Size when BERT is on for it (RFC 8323 §6), else None. Then a body
    that fits in one message goes out unchanged, and a larger one, or any request with Block2 SZX 7,
    gets a BERT block: NUM in 1 KiB units, as many of them as :func:`bert_payload_size` allows (Figure
    15 of RFC 8323). A request with SZX 0-6 still gets the size it asked for. Without ``bert``, SZX 7 is
    a 4.00 (RFC 7959 §2.2).

    A block past the end of the body raises :class:`BadRequest` (4.00): RFC 7959 names no code for it;
    4.00 is what §2.2 prescribes for an unusable Block value (SZX 7) and what libcoap and aiocoap send.
    Block 0 of an empty body is valid (an empty last block).
    """
    if not 0 <= max_szx <= 6:
        raise ValueError(f"max_szx must be 0..6, got {max_szx}")
    asked = request.opt.block2
    size_requested = request.opt.size2 is not None
    if not response.code.is_successful() or _BLOCK2 in response.opt:
        return response
    body = response.payload
    if asked is None:
        if bert is not None:
            if len(body) <= bert_payload_size(response, bert):
                return _with_size2(response) if size_requested else response
            return _bert_block(response, 0, bert, size_requested)
        if len(body) <= 1 << (max_szx + 4):
            return _with_size2(response) if size_requested else response
        block = BlockValue(0, False, max_szx)
    elif asked.szx == 7 and bert is not None:
        return _bert_block(response, asked.num, bert, size_requested)
    else:
        _check_szx(asked, "Block2")
        if asked.szx > max_szx:
            if asked.num << (asked.szx - max_szx) >= 1 << 20:  # not even a block number at our size
                raise BadRequest(f"block {asked.num} is past the end of the {len(body)}-byte body")
            block = asked.reduced(max_szx)
        else:
            block = BlockValue(asked.num, False, asked.szx)
        if block.start >= len(body) and block.num:
            raise BadRequest(f"block {asked.num} is past the end of the {len(body)}-byte body")
    chunk, more = block_window(body, block)
    out = response.copy(payload=chunk)
    out.opt.block2 = BlockValue(block.num, more, block.szx)
    if block.num == 0 or size_requested:
        out.opt.size2 = len(body)
    if OptionNumber.ETAG not in out.opt:
        out.opt.etag = derive_etag(response)
    return out


def _with_size2(response: Message) -> Message:
    response = response.copy()
    response.opt.size2 = len(response.payload)
    return response


def _bert_block(response: Message, num: int, max_message_size: int, size_requested: bool) -> Message:
    """BERT block ``num`` (in 1 KiB units) of ``response``: as many units as fit the message size."""
    body = response.payload
    start = num << 10
    if start >= len(body) and num:
        raise BadRequest(f"block {num} is past the end of the {len(body)}-byte body")
    out = response.copy(payload=b"")
    out.opt.block2 = BlockValue(num, False, 7)  # the M bit does not change the option's length
    if num == 0 or size_requested:
        out.opt.size2 = len(body)
    if OptionNumber.ETAG not in out.opt:
        out.opt.etag = derive_etag(response)
    end = start + bert_payload_size(out, max_message_size)
    if end < len(body):
        out.opt.block2 = BlockValue(num, True, 7)
    out.payload = body[start:end]
    return out


# --- client, Block2 ------------------------------------------------------------------------------------


class Block2Assembler:
    """Fetches the remaining blocks of a response and joins them (RFC 7959 §2.4, §2.6, §2.7).

    Usage: send :meth:`first_request` (or, after a Block1 phase, feed the final Block1 response);
    ``feed`` every response; while it returns None, send :meth:`next_request`. It returns the complete
    response: the first block's code and options with the joined payload, without Block1/2 and Size2
    (transfer artefacts: the payload's length is the size).

    ``request`` is the request every block repeats: the original request, or for a Block1+Block2
    operation :meth:`Block1Sender.continuation_request`. Later blocks are requested without Observe
    (§2.6: only the first block is a notification; the rest are plain GETs).

    Checks, each raising :class:`ResponseRejected`: a block must start at the byte offset asked for
    (any SZX not larger than asked, to follow a server that reduced its size, §2.4); every non-final block
    is exactly one block long; the body stays within ``max_body`` (also checked against Size2 up front),
    so a hostile server cannot exhaust memory; the ETag stays the same. An ETag change means the
    representation changed under us (§2.4): we start over from block 0 up to ``max_restarts`` times.
    A response without Block2 or with a non-success code ends the transfer and is returned as it is.

    ``bert``: BERT is on for the connection (RFC 8323 §6), so a block may be SZX 7: NUM counts 1 KiB
    units, a non-final block carries a non-zero multiple of 1024 bytes, a final one any number, and the
    next request asks for the NUM after the bytes received, still at SZX 7 (Figure 15 of RFC 8323).
    A server may answer a request for SZX 6 with BERT: SZX 7 only adds the capability (§6). Without
    ``bert``, SZX 7 is rejected.
    """

    def __init__(
        self, request: Message, *, max_body: int, preferred_szx: int | None = None, max_restarts: int = 1,
        bert: bool = False,
    ):
        if preferred_szx is not None and not 0 <= preferred_szx <= 6:
            raise ValueError(f"preferred_szx must be 0..6, got {preferred_szx}")
        self._request = request
        self._bert = bert
        self._max_body = max_body
        self._preferred = preferred_szx
        self._max_restarts = max_restarts
        self.restarts = 0
        self._buffer = bytearray()
        self._first: Message | None = None
        self._etag: bytes | None = None
        #: The block to ask for next (None before the first block arrives: it may come unasked, §2.7).
        self._next: BlockValue | None = None
        #: The block asked for last, None while we have not asked for any.
        self._asked: BlockValue | None = None
        self._done = False

    def first_request(self) -> Message:
        """The opening request; with Block2(0, preferred_szx) if given (early negotiation, §2.4).

        Optional: a runtime that sent the plain request may feed its response instead. A preferred size
        then applies from the second block on (late negotiation, as in §3.1's late-negotiation example).
        """
        out = self._request.copy(mid=None)
        if self._preferred is not None:
            self._asked = out.opt.block2 = BlockValue(0, False, self._preferred)
        return out

    def next_request(self) -> Message:
        """The request for the next block, after :meth:`feed` returned None."""
        if self._next is None or self._done:
            raise RuntimeError("no further block to request")
        out = self._request.copy(mid=None)
        out.opt.remove(OptionNumber.OBSERVE)
        self._asked = out.opt.block2 = self._next
        return out

    def feed(self, response: Message) -> Message | None:
        """Take the response to the latest request; the complete response, or None to continue."""
        if self._done:
            raise RuntimeError("the transfer is over")
        block = response.opt.block2
        if block is None or not response.code.is_successful():
            self._done = True
            return response
        if block.szx == 7 and not self._bert:
            raise ResponseRejected("Block2 with SZX 7 (BERT) on a transport without BERT")
        etag = response.opt.etag
        if self._first is not None and etag != self._etag:
            if self.restarts >= self._max_restarts:
                raise ResponseRejected("the representation changed during the block-wise transfer (ETag)")
            self.restarts += 1
            self._buffer.clear()
            self._first = None
            self._next = BlockValue(0, False, self._next.szx if self._next else block.szx)
            return None
        offset = len(self._buffer)
        if block.start != offset:
            raise ResponseRejected(f"asked for the block at byte {offset}, got one at byte {block.start}")
        asked = self._asked
        if asked is not None and block.szx > asked.szx and not (block.szx == 7 and asked.szx == 6):
            raise ResponseRejected(f"server raised the block size from SZX {asked.szx} to {block.szx}")
        payload = response.payload
        if block.szx == 7:
            if block.more and (not payload or len(payload) & 1023):
                raise ResponseRejected(
                    f"a non-final BERT block of {len(payload)} bytes (not a multiple of 1024)")
        elif len(payload) > block.size or (block.more and len(payload) != block.size):
            raise ResponseRejected(f"a block of {len(payload)} bytes; the block size is {block.size}")
        size2 = response.opt.size2
        if size2 is not None and size2 > self._max_body:
            raise ResponseRejected(f"response body of {size2} bytes exceeds the limit of {self._max_body}")
        if offset + len(payload) > self._max_body:
            raise ResponseRejected(f"response body exceeds the limit of {self._max_body} bytes")
        if self._first is None:
            self._first = response
            self._etag = etag
        self._buffer += payload
        if block.more:
            # The server's size, or ours if smaller: late negotiation (§2.4, §3.1).
            szx = block.szx if self._preferred is None else min(block.szx, self._preferred)
            num = len(self._buffer) >> (min(szx, 6) + 4)
            if num > _MAX_NUM:
                raise ResponseRejected("block number beyond 2**20 - 1")
            self._next = BlockValue(num, False, szx)
            return None
        self._done = True
        out = self._first.copy(payload=bytes(self._buffer))
        out.opt.remove(_BLOCK2)
        out.opt.remove(_SIZE2)
        out.opt.remove(_BLOCK1)  # the Block1 phase's acknowledgement, when it carried block 0 (§2.7)
        self._buffer = bytearray()
        return out


# --- client, Block1 ------------------------------------------------------------------------------------


class Block1Sender:
    """Sends a request body block by block (RFC 7959 §2.5, §2.9; RFC 9175 §3.4).

    Usage: send :meth:`first_request`; ``feed`` every response; it returns the next request to send, or
    None when the transfer is over, with the outcome in :attr:`final_response`. If that response carries
    Block2 with more to come (:attr:`needs_block2`), continue with
    ``Block2Assembler(sender.continuation_request(), ...)`` and feed it ``final_response`` first.

    Every block carries ``request_tag`` if one is given (RFC 9175 §3.4: the same value, or none, in every
    block of one operation). Policy, for the caller: a tag is only needed when another Block1 operation
    on the same resource (same :func:`blockwise_key`) may be in flight from this endpoint — otherwise the
    new operation would overwrite the server's state for the old one (RFC 7959 §2.5, RFC 9175 §3.5.2);
    RFC 9175 §3.4 asks for compact messages, i.e. no tag when none is needed. A runtime that does not track
    operations passes a fresh random tag for every transfer: always correct, for a few bytes per block.
    Size1 with the body's total size rides on block 0 (§4), so a server can refuse early with 4.13.

    Responses: 2.31 Continue acknowledges a block; its Block1 SZX, if smaller, is the server's preference
    and the following blocks use it, continuing from the same byte (late negotiation, §2.5). A success
    other than 2.31 whose Block1 has M set also continues (a server acting on blocks as they come, §2.3).
    4.13 with a Block1 of a smaller SZX restarts the body at that size (§2.5, §2.9.3). Anything else —
    success on the last block, 4.08, 4.13 without a smaller size, any error — ends the transfer.

    ``bert`` is the peer's Max-Message-Size when BERT is on for the connection (RFC 8323 §6); ``szx`` is
    then ignored and every block is SZX 7 with as many 1 KiB units as fit (:func:`bert_payload_size`),
    NUM advancing by the units sent (Figure 16 of RFC 8323). A server that acknowledges with SZX 0-6
    declines BERT: the body continues after the bytes acknowledged, at its size.
    """

    def __init__(self, request: Message, *, szx: int, request_tag: bytes | None, bert: int | None = None):
        if not 0 <= szx <= 6:
            raise ValueError(f"szx must be 0..6, got {szx}")
        if request_tag is not None and len(request_tag) > 8:
            raise ValueError("a Request-Tag is at most 8 bytes")
        self._request = request
        self._body = request.payload
        self._tag = request_tag
        self._bert = bert
        self._szx = szx if bert is None else 7
        self._sent = BlockValue(0, False, self._szx)
        self._sent_bytes = 0
        self.final_response: Message | None = None
        self.restarts = 0

    def _block_request(self, block: BlockValue) -> Message:
        out = self._request.copy(mid=None, payload=b"")
        out.opt.block1 = block  # the options as they will be, for the BERT size (M keeps the length)
        if block.num == 0:
            out.opt.size1 = len(self._body)
        else:
            out.opt.remove(_SIZE1)
        if self._tag is not None:
            out.opt.request_tags = (self._tag,)
        start = block.start
        if block.szx == 7:
            assert self._bert is not None
            end = start + bert_payload_size(out, self._bert)
        else:
            end = start + block.size
        out.payload = chunk = self._body[start:end]
        self._sent = BlockValue(block.num, end < len(self._body), block.szx)
        self._sent_bytes = len(chunk)
        if self._sent.more:
            out.opt.block1 = self._sent
        return out

    def first_request(self) -> Message:
        """Block 0 of the body, with Size1."""
        return self._block_request(BlockValue(0, False, self._szx))

    def feed(self, response: Message) -> Message | None:
        """Take the response to the latest block; the next request, or None when the transfer is over."""
        if self.final_response is not None:
            raise RuntimeError("the transfer is over")
        sent = self._sent
        code = response.code
        acked = response.opt.block1
        if code == Code.REQUEST_ENTITY_TOO_LARGE:
            if acked is not None and acked.szx < self._szx:
                self._szx = acked.szx
                self.restarts += 1
                return self.first_request()
            self.final_response = response
            return None
        carries_on = code == Code.CONTINUE or (
            code.is_successful() and acked is not None and acked.more and sent.more
        )
        if not carries_on:
            self.final_response = response
            return None
        if not sent.more:
            raise ResponseRejected("the server asked to continue after the last block")
        if acked is not None:
            if acked.szx == 7 and self._bert is None:
                raise ResponseRejected("Block1 with SZX 7 (BERT) on a transport without BERT")
            if acked.num != sent.num and acked.start != sent.start:
                raise ResponseRejected(f"the server acknowledged block {acked.num}, not {sent.num}")
            if acked.szx < self._szx:
                self._szx = acked.szx
        offset = sent.start + self._sent_bytes
        return self._block_request(BlockValue(offset >> (min(self._szx, 6) + 4), False, self._szx))

    @property
    def needs_block2(self) -> bool:
        """Whether :attr:`final_response` is block 0 of a larger response body (RFC 7959 §2.7)."""
        final = self.final_response
        if final is None or not final.code.is_successful():
            return False
        block = final.opt.block2
        return block is not None and block.more

    def continuation_request(self) -> Message:
        """The request to repeat for the Block2 phase of a Block1+Block2 operation.

        RFC 7959 §2.7: the client "leaves out the Block1 Options"; the body went in the Block1 phase, so it
        is left out too, as is Size1. RFC 9175 §3.4: the Block1 phase's Request-Tag stays, or the server
        would not recognise the operation.
        """
        out = self._request.copy(mid=None, payload=b"")
        out.opt.remove(_BLOCK1)
        out.opt.remove(_SIZE1)
        if self._tag is not None:
            out.opt.request_tags = (self._tag,)
        return out


# --- server, Block1 ------------------------------------------------------------------------------------


@attrs.frozen(slots=True)
class Continue:
    """A block was stored: send ``response`` (2.31 Continue with Block1 M=1, RFC 7959 §2.9.1)."""

    response: Message


@attrs.frozen(slots=True)
class Complete:
    """The last block arrived: ``request`` carries the whole body (Block1 and Size1 removed).

    Hand ``request`` to the resource, then pass its response through :meth:`acknowledge`, which adds the
    Block1 of the last block as RFC 7959 §2.3 and the examples of §3.2 show ("2.04 Changed, 1:2/0/128").
    """

    request: Message
    block1: BlockValue

    def acknowledge(self, response: Message) -> Message:
        out = response.copy()
        out.opt.block1 = BlockValue(self.block1.num, False, self.block1.szx)
        return out


@attrs.frozen(slots=True)
class ReassemblyStats:
    """A snapshot of a :class:`Block1Reassembler`'s state and counters."""

    transfers: int
    buffered_bytes: int
    cached_responses: int
    completed: int
    expired: int
    rejected: int


class _Transfer:
    __slots__ = ("body", "last", "remote", "response")

    def __init__(self, now: float, remote: Remote):
        self.body = bytearray()
        self.last = now
        self.remote = remote
        #: For a finished Block1 operation whose response needs Block2: the full response.
        self.response: Message | None = None


class Block1Reassembler:
    """Joins Block1 request bodies on the server (RFC 7959 §2.5, §2.9; RFC 9175 §3.3), bounded in memory.

    Transfers are keyed by :func:`blockwise_key`, so operations that differ in Request-Tag (or any other
    cache-key option) stay apart. Block 0 starts a transfer, replacing one with the same key (§2.5: a new
    sequence "simply overwrites the context"). Each later block must start where the body so far ends;
    a block already received with identical bytes is acknowledged again, so a client's retry is harmless.

    :meth:`feed` returns :class:`Continue` or :class:`Complete`, or raises (the error's ``options`` give the
    extra response options):

    * :class:`RequestEntityIncomplete` (4.08) — no transfer for this key (never started, expired, or
      replaced), or a block that does not follow the ones received (§2.5 allows 4.08 for any block out of
      sequence). The transfer is kept, so a client that resends the right block can go on.
    * :class:`RequestEntityTooLarge` (4.13) with Size1 = ``max_body`` — Size1 or the body exceeds
      ``max_body``; also, without Size1 hint, when storing the block would exceed ``max_total`` (§2.5: 4.13
      "can be returned at any time by a server that does not currently have the resources to store blocks").
      The transfer is dropped.
    * :class:`ServiceUnavailable` (5.03) with Max-Age — ``max_transfers`` are in progress, or
      ``max_per_peer`` of this client's (so that one client cannot take every slot for a lifetime);
      RFC 9175 §3.3 suggests exactly this, with Max-Age saying when the oldest transfer expires.
    * :class:`BadRequest` (4.00) — SZX 7 without ``bert``, or a non-final block that is not exactly one
      block long (with BERT: not a non-zero multiple of 1024 bytes).

    ``feed(..., bert=True)`` for a request from a connection with BERT on (RFC 8323 §6): an SZX 7 block
    starts at NUM·1024 and is acknowledged with SZX 7 and its own NUM (Figure 16 of RFC 8323), unless
    ``max_szx`` asks the client for smaller blocks.

    Idle transfers expire after ``lifetime`` (RFC 7959 §2.5 lets a server discard a partial body after
    EXCHANGE_LIFETIME; a shorter lifetime is allowed). Expiry is lazy, on every call, from the front of an
    OrderedDict ordered by last activity: O(1) amortised. ``max_total`` bounds the bytes of all partial
    bodies and cached responses together.

    For a Block1+Block2 operation (RFC 7959 §2.7) the response cannot be rendered again for each block
    (the body is gone, and POST is not idempotent): :meth:`remember_response` keeps it under the
    operation's key and :meth:`cached_response` finds it for the following Block2 requests.
    """

    def __init__(
        self,
        *,
        max_body: int,
        max_total: int,
        max_transfers: int,
        lifetime: float,
        max_per_peer: int | None = None,
        max_szx: int = 6,
    ):
        if not 0 <= max_szx <= 6:
            raise ValueError(f"max_szx must be 0..6, got {max_szx}")
        self.max_body = max_body
        self.max_total = max_total
        self.max_transfers = max_transfers
        self.max_per_peer = max_transfers if max_per_peer is None else max_per_peer
        self._per_peer: dict[Remote, int] = {}
        self.lifetime = lifetime
        self.max_szx = max_szx
        self._transfers: OrderedDict[Hashable, _Transfer] = OrderedDict()
        self._bytes = 0
        self._completed = 0
        self._expired = 0
        self._rejected = 0

    # --- bookkeeping ---

    @property
    def stats(self) -> ReassemblyStats:
        cached = sum(1 for t in self._transfers.values() if t.response is not None)
        return ReassemblyStats(
            transfers=len(self._transfers) - cached,
            buffered_bytes=self._bytes,
            cached_responses=cached,
            completed=self._completed,
            expired=self._expired,
            rejected=self._rejected,
        )

    def __bool__(self) -> bool:
        """Whether any transfer or cached response is held (and may need expiring)."""
        return bool(self._transfers)

    def expire(self, now: float) -> None:
        """Drop every transfer idle for ``lifetime`` or longer (also done by every other call)."""
        transfers = self._transfers
        deadline = now - self.lifetime
        while transfers:
            key, oldest = next(iter(transfers.items()))
            if oldest.last > deadline:
                break
            del transfers[key]
            self._bytes -= _size(oldest)
            self._uncount(oldest)
            self._expired += 1

    def _drop(self, key: Hashable) -> None:
        old = self._transfers.pop(key, None)
        if old is not None:
            self._bytes -= _size(old)
            self._uncount(old)

    def _add(self, key: Hashable, transfer: _Transfer) -> None:
        self._transfers[key] = transfer
        self._per_peer[transfer.remote] = self._per_peer.get(transfer.remote, 0) + 1

    def _uncount(self, transfer: _Transfer) -> None:
        left = self._per_peer[transfer.remote] - 1
        if left:
            self._per_peer[transfer.remote] = left
        else:
            del self._per_peer[transfer.remote]

    def _reject(self, exc: RenderableError, key: Hashable | None = None) -> RenderableError:
        if key is not None:
            self._drop(key)
        self._rejected += 1
        return exc

    def next_deadline(self) -> float | None:
        """When the oldest transfer expires (for a runtime that wants to free memory eagerly)."""
        for t in self._transfers.values():
            return t.last + self.lifetime
        return None

    # --- the state machine ---

    def feed(self, request: Message, now: float, *, bert: bool = False) -> Continue | Complete:
        """Take a request carrying Block1; see the class docstring for the outcomes."""
        block = request.opt.block1
        if block is None:
            raise ValueError("feed() takes requests that carry Block1")
        self.expire(now)
        payload = request.payload
        if block.szx == 7:
            if not bert:
                self._rejected += 1
                _check_szx(block, "Block1")
            if block.more and (not payload or len(payload) & 1023):
                raise self._reject(
                    BadRequest(f"a non-final BERT block of {len(payload)} bytes (not a multiple of 1024)"))
        elif len(payload) > block.size or (block.more and len(payload) != block.size):
            raise self._reject(BadRequest(f"block of {len(payload)} bytes; the block size is {block.size}"))
        key = blockwise_key(request)
        size1 = request.opt.size1
        if (size1 is not None and size1 > self.max_body) or block.start + len(payload) > self.max_body:
            raise self._reject(self._too_large(), key)
        transfers = self._transfers
        if block.num == 0:
            self._drop(key)
            if not block.more:
                self._completed += 1
                return self._complete(request, block, payload)
            mine = self._per_peer.get(request.remote, 0)
            if len(transfers) >= self.max_transfers or mine >= self.max_per_peer:
                self._rejected += 1
                if mine >= self.max_per_peer:  # the oldest of this peer's own transfers frees a slot
                    oldest = min(t.last for t in transfers.values() if t.remote == request.remote)
                else:
                    oldest = transfers[next(iter(transfers))].last
                retry = max(1, math.ceil(oldest + self.lifetime - now))
                raise ServiceUnavailable(
                    "too many block-wise transfers in progress", options=[(OptionNumber.MAX_AGE, retry)]
                )
            transfer = _Transfer(now, request.remote)
            self._add(key, transfer)
        else:
            found = transfers.get(key)
            if found is None or found.response is not None:
                raise self._reject(RequestEntityIncomplete("no block-wise transfer in progress"))
            transfer = found
            have = len(transfer.body)
            if block.start != have:
                end = block.start + len(payload)
                if block.more and end <= have and transfer.body[block.start : end] == payload:
                    transfer.last = now
                    transfers.move_to_end(key)
                    return self._continue(block)
                raise self._reject(
                    RequestEntityIncomplete(f"expected the block at byte {have}, got byte {block.start}")
                )
            transfer.last = now
            transfers.move_to_end(key)
        if self._bytes + len(payload) > self.max_total:
            raise self._reject(self._too_large(), key)
        transfer.body += payload
        self._bytes += len(payload)
        if block.more:
            return self._continue(block)
        body = bytes(transfer.body)
        self._drop(key)
        self._completed += 1
        return self._complete(request, block, body)

    def _too_large(self) -> RenderableError:
        return RequestEntityTooLarge(
            f"request body limited to {self.max_body} bytes", options=[(OptionNumber.SIZE1, self.max_body)]
        )

    def _continue(self, block: BlockValue) -> Continue:
        # Echo the block received; a smaller SZX is our preference for the following blocks (§2.5). The
        # number stays the client's, as in RFC 7959 §3.2's late-negotiation PUT ("1:0/1/128" is answered
        # "2.31 Continue, 1:0/1/32" and the client goes on with 1:4/1/32).
        # A BERT block is acknowledged as BERT when we take 1 KiB blocks (SZX 7 is SZX 6 plus BERT).
        szx = 7 if block.szx == 7 and self.max_szx == 6 else min(block.szx, self.max_szx)
        ack = BlockValue(block.num, True, szx)
        return Continue(Message(code=Code.CONTINUE, opt=Options([(_BLOCK1, ack.encode())])))

    @staticmethod
    def _complete(request: Message, block: BlockValue, body: bytes) -> Complete:
        full = request.copy(payload=body)
        full.opt.remove(_BLOCK1)
        full.opt.remove(_SIZE1)
        return Complete(full, block)

    # --- Block1 + Block2 (RFC 7959 §2.7) ---

    def remember_response(self, request: Message, response: Message, now: float) -> bool:
        """Keep the full ``response`` to the assembled ``request`` for its Block2 phase.

        Returns False, keeping nothing, when it would exceed ``max_total`` or ``max_transfers``; the
        runtime then has no way to serve the later blocks but a 4.08 (see :meth:`cached_response`).
        """
        self.expire(now)
        key = blockwise_key(request)
        self._drop(key)
        size = len(response.payload)
        if self._bytes + size > self.max_total or len(self._transfers) >= self.max_transfers:
            return False
        entry = _Transfer(now, request.remote)
        entry.response = response
        self._add(key, entry)
        self._bytes += size
        return True

    def cached_response(self, request: Message, now: float) -> Message | None:
        """The full response kept for this Block2 request's operation, or None.

        Only requests with Block2 and without Block1 can match. A hit refreshes the entry; the response to
        the last block should be followed by :meth:`forget_response`. A non-safe request (POST, ...)
        with Block2 num > 0 that finds nothing must not be rendered again; answer 4.08.
        """
        if not self._transfers or _BLOCK1 in request.opt or _BLOCK2 not in request.opt:
            return None
        self.expire(now)
        key = blockwise_key(request)
        entry = self._transfers.get(key)
        if entry is None or entry.response is None:
            return None
        entry.last = now
        self._transfers.move_to_end(key)
        return entry.response

    def forget_response(self, request: Message) -> None:
        """Drop the response kept for ``request``'s operation (after its last block went out)."""
        key = blockwise_key(request)
        entry = self._transfers.get(key)
        if entry is not None and entry.response is not None:
            self._drop(key)


def _size(transfer: _Transfer) -> int:
    return len(transfer.body) if transfer.response is None else len(transfer.response.payload)
