"""The process backend: commands run as plain host processes in the workspace. It isolates nothing.

Only for an explicit opt-in (development machines without bubblewrap): commands see the whole host
as the server's user. They start in the workspace with a clean environment (no variable of the
server leaks in) and the CPU, memory and file-size limits; file tools stay confined to the workspace.
"""

from __future__ import annotations

from pathlib import Path

from chambers.sandbox.backend import BASE_PATH, SandboxBackend
from chambers.sandbox.supervisor import IO_DIR, SUPERVISOR_SCRIPT, Launch


class ProcessWorkspaceBackend(SandboxBackend):
    """A pydantic-ai workspace backend running commands as host subprocesses (no isolation)."""

    provider = "chambers-process"

    @property
    def owner(self) -> tuple[int, int] | None:
        return None

    def _view_root(self, host: Path) -> str:
        return str(host)

    def base_env(self, view_root: str) -> dict[str, str]:
        return {"PATH": BASE_PATH, "HOME": view_root, "LANG": "C.UTF-8", "TERM": "dumb"}

    def _launch(self, host: Path, runtime: Path) -> Launch:
        resolved = host.resolve()
        io = str(runtime / IO_DIR)
        argv = ["bash", "--noprofile", "--norc", "-c", SUPERVISOR_SCRIPT, "chambers-supervisor", io]
        env = self.base_env(str(resolved))
        return Launch(argv=argv, env=env, cwd=str(resolved), runtime_view=io)
