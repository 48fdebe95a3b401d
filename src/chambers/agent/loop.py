"""PydanticAgentLoop: the AgentLoop port on pydantic-ai's `Agent.iter` and its nodes' event streams."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from pydantic_ai import Agent, DeferredToolRequests, DeferredToolResults, Tool
from pydantic_ai.exceptions import CallDeferred, RunCancelled, UsageLimitExceeded
from pydantic_ai.messages import (
    FunctionToolCallEvent,
    FunctionToolResultEvent,
    ModelMessage,
    PartDeltaEvent,
    PartStartEvent,
    TextPart,
    TextPartDelta,
)
from pydantic_ai.settings import ModelSettings
from pydantic_ai.usage import UsageLimits

from chambers.agent.models import ModelNotConfigured, ModelResolver, ResolvedModel
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
from chambers.core.loop import (
    LoopEvent,
    LoopResult,
    Question,
    TextDelta,
    TextStarted,
    ToolFinished,
    ToolSpec,
    ToolStarted,
    TurnRequest,
)
from chambers.logs import scrub

log = logging.getLogger("chambers.agent")


class PydanticAgentLoop:
    """Starts turns on pydantic-ai agents built per turn from cached models."""

    def __init__(self, resolver: ModelResolver) -> None:
        self.resolver = resolver

    def start(self, request: TurnRequest) -> _Run:
        return _Run(self.resolver, request)

    def preload(self) -> None:
        import pydantic_ai.models.anthropic
        import pydantic_ai.models.openai
        import pydantic_ai.providers.anthropic
        import pydantic_ai.providers.openai  # noqa: F401

        import chambers.agent.openai_client  # noqa: F401

    async def aclose(self) -> None:
        """Nothing to close: pydantic-ai's providers keep their clients for the process's life."""


class _Run:
    def __init__(self, resolver: ModelResolver, request: TurnRequest) -> None:
        self.resolver = resolver
        self.request = request
        self._handle: Any = None
        self._cancel_requested = False

    def cancel(self) -> None:
        self._cancel_requested = True
        if self._handle is not None:
            self._handle.cancel()

    async def __aiter__(self) -> AsyncIterator[LoopEvent]:
        request = self.request
        try:
            resolved = self.resolver.resolve(request.model)
        except ModelNotConfigured as exc:
            yield not_configured(exc)
            return
        agent = _agent(request, resolved)
        deferred = DeferredToolResults(calls=dict(request.answers)) if request.answers else None
        history = load_history(request) or None
        settings: ModelSettings = {}
        if request.max_output_tokens:
            settings["max_tokens"] = request.max_output_tokens
        new: list[ModelMessage] = []
        output: Any = None
        try:
            # `iter` and each node's own stream, not `run_stream_events`: the latter runs the agent in a
            # second task and hands every event over through a memory stream, about 15% more CPU per
            # streamed token. `AgentRun.cancel()` ends the run the same way (RunCancelled on exit).
            async with agent.iter(
                request.user_text if deferred is None else None,
                message_history=history,
                deferred_tool_results=deferred,
                usage_limits=UsageLimits(request_limit=request.max_requests),
                model_settings=settings or None,
            ) as handle:
                self._handle = handle
                if self._cancel_requested:
                    handle.cancel()
                async for node in handle:
                    if Agent.is_model_request_node(node) or Agent.is_call_tools_node(node):
                        async with node.stream(handle.ctx) as events:
                            async for event in events:
                                translated = _translate(event)
                                if translated is not None:
                                    yield translated
                result = handle.result
                if result is not None:
                    new = result.new_messages()
                    output = result.output
        except RunCancelled as exc:
            yield LoopResult(
                status="cancelled",
                messages=dump_messages(exc.new_messages()),
                calls=model_calls(exc.new_messages(), resolved),
            )
            return
        except UsageLimitExceeded as exc:
            yield LoopResult(status="failed", messages=[], error={"code": "TURN_LIMIT", "message": str(exc)})
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("turn %s failed: %s", request.turn_id, scrub(f"{type(exc).__name__}: {exc}"))
            yield LoopResult(status="failed", messages=[], error=provider_error(exc))
            return
        calls = model_calls(new, resolved)
        if isinstance(output, DeferredToolRequests):
            questions = [
                Question(
                    c.tool_call_id,
                    str(c.args_as_dict().get("question", "")),
                    question_options(c.args_as_dict()),
                )
                for c in output.calls
            ]
            yield LoopResult(status="waiting", messages=dump_messages(new), calls=calls, questions=questions)
            return
        yield LoopResult(
            status="completed", messages=dump_messages(new), output=str(output or ""), calls=calls
        )


def _translate(event: Any) -> LoopEvent | None:
    """A pydantic-ai stream event as a loop event, or None for those the core does not need."""
    if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
        return TextStarted(event.part.content)
    if isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
        return TextDelta(event.delta.content_delta) if event.delta.content_delta else None
    if isinstance(event, FunctionToolCallEvent):
        if event.part.tool_name == ASK_USER.name:
            return None
        return ToolStarted(event.part.tool_call_id, event.part.tool_name, event.part.args_as_dict())
    if isinstance(event, FunctionToolResultEvent):
        returned = event.part
        if returned.tool_name == ASK_USER.name:
            return None
        text = returned.model_response_str()
        return ToolFinished(returned.tool_call_id, returned.tool_name, text, not is_error(returned.content))
    return None


def _agent(request: TurnRequest, resolved: ResolvedModel) -> Agent[None, Any]:
    tools: list[Tool[None]] = [_tool(spec, request) for spec in request.tools]
    output_type: list[Any] = [str]
    if request.question_tool:
        tools.append(Tool.from_schema(_ask_user, ASK_USER.name, ASK_USER.description, ASK_USER.parameters))
        output_type.append(DeferredToolRequests)
    return Agent(
        resolved.model,
        instructions=request.system_prompt,
        tools=tools,
        output_type=output_type,
        retries=2,
        name="chambers",  # unnamed, pydantic-ai looks its name up in the caller's frame on every run
    )


def _tool(spec: ToolSpec, request: TurnRequest) -> Tool[None]:
    execute = request.execute_tool

    async def call(**kwargs: Any) -> str:
        if execute is None:
            return "error: tools are not available in this session"
        outcome = await execute(spec.name, kwargs)
        return outcome.output if outcome.ok else f"error: {outcome.output}"

    return Tool.from_schema(call, spec.name, spec.description, spec.parameters)


async def _ask_user(**_kwargs: Any) -> str:
    raise CallDeferred(kind="question")
