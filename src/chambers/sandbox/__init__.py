"""Sandboxes: where an agent's tools run.

- `SessionSandbox`: what the built-in tools call (shell with persistent cwd/env, file tools).
- `BwrapWorkspaceBackend` (isolated, default on Linux) and `ProcessWorkspaceBackend` (no
  isolation, explicit opt-in): pydantic-ai `WorkspaceBackend`s underneath.
- `SnapshotStore`: where workspace + state snapshots live; `LocalSnapshotStore` (a directory, the
  default) and `S3SnapshotStore` (S3-compatible object storage, in `chambers.sandbox.s3_snapshots`,
  not imported here so boto3 loads only when it is used).
- `bwrap_available()` / `bwrap_problem()`: can sandboxes start here?
"""

from chambers.sandbox.backend import SandboxBackend
from chambers.sandbox.bwrap import BwrapWorkspaceBackend, bwrap_available, bwrap_problem
from chambers.sandbox.limits import SandboxLimits
from chambers.sandbox.process import ProcessWorkspaceBackend
from chambers.sandbox.session import BackendName, SessionSandbox, ToolResult
from chambers.sandbox.shell_state import ShellState, write_state
from chambers.sandbox.snapshots import (
    ImageNotFoundError,
    LocalSnapshotStore,
    SnapshotError,
    SnapshotStore,
    validate_image_id,
)
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
    "SnapshotStore",
    "ToolResult",
    "bwrap_available",
    "bwrap_problem",
    "validate_image_id",
    "write_state",
]
