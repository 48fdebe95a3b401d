"""Fixtures: a real server process on loopback, a fake LLM upstream, clients with keys.

The adapter matrix: `CHAMBERS_TEST_DATABASE=postgres` gives every server of the session its own fresh
PostgreSQL database (default `sqlite`: a file in its data dir), and `CHAMBERS_TEST_BUS=redis` its own
Redis key prefix (default `memory`: the in-process bus). CI runs the suite once each way.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import httpx
import pytest

from tests.support import services
from tests.support.fake_upstream import FakeUpstream
from tests.support.server import ServerProcess

STRICT = os.environ.get("CHAMBERS_TEST_STRICT") == "1"
TEST_DATABASE = os.environ.get("CHAMBERS_TEST_DATABASE") or "sqlite"
TEST_BUS = os.environ.get("CHAMBERS_TEST_BUS") or "memory"


def need(condition: bool, reason: str) -> None:
    """Skip when a service or tool is missing; in strict mode (CI) fail instead."""
    if condition:
        return
    if STRICT:
        pytest.fail(f"strict mode: {reason}")
    pytest.skip(reason)


def sandbox_backend() -> str:
    """bwrap where it is installed; the explicit `process` backend otherwise (never in strict mode)."""
    if shutil.which("bwrap"):
        return "bwrap"
    need(False, "bubblewrap (bwrap) is not installed")
    return "process"


def pytest_configure(config: pytest.Config) -> None:
    if TEST_DATABASE not in ("sqlite", "postgres"):
        raise pytest.UsageError(f"CHAMBERS_TEST_DATABASE={TEST_DATABASE!r}: use sqlite or postgres")
    if TEST_BUS not in ("memory", "redis"):
        raise pytest.UsageError(f"CHAMBERS_TEST_BUS={TEST_BUS!r}: use memory or redis")


def pytest_report_header(config: pytest.Config) -> str:
    return f"chambers servers: database={TEST_DATABASE} bus={TEST_BUS} strict={STRICT}"


def need_postgres() -> None:
    problem = services.postgres_problem()
    need(problem is None, problem or "")


def need_redis() -> None:
    problem = services.redis_problem()
    need(problem is None, problem or "")


def backend_env(given: Mapping[str, str] = {}) -> dict[str, str]:
    """Settings for one server's store and bus under the matrix: a fresh database, a fresh prefix.

    Settings a test gives explicitly (`given`) win: nothing is made for them.
    """
    env: dict[str, str] = {}
    if TEST_DATABASE == "postgres" and "CHAMBERS_DATABASE_URL" not in given:
        need_postgres()
        env["CHAMBERS_DATABASE_URL"] = services.create_database()
    if TEST_BUS == "redis" and "CHAMBERS_REDIS_URL" not in given:
        need_redis()
        env["CHAMBERS_REDIS_URL"] = services.REDIS_URL
        env["CHAMBERS_REDIS_KEY_PREFIX"] = services.redis_prefix()
    return env


@pytest.fixture(scope="session", autouse=True)
def _scale_out_cleanup() -> Iterator[None]:
    """Drop the PostgreSQL databases and Redis keys the session made (after every server stopped)."""
    yield
    problems = services.cleanup()
    if problems:
        print("\ncould not clean up:\n  " + "\n  ".join(problems))


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(autouse=True)
def _fresh_upstream(request: pytest.FixtureRequest) -> None:
    if "upstream" in request.fixturenames:
        request.getfixturevalue("upstream").reset()


def server_env(upstream: FakeUpstream, **extra: str) -> dict[str, str]:
    """Settings for one new server: providers at the fake upstream, and its store and bus (matrix).

    Call it once per ServerProcess: each call makes a fresh database and key prefix when the matrix
    asks for PostgreSQL or Redis, so servers stay isolated (restarts keep the same env, hence data).
    """
    env = {
        "OPENAI_API_KEY": "test-openai-key",
        "OPENAI_BASE_URL": upstream.openai_base_url,
        "ANTHROPIC_API_KEY": "test-anthropic-key",
        "ANTHROPIC_BASE_URL": upstream.anthropic_base_url,
        "CHAMBERS_SANDBOX_BACKEND": os.environ.get("CHAMBERS_SANDBOX_BACKEND") or sandbox_backend(),
        "CHAMBERS_IDLE_TIMEOUT_MIN_MS": "100",
        "CHAMBERS_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
    }
    env.update(backend_env(extra))
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream) -> Iterator[ServerProcess]:
    """One shared server for tests that need no special settings."""
    proc = ServerProcess(tmp_path_factory.mktemp("server"), env=server_env(upstream))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def make_server(tmp_path: Path, upstream: FakeUpstream) -> Iterator[object]:
    """A factory for a private server (own data dir, own settings); stopped after the test."""
    made: list[ServerProcess] = []

    def make(start: bool = True, **env: str) -> ServerProcess:
        proc = ServerProcess(tmp_path / f"server{len(made)}", env=server_env(upstream, **env))
        made.append(proc)
        return proc.start() if start else proc

    yield make
    for proc in made:
        proc.stop()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def admin(server: ServerProcess) -> Iterator[httpx.Client]:
    assert server.admin_key
    # Idle connections are dropped before uvicorn's 5 s keep-alive closes them (httpx keeps them 5 s too):
    # reusing one just as the server closes it is a `Connection reset by peer` nothing retries.
    limits = httpx.Limits(keepalive_expiry=2)
    with httpx.Client(
        base_url=server.url, headers=auth(server.admin_key), timeout=30, limits=limits
    ) as client:
        yield client


@pytest.fixture
async def aadmin(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    assert server.admin_key
    async with httpx.AsyncClient(base_url=server.url, headers=auth(server.admin_key), timeout=30) as client:
        yield client


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """On a failure, attach the tail of every server log the test touched."""
    report = yield
    if getattr(report, "failed", False) and call.when == "call":
        for name in ("server", "make_server"):
            if name in getattr(item, "fixturenames", ()):
                for proc in ServerProcess.instances:
                    report.sections.append((f"server {proc.url}", "".join(proc.output[-60:])))  # type: ignore[attr-defined]
                break
    return report
