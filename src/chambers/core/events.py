"""Session events: what `respond` and `stream` carry, numbered by a per-session sequence."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

TURN_STARTED = "turn.started"
TURN_STATUS = "turn.status"
MESSAGE_CREATED = "message.created"
MESSAGE_PART_UPDATED = "message.part.updated"
MESSAGE_COMPLETED = "message.completed"
SESSION_USAGE = "session.usage"
TURN_COMPLETED = "turn.completed"
QUESTION = "question"
SESSION_STATUS = "session.status"
WORKER_READY = "agent.worker.ready"
RUNTIME_REUSED = "agent.runtime.reused"
STREAM_GAP = "stream.gap"

SEQ_JUMP_AFTER_CRASH = 10_000
"""How far a session's event numbers skip after a process died mid-turn: the stored counter lags what
was published, and a number must never name two events."""

# What `respond` sends: the seed's normalized turn events, plus the question the turn waits on.
TURN_SCOPED = frozenset(
    {
        TURN_STARTED,
        TURN_STATUS,
        MESSAGE_CREATED,
        MESSAGE_PART_UPDATED,
        MESSAGE_COMPLETED,
        SESSION_USAGE,
        TURN_COMPLETED,
        QUESTION,
    }
)


encode_data = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
"""An event's data as compact JSON (one encoder for all: `json.dumps` with options builds one a call)."""


@dataclass(slots=True)
class Event:
    """One numbered event of a session's log."""

    session_id: str
    seq: int
    type: str
    data: dict[str, Any]
    turn_id: str | None = None
    _json: str | None = field(default=None, repr=False, compare=False)
    wire: bytes | None = field(default=None, repr=False, compare=False)
    """The transport encoding, cached by the adapter so fan-out encodes once per event."""

    @property
    def json(self) -> str:
        """The data as compact JSON, computed once."""
        if self._json is None:
            self._json = encode_data(self.data)
        return self._json

    def to_record(self) -> dict[str, Any]:
        """A plain form for buses that cross processes."""
        return {"s": self.session_id, "q": self.seq, "t": self.type, "d": self.json, "u": self.turn_id}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Event:
        """Inverse of `to_record`."""
        data = record["d"]
        return cls(
            session_id=record["s"],
            seq=int(record["q"]),
            type=record["t"],
            data=json.loads(data),
            turn_id=record.get("u") or None,
            _json=data,
        )


def streamed_text(kind: str, data: dict[str, Any]) -> tuple[str, str, str] | None:
    """`(partId, text, delta)` of a streamed text part update, whose data ends with the whole `text` so
    far and the `delta` that ends it; None for any other event. Buses may keep these compactly."""
    if kind != MESSAGE_PART_UPDATED or len(data) < 3:
        return None
    keys = reversed(data)
    if next(keys) != "delta" or next(keys) != "text":
        return None
    text, delta, part_id = data["text"], data["delta"], data.get("partId")
    if type(text) is str and type(delta) is str and type(part_id) is str and text.endswith(delta):
        return part_id, text, delta
    return None


@dataclass(frozen=True, slots=True)
class Replay:
    """Buffered events after a point, and whether some were already dropped from the buffer."""

    events: list[Event]
    gap: bool
    oldest_seq: int | None
