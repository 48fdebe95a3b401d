"""`SessionSandbox`: what the agent's built-in tools call.

Every method takes arguments straight from the model (untrusted: each one is validated) and
returns a `ToolResult`; a failure is a result with `ok=False` and a message the model can act on,
never an exception (cancellation excepted). Paths are relative to the workspace root; an absolute
path is accepted only inside the workspace (`/workspace/...` under bubblewrap).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import posixpath
import shlex
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

from pydantic_ai.workspaces import WorkspaceUnavailableError

from chambers.sandbox.backend import SandboxBackend
from chambers.sandbox.bwrap import BwrapWorkspaceBackend
from chambers.sandbox.confined import ConfinedFS, OutsideWorkspaceError
from chambers.sandbox.file_tools import ToolError, edit_text, list_entries, read_lines
from chambers.sandbox.limits import MiB, SandboxLimits
from chambers.sandbox.output import truncate_text
from chambers.sandbox.process import ProcessWorkspaceBackend
from chambers.sandbox.shell_state import (
    ShellState,
    StateError,
    build_script,
    load_state,
    parse_report,
    write_state,
)
from chambers.sandbox.supervisor import SandboxStartError

log = logging.getLogger(__name__)

BackendName = Literal["bwrap", "process"]
MAX_COMMAND_BYTES = 1 * MiB
MAX_PATH_CHARS = 4096
MAX_PATTERN_CHARS = 2000
GREP_MAX_MATCHES = 500
GREP_LINE_CHARS = 400
_T = TypeVar("_T")


@dataclass(frozen=True)
class ToolResult:
    ok: bool
    output: str
    truncated: bool = False


def _fail(message: str) -> ToolResult:
    return ToolResult(ok=False, output=f"error: {message}")


def _check_str(value: object, name: str, *, max_chars: int, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ToolError(f"{name} must be a string")
    if not value and not allow_empty:
        raise ToolError(f"{name} must not be empty")
    if len(value) > max_chars:
        raise ToolError(f"{name} is too long ({len(value)} characters; the limit is {max_chars})")
    if "\0" in value:
        raise ToolError(f"{name} must not contain NUL characters")
    return value


def _check_int(value: object, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ToolError(f"{name} must be an integer >= {minimum}")
    return value


def _os_error_message(error: OSError, shown: str) -> str:
    if isinstance(error, OutsideWorkspaceError):
        return f"{shown} leads outside the workspace (through a symlink or '..'); that is not allowed"
    if isinstance(error, FileNotFoundError):
        return f"{shown} does not exist"
    if isinstance(error, IsADirectoryError):
        return f"{shown} is a directory"
    if isinstance(error, NotADirectoryError):
        return f"a parent of {shown} is not a directory"
    if isinstance(error, PermissionError):
        return f"permission denied: {shown}"
    if error.errno == errno.ELOOP:
        return f"too many levels of symbolic links in {shown}"
    if error.errno in (errno.EFBIG, errno.EDQUOT, errno.ENOSPC):
        return f"{shown}: {error.strerror}"
    return f"{shown}: {error.strerror or error}"


class SessionSandbox:
    """One session's sandbox: a workspace directory, a shell whose cwd and environment persist, file tools.

    `workspace`: the host directory (created if missing). `state_path`: the JSON file that keeps
    the shell state (outside the workspace, so the sandbox cannot edit it). `backend`: "bwrap"
    (isolated) or "process" (no isolation; an explicit opt-in). The sandbox starts on first use.
    """

    def __init__(
        self,
        workspace: Path,
        state_path: Path,
        backend: BackendName = "bwrap",
        limits: SandboxLimits | None = None,
        *,
        runtime_root: Path | None = None,
    ) -> None:
        if backend not in ("bwrap", "process"):
            raise ValueError(f"unknown sandbox backend {backend!r}")
        self._workspace = Path(workspace).expanduser().absolute()
        self._state_path = Path(state_path).expanduser().absolute()
        if self._state_path.is_relative_to(self._workspace):
            raise ValueError("the state file must be outside the workspace")
        self._limits = limits or SandboxLimits()
        self._backend_name: BackendName = backend
        backend_class = BwrapWorkspaceBackend if backend == "bwrap" else ProcessWorkspaceBackend
        self._backend: SandboxBackend = backend_class.for_directory(
            self._workspace, limits=self._limits, runtime_root=runtime_root
        )
        self._state: ShellState | None = None
        self._closed = False
        self._made = False  # the workspace directory exists (made on first use)

    # ---- properties -------------------------------------------------------------------------

    @property
    def backend_name(self) -> BackendName:
        return self._backend_name

    @property
    def backend(self) -> SandboxBackend:
        """The pydantic-ai workspace backend underneath (for a `pydantic_ai.workspaces.Workspace`)."""
        return self._backend

    @property
    def workspace(self) -> Path:
        return self._workspace

    @property
    def state_path(self) -> Path:
        return self._state_path

    @property
    def limits(self) -> SandboxLimits:
        return self._limits

    @property
    def running(self) -> bool:
        """Whether the sandbox process is up (it starts on the first command)."""
        return self._backend.sandbox_pid is not None

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the sandbox now (otherwise the first command does). Raises if it cannot start."""
        if self._closed:
            raise RuntimeError("the sandbox is closed")
        await asyncio.to_thread(self._workspace.mkdir, parents=True, exist_ok=True)
        await self._backend.start()

    async def working_dir(self) -> str:
        """Where the workspace appears to commands (`/workspace` under bubblewrap)."""
        return (await self._ready()).view_root

    async def close(self) -> None:
        """Stop the sandbox and every process in it. The workspace and the state file stay."""
        self._closed = True
        await self._backend.close()

    async def __aenter__(self) -> SessionSandbox:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ToolError("the sandbox is closed")

    # ---- state ------------------------------------------------------------------------------

    def _load(self) -> ShellState:
        if self._state is None:
            try:
                self._state = load_state(self._state_path)
            except StateError as error:
                log.warning("ignoring a broken shell state file: %s", error)
                self._state = ShellState()
        return self._state

    def shell_state(self) -> dict[str, Any]:
        """The persisted shell state (see `chambers.sandbox.shell_state` for the format)."""
        return self._load().to_json()

    # ---- plumbing ---------------------------------------------------------------------------

    async def _run_tool(self, work: Callable[[], Awaitable[ToolResult]]) -> ToolResult:
        try:
            self._check_open()
            return await work()
        except ToolError as error:
            return _fail(str(error))
        except WorkspaceUnavailableError:
            return _fail("the workspace is no longer available")
        except SandboxStartError as error:
            return _fail(f"the sandbox could not start: {error}")
        except OSError as error:
            return _fail(error.strerror or str(error))
        except Exception:
            log.exception("sandbox tool failed")
            return _fail("internal error in the sandbox tool")

    async def _ready(self) -> ConfinedFS:
        if not self._made:
            await asyncio.to_thread(self._workspace.mkdir, parents=True, exist_ok=True)
            self._made = True
        return await self._backend.confined()

    async def _files(self, path: object, operation: Callable[[ConfinedFS, str, str], _T]) -> _T:
        """Validate `path`, then run `operation(fs, view_path, shown_path)` in a thread."""
        fs = await self._ready()
        view, shown = self._view_path(path, fs.view_root)
        try:
            return await asyncio.to_thread(operation, fs, view, shown)
        except OSError as error:
            if isinstance(error, FileNotFoundError) and not await asyncio.to_thread(self._workspace.is_dir):
                raise WorkspaceUnavailableError("the workspace is gone") from error
            raise ToolError(_os_error_message(error, shown)) from error

    @staticmethod
    def _view_path(path: object, root: str) -> tuple[str, str]:
        """The sandbox path for a model-given path, and how to show it; refuses escapes as text."""
        text = _check_str(path, "path", max_chars=MAX_PATH_CHARS)
        if posixpath.isabs(text):
            view = posixpath.normpath(text)
            if view != root and not view.startswith(root.rstrip("/") + "/"):
                raise ToolError(
                    f"absolute path {text!r} is outside the workspace; use a path relative to the "
                    f"workspace root ({root})"
                )
        else:
            view = posixpath.normpath(posixpath.join(root, text))
            if view != root and not view.startswith(root.rstrip("/") + "/"):
                raise ToolError(f"path {text!r} leaves the workspace; '..' may not go above its root")
        shown = "." if view == root else posixpath.relpath(view, root)
        return view, shown

    # ---- shell ------------------------------------------------------------------------------

    async def shell(self, command: str, timeout: float | None = None) -> ToolResult:
        """Run `command` with bash in the sandbox; cwd and exported variables persist between calls.

        stdout and stderr are merged; the result ends with `[exit code: N]`. Background jobs
        (`cmd &`) are killed when the command returns: to keep a process running, detach it
        (`setsid cmd > log 2>&1 &`). `timeout` (seconds) is capped at the limits' command timeout.
        """
        return await self._run_tool(lambda: self._shell(command, timeout))

    async def _shell(self, command: object, timeout: object) -> ToolResult:
        text = _check_str(command, "command", max_chars=MAX_COMMAND_BYTES)
        limit = self._limits.command_timeout_s
        if timeout is not None:
            if (
                isinstance(timeout, bool)
                or not isinstance(timeout, (int, float))
                or not math.isfinite(timeout)
            ):
                raise ToolError("timeout must be a number of seconds")
            if timeout <= 0:
                raise ToolError("timeout must be positive")
            limit = min(float(timeout), limit)
        await self._ready()
        state = self._load()
        view_root = await self._backend.working_dir()
        execution = await self._backend.execute_script(
            build_script(text, state, view_root),
            timeout=limit,
            capture_limit=self._limits.output_limit_bytes,
            keep_tail=True,
            side=True,
            reap=True,
        )
        if execution.side:
            try:
                new_state = parse_report(execution.side, view_root, self._backend.base_env(view_root))
            except StateError as error:
                log.warning("shell state not kept: %s", error)
            else:
                if new_state != state:
                    await asyncio.to_thread(write_state, self._state_path, new_state)
                    self._state = new_state
        output = execution.stdout.text()
        if execution.stderr.head or execution.stderr.tail:
            output += execution.stderr.text()
        truncated = execution.stdout.dropped > 0 or execution.stderr.dropped > 0
        if output and not output.endswith("\n"):
            output += "\n"
        if execution.timed_out or execution.exit_code is None:
            output += f"[timed out after {limit:g}s; the command and its child processes were killed]"
            ok = False
        else:
            output += f"[exit code: {execution.exit_code}]"
            ok = execution.exit_code == 0
        if await self._backend.quota_exceeded():
            output += (
                f"\n[the workspace is over its disk quota ({self._limits.max_workspace_bytes} bytes): "
                "files cannot grow until you delete some]"
            )
        return ToolResult(ok=ok, output=output, truncated=truncated)

    # ---- files ------------------------------------------------------------------------------

    async def read_file(self, path: str, offset_line: int = 0, limit_lines: int | None = None) -> ToolResult:
        """Read a text file (lines `offset_line` .. `offset_line + limit_lines`, 0-based offset)."""

        async def work() -> ToolResult:
            offset = _check_int(offset_line, "offset_line", minimum=0)
            limit = None if limit_lines is None else _check_int(limit_lines, "limit_lines", minimum=1)
            budget = self._limits.output_limit_bytes
            text = await self._files(
                path, lambda fs, view, shown: read_lines(fs, view, shown, offset, limit, budget)
            )
            return ToolResult(ok=True, output=text.text, truncated=text.truncated)

        return await self._run_tool(work)

    async def write_file(self, path: str, content: str) -> ToolResult:
        """Create or replace a file (parents are created)."""

        async def work() -> ToolResult:
            data = _check_str(
                content, "content", max_chars=self._limits.max_file_bytes, allow_empty=True
            ).encode()
            if len(data) > self._limits.max_file_bytes:
                raise ToolError(f"content is too large ({len(data)} bytes)")
            fs = await self._ready()
            view, shown = self._view_path(path, fs.view_root)
            await self._write(view, shown, data)
            return ToolResult(ok=True, output=f"wrote {len(data)} bytes to {shown}")

        return await self._run_tool(work)

    async def _write(self, view: str, shown: str, data: bytes) -> None:
        try:
            await self._backend.write_bytes(view, data)
        except OSError as error:
            if error.errno == errno.EDQUOT:
                quota = self._limits.max_workspace_bytes
                raise ToolError(
                    f"cannot write {shown}: the workspace disk quota ({quota} bytes) would be exceeded; "
                    "delete files first"
                ) from error
            raise ToolError(_os_error_message(error, shown)) from error

    async def edit_file(self, path: str, old: str, new: str, replace_all: bool = False) -> ToolResult:
        """Replace the exact text `old` by `new` (once, unless `replace_all`)."""

        async def work() -> ToolResult:
            old_text = _check_str(old, "old", max_chars=self._limits.max_file_bytes)
            new_text = _check_str(new, "new", max_chars=self._limits.max_file_bytes, allow_empty=True)
            if not isinstance(replace_all, bool):
                raise ToolError("replace_all must be true or false")
            if old_text == new_text:
                raise ToolError("old and new are the same; nothing to change")
            fs = await self._ready()
            view, shown = self._view_path(path, fs.view_root)
            data, count = await self._files(
                path, lambda fs, view, shown: edit_text(fs, view, shown, old_text, new_text, replace_all)
            )
            await self._write(view, shown, data)
            return ToolResult(
                ok=True, output=f"replaced {count} occurrence{'s' if count > 1 else ''} in {shown}"
            )

        return await self._run_tool(work)

    async def list_files(self, path: str = ".", recursive: bool = False) -> ToolResult:
        """List a directory: `dir/`, `file (N bytes)`, `link -> target`."""

        async def work() -> ToolResult:
            if not isinstance(recursive, bool):
                raise ToolError("recursive must be true or false")
            text = await self._files(path, lambda fs, view, shown: list_entries(fs, view, shown, recursive))
            output, cut = truncate_text(text.text, self._limits.output_limit_bytes)
            return ToolResult(ok=True, output=output, truncated=text.truncated or cut)

        return await self._run_tool(work)

    async def grep(self, pattern: str, path: str = ".", glob: str | None = None) -> ToolResult:
        """Search files for a regular expression (Perl syntax); lines come back as `file:line: text`."""
        return await self._run_tool(lambda: self._grep(pattern, path, glob))

    async def _grep(self, pattern: object, path: object, glob: object) -> ToolResult:
        regex = _check_str(pattern, "pattern", max_chars=MAX_PATTERN_CHARS)
        include = None if glob is None else _check_str(glob, "glob", max_chars=256)
        fs = await self._ready()
        _, shown = self._view_path(path, fs.view_root)
        # Resolved (and refused when it escapes) before the search, which runs inside the sandbox:
        # a pathological pattern then costs the sandbox's CPU and time limit, not the server's.
        await self._files(path, lambda fs, view, shown: fs.stat(view))
        argv = ["grep", "-rnIPZ", "--color=never", "-m", str(GREP_MAX_MATCHES)]
        if include is not None:
            argv.append(f"--include={include}")
        argv += ["-e", regex, "--", "." if shown == "." else shown]
        execution = await self._backend.execute_script(
            "exec -- " + shlex.join(argv) + "\n",
            timeout=self._limits.command_timeout_s,
            capture_limit=4 * self._limits.output_limit_bytes,
            keep_tail=False,
            reap=True,
        )
        if execution.timed_out or execution.exit_code is None:
            raise ToolError(f"grep timed out after {self._limits.command_timeout_s:g}s")
        if execution.exit_code == 1:
            return ToolResult(ok=True, output="no matches")
        if execution.exit_code != 0:
            message = execution.stderr.data().decode("utf-8", errors="replace").strip()
            raise ToolError(f"grep failed: {message or f'exit code {execution.exit_code}'}")
        return self._format_matches(execution.stdout.data(), execution.stdout.overflowed)

    def _format_matches(self, raw: bytes, overflowed: bool) -> ToolResult:
        lines: list[str] = []
        for record in raw.decode("utf-8", errors="replace").split("\n"):
            name, sep, rest = record.partition("\0")
            if not sep:
                continue
            number, _, text = rest.partition(":")
            name = name[2:] if name.startswith("./") else name
            if len(text) > GREP_LINE_CHARS:
                text = text[:GREP_LINE_CHARS] + " [...]"
            lines.append(f"{name}:{number}: {text}")
            if len(lines) >= GREP_MAX_MATCHES:
                break
        cut = overflowed or len(lines) >= GREP_MAX_MATCHES
        output = "\n".join(lines)
        if cut:
            output += "\n[... more matches not shown; narrow the pattern, path or glob]"
        output, truncated = truncate_text(output, self._limits.output_limit_bytes)
        return ToolResult(ok=True, output=output, truncated=cut or truncated)
