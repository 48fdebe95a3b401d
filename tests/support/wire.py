"""Building wire-format requests in tests of `chambers.agent.*_wire`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic_ai.messages import ModelMessage

from chambers.agent.wire import WireRequest
from chambers.core.loop import ToolSpec

SHELL = ToolSpec("shell", "Run a command.", {"type": "object", "properties": {"command": {"type": "string"}}})


def wire_request(model: str, messages: Sequence[ModelMessage], **fields: Any) -> WireRequest:
    """A request for `model` with no instructions, tools or output cap unless `fields` give them."""
    values: dict[str, Any] = {"instructions": None, "tools": (), "max_tokens": None, **fields}
    return WireRequest(model=model, messages=messages, **values)
