"""What a command in the bubblewrap sandbox can and cannot reach (real bwrap, real processes)."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chambers.sandbox import SandboxLimits, SessionSandbox

pytestmark = pytest.mark.bwrap

LIMITS = SandboxLimits(command_timeout_s=20)


@pytest.fixture
def data_dir(scratch: Path) -> Path:
    """A stand-in for the server's data directory: workspaces, state files and a secret."""
    (scratch / "data" / "workspaces").mkdir(parents=True)
    (scratch / "data" / "secret.txt").write_text("server secret")
    return scratch / "data"


@pytest.fixture
async def sandbox(data_dir: Path) -> AsyncIterator[SessionSandbox]:
    box = SessionSandbox(data_dir / "workspaces" / "s1", data_dir / "state" / "s1.json", "bwrap", LIMITS)
    yield box
    await box.close()


async def test_host_files_are_not_visible(sandbox: SessionSandbox, data_dir: Path) -> None:
    other = data_dir / "workspaces" / "s2"
    other.mkdir()
    (other / "notes.txt").write_text("other session")
    host_tmp = Path(tempfile.mkdtemp(prefix="chambers-host-"))
    (host_tmp / "marker").write_text("host tmp")
    try:
        for path in (data_dir / "secret.txt", other / "notes.txt", host_tmp / "marker"):
            result = await sandbox.shell(f"cat {path}")
            assert not result.ok
            assert "No such file or directory" in result.output
        result = await sandbox.shell("ls -A /root /home /work /tmp /run/chambers | head -50; ls /")
        assert "secret" not in result.output and "s2" not in result.output
        listing = (await sandbox.shell("ls /")).output.split()
        for name in ("root", "home", "work", "srv", "mnt", "opt"):
            assert name not in listing
        assert (await sandbox.shell("ls -A /tmp | wc -l")).output.startswith("0\n")
    finally:
        (host_tmp / "marker").unlink()
        host_tmp.rmdir()


async def test_system_directories_are_read_only(sandbox: SessionSandbox) -> None:
    commands = (
        "touch /usr/pwned",
        "echo x >> /etc/passwd",
        "mkdir /etc/pwned",
        "touch /bin/pwned",
        "touch /x",
    )
    for command in (*commands, "touch /dev/x", "mkdir /run/x"):
        result = await sandbox.shell(command)
        assert not result.ok, command
        assert "Read-only file system" in result.output or "Permission denied" in result.output
    assert not Path("/usr/pwned").exists() and not Path("/etc/pwned").exists()
    assert (await sandbox.shell("echo ok > /workspace/f && echo ok > /tmp/f && cat /workspace/f /tmp/f")).ok
    # The writable memory-backed directories have a size.
    sizes = await sandbox.shell("df --output=size -B1 /tmp /dev/shm | tail -2")
    tmp_size, shm_size = (int(value) for value in sizes.output.split()[:2])
    assert tmp_size <= LIMITS.max_file_bytes and shm_size <= 64 * 1024 * 1024


