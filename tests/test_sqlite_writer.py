"""SQLite has one writer: the store keeps one pooled writer connection, and every read goes through the
reader pool, so a lookup never waits for a write transaction to end."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import text

from chambers.store.controller import SqlControllerStore
from chambers.store.runs import SqlRunStore
from chambers.store.sql import SqlStore
from chambers.store.webhooks import WebhookStore


async def test_lookups_go_on_while_the_writer_is_busy(tmp_path: Path) -> None:
    store = await SqlStore.open(f"sqlite+aiosqlite:///{tmp_path / 'chambers.db'}")
    controller = SqlControllerStore(store.engine, store.reader)
    runs = SqlRunStore(store.engine, store.reader)
    webhooks = WebhookStore(store.engine, store.reader)
    try:
        async with store.engine.begin() as writing:  # holds the one writer connection and the write lock
            await writing.execute(text("SELECT 1"))
            lookups = asyncio.gather(
                store.get_session("chat_missing"),
                controller.get_agent("agent_missing"),
                runs.get_run("run_missing"),
                webhooks.get("org_missing", "whsub_missing"),
            )
            # Through the writer engine each would wait for this transaction: 30 s, then a pool timeout.
            assert list(await asyncio.wait_for(lookups, timeout=5)) == [None, None, None, None]
    finally:
        await store.close()


async def test_writers_take_turns_on_one_connection(tmp_path: Path) -> None:
    store = await SqlStore.open(f"sqlite+aiosqlite:///{tmp_path / 'chambers.db'}")
    try:
        assert store.engine.pool.size() == 1  # type: ignore[attr-defined]
        order: list[str] = []

        async def write(name: str) -> None:
            async with store.engine.begin() as conn:
                order.append(f"{name} in")
                await conn.execute(text("SELECT 1"))
                await asyncio.sleep(0)
                order.append(f"{name} out")

        await asyncio.wait_for(asyncio.gather(*(write(n) for n in "abc")), timeout=10)
        assert order == ["a in", "a out", "b in", "b out", "c in", "c out"]
    finally:
        await store.close()
