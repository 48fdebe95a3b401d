"""SQLite has one writer: every write transaction runs whole on the store's writer thread, on its one
connection, in arrival order; reads run on reader threads, so a lookup never waits for a write, and the
event loop never waits for either."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Connection

from chambers.store.controller import SqlControllerStore
from chambers.store.runs import SqlRunStore
from chambers.store.sql import SqlStore
from chambers.store.webhooks import WebhookStore


async def test_lookups_go_on_while_the_writer_is_busy(tmp_path: Path) -> None:
    store = await SqlStore.open(f"sqlite+aiosqlite:///{tmp_path / 'chambers.db'}")
    controller = SqlControllerStore(store.db)
    runs = SqlRunStore(store.db)
    webhooks = WebhookStore(store.db)
    inside, release = threading.Event(), threading.Event()

    def hold(conn: Connection) -> None:  # holds the writer thread, its connection and the write lock
        conn.execute(text("SELECT 1"))
        inside.set()
        release.wait(10)

    holding = asyncio.ensure_future(store.db.write(hold))
    try:
        assert await asyncio.to_thread(inside.wait, 5)
        lookups = asyncio.gather(
            store.get_session("chat_missing"),
            controller.get_agent("agent_missing"),
            runs.get_run("run_missing"),
            webhooks.get("org_missing", "whsub_missing"),
        )
        assert list(await asyncio.wait_for(lookups, timeout=5)) == [None, None, None, None]
        assert not holding.done()
    finally:
        release.set()
        await holding
        await store.close()


async def test_writers_take_turns_on_one_connection_in_one_thread(tmp_path: Path) -> None:
    store = await SqlStore.open(f"sqlite+aiosqlite:///{tmp_path / 'chambers.db'}")
    try:
        order: list[str] = []
        seen: set[tuple[int, int]] = set()

        def write(name: str) -> Callable[[Connection], None]:
            def transaction(conn: Connection) -> None:
                order.append(f"{name} in")
                seen.add((threading.get_ident(), id(conn.connection.dbapi_connection)))
                conn.execute(text("SELECT 1"))
                order.append(f"{name} out")

            return transaction

        await asyncio.wait_for(asyncio.gather(*(store.db.write(write(n)) for n in "abc")), timeout=10)
        assert order == ["a in", "a out", "b in", "b out", "c in", "c out"]
        assert len(seen) == 1
    finally:
        await store.close()


async def test_a_write_waiting_for_another_process_leaves_the_event_loop_free(tmp_path: Path) -> None:
    database = tmp_path / "chambers.db"
    store = await SqlStore.open(f"sqlite+aiosqlite:///{database}")
    other = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process's writer holds SQLite's write lock
        write = asyncio.ensure_future(store.record_notices([]))
        marked = asyncio.ensure_future(store.db.write(lambda conn: conn.execute(text("SELECT 1")).scalar()))
        # The loop still runs other work, and reads still answer, while both writes wait for the lock.
        assert await asyncio.wait_for(store.get_session("chat_missing"), timeout=5) is None
        assert not marked.done()
        other.execute("COMMIT")
        await asyncio.wait_for(write, timeout=10)
        assert await asyncio.wait_for(marked, timeout=10) == 1
    finally:
        other.close()
        await store.close()


async def test_a_failed_transaction_leaves_nothing_behind(tmp_path: Path) -> None:
    store = await SqlStore.open(f"sqlite+aiosqlite:///{tmp_path / 'chambers.db'}")
    try:

        def half_done(conn: Connection) -> None:
            conn.execute(text("INSERT INTO orgs (id, name, created_at) VALUES ('org_x', 'x', '2026-01-01')"))
            raise RuntimeError("stopped halfway")

        try:
            await store.db.write(half_done)
        except RuntimeError as exc:
            assert str(exc) == "stopped halfway"
        else:
            raise AssertionError("the failure did not reach the caller")
        assert await store.get_org("org_x") is None
        await store.db.write(lambda conn: conn.execute(text("SELECT 1")))  # the writer still works
    finally:
        await store.close()
