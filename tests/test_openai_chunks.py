"""The OpenAI client's fast chunk parsing gives what the SDK's lenient constructor gives, and still
accepts the chunks only the lenient constructor accepts."""

from __future__ import annotations

from typing import Any

import httpx2
import openai._base_client
import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionChunk

from chambers.agent.openai_client import ChunkValidatingOpenAI, ChunkValidatingOpenAIProvider

_BASE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1764900000, "model": "gpt-4o"}

CHUNKS: list[dict[str, Any]] = [
    {
        **_BASE,
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
    },
    {**_BASE, "choices": [{"index": 0, "delta": {"content": "tok "}, "finish_reason": None}]},
    {
        **_BASE,
        "choices": [
            {
                "index": 0,
                "delta": {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "shell", "arguments": '{"co'},
                        }
                    ]
                },
                "finish_reason": None,
            }
        ],
    },
    {**_BASE, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    {**_BASE, "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}},
    {
        **_BASE,
        "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}],
        "x_vendor": {"a": 1},
    },
]


def _clients() -> tuple[AsyncOpenAI, ChunkValidatingOpenAI]:
    return AsyncOpenAI(api_key="k", base_url="http://127.0.0.1:9/v1"), ChunkValidatingOpenAI(
        api_key="k", base_url="http://127.0.0.1:9/v1"
    )


def _parse(client: AsyncOpenAI, data: object) -> Any:
    response = httpx2.Response(200, request=httpx2.Request("POST", "http://127.0.0.1:9/v1/chat/completions"))
    return client._process_response_data(data=data, cast_to=ChatCompletionChunk, response=response)


@pytest.mark.parametrize(
    "chunk", CHUNKS, ids=["role", "text", "tool-call", "finish", "usage", "vendor-field"]
)
def test_a_valid_chunk_parses_to_what_the_sdk_builds(
    chunk: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    sdk, fast = _clients()
    expected = _parse(sdk, chunk)

    def slow_path(**_: Any) -> Any:
        raise AssertionError("a valid chunk took the SDK's lenient constructor")

    monkeypatch.setattr(openai._base_client, "construct_type", slow_path)
    got = _parse(fast, chunk)
    assert type(got) is ChatCompletionChunk
    assert got.model_dump() == expected.model_dump()
    assert got.model_extra == expected.model_extra


def test_a_chunk_that_bends_the_schema_still_parses_leniently() -> None:
    # Some OpenAI-compatible servers send `"choices": null`; pydantic-ai skips such chunks.
    sdk, fast = _clients()
    bent = {**_BASE, "choices": None}
    got = _parse(fast, bent)
    assert got.choices is None
    assert got.model_dump() == _parse(sdk, bent).model_dump()


def test_the_provider_builds_its_client_on_the_fast_parser() -> None:
    provider = ChunkValidatingOpenAIProvider(base_url="http://127.0.0.1:9/v1", api_key="k")
    assert isinstance(provider.client, ChunkValidatingOpenAI)
    assert str(provider.client.base_url) == "http://127.0.0.1:9/v1/"
