"""Server-Sent Events: each event encoded once (cached on it) and shared by every subscriber."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.sse import KEEPALIVE_COMMENT, format_sse_event

from chambers.core import events as ev
from chambers.core.events import Event, Replay
from chambers.core.ports import EventBus
from chambers.core.usage import session_usage_event

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def encode(event: Event) -> bytes:
    """`event: …`, `data: …`, `id: <seq>`, computed once per event.

    Written out, not with `format_sse_event`: that splits the data into lines, and a streamed part's
    data holds its whole text so far. JSON has no raw line breaks, so `data:` is one line.
    """
    if event.wire is None:
        event.wire = f"event: {event.type}\ndata: {event.json}\nid: {event.seq}\n\n".encode()
    return event.wire


def gap_notice(requested_after: int, replay: Replay) -> bytes:
    """Sent when the requested id is older than the buffer. It has no `id:`, so it moves nothing."""
    data = {
        "requestedAfter": requested_after,
        "oldestAvailable": replay.oldest_seq,
        "message": "Events after the requested id are no longer buffered; replay starts at oldestAvailable.",
    }
    return format_sse_event(data_str=json.dumps(data, separators=(",", ":")), event=ev.STREAM_GAP)


async def session_stream(
    bus: EventBus, session_id: str, after_seq: int | None, heartbeat_s: float, *, ended: bool = False
) -> AsyncIterator[bytes]:
    """The long-lived feed of every event of a session, replaying after `after_seq` first.

    It closes after the session's end: at once (after the replay) for a session that already ended.
    """
    if ended and after_seq is None:
        return
    async for item in bus.subscribe(session_id, after_seq, heartbeat_s):
        if item is None:
            yield KEEPALIVE_COMMENT
        elif isinstance(item, Replay):
            if item.gap and after_seq is not None:
                yield gap_notice(after_seq, item)
            for event in item.events:
                yield encode(event)
            if ended:
                return
        else:
            yield encode(item)
            if item.type == ev.SESSION_STATUS and item.data.get("status") == "ended":
                return


async def turn_stream(
    bus: EventBus, session_id: str, turn_id: str, first_seq: int, heartbeat_s: float
) -> AsyncIterator[bytes]:
    """Only this turn's normalized events, from `turn.started` to `turn.completed`."""
    async for item in bus.subscribe(session_id, first_seq - 1, heartbeat_s):
        if item is None:
            yield KEEPALIVE_COMMENT
            continue
        for event in item.events if isinstance(item, Replay) else [item]:
            if event.turn_id == turn_id and event.type in ev.TURN_SCOPED:
                yield encode(event)
                if event.type == ev.TURN_COMPLETED:
                    return


async def replayed_turn(response: dict[str, Any]) -> AsyncIterator[bytes]:
    """A finished turn re-sent for an idempotent `respond` retry: its outcome, without sequence ids."""
    info = response["info"]
    turn_id = info["turnId"]
    usage = response["usage"]
    completed: dict[str, Any] = {"turnId": turn_id, "status": info["status"]}
    if response.get("error"):
        completed["error"] = response["error"]
    frames = [
        (
            ev.MESSAGE_COMPLETED,
            {
                "turnId": turn_id,
                "messageId": info["id"],
                "status": info["status"],
                "parts": response["parts"],
            },
        ),
        (ev.SESSION_USAGE, session_usage_event(usage)),
        (ev.TURN_COMPLETED, completed),
    ]
    for name, data in frames:
        yield format_sse_event(data_str=json.dumps(data, separators=(",", ":")), event=name)
