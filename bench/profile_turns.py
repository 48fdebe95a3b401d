"""Profile the per-turn hot path: `chambers serve` driven with streamed turns, sampled or traced.

    python -m bench.profile_turns [--sampler py-spy|cprofile] [--turns 500] [--concurrency 8]
                                  [--tokens 200] [--ttft 0] [--gap 0]

The fake upstream runs at zero latency by default (`--ttft 0 --gap 0`), so the profile shows the
server's own cost; `--tokens 1` isolates the fixed cost of a turn from its per-token cost.

- `py-spy` (the default): the server runs as usual and py-spy samples it from outside (250 Hz, raw
  stacks in `bench/results/turns.pyspy`), so shares are not distorted by tracing. The report counts
  the main thread's busy samples in Python code (the event loop in `select`, or in uvloop's C code, is not
  counted) and also prints the server's CPU time per turn, measured from `/proc` without the sampler.
- `cprofile`: `python -m cProfile -m chambers serve`, stopped with SIGINT (uvicorn re-raises it and
  cProfile's `finally` writes `bench/results/turns.prof`; SIGTERM would kill it unwritten). It traces
  every call of the main thread, so it slows Python code several times: read shares, not times.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    RESULTS,
    ROOT,
    FakeUpstreamProcess,
    child_environment,
    cpu_seconds,
    raise_fd_limit,
    server_env,
    wait_until_warm,
)
from bench.load import Clients, chambers_turn, create_sessions

_KEY = re.compile(r"^\s*(chk_[A-Za-z0-9_\-]+)\s*$")


class ProfiledServer:
    """`python -m cProfile -o OUT -m chambers serve` on a free port and a temporary data dir."""

    def __init__(self, out: Path, env: dict[str, str]) -> None:
        from tests.support.server import free_port

        self.out = out
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = Path(tempfile.mkdtemp(prefix="chambers-profile-"))
        self.env = env
        self.admin_key: str | None = None
        self.output: list[str] = []
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 60.0) -> ProfiledServer:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHAMBERS_")}
        env.update(
            CHAMBERS_DATA_DIR=str(self.data_dir),
            CHAMBERS_PORT=str(self.port),
            CHAMBERS_HOST="127.0.0.1",
            PYTHONUNBUFFERED="1",
            **self.env,
        )
        cmd = [sys.executable, "-m", "cProfile", "-o", str(self.out), "-m", "chambers", "serve"]
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited during start:\n" + "".join(self.output))
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200 and self.admin_key:
                    wait_until_warm(self.url)
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError("server did not become ready:\n" + "".join(self.output))

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            match = _KEY.match(line)
            if match and self.admin_key is None:
                self.admin_key = match.group(1)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGINT, so that cProfile writes its output; SIGKILL only if it hangs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.data_dir, ignore_errors=True)


async def drive(url: str, key: str, turns: int, concurrency: int) -> tuple[int, float]:
    """`turns` streamed turns (POST /respond, each on a new session), `concurrency` at a time."""
    clients = Clients(url, key, concurrency + 16)
    try:
        sessions = await create_sessions(clients, turns)
        todo = iter(sessions)
        ok = 0

        async def worker() -> None:
            nonlocal ok
            for chat_id in todo:
                if (await chambers_turn(clients.pick(), chat_id, 4)).ok:
                    ok += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return ok, time.perf_counter() - t0
    finally:
        await clients.close()


def by_package(stats: pstats.Stats) -> list[tuple[str, float]]:
    """Own time summed by where the code lives: chambers, a site-packages distribution, stdlib, builtins."""
    totals: dict[str, float] = {}
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    for (filename, _line, name), (_cc, _nc, tottime, _ct, _callers) in raw.items():
        if "/src/chambers/" in filename:
            key = "chambers"
        elif match := re.search(r"site-packages/([^/]+)", filename):
            key = match.group(1).removesuffix(".py")
        elif filename == "~":
            key = "builtin " + name.split(" of ")[0].strip("<>{}")
        elif "/lib/python3" in filename:
            key = "stdlib " + filename.rsplit("/lib/python3", 1)[1].split("/")[1].removesuffix(".py")
        else:
            key = filename
        totals[key] = totals.get(key, 0.0) + tottime
    return sorted(totals.items(), key=lambda kv: -kv[1])


def report(path: Path, top: int) -> str:
    """Own time by package, then top functions by cumulative and own time, in chambers and overall."""
    buf = io.StringIO()
    stats = pstats.Stats(str(path), stream=buf)
    packages = by_package(stats)
    total = sum(t for _, t in packages) or 1.0
    buf.write("=== own time by package (main thread) ===\n")
    for name, seconds in packages[:top]:
        buf.write(f"{seconds:9.2f} s {100 * seconds / total:5.1f}%  {name}\n")
    for title, sort, restrict in (
        ("chambers, by cumulative time", "cumulative", r"/chambers/"),
        ("chambers, by own time (tottime)", "tottime", r"/chambers/"),
        ("everything, by own time (tottime)", "tottime", None),
        ("everything, by cumulative time", "cumulative", None),
    ):
        buf.write(f"\n=== {title} ===\n")
        stats.sort_stats(sort)
        if restrict:
            stats.print_stats(restrict, top)
        else:
            stats.print_stats(top)
    return buf.getvalue()


def _frame(frame: str) -> tuple[str, str]:
    """A py-spy frame `name (path:line)` -> (function without the line, where it lives)."""
    name, _, place = frame.rpartition(" (")
    path = place.rstrip(")").rsplit(":", 1)[0]
    if path.startswith("chambers/"):
        where = "chambers"
    elif "/" in path:
        where = path.split("/", 1)[0].removesuffix(".py")
    else:
        where = "stdlib " + path.removesuffix(".py")
    return f"{name} ({path})", where


def pyspy_report(raw: Path, top: int) -> str:
    """Busy samples of the main thread from py-spy's raw stacks: by package, by own and inclusive time."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    packages: dict[str, int] = {}
    busy = idle = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if "chambers/__main__.py" not in stack:  # another thread (SQLite's, the sandbox's)
            continue
        frames = stack.split(";")
        count = int(count_text)
        # Under uvloop the loop's own code is C, invisible to py-spy without --native: a stack that ends
        # in `Runner.run` is uvloop waiting in epoll or running its machinery. Both count as not busy.
        if frames[-1].startswith(("EpollSelector.select", "Runner.run (")):
            idle += count
            continue
        busy += count
        leaf, where = _frame(frames[-1])
        own[leaf] = own.get(leaf, 0) + count
        packages[where] = packages.get(where, 0) + count
        for name in {_frame(f)[0] for f in frames}:
            inclusive[name] = inclusive.get(name, 0) + count
    total = busy or 1

    def table(title: str, counts: dict[str, int], keep: Any = None) -> str:
        rows = [(n, c) for n, c in sorted(counts.items(), key=lambda kv: -kv[1]) if keep is None or keep(n)]
        return f"\n=== {title} ===\n" + "".join(f"{100 * c / total:6.1f}%  {n}\n" for n, c in rows[:top])

    head = f"main thread: {busy} busy samples in Python code, {idle} in the loop (epoll or uvloop's C)\n"
    return (
        head
        + table("own time by package", packages)
        + table("own time by function", own)
        + table("chambers, inclusive", inclusive, lambda n: "(chambers/" in n and "__main__" not in n)
        + table("everything, inclusive", inclusive)
    )


