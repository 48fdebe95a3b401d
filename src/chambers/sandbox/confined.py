"""Host-side file access confined to one workspace directory.

Paths are given as the sandbox sees them (`/workspace/src/app.py` under bubblewrap). They are
resolved one component at a time while holding an open descriptor of each directory, reading
symlinks as the sandbox would (an absolute target starts again at the sandbox's `/`), and never
letting the kernel follow a link on its own (`O_NOFOLLOW`, `*at` calls). So a link or a `..`
that leads outside the workspace is refused, and the sandbox swapping a directory for a link
mid-operation cannot redirect a host-side write: the walk never re-reads a path it already checked.

This runs in worker threads (every call blocks); it is used by the backends and `SessionSandbox`.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import stat as st
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_MAX_LINKS = 40
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class OutsideWorkspaceError(PermissionError):
    """A path resolves (after symlinks) outside the workspace."""


@dataclass(frozen=True)
class Entry:
    """One directory entry, with the type and size of what a symlink leads to."""

    name: str
    is_dir: bool
    is_symlink: bool
    size: int | None


@dataclass
class _Target:
    """Where a resolved path lives: `name` inside the directory `parent_fd`, or the root itself."""

    parts: list[str]
    parent_fd: int
    name: str | None


class _Walk:
    """The state of one resolution: lexical components and a descriptor per directory below the root."""

    def __init__(self, fs: ConfinedFS) -> None:
        self.fs = fs
        self.parts: list[str] = []
        self.fds: list[int] = []  # fds[0] is the root once `parts` reaches it
        self.missing_at: int | None = None  # depth of the first component that does not exist
        self.last_named = False

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()

    def inside(self) -> bool:
        root = self.fs.root_parts
        return len(self.parts) >= len(root) and self.parts[: len(root)] == root

    def pop(self) -> None:
        depth = len(self.parts)
        self.parts.pop()
        root_depth = len(self.fs.root_parts)
        if depth >= root_depth and len(self.fds) > depth - root_depth:
            os.close(self.fds.pop())
        if self.missing_at is not None and len(self.parts) < self.missing_at:
            self.missing_at = None

    def restart(self) -> None:
        self.close()
        self.parts = []
        self.missing_at = None


class ConfinedFS:
    """File operations on `host_root`, addressed by paths under `view_root`.

    `owner`: (uid, gid) given to files and directories this creates (the sandbox's user when the
    server runs as root). `owner_modes`: check the owner permission bits the way the kernel would
    for the sandbox's user (root bypasses them, so without this a `chmod 000` inside would not stop
    a host-side read).
    """

    def __init__(
        self,
        host_root: Path,
        view_root: str,
        *,
        owner: tuple[int, int] | None = None,
        owner_modes: bool = False,
    ) -> None:
        if not posixpath.isabs(view_root) or posixpath.normpath(view_root) != view_root:
            raise ValueError(f"view_root must be a normalized absolute path, got {view_root!r}")
        self.host_root = host_root
        self.view_root = view_root
        self.root_parts = [part for part in view_root.split("/") if part]
        self.owner = owner
        self.owner_modes = owner_modes
        self._locks: dict[str, tuple[threading.Lock, int]] = {}
        self._locks_guard = threading.Lock()

    # ---- resolution -------------------------------------------------------------------------

    def _open_root(self) -> int:
        try:
            return os.open(self.host_root, _DIR_FLAGS)
        except FileNotFoundError as error:
            raise FileNotFoundError(errno.ENOENT, "workspace directory is gone", self.view_root) from error

    def _check_mode(self, mode: int, bit: int, path: str) -> None:
        if self.owner_modes and not mode & bit:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)

    def _walk(self, path: str, *, follow_last: bool, strict: bool, create_dirs: bool = False) -> _Walk:
        """Resolve `path`; `strict` raises on missing or non-directory parents, else keeps them as text."""
        if not isinstance(path, str) or "\0" in path:
            raise ValueError("path must be a string without NUL characters")
        if not posixpath.isabs(path):
            raise ValueError(f"path must be absolute, got {path!r}")
        walk = _Walk(self)
        pending = [part for part in path.split("/") if part not in ("", ".")]
        pending.reverse()  # a stack: next component last
        links = 0
        root_depth = len(self.root_parts)
        try:
            while pending:
                name = pending.pop()
                if name == "..":
                    if walk.parts:
                        walk.pop()
                    walk.last_named = False
                    continue
                walk.parts.append(name)
                walk.last_named = True
                if not walk.inside():
                    continue
                depth = len(walk.parts)
                if depth == root_depth:
                    if not walk.fds:
                        walk.fds.append(self._open_root())
                        self._check_mode(os.fstat(walk.fds[0]).st_mode, st.S_IXUSR, path)
                    continue
                if walk.missing_at is not None:
                    continue
                is_last = not any(part not in ("", ".") for part in pending)
                parent_fd = walk.fds[-1]
                try:
                    info = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
                except FileNotFoundError:
                    if create_dirs and not is_last:
                        self._check_mode(os.fstat(parent_fd).st_mode, st.S_IWUSR, path)
                        os.mkdir(name, 0o755, dir_fd=parent_fd)
                        self._chown(name, parent_fd)
                        info = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
                    else:
                        walk.missing_at = depth
                        continue
                if st.S_ISLNK(info.st_mode) and (follow_last or not is_last):
                    links += 1
                    if links > _MAX_LINKS:
                        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
                    target = os.readlink(name, dir_fd=parent_fd)
                    walk.parts.pop()
                    if target.startswith("/"):
                        walk.restart()
                    pending.extend(reversed([part for part in target.split("/") if part not in ("", ".")]))
                    continue
                if is_last:
                    continue
                if not st.S_ISDIR(info.st_mode):
                    if strict:
                        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
                    walk.missing_at = depth
                    continue
                self._check_mode(info.st_mode, st.S_IXUSR, path)
                walk.fds.append(os.open(name, _DIR_FLAGS, dir_fd=parent_fd))
        except BaseException:
            walk.close()
            raise
        return walk

    def _target(self, path: str, *, follow_last: bool, create_dirs: bool = False) -> _Target:
        """Resolve for an operation: inside the workspace, with the parent directory open."""
        walk = self._walk(path, follow_last=follow_last, strict=True, create_dirs=create_dirs)
        try:
            if not walk.inside():
                raise OutsideWorkspaceError(errno.EACCES, "path is outside the workspace", path)
            depth = len(walk.parts)
            root_depth = len(self.root_parts)
            if walk.missing_at is not None and walk.missing_at < depth:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
            if depth == root_depth:
                fd = walk.fds.pop(0)
                return _Target(walk.parts, fd, None)
            if walk.last_named:
                parent_fd = walk.fds.pop()
            else:
                # Ended on `..`: the target is the directory we hold; its parent is one level up.
                os.close(walk.fds.pop())
                parent_fd = walk.fds.pop()
            return _Target(walk.parts, parent_fd, walk.parts[-1])
        finally:
            walk.close()

    @contextmanager
    def _resolved(self, path: str, *, follow_last: bool, create_dirs: bool = False) -> Iterator[_Target]:
        target = self._target(path, follow_last=follow_last, create_dirs=create_dirs)
        try:
            yield target
        finally:
            os.close(target.parent_fd)

    def realpath(self, path: str) -> str:
        """Resolve like `os.path.realpath(strict=False)` in the sandbox's view; outside parts stay as text."""
        walk = self._walk(path, follow_last=True, strict=False)
        walk.close()
        return "/" + "/".join(walk.parts)

    def host_path(self, path: str) -> Path:
        """The host path of a view path inside the workspace (for reporting, not for opening)."""
        walk = self._walk(path, follow_last=True, strict=False)
        walk.close()
        if not walk.inside():
            raise OutsideWorkspaceError(errno.EACCES, "path is outside the workspace", path)
        return self.host_root.joinpath(*walk.parts[len(self.root_parts) :])

    def is_root_or_ancestor(self, parts: list[str]) -> bool:
        return len(parts) <= len(self.root_parts) and self.root_parts[: len(parts)] == parts

    # ---- helpers ----------------------------------------------------------------------------

    def _chown(self, name: str, dir_fd: int) -> None:
        if self.owner is not None:
            os.chown(name, *self.owner, dir_fd=dir_fd, follow_symlinks=False)

    def _stat(self, target: _Target) -> os.stat_result:
        if target.name is None:
            return os.fstat(target.parent_fd)
        return os.stat(target.name, dir_fd=target.parent_fd, follow_symlinks=False)

    @contextmanager
    def _file_lock(self, key: str) -> Iterator[None]:
        """Serialize reads and writes of one file (a write truncates in place)."""
        with self._locks_guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._locks_guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)

    # ---- operations -------------------------------------------------------------------------

    def read_bytes(self, path: str, *, max_bytes: int | None = None) -> bytes:
        with self._resolved(path, follow_last=True) as target, self._file_lock("/".join(target.parts)):
            if target.name is None:
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(target.name, flags, dir_fd=target.parent_fd)
            try:
                info = os.fstat(fd)
                if st.S_ISDIR(info.st_mode):
                    raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
                if not st.S_ISREG(info.st_mode):
                    raise OSError(errno.EINVAL, "not a regular file", path)
                self._check_mode(info.st_mode, st.S_IRUSR, path)
                if max_bytes is not None and info.st_size > max_bytes:
                    raise OSError(errno.EFBIG, f"file is larger than {max_bytes} bytes", path)
                with open(fd, "rb", closefd=False) as file:
                    data = file.read() if max_bytes is None else file.read(max_bytes + 1)
                if max_bytes is not None and len(data) > max_bytes:
                    raise OSError(errno.EFBIG, f"file is larger than {max_bytes} bytes", path)
                return data
            finally:
                os.close(fd)

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write through an existing symlink, creating missing parents; the file is rewritten in place."""
        with (
            self._resolved(path, follow_last=True, create_dirs=True) as target,
            self._file_lock("/".join(target.parts)),
        ):
            if target.name is None:
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            try:
                info: os.stat_result | None = self._stat(target)
            except FileNotFoundError:
                info = None
            if info is not None:
                if st.S_ISDIR(info.st_mode):
                    raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
                if not st.S_ISREG(info.st_mode):
                    raise OSError(errno.EINVAL, "not a regular file", path)
                self._check_mode(info.st_mode, st.S_IWUSR, path)
            else:
                self._check_mode(os.fstat(target.parent_fd).st_mode, st.S_IWUSR, path)
            flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            fd = os.open(target.name, flags, 0o644, dir_fd=target.parent_fd)
            try:
                if not st.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError(errno.EINVAL, "not a regular file", path)
                if info is None and self.owner is not None:
                    os.fchown(fd, *self.owner)
                os.ftruncate(fd, 0)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)

    def stat(self, path: str) -> os.stat_result:
        """`stat` following symlinks (inside the workspace)."""
        with self._resolved(path, follow_last=True) as target:
            return self._stat(target)

    def lstat(self, path: str) -> os.stat_result:
        with self._resolved(path, follow_last=False) as target:
            return self._stat(target)

    def readlink(self, path: str) -> str:
        with self._resolved(path, follow_last=False) as target:
            if target.name is None:
                raise OSError(errno.EINVAL, "not a symlink", path)
            return os.readlink(target.name, dir_fd=target.parent_fd)

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except OutsideWorkspaceError:
            raise
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as error:
            if error.errno == errno.ELOOP:
                return False
            raise
        return True

    def list_dir(self, path: str) -> list[Entry]:
        with self._resolved(path, follow_last=True) as target:
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(target.name or ".", flags, dir_fd=target.parent_fd)
            try:
                self._check_mode(os.fstat(fd).st_mode, st.S_IRUSR, path)
                with os.scandir(fd) as scan:
                    children = sorted(scan, key=lambda child: child.name)
                base = "/" + "/".join(target.parts)
                return [self._entry(child, base) for child in children]
            finally:
                os.close(fd)

    def _entry(self, child: os.DirEntry[str], base: str) -> Entry:
        if child.is_symlink():
            try:
                info = self.stat(posixpath.join(base, child.name))
            except OSError:
                # A broken, looping or escaping link: list it, as what it is.
                return Entry(child.name, is_dir=False, is_symlink=True, size=None)
            is_dir = st.S_ISDIR(info.st_mode)
            size = None if is_dir else info.st_size
            return Entry(child.name, is_dir=is_dir, is_symlink=True, size=size)
        info = child.stat(follow_symlinks=False)
        is_dir = st.S_ISDIR(info.st_mode)
        return Entry(child.name, is_dir=is_dir, is_symlink=False, size=None if is_dir else info.st_size)

    def make_dir(self, path: str) -> None:
        """`mkdir -p`."""
        with self._resolved(path, follow_last=True, create_dirs=True) as target:
            if target.name is None:
                return
            try:
                info: os.stat_result | None = self._stat(target)
            except FileNotFoundError:
                info = None
            if info is None:
                self._check_mode(os.fstat(target.parent_fd).st_mode, st.S_IWUSR, path)
                try:
                    os.mkdir(target.name, 0o755, dir_fd=target.parent_fd)
                except FileExistsError:
                    info = self._stat(target)
                else:
                    self._chown(target.name, target.parent_fd)
                    return
            if not st.S_ISDIR(info.st_mode):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)

    def remove(self, path: str) -> None:
        """Remove a file, a symlink (itself) or a directory tree; never the root or its ancestors."""
        walk = self._walk(path, follow_last=False, strict=False)
        walk.close()
        if self.is_root_or_ancestor(walk.parts):
            raise ValueError("cannot remove the workspace root or its ancestor")
        with self._resolved(path, follow_last=False) as target:
            assert target.name is not None
            info = self._stat(target)
            self._check_mode(os.fstat(target.parent_fd).st_mode, st.S_IWUSR, path)
            if st.S_ISDIR(info.st_mode):
                shutil.rmtree(target.name, dir_fd=target.parent_fd)
            else:
                os.unlink(target.name, dir_fd=target.parent_fd)

    def walk_files(self, path: str, *, max_entries: int) -> tuple[list[tuple[str, Entry]], bool]:
        """Entries below `path` in tree order (relative paths), not descending into symlinks.

        Returns the entries and whether `max_entries` cut the listing short.
        """
        found: list[tuple[str, Entry]] = []
        base = self.realpath(path)
        stack: list[tuple[str, Iterator[Entry]]] = [("", iter(self.list_dir(base)))]
        while stack:
            relative, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                continue
            child = posixpath.join(relative, entry.name) if relative else entry.name
            found.append((child, entry))
            if len(found) >= max_entries:
                return found, True
            if entry.is_dir and not entry.is_symlink:
                try:
                    stack.append((child, iter(self.list_dir(posixpath.join(base, child)))))
                except OSError:
                    continue  # unreadable: listed, not descended into
        return found, False
