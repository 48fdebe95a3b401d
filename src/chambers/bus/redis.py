"""RedisEventBus: each session's events in a Redis Stream, so every replica replays and follows them.

Keys (all under `prefix`):

- `<prefix>:seq:<session>`: the session's sequence counter (our own numbers; stream ids are not small
  integers). A Lua script INCRs it and XADDs the event in one step, so sequence order is stream order.
- `<prefix>:events:<session>`: the stream, trimmed with `MAXLEN ~ buffer_size` (Redis keeps at least
  that many entries). Each entry is `Event.to_record()`: `s` session, `q` seq, `t` type, `d` JSON, `u` turn.
- `<prefix>:wake:<instance>`: a one-entry stream this process XADDs to, to cut its own blocked XREAD
  short when a session is added to the set it follows.

Both per-session keys get an expiry (`ttl_s`, refreshed on every publish; 0 keeps them forever); a
session whose keys expired is re-seeded from the Store, and a replay older than what is left is
reported as a gap.

One reader task per process follows every session that has a local subscriber with a single
`XREAD BLOCK` over all their streams, on a dedicated connection, and fans entries out to local queues.
Everything else uses one connection pool. When Redis goes away, `publish` raises `BusUnavailable` (the
turn fails clearly) and every subscriber's iterator raises it; the next command reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from chambers.bus.queues import HEARTBEAT, Heartbeat, take
from chambers.core.errors import Unavailable
from chambers.core.events import Event, Replay

log = logging.getLogger("chambers.bus.redis")

_CLOSED = object()

# KEYS: seq, stream. ARGV: maxlen, ttl_s, session, type, data, turn.
# `p` is the seq of the entry before this one in the stream (empty for the first): a reader that saw
# that entry knows it missed nothing, even when a `seed` made the numbers jump.
_PUBLISH = """
local seq = redis.call('INCR', KEYS[1])
local prev = ''
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if last[1] then
  local fields = last[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'q' then prev = fields[i + 1] end
  end
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*',
  'q', seq, 's', ARGV[3], 't', ARGV[4], 'd', ARGV[5], 'u', ARGV[6], 'p', prev)
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
end
return {seq, id}
"""

# KEYS: seq. ARGV: seq, ttl_s. Returns the counter after the call.
_SEED = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local wanted = tonumber(ARGV[1])
if wanted > current then
  redis.call('SET', KEYS[1], wanted)
  current = wanted
end
local ttl = tonumber(ARGV[2])
if ttl > 0 and current > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
end
return current
"""

# KEYS: seq, stream. ARGV: after, upto (a stream id, or '+' for the newest).
# Returns {counter, oldest entry, newest entry (only when upto is '+'), entries <= upto, newest first}.
# Seq order is stream order, so the entries after `after` are among the newest (counter - after).
_REPLAY = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local after = tonumber(ARGV[1])
local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
local newest = {}
if ARGV[2] == '+' then
  newest = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
end
local entries = {}
if after < current then
  entries = redis.call('XREVRANGE', KEYS[2], ARGV[2], '-', 'COUNT', current - after)
end
return {current, oldest, newest, entries}
"""


class BusUnavailable(Unavailable):
    """Redis cannot be reached (or refused the command): events can be neither published nor followed."""


@dataclass(slots=True)
class _Failure:
    error: BaseException


@dataclass(eq=False, slots=True)
class _Follow:
    """The reader's position in one session's stream, and the local queues fed from it."""

    last_id: str
    last_seq: int | None
    queues: set[asyncio.Queue[Any]] = field(default_factory=set)


def _sid(stream_id: str) -> tuple[int, int]:
    ms, _, n = stream_id.partition("-")
    return int(ms), int(n or 0)


def _fields(raw: Any) -> dict[str, Any]:
    if isinstance(raw, Mapping):
        return dict(raw)
    items = list(raw)
    return dict(zip(items[::2], items[1::2], strict=True))


def _entries(raw: Any) -> list[tuple[str, dict[str, Any]]]:
    """Stream entries as returned by XRANGE, XREAD or a script: `[[id, fields], ...]`."""
    return [(str(entry_id), _fields(fields)) for entry_id, fields in raw or ()]


def _stream_items(response: Any) -> Iterable[tuple[str, Any]]:
    """XREAD's reply, RESP2 (`[[key, entries], ...]`) or RESP3 (`{key: entries}`)."""
    if not response:
        return ()
    if isinstance(response, Mapping):
        return response.items()
    return ((key, entries) for key, entries in response)


