"""The Anthropic Messages API (`POST /v1/messages`, streamed) as a `WireFormat`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic_ai.messages import (
    ERROR_OUTCOMES,
    ModelMessage,
    ModelRequest,
    ModelResponsePart,
    RetryFeedbackPart,
    RetryPromptPart,
    SystemPromptPart,
    TextContent,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserContent,
    UserPromptPart,
)

from chambers.agent.wire import ProviderError, ResponseBuilder, WireRequest, error_message
from chambers.core.loop import TextDelta, TextStarted

_API_VERSION = "2023-06-01"
_DEFAULT_MAX_TOKENS = 16384  # pydantic-ai's, so a turn is capped as it was before

Block = dict[str, Any]


class AnthropicWire:
    """Anthropic Messages: the request body and the streamed events."""

    path = "/v1/messages"

    def headers(self, api_key: str) -> dict[str, str]:
        return {"x-api-key": api_key, "anthropic-version": _API_VERSION, "content-type": "application/json"}

    def body(self, request: WireRequest) -> dict[str, Any]:
        system, messages = map_messages(request.messages)
        if request.instructions:
            system.append(request.instructions)
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens or _DEFAULT_MAX_TOKENS,
            "stream": True,
            "messages": messages,
        }
        if system_text := "\n\n".join(s for s in system if s):
            body["system"] = system_text
        if request.tools:
            body["tools"] = [
                {"name": spec.name, "description": spec.description, "input_schema": spec.parameters}
                for spec in request.tools
            ]
        return body

    def read(self, event: str, data: str, builder: ResponseBuilder) -> TextStarted | TextDelta | None:
        # One `content_block_delta` per token: it is tested first and parsed once.
        if event == "content_block_delta":
            payload = json.loads(data)
            delta = payload["delta"]
            kind = delta.get("type")
            if kind == "text_delta":
                text = delta.get("text")
                return builder.text(text) if text else None
            if kind == "input_json_delta":
                partial = delta.get("partial_json")
                if partial:
                    builder.tool_call(payload["index"], args=partial)
            return None
        if event == "content_block_start":
            payload = json.loads(data)
            block = payload["content_block"]
            kind = block.get("type")
            if kind == "text":
                text = block.get("text")
                return builder.text(text) if text else None
            if kind == "tool_use":
                # Its `input` is always an empty placeholder; the arguments come as `input_json_delta`s.
                builder.tool_call(payload["index"], block.get("id"), block.get("name"))
            return None
        if event == "content_block_stop":
            # Text blocks are separate parts even when nothing else comes between them.
            builder.end_text()
            return None
        if event == "message_start":
            message = json.loads(data)["message"]
            usage = message.get("usage") or {}
            builder.model_name = message.get("model") or builder.model_name
            # Cached prompt tokens are reported apart from `input_tokens`, but are still input.
            builder.input_tokens = (
                (usage.get("input_tokens") or 0)
                + (usage.get("cache_creation_input_tokens") or 0)
                + (usage.get("cache_read_input_tokens") or 0)
            )
            builder.output_tokens = usage.get("output_tokens") or 0
            return None
        if event == "message_delta":
            payload = json.loads(data)
            output_tokens = (payload.get("usage") or {}).get("output_tokens")
            if output_tokens is not None:
                builder.output_tokens = output_tokens  # cumulative, not an increment
            stop_reason = (payload.get("delta") or {}).get("stop_reason")
            if stop_reason:
                builder.finish_reason = stop_reason
            return None
        if event == "error":
            raise ProviderError(error_message(data, "the model provider's stream failed"))
        return None

    def done(self, event: str, data: str) -> bool:
        return event == "message_stop"


def map_messages(history: Sequence[ModelMessage]) -> tuple[list[str], list[dict[str, Any]]]:
    """The system prompts found in `history`, in order, and its messages in Anthropic's shape."""
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for message in history:
        if isinstance(message, ModelRequest):
            role, blocks = "user", _request_blocks(message, system)
        else:
            role, blocks = "assistant", _response_blocks(message.parts)
        # Anthropic refuses empty messages and two messages in a row from one role.
        if not blocks:
            continue
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})
    for entry in messages:
        if entry["role"] == "user":
            # Tool results must open the user message that answers the tool calls; the sort is stable.
            entry["content"].sort(key=lambda block: block["type"] != "tool_result")
    return system, messages


def _request_blocks(message: ModelRequest, system: list[str]) -> list[Block]:
    blocks: list[Block] = []
    for part in message.parts:
        if isinstance(part, UserPromptPart):
            blocks.extend(_user_text(part.content))
        elif isinstance(part, ToolReturnPart):
            blocks.append(_tool_result(part))
        elif isinstance(part, RetryPromptPart):
            if part.tool_name is not None and part.tool_call_id:
                blocks.append(_error_result(part.tool_call_id, part.model_response()))
            else:
                blocks.append(_text(part.model_response()))
        elif isinstance(part, RetryFeedbackPart):
            # Never tied to a tool call: feedback on a whole response, in the user's voice.
            blocks.append(_text(part.model_response()))
        elif isinstance(part, SystemPromptPart):
            system.append(part.content)
    return blocks


def _response_blocks(parts: Sequence[ModelResponsePart]) -> list[Block]:
    blocks: list[Block] = []
    for part in parts:
        if isinstance(part, TextPart):
            if part.content:
                blocks.append(_text(part.content))
        elif isinstance(part, ToolCallPart):
            try:
                args = part.args_as_dict()
            except (ValueError, AssertionError):
                args = {}
            blocks.append(
                {"type": "tool_use", "id": part.tool_call_id, "name": part.tool_name, "input": args}
            )
    return blocks


def _user_text(content: str | Sequence[UserContent]) -> list[Block]:
    # Text only: files and cache points are pydantic-ai features this client does not carry. Empty text is
    # dropped because Anthropic refuses an empty text block.
    items = [content] if isinstance(content, str) else content
    texts = (
        item if isinstance(item, str) else item.content
        for item in items
        if isinstance(item, str | TextContent)
    )
    return [_text(text) for text in texts if text]


def _tool_result(part: ToolReturnPart) -> Block:
    block: Block = {
        "type": "tool_result",
        "tool_use_id": part.tool_call_id,
        # Unwrapped: `is_error` is Anthropic's own channel for a failed call.
        "content": part.model_response_str(wrap_if_error=False),
    }
    content = part.content
    if part.outcome in ERROR_OUTCOMES or (isinstance(content, str) and content.startswith("error: ")):
        block["is_error"] = True
    return block


def _error_result(tool_call_id: str, content: str) -> Block:
    return {"type": "tool_result", "tool_use_id": tool_call_id, "content": content, "is_error": True}


def _text(text: str) -> Block:
    return {"type": "text", "text": text}
