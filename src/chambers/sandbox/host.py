"""SessionSandboxes: the SandboxHost port on SessionSandbox and a SnapshotStore.

Mechanics only (where workspaces live, starting, snapshotting, restoring); the session rules (status,
billing, events) are core's, told through the `on_started` / `on_reused` callbacks.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from chambers.core.ids import is_valid_id
from chambers.core.loop import ToolExecutor, ToolOutcome, ToolSpec
from chambers.sandbox.bwrap import bwrap_problem
from chambers.sandbox.limits import SandboxLimits
from chambers.sandbox.session import BackendName, SessionSandbox
from chambers.sandbox.shell_state import write_state
from chambers.sandbox.snapshots import SnapshotStore
from chambers.sandbox.tools import BUILTIN_TOOLS, run_tool

log = logging.getLogger("chambers.sandbox")

Notify = Callable[[str, str], Awaitable[None]]


async def _ignore(_session_id: str, _turn_id: str) -> None:
    return None


class SessionSandboxes:
    """Every session's sandbox in this process: `<root>/<session id>/workspace` plus its shell state."""

    def __init__(
        self,
        root: Path,
        snapshots: SnapshotStore,
        backend: BackendName,
        limits: SandboxLimits,
        *,
        on_started: Notify = _ignore,
        on_reused: Notify = _ignore,
    ) -> None:
        self.root = root
        self.snapshots = snapshots
        self.backend: BackendName = backend
        self.limits = limits
        self.on_started = on_started
        self.on_reused = on_reused
        self.problem = bwrap_problem() if backend == "bwrap" else None
        self._live: dict[str, SessionSandbox] = {}
        self._served: dict[str, str] = {}  # session -> the last turn that used the sandbox
        self._starting: dict[str, asyncio.Lock] = {}

    def _dir(self, session_id: str) -> Path:
        if not is_valid_id(session_id, "chat") and not is_valid_id(session_id, "run"):
            raise ValueError(f"not a session id: {session_id!r}")
        return self.root / session_id

    def workspace(self, session_id: str) -> Path:
        return self._dir(session_id) / "workspace"

    def _state_path(self, session_id: str) -> Path:
        return self._dir(session_id) / "shell.json"

    def is_alive(self, session_id: str) -> bool:
        return session_id in self._live

    def has_workspace(self, session_id: str) -> bool:
        return self.workspace(session_id).exists()

    def readiness(self) -> dict[str, Any]:
        """For /readyz: which backend runs, and whether it can."""
        check: dict[str, Any] = {"ok": self.problem is None, "backend": self.backend, "live": len(self._live)}
        if self.backend == "process":
            check["warning"] = "sandbox backend 'process' runs tools WITHOUT isolation"
        if self.problem:
            check["error"] = self.problem
        return check

    async def tools(
        self, session_id: str, turn_id: str, network: bool = False
    ) -> tuple[list[ToolSpec], ToolExecutor]:
        """The built-in tools, bound to the session's sandbox; it starts on the first call."""

        async def execute(name: str, args: dict[str, Any]) -> ToolOutcome:
            if self.problem is not None:
                return ToolOutcome(ok=False, output=f"tools are unavailable: {self.problem}")
            try:
                sandbox = await self._ensure(session_id, turn_id, network)
            except Exception as exc:
                log.warning("sandbox of %s failed to start: %s", session_id, exc)
                return ToolOutcome(ok=False, output=f"the sandbox could not start: {exc}")
            return await run_tool(sandbox, name, args)

        return list(BUILTIN_TOOLS), execute

    async def start(self, session_id: str, turn_id: str, network: bool = False) -> None:
        """Start eagerly (CHAMBERS_SANDBOX_EAGER)."""
        if self.problem is None:
            await self._ensure(session_id, turn_id, network)

    async def _ensure(self, session_id: str, turn_id: str, network: bool) -> SessionSandbox:
        sandbox = self._live.get(session_id)
        if sandbox is not None:
            if self._served.get(session_id) != turn_id:
                self._served[session_id] = turn_id
                await self.on_reused(session_id, turn_id)
            return sandbox
        lock = self._starting.setdefault(session_id, asyncio.Lock())
        async with lock:
            sandbox = self._live.get(session_id)
            if sandbox is None:
                limits = (
                    self.limits if self.limits.network == network else _with_network(self.limits, network)
                )
                sandbox = SessionSandbox(
                    self.workspace(session_id), self._state_path(session_id), self.backend, limits
                )
                await sandbox.start()
                self._live[session_id] = sandbox
                self._served[session_id] = turn_id
                await self.on_started(session_id, turn_id)
        return sandbox

    async def snapshot(self, session_id: str, *, stop: bool) -> str | None:
        """Archive the workspace and shell state; stop the sandbox when `stop`. None if there is nothing."""
        sandbox = self._live.pop(session_id, None) if stop else self._live.get(session_id)
        self._served.pop(session_id, None) if stop else None
        if sandbox is not None and stop:
            await sandbox.close()
        workspace = self.workspace(session_id)
        if not workspace.exists():
            return None
        state: dict[str, Any] = {}
        state_path = self._state_path(session_id)
        if state_path.exists():
            state["shell"] = sandbox.shell_state() if sandbox is not None else _read_json(state_path)
        return await self.snapshots.save(workspace, state)

    async def discard(self, session_id: str) -> None:
        """Remove the stopped session's workspace from disk (its snapshot holds it)."""
        if session_id in self._live:
            return
        await asyncio.to_thread(shutil.rmtree, self._dir(session_id), True)

    async def restore(self, session_id: str, image_id: str) -> None:
        """Recreate the workspace and shell state from a snapshot."""
        workspace = self.workspace(session_id)
        workspace.mkdir(parents=True, exist_ok=True)
        state = await self.snapshots.restore(image_id, workspace)
        shell = state.get("shell")
        if shell:
            await asyncio.to_thread(write_state, self._state_path(session_id), shell)

    async def close(self) -> None:
        """Stop every sandbox (workspaces stay on disk: sessions resume from them after a restart)."""
        live, self._live = self._live, {}
        for sandbox in live.values():
            try:
                await sandbox.close()
            except Exception:
                log.exception("could not stop a sandbox")


def _with_network(limits: SandboxLimits, network: bool) -> SandboxLimits:
    from dataclasses import replace

    return replace(limits, network=network)


def _read_json(path: Path) -> Any:
    import json

    return json.loads(path.read_text())
