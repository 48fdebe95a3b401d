"""The PostgreSQL and Redis services of the scale-out tests: reach them, make fresh databases and prefixes.

Every database and key prefix made here carries this worker's run id and is removed by `cleanup()`
(tests/conftest.py calls it at the end of the session). Addresses come from the environment:

- `CHAMBERS_TEST_POSTGRES_URL` (default `postgresql://postgres@127.0.0.1:5432/postgres`): a role allowed
  to create databases; the fresh databases are made next to the one named here.
- `CHAMBERS_TEST_REDIS_URL` (default `redis://127.0.0.1:6379/0`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
from sqlalchemy.engine import make_url

T = TypeVar("T")

POSTGRES_URL = os.environ.get("CHAMBERS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("CHAMBERS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RUN_ID = f"{os.getpid()}_{uuid.uuid4().hex[:8]}"
"""Names every database and prefix this process makes (one per pytest worker)."""

_numbers = itertools.count(1)
_databases: list[str] = []
_prefixes: list[str] = []
_lock = threading.Lock()


def run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, even inside a running event loop (own thread)."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(make()))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, name="services")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1).replace("postgres://", "postgresql://", 1)


@contextlib.contextmanager
def holding_writes(env: Mapping[str, str], data_dir: Path) -> Iterator[None]:
    """Hold a lock that keeps a server from claiming turns (a stalled database), until the block ends.

    SQLite: a `BEGIN IMMEDIATE` transaction of our own (the server's writes wait in its busy handler).
    PostgreSQL: `chat_sessions` locked against row updates (reads go on).
    """
    url = env.get("CHAMBERS_DATABASE_URL") or os.environ.get("CHAMBERS_DATABASE_URL")
    if not url or url.startswith("sqlite"):
        path = make_url(url).database if url else None
        db = sqlite3.connect(path or data_dir / "chambers.db", isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            yield
        finally:
            db.execute("ROLLBACK")
            db.close()
        return
    held, release = threading.Event(), threading.Event()
    failed: list[BaseException] = []

    async def hold() -> None:
        import asyncpg

        conn = await asyncpg.connect(_asyncpg_dsn(url), timeout=10)
        try:
            async with conn.transaction():
                await conn.execute("LOCK TABLE chat_sessions IN SHARE ROW EXCLUSIVE MODE")
                held.set()
                await asyncio.to_thread(release.wait, 120)
        finally:
            await conn.close()

    def target() -> None:
        try:
            asyncio.run(hold())
        except BaseException as exc:
            failed.append(exc)
            held.set()

    thread = threading.Thread(target=target, name="holding writes")
    thread.start()
    try:
        assert held.wait(30), "could not take the lock"
        if failed:
            raise failed[0]
        yield
    finally:
        release.set()
        thread.join(30)


# PostgreSQL


@cache
def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used (None when it can)."""
    import asyncpg  # type: ignore[import-untyped]

    async def probe() -> None:
        conn = await asyncpg.connect(_asyncpg_dsn(POSTGRES_URL), timeout=5)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    try:
        run_sync(probe)
    except Exception as exc:
        return f"PostgreSQL is not reachable at {POSTGRES_URL} ({type(exc).__name__}: {exc})"
    return None


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_asyncpg_dsn(POSTGRES_URL), timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def create_database() -> str:
    """A new, empty database; returns its `postgresql://` URL. Dropped by `cleanup()`."""
    with _lock:
        name = f"chambers_test_{RUN_ID}_{next(_numbers)}"
        _databases.append(name)
    run_sync(lambda: _admin(f'CREATE DATABASE "{name}"'))
    return _with_database(POSTGRES_URL, name)


def drop_database(url_or_name: str) -> None:
    name = urlsplit(url_or_name).path.lstrip("/") if "://" in url_or_name else url_or_name
    run_sync(lambda: _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    with _lock:
        if name in _databases:
            _databases.remove(name)


# Redis


@cache
def redis_problem() -> str | None:
    """Why Redis cannot be used (None when it can)."""
    try:
        with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5, socket_timeout=5) as client:
            client.ping()
    except Exception as exc:
        return f"Redis is not reachable at {REDIS_URL} ({type(exc).__name__}: {exc})"
    return None


def redis_prefix() -> str:
    """A new key prefix; its keys are removed by `cleanup()`."""
    with _lock:
        prefix = f"chambers_test_{RUN_ID}_{next(_numbers)}"
        _prefixes.append(prefix)
    return prefix


def flush_prefix(prefix: str, url: str = REDIS_URL) -> int:
    """Delete every key under `prefix:` (on the Redis at `url`); returns how many."""
    removed = 0
    with redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30) as client:
        batch: list[Any] = []
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                removed += int(client.unlink(*batch))
                batch.clear()
        if batch:
            removed += int(client.unlink(*batch))
    return removed


# the servers' database, whichever it is


def db_execute(env: Mapping[str, str], data_dir: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one statement on a server's database (SQLite in its data dir, or its PostgreSQL database).

    `sql` uses `?` placeholders; rows are returned for a query, [] otherwise. Pass `proc.env` and
    `proc.data_dir` of a `ServerProcess`.
    """
    url = env.get("CHAMBERS_DATABASE_URL") or os.environ.get("CHAMBERS_DATABASE_URL")
    if not url or url.startswith("sqlite"):
        # SQLAlchemy's reading of the URL, as the server's (`sqlite:///rel.db` is relative, `////` absolute).
        path = make_url(url).database if url else None
        with contextlib.closing(sqlite3.connect(path or data_dir / "chambers.db")) as db, db:
            return [tuple(row) for row in db.execute(sql, params).fetchall()]
    numbered = itertools.count(1)
    pg_sql = "".join(f"${next(numbered)}" if char == "?" else char for char in sql)

    async def run() -> list[tuple[Any, ...]]:
        import asyncpg

        conn = await asyncpg.connect(_asyncpg_dsn(url), timeout=10)
        try:
            return [tuple(row) for row in await conn.fetch(pg_sql, *params)]
        finally:
            await conn.close()

    return run_sync(run)


# the end of the session


def cleanup() -> list[str]:
    """Drop the databases and flush the prefixes this process made; returns what failed."""
    problems: list[str] = []
    for name in list(_databases):
        try:
            drop_database(name)
        except Exception as exc:
            problems.append(f"database {name}: {exc}")
    for prefix in list(_prefixes):
        try:
            flush_prefix(prefix)
            _prefixes.remove(prefix)
        except Exception as exc:
            problems.append(f"redis prefix {prefix}: {exc}")
    return problems
