"""Agent chat sessions (seed 000): create, message, respond, stream with replay, cancel, end, usage."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import pytest

from tests.conftest import auth
from tests.support.fake_upstream import FakeUpstream, Gate, Reply, Text, Tokens, Usage
from tests.support.server import ServerProcess
from tests.support.services import holding_writes
from tests.support.sse import events, read_until, turn_done

SEED_TURN_EVENTS = [
    "turn.started",
    "turn.status",
    "message.created",
    "message.part.updated",
    "message.completed",
    "session.usage",
    "turn.completed",
]


def new_chat(client: httpx.Client, **body: Any) -> str:
    created = client.post("/agent/v1/chat", json=body)
    assert created.status_code == 201, created.text
    chat_id: str = created.json()["id"]
    return chat_id


def say(client: httpx.Client, chat_id: str, text: str, **kwargs: Any) -> httpx.Response:
    return client.post(
        f"/agent/v1/chat/{chat_id}/message", json={"parts": [{"type": "text", "text": text}]}, **kwargs
    )


def test_the_seeds_complete_example(admin: httpx.Client, upstream: FakeUpstream) -> None:
    created = admin.post(
        "/agent/v1/chat",
        json={
            "title": "Deposition Analysis",
            "model": "anthropic/claude-sonnet-4.6",
            "idleTimeoutMs": 300000,
        },
    )
    assert created.status_code == 201
    chat = created.json()
    assert chat["id"].startswith("chat_") and chat["status"] == "active"
    assert chat["idleTimeoutMs"] == 300000 and chat["createdAt"].endswith("Z")
    assert chat["title"] == "Deposition Analysis" and chat["model"] == "anthropic/claude-sonnet-4.6"

    upstream.script(
        Reply([Text("The timeline: crash at 9:14.")], usage=Usage(4200, 1800)),
        Reply([Text("The police report agrees on 9:14.")], usage=Usage(5000, 300)),
    )
    first = say(admin, chat["id"], "Search for witness testimony about the accident timeline.")
    assert first.status_code == 200, first.text
    answer = first.json()
    assert answer["info"]["id"].startswith("msg_") and answer["info"]["role"] == "assistant"
    assert [p["type"] for p in answer["parts"]] == ["text"]
    assert answer["parts"][0]["id"].startswith("part_")
    assert answer["parts"][0]["text"] == "The timeline: crash at 9:14."

    usage = answer["usage"]
    assert usage["turnId"].startswith("turn_") and usage["messageId"] == answer["info"]["id"]
    assert usage["idempotencyKey"] == answer["info"]["id"]
    assert usage["model"] == "anthropic/claude-sonnet-4.6"
    assert (usage["totalInputTokens"], usage["totalOutputTokens"], usage["totalTokens"]) == (4200, 1800, 6000)
    assert usage["costMicros"] > 0  # claude-sonnet-4-6 has a known price
    assert usage["summary"] == {
        "costMicros": sum(e["costMicros"] for e in usage["entries"]),
        "totalInputTokens": 4200,
        "totalOutputTokens": 1800,
        "totalTokens": 6000,
    }
    (entry,) = usage["entries"]
    assert set(entry) == {
        "id", "kind", "service", "endpoint", "method", "statusCode", "costMicros",
        "promptTokens", "completionTokens", "totalTokens", "model", "timestamp", "metadata",
    }  # fmt: skip
    assert (
        entry["kind"] == "api"
        and entry["service"] == "chat"
        and entry["endpoint"] == "/llm/v1/chat/completions"
    )
    assert entry["promptTokens"] == 4200 and entry["statusCode"] == 200 and entry["timestamp"].endswith("Z")
    assert entry["metadata"]["cost"] == pytest.approx(entry["costMicros"] / 1e6)

    follow = say(admin, chat["id"], "Now cross-reference that with the police report.")
    assert follow.status_code == 200
    assert follow.json()["parts"][0]["text"] == "The police report agrees on 9:14."
    first_request, second_request = upstream.requests[-2:]
    assert first_request.path == "/v1/messages" and first_request.json["model"] == "claude-sonnet-4-6"
    assert second_request.contains("The timeline: crash at 9:14.")  # the history went along
    assert second_request.contains("Search for witness testimony")

    detail = admin.get(f"/agent/v1/chat/{chat['id']}").json()
    assert detail["usage"]["totalInputTokens"] == 9200 and detail["turnCount"] == 2
    assert detail["activeTurnId"] is None
    history = admin.get(f"/agent/v1/chat/{chat['id']}/messages").json()["data"]
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]

    ended = admin.delete(f"/agent/v1/chat/{chat['id']}")
    assert ended.status_code == 200
    body = ended.json()
    assert body["id"] == chat["id"] and body["status"] == "ended"
    assert isinstance(body["runtimeMs"], int) and isinstance(body["cost"], float)
    assert "snapshotImageId" in body
    late = say(admin, chat["id"], "Are you there?")
    assert late.status_code == 409 and late.json()["error"]["code"] == "SESSION_ENDED"
    assert admin.delete(f"/agent/v1/chat/{chat['id']}").json()["status"] == "ended"  # idempotent


def test_the_openai_wire_format_streams_text_and_usage(admin: httpx.Client, upstream: FakeUpstream) -> None:
    chat_id = new_chat(admin, model="openai/gpt-4o")
    upstream.script(Reply([Text("Hello from the OpenAI wire.", chunks=5)], usage=Usage(12, 7)))
    answer = say(admin, chat_id, "hi").json()
    assert answer["parts"][0]["text"] == "Hello from the OpenAI wire."
    assert (answer["usage"]["totalInputTokens"], answer["usage"]["totalOutputTokens"]) == (12, 7)
    request = upstream.requests[-1]
    assert request.path == "/v1/chat/completions" and request.json["model"] == "gpt-4o"
    assert request.json["stream"] is True and request.json["stream_options"]["include_usage"] is True


def test_respond_streams_the_seed_events_in_order(admin: httpx.Client, upstream: FakeUpstream) -> None:
    chat_id = new_chat(admin)
    upstream.script(Reply([Text("one two three four", chunks=4)], usage=Usage(10, 4)))
    body = {"parts": [{"type": "text", "text": "count"}]}
    with admin.stream("POST", f"/agent/v1/chat/{chat_id}/respond", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        seen = list(events(response))
    kinds = [e.event for e in seen]
    assert kinds[:3] == ["turn.started", "turn.status", "message.created"]
    assert kinds[-3:] == ["message.completed", "session.usage", "turn.completed"]
    assert set(kinds[3:-3]) == {"message.part.updated"}
    assert [e.id for e in seen] == sorted(e.id for e in seen if e.id is not None)
    turn_id = seen[0].data["turnId"]
    assert seen[0].data["chatId"] == chat_id
    assert all(e.data.get("turnId", e.data.get("properties", {}).get("turnId")) == turn_id for e in seen)
    updates = [e.data for e in seen if e.event == "message.part.updated"]
    assert "".join(u["delta"] for u in updates) == "one two three four"
    assert updates[-1]["text"] == "one two three four"
    assert updates[0]["delta"] and updates[0]["text"] == updates[0]["delta"]
    usage = seen[-2].data
    assert usage["type"] == "session.usage" and usage["properties"]["usage"]["totalTokens"] == 14
    assert seen[-1].data == {"turnId": turn_id, "status": "completed"}


def test_stream_opened_before_a_turn_sees_the_same_events(
    server: ServerProcess, admin: httpx.Client, upstream: FakeUpstream
) -> None:
    chat_id = new_chat(admin)
    upstream.script(Reply([Text("shared view", chunks=2)]))
    collected: list[Any] = []
    opened = threading.Event()

    def follow() -> None:
        with httpx.Client(base_url=server.url, headers=admin.headers, timeout=30) as client:
            with client.stream("GET", f"/agent/v1/chat/{chat_id}/stream") as response:
                opened.set()
                collected.extend(read_until(response, turn_done()))

    follower = threading.Thread(target=follow)
    follower.start()
    assert opened.wait(10)
    # The stream is registered when its response starts; a keep-alive-free handshake is enough here.
    with admin.stream(
        "POST", f"/agent/v1/chat/{chat_id}/respond", json={"parts": [{"type": "text", "text": "x"}]}
    ) as response:
        turn_events = list(events(response))
    follower.join(10)
    assert [(e.id, e.event) for e in collected] == [(e.id, e.event) for e in turn_events]
    assert [e.event for e in turn_events][-1] == "turn.completed"


def test_reconnecting_mid_turn_replays_exactly_the_missed_events(
    server: ServerProcess, admin: httpx.Client, upstream: FakeUpstream
) -> None:
    chat_id = new_chat(admin)
    upstream.script(Reply([Text("alpha beta", chunks=2), Gate("mid"), Text("gamma delta", chunks=2)]))
    result: dict[str, Any] = {}
    with admin.stream("GET", f"/agent/v1/chat/{chat_id}/stream") as response:
        sender = threading.Thread(target=lambda: result.setdefault("r", say(admin, chat_id, "go")))
        sender.start()
        before = read_until(
            response, lambda e: e.event == "message.part.updated" and "beta" in e.data["text"]
        )
    last_seen = before[-1].id
    assert last_seen is not None
    upstream.release("mid")
    sender.join(20)
    assert result["r"].status_code == 200

    for how in ("query", "header"):
        if how == "query":
            ctx = admin.stream("GET", f"/agent/v1/chat/{chat_id}/stream?lastEventId={last_seen}")
        else:
            ctx = admin.stream(
                "GET", f"/agent/v1/chat/{chat_id}/stream", headers={"Last-Event-ID": str(last_seen)}
            )
        with ctx as response:
            after = read_until(response, turn_done())
        ids = [e.id for e in after]
        assert ids == list(range(last_seen + 1, last_seen + 1 + len(ids))), ids  # no gap, no duplicate
        text = "".join(e.data["delta"] for e in after if e.event == "message.part.updated")
        assert text == "gamma delta"
        assert "session.usage" in [e.event for e in after]


def test_a_stale_last_event_id_is_told_not_skipped(make_server: Any, upstream: FakeUpstream) -> None:
    proc: ServerProcess = make_server(CHAMBERS_EVENT_BUFFER_SIZE="500", CHAMBERS_PART_UPDATE_WINDOW_MS="0")
    with httpx.Client(base_url=proc.url, headers=auth(proc.admin_key or ""), timeout=30) as client:
        chat_id = new_chat(client)
        upstream.script(Reply([Tokens(700, text="t ")]))
        assert say(client, chat_id, "many events").status_code == 200
        with client.stream("GET", f"/agent/v1/chat/{chat_id}/stream?lastEventId=1") as response:
            first, second = next(iter_pair(response))
        assert first.event == "stream.gap" and first.id is None
        assert first.data["requestedAfter"] == 1 and first.data["oldestAvailable"] == second.id
        assert second.id is not None and second.id > 2


def test_a_delta_within_the_window_waits_only_for_the_window_to_close(
    make_server: Any, upstream: FakeUpstream
) -> None:
    # Deltas 0.4 s apart against a 0.5 s window: "b" comes 0.4 s after "a" went out and is held
    # until 0.5 s, so it leaves before "c" arrives at 0.8 s. Held a whole window from its own
    # arrival instead, it would wait until 0.9 s and go out merged with "c".
    proc: ServerProcess = make_server(CHAMBERS_PART_UPDATE_WINDOW_MS="500")
    with httpx.Client(base_url=proc.url, headers=auth(proc.admin_key or ""), timeout=30) as client:
        chat_id = new_chat(client)
        upstream.script(Reply([Text("abc", chunks=3)], gap=0.4))
        body = {"parts": [{"type": "text", "text": "slowly"}]}
        with client.stream("POST", f"/agent/v1/chat/{chat_id}/respond", json=body) as response:
            received = read_until(response, turn_done())
    deltas = [e.data["delta"] for e in received if e.event == "message.part.updated"]
    assert deltas == ["a", "b", "c"]


def iter_pair(response: httpx.Response) -> Any:
    stream = events(response)
    yield next(stream), next(stream)


def test_keep_alive_comments_flow_on_an_idle_stream(make_server: Any) -> None:
    proc: ServerProcess = make_server(CHAMBERS_SSE_KEEPALIVE_S="0.2")
    with httpx.Client(base_url=proc.url, headers=auth(proc.admin_key or ""), timeout=10) as client:
        chat_id = new_chat(client)
        with client.stream("GET", f"/agent/v1/chat/{chat_id}/stream") as response:
            for line in response.iter_lines():
                if line.startswith(":"):
                    break


async def test_twenty_concurrent_messages_run_exactly_one_turn(
    aadmin: httpx.AsyncClient, upstream: FakeUpstream
) -> None:
    created = await aadmin.post("/agent/v1/chat", json={})
    chat_id = created.json()["id"]
    upstream.script(Reply([Text("first"), Gate("hold"), Text(" and only")]))
    body = {"parts": [{"type": "text", "text": "race"}]}
    tasks = [
        asyncio.create_task(aadmin.post(f"/agent/v1/chat/{chat_id}/message", json=body)) for _ in range(20)
    ]
    await upstream.await_gate("hold")
    done, pending = await asyncio.wait(tasks, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    while len(done) < 19:
        more, pending = await asyncio.wait(pending, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        assert more, "conflicting requests should be answered while the turn runs"
        done |= more
    upstream.release("hold")
    responses = await asyncio.gather(*tasks)
    winners = [r for r in responses if r.status_code == 200]
    losers = [r for r in responses if r.status_code == 409]
    assert len(winners) == 1 and len(losers) == 19
    turn_id = winners[0].json()["usage"]["turnId"]
    for loser in losers:
        assert loser.json()["error"]["code"] == "TURN_CONFLICT"
        assert int(loser.headers["Retry-After"]) >= 1
        assert loser.headers["X-Active-Turn-Id"] == turn_id
    assert len([r for r in upstream.requests if r.contains("race")]) == 1


def test_cancel_stops_a_slow_turn_and_keeps_the_partial_answer(
    server: ServerProcess, admin: httpx.Client, upstream: FakeUpstream
) -> None:
    chat_id = new_chat(admin)
    upstream.script(Reply([Tokens(2000, text="slow ")], gap=0.05), Reply([Text("fresh start")]))
    body = {"parts": [{"type": "text", "text": "talk forever"}]}
    with admin.stream("POST", f"/agent/v1/chat/{chat_id}/respond", json=body) as response:
        stream = events(response)
        for event in stream:
            if event.event == "message.part.updated":
                break
        started = time.monotonic()
        cancelled = admin.post(f"/agent/v1/chat/{chat_id}/cancel", json={})
        assert cancelled.status_code == 200 and cancelled.json()["cancelled"] is True
        rest = [e for e in stream]
        elapsed = time.monotonic() - started
    assert rest[-1].event == "turn.completed" and rest[-1].data["status"] == "cancelled"
    assert elapsed < 1.0, f"cancel took {elapsed:.2f}s"
    completed = next(e for e in rest if e.event == "message.completed")
    assert completed.data["status"] == "cancelled"

    assert say(admin, chat_id, "next").json()["parts"][0]["text"] == "fresh start"
    history = admin.get(f"/agent/v1/chat/{chat_id}/messages").json()["data"]
    partial = history[1]
    assert partial["role"] == "assistant" and partial["status"] == "cancelled"
    assert partial["parts"][0]["text"].startswith("slow ")
    assert upstream.requests[-1].contains("slow ")  # the partial answer stays in the model's history
    nothing = admin.post(f"/agent/v1/chat/{chat_id}/cancel", json={})
    assert nothing.status_code == 200 and nothing.json()["cancelled"] is False


def test_a_cancel_outlasting_its_grace_lets_a_finishing_turn_finish(
    make_server: Any, upstream: FakeUpstream
) -> None:
    """The run stops at once, but the database stalls while the turn records its end. The cancel's
    forced stop after its grace must not cut that short: the turn still ends with `turn.completed`,
    its outcome is stored, and the session takes the next message."""
    proc: ServerProcess = make_server(CHAMBERS_CANCEL_GRACE_S="0.2")
    upstream.script(Reply([Tokens(2000, text="slow ")], gap=0.05), Reply([Text("after the stall")]))
    # No keep-alive within the client's read timeout: a turn that never ends fails the test, not hangs it.
    with httpx.Client(base_url=proc.url, headers=auth(proc.admin_key or ""), timeout=10) as client:
        chat_id = new_chat(client)
        body = {"parts": [{"type": "text", "text": "talk forever"}]}
        with client.stream("POST", f"/agent/v1/chat/{chat_id}/respond", json=body) as response:
            read_until(response, lambda e: e.event == "message.part.updated")
            with holding_writes(proc.env, proc.data_dir):
                cancelled = client.post(f"/agent/v1/chat/{chat_id}/cancel", json={})
                assert cancelled.status_code == 200 and cancelled.json()["cancelled"] is True
                running = client.get(f"/agent/v1/chat/{chat_id}").json()
                assert running["activeTurnId"] is not None  # still recording its end, behind the lock
            rest = read_until(response, turn_done())
        assert rest[-1].data["status"] == "cancelled"
        turn = client.get(f"/agent/v1/chat/{chat_id}/turns/{rest[-1].data['turnId']}").json()
        assert turn["status"] == "cancelled"
        assert say(client, chat_id, "next").json()["parts"][0]["text"] == "after the stall"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "parts"),
        ({"parts": []}, "parts"),
        ({"parts": [{"type": "text", "text": ""}]}, "parts.0.text"),
        ({"parts": [{"type": "text", "text": "   "}]}, "parts.0.text"),
        ({"parts": [{"type": "image", "url": "x"}]}, "parts.0"),
        ({"parts": [{"type": "text"}]}, "parts.0.text"),
        ({"parts": [{"type": "text", "text": 5}]}, "parts.0.text"),
        ({"parts": [{"type": "text", "text": "x" * 200_001}]}, "limit"),
        ({"parts": "hello"}, "parts"),
        ({"parts": [{"type": "text", "text": "hi"}], "extra": 1}, "extra"),
    ],
)
def test_bad_messages_are_refused_and_change_nothing(
    admin: httpx.Client, upstream: FakeUpstream, body: dict[str, Any], fragment: str
) -> None:
    chat_id = new_chat(admin)
    for endpoint in ("message", "respond"):
        response = admin.post(f"/agent/v1/chat/{chat_id}/{endpoint}", json=body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "INVALID_REQUEST" and fragment in error["message"]
    assert admin.get(f"/agent/v1/chat/{chat_id}/messages").json()["data"] == []
    assert admin.get(f"/agent/v1/chat/{chat_id}").json()["turnCount"] == 0
    assert upstream.requests == []


@pytest.mark.parametrize("timeout", [0, 50, 86_400_001, -5])
def test_idle_timeout_bounds(admin: httpx.Client, make_server: Any, timeout: int) -> None:
    proc: ServerProcess = make_server(start=False)
    del proc
    refused = admin.post("/agent/v1/chat", json={"idleTimeoutMs": timeout})
    assert refused.status_code == 400 and "idleTimeoutMs" in refused.json()["error"]["message"]


def test_unknown_sessions_and_bad_models(admin: httpx.Client) -> None:
    for path in ("", "/messages", "/stream"):
        assert admin.get(f"/agent/v1/chat/chat_nope{path}").status_code == 404
    assert say(admin, "chat_nope", "hello").status_code == 404
    for model in ("claude", "/x", "anthropic/", "a b/c"):
        bad = admin.post("/agent/v1/chat", json={"model": model})
        assert bad.status_code == 400 and "model" in bad.json()["error"]["message"]


def test_an_unknown_provider_fails_the_turn_clearly(admin: httpx.Client, upstream: FakeUpstream) -> None:
    chat_id = new_chat(admin, model="nosuch/model-1")
    with admin.stream(
        "POST", f"/agent/v1/chat/{chat_id}/respond", json={"parts": [{"type": "text", "text": "hi"}]}
    ) as response:
        seen = list(events(response))
    final = seen[-1]
    assert final.event == "turn.completed" and final.data["status"] == "failed"
    assert (
        final.data["error"]["code"] == "MODEL_NOT_CONFIGURED" and "nosuch" in final.data["error"]["message"]
    )
    direct = say(admin, chat_id, "again")
    assert direct.status_code == 400, direct.text
    assert direct.json()["error"]["code"] == "MODEL_NOT_CONFIGURED"
    assert upstream.requests == []


def test_a_missing_provider_key_fails_the_turn_not_the_server(make_server: Any) -> None:
    proc: ServerProcess = make_server(ANTHROPIC_API_KEY="")
    with httpx.Client(base_url=proc.url, headers=auth(proc.admin_key or ""), timeout=30) as client:
        chat_id = new_chat(client)
        failed = say(client, chat_id, "hello")
        assert failed.status_code == 400 and "ANTHROPIC_API_KEY" in failed.json()["error"]["message"]
        assert client.get("/healthz").status_code == 200
        assert client.get(f"/agent/v1/chat/{chat_id}").json()["activeTurnId"] is None


def test_a_provider_error_is_reported_and_the_session_recovers(
    admin: httpx.Client, upstream: FakeUpstream
) -> None:
    chat_id = new_chat(admin, model="openai/gpt-4o")
    upstream.script(Reply(status=400, error_body={"error": {"message": "bad things", "type": "invalid"}}))
    failed = say(admin, chat_id, "hello")
    assert failed.status_code == 502 and failed.json()["error"]["code"] == "PROVIDER_ERROR"
    turn = admin.get(f"/agent/v1/chat/{chat_id}/turns/{failed.headers['X-Turn-Id']}").json()
    assert turn["status"] == "failed" and turn["error"]["code"] == "PROVIDER_ERROR"
    upstream.script(Reply([Text("better now")]))
    assert say(admin, chat_id, "again").json()["parts"][0]["text"] == "better now"


def test_an_idempotency_key_replays_the_first_result(admin: httpx.Client, upstream: FakeUpstream) -> None:
    chat_id = new_chat(admin)
    upstream.script(Reply([Text("only once")]))
    key = {"Idempotency-Key": "retry-123"}
    first = say(admin, chat_id, "do it", headers=key)
    second = say(admin, chat_id, "do it", headers=key)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json() and first.json()["usage"]["idempotencyKey"] == "retry-123"
    assert len(upstream.requests) == 1
    assert admin.get(f"/agent/v1/chat/{chat_id}").json()["turnCount"] == 1


def test_sessions_list_newest_first_with_cursor_and_filter(server: ServerProcess) -> None:
    server.cli("orgs", "create", "listing-org")
    key = server.cli("keys", "create", "--org", "listing-org").stdout.strip()
    with httpx.Client(base_url=server.url, headers=auth(key), timeout=30) as client:
        made = [new_chat(client, title=f"s{i}") for i in range(5)]
        client.delete(f"/agent/v1/chat/{made[0]}")
        page1 = client.get("/agent/v1/chat", params={"limit": 2}).json()
        page2 = client.get("/agent/v1/chat", params={"limit": 2, "cursor": page1["nextCursor"]}).json()
        page3 = client.get("/agent/v1/chat", params={"limit": 2, "cursor": page2["nextCursor"]}).json()
        listed = [s["id"] for s in page1["data"] + page2["data"] + page3["data"]]
        assert listed == list(reversed(made)) and page3["nextCursor"] is None
        ended = client.get("/agent/v1/chat", params={"status": "ended"}).json()["data"]
        assert [s["id"] for s in ended] == [made[0]]
        assert client.get("/agent/v1/chat", params={"status": "sleeping"}).status_code == 400


def test_a_server_killed_mid_turn_fails_the_turn_and_keeps_the_message(
    make_server: Any, upstream: FakeUpstream
) -> None:
    proc: ServerProcess = make_server()
    headers = auth(proc.admin_key or "")
    with httpx.Client(base_url=proc.url, headers=headers, timeout=30) as client:
        chat_id = new_chat(client)
    upstream.script(Reply([Text("half an ans"), Gate("never")]), Reply([Text("back again")]))
    outcome: dict[str, Any] = {}

    def doomed() -> None:
        try:
            with httpx.Client(base_url=proc.url, headers=headers, timeout=30) as client:
                outcome["r"] = say(client, chat_id, "remember this question")
        except httpx.TransportError as exc:
            outcome["error"] = exc

    sender = threading.Thread(target=doomed)
    sender.start()
    upstream.wait_for_gate("never")
    proc.kill()
    sender.join(10)
    assert "error" in outcome
    proc.start()
    with httpx.Client(base_url=proc.url, headers=headers, timeout=30) as client:
        chat = client.get(f"/agent/v1/chat/{chat_id}").json()
        assert chat["activeTurnId"] is None and chat["status"] == "active"
        history = client.get(f"/agent/v1/chat/{chat_id}/messages").json()["data"]
        assert history[0]["role"] == "user" and history[0]["parts"][0]["text"] == "remember this question"
        turn = client.get(f"/agent/v1/chat/{chat_id}/turns/{history[0]['turnId']}").json()
        assert turn["status"] == "failed" and turn["error"]["code"] == "INTERRUPTED"
        assert say(client, chat_id, "still there?").json()["parts"][0]["text"] == "back again"


def test_retrying_an_interrupted_turn_by_its_key_reports_the_failure(
    make_server: Any, upstream: FakeUpstream
) -> None:
    proc: ServerProcess = make_server()
    headers = auth(proc.admin_key or "")
    with httpx.Client(base_url=proc.url, headers=headers, timeout=30) as client:
        chat_id = new_chat(client)
    upstream.script(Reply([Gate("never")]))
    sender = threading.Thread(
        target=lambda: _swallow(
            lambda: say(
                httpx.Client(base_url=proc.url, headers=headers),
                chat_id,
                "q",
                headers={"Idempotency-Key": "k1"},
            )
        )
    )
    sender.start()
    upstream.wait_for_gate("never")
    proc.kill()
    sender.join(10)
    proc.start()
    with httpx.Client(base_url=proc.url, headers=headers, timeout=30) as client:
        retried = say(client, chat_id, "q", headers={"Idempotency-Key": "k1"})
        assert retried.status_code == 500 and retried.json()["error"]["code"] == "INTERRUPTED"


def _swallow(call: Any) -> None:
    try:
        call()
    except httpx.TransportError:
        pass


def test_a_stream_of_an_ended_session_replays_and_closes(admin: httpx.Client, upstream: FakeUpstream) -> None:
    chat_id = new_chat(admin)
    upstream.script(Reply([Text("bye")]))
    say(admin, chat_id, "hello")
    admin.delete(f"/agent/v1/chat/{chat_id}")
    with admin.stream("GET", f"/agent/v1/chat/{chat_id}/stream?lastEventId=0") as response:
        seen = list(events(response))  # ends by itself
    assert seen[0].event == "turn.started" and seen[-1].event == "session.status"
    with admin.stream("GET", f"/agent/v1/chat/{chat_id}/stream") as response:
        assert list(events(response)) == []


def test_an_idempotent_respond_retry_replays_the_outcome(admin: httpx.Client, upstream: FakeUpstream) -> None:
    chat_id = new_chat(admin)
    upstream.script(Reply([Text("once")]))
    body = {"parts": [{"type": "text", "text": "x"}]}
    headers = {"Idempotency-Key": "respond-1"}
    with admin.stream("POST", f"/agent/v1/chat/{chat_id}/respond", json=body, headers=headers) as response:
        first = list(events(response))
    with admin.stream("POST", f"/agent/v1/chat/{chat_id}/respond", json=body, headers=headers) as response:
        again = list(events(response))
    assert [e.event for e in again] == ["message.completed", "session.usage", "turn.completed"]
    assert again[-1].data == first[-1].data and len(upstream.requests) == 1
