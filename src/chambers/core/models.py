"""Domain records. Plain dataclasses: the store fills them, services pass them around."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

Scope = Literal["agent:read", "agent:write", "admin"]
SCOPES: tuple[Scope, ...] = ("agent:read", "agent:write", "admin")

SessionStatus = Literal["active", "idle", "ended"]
TurnStatus = Literal["running", "waiting_for_input", "completed", "cancelled", "failed"]
MessageRole = Literal["user", "assistant", "system", "tool"]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Org:
    id: str
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    org_id: str
    name: str
    prefix: str
    scopes: frozenset[str]
    created_at: datetime
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an API key or a signed-in user, in one organisation."""

    org_id: str
    subject_id: str
    kind: Literal["api_key", "user"]
    scopes: frozenset[str]

    def has(self, scope: str) -> bool:
        """Whether the caller holds `scope`; `admin` implies every scope."""
        return scope in self.scopes or "admin" in self.scopes

    def sees(self, created_by: str | None) -> bool:
        """Whether the caller may see a session: API keys and admins see the organisation's, a signed-in
        member only their own."""
        return self.kind != "user" or "admin" in self.scopes or created_by == self.subject_id


@dataclass(slots=True)
class ChatSession:
    id: str
    org_id: str
    title: str | None
    model: str
    idle_timeout_ms: int
    status: SessionStatus
    created_at: datetime
    updated_at: datetime
    last_activity_at: datetime
    created_by: str | None = None
    agent_id: str | None = None
    active_turn_id: str | None = None
    ended_at: datetime | None = None
    snapshot_image_id: str | None = None
    runtime_ms: int = 0
    sandbox_started_at: datetime | None = None
    event_seq: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_micros: int = 0
    turn_count: int = 0
    owner: str | None = None
    owner_until: datetime | None = None


@dataclass(slots=True)
class Turn:
    id: str
    session_id: str
    org_id: str
    status: TurnStatus
    user_message_id: str
    model: str
    started_at: datetime
    idempotency_key: str | None = None
    assistant_message_id: str | None = None
    ended_at: datetime | None = None
    error: dict[str, Any] | None = None
    response: dict[str, Any] | None = None
    pending: dict[str, Any] | None = None
    owner: str | None = None
    lease_until: datetime | None = None


@dataclass(slots=True)
class Message:
    id: str
    session_id: str
    role: MessageRole
    parts: list[dict[str, Any]]
    created_at: datetime
    turn_id: str | None = None
    status: str = "completed"


@dataclass(slots=True)
class UsageEntry:
    id: str
    turn_id: str
    session_id: str
    org_id: str
    kind: str
    service: str
    endpoint: str
    method: str
    status_code: int
    cost_micros: int
    timestamp: datetime
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    model: str | None = None
    metadata: dict[str, Any] | None = None


@dataclass(slots=True)
class TurnOutcome:
    """Everything a finished turn writes in one transaction."""

    turn_id: str
    session_id: str
    status: TurnStatus
    ended_at: datetime
    assistant_message: Message | None
    usage: list[UsageEntry] = field(default_factory=list)
    model_messages: list[Any] | None = None
    response: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    event_seq: int = 0
    pending: dict[str, Any] | None = None
    notices: list[Notice] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Notice:
    """A webhook-worthy fact, written in the same transaction as the state change it describes."""

    type: str
    org_id: str
    data: dict[str, Any]
    session_id: str | None = None
    at: datetime | None = None
