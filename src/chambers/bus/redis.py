"""RedisEventBus: each session's events in a Redis Stream, so every replica replays and follows them.

Keys (all under `prefix`):

- `<prefix>:seq:<session>`: the session's sequence counter (our own numbers; stream ids are not small
  integers). A Lua script INCRs it and XADDs the event in one step, so sequence order is stream order.
- `<prefix>:events:<session>`: the stream, trimmed with `MAXLEN ~ buffer_size` (Redis keeps at least
  that many entries). Each entry is `Event.to_record()`: `s` session, `q` seq, `t` type, `d` JSON, `u` turn.
- `<prefix>:text:<session>:<part>.<n>`: the text so far of one streamed text part. Its updates carry the
  whole text so far; stored as published, a long answer would cost the stream quadratic memory. So
  such an entry keeps only the rest of the data in `d`, the new piece in `x`, the text key's suffix in
  `k` and the text's length after it in `n` (bytes), and the script APPENDs the piece to the key.
  Readers rebuild each update's text from the pieces they read, and read the key only to start in
  the middle of a part.
- `<prefix>:wake:<instance>`: a one-entry stream this process XADDs to, to cut its own blocked XREAD
  short when a session is added to the set it follows.

Every key of a session gets an expiry (`ttl_s`, refreshed on every publish; 0 keeps them forever); a
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
import json
import logging
import uuid
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
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
from chambers.core.events import Event, Replay, streamed_text

log = logging.getLogger("chambers.bus.redis")

_CLOSED = object()

# KEYS: seq, stream, text (the stream again for an event that is not a streamed text update).
# ARGV: maxlen, ttl_s, session, type, data, turn, text key suffix ('' for any other event), the new piece,
# the text's length before it ('' to SET the whole text, the last ARGV, instead of appending).
# `p` is the seq of the entry before this one in the stream (empty for the first): a reader that saw
# that entry knows it missed nothing, even when a `seed` made the numbers jump.
# An append to a text of another length than the publisher's publishes nothing and returns {-1}.
_PUBLISH = """
local size = nil
if ARGV[7] ~= '' then
  if ARGV[9] == '' then
    redis.call('SET', KEYS[3], ARGV[10])
    size = string.len(ARGV[10])
  elseif redis.call('STRLEN', KEYS[3]) == tonumber(ARGV[9]) then
    size = redis.call('APPEND', KEYS[3], ARGV[8])
  else
    return {-1, ''}
  end
end
local seq = redis.call('INCR', KEYS[1])
local prev = ''
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if last[1] then
  local fields = last[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'q' then prev = fields[i + 1] end
  end
end
local id
if size then
  id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*',
    'q', seq, 's', ARGV[3], 't', ARGV[4], 'd', ARGV[5], 'u', ARGV[6], 'p', prev,
    'k', ARGV[7], 'x', ARGV[8], 'n', size)
else
  id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*',
    'q', seq, 's', ARGV[3], 't', ARGV[4], 'd', ARGV[5], 'u', ARGV[6], 'p', prev)
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
  if size then redis.call('EXPIRE', KEYS[3], ttl) end
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


_PUBLISHED_TEXTS = 256
"""Streamed parts whose text a publisher remembers, to append to it (a turn streams one at a time)."""

_FOLLOWED_TEXTS = 4
"""Parts per followed session whose text the reader keeps, to rebuild their next updates."""

Fields = dict[str, Any]


class BusUnavailable(Unavailable):
    """Redis cannot be reached (or refused the command): events can be neither published nor followed."""


@dataclass(slots=True)
class _Failure:
    error: BaseException


@dataclass(slots=True)
class _Published:
    """A streamed part's text as this process last published it, and its key's suffix."""

    suffix: str
    text: str
    size: int
    """The text's length in bytes, as Redis counts it."""


