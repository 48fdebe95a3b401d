"""The file tools' work on the host side of a workspace (blocking: run in a thread).

Every path here is already a normalized sandbox-view path inside the workspace; `ConfinedFS`
refuses anything a symlink leads out of it.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from chambers.sandbox.confined import ConfinedFS, Entry
from chambers.sandbox.limits import MiB

READ_MAX_BYTES = 16 * MiB
"""Larger files are for the shell (`head`, `sed -n`, `grep`)."""
LIST_MAX_ENTRIES = 1000


class ToolError(Exception):
    """A failure the model should read (its message is shown as is)."""


@dataclass(frozen=True)
class Text:
    text: str
    truncated: bool = False


def _decode_text(data: bytes, shown: str) -> str:
    if b"\0" in data[:8192]:
        raise ToolError(
            f"{shown} is a binary file ({len(data)} bytes); inspect it with the shell (file, xxd)"
        )
    return data.decode("utf-8", errors="replace")


def read_lines(fs: ConfinedFS, path: str, shown: str, offset: int, limit: int | None, budget: int) -> Text:
    """Lines `offset` .. `offset + limit` of a text file, cut to about `budget` bytes."""
    text = _decode_text(fs.read_bytes(path, max_bytes=READ_MAX_BYTES), shown)
    lines = text.splitlines(keepends=True)
    total = len(lines)
    if total == 0:
        return Text(f"[{shown} is empty]")
    if offset >= total:
        raise ToolError(f"offset_line {offset} is past the end of {shown} ({total} lines)")
    end = total if limit is None else min(total, offset + limit)
    parts: list[str] = []
    used = 0
    shown_end = offset
    for line in lines[offset:end]:
        size = len(line.encode("utf-8", errors="replace"))
        if parts and used + size > budget:
            break
        parts.append(line if used + size <= budget else line[: max(0, budget - used)])
        used += size
        shown_end += 1
    body = "".join(parts)
    truncated = shown_end < end
    if offset > 0 or shown_end < total:
        note = f"[lines {offset + 1}-{shown_end} of {total}"
        if shown_end < total:
            note += f"; continue with offset_line={shown_end}"
        body += ("" if body.endswith("\n") else "\n") + note + "]"
    return Text(body, truncated=truncated)


def edit_text(
    fs: ConfinedFS, path: str, shown: str, old: str, new: str, replace_all: bool
) -> tuple[bytes, int]:
    """The new content of a file with `old` replaced by `new`, and how many replacements."""
    data = fs.read_bytes(path, max_bytes=READ_MAX_BYTES)
    if b"\0" in data[:8192]:
        raise ToolError(f"{shown} is a binary file; edit it with the shell")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ToolError(f"{shown} is not valid UTF-8 text; edit it with the shell") from None
    count = text.count(old)
    if count == 0:
        raise ToolError(f"old text not found in {shown} (it must match exactly, including whitespace)")
    if count > 1 and not replace_all:
        raise ToolError(
            f"old text occurs {count} times in {shown}; include more context to make it unique, "
            "or set replace_all"
        )
    updated = text.replace(old, new) if replace_all else text.replace(old, new, 1)
    return updated.encode("utf-8"), count if replace_all else 1


def _describe(fs: ConfinedFS, path: str, relative: str, entry: Entry) -> str:
    if entry.is_symlink:
        try:
            target = fs.readlink(path)
        except OSError:
            target = "?"
        return f"{relative}{'/' if entry.is_dir else ''} -> {target}"
    if entry.is_dir:
        return f"{relative}/"
    return f"{relative} ({entry.size} bytes)" if entry.size is not None else relative


def list_entries(fs: ConfinedFS, path: str, shown: str, recursive: bool) -> Text:
    if not fs.stat(path).st_mode & 0o040000:
        raise ToolError(f"{shown} is not a directory")
    if recursive:
        found, cut = fs.walk_files(path, max_entries=LIST_MAX_ENTRIES)
    else:
        entries = fs.list_dir(path)
        found = [(entry.name, entry) for entry in entries[:LIST_MAX_ENTRIES]]
        cut = len(entries) > LIST_MAX_ENTRIES
    if not found:
        return Text(f"[{shown} is empty]")
    lines = [_describe(fs, posixpath.join(path, relative), relative, entry) for relative, entry in found]
    if cut:
        lines.append(f"[... listing stopped after {LIST_MAX_ENTRIES} entries; list a subdirectory]")
    return Text("\n".join(lines), truncated=cut)
