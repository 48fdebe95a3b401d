"""Database: a store's transactions as plain functions of a connection, each handed off whole.

Every store method writes its transaction as a synchronous function `fn(conn)` and awaits
`db.write(fn)` (one transaction, committed when `fn` returns, rolled back if it raises) or
`db.read(fn)` (no transaction is opened for writing).

- **SQLite** (`SqliteDatabase`): one writer thread owns the only write connection and runs every write
  transaction, in arrival order, under `BEGIN IMMEDIATE`; a few reader threads own plain connections.
  A transaction crosses to its thread once. SQLAlchemy's async layer over aiosqlite crossed to the
  driver's thread several times per statement (cursor, execute, fetch, close), each time through the
  event loop: a six-statement turn claim took 3.1 ms of the loop's time, most of it hand-offs, and
  under load every statement of a transaction that held the one connection waited for a loop pass.
  The driver is the standard library's `sqlite3`, which lets other threads run while SQLite works.
- **PostgreSQL** (`AsyncDatabase`): SQLAlchemy's async engine on asyncpg; `fn` runs under
  `AsyncConnection.run_sync`, so the same store code serves both.

A transaction handed to a SQLite thread runs to its end even if the awaiting task is cancelled.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection, RowMapping, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql import Executable

T = TypeVar("T")

SQLITE_READERS = 4
"""Reader threads (and connections) on SQLite: reads never queue behind the writer."""

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
    """SQLite: one writer thread with the only write connection, `SQLITE_READERS` reader threads."""

    dialect = "sqlite"

    def __init__(self, url: str, readers: int = SQLITE_READERS) -> None:
        parsed = make_url(url).set(drivername="sqlite+pysqlite")
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # Connections are made and used in the pool's threads; a reader connection may serve any reader.
        connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
        self.writer: Engine = create_engine(parsed, connect_args=connect_args, pool_size=1, max_overflow=0)
        event.listen(self.writer, "connect", _pragmas)
        event.listen(self.writer, "connect", _manual_begin)
        # A deferred transaction that reads and then writes cannot wait for the write lock: SQLite
        # answers "database is locked" at once. Taking the lock up front lets busy_timeout queue it.
        event.listen(self.writer, "begin", _begin_immediate)
        self.reader: Engine = create_engine(
            parsed, connect_args=connect_args, pool_size=readers, max_overflow=0
        )
        event.listen(self.reader, "connect", _pragmas)
        self._writing = ThreadPoolExecutor(1, thread_name_prefix="chambers-sqlite-writer")
        self._reading = ThreadPoolExecutor(readers, thread_name_prefix="chambers-sqlite-reader")

    async def write(self, fn: Callable[[Connection], T]) -> T:
        def transaction() -> T:
            with self.writer.begin() as conn:
                return fn(conn)

        return await _hand_off(self._writing, transaction)

    async def read(self, fn: Callable[[Connection], T]) -> T:
        def lookup() -> T:
            with self.reader.connect() as conn:
                return fn(conn)

        return await _hand_off(self._reading, lookup)

    async def close(self) -> None:
        await asyncio.to_thread(self._shut_down)

    def _shut_down(self) -> None:
        self._writing.shutdown(wait=True)
        self._reading.shutdown(wait=True)
        self.writer.dispose()
        self.reader.dispose()


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


async def read_one(db: Database, query: Executable, convert: Callable[[RowMapping], T]) -> T | None:
    """The first row of `query`, converted, or None."""
    row = await db.read(lambda conn: conn.execute(query).mappings().first())
    return None if row is None else convert(row)


async def read_all(db: Database, query: Executable, convert: Callable[[RowMapping], T]) -> list[T]:
    """Every row of `query`, converted."""
    rows = await db.read(lambda conn: conn.execute(query).mappings().all())
    return [convert(r) for r in rows]


async def _hand_off(pool: ThreadPoolExecutor, job: Callable[[], T]) -> T:
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(context.run, job))


def _manual_begin(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    dbapi_connection.isolation_level = None  # the driver emits no BEGIN; the "begin" event does


def _begin_immediate(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def ping(conn: Connection) -> None:
    """A trivial statement: the database answers."""
    conn.execute(text("SELECT 1"))
