"""Chambers: long-lived, sandboxed, multi-turn chat sessions with LLM agents."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from chambers.client import AsyncClient, Client

__all__ = ["AsyncClient", "Client", "__version__"]


def __getattr__(name: str) -> Any:
    """`chambers.Client` and `chambers.AsyncClient`, imported on first use (the server never pays)."""
    if name in ("Client", "AsyncClient"):
        from chambers import client

        return getattr(client, name)
    raise AttributeError(f"module 'chambers' has no attribute {name!r}")
