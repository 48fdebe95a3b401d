"""`/api/chat` (seed 004): OpenAI-style messages in, `data: {"chunk": "..."}` frames out, then `[DONE]`.

Everything that can be refused (sign-in, grant, policy, validation, a turn already running) is refused
before the stream starts, as a JSON error envelope with its status code. Once streaming, a failure is
one `data: {"error": {"message", "code"}}` frame, then `data: [DONE]`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.sse import KEEPALIVE_COMMENT, EventSourceResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator, model_validator

from chambers.api.controller_deps import Caller, controller_of
from chambers.api.sse import SSE_HEADERS
from chambers.core.clock import iso
from chambers.core.controller.chat import ChatItem, Chunk, Done, Failed
from chambers.core.controller.ports import ChatMessage, ToolCallIn
from chambers.core.errors import InvalidRequest

router = APIRouter(prefix="/api/chat", tags=["controller chat"])

DONE = b"data: [DONE]\n\n"
SSE_RESPONSE: dict[int | str, dict[str, object]] = {
    200: {
        "description": 'Server-Sent Events: `data: {"chunk": …}` then `data: [DONE]`',
        "content": {"text/event-stream": {}},
    }
}


class FunctionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[StrictStr, Field(min_length=1, max_length=200)]
    arguments: StrictStr = ""


class ToolCallWire(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: Annotated[StrictStr, Field(min_length=1, max_length=200)]
    type: Literal["function"] = "function"
    function: FunctionIn


class MessageIn(BaseModel):
    """One message in the OpenAI chat format: content is a string or a list of text blocks."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool"]
    content: Any = None
    name: Annotated[StrictStr, Field(max_length=200)] | None = None
    tool_calls: list[ToolCallWire] | None = None
    tool_call_id: Annotated[StrictStr, Field(max_length=200)] | None = None

    @field_validator("content")
    @classmethod
    def _content(cls, value: Any) -> str | None:
        if value is None or isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise ValueError("must be a string or a list of content blocks")
        texts = []
        for index, block in enumerate(value):
            if not isinstance(block, dict) or "type" not in block:
                raise ValueError(f"block {index}: must be an object with a 'type'")
            if block["type"] != "text":
                raise ValueError(
                    f"block {index}: only 'text' content blocks are supported, not {block['type']!r}"
                )
            if set(block) - {"type", "text"} or not isinstance(block.get("text"), str):
                raise ValueError(f'block {index}: a text block is {{"type": "text", "text": "…"}}')
            texts.append(block["text"])
        return "\n\n".join(texts)

    @model_validator(mode="after")
    def _needs_content(self) -> MessageIn:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(
                "content is required (it may be null only on an assistant message with tool_calls)"
            )
        return self

    def domain(self) -> ChatMessage:
        return ChatMessage(
            role=self.role,
            text=self.content or "",
            name=self.name,
            tool_calls=tuple(
                ToolCallIn(c.id, c.function.name, c.function.arguments) for c in self.tool_calls or []
            ),
            tool_call_id=self.tool_call_id,
        )


class ChatIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agentDid: Annotated[StrictStr, Field(min_length=1, max_length=100)]
    messages: Annotated[list[MessageIn], Field(min_length=1, max_length=1000)]
    sessionId: Annotated[StrictStr, Field(min_length=1, max_length=64)] | None = None


class SessionOut(BaseModel):
    id: str
    title: str | None
    createdAt: str
    updatedAt: str
    messageCount: int
    status: str
    """Beyond the seed: `active`, `idle` (asleep in a snapshot) or `ended`, so a list needs no lookups."""


class SessionList(BaseModel):
    sessions: list[SessionOut]
    nextCursor: str | None = None


class ViewMessageOut(BaseModel):
    role: str
    content: str
    createdAt: str


class ViewMessageList(BaseModel):
    messages: list[ViewMessageOut]


def frame(item: ChatItem) -> list[bytes]:
    """The wire form of one stream item, exactly as the seed shows it."""
    if isinstance(item, Chunk):
        return [b"data: " + json.dumps({"chunk": item.text}).encode() + b"\n\n"]
    if isinstance(item, Failed):
        error = json.dumps({"error": {"message": item.message, "code": item.code}})
        return [b"data: " + error.encode() + b"\n\n", DONE]
    if isinstance(item, Done):
        return [DONE]
    return [KEEPALIVE_COMMENT]


async def encode(items: AsyncIterator[ChatItem]) -> AsyncIterator[bytes]:
    try:
        async for item in items:
            for data in frame(item):
                yield data
            if isinstance(item, Done | Failed):
                return
    except Exception:
        for data in frame(Failed("INTERNAL", "The stream failed")):
            yield data


@router.post("", responses=SSE_RESPONSE)
async def chat(request: Request, caller: Caller, body: ChatIn) -> EventSourceResponse:
    """Send the conversation's new message(s) to an agent and stream the answer."""
    controller = controller_of(request)
    assert controller.chat is not None
    limit = request.app.state.services.settings.max_message_chars
    for index, message in enumerate(body.messages):
        if message.content is not None and len(message.content) > limit:
            raise InvalidRequest(f"messages.{index}.content: longer than the {limit}-character limit")
    started = await controller.chat.send(
        caller, body.agentDid, [m.domain() for m in body.messages], body.sessionId
    )
    headers = {**SSE_HEADERS, "X-Session-Id": started.session.id, "X-Turn-Id": started.turn_id}
    return EventSourceResponse(encode(started.items), headers=headers)


@router.get("/sessions")
async def list_sessions(
    request: Request,
    caller: Caller,
    agent_did: Annotated[str | None, Query(alias="agentDid", max_length=100)] = None,
    everyone: Annotated[bool, Query(alias="all")] = False,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> SessionList:
    """The caller's sessions (with an agent: that agent's), newest first; admins may pass `all=true`."""
    controller = controller_of(request)
    assert controller.chat is not None
    page = await controller.chat.list_sessions(
        caller, agent_did=agent_did, everyone=everyone, cursor=cursor, limit=limit
    )
    return SessionList(
        sessions=[
            SessionOut(
                id=s.session.id,
                title=s.session.title,
                createdAt=iso(s.session.created_at) or "",
                updatedAt=iso(s.session.updated_at) or "",
                messageCount=s.message_count,
                status=s.session.status,
            )
            for s in page.items
        ],
        nextCursor=page.next_cursor,
    )


@router.get("/sessions/{session_id}/messages")
async def session_messages(request: Request, caller: Caller, session_id: str) -> ViewMessageList:
    """The conversation as role + plain text, oldest first."""
    controller = controller_of(request)
    assert controller.chat is not None
    view = await controller.chat.messages(caller, session_id)
    return ViewMessageList(
        messages=[
            ViewMessageOut(role=m.role, content=m.text, createdAt=iso(m.created_at) or "") for m in view
        ]
    )
