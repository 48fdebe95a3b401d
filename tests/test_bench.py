"""The benchmark harness runs: `make bench` is not part of CI, so a change that broke one of its
scenarios (or how they start servers) would otherwise go unseen until the next full run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from chambers.sandbox import bwrap_problem
from tests.conftest import need, need_postgres, need_redis

ROOT = Path(__file__).resolve().parent.parent


def test_the_quick_benchmark_runs_its_scenarios_and_prints_their_table() -> None:
    need_postgres()  # the scale-out scenario runs two replicas on PostgreSQL and Redis
    need_redis()
    problem = bwrap_problem()
    need(problem is None, problem or "")
    scenarios = "turn_overhead,sandbox,replicas"  # about 40 s; the others share their servers and load
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "quick", "--only", scenarios, "--no-write"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "reference op" in done.stdout  # the table's header gives the VM's speed
    for heading in ("1. Per-turn overhead", "4. Sandbox", "6. Scale-out"):
        assert heading in done.stdout, done.stdout[-4000:]
    assert "results:" not in done.stdout  # --no-write: nothing lands in bench/results or docs/
