"""The conformance suite of the EventBus port: every adapter passes the same rules.

Subclass `EventBusSuite` in a pytest module (pytest-asyncio in auto mode) and provide the fixtures:

- `make_bus(buffer_size=..., queue_limit=...)`: a new bus instance. Instances made by one factory share
  the backend when the adapter can (two Redis buses on one Redis and prefix are two replicas); the
  fixture closes what it made.
- `subscriber_count(bus, session_id)`: how many live subscribers the instance holds for the session.
- `shares_backend`: override to return a reason string (e.g. "one process only") for an adapter whose
  instances cannot see each other; the replica rule then skips with that reason.

The model is pydantic-ai's `workspaces/conformance.py`: one test per rule of the contract.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import pytest

from chambers.core.events import MESSAGE_PART_UPDATED, Event, Replay
from chambers.core.ports import EventBus

__all__ = ("BusFactory", "EventBusSuite")

WAIT_S = 10.0
"""Longest wait for anything the suite expects to happen."""


class BusFactory(Protocol):
    def __call__(self, *, buffer_size: int = 500, queue_limit: int = 10_000) -> EventBus: ...


Subscription = AsyncIterator[Event | Replay | None]


async def close(sub: Subscription) -> None:
    """End a subscription (the port returns an async generator)."""
    aclose = getattr(sub, "aclose", None)
    if aclose is not None:
        await aclose()


@asynccontextmanager
async def subscribed(
    bus: EventBus, session_id: str, after_seq: int | None, heartbeat_s: float | None = None
) -> AsyncIterator[Subscription]:
    sub = bus.subscribe(session_id, after_seq, heartbeat_s)
    try:
        yield sub
    finally:
        await close(sub)


def new_session() -> str:
    return f"chat_conf{uuid.uuid4().hex}"


async def next_item(sub: Subscription, *, skip_heartbeats: bool = True) -> Event | Replay | None:
    """The subscription's next item (heartbeats skipped unless asked for), or fail after WAIT_S."""
    while True:
        item = await asyncio.wait_for(anext(sub), WAIT_S)
        if item is not None or not skip_heartbeats:
            return item


async def next_events(sub: Subscription, count: int) -> list[Event]:
    """The next `count` live events (a Replay here is a failure: it only comes first)."""
    events: list[Event] = []
    while len(events) < count:
        item = await next_item(sub)
        assert isinstance(item, Event), f"expected a live event, got {item!r}"
        events.append(item)
    return events


async def next_or_end(sub: Subscription) -> Event | Replay | None:
    return await anext(sub)


async def first_replay(sub: Subscription) -> Replay:
    item = await next_item(sub)
    assert isinstance(item, Replay), f"subscribe(after_seq=…) must yield a Replay first, got {item!r}"
    return item


async def live(sub: Subscription) -> None:
    """Wait until a subscription made with `after_seq=None` is registered (its first heartbeat)."""
    item = await next_item(sub, skip_heartbeats=False)
    assert item is None, f"expected a heartbeat before any event, got {item!r}"


async def publish_n(bus: EventBus, session_id: str, count: int, type: str = "test.event") -> list[Event]:
    return [await bus.publish(session_id, type, {"i": i}) for i in range(count)]


def seqs(events: list[Event]) -> list[int]:
    return [e.seq for e in events]


def text_update(part_id: str, text: str, delta: str, message_id: str = "msg_1") -> dict[str, Any]:
    """A streamed text part update as the turn runner sends it: the whole text so far, then the new piece."""
    return {
        "turnId": "turn_1",
        "messageId": message_id,
        "partId": part_id,
        "type": "text",
        "text": text,
        "delta": delta,
    }


def as_published(events: list[Event]) -> list[tuple[int, str, str | None, list[tuple[str, Any]], str]]:
    """What must survive the buffer exactly: number, type, turn, the data with its key order, its JSON
    (which must be its data's, however a bus came by it)."""
    for e in events:
        assert e.json == json.dumps(e.data, separators=(",", ":"), ensure_ascii=False), f"event {e.seq}"
    return [(e.seq, e.type, e.turn_id, list(e.data.items()), e.json) for e in events]


