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
from tests.support.services import holding_writes
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
            ready = httpx.get(proc.url + "/readyz", timeout=10)
            assert ready.status_code == 503
            assert "CHAMBERS_MAX_RUNNING_TURNS" in ready.json()["checks"]["load"]["error"]

            upstream.release("hold")
            done = read_until(running, lambda e: e.event == "turn.completed")
        assert done[-1].data["status"] == "completed"
        accepted = client.post(f"/agent/v1/chat/{other}/message", json=body)
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["parts"][0]["text"] == "your turn"
        assert httpx.get(proc.url + "/readyz", timeout=10).json()["checks"]["load"]["ok"] is True


def test_while_the_database_keeps_a_turn_waiting_new_turns_are_refused(
    make_server: Any, upstream: FakeUpstream
) -> None:
    proc = make_server(CHAMBERS_OVERLOAD_STORE_WAIT_MS="300")
    body = {"parts": [{"type": "text", "text": "hello"}]}
    headers = auth(proc.admin_key or "")

    def load() -> dict[str, Any]:
        check: dict[str, Any] = httpx.get(proc.url + "/readyz", timeout=10).json()["checks"]["load"]
        return check

    with httpx.Client(base_url=proc.url, headers=headers, timeout=60) as client:
        stalled, other = (client.post("/agent/v1/chat", json={}).json()["id"] for _ in range(2))
        upstream.script(Reply([Text("after the wait")]), Reply([Text("and the next")]))
        out: dict[str, Any] = {}

        def send_stalled() -> None:
            with httpx.Client(base_url=proc.url, headers=headers, timeout=60) as own:
                out["response"] = own.post(f"/agent/v1/chat/{stalled}/message", json=body)

        with holding_writes(proc.env, proc.data_dir):
            sender = threading.Thread(target=send_stalled)
            sender.start()
            # Its claim waits for the database; once past 300 ms the replica is not ready for more.
            waiting = eventually(lambda: None if (c := load())["ok"] else c, what="the stalled claim")
            assert waiting["storeWaitMs"] > 300
            refused = client.post(f"/agent/v1/chat/{other}/message", json=body)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
            assert refused.json()["error"]["code"] == "OVERLOADED"
            assert "for the database" in refused.json()["error"]["message"]
        sender.join(60)
        assert out["response"].status_code == 200, out["response"].text
        assert out["response"].json()["parts"][0]["text"] == "after the wait"
        assert load()["ok"] is True and load()["storeWaitMs"] == 0
        assert client.get(f"/agent/v1/chat/{other}/messages").json()["data"] == []
        assert client.post(f"/agent/v1/chat/{other}/message", json=body).status_code == 200


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


def test_a_claim_that_waits_past_the_limit_trips_the_guard_until_it_ends() -> None:
    guard = LoadGuard(max_store_wait_s=0.05)
    with guard.claiming():
        guard.check(running=0)  # just begun
        time.sleep(0.06)  # the database takes its time
        assert guard.store_slow and guard.store_wait_s >= 0.05
        with pytest.raises(Overloaded, match="for the database"):
            guard.check(running=0)
    assert not guard.store_slow and guard.store_wait_s == 0
    guard.check(running=0)
    off = LoadGuard(max_store_wait_s=0)
    with off.claiming():
        time.sleep(0.01)
        assert not off.store_slow


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
