"""Agents: created with an Ed25519 key pair and a did:key DID, read, changed and deleted by admins.

Every organisation has a default agent (all built-in tools, the server's default model), made lazily
the first time it is needed; sessions created without an agent belong to it.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from chambers.core.clock import utcnow
from chambers.core.controller.access import is_admin, require_admin
from chambers.core.controller.did import KeyPair
from chambers.core.controller.models import Agent
from chambers.core.controller.policy import Policy, parse_sandbox, parse_tools
from chambers.core.controller.ports import ControllerStore, Sealer
from chambers.core.errors import Conflict, InvalidRequest, NotFound
from chambers.core.ids import new_id
from chambers.core.models import Principal

MAX_NAME = 200
MAX_SYSTEM_PROMPT = 100_000
EDITABLE = ("name", "model", "system_prompt", "tools", "sandbox", "policy")


def check_model(model: str, where: str = "model") -> str:
    """A model string must look like `provider/model`."""
    provider, sep, name = model.partition("/")
    if not sep or not provider or not name or any(c.isspace() for c in model) or len(model) > 200:
        raise InvalidRequest(f"{where}: must look like 'provider/model', e.g. 'anthropic/claude-sonnet-4.6'")
    return model


class AgentKeys:
    """Agents' private keys: sealed for the store, opened (and cached) only to sign log entries."""

    def __init__(self, store: ControllerStore, sealer: Sealer) -> None:
        self.store = store
        self.sealer = sealer
        self._pairs: dict[str, KeyPair] = {}

    def seal(self, pair: KeyPair) -> str:
        return self.sealer.seal(base64.b64encode(pair.private_key).decode())

    async def pair(self, agent: Agent) -> KeyPair:
        """The agent's key pair; refuses a stored key that does not match the agent's DID."""
        cached = self._pairs.get(agent.id)
        if cached is not None:
            return cached
        sealed = await self.store.sealed_key(agent.id)
        if sealed is None:
            raise RuntimeError(f"agent {agent.id} has no private key")
        try:
            pair = KeyPair.from_private_key(base64.b64decode(self.sealer.open(sealed)))
        except Exception as exc:
            raise RuntimeError(
                f"the private key of agent {agent.did} cannot be read (was CHAMBERS_SECRET_KEY or "
                f"secret.key changed?): {type(exc).__name__}"
            ) from None
        if pair.did != agent.did:
            raise RuntimeError(f"the stored private key of agent {agent.did} does not match its DID")
        self._pairs[agent.id] = pair
        return pair


