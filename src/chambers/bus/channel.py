"""ReplicaChannel adapters: in-process (one replica) and Redis Streams (many)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

log = logging.getLogger("chambers.channel")


class LocalChannel:
    """Every replica lives in this process (the default: there is only one)."""

    def __init__(self) -> None:
        self._queues: dict[str, asyncio.Queue[dict[str, Any]]] = {}

    def _queue(self, replica_id: str) -> asyncio.Queue[dict[str, Any]]:
        return self._queues.setdefault(replica_id, asyncio.Queue())

    async def send(self, replica_id: str, message: dict[str, Any]) -> None:
        self._queue(replica_id).put_nowait(message)

    async def listen(self, replica_id: str) -> AsyncIterator[dict[str, Any]]:
        queue = self._queue(replica_id)
        while True:
            yield await queue.get()

    async def close(self) -> None:
        self._queues.clear()


class RedisChannel:
    """One capped Redis Stream per replica; the replica follows its own stream with XREAD BLOCK."""

    def __init__(self, url: str, prefix: str = "chambers", maxlen: int = 10_000) -> None:
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(url, decode_responses=True)
        self._prefix = prefix
        self._maxlen = maxlen

    def _key(self, replica_id: str) -> str:
        return f"{self._prefix}:control:{replica_id}"

    async def send(self, replica_id: str, message: dict[str, Any]) -> None:
        await self._redis.xadd(
            self._key(replica_id), {"m": json.dumps(message)}, maxlen=self._maxlen, approximate=True
        )

    async def listen(self, replica_id: str) -> AsyncIterator[dict[str, Any]]:
        key = self._key(replica_id)
        # Start after what is already there (older messages were for a previous run), then follow by id,
        # so nothing sent while a read is retried is skipped.
        newest = await self._redis.xrevrange(key, count=1)
        last: str = str(newest[0][0]) if newest else "0-0"
        while True:
            try:
                # Block for less than the client's socket timeout, so an idle read is not an error.
                answer = await self._redis.xread({key: last}, block=1000, count=100)
            except Exception as exc:  # Redis away: say so, then try again
                log.warning("control channel read failed: %s", exc)
                await asyncio.sleep(1)
                continue
            streams: list[Any] = list(answer or [])
            for _stream, entries in streams:
                for entry_id, fields in entries:
                    last = entry_id
                    try:
                        yield json.loads(fields["m"])
                    except (KeyError, ValueError):
                        log.warning("dropping a malformed control message %s", entry_id)

    async def close(self) -> None:
        await self._redis.aclose()