class _Texts:
    """Rebuilds streamed text updates from their pieces, keeping the text so far of the last few parts."""

    __slots__ = ("known",)

    def __init__(self) -> None:
        self.known: dict[str, tuple[str, int]] = {}
        """Text and size in bytes, by text key suffix, oldest first."""

    def missing(self, entries: Iterable[Fields]) -> set[str]:
        """The text keys to read before `entries` (in stream order) can be rebuilt: those of parts that
        start in the middle, before the first piece of them seen here."""
        sizes = {suffix: size for suffix, (_, size) in self.known.items()}
        wanted: set[str] = set()
        for fields in entries:
            suffix = fields.get("k")
            if suffix is None:
                continue
            size, piece = int(fields["n"]), len(fields["x"].encode())
            if size != piece and sizes.get(suffix, -1) + piece != size:
                wanted.add(suffix)
            sizes[suffix] = size
        return wanted

    def event(self, fields: Fields, stored: Mapping[str, str]) -> Event | None:
        """The event of an entry; None when its text is in neither the pieces seen nor `stored`."""
        suffix = fields.get("k")
        if suffix is None:
            return Event.from_record(fields)
        piece: str = fields["x"]
        size, piece_size = int(fields["n"]), len(piece.encode())
        have = self.known.get(suffix)
        if have is not None and have[1] + piece_size == size:
            text = have[0] + piece
        elif piece_size == size:
            text = piece
        else:
            whole = stored.get(suffix, "").encode()
            if len(whole) < size:
                return None
            text = whole[:size].decode()
        known = self.known
        if have is None and len(known) >= _FOLLOWED_TEXTS:
            del known[next(iter(known))]
        known[suffix] = (text, size)
        return _text_event(fields, text, piece)


def _text_event(fields: Fields, text: str, piece: str) -> Event:
    """A streamed text update from its stored form: the rest of its data, then `text` and `delta`."""
    rest: str = fields["d"]
    data = json.loads(rest)
    data["text"] = text
    data["delta"] = piece
    encoded_text = json.dumps(text, ensure_ascii=False)
    encoded_piece = json.dumps(piece, ensure_ascii=False)
    # The same JSON as `Event.json` would make of `data`, without encoding the rest again.
    joiner = "," if len(data) > 2 else ""
    wire = f'{rest[:-1]}{joiner}"text":{encoded_text},"delta":{encoded_piece}}}'
    return Event(
        session_id=fields["s"],
        seq=int(fields["q"]),
        type=fields["t"],
        data=data,
        turn_id=fields.get("u") or None,
        _json=wire,
    )


