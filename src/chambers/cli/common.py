"""What every command shares: settings from flags/env/TOML, and a store to work on."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from chambers.config import Settings, SettingsError, load_settings
from chambers.core.errors import ChambersError
from chambers.core.ports import Store

T = TypeVar("T")

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory (env CHAMBERS_DATA_DIR).", show_default=False),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database-url", help="Database URL (env CHAMBERS_DATABASE_URL).", show_default=False),
]
ConfigFile = Annotated[
    Path | None, typer.Option("--config", help="TOML settings file.", show_default=False, exists=False)
]


def settings_from(config: Path | None = None, **overrides: Any) -> Settings:
    """Settings, or exit 2 with the operator-facing message."""
    try:
        return load_settings(config, **overrides)
    except SettingsError as exc:
        typer.echo(f"chambers: {exc}", err=True)
        raise typer.Exit(2) from None


def with_store(settings: Settings, work: Callable[[Store], Awaitable[T]]) -> T:
    """Open (and migrate) the store, run `work`, close. Domain errors exit 1 with their message."""
    from chambers.wiring import open_store

    async def run() -> T:
        store = await open_store(settings)
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except ChambersError as exc:
        typer.echo(f"chambers: {exc.message}", err=True)
        raise typer.Exit(1) from None
