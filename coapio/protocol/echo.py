"""Echo (RFC 9175 §2) for a server, sans-IO: freshness proofs and amplification mitigation.

An Echo value is ``timestamp (4 bytes) || HMAC-SHA256(secret, timestamp || peer address)[:8]``: the server
keeps no state per challenge, a value is only good for the peer it was made for (so an attacker cannot
fetch one and replay it from a spoofed address), and its age is known when it comes back. A peer that
returns a valid value is *verified* for a while: it has shown that it receives what is sent to its
address, so larger responses to it are no amplification risk (§2.4).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections import OrderedDict

from .codes import Code
from .message import Message, Remote
from .observe import OBSERVE_REGISTER

__all__ = ["AMPLIFICATION_FACTOR", "EchoGuard"]

#: RFC 9175 §2.4: to an unverified address, no more than three times the request's size.
AMPLIFICATION_FACTOR = 3

_STAMP = struct.Struct("!I")


class EchoGuard:
    """Makes and checks Echo values and remembers verified peers (bounded, oldest forgotten first).

    ``freshness`` is how old an Echo value may be to count as proof of a fresh request; ``verified_for``
    how long a peer that returned one stays verified for amplification purposes.
    """

    def __init__(self, *, freshness: float = 10.0, verified_for: float = 300.0, max_verified: int = 10_000,
                 secret: bytes | None = None):
        self.freshness = freshness
        self.verified_for = verified_for
        self.max_verified = max_verified
        self._secret = secret or os.urandom(32)
        self._verified: OrderedDict[Remote, float] = OrderedDict()

    def _mac(self, stamp: bytes, remote: Remote) -> bytes:
        return hmac.new(self._secret, stamp + repr(remote).encode(), hashlib.sha256).digest()[:8]

    def make(self, remote: Remote, now: float) -> bytes:
        """A new Echo value for ``remote``."""
        stamp = _STAMP.pack(int(now) & 0xFFFFFFFF)
        return stamp + self._mac(stamp, remote)

    def age(self, request: Message, now: float) -> float | None:
        """How old the request's Echo value is, or None when it has none or it is not ours for this peer."""
        value = request.opt.echo
        if value is None or len(value) != 12:
            return None
        stamp = value[:4]
        if not hmac.compare_digest(value[4:], self._mac(stamp, request.remote)):
            return None
        age = (int(now) - _STAMP.unpack(stamp)[0]) & 0xFFFFFFFF
        return float(age)

    def is_fresh(self, request: Message, now: float) -> bool:
        """Whether the request proves it was sent after a recent challenge (§2.3); verifies the peer."""
        age = self.age(request, now)
        if age is None or age > self.freshness:
            return False
        self._mark_verified(request.remote, now)
        return True

    def _mark_verified(self, remote: Remote, now: float) -> None:
        verified = self._verified
        verified[remote] = now + self.verified_for
        verified.move_to_end(remote)
        while len(verified) > self.max_verified:
            verified.popitem(last=False)

    def address_verified(self, remote: Remote, now: float) -> bool:
        """Whether ``remote`` was verified within ``verified_for`` (without looking at any request)."""
        expires = self._verified.get(remote)
        return expires is not None and expires > now

    def is_verified(self, request: Message, now: float) -> bool:
        """Whether the peer has shown it receives at its address (a valid Echo now or recently)."""
        expires = self._verified.get(request.remote)
        if expires is not None and expires > now:
            return True
        age = self.age(request, now)
        if age is not None and age <= self.verified_for:
            self._mark_verified(request.remote, now)
            return True
        return False

    def amplification_risk(self, request: Message, response: Message, now: float) -> bool:
        """True when ``response`` may not go to the request's source address yet (§2.4).

        That is when it exceeds three times the request (counting the request's token, which the
        response will carry) or registers an observation (notifications follow without further requests),
        and the peer is not verified; a valid Echo value in ``request`` verifies it now.
        """
        registers = request.opt.observe == OBSERVE_REGISTER and response.code.is_successful()
        if not registers:
            size = response.wire_size + (len(request.token) if not response.token else 0)
            if size <= AMPLIFICATION_FACTOR * request.wire_size:
                return False
        return not self.is_verified(request, now)

    def challenge(self, request: Message, now: float) -> Message:
        """The 4.01 Unauthorized response carrying a fresh Echo value (§2.2.1).

        It has no diagnostic payload: it must itself fit the allowance it enforces, even for the smallest
        requests (a challenge is about 20 bytes).
        """
        response = Message(code=Code.UNAUTHORIZED)
        response.opt.echo = self.make(request.remote, now)
        return response

    def amplification_challenge(self, request: Message, now: float) -> Message:
        """:meth:`challenge`, or a bare 4.01 for a request too small for even that to fit the allowance."""
        response = self.challenge(request, now)
        if response.wire_size + len(request.token) > AMPLIFICATION_FACTOR * request.wire_size:
            return Message(code=Code.UNAUTHORIZED)
        return response
