"""Wire models of `/agent/v1` that `schemas.py` does not have yet: parts, the message response, usage,
cancel and reply results, and the SSE events of `respond` and `stream`.

Pure pydantic (no FastAPI, no core), so the SDK (`chambers.client`) parses with them and the server may
build its responses with them too. They accept unknown fields (`extra="allow"`): a newer server may add
fields, and an older client keeps working. Field names are the wire's (camelCase), as in `schemas.py`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Tag, TypeAdapter, ValidationError

# --- message parts ----------------------------------------------------------------------------------------


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextPart(_Open):
    """Text the assistant (or the user) wrote."""

    id: str
    type: Literal["text"] = "text"
    text: str


class ToolPart(_Open):
    """A tool call: `status` is `running`, `completed` or `error`; `output` is null while running."""

    id: str
    type: Literal["tool"] = "tool"
    callId: str | None = None
    name: str
    input: Any = None
    output: str | None = None
    status: str


class QuestionPart(_Open):
    """A question the agent asked: `status` is `pending`, `answered`, `expired` or `dropped`."""

    id: str
    type: Literal["question"] = "question"
    requestID: str
    question: str
    options: list[str] = []
    askedAt: str | None = None
    status: str = "pending"
    answer: str | None = None


class UnknownPart(_Open):
    """A part of a type this version does not know (its fields are kept as extras)."""

    id: str | None = None
    type: str


_PART_TYPES = frozenset({"text", "tool", "question"})


def _part_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in _PART_TYPES else "unknown"


Part = Annotated[
    Annotated[TextPart, Tag("text")]
    | Annotated[ToolPart, Tag("tool")]
    | Annotated[QuestionPart, Tag("question")]
    | Annotated[UnknownPart, Tag("unknown")],
    Discriminator(_part_tag),
]
"""One part of a message, chosen by its `type`; an unknown type parses as `UnknownPart`."""


def text_of(parts: list[Part]) -> str:
    """The text parts joined with a blank line, as the controller and the terminal show them."""
    return "\n\n".join(p.text for p in parts if isinstance(p, TextPart))


# --- usage ------------------------------------------------------------------------------------------------


class UsageSummary(_Open):
    """Sums over every usage entry of a turn (LLM and tools)."""

    costMicros: int
    totalInputTokens: int = 0
    totalOutputTokens: int = 0
    totalTokens: int = 0


class UsageEntry(_Open):
    """One billable act: an LLM request or a tool call."""

    id: str
    kind: str
    service: str
    endpoint: str
    method: str
    statusCode: int | None = None
    costMicros: int
    promptTokens: int | None = None
    completionTokens: int | None = None
    totalTokens: int | None = None
    model: str | None = None
    timestamp: str | None = None
    metadata: dict[str, Any] = {}


class TurnUsage(_Open):
    """The `usage` of the message response: direct LLM figures, `summary` over all entries."""

    turnId: str
    messageId: str
    idempotencyKey: str | None = None
    model: str
    totalInputTokens: int
    totalOutputTokens: int
    totalTokens: int
    costMicros: int
    summary: UsageSummary
    entries: list[UsageEntry] = []


class TurnError(_Open):
    """Why a turn failed: `code` (e.g. `PROVIDER_ERROR`), `message`, maybe `upstreamStatus`."""

    code: str
    message: str
    upstreamStatus: int | None = None


# --- responses --------------------------------------------------------------------------------------------


class MessageInfo(_Open):
    id: str
    role: str = "assistant"
    turnId: str
    status: str
    createdAt: str | None = None


class MessageResponse(_Open):
    """What `POST .../message` answers (and `GET .../turns/:id` keeps as `response`)."""

    info: MessageInfo
    parts: list[Part]
    usage: TurnUsage
    error: TurnError | None = None

    @property
    def text(self) -> str:
        """The assistant's text parts, joined with a blank line."""
        return text_of(self.parts)


class CancelResult(_Open):
    """`POST .../cancel`: whether a turn was stopped, and which."""

    id: str
    cancelled: bool
    turnId: str | None = None


class ReplyResult(_Open):
    """`POST .../question/:requestID/reply`: `resumed` is true once every question is answered."""

    requestID: str
    turnId: str
    status: str
    resumed: bool


# --- events -----------------------------------------------------------------------------------------------


class _Event(_Open):
    id: int | None = None
    """The event's number in the session's log (the SSE `id:`); None for `stream.gap`."""
    event: str
    """The SSE event name."""


class TurnStarted(_Event):
    """A turn began; `messageId` is the user's message."""

    event: Literal["turn.started"] = "turn.started"
    turnId: str
    chatId: str | None = None
    messageId: str | None = None


class TurnStatus(_Event):
    """`running`, `waiting_for_input` or `restoring`."""

    event: Literal["turn.status"] = "turn.status"
    turnId: str
    status: str


class MessageCreated(_Event):
    """The assistant's message of the turn was started."""

    event: Literal["message.created"] = "message.created"
    turnId: str
    messageId: str
    role: str = "assistant"
    createdAt: str | None = None


