"""Agent questions: the agent asks (`ask_user`), the user replies, the turn goes on."""

from __future__ import annotations

import threading
from typing import Any

import httpx

from tests.conftest import auth
from tests.support.fake_upstream import FakeUpstream, Gate, Reply, Text, ToolCall
from tests.support.server import ServerProcess
from tests.support.services import holding_writes
from tests.support.sse import Sse, events, read_until, turn_done
from tests.support.waiting import eventually

ASK = ToolCall("ask_user", {"question": "Which file should I use?", "options": ["a.txt", "b.txt"]})


def new_chat(client: httpx.Client, **body: Any) -> str:
    chat_id: str = client.post("/agent/v1/chat", json=body).json()["id"]
    return chat_id


def ask_and_wait(
    client: httpx.Client, chat_id: str, text: str = "summarise the file"
) -> tuple[list[Sse], Any]:
    """Open `respond`, read up to `waiting_for_input`; return the events and the live stream."""
    context = client.stream(
        "POST", f"/agent/v1/chat/{chat_id}/respond", json={"parts": [{"type": "text", "text": text}]}
    )
    response = context.__enter__()
    seen = read_until(
        response, lambda e: e.event == "turn.status" and e.data["status"] == "waiting_for_input"
    )
    return seen, (context, response)


