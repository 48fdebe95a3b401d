"""The EventBus conformance suite on each adapter, the Redis bus's own rules, and two replicas on Redis."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gc
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis.asyncio as aioredis

from chambers.api.sse import encode
from chambers.bus.conformance import (
    BusFactory,
    EventBusSuite,
    first_replay,
    live,
    new_session,
    next_events,
    next_item,
    publish_n,
    seqs,
    subscribed,
    text_update,
)
from chambers.bus.memory import MemoryEventBus
from chambers.bus.redis import BusUnavailable, RedisEventBus
from chambers.config import Settings
from chambers.core.events import MESSAGE_PART_UPDATED, Event, Replay
from chambers.core.ports import EventBus
from chambers.wiring import build_bus
from tests.conftest import auth, need_postgres, need_redis
from tests.support import services
from tests.support.fake_upstream import FakeUpstream, Gate, Reply, Text, ToolCall
from tests.support.server import ServerProcess
from tests.support.sse import events, read_until, turn_done


class TestMemoryEventBus(EventBusSuite):
    @pytest.fixture
    async def make_bus(self) -> AsyncIterator[BusFactory]:
        made: list[MemoryEventBus] = []

        def make(*, buffer_size: int = 500, queue_limit: int = 10_000) -> EventBus:
            made.append(MemoryEventBus(buffer_size=buffer_size, queue_limit=queue_limit))
            return made[-1]

        yield make
        for bus in made:
            await bus.close()

    @pytest.fixture
    def subscriber_count(self) -> Callable[[EventBus, str], int]:
        def count(bus: EventBus, session_id: str) -> int:
            assert isinstance(bus, MemoryEventBus)
            log = bus._logs.get(session_id)
            return len(log.subscribers) if log is not None else 0

        return count

    @pytest.fixture
    def shares_backend(self) -> str | None:
        return "MemoryEventBus instances share nothing: the in-process bus serves a single process"


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    need_redis()
    prefix = services.redis_prefix()
    yield prefix
    services.flush_prefix(prefix)


@pytest.mark.redis
class TestRedisEventBus(EventBusSuite):
    @pytest.fixture
    async def make_bus(self, redis_prefix: str) -> AsyncIterator[BusFactory]:
        made: list[RedisEventBus] = []

        def make(*, buffer_size: int = 500, queue_limit: int = 10_000) -> EventBus:
            made.append(
                RedisEventBus(
                    services.REDIS_URL, prefix=redis_prefix, buffer_size=buffer_size, queue_limit=queue_limit
                )
            )
            return made[-1]

        yield make
        for bus in made:
            await bus.close()

    @pytest.fixture
    def subscriber_count(self) -> Callable[[EventBus, str], int]:
        def count(bus: EventBus, session_id: str) -> int:
            assert isinstance(bus, RedisEventBus)
            return bus.local_subscribers(session_id)

        return count


# The memory bus's own rules


async def stream_text(bus: MemoryEventBus, session: str, part_id: str, deltas: int, size: int) -> str:
    """Stream one text part to a live subscriber that encodes each event as the SSE adapter does."""
    text = ""
    async with subscribed(bus, session, None, heartbeat_s=0.01) as sub:
        await live(sub)
        for i in range(deltas):
            delta = f"{i:>{size}}"[-size:]
            text += delta
            await bus.publish(session, MESSAGE_PART_UPDATED, text_update(part_id, text, delta), "turn_1")
            (event,) = await next_events(sub, 1)
            assert encode(event)
    return text


async def retained_by(work: Callable[[], Awaitable[object]]) -> int:
    """Bytes still allocated once `work` is done and its result dropped."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await work()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


async def test_the_memory_buffer_keeps_a_streamed_text_once() -> None:
    """Every update of a streamed text carries the whole text so far. Kept as published, 500 deltas of 8
    characters put 8 * (1 + 2 + … + 500) ≈ 1 MB of text in the buffer, and ≈ 3 MB once a subscriber has
    cached each event's JSON and SSE encoding on it: quadratic in the answer. Kept as one shared text and
    offsets, it is the 4 KB text plus ~170 bytes a buffered update, ≈ 85 KB: linear. 150 KB is well above
    the one and far below the other."""
    bus = MemoryEventBus(buffer_size=1000)
    session = new_session()
    await bus.publish(session, "turn.started", {"turnId": "turn_1"})  # the session's log exists already
    kept = await retained_by(lambda: stream_text(bus, session, "part_a", deltas=500, size=8))
    assert kept < 150_000, f"the buffer keeps {kept / 1024:.0f} KB for a 4 KB answer"
    replay = await bus.replay(session, 0)
    assert seqs(replay.events) == list(range(1, 502))
    assert [len(e.data["text"]) for e in replay.events[1:]] == list(range(8, 4001, 8))


