"""Run the benchmarks: `python -m bench.run quick|full` (what `make bench-quick` / `make bench` do).

Processes: the fake upstream (`tests.support.fake_upstream`), the server (`tests.support.server.
ServerProcess`, embedded defaults: SQLite, in-process bus) and the load generator (`bench.load`, one
asyncio process with aiohttp clients) each run on their own. Results go to bench/results/ as JSON, to
stdout as a table and to docs/benchmarks/ as markdown (plus PNG plots when matplotlib is installed).
Metric 4 (`bench.sandbox`) runs in a process of its own, which starts its own server and scripted fake.
Scenario `replicas` (scale-out) starts replicas on PostgreSQL and Redis instead (`bench.cluster`) and one
`bench.load` process per phase; it needs both services and the run exits non-zero without them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.support.server import ServerProcess

from bench import report
from bench.cluster import Cluster, check_services
from bench.common import (
    RESULTS,
    ROOT,
    TOKEN_TEXT,
    FakeUpstreamProcess,
    PassthroughProcess,
    child_environment,
    machine,
    raise_fd_limit,
    server_env,
    wait_until_warm,
)

# The turn shape of the fake upstream: 200 deltas of "tok " 20 ms apart after 150 ms (a ~4.1 s turn).
STREAMING: dict[str, Any] = {"tokens": 200, "ttft": 0.15, "gap": 0.02}
# Scale-out: short turns (20 deltas 10 ms apart after 50 ms, ~0.25 s) so that the servers, not the fake's
# delays, bound the throughput; the same shape in both runs.
REPLICAS: dict[str, Any] = {
    "upstream": {"tokens": 20, "ttft": 0.05, "gap": 0.01},
    "topologies": [1, 2],
    "warmup_sessions": 4,
    "warmup_turns": 2,
}
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "upstream": {"tokens": 50, "ttft": 0.15, "gap": 0.02},  # shorter turns (~1.2 s)
        "fresh_server_per_scenario": False,
        "pause_s": 0.5,
        "turn_overhead": {"rates": [4], "target_rate": 20, "duration_s": 3, "reps": 1, "warmup_turns": 8},
        "capacity": {"levels": [20], "reps": 1, "idle_sessions": 100, "memory_streams": 40},
        "fanout": {"subscribers": [100], "reps": 1},
        "rates": {"workers": 16, "duration_s": 1.5, "reps": 1, "turn_sessions": 600},
        "sandbox": {"starts": 10, "round_trips": 200, "snapshot_reps": {"1": 5, "100": 1}, "resumes": 4},
        "replicas": {**REPLICAS, "sessions": 8, "turns": 5, "reps": 1},
    },
    "full": {
        "upstream": STREAMING,
        "fresh_server_per_scenario": True,
        "pause_s": 1.0,
        "turn_overhead": {
            "rates": [2, 5, 10, 20],
            "target_rate": 20,
            "duration_s": 5,
            "reps": 3,
            "warmup_turns": 20,
            # The shape to the letter: 20 new turns/s with 200 live streams (500-delta turns).
            "live": {"rate": 20, "tokens": 500, "warm_s": 10.5, "measure_s": 5, "tail_s": 10.5, "reps": 3},
        },
        "capacity": {
            "levels": [1, 5, 10, 20, 40, 80, 160, 320, 400, 480, 560, 640, 800, 1000, 1500],
            "reps": 3,
            "idle_sessions": 2000,
            "memory_streams": 200,
        },
        "fanout": {"subscribers": [1, 10, 100, 300], "reps": 3},
        # One fresh session per turn: enough for 3 x 5 s at 300 turns/s.
        "rates": {"workers": 16, "duration_s": 5, "reps": 3, "turn_sessions": 4500},
        "sandbox": {"starts": 50, "round_trips": 1000, "snapshot_reps": {"1": 20, "100": 5}, "resumes": 20},
        "replicas": {**REPLICAS, "sessions": 16, "turns": 10, "reps": 3},
    },
}
STREAM_SCENARIOS = ("turn_overhead", "capacity", "fanout")
SCENARIOS = (*STREAM_SCENARIOS, "rates", "sandbox", "replicas")


@contextmanager
def serving(upstream: FakeUpstreamProcess) -> Iterator[ServerProcess]:
    """A `chambers serve` process on a temporary data dir, pointed at `upstream`."""
    data_dir = Path(tempfile.mkdtemp(prefix="chambers-bench-"))
    server = ServerProcess(data_dir, env=server_env(upstream.url))
    try:
        started = time.monotonic()
        server.start(timeout=120)
        warming = wait_until_warm(server.url)
        print(
            f"  server ready in {time.monotonic() - started:.1f} s at {server.url}"
            f" (preload done {warming:.1f} s after it answered)",
            flush=True,
        )
        yield server
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def load_process(payload: dict[str, Any], timeout: float, what: str, output: Callable[[], str]) -> Any:
    """Run `bench.load` with `payload`; its progress goes to stderr, its JSON result back here. On a
    failure the error carries `output()` (the servers' last lines)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.load", json.dumps(payload)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.load {what} failed ({done.returncode}); server output:\n{output()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_load(name: str, cfg: dict[str, Any], server: ServerProcess, upstream: FakeUpstreamProcess) -> Any:
    """Run one scenario in a `bench.load` process; its progress goes to stderr, its JSON back here."""
    assert server.proc is not None and server.admin_key is not None
    full = {
        **cfg,
        "scenario": name,
        "chambers_url": server.url,
        "key": server.admin_key,
        "upstream_url": upstream.url,
        "server_pid": server.proc.pid,
        "upstream_pid": upstream.pid,
    }
    print(f"== {name} {json.dumps(cfg)}", flush=True)
    started = time.monotonic()
    with ExitStack() as stack:
        if name == "capacity" or cfg.get("live"):  # measured beside the floor: a relay that only relays
            floor = stack.enter_context(PassthroughProcess(upstream.url))
            full.update(floor_url=floor.url, floor_pid=floor.pid)
        result = load_process(full, 1800, name, lambda: "".join(server.output[-30:]))
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    problems = [line for line in server.output if " ERROR " in line or "Traceback" in line]
    if problems:
        result["server_errors"] = problems[:20]
    return result


def run_sandbox(cfg: dict[str, Any]) -> Any:
    """Metric 4 in a `bench.sandbox` process (it starts its own server); its JSON comes back here."""
    print(f"== sandbox {json.dumps(cfg)}", flush=True)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "bench.sandbox", json.dumps(cfg)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.sandbox failed ({done.returncode}); see its output above")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


def run_replicas(cfg: dict[str, Any], common: dict[str, Any]) -> Any:
    """Scale-out: each repetition starts a cluster of one replica on a new database and Redis prefix,
    measures it, starts a second replica on the same database and prefix, measures the two (on new
    sessions), then stops both and drops the database and the keys. One `bench.load` process per phase."""
    print(f"== replicas {json.dumps(cfg)}", flush=True)
    check_services()  # raises ServicesUnavailable, naming what is missing
    started = time.monotonic()
    reps: list[dict[str, Any]] = []
    problems: list[str] = []
    with FakeUpstreamProcess(**cfg["upstream"]) as upstream:
        for rep in range(int(cfg["reps"])):
            entry: dict[str, Any] = {"rep": rep + 1}
            with Cluster(1, upstream.url) as cluster:
                for size in sorted(int(n) for n in cfg["topologies"]):
                    cluster.grow(size)
                    phase = {
                        **common,
                        **{k: v for k, v in cfg.items() if k not in ("upstream", "topologies", "reps")},
                        "scenario": "replicas",
                        "chambers_urls": cluster.urls,
                        "replica_pids": cluster.pids,
                        "database": cluster.name,
                        "key": cluster.key,
                        "upstream_pid": upstream.pid,
                    }
                    result = load_process(phase, 900, f"replicas ({size} replicas)", cluster.tail)
                    entry[str(size)] = result
                    p50 = result["turn_ms"].get("p50", float("nan"))
                    print(
                        f"  rep {rep + 1}, {size} replica(s): {result['turns_per_s']:.1f} turns/s, "
                        f"turn p50 {p50:.0f} ms, {result['ok']}/{result['turns']} ok, "
                        f"replicas CPU {result['cpu']['replicas']:.2f} cores",
                        flush=True,
                    )
                problems += cluster.problems()
            reps.append(entry)
    out: dict[str, Any] = {"reps": reps, "upstream": upstream.shape}
    out["elapsed_s"] = round(time.monotonic() - started, 1)
    if problems:
        out["server_errors"] = problems[:20]
    return out


def attempt(name: str, scenario: Callable[..., Any], *args: Any) -> Any:
    """`scenario(*args)`; a failure (e.g. a server that does not start) is recorded, the run goes on."""
    try:
        return scenario(*args)
    except (RuntimeError, TimeoutError, OSError, ValueError, subprocess.SubprocessError) as exc:
        print(f"!! {name} failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", flush=True)
        return {"error": f"{type(exc).__name__}: {exc}"[-4000:]}


def run(kind: str, only: set[str] | None = None) -> dict[str, Any]:
    """The scenarios of preset `kind` (all, or those in `only`); returns the results document.

    After each scenario the document so far is written to bench/results/<kind>-partial.json.tmp.
    """
    preset = PRESETS[kind]
    started = datetime.now(UTC)
    t0 = time.monotonic()
    zero = {**preset["upstream"], "ttft": 0.0, "gap": 0.0}
    raw: dict[str, Any] = {}
    doc: dict[str, Any] = {
        "kind": kind,
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": 0.0,
        "machine": machine(),
        "config": {**preset, "zero_latency_upstream": zero, "server": "embedded defaults"},
        "raw": raw,
    }
    if only is not None:
        doc["only"] = sorted(only)
    common = {"pause_s": preset["pause_s"], "token_text": TOKEN_TEXT}
    wanted = [n for n in SCENARIOS if only is None or n in only]

    def record(name: str, value: Any) -> None:
        raw[name] = value
        doc["duration_s"] = round(time.monotonic() - t0, 1)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{kind}-partial.json.tmp").write_text(json.dumps(doc))

    def one(name: str, upstream: FakeUpstreamProcess) -> Any:
        with serving(upstream) as server:
            return run_load(name, {**common, **preset[name]}, server, upstream)

    def shared(names: list[str], upstream: FakeUpstreamProcess) -> None:
        with serving(upstream) as server:
            for name in names:
                record(name, attempt(name, run_load, name, {**common, **preset[name]}, server, upstream))

    if "replicas" in wanted:
        # Say at once (not after the other scenarios) when PostgreSQL or Redis is missing; the run goes on
        # without the scenario and exits non-zero at the end.
        unavailable = attempt("replicas", check_services)
        if unavailable is not None:
            record("replicas", unavailable)
            wanted.remove("replicas")
    streaming = [n for n in wanted if n in STREAM_SCENARIOS]
    if streaming:
        with FakeUpstreamProcess(**preset["upstream"]) as upstream:
            if preset["fresh_server_per_scenario"]:
                for name in streaming:
                    record(name, attempt(name, one, name, upstream))
            else:
                failed = attempt("server", shared, streaming, upstream)
                for name in streaming:
                    if name not in raw:
                        record(name, failed)
    if "rates" in wanted:
        with FakeUpstreamProcess(**zero) as upstream:
            record("rates", attempt("rates", one, "rates", upstream))
    if "sandbox" in wanted:
        record("sandbox", attempt("sandbox", run_sandbox, preset["sandbox"]))
    if "replicas" in wanted:
        record("replicas", attempt("replicas", run_replicas, preset["replicas"], common))
    doc["duration_s"] = round(time.monotonic() - t0, 1)
    doc["summary"] = report.summary(doc)
    (RESULTS / f"{kind}-partial.json.tmp").unlink(missing_ok=True)
    return doc


def save(doc: dict[str, Any]) -> Path:
    """bench/results/<timestamp>-<kind>.json and latest-<kind>.json (not for a subset of scenarios)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.fromisoformat(doc["started_at"]).strftime("%Y%m%dT%H%M%SZ")
    subset = "-" + "-".join(doc["only"]) if doc.get("only") else ""
    path = RESULTS / f"{stamp}-{doc['kind']}{subset}.json"
    text = json.dumps(doc, indent=1)
    path.write_text(text)
    if not subset:
        (RESULTS / f"latest-{doc['kind']}.json").write_text(text)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("kind", choices=sorted(PRESETS), help="quick (about a minute) or full")
    parser.add_argument(
        "--only",
        help="comma-separated scenarios to run: " + ", ".join(SCENARIOS),
    )
    parser.add_argument("--report-only", type=Path, help="re-render a saved results JSON, run nothing")
    parser.add_argument(
        "--no-write", action="store_true", help="print the table only: no results file, plots or docs"
    )
    args = parser.parse_args()
    if args.report_only:
        doc = json.loads(args.report_only.read_text())
        doc["summary"] = report.summary(doc)
    else:
        raise_fd_limit()
        child_environment()
        only = set(args.only.split(",")) if args.only else None
        if only is not None and only - set(SCENARIOS):
            parser.error(f"unknown scenarios: {', '.join(sorted(only - set(SCENARIOS)))}")
        doc = run(args.kind, only)
        if not args.no_write:
            print(f"results: {save(doc).relative_to(ROOT)}")
    print(report.table(doc))
    if doc.get("only") and not args.no_write:
        for written in report.plot(doc):
            print(f"wrote {written.relative_to(ROOT)}")
        print("a subset of the scenarios ran: its plots were refreshed, the markdown pages left as they were")
    elif not args.no_write:
        for written in report.write_docs(doc):
            print(f"wrote {written.relative_to(ROOT)}")
    if report.failures(doc):
        # Whatever was to be written is; the exit status still says that the run is incomplete.
        sys.exit("benchmarks incomplete: " + "; ".join(report.failures(doc)))


if __name__ == "__main__":
    main()
