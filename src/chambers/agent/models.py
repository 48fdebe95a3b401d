"""Model strings (`provider/model`) to models or clients, resolved per turn: a bad key fails one turn."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from chambers.config import Settings

_DOTTED_VERSION = re.compile(r"(\d)\.(\d)")


class ModelNotConfigured(Exception):
    """The model string names no usable provider (unknown, or its key is missing)."""


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    model: Any
    provider: str
    name: str
    endpoint: str


def provider_model_id(provider: str, name: str, aliases: dict[str, str]) -> str:
    """The provider's real id: configured aliases first, then Anthropic's dotted versions (4.6 -> 4-6)."""
    full = f"{provider}/{name}"
    if full in aliases:
        return aliases[full].split("/", 1)[-1]
    if provider == "anthropic":
        return _DOTTED_VERSION.sub(r"\1-\2", name)
    return name


def split_model(model: str) -> tuple[str, str]:
    """`anthropic/claude-sonnet-4.6` -> (`anthropic`, `claude-sonnet-4.6`), or ValueError."""
    provider, sep, name = model.partition("/")
    if not sep or not provider or not name:
        raise ValueError("model must look like 'provider/model', e.g. 'anthropic/claude-sonnet-4.6'")
    return provider, name


class ModelResolver:
    """Resolves model strings to pydantic-ai models (`PydanticAgentLoop`), cached per key and base URL in
    force; `ClientResolver` resolves the same strings to our own clients."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._cache: dict[tuple[str, str, str | None, str | None], ResolvedModel] = {}

    def resolve(self, model: str) -> ResolvedModel:
        try:
            provider, name = split_model(model)
        except ValueError as exc:
            raise ModelNotConfigured(str(exc)) from None
        real = provider_model_id(provider, name, self.settings.model_aliases)
        if provider == "openai":
            key, base = os.environ.get("OPENAI_API_KEY"), os.environ.get("OPENAI_BASE_URL")
            if not key:
                raise ModelNotConfigured("provider 'openai' has no API key: set OPENAI_API_KEY on the server")
        elif provider == "anthropic":
            key, base = os.environ.get("ANTHROPIC_API_KEY"), os.environ.get("ANTHROPIC_BASE_URL")
            if not key:
                raise ModelNotConfigured(
                    "provider 'anthropic' has no API key: set ANTHROPIC_API_KEY on the server"
                )
        elif provider in self.settings.providers:
            config = self.settings.providers[provider]
            key = os.environ.get(config.api_key_env, "") if config.api_key_env else "none"
            base = config.base_url
            if not key:
                raise ModelNotConfigured(f"provider '{provider}' has no API key: set {config.api_key_env}")
        else:
            known = ", ".join(["anthropic", "openai", *sorted(self.settings.providers)])
            raise ModelNotConfigured(f"unknown model provider '{provider}' (known: {known})")
        cache_key = (provider, real, key, base)
        found = self._cache.get(cache_key)
        if found is None:
            found = self._cache[cache_key] = self._build(provider, real, key, base)
        return found

    def _build(self, provider: str, name: str, key: str, base: str | None) -> ResolvedModel:
        # Imported here: the provider SDKs take seconds to import and the CLI rarely needs them.
        if provider == "anthropic":
            from pydantic_ai.models.anthropic import AnthropicModel
            from pydantic_ai.providers.anthropic import AnthropicProvider

            return ResolvedModel(
                AnthropicModel(name, provider=AnthropicProvider(api_key=key, base_url=base)),
                provider,
                name,
                "/v1/messages",
            )
        from pydantic_ai.models.openai import OpenAIChatModel

        from chambers.agent.openai_client import ChunkValidatingOpenAIProvider

        return ResolvedModel(
            OpenAIChatModel(name, provider=ChunkValidatingOpenAIProvider(base_url=base, api_key=key)),
            provider,
            name,
            "/v1/chat/completions",
        )


class ClientResolver(ModelResolver):
    """Resolves model strings to Chambers' own streaming clients (`DirectAgentLoop`), same keys and URLs."""

    def _build(self, provider: str, name: str, key: str, base: str | None) -> ResolvedModel:
        from chambers.agent.wire import ModelClient

        if provider == "anthropic":
            from chambers.agent.anthropic_wire import AnthropicWire

            client = ModelClient(AnthropicWire(), base or "https://api.anthropic.com", key)
            return ResolvedModel(client, provider, name, "/v1/messages")
        from chambers.agent.openai_wire import OpenAIWire

        wire = OpenAIWire(max_completion_tokens=provider == "openai")
        client = ModelClient(wire, base or "https://api.openai.com/v1", key)
        return ResolvedModel(client, provider, name, "/v1/chat/completions")

    async def aclose(self) -> None:
        """Close the clients' connection pools."""
        for resolved in self._cache.values():
            await resolved.model.aclose()
        self._cache.clear()
