"""The two agent loops behave alike: Chambers' own clients (`direct`, the default) and pydantic-ai's agent.

Each test here runs once per loop, on both wire formats where it matters; the rest of the suite runs on
the default loop. A history written by one loop is read by the other.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import auth, server_env
from tests.support.fake_upstream import FakeUpstream, Reply, Text, Tokens, ToolCall, Usage
from tests.support.server import ServerProcess
from tests.support.sse import events, read_until

LOOPS = ["direct", "pydantic-ai"]
MODELS = ["anthropic/claude-sonnet-4.6", "openai/gpt-4o"]


@pytest.fixture(scope="module", params=LOOPS)
def loop_client(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream
) -> Iterator[httpx.Client]:
    """An admin client of a server running the loop under test (one server per loop, for the module)."""
    env = server_env(upstream, CHAMBERS_AGENT_LOOP=request.param)
    proc = ServerProcess(tmp_path_factory.mktemp(f"loop-{request.param}"), env=env).start()
    with httpx.Client(base_url=proc.url, headers=auth(proc.admin_key or ""), timeout=30) as client:
        yield client
    proc.stop()


def new_chat(client: httpx.Client, model: str = MODELS[0]) -> str:
    chat_id: str = client.post("/agent/v1/chat", json={"model": model}).json()["id"]
    return chat_id


def say(client: httpx.Client, chat_id: str, text: str) -> httpx.Response:
    return client.post(f"/agent/v1/chat/{chat_id}/message", json={"parts": [{"type": "text", "text": text}]})


@pytest.mark.parametrize("model", MODELS)
def test_a_tool_call_runs_in_the_sandbox_and_its_output_goes_back(
    loop_client: httpx.Client, upstream: FakeUpstream, model: str
) -> None:
    chat_id = new_chat(loop_client, model)
    upstream.script(
        Reply(
            [Text("Looking. "), ToolCall("shell", {"command": "echo from-the-sandbox"})], usage=Usage(30, 5)
        ),
        Reply([Text("It printed from-the-sandbox.")], usage=Usage(50, 7)),
    )
    answer = say(loop_client, chat_id, "run something")
    assert answer.status_code == 200, answer.text
    parts = answer.json()["parts"]
    assert [p["type"] for p in parts] == ["text", "tool", "text"]
    assert parts[0]["text"] == "Looking. " and parts[2]["text"] == "It printed from-the-sandbox."
    assert parts[1]["name"] == "shell" and parts[1]["status"] == "completed"
    assert "from-the-sandbox" in parts[1]["output"]
    assert upstream.requests[-1].contains("from-the-sandbox")  # the tool's output went back to the model
    usage = answer.json()["usage"]
    assert (usage["totalInputTokens"], usage["totalOutputTokens"]) == (80, 12)  # both model calls


@pytest.mark.parametrize("model", MODELS)
def test_the_model_is_told_of_an_unknown_tool_and_corrects_itself(
    loop_client: httpx.Client, upstream: FakeUpstream, model: str
) -> None:
    chat_id = new_chat(loop_client, model)
    upstream.script(Reply([ToolCall("teleport", {"to": "mars"})]), Reply([Text("I cannot teleport.")]))
    answer = say(loop_client, chat_id, "go to mars")
    assert answer.status_code == 200, answer.text
    assert answer.json()["parts"][-1]["text"] == "I cannot teleport."
    corrected = upstream.requests[-1]
    assert corrected.contains("Unknown tool name") and corrected.contains("teleport")


def test_a_model_that_keeps_calling_a_missing_tool_fails_the_turn(
    loop_client: httpx.Client, upstream: FakeUpstream
) -> None:
    chat_id = new_chat(loop_client)
    upstream.script(*[Reply([ToolCall("teleport", {"to": "mars"})]) for _ in range(3)])
    failed = say(loop_client, chat_id, "go to mars")
    assert failed.status_code == 502 and failed.json()["error"]["code"] == "PROVIDER_ERROR"
    assert len(upstream.requests) == 3  # the first call and two corrections
    upstream.script(Reply([Text("back to normal")]))
    assert say(loop_client, chat_id, "again").json()["parts"][0]["text"] == "back to normal"


@pytest.mark.parametrize("model", MODELS)
def test_a_rate_limited_request_is_sent_again(
    loop_client: httpx.Client, upstream: FakeUpstream, model: str
) -> None:
    chat_id = new_chat(loop_client, model)
    upstream.script(Reply(status=429, headers={"retry-after": "0"}), Reply([Text("after the wait")]))
    answer = say(loop_client, chat_id, "hello")
    assert answer.status_code == 200, answer.text
    assert answer.json()["parts"][0]["text"] == "after the wait" and len(upstream.requests) == 2


def test_cancel_interrupts_the_stream_and_keeps_the_partial_answer(
    loop_client: httpx.Client, upstream: FakeUpstream
) -> None:
    chat_id = new_chat(loop_client)
    upstream.script(Reply([Tokens(2000, text="slow ")], gap=0.05), Reply([Text("fresh start")]))
    body = {"parts": [{"type": "text", "text": "talk forever"}]}
    with loop_client.stream("POST", f"/agent/v1/chat/{chat_id}/respond", json=body) as response:
        read_until(response, lambda e: e.event == "message.part.updated")
        started = time.monotonic()
        assert loop_client.post(f"/agent/v1/chat/{chat_id}/cancel", json={}).json()["cancelled"] is True
        rest = list(events(response))
        elapsed = time.monotonic() - started
    assert rest[-1].event == "turn.completed" and rest[-1].data["status"] == "cancelled"
    assert elapsed < 1.0, f"cancel took {elapsed:.2f}s"
    assert say(loop_client, chat_id, "next").json()["parts"][0]["text"] == "fresh start"
    assert upstream.requests[-1].contains("slow ")  # the partial answer stays in the model's history


def test_a_question_and_a_tool_in_one_response_run_the_tool_once_answered(
    loop_client: httpx.Client, upstream: FakeUpstream
) -> None:
    chat_id = new_chat(loop_client)
    ask = ToolCall("ask_user", {"question": "Which name?", "options": ["a", "b"]})
    upstream.script(
        Reply([ToolCall("shell", {"command": "echo tool-ran"}), ask]), Reply([Text("Done: bravo.")])
    )
    body = {"parts": [{"type": "text", "text": "make a file"}]}
    with loop_client.stream("POST", f"/agent/v1/chat/{chat_id}/respond", json=body) as response:
        seen = read_until(
            response, lambda e: e.event == "turn.status" and e.data["status"] == "waiting_for_input"
        )
        question = next(e for e in seen if e.event == "question")
        reply = loop_client.post(
            f"/agent/v1/chat/{chat_id}/question/{question.data['requestID']}/reply",
            json={"text": "call it bravo"},
        )
        assert reply.status_code == 200, reply.text
        rest = read_until(response, lambda e: e.event == "turn.completed")
    assert rest[-1].data["status"] == "completed"
    final = upstream.requests[-1]
    assert final.contains("tool-ran") and final.contains("call it bravo")
    messages = loop_client.get(f"/agent/v1/chat/{chat_id}/messages").json()["data"]
    tools = [p for p in messages[-1]["parts"] if p["type"] == "tool"]
    assert [t["name"] for t in tools] == ["shell"] and tools[0]["status"] == "completed"


@pytest.mark.parametrize(("first", "second"), [("pydantic-ai", "direct"), ("direct", "pydantic-ai")])
def test_a_history_written_by_one_loop_is_read_by_the_other(
    make_server: Any, upstream: FakeUpstream, first: str, second: str
) -> None:
    proc: ServerProcess = make_server(CHAMBERS_AGENT_LOOP=first)
    headers = auth(proc.admin_key or "")
    with httpx.Client(base_url=proc.url, headers=headers, timeout=30) as client:
        chat_id = new_chat(client)
        upstream.script(
            Reply([ToolCall("shell", {"command": "echo kept-across-loops"})]),
            Reply([Text("Noted the echo.")]),
        )
        assert say(client, chat_id, "remember this").status_code == 200
    proc.restart(CHAMBERS_AGENT_LOOP=second)
    with httpx.Client(base_url=proc.url, headers=headers, timeout=30) as client:
        upstream.script(Reply([Text("It was kept-across-loops.")]))
        answer = say(client, chat_id, "what did the command print?")
        assert answer.status_code == 200, answer.text
    sent = upstream.requests[-1]
    assert (
        sent.contains("kept-across-loops")
        and sent.contains("Noted the echo.")
        and sent.contains("remember this")
    )


@pytest.mark.parametrize("loop", LOOPS)
def test_model_requests_go_through_the_proxy_the_environment_names(
    make_server: Any, upstream: FakeUpstream, loop: str
) -> None:
    # The provider's host does not resolve: only a request sent through the proxy (the fake upstream,
    # which answers a proxied request's absolute URL as its own) can be answered.
    proc: ServerProcess = make_server(
        CHAMBERS_AGENT_LOOP=loop,
        OPENAI_BASE_URL="http://model-provider.invalid/v1",
        HTTP_PROXY=upstream.url,
        http_proxy=upstream.url,
        NO_PROXY="",
        no_proxy="",
    )
    with httpx.Client(base_url=proc.url, headers=auth(proc.admin_key or ""), timeout=30) as client:
        upstream.script(Reply([Text("via the proxy")]))
        answer = say(client, new_chat(client, "openai/gpt-4o"), "hello")
    assert answer.status_code == 200, answer.text
    assert answer.json()["parts"][0]["text"] == "via the proxy"
    assert [r.headers["host"] for r in upstream.requests] == ["model-provider.invalid"]
