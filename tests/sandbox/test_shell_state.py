"""The shell's working directory and exported variables persist, also across SessionSandbox instances."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

from chambers.sandbox import BackendName, SandboxLimits, SessionSandbox, write_state

LIMITS = SandboxLimits(command_timeout_s=20)


def _box(scratch: Path, backend_name: str) -> SessionSandbox:
    return SessionSandbox(
        scratch / "ws", scratch / "state" / "shell.json", cast(BackendName, backend_name), LIMITS
    )


async def test_cwd_and_env_persist_between_calls(scratch: Path, backend_name: str) -> None:
    async with _box(scratch, backend_name) as box:
        root = await box.working_dir()
        first = await box.shell("mkdir -p sub/deeper && cd sub && export FOO=1 BAR='two words' && unset TERM")
        assert first.ok, first
        second = await box.shell('pwd; echo "$FOO/$BAR/${TERM-unset}"')
        assert second.output == f"{root}/sub\n1/two words/unset\n[exit code: 0]"
        assert box.shell_state() == {
            "version": 1,
            "cwd": "sub",
            "env": {"BAR": "two words", "FOO": "1"},
            "unset": ["TERM"],
        }
        # Not persisted: plain shell variables, and state from a command that was killed.
        await box.shell("LOCAL=x; cd deeper")
        assert (await box.shell('pwd; echo "[$LOCAL]"')).output == f"{root}/sub/deeper\n[]\n[exit code: 0]"
        await box.shell("cd /tmp; export LATE=1; sleep 30", timeout=1)
        assert (
            await box.shell("pwd; echo ${LATE-none}")
        ).output == f"{root}/sub/deeper\nnone\n[exit code: 0]"


async def test_state_survives_a_new_sandbox_on_the_same_state_file(scratch: Path, backend_name: str) -> None:
    async with _box(scratch, backend_name) as box:
        root = await box.working_dir()
        assert (await box.shell("mkdir -p sub && cd sub && export FOO=1; exit 3")).output == "[exit code: 3]"
    saved = json.loads((scratch / "state" / "shell.json").read_text())
    assert saved == {"version": 1, "cwd": "sub", "env": {"FOO": "1"}, "unset": []}
    async with _box(scratch, backend_name) as again:
        assert (await again.shell('pwd; echo "$FOO"')).output == f"{root}/sub\n1\n[exit code: 0]"


async def test_a_vanished_directory_falls_back_to_the_root(scratch: Path, backend_name: str) -> None:
    async with _box(scratch, backend_name) as box:
        root = await box.working_dir()
        await box.shell("mkdir gone && cd gone")
        await box.shell("rmdir ../gone")
        result = await box.shell("pwd")
        assert "no longer exists" in result.output and result.output.endswith(f"{root}\n[exit code: 0]")


async def test_restored_state_is_written_for_the_next_sandbox(scratch: Path, backend_name: str) -> None:
    write_state(
        scratch / "state" / "shell.json",
        {"version": 1, "cwd": ".", "env": {"X": "from snapshot"}, "unset": []},
    )
    async with _box(scratch, backend_name) as box:
        assert (await box.shell('echo "$X"')).output == "from snapshot\n[exit code: 0]"


async def test_a_broken_state_file_is_ignored(scratch: Path, backend_name: str) -> None:
    (scratch / "state").mkdir()
    (scratch / "state" / "shell.json").write_text("{not json")
    async with _box(scratch, backend_name) as box:
        assert (await box.shell("export A=1")).ok
        assert box.shell_state()["env"] == {"A": "1"}
