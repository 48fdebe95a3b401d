"""The conformance suite of the SnapshotStore port: every adapter passes the same rules.

Subclass `SnapshotStoreSuite` in a pytest module (pytest-asyncio in auto mode) and provide:

- `make_store(codec)`: a new store instance. Instances made by one factory share their backend
  (one directory, one bucket and prefix), as the replicas of a deployment do.
- `plant(image_id, objects)`: write an image's raw parts (`{"workspace.tar": b"...", ...}`) straight
  into the backend, past the store: for damaged, hostile and half-written images.
- `stored()`: the names of everything the backend holds (files, object keys), to show that a failed
  save or a delete leaves nothing behind.

A store's last step of a save is its `_publish` method (it writes the manifest, or renames the
finished image into place); the suite makes it fail to stand for a save cut off just before it.
The model is pydantic-ai's `workspaces/conformance.py`: one test per rule of the contract.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import tarfile
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import pytest

from chambers.core.ids import new_id
from chambers.sandbox.snapshots import (
    ARCHIVES,
    MANIFEST,
    STATE,
    CodecChoice,
    ImageNotFoundError,
    SnapshotError,
    SnapshotStore,
)

__all__ = (
    "HOSTILE",
    "Plant",
    "SnapshotStoreSuite",
    "StoreFactory",
    "Stored",
    "listing",
    "populate",
    "tar_of",
    "tree",
)


class StoreFactory(Protocol):
    def __call__(self, codec: CodecChoice = "none") -> SnapshotStore: ...


Plant = Callable[[str, Mapping[str, bytes]], Awaitable[None]]
Stored = Callable[[], Awaitable[set[str]]]
Member = tuple[tarfile.TarInfo, io.BytesIO | None]


def tree(root: Path) -> dict[str, tuple[str, object, int]]:
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


def escaped_absolutely() -> bool:
    return os.path.lexists(ABSOLUTE_ESCAPE)


def listing(directory: Path) -> list[str]:
    """The names in a directory, sorted (temporary files left behind would show here)."""
    return sorted(path.name for path in directory.iterdir())


def populate(workspace: Path) -> None:
    """A workspace with what real ones hold: nested files, modes, empty dirs, links of each kind."""
    (workspace / "src" / "pkg").mkdir(parents=True)
    (workspace / "src" / "pkg" / "mod.py").write_text("print('hi')\n")
    (workspace / "run.sh").write_text("#!/bin/sh\necho run\n")
    (workspace / "run.sh").chmod(0o755)
    (workspace / "empty").mkdir()
    (workspace / "blob.bin").write_bytes(os.urandom(100_000))
    (workspace / "naïve ünïcode.txt").write_text("ok")
    os.symlink("src/pkg/mod.py", workspace / "relative-link")
    os.symlink("/usr/bin/python3", workspace / "absolute-link")  # a venv has these
    os.symlink("/workspace/src", workspace / "sandbox-link")
    os.link(workspace / "run.sh", workspace / "hardlink.sh")


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"pwned", link: str = "") -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mode = 0o644
    return info, (io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def tar_of(members: list[Member], outside: Path) -> bytes:
    """A tar archive of exactly `members` (`OUTSIDE` in a link target: the directory `outside`)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for info, data in members:
            info.linkname = info.linkname.replace("OUTSIDE", str(outside))
            if data is not None:
                data.seek(0)
            archive.addfile(info, data)
    return buffer.getvalue()


ABSOLUTE_ESCAPE = Path("/tmp/chambers-absolute-escape.txt")  # noqa: S108 (where a hostile member aims)
HOSTILE: dict[str, list[Member]] = {
    "dot-dot": [member("../escaped.txt")],
    "absolute": [member(str(ABSOLUTE_ESCAPE))],
    "through-a-symlink": [member("link", tarfile.SYMTYPE, link="OUTSIDE"), member("link/escaped.txt")],
    "through-a-relative-symlink": [member("up", tarfile.SYMTYPE, link=".."), member("up/escaped.txt")],
    "hard-link-outside": [member("passwd", tarfile.LNKTYPE, link="/etc/passwd")],
    "hard-link-dot-dot": [member("h", tarfile.LNKTYPE, link="../escaped.txt")],
    "device": [member("null", tarfile.CHRTYPE)],
}

