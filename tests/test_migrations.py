"""The Alembic migrations build exactly the schema that store/tables.py describes."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from chambers.store.sql import SqlStore
from chambers.store.tables import metadata


def test_migrations_match_the_tables(tmp_path: Path) -> None:
    database = tmp_path / "schema.db"

    async def migrate() -> None:
        store = await SqlStore.open(f"sqlite+aiosqlite:///{database}")
        await store.close()

    asyncio.run(migrate())
    with create_engine(f"sqlite:///{database}").connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), metadata)
    assert differences == []
