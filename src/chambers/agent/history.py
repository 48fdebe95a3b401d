"""Imported chat histories as pydantic-ai model messages (the JSON `turn_history` hands the loop).

OpenAI-style roles map to parts: system -> SystemPromptPart, user -> UserPromptPart, assistant ->
TextPart plus a ToolCallPart per tool call, tool -> ToolReturnPart. Consecutive request parts are
merged into one request, so providers that want alternating roles get them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic_ai.messages import (
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelRequest,
    ModelRequestPart,
    ModelResponse,
    ModelResponsePart,
    SystemPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)

from chambers.core.controller.ports import ChatMessage


def encode_history(messages: Sequence[ChatMessage]) -> list[Any]:
    """The messages as `ModelMessagesTypeAdapter` JSON."""
    out: list[ModelMessage] = []
    pending: list[ModelRequestPart] = []
    tool_names: dict[str, str] = {}

    def flush() -> None:
        if pending:
            out.append(ModelRequest(parts=list(pending)))
            pending.clear()

    for message in messages:
        if message.role == "system":
            pending.append(SystemPromptPart(content=message.text))
        elif message.role == "user":
            pending.append(UserPromptPart(content=message.text))
        elif message.role == "tool":
            call_id = message.tool_call_id or ""
            name = message.name or tool_names.get(call_id, "tool")
            part = ToolReturnPart(tool_name=name, content=message.text)
            if call_id:
                part.tool_call_id = call_id
            pending.append(part)
        else:
            flush()
            parts: list[ModelResponsePart] = []
            if message.text:
                parts.append(TextPart(content=message.text))
            for call in message.tool_calls:
                tool_names[call.id] = call.name
                parts.append(
                    ToolCallPart(tool_name=call.name, args=_args(call.arguments), tool_call_id=call.id)
                )
            out.append(ModelResponse(parts=parts))
    flush()
    dumped: list[Any] = ModelMessagesTypeAdapter.dump_python(out, mode="json")
    return dumped


def _args(arguments: str) -> str | dict[str, Any]:
    try:
        parsed = json.loads(arguments) if arguments else {}
    except ValueError:
        return arguments
    return parsed if isinstance(parsed, dict) else arguments