async def test_the_memory_buffer_lets_go_of_the_parts_it_no_longer_holds() -> None:
    """Part after part is streamed through a buffer of 40 events, each part 40 updates to a 100 KB text.
    The buffer then holds one part's updates (their shared text: 100 KB) and the bus remembers the text
    of a few recent parts to extend them (~4 * 100 KB). Remembering every part would keep 30 * 100 KB
    = 3 MB, and keeping the updates' texts as published 2.5 KB * (1 + … + 40) ≈ 2 MB; 1 MB separates."""
    bus = MemoryEventBus(buffer_size=40)
    session = new_session()
    await bus.publish(session, "turn.started", {"turnId": "turn_1"})

    async def stream_parts() -> None:
        for n in range(30):
            await stream_text(bus, session, f"part_{n}", deltas=40, size=2500)

    kept = await retained_by(stream_parts)
    assert kept < 1_000_000, f"the buffer keeps {kept / 1024:.0f} KB for 40 events"
    replay = await bus.replay(session, 0)
    assert replay.gap is True and len(replay.events) == 40
    assert {e.data["partId"] for e in replay.events} == {"part_29"}
    assert len(replay.events[-1].data["text"]) == 100_000


async def test_the_memory_buffer_leaves_the_garbage_collector_little_to_walk() -> None:
    """A full collection walks every object it tracks, and a server keeps the buffers of many sessions:
    as one object each, 1,500 buffers of 500 streamed updates made one take 93 ms, a stall of every
    stream. Buffered events are plain tuples, which the collector stops tracking: streamed updates, and
    the others too (as events with their data, a turn's few of them were tens of objects a session)."""
    bus = MemoryEventBus(buffer_size=1000)
    completed: dict[str, Any] = {"turnId": "turn_1", "status": "completed", "parts": [{"text": "0 1"}]}
    usage: dict[str, Any] = {
        "turnId": "turn_1",
        "usage": {"tokens": {"input": 3, "output": 200}, "cost": {"total": 0.1}},
    }
    gc.collect()
    before = len(gc.get_objects())
    for _ in range(50):
        session, text = new_session(), ""
        await bus.publish(session, "turn.started", {"turnId": "turn_1"}, "turn_1")
        for i in range(200):
            text += f"{i} "
            await bus.publish(session, MESSAGE_PART_UPDATED, text_update("part_a", text, f"{i} "), "turn_1")
        for kind, data in [("message.completed", completed), ("session.usage", usage)] * 3:
            await bus.publish(session, kind, copy.deepcopy(data), "turn_1")
        await bus.publish(session, "turn.completed", {"turnId": "turn_1", "status": "completed"}, "turn_1")
    gc.collect()
    tracked = len(gc.get_objects()) - before
    assert tracked < 500, f"{tracked} more objects tracked for 50 sessions' buffers"  # 1,250 as events
    replay = await bus.replay(session, 150)
    assert replay.events[50].data["text"] == text and replay.events[0].seq == 151
    assert replay.events[-2].data == usage and replay.events[-1].type == "turn.completed"


