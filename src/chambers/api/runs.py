"""`/agent/v1/runs`: fire-and-forget agent jobs (docs/runs.md)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from fastapi.sse import KEEPALIVE_COMMENT, EventSourceResponse
from pydantic import BaseModel, Field, StrictStr, field_validator

from chambers.api import schemas
from chambers.api.auth import read_access, write_access
from chambers.api.sse import SSE_HEADERS, session_stream
from chambers.core.clock import iso
from chambers.core.errors import InvalidRequest, Unavailable
from chambers.core.models import Principal
from chambers.core.runs import FINISHED, Run, RunService
from chambers.wiring import Services

router = APIRouter(prefix="/agent/v1/runs", tags=["runs"])

Reader = Annotated[Principal, Depends(read_access)]
Writer = Annotated[Principal, Depends(write_access)]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)]
SSE_RESPONSE: dict[int | str, dict[str, object]] = {
    200: {"description": "Server-Sent Events", "content": {"text/event-stream": {}}}
}
METADATA_MAX_BYTES = 16 * 1024


class CreateRun(schemas.Strict):
    parts: Annotated[list[schemas.TextPartIn], Field(min_length=1)] | None = None
    prompt: StrictStr | None = None
    model: Annotated[StrictStr, Field(min_length=3, max_length=200)] | None = None
    agentDid: Annotated[StrictStr, Field(min_length=1, max_length=200)] | None = None
    title: Annotated[StrictStr, Field(max_length=500)] | None = None
    metadata: dict[str, Any] | None = None

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("text must not be empty")
        return value


class RunCreated(BaseModel):
    id: str
    status: str
    createdAt: str


class RunOut(BaseModel):
    id: str
    status: str
    title: str | None
    model: str
    agentDid: str | None
    metadata: dict[str, Any] | None
    createdAt: str
    startedAt: str | None
    endedAt: str | None
    durationMs: int | None
    attempt: int
    parts: list[dict[str, Any]]
    usage: dict[str, Any] | None
    error: dict[str, Any] | None
    questions: list[dict[str, Any]]
    snapshotImageId: str | None
    runtimeMs: int


class RunList(BaseModel):
    data: list[RunOut]
    nextCursor: str | None


def run_out(run: Run) -> RunOut:
    return RunOut(
        id=run.id,
        status=run.state,
        title=run.title,
        model=run.model,
        agentDid=run.agent_did,
        metadata=run.metadata,
        createdAt=iso(run.created_at) or "",
        startedAt=iso(run.started_at),
        endedAt=iso(run.ended_at),
        durationMs=run.duration_ms,
        attempt=run.attempts,
        parts=run.parts or [],
        usage=run.usage,
        error=run.error,
        questions=run.questions,
        snapshotImageId=run.snapshot_image_id,
        runtimeMs=run.runtime_ms,
    )


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def runs_of(request: Request) -> RunService:
    runs = services_of(request).runs
    if runs is None:  # not wired (e.g. a store without runs)
        raise Unavailable("Runs are not available on this server")
    return runs


def prompt_text(services: Services, body: CreateRun) -> str:
    """The run's prompt: exactly one of `parts` or `prompt`, within the chat message limits."""
    settings = services.settings
    if (body.parts is None) == (body.prompt is None):
        raise InvalidRequest("parts: give exactly one of 'parts' or 'prompt'")
    if body.prompt is not None:
        if len(body.prompt) > settings.max_message_chars:
            raise InvalidRequest(f"prompt: longer than the {settings.max_message_chars}-character limit")
        return body.prompt
    assert body.parts is not None
    if len(body.parts) > settings.max_parts:
        raise InvalidRequest(f"parts: at most {settings.max_parts} parts per message")
    for index, part in enumerate(body.parts):
        if len(part.text) > settings.max_message_chars:
            raise InvalidRequest(
                f"parts.{index}.text: longer than the {settings.max_message_chars}-character limit"
            )
    return "\n\n".join(p.text for p in body.parts)


