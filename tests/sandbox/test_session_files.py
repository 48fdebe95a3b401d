"""The file tools of `SessionSandbox`: confinement to the workspace, validation, results."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from chambers.sandbox import BackendName, SandboxLimits, SessionSandbox

LIMITS = SandboxLimits(command_timeout_s=20, output_limit_bytes=4096)


@pytest.fixture
def workspace(scratch: Path) -> Path:
    path = scratch / "workspaces" / "s1"
    path.mkdir(parents=True)
    return path


@pytest.fixture
async def box(scratch: Path, workspace: Path, backend_name: str) -> AsyncIterator[SessionSandbox]:
    sandbox = SessionSandbox(workspace, scratch / "s1.json", cast(BackendName, backend_name), LIMITS)
    yield sandbox
    await sandbox.close()


async def test_write_read_edit(box: SessionSandbox, workspace: Path) -> None:
    assert (await box.write_file("src/app.py", "a = 1\nb = 2\nb = 2\n")).ok
    assert (workspace / "src" / "app.py").read_text() == "a = 1\nb = 2\nb = 2\n"
    read = await box.read_file("src/app.py")
    assert read.ok and read.output == "a = 1\nb = 2\nb = 2\n"
    part = await box.read_file("src/app.py", offset_line=1, limit_lines=1)
    assert part.output == "b = 2\n[lines 2-2 of 3; continue with offset_line=2]"
    twice = await box.edit_file("src/app.py", "b = 2", "b = 3")
    assert not twice.ok and "occurs 2 times" in twice.output
    missing = await box.edit_file("src/app.py", "c = 4", "c = 5")
    assert not missing.ok and "not found" in missing.output
    assert (await box.edit_file("src/app.py", "a = 1", "a = 10")).ok
    assert (await box.edit_file("src/app.py", "b = 2", "b = 3", replace_all=True)).output.startswith(
        "replaced 2 occurrences"
    )
    assert (workspace / "src" / "app.py").read_text() == "a = 10\nb = 3\nb = 3\n"
    # What the shell sees is what the file tools wrote.
    assert "a = 10" in (await box.shell("cat src/app.py")).output


async def test_files_written_by_tools_belong_to_the_sandbox(box: SessionSandbox) -> None:
    assert (await box.write_file("dir/owned.txt", "x")).ok
    result = await box.shell("echo more >> dir/owned.txt && touch dir/new && rm dir/owned.txt && echo done")
    assert result.ok and "done" in result.output


async def test_list_and_grep(box: SessionSandbox, workspace: Path) -> None:
    await box.write_file("a.txt", "needle one\nhay\n")
    await box.write_file("sub/b.py", "x = 'needle two'\n")
    await box.write_file("sub/c.txt", "no match\n")
    os.symlink("/etc", workspace / "etc-link")
    flat = await box.list_files()
    assert flat.output.splitlines() == ["a.txt (15 bytes)", "etc-link -> /etc", "sub/"]
    tree = await box.list_files(".", recursive=True)
    assert "sub/b.py (17 bytes)" in tree.output and "passwd" not in tree.output
    found = await box.grep("needle \\w+")
    assert found.ok
    assert sorted(found.output.splitlines()) == ["a.txt:1: needle one", "sub/b.py:1: x = 'needle two'"]
    only_py = await box.grep("needle", glob="*.py")
    assert only_py.output == "sub/b.py:1: x = 'needle two'"
    assert (await box.grep("absent")).output == "no matches"
    bad = await box.grep("(unclosed")
    assert not bad.ok and "grep failed" in bad.output


@pytest.mark.parametrize(
    "path",
    [
        "../outside.txt",
        "sub/../../outside.txt",
        "/etc/passwd",
        "/tmp/x",
        "etc-link/passwd",
        "pw",
        "up/secret",
    ],
)
async def test_paths_outside_the_workspace_are_refused(
    box: SessionSandbox, workspace: Path, scratch: Path, path: str
) -> None:
    (scratch / "workspaces" / "secret").write_text("other data")
    os.symlink("/etc", workspace / "etc-link")
    os.symlink("/etc/passwd", workspace / "pw")
    os.symlink("..", workspace / "up")
    for result in (
        await box.read_file(path),
        await box.write_file(path, "pwned"),
        await box.edit_file(path, "root", "toor"),
        await box.list_files(path),
        await box.grep("root", path),
    ):
        assert not result.ok, result
        assert result.output.startswith("error: ")
        assert "outside the workspace" in result.output or "leaves the workspace" in result.output
    assert not Path("/etc/pwned").exists() and not (scratch / "outside.txt").exists()
    assert (scratch / "workspaces" / "secret").read_text() == "other data"


async def test_links_inside_the_workspace_are_followed(box: SessionSandbox, workspace: Path) -> None:
    await box.write_file("real/data.txt", "inside")
    os.symlink("real", workspace / "relative")
    root = await box.working_dir()
    os.symlink(f"{root}/real", workspace / "absolute")  # as a command in the sandbox would make it
    assert (await box.read_file("relative/data.txt")).output == "inside"
    assert (await box.read_file("absolute/data.txt")).output == "inside"
    assert (await box.read_file(f"{root}/real/data.txt")).output == "inside"


async def test_arguments_are_validated(box: SessionSandbox) -> None:
    untrusted = cast(Any, box)
    cases = [
        await untrusted.read_file(None),
        await untrusted.read_file(""),
        await untrusted.read_file("a\0b"),
        await untrusted.read_file("a.txt", offset_line=-1),
        await untrusted.read_file("a.txt", offset_line=True),
        await untrusted.read_file("a.txt", limit_lines=0),
        await untrusted.write_file("a.txt", 42),
        await untrusted.edit_file("a.txt", "", "x"),
        await untrusted.edit_file("a.txt", "x", "x"),
        await untrusted.edit_file("a.txt", "x", "y", replace_all="yes"),
        await untrusted.list_files("x" * 5000),
        await untrusted.list_files(".", recursive="no"),
        await untrusted.grep(""),
        await untrusted.grep("x", glob=3),
        await untrusted.shell(["ls"]),
        await untrusted.shell("true", timeout=float("inf")),
        await untrusted.shell("true", timeout=-1),
        await untrusted.shell("true", timeout="5"),
    ]
    for result in cases:
        assert not result.ok and result.output.startswith("error: "), result


async def test_read_reports_problems_readably(box: SessionSandbox, workspace: Path) -> None:
    (workspace / "bin.dat").write_bytes(b"\x00\x01\x02")
    (workspace / "dir").mkdir()
    assert "binary file" in (await box.read_file("bin.dat")).output
    assert "is a directory" in (await box.read_file("dir")).output
    assert "does not exist" in (await box.read_file("nope.txt")).output
    (workspace / "short.txt").write_text("one\n")
    assert "past the end" in (await box.read_file("short.txt", offset_line=5)).output
    (workspace / "long.txt").write_text("".join(f"line {n}\n" for n in range(2000)))
    long = await box.read_file("long.txt")
    assert long.truncated and "continue with offset_line=" in long.output
    assert len(long.output.encode()) < LIMITS.output_limit_bytes + 200


async def test_closed_sandbox_refuses(box: SessionSandbox) -> None:
    await box.close()
    result = await box.shell("true")
    assert not result.ok and "closed" in result.output
