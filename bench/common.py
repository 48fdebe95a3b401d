"""Shared helpers of the benchmarks: statistics, process sampling, the fake upstream and machine facts."""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TOKEN_TEXT = "tok "
"""What each delta of the fake upstream's benchmark replies says (`tests.support.fake_upstream`)."""
DOCS = ROOT / "docs"
QUANTILES = (50.0, 95.0, 99.0)


# --- statistics -------------------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """The `pct` percentile of already sorted values, linearly interpolated (numpy's default)."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * pct / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def summarize(values: Iterable[float], scale: float = 1.0) -> dict[str, Any]:
    """Count, mean, p50/p95/p99/p99.9, max and a 0..100 quantile curve (for plots), times `scale`."""
    data = sorted(v * scale for v in values)
    if not data:
        return {"n": 0}
    return {
        "n": len(data),
        "mean": sum(data) / len(data),
        "p50": percentile(data, 50),
        "p95": percentile(data, 95),
        "p99": percentile(data, 99),
        "p999": percentile(data, 99.9),
        "max": data[-1],
        "curve": [round(percentile(data, q), 4) for q in range(101)],
    }


def median(values: Sequence[float]) -> float:
    """Median of a few numbers (NaN-free); NaN when empty."""
    clean = sorted(v for v in values if not math.isnan(v))
    return percentile(clean, 50) if clean else math.nan


def combine(reps: Sequence[dict[str, Any]], key: str) -> float:
    """The median over repetitions of one summary field."""
    return median([float(r[key]) for r in reps if r.get("n")])


# --- processes --------------------------------------------------------------------------------------------


def raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def rss_kb(pid: int) -> int:
    """VmRSS of a process in KiB, from /proc/PID/status (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by a process (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def _process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds of the process plus the children it has reaped)."""
    table: dict[int, tuple[int, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(entry.name)] = (int(fields[1]), sum(int(v) for v in fields[11:15]) / _TICK)
    return table


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by a process and all its descendants (sandboxes, tar, ...), counting
    the children they already reaped (a child's time moves to its parent's when it is waited for)."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for child, (parent, _) in table.items():
        children.setdefault(parent, []).append(child)
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        if current in table:
            total += table[current][1]
        todo.extend(children.get(current, ()))
    return total


def find_pids(comm: str, cmdline_contains: str = "") -> list[int]:
    """Processes named `comm` (/proc/PID/comm) whose command line contains `cmdline_contains`."""
    found: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/comm", encoding="utf-8", errors="replace") as name:
                if name.read().strip() != comm:
                    continue
            if cmdline_contains:
                with open(f"/proc/{entry.name}/cmdline", "rb") as cmd:
                    if cmdline_contains.encode() not in cmd.read().replace(b"\0", b" "):
                        continue
        except OSError:
            continue
        found.append(int(entry.name))
    return found


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy so far (all CPUs, from /proc/stat)."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            values = [int(v) for v in stat.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / _TICK


@dataclass
class CpuMeter:
    """CPU use of some processes between `start()` and `stop()`, in cores (1.0 = one CPU busy).

    `others` is what the rest of the machine used meanwhile: anything well above zero means the
    figures of that phase were taken on a busy machine. Names in `trees` count the process with all
    its descendants (`tree_cpu_seconds`); the trees must not overlap the other entries.
    """

    pids: dict[str, int]
    trees: frozenset[str] = frozenset()

    def _used(self, name: str, pid: int) -> float:
        return tree_cpu_seconds(pid) if name in self.trees else cpu_seconds(pid)

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._c0 = {name: self._used(name, pid) for name, pid in self.pids.items()}
        self._m0 = machine_busy_seconds()

    def stop(self) -> dict[str, float]:
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        used = {name: (self._used(name, pid) - self._c0[name]) / elapsed for name, pid in self.pids.items()}
        machine = (machine_busy_seconds() - self._m0) / elapsed
        out = {name: round(value, 3) for name, value in used.items()}
        out["others"] = round(max(0.0, machine - sum(used.values())), 3)
        return out


class ReadyProcess:
    """`python -m <module> <args>` as a child process; `url` once it printed `READY <url>`."""

    module = ""

    def __init__(self, args: list[str]) -> None:
        self.args = args
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, timeout: float = 30.0) -> Self:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("READY "):
                self.url = line.split()[1]
                return self
        self.stop()
        raise RuntimeError(f"{self.module} did not print READY")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FakeUpstreamProcess(ReadyProcess):
    """The scripted fake (`tests.support.fake_upstream`), streaming `tokens` deltas per reply."""

    module = "tests.support.fake_upstream"

    def __init__(self, tokens: int = 200, ttft: float = 0.15, gap: float = 0.02) -> None:
        super().__init__(["--port", "0", "--tokens", str(tokens), "--ttft", str(ttft), "--gap", str(gap)])
        self.shape = {"tokens": tokens, "ttft_s": ttft, "gap_s": gap}