async def test_the_memory_bus_drops_buffers_unused_for_a_while_but_not_followed_ones() -> None:
    """Buffers would otherwise live as long as the process, one per session ever seen. As Redis expires
    its keys, a buffer unused for `idle_s` with no subscriber goes; a replay then reports the gap and
    numbering goes on from the store's count (`seed`)."""
    clock = [1000.0]
    bus = MemoryEventBus(idle_s=600, clock=lambda: clock[0])
    quiet, followed, busy = new_session(), new_session(), new_session()
    await publish_n(bus, quiet, 3)
    await publish_n(bus, followed, 2)
    async with subscribed(bus, followed, 2) as sub:
        await first_replay(sub)
        clock[0] += 601
        await publish_n(bus, busy, 1)  # a publish sweeps, at most once a minute
        assert bus.sessions() == 2  # `quiet` went; `followed` stays while someone follows it
        await bus.seed(quiet, 3)  # as the API does from the store before a replay or a turn
        replay = await bus.replay(quiet, 1)
        assert (replay.events, replay.gap) == ([], True)
        assert seqs(await publish_n(bus, quiet, 1)) == [4]
        await publish_n(bus, followed, 1)
        assert seqs(await next_events(sub, 1)) == [3]
    running = new_session()  # a turn quiet for longer than `idle_s` (a long tool call) keeps its buffer
    await bus.publish(running, "turn.started", {"turnId": "turn_1"}, "turn_1")
    clock[0] += 601
    await publish_n(bus, busy, 1)
    assert seqs([await bus.publish(running, "turn.status", {"status": "running"}, "turn_1")]) == [2]
    forever = MemoryEventBus(idle_s=0, clock=lambda: clock[0])
    await publish_n(forever, quiet, 1)
    clock[0] += 10**9
    await publish_n(forever, busy, 1)
    assert forever.sessions() == 2


async def test_the_memory_bus_holds_at_most_max_sessions_but_never_drops_one_in_use() -> None:
    """At 20 new sessions a second a day's buffers would be gigabytes: past `max_sessions` the least
    recently used go. Not one a turn runs on, whose numbering only the buffer knows until the turn ends
    or waits for an answer, nor one someone follows, nor one used in the last minute (seeded for a turn
    that has not published yet). A dropped one's replay reports the gap, as after `idle_s`."""
    clock = [1000.0]
    bus = MemoryEventBus(max_sessions=3, clock=lambda: clock[0])
    running, followed, done, asking, newer = (new_session() for _ in range(5))
    await bus.publish(running, "turn.started", {"turnId": "turn_1"}, "turn_1")
    await publish_n(bus, followed, 2)
    async with subscribed(bus, followed, 2) as sub:
        await first_replay(sub)
        await bus.publish(done, "turn.started", {"turnId": "turn_2"}, "turn_2")
        await bus.publish(done, "turn.completed", {"turnId": "turn_2", "status": "completed"}, "turn_2")
        await bus.publish(asking, "turn.started", {"turnId": "turn_3"}, "turn_3")
        await bus.publish(
            asking, "turn.status", {"turnId": "turn_3", "status": "waiting_for_input"}, "turn_3"
        )
        assert bus.sessions() == 4  # all used a moment ago: the cap gives way
        clock[0] += 61
        await publish_n(bus, newer, 1)  # `running` and `followed` are older, but `done` and `asking` go
        assert bus.sessions() == 3
        for gone, seq in ((done, 2), (asking, 2)):
            await bus.seed(gone, seq)  # as the API does from the store before a replay or a turn
            assert (await bus.replay(gone, 0)).gap is True
        completed = {"turnId": "turn_1", "status": "failed"}
        ended = await bus.publish(running, "turn.completed", completed, "turn_1")
        assert ended.seq == 2  # numbering went on: the running turn's buffer stayed
        await publish_n(bus, followed, 1)
        assert seqs(await next_events(sub, 1)) == [3]
        clock[0] += 61
        for _ in range(2):  # the seeds above took places: `newer`, `done` and `asking` go first, then
            await publish_n(bus, new_session(), 1)  # `running`, whose turn has ended; `followed` not
        assert bus.sessions() == 3
        await bus.seed(running, 2)
        assert (await bus.replay(running, 0)).gap is True
        assert seqs((await bus.replay(followed, 0)).events) == [1, 2, 3]


def test_the_buffer_cap_is_a_setting_and_an_empty_redis_url_means_the_in_process_bus() -> None:
    bus = build_bus(Settings(redis_url="", event_buffer_sessions=7, event_buffer_idle_s=30))
    assert isinstance(bus, MemoryEventBus) and (bus.max_sessions, bus.idle_s) == (7, 30)


async def test_only_the_running_turns_own_end_releases_its_buffer() -> None:
    clock = [1000.0]
    bus = MemoryEventBus(max_sessions=1, clock=lambda: clock[0])
    session = new_session()
    await bus.publish(session, "turn.started", {"turnId": "turn_2"}, "turn_2")
    # An older turn closed late (recovered after a crash) says nothing of the one running now.
    await bus.publish(session, "turn.completed", {"turnId": "turn_1", "status": "failed"}, "turn_1")
    clock[0] += 61
    await publish_n(bus, new_session(), 1)
    assert seqs([await bus.publish(session, "turn.completed", {"turnId": "turn_2"}, "turn_2")]) == [3]


