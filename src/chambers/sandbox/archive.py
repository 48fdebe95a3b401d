"""Workspace archives: tar, optionally zstd-compressed, written fast and extracted safely.

Writing uses GNU tar (and `zstd -1 -T0`) when installed, Python's `tarfile` otherwise. Extraction
always uses our own loop over `tarfile` members, because the archive's content comes from the
sandbox (untrusted): every member is created relative to an open directory descriptor, each path
component opened with `O_NOFOLLOW`, and new files with `O_EXCL`. So no member can be written through
a symlink (an earlier member's or any other), names with `..` or a leading `/` are refused, hard
links must point at a member inside, device nodes are refused and set-id bits dropped. Symlinks
themselves are restored as they were (a venv's `bin/python -> /usr/bin/python3` is legitimate):
a link is only data until something follows it, and the host side never does (see `confined`).
This is the `tarfile` "data" filter's guarantee without its per-member `realpath` cost (10x
slower on many small files) and without refusing absolute symlinks.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import stat as st
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Literal

Codec = Literal["zstd", "none"]
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20


class ArchiveError(ValueError):
    """An archive that cannot be written, or must not be extracted."""


def best_codec() -> Codec:
    return "zstd" if shutil.which("zstd") else "none"


def create(workspace: Path, target: Path, codec: Codec) -> None:
    """Archive the contents of `workspace` into `target` (symlinks archived as links)."""
    tar = shutil.which("tar")
    if tar is None:
        if codec != "none":
            raise ArchiveError("writing a compressed archive needs the tar binary")
        _create_with_tarfile(workspace, target)
        return
    command = [tar, "--create", "--file=-", "--numeric-owner", "--one-file-system", "-C", str(workspace), "."]
    with open(target, "wb") as output:
        if codec == "none":
            result = subprocess.run(command, stdout=output, stderr=subprocess.PIPE, check=False)
            _check_tar(result.returncode, result.stderr)
            return
        zstd = shutil.which("zstd")
        if zstd is None:
            raise ArchiveError("zstd is not installed")
        producer = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert producer.stdout is not None
        try:
            compressor = subprocess.run(
                [zstd, "-1", "-T0", "-q", "-c"], stdin=producer.stdout, stdout=output, check=False
            )
        finally:
            producer.stdout.close()
            _, errors = producer.communicate()
        _check_tar(producer.returncode, errors)
        if compressor.returncode != 0:
            raise ArchiveError(f"zstd failed with exit status {compressor.returncode}")


def _check_tar(returncode: int, errors: bytes) -> None:
    # 1 means "some files changed while being read": the archive is still complete and readable.
    if returncode not in (0, 1):
        raise ArchiveError(f"tar failed: {errors.decode(errors='replace').strip()}")


def _create_with_tarfile(workspace: Path, target: Path) -> None:
    def keep(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return member if member.isreg() or member.isdir() or member.issym() or member.islnk() else None

    with tarfile.open(target, "w", format=tarfile.GNU_FORMAT) as archive:
        archive.add(str(workspace), arcname=".", recursive=True, filter=keep)


@contextlib.contextmanager
def open_stream(path: Path, codec: Codec) -> Iterator[IO[bytes]]:
    """The uncompressed tar stream of an archive file."""
    if codec == "none":
        with open(path, "rb") as file:
            yield file
        return
    zstd = shutil.which("zstd")
    if zstd is None:
        raise ArchiveError("this snapshot is zstd-compressed and zstd is not installed")
    process = subprocess.Popen(
        [zstd, "-d", "-c", "-q", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None
    try:
        yield process.stdout
        while process.stdout.read(_CHUNK):  # the tail after the end-of-archive marker
            pass
    except BaseException:
        process.kill()
        process.communicate()
        raise
    finally:
        process.stdout.close()
    _, errors = process.communicate()
    if process.returncode != 0:
        raise ArchiveError(f"zstd failed: {errors.decode(errors='replace').strip()}")


def _components(name: str, what: str) -> list[str]:
    if not name or "\0" in name or name.startswith("/"):
        raise ArchiveError(f"refusing {what} {name!r}: absolute or empty")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"refusing {what} {name!r}: it contains '..'")
    return parts


class _Forward(io.RawIOBase):
    """A pipe that may seek forward: lets `tarfile` read a decompressor's output in random-access
    mode (its stream mode copies its buffer on every read, 10x slower on large archives)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset if whence == io.SEEK_SET else self._position + offset
        if whence not in (io.SEEK_SET, io.SEEK_CUR) or target < self._position:
            raise io.UnsupportedOperation("can only seek forward")
        while self._position < target:
            chunk = self._raw.read(min(_CHUNK, target - self._position))
            if not chunk:
                break
            self._position += len(chunk)
        return self._position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._raw.read(len(view))
        view[: len(data)] = data
        self._position += len(data)
        return len(data)


