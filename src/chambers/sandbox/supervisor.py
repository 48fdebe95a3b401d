"""A persistent shell that starts every command of one sandbox, so a command costs no sandbox start.

The supervisor is a small bash loop (inside bubblewrap, or on the host for the process backend)
reading one line per request from its stdin:

    r <id>     run `<runtime>/<id>.sh` in a new session, stdout/stderr to the fifos <id>.out/.err
    R <id>     the same, then kill what is left of its process group 0.2 s after the command exits
               (the grace lets a `setsid cmd &` at the very end of a command finish detaching)
    k <pid>    SIGKILL the process group <pid> (a command's group leader)

For each command a background subshell (the "waiter") opens the fifos, starts the command in its
own process group (job control), writes `p <pid>` then `x <exit code>` to the status fifo
`<id>.st`, and exits. The host
creates the fifos in a per-sandbox runtime directory (read-only inside the sandbox: fifos can be
opened for writing on a read-only mount) and reads them without blocking the event loop. Because
the waiter reports the exit of the direct command, a background child that keeps stdout open only
delays the result by a short drain grace; a detached process (its own session) outlives the command.

Timeouts and cancellation kill the command's process group: the command and every child that did
not start its own session. Ending the sandbox (stop) kills everything in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import select
import shlex
import shutil
import signal
import subprocess
import tempfile
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from chambers.sandbox.output import Capture

SUPERVISOR_SCRIPT = r"""
R=$1
__run() {
  exec 5>"$R/$2.st" 6>"$R/$2.out" 7>"$R/$2.err" </dev/null || exit 1
  set -m
  bash --noprofile --norc -c 'IFS= read -r -d "" __chambers_s <"$1"; eval "$__chambers_s"' \
    bash "$R/$2.sh" >&6 2>&7 5>&- 6>&- 7>&- &
  __pid=$!
  set +m
  exec 6>&- 7>&-
  printf 'p %s\n' "$__pid" >&5
  wait "$__pid"
  printf 'x %s\n' "$?" >&5
  exec 5>&-
  if [ "$1" = R ] && kill -0 -- "-$__pid" 2>/dev/null; then
    sleep 0.2
    kill -KILL -- "-$__pid" 2>/dev/null
  fi
}
printf 'ready\n'
exec >/dev/null 2>&1
while IFS=' ' read -r __op __arg; do
  case $__op in
    r|R) __run "$__op" "$__arg" & ;;
    k) kill -KILL -- "-$__arg" "$__arg" 2>/dev/null ;;
  esac
done
"""

_READY_TIMEOUT = 15.0
_TICK = 0.25
"""How often a waiting command checks that the workspace and the sandbox are still there."""
_DRAIN_GRACE = 2.0
"""How long to keep reading output after the direct command exited (a background child may hold it)."""
_KILL_GRACE = 5.0
_START_GRACE = 1.0
_PID_TIMEOUT = 15.0
"""A command that has not started this long after it was submitted counts as lost (the sandbox is broken)."""
_ids = itertools.count(1)
IO_DIR = "io"
"""The subdirectory of a sandbox's runtime directory that holds its fifos and scripts."""


class SandboxStartError(RuntimeError):
    """The sandbox could not be started (bubblewrap refused, a missing binary, ...)."""


class SandboxDiedError(RuntimeError):
    """The sandbox went away while a command ran (killed from inside, or stopped)."""


@dataclass(frozen=True)
class Launch:
    """How to start the supervisor: the argv ends with `bash -c SUPERVISOR_SCRIPT name <io dir>`.

    `runtime_view` is where the supervisor sees the io directory (`<runtime>/io`).
    """

    argv: list[str]
    env: dict[str, str]
    cwd: str
    runtime_view: str


@dataclass
class Execution:
    """What one command did. `exit_code` is None only if it never reported one (killed at a timeout)."""

    exit_code: int | None
    stdout: Capture
    stderr: Capture
    side: bytes = b""
    timed_out: bool = False
    overflowed: bool = False


def _kill_process(proc: subprocess.Popen[bytes], runtime: Path) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=2)
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
    shutil.rmtree(runtime, ignore_errors=True)