class AgentService:
    def __init__(self, store: ControllerStore, keys: AgentKeys, default_model: str) -> None:
        self.store = store
        self.keys = keys
        self.default_model = default_model

    def model_of(self, agent: Agent) -> str:
        """The model the agent's new sessions use."""
        return agent.model or self.default_model

    async def create(
        self,
        principal: Principal,
        *,
        name: str,
        model: str | None = None,
        system_prompt: str | None = None,
        tools: list[str] | None = None,
        sandbox: Mapping[str, Any] | None = None,
        policy: Mapping[str, Any] | None = None,
    ) -> Agent:
        require_admin(principal)
        values = _validated(
            {
                "name": name,
                "model": model,
                "system_prompt": system_prompt,
                "tools": tools,
                "sandbox": sandbox,
                "policy": policy,
            }
        )
        return await self._insert(principal.org_id, principal.subject_id, is_default=False, **values)

    async def default_agent(self, org_id: str) -> Agent:
        """The organisation's default agent, created on first use (once, even across processes).

        Read from the store every time: another process may have changed its policy.
        """
        agent = await self.store.default_agent(org_id)
        if agent is None:
            agent = await self._insert(
                org_id,
                None,
                is_default=True,
                name="default",
                model=None,
                system_prompt=None,
                tools=None,
                sandbox={},
                policy=Policy(),
            )
        return agent

    async def _insert(self, org_id: str, created_by: str | None, *, is_default: bool, **values: Any) -> Agent:
        pair = KeyPair.generate()
        now = utcnow()
        agent = Agent(
            id=new_id("agt"),
            org_id=org_id,
            did=pair.did,
            is_default=is_default,
            created_at=now,
            updated_at=now,
            created_by=created_by,
            **values,
        )
        stored = await self.store.create_agent(agent, self.keys.seal(pair))
        return stored

    async def by_did(self, org_id: str, did: str) -> Agent:
        """A live agent of the organisation, or NotFound (agents of other organisations never leak)."""
        agent = await self.store.agent_by_did(org_id, did.strip())
        if agent is None or agent.deleted_at is not None:
            raise NotFound(f"Agent {did} not found")
        return agent

    async def of_session(self, org_id: str, agent_id: str | None) -> Agent:
        """The agent a session belongs to (sessions from before the controller: the default agent)."""
        if agent_id is None:
            return await self.default_agent(org_id)
        agent = await self.store.get_agent(agent_id)
        if agent is None:
            raise NotFound("The session's agent does not exist")
        return agent

    async def usable(self, principal: Principal) -> list[Agent]:
        """The agents the caller may use: all of the organisation's for admins, else granted ones
        (and, for API keys with agent:write, the default agent)."""
        if is_admin(principal):
            await self.default_agent(principal.org_id)
            return await self.store.list_agents(principal.org_id)
        grants = await self.store.live_grants(principal.subject_id, utcnow())
        ids = {g.agent_id for g in grants}
        if principal.kind == "api_key" and principal.has("agent:write"):
            ids.add((await self.default_agent(principal.org_id)).id)
        found = await self.store.list_agents(principal.org_id, ids)
        return [a for a in found if a.deleted_at is None]

    async def usable_by_did(self, principal: Principal, did: str) -> Agent:
        """One agent the caller may use; NotFound otherwise (its existence is not disclosed)."""
        agent = await self.by_did(principal.org_id, did)
        if not is_admin(principal) and not any(a.id == agent.id for a in await self.usable(principal)):
            raise NotFound(f"Agent {did} not found")
        return agent

    async def update(self, principal: Principal, did: str, changes: Mapping[str, Any]) -> Agent:
        require_admin(principal)
        agent = await self.by_did(principal.org_id, did)
        unknown = sorted(set(changes) - set(EDITABLE))
        if unknown:
            raise InvalidRequest(f"{unknown[0]}: cannot be changed")
        if "name" in changes and changes["name"] is None:
            raise InvalidRequest("name: must not be null")
        values = _validated(dict(changes))
        if values:
            await self.store.update_agent(agent.id, updated_at=utcnow(), **values)
        return await self.by_did(principal.org_id, did)

    async def delete(self, principal: Principal, did: str) -> None:
        require_admin(principal)
        agent = await self.by_did(principal.org_id, did)
        if agent.is_default:
            raise Conflict("The organisation's default agent cannot be deleted")
        await self.store.delete_agent(agent.id, utcnow())


def _validated(values: dict[str, Any]) -> dict[str, Any]:
    """Check and normalise the editable fields that are present."""
    out: dict[str, Any] = {}
    if "name" in values:
        name = values["name"]
        if not isinstance(name, str) or not name.strip() or len(name.strip()) > MAX_NAME:
            raise InvalidRequest(f"name: must be 1 to {MAX_NAME} characters")
        out["name"] = name.strip()
    if "model" in values:
        model = values["model"]
        if model is not None and not isinstance(model, str):
            raise InvalidRequest("model: must be a string like 'provider/model'")
        out["model"] = check_model(model) if model else None
    if "system_prompt" in values:
        prompt = values["system_prompt"]
        if prompt is not None and (not isinstance(prompt, str) or len(prompt) > MAX_SYSTEM_PROMPT):
            raise InvalidRequest(f"systemPrompt: must be a string of at most {MAX_SYSTEM_PROMPT} characters")
        out["system_prompt"] = prompt or None
    if "tools" in values:
        out["tools"] = None if values["tools"] is None else parse_tools(values["tools"])
    if "sandbox" in values:
        out["sandbox"] = parse_sandbox(values["sandbox"])
    if "policy" in values:
        policy = values["policy"]
        out["policy"] = policy if isinstance(policy, Policy) else Policy.from_json(policy)
    return out
