"""`/api/agents`: agents with DIDs (admins create, change and delete; users see what they may use)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from chambers.api.controller_deps import Caller, controller_of
from chambers.core.clock import iso
from chambers.core.controller.models import Agent

router = APIRouter(prefix="/api/agents", tags=["agents"])


class AgentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[StrictStr, Field(min_length=1, max_length=200)]
    model: StrictStr | None = None
    systemPrompt: StrictStr | None = None
    tools: list[StrictStr] | None = None
    sandbox: dict[str, Any] | None = None
    policy: dict[str, Any] | None = None


class AgentPatch(BaseModel):
    """Only the fields given change; `policy` and `sandbox` are replaced whole; null resets."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[StrictStr, Field(min_length=1, max_length=200)] | None = None
    model: StrictStr | None = None
    systemPrompt: StrictStr | None = None
    tools: list[StrictStr] | None = None
    sandbox: dict[str, Any] | None = None
    policy: dict[str, Any] | None = None


class AgentOut(BaseModel):
    id: str
    did: str
    name: str
    model: str
    systemPrompt: str | None
    tools: list[str] | None
    sandbox: dict[str, Any]
    policy: dict[str, Any]
    default: bool
    createdAt: str
    updatedAt: str


class AgentList(BaseModel):
    agents: list[AgentOut]


class AgentDeleted(BaseModel):
    did: str
    deleted: bool


_WIRE = {"name": "name", "model": "model", "systemPrompt": "system_prompt", "tools": "tools"}
_WIRE.update(sandbox="sandbox", policy="policy")


def agent_out(agent: Agent, default_model: str) -> AgentOut:
    """An agent as the API shows it. The private key is never part of it."""
    return AgentOut(
        id=agent.id,
        did=agent.did,
        name=agent.name,
        model=agent.model or default_model,
        systemPrompt=agent.system_prompt,
        tools=sorted(agent.tools) if agent.tools is not None else None,
        sandbox=dict(agent.sandbox),
        policy=agent.policy.to_json(),
        default=agent.is_default,
        createdAt=iso(agent.created_at) or "",
        updatedAt=iso(agent.updated_at) or "",
    )


@router.post("", status_code=201)
async def create_agent(request: Request, caller: Caller, body: AgentIn) -> AgentOut:
    """Create an agent with a fresh Ed25519 key pair; its DID is `did:key:z6Mk…` (admins)."""
    agents = controller_of(request).agents
    agent = await agents.create(
        caller,
        name=body.name,
        model=body.model,
        system_prompt=body.systemPrompt,
        tools=body.tools,
        sandbox=body.sandbox,
        policy=body.policy,
    )
    return agent_out(agent, agents.default_model)


@router.get("")
async def list_agents(request: Request, caller: Caller) -> AgentList:
    """The agents the caller may use (admins: all of the organisation's)."""
    agents = controller_of(request).agents
    return AgentList(agents=[agent_out(a, agents.default_model) for a in await agents.usable(caller)])


@router.get("/{did}")
async def get_agent(request: Request, caller: Caller, did: str) -> AgentOut:
    agents = controller_of(request).agents
    return agent_out(await agents.usable_by_did(caller, did), agents.default_model)


@router.patch("/{did}")
async def update_agent(request: Request, caller: Caller, did: str, body: AgentPatch) -> AgentOut:
    """Change the fields given (admins)."""
    agents = controller_of(request).agents
    changes = {_WIRE[name]: getattr(body, name) for name in body.model_fields_set}
    return agent_out(await agents.update(caller, did, changes), agents.default_model)


@router.delete("/{did}")
async def delete_agent(request: Request, caller: Caller, did: str) -> AgentDeleted:
    """Delete an agent (admins): it stops taking turns and its grants end; its log stays verifiable."""
    await controller_of(request).agents.delete(caller, did)
    return AgentDeleted(did=did, deleted=True)