@router.post("", status_code=202)
async def submit_run(
    request: Request, principal: Writer, body: CreateRun, idempotency_key: IdempotencyKey = None
) -> RunCreated:
    """Queue a run; it executes in the background. Poll it, stream it, or wait for its webhook."""
    services = services_of(request)
    text = prompt_text(services, body)
    if body.metadata is not None and len(json.dumps(body.metadata)) > METADATA_MAX_BYTES:
        raise InvalidRequest(f"metadata: larger than {METADATA_MAX_BYTES} bytes as JSON")
    run, _created = await runs_of(request).submit(
        principal,
        text,
        model=body.model,
        agent_did=body.agentDid,
        title=body.title,
        metadata=body.metadata,
        idempotency_key=idempotency_key,
    )
    return RunCreated(id=run.id, status=run.state, createdAt=iso(run.created_at) or "")


@router.get("")
async def list_runs(
    request: Request,
    principal: Reader,
    status: Literal["queued", "running", "waiting_for_input", "completed", "failed", "cancelled"]
    | None = None,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> RunList:
    """The organisation's runs, newest first; pass `nextCursor` back as `cursor` for the next page."""
    page = await runs_of(request).page(principal, state=status, cursor=cursor, limit=limit)
    return RunList(data=[run_out(r) for r in page.items], nextCursor=page.next_cursor)


@router.get("/{run_id}")
async def get_run(request: Request, principal: Reader, run_id: str) -> RunOut:
    """Status, result parts, usage, timings, error, final snapshot, pending questions."""
    return run_out(await runs_of(request).get(principal, run_id))


@router.get("/{run_id}/stream", responses=SSE_RESPONSE)
async def stream_run(
    request: Request,
    principal: Reader,
    run_id: str,
    last_event_id_query: Annotated[int | None, Query(alias="lastEventId", ge=0)] = None,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> EventSourceResponse:
    """The run's events (the chat event names), replayed after `lastEventId` / `Last-Event-ID`."""
    services = services_of(request)
    runs = runs_of(request)
    run = await runs.get(principal, run_id)
    after = last_event_id_query
    if after is None and last_event_id_header:
        if not last_event_id_header.strip().isdigit():
            raise InvalidRequest("Last-Event-ID: must be a non-negative integer")
        after = int(last_event_id_header.strip())
    return EventSourceResponse(_run_feed(services, runs, run, after), headers=SSE_HEADERS)


async def _run_feed(
    services: Services, runs: RunService, run: Run, after: int | None
) -> AsyncIterator[bytes]:
    """Follow the run's session; a queued run is waited for (with keep-alives), a retried one followed
    on to its next session. Closes once the run's outcome is recorded."""
    keepalive = services.settings.sse_keepalive_s
    clock = asyncio.get_running_loop().time
    followed: str | None = None
    if run.session_id is None and after is None:
        after = 0  # connected before the run started: every event of it is new to this client
    while True:
        quiet_since = clock()
        while run.session_id is None or run.session_id == followed:
            if run.status in FINISHED:
                return
            run = await runs.wait_changed(run, min(keepalive, services.settings.run_poll_interval_s))
            if clock() - quiet_since >= keepalive:
                quiet_since = clock()
                yield KEEPALIVE_COMMENT
        session = await services.store.get_session(run.session_id)
        if session is None:
            return
        if followed is not None:
            after = after or 0  # a retry's session: its ids go on above the previous attempt's
        followed = session.id
        await services.bus.seed(session.id, session.event_seq)
        ended = session.status == "ended"
        async for chunk in session_stream(services.bus, session.id, after, keepalive, ended=ended):
            yield chunk
            if chunk == KEEPALIVE_COMMENT:  # quiet: is it over? (another process may have run it)
                run = await runs.wait_changed(run, 0)
                if run.status in FINISHED or run.session_id != followed:
                    break
        # The session ends just before the run records its outcome (or is queued again to retry).
        run = await runs.wait_changed(run, 0) if run.status not in FINISHED else run


@router.post("/{run_id}/cancel")
async def cancel_run(request: Request, principal: Writer, run_id: str) -> RunOut:
    """A queued run never starts; a running one has its turn stopped. A finished one: 409."""
    return run_out(await runs_of(request).cancel(principal, run_id))


@router.post("/{run_id}/question/{request_id}/reply")
async def reply(
    request: Request, principal: Writer, run_id: str, request_id: str, body: schemas.ReplyIn
) -> JSONResponse:
    """Answer the run's question; its turn goes on."""
    limit = services_of(request).settings.max_message_chars
    if len(body.text) > limit:
        raise InvalidRequest(f"text: longer than the {limit}-character limit")
    return JSONResponse(await runs_of(request).reply(principal, run_id, request_id, body.text))
