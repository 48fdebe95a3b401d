"""The fake upstream must be parseable by the real provider SDKs and by pydantic-ai."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import anthropic
import openai
import pytest
from anthropic.types import (
    MessageParam,
    RawContentBlockDeltaEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    TextDelta,
)
from openai.types.chat import ChatCompletionMessageFunctionToolCall, ChatCompletionMessageParam
from pydantic_ai import Agent, ModelHTTPError
from pydantic_ai.messages import PartDeltaEvent, PartStartEvent, TextPart, TextPartDelta
from pydantic_ai.models import Model
from pydantic_ai.models.anthropic import AnthropicModel
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.anthropic import AnthropicProvider
from pydantic_ai.providers.openai import OpenAIProvider

from .fake_upstream import FakeUpstream, Gate, Reply, StreamError, Text, Tokens, ToolCall, Usage

CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
PROMPT: list[MessageParam] = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def upstream_server() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        yield up


@pytest.fixture
def up(upstream_server: FakeUpstream) -> FakeUpstream:
    upstream_server.reset()
    return upstream_server


def openai_client(up: FakeUpstream) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=up.openai_base_url, api_key="test", max_retries=0)


def anthropic_client(up: FakeUpstream) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=up.anthropic_base_url, api_key="test", max_retries=0)


def pai_model(wire: str, up: FakeUpstream) -> Model:
    if wire == "openai":
        return OpenAIChatModel("gpt-4o", provider=OpenAIProvider(base_url=up.openai_base_url, api_key="test"))
    return AnthropicModel(
        "claude-sonnet-4-6", provider=AnthropicProvider(api_key="test", base_url=up.anthropic_base_url)
    )


# --- openai SDK -------------------------------------------------------------------------------------------


async def test_openai_stream_text_and_usage(up: FakeUpstream) -> None:
    up.script(Reply([Text("Hello there, world!", chunks=4)], usage=Usage(input_tokens=12, output_tokens=4)))
    async with openai_client(up) as client:
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=CHAT, stream=True, stream_options={"include_usage": True}
        )
        deltas, usage, finish = [], None, None
        async for chunk in stream:
            if chunk.usage:
                usage = chunk.usage
            for choice in chunk.choices:
                if choice.delta.content:
                    deltas.append(choice.delta.content)
                finish = choice.finish_reason or finish
    assert "".join(deltas) == "Hello there, world!"
    assert len(deltas) == 4
    assert finish == "stop"
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (12, 4, 16)
    [rec] = up.requests
    assert (rec.wire, rec.path, rec.stream, rec.outcome) == ("openai", "/v1/chat/completions", True, "done")
    assert rec.json["stream_options"] == {"include_usage": True}
    assert rec.headers["authorization"] == "Bearer test"


async def test_openai_stream_tool_call(up: FakeUpstream) -> None:
    args = {"city": "Paris", "days": 3, "units": ["C", "F"]}
    up.script(Reply([Text("Checking."), ToolCall("get_weather", args, id="call_1", chunks=5)]))
    async with openai_client(up) as client:
        stream = await client.chat.completions.create(model="gpt-4o", messages=CHAT, stream=True)
        name, call_id, arg_parts, finish, usage_seen = None, None, [], None, False
        async for chunk in stream:
            usage_seen = usage_seen or chunk.usage is not None
            for choice in chunk.choices:
                for call in choice.delta.tool_calls or []:
                    assert call.index == 0
                    call_id = call.id or call_id
                    if call.function and call.function.name:
                        name = call.function.name
                    if call.function and call.function.arguments:
                        arg_parts.append(call.function.arguments)
                finish = choice.finish_reason or finish
    assert (name, call_id, finish) == ("get_weather", "call_1", "tool_calls")
    assert len(arg_parts) == 5
    assert json.loads("".join(arg_parts)) == args
    assert not usage_seen  # no usage chunk unless stream_options.include_usage


async def test_openai_non_streaming(up: FakeUpstream) -> None:
    up.script(Reply([Text("Let me look."), ToolCall("lookup", {"q": "x"})], usage=Usage(7, 3)))
    async with openai_client(up) as client:
        completion = await client.chat.completions.create(model="gpt-4o", messages=CHAT)
    message = completion.choices[0].message
    assert message.content == "Let me look."
    assert message.tool_calls is not None
    call = message.tool_calls[0]
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    assert call.function.name == "lookup"
    assert json.loads(call.function.arguments) == {"q": "x"}
    assert completion.choices[0].finish_reason == "tool_calls"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (7, 3)


# --- anthropic SDK ----------------------------------------------------------------------------------------


async def test_anthropic_stream_helper_text_and_tool_use(up: FakeUpstream) -> None:
    args = {"path": "/tmp/x", "lines": [1, 2]}
    up.script(Reply([Text("Reading it now."), ToolCall("read_file", args, id="toolu_1")], usage=Usage(21, 9)))
    async with anthropic_client(up) as client:
        async with client.messages.stream(
            model="claude-sonnet-4-6", max_tokens=100, messages=PROMPT
        ) as stream:
            text = "".join([piece async for piece in stream.text_stream])
            message = await stream.get_final_message()
    assert text == "Reading it now."
    assert [block.type for block in message.content] == ["text", "tool_use"]
    tool_use = message.content[1]
    assert tool_use.type == "tool_use"
    assert (tool_use.id, tool_use.name, tool_use.input) == ("toolu_1", "read_file", args)
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (21, 9)
    [rec] = up.requests
    assert (rec.wire, rec.path, rec.stream) == ("anthropic", "/v1/messages", True)


async def test_anthropic_raw_stream_events(up: FakeUpstream) -> None:
    up.script(Reply([Text("abc", chunks=3), "def", ToolCall("t", {"a": 1})], usage=Usage(5, 6)))
    async with anthropic_client(up) as client:
        stream = await client.messages.create(
            model="claude-sonnet-4-6", max_tokens=100, messages=PROMPT, stream=True
        )
        events = [event async for event in stream]
    types = [event.type for event in events]
    assert types[0] == "message_start"
    assert types[-2:] == ["message_delta", "message_stop"]
    assert types.count("content_block_start") == 2  # consecutive text items share one block
    start, delta = events[0], events[-2]
    assert isinstance(start, RawMessageStartEvent)
    assert start.message.usage.input_tokens == 5
    assert isinstance(delta, RawMessageDeltaEvent)
    assert delta.usage.output_tokens == 6
    assert delta.delta.stop_reason == "tool_use"
    text = "".join(
        e.delta.text
        for e in events
        if isinstance(e, RawContentBlockDeltaEvent) and isinstance(e.delta, TextDelta)
    )
    assert text == "abcdef"


async def test_anthropic_non_streaming(up: FakeUpstream) -> None:
    up.script(Reply([Text("Sure."), ToolCall("run", {"cmd": "ls"}, id="toolu_9")], usage=Usage(4, 2)))
    async with anthropic_client(up) as client:
        message = await client.messages.create(model="claude-sonnet-4-6", max_tokens=100, messages=PROMPT)
    assert [block.type for block in message.content] == ["text", "tool_use"]
    assert message.content[1].type == "tool_use"
    assert message.content[1].input == {"cmd": "ls"}
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (4, 2)


# --- pydantic-ai ------------------------------------------------------------------------------------------


def tool_result_of(request_json: dict[str, Any], wire: str, call_id: str) -> Any:
    for message in request_json["messages"]:
        if wire == "openai" and message["role"] == "tool" and message["tool_call_id"] == call_id:
            return message["content"]
        if wire == "anthropic" and isinstance(message["content"], list):
            for block in message["content"]:
                if block.get("type") == "tool_result" and block["tool_use_id"] == call_id:
                    return block["content"]
    raise AssertionError(f"no tool result for {call_id} in {request_json['messages']}")


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
async def test_pydantic_ai_tool_round_trip(up: FakeUpstream, wire: str) -> None:
    agent = Agent(pai_model(wire, up))
    calls: list[tuple[int, int]] = []

    @agent.tool_plain
    def add(a: int, b: int) -> int:
        calls.append((a, b))
        return a + b

    up.script(
        Reply([ToolCall("add", {"a": 2, "b": 40}, id="call_add")], usage=Usage(10, 5)),
        Reply([Text("The answer is 42.")], usage=Usage(20, 4)),
    )
    result = await agent.run("What is 2 + 40?")

    assert result.output == "The answer is 42."
    assert calls == [(2, 40)]
    first, second = up.requests
    assert first.wire == second.wire == wire
    assert [tool["name"] for tool in _tools(first.json, wire)] == ["add"]
    assert "42" in json.dumps(tool_result_of(second.json, wire, "call_add"))
    assert (result.usage.input_tokens, result.usage.output_tokens, result.usage.requests) == (30, 9, 2)


def _tools(request_json: dict[str, Any], wire: str) -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = request_json["tools"]
    return [tool["function"] for tool in tools] if wire == "openai" else tools


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
async def test_pydantic_ai_run_stream_events(up: FakeUpstream, wire: str) -> None:
    agent = Agent(pai_model(wire, up))
    up.script(Reply([Text("streamed via pydantic-ai", chunks=4)], usage=Usage(8, 4)))
    pieces: list[str] = []
    async with agent.run_stream_events("hi") as events:
        async for event in events:
            if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
                pieces.append(event.part.content)
            elif isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
                pieces.append(event.delta.content_delta)
    assert "".join(pieces) == "streamed via pydantic-ai"
    assert len(pieces) == 4
    [rec] = up.requests
    assert rec.stream


async def test_pydantic_ai_surfaces_http_error(up: FakeUpstream) -> None:
    up.script(Reply(status=429, headers={"x-should-retry": "false"}))
    with pytest.raises(ModelHTTPError) as info:
        await Agent(pai_model("anthropic", up)).run("hi")
    assert info.value.status_code == 429
    assert len(up.requests) == 1


# --- gates, waiting, defaults -----------------------------------------------------------------------------


async def test_gate_pauses_stream_until_release(up: FakeUpstream) -> None:
    up.script(Reply([Text("before", chunks=1), Gate("g"), Text(" after", chunks=2)]))
    async with anthropic_client(up) as client:
        async with client.messages.stream(
            model="claude-sonnet-4-6", max_tokens=100, messages=PROMPT
        ) as stream:
            texts = stream.text_stream
            assert await anext(texts) == "before"
            await up.await_gate("g")
            [rec] = await up.await_requests(1)
            assert rec.outcome == "open"  # paused: the response has not finished
            up.release("g")
            rest = "".join([piece async for piece in texts])
    assert rest == " after"
    assert up.requests[0].outcome == "done"


async def test_client_disconnect_at_gate_does_not_break_server(up: FakeUpstream) -> None:
    up.script(Reply([Text("partial", chunks=1), Gate("never")]))
    async with openai_client(up) as client:
        stream = await client.chat.completions.create(model="gpt-4o", messages=CHAT, stream=True)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        await up.await_gate("never")
        await stream.close()
        [rec] = await up.await_requests(1)
        await up.await_until(lambda: rec.outcome == "disconnected", what="disconnect")
        # The server keeps serving; the empty queue falls back to the default "ok" reply.
        completion = await client.chat.completions.create(model="gpt-4o", messages=CHAT)
    assert completion.choices[0].message.content == "ok"
    assert len(up.requests) == 2


def test_sync_wait_and_release_from_another_thread(up: FakeUpstream) -> None:
    up.script(Reply([Gate("go"), Text("released")]))
    result: list[str | None] = []

    def call() -> None:
        client = openai.OpenAI(base_url=up.openai_base_url, api_key="test", max_retries=0)
        with client:
            result.append(
                client.chat.completions.create(model="gpt-4o", messages=CHAT).choices[0].message.content
            )

    thread = threading.Thread(target=call)
    thread.start()
    [rec] = up.wait_for_requests(1)
    up.wait_for_gate("go")
    assert not rec.stream
    assert rec.outcome == "open"
    up.release("go")
    thread.join(10)
    assert result == ["released"]


async def test_await_requests_times_out(up: FakeUpstream) -> None:
    with pytest.raises(TimeoutError, match="1 request"):
        await up.await_requests(1, timeout=0.05)


async def test_empty_queue_replies_ok_and_records(up: FakeUpstream) -> None:
    async with anthropic_client(up) as client:
        message = await client.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=PROMPT)
    assert message.content[0].type == "text"
    assert message.content[0].text == "ok"
    assert len(up.requests) == 1


async def test_default_reply_tokens_with_timing() -> None:
    reply = Reply([Tokens(10)], usage=Usage(3, 10), ttft=0.05, gap=0.005)
    async with FakeUpstream(default_reply=reply) as up, openai_client(up) as client:
        for _ in range(2):
            started = time.perf_counter()
            stream = await client.chat.completions.create(
                model="gpt-4o", messages=CHAT, stream=True, stream_options={"include_usage": True}
            )
            deltas = [
                c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content
            ]
            assert time.perf_counter() - started >= 0.05 + 9 * 0.005
            assert deltas == ["tok "] * 10
    assert len(up.requests) == 2


# --- errors -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "status", "error"),
    [
        ("openai", 500, openai.InternalServerError),
        ("openai", 429, openai.RateLimitError),
        ("anthropic", 500, anthropic.InternalServerError),
        ("anthropic", 429, anthropic.RateLimitError),
        ("anthropic", 529, anthropic.OverloadedError),
    ],
)
async def test_error_reply_raises_sdk_error(
    up: FakeUpstream, wire: Literal["openai", "anthropic"], status: int, error: type[Exception]
) -> None:
    up.script(Reply(status=status))
    with pytest.raises(error) as info:
        if wire == "openai":
            async with openai_client(up) as client:
                await client.chat.completions.create(model="gpt-4o", messages=CHAT, stream=True)
        else:
            async with anthropic_client(up) as client:
                await client.messages.create(
                    model="claude-sonnet-4-6", max_tokens=10, messages=PROMPT, stream=True
                )
    assert isinstance(info.value, openai.APIStatusError | anthropic.APIStatusError)
    assert info.value.status_code == status


async def test_custom_error_body(up: FakeUpstream) -> None:
    body = {
        "error": {"message": "context too long", "type": "invalid_request_error", "code": "context_length"}
    }
    up.script(Reply(status=400, error_body=body))
    async with openai_client(up) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model="gpt-4o", messages=CHAT)
    assert info.value.code == "context_length"


async def test_mid_stream_error(up: FakeUpstream) -> None:
    up.script(
        Reply([Text("par"), StreamError("boom", status=529)]), Reply([Text("par"), StreamError("boom")])
    )
    async with anthropic_client(up) as client:
        stream = await client.messages.create(
            model="claude-sonnet-4-6", max_tokens=10, messages=PROMPT, stream=True
        )
        with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
            async for _ in stream:
                pass
    async with openai_client(up) as client:
        stream2 = await client.chat.completions.create(model="gpt-4o", messages=CHAT, stream=True)
        with pytest.raises(openai.APIError, match="boom"):
            async for _ in stream2:
                pass


async def test_tool_calls_without_results_are_refused_as_the_providers_do(up: FakeUpstream) -> None:
    """A history whose tool call has no result is a 400 from OpenAI and Anthropic; the fake says so too,
    so every test of the server also checks the histories it sends. The scripted reply waits."""
    up.script(Reply([Text("answered")]))
    call = {"id": "call_1", "type": "function", "function": {"name": "shell", "arguments": "{}"}}
    asked: Any = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
    ]
    again: Any = {"role": "user", "content": "again"}
    async with openai_client(up) as client:
        with pytest.raises(openai.BadRequestError, match="call_1"):
            await client.chat.completions.create(model="gpt-4o", messages=[*asked, again])
        answered: Any = [*asked, {"role": "tool", "tool_call_id": "call_1", "content": "ok"}, again]
        done = await client.chat.completions.create(model="gpt-4o", messages=answered)
    assert done.choices[0].message.content == "answered"
    up.script(Reply([Text("answered")]))
    use = {"type": "tool_use", "id": "toolu_1", "name": "shell", "input": {}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}
    used: Any = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [use]}]
    async with anthropic_client(up) as client:
        with pytest.raises(anthropic.BadRequestError, match="toolu_1"):
            await client.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=[*used, again])
        closed: Any = [*used, {"role": "user", "content": [result, {"type": "text", "text": "again"}]}]
        reply = await client.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=closed)
    assert reply.content[0].type == "text" and reply.content[0].text == "answered"
    assert [r.outcome for r in up.requests] == ["done"] * 4


# --- CLI --------------------------------------------------------------------------------------------------


def test_cli_serves_default_reply() -> None:
    root = Path(__file__).resolve().parents[2]
    command = [
        sys.executable,
        "-m",
        "tests.support.fake_upstream",
        "--port",
        "0",
        "--tokens",
        "5",
        "--gap",
        "0.001",
    ]
    proc = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("READY http://127.0.0.1:"), (line, proc.stderr and proc.stderr.read())
        url = line.split()[1]
        with openai.OpenAI(base_url=url + "/v1", api_key="test", max_retries=0) as client:
            for _ in range(2):
                stream = client.chat.completions.create(
                    model="gpt-4o", messages=CHAT, stream=True, stream_options={"include_usage": True}
                )
                chunks = list(stream)
                assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "tok " * 5
                assert chunks[-1].usage is not None
                assert chunks[-1].usage.completion_tokens == 5
        with anthropic.Anthropic(base_url=url, api_key="test", max_retries=0) as aclient:
            message = aclient.messages.create(model="claude-sonnet-4-6", max_tokens=10, messages=PROMPT)
            assert message.content[0].type == "text"
            assert message.content[0].text == "tok " * 5
    finally:
        proc.terminate()
        proc.wait(10)