class RedisEventBus:
    """The EventBus on Redis Streams, shared by every replica that uses the same Redis and prefix.

    A slow local subscriber past `queue_limit` is dropped (it can resume with its last id), like the
    in-process bus.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "chambers",
        buffer_size: int = 1000,
        ttl_s: int = 86_400,
        queue_limit: int = 10_000,
        block_ms: int = 5_000,
        read_count: int = 1_000,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.buffer_size = buffer_size
        self.ttl_s = ttl_s
        self.queue_limit = queue_limit
        self.block_ms = block_ms
        self.read_count = read_count
        self.connect_timeout_s = connect_timeout_s
        # No retries: a publish whose reply was lost may have happened, and must not happen twice. (A
        # pooled connection that Redis closed is replaced when taken from the pool.)
        self._redis: Redis = Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=connect_timeout_s,
            socket_timeout=max(connect_timeout_s, 5.0),
            retry=Retry(NoBackoff(), 0),
        )
        self._publish = self._redis.register_script(_PUBLISH)
        self._seed = self._redis.register_script(_SEED)
        self._replay = self._redis.register_script(_REPLAY)
        self._follows: dict[str, _Follow] = {}
        self._reader_task: asyncio.Task[None] | None = None
        self._blocked_on: frozenset[str] | None = None
        self._wake_pending = False
        self._wake_key = f"{prefix}:wake:{uuid.uuid4().hex}"
        self._wake_id = "0-0"
        self._closed = False

    async def _lost(self, exc: BaseException) -> None:
        """After a lost connection, drop the pool's idle ones: they died with it, and the first command on
        each would fail once Redis is back (the pool does not always notice a closed one)."""
        if isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError)):
            with contextlib.suppress(Exception):
                await self._redis.connection_pool.disconnect(inuse_connections=False)

    # keys

    def _seq_key(self, session_id: str) -> str:
        return f"{self.prefix}:seq:{session_id}"

    def _stream_key(self, session_id: str) -> str:
        return f"{self.prefix}:events:{session_id}"

    def _session_of(self, stream_key: str) -> str:
        return stream_key.removeprefix(f"{self.prefix}:events:")

    # the port

    async def publish(
        self, session_id: str, type: str, data: dict[str, Any], turn_id: str | None = None
    ) -> Event:
        event = Event(session_id=session_id, seq=0, type=type, data=data, turn_id=turn_id)
        args: list[str | int] = [self.buffer_size, self.ttl_s, session_id, type, event.json, turn_id or ""]
        try:
            seq, _ = await self._publish(
                keys=[self._seq_key(session_id), self._stream_key(session_id)], args=args
            )
        except (RedisError, OSError) as exc:
            await self._lost(exc)
            raise BusUnavailable(f"event bus unavailable: could not publish to Redis ({exc})") from exc
        event.seq = int(seq)
        return event

    async def replay(self, session_id: str, after_seq: int) -> Replay:
        current, oldest, _newest, entries = await self._run_replay(session_id, after_seq, "+")
        return _replay(after_seq, current, oldest, entries)

    async def subscribe(
        self, session_id: str, after_seq: int | None, heartbeat_s: float | None = None
    ) -> AsyncIterator[Event | Replay | None]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        follow, replay = await self._join(session_id, after_seq, queue)
        # The reader may still be behind `after_seq` when this subscriber joins: what it then delivers
        # up to there, the subscriber already has.
        floor = after_seq if after_seq is not None else -1
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
                if isinstance(item, _Failure):
                    raise BusUnavailable(
                        f"event bus unavailable: lost Redis while following {session_id} ({item.error})"
                    ) from item.error
                if item.seq <= floor:
                    continue
                floor = item.seq
                yield item
        finally:
            beat.stop()
            self._leave(session_id, follow, queue)

    async def last_seq(self, session_id: str) -> int:
        try:
            value = await self._redis.get(self._seq_key(session_id))
        except (RedisError, OSError) as exc:
            await self._lost(exc)
            raise BusUnavailable(f"event bus unavailable: {exc}") from exc
        return int(value or 0)

    async def seed(self, session_id: str, seq: int) -> None:
        try:
            await self._seed(keys=[self._seq_key(session_id)], args=[seq, self.ttl_s])
        except (RedisError, OSError) as exc:
            await self._lost(exc)
            raise BusUnavailable(f"event bus unavailable: {exc}") from exc

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._end_all(_CLOSED)
        task, self._reader_task = self._reader_task, None
        if task is not None:
            # Wake the reader's blocked XREAD rather than cancel it: redis-py may finish a blocking read
            # it was cancelled in (up to `block_ms` later). Cancel only when waking does not work.
            with contextlib.suppress(RedisError, OSError):
                await self._redis.xadd(self._wake_key, {"w": "close"}, maxlen=1, approximate=False)
            done, _ = await asyncio.wait({task}, timeout=2)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        with contextlib.suppress(RedisError, OSError):
            await self._redis.delete(self._wake_key)
        await self._redis.aclose()

    # beyond the port

    async def ping(self) -> None:
        """Raise when Redis cannot be reached (for readiness probes)."""
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            await self._lost(exc)
            raise BusUnavailable(f"event bus unavailable: {exc}") from exc

    def local_subscribers(self, session_id: str | None = None) -> int:
        """How many subscribers this process has (on one session, or on all)."""
        if session_id is not None:
            follow = self._follows.get(session_id)
            return len(follow.queues) if follow is not None else 0
        return sum(len(f.queues) for f in self._follows.values())

    # subscribing

    async def _run_replay(
        self, session_id: str, after_seq: int, upto: str
    ) -> tuple[
        int,
        list[tuple[str, dict[str, Any]]],
        list[tuple[str, dict[str, Any]]],
        list[tuple[str, dict[str, Any]]],
    ]:
        try:
            current, oldest, newest, entries = await self._replay(
                keys=[self._seq_key(session_id), self._stream_key(session_id)], args=[after_seq, upto]
            )
        except (RedisError, OSError) as exc:
            await self._lost(exc)
            raise BusUnavailable(f"event bus unavailable: could not read from Redis ({exc})") from exc
        return int(current), _entries(oldest), _entries(newest), _entries(entries)

    async def _join(
        self, session_id: str, after_seq: int | None, queue: asyncio.Queue[Any]
    ) -> tuple[_Follow, Replay | None]:
        """Register `queue` and take the replay so that together they miss and repeat nothing.

        The queue receives every entry after its follow's `last_id`; the replay covers the entries up to
        that id. Registering and reading `last_id` happen with no await between them.
        """
        if self._closed:
            raise BusUnavailable("event bus closed")
        after = after_seq if after_seq is not None else 2**53
        follow = self._follows.get(session_id)
        if follow is not None:
            follow.queues.add(queue)
            if after_seq is None:
                return follow, None
            upto = follow.last_id
            try:
                current, oldest, _, entries = await self._run_replay(session_id, after, upto)
            except BaseException:
                self._leave(session_id, follow, queue)
                raise
            return follow, _replay(after, current, oldest, entries)

        current, oldest, newest, entries = await self._run_replay(session_id, after, "+")
        head_id, head_seq = (newest[0][0], int(newest[0][1]["q"])) if newest else ("0-0", None)
        follow = self._follows.get(session_id)
        if follow is None:
            follow = self._follows[session_id] = _Follow(last_id=head_id, last_seq=head_seq)
        follow.queues.add(queue)
        upto = follow.last_id
        # Invariant: while any session is followed, a reader task runs.
        if self._reader_task is None:
            self._reader_task = asyncio.create_task(self._read(), name="redis event reader")
        try:
            await self._wake(session_id)
            if _sid(upto) < _sid(head_id):
                entries = [e for e in entries if _sid(e[0]) <= _sid(upto)]
            elif _sid(upto) > _sid(head_id) and after_seq is not None:
                # Another subscriber made the follow meanwhile and the reader moved past what this one
                # read: read again, up to the follow's position.
                current, oldest, _, entries = await self._run_replay(session_id, after, upto)
        except BaseException:
            self._leave(session_id, follow, queue)
            raise
        if after_seq is None:
            return follow, None
        return follow, _replay(after, current, oldest, entries)

    def _leave(self, session_id: str, follow: _Follow, queue: asyncio.Queue[Any]) -> None:
        follow.queues.discard(queue)
        if not follow.queues and self._follows.get(session_id) is follow:
            del self._follows[session_id]

    async def _wake(self, session_id: str) -> None:
        """Cut the reader's blocked XREAD short when it does not include `session_id`'s stream yet."""
        blocked = self._blocked_on
        if blocked is None or self._stream_key(session_id) in blocked or self._wake_pending:
            return
        self._wake_pending = True
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(self._wake_key, {"w": "1"}, maxlen=1, approximate=False)
                pipe.expire(self._wake_key, 3600)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            await self._lost(exc)
            self._wake_pending = False
            raise BusUnavailable(f"event bus unavailable: {exc}") from exc

    # the reader

    async def _read(self) -> None:
        """Follow every locally subscribed session with one blocking XREAD; fan entries out."""
        reader: Redis = Redis.from_url(
            self.url,
            decode_responses=True,
            single_connection_client=True,
            socket_connect_timeout=self.connect_timeout_s,
            socket_timeout=self.block_ms / 1000 + 10,
            retry=Retry(NoBackoff(), 0),
            client_name=f"{self.prefix}:reader",
        )
        try:
            while True:
                if not self._follows or self._closed:
                    self._reader_task = None
                    return
                streams: dict[str, str] = {self._wake_key: self._wake_id}
                for session_id, follow in self._follows.items():
                    streams[self._stream_key(session_id)] = follow.last_id
                self._blocked_on = frozenset(streams)
                self._wake_pending = False
                try:
                    response = await reader.xread(streams, count=self.read_count, block=self.block_ms)  # type: ignore[arg-type]
                finally:
                    self._blocked_on = None
                self._dispatch(response)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self._closed:
                log.warning(
                    "Redis event reader failed (%s: %s); %d local subscribers closed",
                    type(exc).__name__,
                    exc,
                    self.local_subscribers(),
                )
            self._reader_task = None
            self._end_all(_Failure(exc))
        finally:
            with contextlib.suppress(Exception):
                await reader.aclose()

    def _dispatch(self, response: Any) -> None:
        for key, raw in _stream_items(response):
            entries = _entries(raw)
            if not entries:
                continue
            if key == self._wake_key:
                self._wake_id = entries[-1][0]
                continue
            session_id = self._session_of(str(key))
            follow = self._follows.get(session_id)
            if follow is None:
                continue
            for entry_id, fields in entries:
                if _sid(entry_id) <= _sid(follow.last_id):
                    continue
                event = Event.from_record(fields)
                prev = fields.get("p")
                if (
                    follow.last_seq is not None
                    and event.seq != follow.last_seq + 1
                    and (not prev or int(prev) != follow.last_seq)
                ):
                    # Entries were trimmed before this process read them (or Redis lost the session's
                    # keys): end the local subscribers; they resume and are told about the gap.
                    log.warning(
                        "session %s: events %d..%d missed by this replica; closing its %d subscribers",
                        session_id,
                        follow.last_seq + 1,
                        event.seq - 1,
                        len(follow.queues),
                    )
                    self._end(session_id, follow, _CLOSED)
                    break
                follow.last_id, follow.last_seq = entry_id, event.seq
                for queue in tuple(follow.queues):
                    if queue.qsize() >= self.queue_limit:
                        follow.queues.discard(queue)
                        queue.put_nowait(_CLOSED)
                    else:
                        queue.put_nowait(event)
                if not follow.queues:
                    if self._follows.get(session_id) is follow:
                        del self._follows[session_id]
                    break

    def _end(self, session_id: str, follow: _Follow, item: object) -> None:
        for queue in follow.queues:
            queue.put_nowait(item)
        follow.queues.clear()
        if self._follows.get(session_id) is follow:
            del self._follows[session_id]

    def _end_all(self, item: object) -> None:
        for session_id, follow in list(self._follows.items()):
            self._end(session_id, follow, item)


def _replay(
    after: int,
    current: int,
    oldest: Sequence[tuple[str, dict[str, Any]]],
    newest_first: Sequence[tuple[str, dict[str, Any]]],
) -> Replay:
    """The same answer as the in-process bus: events after `after`, and whether some were dropped."""
    oldest_seq = int(oldest[0][1]["q"]) if oldest else None
    events: list[Event] = []
    if after < current:
        for _, fields in reversed(newest_first):
            if int(fields["q"]) > after:
                events.append(Event.from_record(fields))
    gap = after < current and (oldest_seq is None or after + 1 < oldest_seq)
    return Replay(events=events, gap=gap, oldest_seq=oldest_seq)