class MessagePartUpdated(_Event):
    """A part was added or changed: text parts carry `text` (so far) and `delta`; others carry `part`."""

    event: Literal["message.part.updated"] = "message.part.updated"
    turnId: str
    messageId: str
    partId: str
    type: str
    text: str | None = None
    delta: str | None = None
    part: Part | None = None


class MessageCompleted(_Event):
    """The assistant's message is final: `status` is `completed`, `cancelled` or `failed`."""

    event: Literal["message.completed"] = "message.completed"
    turnId: str
    messageId: str
    status: str
    parts: list[Part] = []

    @property
    def text(self) -> str:
        return text_of(self.parts)


class UsageFigures(_Open):
    totalInputTokens: int
    totalOutputTokens: int
    totalTokens: int
    costMicros: int
    model: str | None = None


class SessionUsageProperties(_Open):
    turnId: str
    messageId: str
    usage: UsageFigures
    summary: UsageSummary
    entries: list[UsageEntry] = []


class SessionUsage(_Event):
    """The usage of a finished turn (direct LLM figures in `properties.usage`, the total in `summary`)."""

    event: Literal["session.usage"] = "session.usage"
    type: str = "session.usage"
    properties: SessionUsageProperties

    @property
    def turnId(self) -> str:
        return self.properties.turnId


class TurnCompleted(_Event):
    """The turn ended: `completed`, `cancelled` or `failed` (with `error`)."""

    event: Literal["turn.completed"] = "turn.completed"
    turnId: str
    status: str
    error: TurnError | None = None


class Question(_Event):
    """The agent asks and the turn waits for `reply(requestID, text)`; `options` may be empty."""

    event: Literal["question"] = "question"
    turnId: str
    requestID: str
    question: str
    options: list[str] = []


class SessionStatus(_Event):
    """The session changed status (`ended`, `idle`, `active`). Only on `stream`."""

    event: Literal["session.status"] = "session.status"
    chatId: str
    status: str
    snapshotImageId: str | None = None


class WorkerReady(_Event):
    """The session's sandbox started and can run tools."""

    event: Literal["agent.worker.ready"] = "agent.worker.ready"
    chatId: str
    turnId: str | None = None


class RuntimeReused(_Event):
    """An existing sandbox was reused for the turn."""

    event: Literal["agent.runtime.reused"] = "agent.runtime.reused"
    chatId: str
    turnId: str | None = None


class StreamGap(_Event):
    """Replay is incomplete: events after `requestedAfter` up to `oldestAvailable` are gone."""

    event: Literal["stream.gap"] = "stream.gap"
    requestedAfter: int
    oldestAvailable: int | None = None
    message: str = ""


class UnknownEvent(_Event):
    """An event this version does not know (or could not read): its name and raw `data`."""

    data: Any = None


KNOWN_EVENTS: dict[str, type[_Event]] = {
    cls.model_fields["event"].default: cls
    for cls in (
        TurnStarted,
        TurnStatus,
        MessageCreated,
        MessagePartUpdated,
        MessageCompleted,
        SessionUsage,
        TurnCompleted,
        Question,
        SessionStatus,
        WorkerReady,
        RuntimeReused,
        StreamGap,
    )
}


def _event_tag(value: Any) -> str:
    name = value.get("event") if isinstance(value, dict) else getattr(value, "event", None)
    return name if name in KNOWN_EVENTS and not isinstance(value, UnknownEvent) else "unknown"


ChatEvent = Annotated[
    Annotated[TurnStarted, Tag("turn.started")]
    | Annotated[TurnStatus, Tag("turn.status")]
    | Annotated[MessageCreated, Tag("message.created")]
    | Annotated[MessagePartUpdated, Tag("message.part.updated")]
    | Annotated[MessageCompleted, Tag("message.completed")]
    | Annotated[SessionUsage, Tag("session.usage")]
    | Annotated[TurnCompleted, Tag("turn.completed")]
    | Annotated[Question, Tag("question")]
    | Annotated[SessionStatus, Tag("session.status")]
    | Annotated[WorkerReady, Tag("agent.worker.ready")]
    | Annotated[RuntimeReused, Tag("agent.runtime.reused")]
    | Annotated[StreamGap, Tag("stream.gap")]
    | Annotated[UnknownEvent, Tag("unknown")],
    Discriminator(_event_tag),
]
"""Every event of `respond` and `stream`, chosen by its SSE event name; unknown names are `UnknownEvent`."""

_EVENT = TypeAdapter[ChatEvent](ChatEvent)


def parse_event(name: str, data: str, event_id: str | int | None = None) -> ChatEvent:
    """One SSE frame as a typed event. Never raises: what cannot be read is an `UnknownEvent`."""
    seq: int | None = None
    if isinstance(event_id, int):
        seq = event_id
    elif event_id and str(event_id).strip().isdigit():
        seq = int(str(event_id).strip())
    if name == "stream.gap":
        seq = None  # it has no `id:` of its own (a decoder may carry the previous one over)
    try:
        payload: Any = json.loads(data) if data else {}
    except ValueError:
        payload = data
    if isinstance(payload, dict) and name in KNOWN_EVENTS:
        try:
            return _EVENT.validate_python({**payload, "event": name, "id": seq})
        except ValidationError:
            pass
    return UnknownEvent(event=name or "message", id=seq, data=payload)
