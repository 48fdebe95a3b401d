"""The model client's HTTP side against a raw loopback server that misbehaves on purpose.

A provider closes idle keep-alive connections on its own schedule; when that races a request sent on
a pooled connection, the request broke before any answer and is sent again. A connection that breaks
once the answer has begun is a provider error: the request is not sent twice.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from chambers.agent.openai_wire import OpenAIWire
from chambers.agent.wire import ModelClient, ProviderError, ResponseBuilder
from chambers.core.loop import TextDelta, TextStarted
from tests.support.wire import wire_request

Handler = Callable[[int, int, asyncio.StreamWriter], Awaitable[bool]]
"""(connection number, request number on it, writer) -> whether to keep the connection open."""


def _answer(text: str) -> bytes:
    chunk = {"id": "c1", "model": "gpt-4o", "choices": [{"index": 0, "delta": {"content": text}}]}
    end = {"id": "c1", "model": "gpt-4o", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    body = f"data: {json.dumps(chunk)}\n\ndata: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode()
    head = f"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


class RawServer:
    """Counts connections and requests; `handler` decides what each request gets."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number, served = self.connections, 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                self.requests += 1
                served += 1
                if not await self.handler(number, served, writer):
                    break
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()


@pytest.fixture
async def raw_server(request: pytest.FixtureRequest) -> AsyncIterator[tuple[RawServer, ModelClient]]:
    """The server, answering as `request.param` says, and a model client of it."""
    server = RawServer(request.param)
    listening = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    client = ModelClient(OpenAIWire(), f"http://127.0.0.1:{port}/v1", "key")
    async with listening:
        try:
            yield server, client
        finally:
            await client.aclose()


async def _text(client: ModelClient) -> str:
    builder = ResponseBuilder()
    out = []
    async for event in client.stream(wire_request("gpt-4o", []), builder):
        assert isinstance(event, TextStarted | TextDelta)
        out.append(event.text if isinstance(event, TextStarted) else event.delta)
    return "".join(out)


async def _closes_on_its_second_request(connection: int, served: int, writer: asyncio.StreamWriter) -> bool:
    if connection == 1 and served == 2:
        return False  # as a server closing an idle connection just as the next request arrives
    writer.write(_answer(f"answer {connection}.{served}"))
    await writer.drain()
    return True


async def _breaks_mid_answer(connection: int, served: int, writer: asyncio.StreamWriter) -> bool:
    whole = _answer("never finished")
    writer.write(whole[: len(whole) // 2 + 40])
    await writer.drain()
    return False


@pytest.mark.parametrize("raw_server", [_closes_on_its_second_request], indirect=True)
async def test_a_request_on_a_pooled_connection_the_provider_closed_is_sent_again(
    raw_server: tuple[RawServer, ModelClient],
) -> None:
    server, client = raw_server
    assert await _text(client) == "answer 1.1"
    assert await _text(client) == "answer 2.1"  # the first connection broke; a new one answered
    assert (server.connections, server.requests) == (2, 3)


@pytest.mark.parametrize("raw_server", [_breaks_mid_answer], indirect=True)
async def test_a_connection_that_breaks_once_the_answer_began_is_not_sent_again(
    raw_server: tuple[RawServer, ModelClient],
) -> None:
    server, client = raw_server
    with pytest.raises(ProviderError, match="broke"):
        await _text(client)
    assert server.requests == 1