async def test_the_memory_bus_shares_live_events_and_buffers_them_without_their_encoding() -> None:
    """Live subscribers get the very event `publish` made (encoded once for all); the buffer keeps a plain
    event as that one JSON string, and replays make new events of it, so no transport encoding settles
    in the buffer, and a later change to the published data does not rewrite what was sent."""
    bus = MemoryEventBus()
    session = new_session()
    output = {"output": "x" * 10_000}
    tool = {"turnId": "turn_1", "partId": "part_t", "type": "tool", "part": output}
    async with subscribed(bus, session, 0) as one, subscribed(bus, session, 0) as two:
        await first_replay(one)
        await first_replay(two)
        published = [
            await bus.publish(session, MESSAGE_PART_UPDATED, tool, "turn_1"),
            await bus.publish(session, MESSAGE_PART_UPDATED, text_update("part_a", "hi", "hi"), "turn_1"),
        ]
        got_one, got_two = await next_events(one, 2), await next_events(two, 2)
    assert all(a is b is c for a, b, c in zip(published, got_one, got_two, strict=True))
    for event in got_one:
        encode(event)
    assert all(e.wire is not None and e._json is not None for e in got_two)
    buffered = bus._logs[session].buffer
    assert len(buffered) == 2 and all(type(kept) is tuple for kept in buffered)
    assert buffered[0][3] is published[0]._json, "encoded once, for the subscribers and the buffer"
    output["output"] = "changed after it was sent"
    replayed = (await bus.replay(session, 0)).events
    assert [e.wire for e in replayed] == [None, None]
    assert all(a is not b for a, b in zip(published, replayed, strict=True))
    assert replayed[0].data["part"]["output"] == "x" * 10_000
    assert [encode(e) for e in replayed] == [e.wire for e in published]
    again = (await bus.replay(session, 0)).events
    assert [e.wire for e in again] == [None, None], "nor what a replay cached"


# The Redis bus's own rules


@pytest.fixture
async def rbus(redis_prefix: str) -> AsyncIterator[RedisEventBus]:
    bus = RedisEventBus(services.REDIS_URL, prefix=redis_prefix, buffer_size=500, ttl_s=600)
    yield bus
    await bus.close()


@pytest.fixture
async def raw_redis() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(services.REDIS_URL, decode_responses=True)
    yield client
    await client.aclose()


@pytest.mark.redis
async def test_each_session_is_a_capped_expiring_stream_with_its_own_counter(
    rbus: RedisEventBus, raw_redis: aioredis.Redis, redis_prefix: str
) -> None:
    session = new_session()
    await publish_n(rbus, session, 1200)
    stream, counter = f"{redis_prefix}:events:{session}", f"{redis_prefix}:seq:{session}"
    assert await raw_redis.get(counter) == "1200"
    length = await raw_redis.xlen(stream)
    assert 500 <= length <= 700, length  # MAXLEN ~ 500 trims whole nodes (100 entries each by default)
    assert 0 < await raw_redis.ttl(stream) <= 600 and 0 < await raw_redis.ttl(counter) <= 600
    newest: Any = await raw_redis.xrevrange(stream, count=1)
    ((_, fields),) = newest
    assert Event.from_record(fields).seq == 1200 and fields["p"] == "1199"

    forever = RedisEventBus(services.REDIS_URL, prefix=redis_prefix, ttl_s=0)
    try:
        kept = new_session()
        await forever.publish(kept, "a", {})
        await forever.seed(kept, 10)
        assert await raw_redis.ttl(f"{redis_prefix}:events:{kept}") == -1
        assert await raw_redis.ttl(f"{redis_prefix}:seq:{kept}") == -1
    finally:
        await forever.close()


