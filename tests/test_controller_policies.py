"""Agent policies: each refuses what it should, names itself, and no model is called first."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import auth
from tests.support.fake_upstream import FakeUpstream, Reply, Text, ToolCall, Usage
from tests.support.server import ServerProcess
from tests.test_controller import chat, chunks, give, make_agent, make_user, refused, sign_in


def member_for(
    server: ServerProcess, admin: httpx.Client, policy: dict[str, Any], **agent: Any
) -> tuple[httpx.Client, str]:
    """A signed-in member with a grant on a new agent that has `policy`."""
    made = make_agent(admin, policy=policy, **agent)
    user = make_user(admin)
    give(admin, made["did"], user["id"])
    return sign_in(server, user["email"]), made["did"]


def test_allowed_models(server: ServerProcess, admin: httpx.Client, upstream: FakeUpstream) -> None:
    member, did = member_for(server, admin, {"allowedModels": ["openai/gpt-4o"]})
    calls = len(upstream.requests)
    refused(chat(member, did, "hi"), 403, "POLICY_DENIED", "allowedModels", "anthropic/claude-sonnet-4.6")
    assert len(upstream.requests) == calls
    assert member.get("/api/chat/sessions", params={"agentDid": did}).json()["sessions"] == []  # none made

    ok, ok_did = member_for(server, admin, {"allowedModels": ["openai/gpt-4o"]}, model="openai/gpt-4o")
    upstream.script(Reply([Text("allowed")]))
    assert chunks(chat(ok, ok_did, "hi").text) == "allowed"


def test_max_message_chars(server: ServerProcess, admin: httpx.Client, upstream: FakeUpstream) -> None:
    member, did = member_for(server, admin, {"maxMessageChars": 10})
    calls = len(upstream.requests)
    refused(chat(member, did, "x" * 11), 403, "POLICY_DENIED", "maxMessageChars", "11")
    assert len(upstream.requests) == calls
    upstream.script(Reply([Text("short")]))
    assert chunks(chat(member, did, "x" * 10).text) == "short"


def test_max_turns_per_session(server: ServerProcess, admin: httpx.Client, upstream: FakeUpstream) -> None:
    member, did = member_for(server, admin, {"maxTurnsPerSession": 2})
    upstream.script(Reply([Text("one")]), Reply([Text("two")]))
    first = chat(member, did, "1")
    session = first.headers["x-session-id"]
    assert chunks(chat(member, did, "2", session).text) == "two"
    calls = len(upstream.requests)
    refused(chat(member, did, "3", session), 403, "POLICY_DENIED", "maxTurnsPerSession")
    assert len(upstream.requests) == calls
    upstream.script(Reply([Text("fresh")]))
    assert chunks(chat(member, did, "new session").text) == "fresh"


def test_max_cost_per_session(server: ServerProcess, admin: httpx.Client, upstream: FakeUpstream) -> None:
    member, did = member_for(server, admin, {"maxCostMicrosPerSession": 1})
    upstream.script(Reply([Text("costly")], usage=Usage(1000, 1000)))
    session = chat(member, did, "1").headers["x-session-id"]
    calls = len(upstream.requests)
    refused(chat(member, did, "2", session), 403, "POLICY_DENIED", "maxCostMicrosPerSession")
    assert len(upstream.requests) == calls


def test_max_cost_per_subject_per_day(
    server: ServerProcess, admin: httpx.Client, upstream: FakeUpstream
) -> None:
    member, did = member_for(server, admin, {"maxCostMicrosPerSubjectPerDay": 1})
    upstream.script(Reply([Text("costly")], usage=Usage(1000, 1000)))
    assert chunks(chat(member, did, "1").text) == "costly"
    calls = len(upstream.requests)
    refused(chat(member, did, "another session"), 403, "POLICY_DENIED", "maxCostMicrosPerSubjectPerDay")
    assert len(upstream.requests) == calls
    # Another subject has its own budget.
    upstream.script(Reply([Text("mine")]))
    assert chunks(chat(admin, did, "admin's turn").text) == "mine"


def test_requests_per_minute_per_subject(
    server: ServerProcess, admin: httpx.Client, upstream: FakeUpstream
) -> None:
    member, did = member_for(server, admin, {"requestsPerMinutePerSubject": 2})
    upstream.script(Reply([Text("a")]), Reply([Text("b")]))
    assert chunks(chat(member, did, "1").text) == "a"
    assert chunks(chat(member, did, "2").text) == "b"
    calls = len(upstream.requests)
    limited = chat(member, did, "3")
    refused(limited, 429, "RATE_LIMITED", "requestsPerMinutePerSubject")
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert len(upstream.requests) == calls


def test_output_cap_and_allowed_tools_shape_the_model_request(
    server: ServerProcess, admin: httpx.Client, upstream: FakeUpstream
) -> None:
    member, did = member_for(
        server,
        admin,
        {"maxOutputTokensPerTurn": 77, "allowedTools": ["read_file", "grep"]},
        tools=["read_file", "shell"],
    )
    upstream.script(Reply([Text("capped")]))
    assert chunks(chat(member, did, "go").text) == "capped"
    sent = upstream.requests[-1].json
    assert sent["max_tokens"] == 77
    assert sorted(tool["name"] for tool in sent.get("tools", [])) == ["read_file"]  # agent tools ∩ policy


def test_the_default_agents_policy_holds_on_agent_v1(make_server: Any, upstream: FakeUpstream) -> None:
    server: ServerProcess = make_server()
    assert server.admin_key
    with httpx.Client(base_url=server.url, headers=auth(server.admin_key), timeout=30) as admin:
        default = next(a for a in admin.get("/api/agents").json()["agents"] if a["default"])
        changed = admin.patch(f"/api/agents/{default['did']}", json={"policy": {"maxMessageChars": 5}})
        assert changed.status_code == 200 and changed.json()["policy"]["maxMessageChars"] == 5
        chat_id = admin.post("/agent/v1/chat", json={}).json()["id"]
        calls = len(upstream.requests)
        too_long = admin.post(
            f"/agent/v1/chat/{chat_id}/message", json={"parts": [{"type": "text", "text": "123456"}]}
        )
        refused(too_long, 403, "POLICY_DENIED", "maxMessageChars")
        streamed = admin.post(
            f"/agent/v1/chat/{chat_id}/respond", json={"parts": [{"type": "text", "text": "123456"}]}
        )
        refused(streamed, 403, "POLICY_DENIED", "maxMessageChars")
        assert len(upstream.requests) == calls
        upstream.script(Reply([Text("fine")]))
        short = admin.post(
            f"/agent/v1/chat/{chat_id}/message", json={"parts": [{"type": "text", "text": "12345"}]}
        )
        assert short.status_code == 200 and short.json()["parts"][0]["text"] == "fine"
        log = admin.get("/api/audit", params={"sessionId": chat_id}).json()["entries"]
        assert [(e["kind"], e["outcome"]) for e in log] == [
            ("turn", "completed"),
            ("refusal", "refused"),
            ("refusal", "refused"),
        ]
        denied = log[-1]["decisions"][-1]
        assert denied == {"policy": "maxMessageChars", "result": "deny", "limit": 5, "value": 6}


def test_answers_to_questions_are_held_to_the_grant_and_the_message_policy(
    server: ServerProcess, admin: httpx.Client, upstream: FakeUpstream
) -> None:
    """An answer goes to the model like a message: an over-long one, or one after the grant was revoked,
    is refused, and the question stays open."""
    made = make_agent(admin, policy={"maxMessageChars": 10})
    user = make_user(admin)
    grant = give(admin, made["did"], user["id"])
    member = sign_in(server, user["email"])
    upstream.script(Reply([ToolCall("ask_user", {"question": "Which one?"})]), Reply([Text("took it")]))
    asked = chat(member, made["did"], "pick")
    assert asked.status_code == 200, asked.text
    chat_id = asked.headers["x-session-id"]
    turn_id = member.get(f"/agent/v1/chat/{chat_id}").json()["activeTurnId"]
    turn = member.get(f"/agent/v1/chat/{chat_id}/turns/{turn_id}").json()
    assert turn["status"] == "waiting_for_input"
    request_id = turn["questions"][0]["requestID"]
    reply = f"/agent/v1/chat/{chat_id}/question/{request_id}/reply"
    calls = len(upstream.requests)

    refused(member.post(reply, json={"text": "x" * 11}), 403, "POLICY_DENIED", "maxMessageChars", "11")
    still = member.get(f"/agent/v1/chat/{chat_id}/turns/{turn_id}").json()
    assert still["status"] == "waiting_for_input" and [q["requestID"] for q in still["questions"]] == [
        request_id
    ]
    assert len(upstream.requests) == calls

    assert admin.delete(f"/api/grants/{grant['id']}").status_code in (200, 204)
    refused(member.post(reply, json={"text": "the first"}), 403, "FORBIDDEN")
    assert len(upstream.requests) == calls

    give(admin, made["did"], user["id"])
    answered = member.post(reply, json={"text": "the first"})
    assert answered.status_code == 200, answered.text
    assert answered.json()["resumed"] is True
    upstream.wait_for_requests(calls + 1)
    assert upstream.requests[-1].contains("the first")
