"""SQLite transactions run inline on the event loop's thread; one that finds the database locked waits
on the writer thread instead, in arrival order, and the loop and every read go on meanwhile. The
inline connection never checkpoints the WAL itself (a checkpoint ends in an fsync): the writer thread
does, every `CHECKPOINT_EVERY_COMMITS` commits."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Connection

from chambers.store.controller import SqlControllerStore
from chambers.store.database import CHECKPOINT_EVERY_COMMITS, SqliteDatabase
from chambers.store.runs import SqlRunStore
from chambers.store.sql import SqlStore
from chambers.store.webhooks import WebhookStore


async def test_reads_and_writes_run_on_the_event_loops_thread(tmp_path: Path) -> None:
    store = await SqlStore.open(f"sqlite:///{tmp_path / 'chambers.db'}")
    try:
        threads: list[int] = []

        def note(conn: Connection) -> int:
            threads.append(threading.get_ident())
            return int(conn.execute(text("SELECT 1")).scalar_one())

        assert await store.db.write(note) == 1 and await store.db.read(note) == 1
        assert threads == [threading.get_ident()] * 2
    finally:
        await store.close()


async def test_a_write_that_finds_the_database_locked_waits_off_the_loop_and_keeps_its_place(
    tmp_path: Path,
) -> None:
    database = tmp_path / "chambers.db"
    store = await SqlStore.open(f"sqlite:///{database}")
    controller, runs, webhooks = SqlControllerStore(store.db), SqlRunStore(store.db), WebhookStore(store.db)
    other = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process's writer holds SQLite's write lock
        order: list[str] = []

        def write(name: str) -> Callable[[Connection], str]:
            def transaction(conn: Connection) -> str:
                order.append(name)
                return threading.current_thread().name

            return transaction

        first = asyncio.ensure_future(store.db.write(write("first")))
        await asyncio.sleep(0)  # `first` tries inline, finds the lock taken and queues on the writer thread
        second = asyncio.ensure_future(store.db.write(write("second")))
        # The loop runs other work, and reads in all four stores answer, while both writes wait.
        lookups = asyncio.gather(
            store.get_session("chat_missing"),
            controller.get_agent("agent_missing"),
            runs.get_run("run_missing"),
            webhooks.get("org_missing", "whsub_missing"),
        )
        assert list(await asyncio.wait_for(lookups, timeout=5)) == [None, None, None, None]
        assert not first.done() and not second.done() and order == []
        other.execute("COMMIT")
        names = await asyncio.wait_for(asyncio.gather(first, second), timeout=10)
        assert order == ["first", "second"]  # the second did not jump the queue by running inline
        assert all(name.startswith("chambers-sqlite-writer") for name in names)
        assert await store.db.write(write("third")) == threading.current_thread().name  # inline again
    finally:
        other.close()
        await store.close()


async def test_a_failed_transaction_leaves_nothing_behind(tmp_path: Path) -> None:
    store = await SqlStore.open(f"sqlite:///{tmp_path / 'chambers.db'}")
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


async def test_the_wal_is_checkpointed_by_the_writer_thread_not_by_inline_commits(tmp_path: Path) -> None:
    database = tmp_path / "chambers.db"
    store = await SqlStore.open(f"sqlite:///{database}")
    try:
        await store.db.write(lambda conn: conn.execute(text("CREATE TABLE filler (body TEXT)")))
        assert isinstance(store.db, SqliteDatabase)
        store.db.start_checkpoint()  # start from a checkpointed file
        assert store.db.last_checkpoint is not None
        await asyncio.wait_for(store.db.last_checkpoint, timeout=10)
        size = database.stat().st_size

        def fill(conn: Connection) -> None:
            conn.execute(text("INSERT INTO filler VALUES (:body)"), {"body": "x" * 8192})

        done = 1  # the CREATE TABLE
        while (done + 1) % CHECKPOINT_EVERY_COMMITS:
            await store.db.write(fill)
            done += 1
        # Hundreds of KB were committed, all of it still in the WAL: no inline commit checkpointed.
        assert database.stat().st_size == size
        await store.db.write(fill)  # the commit that hands a checkpoint to the writer thread
        checkpoint = store.db.last_checkpoint
        assert checkpoint is not None and not checkpoint.done()
        await asyncio.wait_for(checkpoint, timeout=10)
        assert database.stat().st_size > size + 100 * 8192 // 2
    finally:
        await store.close()
