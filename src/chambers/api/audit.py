"""`/api/audit`: the session log, newest first, filtered and paged (admins)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import AwareDatetime, BaseModel

from chambers.api.controller_deps import Caller, controller_of
from chambers.core.controller.audit import body
from chambers.core.controller.models import AuditEntry

router = APIRouter(prefix="/api/audit", tags=["session log"])


class AuditPage(BaseModel):
    entries: list[dict[str, Any]]
    nextCursor: str | None


def entry_out(entry: AuditEntry) -> dict[str, Any]:
    """The signed body (camelCase), plus its hash and signature."""
    return {**body(entry), "hash": entry.hash, "signature": entry.signature}


@router.get("")
async def list_entries(
    request: Request,
    caller: Caller,
    agent_did: Annotated[str | None, Query(alias="agentDid", max_length=100)] = None,
    subject: Annotated[str | None, Query(max_length=40)] = None,
    session_id: Annotated[str | None, Query(alias="sessionId", max_length=40)] = None,
    since: Annotated[AwareDatetime | None, Query()] = None,
    until: Annotated[AwareDatetime | None, Query()] = None,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> AuditPage:
    """Entries of the caller's organisation; pass `nextCursor` back as `cursor` for older ones."""
    page = await controller_of(request).audit.page(
        caller,
        agent_did=agent_did,
        subject_id=subject,
        session_id=session_id,
        since=since,
        until=until,
        cursor=cursor,
        limit=limit,
    )
    return AuditPage(entries=[entry_out(e) for e in page.items], nextCursor=page.next_cursor)