class _Extractor:
    def __init__(
        self,
        dest: Path,
        owner: tuple[int, int] | None,
        max_bytes: int,
        max_members: int,
    ) -> None:
        self.root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self.dirs: dict[tuple[str, ...], int] = {(): self.root_fd}
        self.owner = owner
        self.max_bytes = max_bytes
        self.max_members = max_members
        self.total = 0
        self.members = 0
        self.dir_attrs: list[tuple[tuple[str, ...], int, int]] = []

    def close(self) -> None:
        for fd in self.dirs.values():
            os.close(fd)
        self.dirs.clear()

    def directory(self, parts: tuple[str, ...]) -> int:
        """An open descriptor of the directory `parts`, never through a symlink."""
        fd = self.dirs.get(parts)
        if fd is not None:
            return fd
        parent = self.directory(parts[:-1])
        try:
            fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            os.mkdir(parts[-1], 0o700, dir_fd=parent)
            self._chown(parts[-1], parent)
            fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
        except (NotADirectoryError, OSError) as error:
            raise ArchiveError(f"refusing {'/'.join(parts)!r}: not a directory (a symlink?)") from error
        self.dirs[parts] = fd
        return fd

    def _chown(self, name: str, dir_fd: int) -> None:
        if self.owner is not None:
            os.chown(name, *self.owner, dir_fd=dir_fd, follow_symlinks=False)

    def _clear(self, name: str, dir_fd: int) -> None:
        """Make room for a member that repeats a name (tar archives may)."""
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if st.S_ISDIR(info.st_mode):
            raise ArchiveError(f"refusing to replace directory {name!r} with a file")
        os.unlink(name, dir_fd=dir_fd)

    def member(self, archive: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.members += 1
        if self.members > self.max_members:
            raise ArchiveError(f"archive has more than {self.max_members} members")
        parts = _components(member.name, "member")
        if not parts:
            if member.isdir():
                self.dir_attrs.append(((), member.mode, int(member.mtime)))
            return
        parent = self.directory(tuple(parts[:-1]))
        name = parts[-1]
        mode = member.mode & 0o777
        if member.isdir():
            fd = self.directory(tuple(parts))
            del fd
            self.dir_attrs.append((tuple(parts), mode, int(member.mtime)))
        elif member.isreg():
            self.total += member.size
            if self.total > self.max_bytes:
                raise ArchiveError(f"archive holds more than {self.max_bytes} bytes")
            self._clear(name, parent)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(name, flags, 0o600, dir_fd=parent)
            try:
                self._copy(archive, member, fd)
                os.fchmod(fd, mode)
                if self.owner is not None:
                    os.fchown(fd, *self.owner)
                os.utime(fd, (member.mtime, member.mtime))
            finally:
                os.close(fd)
        elif member.issym():
            if "\0" in member.linkname:
                raise ArchiveError(f"refusing symlink {member.name!r}")
            self._clear(name, parent)
            os.symlink(member.linkname, name, dir_fd=parent)
            self._chown(name, parent)
            os.utime(name, (member.mtime, member.mtime), dir_fd=parent, follow_symlinks=False)
        elif member.islnk():
            target = _components(member.linkname, "hard link target")
            if not target:
                raise ArchiveError(f"refusing hard link {member.name!r} to the root")
            source_dir = self.directory(tuple(target[:-1]))
            info = os.stat(target[-1], dir_fd=source_dir, follow_symlinks=False)
            if not st.S_ISREG(info.st_mode):
                raise ArchiveError(f"refusing hard link {member.name!r} to a non-regular file")
            self._clear(name, parent)
            os.link(target[-1], name, src_dir_fd=source_dir, dst_dir_fd=parent, follow_symlinks=False)
        elif member.isfifo():
            return  # a pipe in a snapshot has nothing to restore
        else:
            raise ArchiveError(f"refusing {member.name!r}: devices and other special files are not allowed")

    @staticmethod
    def _copy(archive: tarfile.TarFile, member: tarfile.TarInfo, fd: int) -> None:
        source = archive.extractfile(member)
        assert source is not None
        with open(fd, "wb", closefd=False) as output:
            shutil.copyfileobj(source, output, _CHUNK)

    def finish(self) -> None:
        # Directory modes and times last: children were created with the directory writable.
        for parts, mode, mtime in reversed(self.dir_attrs):
            fd = self.directory(parts) if parts else self.root_fd
            directory = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            try:
                os.fchmod(directory, (mode & 0o777) | 0o700)
                if self.owner is not None:
                    os.fchown(directory, *self.owner)
                os.utime(directory, (mtime, mtime))
            finally:
                os.close(directory)


def extract(
    stream: IO[bytes],
    dest: Path,
    *,
    owner: tuple[int, int] | None = None,
    max_bytes: int,
    max_members: int,
) -> None:
    """Extract a tar stream into the empty directory `dest` (see the module docstring for the rules)."""
    extractor = _Extractor(dest, owner, max_bytes, max_members)
    try:
        source = stream if stream.seekable() else _Forward(stream)
        with tarfile.open(fileobj=source, mode="r:") as archive:
            for member in archive:
                extractor.member(archive, member)
        extractor.finish()
    except tarfile.TarError as error:
        raise ArchiveError(f"not a valid archive: {error}") from error
    finally:
        extractor.close()