def _spawn(launch: Launch) -> subprocess.Popen[bytes]:
    # Spawned from the event loop's own thread on purpose: bubblewrap's --die-with-parent
    # (PR_SET_PDEATHSIG) fires when the *thread* that forked it ends, and worker threads do end.
    return subprocess.Popen(
        launch.argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=launch.cwd,
        env=launch.env,
        start_new_session=True,
    )


@dataclass
class _Running:
    proc: subprocess.Popen[bytes]
    runtime: Path
    runtime_view: str
    finalizer: Callable[[], object]
    commands: dict[str, _Command] = field(default_factory=dict)


class Supervisor:
    """Owns one sandbox's supervisor process; starts it on first use and again if it died."""

    def __init__(
        self,
        launch: Callable[[Path], Launch],
        *,
        owner: tuple[int, int] | None,
        runtime_root: Path | None = None,
    ) -> None:
        self._launch = launch
        self._owner = owner
        self._runtime_root = runtime_root
        self._running: _Running | None = None
        self._starting: asyncio.Future[None] | None = None

    @property
    def alive(self) -> bool:
        return self._running is not None and self._running.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._running is None else self._running.proc.pid

    async def ensure_started(self) -> _Running:
        while True:
            running = self._running
            if running is not None and running.proc.poll() is None:
                return running
            if self._starting is not None and not self._starting.done():
                await asyncio.shield(self._starting)
                continue
            if running is not None:
                self._discard(running)
            starting = self._starting = asyncio.get_running_loop().create_future()
            try:
                self._running = await self._start()
            finally:
                # Waiters look again: at the new sandbox, or (after a failure) start their own.
                starting.set_result(None)
                self._starting = None

    async def _start(self) -> _Running:
        if self._runtime_root is not None:
            self._runtime_root.mkdir(parents=True, exist_ok=True)
        base = Path(tempfile.mkdtemp(prefix="chambers-rt-", dir=self._runtime_root))
        try:
            io = base / IO_DIR
            io.mkdir(mode=0o700)
            if self._owner is not None:
                os.chmod(base, 0o711)  # noqa: S103 - the sandbox user must reach its directories below
                os.chown(io, *self._owner)
            launch = self._launch(base)
            proc = _spawn(launch)
        except BaseException:
            shutil.rmtree(base, ignore_errors=True)
            raise
        finalizer = weakref.finalize(self, _kill_process, proc, base)
        running = _Running(proc, io, launch.runtime_view, finalizer)
        try:
            await self._wait_ready(proc)
        except BaseException:
            finalizer()
            raise
        return running

    @staticmethod
    async def _wait_ready(proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        os.set_blocking(fd, False)
        loop = asyncio.get_running_loop()
        buffer = bytearray()
        done: asyncio.Future[bool] = loop.create_future()

        def readable() -> None:
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            buffer.extend(chunk)
            if done.done():
                return
            if b"ready\n" in buffer:
                done.set_result(True)
            elif not chunk:
                done.set_result(False)

        loop.add_reader(fd, readable)
        try:
            async with asyncio.timeout(_READY_TIMEOUT):
                ready = await done
        except TimeoutError:
            raise SandboxStartError(f"the sandbox did not start within {_READY_TIMEOUT:g}s") from None
        finally:
            loop.remove_reader(fd)
        if not ready:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2)
            detail = buffer.decode("utf-8", errors="replace").strip() or f"exit status {proc.returncode}"
            raise SandboxStartError(f"the sandbox failed to start: {detail}")

    def _discard(self, running: _Running) -> None:
        if self._running is running:
            self._running = None
        running.finalizer()

    async def stop(self) -> None:
        """Kill the sandbox and every process in it (the process backend: the commands still running)."""
        running = self._running
        if running is None:
            return
        self._running = None
        for command in list(running.commands.values()):
            command.kill()
        await asyncio.to_thread(running.finalizer)

    async def execute(
        self,
        script: str,
        *,
        timeout: float | None,
        stdout: Capture,
        stderr: Capture,
        side: bool = False,
        reap: bool = False,
        check_alive: Callable[[], None] = lambda: None,
    ) -> Execution:
        """Run a bash script (from a file, in its own process group) and wait for it.

        `check_alive` runs every tick and may raise to abandon the command (it is killed). The
        script can write the side channel with `> "$CHAMBERS_SIDE"` when `side` is set. `reap`
        kills the command's leftover process group (background jobs) as soon as it exits.
        """

        def make(running: _Running) -> _Command:
            return _Command(running, script, stdout=stdout, stderr=stderr, side=side, owner=self._owner)

        for attempt in (1, 2):
            running = await self.ensure_started()
            command = make(running)
            try:
                command.submit(reap)
                return await command.wait(timeout, check_alive)
            except (BrokenPipeError, SandboxDiedError) as error:
                # The sandbox died (killed from inside). It starts again on the next command; a
                # command that had not started yet is retried once in the new one.
                self._discard(running)
                if command.pid is not None or attempt == 2:
                    raise SandboxDiedError("the sandbox ended while the command ran") from error
            finally:
                command.cleanup()
        raise AssertionError("unreachable")


