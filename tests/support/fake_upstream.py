"""A scripted fake LLM upstream speaking the OpenAI Chat Completions and Anthropic Messages wire formats.

In tests::

    with FakeUpstream() as up:  # or `async with`; the server always runs in its own thread and loop
        up.script(Reply([ToolCall("lookup", {"q": "x"})]), Reply([Text("done")]))
        ...  # OPENAI_BASE_URL=up.openai_base_url, ANTHROPIC_BASE_URL=up.anthropic_base_url
        first, second = up.wait_for_requests(2)

For benchmarks, as a separate process (prints ``READY http://127.0.0.1:PORT`` once listening)::

    python -m tests.support.fake_upstream --port 0 --tokens 200 --ttft 0.15 --gap 0.02
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import itertools
import json
import re
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

import uvicorn
import uvloop
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

Wire = Literal["openai", "anthropic"]
Outcome = Literal["open", "done", "disconnected"]


# --- script building blocks -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """Token usage reported to the client."""

    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True)
class Text:
    """Text streamed as `chunks` deltas, or as deltas of `chunk_size` characters when that is set."""

    text: str
    chunks: int = 3
    chunk_size: int | None = None

    def pieces(self) -> list[str]:
        if self.chunk_size:
            size = self.chunk_size
            return [self.text[i : i + size] for i in range(0, len(self.text), size)]
        return _split(self.text, self.chunks)


@dataclass(frozen=True)
class Tokens:
    """`n` identical small text deltas (cheap: encoded once per response)."""

    n: int
    text: str = "tok "


@dataclass(frozen=True)
class ToolCall:
    """A tool call whose JSON arguments are streamed over `chunks` deltas; `id` is generated when None."""

    name: str
    args: Mapping[str, Any] = field(default_factory=dict)
    id: str | None = None
    chunks: int = 3

    def pieces(self) -> list[str]:
        return _split(json.dumps(dict(self.args)), self.chunks)


@dataclass(frozen=True)
class Gate:
    """Pauses the response until `FakeUpstream.release(name)`; a released gate stays open until `reset()`."""

    name: str


@dataclass(frozen=True)
class StreamError:
    """Ends a stream with the provider's in-band error event (non-streaming: an HTTP error of `status`)."""

    message: str = "fake upstream stream error"
    status: int = 500


Item = Text | Tokens | ToolCall | Gate | StreamError


@dataclass(frozen=True)
class Reply:
    """One model response; a `str` item means `Text(str)`, `usage=None` estimates usage from request/items."""

    items: Sequence[Item | str] = ()
    usage: Usage | None = None
    ttft: float = 0
    gap: float = 0
    status: int = 200
    error_body: dict[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def parts(self) -> list[Item]:
        return [Text(item) if isinstance(item, str) else item for item in self.items]


DEFAULT_REPLY = Reply([Text("ok", chunks=1)])

SIZED = re.compile(rb"\[fake-tokens=(\d{1,6})\]")
"""In a request's body, asks a default reply of `Tokens` for that many deltas instead (the benchmarks'
long turns); scripted replies ignore it."""


def _sized(reply: Reply, raw: bytes) -> Reply:
    """`reply` with as many deltas as the body asks for, when it is one run of `Tokens` and the body asks."""
    match = SIZED.search(raw)
    items = reply.parts()
    if match is None or len(items) != 1 or not isinstance(items[0], Tokens):
        return reply
    count = int(match[1])
    usage = None if reply.usage is None else Usage(reply.usage.input_tokens, count)
    return dataclasses.replace(reply, items=[Tokens(count, items[0].text)], usage=usage)


@dataclass
class RecordedRequest:
    """A request the fake received; `outcome` turns "done" or "disconnected" when its response ends."""

    path: str
    json: dict[str, Any]
    headers: dict[str, str]
    wire: Wire
    outcome: Outcome = "open"

    @property
    def stream(self) -> bool:
        return bool(self.json.get("stream"))

    def contains(self, needle: str) -> bool:
        """Whether `needle` occurs anywhere in the JSON body (serialized)."""
        return needle in json.dumps(self.json, ensure_ascii=False)


def _split(text: str, n: int) -> list[str]:
    if not text:
        return []
    n = max(1, min(n, len(text)))
    size, extra = divmod(len(text), n)
    pieces, pos = [], 0
    for i in range(n):
        end = pos + size + (1 if i < extra else 0)
        pieces.append(text[pos:end])
        pos = end
    return pieces


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _output_tokens(items: Sequence[Item]) -> int:
    count = 0
    for item in items:
        if isinstance(item, Tokens):
            count += item.n
        elif isinstance(item, Text | ToolCall):
            count += len(item.pieces())
    return count


# --- wire encoders ----------------------------------------------------------------------------------------

# Each encoder yields (bytes, is_content); ttft/gap delays apply before content chunks only.
Chunks = Iterator[tuple[bytes, bool]]

_OPENAI_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}
_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def _openai_error(status: int, message: str) -> dict[str, Any]:
    fallback = ("server_error" if status >= 500 else "invalid_request_error", None)
    err_type, code = _OPENAI_ERRORS.get(status, fallback)
    return {"error": {"message": message, "type": err_type, "param": None, "code": code}}


