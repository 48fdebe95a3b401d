"""DirectAgentLoop: the AgentLoop port on our own streaming clients (`wire.py`), with pydantic-ai's messages.

pydantic-ai's agent graph, its event layers and the provider SDKs cost about 130 µs of CPU per streamed
token and about 4 ms per turn before the request leaves (docs/benchmarks.md, profile step 8). This
loop does the same job for the two wire formats Chambers speaks: stream a response, run the tools it
calls in the sandbox, send their results back, until the model answers in text or asks the user.
Histories stay pydantic-ai `ModelMessage`s, so either loop reads what the other wrote.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelRequestPart,
    ModelResponse,
    RetryPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)

from chambers.agent.models import ClientResolver, ModelNotConfigured, ResolvedModel
from chambers.agent.results import (
    ASK_USER,
    dump_messages,
    is_error,
    load_history,
    model_calls,
    not_configured,
    provider_error,
    question_options,
)
from chambers.agent.wire import ModelClient, ProviderError, ResponseBuilder, WireRequest
from chambers.core.loop import LoopEvent, LoopResult, Question, ToolFinished, ToolStarted, TurnRequest

MAX_TOOL_RETRIES = 2
"""Bad calls of one tool (unknown name, arguments that are not a JSON object) the model may correct."""


class DirectAgentLoop:
    """Starts turns on the provider clients the resolver hands out (cached per model and key)."""

    def __init__(self, resolver: ClientResolver) -> None:
        self.resolver = resolver

    def start(self, request: TurnRequest) -> _Run:
        return _Run(self.resolver, request)

    def preload(self) -> None:
        import chambers.agent.anthropic_wire
        import chambers.agent.openai_wire  # noqa: F401

    async def aclose(self) -> None:
        """Close the clients' connection pools."""
        await self.resolver.aclose()


class _ToolMisuse(Exception):
    """The model kept calling a tool wrongly after being told how."""


