"""The Anthropic wire format: pydantic-ai histories as Messages API bodies, streamed events as responses."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    RetryFeedbackPart,
    RetryInfo,
    SystemPromptPart,
    TextPart,
    ThinkingPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)

from chambers.agent.anthropic_wire import AnthropicWire
from chambers.agent.wire import ProviderError, ResponseBuilder, WireFormat, WireRequest
from chambers.core.loop import TextDelta, TextStarted
from tests.support.wire import SHELL, wire_request


def _request(messages: list[ModelMessage], **fields: Any) -> WireRequest:
    return wire_request("claude-sonnet-4-6", messages, **fields)


def test_a_history_maps_to_a_messages_body() -> None:
    history: list[ModelMessage] = [
        ModelRequest(parts=[SystemPromptPart("You are terse."), UserPromptPart("list files")]),
        ModelResponse(
            parts=[
                ThinkingPart("the user wants ls"),
                TextPart("Looking."),
                ToolCallPart("shell", '{"command": "ls"}', tool_call_id="toolu_1"),
            ]
        ),
        ModelRequest(parts=[ToolReturnPart("shell", "a.txt\nb.txt", tool_call_id="toolu_1")]),
        ModelResponse(parts=[TextPart("Two files.")]),
        ModelRequest(parts=[UserPromptPart("thanks")]),
    ]
    request = _request(history, instructions="Answer in English.", tools=[SHELL])

    assert AnthropicWire().body(request) == {
        "model": "claude-sonnet-4-6",
        "max_tokens": 16384,
        "stream": True,
        "system": "You are terse.\n\nAnswer in English.",
        "tools": [{"name": "shell", "description": "Run a command.", "input_schema": SHELL.parameters}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "list files"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Looking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "shell", "input": {"command": "ls"}},
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "a.txt\nb.txt"}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "Two files."}]},
            {"role": "user", "content": [{"type": "text", "text": "thanks"}]},
        ],
    }


def test_a_bare_request_has_no_system_or_tools_and_keeps_its_max_tokens() -> None:
    body = AnthropicWire().body(_request([ModelRequest(parts=[UserPromptPart("hi")])], max_tokens=100))

    assert body == {
        "model": "claude-sonnet-4-6",
        "max_tokens": 100,
        "stream": True,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    }


def test_consecutive_messages_of_one_role_merge_and_tool_results_come_first() -> None:
    history: list[ModelMessage] = [
        ModelRequest(parts=[UserPromptPart("run it")]),
        ModelResponse(parts=[ToolCallPart("shell", {"command": "false"}, tool_call_id="toolu_1")]),
        ModelResponse(parts=[ThinkingPart("nothing to send")]),  # empty once mapped: dropped
        ModelResponse(
            parts=[TextPart(""), ToolCallPart("shell", {"command": "true"}, tool_call_id="toolu_2")]
        ),
        ModelRequest(parts=[UserPromptPart("also, hurry")]),
        ModelRequest(
            parts=[
                ToolReturnPart("shell", "error: exit status 1", tool_call_id="toolu_1"),
                ToolReturnPart("shell", "", tool_call_id="toolu_2"),
            ]
        ),
    ]

    assert AnthropicWire().body(_request(history))["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "run it"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "shell", "input": {"command": "false"}},
                {"type": "tool_use", "id": "toolu_2", "name": "shell", "input": {"command": "true"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": "error: exit status 1",
                    "is_error": True,
                },
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": ""},
                {"type": "text", "text": "also, hurry"},
            ],
        },
    ]


def test_retries_go_back_as_errored_tool_results_or_as_text() -> None:
    history: list[ModelMessage] = [
        ModelRequest(parts=[UserPromptPart("go")]),
        ModelResponse(parts=[ToolCallPart("shell", "{}", tool_call_id="toolu_1")]),
        ModelRequest(
            parts=[
                ToolReturnPart("shell", "command is required", tool_call_id="toolu_1", outcome="retried"),
                RetryFeedbackPart("answer in one word", retry=RetryInfo(cause="model_retry")),
            ]
        ),
    ]

    retried, feedback = AnthropicWire().body(_request(history))["messages"][2]["content"]

    assert retried == {
        "type": "tool_result",
        "tool_use_id": "toolu_1",
        "content": "command is required",
        "is_error": True,
    }
    assert feedback["type"] == "text"
    assert "answer in one word" in feedback["text"]


def _event(name: str, payload: dict[str, Any]) -> tuple[str, str]:
    return name, json.dumps(payload, separators=(",", ":"))


def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 5,
    }


def _delta(index: int, delta: dict[str, Any]) -> tuple[str, str]:
    return _event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def _block(index: int, block: dict[str, Any]) -> tuple[str, str]:
    return _event(
        "content_block_start", {"type": "content_block_start", "index": index, "content_block": block}
    )


def _stop(index: int) -> tuple[str, str]:
    return _event("content_block_stop", {"type": "content_block_stop", "index": index})


MESSAGE: dict[str, Any] = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-6-20260101",
    "content": [],
    "stop_reason": None,
    "stop_sequence": None,
    "usage": _usage(40, 1),
}

STREAM = [
    _event("message_start", {"type": "message_start", "message": MESSAGE}),
    _event("ping", {"type": "ping"}),
    _block(0, {"type": "thinking", "thinking": "", "signature": ""}),
    _delta(0, {"type": "thinking_delta", "thinking": "hmm"}),
    _delta(0, {"type": "signature_delta", "signature": "c2ln"}),
    _stop(0),
    _block(1, {"type": "text", "text": ""}),
    _delta(1, {"type": "text_delta", "text": "Let me "}),
    _delta(1, {"type": "text_delta", "text": "look."}),
    _stop(1),
    _block(2, {"type": "tool_use", "id": "toolu_1", "name": "shell", "input": {}}),
    _delta(2, {"type": "input_json_delta", "partial_json": ""}),
    _delta(2, {"type": "input_json_delta", "partial_json": '{"command": '}),
    _delta(2, {"type": "input_json_delta", "partial_json": '"ls"}'}),
    _stop(2),
    _event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": _usage(40, 17),
        },
    ),
    _event("message_stop", {"type": "message_stop"}),
]


def _read_stream(events: list[tuple[str, str]]) -> tuple[list[TextStarted | TextDelta], ResponseBuilder]:
    """What `ModelClient.stream` does with each event."""
    wire: WireFormat = AnthropicWire()
    builder = ResponseBuilder()
    out: list[TextStarted | TextDelta] = []
    for event, data in events:
        if wire.done(event, data):
            break
        if (text := wire.read(event, data, builder)) is not None:
            out.append(text)
    return out, builder


def test_a_streamed_message_reads_into_text_events_and_a_response() -> None:
    events, builder = _read_stream(STREAM)

    assert events == [TextStarted("Let me "), TextDelta("look.")]
    response = builder.response("anthropic", "m")
    text, call = response.parts
    assert text == TextPart("Let me look.")
    assert isinstance(call, ToolCallPart)
    assert (call.tool_call_id, call.tool_name, call.args) == ("toolu_1", "shell", '{"command": "ls"}')
    assert response.model_name == "claude-sonnet-4-6-20260101"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (45, 17)
    assert response.finish_reason == "tool_call"
    assert response.provider_name == "anthropic"


def test_text_blocks_are_separate_parts() -> None:
    events, builder = _read_stream(
        [
            _block(0, {"type": "text", "text": "One."}),
            _stop(0),
            _block(1, {"type": "text", "text": ""}),
            _delta(1, {"type": "text_delta", "text": "Two."}),
            _stop(1),
        ]
    )

    assert events == [TextStarted("One."), TextStarted("Two.")]
    assert builder.response("anthropic", "m").parts == [TextPart("One."), TextPart("Two.")]


def test_an_in_band_error_event_raises() -> None:
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}

    with pytest.raises(ProviderError) as raised:
        _read_stream([STREAM[0], _event("error", error)])

    assert raised.value.message == "Overloaded"
    assert raised.value.status_code is None
