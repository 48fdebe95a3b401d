"""`did:key` identifiers for Ed25519 keys, and the signatures made with them.

A did:key DID is `did:key:` + multibase base58btc (`z` prefix) of the multicodec `ed25519-pub`
varint prefix (0xed 0x01) followed by the 32-byte raw public key, so every Ed25519 DID starts with
`did:key:z6Mk`. The DID *is* the public key: a signature can be checked from the DID alone.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

DID_KEY_PREFIX = "did:key:"
ED25519_PUB = b"\xed\x01"
"""The multicodec `ed25519-pub` code 0xed as an unsigned varint."""
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}


def b58encode(data: bytes) -> str:
    """Base58 (Bitcoin alphabet): leading zero bytes become leading '1's."""
    zeros = len(data) - len(data.lstrip(b"\0"))
    number = int.from_bytes(data, "big")
    chars = []
    while number:
        number, rest = divmod(number, 58)
        chars.append(_B58[rest])
    return "1" * zeros + "".join(reversed(chars))


def b58decode(text: str) -> bytes:
    """Inverse of `b58encode`; ValueError on a character outside the alphabet."""
    number = 0
    for char in text:
        if char not in _B58_INDEX:
            raise ValueError(f"not base58: {char!r}")
        number = number * 58 + _B58_INDEX[char]
    zeros = len(text) - len(text.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    return b"\0" * zeros + body


def did_from_public_key(public_key: bytes) -> str:
    """`did:key:z6Mk…` of a 32-byte raw Ed25519 public key."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key has 32 bytes")
    return DID_KEY_PREFIX + "z" + b58encode(ED25519_PUB + public_key)


def public_key_from_did(did: str) -> bytes:
    """The raw public key inside an Ed25519 did:key; ValueError for anything else."""
    if not did.startswith(DID_KEY_PREFIX + "z"):
        raise ValueError("not a base58btc did:key")
    decoded = b58decode(did.removeprefix(DID_KEY_PREFIX + "z"))
    if not decoded.startswith(ED25519_PUB) or len(decoded) != 34:
        raise ValueError("not an Ed25519 did:key")
    return decoded[2:]


def is_did(value: str) -> bool:
    try:
        public_key_from_did(value)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class KeyPair:
    """An agent's identity: the DID and the raw 32-byte private key (seed) behind it."""

    did: str
    private_key: bytes = field(repr=False)
    public_key: bytes
    _signer: Ed25519PrivateKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Loaded once: rebuilding it from the raw seed for every signature was half of a signature's cost.
        object.__setattr__(self, "_signer", Ed25519PrivateKey.from_private_bytes(self.private_key))

    @classmethod
    def generate(cls) -> KeyPair:
        return cls.from_private_key(
            Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        )

    @classmethod
    def from_private_key(cls, private_key: bytes) -> KeyPair:
        """The pair of a raw 32-byte private key (the RFC 8032 seed)."""
        key = Ed25519PrivateKey.from_private_bytes(private_key)
        public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return cls(did=did_from_public_key(public), private_key=private_key, public_key=public)

    def sign(self, data: bytes) -> str:
        """An Ed25519 signature of `data`, base64url without padding."""
        signature = self._signer.sign(data)
        return base64.urlsafe_b64encode(signature).rstrip(b"=").decode()


def verify(did: str, data: bytes, signature: str) -> bool:
    """Whether `signature` (base64url) is the DID's key's signature of `data`."""
    try:
        raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
        Ed25519PublicKey.from_public_bytes(public_key_from_did(did)).verify(raw, data)
    except (ValueError, InvalidSignature):
        return False
    return True
