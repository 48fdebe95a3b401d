"""Who may do what: admins manage; everyone else needs a live capability grant on the agent.

- An admin (a user with role admin, or an API key with scope `admin`) may use every agent of the
  organisation.
- An API key with `agent:write` may chat with its organisation's default agent (what `/agent/v1` did
  before agents existed).
- Anyone else (members, other keys, and keys on other agents) needs a live grant with the capability.
"""

from __future__ import annotations

from typing import Any

from chambers.core.clock import utcnow
from chambers.core.controller.models import Agent
from chambers.core.controller.ports import ControllerStore
from chambers.core.errors import Forbidden
from chambers.core.models import Principal


def is_admin(principal: Principal) -> bool:
    return "admin" in principal.scopes


def require_admin(principal: Principal) -> None:
    if not is_admin(principal):
        raise Forbidden("This needs an admin: a user with role 'admin' or an API key with the 'admin' scope")


def require_write(principal: Principal) -> None:
    if not principal.has("agent:write"):
        raise Forbidden("This API key lacks the 'agent:write' scope")


async def authorize(
    store: ControllerStore, principal: Principal, agent: Agent, capability: str = "chat"
) -> dict[str, Any]:
    """The grant decision for using `agent`, or Forbidden naming the missing grant."""
    decision: dict[str, Any] = {"policy": "grant", "capability": capability, "result": "allow"}
    if principal.org_id != agent.org_id:
        raise Forbidden(f"no '{capability}' grant on agent {agent.did}")
    if agent.deleted_at is not None:
        raise Forbidden(f"agent {agent.did} has been deleted")
    if is_admin(principal):
        return {**decision, "via": "admin"}
    if principal.kind == "api_key" and agent.is_default and principal.has("agent:write"):
        return {**decision, "via": "defaultAgent"}
    for grant in await store.live_grants(principal.subject_id, utcnow(), agent.id):
        if capability in grant.capabilities:
            return {**decision, "via": "grant", "grantId": grant.id}
    raise Forbidden(f"no '{capability}' grant on agent {agent.did} for {principal.subject_id}")
