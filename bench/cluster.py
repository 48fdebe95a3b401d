"""Replicas of `chambers serve` on one PostgreSQL database and one Redis key prefix, for scenario `replicas`.

Each `Cluster` makes a fresh database (`CREATE DATABASE chambers_bench_<hex>`) and uses a key prefix of
the same name, starts its replicas the way tests/test_replicas.py does (each its own data directory, one
shared snapshot directory, one `CHAMBERS_SECRET_KEY`; the first replica migrates the database and prints
the admin key the others accept), and on `close()` stops them, drops the database and deletes the keys.

Addresses come from the environment (the test suite's variables are the fallback):

- `CHAMBERS_BENCH_POSTGRES_URL` (else `CHAMBERS_TEST_POSTGRES_URL`, else
  `postgresql://postgres@127.0.0.1:5432/postgres`): a role allowed to create databases;
- `CHAMBERS_BENCH_REDIS_URL` (else `CHAMBERS_TEST_REDIS_URL`, else `redis://127.0.0.1:6379/0`).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

from tests.support.server import ServerProcess
from tests.support.services import flush_prefix

from bench.common import server_env, wait_until_warm

POSTGRES_URL = os.environ.get("CHAMBERS_BENCH_POSTGRES_URL") or os.environ.get(
    "CHAMBERS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("CHAMBERS_BENCH_REDIS_URL") or os.environ.get(
    "CHAMBERS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"
)
SECRET_KEY = "f" * 43 + "="  # a Fernet-sized key as in tests/test_replicas.py, the same on every replica
NAME_PREFIX = "chambers_bench_"


class ServicesUnavailable(RuntimeError):
    """PostgreSQL or Redis cannot be reached: the scenario cannot run at all."""


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


async def _admin(sql: str) -> None:
    import asyncpg  # type: ignore[import-untyped, unused-ignore]

    conn = await asyncpg.connect(POSTGRES_URL, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def check_services() -> None:
    """Raise `ServicesUnavailable`, saying which and where, unless PostgreSQL and Redis both answer."""
    import asyncpg
    import redis

    async def probe() -> None:
        conn = await asyncpg.connect(POSTGRES_URL, timeout=5)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    problems: list[str] = []
    try:
        asyncio.run(probe())
    except Exception as exc:
        problems.append(
            f"PostgreSQL is not reachable at {_redacted(POSTGRES_URL)} ({type(exc).__name__}: {exc})"
        )
    try:
        with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5, socket_timeout=5) as client:
            client.ping()
    except Exception as exc:
        problems.append(f"Redis is not reachable at {_redacted(REDIS_URL)} ({type(exc).__name__}: {exc})")
    if problems:
        raise ServicesUnavailable(
            "; ".join(problems) + ". Scenario `replicas` needs both: start them, point "
            "CHAMBERS_BENCH_POSTGRES_URL / CHAMBERS_BENCH_REDIS_URL at them, or leave it out with --only."
        )


class Cluster:
    """`size` replicas (more with `grow`) on a fresh database and key prefix, pointed at the fake upstream
    at `upstream_url`."""

    def __init__(self, size: int, upstream_url: str) -> None:
        self.size = size
        self.name = f"{NAME_PREFIX}{secrets.token_hex(4)}"
        self.database_url = _with_database(POSTGRES_URL, self.name)
        self.root = Path(tempfile.mkdtemp(prefix="chambers-bench-replicas-"))
        self.env = {
            **server_env(upstream_url),
            "CHAMBERS_DATABASE_URL": self.database_url,
            "CHAMBERS_REDIS_URL": REDIS_URL,
            "CHAMBERS_REDIS_KEY_PREFIX": self.name,
            "CHAMBERS_SNAPSHOT_DIR": str(self.root / "snapshots"),
            "CHAMBERS_SECRET_KEY": SECRET_KEY,
        }
        self.replicas: list[ServerProcess] = []
        self.key = ""
        self._created = False

    def start(self) -> Cluster:
        try:
            asyncio.run(_admin(f'CREATE DATABASE "{self.name}"'))
            self._created = True
            self.grow(self.size)
        except BaseException:
            self.close()
            raise
        return self

    def grow(self, size: int) -> None:
        """Start replicas until there are `size`. The first one migrates the empty database and prints the
        admin key; the others start on the migrated database (as in tests/test_replicas.py)."""
        if len(self.replicas) >= size:
            return
        started = time.monotonic()
        while len(self.replicas) < size:
            index = len(self.replicas)
            replica = ServerProcess(self.root / f"replica{index}", env=dict(self.env))
            self.replicas.append(replica)
            replica.start(timeout=120)
            wait_until_warm(replica.url)
            if index == 0:
                self.key = replica.admin_key or ""
                if not self.key:
                    raise RuntimeError("the first replica printed no admin key")
        self.size = len(self.replicas)
        print(
            f"  {self.size} replica(s) on database {self.name} ready in "
            f"{time.monotonic() - started:.1f} s: {', '.join(self.urls)}",
            flush=True,
        )

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.replicas]

    @property
    def pids(self) -> list[int]:
        return [r.proc.pid for r in self.replicas if r.proc is not None]

    def problems(self) -> list[str]:
        """ERROR lines and tracebacks in the replicas' output (first 20)."""
        found = [
            f"replica{i}: {line.rstrip()}"
            for i, r in enumerate(self.replicas)
            for line in r.output
            if " ERROR " in line or "Traceback" in line
        ]
        return found[:20]

    def tail(self, lines: int = 15) -> str:
        return "".join(f"--- replica{i}\n" + "".join(r.output[-lines:]) for i, r in enumerate(self.replicas))

    def close(self) -> None:
        """Stop the replicas, drop the database, delete the keys and the directories; say what failed."""
        for replica in self.replicas:
            replica.stop()
        if self._created:
            try:
                asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
                self._created = False
            except Exception as exc:
                print(f"!! could not drop database {self.name}: {exc}", flush=True)
        try:
            flush_prefix(self.name, REDIS_URL)
        except Exception as exc:
            print(f"!! could not delete the Redis keys {self.name}:*: {exc}", flush=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
