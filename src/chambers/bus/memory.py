"""MemoryEventBus: per-session sequence, a ring buffer for replay, and queues for live subscribers."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from chambers.core.events import Event, Replay

_CLOSED = object()


class _Log:
    __slots__ = ("buffer", "seq", "subscribers")

    def __init__(self, size: int) -> None:
        self.seq = 0
        self.buffer: deque[Event] = deque(maxlen=size)
        self.subscribers: set[asyncio.Queue[Any]] = set()

    def replay(self, after: int) -> Replay:
        oldest = self.buffer[0].seq if self.buffer else None
        events = [e for e in self.buffer if e.seq > after] if after < self.seq else []
        gap = after < self.seq and (oldest is None or after + 1 < oldest)
        return Replay(events=events, gap=gap, oldest_seq=oldest)


class MemoryEventBus:
    """The EventBus for one process. A slow subscriber past `queue_limit` is dropped (it can resume)."""

    def __init__(self, buffer_size: int = 1000, queue_limit: int = 10_000) -> None:
        self.buffer_size = buffer_size
        self.queue_limit = queue_limit
        self._logs: dict[str, _Log] = {}

    def _log(self, session_id: str) -> _Log:
        log = self._logs.get(session_id)
        if log is None:
            log = self._logs[session_id] = _Log(self.buffer_size)
        return log

    async def publish(
        self, session_id: str, type: str, data: dict[str, Any], turn_id: str | None = None
    ) -> Event:
        log = self._log(session_id)
        log.seq += 1
        event = Event(session_id=session_id, seq=log.seq, type=type, data=data, turn_id=turn_id)
        log.buffer.append(event)
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
        try:
            if replay is not None:
                yield replay
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), heartbeat_s)
                except TimeoutError:
                    yield None
                    continue
                if item is _CLOSED:
                    return
                yield item
        finally:
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
