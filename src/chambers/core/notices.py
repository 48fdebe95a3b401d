"""The webhook event catalog: every type, what it means, its payload schema, and a builder for each."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chambers.core.models import ChatSession, Notice, Turn

RUNTIME_REUSED = "agent.runtime.reused"
SCOPE_ACTIVATED = "agent.scope.activated"
WORKER_READY = "agent.worker.ready"
SESSION_CREATED = "agent.chat.session.created"
TURN_STARTED = "agent.chat.turn.started"
TURN_COMPLETED = "agent.chat.turn.completed"
TURN_FAILED = "agent.chat.turn.failed"
TURN_CANCELLED = "agent.chat.turn.cancelled"
TURN_CONFLICT = "agent.chat.turn.conflict"
SESSION_IDLE = "agent.chat.session.idle"
SESSION_RESUMED = "agent.chat.session.resumed"
SESSION_ENDED = "agent.chat.session.ended"
QUESTION_ASKED = "agent.chat.question.asked"
TEST = "webhook.test"
# runs (core/runs.py)
RUN_QUEUED = "agent.run.queued"
RUN_STARTED = "agent.run.started"
RUN_COMPLETED = "agent.run.completed"
RUN_FAILED = "agent.run.failed"
RUN_CANCELLED = "agent.run.cancelled"


@dataclass(frozen=True, slots=True)
class EventType:
    name: str
    description: str
    fields: dict[str, str]
    reserved: bool = False

    def schema(self) -> dict[str, Any]:
        """JSON Schema of the delivered payload `{type, timestamp, data}`."""
        shapes: dict[str, dict[str, Any]] = {
            "string": {"type": "string"},
            "integer": {"type": "integer"},
            "object": {"type": "object"},
            "string?": {"type": ["string", "null"]},
            "object?": {"type": ["object", "null"]},
        }
        properties = {k: dict(shapes[v]) for k, v in self.fields.items()}
        required = [k for k, v in self.fields.items() if not v.endswith("?")]
        return {
            "type": "object",
            "properties": {
                "type": {"const": self.name},
                "timestamp": {"type": "string", "format": "date-time"},
                "data": {"type": "object", "properties": properties, "required": required},
            },
            "required": ["type", "timestamp", "data"],
        }


_SESSION = {"orgId": "string", "chatId": "string"}
_TURN = {**_SESSION, "turnId": "string"}
_RUN = {"orgId": "string", "runId": "string", "status": "string", "model": "string", "metadata": "object?"}
CATALOG: dict[str, EventType] = {
    e.name: e
    for e in [
        EventType(RUNTIME_REUSED, "An existing sandbox was reused for a chat turn", {**_TURN}),
        EventType(
            SCOPE_ACTIVATED, "Reserved: the sandbox has the requested scope loaded", {**_SESSION}, True
        ),
        EventType(WORKER_READY, "The session's sandbox started and is ready to run tools", {**_SESSION}),
        EventType(
            SESSION_CREATED,
            "A new chat session was created",
            {**_SESSION, "model": "string", "title": "string?"},
        ),
        EventType(TURN_STARTED, "A chat turn began executing", {**_TURN, "messageId": "string"}),
        EventType(
            TURN_COMPLETED,
            "A chat turn completed successfully",
            {**_TURN, "messageId": "string", "status": "string", "usage": "object"},
        ),
        EventType(
            TURN_FAILED,
            "A chat turn failed",
            {**_TURN, "messageId": "string?", "status": "string", "error": "object", "usage": "object?"},
        ),
        EventType(
            TURN_CANCELLED,
            "A chat turn was cancelled (Chambers extension)",
            {**_TURN, "messageId": "string", "status": "string", "usage": "object"},
        ),
        EventType(
            TURN_CONFLICT,
            "A turn was rejected because another was active",
            {**_SESSION, "activeTurnId": "string"},
        ),
        EventType(
            SESSION_IDLE,
            "The session's sandbox was snapshotted after its idle timeout",
            {**_SESSION, "snapshotImageId": "string?"},
        ),
        EventType(
            SESSION_RESUMED,
            "An idle session was restored by a new message",
            {**_TURN, "snapshotImageId": "string?"},
        ),
        EventType(
            SESSION_ENDED,
            "The session was ended",
            {**_SESSION, "snapshotImageId": "string?", "runtimeMs": "integer"},
        ),
        EventType(
            QUESTION_ASKED,
            "The agent asked the user a question and waits for the reply",
            {**_TURN, "requestID": "string", "question": "string"},
        ),
        EventType(TEST, "A test event sent by POST /events/v1/webhooks/:id/test", {"webhookId": "string"}),
        # runs (core/runs.py)
        EventType(RUN_QUEUED, "A run was submitted and waits in the queue", {**_RUN, "title": "string?"}),
        EventType(RUN_STARTED, "A worker took the run and its attempt began", {**_RUN, "attempt": "integer"}),
        EventType(
            RUN_COMPLETED,
            "A run completed; with its usage summary",
            {**_RUN, "usage": "object", "durationMs": "integer", "snapshotImageId": "string?"},
        ),
        EventType(
            RUN_FAILED,
            "A run failed (provider error, refused by policy, interrupted twice by a restart...)",
            {**_RUN, "error": "object", "usage": "object?", "snapshotImageId": "string?"},
        ),
        EventType(
            RUN_CANCELLED,
            "A run was cancelled, while queued (it never started) or while running",
            {**_RUN, "usage": "object?", "snapshotImageId": "string?"},
        ),
    ]
}


def session_created(session: ChatSession) -> Notice:
    data = {"orgId": session.org_id, "chatId": session.id, "model": session.model, "title": session.title}
    return Notice(SESSION_CREATED, session.org_id, data, session.id, session.created_at)


def turn_started(turn: Turn) -> Notice:
    data = {
        "orgId": turn.org_id,
        "chatId": turn.session_id,
        "turnId": turn.id,
        "messageId": turn.user_message_id,
    }
    return Notice(TURN_STARTED, turn.org_id, data, turn.session_id, turn.started_at)


def turn_conflict(session: ChatSession, active_turn_id: str) -> Notice:
    data = {"orgId": session.org_id, "chatId": session.id, "activeTurnId": active_turn_id}
    return Notice(TURN_CONFLICT, session.org_id, data, session.id)


def turn_finished(
    turn: Turn,
    status: str,
    message_id: str | None,
    usage: dict[str, Any] | None,
    error: dict[str, Any] | None,
) -> Notice:
    kind = {"completed": TURN_COMPLETED, "cancelled": TURN_CANCELLED}.get(status, TURN_FAILED)
    data: dict[str, Any] = {
        "orgId": turn.org_id,
        "chatId": turn.session_id,
        "turnId": turn.id,
        "messageId": message_id,
        "status": status,
        "usage": _usage_summary(usage),
    }
    if error is not None:
        data["error"] = error
    return Notice(kind, turn.org_id, data, turn.session_id)


def question_asked(turn: Turn, request_id: str, question: str, options: list[str]) -> Notice:
    data = {
        "orgId": turn.org_id,
        "chatId": turn.session_id,
        "turnId": turn.id,
        "requestID": request_id,
        "question": question,
        "options": options,
    }
    return Notice(QUESTION_ASKED, turn.org_id, data, turn.session_id)


def session_ended(session: ChatSession, image_id: str | None, runtime_ms: int, cost: float) -> Notice:
    data = {
        "orgId": session.org_id,
        "chatId": session.id,
        "snapshotImageId": image_id,
        "runtimeMs": runtime_ms,
        "cost": cost,
    }
    return Notice(SESSION_ENDED, session.org_id, data, session.id)


def session_idle(session: ChatSession, image_id: str | None) -> Notice:
    data = {"orgId": session.org_id, "chatId": session.id, "snapshotImageId": image_id}
    return Notice(SESSION_IDLE, session.org_id, data, session.id)


def session_resumed(session: ChatSession, turn_id: str) -> Notice:
    data = {
        "orgId": session.org_id,
        "chatId": session.id,
        "turnId": turn_id,
        "snapshotImageId": session.snapshot_image_id,
    }
    return Notice(SESSION_RESUMED, session.org_id, data, session.id)


def sandbox_event(
    kind: str, org_id: str, session_id: str, turn_id: str | None, extra: dict[str, Any]
) -> Notice:
    data = {"orgId": org_id, "chatId": session_id, **({"turnId": turn_id} if turn_id else {}), **extra}
    return Notice(kind, org_id, data, session_id)


# --- runs (core/runs.py) ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunFacts:
    """What run notices say about a run (kept apart from core.runs, which imports this module)."""

    org_id: str
    run_id: str
    model: str
    title: str | None
    metadata: dict[str, Any] | None
    attempt: int
    duration_ms: int | None
    snapshot_image_id: str | None
    at: datetime | None


def _run_data(run: RunFacts, status: str) -> dict[str, Any]:
    return {
        "orgId": run.org_id,
        "runId": run.run_id,
        "status": status,
        "model": run.model,
        "metadata": run.metadata,
    }


def run_queued(run: RunFacts) -> Notice:
    data = {**_run_data(run, "queued"), "title": run.title}
    return Notice(RUN_QUEUED, run.org_id, data, run.run_id, run.at)


def run_started(run: RunFacts) -> Notice:
    data = {**_run_data(run, "running"), "attempt": run.attempt}
    return Notice(RUN_STARTED, run.org_id, data, run.run_id, run.at)


def run_finished(
    run: RunFacts, status: str, usage: dict[str, Any] | None, error: dict[str, Any] | None
) -> Notice:
    """`agent.run.completed`, `.failed` or `.cancelled`; events of one run are delivered in order."""
    kind = {"completed": RUN_COMPLETED, "cancelled": RUN_CANCELLED}.get(status, RUN_FAILED)
    data: dict[str, Any] = {
        **_run_data(run, status),
        "usage": _usage_summary(usage),
        "durationMs": run.duration_ms,
        "snapshotImageId": run.snapshot_image_id,
    }
    if error is not None or status == "failed":
        data["error"] = error
    return Notice(kind, run.org_id, data, run.run_id, run.at)


def _usage_summary(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {
        k: usage[k]
        for k in ("model", "totalInputTokens", "totalOutputTokens", "totalTokens", "costMicros", "summary")
    }
