"""What the provider wire formats share: a request, a response built from its stream, one HTTP client.

Each wire format (`openai_wire`, `anthropic_wire`) turns a `WireRequest` into a JSON body and reads its
streamed events one at a time into a `ResponseBuilder`. `ModelClient` owns the HTTP side: the POST,
errors, retries of refused requests, and Server-Sent Events (aiohttp, and a small SSE decoder).
Messages are pydantic-ai's types, so histories written by either agent loop are read by both.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from pydantic_ai.messages import ModelMessage, ModelResponse, ModelResponsePart, TextPart, ToolCallPart
from pydantic_ai.usage import RequestUsage
from yarl import URL

from chambers.core.loop import TextDelta, TextStarted, ToolSpec

_RETRIED_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
_MAX_RETRIES = 2
_MAX_RETRY_WAIT = 8.0


@dataclass(frozen=True, slots=True)
class WireRequest:
    """One model request: the provider's model id, the whole conversation so far, tools and caps."""

    model: str
    messages: Sequence[ModelMessage]
    instructions: str | None
    tools: Sequence[ToolSpec]
    max_tokens: int | None


class ProviderError(Exception):
    """The provider refused the request or broke off its stream; `status_code` is its HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status


class ResponseBuilder:
    """One streamed response's parts, in order, with usage and the model's name as reported."""

    __slots__ = ("_calls", "_items", "_text", "finish_reason", "input_tokens", "model_name", "output_tokens")

    def __init__(self) -> None:
        self._items: list[list[str] | _Call] = []
        self._text: list[str] | None = None
        self._calls: dict[Any, _Call] = {}
        self.input_tokens = 0
        self.output_tokens = 0
        self.model_name: str | None = None
        self.finish_reason: str | None = None

    def text(self, delta: str) -> TextStarted | TextDelta:
        """Add streamed text; the first piece of a text part is a `TextStarted`."""
        if self._text is None:
            self._text = [delta]
            self._items.append(self._text)
            return TextStarted(delta)
        self._text.append(delta)
        return TextDelta(delta)

    def end_text(self) -> None:
        """Close the current text part: the next text starts a new one."""
        self._text = None

    def tool_call(
        self, key: Any, call_id: str | None = None, name: str | None = None, args: str = ""
    ) -> None:
        """Start or continue the tool call known by `key` (an index or a block number)."""
        call = self._calls.get(key)
        if call is None:
            if name is None:
                return  # arguments of a call that never started (a provider's own tool): not ours to run
            call = self._calls[key] = _Call(call_id, name)
            self._items.append(call)
            self._text = None
        else:
            call.id = call.id or call_id
            call.name = call.name or name
        if args:
            call.args.append(args)

    @property
    def has_content(self) -> bool:
        return bool(self._items)

    def response(self, provider: str, fallback_model: str) -> ModelResponse:
        """The response as a pydantic-ai `ModelResponse`."""
        parts: list[ModelResponsePart] = []
        for item in self._items:
            if isinstance(item, _Call):
                parts.append(item.part())
            elif item:
                parts.append(TextPart(content="".join(item)))
        return ModelResponse(
            parts=parts,
            usage=RequestUsage(input_tokens=self.input_tokens, output_tokens=self.output_tokens),
            model_name=self.model_name or fallback_model,
            timestamp=datetime.now(UTC),
            provider_name=provider,
            finish_reason=_FINISH_REASONS.get(self.finish_reason or ""),
        )


class _Call:
    __slots__ = ("args", "id", "name")

    def __init__(self, call_id: str | None, name: str | None) -> None:
        self.id = call_id
        self.name = name
        self.args: list[str] = []

    def part(self) -> ToolCallPart:
        part = ToolCallPart(tool_name=self.name or "", args="".join(self.args) or "{}")
        if self.id:
            part.tool_call_id = self.id
        return part


_FINISH_REASONS: dict[str, Any] = {
    "stop": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "max_tokens": "length",
    "tool_calls": "tool_call",
    "tool_use": "tool_call",
    "content_filter": "content_filter",
    "refusal": "content_filter",
}
"""Both formats' finish reasons as pydantic-ai's."""


class WireFormat(Protocol):
    """A provider's request body and streamed events."""

    path: str
    """Appended to the base URL, e.g. `/chat/completions`."""

    def headers(self, api_key: str) -> dict[str, str]: ...

    def body(self, request: WireRequest) -> dict[str, Any]: ...

    def read(self, event: str, data: str, builder: ResponseBuilder) -> TextStarted | TextDelta | None:
        """Take one SSE event into `builder`; return the text event it carries, if any. Raises
        `ProviderError` for an error sent inside the stream."""
        ...

    def done(self, event: str, data: str) -> bool:
        """Whether this event ends the stream."""
        ...


