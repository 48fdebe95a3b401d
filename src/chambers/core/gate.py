"""TurnGate: the agent controller's hook into turns. It admits or refuses a turn before any model
call, says how the session's agent runs it, and records the outcome in the session log.

Without the controller, `OpenGate` admits everything with the built-in defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from chambers.core.models import ChatSession, Principal, Turn, UsageEntry


@dataclass(frozen=True, slots=True)
class AgentProfile:
    """How a session's agent runs a turn."""

    agent_id: str | None = None
    system_prompt: str | None = None
    tools: frozenset[str] | None = None
    """Names of the built-in tools the agent may use; None means all of them."""
    max_output_tokens: int | None = None
    network: bool = False
    sandbox: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Admission:
    """A turn let through, with the policy decisions that were taken (kept in the session log)."""

    profile: AgentProfile
    decisions: list[dict[str, Any]] = field(default_factory=list)


class TurnGate(Protocol):
    async def default_agent(self, org_id: str) -> str | None:
        """The agent that sessions made without one belong to."""
        ...

    async def admit(self, principal: Principal, session: ChatSession, text: str) -> Admission:
        """Raise PolicyDenied / RateLimited / Forbidden to refuse the turn, before any model call."""
        ...

    async def admit_reply(self, principal: Principal, session: ChatSession, text: str) -> None:
        """Refuse an answer to the agent's question that the caller may not send (grant, message size)."""
        ...

    async def profile(self, session: ChatSession) -> AgentProfile:
        """The agent's settings for a turn of `session` (also when a parked turn resumes)."""
        ...

    async def record(
        self,
        session: ChatSession,
        turn: Turn,
        subject_id: str | None,
        status: str,
        usage: list[UsageEntry],
        decisions: list[dict[str, Any]],
        error: dict[str, Any] | None,
    ) -> None:
        """Append the finished turn to the session log."""
        ...


class OpenGate:
    """Admits every turn with the built-in defaults and keeps no log."""

    async def default_agent(self, org_id: str) -> str | None:
        return None

    async def admit(self, principal: Principal, session: ChatSession, text: str) -> Admission:
        return Admission(AgentProfile())

    async def admit_reply(self, principal: Principal, session: ChatSession, text: str) -> None:
        return None

    async def profile(self, session: ChatSession) -> AgentProfile:
        return AgentProfile()

    async def record(
        self,
        session: ChatSession,
        turn: Turn,
        subject_id: str | None,
        status: str,
        usage: list[UsageEntry],
        decisions: list[dict[str, Any]],
        error: dict[str, Any] | None,
    ) -> None:
        return None