class _Run:
    def __init__(self, resolver: ClientResolver, request: TurnRequest) -> None:
        self.resolver = resolver
        self.request = request
        self._task: asyncio.Task[Any] | None = None
        self._busy = False  # inside the run's own awaits (not suspended at a `yield`)
        self._cancel_requested = False
        self._cancels_sent = 0
        self._new: list[ModelMessage] = []

    def cancel(self) -> None:
        """Stop at once: an open model stream or a running tool is interrupted, what came so far is kept."""
        self._cancel_requested = True
        task = self._task
        # Only while the run itself awaits: at a `yield` the task runs the caller's code, which must not
        # see a CancelledError; the run checks the flag when the caller asks for the next event.
        if task is not None and self._busy and not task.done():
            self._cancels_sent += 1
            task.cancel()

    async def __aiter__(self) -> AsyncIterator[LoopEvent]:
        request = self.request
        try:
            resolved = self.resolver.resolve(request.model)
        except ModelNotConfigured as exc:
            yield not_configured(exc)
            return
        self._task = asyncio.current_task()
        self._busy = True
        try:
            async for event in self._turn(resolved):
                self._busy = False
                yield event
                self._busy = True
        except asyncio.CancelledError:
            task = self._task
            if not self._cancel_requested or task is None or task.cancelling() > self._cancels_sent:
                raise
            for _ in range(self._cancels_sent):
                task.uncancel()
            self._busy = False
            yield self._cancelled(resolved)
        except _ToolMisuse as exc:
            self._busy = False
            yield LoopResult(status="failed", messages=[], error=provider_error(exc))
        except ProviderError as exc:
            self._busy = False
            yield LoopResult(status="failed", messages=[], error=provider_error(exc))
        finally:
            self._busy = False

    def _cancelled(self, resolved: ResolvedModel) -> LoopResult:
        return LoopResult(
            status="cancelled", messages=dump_messages(self._new), calls=model_calls(self._new, resolved)
        )

    async def _turn(self, resolved: ResolvedModel) -> AsyncIterator[LoopEvent]:
        request = self.request
        client: ModelClient = resolved.model
        history = load_history(request)
        new = self._new
        tools = [*request.tools, ASK_USER] if request.question_tool else list(request.tools)
        retries: dict[str, int] = {}
        pending_calls: list[ToolCallPart] = []
        if request.answers:
            pending_calls = _unanswered(history)
        else:
            new.append(
                ModelRequest(
                    parts=[UserPromptPart(content=request.user_text or "")],
                    instructions=request.system_prompt,
                )
            )
        requests = 0
        while True:
            if pending_calls:
                parts: list[ModelRequestPart] = []
                questions: list[Question] = []
                async for event in self._run_tools(pending_calls, parts, questions, retries):
                    yield event
                if parts:
                    new.append(ModelRequest(parts=parts))
                if questions:
                    yield LoopResult(
                        status="waiting",
                        messages=dump_messages(new),
                        calls=model_calls(new, resolved),
                        questions=questions,
                    )
                    return
            if self._cancel_requested:
                yield self._cancelled(resolved)
                return
            if requests >= request.max_requests:
                message = f"The next request would exceed the request_limit of {request.max_requests}"
                yield LoopResult(
                    status="failed", messages=[], error={"code": "TURN_LIMIT", "message": message}
                )
                return
            requests += 1
            builder = ResponseBuilder()
            wire_request = WireRequest(
                model=resolved.name,
                messages=[*history, *new],
                instructions=request.system_prompt,
                tools=tools,
                max_tokens=request.max_output_tokens,
            )
            stream = client.stream(wire_request, builder)
            try:
                async for event in stream:
                    yield event
                    if self._cancel_requested:
                        break
            finally:
                await stream.aclose()  # a stream left early must not hold its connection until collected
                # Kept whether the stream ended, broke off or was cancelled: a partial answer stays in the
                # history (a failed turn keeps no messages at all, see LoopResult).
                if builder.has_content or not self._cancel_requested:
                    new.append(builder.response(resolved.provider, resolved.name))
            if self._cancel_requested:
                yield self._cancelled(resolved)
                return
            response = new[-1]
            assert isinstance(response, ModelResponse)
            pending_calls = response.tool_calls
            if not pending_calls:
                output = "".join(p.content for p in response.parts if isinstance(p, TextPart))
                yield LoopResult(
                    status="completed",
                    messages=dump_messages(new),
                    output=output,
                    calls=model_calls(new, resolved),
                )
                return

    async def _run_tools(
        self,
        calls: list[ToolCallPart],
        parts: list[ModelRequestPart],
        questions: list[Question],
        retries: dict[str, int],
    ) -> AsyncIterator[LoopEvent]:
        """Run the calls one at a time; questions are collected, not asked, while other calls remain."""
        request = self.request
        answers = request.answers or {}
        known = {spec.name for spec in request.tools}
        asking = [c for c in calls if c.tool_name == ASK_USER.name and request.question_tool]
        if asking and any(c.tool_call_id not in answers for c in asking):
            # Ask first, run the rest once answered: the answer may change what the user wants done.
            for call in asking:
                if call.tool_call_id not in answers:
                    asked = _args(call) or {}
                    questions.append(
                        Question(call.tool_call_id, str(asked.get("question", "")), question_options(asked))
                    )
            return
        for call in calls:
            if self._cancel_requested:
                return
            name, call_id = call.tool_name, call.tool_call_id
            if name == ASK_USER.name and request.question_tool:
                parts.append(ToolReturnPart(tool_name=name, content=answers[call_id], tool_call_id=call_id))
                continue
            args = _args(call)
            problem = None
            if name not in known:
                available = ", ".join(sorted(known | ({ASK_USER.name} if request.question_tool else set())))
                problem = f"Unknown tool name: {name!r}. " + (
                    f"Available tools: {available}" if available else "No tools available."
                )
            elif args is None:
                problem = "The arguments must be a JSON object; fix them and call the tool again."
            if problem is not None:
                retries[name] = retries.get(name, 0) + 1
                if retries[name] > MAX_TOOL_RETRIES:
                    raise _ToolMisuse(f"Tool {name!r} exceeded max retries count of {MAX_TOOL_RETRIES}")
                parts.append(
                    ToolReturnPart(tool_name=name, content=problem, tool_call_id=call_id, outcome="retried")
                )
                continue
            assert args is not None
            yield ToolStarted(call_id, name, args)
            output = await _execute(request, name, args)
            parts.append(ToolReturnPart(tool_name=name, content=output, tool_call_id=call_id))
            yield ToolFinished(call_id, name, output, not is_error(output))


async def _execute(request: TurnRequest, name: str, args: dict[str, Any]) -> str:
    if request.execute_tool is None:
        return "error: tools are not available in this session"
    outcome = await request.execute_tool(name, args)
    return outcome.output if outcome.ok else f"error: {outcome.output}"


def _args(call: ToolCallPart) -> dict[str, Any] | None:
    """The call's arguments, or None unless they are a JSON object (they come from the model)."""
    if isinstance(call.args, dict):
        return call.args
    try:
        parsed = json.loads(call.args or "{}")
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _unanswered(history: list[ModelMessage]) -> list[ToolCallPart]:
    """The calls of the last response that have no result yet (a turn resumed with answers)."""
    for index in range(len(history) - 1, -1, -1):
        message = history[index]
        if isinstance(message, ModelResponse):
            done = {
                part.tool_call_id
                for later in history[index + 1 :]
                if isinstance(later, ModelRequest)
                for part in later.parts
                if isinstance(part, ToolReturnPart | RetryPromptPart)
            }
            return [call for call in message.tool_calls if call.tool_call_id not in done]
    return []
