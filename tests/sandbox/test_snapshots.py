"""`LocalSnapshotStore`: round trips, and refusal of hostile ids and archives."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import tarfile
from pathlib import Path
from typing import Literal

import pytest

from chambers.core.ids import new_id
from chambers.sandbox import ImageNotFoundError, LocalSnapshotStore, SnapshotError

Codec = Literal["zstd", "none"]


@pytest.fixture(params=["zstd", "none"])
def codec(request: pytest.FixtureRequest) -> Codec:
    name: Codec = request.param
    if name == "zstd" and shutil.which("zstd") is None:
        pytest.skip("zstd is not installed (snapshots are written uncompressed then)")
    return name


def _tree(root: Path) -> dict[str, tuple[str, object, int]]:
    """Everything that matters about a workspace: type, content or link target, permission bits."""
    found: dict[str, tuple[str, object, int]] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            info = path.lstat()
            relative = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                found[relative] = ("link", os.readlink(path), 0)
            elif stat.S_ISDIR(info.st_mode):
                found[relative] = ("dir", None, stat.S_IMODE(info.st_mode))
            else:
                found[relative] = ("file", path.read_bytes(), stat.S_IMODE(info.st_mode))
    return found


def _populate(workspace: Path) -> None:
    (workspace / "src" / "pkg").mkdir(parents=True)
    (workspace / "src" / "pkg" / "mod.py").write_text("print('hi')\n")
    (workspace / "run.sh").write_text("#!/bin/sh\necho run\n")
    (workspace / "run.sh").chmod(0o755)
    (workspace / "empty").mkdir()
    (workspace / "blob.bin").write_bytes(os.urandom(100_000))
    os.symlink("src/pkg/mod.py", workspace / "relative-link")
    os.symlink("/usr/bin/python3", workspace / "absolute-link")  # a venv has these
    os.symlink("/workspace/src", workspace / "sandbox-link")
    os.link(workspace / "run.sh", workspace / "hardlink.sh")


async def test_round_trip(scratch: Path, codec: Codec) -> None:
    workspace = scratch / "ws"
    workspace.mkdir()
    _populate(workspace)
    before = _tree(workspace)
    store = LocalSnapshotStore(scratch / "images", codec=codec)
    state = {"shell": {"version": 1, "cwd": "src", "env": {"A": "1"}, "unset": []}, "pending": None}
    image_id = await store.save(workspace, state)
    assert image_id.startswith("im-") and await store.exists(image_id)
    shutil.rmtree(workspace)
    assert await store.restore(image_id, workspace) == state
    assert _tree(workspace) == before
    # Restoring over a changed workspace replaces its contents (and keeps the directory).
    inode = workspace.stat().st_ino
    (workspace / "added-later.txt").write_text("x")
    (workspace / "run.sh").write_text("changed")
    await store.restore(image_id, workspace)
    assert _tree(workspace) == before and workspace.stat().st_ino == inode
    await store.delete(image_id)
    assert not await store.exists(image_id)
    await store.delete(image_id)  # idempotent


async def test_ids_sort_by_creation_time(scratch: Path) -> None:
    workspace = scratch / "ws"
    workspace.mkdir()
    store = LocalSnapshotStore(scratch / "images")
    ids = [await store.save(workspace, {"n": n}) for n in range(3)]
    assert ids == sorted(ids)
    with pytest.raises(ImageNotFoundError):
        await store.restore(new_id("im", "-"), workspace)


@pytest.mark.parametrize(
    "image_id",
    [
        "../images",
        "im-../../etc",
        "im-" + "a" * 25 + "/",
        "im-" + "A" * 26,
        "",
        "im-" + "u" * 26,
        "/etc/passwd",
    ],
)
async def test_malformed_image_ids_are_refused(scratch: Path, image_id: str) -> None:
    store = LocalSnapshotStore(scratch / "images")
    for call in (store.exists(image_id), store.delete(image_id), store.restore(image_id, scratch / "ws")):
        with pytest.raises(ValueError):
            await call
    assert not (scratch / "ws").exists()


def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"pwned", link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mode = 0o644
    return info, (io.BytesIO(data) if kind == tarfile.REGTYPE else None)


HOSTILE = {
    "dot-dot": [_member("../escaped.txt")],
    "absolute": [_member("/tmp/chambers-absolute-escape.txt")],
    "through-a-symlink": [_member("link", tarfile.SYMTYPE, link="OUTSIDE"), _member("link/escaped.txt")],
    "through-a-relative-symlink": [_member("up", tarfile.SYMTYPE, link=".."), _member("up/escaped.txt")],
    "hard-link-outside": [_member("passwd", tarfile.LNKTYPE, link="/etc/passwd")],
    "hard-link-dot-dot": [_member("h", tarfile.LNKTYPE, link="../escaped.txt")],
    "device": [_member("null", tarfile.CHRTYPE)],
}


def _craft(scratch: Path, members: list[tuple]) -> str:
    """An image whose archive holds exactly `members` (OUTSIDE in a link target: a directory outside)."""
    outside = scratch / "outside"
    outside.mkdir(exist_ok=True)
    image_id = new_id("im", "-")
    image = scratch / "images" / image_id
    image.mkdir(parents=True)
    with tarfile.open(image / "workspace.tar", "w") as archive:
        for info, data in members:
            info.linkname = info.linkname.replace("OUTSIDE", str(outside))
            archive.addfile(info, data)
    (image / "state.json").write_text("{}")
    (image / "manifest.json").write_text(json.dumps({"format": 1, "codec": "none"}))
    return image_id


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_hostile_archives_are_refused(scratch: Path, case: str) -> None:
    (scratch / "escaped.txt").write_text("untouched")
    image_id = _craft(scratch, HOSTILE[case])
    outside = scratch / "outside"
    workspace = scratch / "ws"
    workspace.mkdir()
    (workspace / "keep.txt").write_text("original")
    store = LocalSnapshotStore(scratch / "images")
    with pytest.raises(SnapshotError):
        await store.restore(image_id, workspace)
    assert list(outside.iterdir()) == []
    assert (scratch / "escaped.txt").read_text() == "untouched"
    assert not Path("/tmp/chambers-absolute-escape.txt").exists()
    assert _tree(workspace) == {"keep.txt": ("file", b"original", 0o644)}  # a failed restore changes nothing
    assert sorted(path.name for path in scratch.iterdir()) == ["escaped.txt", "images", "outside", "ws"]


async def test_a_member_replacing_a_symlink_never_writes_through_it(scratch: Path) -> None:
    members = [_member("file", tarfile.SYMTYPE, link="OUTSIDE/escaped.txt"), _member("file", data=b"inside")]
    image_id = _craft(scratch, members)
    await LocalSnapshotStore(scratch / "images").restore(image_id, scratch / "ws")
    assert (scratch / "ws" / "file").read_bytes() == b"inside"
    assert not (scratch / "ws" / "file").is_symlink()
    assert list((scratch / "outside").iterdir()) == []


async def test_damaged_images_are_reported(scratch: Path) -> None:
    store = LocalSnapshotStore(scratch / "images", codec="none")
    workspace = scratch / "ws"
    workspace.mkdir()
    image_id = await store.save(workspace, {})
    (scratch / "images" / image_id / "workspace.tar").write_bytes(b"not a tar file at all" * 100)
    with pytest.raises(SnapshotError):
        await store.restore(image_id, workspace)
    (scratch / "images" / image_id / "manifest.json").write_text("[]")
    with pytest.raises(SnapshotError):
        await store.restore(image_id, workspace)
    with pytest.raises(ValueError):
        await store.save(workspace, {"not json": object()})