def test_question_reply_resumes_the_turn(
    admin: httpx.Client, server: ServerProcess, upstream: FakeUpstream
) -> None:
    chat_id = new_chat(admin)
    upstream.script(Reply([Text("Let me check. "), ASK]), Reply([Text("Using a.txt: it has 3 lines.")]))
    seen, (context, response) = ask_and_wait(admin, chat_id)
    question = next(e for e in seen if e.event == "question")
    request_id = question.data["requestID"]
    assert question.data["question"] == "Which file should I use?"
    assert (
        question.data["options"] == ["a.txt", "b.txt"] and question.data["turnId"] == seen[0].data["turnId"]
    )

    turn = admin.get(f"/agent/v1/chat/{chat_id}/turns/{question.data['turnId']}").json()
    assert turn["status"] == "waiting_for_input" and turn["questions"][0]["requestID"] == request_id
    blocked = admin.post(
        f"/agent/v1/chat/{chat_id}/message", json={"parts": [{"type": "text", "text": "hey"}]}
    )
    assert blocked.status_code == 409 and blocked.json()["error"]["code"] == "TURN_CONFLICT"
    assert blocked.headers["X-Active-Turn-Id"] == question.data["turnId"]
    assert len(upstream.requests) == 1  # no LLM request is held open while the question waits

    empty = admin.post(f"/agent/v1/chat/{chat_id}/question/{request_id}/reply", json={"text": " "})
    assert empty.status_code == 400
    assert admin.post(f"/agent/v1/chat/{chat_id}/question/nope/reply", json={"text": "x"}).status_code == 404
    other = server.cli("keys", "create", "--org", _org(server, "question-org")).stdout.strip()
    foreign = httpx.post(
        f"{server.url}/agent/v1/chat/{chat_id}/question/{request_id}/reply",
        headers=auth(other),
        json={"text": "x"},
    )
    assert foreign.status_code == 404

    replied = admin.post(
        f"/agent/v1/chat/{chat_id}/question/{request_id}/reply", json={"text": "Use a.txt please"}
    )
    assert replied.status_code == 200 and replied.json()["resumed"] is True
    rest = read_until(response, turn_done())
    context.__exit__(None, None, None)
    assert rest[-1].data["status"] == "completed"
    text = "".join(e.data.get("delta", "") for e in seen + rest if e.event == "message.part.updated")
    assert text == "Let me check. Using a.txt: it has 3 lines."
    assert upstream.requests[-1].contains(
        "Use a.txt please"
    )  # the reply reached the model as the tool result

    again = admin.post(f"/agent/v1/chat/{chat_id}/question/{request_id}/reply", json={"text": "b.txt"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "QUESTION_CLOSED"
    message = admin.get(f"/agent/v1/chat/{chat_id}/messages").json()["data"][-1]
    asked = next(p for p in message["parts"] if p["type"] == "question")
    assert asked["status"] == "answered" and asked["answer"] == "Use a.txt please"


def _org(server: ServerProcess, name: str) -> str:
    server.cli("orgs", "create", name)
    return name


def test_the_message_call_returns_the_final_answer(
    admin: httpx.Client, server: ServerProcess, upstream: FakeUpstream
) -> None:
    chat_id = new_chat(admin)
    upstream.script(Reply([ASK]), Reply([Text("Done with b.txt.")]))
    result: dict[str, httpx.Response] = {}
    with admin.stream("GET", f"/agent/v1/chat/{chat_id}/stream") as feed:
        sender = threading.Thread(
            target=lambda: result.setdefault(
                "r",
                admin.post(
                    f"/agent/v1/chat/{chat_id}/message", json={"parts": [{"type": "text", "text": "go"}]}
                ),
            )
        )
        sender.start()
        question = read_until(feed, lambda e: e.event == "question")[-1]
        admin.post(
            f"/agent/v1/chat/{chat_id}/question/{question.data['requestID']}/reply", json={"text": "b.txt"}
        )
        sender.join(20)
    answer = result["r"].json()
    assert [p["type"] for p in answer["parts"]] == ["question", "text"]
    assert answer["parts"][-1]["text"] == "Done with b.txt."


def test_a_question_survives_a_server_kill(make_server: Any, upstream: FakeUpstream) -> None:
    proc: ServerProcess = make_server()
    with httpx.Client(base_url=proc.url, headers=auth(proc.admin_key or ""), timeout=30) as client:
        chat_id = new_chat(client)
        upstream.script(Reply([Text("First, "), ASK]), Reply([Text("then the answer.")]))
        seen, (context, _response) = ask_and_wait(client, chat_id, "a question that must survive")
        request_id = next(e for e in seen if e.event == "question").data["requestID"]
        last_id = seen[-1].id
    proc.kill()
    try:
        context.__exit__(None, None, None)
    except httpx.HTTPError:
        pass
    proc.start()
    with httpx.Client(base_url=proc.url, headers=auth(proc.admin_key or ""), timeout=30) as client:
        with client.stream("GET", f"/agent/v1/chat/{chat_id}/stream") as feed:
            replied = client.post(
                f"/agent/v1/chat/{chat_id}/question/{request_id}/reply", json={"text": "a.txt"}
            )
            assert replied.status_code == 200
            rest = read_until(feed, turn_done())
        assert rest[-1].data["status"] == "completed"
        assert all(e.id is not None and last_id is not None and e.id > last_id for e in rest), (
            [e.id for e in rest],
            last_id,
        )
        final = upstream.requests[-1]
        assert final.contains("a.txt") and final.contains("a question that must survive")
        message = client.get(f"/agent/v1/chat/{chat_id}/messages").json()["data"][-1]
        assert "".join(p.get("text", "") for p in message["parts"]) == "First, then the answer."


def test_an_unanswered_question_times_out_with_no_reply(make_server: Any, upstream: FakeUpstream) -> None:
    proc: ServerProcess = make_server(CHAMBERS_QUESTION_TIMEOUT_S="0.5", CHAMBERS_REAPER_INTERVAL_S="0.2")
    with httpx.Client(base_url=proc.url, headers=auth(proc.admin_key or ""), timeout=30) as client:
        chat_id = new_chat(client)
        upstream.script(Reply([ASK]), Reply([Text("I will assume a.txt.")]))
        seen, (context, response) = ask_and_wait(client, chat_id)
        rest = read_until(response, turn_done())
        context.__exit__(None, None, None)
        assert rest[-1].data["status"] == "completed"
        assert upstream.requests[-1].contains("no reply")
        request_id = next(e for e in seen if e.event == "question").data["requestID"]
        late = client.post(f"/agent/v1/chat/{chat_id}/question/{request_id}/reply", json={"text": "a.txt"})
        assert late.status_code == 409


def test_cancel_while_waiting_drops_the_question(admin: httpx.Client, upstream: FakeUpstream) -> None:
    chat_id = new_chat(admin)
    upstream.script(Reply([ASK]), Reply([Text("Starting over.")]))
    seen, (context, response) = ask_and_wait(admin, chat_id)
    request_id = next(e for e in seen if e.event == "question").data["requestID"]
    cancelled = admin.post(f"/agent/v1/chat/{chat_id}/cancel", json={})
    assert cancelled.status_code == 200 and cancelled.json()["cancelled"] is True
    rest = list(events(response))
    context.__exit__(None, None, None)
    assert rest[-1].event == "turn.completed" and rest[-1].data["status"] == "cancelled"
    late = admin.post(f"/agent/v1/chat/{chat_id}/question/{request_id}/reply", json={"text": "a.txt"})
    assert late.status_code == 409 and late.json()["error"]["code"] == "QUESTION_CLOSED"
    after = admin.post(f"/agent/v1/chat/{chat_id}/message", json={"parts": [{"type": "text", "text": "new"}]})
    assert after.status_code == 200 and after.json()["parts"][0]["text"] == "Starting over."
    # The dropped question is closed with a result in the history, as the providers require (the fake
    # refuses a dangling call as they do).
    sent = upstream.requests[-1]
    assert sent.wire == "anthropic" and sent.contains("ask_user")
    blocks = [[b for b in m["content"] if isinstance(b, dict)] for m in sent.json["messages"]]
    at = next(i for i, found in enumerate(blocks) if any(b["type"] == "tool_use" for b in found))
    call_id = next(b["id"] for b in blocks[at] if b["type"] == "tool_use")
    assert any(b["type"] == "tool_result" and b["tool_use_id"] == call_id for b in blocks[at + 1])
    part = admin.get(f"/agent/v1/chat/{chat_id}/messages").json()["data"][1]["parts"][0]
    assert part["type"] == "question" and part["status"] == "dropped"


def test_cancelling_a_question_answers_the_message_call_that_waits(
    admin: httpx.Client, upstream: FakeUpstream
) -> None:
    """`POST /message` waits through the turn's question; a cancel then ends the turn, and the call gets
    the cancelled answer (it used to wait on for a turn that had ended)."""
    chat_id = new_chat(admin)
    upstream.script(Reply([Text("Let me ask. "), ASK]))
    result: dict[str, httpx.Response] = {}
    body = {"parts": [{"type": "text", "text": "go"}]}
    sender = threading.Thread(
        target=lambda: result.setdefault("r", admin.post(f"/agent/v1/chat/{chat_id}/message", json=body))
    )
    with admin.stream("GET", f"/agent/v1/chat/{chat_id}/stream") as feed:
        sender.start()
        read_until(feed, lambda e: e.event == "turn.status" and e.data["status"] == "waiting_for_input")
        assert admin.post(f"/agent/v1/chat/{chat_id}/cancel", json={}).json()["cancelled"] is True
        sender.join(20)
    assert "r" in result, "POST /message still waited after its turn was cancelled"
    answer = result["r"].json()
    assert result["r"].status_code == 200 and answer["info"]["status"] == "cancelled"
    assert [(p["type"], p.get("status")) for p in answer["parts"]] == [
        ("text", None),
        ("question", "dropped"),
    ]


def test_a_cancel_while_the_question_is_saved_ends_the_turn(make_server: Any, upstream: FakeUpstream) -> None:
    """The model has asked, but the database stalls while the question is saved, and a cancel comes
    then (past its grace: it cannot force a turn that is recording). Once saved, the turn ends
    `cancelled` instead of staying parked on a question nobody will see answered."""
    proc: ServerProcess = make_server(
        CHAMBERS_CANCEL_GRACE_S="0.2", CHAMBERS_IDLE_TIMEOUT_MIN_MS="100", CHAMBERS_REAPER_INTERVAL_S="0.2"
    )
    upstream.script(Reply([Gate("asking"), ASK]), Reply([Text("Next.")]))
    # No keep-alive within the client's read timeout: a turn that never ends fails the test, not hangs it.
    with httpx.Client(base_url=proc.url, headers=auth(proc.admin_key or ""), timeout=10) as client:
        chat_id = new_chat(client, idleTimeoutMs=300)
        # Asleep, the session is taken before the model is asked, so nothing but the question is written
        # once the model has answered: its event shows the run is over and the save has begun.
        eventually(lambda: client.get(f"/agent/v1/chat/{chat_id}").json()["status"] == "idle", what="sleep")
        body = {"parts": [{"type": "text", "text": "ask me"}]}
        with client.stream("POST", f"/agent/v1/chat/{chat_id}/respond", json=body) as response:
            upstream.wait_for_gate("asking")
            with holding_writes(proc.env, proc.data_dir):
                upstream.release("asking")
                read_until(
                    response, lambda e: e.event == "message.part.updated" and e.data["type"] == "question"
                )
                cancelled = client.post(f"/agent/v1/chat/{chat_id}/cancel", json={})
                assert cancelled.status_code == 200 and cancelled.json()["cancelled"] is True
            rest = read_until(response, turn_done())
        assert rest[-1].data["status"] == "cancelled", [(e.event, e.data.get("status")) for e in rest]
        turn = client.get(f"/agent/v1/chat/{chat_id}/turns/{rest[-1].data['turnId']}").json()
        assert turn["status"] == "cancelled"
        after = client.post(
            f"/agent/v1/chat/{chat_id}/message", json={"parts": [{"type": "text", "text": "go"}]}
        )
        assert after.status_code == 200 and after.json()["parts"][0]["text"] == "Next."


def test_a_turn_resumed_after_a_dropped_question_sends_a_valid_history(
    admin: httpx.Client, upstream: FakeUpstream
) -> None:
    """The first turn's question is dropped by a cancel; the next turn asks again and is answered. The
    resumed request carries both turns, the dropped call closed (the fake, like the providers, refuses
    a call without a result)."""
    chat_id = new_chat(admin)
    upstream.script(Reply([ASK]), Reply([ASK]), Reply([Text("Using b.txt.")]))
    _seen, (context, response) = ask_and_wait(admin, chat_id)
    assert admin.post(f"/agent/v1/chat/{chat_id}/cancel", json={}).json()["cancelled"] is True
    read_until(response, turn_done())
    context.__exit__(None, None, None)
    seen, (context, response) = ask_and_wait(admin, chat_id, "try again")
    request_id = next(e for e in seen if e.event == "question").data["requestID"]
    replied = admin.post(f"/agent/v1/chat/{chat_id}/question/{request_id}/reply", json={"text": "b.txt"})
    assert replied.status_code == 200
    rest = read_until(response, turn_done())
    context.__exit__(None, None, None)
    assert rest[-1].data["status"] == "completed", rest[-1].data
    resumed = upstream.requests[-1]
    assert resumed.contains("b.txt") and resumed.contains("try again")


def test_ending_a_session_cancels_a_waiting_question(admin: httpx.Client, upstream: FakeUpstream) -> None:
    chat_id = new_chat(admin)
    upstream.script(Reply([ASK]))
    seen, (context, response) = ask_and_wait(admin, chat_id)
    request_id = next(e for e in seen if e.event == "question").data["requestID"]
    assert admin.delete(f"/agent/v1/chat/{chat_id}").json()["status"] == "ended"
    rest = list(events(response))
    context.__exit__(None, None, None)
    assert rest[-1].event == "turn.completed" and rest[-1].data["status"] == "cancelled"
    turn = admin.get(f"/agent/v1/chat/{chat_id}/turns/{seen[0].data['turnId']}").json()
    assert turn["status"] == "cancelled"
    late = admin.post(f"/agent/v1/chat/{chat_id}/question/{request_id}/reply", json={"text": "a"})
    assert late.status_code == 409


def test_a_question_survives_an_idle_snapshot(make_server: Any, upstream: FakeUpstream) -> None:
    proc: ServerProcess = make_server(CHAMBERS_IDLE_TIMEOUT_MIN_MS="100", CHAMBERS_REAPER_INTERVAL_S="0.2")
    with httpx.Client(base_url=proc.url, headers=auth(proc.admin_key or ""), timeout=60) as client:
        chat_id = new_chat(client, idleTimeoutMs=500)
        upstream.script(
            Reply([ToolCall("write_file", {"path": "draft.txt", "content": "draft-v1"}), ASK]),
            Reply([ToolCall("read_file", {"path": "draft.txt"})]),
            Reply([Text("Kept the draft.")]),
        )
        with client.stream("GET", f"/agent/v1/chat/{chat_id}/stream") as feed:
            sender = threading.Thread(
                target=lambda: client.post(
                    f"/agent/v1/chat/{chat_id}/message",
                    json={"parts": [{"type": "text", "text": "draft it"}]},
                )
            )
            sender.start()
            question = read_until(feed, lambda e: e.event == "question")[-1]
            read_until(feed, lambda e: e.event == "session.status" and e.data["status"] == "idle")
            assert client.get(f"/agent/v1/chat/{chat_id}").json()["status"] == "idle"
            client.post(
                f"/agent/v1/chat/{chat_id}/question/{question.data['requestID']}/reply", json={"text": "yes"}
            )
            rest = read_until(feed, turn_done())
            sender.join(30)
        statuses = [e.data["status"] for e in rest if e.event == "turn.status"]
        assert "restoring" in statuses and rest[-1].data["status"] == "completed"
        assert upstream.requests[-1].contains("draft-v1")