@pytest.mark.redis
async def test_one_reader_connection_serves_every_local_subscriber(
    rbus: RedisEventBus, raw_redis: aioredis.Redis, redis_prefix: str
) -> None:
    sessions = [new_session() for _ in range(100)]
    subs = [rbus.subscribe(s, 0) for s in sessions for _ in range(2)]
    try:
        for sub in subs:
            await first_replay(sub)
        assert rbus.local_subscribers() == 200
        clients = await raw_redis.client_list()
        readers = [c for c in clients if c.get("name") == f"{redis_prefix}:reader"]
        assert len(readers) == 1, readers
        for session in sessions:
            await rbus.publish(session, "x", {"session": session})
        for index, sub in enumerate(subs):
            (event,) = await next_events(sub, 1)
            assert event.session_id == sessions[index // 2]
    finally:
        for sub in subs:
            await sub.aclose()  # type: ignore[attr-defined]
    assert rbus.local_subscribers() == 0


@pytest.mark.redis
async def test_a_new_session_is_followed_at_once_while_the_reader_blocks(redis_prefix: str) -> None:
    """The reader's XREAD is re-issued (woken) when a session joins, not after its block timeout."""
    bus = RedisEventBus(services.REDIS_URL, prefix=redis_prefix, block_ms=30_000)
    try:
        async with subscribed(bus, new_session(), 0) as first:
            await first_replay(first)
            await asyncio.sleep(0.1)  # the reader is now blocked on the first session only
            joining = new_session()
            async with subscribed(bus, joining, None, heartbeat_s=0.05) as second:
                await live(second)
                started = time.monotonic()
                await bus.publish(joining, "hello", {})
                (event,) = await next_events(second, 1)
                assert event.type == "hello" and time.monotonic() - started < 2
    finally:
        await bus.close()


@pytest.mark.redis
async def test_a_seed_jump_keeps_live_subscribers_but_lost_events_end_them(
    rbus: RedisEventBus, raw_redis: aioredis.Redis, redis_prefix: str
) -> None:
    session = new_session()
    async with subscribed(rbus, session, 0) as sub:
        await first_replay(sub)
        await publish_n(rbus, session, 2)
        assert seqs(await next_events(sub, 2)) == [1, 2]
        await rbus.seed(session, 40)  # e.g. another replica seeded from the store: numbers jump, none lost
        await publish_n(rbus, session, 1)
        assert seqs(await next_events(sub, 1)) == [41]
        # The session's keys vanish (expiry, a flushed Redis): this replica cannot know what it missed.
        await raw_redis.delete(f"{redis_prefix}:events:{session}", f"{redis_prefix}:seq:{session}")
        await rbus.seed(session, 50)
        await publish_n(rbus, session, 1)
        with pytest.raises(StopAsyncIteration):
            await next_item(sub)
    replay = await rbus.replay(session, 41)
    assert (seqs(replay.events), replay.gap, replay.oldest_seq) == ([51], True, 51)


@pytest.mark.redis
async def test_a_subscriber_overtaken_while_joining_still_gets_every_event(
    rbus: RedisEventBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """X reads an empty stream; before it registers, Y joins and the reader moves on: X reads again."""
    session = new_session()
    original = rbus._run_replay
    paused, resume = asyncio.Event(), asyncio.Event()
    calls: list[int] = []

    async def overtaken(*args: Any) -> Any:
        result = await original(*args)
        calls.append(1)
        if len(calls) == 1:
            paused.set()
            await resume.wait()
        return result

    monkeypatch.setattr(rbus, "_run_replay", overtaken)
    x = rbus.subscribe(session, 0)
    x_first = asyncio.create_task(next_item(x))
    try:
        await paused.wait()
        await rbus.publish(session, "e", {"n": 1})
        async with subscribed(rbus, session, 0) as y:
            assert seqs((await first_replay(y)).events) == [1]
            await rbus.publish(session, "e", {"n": 2})
            assert seqs(await next_events(y, 1)) == [2]
            resume.set()
            replay = await x_first
            assert isinstance(replay, Replay) and (seqs(replay.events), replay.gap) == ([1, 2], False)
            await rbus.publish(session, "e", {"n": 3})
            assert seqs(await next_events(x, 1)) == [3]
    finally:
        resume.set()
        await x.aclose()  # type: ignore[attr-defined]


class _Proxy:
    """A TCP proxy in front of Redis that the test can take down and bring back on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.transport.abort()
            self._writers.discard(dst)

        for task in (
            asyncio.create_task(pipe(reader, up_writer)),
            asyncio.create_task(pipe(up_reader, writer)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


@pytest.mark.redis
async def test_losing_redis_fails_publishers_and_subscribers_and_it_recovers(redis_prefix: str) -> None:
    target = urlsplit(services.REDIS_URL)
    proxy = _Proxy((target.hostname or "127.0.0.1", target.port or 6379))
    await proxy.start()
    bus = RedisEventBus(proxy.url, prefix=redis_prefix, connect_timeout_s=1)
    session = new_session()
    try:
        sub = bus.subscribe(session, 0)
        await first_replay(sub)
        await bus.publish(session, "before", {})
        assert seqs(await next_events(sub, 1)) == [1]

        await proxy.stop()
        with pytest.raises(BusUnavailable):
            await next_item(sub)
        assert bus.local_subscribers() == 0
        with pytest.raises(BusUnavailable):
            await bus.publish(session, "lost", {})
        with pytest.raises(BusUnavailable):
            await bus.ping()
        with pytest.raises(BusUnavailable):
            await anext(bus.subscribe(session, 0))

        await proxy.start()  # Redis is back: the same bus reconnects on its next command
        await bus.ping()
        async with subscribed(bus, session, 1) as again:
            assert (await first_replay(again)).events == []
            assert (await bus.publish(session, "after", {})).seq == 2
            assert seqs(await next_events(again, 1)) == [2]
    finally:
        await bus.close()
        await proxy.stop()


class _ThreadedProxy:
    """A `_Proxy` on an event loop of its own, for tests that drive a server process synchronously."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.proxy = _Proxy(target)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return self.proxy.url

    def _run(self, work: Any) -> None:
        asyncio.run_coroutine_threadsafe(work, self.loop).result(10)

    def start(self) -> None:
        self._run(self.proxy.start())

    def stop(self) -> None:
        self._run(self.proxy.stop())

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def redis_cut(make_server: Any) -> Iterator[tuple[_ThreadedProxy, httpx.Client]]:
    """A server whose Redis sits behind a proxy the test can take down, and an admin client for it."""
    need_redis()
    target = urlsplit(services.REDIS_URL)
    proxy = _ThreadedProxy((target.hostname or "127.0.0.1", target.port or 6379))
    proxy.start()
    try:
        server: ServerProcess = make_server(
            CHAMBERS_REDIS_URL=proxy.url, CHAMBERS_REDIS_KEY_PREFIX=services.redis_prefix()
        )
        with httpx.Client(base_url=server.url, headers=auth(server.admin_key or ""), timeout=30) as client:
            yield proxy, client
    finally:
        proxy.close()


@pytest.mark.redis
def test_a_message_while_redis_is_down_is_refused_and_leaves_the_session_usable(
    redis_cut: tuple[_ThreadedProxy, httpx.Client], upstream: FakeUpstream
) -> None:
    """The session is claimed before the turn is announced on the bus; when that fails the claim goes."""
    proxy, client = redis_cut
    chat_id = client.post("/agent/v1/chat", json={}).json()["id"]
    say = {"parts": [{"type": "text", "text": "hello"}]}

    proxy.stop()
    refused = client.post(f"/agent/v1/chat/{chat_id}/message", json=say)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "UNAVAILABLE"
    assert "event bus unavailable" in refused.json()["error"]["message"]
    assert client.get(f"/agent/v1/chat/{chat_id}").json()["activeTurnId"] is None

    proxy.start()  # Redis is back: the session takes the next message at once, no lease to wait out
    upstream.script(Reply([Text("back again")]))
    answered = client.post(f"/agent/v1/chat/{chat_id}/message", json=say)
    assert answered.status_code == 200, answered.text
    assert [p["text"] for p in answered.json()["parts"] if p["type"] == "text"] == ["back again"]


@pytest.mark.redis
def test_an_answer_while_redis_is_down_closes_its_turn_at_once(
    redis_cut: tuple[_ThreadedProxy, httpx.Client], upstream: FakeUpstream
) -> None:
    """Resuming a turn needs the bus too: when it is away the answer is refused and the turn closed, so
    the session does not wait out a lease."""
    proxy, client = redis_cut
    chat_id = client.post("/agent/v1/chat", json={}).json()["id"]
    upstream.script(Reply([ToolCall("ask_user", {"question": "Go on?"})]))
    with client.stream(
        "POST", f"/agent/v1/chat/{chat_id}/respond", json={"parts": [{"type": "text", "text": "ask"}]}
    ) as response:
        request_id = read_until(response, lambda e: e.event == "question")[-1].data["requestID"]
    turn_id = client.get(f"/agent/v1/chat/{chat_id}").json()["activeTurnId"]
    turn = client.get(f"/agent/v1/chat/{chat_id}/turns/{turn_id}").json()
    assert turn["status"] == "waiting_for_input"
    assert [q["requestID"] for q in turn["questions"]] == [request_id]

    proxy.stop()
    refused = client.post(f"/agent/v1/chat/{chat_id}/question/{request_id}/reply", json={"text": "yes"})
    assert refused.status_code == 503, refused.text
    closed = client.get(f"/agent/v1/chat/{chat_id}/turns/{turn_id}").json()
    assert closed["status"] == "failed" and closed["error"]["code"] == "UNAVAILABLE"
    assert client.get(f"/agent/v1/chat/{chat_id}").json()["activeTurnId"] is None

    proxy.start()
    upstream.script(Reply([Text("fresh start")]))
    again = client.post(
        f"/agent/v1/chat/{chat_id}/message", json={"parts": [{"type": "text", "text": "again"}]}
    )
    assert again.status_code == 200, again.text


# Two replicas: two servers on one PostgreSQL database and one Redis prefix


@pytest.mark.postgres
@pytest.mark.redis
def test_two_replicas_serve_one_session(make_server: Any, upstream: FakeUpstream) -> None:
    """A session made on one replica streams, replays and takes turns on the other."""
    need_postgres()
    need_redis()
    shared = {
        "CHAMBERS_DATABASE_URL": services.create_database(),
        "CHAMBERS_REDIS_URL": services.REDIS_URL,
        "CHAMBERS_REDIS_KEY_PREFIX": services.redis_prefix(),
    }
    one: ServerProcess = make_server(**shared)
    two: ServerProcess = make_server(**shared)
    headers = auth(one.admin_key or "")
    with (
        httpx.Client(base_url=one.url, headers=headers, timeout=30) as a,
        httpx.Client(base_url=two.url, headers=headers, timeout=30) as b,
    ):
        created = a.post("/agent/v1/chat", json={})
        assert created.status_code == 201, created.text
        chat_id = created.json()["id"]
        assert b.get(f"/agent/v1/chat/{chat_id}").status_code == 200
        ready = b.get("/readyz").json()
        assert ready["checks"]["bus"] == {"ok": True}, ready

        upstream.script(Reply([Text("seen ", chunks=1), Gate("half"), Text("everywhere", chunks=1)]))
        collected: list[Any] = []
        with b.stream("GET", f"/agent/v1/chat/{chat_id}/stream?lastEventId=0") as on_two:
            result: dict[str, httpx.Response] = {}
            sender = threading.Thread(
                target=lambda: result.setdefault(
                    "r",
                    a.post(
                        f"/agent/v1/chat/{chat_id}/message", json={"parts": [{"type": "text", "text": "hi"}]}
                    ),
                )
            )
            sender.start()
            collected += read_until(on_two, lambda e: e.event == "message.part.updated")
            upstream.release("half")
            collected += read_until(on_two, turn_done())
            sender.join(30)
        assert result["r"].status_code == 200, result["r"].text
        ids = [e.id for e in collected]
        assert ids == list(range(1, len(ids) + 1)), ids
        text = "".join(e.data.get("delta", "") for e in collected if e.event == "message.part.updated")
        assert text == "seen everywhere"

        # Replay on the replica that did not run the turn, from any point.
        with b.stream("GET", f"/agent/v1/chat/{chat_id}/stream?lastEventId=2") as replayed:
            again = read_until(replayed, turn_done())
        assert [e.id for e in again] == ids[2:]

        # The next turn runs through the other replica; its respond stream is complete.
        upstream.script(Reply([Text("second")]))
        with b.stream(
            "POST", f"/agent/v1/chat/{chat_id}/respond", json={"parts": [{"type": "text", "text": "again"}]}
        ) as responded:
            assert responded.status_code == 200
            turn = list(events(responded))
        assert turn[0].event == "turn.started" and turn[-1].event == "turn.completed"
        assert turn[0].id is not None and ids[-1] is not None and turn[0].id > ids[-1]
        assert a.get(f"/agent/v1/chat/{chat_id}/messages").status_code == 200


@pytest.mark.postgres
def test_replicas_starting_together_on_a_fresh_database_all_start(make_server: Any) -> None:
    """Migrations run once: the other replicas wait for them instead of failing on existing tables."""
    need_postgres()
    shared = {"CHAMBERS_DATABASE_URL": services.create_database()}
    replicas: list[ServerProcess] = [make_server(start=False, **shared) for _ in range(3)]
    failures: list[BaseException] = []

    def start(proc: ServerProcess) -> None:
        try:
            proc.start(timeout=90)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=start, args=(proc,)) for proc in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert failures == []
    assert all(httpx.get(f"{proc.url}/readyz", timeout=10).status_code == 200 for proc in replicas)


@pytest.mark.redis
async def test_a_streamed_part_is_kept_once_in_redis_not_once_per_update(
    rbus: RedisEventBus, raw_redis: aioredis.Redis, redis_prefix: str
) -> None:
    """Each update carries the whole text so far; Redis keeps the pieces and the text once, so a long
    answer costs the stream what its pieces weigh, not the sum of every text so far."""
    session, text, texts = new_session(), "", []
    for i in range(400):
        delta = f"{i:>4} héllo ✓ {'w' * 38}"  # 50 characters
        text += delta
        texts.append(text)
        await rbus.publish(session, MESSAGE_PART_UPDATED, text_update("part_a", text, delta), "turn_1")
    entries: Any = await raw_redis.xrange(f"{redis_prefix}:events:{session}")
    assert len(entries) == 400
    longest = max(len(value) for _, fields in entries for value in fields.values())
    assert longest < 200, longest  # no entry holds the text so far (up to 20,000 characters)
    (key,) = await raw_redis.keys(f"{redis_prefix}:text:{session}:*")
    assert await raw_redis.get(key) == text
    assert 0 < await raw_redis.ttl(key) <= 600
    stream_bytes = await raw_redis.memory_usage(f"{redis_prefix}:events:{session}")
    assert stream_bytes is not None and stream_bytes < 500_000, stream_bytes  # stored whole: 5 MB
    replay = await rbus.replay(session, 250)  # from the middle of the part
    assert [e.data["text"] for e in replay.events] == texts[250:]


@pytest.mark.redis
async def test_a_replica_that_follows_from_the_middle_of_a_part_sends_its_whole_text(
    rbus: RedisEventBus, redis_prefix: str
) -> None:
    session, texts = new_session(), [""]
    other = RedisEventBus(services.REDIS_URL, prefix=redis_prefix, buffer_size=500, ttl_s=600)

    async def extend(i: int) -> None:
        texts.append(texts[-1] + f"{i} ✓ ")
        await rbus.publish(
            session, MESSAGE_PART_UPDATED, text_update("part_a", texts[-1], f"{i} ✓ "), "turn_1"
        )

    try:
        for i in range(5):
            await extend(i)
        async with subscribed(other, session, None, heartbeat_s=0.05) as sub:
            await live(sub)  # follows from here on: the part's first five pieces are behind it
            for i in range(5, 8):
                await extend(i)
            events = await next_events(sub, 3)
        assert [e.data["text"] for e in events] == texts[6:]
        assert [e.data["delta"] for e in events] == ["5 ✓ ", "6 ✓ ", "7 ✓ "]
        assert events[-1].json.endswith(f'"text":"{texts[-1]}","delta":"7 ✓ "}}')
    finally:
        await other.close()


@pytest.mark.redis
async def test_a_part_whose_text_expired_is_reported_as_a_gap_not_sent_wrong(
    rbus: RedisEventBus, raw_redis: aioredis.Redis, redis_prefix: str
) -> None:
    session, text = new_session(), ""
    for i in range(6):
        text += f"{i} "
        await rbus.publish(session, MESSAGE_PART_UPDATED, text_update("part_a", text, f"{i} "), "turn_1")
    await rbus.publish(session, "turn.completed", {"turnId": "turn_1"}, "turn_1")
    (key,) = await raw_redis.keys(f"{redis_prefix}:text:{session}:*")
    await raw_redis.delete(key)  # as an eviction would
    replay = await rbus.replay(session, 3)
    assert (seqs(replay.events), replay.gap, replay.oldest_seq) == ([7], True, 7)
    text += "6 "  # the publisher finds the key gone, and stores the text anew under another
    await rbus.publish(session, MESSAGE_PART_UPDATED, text_update("part_a", text, "6 "), "turn_1")
    replay = await rbus.replay(session, 7)
    assert [e.data["text"] for e in replay.events] == [text] and not replay.gap
