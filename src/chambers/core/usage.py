"""Usage entries and their sums, in the seed's shape. Costs are integer micro-dollars."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from chambers.core.clock import iso
from chambers.core.ids import new_id
from chambers.core.loop import ModelCall
from chambers.core.models import Turn, UsageEntry

LLM_ENDPOINT = "/llm/v1/chat/completions"


def is_llm(entry: UsageEntry) -> bool:
    """Whether an entry is an LLM request (the turn's direct cost), as opposed to a tool or runtime."""
    return entry.service == "chat"


def llm_price_micros(
    provider: str, model_id: str, input_tokens: int, output_tokens: int
) -> tuple[int, dict[str, Any]]:
    """Price of one model call via genai-prices; an unknown model costs 0 and says so."""
    from genai_prices import Usage, calc_price

    try:
        price = calc_price(
            Usage(input_tokens=input_tokens, output_tokens=output_tokens),
            model_ref=model_id,
            provider_id=provider,
        )
    except LookupError:
        return 0, {"cost": 0, "priceKnown": False, "note": f"no known price for {provider}/{model_id}"}
    micros = int((Decimal(price.total_price) * 1_000_000).to_integral_value())
    return micros, {"cost": float(price.total_price), "priceKnown": True}


def preload_prices() -> None:
    """Load genai-prices' catalogue now (tens of thousands of objects, read on the first price) so that
    a serving process can count it with what it loads at start-up."""
    llm_price_micros("openai", "gpt-4o", 1, 1)


def llm_entry(call: ModelCall, turn: Turn) -> UsageEntry:
    """The usage entry of one LLM request."""
    model_id = call.model.split("/", 1)[-1]
    micros, metadata = llm_price_micros(call.provider, model_id, call.input_tokens, call.output_tokens)
    metadata.update(provider=call.provider, providerEndpoint=call.endpoint)
    return UsageEntry(
        id=new_id("usage_llm"),
        turn_id=turn.id,
        session_id=turn.session_id,
        org_id=turn.org_id,
        kind="api",
        service="chat",
        endpoint=LLM_ENDPOINT,
        method="POST",
        status_code=200,
        cost_micros=micros,
        prompt_tokens=call.input_tokens,
        completion_tokens=call.output_tokens,
        total_tokens=call.input_tokens + call.output_tokens,
        model=turn.model,
        timestamp=call.timestamp,
        metadata=metadata,
    )


def tool_entry(turn: Turn, name: str, ok: bool, cost_micros: int, at: Any) -> UsageEntry:
    """The usage entry of one tool call."""
    return UsageEntry(
        id=new_id("usage_tool"),
        turn_id=turn.id,
        session_id=turn.session_id,
        org_id=turn.org_id,
        kind="api",
        service="sandbox",
        endpoint=f"/sandbox/v1/tools/{name}",
        method="POST",
        status_code=200 if ok else 500,
        cost_micros=cost_micros,
        timestamp=at,
        metadata={"tool": name},
    )


def entry_json(entry: UsageEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "kind": entry.kind,
        "service": entry.service,
        "endpoint": entry.endpoint,
        "method": entry.method,
        "statusCode": entry.status_code,
        "costMicros": entry.cost_micros,
        "promptTokens": entry.prompt_tokens,
        "completionTokens": entry.completion_tokens,
        "totalTokens": entry.total_tokens,
        "model": entry.model,
        "timestamp": iso(entry.timestamp),
        "metadata": entry.metadata,
    }


def turn_usage(turn: Turn, message_id: str, entries: list[UsageEntry]) -> dict[str, Any]:
    """The `usage` object of a turn: direct LLM figures at the top, the sum of every entry in `summary`."""
    llm = [e for e in entries if is_llm(e)]
    inputs = sum(e.prompt_tokens or 0 for e in llm)
    outputs = sum(e.completion_tokens or 0 for e in llm)
    return {
        "turnId": turn.id,
        "messageId": message_id,
        "idempotencyKey": turn.idempotency_key or message_id,
        "model": turn.model,
        "totalInputTokens": inputs,
        "totalOutputTokens": outputs,
        "totalTokens": inputs + outputs,
        "costMicros": sum(e.cost_micros for e in llm),
        "summary": {
            "costMicros": sum(e.cost_micros for e in entries),
            "totalInputTokens": inputs,
            "totalOutputTokens": outputs,
            "totalTokens": inputs + outputs,
        },
        "entries": [entry_json(e) for e in entries],
    }


def session_usage_event(usage: dict[str, Any]) -> dict[str, Any]:
    """The seed's `session.usage` event body, built from a turn's usage object."""
    return {
        "type": "session.usage",
        "properties": {
            "turnId": usage["turnId"],
            "messageId": usage["messageId"],
            "usage": {
                "totalInputTokens": usage["totalInputTokens"],
                "totalOutputTokens": usage["totalOutputTokens"],
                "totalTokens": usage["totalTokens"],
                "costMicros": usage["costMicros"],
                "model": usage["model"],
            },
            "summary": usage["summary"],
            "entries": usage["entries"],
        },
    }
