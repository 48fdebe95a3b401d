"""Organisations and API keys: creation, hashing, authentication, first-start bootstrap."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from chambers.core.clock import utcnow
from chambers.core.errors import Conflict, Forbidden, InvalidRequest, NotFound, Unauthorized
from chambers.core.ids import new_id
from chambers.core.models import SCOPES, ApiKey, Org, Principal
from chambers.core.ports import Store

KEY_PREFIX = "chk_"


def hash_key(token: str) -> str:
    """SHA-256 of a key. Keys carry 256 random bits, so a fast hash is enough (and keeps auth cheap)."""
    return hashlib.sha256(token.encode()).hexdigest()


def parse_scopes(value: str | Iterable[str]) -> frozenset[str]:
    """`agent:read,agent:write` -> a validated set."""
    items = [s.strip() for s in (value.split(",") if isinstance(value, str) else value) if s.strip()]
    unknown = [s for s in items if s not in SCOPES]
    if unknown or not items:
        raise InvalidRequest(
            f"scopes must be a non-empty list of {', '.join(SCOPES)}; got {', '.join(unknown)}"
        )
    return frozenset(items)


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A key as created: the secret is shown this once and never stored."""

    key: ApiKey
    secret: str


class KeyService:
    """Creates organisations and keys and turns bearer tokens into Principals."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def create_org(self, name: str) -> Org:
        name = name.strip()
        if not name or len(name) > 200:
            raise InvalidRequest("organisation name must be 1 to 200 characters")
        if await self.store.get_org_by_name(name) is not None:
            raise Conflict(f"organisation {name!r} already exists")
        return await self.store.create_org(Org(id=new_id("org"), name=name, created_at=utcnow()))

    async def org_named(self, name: str) -> Org:
        org = await self.store.get_org_by_name(name)
        if org is None:
            raise NotFound(f"organisation {name!r} not found")
        return org

    async def create_key(self, org_id: str, scopes: frozenset[str], name: str = "") -> IssuedKey:
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            id=new_id("key"),
            org_id=org_id,
            name=name or "key",
            prefix=secret[: len(KEY_PREFIX) + 6],
            scopes=scopes,
            created_at=utcnow(),
        )
        await self.store.create_api_key(key, hash_key(secret))
        return IssuedKey(key=key, secret=secret)

    async def revoke(self, key_id: str) -> None:
        if not await self.store.revoke_api_key(key_id, utcnow()):
            raise NotFound(f"no active key with id {key_id}")

    async def authenticate(self, token: str) -> Principal:
        """The Principal behind a bearer token, or Unauthorized."""
        key = await self.store.find_api_key(hash_key(token)) if token.startswith(KEY_PREFIX) else None
        if key is None or key.revoked_at is not None:
            raise Unauthorized("Invalid or revoked API key")
        return Principal(org_id=key.org_id, subject_id=key.id, kind="api_key", scopes=key.scopes)

    async def bootstrap(self) -> IssuedKey | None:
        """On an empty store: organisation `default` and an admin key (returned once, to print)."""
        if await self.store.list_orgs():
            return None
        try:
            org = await self.create_org("default")
        except Conflict:  # replicas starting together on a fresh database: the first one made it
            return None
        return await self.create_key(org.id, frozenset({"admin", "agent:read", "agent:write"}), name="admin")


def require_scope(principal: Principal, scope: str) -> None:
    """Forbidden unless the caller holds `scope`."""
    if not principal.has(scope):
        raise Forbidden(f"This API key lacks the '{scope}' scope")
