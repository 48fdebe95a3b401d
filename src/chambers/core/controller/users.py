"""Users and sign-in: argon2id password hashes, and browser sessions behind a random cookie token.

Only the SHA-256 of a sign-in token is stored, with its expiry; signing out deletes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from chambers.core.clock import utcnow
from chambers.core.controller.access import require_admin
from chambers.core.controller.models import ROLES, Login, Role, User
from chambers.core.controller.ports import ControllerStore
from chambers.core.errors import InvalidRequest, NotFound, Unauthorized
from chambers.core.ids import new_id
from chambers.core.models import Principal

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024


def token_hash(token: str) -> str:
    """Sign-in tokens carry 256 random bits, so a fast hash is enough."""
    return hashlib.sha256(token.encode()).hexdigest()


class Passwords:
    """argon2id with argon2-cffi's defaults, run off the event loop (it is deliberately slow)."""

    def __init__(self) -> None:
        self.hasher = PasswordHasher()
        self._decoy: str | None = None

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self.hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        """Whether `password` matches; with no stored hash, spends the same time and says no."""
        if stored is None:
            if self._decoy is None:
                self._decoy = await self.hash(secrets.token_urlsafe(16))
            stored, password = self._decoy, password + "\0"
        try:
            return await asyncio.to_thread(self.hasher.verify, stored, password)
        except (VerificationError, InvalidHashError):
            return False


@dataclass(frozen=True, slots=True)
class SignedIn:
    user: User
    token: str
    login: Login


def check_email(email: str) -> str:
    email = email.strip().lower()
    if len(email) > 320 or not _EMAIL.match(email):
        raise InvalidRequest("email: must be an email address")
    return email


def check_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidRequest(f"password: must be {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password


def check_role(role: str) -> Role:
    for known in ROLES:
        if role == known:
            return known
    raise InvalidRequest(f"role: must be one of {', '.join(ROLES)}")


class UserService:
    def __init__(self, store: ControllerStore, login_ttl_s: int, passwords: Passwords | None = None) -> None:
        self.store = store
        self.login_ttl = timedelta(seconds=login_ttl_s)
        self.passwords = passwords or Passwords()

    async def create(
        self, principal: Principal, *, email: str, password: str, role: str, name: str | None = None
    ) -> User:
        """An admin adds a user to their organisation."""
        require_admin(principal)
        return await self.add(principal.org_id, email=email, password=password, role=role, name=name)

    async def add(
        self, org_id: str, *, email: str, password: str, role: str, name: str | None = None
    ) -> User:
        """Add a user (the CLI's path: the operator is trusted)."""
        if name is not None and (not name.strip() or len(name) > 200):
            raise InvalidRequest("name: must be 1 to 200 characters")
        now = utcnow()
        user = User(
            id=new_id("usr"),
            org_id=org_id,
            email=check_email(email),
            name=name.strip() if name else None,
            role=check_role(role),
            created_at=now,
            updated_at=now,
        )
        return await self.store.create_user(user, await self.passwords.hash(check_password(password)))

    async def list(self, principal: Principal) -> list[User]:
        require_admin(principal)
        return await self.store.list_users(principal.org_id)

    async def disable(self, principal: Principal, user_id: str) -> None:
        """Disable a user: their sign-ins end and they cannot sign in again."""
        require_admin(principal)
        user = await self.store.get_user(user_id)
        if user is None or user.org_id != principal.org_id:
            raise NotFound("User not found")
        await self.store.disable_user(user_id, utcnow())

    async def sign_in(self, email: str, password: str) -> SignedIn:
        """Check the password and start a sign-in; one message for every failure."""
        found = await self.store.user_by_email(email.strip().lower())
        ok = await self.passwords.verify(found[1] if found else None, password)
        if found is None or not ok or found[0].disabled_at is not None:
            raise Unauthorized("Invalid email or password")
        user, stored = found
        if self.passwords.hasher.check_needs_rehash(stored):
            await self.store.set_password_hash(user.id, await self.passwords.hash(password))
        token = secrets.token_urlsafe(32)
        now = utcnow()
        login = Login(id=new_id("lgn"), user_id=user.id, created_at=now, expires_at=now + self.login_ttl)
        await self.store.create_login(login, token_hash(token))
        return SignedIn(user, token, login)

    async def authenticate(self, token: str) -> tuple[User, Principal]:
        """The user behind a sign-in cookie, or Unauthorized (expired, signed out, disabled)."""
        found = await self.store.find_login(token_hash(token)) if token else None
        if found is None:
            raise Unauthorized("Not signed in, or the sign-in has expired")
        login, user = found
        if login.expires_at <= utcnow() or user.disabled_at is not None:
            raise Unauthorized("Not signed in, or the sign-in has expired")
        return user, principal_of(user)

    async def sign_out(self, token: str) -> None:
        if token:
            await self.store.delete_login(token_hash(token))

    async def get(self, user_id: str) -> User | None:
        return await self.store.get_user(user_id)


def principal_of(user: User) -> Principal:
    """Admins get {admin, agent:read, agent:write}; members {agent:read, agent:write}."""
    return Principal(org_id=user.org_id, subject_id=user.id, kind="user", scopes=user.scopes)