class ModelClient:
    """Streams model requests to one provider endpoint (base URL and key) over one connection pool.

    On aiohttp, whose HTTP parser is C: reading a streamed event cost 61-65 µs of CPU through httpx and
    httpx-sse and 12 µs here (40 streams of one event every 2 ms; docs/benchmarks.md, profile step 10).
    """

    def __init__(self, wire: WireFormat, base_url: str, api_key: str) -> None:
        self.wire = wire
        self.url = base_url.rstrip("/") + wire.path
        self.headers = {**wire.headers(api_key), "accept": "text/event-stream"}
        self._http: aiohttp.ClientSession | None = None
        self._proxy: tuple[URL | None, aiohttp.BasicAuth | None] = (None, None)

    def _session(self) -> aiohttp.ClientSession:
        # Made on first use: a session belongs to the running event loop.
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600),
                raise_for_status=False,
            )
            self._proxy = env_proxy(self.url)
        return self._http

    async def stream(
        self, request: WireRequest, builder: ResponseBuilder
    ) -> AsyncGenerator[TextStarted | TextDelta, None]:
        """Send `request`; yield its text events while `builder` collects the whole response."""
        content = json.dumps(self.wire.body(request), ensure_ascii=False, separators=(",", ":")).encode()
        wire = self.wire
        attempt = 0
        while True:
            answered = False
            try:
                http = self._session()
                proxy, proxy_auth = self._proxy
                async with http.post(
                    self.url, data=content, headers=self.headers, proxy=proxy, proxy_auth=proxy_auth
                ) as response:
                    answered = True
                    if response.status >= 400:
                        body = await response.read()
                        if response.status in _RETRIED_STATUSES and attempt < _MAX_RETRIES:
                            attempt += 1
                            await asyncio.sleep(_retry_wait(response.headers, attempt))
                            continue
                        raise ProviderError(error_message(body, response.reason or ""), response.status)
                    decoder = SseDecoder()
                    async for chunk in response.content.iter_any():
                        for event, data in decoder.feed(chunk):
                            if wire.done(event, data):
                                await response.content.read()  # to the end: the connection is reused
                                return
                            try:
                                out = wire.read(event, data, builder)
                            except (ValueError, LookupError, TypeError, AttributeError):
                                raise ProviderError(
                                    "the model provider sent an event that could not be read"
                                ) from None
                            if out is not None:
                                yield out
                    if builder.finish_reason is None:
                        # A clean close before the end marker and with no finish reason is a cut-off answer.
                        raise ProviderError("the model provider's stream ended before the response did")
                    return
            except aiohttp.ClientConnectorError as exc:
                # Nothing reached the provider, so sending again cannot run a request twice.
                if attempt >= _MAX_RETRIES:
                    raise ProviderError(f"could not reach the model provider: {type(exc).__name__}") from None
                attempt += 1
                await asyncio.sleep(_backoff(attempt))
            except TimeoutError:
                raise ProviderError("the model provider timed out") from None
            except aiohttp.ClientConnectionError as exc:
                if answered or attempt >= _MAX_RETRIES:
                    raise ProviderError(
                        f"the connection to the model provider broke: {type(exc).__name__}"
                    ) from None
                # It broke before any answer: most often a pooled connection that the provider closed as
                # idle just as this request went out. The provider SDKs send it again; so does this, at once.
                attempt += 1
            except (aiohttp.ClientError, OSError) as exc:
                raise ProviderError(
                    f"the connection to the model provider broke: {type(exc).__name__}"
                ) from None

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()


def env_proxy(url: str) -> tuple[URL | None, aiohttp.BasicAuth | None]:
    """The proxy that HTTP(S)_PROXY and NO_PROXY give `url`, and its credentials, or `(None, None)`.

    Read once per client, as the provider SDKs did: aiohttp's `trust_env` looks them up (and ~/.netrc,
    whose credentials would clash with the API key's header) in a thread on every request, a thread hop
    that was 5% of the server's busy time at 400 streams.
    """
    try:
        return get_env_proxy_for_url(URL(url))
    except LookupError:
        return None, None


class SseDecoder:
    """Server-Sent Events from a byte stream, as `(event, data)` pairs (lines end in LF or CRLF)."""

    __slots__ = ("_buffer", "_data", "_event")

    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        """The events that `chunk` completes; the rest waits for the next chunk."""
        lines = (self._buffer + chunk).split(b"\n")
        self._buffer = lines.pop()
        events: list[tuple[str, str]] = []
        for raw in lines:
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if not line:  # a blank line dispatches the event; one with no data is none
                if self._data:
                    events.append((self._event or "message", "\n".join(self._data)))
                self._event, self._data = "", []
                continue
            field, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if field == b"data":
                self._data.append(value.decode("utf-8", "replace"))
            elif field == b"event":
                self._event = value.decode("utf-8", "replace")
            # `id`, `retry` and comments (an empty field name) mean nothing to a model stream.
        return events


def _backoff(attempt: int) -> float:
    wait: float = min(_MAX_RETRY_WAIT, 0.5 * 2.0 ** (attempt - 1))
    return wait * (0.75 + random.random() / 4)


def _retry_wait(headers: Mapping[str, str], attempt: int) -> float:
    header = headers.get("retry-after-ms") or ""
    try:
        if header:
            return min(_MAX_RETRY_WAIT, float(header) / 1000)
        header = headers.get("retry-after") or ""
        if header:
            return min(_MAX_RETRY_WAIT, float(header))
    except ValueError:
        pass
    return _backoff(attempt)


def error_message(body: bytes | str, fallback: str) -> str:
    """The provider's own message from an error body or in-stream error event (both formats put it at
    `error.message`), else the body's start, else `fallback`."""
    try:
        parsed = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        return text[:500] or fallback
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    if isinstance(error, str):
        return error
    return fallback or "error"
