"""`/agent/v1/chat`: the sandboxed agent chat-session API (seed 000)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse

from chambers.api import schemas
from chambers.api.auth import read_access, write_access
from chambers.api.errors import envelope
from chambers.api.sse import SSE_HEADERS, replayed_turn, session_stream, turn_stream
from chambers.core.errors import InvalidRequest
from chambers.core.models import Principal
from chambers.wiring import Services

router = APIRouter(prefix="/agent/v1/chat", tags=["chat sessions"])

Reader = Annotated[Principal, Depends(read_access)]
Writer = Annotated[Principal, Depends(write_access)]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)]
# A failed turn's error code decides the status of the `message` response.
SSE_RESPONSE: dict[int | str, dict[str, object]] = {
    200: {"description": "Server-Sent Events", "content": {"text/event-stream": {}}}
}
_FAILED_STATUS = {
    "MODEL_NOT_CONFIGURED": 400,
    "POLICY_DENIED": 403,
    "TURN_LIMIT": 422,
    "INTERNAL": 500,
    "INTERRUPTED": 500,
    "PROVIDER_ERROR": 502,
}


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def message_text(services: Services, body: schemas.MessageIn) -> str:
    """The message's text, after the operator's size limits."""
    settings = services.settings
    if len(body.parts) > settings.max_parts:
        raise InvalidRequest(f"parts: at most {settings.max_parts} parts per message")
    for index, part in enumerate(body.parts):
        if len(part.text) > settings.max_message_chars:
            raise InvalidRequest(
                f"parts.{index}.text: longer than the {settings.max_message_chars}-character limit"
            )
    return body.text()


@router.post("", status_code=201)
async def create_chat(
    request: Request, principal: Writer, body: schemas.CreateChat | None = None
) -> schemas.ChatOut:
    """Create a session. It starts `active`; its sandbox starts on the first tool call."""
    body = body or schemas.CreateChat()
    session = await services_of(request).sessions.create(
        principal, title=body.title, model=body.model, idle_timeout_ms=body.idleTimeoutMs
    )
    return schemas.chat_out(session)


@router.get("")
async def list_chats(
    request: Request,
    principal: Reader,
    status: Literal["active", "idle", "ended"] | None = None,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> schemas.ChatList:
    """The organisation's sessions, newest first; pass `nextCursor` back as `cursor` for the next page."""
    page = await services_of(request).sessions.page(principal, status=status, cursor=cursor, limit=limit)
    return schemas.ChatList(data=[schemas.chat_out(s) for s in page.items], nextCursor=page.next_cursor)


@router.get("/{chat_id}")
async def get_chat(request: Request, principal: Reader, chat_id: str) -> schemas.ChatOut:
    """Status, title, model, timestamps, the active turn and usage totals."""
    return schemas.chat_out(await services_of(request).sessions.get(principal, chat_id))


@router.get("/{chat_id}/messages")
async def list_messages(request: Request, principal: Reader, chat_id: str) -> schemas.MessageList:
    """The conversation: user and assistant messages with their parts, oldest first."""
    found = await services_of(request).sessions.messages(principal, chat_id)
    return schemas.MessageList(data=[schemas.message_out(m) for m in found])


@router.get("/{chat_id}/turns/{turn_id}")
async def get_turn(request: Request, principal: Reader, chat_id: str, turn_id: str) -> schemas.TurnOut:
    """One turn: its status (for polling), error, timing and, once finished, the response."""
    turn = await services_of(request).sessions.turn(principal, chat_id, turn_id)
    return schemas.turn_out(turn)


@router.post("/{chat_id}/message")
async def send_message(
    request: Request,
    principal: Writer,
    chat_id: str,
    body: schemas.MessageIn,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Run one turn and return the assistant's message with its usage."""
    services = services_of(request)
    ticket = await services.runner.submit(principal, chat_id, message_text(services, body), idempotency_key)
    # Shielded: a client that hangs up does not stop the turn (it runs in its own task anyway).
    response = await asyncio.shield(ticket.done)
    headers = {"X-Turn-Id": ticket.turn_id}
    if response["info"].get("status") == "failed":
        error = response.get("error") or {"code": "TURN_FAILED", "message": "The turn failed"}
        status = _FAILED_STATUS.get(error.get("code", ""), 502)
        return envelope(
            status, error.get("message", "The turn failed"), error.get("code", "TURN_FAILED"), headers
        )
    return JSONResponse(response, headers=headers)


@router.post("/{chat_id}/respond", responses=SSE_RESPONSE)
async def respond(
    request: Request,
    principal: Writer,
    chat_id: str,
    body: schemas.MessageIn,
    idempotency_key: IdempotencyKey = None,
) -> EventSourceResponse:
    """Submit a message and stream only this turn's normalized events."""
    services = services_of(request)
    ticket = await services.runner.submit(principal, chat_id, message_text(services, body), idempotency_key)
    if ticket.first_seq == 0 and ticket.done.done():  # an idempotent retry of a finished turn
        return EventSourceResponse(
            replayed_turn(ticket.done.result()), headers={**SSE_HEADERS, "X-Turn-Id": ticket.turn_id}
        )
    stream = turn_stream(
        services.bus, chat_id, ticket.turn_id, ticket.first_seq, services.settings.sse_keepalive_s
    )
    return EventSourceResponse(stream, headers={**SSE_HEADERS, "X-Turn-Id": ticket.turn_id})


@router.get("/{chat_id}/stream", responses=SSE_RESPONSE)
async def stream(
    request: Request,
    principal: Reader,
    chat_id: str,
    last_event_id_query: Annotated[int | None, Query(alias="lastEventId", ge=0)] = None,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> EventSourceResponse:
    """The session's event feed; replays buffered events after `lastEventId` / `Last-Event-ID`."""
    services = services_of(request)
    session = await services.sessions.get(principal, chat_id)
    after = last_event_id_query
    if after is None and last_event_id_header:
        if not last_event_id_header.strip().isdigit():
            raise InvalidRequest("Last-Event-ID: must be a non-negative integer")
        after = int(last_event_id_header.strip())
    await services.bus.seed(chat_id, session.event_seq)
    feed = session_stream(
        services.bus, chat_id, after, services.settings.sse_keepalive_s, ended=session.status == "ended"
    )
    return EventSourceResponse(feed, headers=SSE_HEADERS)


@router.post("/{chat_id}/cancel")
async def cancel(request: Request, principal: Writer, chat_id: str) -> dict[str, object]:
    """Abort the running generation; the session stays usable at once."""
    return await services_of(request).runner.cancel(principal, chat_id)


@router.post("/{chat_id}/question/{request_id}/reply")
async def reply(
    request: Request, principal: Writer, chat_id: str, request_id: str, body: schemas.ReplyIn
) -> dict[str, object]:
    """Answer the agent's question; the waiting turn goes on."""
    limit = services_of(request).settings.max_message_chars
    if len(body.text) > limit:
        raise InvalidRequest(f"text: longer than the {limit}-character limit")
    return await services_of(request).runner.reply(principal, chat_id, request_id, body.text)


@router.delete("/{chat_id}")
async def end_chat(request: Request, principal: Writer, chat_id: str) -> schemas.EndedChat:
    """Snapshot the sandbox, stop it and end the session, with runtime billing."""
    return schemas.EndedChat.model_validate(await services_of(request).sessions.end(principal, chat_id))
