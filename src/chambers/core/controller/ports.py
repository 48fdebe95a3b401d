"""Ports of the agent controller: its store, the secret box, and the history encoder."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from chambers.core.controller.models import Agent, AuditEntry, ChainHead, Grant, Login, User
from chambers.core.models import ChatSession, Message, MessageRole, Page, Turn


@dataclass(frozen=True, slots=True)
class AuditFilter:
    org_id: str
    agent_id: str | None = None
    subject_id: str | None = None
    session_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    count: int
    retry_after_s: int = 0


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of an OpenAI-style conversation, as the chat surface received it."""

    role: MessageRole
    text: str
    name: str | None = None
    tool_calls: tuple[ToolCallIn, ...] = ()
    tool_call_id: str | None = None


@dataclass(frozen=True, slots=True)
class ToolCallIn:
    id: str
    name: str
    arguments: str


class Sealer(Protocol):
    """Encrypts secrets at rest (agents' private keys) under the server's secret key."""

    def seal(self, secret: str) -> str: ...
    def open(self, stored: str) -> str: ...


class HistoryEncoder(Protocol):
    """Turns imported chat messages into the agent loop's stored history (model messages JSON)."""

    def __call__(self, messages: Sequence[ChatMessage]) -> list[Any]: ...


class ControllerStore(Protocol):
    """Durable state of the controller. Each method is one transaction."""

    # agents
    async def create_agent(self, agent: Agent, sealed_key: str) -> Agent:
        """Insert the agent (and its log chain). For a default agent that another process created
        first, the existing one is returned."""
        ...

    async def get_agent(self, agent_id: str) -> Agent | None: ...
    async def agent_by_did(self, org_id: str, did: str) -> Agent | None: ...
    async def default_agent(self, org_id: str) -> Agent | None: ...
    async def list_agents(self, org_id: str, ids: Collection[str] | None = None) -> list[Agent]: ...
    async def update_agent(self, agent_id: str, **fields: Any) -> None: ...
    async def delete_agent(self, agent_id: str, at: datetime) -> bool: ...
    async def sealed_key(self, agent_id: str) -> str | None: ...

    # users and sign-ins
    async def create_user(self, user: User, password_hash: str) -> User: ...
    async def get_user(self, user_id: str) -> User | None: ...
    async def user_by_email(self, email: str) -> tuple[User, str] | None: ...
    async def list_users(self, org_id: str) -> list[User]: ...
    async def set_password_hash(self, user_id: str, password_hash: str) -> None: ...
    async def disable_user(self, user_id: str, at: datetime) -> bool: ...
    async def create_login(self, login: Login, token_hash: str) -> None: ...
    async def find_login(self, token_hash: str) -> tuple[Login, User] | None: ...
    async def delete_login(self, token_hash: str) -> None: ...

    # grants
    async def create_grant(self, grant: Grant) -> Grant: ...
    async def get_grant(self, grant_id: str) -> Grant | None: ...
    async def list_grants(
        self, org_id: str, *, agent_id: str | None = None, subject_id: str | None = None
    ) -> list[Grant]: ...
    async def revoke_grant(self, grant_id: str, at: datetime) -> bool: ...
    async def live_grants(
        self, subject_id: str, now: datetime, agent_id: str | None = None
    ) -> list[Grant]: ...

    # rate limits and spend
    async def hit_rate(self, key: str, limit: int, window_s: int, now: datetime, count: bool) -> RateDecision:
        """Sliding-window counter: whether one more request fits (and record it when `count`)."""
        ...

    async def subject_cost_since(self, agent_id: str, subject_id: str, since: datetime) -> int: ...

    # session log
    async def append_audit(self, chain_id: str, build: Callable[[int, str], AuditEntry]) -> AuditEntry:
        """Append to the chain, one writer at a time: `build(seq, prev_hash)` makes the entry."""
        ...

    async def list_audit(self, where: AuditFilter, cursor: str | None, limit: int) -> Page[AuditEntry]: ...
    async def audit_chains(self, org_id: str | None = None) -> list[ChainHead]: ...
    async def audit_entries(self, chain_id: str, after_seq: int, limit: int) -> list[AuditEntry]: ...

    # chat sessions, as the controller's chat surface sees them
    async def list_agent_sessions(
        self, org_id: str, *, agent_id: str | None, created_by: str | None, cursor: str | None, limit: int
    ) -> Page[ChatSession]: ...
    async def session_messages(self, session_ids: Collection[str]) -> dict[str, list[Message]]: ...
    async def waiting_parts(self, session_id: str) -> list[dict[str, Any]] | None:
        """The assistant parts so far of the session's turn that waits for an answer, if any."""
        ...

    async def import_history(
        self, session_id: str, turn: Turn, messages: list[Message], model_messages: list[Any]
    ) -> None:
        """Store earlier conversation as a completed turn; TurnConflict while a turn holds the session."""
        ...
