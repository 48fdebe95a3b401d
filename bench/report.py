"""Turn raw benchmark results into summary rows, a text table, markdown and (optionally) PNG plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.common import DOCS, median

Row = dict[str, Any]
BENCH_DOCS = DOCS / "benchmarks"
INDEX = DOCS / "benchmarks.md"
START, END = "<!-- bench:results:start -->", "<!-- bench:results:end -->"

# Targets of issue 8, on the added cost (Chambers minus direct) unless stated.
TTFT_P50_MS, TTFT_P99_MS, GAP_P99_MS = 5.0, 20.0, 2.0
MAX_STREAMS, STREAM_KB = 1000, 100.0
SANDBOX_START_MS, TOOL_ROUND_TRIP_MS, SNAPSHOT_MS_PER_100MB = 25.0, 5.0, 250.0
RESTORE_MS = {1: 50.0, 100: 500.0}  # p50, by workspace size in MB
RESUME_ADDED_MS = 100.0
RESUME_REFERENCE = "ref: 5-10 s published; E2B ~1 s"


def _med(reps: list[dict[str, Any]], *path: str) -> float:
    values = []
    for rep in reps:
        node: Any = rep
        for key in path:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, int | float):
            values.append(float(node))
    return median(values)


def _row(
    group: str,
    metric: str,
    unit: str,
    direct: float | None,
    chambers: float | None,
    added: float | None = None,
    target: str = "",
    passed: bool | None = None,
) -> Row:
    if added is None and direct is not None and chambers is not None:
        added = chambers - direct
    ratio = chambers / direct if direct and chambers is not None and not math.isnan(direct) else None
    return {
        "group": group,
        "metric": metric,
        "unit": unit,
        "direct": direct,
        "chambers": chambers,
        "added": added,
        "ratio": ratio,
        "target": target,
        "pass": passed,
    }


def _paired(
    group: str, metric: str, reps: list[dict[str, Any]], key: str, pct: str, side: str = "chambers", **kw: Any
) -> Row:
    """A percentile of direct and `side` (Chambers, or the floor's relay in its column): medians over
    repetitions; added = median of per-rep differences."""
    direct = _med(reps, "direct", key, pct)
    chambers = _med(reps, side, key, pct)
    added = median([r[side][key].get(pct, math.nan) - r["direct"][key].get(pct, math.nan) for r in reps])
    limit = kw.pop("limit", None)
    passed = None if limit is None or math.isnan(added) else added <= limit
    target = f"added <= {limit:g}" if limit is not None else ""
    return _row(group, metric, "ms", direct, chambers, added, target, passed)


def _ok(raw: dict[str, Any], name: str) -> dict[str, Any]:
    """A scenario's raw results, or {} when it did not run or failed."""
    found = raw.get(name) or {}
    return {} if "error" in found else dict(found)


def _others(node: Any, found: list[float]) -> list[float]:
    if isinstance(node, dict):
        cpu = node.get("cpu")
        if isinstance(cpu, dict) and "others" in cpu:
            found.append(float(cpu["others"]))
        for value in node.values():
            _others(value, found)
    elif isinstance(node, list):
        for value in node:
            _others(value, found)
    return found


def contention(doc: dict[str, Any]) -> str:
    """How busy the rest of the machine was during the measured phases (other processes' CPU)."""
    found = sorted(_others(doc["raw"], []))
    if not found:
        return ""
    text = f"other processes used {median(found):.2f} cores (median over phases, max {found[-1]:.2f})"
    return text + (": the machine was busy, compare runs with care" if median(found) > 0.25 else "")


def failures(doc: dict[str, Any]) -> list[str]:
    """One line per scenario that failed, or whose figures its own set-up capped."""
    found = [
        f"{name} failed: {str(result['error']).splitlines()[0]}"
        for name, result in doc["raw"].items()
        if isinstance(result, dict) and "error" in result
    ]
    if _ok(doc["raw"], "rates").get("sessions_left") == 0:
        found.append("rates: the turns used every fresh session before the time was up; raise turn_sessions")
    return found


def summary(doc: dict[str, Any]) -> list[Row]:
    """The headline figures of a run, each with its direct baseline where one exists."""
    raw, cfg = doc["raw"], doc["config"]
    up = cfg["upstream"]
    shape = f"{up['tokens']} deltas, {up['ttft'] * 1000:g} ms TTFT, {up['gap'] * 1000:g} ms apart"
    rows: list[Row] = []
    for entry in _ok(raw, "turn_overhead").get("rates", []):
        if "reps" not in entry:
            continue
        reps = entry["reps"]
        peak = _med(reps, "chambers", "load", "peak_live")
        group = f"1. Per-turn overhead at {entry['rate']:g} new turns/s ({shape}; peak {peak:.0f} live)"
        rows += [
            _paired(group, "TTFT p50", reps, "ttft_ms", "p50", limit=TTFT_P50_MS),
            _paired(group, "TTFT p95", reps, "ttft_ms", "p95"),
            _paired(group, "TTFT p99", reps, "ttft_ms", "p99", limit=TTFT_P99_MS),
            _paired(group, "response headers p50", reps, "headers_ms", "p50"),
            _paired(group, "gap between deltas p50", reps, "gap_ms", "p50"),
            _paired(group, "gap between deltas p99", reps, "gap_ms", "p99", limit=GAP_P99_MS),
        ]
        coalesced = [
            100.0 * r["chambers"]["coalesced_deltas"] / max(1, r["chambers"]["upstream_deltas"]) for r in reps
        ]
        rows.append(_row(group, "deltas coalesced", "%", 0.0, median(coalesced), None))
        rows.append(
            _row(group, "server CPU", "cores", None, _med(reps, "chambers", "cpu", "server"), None, "", None)
        )
        others = _med(reps, "chambers", "cpu", "others")
        rows.append(_row(group, "CPU of other processes on the machine", "cores", None, others, None))
        errors = _med(reps, "chambers", "error_rate") * 100
        rows.append(_row(group, "errors", "%", _med(reps, "direct", "error_rate") * 100, errors))
    live = _ok(raw, "turn_overhead").get("live")
    if live:
        reps = live["reps"]
        streaming = _med(reps, "chambers", "load", "mean_live_second_half")
        long_shape = f"{live['tokens']} deltas, {up['ttft'] * 1000:g} ms TTFT, {up['gap'] * 1000:g} ms apart"
        group = (
            f"1. Per-turn overhead at {live['rate']:g} new turns/s with {streaming:.0f} live streams "
            f"({long_shape}; the {live['measured']} turns started once that many were live)"
        )
        rows += [
            _paired(group, "TTFT p50", reps, "ttft_ms", "p50", limit=TTFT_P50_MS),
            _paired(group, "TTFT p99", reps, "ttft_ms", "p99", limit=TTFT_P99_MS),
            _paired(group, "gap between deltas p50", reps, "gap_ms", "p50"),
            _paired(group, "gap between deltas p99", reps, "gap_ms", "p99", limit=GAP_P99_MS),
        ]
        if "floor" in reps[0]:  # the bare relay in the same shape, in the Chambers column (runs after run I)
            for label, key, pct, limit in (
                ("TTFT p50", "ttft_ms", "p50", TTFT_P50_MS),
                ("TTFT p99", "ttft_ms", "p99", TTFT_P99_MS),
                ("gap between deltas p99", "gap_ms", "p99", GAP_P99_MS),
            ):
                label = f"{label}, floor (bare relay, not Chambers)"
                rows.append(_paired(group, label, reps, key, pct, side="floor", limit=limit))
            floor_cpu = _med(reps, "floor", "cpu", "floor")
            rows.append(_row(group, "floor CPU (bare relay)", "cores", None, floor_cpu, None, "", None))
        rows += [
            _row(group, "server CPU", "cores", None, _med(reps, "chambers", "cpu", "server"), None, "", None),
            _row(
                group,
                "errors",
                "%",
                _med(reps, "direct", "error_rate") * 100,
                _med(reps, "chambers", "error_rate") * 100,
            ),
        ]
    cap = _ok(raw, "capacity")
    if cap:
        group = f"2. Stream capacity ({shape}; one session per stream)"
        for level in cap["levels"]:
            reps = level["reps"]
            if "floor" in reps[0]:  # the bare relay, in the Chambers column (runs after 2026-12-05 F)
                label = f"gap p99 at {level['level']} streams, floor (bare relay, not Chambers)"
                rows.append(_paired(group, label, reps, "gap_ms", "p99", side="floor", limit=25.0))
            if "chambers" not in reps[0]:  # Chambers had stopped; the floor went on
                continue
            rows.append(
                _paired(group, f"gap p99 at {level['level']} streams", reps, "gap_ms", "p99", limit=25.0)
            )
            if all("peak_streaming" in r["chambers"] for r in reps):  # not in runs before 2026-12-05 17:00
                label = f"streaming at once, at most, of {level['level']}"
                both = [_med(reps, side, "peak_streaming") for side in ("direct", "chambers")]
                rows.append(_row(group, label, "streams", both[0], both[1]))
        rows.append(
            _row(
                group,
                "max concurrent streams (added gap p99 <= 25 ms, errors <= 0.1%)",
                "streams",
                None,
                float(cap["max_streams"]),
                None,
                f">= {MAX_STREAMS}",
                cap["max_streams"] >= MAX_STREAMS,
            )
        )
        if "floor_max_streams" in cap:
            label = "max concurrent streams of the floor (bare relay, same limit)"
            rows.append(_row(group, label, "streams", None, float(cap["floor_max_streams"]), None))
        saturated = [level for level in cap["levels"] if level.get("direct_saturated")]
        if saturated:  # runs since 2026-12-06 L: the machine itself could not drive that many streams
            level = saturated[0]
            label = f"direct baseline late at {level['level']} streams (gap p99 - p50; ramp stopped there)"
            rows.append(_row(group, label, "ms", level["direct_late_p99_ms"], None, None))
        rows.append(_row(group, "RSS per idle session", "KB", None, cap["idle"]["per_session_kb"], None))
        memory = cap.get("memory")
        if memory:
            n = memory["streams"]
            per_stream = memory["per_active_stream_kb"]
            label = f"RSS per active stream ({n} at once)"
            rows.append(
                _row(group, label, "KB", None, per_stream, None, f"<= {STREAM_KB:g}", per_stream <= STREAM_KB)
            )
            label = f"RSS kept per session after its turn ({n} sessions)"
            rows.append(_row(group, label, "KB", None, memory["retained_per_finished_session_kb"], None))
            failed = 100.0 * (n - memory["ok"]) / max(1, n)
            rows.append(_row(group, f"turns failed or timed out ({n} at once)", "%", None, failed, None))
    for level in _ok(raw, "fanout").get("levels", []):
        reps, count = level["reps"], level["subscribers"]
        group = "3. Session stream fan-out (one turn; baseline: as many direct streams)"
        rows.append(
            _row(
                group,
                f"events/s delivered, {count} subscribers",
                "events/s",
                _med(reps, "direct", "events_per_s"),
                _med(reps, "chambers", "events_per_s"),
            )
        )
        spread = _med(reps, "chambers", "spread_ms", "p99")
        rows.append(_row(group, f"delivery spread p99, {count} subscribers", "ms", None, spread, None))
    rows += _sandbox_rows(_ok(raw, "sandbox"))
    rates = _ok(raw, "rates")
    if rates:
        reps = rates["reps"]
        group = "5. Server ceiling, zero-latency upstream (closed loop; baseline: fake directly)"
        for name, label in (("create", "session creation"), ("turn", "turns via POST /message")):
            direct, mine = f"{name}_direct", f"{name}_chambers"
            rows.append(
                _row(group, f"{label}", "req/s", _med(reps, direct, "per_s"), _med(reps, mine, "per_s"))
            )
            for pct in ("p50", "p99"):
                rows.append(
                    _row(
                        group,
                        f"{label} latency {pct}",
                        "ms",
                        _med(reps, direct, "latency_ms", pct),
                        _med(reps, mine, "latency_ms", pct),
                    )
                )
    rows += _replica_rows(_ok(raw, "replicas"))
    return rows


def _replica_rows(rep: dict[str, Any]) -> list[Row]:
    """Scale-out: 1 replica (in the "direct" column) against 2 (in the "chambers" column)."""
    reps = [r for r in rep.get("reps", []) if "1" in r and "2" in r]
    if not reps:
        return []
    first, up = reps[0]["1"], rep["upstream"]
    shape = f"{up['tokens']} deltas, {up['ttft_s'] * 1000:g} ms TTFT, {up['gap_s'] * 1000:g} ms apart"
    group = (
        f"6. Scale-out on PostgreSQL + Redis: {first['sessions']} sessions x {first['turns_per_session']} "
        f"turns, all sessions at once, requests round-robin ({shape}; {len(reps)} repetition(s)). "
        "Columns: direct = 1 replica, chambers = 2 replicas, ratio = 2 vs 1"
    )

    def pair(metric: str, unit: str, *path: str, scale: float = 1.0) -> Row:
        one, two = _med(reps, "1", *path) * scale, _med(reps, "2", *path) * scale
        return _row(group, metric, unit, one, two)

    def load(size: str) -> float:
        return _med(reps, size, "cpu", "upstream") + _med(reps, size, "cpu", "client")

    def per_turn(label: str, *names: str) -> Row:
        """CPU milliseconds per completed turn (cores x 1000 / turns per second), median over reps."""
        values = [
            [
                sum(r[size]["cpu"].get(n, 0.0) for n in names) * 1000 / r[size]["turns_per_s"]
                for r in reps
                if r[size].get("turns_per_s")
            ]
            for size in ("1", "2")
        ]
        return _row(group, f"{label} CPU per completed turn", "ms", median(values[0]), median(values[1]))

    return [
        pair("completed turns per second", "turns/s", "turns_per_s"),
        pair("completed turns per second, all sessions busy", "turns/s", "steady_turns_per_s"),
        pair("turn latency p50 (request to turn.completed)", "ms", "turn_ms", "p50"),
        pair("turn latency p99", "ms", "turn_ms", "p99"),
        pair("TTFT p50", "ms", "ttft_ms", "p50"),
        pair("response headers p50", "ms", "headers_ms", "p50"),
        per_turn("replicas'", "replicas"),
        per_turn("PostgreSQL + Redis", "postgres", "redis"),
        pair("CPU of the replicas", "cores", "cpu", "replicas"),
        pair("CPU of PostgreSQL (backends of this database)", "cores", "cpu", "postgres"),
        pair("CPU of Redis (whole server)", "cores", "cpu", "redis"),
        _row(
            group,
            "CPU of the fake upstream and the load generator",
            "cores",
            load("1"),
            load("2"),
        ),
        pair("CPU of other processes on the machine", "cores", "cpu", "others"),
        pair("turns failed", "%", "error_rate", scale=100.0),
    ]


def notes(doc: dict[str, Any]) -> list[str]:
    """Caveats to print under the tables."""
    out: list[str] = []
    if _replica_rows(_ok(doc["raw"], "replicas")):
        out.append(
            f"Scale-out (6): everything runs on this one machine with {doc['machine']['nproc']} CPUs. Both "
            "replicas, PostgreSQL, Redis, the fake upstream and the load generator share them, so the "
            "2-vs-1 ratio shows what coordinating two processes through PostgreSQL and Redis costs or gains "
            "here (relayed turns, a second event loop competing for the same cores), not how throughput "
            "scales when each replica has cores or a machine of its own."
        )
    return out


def _within(value: float, limit: float) -> bool | None:
    return None if math.isnan(value) else value <= limit


def _workspace(case: dict[str, Any]) -> str:
    size = f"{case['bytes'] / 1e6:g} MB"
    return f"{size}, one file" if case["files"] == 1 else f"{size} in {case['files']:,} files"


def _sandbox_rows(sb: dict[str, Any]) -> list[Row]:
    """Metric 4: sandbox start, tool round trip, snapshot/restore; resume through the server."""
    if not sb:
        return []
    rows: list[Row] = []
    group = (
        f"4. Sandbox ({sb['backend']} backend, workspaces on {sb['filesystem']}; "
        f"{sb['start']['ms']['n']} starts, {sb['round_trip']['ms']['n']} tool calls)"
    )
    for key, label, limit in (
        ("start", "sandbox start to first command", SANDBOX_START_MS),
        ("round_trip", "tool round trip (shell `true`)", TOOL_ROUND_TRIP_MS),
    ):
        stats = sb[key]["ms"]
        for pct in ("p50", "p95", "p99"):
            target = f"<= {limit:g}" if pct == "p50" else ""
            passed = _within(stats[pct], limit) if pct == "p50" else None
            rows.append(_row(group, f"{label} {pct}", "ms", None, stats[pct], None, target, passed))
    for case in sb.get("snapshots", []):
        where, megabytes = _workspace(case), round(case["bytes"] / 1e6)
        reps = case["save_ms"]["n"]
        if megabytes >= 100:
            per = case["save_ms_per_100mb"]
            target = f"<= {SNAPSHOT_MS_PER_100MB:g} per 100 MB"
            rows.append(
                _row(group, f"snapshot p50, {where} ({reps}x)", "ms", None, case["save_ms"]["p50"], None)
                | {"target": target, "pass": _within(per, SNAPSHOT_MS_PER_100MB)}
            )
        else:
            rows.append(
                _row(group, f"snapshot p50, {where} ({reps}x)", "ms", None, case["save_ms"]["p50"], None)
            )
        wanted = RESTORE_MS.get(megabytes)
        restore = case["restore_ms"]["p50"]
        rows.append(
            _row(
                group,
                f"restore p50, {where}",
                "ms",
                None,
                restore,
                None,
                f"<= {wanted:g}" if wanted else "",
                _within(restore, wanted) if wanted else None,
            )
        )
        if "restore_after_discard_ms" in case:
            again = case["restore_after_discard_ms"]["p50"]
            rows.append(_row(group, f"restore p50 right after a discard, {where}", "ms", None, again, None))
        if "discard_ms" in case:
            discard = case["discard_ms"]["p50"]
            rows.append(_row(group, f"discard (rm -r) p50, {where}", "ms", None, discard, None))
    resume = sb.get("resume") or {}
    if resume.get("idle", {}).get("ttft_ms", {}).get("n"):
        idle, active = resume["idle"], resume["active"]
        turns = idle["ttft_ms"]["n"]
        group = (
            f"4. Sandbox resume through the server ({resume['workspace']}; {turns} turns each; "
            "baseline: the same turn on an ACTIVE session)"
        )
        for pct in ("p50", "p95"):
            row = _row(group, f"TTFT {pct}, IDLE session", "ms", active["ttft_ms"][pct], idle["ttft_ms"][pct])
            if pct == "p50":
                row["target"] = f"added <= {RESUME_ADDED_MS:g}"
                row["pass"] = _within(row["added"], RESUME_ADDED_MS)
            rows.append(row)
        rows.append(
            _row(
                group,
                "response headers p50, IDLE session",
                "ms",
                active["headers_ms"]["p50"],
                idle["headers_ms"]["p50"],
            )
        )
        span = idle.get("restore_span_ms", {}).get("p50", math.nan)
        rows.append(
            _row(group, "restore span p50 (turn.status restoring to running)", "ms", None, span, None)
        )
        paired = resume["added_ttft_ms"]
        rows.append(
            _row(
                group, "added TTFT p50 (paired turns)", "ms", None, None, paired.get("p50"), RESUME_REFERENCE
            )
        )
        if resume.get("misclassified"):
            rows.append(
                _row(
                    group,
                    "turns not counted (the session was not in the state wanted)",
                    "turns",
                    None,
                    float(resume["misclassified"]),
                    None,
                )
            )
    return rows


# --- rendering --------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 1, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:+,.{digits}f}" if sign else f"{value:,.{digits}f}"
    return text


def _cells(row: Row) -> list[str]:
    ok = {True: "yes", False: "NO", None: ""}[row["pass"]]
    ratio = f"{row['ratio']:.2f}x" if row["ratio"] is not None and not math.isnan(row["ratio"]) else "-"
    digits = 2 if row["unit"] == "cores" else 1
    return [
        f"{row['metric']} ({row['unit']})",
        _fmt(row["direct"], digits),
        _fmt(row["chambers"], digits),
        _fmt(row["added"], digits, sign=True),
        ratio,
        row["target"],
        ok,
    ]


HEAD = ["metric", "direct", "chambers", "added", "ratio", "target", "met"]


def table(doc: dict[str, Any]) -> str:
    """The summary as a plain-text table (stdout)."""
    rows = doc["summary"]
    cells = [_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in [*cells, HEAD]) for i in range(len(HEAD))]
    m = doc["machine"]
    lines = [
        f"Chambers benchmark ({doc['kind']}), {doc['started_at']}, {doc['duration_s']:.0f} s; "
        f"{m['cpu_model']}, {m['nproc']} CPUs, {m['memory_gib']} GiB, Python {m['python']}"
        + (f"; reference op {m['reference_op_us']} µs" if m.get("reference_op_us") else "")
    ]
    if contention(doc):
        lines.append(contention(doc))
    group = None
    for row, cell in zip(rows, cells, strict=True):
        if row["group"] != group:
            group = row["group"]
            lines += ["", group, "  ".join(h.ljust(w) for h, w in zip(HEAD, widths, strict=True))]
        lines.append(
            "  ".join(
                c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cell, widths, strict=True))
            )
        )
    lines += ["", *failures(doc)] if failures(doc) else []
    lines += ["", *notes(doc)] if notes(doc) else []
    return "\n".join(lines)


