"""Whether sessions' workspaces sit on an ext4 without a journal.

Such an ext4 will not reuse an inode freed in the last minute (five, while its inode table block is
unwritten) and walks past every such inode of the block group for each new file. Restoring a
workspace creates all its files, and idling sessions remove theirs, so on such a filesystem a
restore costs in proportion to the files removed shortly before: 1.9 s against 0.3 s for 100 MB in
2,816 files, measured on one VM (docs/benchmarks.md). Journaled filesystems do not do this.
"""

from __future__ import annotations

import os
from pathlib import Path

SYS = Path("/sys")


def ext4_journal(path: Path, *, sys_root: Path = SYS) -> bool | None:
    """Whether the ext4 filesystem holding `path` has a journal; None when it is not ext4 or the
    kernel does not say (`/sys/fs/ext4/<device>/journal_task` reads `<none>` without a journal)."""
    try:
        device = os.stat(path).st_dev
        block = (sys_root / "dev" / "block" / f"{os.major(device)}:{os.minor(device)}").resolve(strict=True)
        task = (sys_root / "fs" / "ext4" / block.name / "journal_task").read_text().strip()
    except OSError:
        return None
    if task == "<none>":
        return False
    return True if task else None


def journal_warning(path: Path, *, sys_root: Path = SYS) -> str | None:
    """What to tell an operator whose workspaces under `path` (or, before it exists, under its
    nearest existing parent) sit on an ext4 without a journal; None for any other filesystem."""
    existing = next((p for p in (path, *path.parents) if p.exists()), path)
    if ext4_journal(existing, sys_root=sys_root) is not False:
        return None
    return (
        f"{path} is on an ext4 filesystem without a journal: restoring a workspace right after others "
        "were removed slows down several times there (new files skip every recently freed inode). "
        "Put the data directory on a journaled filesystem; see docs/operations.md"
    )
