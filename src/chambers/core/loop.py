"""The AgentLoop port: one turn of model calls and tool calls, as a stream of plain events.

The core never sees pydantic-ai; the adapter in `chambers.agent` translates its events to these.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """What a tool call returns to the model."""

    ok: bool
    output: str
    truncated: bool = False


ToolExecutor = Callable[[str, dict[str, Any]], Awaitable[ToolOutcome]]
"""Runs a built-in tool by name with validated arguments (the sandbox provides it)."""


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A built-in tool as the model sees it."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(slots=True)
class TurnRequest:
    session_id: str
    turn_id: str
    model: str
    history: list[Any]
    user_text: str | None
    system_prompt: str | None = None
    tools: list[ToolSpec] = field(default_factory=list)
    execute_tool: ToolExecutor | None = None
    question_tool: bool = False
    answers: dict[str, str] | None = None
    """Replies to pending questions, by tool call id (resumes a turn that asked)."""
    max_output_tokens: int | None = None
    max_requests: int = 50


@dataclass(frozen=True, slots=True)
class TextStarted:
    text: str


@dataclass(frozen=True, slots=True)
class TextDelta:
    delta: str


@dataclass(frozen=True, slots=True)
class ToolStarted:
    call_id: str
    name: str
    args: Any


@dataclass(frozen=True, slots=True)
class ToolFinished:
    call_id: str
    name: str
    output: str
    ok: bool


@dataclass(frozen=True, slots=True)
class ModelCall:
    """One LLM request of the turn, for usage."""

    model: str
    provider: str
    endpoint: str
    input_tokens: int
    output_tokens: int
    timestamp: datetime


@dataclass(frozen=True, slots=True)
class Question:
    call_id: str
    question: str
    options: list[str]


@dataclass(slots=True)
class LoopResult:
    """How the loop ended. `messages` are the turn's new model messages (JSON), kept in history."""

    status: str  # completed | cancelled | failed | waiting
    messages: list[Any]
    output: str = ""
    calls: list[ModelCall] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)
    error: dict[str, Any] | None = None


LoopEvent = TextStarted | TextDelta | ToolStarted | ToolFinished | Question | LoopResult


class LoopRun(Protocol):
    """A running turn: iterate for events (the last is a LoopResult); `cancel()` stops it gracefully."""

    def __aiter__(self) -> AsyncIterator[LoopEvent]: ...
    def cancel(self) -> None: ...


class AgentLoop(Protocol):
    def start(self, request: TurnRequest) -> LoopRun: ...
    def preload(self) -> None:
        """Import what a first turn needs (seconds for the provider SDKs); run off the event loop."""
        ...

    async def aclose(self) -> None:
        """Release what the loop holds open (connection pools); called once at shutdown."""
        ...
