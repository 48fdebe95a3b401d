"""The OpenAI Chat Completions wire format (streamed `POST /chat/completions`), OpenAI and compatibles."""

from __future__ import annotations

import json
from typing import Any

from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    RetryFeedbackPart,
    RetryPromptPart,
    SystemPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)

from chambers.agent.wire import ProviderError, ResponseBuilder, WireRequest
from chambers.core.loop import TextDelta, TextStarted

_loads = json.loads


class OpenAIWire:
    """Chat Completions with `stream_options.include_usage`, so every streamed response reports tokens."""

    path = "/chat/completions"

    def __init__(self, *, max_completion_tokens: bool = True) -> None:
        # OpenAI itself takes `max_completion_tokens` (o-series refuse `max_tokens`); most compatible
        # servers only know `max_tokens`.
        self._max_field = "max_completion_tokens" if max_completion_tokens else "max_tokens"

    def headers(self, api_key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {api_key}", "content-type": "application/json"}

    def body(self, request: WireRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model,
            "messages": messages(request.messages, request.instructions),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
                }
                for t in request.tools
            ]
        if request.max_tokens:
            body[self._max_field] = request.max_tokens
        return body

    def read(self, event: str, data: str, builder: ResponseBuilder) -> TextStarted | TextDelta | None:
        chunk = _loads(data)
        choices = chunk.get("choices")
        if choices:
            choice = choices[0]
            delta = choice.get("delta") or {}
            if builder.model_name is None:
                builder.model_name = chunk.get("model")
            if choice.get("finish_reason"):
                builder.finish_reason = choice["finish_reason"]
            calls = delta.get("tool_calls")
            if calls:
                for call in calls:
                    function = call.get("function") or {}
                    builder.tool_call(
                        call.get("index", 0),
                        call.get("id"),
                        function.get("name"),
                        function.get("arguments") or "",
                    )
            content = delta.get("content")
            if content:
                return builder.text(content)
            return None
        usage = chunk.get("usage")
        if usage:
            builder.input_tokens = usage.get("prompt_tokens") or 0
            builder.output_tokens = usage.get("completion_tokens") or 0
            return None
        error = chunk.get("error")
        if error is not None:
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise ProviderError(str(message or "the provider ended the stream with an error"))
        return None

    def done(self, event: str, data: str) -> bool:
        return data == "[DONE]"


def messages(history: list[ModelMessage] | Any, instructions: str | None) -> list[dict[str, Any]]:
    """pydantic-ai messages as Chat Completions messages, the turn's instructions first."""
    out: list[dict[str, Any]] = [{"role": "system", "content": instructions}] if instructions else []
    for message in history:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, UserPromptPart):
                    out.append({"role": "user", "content": _user_content(part.content)})
                elif isinstance(part, SystemPromptPart):
                    out.append({"role": "system", "content": part.content})
                elif isinstance(part, ToolReturnPart):
                    out.append(
                        {
                            "role": "tool",
                            "tool_call_id": part.tool_call_id,
                            "content": part.model_response_str(),
                        }
                    )
                elif isinstance(part, RetryPromptPart):
                    if part.tool_name and part.tool_call_id:
                        out.append(
                            {
                                "role": "tool",
                                "tool_call_id": part.tool_call_id,
                                "content": part.model_response(),
                            }
                        )
                    else:
                        out.append({"role": "user", "content": part.model_response()})
                elif isinstance(part, RetryFeedbackPart):
                    out.append({"role": "user", "content": part.model_response()})
            continue
        text = "".join(p.content for p in message.parts if isinstance(p, TextPart))
        calls = [
            {
                "id": p.tool_call_id,
                "type": "function",
                "function": {"name": p.tool_name, "arguments": p.args_as_json_str()},
            }
            for p in message.parts
            if isinstance(p, ToolCallPart)
        ]
        if not text and not calls:
            continue
        assistant: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            assistant["tool_calls"] = calls
        out.append(assistant)
    return out


def _user_content(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(item for item in content if isinstance(item, str))
