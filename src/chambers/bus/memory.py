"""MemoryEventBus: per-session sequence, a ring buffer for replay, and queues for live subscribers."""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from json.encoder import encode_basestring  # what `json.dumps(..., ensure_ascii=False)` uses for strings
from operator import eq, is_
from typing import Any

from chambers.bus.queues import HEARTBEAT, Heartbeat, take
from chambers.core.events import (
    MESSAGE_PART_UPDATED,
    TURN_COMPLETED,
    TURN_STATUS,
    Event,
    Replay,
    encode_data,
    streamed_text,
)

_CLOSED = object()

_RECENT_PARTS = 4
"""How many text parts per session may extend their shared text; one streams at a time in a turn."""


_RECENT_S = 60.0
"""A buffer used this recently is never dropped to make room: one seeded for a turn or a stream does not
show it is in use until the turn's first event or the subscription, a moment later."""


class _Shared:
    """What the buffered updates of one streamed part have in common: the rest of their data, and the
    latest text, which only ever grows (each update keeps its own offsets into it).

    Every update of a streamed part carries the whole text so far; keeping those as published makes the
    buffer quadratic in the answer. Sharing one string keeps it linear.
    """

    __slots__ = ("last_seq", "template", "text")

    def __init__(self, text: str, template: dict[str, Any]) -> None:
        self.text = text
        self.template = template
        self.last_seq = 0
        """The newest update that cuts its text from this one."""


_Update = tuple[int, str | None, int, int, int]
"""A buffered text part update: seq, turn, the key of its `_Shared`, and where its delta starts and ends
in that text. A tuple of atoms, which the garbage collector stops tracking: its full collections need
not walk every update of every session's buffer (1,500 buffers of 500 updates each as objects made a
full collection take 93 ms, a stall of every stream)."""


def _same_template(template: dict[str, Any], data: dict[str, Any]) -> bool:
    """Whether `data` without its last two keys is `template`: same keys in the same order, and values that
    encode the same (so `1` and `True`, or `0.0` and `-0.0`, differ; containers only when identical)."""
    if len(template) != len(data) - 2 or not all(map(eq, template, data)):
        return False
    if all(map(is_, template.values(), data.values())):
        return True  # the usual case: the producer sends the same id strings for every update
    for value, data_value in zip(template.values(), data.values(), strict=False):
        if value is not data_value:
            kind = type(value)
            if kind is not type(data_value) or (kind is not str and kind is not int) or value != data_value:
                return False
    return True


_Plain = tuple[int, str | None, str, str]
"""Any other buffered event: seq, turn, type and its data as JSON. Also a tuple of atoms: the buffers of
a day's sessions, as events with their data as dicts, would be tens of objects per session to walk."""

_Kept = _Update | _Plain


