"""Sandboxes: where an agent's tools run.

- `SessionSandbox`: what the built-in tools call (shell with persistent cwd/env, file tools).
- `BwrapWorkspaceBackend` (isolated, default on Linux) and `ProcessWorkspaceBackend` (no
  isolation, explicit opt-in): pydantic-ai `WorkspaceBackend`s underneath.
- `LocalSnapshotStore`: workspace + state snapshots.
- `bwrap_available()` / `bwrap_problem()`: can sandboxes start here?
"""

from chambers.sandbox.backend import SandboxBackend
from chambers.sandbox.bwrap import BwrapWorkspaceBackend, bwrap_available, bwrap_problem
from chambers.sandbox.limits import SandboxLimits
from chambers.sandbox.process import ProcessWorkspaceBackend
from chambers.sandbox.session import BackendName, SessionSandbox, ToolResult
from chambers.sandbox.shell_state import ShellState, write_state
from chambers.sandbox.snapshots import ImageNotFoundError, LocalSnapshotStore, SnapshotError
from chambers.sandbox.supervisor import SandboxStartError

__all__ = [
    "BackendName",
    "BwrapWorkspaceBackend",
    "ImageNotFoundError",
    "LocalSnapshotStore",
    "ProcessWorkspaceBackend",
    "SandboxBackend",
    "SandboxLimits",
    "SandboxStartError",
    "SessionSandbox",
    "ShellState",
    "SnapshotError",
    "ToolResult",
    "bwrap_available",
    "bwrap_problem",
    "write_state",
]
