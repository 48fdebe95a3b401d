"""The load generator: one asyncio process with aiohttp clients, started by `bench.run` once per scenario.

    python -m bench.load '<json config>'   # prints one JSON object (the scenario's raw results)

Every measurement runs the same client against Chambers and, as the baseline, against the fake upstream
directly (OpenAI `POST /v1/chat/completions` with `stream: true`), one after the other in each repetition.
Scenario `replicas` is the exception: one phase against the replicas listed in its config (its baseline
is the phase with one replica, run by `bench.run` before the one with two).

The client is aiohttp, not httpx: httpx spent ~45 µs of CPU per streamed event, enough at 640 streams on
two cores (shared with the server and the fake) to break the direct baseline itself; aiohttp's C parser
and the rest of this process read one in 27-31 µs.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.common import (
    TOKEN_TEXT,
    CpuMeter,
    cpu_seconds,
    find_pids,
    machine_busy_seconds,
    median,
    raise_fd_limit,
    rss_kb,
    summarize,
)

PROMPT = "Benchmark turn: please answer."
TURN_BODY = {"parts": [{"type": "text", "text": PROMPT}]}
DIRECT_BODY = {
    "model": "gpt-4o",
    "stream": True,
    "stream_options": {"include_usage": True},
    "messages": [{"role": "user", "content": PROMPT}],
}
PLAIN_BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": PROMPT}]}


def bodies(tokens: int | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The turn's body for Chambers and for the direct baseline; with `tokens`, a prompt that asks the
    fake upstream for that many deltas instead of its default (`[fake-tokens=N]`)."""
    if tokens is None:
        return TURN_BODY, DIRECT_BODY
    prompt = f"{PROMPT} [fake-tokens={tokens}]"
    return {"parts": [{"type": "text", "text": prompt}]}, {
        **DIRECT_BODY,
        "messages": [{"role": "user", "content": prompt}],
    }


# What a request can fail with on the way (connection, protocol, timeout), as opposed to an HTTP status.
TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)
now = time.perf_counter


def log(message: str) -> None:
    """Progress on stderr (stdout carries the JSON result)."""
    print(f"  {message}", file=sys.stderr, flush=True)


# --- clients ----------------------------------------------------------------------------------------------


class Clients:
    """One aiohttp.ClientSession on one base URL, keeping its connections alive; `pick()` returns it.

    `connections` caps the pool (0, the default, leaves it unbounded: aiohttp's pool is cheap at any size).
    Make it inside the running event loop: a session belongs to the loop it was made in."""

    def __init__(self, base_url: str, key: str, connections: int = 0) -> None:
        self.session = aiohttp.ClientSession(
            base_url=base_url,
            headers={"Authorization": f"Bearer {key}"},
            # Idle connections are dropped before uvicorn's 5 s keep-alive would close them under a request.
            connector=aiohttp.TCPConnector(limit=connections, force_close=False, keepalive_timeout=4.0),
            timeout=aiohttp.ClientTimeout(total=300.0, sock_connect=30.0),
        )

    def pick(self) -> aiohttp.ClientSession:
        return self.session

    async def close(self) -> None:
        await self.session.close()


