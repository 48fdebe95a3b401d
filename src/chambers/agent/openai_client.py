"""The OpenAI provider with streamed chunks parsed by pydantic-core.

The OpenAI SDK builds each streamed `ChatCompletionChunk` with its lenient pure-Python constructor
(`openai._models.construct_type`): about 75 µs per chunk on the benchmark machine, the largest single
per-token cost in the server's profile (docs/benchmarks.md). `ChatCompletionChunk.model_validate` does
the same in about 3 µs. A chunk that does not validate (OpenAI-compatible servers sometimes bend the
schema, e.g. `"choices": null`) still takes the SDK's lenient path, so nothing that parsed before fails
now. Imported lazily: the SDK takes seconds to import.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pydantic
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionChunk
from pydantic_ai.providers.openai import OpenAIProvider


class ChunkValidatingOpenAI(AsyncOpenAI):
    """`AsyncOpenAI` whose streamed chat-completion chunks are validated, not constructed."""

    def _process_response_data(self, *, data: object, cast_to: type[Any], response: Any) -> Any:
        if cast_to is ChatCompletionChunk and type(data) is dict:
            try:
                return ChatCompletionChunk.model_validate(data)
            except pydantic.ValidationError:
                pass
        return super()._process_response_data(data=data, cast_to=cast_to, response=response)


class ChunkValidatingOpenAIProvider(OpenAIProvider):
    """pydantic-ai's `OpenAIProvider`, on a `ChunkValidatingOpenAI` client (same HTTP client and options)."""

    def _create_openai_client(
        self,
        *,
        base_url: str | None,
        api_key: str | None,
        http_client: Any,
        default_headers: Mapping[str, str] | None = None,
    ) -> AsyncOpenAI:
        # A legacy httpx client is a runtime-only escape hatch of the SDK, outside its annotations.
        client: Any = self._get_http_client(http_client, warning_stacklevel=4)
        return ChunkValidatingOpenAI(
            base_url=base_url, api_key=api_key, http_client=client, default_headers=default_headers
        )
