"""What the bubblewrap and the process backends share.

A backend owns one workspace directory, `<root>/<ref.id>`. Built without a ref, its first
operation creates a fresh directory and records the ref; built with one, it attaches to that
directory and raises `WorkspaceUnavailableError` when it is gone (or was replaced). File operations
act on the host side through `ConfinedFS`; commands run through a `Supervisor` started on first use.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import shlex
import shutil
import stat as st
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Self, TypeVar

import anyio
from pydantic_ai.workspaces import (
    CommandResult,
    FileEntry,
    SupportsCommands,
    SupportsFilesystem,
    SupportsRealpath,
    WorkspaceBackend,
    WorkspaceCommand,
    WorkspaceOutputLimitError,
    WorkspaceRef,
    WorkspaceTimeoutError,
    WorkspaceUnavailableError,
)
from pydantic_ai.workspaces.protocol import validate_timeout

from chambers.sandbox.confined import ConfinedFS
from chambers.sandbox.limits import MiB, SandboxLimits
from chambers.sandbox.output import Capture
from chambers.sandbox.quota import DiskQuota
from chambers.sandbox.supervisor import Execution, Launch, SandboxDiedError, Supervisor

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CAPTURE_LIMIT = 10 * MiB
"""Per stream, for `run()`: past it the command is stopped with `WorkspaceOutputLimitError`."""

_REF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_T = TypeVar("_T")


def validate_env(env: Mapping[str, str]) -> None:
    for name, value in env.items():
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise ValueError(f"invalid environment variable name: {name!r}")
        if not isinstance(value, str) or "\0" in value:
            raise ValueError(f"environment variable {name} must be a string without NUL characters")


def _command_script(command: WorkspaceCommand, *, shell: bool) -> str:
    if isinstance(command, str):
        if not shell:
            raise TypeError("a string command requires shell=True; pass an argv sequence otherwise")
        if "\0" in command:
            raise ValueError("command must not contain NUL characters")
        return command + "\n"
    if shell:
        raise TypeError("an argv sequence cannot be combined with shell=True; pass a single command string")
    argv = list(command)
    if not argv:
        raise ValueError("command must not be empty")
    for item in argv:
        if not isinstance(item, str) or "\0" in item:
            raise ValueError("argv items must be strings without NUL characters")
    return "exec -- " + shlex.join(argv) + "\n"


@dataclass
class _Env:
    host: Path
    identity: tuple[int, int]
    fs: ConfinedFS
    quota: DiskQuota


class SandboxBackend(WorkspaceBackend, SupportsCommands, SupportsFilesystem, SupportsRealpath, ABC):
    """Base of `BwrapWorkspaceBackend` and `ProcessWorkspaceBackend`."""

    provider: ClassVar[str]

    def __init__(
        self,
        root: Path,
        ref: WorkspaceRef | None = None,
        *,
        limits: SandboxLimits | None = None,
        runtime_root: Path | None = None,
    ) -> None:
        if ref is not None:
            if ref.provider != self.provider:
                raise ValueError(f"a {self.provider!r} backend cannot attach to a {ref.provider!r} workspace")
            if not _REF_ID.match(ref.id) or ref.id in (".", ".."):
                raise ValueError(f"invalid workspace id {ref.id!r}")
        self._root = Path(root).expanduser().absolute()
        self._ref = ref
        self._limits = limits or SandboxLimits()
        self._runtime_root = runtime_root
        self._lock = anyio.Lock()
        self._env: _Env | None = None
        self._supervisor: Supervisor | None = None

    @classmethod
    def for_directory(
        cls, workspace: Path, *, limits: SandboxLimits | None = None, runtime_root: Path | None = None
    ) -> Self:
        """A backend attached to an existing directory (its name becomes the ref id)."""
        workspace = Path(workspace).expanduser().absolute()
        ref = WorkspaceRef(provider=cls.provider, id=workspace.name)
        return cls(workspace.parent, ref, limits=limits, runtime_root=runtime_root)

    # ---- hooks --------------------------------------------------------------------------------

    @abstractmethod
    def _view_root(self, host: Path) -> str:
        """Where the workspace appears to commands."""

    @abstractmethod
    def _launch(self, host: Path, runtime: Path) -> Launch:
        """How to start the supervisor for this workspace."""

    @property
    @abstractmethod
    def owner(self) -> tuple[int, int] | None:
        """(uid, gid) that owns workspace files on the host, when it must be set explicitly."""

    @property
    def _owner_modes(self) -> bool:
        return False

    @property
    def _limit_processes(self) -> bool:
        return False

    @abstractmethod
    def base_env(self, view_root: str) -> dict[str, str]:
        """The environment every command starts with."""

    def _prepare(self, host: Path) -> None:
        """Called once when a workspace is first attached (in a worker thread)."""

    # ---- lifecycle ----------------------------------------------------------------------------

    @property
    def ref(self) -> WorkspaceRef | None:
        return self._ref

    @property
    def limits(self) -> SandboxLimits:
        return self._limits

    @property
    def sandbox_pid(self) -> int | None:
        """The host pid of the running sandbox (its supervisor), if one runs."""
        return None if self._supervisor is None else self._supervisor.pid

    def _check(self, env: _Env) -> None:
        try:
            info = os.stat(env.host)
        except FileNotFoundError:
            raise WorkspaceUnavailableError(f"workspace {self._describe()} no longer exists") from None
        if (info.st_dev, info.st_ino) != env.identity:
            raise WorkspaceUnavailableError(f"workspace {self._describe()} was replaced")

    def _describe(self) -> str:
        return repr(self._ref.id) if self._ref is not None else "(not created)"

    async def _ensure(self) -> _Env:
        env = self._env
        if env is None:
            async with self._lock:
                env = self._env
                if env is None:
                    env = self._env = await self._attach()
        self._check(env)
        return env

    async def _attach(self) -> _Env:
        if self._ref is None:
            self._root.mkdir(parents=True, exist_ok=True)
            name = f"ws-{uuid.uuid4().hex}"
            (self._root / name).mkdir(mode=0o755)
            # Recorded before anything else can fail, and kept even if the caller is cancelled.
            self._ref = WorkspaceRef(provider=self.provider, id=name)
        host = self._root / self._ref.id
        try:
            info = os.stat(host)
        except FileNotFoundError:
            raise WorkspaceUnavailableError(f"workspace {self._describe()} does not exist") from None
        if not st.S_ISDIR(info.st_mode):
            raise WorkspaceUnavailableError(f"workspace {self._describe()} is not a directory")
        resolved = host.resolve()
        await asyncio.to_thread(self._prepare, resolved)
        fs = ConfinedFS(resolved, self._view_root(resolved), owner=self.owner, owner_modes=self._owner_modes)
        quota = DiskQuota(resolved, self._limits.max_workspace_bytes)
        quota.refresh_soon()
        return _Env(host, (info.st_dev, info.st_ino), fs, quota)

    async def working_dir(self) -> str:
        env = await self._ensure()
        return env.fs.view_root

    async def host_dir(self) -> Path:
        """The workspace directory on the host (created on first use when built without a ref)."""
        return (await self._ensure()).host

    async def start(self) -> None:
        """Start the sandbox now rather than on the first command."""
        await self._supervised()

    async def close(self) -> None:
        """Stop the sandbox and every process in it; the workspace stays."""
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            await supervisor.stop()

    async def destroy(self) -> None:
        """Stop the sandbox and delete the workspace directory."""
        await self.close()
        env = self._env
        host = env.host if env is not None else (self._root / self._ref.id if self._ref else None)
        if host is not None:
            await asyncio.to_thread(_remove_tree, host)

    async def disk_usage(self) -> int:
        """Bytes in the workspace now (measured, not the last background measurement)."""
        env = await self._ensure()
        return await asyncio.to_thread(env.quota.refresh_now)

    async def quota_exceeded(self) -> bool:
        env = await self._ensure()
        return env.quota.exceeded

    # ---- files --------------------------------------------------------------------------------

    async def _fs(self, operation: Callable[[ConfinedFS], _T]) -> _T:
        env = await self._ensure()
        try:
            return await asyncio.to_thread(operation, env.fs)
        except FileNotFoundError:
            self._check(env)  # the whole workspace gone is not a missing file
            raise

    async def read_bytes(self, path: str) -> bytes:
        return await self._fs(lambda fs: fs.read_bytes(path))

    async def write_bytes(self, path: str, data: bytes) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("data must be bytes")
        size = len(data)
        if size > self._limits.max_file_bytes:
            raise OSError(
                27, f"file too large: {size} bytes (the limit is {self._limits.max_file_bytes})", path
            )
        env = await self._ensure()
        if env.quota.would_exceed(size):
            raise OSError(errno.EDQUOT, "workspace disk quota exceeded", path)
        await self._fs(lambda fs: fs.write_bytes(path, bytes(data)))
        env.quota.refresh_soon()

    async def stat(self, path: str) -> FileEntry:
        info = await self._fs(lambda fs: fs.stat(path))
        is_dir = st.S_ISDIR(info.st_mode)
        name = path.rstrip("/").rsplit("/", 1)[-1] or "/"
        return FileEntry(name=name, path=path, is_dir=is_dir, size=None if is_dir else info.st_size)

    async def list_dir(self, path: str) -> Sequence[FileEntry]:
        entries = await self._fs(lambda fs: fs.list_dir(path))
        base = path.rstrip("/") or ""
        return [
            FileEntry(name=entry.name, path=f"{base}/{entry.name}", is_dir=entry.is_dir, size=entry.size)
            for entry in entries
        ]

    async def make_dir(self, path: str) -> None:
        await self._fs(lambda fs: fs.make_dir(path))

    async def remove(self, path: str) -> None:
        await self._fs(lambda fs: fs.remove(path))
        env = self._env
        if env is not None:
            env.quota.refresh_soon()

    async def exists(self, path: str) -> bool:
        return await self._fs(lambda fs: fs.exists(path))

    async def realpath(self, path: str) -> str:
        return await self._fs(lambda fs: fs.realpath(path))

    async def confined(self) -> ConfinedFS:
        """The host-side file access of this workspace (blocking calls: run them in a thread)."""
        return (await self._ensure()).fs

    # ---- commands -----------------------------------------------------------------------------

    async def _supervised(self) -> tuple[_Env, Supervisor]:
        env = await self._ensure()
        if self._supervisor is None:
            host = env.host

            def launch(runtime: Path) -> Launch:
                return self._launch(host, runtime)

            self._supervisor = Supervisor(launch, owner=self.owner, runtime_root=self._runtime_root)
        return env, self._supervisor

    def _header(self, env: _Env) -> str:
        limits = self._limits
        file_kib = 0 if env.quota.exceeded else max(1, limits.max_file_bytes // 1024)
        lines = [
            "ulimit -HS -c 0 2>/dev/null",
            f"ulimit -HS -t {limits.cpu_seconds} 2>/dev/null",
            f"ulimit -HS -v {max(1, limits.memory_bytes // 1024)} 2>/dev/null",
            f"ulimit -HS -f {file_kib} 2>/dev/null",
        ]
        if self._limit_processes:
            lines.append(f"ulimit -HS -u {limits.max_processes} 2>/dev/null")
        return "\n".join(lines) + "\n"

    async def execute_script(
        self,
        body: str,
        *,
        timeout: float | None,
        capture_limit: int = CAPTURE_LIMIT,
        keep_tail: bool = False,
        side: bool = False,
        reap: bool = False,
    ) -> Execution:
        """Run a bash script under the sandbox's limits (the lower-level `run`).

        `timeout=None` means the limits' `command_timeout_s`. `reap` kills the command's
        background jobs when it exits (processes started with `setsid` survive). Raises
        `WorkspaceUnavailableError` when the workspace is gone; a sandbox that died mid-command
        gives exit code 137.
        """
        env, supervisor = await self._supervised()
        effective = self._limits.command_timeout_s if timeout is None else timeout

        def check_alive() -> None:
            self._check(env)

        try:
            execution = await supervisor.execute(
                self._header(env) + body,
                timeout=effective,
                stdout=Capture(capture_limit, keep_tail=keep_tail),
                stderr=Capture(capture_limit, keep_tail=keep_tail),
                side=side,
                reap=reap,
                check_alive=check_alive,
            )
        except WorkspaceUnavailableError:
            await self.close()
            raise
        except SandboxDiedError:
            self._check(env)
            died = Capture(capture_limit, keep_tail=keep_tail)
            died.feed(
                b"[the sandbox was terminated while the command ran; it restarts on the next command]\n"
            )
            execution = Execution(
                exit_code=137, stdout=Capture(capture_limit, keep_tail=keep_tail), stderr=died
            )
        finally:
            env.quota.refresh_soon()
        try:
            self._check(env)
        except WorkspaceUnavailableError:
            await self.close()
            raise
        return execution

    async def run(
        self,
        command: WorkspaceCommand,
        *,
        shell: bool = False,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        """Run a command in the sandbox; `timeout=None` applies the limits' `command_timeout_s`."""
        validate_timeout(timeout)
        script = _command_script(command, shell=shell)
        extra = dict(env or {})
        validate_env(extra)
        exports = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in extra.items())
        execution = await self.execute_script(exports + script, timeout=timeout)
        stdout = execution.stdout.data().decode("utf-8", errors="replace")
        stderr = execution.stderr.data().decode("utf-8", errors="replace")
        if execution.overflowed:
            raise WorkspaceOutputLimitError(
                f"command output exceeded {CAPTURE_LIMIT // MiB} MiB; redirect it to a file, read part of it",
                limit=CAPTURE_LIMIT,
                stdout=stdout[: 64 * 1024],
                stderr=stderr[: 64 * 1024],
            )
        if execution.timed_out or execution.exit_code is None:
            seconds = self._limits.command_timeout_s if timeout is None else timeout
            raise WorkspaceTimeoutError(
                f"command timed out after {seconds:g}s and was killed", stdout=stdout, stderr=stderr
            )
        return CommandResult(exit_code=execution.exit_code, stdout=stdout, stderr=stderr)


def _remove_tree(path: Path) -> None:
    def unlock(function: Callable[..., object], name: str, _: object) -> None:
        # A `chmod 000` directory inside must not stop the host from deleting the workspace.
        os.chmod(os.path.dirname(name) or ".", 0o700)
        function(name)

    if path.exists():
        shutil.rmtree(path, onerror=unlock)
