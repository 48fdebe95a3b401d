"""Wire models of the `/agent/v1` surface. Pure pydantic, so the SDK can share them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr

from chambers.core.clock import iso
from chambers.core.models import ChatSession, Message, Turn


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateChat(Strict):
    title: Annotated[StrictStr, Field(max_length=500)] | None = None
    model: Annotated[StrictStr, Field(min_length=3, max_length=200)] | None = None
    idleTimeoutMs: StrictInt | None = None


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("text must not be empty")
    return value


NonBlankText = Annotated[StrictStr, AfterValidator(_not_blank)]


class TextPartIn(Strict):
    type: Literal["text"]
    text: NonBlankText


class MessageIn(Strict):
    parts: Annotated[list[TextPartIn], Field(min_length=1)]

    def text(self) -> str:
        return "\n\n".join(p.text for p in self.parts)


class ReplyIn(Strict):
    text: NonBlankText


class UsageTotals(BaseModel):
    totalInputTokens: int
    totalOutputTokens: int
    totalTokens: int
    costMicros: int


class ChatOut(BaseModel):
    id: str
    status: str
    title: str | None
    model: str
    idleTimeoutMs: int
    createdAt: str
    updatedAt: str
    lastActivityAt: str
    endedAt: str | None
    activeTurnId: str | None
    snapshotImageId: str | None
    runtimeMs: int
    turnCount: int
    usage: UsageTotals
    agentId: str | None = None


class ChatList(BaseModel):
    data: list[ChatOut]
    nextCursor: str | None


class MessageOut(BaseModel):
    id: str
    role: str
    status: str
    turnId: str | None
    createdAt: str
    parts: list[dict[str, Any]]


class MessageList(BaseModel):
    data: list[MessageOut]


class EndedChat(BaseModel):
    id: str
    status: Literal["ended"]
    snapshotImageId: str | None
    runtimeMs: int
    cost: float


class TurnOut(BaseModel):
    id: str
    chatId: str
    status: str
    model: str
    userMessageId: str
    assistantMessageId: str | None
    startedAt: str
    endedAt: str | None
    error: dict[str, Any] | None
    questions: list[dict[str, Any]]
    response: dict[str, Any] | None


def turn_out(turn: Turn) -> TurnOut:
    pending = turn.pending or {}
    answered = pending.get("answers", {})
    return TurnOut(
        id=turn.id,
        chatId=turn.session_id,
        status=turn.status,
        model=turn.model,
        userMessageId=turn.user_message_id,
        assistantMessageId=turn.assistant_message_id,
        startedAt=iso(turn.started_at) or "",
        endedAt=iso(turn.ended_at),
        error=turn.error,
        questions=[q for q in pending.get("questions", []) if q["requestID"] not in answered],
        response=turn.response,
    )


def chat_out(session: ChatSession) -> ChatOut:
    return ChatOut(
        id=session.id,
        status=session.status,
        title=session.title,
        model=session.model,
        idleTimeoutMs=session.idle_timeout_ms,
        createdAt=iso(session.created_at) or "",
        updatedAt=iso(session.updated_at) or "",
        lastActivityAt=iso(session.last_activity_at) or "",
        endedAt=iso(session.ended_at),
        activeTurnId=session.active_turn_id,
        snapshotImageId=session.snapshot_image_id,
        runtimeMs=session.runtime_ms,
        turnCount=session.turn_count,
        usage=UsageTotals(
            totalInputTokens=session.input_tokens,
            totalOutputTokens=session.output_tokens,
            totalTokens=session.input_tokens + session.output_tokens,
            costMicros=session.cost_micros,
        ),
        agentId=session.agent_id,
    )


def message_out(message: Message) -> MessageOut:
    return MessageOut(
        id=message.id,
        role=message.role,
        status=message.status,
        turnId=message.turn_id,
        createdAt=iso(message.created_at) or "",
        parts=message.parts,
    )