class _Command:
    """One command's fifos, state and wait loop."""

    def __init__(
        self,
        running: _Running,
        script: str,
        *,
        stdout: Capture,
        stderr: Capture,
        side: bool,
        owner: tuple[int, int] | None,
    ) -> None:
        self.running = running
        self.cid = f"c{next(_ids)}"
        self.base = running.runtime / self.cid
        self.script = f"CHAMBERS_SIDE={shlex.quote(f'{running.runtime_view}/{self.cid}.side')}\n{script}"
        self.owner = owner
        self.stdout = stdout
        self.stderr = stderr
        self.side_buffer = bytearray()
        self.channels = ["st", "out", "err"] + (["side"] if side else [])
        self.read_fds: dict[str, int] = {}
        self.dummy_fds: dict[str, int] = {}
        self.eof: set[str] = set()
        self.status = bytearray()
        self.pid: int | None = None
        self.exit_code: int | None = None
        self.kill_requested = False
        self.changed: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.submitted = False

    def _path(self, channel: str) -> str:
        return f"{self.base}.{channel}"

    def submit(self, reap: bool) -> None:
        for channel in self.channels:
            path = self._path(channel)
            os.mkfifo(path, 0o600)
            if self.owner is not None:
                os.chown(path, *self.owner)
            self.read_fds[channel] = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            # Held until the waiter has opened its ends, so an early read does not see EOF.
            self.dummy_fds[channel] = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self._path("sh"), flags, 0o600)
        try:
            if self.owner is not None:
                os.fchown(fd, *self.owner)
            os.write(fd, self.script.encode("utf-8", errors="surrogateescape"))
        finally:
            os.close(fd)
        self.loop = asyncio.get_running_loop()
        self.changed = asyncio.Event()
        for channel, fd in self.read_fds.items():
            self.loop.add_reader(fd, self._readable, channel)
        self._send(f"{'R' if reap else 'r'} {self.cid}\n")
        self.submitted = True
        self.running.commands[self.cid] = self

    def _send(self, line: str) -> None:
        stdin = self.running.proc.stdin
        assert stdin is not None
        os.write(stdin.fileno(), line.encode())

    def _close_dummy(self, channel: str) -> None:
        fd = self.dummy_fds.pop(channel, None)
        if fd is not None:
            os.close(fd)

    def _readable(self, channel: str) -> None:
        fd = self.read_fds[channel]
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            assert self.loop is not None
            self.loop.remove_reader(fd)
            self.eof.add(channel)
        elif channel == "out":
            self.stdout.feed(chunk)
        elif channel == "err":
            self.stderr.feed(chunk)
        elif channel == "side":
            self.side_buffer.extend(chunk[: max(0, (1 << 20) - len(self.side_buffer))])
        else:
            self._status(chunk)
        assert self.changed is not None
        self.changed.set()

    def _status(self, chunk: bytes) -> None:
        self.status.extend(chunk)
        while b"\n" in self.status:
            line, _, rest = bytes(self.status).partition(b"\n")
            self.status[:] = rest
            kind, _, value = line.decode("ascii", errors="replace").partition(" ")
            if not value.isdigit():
                continue
            if kind == "p" and self.pid is None:
                self.pid = int(value)
                # The waiter and the command hold their ends now: EOF means they are gone.
                for channel in ("st", "out", "err"):
                    self._close_dummy(channel)
                if self.kill_requested:
                    self.kill()
            elif kind == "x" and self.exit_code is None:
                self.exit_code = int(value)
                self._close_dummy("side")

    def kill(self) -> None:
        """Kill the command's process group (as soon as its pid is known)."""
        self.kill_requested = True
        if self.pid is None or self.pid <= 1 or self.exit_code is not None:
            return
        with contextlib.suppress(OSError):
            self._send(f"k {self.pid}\n")

    def _outputs_done(self) -> bool:
        return all(channel in self.eof for channel in self.channels if channel != "st")

    def _overflowed(self) -> bool:
        return self.stdout.overflowed or self.stderr.overflowed

    async def wait(self, timeout: float | None, check_alive: Callable[[], None]) -> Execution:
        assert self.loop is not None and self.changed is not None
        loop = self.loop
        deadline = None if timeout is None else loop.time() + timeout
        start_by = loop.time() + _PID_TIMEOUT
        drain_until: float | None = None
        timed_out = False
        while True:
            now = loop.time()
            if self.exit_code is not None:
                if self._outputs_done():
                    break
                if drain_until is None:
                    drain_until = now + _DRAIN_GRACE
                elif now >= drain_until:
                    break
            elif "st" in self.eof:
                if timed_out:
                    break
                raise SandboxDiedError("the sandbox ended while the command ran")
            if self._overflowed() and self.exit_code is None:
                self.kill()
                return self._result(timed_out=False, overflowed=True)
            if deadline is not None and now >= deadline and self.exit_code is None:
                if timed_out:
                    break  # killed, and still no exit code after the grace
                timed_out = True
                self.kill()
                deadline = now + _KILL_GRACE
            wake = now + _TICK
            for limit in (deadline, drain_until):
                if limit is not None:
                    wake = min(wake, limit)
            self.changed.clear()
            try:
                async with asyncio.timeout_at(wake):
                    await self.changed.wait()
            except TimeoutError:
                check_alive()
                if self.pid is None and (self.running.proc.poll() is not None or loop.time() > start_by):
                    raise SandboxDiedError("the sandbox did not start the command") from None
        return self._result(timed_out=timed_out, overflowed=False)

    def _result(self, *, timed_out: bool, overflowed: bool) -> Execution:
        return Execution(
            exit_code=self.exit_code,
            stdout=self.stdout,
            stderr=self.stderr,
            side=bytes(self.side_buffer),
            timed_out=timed_out,
            overflowed=overflowed,
        )

    def _await_pid_blocking(self) -> None:
        """After a cancellation before the command reported its pid: wait briefly so it can be killed."""
        fd = self.read_fds.get("st")
        if fd is None or "st" in self.eof:
            return
        with contextlib.suppress(OSError):
            os.unlink(self._path("sh"))  # not started yet: it will fail to start instead
        end = (self.loop.time() if self.loop else 0) + _START_GRACE
        while self.pid is None and self.loop is not None:
            remaining = end - self.loop.time()
            if remaining <= 0:
                return
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                return
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                continue
            if not chunk:
                return
            self._status(chunk)

    def cleanup(self) -> None:
        if self.submitted and self.exit_code is None and self.running.proc.poll() is None:
            if self.pid is None:
                if self.loop is not None and "st" in self.read_fds:
                    self.loop.remove_reader(self.read_fds["st"])
                self._await_pid_blocking()
            self.kill()
        self.running.commands.pop(self.cid, None)
        for channel, fd in self.read_fds.items():
            if self.loop is not None and channel not in self.eof:
                self.loop.remove_reader(fd)
            os.close(fd)
        self.read_fds.clear()
        for channel in list(self.dummy_fds):
            self._close_dummy(channel)
        for suffix in ("sh", *self.channels):
            with contextlib.suppress(OSError):
                os.unlink(self._path(suffix))
