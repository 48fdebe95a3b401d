"""Standard Webhooks signing, subscription secrets, and their encryption at rest.

Secrets are `whsec_<base64 of 32 random bytes>`, the Standard Webhooks form. The store keeps them
encrypted with Fernet (`enc:v1:<token>`) under the server's secret key: `CHAMBERS_SECRET_KEY` when set
(required when several processes share one database, so they all read the same secrets), otherwise a
key generated once in `<data_dir>/secret.key` with mode 0600.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from math import floor
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"  # noqa: S105 (the Standard Webhooks prefix, not a secret)
SECRET_BYTES = 32
_ENCRYPTED = "enc:v1:"
USER_AGENT = "Chambers-Webhooks/0.1"


def new_secret() -> str:
    """A fresh signing secret in the Standard Webhooks form."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def encode_body(payload: dict[str, Any]) -> str:
    """The exact JSON text that is signed and sent."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Signed:
    headers: dict[str, str]
    body: bytes


def sign(secret: str, msg_id: str, body: str, at: datetime | None = None) -> Signed:
    """Headers of one delivery attempt: `webhook-id`, `webhook-timestamp`, `webhook-signature`, ..."""
    moment = at or datetime.now(UTC)
    signature: str = Webhook(secret).sign(msg_id, moment, body)
    return Signed(
        headers={
            "webhook-id": msg_id,
            "webhook-timestamp": str(floor(moment.timestamp())),
            "webhook-signature": signature,
            "content-type": "application/json",
            "user-agent": USER_AGENT,
        },
        body=body.encode(),
    )


class SecretBox:
    """Encrypts subscription secrets for the store and decrypts them for signing."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ValueError("at least one key is required")
        self._fernet = MultiFernet([Fernet(k) for k in keys])

    @classmethod
    def from_settings(cls, configured: str | None, data_dir: Path) -> SecretBox:
        """Keys from `CHAMBERS_SECRET_KEY` (comma-separated; the first encrypts) or the key file."""
        if configured and configured.strip():
            return cls([_fernet_key(part.strip()) for part in configured.split(",") if part.strip()])
        return cls([_key_file(data_dir / "secret.key")])

    def seal(self, secret: str) -> str:
        return _ENCRYPTED + self._fernet.encrypt(secret.encode()).decode()

    def open(self, stored: str) -> str:
        """The plain secret; values stored unencrypted (`whsec_...`) are read as they are."""
        if not stored.startswith(_ENCRYPTED):
            return stored
        try:
            return self._fernet.decrypt(stored.removeprefix(_ENCRYPTED).encode()).decode()
        except InvalidToken:
            raise SecretUnreadable(
                "a webhook secret cannot be decrypted: was CHAMBERS_SECRET_KEY or secret.key changed?"
            ) from None


class SecretUnreadable(Exception):
    """A stored secret was encrypted under a key this process does not have."""


def _fernet_key(value: str) -> bytes:
    """A Fernet key as given, or one derived from any other string (use a long random value)."""
    try:
        if len(base64.urlsafe_b64decode(value.encode())) == 32:
            return value.encode()
    except (ValueError, TypeError):
        pass
    return base64.urlsafe_b64encode(hashlib.sha256(value.encode()).digest())


def _key_file(path: Path) -> bytes:
    """Read the key file, creating it when missing (mode 0600; linked into place whole, so two
    processes starting together agree on one key and never read a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(Fernet.generate_key() + b"\n")
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink(missing_ok=True)
    key = path.read_bytes().strip()
    if not key:
        raise RuntimeError(f"{path} is empty")
    return key