MALFORMED_IDS = [
    "../images",
    "im-../../etc",
    "im-" + "a" * 25 + "/",
    "im-" + "A" * 26,
    "",
    "im-" + "u" * 26,
    "/etc/passwd",
    "im-01jzzzzzzzzzzzzzzzzzzzzzzz/../x",
]

PLAIN_MANIFEST = json.dumps({"format": 1, "codec": "none"}).encode()


class SnapshotStoreSuite:
    """Subclass and provide `make_store`, `plant` and `stored`; each test checks one rule of the port."""

    @pytest.fixture
    def make_store(self) -> StoreFactory:
        pytest.fail("a subclass of SnapshotStoreSuite must provide the `make_store` fixture")

    @pytest.fixture
    def plant(self) -> Plant:
        pytest.fail("a subclass of SnapshotStoreSuite must provide the `plant` fixture")

    @pytest.fixture
    def stored(self) -> Stored:
        pytest.fail("a subclass of SnapshotStoreSuite must provide the `stored` fixture")

    @pytest.fixture
    def store(self, make_store: StoreFactory) -> SnapshotStore:
        return make_store("none")

    @pytest.fixture
    def area(self, tmp_path: Path) -> Path:
        """Where workspaces live in a test (nothing of the store's is in it)."""
        path = tmp_path / "area"
        path.mkdir()
        return path

    @pytest.fixture(params=["none", "zstd"])
    def codec(self, request: pytest.FixtureRequest) -> CodecChoice:
        name: CodecChoice = request.param
        if name == "zstd" and shutil.which("zstd") is None:
            pytest.skip("zstd is not installed (snapshots are written uncompressed then)")
        return name

    # the port

    def test_it_is_a_snapshot_store(self, store: SnapshotStore) -> None:
        assert isinstance(store, SnapshotStore)
        assert store.describe()

    # saving and restoring

    async def test_files_and_state_round_trip(
        self, make_store: StoreFactory, area: Path, codec: CodecChoice
    ) -> None:
        store = make_store(codec)
        workspace = area / "ws"
        workspace.mkdir()
        populate(workspace)
        before = tree(workspace)
        state = {"shell": {"version": 1, "cwd": "src", "env": {"A": "1"}, "unset": []}, "note": "héllo"}
        image_id = await store.save(workspace, state)
        assert image_id.startswith("im-") and await store.exists(image_id)
        shutil.rmtree(workspace)
        assert await store.restore(image_id, workspace) == state
        assert tree(workspace) == before
        assert listing(area) == ["ws"]  # no temporary files left

    async def test_restoring_over_a_workspace_replaces_its_contents(
        self, store: SnapshotStore, area: Path
    ) -> None:
        workspace = area / "ws"
        workspace.mkdir()
        populate(workspace)
        before = tree(workspace)
        image_id = await store.save(workspace, {})
        inode = workspace.stat().st_ino
        (workspace / "added-later.txt").write_text("x")
        (workspace / "run.sh").write_text("changed")
        assert await store.restore(image_id, workspace) == {}
        assert tree(workspace) == before and workspace.stat().st_ino == inode  # the directory is kept
        assert listing(area) == ["ws"]

    async def test_an_empty_workspace_round_trips(self, store: SnapshotStore, area: Path) -> None:
        (area / "ws").mkdir()
        image_id = await store.save(area / "ws", {"n": 1})
        assert await store.restore(image_id, area / "restored") == {"n": 1}
        assert tree(area / "restored") == {}

    async def test_ids_are_new_and_sort_by_creation_time(self, store: SnapshotStore, area: Path) -> None:
        workspace = area / "ws"
        workspace.mkdir()
        ids = [await store.save(workspace, {"n": n}) for n in range(3)]
        assert ids == sorted(ids) and len(set(ids)) == 3
        assert [await store.restore(image_id, workspace) for image_id in ids] == [{"n": n} for n in range(3)]

    async def test_every_instance_on_the_backend_sees_the_images(
        self, make_store: StoreFactory, area: Path
    ) -> None:
        """Replicas share snapshots: one saves, another restores and deletes."""
        one, other = make_store("none"), make_store("none")
        (area / "ws").mkdir()
        (area / "ws" / "f.txt").write_text("from one")
        image_id = await one.save(area / "ws", {"by": "one"})
        assert await other.exists(image_id)
        assert await other.restore(image_id, area / "elsewhere") == {"by": "one"}
        assert (area / "elsewhere" / "f.txt").read_text() == "from one"
        await other.delete(image_id)
        assert not await one.exists(image_id)

    async def test_saving_refuses_state_that_is_not_json(
        self, store: SnapshotStore, area: Path, stored: Stored
    ) -> None:
        (area / "ws").mkdir()
        with pytest.raises(ValueError):
            await store.save(area / "ws", {"not json": object()})
        assert await stored() == set()

    async def test_saving_a_missing_workspace_fails(
        self, store: SnapshotStore, area: Path, stored: Stored
    ) -> None:
        with pytest.raises(SnapshotError):
            await store.save(area / "nowhere", {})
        assert await stored() == set()

    # an image exists once complete

    async def test_a_save_cut_off_before_publishing_leaves_no_image(
        self, store: SnapshotStore, area: Path, stored: Stored, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        (area / "ws").mkdir()
        (area / "ws" / "f.txt").write_text("x")
        published: list[str] = []

        def cut_off(*args: Any) -> None:
            published.append("tried")
            raise SnapshotError("cut off")

        monkeypatch.setattr(store, "_publish", cut_off)
        with pytest.raises(SnapshotError, match="cut off"):
            await store.save(area / "ws", {})
        assert published == ["tried"]
        assert await stored() == set()
        assert listing(area) == ["ws"]

    async def test_an_image_without_its_manifest_does_not_exist(
        self, store: SnapshotStore, area: Path, plant: Plant
    ) -> None:
        """A save that died before its last step (no clean-up ran) leaves nothing restorable."""
        image_id = new_id("im", "-")
        await plant(image_id, {"workspace.tar": tar_of([member("f.txt")], area), STATE: b"{}"})
        assert not await store.exists(image_id)
        workspace = area / "ws"
        workspace.mkdir()
        (workspace / "keep.txt").write_text("original")
        with pytest.raises(ImageNotFoundError):
            await store.restore(image_id, workspace)
        assert tree(workspace) == {"keep.txt": ("file", b"original", 0o644)}

    async def test_restoring_a_missing_image_raises_image_not_found(
        self, store: SnapshotStore, area: Path
    ) -> None:
        workspace = area / "ws"
        with pytest.raises(ImageNotFoundError):
            await store.restore(new_id("im", "-"), workspace)
        assert not workspace.exists()
        assert not await store.exists(new_id("im", "-"))

    # deleting

    async def test_delete_removes_every_part_and_is_idempotent(
        self, store: SnapshotStore, area: Path, stored: Stored
    ) -> None:
        (area / "ws").mkdir()
        (area / "ws" / "f.txt").write_text("x")
        keep = await store.save(area / "ws", {"keep": True})
        before = await stored()
        image_id = await store.save(area / "ws", {})
        assert len(await stored()) > len(before)
        await store.delete(image_id)
        assert not await store.exists(image_id)
        with pytest.raises(ImageNotFoundError):
            await store.restore(image_id, area / "ws")
        assert await stored() == before  # the other image is untouched
        await store.delete(image_id)  # deleting a missing image is not an error
        await store.delete(new_id("im", "-"))
        assert await store.exists(keep)

    # ids

    @pytest.mark.parametrize("image_id", MALFORMED_IDS)
    async def test_malformed_image_ids_are_refused(
        self, store: SnapshotStore, area: Path, stored: Stored, image_id: str
    ) -> None:
        for call in (store.exists(image_id), store.delete(image_id), store.restore(image_id, area / "ws")):
            with pytest.raises(ValueError):
                await call
        assert not (area / "ws").exists()
        assert await stored() == set()

    # damaged and hostile images

    async def test_damaged_images_are_reported(self, store: SnapshotStore, area: Path, plant: Plant) -> None:
        workspace = area / "ws"
        workspace.mkdir()
        (workspace / "keep.txt").write_text("original")
        damaged = {
            "not a tar": {
                "workspace.tar": b"not a tar file at all" * 100,
                STATE: b"{}",
                MANIFEST: PLAIN_MANIFEST,
            },
            "manifest not an object": {"workspace.tar": b"", STATE: b"{}", MANIFEST: b"[]"},
            "manifest not json": {"workspace.tar": b"", STATE: b"{}", MANIFEST: b"{"},
            "unknown format": {
                "workspace.tar": b"",
                STATE: b"{}",
                MANIFEST: json.dumps({"format": 99, "codec": "none"}).encode(),
            },
            "unknown codec": {
                "workspace.tar": b"",
                STATE: b"{}",
                MANIFEST: json.dumps({"format": 1, "codec": "rar"}).encode(),
            },
            "state not json": {"workspace.tar": tar_of([], area), STATE: b"\xff", MANIFEST: PLAIN_MANIFEST},
            "archive missing": {STATE: b"{}", MANIFEST: PLAIN_MANIFEST},
        }
        for case, objects in damaged.items():
            image_id = new_id("im", "-")
            await plant(image_id, objects)
            with pytest.raises(SnapshotError) as raised:
                await store.restore(image_id, workspace)
            assert not isinstance(raised.value, ImageNotFoundError), case
            assert tree(workspace) == {"keep.txt": ("file", b"original", 0o644)}, case
        assert listing(area) == ["ws"]

    @pytest.mark.parametrize("case", sorted(HOSTILE))
    async def test_hostile_archives_are_refused(
        self, store: SnapshotStore, area: Path, plant: Plant, case: str
    ) -> None:
        (area / "escaped.txt").write_text("untouched")
        outside = area / "outside"
        outside.mkdir()
        image_id = new_id("im", "-")
        archive = tar_of(HOSTILE[case], outside)
        await plant(image_id, {ARCHIVES["none"]: archive, STATE: b"{}", MANIFEST: PLAIN_MANIFEST})
        workspace = area / "ws"
        workspace.mkdir()
        (workspace / "keep.txt").write_text("original")
        with pytest.raises(SnapshotError):
            await store.restore(image_id, workspace)
        assert list(outside.iterdir()) == []
        assert (area / "escaped.txt").read_text() == "untouched"
        assert not escaped_absolutely()
        assert tree(workspace) == {"keep.txt": ("file", b"original", 0o644)}  # a failed restore: no change
        assert listing(area) == ["escaped.txt", "outside", "ws"]

    async def test_a_member_replacing_a_symlink_never_writes_through_it(
        self, store: SnapshotStore, area: Path, plant: Plant
    ) -> None:
        outside = area / "outside"
        outside.mkdir()
        members = [
            member("file", tarfile.SYMTYPE, link="OUTSIDE/escaped.txt"),
            member("file", data=b"inside"),
        ]
        image_id = new_id("im", "-")
        archive = tar_of(members, outside)
        await plant(image_id, {"workspace.tar": archive, STATE: b"{}", MANIFEST: PLAIN_MANIFEST})
        await store.restore(image_id, area / "ws")
        assert (area / "ws" / "file").read_bytes() == b"inside"
        assert not (area / "ws" / "file").is_symlink()
        assert list(outside.iterdir()) == []