class _Log:
    __slots__ = (
        "buffer",
        "next_key",
        "parts",
        "seq",
        "session_id",
        "shared",
        "subscribers",
        "turn",
        "used",
        "writing",
    )

    def __init__(self, session_id: str, size: int) -> None:
        self.session_id = session_id
        self.seq = 0
        self.used = 0.0
        """When the bus last published, replayed, counted or subscribed on this session (its clock)."""
        self.buffer: deque[_Kept] = deque(maxlen=size)
        self.shared: dict[int, _Shared] = {}
        """What the buffered text updates cut their data from, by key."""
        self.parts: dict[str, int] = {}
        """The key of the last few streamed parts, by partId (bounded, oldest first)."""
        self.next_key = 0
        self.subscribers: set[asyncio.Queue[Any]] = set()
        self.turn: str | None = None
        """The turn publishing here, until it ends or waits for an answer: while it runs, this log alone
        knows the session's numbering (the store learns it then), so it is never dropped."""
        self.writing: tuple[int, str, str, int] | None = None
        """The part streaming now: its key, the JSON of its data up to the text, its text so far
        JSON-escaped, and that text's length."""

    def keep(self, seq: int, kind: str, data: dict[str, Any], turn_id: str | None) -> str:
        """Buffer a published event (a text update by its place in the part's text, any other as JSON)
        and return its JSON, which the live subscribers send: it is encoded once either way."""
        if turn_id is not None:
            if kind == TURN_COMPLETED or (kind == TURN_STATUS and data.get("status") == "waiting_for_input"):
                if turn_id == self.turn:
                    self.turn = None
            else:
                self.turn = turn_id
        streamed = streamed_text(kind, data)
        if streamed is not None:
            part_id, text, delta = streamed
            update = self._part_update(seq, turn_id, data, part_id, text, len(delta))
            self.buffer.append(update)
            return self._encoded(update[2], text, delta)
        self.writing = None
        encoded = encode_data(data)
        self.buffer.append((seq, turn_id, kind, encoded))
        return encoded

    def _encoded(self, key: int, text: str, delta: str) -> str:
        """`Event.json` of a text update, escaping only the text added since the part's last update: the
        whole text so far, escaped again for every delta, was a tenth of a delta's cost in long answers."""
        writing = self.writing
        if writing is not None and writing[0] == key:  # the same shared text, so an extension of it
            _, head, escaped, length = writing
            escaped += encode_basestring(text[length:])[1:-1]
        else:
            template = encode_data(self.shared[key].template)
            head = template[:-1] + ("," if len(template) > 2 else "") + '"text":"'
            escaped = encode_basestring(text)[1:-1]
        self.writing = (key, head, escaped, len(text))
        return f'{head}{escaped}","delta":{encode_basestring(delta)}}}'

    def _part_update(
        self, seq: int, turn_id: str | None, data: dict[str, Any], part_id: str, text: str, size: int
    ) -> _Update:
        key = self.parts.get(part_id)
        shared = None if key is None else self.shared.get(key)
        same = shared is not None and _same_template(shared.template, data)
        if shared is not None and same and text.startswith(shared.text):
            shared.text = text  # an extension: the offsets of the earlier updates still cut the same text
        else:
            if shared is not None and same:
                template = shared.template
            else:
                template = dict(data)
                del template["text"], template["delta"]
            shared = _Shared(text, template)
            key = self._share(part_id, shared)
        assert key is not None
        shared.last_seq = seq
        end = len(text)
        return (seq, turn_id, key, end - size, end)

    def _share(self, part_id: str, shared: _Shared) -> int:
        """Register a new `_Shared` for `part_id`, and forget those no buffered update cuts from any more."""
        if self.buffer:
            oldest = self.buffer[0][0]
            for stale in [key for key, kept in self.shared.items() if kept.last_seq < oldest]:
                del self.shared[stale]
        key = self.next_key = self.next_key + 1
        self.shared[key] = shared
        parts = self.parts
        parts.pop(part_id, None)
        if len(parts) >= _RECENT_PARTS:
            del parts[next(iter(parts))]
        parts[part_id] = key
        return key

    def _fresh(self, kept: _Kept) -> Event:
        if len(kept) == 4:
            seq, turn_id, kind, encoded = kept  # type: ignore[misc]
            return Event(self.session_id, seq, kind, json.loads(encoded), turn_id, _json=encoded)
        seq, turn_id, key, start, end = kept  # type: ignore[misc]
        shared = self.shared[key]
        data = dict(shared.template)
        data["text"] = shared.text[:end]
        data["delta"] = shared.text[start:end]
        return Event(self.session_id, seq, MESSAGE_PART_UPDATED, data, turn_id)

    def replay(self, after: int) -> Replay:
        oldest = self.buffer[0][0] if self.buffer else None
        events = [self._fresh(e) for e in self.buffer if e[0] > after] if after < self.seq else []
        gap = after < self.seq and (oldest is None or after + 1 < oldest)
        return Replay(events=events, gap=gap, oldest_seq=oldest)