def markdown(doc: dict[str, Any], plots: list[Path]) -> str:
    """Machine, run shape, the summary tables and the plots, as markdown (paths relative to docs/)."""
    m = doc["machine"]
    out = [
        f"Run `{doc['kind']}` of {doc['started_at']} ({doc['duration_s']:.0f} s), "
        f"commit `{m['git_commit']}`"
        + (
            f" plus uncommitted changes in {m['src_files_changed_since_commit']} files under src/."
            if m.get("src_files_changed_since_commit", 0) > 0
            else "."
        ),
        "",
        f"Machine: {m['cpu_model']}, {m['nproc']} CPUs (nproc), {m['memory_gib']} GiB RAM, "
        f"Linux {m['kernel']}, {m['implementation']} {m['python']}. Server, fake upstream and load "
        "generator share these CPUs."
        + (
            f" The VM's speed at the start: {m['reference_op_us']} µs per reference op"
            " (`bench.common.reference_op_us`; lower is faster)."
            if m.get("reference_op_us")
            else ""
        ),
        "",
    ]
    if contention(doc):
        out += [f"During the run {contention(doc)}.", ""]
    group = None
    for row in doc["summary"]:
        if row["group"] != group:
            group = row["group"]
            out += ["", f"**{group}**", "", "| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
        out.append("| " + " | ".join(c.replace("|", "/") for c in _cells(row)) + " |")
    if failures(doc):
        out += ["", *[f"- {line}" for line in failures(doc)]]
    for note in notes(doc):
        out += ["", note]
    if plots:
        out += [""]
        out += [f"![{p.stem}](benchmarks/{p.name})" for p in plots]
    else:
        out += ["", "_No plots: matplotlib is not installed._"]
    return "\n".join(out) + "\n"


def write_docs(doc: dict[str, Any]) -> list[Path]:
    """docs/benchmarks/<kind>.md (+ PNGs); a full run also refreshes the section in docs/benchmarks.md."""
    BENCH_DOCS.mkdir(parents=True, exist_ok=True)
    plots = plot(doc)
    body = markdown(doc, plots)
    page = BENCH_DOCS / f"{doc['kind']}.md"
    # The page lives in docs/benchmarks/, so its image links are relative to that folder.
    page.write_text(f"# Benchmark results ({doc['kind']})\n\n" + body.replace("](benchmarks/", "]("))
    written = [page, *plots]
    if doc["kind"] == "full" and INDEX.exists():
        text = INDEX.read_text()
        if START in text and END in text:
            head, rest = text.split(START, 1)
            _, tail = rest.split(END, 1)
            INDEX.write_text(f"{head}{START}\n{body}{END}{tail}")
            written.append(INDEX)
    return written


def plot(doc: dict[str, Any]) -> list[Path]:
    """PNG plots in docs/benchmarks/ when matplotlib is importable; otherwise a note and nothing."""
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
        from matplotlib import ticker  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        print("note: matplotlib is not installed; skipping plots")
        return []
    kind, raw = doc["kind"], doc["raw"]
    made: list[Path] = []
    BENCH_DOCS.mkdir(parents=True, exist_ok=True)

    def save(fig: Any, name: str) -> None:
        path = BENCH_DOCS / f"{kind}-{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)

    rates = [e for e in _ok(raw, "turn_overhead").get("rates", []) if "reps" in e]
    if rates:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, key, title in (
            (axes[0], "ttft_ms", "time to first token"),
            (axes[1], "gap_ms", "gap between deltas"),
        ):
            for entry in rates:
                last = entry["reps"][-1]
                for target, style in (("direct", "--"), ("chambers", "-")):
                    curve = last[target][key].get("curve")
                    if curve:
                        ax.plot(curve, range(101), style, label=f"{target} @ {entry['rate']:g}/s")
            ax.set_xscale("log")
            _plain_log(ax, "x")
            ax.set_xlabel("ms")
            ax.set_ylabel("percentile")
            ax.set_title(title)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        save(fig, "turn-overhead")
    cap = _ok(raw, "capacity")
    if cap and cap["levels"]:
        levels = [lv["level"] for lv in cap["levels"]]
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        direct = [_med(lv["reps"], "direct", "gap_ms", "p99") for lv in cap["levels"]]
        ax.plot(levels, direct, "o--", label="direct")
        for side, style, label in (("floor", "s:", "floor (bare relay)"), ("chambers", "o-", "chambers")):
            measured = [lv for lv in cap["levels"] if side in lv["reps"][0]]
            if measured:
                gaps = [_med(lv["reps"], side, "gap_ms", "p99") for lv in measured]
                ax.plot([lv["level"] for lv in measured], gaps, style, label=label)
        ax.plot(levels, [d + 25.0 for d in direct], "_:", color="grey", ms=14, label="limit: direct + 25 ms")
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain_log(ax, "y")
        labels, last = [], 0.0
        for level in levels:  # on the log axis close levels (320, 400, 480...) would overprint
            shown = level >= 1.4 * last
            labels.append(f"{level:,}" if shown else "")
            last = level if shown else last
        ax.set_xticks(levels, labels)
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        ax.set_xlabel("concurrent streams (ramp; each path stops at its first level over the limit)")
        ax.set_ylabel("gap between deltas p99 (ms)")
        ax.set_title(f"stream capacity: {cap['max_streams']:,} streams passed")
        ax.grid(alpha=0.3)
        ax.legend()
        save(fig, "capacity")
    fan = _ok(raw, "fanout").get("levels", [])
    if fan:
        counts = [lv["subscribers"] for lv in fan]
        fig, ax = plt.subplots(figsize=(6, 4))
        for target in ("direct", "chambers"):
            ax.plot(counts, [_med(lv["reps"], target, "events_per_s") for lv in fan], "o-", label=target)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("subscribers (direct: parallel streams)")
        ax.set_ylabel("events/s delivered")
        ax.grid(alpha=0.3)
        ax.legend()
        save(fig, "fanout")
    sb = _ok(raw, "sandbox")
    if sb:
        save(_sandbox_figure(plt, sb), "sandbox")
    reps = [r for r in _ok(raw, "replicas").get("reps", []) if "1" in r and "2" in r]
    if reps:
        save(_replicas_figure(plt, reps), "replicas")
    return made


def _replicas_figure(plt: Any, reps: list[dict[str, Any]]) -> Any:
    """Two panels: completed turns/s, and turn latency p50/p99, for 1 and 2 replicas (medians over reps)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    labels = ["1 replica", "2 replicas"]
    rates = [_med(reps, size, "turns_per_s") for size in ("1", "2")]
    bars = axes[0].bar(labels, rates, color=["C0", "C1"])
    axes[0].bar_label(bars, fmt="%.1f", fontsize=8)
    axes[0].set_ylabel("completed turns/s")
    axes[0].set_title(f"throughput: 2 vs 1 = {rates[1] / rates[0]:.2f}x" if rates[0] else "throughput")
    axes[0].grid(alpha=0.3, axis="y")
    width = 0.38
    for offset, pct, color in ((-width / 2, "p50", "C2"), (width / 2, "p99", "C3")):
        values = [_med(reps, size, "turn_ms", pct) for size in ("1", "2")]
        bars = axes[1].bar([x + offset for x in range(2)], values, width, color=color, label=pct)
        axes[1].bar_label(bars, fmt="%.0f", fontsize=8)
    axes[1].set_xticks(range(2), labels)
    axes[1].set_ylabel("ms, request to turn.completed")
    axes[1].set_title("turn latency")
    axes[1].grid(alpha=0.3, axis="y")
    axes[1].legend(fontsize=8)
    return fig


def _plain_log(ax: Any, axis: str) -> None:
    """A log axis labelled 1, 2, 5, 10, 20, 50, ... in plain numbers."""
    from matplotlib import ticker  # type: ignore[import-not-found, unused-ignore]

    scale = ax.xaxis if axis == "x" else ax.yaxis
    low, high = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    decades = math.log10(high / low) if low > 0 else 9.0
    if decades < 1.3:
        subs: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0)
    else:
        subs = (1.0, 2.0, 5.0) if decades < 3.5 else (1.0,)
    scale.set_major_locator(ticker.LogLocator(base=10, subs=subs))
    scale.set_major_formatter(ticker.FuncFormatter(lambda value, _pos: f"{value:,.10g}"))
    scale.set_minor_formatter(ticker.NullFormatter())


def _sandbox_figure(plt: Any, sb: dict[str, Any]) -> Any:
    """Three panels: start and tool round trip distributions; snapshot/restore by workspace; resume TTFT."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    for key, label, limit, color in (
        ("start", "sandbox start to first command", SANDBOX_START_MS, "C0"),
        ("round_trip", "tool round trip (shell `true`)", TOOL_ROUND_TRIP_MS, "C1"),
    ):
        curve = sb[key]["ms"].get("curve")
        if curve:
            ax.plot(curve, range(101), "-", color=color, label=label)
            ax.axvline(limit, color=color, linestyle=":", linewidth=1, label=f"target p50 <= {limit:g} ms")
    ax.set_xscale("log")
    _plain_log(ax, "x")
    ax.set_xlabel("ms")
    ax.set_ylabel("percentile")
    ax.set_title(f"sandbox start and tool call ({sb['backend']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax = axes[1]
    cases = sb.get("snapshots", [])
    if cases:
        series = [
            ("save_ms", "snapshot", "C2"),
            ("restore_ms", "restore", "C3"),
            ("restore_after_discard_ms", "restore right after a discard", "C4"),
        ]
        series = [entry for entry in series if all(entry[0] in c for c in cases)]
        width = 0.8 / len(series)
        xs = range(len(cases))
        for index, (key, label, color) in enumerate(series):
            offset = (index - (len(series) - 1) / 2) * width
            p50 = [c[key]["p50"] for c in cases]
            p95 = [c[key]["p95"] for c in cases]
            bars = ax.bar(
                [x + offset for x in xs],
                p50,
                width,
                color=color,
                label=f"{label} p50 (whisker: p95)",
                yerr=[[0] * len(cases), [hi - lo for lo, hi in zip(p50, p95, strict=True)]],
                capsize=3,
            )
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
            for x, case in zip(xs, cases, strict=True):
                megabytes = round(case["bytes"] / 1e6)
                left, right = x + offset - width / 2, x + offset + width / 2
                wanted = RESTORE_MS.get(megabytes) if key == "restore_ms" else None
                if key == "save_ms" and megabytes >= 100:
                    wanted = SNAPSHOT_MS_PER_100MB * megabytes / 100
                if wanted:
                    ax.hlines(wanted, left, right, color="black", linestyle="--", linewidth=1, zorder=3)
        ax.set_xticks(list(xs), [_workspace(c).replace(", ", "\n").replace(" in ", "\n") for c in cases])
        ax.tick_params(axis="x", labelsize=8)
        ax.set_yscale("log")
        _plain_log(ax, "y")
        ax.set_ylabel("ms (dashed: target)")
        ax.set_ylim(top=ax.get_ylim()[1] * 8)  # room for the legend above the tallest bar
        ax.set_title("workspace snapshot and restore")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7, loc="upper left")
    ax = axes[2]
    resume = sb.get("resume") or {}
    for kind, style in (("active", "--"), ("idle", "-")):
        curve = resume.get(kind, {}).get("ttft_ms", {}).get("curve")
        if curve:
            ax.plot(curve, range(101), style, label=f"{kind.upper()} session")
    if resume.get("active", {}).get("ttft_ms", {}).get("n"):
        limit = resume["active"]["ttft_ms"]["p50"] + RESUME_ADDED_MS
        ax.axvline(limit, color="C1", linestyle=":", linewidth=1, label="target: active p50 + 100 ms")
    ax.set_xlabel("ms to the first message.part.updated")
    ax.set_ylabel("percentile")
    ax.set_title("resume: TTFT through the server, 1 MiB workspace")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig
