"""Load shedding: past its limits a server refuses new turns at once with 503 OVERLOADED and Retry-After,
stores nothing of them, and keeps serving the turns it has."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import pytest

from chambers.client import Client, MessagePartUpdated
from chambers.client import Overloaded as SdkOverloaded
from chambers.core.errors import Overloaded
from chambers.core.overload import LoadGuard
from tests.conftest import auth
from tests.support.fake_upstream import FakeUpstream, Gate, Reply, Text
from tests.support.sse import events, read_until
from tests.support.waiting import eventually


def test_a_turn_past_the_running_cap_is_refused_and_nothing_of_it_is_stored(
    make_server: Any, upstream: FakeUpstream
) -> None:
    proc = make_server(CHAMBERS_MAX_RUNNING_TURNS="1", CHAMBERS_OVERLOAD_RETRY_AFTER_S="3")
    body = {"parts": [{"type": "text", "text": "hello"}]}
    with httpx.Client(base_url=proc.url, headers=auth(proc.admin_key or ""), timeout=60) as client:
        busy, other = (client.post("/agent/v1/chat", json={}).json()["id"] for _ in range(2))
        upstream.script(Reply([Text("working"), Gate("hold"), Text(" on it")]), Reply([Text("your turn")]))
        with client.stream("POST", f"/agent/v1/chat/{busy}/respond", json=body) as running:
            stream = events(running)
            next(e for e in stream if e.event == "message.part.updated")

            for path in ("message", "respond"):
                refused = client.post(f"/agent/v1/chat/{other}/{path}", json=body)
                assert refused.status_code == 503, refused.text
                assert refused.headers["retry-after"] == "3"
                error = refused.json()["error"]
                assert error["code"] == "OVERLOADED" and "CHAMBERS_MAX_RUNNING_TURNS" in error["message"]
            assert client.get(f"/agent/v1/chat/{other}/messages").json()["data"] == []
            assert client.get(f"/agent/v1/chat/{other}").json()["status"] == "active"

            upstream.release("hold")
            done = read_until(running, lambda e: e.event == "turn.completed")
        assert done[-1].data["status"] == "completed"
        accepted = client.post(f"/agent/v1/chat/{other}/message", json=body)
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["parts"][0]["text"] == "your turn"


def test_the_sdk_waits_out_an_overloaded_server(make_server: Any, upstream: FakeUpstream) -> None:
    proc = make_server(CHAMBERS_MAX_RUNNING_TURNS="1", CHAMBERS_OVERLOAD_RETRY_AFTER_S="1")
    upstream.script(Reply([Text("busy"), Gate("hold"), Text(" done")]), Reply([Text("taken at last")]))
    with Client(proc.url, proc.admin_key) as sdk:
        busy, other = sdk.chats.create(), sdk.chats.create()
        with busy.respond("long") as stream:
            next(e for e in stream if isinstance(e, MessagePartUpdated))
            with pytest.raises(SdkOverloaded) as refused:
                other.send("now", conflict_wait=0)
            assert (refused.value.status_code, refused.value.retry_after) == (503, 1)

            out: dict[str, Any] = {}
            sender = threading.Thread(target=lambda: out.update(answer=other.send("patient")))
            sender.start()
            # Refused at least once more (its wait has begun), then room is made.
            eventually(lambda: "".join(proc.output).count(f"/agent/v1/chat/{other.id}/message 503") >= 2)
            upstream.release("hold")
            stream.until_turn_completed()
        sender.join(30)
    assert out["answer"].text == "taken at last"


def test_one_late_tick_is_not_overload_but_a_late_stretch_is() -> None:
    guard = LoadGuard(max_lag_s=0.5, late_ticks=3, retry_after_s=7)
    for _ in range(2):
        guard.observe(2.0)  # a slow start-up step, a long garbage collection
    guard.observe(0.01)
    guard.observe(2.0)
    guard.check(running=1000)  # no cap on the count: nothing raised

    guard.observe(0.9)
    guard.observe(0.8)
    assert guard.lagging
    with pytest.raises(Overloaded) as refused:
        guard.check(running=0)
    assert refused.value.retry_after_s == 7 and "800 ms late" in refused.value.message

    guard.observe(0.0)
    assert not guard.lagging
    guard.check(running=0)


def test_the_running_cap_counts_only_when_set() -> None:
    LoadGuard(max_running=0).check(running=10_000)
    LoadGuard(max_running=3).check(running=2)
    with pytest.raises(Overloaded):
        LoadGuard(max_running=3).check(running=3)


async def test_the_guard_sees_a_blocked_event_loop_and_its_recovery() -> None:
    guard = LoadGuard(max_lag_s=0.03, tick_s=0.005, late_ticks=3)
    watching = asyncio.create_task(guard.watch())
    try:
        for _ in range(100):  # work that holds the loop, as hundreds of streams would
            if guard.lagging:
                break
            time.sleep(0.05)
            await asyncio.sleep(0)
        assert guard.lagging and guard.lag_s > 0.03

        deadline = time.monotonic() + 5
        while guard.lagging:
            assert time.monotonic() < deadline, "the guard never saw the loop recover"
            await asyncio.sleep(0.005)
    finally:
        watching.cancel()


async def test_a_guard_with_the_lag_check_off_never_watches() -> None:
    guard = LoadGuard(max_lag_s=0)
    await asyncio.wait_for(guard.watch(), 1)  # returns at once
    for _ in range(10):
        guard.observe(5.0)
    guard.check(running=0)