class MemoryEventBus:
    """The EventBus for one process. A slow subscriber past `queue_limit` is dropped (it can resume).

    A session's buffer is dropped once it has gone `idle_s` seconds unused (0 keeps every one for the
    process's life), as Redis expires its keys, and, least recently used first, when more than
    `max_sessions` would be held: a later replay reports the gap, and numbering goes on from the store's
    count (`seed`). A buffer someone follows or a turn runs on is never dropped, nor, to make room, one
    used in the last minute: the cap gives way to them.
    """

    def __init__(
        self,
        buffer_size: int = 1000,
        queue_limit: int = 10_000,
        idle_s: float = 86_400,
        clock: Callable[[], float] = time.monotonic,
        max_sessions: int = 10_000,
    ) -> None:
        self.buffer_size = buffer_size
        self.queue_limit = queue_limit
        self.idle_s = idle_s
        self.max_sessions = max_sessions
        self._clock = clock
        self._logs: OrderedDict[str, _Log] = OrderedDict()
        """Least recently used first."""
        self._next_sweep = 0.0

    def _log(self, session_id: str) -> _Log:
        logs = self._logs
        now = self._clock()
        log = logs.get(session_id)
        if log is None:
            if len(logs) >= self.max_sessions:  # the cap gives way to buffers in use or used just now
                self._drop_unused(now, now - _RECENT_S, len(logs) + 1 - self.max_sessions)
            log = logs[session_id] = _Log(session_id, self.buffer_size)
        else:
            logs.move_to_end(session_id)
        log.used = now
        return log

    def _sweep(self, now: float) -> None:
        """Drop the buffers unused for `idle_s`, at most once a minute (or once per `idle_s`)."""
        if not self.idle_s or now < self._next_sweep:
            return
        self._next_sweep = now + min(60.0, self.idle_s)
        self._drop_unused(now, now - self.idle_s)

    def _drop_unused(self, now: float, before: float, count: int | None = None) -> None:
        """Drop up to `count` (all, if None) of the buffers last used before `before`, least recently
        used first. One someone follows or a turn runs on is in use: it counts as used `now` instead."""
        logs = self._logs
        while logs and count != 0:
            session_id, log = next(iter(logs.items()))
            if log.used >= before:
                return
            if log.subscribers or log.turn is not None:
                log.used = now
                logs.move_to_end(session_id)
            else:
                del logs[session_id]
                count = None if count is None else count - 1

    def sessions(self) -> int:
        """How many sessions' buffers this bus holds."""
        return len(self._logs)

    async def publish(
        self, session_id: str, type: str, data: dict[str, Any], turn_id: str | None = None
    ) -> Event:
        log = self._log(session_id)
        # After taking the log: the session published to is the newest, so it is never the one dropped.
        self._sweep(log.used)
        log.seq += 1
        encoded = log.keep(log.seq, type, data, turn_id)
        event = Event(session_id, log.seq, type, data, turn_id, _json=encoded)
        for queue in tuple(log.subscribers):
            if queue.qsize() >= self.queue_limit:
                log.subscribers.discard(queue)
                queue.put_nowait(_CLOSED)
            else:
                queue.put_nowait(event)
        return event

    async def replay(self, session_id: str, after_seq: int) -> Replay:
        return self._log(session_id).replay(after_seq)

    async def subscribe(
        self, session_id: str, after_seq: int | None, heartbeat_s: float | None = None
    ) -> AsyncIterator[Event | Replay | None]:
        log = self._log(session_id)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        # Registering and taking the replay happen with no await between them: nothing can slip through.
        log.subscribers.add(queue)
        replay = log.replay(after_seq) if after_seq is not None else None
        beat = Heartbeat(queue, heartbeat_s)
        try:
            if replay is not None:
                yield replay
            while True:
                item = await take(queue)
                if item is HEARTBEAT:
                    yield None
                    continue
                beat.quiet = False
                if item is _CLOSED:
                    return
                yield item
        finally:
            beat.stop()
            log.subscribers.discard(queue)

    async def last_seq(self, session_id: str) -> int:
        return self._log(session_id).seq

    async def seed(self, session_id: str, seq: int) -> None:
        log = self._log(session_id)
        log.seq = max(log.seq, seq)

    def forget(self, session_id: str) -> None:
        """Drop a finished session's buffer (its subscribers end)."""
        log = self._logs.pop(session_id, None)
        if log is not None:
            for queue in log.subscribers:
                queue.put_nowait(_CLOSED)

    async def close(self) -> None:
        for session_id in list(self._logs):
            self.forget(session_id)