def _anthropic_error(status: int, message: str) -> dict[str, Any]:
    err_type = _ANTHROPIC_ERRORS.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": err_type, "message": message}}


def _error_body(wire: Wire, status: int, message: str) -> dict[str, Any]:
    return _openai_error(status, message) if wire == "openai" else _anthropic_error(status, message)


def _unanswered_calls(wire: Wire, body: dict[str, Any]) -> str | None:
    """The provider's 400 message for a history whose tool calls lack results, as the real APIs refuse."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    messages = [m if isinstance(m, dict) else {} for m in messages]
    for index, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        if wire == "openai":  # each call answered by one of the `tool` messages right after
            used = [call.get("id") for call in message.get("tool_calls") or []]
            answers = itertools.takewhile(lambda m: m.get("role") == "tool", messages[index + 1 :])
            replies = [m.get("tool_call_id") for m in answers]
        else:  # each `tool_use` answered by a `tool_result` block of the next message
            used = [b.get("id") for b in _blocks(message) if b.get("type") == "tool_use"]
            after = messages[index + 1] if index + 1 < len(messages) else {}
            replies = [b.get("tool_use_id") for b in _blocks(after) if b.get("type") == "tool_result"]
        missing = ", ".join(str(call_id) for call_id in used if call_id not in replies)
        if missing and wire == "openai":
            return (
                "An assistant message with 'tool_calls' must be followed by tool messages responding to "
                f"each 'tool_call_id'. The following tool_call_ids did not have response messages: {missing}"
            )
        if missing:
            return (
                f"messages.{index + 1}: `tool_use` ids were found without `tool_result` blocks immediately "
                f"after: {missing}. Each `tool_use` block must have a corresponding `tool_result` block in "
                "the next message."
            )
    return None


def _blocks(message: Any) -> list[dict[str, Any]]:
    content = message.get("content") if isinstance(message, dict) else None
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


class _OpenAIEncoder:
    """Chat Completions `chat.completion.chunk` SSE stream."""

    def __init__(self, model: str, usage: Usage, include_usage: bool) -> None:
        self.usage = usage
        self.include_usage = include_usage
        self.tool_index = -1
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        head = {"id": self.id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
        self._head = "data: " + _dumps(head)[:-1]  # the chunk envelope, left open
        self._prefix = self._head + ',"choices":[{"index":0,"delta":'
        self._suffix = ',"logprobs":null,"finish_reason":null}]}\n\n'

    def _chunk(self, delta: dict[str, Any]) -> bytes:
        return (self._prefix + _dumps(delta) + self._suffix).encode()

    def start(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""})

    def encode(self, item: Text | Tokens | ToolCall) -> Chunks:
        if isinstance(item, Text):
            for piece in item.pieces():
                yield self._chunk({"content": piece}), True
        elif isinstance(item, Tokens):
            chunk = self._chunk({"content": item.text})
            for _ in range(item.n):
                yield chunk, True
        else:
            self.tool_index += 1
            index = self.tool_index
            call_id = item.id or f"call_{uuid.uuid4().hex[:24]}"
            call = {
                "index": index,
                "id": call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": ""},
            }
            yield self._chunk({"tool_calls": [call]}), True
            for piece in item.pieces():
                yield self._chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}), True

    def finish(self) -> bytes:
        reason = "tool_calls" if self.tool_index >= 0 else "stop"
        out = f'{self._prefix}{{}},"logprobs":null,"finish_reason":"{reason}"}}]}}\n\n'
        if self.include_usage:
            out += f'{self._head},"choices":[],"usage":{_dumps(_openai_usage(self.usage))}}}\n\n'
        return (out + "data: [DONE]\n\n").encode()

    def error(self, err: StreamError) -> bytes:
        return f"data: {_dumps(_openai_error(err.status, err.message))}\n\n".encode()


def _openai_usage(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


def _openai_completion(items: Sequence[Item], model: str, usage: Usage) -> dict[str, Any]:
    text = "".join(
        item.text if isinstance(item, Text) else item.text * item.n
        for item in items
        if isinstance(item, Text | Tokens)
    )
    calls = [
        {
            "id": item.id or f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": item.name, "arguments": json.dumps(dict(item.args))},
        }
        for item in items
        if isinstance(item, ToolCall)
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "tool_calls" if calls else "stop",
            }
        ],
        "usage": _openai_usage(usage),
    }


def _anthropic_usage(usage: Usage, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def _sse(event: str, payload: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {_dumps(payload)}\n\n".encode()


_PING = _sse("ping", {"type": "ping"})
_MESSAGE_STOP = _sse("message_stop", {"type": "message_stop"})


class _AnthropicEncoder:
    """Messages API SSE stream: message_start, content blocks, message_delta, message_stop."""

    def __init__(self, model: str, usage: Usage) -> None:
        self.model = model
        self.usage = usage
        self.index = -1
        self.text_open = False
        self.stop_reason = "end_turn"

    def start(self) -> bytes:
        message: dict[str, Any] = {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _anthropic_usage(self.usage, 0),
        }
        return _sse("message_start", {"type": "message_start", "message": message}) + _PING

    def _close_block(self) -> bytes:
        if not self.text_open:
            return b""
        self.text_open = False
        return _sse("content_block_stop", {"type": "content_block_stop", "index": self.index})

    def _block_start(self, block: dict[str, Any]) -> bytes:
        closing = self._close_block()
        self.index += 1
        start = {"type": "content_block_start", "index": self.index, "content_block": block}
        return closing + _sse("content_block_start", start)

    def _text_delta(self, text: str) -> bytes:
        return self._delta({"type": "text_delta", "text": text})

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return _sse(
            "content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta}
        )

    def encode(self, item: Text | Tokens | ToolCall) -> Chunks:
        if isinstance(item, Text | Tokens):
            if not self.text_open:  # consecutive text items share one text block
                yield self._block_start({"type": "text", "text": ""}), False
                self.text_open = True
            if isinstance(item, Text):
                for piece in item.pieces():
                    yield self._text_delta(piece), True
            else:
                chunk = self._text_delta(item.text)
                for _ in range(item.n):
                    yield chunk, True
            return
        self.stop_reason = "tool_use"
        call_id = item.id or f"toolu_{uuid.uuid4().hex[:24]}"
        yield self._block_start({"type": "tool_use", "id": call_id, "name": item.name, "input": {}}), False
        for piece in item.pieces():
            yield self._delta({"type": "input_json_delta", "partial_json": piece}), True
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": self.index}), False

    def finish(self) -> bytes:
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
            "usage": _anthropic_usage(self.usage, self.usage.output_tokens),
        }
        return self._close_block() + _sse("message_delta", delta) + _MESSAGE_STOP

    def error(self, err: StreamError) -> bytes:
        return _sse("error", _anthropic_error(err.status, err.message))


def _anthropic_message(items: Sequence[Item], model: str, usage: Usage) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, Text | Tokens):
            text = item.text if isinstance(item, Text) else item.text * item.n
            if content and content[-1]["type"] == "text":
                content[-1]["text"] += text
            else:
                content.append({"type": "text", "text": text})
        elif isinstance(item, ToolCall):
            call_id = item.id or f"toolu_{uuid.uuid4().hex[:24]}"
            content.append({"type": "tool_use", "id": call_id, "name": item.name, "input": dict(item.args)})
    has_tool = any(block["type"] == "tool_use" for block in content)
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "tool_use" if has_tool else "end_turn",
        "stop_sequence": None,
        "usage": _anthropic_usage(usage, usage.output_tokens),
    }


# --- server -----------------------------------------------------------------------------------------------


def _forward_proxy(app: ASGIApp) -> ASGIApp:
    """`app`, also answering as an HTTP forward proxy would: a request for an absolute URL (`POST
    http://host/v1/...`, as clients send through `HTTP_PROXY`) is served as the URL's path here."""

    async def proxied(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path.startswith(("http://", "https://")):
            target = urllib.parse.urlsplit(path)
            scope = {**scope, "path": target.path or "/", "raw_path": (target.path or "/").encode()}
        await app(scope, receive, send)

    return proxied


class _UvicornServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self._on_ready()


_AsyncWaiter = tuple[Callable[[], bool], asyncio.AbstractEventLoop, "asyncio.Future[None]"]


class FakeUpstream:
    """Scripted fake OpenAI/Anthropic upstream on a loopback port; a sync or async context manager."""

    def __init__(self, default_reply: Reply | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.default_reply = default_reply or DEFAULT_REPLY
        self.requests: list[RecordedRequest] = []
        self._host = host
        self._port = port
        self._queue: collections.deque[Reply] = collections.deque()
        self._cond = threading.Condition()
        self._async_waiters: list[_AsyncWaiter] = []
        self._released: set[str] = set()
        self._reached: set[str] = set()
        self._gate_events: dict[str, asyncio.Event] = {}  # owned by the server loop
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: _UvicornServer | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.app = _forward_proxy(
            Starlette(
                routes=[
                    Route("/v1/chat/completions", self._openai, methods=["POST"]),
                    Route("/v1/messages", self._anthropic, methods=["POST"]),
                    Route("/v1/messages/count_tokens", self._count_tokens, methods=["POST"]),
                    Route("/v1/models", self._models, methods=["GET"]),
                    Route("/{path:path}", self._not_found, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
                ]
            )
        )

    # -- addresses

    @property
    def url(self) -> str:
        if not self._port:
            raise RuntimeError("FakeUpstream is not started")
        return f"http://{self._host}:{self._port}"

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    # -- scripting and inspection

    def script(self, *replies: Reply | str) -> None:
        """Queue replies, served FIFO to whichever endpoint is called next (`str` means a one-text reply)."""
        with self._cond:
            self._queue.extend(Reply([r]) if isinstance(r, str) else r for r in replies)

    def release(self, name: str) -> None:
        """Open gate `name` for paused and future responses."""
        with self._cond:
            self._released.add(name)
        self._call_in_loop(self._wake, name)

    def reset(self) -> None:
        """Forget script, requests and gates; responses still paused at a gate are let go."""
        with self._cond:
            self._queue.clear()
            self.requests.clear()
            self._released.clear()
            self._reached.clear()
            self._notify_locked()
        self._call_in_loop(self._wake_all)

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 10, what: str = "condition") -> None:
        """Block until `predicate()` (evaluated under the fake's lock) holds."""
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise TimeoutError(self._timeout_message(timeout, what))

    async def await_until(
        self, predicate: Callable[[], bool], timeout: float = 10, what: str = "condition"
    ) -> None:
        """Async `wait_until`: does not block the calling event loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        waiter: _AsyncWaiter = (predicate, loop, future)
        with self._cond:
            if predicate():
                return
            self._async_waiters.append(waiter)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise TimeoutError(self._timeout_message(timeout, what)) from None
        finally:
            with self._cond:
                if waiter in self._async_waiters:
                    self._async_waiters.remove(waiter)

    def wait_for_requests(self, n: int, timeout: float = 10) -> list[RecordedRequest]:
        """Block until `n` requests arrived; returns the first `n`."""
        self.wait_until(lambda: len(self.requests) >= n, timeout, f"{n} request(s)")
        return self.requests[:n]

    async def await_requests(self, n: int, timeout: float = 10) -> list[RecordedRequest]:
        """Async `wait_for_requests`."""
        await self.await_until(lambda: len(self.requests) >= n, timeout, f"{n} request(s)")
        return self.requests[:n]

    def wait_for_gate(self, name: str, timeout: float = 10) -> None:
        """Block until some response has reached gate `name`."""
        self.wait_until(lambda: name in self._reached, timeout, f"gate {name!r} to be reached")

    async def await_gate(self, name: str, timeout: float = 10) -> None:
        """Async `wait_for_gate`."""
        await self.await_until(lambda: name in self._reached, timeout, f"gate {name!r} to be reached")

    def _timeout_message(self, timeout: float, what: str) -> str:
        seen = [f"{r.wire}:{r.path}:{r.outcome}" for r in self.requests]
        return (
            f"FakeUpstream: timed out after {timeout}s waiting for {what}; "
            f"{len(seen)} request(s) so far {seen}, gates reached {sorted(self._reached)}"
        )

    def _notify_locked(self) -> None:
        self._cond.notify_all()
        for waiter in list(self._async_waiters):
            predicate, loop, future = waiter
            if predicate():
                self._async_waiters.remove(waiter)
                try:
                    loop.call_soon_threadsafe(_resolve, future)
                except RuntimeError:  # the waiting loop is closed
                    pass

    def _set_outcome(self, rec: RecordedRequest, outcome: Outcome) -> None:
        with self._cond:
            if rec.outcome == "open":
                rec.outcome = outcome
                self._notify_locked()

    # -- gates (server loop side)

    def _call_in_loop(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # loop already closed
                pass

    def _wake(self, name: str) -> None:
        event = self._gate_events.pop(name, None)
        if event is not None:
            event.set()

    def _wake_all(self) -> None:
        for event in self._gate_events.values():
            event.set()
        self._gate_events.clear()

    async def _wait_gate(self, name: str) -> None:
        with self._cond:
            self._reached.add(name)
            self._notify_locked()
            if name in self._released or self._closing:
                return
            event = self._gate_events.setdefault(name, asyncio.Event())
        await event.wait()

    # -- endpoints

    async def _openai(self, request: Request) -> Response:
        return await self._handle(request, "openai")

    async def _anthropic(self, request: Request) -> Response:
        return await self._handle(request, "anthropic")

    async def _count_tokens(self, request: Request) -> Response:
        return JSONResponse({"input_tokens": max(1, len(await request.body()) // 4)})

    async def _models(self, request: Request) -> Response:
        data = [
            {"id": m, "object": "model", "type": "model", "created": 0, "owned_by": "fake"}
            for m in ("gpt-4o", "claude-sonnet-4-6")
        ]
        return JSONResponse({"object": "list", "data": data, "has_more": False})

    async def _not_found(self, request: Request) -> Response:
        message = f"fake upstream has no route for {request.method} {request.url.path}"
        return JSONResponse(_openai_error(404, message), status_code=404)

    async def _handle(self, request: Request, wire: Wire) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return JSONResponse(_error_body(wire, 400, "body is not a JSON object"), status_code=400)
        rec = RecordedRequest(path=request.url.path, json=body, headers=dict(request.headers), wire=wire)
        refused = _unanswered_calls(wire, body)
        if refused is not None:  # before the script: the reply stays for the request that should get it
            with self._cond:
                self.requests.append(rec)
                rec.outcome = "done"
                self._notify_locked()
            return JSONResponse(_error_body(wire, 400, refused), status_code=400)
        with self._cond:
            reply = self._queue.popleft() if self._queue else _sized(self.default_reply, raw)
            self.requests.append(rec)
            self._notify_locked()

        items = reply.parts()
        usage = reply.usage or Usage(max(1, len(raw) // 4), _output_tokens(items))
        model = str(body.get("model") or "fake-model")
        id_header = "x-request-id" if wire == "openai" else "request-id"
        headers = {id_header: f"req_{uuid.uuid4().hex[:24]}", **reply.headers}

        if reply.status != 200:
            if reply.ttft > 0:
                await asyncio.sleep(reply.ttft)
            self._set_outcome(rec, "done")
            error = reply.error_body or _error_body(wire, reply.status, f"fake upstream error {reply.status}")
            return JSONResponse(error, status_code=reply.status, headers=headers)

        if body.get("stream"):
            encoder: _OpenAIEncoder | _AnthropicEncoder
            if wire == "openai":
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                encoder = _OpenAIEncoder(model, usage, include_usage)
            else:
                encoder = _AnthropicEncoder(model, usage)
            stream = self._stream(rec, reply, items, encoder)
            headers["cache-control"] = "no-cache"
            return StreamingResponse(stream, media_type="text/event-stream", headers=headers)

        if reply.ttft > 0:
            await asyncio.sleep(reply.ttft)
        for item in items:
            if isinstance(item, Gate):
                await self._wait_gate(item.name)
            elif isinstance(item, StreamError):
                self._set_outcome(rec, "done")
                return JSONResponse(_error_body(wire, item.status, item.message), status_code=item.status)
        builder = _openai_completion if wire == "openai" else _anthropic_message
        self._set_outcome(rec, "done")
        return JSONResponse(builder(items, model, usage), headers=headers)

    async def _stream(
        self,
        rec: RecordedRequest,
        reply: Reply,
        items: list[Item],
        encoder: _OpenAIEncoder | _AnthropicEncoder,
    ) -> AsyncIterator[bytes]:
        """Yield SSE bytes on a drift-free ttft/gap schedule, coalescing whatever is due into one write."""
        clock = asyncio.get_running_loop().time
        pending = [encoder.start()]
        first = True
        due = clock() + reply.ttft  # when the next content chunk may go out
        try:
            for item in items:
                if isinstance(item, Gate):
                    if pending:
                        yield b"".join(pending)
                        pending = []
                    await self._wait_gate(item.name)
                    due = clock() + (reply.ttft if first else 0)
                    continue
                if isinstance(item, StreamError):
                    pending.append(encoder.error(item))
                    yield b"".join(pending)
                    self._set_outcome(rec, "done")
                    return
                for chunk, is_content in encoder.encode(item):
                    if is_content:
                        if first:
                            first = False
                        else:
                            due += reply.gap
                        delay = due - clock()
                        if delay > 0:
                            if pending:
                                yield b"".join(pending)
                                pending = []
                            await asyncio.sleep(delay)
                    pending.append(chunk)
            pending.append(encoder.finish())
            yield b"".join(pending)
            self._set_outcome(rec, "done")
        except (asyncio.CancelledError, GeneratorExit):
            self._set_outcome(rec, "disconnected")
            raise

    # -- lifecycle

    def _bind(self) -> socket.socket:
        # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose proto is TCP.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._port))
        self._port = sock.getsockname()[1]
        return sock

    def _make_server(self, on_ready: Callable[[], None], http: str = "h11") -> _UvicornServer:
        config = uvicorn.Config(
            self.app,
            http=http,
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        return _UvicornServer(config, on_ready)

    async def _serve(self, sock: socket.socket) -> None:
        self._loop = asyncio.get_running_loop()
        assert self._server is not None
        await self._server.serve(sockets=[sock])

    def _run_thread(self, sock: socket.socket) -> None:
        try:
            asyncio.run(self._serve(sock))
        except BaseException as exc:
            self._error = exc
        finally:
            self._loop = None
            self._ready.set()

    def start(self) -> Self:
        """Start serving in a background thread (own event loop); returns once listening."""
        if self._thread is not None:
            raise RuntimeError("FakeUpstream already started")
        sock = self._bind()
        self._closing = False
        self._ready.clear()
        self._server = self._make_server(self._ready.set)
        self._thread = threading.Thread(
            target=self._run_thread, args=(sock,), name="fakeupstream", daemon=True
        )
        self._thread.start()
        self._ready.wait(10)
        if not self._server.started:
            self.stop()
            raise RuntimeError(f"FakeUpstream failed to start: {self._error!r}")
        return self

    def stop(self) -> None:
        """Stop the server; paused gates are opened so in-flight responses can finish."""
        with self._cond:
            self._closing = True
        self._call_in_loop(self._wake_all)
        if self._server is not None:
            self._server.should_exit = True
            self._server.force_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self._thread = None
        self._server = None

    def serve_forever(self) -> None:
        """Serve in the calling (main) thread until SIGINT/SIGTERM; prints ``READY <url>`` when listening.

        This is the benchmarks' upstream, so it runs as the server does, on uvloop and httptools: on
        asyncio's own loop and h11 it cost a third to a half more CPU per streamed event (31-37 against
        18-24 µs at 300 streams), CPU that the server under test shares the machine's two cores with.
        """
        sock = self._bind()
        self._server = self._make_server(lambda: print(f"READY {self.url}", flush=True), http="httptools")
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(self._serve(sock))

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> FakeUpstream:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: serve the same streamed reply to every request, forever (`[fake-tokens=N]` in a prompt asks
    for N deltas instead)."""
    parser = argparse.ArgumentParser(prog="python -m tests.support.fake_upstream", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (see the READY line)")
    parser.add_argument("--tokens", type=int, default=200, help="text deltas per reply")
    parser.add_argument("--token-text", default="tok ")
    parser.add_argument("--ttft", type=float, default=0.0, help="seconds before the first delta")
    parser.add_argument("--gap", type=float, default=0.0, help="seconds between deltas")
    parser.add_argument("--input-tokens", type=int, default=100)
    args = parser.parse_args(argv)
    reply = Reply(
        [Tokens(args.tokens, args.token_text)],
        usage=Usage(args.input_tokens, args.tokens),
        ttft=args.ttft,
        gap=args.gap,
    )
    FakeUpstream(reply, host=args.host, port=args.port).serve_forever()


if __name__ == "__main__":
    main()