def profile_with_pyspy(args: argparse.Namespace, upstream_url: str) -> tuple[str, str]:
    """Run the server as usual, sample it with py-spy while the turns run; (summary line, report)."""
    from tests.support.server import ServerProcess

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    raw = args.out.with_suffix(".pyspy")
    raw.unlink(missing_ok=True)
    server = ServerProcess(Path(tempfile.mkdtemp(prefix="chambers-profile-")), server_env(upstream_url))
    server.start()
    wait_until_warm(server.url)
    try:
        assert server.admin_key is not None and server.proc is not None
        asyncio.run(drive(server.url, server.admin_key, 40, args.concurrency))  # imports, caches, pools
        pid = server.proc.pid
        sampler = subprocess.Popen(
            [spy, "record", "-p", str(pid), "-f", "raw", "-r", "250", "--nonblocking", "-o", str(raw)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)  # py-spy attaches before the first turn
        cpu0 = cpu_seconds(pid)
        ok, elapsed = asyncio.run(drive(server.url, server.admin_key, args.turns, args.concurrency))
        cpu = cpu_seconds(pid) - cpu0
        sampler.send_signal(signal.SIGINT)
        _, err = sampler.communicate(timeout=60)
    finally:
        server.stop()
    if not raw.exists():
        sys.exit(f"py-spy wrote nothing to {raw} (it needs ptrace permission):\n{err}")
    summary = (
        f"{ok}/{args.turns} turns in {elapsed:.1f} s ({ok / elapsed:.1f} turns/s), server CPU "
        f"{1000 * cpu / max(ok, 1):.1f} ms per turn ({cpu / elapsed:.2f} cores; includes the time of "
        f"creating the sessions), {args.tokens} deltas per turn, {args.concurrency} at a time"
    )
    return summary, pyspy_report(raw, args.top)


def profile_with_cprofile(args: argparse.Namespace, upstream_url: str) -> tuple[str, str]:
    """Run the server under cProfile; (summary line, report)."""
    args.out.unlink(missing_ok=True)
    server = ProfiledServer(args.out.resolve(), server_env(upstream_url)).start()
    try:
        assert server.admin_key is not None
        ok, elapsed = asyncio.run(drive(server.url, server.admin_key, args.turns, args.concurrency))
    finally:
        server.stop()
    if not args.out.exists():
        sys.exit(f"no profile written to {args.out}; server output:\n" + "".join(server.output[-40:]))
    summary = f"{ok}/{args.turns} turns in {elapsed:.1f} s under the profiler ({ok / elapsed:.1f} turns/s)"
    return summary, report(args.out, args.top)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_turns", description=__doc__)
    parser.add_argument("--sampler", choices=["py-spy", "cprofile"], default="py-spy")
    parser.add_argument("--turns", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--ttft", type=float, default=0.0)
    parser.add_argument("--gap", type=float, default=0.0)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path, default=RESULTS / "turns.prof")
    args = parser.parse_args()
    raise_fd_limit()
    child_environment()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    profile = profile_with_pyspy if args.sampler == "py-spy" else profile_with_cprofile
    with FakeUpstreamProcess(tokens=args.tokens, ttft=args.ttft, gap=args.gap) as upstream:
        summary, text = profile(args, upstream.url)
    text = f"{summary}\n{text}"
    out_text = args.out.with_name(f"turns-{args.sampler}-{args.tokens}.txt")
    out_text.write_text(text)
    print(text)
    print(f"report: {out_text}")


if __name__ == "__main__":
    main()
