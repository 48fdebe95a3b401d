"""The typed events of `respond` and `stream` (defined with the wire models in `chambers.api.wire`).

for event in chat.stream():
    match event:
        case MessagePartUpdated(delta=str(delta)):
            print(delta, end="")
        case Question():
            chat.reply(event.requestID, input(event.question + " "))
        case TurnCompleted():
            print()
        case StreamGap():
            print("some events were lost; reload the messages")
        case UnknownEvent():
            pass  # a newer server's event
"""

from __future__ import annotations

from chambers.api.wire import (
    KNOWN_EVENTS,
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
    "KNOWN_EVENTS",
    "ChatEvent",
    "MessageCompleted",
    "MessageCreated",
    "MessagePartUpdated",
    "Question",
    "RuntimeReused",
    "SessionStatus",
    "SessionUsage",
    "StreamGap",
    "TurnCompleted",
    "TurnStarted",
    "TurnStatus",
    "UnknownEvent",
    "WorkerReady",
    "parse_event",
]
