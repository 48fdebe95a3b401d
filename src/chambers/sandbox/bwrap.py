"""The bubblewrap backend: every command runs in the session's own sandbox.

One bubblewrap sandbox per session (started on the first command, kept until `close`): its own
user, mount, PID, IPC, UTS and network namespaces (the network is shared only when the limits
allow it), a cleared environment, the host's system directories read-only, its own /proc, /dev and
a size-limited tmpfs /tmp, and only the workspace writable, at /workspace. When the server runs as
root the sandbox runs as an unprivileged host user (65534 by default) so that the kernel enforces
the process limit (RLIMIT_NPROC does not apply to root); inside it is uid 1000.
"""

from __future__ import annotations

import functools
import os
import shutil
import stat
import subprocess
from pathlib import Path

from pydantic_ai.workspaces import WorkspaceRef

from chambers.sandbox.backend import BASE_PATH, SandboxBackend
from chambers.sandbox.limits import SandboxLimits
from chambers.sandbox.supervisor import IO_DIR, SUPERVISOR_SCRIPT, Launch, SandboxStartError

WORKSPACE = "/workspace"
RUNTIME = "/run/chambers"
SANDBOX_UID = 1000
"""The uid (and gid) commands see inside the sandbox."""
DEFAULT_HOST_USER = (65534, 65534)
"""The host uid/gid the sandbox runs as when the server runs as root."""
SHM_BYTES = 64 * 1024 * 1024
"""Size of the sandbox's /dev/shm."""
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32", "/etc")
_BIND_THEN = """
mount --bind -- "$1" "$2" || exit 111
shift 2
exec "$@"
"""
"""Run as root in a private mount namespace: bind the workspace where the sandbox user can reach it."""


def find_bwrap() -> str | None:
    return shutil.which("bwrap")


@functools.cache
def _features(bwrap: str) -> frozenset[str]:
    try:
        text = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    return frozenset(flag for flag in ("--disable-userns", "--size") if flag in text)


def _system_mounts() -> list[str]:
    args: list[str] = []
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


def _reachable(path: Path, user: tuple[int, int]) -> bool:
    """Whether `user` may pass every directory above `path` (bubblewrap resolves the path as that user)."""
    for directory in path.parents:
        try:
            info = os.stat(directory)
        except OSError:
            return False
        if info.st_uid == user[0]:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid == user[1]:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return False
    return True


def _host_user() -> tuple[int, int] | None:
    return DEFAULT_HOST_USER if os.geteuid() == 0 else None