async def test_no_network(sandbox: SessionSandbox) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        result = await sandbox.shell(f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected")
        assert not result.ok
        assert "connected" not in result.output
        with pytest.raises(BlockingIOError):
            listener.accept()
    interfaces = (await sandbox.shell("cat /proc/net/dev")).output
    assert "eth" not in interfaces and "ens" not in interfaces


async def test_network_when_the_limits_allow_it(data_dir: Path) -> None:
    limits = SandboxLimits(command_timeout_s=20, network=True)
    async with SessionSandbox(data_dir / "workspaces" / "net", data_dir / "net.json", "bwrap", limits) as box:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            port = listener.getsockname()[1]
            result = await box.shell(f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected")
            assert result.ok and "connected" in result.output
            connection, _ = listener.accept()
            connection.close()


async def test_server_environment_does_not_leak(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-for-the-sandbox")
    monkeypatch.setenv("CHAMBERS_SECRET", "also-not")
    async with SessionSandbox(data_dir / "workspaces" / "env", data_dir / "env.json", "bwrap", LIMITS) as box:
        result = await box.shell("env; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'")
        assert result.ok
        assert "sk-test-not-for-the-sandbox" not in result.output
        assert "also-not" not in result.output
        assert "OPENAI_API_KEY" not in result.output
        assert "HOME=/workspace" in result.output


async def test_runs_as_an_unprivileged_user_without_capabilities(sandbox: SessionSandbox) -> None:
    result = await sandbox.shell("id -u; grep -E '^Cap(Eff|Prm|Bnd)' /proc/self/status; unshare -U true")
    lines = result.output.splitlines()
    assert lines[0] == "1000"
    assert all(line.endswith("0000000000000000") for line in lines[1:4])
    assert not result.ok  # no nested user namespaces


async def test_fork_bomb_ends_and_the_host_is_fine(sandbox: SessionSandbox) -> None:
    host_before = _host_process_count()
    # The classic bomb: `:` returns at once and leaves its children behind, which are killed
    # with the command's process group when it returns.
    result = await sandbox.shell(":(){ :|:& };:", timeout=10)
    assert "[exit code:" in result.output or "timed out" in result.output
    # A bomb that keeps the foreground busy runs into the process limit, then the timeout.
    result = await sandbox.shell(":(){ :|:; };:", timeout=3)
    assert not result.ok and "timed out after 3s" in result.output
    after = await sandbox.shell("ps -e --no-headers | wc -l")
    assert after.ok and int(after.output.split()[0]) < 10
    assert _host_process_count() < host_before + 50


async def test_process_limit_applies(data_dir: Path) -> None:
    limits = SandboxLimits(command_timeout_s=20, max_processes=20)
    async with SessionSandbox(data_dir / "workspaces" / "np", data_dir / "np.json", "bwrap", limits) as box:
        result = await box.shell(
            "for i in $(seq 40); do sleep 30 > /dev/null & done; echo started", timeout=2
        )
        assert "Resource temporarily unavailable" in result.output


async def test_time_limit_kills_the_whole_command(sandbox: SessionSandbox) -> None:
    result = await sandbox.shell("sleep 300 & echo $! > bg.pid; sleep 300", timeout=1)
    assert not result.ok
    assert "[timed out after 1s; the command and its child processes were killed]" in result.output
    check = await sandbox.shell('kill -0 "$(cat bg.pid)" 2>/dev/null && echo alive || echo gone')
    assert check.output.startswith("gone")


async def test_detached_processes_survive_the_command(sandbox: SessionSandbox) -> None:
    started = await sandbox.shell("setsid sleep 300 > /dev/null 2>&1 & echo $! > d.pid")
    assert started.ok
    check = await sandbox.shell('kill -0 "$(cat d.pid)" && echo alive')
    assert check.output.startswith("alive")


async def test_huge_output_is_truncated_with_a_marker(sandbox: SessionSandbox) -> None:
    result = await sandbox.shell("seq 1 2000000")
    assert result.ok and result.truncated
    assert "[... truncated " in result.output and " bytes ...]" in result.output
    assert result.output.startswith("1\n2\n3\n")
    assert "2000000\n[exit code: 0]" in result.output
    assert len(result.output.encode()) < LIMITS.output_limit_bytes + 200


async def test_memory_and_file_size_limits(data_dir: Path) -> None:
    limits = SandboxLimits(command_timeout_s=20, memory_bytes=256 * 1024 * 1024, max_file_bytes=1024 * 1024)
    async with SessionSandbox(data_dir / "workspaces" / "mem", data_dir / "mem.json", "bwrap", limits) as box:
        big_file = await box.shell("head -c 5000000 /dev/zero > big; echo rc=$?; stat -c %s big")
        assert "rc=153" in big_file.output or "File size limit exceeded" in big_file.output
        assert "1048576" in big_file.output
        if (await box.shell("command -v python3")).ok:
            memory = await box.shell("python3 -c 'bytearray(512 * 1024 * 1024)'")
            assert not memory.ok and "MemoryError" in memory.output


async def test_workspace_quota(data_dir: Path) -> None:
    limits = SandboxLimits(
        command_timeout_s=20, max_workspace_bytes=1024 * 1024, max_file_bytes=4 * 1024 * 1024
    )
    async with SessionSandbox(data_dir / "workspaces" / "q", data_dir / "q.json", "bwrap", limits) as box:
        assert (await box.shell("head -c 2000000 /dev/zero > big")).ok
        assert await box.backend.disk_usage() == 2_000_000  # measured now (normally in the background)
        over = await box.shell("echo more > small")
        assert not over.ok
        assert "over its disk quota" in over.output
        refused = await box.write_file("other.txt", "data")
        assert not refused.ok and "quota" in refused.output
        assert (await box.shell("rm big")).ok
        await box.backend.disk_usage()
        assert (await box.shell("echo more > small")).ok
        assert (await box.write_file("other.txt", "data")).ok


def _host_process_count() -> int:
    return sum(1 for name in os.listdir("/proc") if name.isdigit())


@pytest.mark.parametrize("passable", [False, True])
async def test_both_ways_of_starting_as_root(scratch: Path, passable: bool) -> None:
    """As root, bwrap runs as the sandbox user; a private directory above the workspace is bridged."""
    if os.geteuid() != 0:
        pytest.skip("only root drops to a separate sandbox user")
    scratch.chmod(0o711 if passable else 0o700)
    (scratch / "secret.txt").write_text("server secret")
    async with SessionSandbox(scratch / "ws", scratch / "state.json", "bwrap", LIMITS) as box:
        result = await box.shell(f"cat {scratch / 'secret.txt'}; echo hi > /workspace/f; id -u; stat -c %u f")
        assert "server secret" not in result.output and "hi" not in result.output
        assert (scratch / "ws" / "f").read_text() == "hi\n"
        assert (scratch / "ws" / "f").stat().st_uid == 65534  # the sandbox user owns what it writes
        pid = box.backend.sandbox_pid
        assert pid is not None
        same_mounts = os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
        assert same_mounts == passable  # the bridge is a private mount namespace


async def test_the_sandbox_restarts_after_being_killed_from_inside(sandbox: SessionSandbox) -> None:
    await sandbox.shell("export KEPT=1")
    killed = await sandbox.shell("kill -9 -1; sleep 5")
    assert not killed.ok
    again = await sandbox.shell('echo "back $KEPT"')
    assert again.output == "back 1\n[exit code: 0]"


async def test_a_cancelled_command_is_killed(sandbox: SessionSandbox, data_dir: Path) -> None:
    pid_file = data_dir / "workspaces" / "s1" / "pid"
    task = asyncio.create_task(sandbox.shell("echo $$ > pid; exec sleep 300"))
    while not pid_file.exists() or not pid_file.read_text().strip():
        await asyncio.sleep(0.02)  # polling for the command to start, not a timing assumption
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Killed at once; the loop only covers the moment until its parent has reaped it.
    check = await sandbox.shell(
        'for i in $(seq 50); do kill -0 "$(cat pid)" 2>/dev/null || break; sleep 0.1; done; echo $i'
    )
    assert int(check.output.split()[0]) < 10


async def test_destroy_ends_the_sandbox_and_removes_the_workspace(sandbox: SessionSandbox) -> None:
    assert (await sandbox.shell("setsid sleep 300 >/dev/null 2>&1 & echo started")).ok
    pid = sandbox.backend.sandbox_pid
    assert pid is not None and Path(f"/proc/{pid}").exists()
    await sandbox.backend.destroy()
    assert not sandbox.workspace.exists()
    assert not Path(f"/proc/{pid}").exists()  # killed and reaped, with everything inside it
    result = await sandbox.shell("true")
    assert not result.ok and "no longer available" in result.output
