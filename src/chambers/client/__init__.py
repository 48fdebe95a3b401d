"""The Python SDK of Chambers: `Client` (sync) and `AsyncClient` over httpx, typed events and errors.

    from chambers.client import Client

    with Client() as client:  # $CHAMBERS_URL, $CHAMBERS_API_KEY
        chat = client.chats.create()
        print(chat.send("Hello!").text)

Requests and responses use the server's own wire models (`chambers.api.schemas`, `chambers.api.wire`,
and for webhooks and the controller the models of their routers), so client and server cannot drift.
See docs/sdk.md for a walkthrough.
"""

from __future__ import annotations

from chambers.api.schemas import ChatList, ChatOut, EndedChat, MessageList, MessageOut, TurnOut
from chambers.api.wire import (
    CancelResult,
    MessageResponse,
    Part,
    QuestionPart,
    ReplyResult,
    TextPart,
    ToolPart,
    TurnError,
    TurnUsage,
    UnknownPart,
    UsageEntry,
    UsageSummary,
)
from chambers.client._async import (
    AsyncChat,
    AsyncClient,
    AsyncControllerReply,
    AsyncEventStream,
)
from chambers.client._base import Options, new_idempotency_key
from chambers.client._sync import Chat, Client, ControllerReply, EventStream
from chambers.client.errors import (
    APIConnectionError,
    BadRequest,
    ChambersError,
    Conflict,
    Forbidden,
    MethodNotAllowed,
    ModelNotConfigured,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    PolicyDenied,
    ProviderError,
    QuestionClosed,
    RateLimited,
    ServerError,
    SessionEnded,
    TurnConflict,
    TurnLimit,
    Unauthorized,
)
from chambers.client.events import (
    ChatEvent,
    MessageCompleted,
    MessageCreated,
    MessagePartUpdated,
    Question,
    RuntimeReused,
    SessionStatus,
    SessionUsage,
    StreamGap,
    TurnCompleted,
    TurnStarted,
    TurnStatus,
    UnknownEvent,
    WorkerReady,
    parse_event,
)

__all__ = [
    "APIConnectionError",
    "AsyncChat",
    "AsyncClient",
    "AsyncControllerReply",
    "AsyncEventStream",
    "BadRequest",
    "CancelResult",
    "ChambersError",
    "Chat",
    "ChatEvent",
    "ChatList",
    "ChatOut",
    "Client",
    "Conflict",
    "ControllerReply",
    "EndedChat",
    "EventStream",
    "Forbidden",
    "MessageCompleted",
    "MessageCreated",
    "MessageList",
    "MessageOut",
    "MessagePartUpdated",
    "MessageResponse",
    "MethodNotAllowed",
    "ModelNotConfigured",
    "NotFound",
    "Options",
    "Overloaded",
    "Part",
    "PayloadTooLarge",
    "PolicyDenied",
    "ProviderError",
    "Question",
    "QuestionClosed",
    "QuestionPart",
    "RateLimited",
    "ReplyResult",
    "RuntimeReused",
    "ServerError",
    "SessionEnded",
    "SessionStatus",
    "SessionUsage",
    "StreamGap",
    "TextPart",
    "ToolPart",
    "TurnCompleted",
    "TurnConflict",
    "TurnError",
    "TurnLimit",
    "TurnOut",
    "TurnStarted",
    "TurnStatus",
    "TurnUsage",
    "Unauthorized",
    "UnknownEvent",
    "UnknownPart",
    "UsageEntry",
    "UsageSummary",
    "WorkerReady",
    "new_idempotency_key",
    "parse_event",
]
