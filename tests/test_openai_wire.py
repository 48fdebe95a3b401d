"""The Chat Completions wire format: pydantic-ai histories as request bodies, streamed chunks as responses."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    SystemPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)

from chambers.agent.openai_wire import OpenAIWire
from chambers.agent.wire import ProviderError, ResponseBuilder, WireRequest
from chambers.core.loop import TextDelta, TextStarted
from tests.support.wire import SHELL, wire_request


def _request(messages: list[ModelMessage], **fields: Any) -> WireRequest:
    return wire_request("gpt-4o", messages, **fields)


def _chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> str:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return json.dumps(
        {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-2024", "choices": choices, **extra}
    )


def test_a_history_maps_to_chat_messages_with_the_instructions_first() -> None:
    history: list[ModelMessage] = [
        ModelRequest(parts=[SystemPromptPart("You are terse."), UserPromptPart("list files")]),
        ModelResponse(
            parts=[TextPart("Looking."), ToolCallPart("shell", '{"command": "ls"}', tool_call_id="c_1")]
        ),
        ModelRequest(parts=[ToolReturnPart("shell", "a.txt", tool_call_id="c_1")]),
        ModelResponse(parts=[TextPart("One file.")]),
    ]
    body = OpenAIWire().body(
        _request(history, instructions="Answer in English.", tools=[SHELL], max_tokens=50)
    )

    assert body == {
        "model": "gpt-4o",
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_completion_tokens": 50,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "shell",
                    "description": "Run a command.",
                    "parameters": SHELL.parameters,
                },
            }
        ],
        "messages": [
            {"role": "system", "content": "Answer in English."},
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "list files"},
            {
                "role": "assistant",
                "content": "Looking.",
                "tool_calls": [
                    {
                        "id": "c_1",
                        "type": "function",
                        "function": {"name": "shell", "arguments": '{"command":"ls"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c_1", "content": "a.txt"},
            {"role": "assistant", "content": "One file."},
        ],
    }


def test_compatible_servers_get_max_tokens() -> None:
    body = OpenAIWire(max_completion_tokens=False).body(
        _request([ModelRequest(parts=[UserPromptPart("hi")])], max_tokens=9)
    )
    assert body["max_tokens"] == 9 and "max_completion_tokens" not in body and "tools" not in body


def test_streamed_chunks_build_the_response() -> None:
    wire, builder = OpenAIWire(), ResponseBuilder()
    chunks = [
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"content": "Hel"}),
        _chunk({"content": "lo"}),
        _chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "c_9",
                        "type": "function",
                        "function": {"name": "shell", "arguments": ""},
                    }
                ]
            }
        ),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"command":'}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' "ls"}'}}]}),
        _chunk({}, finish="tool_calls"),
        _chunk(None, usage={"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}),
    ]
    events = [wire.read("", chunk, builder) for chunk in chunks]

    assert [e for e in events if e is not None] == [TextStarted("Hel"), TextDelta("lo")]
    assert wire.done("", "[DONE]") and not wire.done("", chunks[0])
    response = builder.response("openai", "gpt-4o")
    assert response.parts == [
        TextPart("Hello"),
        ToolCallPart("shell", '{"command": "ls"}', tool_call_id="c_9"),
    ]
    assert (response.usage.input_tokens, response.usage.output_tokens) == (11, 4)
    assert response.model_name == "gpt-4o-2024" and response.finish_reason == "tool_call"


def test_an_error_inside_the_stream_is_a_provider_error() -> None:
    error = json.dumps({"error": {"message": "upstream fell over", "type": "server_error"}})
    with pytest.raises(ProviderError, match="upstream fell over") as raised:
        OpenAIWire().read("", error, ResponseBuilder())
    assert raised.value.status_code is None