class PassthroughProcess(ReadyProcess):
    """The floor (`bench.passthrough`): a relay to `upstream_url` on the server's own libraries."""

    module = "bench.passthrough"

    def __init__(self, upstream_url: str) -> None:
        super().__init__(["--upstream", upstream_url])


def child_environment() -> None:
    """Children inherit this: with PYTHONDONTWRITEBYTECODE set, bytecode goes to a temp-dir cache
    instead (PYTHONPYCACHEPREFIX, nothing written in the repo), so a server restart takes seconds."""
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        os.environ.pop("PYTHONDONTWRITEBYTECODE")
        os.environ["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / "chambers-bench-pycache")


def wait_until_warm(url: str, timeout: float = 60.0) -> float:
    """Seconds until the server at `url` says its start-up preload is done (`/readyz`, check `warm`).
    Measuring before that would time the preload's imports and collections along with the server."""
    import httpx  # the load generator's process never needs it

    started = time.monotonic()
    while not (warm := httpx.get(url + "/readyz", timeout=10).json()["checks"]["warm"])["ok"]:
        if "error" in warm:
            raise RuntimeError(f"{url} could not preload: {warm['error']}")
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{url} was not warm after {timeout:g} s")
        time.sleep(0.05)  # polling: /readyz is the only signal the server gives
    return time.monotonic() - started


def server_env(upstream_url: str) -> dict[str, str]:
    """Environment that points the server's `openai/` provider at the fake upstream."""
    return {"OPENAI_API_KEY": "bench-key", "OPENAI_BASE_URL": upstream_url + "/v1"}


# --- machine ----------------------------------------------------------------------------------------------


def reference_op_us(rounds: int = 5, ops: int = 20_000) -> float:
    """How fast this VM runs Python now: µs per op of a fixed mix of what the server does per event
    (a dict built, encoded to JSON, decoded, a string grown and formatted), the median of `rounds`.
    The VM has been seen up to twice as slow from one hour to the next, and the checkout moves
    between hosts: runs compare only when this is close."""
    times: list[float] = []
    for _ in range(rounds):
        started = time.perf_counter()
        text = ""
        for i in range(ops):
            text = (text + "tok ")[-400:]
            data = {"turnId": "turn_x", "partId": "part_y", "type": "text", "delta": "tok ", "i": i}
            json.loads(json.dumps(data))
            f"event: x\nid: {i}\ndata: {text}\n\n".encode()
        times.append(time.perf_counter() - started)
    return round(median(times) / ops * 1e6, 2)


def machine() -> dict[str, Any]:
    """What the run ran on: CPU model, cores, memory, kernel, Python, the git commit, and how fast the
    VM runs Python at the start of the run (`reference_op_us`)."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    commit, dirty = "unknown", -1
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5
        )
        if done.returncode == 0:
            commit = done.stdout.strip()
        done = subprocess.run(
            ["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True, text=True, timeout=5
        )
        if done.returncode == 0:
            dirty = len(done.stdout.splitlines())
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {
        "cpu_model": cpu,
        "nproc": len(os.sched_getaffinity(0)),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "git_commit": commit,
        "src_files_changed_since_commit": dirty,
        "reference_op_us": reference_op_us(),
    }
