"""Database: a store's transactions as plain functions of a connection, each handed off whole.

Every store method writes its transaction as a synchronous function `fn(conn)` and awaits
`db.write(fn)` (one transaction, committed when `fn` returns, rolled back if it raises) or
`db.read(fn)` (no transaction is opened for writing).

- **SQLite** (`SqliteDatabase`): transactions run on the event loop's own thread, on two connections
  that never wait for a lock (`busy_timeout` 0): one for reads, one for writes under `BEGIN IMMEDIATE`.
  A transaction that finds the database locked (another process writing, or a write already queued)
  goes to a writer thread instead, which owns a third connection, waits for the lock up to
  `SQLITE_BUSY_TIMEOUT_S` and runs queued writes in arrival order; reads that find it locked go to
  reader threads. In WAL mode reads never wait for writers, and this process is normally SQLite's only
  writer, so almost everything runs inline: a lookup costs about 20 µs of SQLAlchemy and SQLite, where
  handing it to a thread cost 100 µs on an idle server and up to the interpreter's 5 ms switch interval
  on a busy one (the thread waits for the GIL the event loop holds). The driver is the standard
  library's `sqlite3`, which lets other threads run while SQLite works.
- **PostgreSQL** (`AsyncDatabase`): SQLAlchemy's async engine on asyncpg; `fn` runs under
  `AsyncConnection.run_sync`, so the same store code serves both.

A transaction runs to its end even if the awaiting task is cancelled (inline ones cannot be interrupted;
one handed to a thread finishes there).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, Connection, RowMapping, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql import Executable

T = TypeVar("T")

log = logging.getLogger("chambers.store")

SQLITE_READERS = 4
"""Reader threads (and connections) on SQLite: reads never queue behind the writer."""

CHECKPOINT_EVERY_COMMITS = 100
"""Inline commits between two WAL checkpoints on the writer thread (SQLite's own default is about
every 1,000 pages, some 30 turns)."""

SQLITE_BUSY_TIMEOUT_S = 30
"""How long a SQLite connection waits for a lock another process holds before "database is locked"."""


class Database(Protocol):
    """Runs a store's transactions; see the module docstring."""

    dialect: str
    """`sqlite` or `postgresql`: the few statements that differ look at it."""

    async def write(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn` in one write transaction and return what it returns."""
        ...

    async def read(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn` on a connection for reading and return what it returns."""
        ...

    async def close(self) -> None:
        """Finish what was handed off and release the connections."""
        ...


async def open_database(url: str) -> Database:
    """A Database for a `sqlite://` (any SQLite driver name) or `postgresql+asyncpg://` URL."""
    if url.startswith("sqlite"):
        return SqliteDatabase(url)
    return AsyncDatabase(create_async_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True))


class SqliteDatabase:
    """SQLite: transactions inline on the event loop, threads for those that would wait for a lock."""

    dialect = "sqlite"

    def __init__(self, url: str, readers: int = SQLITE_READERS) -> None:
        parsed = make_url(url).set(drivername="sqlite+pysqlite")
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # The threads' connections wait for another process's lock; the event loop's never do.
        self.writer = _engine(parsed, SQLITE_BUSY_TIMEOUT_S, size=1, writes=True)
        self.reader = _engine(parsed, SQLITE_BUSY_TIMEOUT_S, size=readers, writes=False)
        self.inline_writer = _engine(parsed, 0, size=1, writes=True, checkpoints=False)
        self.inline_reader = _engine(parsed, 0, size=1, writes=False)
        self._writing = ThreadPoolExecutor(1, thread_name_prefix="chambers-sqlite-writer")
        self._reading = ThreadPoolExecutor(readers, thread_name_prefix="chambers-sqlite-reader")
        self._queued_writes = 0
        self._inline_commits = 0
        self.last_checkpoint: asyncio.Future[None] | None = None
        """The latest WAL checkpoint handed to the writer thread, done or not."""

    async def write(self, fn: Callable[[Connection], T]) -> T:
        if not self._queued_writes:  # a write queued on the thread keeps its place: never jump it
            try:
                with self.inline_writer.begin() as conn:
                    result = fn(conn)
            except OperationalError as exc:
                if not _locked(exc):
                    raise
            else:
                self._inline_commits += 1
                if self._inline_commits % CHECKPOINT_EVERY_COMMITS == 0:
                    self.start_checkpoint()
                return result

        def transaction() -> T:
            with self.writer.begin() as conn:
                return fn(conn)

        self._queued_writes += 1
        try:
            return await _hand_off(self._writing, transaction)
        finally:
            self._queued_writes -= 1

    async def read(self, fn: Callable[[Connection], T]) -> T:
        try:
            with self.inline_reader.connect() as conn:
                return fn(conn)
        except OperationalError as exc:
            if not _locked(exc):
                raise

        def lookup() -> T:
            with self.reader.connect() as conn:
                return fn(conn)

        return await _hand_off(self._reading, lookup)

    def start_checkpoint(self) -> None:
        """Copy the WAL into the database file on the writer thread, unless a checkpoint is under way:
        it ends in an fsync, which must not stall the event loop (inline commits never checkpoint)."""
        if self.last_checkpoint is not None and not self.last_checkpoint.done():
            return

        def checkpoint() -> None:
            connection = self.writer.raw_connection()  # not in a transaction: a checkpoint cannot be
            try:
                connection.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")  # type: ignore[union-attr]
            finally:
                connection.close()

        self.last_checkpoint = asyncio.get_running_loop().run_in_executor(self._writing, checkpoint)
        self.last_checkpoint.add_done_callback(_report_checkpoint)

    async def close(self) -> None:
        if self.last_checkpoint is not None:
            await asyncio.gather(self.last_checkpoint, return_exceptions=True)
        await asyncio.to_thread(self._shut_down)
        self.inline_writer.dispose()
        self.inline_reader.dispose()

    def _shut_down(self) -> None:
        self._writing.shutdown(wait=True)
        self._reading.shutdown(wait=True)
        self.writer.dispose()
        self.reader.dispose()


def _engine(url: URL, busy_timeout_s: int, *, size: int, writes: bool, checkpoints: bool = True) -> Engine:
    # A pooled connection may serve any thread of its pool.
    connect_args = {"timeout": busy_timeout_s, "check_same_thread": False}
    engine = create_engine(url, connect_args=connect_args, pool_size=size, max_overflow=0)

    def pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_s * 1000}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        if not checkpoints:
            cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.close()

    event.listen(engine, "connect", pragmas)
    if writes:
        event.listen(engine, "connect", _manual_begin)
        # A deferred transaction that reads and then writes cannot wait for the write lock: SQLite
        # answers "database is locked" at once. Taking the lock up front lets busy_timeout queue it.
        event.listen(engine, "begin", _begin_immediate)
    return engine


def _report_checkpoint(done: asyncio.Future[None]) -> None:
    # A failed checkpoint loses nothing (the WAL keeps the data; the next one retries), but say so.
    if not done.cancelled() and done.exception() is not None:
        log.warning("SQLite WAL checkpoint failed: %s", done.exception())


def _locked(exc: OperationalError) -> bool:
    """SQLite's "database is locked" (SQLITE_BUSY): another connection holds what this one needs."""
    return "locked" in str(exc.orig) or "busy" in str(exc.orig)


class AsyncDatabase:
    """An async SQLAlchemy engine (PostgreSQL on asyncpg); `fn` runs under `run_sync`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    async def write(self, fn: Callable[[Connection], T]) -> T:
        async with self.engine.begin() as conn:
            return await conn.run_sync(fn)

    async def read(self, fn: Callable[[Connection], T]) -> T:
        async with self.engine.connect() as conn:
            return await conn.run_sync(fn)

    async def close(self) -> None:
        await self.engine.dispose()


async def read_one(
    db: Database,
    query: Executable,
    convert: Callable[[RowMapping], T],
    params: Mapping[str, Any] | None = None,
) -> T | None:
    """The first row of `query` (with `params` for its bound parameters), converted, or None."""
    row = await db.read(lambda conn: conn.execute(query, params).mappings().first())
    return None if row is None else convert(row)


async def read_all(
    db: Database,
    query: Executable,
    convert: Callable[[RowMapping], T],
    params: Mapping[str, Any] | None = None,
) -> list[T]:
    """Every row of `query` (with `params` for its bound parameters), converted."""
    rows = await db.read(lambda conn: conn.execute(query, params).mappings().all())
    return [convert(r) for r in rows]


async def _hand_off(pool: ThreadPoolExecutor, job: Callable[[], T]) -> T:
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(context.run, job))


def _manual_begin(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    dbapi_connection.isolation_level = None  # the driver emits no BEGIN; the "begin" event does


def _begin_immediate(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def ping(conn: Connection) -> None:
    """A trivial statement: the database answers."""
    conn.execute(text("SELECT 1"))