async def send(client: aiohttp.ClientSession, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
    """One non-streamed request: its status and whole body (read, so that the connection is reused)."""
    async with client.request(method, path, json=body) as resp:
        return resp.status, await resp.read()


async def new_chat(client: aiohttp.ClientSession) -> str:
    """A new chat session on model `openai/gpt-4o`; raises on an HTTP error status."""
    async with client.post("/agent/v1/chat", json={"model": "openai/gpt-4o"}) as resp:
        resp.raise_for_status()
        return str(json.loads(await resp.read())["id"])


# --- one streamed turn ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Stream:
    """What the client saw of one streamed turn; times in seconds from `time.perf_counter`."""

    start: float = 0.0
    headers: float | None = None  # until the response headers (Chambers: after the store claimed the turn)
    ttft: float | None = None  # until the first text delta
    gaps: list[float] = field(default_factory=list)  # between consecutive text-delta events
    arrivals: list[tuple[int, float]] = field(default_factory=list)  # (event id, time): fan-out only
    events: int = 0  # text-delta events
    tokens: int = 0  # upstream deltas they carried (more than `events` when the server coalesced)
    ok: bool = False
    error: str | None = None
    end: float = 0.0


class _Deltas:
    """Records delta arrivals of one stream."""

    def __init__(self, stream: Stream, token_len: int) -> None:
        self.stream = stream
        self.token_len = token_len
        self.last = 0.0

    def add(self, delta: str, at: float) -> None:
        stream = self.stream
        if stream.ttft is None:
            stream.ttft = at - stream.start
        else:
            stream.gaps.append(at - self.last)
        self.last = at
        stream.events += 1
        stream.tokens += max(1, len(delta) // self.token_len)


def _field(event: bytes, name: bytes) -> bytes:
    for line in event.split(b"\n"):
        if line.startswith(name):
            return line[len(name) :]
    return b""


async def chambers_turn(
    client: aiohttp.ClientSession, chat_id: str, token_len: int, body: dict[str, Any] = TURN_BODY
) -> Stream:
    """POST /agent/v1/chat/{id}/respond and read the turn's SSE until `turn.completed`."""
    stream = Stream(start=now())
    deltas = _Deltas(stream, token_len)
    try:
        async with client.post(f"/agent/v1/chat/{chat_id}/respond", json=body) as resp:
            stream.headers = now() - stream.start
            if resp.status != 200:
                await resp.read()
                stream.error = f"HTTP {resp.status}"
                return stream
            buf = b""
            async for chunk in resp.content.iter_any():
                at = now()
                *events, buf = (buf + chunk).split(b"\n\n")
                for event in events:
                    if event.startswith(b"event: message.part.updated"):
                        delta = json.loads(_field(event, b"data: ")).get("delta")
                        if delta:
                            deltas.add(delta, at)
                    elif event.startswith(b"event: turn.completed"):
                        status = json.loads(_field(event, b"data: ")).get("status")
                        stream.ok = status == "completed"
                        stream.error = None if stream.ok else f"turn {status}"
                        stream.end = at
                        return stream
            stream.error = "stream ended before turn.completed"
    except TRANSPORT_ERRORS as exc:
        stream.error = type(exc).__name__
    except ValueError:
        stream.error = "bad JSON in an event"
    return stream


async def direct_turn(
    client: aiohttp.ClientSession, token_len: int, body: dict[str, Any] = DIRECT_BODY
) -> Stream:
    """The baseline: the same client streaming a completion from the fake upstream directly."""
    stream = Stream(start=now())
    deltas = _Deltas(stream, token_len)
    try:
        async with client.post("/v1/chat/completions", json=body) as resp:
            stream.headers = now() - stream.start
            if resp.status != 200:
                await resp.read()
                stream.error = f"HTTP {resp.status}"
                return stream
            buf = b""
            async for chunk in resp.content.iter_any():
                at = now()
                *events, buf = (buf + chunk).split(b"\n\n")
                for event in events:
                    if event == b"data: [DONE]":
                        stream.ok = True
                        stream.end = at
                        return stream
                    if event.startswith(b"data: "):
                        choices = json.loads(event[6:]).get("choices") or [{}]
                        content = choices[0].get("delta", {}).get("content")
                        if content:
                            deltas.add(content, at)
            stream.error = "stream ended before [DONE]"
    except TRANSPORT_ERRORS as exc:
        stream.error = type(exc).__name__
    except ValueError:
        stream.error = "bad JSON in an event"
    return stream


# --- load shapes ------------------------------------------------------------------------------------------


async def create_sessions(clients: Clients, count: int, concurrency: int = 16) -> list[str]:
    """`count` new chat sessions on model `openai/gpt-4o`, created `concurrency` at a time."""
    made: list[str] = []
    todo = iter(range(count))

    async def worker() -> None:
        client = clients.pick()
        for _ in todo:
            made.append(await new_chat(client))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return made


def _timed_out(start: float) -> Stream:
    return Stream(start=start, error="timeout")


async def open_loop(
    start_one: Callable[[int], Awaitable[Stream]], rate: float, count: int, timeout: float
) -> tuple[list[Stream], dict[str, Any]]:
    """Start `count` turns at a steady `rate` per second (open loop), then wait up to `timeout` s."""
    live = peak = 0
    live_at_arrival: list[int] = []
    lag: list[float] = []
    tasks: list[asyncio.Task[Stream]] = []

    async def one(index: int) -> Stream:
        nonlocal live, peak
        live += 1
        peak = max(peak, live)
        try:
            return await start_one(index)
        finally:
            live -= 1

    t0 = now()
    for index in range(count):
        due = t0 + index / rate
        if (delay := due - now()) > 0:
            await asyncio.sleep(delay)
        lag.append(now() - due)
        live_at_arrival.append(live)
        tasks.append(asyncio.create_task(one(index)))
    span = now() - t0
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    streams = [t.result() if t in done else _timed_out(t0) for t in tasks]
    steady = live_at_arrival[len(live_at_arrival) // 2 :] or [0]
    shape = {
        "target_rate": rate,
        "achieved_rate": round((count - 1) / span, 2) if count > 1 and span > 0 else None,
        "peak_live": peak,
        "mean_live_second_half": round(sum(steady) / len(steady), 1),
        "arrival_lag_ms_p99": round(summarize(lag, 1000).get("p99", 0.0), 2),
    }
    return streams, shape


async def closed_loop(
    workers: int, duration: float, op: Callable[[], Awaitable[bool | None]]
) -> dict[str, Any]:
    """`workers` loops doing `op` back to back for `duration` seconds: throughput and latency.

    `op` returns whether it worked, or None when it has nothing left to do (that worker stops)."""
    latencies: list[float] = []
    failures = 0
    stop_at = now() + duration

    async def worker() -> None:
        nonlocal failures
        while now() < stop_at:
            t = now()
            try:
                ok = await op()
            except TRANSPORT_ERRORS:
                ok = False
            if ok is None:
                return
            if ok:
                latencies.append(now() - t)
            else:
                failures += 1

    t0 = now()
    await asyncio.gather(*(worker() for _ in range(workers)))
    elapsed = now() - t0
    return {
        "workers": workers,
        "ok": len(latencies),
        "failures": failures,
        "per_s": round(len(latencies) / elapsed, 1),
        "latency_ms": brief(summarize(latencies, 1000)),
        "wall_s": round(elapsed, 3),
    }


def brief(stats: dict[str, Any]) -> dict[str, Any]:
    """A summary without its quantile curve."""
    return {k: v for k, v in stats.items() if k != "curve"}


def stream_stats(streams: list[Stream], wall_s: float, curves: bool = True) -> dict[str, Any]:
    """A phase: TTFT, header and gap distributions (ms), errors, events and coalesced deltas."""
    good = [s for s in streams if s.ok]
    errors: dict[str, int] = {}
    for s in streams:
        if not s.ok:
            errors[s.error or "unknown"] = errors.get(s.error or "unknown", 0) + 1
    keep = (lambda d: d) if curves else brief
    events = sum(s.events for s in good)
    tokens = sum(s.tokens for s in good)
    return {
        "streams": len(streams),
        "ok": len(good),
        "errors": errors,
        "error_rate": (len(streams) - len(good)) / len(streams) if streams else 0.0,
        "ttft_ms": keep(summarize((s.ttft for s in good if s.ttft is not None), 1000)),
        "headers_ms": brief(summarize((s.headers for s in good if s.headers is not None), 1000)),
        "gap_ms": keep(summarize((g for s in good for g in s.gaps), 1000)),
        "turn_ms": brief(summarize((s.end - s.start for s in good), 1000)),
        "peak_streaming": peak_streaming(good),
        "delta_events": events,
        "upstream_deltas": tokens,
        "coalesced_deltas": tokens - events,
        "wall_s": round(wall_s, 3),
    }


def peak_streaming(streams: list[Stream]) -> int:
    """The most streams that were between their first and last delta at one moment. A server that
    admits turns slowly spreads a burst out in time, so fewer of them stream at once than were sent."""
    edges = sorted(
        edge for s in streams if s.ttft is not None and s.end for edge in ((s.start + s.ttft, 1), (s.end, -1))
    )
    peak = running = 0
    for _at, step in edges:
        running += step
        peak = max(peak, running)
    return peak


class RssSampler:
    """Samples a process's VmRSS every `interval` seconds in the background."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.before = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_kb(self.pid))
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self.before = self.peak = rss_kb(self.pid)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.peak = max(self.peak, rss_kb(self.pid))


# --- scenarios --------------------------------------------------------------------------------------------


class Scenario:
    """Configuration, clients and meters of one run of one scenario."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.token_len = len(cfg.get("token_text", TOKEN_TEXT))
        self.pause = float(cfg.get("pause_s", 1.0))
        self.server_pid = int(cfg["server_pid"])
        self.chambers = Clients(cfg["chambers_url"], cfg["key"])
        self.direct = Clients(cfg["upstream_url"], "bench-key")
        # The floor (capacity, and metric 1's live shape): a bare relay to the fake on the server's
        # libraries, `bench.passthrough`.
        self.floor = Clients(cfg["floor_url"], "bench-key") if cfg.get("floor_url") else None
        pids = {"server": self.server_pid, "upstream": int(cfg["upstream_pid"]), "client": os.getpid()}
        if cfg.get("floor_pid"):
            pids["floor"] = int(cfg["floor_pid"])
        self.cpu = CpuMeter(pids)

    async def close(self) -> None:
        await self.chambers.close()
        await self.direct.close()
        if self.floor is not None:
            await self.floor.close()

    async def settle(self) -> None:
        """Between phases: collect garbage and let the processes go quiet."""
        gc.collect()
        await asyncio.sleep(self.pause)

    async def warm_up(self, sessions: list[str]) -> None:
        """Unmeasured turns on both paths (lazy imports, connection pools, caches)."""
        await asyncio.gather(*(chambers_turn(self.chambers.pick(), s, self.token_len) for s in sessions))
        await asyncio.gather(*(direct_turn(self.direct.pick(), self.token_len) for _ in sessions))

    def starter(
        self, target: str, sessions: list[str], tokens: int | None = None
    ) -> Callable[[int], Awaitable[Stream]]:
        """Starts stream `i` of a phase: a direct completion (also through the floor's relay), or a turn
        on `sessions[i]`; of `tokens` deltas when given, else of the fake's default."""
        turn, direct = bodies(tokens)
        if target == "direct":
            return lambda _i: direct_turn(self.direct.pick(), self.token_len, direct)
        if target == "floor":
            assert self.floor is not None
            floor = self.floor
            return lambda _i: direct_turn(floor.pick(), self.token_len, direct)
        return lambda i: chambers_turn(self.chambers.pick(), sessions[i], self.token_len, turn)


def _added(reps: list[dict[str, Any]], metric: str, pct: str, target: str = "chambers") -> float:
    return median(
        [r[target][metric].get(pct, math.nan) - r["direct"][metric].get(pct, math.nan) for r in reps]
    )


async def turn_overhead(sc: Scenario) -> dict[str, Any]:
    """Metric 1: TTFT and inter-delta gaps at steady arrival rates of new turns, paired with direct.

    Rates run in ascending order; once the server is overloaded at one (CPU near a core, or TTFT
    added by more than `overload_ttft_ms`), the remaining rates are skipped except `target_rate`.
    """
    cfg = sc.cfg
    duration, reps = float(cfg["duration_s"]), int(cfg["reps"])
    target_rate = float(cfg.get("target_rate", 20))
    overload_ms = float(cfg.get("overload_ttft_ms", 100))
    warm = await create_sessions(sc.chambers, int(cfg.get("warmup_turns", 10)))
    await sc.warm_up(warm)
    out: list[dict[str, Any]] = []
    overloaded = False
    for rate in [float(r) for r in cfg["rates"]]:
        if overloaded and rate != target_rate:
            out.append({"rate": rate, "skipped": "a lower rate already overloaded the server"})
            continue
        count = max(2, int(rate * duration))
        sessions = await create_sessions(sc.chambers, count * reps)
        reps_out: list[dict[str, Any]] = []
        for rep in range(reps):
            entry: dict[str, Any] = {"rep": rep + 1}
            for target in ("direct", "chambers"):
                await sc.settle()
                mine = sessions[rep * count : (rep + 1) * count]
                sc.cpu.start()
                t0 = now()
                streams, shape = await open_loop(sc.starter(target, mine), rate, count, duration + 240)
                stats = stream_stats(streams, now() - t0)
                stats["cpu"] = sc.cpu.stop()
                stats["load"] = shape
                entry[target] = stats
            reps_out.append(entry)
        added_ttft = _added(reps_out, "ttft_ms", "p50")
        server_cpu = median([r["chambers"]["cpu"]["server"] for r in reps_out])
        log(f"turn overhead at {rate:g}/s: added TTFT p50 {added_ttft:.1f} ms, server CPU {server_cpu:.2f}")
        if added_ttft > overload_ms or server_cpu > 0.9:
            overloaded = True
        out.append({"rate": rate, "turns_per_rep": count, "reps": reps_out, "overloaded": overloaded})
    result: dict[str, Any] = {"rates": out}
    if cfg.get("live"):
        result["live"] = await _with_live_streams(sc, cfg["live"])
    return result


async def _with_live_streams(sc: Scenario, live: dict[str, Any]) -> dict[str, Any]:
    """Metric 1 at its rate with as many streams live as asked: turns long enough (`tokens` deltas) that
    `rate` new ones a second keep about `rate` x turn length streaming. Turns start for `warm_s` (until
    the live count is reached), then `measure_s`, then as long again as a turn lasts, so the turns
    measured (those started in the middle window) stream from start to end among that many others.
    When the run has a floor, it is measured in the same shape: what a relay that does nothing else adds."""
    rate, tokens = float(live["rate"]), int(live["tokens"])
    warm_s, measure_s, tail_s = float(live["warm_s"]), float(live["measure_s"]), float(live["tail_s"])
    count = int(rate * (warm_s + measure_s + tail_s))
    measured = slice(int(rate * warm_s), int(rate * (warm_s + measure_s)))
    reps_out: list[dict[str, Any]] = []
    for rep in range(int(live["reps"])):
        sessions = await create_sessions(sc.chambers, count)
        entry: dict[str, Any] = {"rep": rep + 1}
        for target in ("direct", "floor", "chambers") if sc.floor is not None else ("direct", "chambers"):
            await sc.settle()
            sc.cpu.start()
            t0 = now()
            streams, shape = await open_loop(sc.starter(target, sessions, tokens), rate, count, 600)
            stats = stream_stats(streams[measured], now() - t0)
            stats["all_errors"] = sum(1 for s in streams if not s.ok)
            stats["cpu"] = sc.cpu.stop()
            stats["load"] = shape
            entry[target] = stats
        added = {t: entry[t]["gap_ms"]["p99"] - entry["direct"]["gap_ms"]["p99"] for t in entry if t != "rep"}
        log(
            f"{rate:g}/s with {shape['mean_live_second_half']:.0f} live: added gap p99 "
            + ", ".join(f"{t} {a:+.1f} ms" for t, a in added.items() if t != "direct")
            + f"; server CPU {entry['chambers']['cpu']['server']:.2f}"
        )
        reps_out.append(entry)
    return {
        "rate": rate,
        "tokens": tokens,
        "turns_per_rep": count,
        "measured": measured.stop - measured.start,
        "reps": reps_out,
    }


AT_ONCE_SHARE = 0.9
"""A capacity level counts only if at least this share of its streams were streaming at once."""
SATURATION_FROM = 100
"""The smallest level at which a direct baseline that falls behind stops the capacity ramp."""


async def capacity(sc: Scenario) -> dict[str, Any]:
    """Metric 2: concurrent streaming turns (one per session), level by level, with the server's RSS.

    A level passes while the added gap p99 stays within `max_added_gap_p99_ms`, errors within
    `max_error_rate`, and its streams ran together (`AT_ONCE_SHARE` of them streaming at once: turns
    that queue to start one after another are not concurrent streams). Beside Chambers each level
    measures the floor (`bench.passthrough`, when the run started one) against the same limit: the ramp
    goes on while either passes, measuring only those. It stops, passing no one, at a level (from
    `SATURATION_FROM` up) where the direct baseline itself falls behind: its gap p99 over its p50 by
    more than the limit, or fewer than `AT_ONCE_SHARE` of its streams at once. There the machine cannot
    drive that many streams, and an added figure means nothing.
    """
    cfg = sc.cfg
    reps = int(cfg["reps"])
    max_gap = float(cfg.get("max_added_gap_p99_ms", 25.0))
    max_errors = float(cfg.get("max_error_rate", 0.001))
    ramp = float(cfg.get("ramp_per_s", 400.0))
    warm = await create_sessions(sc.chambers, 10)
    await sc.warm_up(warm)
    if sc.floor is not None:
        await asyncio.gather(*(direct_turn(sc.floor.pick(), sc.token_len) for _ in warm))
    await sc.settle()
    idle_count = int(cfg.get("idle_sessions", 1000))
    rss0 = rss_kb(sc.server_pid)
    pool = await create_sessions(sc.chambers, idle_count)
    await sc.settle()
    rss1 = rss_kb(sc.server_pid)
    idle = {
        "sessions": idle_count,
        "rss_before_kb": rss0,
        "rss_after_kb": rss1,
        "per_session_kb": round((rss1 - rss0) / idle_count, 2),
    }
    levels: list[dict[str, Any]] = []
    passing = {"chambers"} | ({"floor"} if sc.floor is not None else set())
    best = {name: 0 for name in passing}
    for level in [int(n) for n in cfg["levels"]]:
        if "chambers" in passing and len(pool) < level * reps:
            pool += await create_sessions(sc.chambers, level * reps - len(pool))
        reps_out: list[dict[str, Any]] = []
        for rep in range(reps):
            mine: list[str] = []
            if "chambers" in passing:
                mine, pool = pool[:level], pool[level:]
            entry: dict[str, Any] = {"rep": rep + 1}
            for target in ("direct", "floor", "chambers"):
                if target != "direct" and target not in passing:
                    continue
                await sc.settle()
                sampler = RssSampler(sc.server_pid)
                sampler.start()
                sc.cpu.start()
                t0 = now()
                # All `level` streams start within level/ramp seconds, well inside one turn.
                streams, shape = await open_loop(sc.starter(target, mine), ramp, level, 180)
                stats = stream_stats(streams, now() - t0, curves=False)
                stats["cpu"] = sc.cpu.stop()
                stats["load"] = shape
                await sc.settle()
                await sampler.stop()
                if target == "chambers":
                    after, before = rss_kb(sc.server_pid), sampler.before
                    stats["rss"] = {
                        "before_kb": before,
                        "peak_kb": sampler.peak,
                        "after_kb": after,
                        "per_active_stream_kb": round((sampler.peak - before) / level, 2),
                        "retained_per_finished_session_kb": round((after - before) / level, 2),
                    }
                entry[target] = stats
            reps_out.append(entry)
        out: dict[str, Any] = {"level": level, "reps": reps_out}
        direct_p99 = median([r["direct"]["gap_ms"].get("p99", math.nan) for r in reps_out])
        direct_late = median(
            [
                r["direct"]["gap_ms"].get("p99", math.nan) - r["direct"]["gap_ms"].get("p50", math.nan)
                for r in reps_out
            ]
        )
        direct_at_once = median([float(r["direct"]["peak_streaming"]) for r in reps_out])
        out["direct_gap_p99_ms"], out["direct_late_p99_ms"] = direct_p99, direct_late
        # Below SATURATION_FROM streams a late baseline is a stall of the VM, not the machine's limit.
        saturated = level >= SATURATION_FROM and (
            not direct_late <= max_gap or direct_at_once < AT_ONCE_SHARE * level
        )
        verdicts: list[str] = []
        for target in sorted(passing):
            added = _added(reps_out, "gap_ms", "p99", target)
            errors = max(r[target]["error_rate"] for r in reps_out)
            at_once = median([float(r[target]["peak_streaming"]) for r in reps_out])
            together = at_once >= AT_ONCE_SHARE * level
            passed = added <= max_gap and errors <= max_errors and together and not saturated
            key = "" if target == "chambers" else f"{target}_"
            out[f"{key}added_gap_p99_ms"], out[f"{key}error_rate"] = added, errors
            out[f"{key}together"] = together
            verdicts.append(
                f"{target} {added:+.1f} ms, errors {errors:.2%} ({at_once:g} at once): "
                + ("ok" if passed else "stop" if together else "stop (not streaming together)")
            )
            if passed:
                best[target] = level
            else:
                passing.discard(target)
        levels.append(out)
        log(f"capacity {level} streams (direct gap p99 {direct_p99:.1f} ms): " + "; ".join(verdicts))
        if saturated:
            out["direct_saturated"] = True
            log(
                f"  the direct baseline itself ran {direct_late:.1f} ms late at p99, {direct_at_once:g} of"
                f" {level} streaming at once: this machine cannot drive {level} streams, so no level from"
                " here on is measured"
            )
            break
        if not passing:
            break
    memory = await _stream_memory(sc, int(cfg.get("memory_streams", 100)), ramp)
    result = {"idle": idle, "levels": levels, "max_streams": best["chambers"], "memory": memory}
    if "floor" in best:
        result["floor_max_streams"] = best["floor"]
    return result


async def _stream_memory(sc: Scenario, count: int, ramp: float) -> dict[str, Any]:
    """Server RSS while `count` turns stream at once (Chambers only), whether or not the level passed."""
    sessions = await create_sessions(sc.chambers, count)
    await sc.settle()
    sampler = RssSampler(sc.server_pid)
    sampler.start()
    t0 = now()
    streams, _shape = await open_loop(sc.starter("chambers", sessions), ramp, count, 120)
    wall = now() - t0
    await sc.settle()
    await sampler.stop()
    after = rss_kb(sc.server_pid)
    ok = sum(1 for s in streams if s.ok)
    errors: dict[str, int] = {}
    for stream in streams:
        if not stream.ok:
            errors[stream.error or "unknown"] = errors.get(stream.error or "unknown", 0) + 1
    log(f"memory at {count} streams: {(sampler.peak - sampler.before) / count:.0f} KB per stream")
    return {
        "streams": count,
        "ok": ok,
        "errors": errors,
        "wall_s": round(wall, 2),
        "before_kb": sampler.before,
        "peak_kb": sampler.peak,
        "after_kb": after,
        "per_active_stream_kb": round((sampler.peak - sampler.before) / count, 2),
        "retained_per_finished_session_kb": round((after - sampler.before) / count, 2),
    }


async def fanout(sc: Scenario) -> dict[str, Any]:
    """Metric 3: N subscribers on one session's feed while a turn runs; events delivered per second.

    The baseline is N direct completions streamed from the fake at once (same client, same events).
    """
    cfg = sc.cfg
    reps = int(cfg["reps"])
    counts = [int(n) for n in cfg["subscribers"]]
    sessions = await create_sessions(sc.chambers, 5 + len(counts) * reps)
    await sc.warm_up(sessions[:5])
    sessions = sessions[5:]
    out: list[dict[str, Any]] = []
    for count in counts:
        reps_out: list[dict[str, Any]] = []
        for rep in range(reps):
            await sc.settle()
            sc.cpu.start()
            t0 = now()
            streams = list(
                await asyncio.gather(*(direct_turn(sc.direct.pick(), sc.token_len) for _ in range(count)))
            )
            direct = stream_stats(streams, now() - t0, curves=False)
            direct["events_per_s"] = _delivery_rate(streams, t0)
            direct["cpu"] = sc.cpu.stop()
            await sc.settle()
            sc.cpu.start()
            chambers = await _fanout_chambers(sc, sessions.pop(), count)
            chambers["cpu"] = sc.cpu.stop()
            reps_out.append({"rep": rep + 1, "direct": direct, "chambers": chambers})
        rate = median([r["chambers"]["events_per_s"] for r in reps_out])
        log(f"fan-out {count} subscribers: {rate:.0f} events/s delivered")
        out.append({"subscribers": count, "reps": reps_out})
    return {"levels": out}


def _delivery_rate(streams: list[Stream], t0: float) -> float:
    """Delta events delivered per second over all streams, from `t0` to the last arrival."""
    good = [s for s in streams if s.ok]
    if not good:
        return 0.0
    return round(sum(s.events for s in good) / max(max(s.end for s in good) - t0, 1e-9), 1)


async def _subscribe(sc: Scenario, chat_id: str, stream: Stream, ready: Callable[[], None]) -> None:
    """Read a session feed, recording each text delta's event id and arrival, until turn.completed."""
    try:
        async with sc.chambers.pick().get(f"/agent/v1/chat/{chat_id}/stream") as resp:
            ready()
            if resp.status != 200:
                stream.error = f"HTTP {resp.status}"
                return
            buf = b""
            async for chunk in resp.content.iter_any():
                at = now()
                *events, buf = (buf + chunk).split(b"\n\n")
                for event in events:
                    if event.startswith(b"event: message.part.updated"):
                        stream.arrivals.append((int(_field(event, b"id: ") or 0), at))
                        stream.events += 1
                    elif event.startswith(b"event: turn.completed"):
                        stream.ok = True
                        stream.end = at
                        return
    except TRANSPORT_ERRORS as exc:
        stream.error = type(exc).__name__


async def _fanout_chambers(sc: Scenario, chat_id: str, count: int) -> dict[str, Any]:
    """Open `count` feeds of one session, run one turn with POST /message, read to turn.completed."""
    connected = 0
    all_connected = asyncio.Event()

    def ready() -> None:
        nonlocal connected
        connected += 1
        if connected == count:
            all_connected.set()

    streams = [Stream(start=now()) for _ in range(count)]
    tasks = [asyncio.create_task(_subscribe(sc, chat_id, s, ready)) for s in streams]
    await asyncio.wait_for(all_connected.wait(), 120)
    await asyncio.sleep(0.5)  # response headers go out just before the feed subscribes to the bus
    t0 = now()
    message_status, _ = await send(sc.chambers.pick(), "POST", f"/agent/v1/chat/{chat_id}/message", TURN_BODY)
    turn_ms = (now() - t0) * 1000
    done, pending = await asyncio.wait(tasks, timeout=120)
    for task in pending:
        task.cancel()
    for stream, task in zip(streams, tasks, strict=True):
        if task not in done:
            stream.error = "timeout"
    by_id: dict[int, list[float]] = {}
    for stream in streams:
        for seq, at in stream.arrivals:
            by_id.setdefault(seq, []).append(at)
    spread = [max(times) - min(times) for times in by_id.values() if len(times) > 1]
    good = [s for s in streams if s.ok]
    return {
        "subscribers": count,
        "ok": len(good),
        "error_rate": (count - len(good)) / count,
        "message_status": message_status,
        "turn_ms": round(turn_ms, 1),
        "events_per_subscriber": median([float(s.events) for s in good]),
        "events_delivered": sum(s.events for s in good),
        "events_per_s": _delivery_rate(streams, t0),
        "spread_ms": brief(summarize(spread, 1000)),
    }


async def rates(sc: Scenario) -> dict[str, Any]:
    """Metric 5: session creation and turn (POST /message) throughput with a zero-latency upstream.

    Baselines: non-streaming and streaming completions from the fake directly, same client and workers.
    """
    cfg = sc.cfg
    workers, duration, reps = int(cfg["workers"]), float(cfg["duration_s"]), int(cfg["reps"])
    sessions = await create_sessions(sc.chambers, int(cfg.get("turn_sessions", 500)) + 10)
    await sc.warm_up(sessions[:10])
    del sessions[:10]

    async def create() -> bool:
        status, _ = await send(sc.chambers.pick(), "POST", "/agent/v1/chat", {"model": "openai/gpt-4o"})
        return status == 201

    async def plain_completion() -> bool:
        status, _ = await send(sc.direct.pick(), "POST", "/v1/chat/completions", PLAIN_BODY)
        return status == 200

    async def turn() -> bool | None:
        if not sessions:
            return None  # every fresh session was used: the run says so in `sessions_left`
        status, _ = await send(
            sc.chambers.pick(), "POST", f"/agent/v1/chat/{sessions.pop()}/message", TURN_BODY
        )
        return status == 200

    async def streamed_completion() -> bool:
        return (await direct_turn(sc.direct.pick(), sc.token_len)).ok

    ops = {"create": (plain_completion, create), "turn": (streamed_completion, turn)}
    out: list[dict[str, Any]] = []
    for rep in range(reps):
        entry: dict[str, Any] = {"rep": rep + 1}
        for name, pair in ops.items():
            for target, op in zip(("direct", "chambers"), pair, strict=True):
                await sc.settle()
                sc.cpu.start()
                stats = await closed_loop(workers, duration, op)
                stats["cpu"] = sc.cpu.stop()
                entry[f"{name}_{target}"] = stats
        log(
            f"rates rep {rep + 1}: create {entry['create_chambers']['per_s']}/s, "
            f"turns {entry['turn_chambers']['per_s']}/s"
        )
        out.append(entry)
    return {"reps": out, "sessions_left": len(sessions)}


class ClusterMeter:
    """CPU (in cores) between `start()` and `stop()` of the replicas, the fake, this client, the PostgreSQL
    backends serving the cluster's database and the Redis server, and `others`: the rest of the machine.

    PostgreSQL backends are found by their process title (`postgres: ... <user> <database> ...`) at each
    end; one that exits in between loses its time. Redis is the whole server, whoever else uses it.
    """

    def __init__(self, replica_pids: list[int], upstream_pid: int, database: str) -> None:
        self.fixed = {f"replica{i}": pid for i, pid in enumerate(replica_pids)}
        self.fixed["upstream"] = upstream_pid
        self.fixed["client"] = os.getpid()
        self.database = database

    def _sample(self) -> dict[str, float]:
        used = {name: cpu_seconds(pid) for name, pid in self.fixed.items()}
        used["postgres"] = sum(cpu_seconds(p) for p in find_pids("postgres", f" {self.database} "))
        used["redis"] = sum(cpu_seconds(p) for p in find_pids("redis-server"))
        return used

    def start(self) -> None:
        self._t0 = now()
        self._m0 = machine_busy_seconds()
        self._c0 = self._sample()

    def stop(self) -> dict[str, float]:
        used = self._sample()
        machine = machine_busy_seconds() - self._m0
        elapsed = max(now() - self._t0, 1e-9)
        out = {name: max(0.0, used[name] - self._c0.get(name, 0.0)) / elapsed for name in used}
        out["replicas"] = sum(v for k, v in out.items() if k.startswith("replica"))
        mine = sum(v for k, v in out.items() if k != "replicas")
        out["others"] = max(0.0, machine / elapsed - mine)
        return {name: round(value, 3) for name, value in out.items()}


async def replicas_phase(cfg: dict[str, Any]) -> dict[str, Any]:
    """Scale-out: `sessions` sessions each run `turns` streamed turns back to back, all sessions at once,
    against the replicas in `chambers_urls`; every request (session creation and each turn) goes to the
    next replica in turn (round-robin, no sticky routing). Completed turns per second and turn latency.
    """
    urls: list[str] = list(cfg["chambers_urls"])
    sessions_n, turns_n = int(cfg["sessions"]), int(cfg["turns"])
    token_len = len(cfg.get("token_text", TOKEN_TEXT))
    pools = [Clients(url, cfg["key"]) for url in urls]
    counter = 0

    def next_replica() -> int:
        nonlocal counter
        index = counter % len(pools)
        counter += 1
        return index

    def pick() -> aiohttp.ClientSession:
        return pools[next_replica()].pick()

    async def new_sessions(count: int) -> list[str]:
        return list(await asyncio.gather(*(new_chat(pick()) for _ in range(count))))

    meter = ClusterMeter([int(p) for p in cfg["replica_pids"]], int(cfg["upstream_pid"]), cfg["database"])
    try:
        # Warm-up: a few turns through every replica (imports, pools, the first claims of sessions).
        warm = await new_sessions(int(cfg.get("warmup_sessions", 4)))
        for _ in range(int(cfg.get("warmup_turns", 2))):
            await asyncio.gather(*(chambers_turn(pick(), chat, token_len) for chat in warm))
        chats = await new_sessions(sessions_n)
        gc.collect()
        await asyncio.sleep(float(cfg.get("pause_s", 1.0)))
        turns: list[dict[str, Any]] = []

        async def session(number: int, chat: str) -> None:
            for _ in range(turns_n):
                index = next_replica()
                stream = await chambers_turn(pools[index].pick(), chat, token_len)
                turns.append(
                    {
                        "session": number,
                        "replica": index,
                        "ok": stream.ok,
                        "error": stream.error,
                        "start": stream.start,
                        "end": stream.end if stream.ok else now(),
                        "ttft": stream.ttft,
                        "headers": stream.headers,
                    }
                )

        meter.start()
        t0 = now()
        await asyncio.gather(*(session(i, chat) for i, chat in enumerate(chats)))
        wall = now() - t0
        cpu = meter.stop()
    finally:
        for pool in pools:
            await pool.close()
    good = [t for t in turns if t["ok"]]
    errors: dict[str, int] = {}
    for turn in turns:
        if not turn["ok"]:
            errors[turn["error"] or "unknown"] = errors.get(turn["error"] or "unknown", 0) + 1
    # The steady part: until the first session ran out of turns (after it, fewer are in flight).
    last_end: dict[int, float] = {}
    for turn in turns:
        last_end[turn["session"]] = max(last_end.get(turn["session"], 0.0), turn["end"])
    steady_until = min(last_end.values(), default=t0)
    steady = sum(1 for t in good if t["end"] <= steady_until)
    steady_s = steady_until - t0
    return {
        "replicas": len(urls),
        "sessions": sessions_n,
        "turns_per_session": turns_n,
        "turns": len(turns),
        "ok": len(good),
        "errors": errors,
        "error_rate": (len(turns) - len(good)) / len(turns) if turns else 0.0,
        "wall_s": round(wall, 3),
        "turns_per_s": round(len(good) / wall, 2) if wall > 0 else 0.0,
        "steady_turns_per_s": round(steady / steady_s, 2) if steady_s > 0 else 0.0,
        "steady_s": round(steady_s, 3),
        "turn_ms": brief(summarize((t["end"] - t["start"] for t in good), 1000)),
        "ttft_ms": brief(summarize((t["ttft"] for t in good if t["ttft"] is not None), 1000)),
        "headers_ms": brief(summarize((t["headers"] for t in good if t["headers"] is not None), 1000)),
        "by_replica": [sum(1 for t in good if t["replica"] == i) for i in range(len(urls))],
        "cpu": cpu,
        "client_max_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


SCENARIOS: dict[str, Callable[[Scenario], Awaitable[dict[str, Any]]]] = {
    "turn_overhead": turn_overhead,
    "capacity": capacity,
    "fanout": fanout,
    "rates": rates,
}


async def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run the scenario named in `cfg`; adds the client's own peak RSS."""
    if cfg["scenario"] == "replicas":
        return await replicas_phase(cfg)
    sc = Scenario(cfg)
    try:
        result = await SCENARIOS[cfg["scenario"]](sc)
    finally:
        await sc.close()
    result["client_max_rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return result


def main() -> None:
    """Run one scenario with the JSON config in argv[1]; print its results as JSON on stdout."""
    cfg = json.loads(sys.argv[1])
    raise_fd_limit()
    result = asyncio.run(run(cfg))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