@dataclass(eq=False, slots=True)
class _Follow:
    """The reader's position in one session's stream, and the local queues fed from it."""

    last_id: str
    last_seq: int | None
    queues: set[asyncio.Queue[Any]] = field(default_factory=set)
    texts: _Texts = field(default_factory=_Texts)


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
        self._published: dict[tuple[str, str], _Published] = {}
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

    def _text_key(self, session_id: str, suffix: str) -> str:
        return f"{self.prefix}:text:{session_id}:{suffix}"

    # the port

    async def publish(
        self, session_id: str, type: str, data: dict[str, Any], turn_id: str | None = None
    ) -> Event:
        event = Event(session_id=session_id, seq=0, type=type, data=data, turn_id=turn_id)
        keys = [self._seq_key(session_id), self._stream_key(session_id)]
        args: list[str | int] = [self.buffer_size, self.ttl_s, session_id, type]
        streamed = streamed_text(type, data)
        if streamed is None:
            event.seq = await self._append(
                keys + keys[1:], [*args, event.json, turn_id or "", "", "", "", ""]
            )
            return event
        part_id, text, piece = streamed
        rest = {name: value for name, value in data.items() if name != "text" and name != "delta"}
        args += [json.dumps(rest, separators=(",", ":"), ensure_ascii=False), turn_id or ""]
        published = self._published.get((session_id, part_id))
        if (
            published is not None
            and len(text) == len(published.text) + len(piece)
            and text.startswith(published.text)
        ):
            key = self._text_key(session_id, published.suffix)
            seq = await self._append([*keys, key], [*args, published.suffix, piece, published.size, ""])
            if seq != -1:
                published.text, published.size = text, published.size + len(piece.encode())
                event.seq = seq
                return event
        # A new part, a text that does not extend the last one, or a key that changed meanwhile: a new key.
        suffix = f"{part_id}.{uuid.uuid4().hex[:12]}"
        key = self._text_key(session_id, suffix)
        event.seq = await self._append([*keys, key], [*args, suffix, piece, "", text])
        self._published.pop((session_id, part_id), None)
        if len(self._published) >= _PUBLISHED_TEXTS:
            del self._published[next(iter(self._published))]
        self._published[(session_id, part_id)] = _Published(suffix, text, len(text.encode()))
        return event

    async def _append(self, keys: list[str], args: list[str | int]) -> int:
        """Run the publish script; the event's seq, or -1 when an append found another text length."""
        try:
            seq, _ = await self._publish(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            await self._lost(exc)
            raise BusUnavailable(f"event bus unavailable: could not publish to Redis ({exc})") from exc
        return int(seq)

    async def replay(self, session_id: str, after_seq: int) -> Replay:
        current, oldest, _newest, entries = await self._run_replay(session_id, after_seq, "+")
        return await self._replay_of(session_id, after_seq, current, oldest, entries)

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

    async def _replay_of(
        self,
        session_id: str,
        after: int,
        current: int,
        oldest: Sequence[tuple[str, Fields]],
        newest_first: Sequence[tuple[str, Fields]],
    ) -> Replay:
        """The same answer as the in-process bus: events after `after`, and whether some were dropped."""
        oldest_seq = int(oldest[0][1]["q"]) if oldest else None
        gap = after < current and (oldest_seq is None or after + 1 < oldest_seq)
        entries = [f for _, f in reversed(newest_first) if int(f["q"]) > after] if after < current else []
        texts = _Texts()
        stored = await self._stored(session_id, texts.missing(entries))
        events: list[Event] = []
        lost = False
        for fields in entries:
            event = texts.event(fields, stored)
            if event is None:  # its part's text expired: the replay starts after it, with a gap
                events.clear()
                lost = True
            else:
                events.append(event)
        if lost:
            gap, oldest_seq = True, events[0].seq if events else None
        return Replay(events=events, gap=gap, oldest_seq=oldest_seq)

    async def _stored(self, session_id: str, suffixes: Collection[str]) -> dict[str, str]:
        """The stored text of each named part of a session (those whose key still exists)."""
        if not suffixes:
            return {}
        names = list(suffixes)
        try:
            values = await self._redis.mget([self._text_key(session_id, suffix) for suffix in names])
        except (RedisError, OSError) as exc:
            await self._lost(exc)
            raise BusUnavailable(f"event bus unavailable: could not read from Redis ({exc})") from exc
        # decode_responses: values are str.
        return {suffix: str(value) for suffix, value in zip(names, values, strict=True) if value is not None}

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
                return follow, await self._replay_of(session_id, after, current, oldest, entries)
            except BaseException:
                self._leave(session_id, follow, queue)
                raise

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
        try:
            return follow, await self._replay_of(session_id, after, current, oldest, entries)
        except BaseException:
            self._leave(session_id, follow, queue)
            raise

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
                batches = self._batches(response)
                stored = {
                    session_id: await self._stored(
                        session_id, follow.texts.missing(fields for _, fields in entries)
                    )
                    for session_id, (follow, entries) in batches.items()
                    if any("k" in fields for _, fields in entries)
                }
                self._dispatch(batches, stored)
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

    def _batches(self, response: Any) -> dict[str, tuple[_Follow, list[tuple[str, Fields]]]]:
        """XREAD's new entries by followed session (the wake stream only moves its own position)."""
        batches: dict[str, tuple[_Follow, list[tuple[str, Fields]]]] = {}
        for key, raw in _stream_items(response):
            entries = _entries(raw)
            if not entries:
                continue
            if key == self._wake_key:
                self._wake_id = entries[-1][0]
                continue
            session_id = self._session_of(str(key))
            follow = self._follows.get(session_id)
            if follow is not None:
                last = _sid(follow.last_id)
                batches[session_id] = (follow, [e for e in entries if _sid(e[0]) > last])
        return batches

    def _dispatch(
        self,
        batches: Mapping[str, tuple[_Follow, list[tuple[str, Fields]]]],
        stored: Mapping[str, Mapping[str, str]],
    ) -> None:
        for session_id, (follow, entries) in batches.items():
            if self._follows.get(session_id) is not follow:
                continue  # left, or followed anew, while the texts were read
            texts = stored.get(session_id, {})
            for entry_id, fields in entries:
                if _sid(entry_id) <= _sid(follow.last_id):
                    continue
                seq = int(fields["q"])
                prev = fields.get("p")
                last = follow.last_seq
                if last is not None and seq != last + 1 and (not prev or int(prev) != last):
                    # Entries were trimmed before this process read them (or Redis lost the session's
                    # keys): end the local subscribers; they resume and are told about the gap.
                    log.warning(
                        "session %s: events %d..%d missed by this replica; closing its %d subscribers",
                        session_id,
                        last + 1,
                        seq - 1,
                        len(follow.queues),
                    )
                    self._end(session_id, follow, _CLOSED)
                    break
                event = follow.texts.event(fields, texts)
                if event is None:  # its part's text expired or was evicted: the same as a lost event
                    log.warning(
                        "session %s: the text of event %d is gone from Redis; closing its %d subscribers",
                        session_id,
                        seq,
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
