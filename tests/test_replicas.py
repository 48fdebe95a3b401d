"""Several replicas on one PostgreSQL and one Redis serve one set of sessions, with no sticky routing."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import auth, need_postgres, need_redis, server_env
from tests.support import services
from tests.support.fake_upstream import FakeUpstream, Gate, Reply, Text, ToolCall
from tests.support.receiver import Receiver
from tests.support.server import ServerProcess
from tests.support.sse import events, read_until, turn_done
from tests.support.waiting import eventually


class Cluster:
    """N replicas sharing a fresh PostgreSQL database, Redis (own key prefix) and a snapshot directory."""

    def __init__(self, root: Path, upstream: FakeUpstream, size: int, **env: str) -> None:
        self.database_url = services.create_database()
        self.prefix = services.redis_prefix()
        shared = root / "snapshots"
        common = server_env(
            upstream,
            CHAMBERS_DATABASE_URL=self.database_url,
            CHAMBERS_REDIS_URL=services.REDIS_URL,
            CHAMBERS_REDIS_KEY_PREFIX=self.prefix,
            CHAMBERS_SNAPSHOT_DIR=str(shared),
            CHAMBERS_SECRET_KEY="f" * 43 + "=",
            **env,
        )
        self.replicas = [ServerProcess(root / f"replica{i}", env=dict(common)) for i in range(size)]
        self.replicas[0].start()
        self.key = self.replicas[0].admin_key or ""
        for replica in self.replicas[1:]:
            replica.start()

    def client(self, index: int) -> httpx.Client:
        return httpx.Client(base_url=self.replicas[index].url, headers=auth(self.key), timeout=60)

    def close(self) -> None:
        for replica in self.replicas:
            replica.stop()
        services.drop_database(self.database_url)
        services.flush_prefix(self.prefix)


@pytest.fixture
def cluster(tmp_path: Path, upstream: FakeUpstream) -> Iterator[Any]:
    need_postgres()
    need_redis()
    made: list[Cluster] = []

    def make(size: int = 3, **env: str) -> Cluster:
        made.append(Cluster(tmp_path / f"cluster{len(made)}", upstream, size, **env))
        return made[-1]

    yield make
    for cluster in made:
        cluster.close()


def message(client: httpx.Client, chat_id: str, text: str) -> httpx.Response:
    return client.post(f"/agent/v1/chat/{chat_id}/message", json={"parts": [{"type": "text", "text": text}]})


def test_create_on_a_stream_on_b_message_on_c(cluster: Any, upstream: FakeUpstream) -> None:
    group = cluster()
    with group.client(0) as a, group.client(1) as b, group.client(2) as c:
        chat_id = a.post("/agent/v1/chat", json={}).json()["id"]
        upstream.script(Reply([Text("seen everywhere", chunks=3)]))
        with b.stream("GET", f"/agent/v1/chat/{chat_id}/stream") as feed:
            answer = message(c, chat_id, "hello from c")
            assert answer.status_code == 200, answer.text
            seen = read_until(feed, turn_done())
        assert seen[0].event == "turn.started"
        assert (
            "".join(e.data.get("delta", "") for e in seen if e.event == "message.part.updated")
            == "seen everywhere"
        )
        assert a.get(f"/agent/v1/chat/{chat_id}").json()["turnCount"] == 1


def test_cancel_on_b_stops_a_turn_running_on_a(cluster: Any, upstream: FakeUpstream) -> None:
    group = cluster()
    with group.client(0) as a, group.client(1) as b:
        chat_id = a.post("/agent/v1/chat", json={}).json()["id"]
        upstream.script(Reply([Text("warm up")]))
        assert message(a, chat_id, "first, on a").status_code == 200  # a now owns the session
        upstream.script(Reply([Text("slow start"), Gate("never")]), Reply([Text("after")]))
        with a.stream(
            "POST", f"/agent/v1/chat/{chat_id}/respond", json={"parts": [{"type": "text", "text": "long"}]}
        ) as response:
            stream = events(response)
            next(e for e in stream if e.event == "message.part.updated")
            cancelled = b.post(f"/agent/v1/chat/{chat_id}/cancel", json={})
            assert cancelled.status_code == 200 and cancelled.json()["cancelled"] is True
            rest = list(stream)
        assert rest[-1].event == "turn.completed" and rest[-1].data["status"] == "cancelled"
        assert message(b, chat_id, "next").json()["parts"][0]["text"] == "after"


def test_a_question_asked_on_a_is_answered_through_c(cluster: Any, upstream: FakeUpstream) -> None:
    group = cluster()
    with group.client(0) as a, group.client(2) as c:
        chat_id = a.post("/agent/v1/chat", json={}).json()["id"]
        upstream.script(
            Reply([ToolCall("write_file", {"path": "owner.txt", "content": "a"})]),
            Reply([ToolCall("ask_user", {"question": "Go on?"})]),
            Reply([ToolCall("read_file", {"path": "owner.txt"})]),
            Reply([Text("went on")]),
        )
        with a.stream("GET", f"/agent/v1/chat/{chat_id}/stream") as feed:
            sender = threading.Thread(target=lambda: message(a, chat_id, "ask me"))
            sender.start()
            question = read_until(feed, lambda e: e.event == "question")[-1]
            replied = c.post(
                f"/agent/v1/chat/{chat_id}/question/{question.data['requestID']}/reply", json={"text": "yes"}
            )
            assert replied.status_code == 200, replied.text
            rest = read_until(feed, turn_done())
            sender.join(30)
        assert rest[-1].data["status"] == "completed"
        assert upstream.requests[-2].contains("yes")


async def test_fifty_concurrent_messages_over_replicas_run_one_turn(
    cluster: Any, upstream: FakeUpstream
) -> None:
    group = await asyncio.to_thread(cluster)
    clients = [httpx.AsyncClient(base_url=r.url, headers=auth(group.key), timeout=60) for r in group.replicas]
    try:
        chat_id = (await clients[0].post("/agent/v1/chat", json={})).json()["id"]
        upstream.script(Reply([Text("the one"), Gate("hold")]))
        body = {"parts": [{"type": "text", "text": "race"}]}
        tasks = [
            asyncio.create_task(clients[i % 3].post(f"/agent/v1/chat/{chat_id}/message", json=body))
            for i in range(50)
        ]
        await upstream.await_gate("hold")

        def refused() -> int:
            return sum(1 for t in tasks if t.done() and t.result().status_code == 409)

        # The 49 refusals come while the winner's turn is held (often all before its gate is reached).
        while refused() < 49:
            done, _ = await asyncio.wait(
                [t for t in tasks if not t.done()], timeout=30, return_when=asyncio.FIRST_COMPLETED
            )
            assert done, f"{refused()} of 49 refusals after 30 s"
        upstream.release("hold")
        results = await asyncio.gather(*tasks)
        assert sorted(r.status_code for r in results) == [200] + [409] * 49
        assert len([r for r in upstream.requests if r.contains("race")]) == 1
    finally:
        for client in clients:
            await client.aclose()


def test_killing_the_owner_fails_its_turn_and_a_survivor_resumes(
    cluster: Any, upstream: FakeUpstream
) -> None:
    group = cluster(2, CHAMBERS_LEASE_S="2")
    with group.client(0) as a, group.client(1) as b:
        chat_id = a.post("/agent/v1/chat", json={}).json()["id"]
        upstream.script(
            Reply([ToolCall("write_file", {"path": "kept.txt", "content": "checkpointed"})]),
            Reply([Text("saved")]),
        )
        assert message(a, chat_id, "save on a").status_code == 200  # a owns it; the turn checkpoints
        upstream.script(Reply([Text("dying"), Gate("never")]))
        threading.Thread(target=lambda: _quietly(lambda: message(a, chat_id, "doomed")), daemon=True).start()
        upstream.wait_for_gate("never")
        turn_id = a.get(f"/agent/v1/chat/{chat_id}").json()["activeTurnId"]
        group.replicas[0].kill()
        with b.stream("GET", f"/agent/v1/chat/{chat_id}/stream") as feed:
            read_until(feed, lambda e: e.event == "turn.completed" and e.data["turnId"] == turn_id)
        turn = b.get(f"/agent/v1/chat/{chat_id}/turns/{turn_id}").json()
        assert turn["status"] == "failed" and turn["error"]["code"] == "INTERRUPTED"
        upstream.script(Reply([ToolCall("read_file", {"path": "kept.txt"})]), Reply([Text("restored")]))
        assert message(b, chat_id, "load on b").json()["parts"][-1]["text"] == "restored"
        assert upstream.requests[-1].contains("checkpointed")


def test_three_deliverers_send_each_webhook_attempt_exactly_once(
    cluster: Any, upstream: FakeUpstream
) -> None:
    """Every replica runs a deliverer polling the same outbox; each scheduled attempt goes out once."""
    group = cluster(3, CHAMBERS_WEBHOOK_POLL_INTERVAL_S="0.02", CHAMBERS_WEBHOOK_RETRY_SCHEDULE="0.2,0.2,5")
    clients = [group.client(i) for i in range(3)]
    with Receiver() as hooks:
        try:
            made = clients[0].post("/events/v1/webhooks", json={"url": hooks.url("/hook")})
            assert made.status_code == 201, made.text
            webhook_id, secret = made.json()["id"], made.json()["secret"]
            hooks.secret("/hook", secret)
            hooks.script("/hook", 500, 500)  # the first event fails twice, then goes through

            sessions = 4
            for n in range(sessions):  # each request on another replica than the last
                chat_id = clients[n % 3].post("/agent/v1/chat", json={}).json()["id"]
                upstream.script(Reply([Text(f"answer {n}")]))
                assert message(clients[(n + 1) % 3], chat_id, f"turn {n}").status_code == 200
                assert clients[(n + 2) % 3].delete(f"/agent/v1/chat/{chat_id}").status_code == 200
            expected = sessions * 4  # session.created, turn.started, turn.completed, session.ended

            hooks.wait_for(expected, timeout=60, path="/hook", ok=True)
            # Then a marker: it is queued after every other delivery went out and is claimed by a later
            # poll of some deliverer, so a second claim of any earlier delivery (which would happen on the
            # poll right after the first) would have reached the receiver before it.
            assert clients[1].post(f"/events/v1/webhooks/{webhook_id}/test").status_code == 202
            hooks.wait_for(1, timeout=60, path="/hook", ok=True, where=lambda r: r.type == "webhook.test")
            received = hooks.requests(path="/hook")
            assert all(r.verified for r in received), [r.verify_error for r in received]
            accepted = [r for r in received if r.ok]
            ids = [r.webhook_id for r in accepted]
            assert len(ids) == expected + 1 and len(set(ids)) == len(ids), sorted(ids)
            refused = Counter(r.webhook_id for r in received if not r.ok)
            # The receiver refused its first two requests: both tries of one event, or one try each of two
            # events when another session's event went out before the retry. Each then went through once.
            assert sum(refused.values()) == 2 and all(webhook in ids for webhook in refused), refused

            # The delivery log across replicas agrees: one attempt more than its refusals for a refused
            # event, one for the rest.
            # (A replica records an attempt just after the receiver answered it: read until all are in.)
            def logged() -> list[dict[str, Any]] | None:
                url = f"/events/v1/webhooks/{webhook_id}/deliveries"
                data: list[dict[str, Any]] = clients[2].get(url, params={"limit": 100}).json()["data"]
                return data if len(data) >= len(received) else None

            by_event: dict[str, list[int]] = {}
            for attempt in eventually(logged, what="every attempt in the delivery log"):
                by_event.setdefault(attempt["eventId"], []).append(attempt["attempt"])
            tries = [1] * (expected + 1 - len(refused)) + [n + 1 for n in refused.values()]
            assert sorted(len(a) for a in by_event.values()) == sorted(tries)
            assert all(sorted(a) == list(range(1, len(a) + 1)) for a in by_event.values()), by_event
        finally:
            for client in clients:
                client.close()


def _quietly(call: Any) -> None:
    try:
        call()
    except httpx.HTTPError:
        pass
