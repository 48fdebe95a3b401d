"""Reading SSE streams in tests: typed events, helpers to read until a condition."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import EventSource


@dataclass(frozen=True)
class Sse:
    id: int | None
    event: str
    data: dict[str, Any]


def events(response: httpx.Response) -> Iterator[Sse]:
    """The events of an open streaming response (keep-alives skipped); one iterator per response,
    so several readers in a row continue where the previous one stopped."""
    existing: Iterator[Sse] | None = getattr(response, "_sse_events", None)
    if existing is None:
        existing = _parse(response)
        response._sse_events = existing  # type: ignore[attr-defined]
    return existing


def _parse(response: httpx.Response) -> Iterator[Sse]:
    for item in EventSource(response).iter_sse():
        yield Sse(int(item.id) if item.id else None, item.event, json.loads(item.data) if item.data else {})


def read_until(response: httpx.Response, stop: Callable[[Sse], bool]) -> list[Sse]:
    """Events up to and including the first one for which `stop` is true."""
    seen = []
    for event in events(response):
        seen.append(event)
        if stop(event):
            return seen
    raise AssertionError(f"stream ended before the expected event; saw {[e.event for e in seen]}")


def turn_done(turn_id: str | None = None) -> Callable[[Sse], bool]:
    return lambda e: e.event == "turn.completed" and (turn_id is None or e.data["turnId"] == turn_id)


def respond_turn(client: httpx.Client, chat_id: str, text: str) -> list[Sse]:
    """Send `text` with `POST /respond` and read the turn's events through `turn.completed`."""
    with client.stream(
        "POST", f"/agent/v1/chat/{chat_id}/respond", json={"parts": [{"type": "text", "text": text}]}
    ) as response:
        assert response.status_code == 200, response.read()
        return read_until(response, lambda e: e.event == "turn.completed")