@functools.cache
def bwrap_problem() -> str | None:
    """Why sandboxes cannot start here (None when bubblewrap works). Runs a tiny sandbox once."""
    bwrap = find_bwrap()
    if bwrap is None:
        return "bubblewrap (bwrap) is not installed"
    user = _host_user()
    argv = [bwrap, "--unshare-all", "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)]
    argv += ["--die-with-parent", "--new-session", "--clearenv", "--setenv", "PATH", BASE_PATH]
    argv += [*_system_mounts(), "--proc", "/proc", "--dev", "/dev", "--", "true"]
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=30,
            user=None if user is None else user[0],
            group=None if user is None else user[1],
            extra_groups=None if user is None else [],
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"bubblewrap does not run: {error}"
    if result.returncode != 0:
        return f"bubblewrap does not run: {result.stderr.strip() or f'exit status {result.returncode}'}"
    return None


def bwrap_available() -> bool:
    """Whether sandboxes can start here (bwrap installed and user namespaces allowed)."""
    return bwrap_problem() is None


class BwrapWorkspaceBackend(SandboxBackend):
    """A pydantic-ai workspace backend whose commands run in a bubblewrap sandbox.

    `root` holds the workspaces (`<root>/<ref.id>`); see `SandboxBackend`. `host_user`: the host
    (uid, gid) the sandbox runs as when the server is root (default 65534); ignored otherwise.
    """

    provider = "chambers-bwrap"

    def __init__(
        self,
        root: Path,
        ref: WorkspaceRef | None = None,
        *,
        limits: SandboxLimits | None = None,
        runtime_root: Path | None = None,
        host_user: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(root, ref, limits=limits, runtime_root=runtime_root)
        if os.geteuid() == 0:
            user = host_user or DEFAULT_HOST_USER
            if user[0] == 0 or user[1] == 0:
                raise ValueError("the sandbox must not run as the host's root user")
            self._host_user: tuple[int, int] | None = user
        else:
            self._host_user = None

    @property
    def owner(self) -> tuple[int, int] | None:
        return self._host_user

    @property
    def _owner_modes(self) -> bool:
        return self._host_user is not None

    @property
    def _limit_processes(self) -> bool:
        return True

    def _view_root(self, host: Path) -> str:
        return WORKSPACE

    def base_env(self, view_root: str) -> dict[str, str]:
        return {"PATH": BASE_PATH, "HOME": WORKSPACE, "LANG": "C.UTF-8", "TERM": "dumb"}

    def _prepare(self, host: Path) -> None:
        owner = self._host_user
        if owner is None or os.stat(host).st_uid == owner[0]:
            return
        # First use of a directory made by someone else (or restored by root): give it to the sandbox.
        os.chown(host, *owner)
        for directory, dirs, files in os.walk(host):
            for name in dirs + files:
                os.chown(os.path.join(directory, name), *owner, follow_symlinks=False)

    def _launch(self, host: Path, runtime: Path) -> Launch:
        bwrap = find_bwrap()
        if bwrap is None:
            raise FileNotFoundError("bubblewrap (bwrap) is not installed")
        limits = self.limits
        argv = [bwrap, "--unshare-all", "--unshare-user"]
        if limits.network:
            argv.append("--share-net")
        if "--disable-userns" in _features(bwrap):
            argv.append("--disable-userns")
        argv += ["--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--hostname", "sandbox"]
        argv += ["--die-with-parent", "--new-session", "--clearenv"]
        for name, value in self.base_env(WORKSPACE).items():
            argv += ["--setenv", name, value]
        argv += _system_mounts()
        argv += ["--proc", "/proc", "--dev", "/dev"]
        # tmpfs lives in the host's memory: every writable one gets a size.
        sized = "--size" in _features(bwrap)
        argv += [*(["--size", str(limits.max_file_bytes)] if sized else []), "--tmpfs", "/tmp"]  # noqa: S108
        argv += [*(["--size", str(SHM_BYTES)] if sized else []), "--tmpfs", "/dev/shm"]  # noqa: S108
        io = runtime / IO_DIR
        user = self._host_user
        if user is not None and not _reachable(io, user):
            raise SandboxStartError(
                f"the sandbox user {user[0]} cannot reach the runtime directory {runtime}: "
                "choose a runtime_root whose parent directories others may pass (o+x), like /tmp"
            )
        helper = user is not None and not _reachable(host, user)
        if not helper:
            # bubblewrap runs as a user that can reach the workspace (the server's own, or the
            # sandbox user when every directory above the workspace lets others pass).
            argv += ["--bind", str(host), WORKSPACE, "--ro-bind", str(io), RUNTIME]
        else:
            # The sandbox user cannot pass the server's private directories: a private mount
            # namespace (made as root) first binds the workspace below the runtime directory,
            # which that user can reach, then drops to the sandbox user.
            mountpoint = runtime / "ws"
            mountpoint.mkdir(mode=0o755)
            argv += ["--bind", str(mountpoint), WORKSPACE, "--ro-bind", str(io), RUNTIME]
        # The new root and /dev are (unsized) tmpfs owned by the sandbox user: make them read-only.
        argv += ["--remount-ro", "/dev", "--remount-ro", "/"]
        argv += ["--chdir", WORKSPACE, "--", "bash", "--noprofile", "--norc", "-c", SUPERVISOR_SCRIPT]
        argv += ["chambers-supervisor", RUNTIME]
        if user is not None:
            drop = ["setpriv", f"--reuid={user[0]}", f"--regid={user[1]}", "--clear-groups", "--"]
            if helper:
                argv = [
                    *["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _BIND_THEN, "sh"],
                    *[str(host), str(runtime / "ws"), *drop, *argv],
                ]
            else:
                argv = [*drop, *argv]
        return Launch(argv=argv, env={"PATH": BASE_PATH}, cwd="/", runtime_view=RUNTIME)
