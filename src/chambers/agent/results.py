"""What both agent loops report the same way: the question tool, stored messages, usage and errors."""

from __future__ import annotations

from typing import Any

from pydantic_ai.messages import ModelMessage, ModelMessagesTypeAdapter, ModelResponse, repair_messages

from chambers.agent.models import ResolvedModel
from chambers.core.loop import LoopResult, ModelCall, ToolSpec, TurnRequest
from chambers.logs import scrub

ASK_USER = ToolSpec(
    name="ask_user",
    description=(
        "Ask the user a question and wait for the answer. Use it for clarification or confirmation "
        "you cannot do without. Optionally offer a short list of answer options."
    ),
    parameters={
        "type": "object",
        "properties": {
            "question": {"type": "string", "minLength": 1, "maxLength": 4000},
            "options": {"type": "array", "items": {"type": "string", "maxLength": 200}, "maxItems": 20},
        },
        "required": ["question"],
        "additionalProperties": False,
    },
)


def is_error(content: Any) -> bool:
    """Whether a tool's returned content reports a failure (tools return `error: ...`)."""
    return isinstance(content, str) and content.startswith("error: ")


def question_options(args: dict[str, Any]) -> list[str]:
    """The answer options of an `ask_user` call, at most 20."""
    options = args.get("options")
    return [str(o) for o in options][:20] if isinstance(options, list) else []


def dump_messages(messages: list[ModelMessage]) -> list[Any]:
    """Messages as the JSON kept in a session's history."""
    dumped: list[Any] = ModelMessagesTypeAdapter.dump_python(messages, mode="json")
    return dumped


def model_calls(messages: list[ModelMessage], resolved: ResolvedModel) -> list[ModelCall]:
    """One usage record per model response among `messages`."""
    return [
        ModelCall(
            model=f"{resolved.provider}/{m.model_name or resolved.name}",
            provider=resolved.provider,
            endpoint=resolved.endpoint,
            input_tokens=m.usage.input_tokens,
            output_tokens=m.usage.output_tokens,
            timestamp=m.timestamp,
        )
        for m in messages
        if isinstance(m, ModelResponse)
    ]


def provider_error(exc: Exception) -> dict[str, Any]:
    """A failed model call as the turn's error: the provider's status and message, scrubbed of secrets."""
    status = getattr(exc, "status_code", None)
    message = scrub(str(getattr(exc, "message", None) or exc))[:500]
    detail = f"the model provider returned {status}: {message}" if status else f"model call failed: {message}"
    return {"code": "PROVIDER_ERROR", "message": detail, **({"upstreamStatus": status} if status else {})}


def not_configured(exc: Exception) -> LoopResult:
    """The turn's end when its model string names no usable provider."""
    return LoopResult(
        status="failed", messages=[], error={"code": "MODEL_NOT_CONFIGURED", "message": str(exc)}
    )


def load_history(request: TurnRequest) -> list[ModelMessage]:
    """The session's history as messages, with the calls that earlier turns left unanswered (cancelled
    mid-tool, or while a question waited) closed out, so the provider accepts it. A turn resumed with
    answers keeps its last response's calls open: the answers and the remaining tools close them."""
    history = ModelMessagesTypeAdapter.validate_python(request.history) if request.history else []
    return repair_messages(history, repair_last_response=not request.answers) if history else history
