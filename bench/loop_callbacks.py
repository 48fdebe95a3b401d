"""Which callbacks hold the event loop longest, under a steady rate of streamed turns.

    python -m bench.loop_callbacks [--rate 20] [--seconds 5] [--tokens N] [--threshold-ms 1] [--top 15]

A delta of one stream waits for whatever the event loop runs when it arrives, so the added gap's p99
(metric 1) follows the longest callbacks, not the average cost. This starts the fake upstream with
metric 1's turn shape (`bench.run.STREAMING`: 200 deltas 20 ms apart after 150 ms) and `chambers
serve` with `bench/loop_site` on its PYTHONPATH, which runs the server on asyncio's own loop and
times every callback (`bench/loop_site/sitecustomize.py`). New turns arrive at `--rate` a second for
`--seconds`, each on a new session; after they end the server stops and writes its counts. The
report gives the distribution of callback durations and, for those of `--threshold-ms` or more,
which task ran them and where its coroutine stood before and after the step (turn and task ids
folded together). `--tokens 500 --seconds 25` is metric 1's live shape (about 200 streams at once).
The garbage collector's pauses are reported apart, with what each full collection walked: they hold
the loop inside whatever callback allocated last, so their time is also in that callback's (and, for
full ones, the time to count what they walked).

asyncio's loop is slower than uvloop's and the timer costs a little per callback: compare runs of
this tool with each other, not with the benchmark's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    TOKEN_TEXT,
    FakeUpstreamProcess,
    child_environment,
    raise_fd_limit,
    reference_op_us,
    server_env,
    summarize,
    wait_until_warm,
)
from bench.load import Clients, bodies, chambers_turn, create_sessions, open_loop
from bench.run import STREAMING

SITE = ROOT / "bench" / "loop_site"
_IDS = ((re.compile(r"turn_[0-9a-z]{26}"), "turn_…"), (re.compile(r"Task-\d+"), "Task-…"))


async def drive(url: str, key: str, rate: float, seconds: float, tokens: int | None) -> int:
    """Warm up, then start turns at `rate` a second for `seconds` (of `tokens` deltas when given, else
    of the fake's default); the number that completed."""
    clients = Clients(url, key)
    try:
        count = max(1, int(rate * seconds))
        warm = await create_sessions(clients, 10)
        await asyncio.gather(*(chambers_turn(clients.pick(), s, len(TOKEN_TEXT)) for s in warm))
        sessions = await create_sessions(clients, count)
        body, _ = bodies(tokens)
        streams, _ = await open_loop(
            lambda i: chambers_turn(clients.pick(), sessions[i], len(TOKEN_TEXT), body),
            rate,
            count,
            seconds + 60,
        )
        return sum(1 for s in streams if not s.error)
    finally:
        await clients.close()


def report(counts: dict[str, Any], top: int, threshold_ms: float) -> str:
    durations = counts["durations_ms"]
    stats = summarize(durations)
    lines = [
        f"{len(durations):,} callbacks: p50 {stats['p50'] * 1000:.0f} µs, p99 {stats['p99']:.2f} ms, "
        f"p99.9 {stats['p999']:.2f} ms, max {stats['max']:.1f} ms",
        "  " + ", ".join(f">= {b:g} ms: {sum(1 for d in durations if d >= b)}" for b in (1, 2, 3, 5, 10)),
    ]
    for generation, pauses in sorted(counts.get("gc_ms", {}).items()):
        got = sorted(pauses)
        lines.append(
            f"  garbage collections of generation {generation}: {len(got)}, "
            f"p50 {got[len(got) // 2]:.2f} ms, max {got[-1]:.1f} ms, {sum(got):.0f} ms in all, "
            f"{counts.get('gc_found', {}).get(generation, 0):,} unreachable objects found"
        )
    for walked in counts.get("gc_kinds", []):
        kinds = ", ".join(f"{name} {n:,}" for name, n in walked["top"])
        lines.append(
            f"  a full collection of {walked['ms']:.1f} ms walked {walked['objects']:,} objects "
            f"({walked['frozen']:,} frozen): {kinds}"
        )
    lines += ["", f"callbacks of {threshold_ms:g} ms or more, by task and where it stood before ==> after:"]
    folded: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for key, n in counts["long"].items():
        name = key
        for pattern, label in _IDS:
            name = pattern.sub(label, name)
        folded[name][0] += n
        folded[name][1] += counts["long_ms"][key]
    ranked = sorted(folded.items(), key=lambda item: -item[1][1])[:top]
    lines += [f"{ms:8.1f} ms {n:5.0f} x {ms / n:5.2f} ms  {name}" for name, (n, ms) in ranked]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=20.0, help="new turns per second")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--tokens", type=int, default=None, help="deltas per answer (the fake's default)")
    parser.add_argument("--threshold-ms", type=float, default=1.0)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    child_environment()
    raise_fd_limit()
    speed = reference_op_us()  # before the load: the VM's speed, not what the run leaves behind
    from tests.support.server import ServerProcess

    out = Path(tempfile.mkdtemp(prefix="chambers-loop-")) / "callbacks.json"
    with FakeUpstreamProcess(**STREAMING) as upstream:
        env = server_env(upstream.url)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SITE), os.environ.get("PYTHONPATH", "")]))
        env["CHAMBERS_BENCH_LOOP_CALLBACKS"] = str(out)
        env["CHAMBERS_BENCH_LOOP_MS"] = str(args.threshold_ms)
        server = ServerProcess(out.parent / "data", env)
        server.start()
        try:
            wait_until_warm(server.url)
            assert server.admin_key is not None
            done = asyncio.run(drive(server.url, server.admin_key, args.rate, args.seconds, args.tokens))
        finally:
            server.stop()
    if not out.exists():
        sys.exit(f"the server wrote no counts to {out}")
    print(
        f"{done} turns at {args.rate:g}/s for {args.seconds:g} s (and 10 warm-up turns); "
        f"reference op {speed} µs (the VM's speed; lower is faster)"
    )
    print(report(json.loads(out.read_text()), args.top, args.threshold_ms))


if __name__ == "__main__":
    main()
