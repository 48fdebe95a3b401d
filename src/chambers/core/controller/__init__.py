"""The agent controller: agents with DIDs, users, capability grants, policies and the session log.

One module per idea: `did` (keys and identifiers), `policy`, `agents`, `users`, `access` and
`grants` (who may use an agent), `gate` (the TurnGate both chat surfaces go through), `audit` (the
signed, hash-chained session log), `view` and `chat` (the `/api/chat` surface), `ports` (its store).
"""

from __future__ import annotations

from dataclasses import dataclass

from chambers.core.controller.agents import AgentService
from chambers.core.controller.audit import AuditLog
from chambers.core.controller.chat import ControllerChat
from chambers.core.controller.gate import ControllerGate
from chambers.core.controller.grants import GrantService
from chambers.core.controller.users import UserService


@dataclass
class Controller:
    """The controller's services, built once per process (see chambers.controller_runtime)."""

    agents: AgentService
    users: UserService
    grants: GrantService
    audit: AuditLog
    gate: ControllerGate
    chat: ControllerChat | None = None
    """Set once the turn runner and session service exist (they take the gate)."""


__all__ = ["Controller"]
