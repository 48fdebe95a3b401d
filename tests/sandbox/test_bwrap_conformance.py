"""pydantic-ai's `WorkspaceBackendSuite`, every rule, against both backends.

The suite is written for the anyio pytest plugin (`pytestmark = pytest.mark.anyio`); the repo runs
pytest-asyncio in auto mode. pytest-asyncio runs the (async) tests and fixtures on its loop; the
`anyio_backend` fixture below pins anyio's side to asyncio so both plugins agree.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from pydantic_ai.workspaces import WorkspaceBackend, WorkspaceRef
from pydantic_ai.workspaces.conformance import WorkspaceBackendSuite

from chambers.sandbox import BwrapWorkspaceBackend, ProcessWorkspaceBackend, SandboxBackend


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Suite(WorkspaceBackendSuite):
    backend_class: type[SandboxBackend]

    @pytest.fixture
    def made(self) -> list[SandboxBackend]:
        return []

    @pytest.fixture
    async def backend(self, scratch: Path, made: list[SandboxBackend]) -> AsyncIterator[WorkspaceBackend]:
        backend = self.backend_class(scratch / "workspaces")
        made.append(backend)
        yield backend
        for each in made:
            await each.close()

    @pytest.fixture
    def fresh_backend(self, scratch: Path, made: list[SandboxBackend]) -> Callable[[], WorkspaceBackend]:
        def build() -> WorkspaceBackend:
            backend = self.backend_class(scratch / "workspaces")
            made.append(backend)
            return backend

        return build

    @pytest.fixture
    def attach_backend(
        self, scratch: Path, made: list[SandboxBackend]
    ) -> Callable[[WorkspaceRef], WorkspaceBackend]:
        def attach(ref: WorkspaceRef) -> WorkspaceBackend:
            backend = self.backend_class(scratch / "workspaces", ref)
            made.append(backend)
            return backend

        return attach

    @pytest.fixture
    def destroy_environment(self) -> Callable[[WorkspaceBackend], Awaitable[None]]:
        async def destroy(backend: WorkspaceBackend) -> None:
            # From outside, as an operator would: the directory goes; the backend must notice.
            assert isinstance(backend, SandboxBackend)
            shutil.rmtree(await backend.host_dir())

        return destroy


@pytest.mark.bwrap
class TestBwrapBackend(_Suite):
    backend_class = BwrapWorkspaceBackend


class TestProcessBackend(_Suite):
    backend_class = ProcessWorkspaceBackend
