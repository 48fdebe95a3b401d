"""Records of the agent controller: agents, users, sign-ins, grants and session-log entries."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from chambers.core.controller.policy import Policy

Role = Literal["admin", "member"]
ROLES: tuple[Role, ...] = ("admin", "member")
CAPABILITIES: tuple[str, ...] = ("chat",)
"""What a grant can allow. `chat`: send messages to the agent and read one's sessions with it."""

ADMIN_SCOPES = frozenset({"admin", "agent:read", "agent:write"})
MEMBER_SCOPES = frozenset({"agent:read", "agent:write"})


@dataclass(frozen=True, slots=True)
class Agent:
    """A configured model, system prompt, tool set, sandbox settings and policy, with a DID."""

    id: str
    org_id: str
    did: str
    name: str
    model: str | None
    """None: the server's default model (the default agent follows `default_model`)."""
    system_prompt: str | None
    tools: frozenset[str] | None
    """Built-in tools the agent may use; None means all of them."""
    sandbox: dict[str, Any]
    policy: Policy
    is_default: bool
    created_at: datetime
    updated_at: datetime
    created_by: str | None = None
    deleted_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class User:
    id: str
    org_id: str
    email: str
    name: str | None
    role: Role
    created_at: datetime
    updated_at: datetime
    disabled_at: datetime | None = None

    @property
    def scopes(self) -> frozenset[str]:
        return ADMIN_SCOPES if self.role == "admin" else MEMBER_SCOPES


@dataclass(frozen=True, slots=True)
class Login:
    """A signed-in browser session (the cookie holds a random token; only its hash is stored)."""

    id: str
    user_id: str
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Grant:
    """A capability on one agent for one subject (a user `usr_…` or an API key `key_…`)."""

    id: str
    org_id: str
    agent_id: str
    subject_id: str
    capabilities: frozenset[str]
    created_at: datetime
    created_by: str | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None

    def live(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One entry of an agent's session log: a turn, or a request refused before any model call.

    `prev_hash` chains the entry to the one before it in the agent's chain; `hash` is SHA-256 of the
    entry's canonical JSON (every field but `hash` and `signature`), and `signature` is the agent's
    Ed25519 signature of the same bytes.
    """

    id: str
    org_id: str
    chain_id: str
    seq: int
    agent_id: str
    agent_did: str
    kind: Literal["turn", "refusal"]
    outcome: str
    created_at: datetime
    subject_id: str | None = None
    session_id: str | None = None
    turn_id: str | None = None
    model: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_micros: int = 0
    decisions: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    prev_hash: str = ""
    hash: str = ""
    signature: str = ""


@dataclass(frozen=True, slots=True)
class ChainHead:
    """Where an agent's chain ends: the store appends after it, one writer at a time."""

    chain_id: str
    org_id: str
    seq: int
    head_hash: str
