"""The OSCORE security context (RFC 8613 §3): key derivation, nonces, sequence numbers, replay window.

A context is derived once from the Master Secret and Salt, the Sender and Recipient IDs and the optional
ID Context (§3.2.1, HKDF with the CBOR ``info`` array). Its mutable parts are the Sender Sequence Number,
taken from a :class:`SequenceNumbers` source (in memory, or a file that survives restarts), and the
Recipient's replay window.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..security import Security
from . import _cbor
from .algorithms import AeadAlgorithm, algorithm, hkdf
from .errors import ContextExhausted
from .option import MAX_PARTIAL_IV
from .replay import DEFAULT_WINDOW, ReplayWindow

__all__ = ["InMemorySequence", "SecurityContext", "SequenceNumbers"]


class SequenceNumbers(Protocol):
    """Where a context takes its Sender Sequence Numbers from.

    ``take()`` returns a number never returned before — including before a restart, for a persistent
    source — and raises :class:`ContextExhausted` past 2**40 - 1. ``close()`` is told the replay window so
    that a clean shutdown can keep it.
    """

    def take(self) -> int: ...

    def close(self, window: ReplayWindow | None = None) -> None: ...


class InMemorySequence:
    """Sequence numbers for a context used once: safe only if the context is never derived again."""

    __slots__ = ("next",)

    def __init__(self, start: int = 0):
        self.next = start

    def take(self) -> int:
        number = self.next
        if number > MAX_PARTIAL_IV:
            raise ContextExhausted("all 2**40 sender sequence numbers of this context are used")
        self.next = number + 1
        return number

    def close(self, window: ReplayWindow | None = None) -> None:
        pass


class SecurityContext:
    """One OSCORE security context between this endpoint and one peer.

    ``algorithm`` is a COSE name or number (default AES-CCM-16-64-128, the mandatory one); ``kdf_hash``
    one of sha256/sha384/sha512. ``sequence`` defaults to an in-memory count from 0; pass a
    :class:`~coapio.protocol.oscore.persistence.SequenceFile` so that a restart never reuses a number.
    ``replay_window_initialized=False`` starts a server in the Appendix B.1.2 state.
    """

    def __init__(
        self,
        *,
        master_secret: bytes,
        sender_id: bytes,
        recipient_id: bytes,
        master_salt: bytes = b"",
        id_context: bytes | None = None,
        algorithm: str | int | AeadAlgorithm = "AES-CCM-16-64-128",
        kdf_hash: str = "sha256",
        replay_window: int | ReplayWindow = DEFAULT_WINDOW,
        replay_window_initialized: bool = True,
        sequence: SequenceNumbers | None = None,
        name: str | None = None,
    ):
        alg = _algorithm(algorithm)
        limit = alg.nonce_length - 6
        for label, ident in (("sender", sender_id), ("recipient", recipient_id)):
            if len(ident) > limit:
                raise ValueError(f"{label} ID of {len(ident)} bytes; {alg.name} allows at most {limit}")
        self.algorithm = alg
        self.kdf_hash = kdf_hash
        self.sender_id = bytes(sender_id)
        self.recipient_id = bytes(recipient_id)
        self.id_context = None if id_context is None else bytes(id_context)
        #: A label for logs and for resources asking who authenticated a request (e.g. a credentials key).
        self.name = name
        self.sender_key = self._derive(master_salt, master_secret, self.sender_id, "Key", alg.key_length)
        self.recipient_key = self._derive(
            master_salt, master_secret, self.recipient_id, "Key", alg.key_length
        )
        self.common_iv = self._derive(master_salt, master_secret, b"", "IV", alg.nonce_length)
        self._sender_cipher = alg.cipher(self.sender_key)
        self._recipient_cipher = alg.cipher(self.recipient_key)
        # Encryption with the two keys, used by protection.py: bound once (two calls a message).
        #: ``_seal(nonce, plaintext, aad)``: the ciphertext with its tag.
        self._seal: Callable[[bytes, bytes, bytes], bytes] = self._sender_cipher.encrypt_function
        #: ``_open(nonce, ciphertext, aad)``: the plaintext, or None when it does not verify.
        self._open: Callable[[bytes, bytes, bytes], bytes | None] = self._recipient_cipher.decrypt
        if isinstance(replay_window, ReplayWindow):
            self.replay_window = replay_window
        else:
            self.replay_window = ReplayWindow(replay_window, initialized=replay_window_initialized)
        self.sequence: SequenceNumbers = sequence if sequence is not None else InMemorySequence()
        # The external AAD's fixed start: [oscore_version 1, [alg_aead], ... (§5.4).
        self._aad_head = b"\x85\x01" + _cbor.dumps([alg.number])
        # Per-exchange work cached by what it depends on (two IDs, five Partial IV lengths): both are
        # computed twice per exchange, and only the Partial IV varies.
        self._nonce_bases: dict[bytes, int] = {}
        self._aad_prefixes: dict[tuple[bytes, int], bytes] = {}
        self._security: Security | None = None

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return (
            f"<SecurityContext{label} sender={self.sender_id.hex() or '-'} "
            f"recipient={self.recipient_id.hex() or '-'} {self.algorithm.name}>"
        )

    # --- derivation (§3.2) ----------------------------------------------------------------------------

    def info(self, ident: bytes, kind: str, length: int) -> bytes:
        """The CBOR ``info`` array of §3.2.1: [id, id_context, alg_aead, type, L]."""
        return _cbor.dumps([ident, self.id_context, self.algorithm.number, kind, length])

    def _derive(self, salt: bytes, secret: bytes, ident: bytes, kind: str, length: int) -> bytes:
        return hkdf(self.kdf_hash, salt, secret, self.info(ident, kind, length), length)

    @property
    def identity(self) -> str:
        """How resources see this context (``Message.security.identity``): its credentials key
        (``":client1"``, ``"coap://host/*"``) when it came from a credentials file, else its Recipient ID
        in hex."""
        return self.name if self.name else self.recipient_id.hex()

    # --- nonces (§5.2) --------------------------------------------------------------------------------

    def nonce(self, id_piv: bytes, partial_iv: bytes) -> bytes:
        """The AEAD nonce: length of ID_PIV, padded ID_PIV, padded Partial IV, XOR the Common IV."""
        n = self.algorithm.nonce_length
        base = self._nonce_bases.get(id_piv)
        if base is None:
            if len(id_piv) > n - 6:
                raise ValueError(f"an ID of {len(id_piv)} bytes does not fit the nonce")
            # Everything but the Partial IV (its 5 bytes are zero here), already XORed with the Common IV.
            parts = bytes((len(id_piv),)) + id_piv.rjust(n - 6, b"\0") + bytes(5)
            base = int.from_bytes(parts, "big") ^ int.from_bytes(self.common_iv, "big")
            if len(self._nonce_bases) < 16:  # the context's own two IDs, in practice
                self._nonce_bases[id_piv] = base
        return (base ^ int.from_bytes(partial_iv, "big")).to_bytes(n, "big")

    # --- the mutable parts ----------------------------------------------------------------------------

    def next_sequence_number(self) -> int:
        """A Sender Sequence Number never used before with this context's keys."""
        return self.sequence.take()

    @property
    def replay_window_initialized(self) -> bool:
        """False after a restart that lost the window, until an Echo round trip (Appendix B.1.2)."""
        return self.replay_window.initialized

    def initialize_replay_window(self, protector: object) -> None:
        """Accept the request behind ``protector`` as fresh and restart the replay window at it (B.1.2).

        Call this only when the request carried an Echo value this server issued recently, i.e. the
        runtime has proved it fresh; the protector may then reuse the request's nonce again.
        """
        from .protection import ResponseProtector

        if not isinstance(protector, ResponseProtector) or protector.context is not self:
            raise ValueError("the protector of a request unprotected with this context is needed")
        self.replay_window.initialize_from_fresh(protector.sequence_number)
        protector._can_reuse_nonce = True

    def close(self) -> None:
        """Hand the final state to the sequence store (a file source then records the exact position)."""
        self.sequence.close(self.replay_window)

    def external_aad(self, request_kid: bytes, request_piv: bytes) -> bytes:
        """The COSE Enc_structure with the external AAD of §5.4 (no Class I options are defined)."""
        # Written out rather than through _cbor.dumps: this runs twice per exchange and the shape is fixed;
        # all but the Partial IV is cached per kid and Partial IV length.
        key = (request_kid, len(request_piv))
        prefix = self._aad_prefixes.get(key)
        if prefix is None:
            head = _cbor.head
            inner = self._aad_head + head(2, len(request_kid)) + request_kid + head(2, len(request_piv))
            prefix = _ENCRYPT0 + head(2, len(inner) + len(request_piv) + 1) + inner
            if len(self._aad_prefixes) < 64:
                self._aad_prefixes[key] = prefix
        return prefix + request_piv + b"\x40"

    @property
    def security(self) -> Security:
        """What a message verified with this context says of its sender (``Message.security``)."""
        security = self._security
        if security is None:
            security = self._security = Security("oscore", self.identity, self)
        return security


#: ["Encrypt0", h'', ...: the start of every COSE Enc_structure OSCORE makes (empty protected header).
_ENCRYPT0 = b"\x83\x68Encrypt0\x40"


def _algorithm(value: str | int | AeadAlgorithm) -> AeadAlgorithm:
    return algorithm(value)