class _Streamer:
    """Publishes text part updates that extend each part's text, and remembers every event published."""

    def __init__(self, bus: EventBus, session_id: str) -> None:
        self.bus, self.session_id = bus, session_id
        self.texts: dict[str, str] = {}
        self.published: list[Event] = []

    async def send(self, type: str, data: dict[str, Any], turn_id: str | None = "turn_1") -> None:
        self.published.append(await self.bus.publish(self.session_id, type, data, turn_id))

    async def extend(self, part_id: str, delta: str, message_id: str = "msg_1") -> None:
        text = self.texts[part_id] = self.texts.get(part_id, "") + delta
        await self.send(MESSAGE_PART_UPDATED, text_update(part_id, text, delta, message_id))

    async def replace(self, part_id: str, text: str, delta: str) -> None:
        """An update whose text is not an extension of the part's text so far."""
        self.texts[part_id] = text
        await self.send(MESSAGE_PART_UPDATED, text_update(part_id, text, delta))


class EventBusSuite:
    """Subclass and provide `make_bus` and `subscriber_count`; each test checks one rule of the port."""

    buffer_size = 500
    """The smallest buffer the server allows; the capping rule publishes three times as many events."""

    @pytest.fixture
    def make_bus(self) -> BusFactory:
        pytest.fail("a subclass of EventBusSuite must provide the `make_bus` fixture")

    @pytest.fixture
    def subscriber_count(self) -> Callable[[EventBus, str], int]:
        pytest.fail("a subclass of EventBusSuite must provide the `subscriber_count` fixture")

    @pytest.fixture
    def shares_backend(self) -> str | None:
        """None when two instances from `make_bus` are replicas on one backend; else why not."""
        return None

    @pytest.fixture
    def bus(self, make_bus: BusFactory) -> EventBus:
        return make_bus(buffer_size=self.buffer_size)

    # numbering

    async def test_seq_counts_from_one_per_session(self, bus: EventBus) -> None:
        a, b = new_session(), new_session()
        assert await bus.last_seq(a) == 0
        assert seqs(await publish_n(bus, a, 3)) == [1, 2, 3]
        assert seqs(await publish_n(bus, b, 2)) == [1, 2]
        assert await bus.last_seq(a) == 3 and await bus.last_seq(b) == 2

    async def test_an_event_round_trips(self, bus: EventBus) -> None:
        session = new_session()
        data: dict[str, Any] = {
            "text": 'héllo ✓ "quoted"\n',
            "nested": [1, {"a": None, "b": 2.5}],
            "ok": True,
        }
        sent = await bus.publish(session, "message.part.updated", data, "turn_1")
        plain = await bus.publish(session, "session.status", {})
        assert (sent.seq, sent.type, sent.data, sent.turn_id) == (1, "message.part.updated", data, "turn_1")
        replay = await bus.replay(session, 0)
        got, got_plain = replay.events
        assert (got.session_id, got.seq, got.type, got.data, got.turn_id) == (
            session,
            1,
            "message.part.updated",
            data,
            "turn_1",
        )
        assert got.json == sent.json
        assert (got_plain.seq, got_plain.data, got_plain.turn_id) == (plain.seq, {}, None)

    async def test_seed_raises_the_counter_and_never_lowers_it(self, bus: EventBus) -> None:
        session = new_session()
        await bus.seed(session, 10)
        assert await bus.last_seq(session) == 10
        assert (await bus.publish(session, "a", {})).seq == 11
        await bus.seed(session, 5)
        await bus.seed(session, 0)
        assert await bus.last_seq(session) == 11
        assert (await bus.publish(session, "b", {})).seq == 12
        fresh = new_session()
        await bus.seed(fresh, 0)
        assert await bus.last_seq(fresh) == 0

    async def test_concurrent_publishers_get_distinct_increasing_numbers(self, bus: EventBus) -> None:
        session = new_session()

        async def publisher(name: str) -> list[Event]:
            return [await bus.publish(session, "p", {"by": name, "i": i}) for i in range(50)]

        batches = await asyncio.gather(*(publisher(f"p{n}") for n in range(4)))
        for batch in batches:
            assert seqs(batch) == sorted(seqs(batch))
        assert sorted(e.seq for batch in batches for e in batch) == list(range(1, 201))
        replay = await bus.replay(session, 0)
        assert seqs(replay.events) == list(range(1, 201))
        by_seq = {e.seq: e.data for batch in batches for e in batch}
        assert all(e.data == by_seq[e.seq] for e in replay.events)

    # replay and the buffer

    async def test_replay_returns_the_events_after_a_number(self, bus: EventBus) -> None:
        session = new_session()
        await publish_n(bus, session, 5)
        replay = await bus.replay(session, 2)
        assert seqs(replay.events) == [3, 4, 5]
        assert (replay.gap, replay.oldest_seq) == (False, 1)
        assert seqs((await bus.replay(session, 0)).events) == [1, 2, 3, 4, 5]
        for after in (5, 9):
            caught_up = await bus.replay(session, after)
            assert (caught_up.events, caught_up.gap) == ([], False)

    async def test_replay_of_an_unknown_session_is_empty(self, bus: EventBus) -> None:
        replay = await bus.replay(new_session(), 0)
        assert (replay.events, replay.gap, replay.oldest_seq) == ([], False, None)

    async def test_the_buffer_is_capped_and_older_replays_report_the_gap(self, make_bus: BusFactory) -> None:
        size = self.buffer_size
        bus = make_bus(buffer_size=size)
        session = new_session()
        total = 3 * size + 7
        await publish_n(bus, session, total)
        replay = await bus.replay(session, 0)
        kept = seqs(replay.events)
        assert replay.gap is True
        assert replay.oldest_seq is not None and replay.oldest_seq > 1
        assert kept == list(range(replay.oldest_seq, total + 1)), "the buffer keeps the newest events"
        assert size <= len(kept) < total, f"kept {len(kept)} events with a buffer of {size}"
        exact = await bus.replay(session, replay.oldest_seq - 1)
        assert (exact.gap, seqs(exact.events)) == (False, kept)
        async with subscribed(bus, session, 0) as sub:
            streamed = await first_replay(sub)
            assert (streamed.gap, streamed.oldest_seq, seqs(streamed.events)) == (
                True,
                replay.oldest_seq,
                kept,
            )
        late = await bus.replay(session, total - 3)
        assert (late.gap, seqs(late.events)) == (False, [total - 2, total - 1, total])

    async def test_a_seeded_session_without_buffered_events_reports_the_gap(self, bus: EventBus) -> None:
        """After a restart the counter is seeded from the store but the buffer is empty."""
        session = new_session()
        await bus.seed(session, 7)
        replay = await bus.replay(session, 3)
        assert (replay.events, replay.gap, replay.oldest_seq) == ([], True, None)
        assert (await bus.replay(session, 7)).gap is False
        await bus.publish(session, "a", {})
        after = await bus.replay(session, 3)
        assert (seqs(after.events), after.gap, after.oldest_seq) == ([8], True, 8)
        assert (await bus.replay(session, 7)).gap is False

    async def test_replay_gives_back_streamed_text_updates_exactly_as_published(self, bus: EventBus) -> None:
        """Each text part update carries the whole text so far; a bus may keep them compactly, but what it
        replays is what was published: same numbers, types, turns, data, key order and JSON."""
        session = new_session()
        out = _Streamer(bus, session)
        async with subscribed(bus, session, 0) as sub:
            await first_replay(sub)
            await out.send("turn.started", {"turnId": "turn_1"})
            for i in range(60):
                await out.extend("part_a", f"a{i} héllo ✓ ")
                if i % 3 == 0:
                    await out.extend("part_b", f"b{i}|")
                if i % 5 == 0:  # what JSON escapes, and what it does not
                    await out.extend("part_b", f'"q{i}" \\ /\n\t\x01\x1f\u2028 🎉 漢 ')
                if i % 7 == 0:
                    await out.send("turn.status", {"turnId": "turn_1", "status": "busy", "i": i})
                    tool = {"id": "part_t", "type": "tool", "output": "x" * i}
                    await out.send(
                        MESSAGE_PART_UPDATED,
                        {
                            "turnId": "turn_1",
                            "messageId": "msg_1",
                            "partId": "part_t",
                            "type": "tool",
                            "part": tool,
                        },
                    )
                if i == 20:
                    await out.replace("part_a", "rewritten: ", "rewritten: ")  # not an extension
                if i == 30:
                    await out.replace("part_a", "rewritten", "")  # shorter, and an empty delta
                if i == 40:
                    await out.extend("part_a", "!", message_id="msg_2")  # another value for a key
            live_events = await next_events(sub, len(out.published))
        assert as_published(live_events) == as_published(out.published)
        replay = await bus.replay(session, 0)
        assert (replay.gap, replay.oldest_seq) == (False, 1)
        assert as_published(replay.events) == as_published(out.published)
        assert replay.events[-1].data["text"] == out.texts["part_a"]
        middle = await bus.replay(session, 50)
        assert as_published(middle.events) == as_published(out.published[50:])

    async def test_replay_gives_back_unusual_text_updates_exactly_as_published(self, bus: EventBus) -> None:
        """Updates that only look like streamed text, or change shape within a part, are not altered."""
        session = new_session()
        out = _Streamer(bus, session)
        await out.extend("part_a", "one ")
        head = {"turnId": "turn_1", "messageId": "msg_1", "partId": "part_a", "type": "text"}
        shapes: list[dict[str, Any]] = [
            text_update("part_a", "one two ", "two "),
            {"partId": "part_a", "turnId": "turn_1", "type": "text", "text": "one two 3", "delta": "3"},
            {**head, "text": "one two 3", "delta": "4"},  # the text does not end with the delta
            {**head, "text": "x", "delta": "x", "index": 1},  # a key after text and delta
            {**head, "index": 1, "text": "one two 3 4", "delta": " 4"},
            {**head, "index": True, "text": "one two 3 4 5", "delta": " 5"},  # == 1, but other JSON
            {**head, "index": 1.0, "text": "one two 3 4 5 6", "delta": " 6"},
            {**head, "index": -0.0, "text": "one two 3 4 5 6 7", "delta": " 7"},
            {**head, "index": 0.0, "text": "one two 3 4 5 6 7 8", "delta": " 8"},
            {**head, "index": [1], "text": "one two 3 4 5 6 7 8 9", "delta": " 9"},
            {**head, "index": [True], "text": "one two 3 4 5 6 7 8 9 10", "delta": " 10"},
            {"turnId": "turn_1", "text": "no part", "delta": " part"},
            {"turnId": "turn_1", "partId": "part_a", "text": 7, "delta": 7},  # not strings
            {"turnId": "turn_1", "partId": "part_a", "text": "one", "delta": None},
            {"text": "only", "delta": "only"},
            {"delta": "d", "text": "d"},  # text and delta the other way round
            text_update("part_a", "one two 3 4 5 6 7 8 9 10 11", " 11"),
        ]
        for data in shapes:
            await out.send(MESSAGE_PART_UPDATED, data, turn_id=None)
        await out.send("other.type", text_update("part_a", "one two 3 4 5 6 7 8 9 10 11 12", " 12"))
        replay = await bus.replay(session, 0)
        assert as_published(replay.events) == as_published(out.published)

    async def test_streamed_text_updates_replay_exactly_after_the_buffer_drops_some(
        self, make_bus: BusFactory
    ) -> None:
        size = self.buffer_size
        bus = make_bus(buffer_size=size)
        session = new_session()
        out = _Streamer(bus, session)
        total = 3 * size + 7
        i = 0
        while len(out.published) < total:
            await out.extend("part_long", f"{i} ")  # one part all along, its first updates dropped
            if i % 10 == 0:
                await out.send("turn.status", {"i": i})
            if i % 4 == 0:
                await out.extend(f"part_{i // 100}", f"<{i}>")  # parts that come and go
            if i == size:
                await out.replace("part_long", "again ", "again ")
            i += 1
        replay = await bus.replay(session, 0)
        assert replay.gap is True and replay.oldest_seq is not None and replay.oldest_seq > 1
        assert len(replay.events) < len(out.published)
        kept = out.published[replay.oldest_seq - 1 :]
        assert seqs(kept)[0] == replay.oldest_seq
        assert as_published(replay.events) == as_published(kept)
        assert replay.events[-1].data["text"] == out.texts[replay.events[-1].data["partId"]]

    # subscribing

    async def test_subscribe_replays_then_follows(self, bus: EventBus) -> None:
        session = new_session()
        await publish_n(bus, session, 5)
        async with subscribed(bus, session, 2) as sub:
            replay = await first_replay(sub)
            assert (seqs(replay.events), replay.gap) == ([3, 4, 5], False)
            await publish_n(bus, session, 2)
            assert seqs(await next_events(sub, 2)) == [6, 7]

    async def test_subscribe_from_the_current_number_yields_an_empty_replay(self, bus: EventBus) -> None:
        session = new_session()
        await publish_n(bus, session, 3)
        async with subscribed(bus, session, 3) as sub:
            replay = await first_replay(sub)
            assert (replay.events, replay.gap) == ([], False)
            await publish_n(bus, session, 1)
            assert seqs(await next_events(sub, 1)) == [4]

    async def test_subscribe_without_a_number_follows_new_events_only(self, bus: EventBus) -> None:
        session = new_session()
        await publish_n(bus, session, 3)
        async with subscribed(bus, session, None, heartbeat_s=0.05) as sub:
            await live(sub)
            await publish_n(bus, session, 2)
            assert seqs(await next_events(sub, 2)) == [4, 5]

    async def test_subscribe_is_gap_free_while_events_are_published(self, bus: EventBus) -> None:
        """Subscribers joining mid-stream get every event exactly once, in order, replay then live."""
        session = new_session()
        total = 300

        async def subscriber(start_after: int) -> list[int]:
            got: list[int] = []
            async with subscribed(bus, session, start_after) as sub:
                while (got[-1] if got else start_after) < total:
                    item = await next_item(sub)
                    batch = item.events if isinstance(item, Replay) else [item] if item else []
                    got.extend(seqs(batch))
            return [start_after, *got]

        published: list[int] = []

        async def publisher() -> None:
            for i in range(total):
                published.append((await bus.publish(session, "p", {"i": i})).seq)
                if i % 5 == 0:
                    await asyncio.sleep(0.001)

        # Subscribers start while a publisher runs, some from 0, some from the newest number, the first
        # ones in a burst (they race each other and the first events).
        task = asyncio.create_task(publisher())
        joins = [asyncio.create_task(subscriber(0)) for _ in range(4)]
        while not task.done() and len(joins) < 80:
            joins.append(asyncio.create_task(subscriber(published[-1] if published else 0)))
            joins.append(asyncio.create_task(subscriber(0)))
            await asyncio.sleep(0.001)
        await task
        assert published == list(range(1, total + 1))
        for result in await asyncio.wait_for(asyncio.gather(*joins), WAIT_S * 3):
            start, got = result[0], result[1:]
            assert got == list(range(start + 1, total + 1)), f"joined after {start}: {got[:5]}…"

    async def test_idle_subscribers_get_heartbeats(self, bus: EventBus) -> None:
        session = new_session()
        async with subscribed(bus, session, 0, heartbeat_s=0.05) as sub:
            assert isinstance(await next_item(sub), Replay)
            assert await next_item(sub, skip_heartbeats=False) is None
            assert await next_item(sub, skip_heartbeats=False) is None
            await publish_n(bus, session, 1)
            item = await next_item(sub)
            assert isinstance(item, Event) and item.seq == 1

    async def test_many_subscribers_each_see_every_event_in_order(self, bus: EventBus) -> None:
        sessions = [new_session(), new_session()]
        subs = [bus.subscribe(s, 0) for s in sessions for _ in range(50)]
        try:
            for sub in subs:
                await first_replay(sub)
            for round_ in range(10):
                for session in sessions:
                    await bus.publish(session, "r", {"round": round_, "session": session})
            for index, sub in enumerate(subs):
                events = await next_events(sub, 10)
                assert seqs(events) == list(range(1, 11))
                assert {e.session_id for e in events} == {sessions[index // 50]}
                assert [e.data["round"] for e in events] == list(range(10))
        finally:
            for sub in subs:
                await close(sub)

    async def test_subscribers_see_only_their_session(self, bus: EventBus) -> None:
        mine, other = new_session(), new_session()
        async with subscribed(bus, mine, 0) as sub:
            await first_replay(sub)
            await publish_n(bus, other, 3)
            await bus.publish(mine, "mine", {})
            (event,) = await next_events(sub, 1)
            assert (event.session_id, event.type, event.seq) == (mine, "mine", 1)

    async def test_closing_a_subscription_releases_it(
        self, bus: EventBus, subscriber_count: Callable[[EventBus, str], int]
    ) -> None:
        session = new_session()
        closed_early = bus.subscribe(session, 0)
        await first_replay(closed_early)
        async with subscribed(bus, session, 0) as sub:
            await first_replay(sub)
            assert subscriber_count(bus, session) == 2
            await close(closed_early)
            assert subscriber_count(bus, session) == 1
        assert subscriber_count(bus, session) == 0

        cancelled = bus.subscribe(session, 0)
        await first_replay(cancelled)
        waiting = asyncio.create_task(next_item(cancelled))
        await asyncio.sleep(0.05)
        assert subscriber_count(bus, session) == 1
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert subscriber_count(bus, session) == 0
        # The bus still works for everyone else.
        async with subscribed(bus, session, 0) as sub:
            await first_replay(sub)
            await publish_n(bus, session, 1)
            assert seqs(await next_events(sub, 1)) == [1]

    async def test_a_slow_subscriber_is_dropped_and_can_resume(
        self, make_bus: BusFactory, subscriber_count: Callable[[EventBus, str], int]
    ) -> None:
        bus = make_bus(buffer_size=self.buffer_size, queue_limit=20)
        session = new_session()
        slow = bus.subscribe(session, 0)
        await first_replay(slow)
        async with subscribed(bus, session, 0) as fast:
            await first_replay(fast)
            for batch in range(5):
                await publish_n(bus, session, 10)
                assert seqs(await next_events(fast, 10)) == list(range(batch * 10 + 1, batch * 10 + 11))
            assert subscriber_count(bus, session) == 1, "the slow subscriber is dropped, the fast one stays"
        received: list[int] = []
        async for item in slow:
            assert isinstance(item, Event)
            received.append(item.seq)
        assert received == list(range(1, 21)), "a dropped subscriber ends after what it had queued"
        async with subscribed(bus, session, received[-1]) as resumed:
            replay = await first_replay(resumed)
            assert (seqs(replay.events), replay.gap) == (list(range(21, 51)), False)

    async def test_closing_the_bus_ends_its_subscriptions(self, make_bus: BusFactory) -> None:
        bus = make_bus(buffer_size=self.buffer_size)
        session = new_session()
        sub = bus.subscribe(session, 0)
        await first_replay(sub)
        waiting = asyncio.create_task(next_or_end(sub))
        await asyncio.sleep(0.05)
        await bus.close()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(waiting, WAIT_S)

    # replicas

    async def test_two_instances_on_one_backend_are_replicas(
        self, make_bus: BusFactory, shares_backend: str | None
    ) -> None:
        """Any replica numbers, replays and follows any session: one publishes, the other streams."""
        if shares_backend is not None:
            pytest.skip(shares_backend)
        one, two = make_bus(buffer_size=self.buffer_size), make_bus(buffer_size=self.buffer_size)
        session = new_session()
        await one.seed(session, 4)
        assert await two.last_seq(session) == 4
        async with subscribed(two, session, 4) as on_two, subscribed(one, session, 4) as on_one:
            assert (await first_replay(on_two)).events == []
            await first_replay(on_one)
            first = await one.publish(session, "from.one", {"n": 1}, "turn_1")
            second = await two.publish(session, "from.two", {"n": 2})
            assert (first.seq, second.seq) == (5, 6)
            for sub in (on_two, on_one):
                got = await next_events(sub, 2)
                assert [(e.seq, e.type, e.data, e.turn_id) for e in got] == [
                    (5, "from.one", {"n": 1}, "turn_1"),
                    (6, "from.two", {"n": 2}, None),
                ]
        replay = await two.replay(session, 4)
        assert seqs(replay.events) == [5, 6] and replay.gap is False
        assert await one.last_seq(session) == await two.last_seq(session) == 6
