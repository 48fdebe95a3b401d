"""Telling an ext4 without a journal apart, from the kernel's own files (a copy of /sys in a temp dir)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chambers.sandbox.filesystems import ext4_journal, journal_warning


def fake_sys(root: Path, holding: Path, journal_task: str | None) -> Path:
    """A /sys where the block device of `holding` is `vdz`, an ext4 whose journal_task reads as given."""
    device = os.stat(holding).st_dev
    (root / "devices" / "vdz").mkdir(parents=True)
    (root / "dev" / "block").mkdir(parents=True)
    (root / "dev" / "block" / f"{os.major(device)}:{os.minor(device)}").symlink_to(root / "devices" / "vdz")
    if journal_task is not None:
        (root / "fs" / "ext4" / "vdz").mkdir(parents=True)
        (root / "fs" / "ext4" / "vdz" / "journal_task").write_text(journal_task + "\n")
    return root


def test_an_ext4_without_a_journal_is_named_and_the_operator_told(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    sys_root = fake_sys(tmp_path / "sys", data, "<none>")
    assert ext4_journal(data, sys_root=sys_root) is False
    warning = journal_warning(data / "sandboxes" / "not-yet", sys_root=sys_root)  # judged by its parent
    assert warning is not None
    assert "without a journal" in warning and "docs/operations.md" in warning


@pytest.mark.parametrize(("journal_task", "expected"), [("2731", True), ("", None), (None, None)])
def test_a_journaled_or_other_filesystem_gets_no_warning(
    tmp_path: Path, journal_task: str | None, expected: bool | None
) -> None:
    sys_root = fake_sys(tmp_path / "sys", tmp_path, journal_task)
    assert ext4_journal(tmp_path, sys_root=sys_root) is expected
    assert journal_warning(tmp_path, sys_root=sys_root) is None


def test_a_kernel_without_these_files_is_not_judged(tmp_path: Path) -> None:
    assert ext4_journal(tmp_path, sys_root=tmp_path / "no-sys") is None
    assert journal_warning(tmp_path, sys_root=tmp_path / "no-sys") is None
