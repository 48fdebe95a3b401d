"""`/api/grants`: capability grants on agents (admins create and revoke; everyone sees their own)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictStr

from chambers.api.controller_deps import Caller, controller_of
from chambers.core.clock import iso, utcnow
from chambers.core.controller.grants import GrantView

router = APIRouter(prefix="/api/grants", tags=["grants"])


class GrantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agentDid: Annotated[StrictStr, Field(min_length=1, max_length=100)]
    subject: Annotated[StrictStr, Field(min_length=1, max_length=320)]
    """A user id (`usr_…`), a user's email, or an API key id (`key_…`)."""
    capabilities: Annotated[list[StrictStr], Field(min_length=1, max_length=10)] = ["chat"]
    expiresAt: AwareDatetime | None = None


class GrantOut(BaseModel):
    id: str
    agentDid: str
    subject: str
    capabilities: list[str]
    createdAt: str
    createdBy: str | None
    expiresAt: str | None
    revokedAt: str | None
    live: bool


class GrantList(BaseModel):
    grants: list[GrantOut]


def grant_out(view: GrantView, now: datetime) -> GrantOut:
    grant = view.grant
    return GrantOut(
        id=grant.id,
        agentDid=view.agent_did,
        subject=grant.subject_id,
        capabilities=sorted(grant.capabilities),
        createdAt=iso(grant.created_at) or "",
        createdBy=grant.created_by,
        expiresAt=iso(grant.expires_at),
        revokedAt=iso(grant.revoked_at),
        live=grant.live(now),
    )


@router.post("", status_code=201)
async def create_grant(request: Request, caller: Caller, body: GrantIn) -> GrantOut:
    """Let a user or an API key use an agent (admins). A past `expiresAt` makes an expired grant."""
    view = await controller_of(request).grants.create(
        caller,
        agent_did=body.agentDid,
        subject=body.subject,
        capabilities=body.capabilities,
        expires_at=body.expiresAt,
    )
    return grant_out(view, utcnow())


@router.get("")
async def list_grants(
    request: Request,
    caller: Caller,
    agent_did: Annotated[str | None, Query(alias="agentDid", max_length=100)] = None,
    subject: Annotated[str | None, Query(max_length=320)] = None,
) -> GrantList:
    """Admins: the organisation's grants (filter by agentDid, subject); others: their own."""
    views = await controller_of(request).grants.list(caller, agent_did=agent_did, subject=subject)
    now = utcnow()
    return GrantList(grants=[grant_out(v, now) for v in views])


@router.delete("/{grant_id}")
async def revoke_grant(request: Request, caller: Caller, grant_id: str) -> GrantOut:
    """Revoke a grant (admins); it stops working at once."""
    return grant_out(await controller_of(request).grants.revoke(caller, grant_id), utcnow())
