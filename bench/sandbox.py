"""Metric 4, sandbox timings: started by `bench.run` (scenario `sandbox`) in a process of its own.

    python -m bench.sandbox '<json config>'   # prints one JSON object (the raw results) on stdout

In this process, with the server's own classes (`SessionSandbox`, `run_tool`, `SessionSandboxes` over a
`LocalSnapshotStore` with the server's default codec):

- **start**: a new `SessionSandbox` until its first tool call (`shell` running `true`) returned;
- **tool round trip**: `run_tool(sandbox, "shell", {"command": "true"})` on a warm sandbox;
- **snapshot / restore**: `SessionSandboxes.snapshot(stop=True)` of a workspace (what idling does) and
  `SessionSandboxes.restore` of the image into a new session's workspace (what waking does), for 1 MB and
  100 MB workspaces made of many files and of one big file.

Through a real server (`chambers serve` with CHAMBERS_IDLE_TIMEOUT_MIN_MS=100 and
CHAMBERS_REAPER_INTERVAL_S=0.2, a scripted `tests.support.fake_upstream.FakeUpstream` in a thread here):
the time to the first `message.part.updated` of a turn on an IDLE session (idleTimeoutMs=500, 1 MiB
workspace filled by a `shell` tool call, waited for until `session.status` idle arrives on its stream)
and on an ACTIVE one (same workspace, sandbox still running), alternately.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import httpx
from tests.support.fake_upstream import FakeUpstream, Reply, Text, ToolCall
from tests.support.server import ServerProcess

from bench.common import CpuMeter, server_env, summarize, wait_until_warm
from chambers.core.ids import new_id
from chambers.sandbox import LocalSnapshotStore, SandboxLimits, SessionSandbox, bwrap_problem
from chambers.sandbox.filesystems import ext4_journal
from chambers.sandbox.host import SessionSandboxes
from chambers.sandbox.session import BackendName
from chambers.sandbox.tools import run_tool

now = time.perf_counter
MB = 1_000_000
TRUE = {"command": "true"}
TURN_BODY = {"parts": [{"type": "text", "text": "Benchmark turn: please answer."}]}
# 1 MiB in 64 files of 16 KiB of random bytes, written by the sandbox's own shell.
FILL_COMMAND = (
    "mkdir -p data && for i in $(seq 1 64); do head -c 16384 /dev/urandom > data/f$i.bin; done && du -sb data"
)
FILL_LABEL = "1 MiB in 64 files, written by a shell tool call"


T0 = now()


def log(message: str) -> None:
    """Progress on stderr (stdout carries the JSON result), with the seconds since this process began."""
    print(f"  [{now() - T0:5.1f} s] {message}", file=sys.stderr, flush=True)


def filesystem(path: Path) -> str:
    """The type of the filesystem holding `path` (from /proc/self/mounts), e.g. 'ext4' or 'tmpfs'.

    An ext4 without a journal says so: it allocates inodes differently (see `snapshots`).
    """
    best, kind = "", "unknown"
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return kind
    target = str(path.resolve())
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1]
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    if kind == "ext4" and ext4_journal(path) is False:
        return "ext4 without a journal"
    return kind


# --- workspaces -------------------------------------------------------------------------------------------


def fill(root: Path, total: int, layout: str) -> int:
    """Write `total` bytes under `root`: source-like text (slices of a 1 MiB corpus of random words)
    with one block in five random bytes.

    `many`: files of 4-64 KiB, 50 per directory; `one`: a single file. Returns the number of files.
    """
    rng = random.Random(7)
    words = [
        bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(2, 9)))
        for _ in range(3000)
    ]
    corpus = b" ".join(rng.choices(words, k=(1 << 20) // 5))
    corpus += corpus[: 1 << 20]  # any slice of up to 1 MiB fits

    def block(index: int, size: int) -> bytes:
        if index % 5 == 0:
            return rng.randbytes(size)
        offset = rng.randrange(len(corpus) - size)
        return corpus[offset : offset + size]

    root.mkdir(parents=True, exist_ok=True)
    if layout == "one":
        with open(root / "big.bin", "wb") as out:
            written = index = 0
            while written < total:
                size = min(1 << 20, total - written)
                out.write(block(index, size))
                written += size
                index += 1
        return 1
    written = index = 0
    while written < total:
        directory = root / f"pkg{index // 50}"
        directory.mkdir(exist_ok=True)
        size = min(rng.randint(4096, 65536), total - written)
        (directory / f"file{index}.txt").write_bytes(block(index, size))
        written += size
        index += 1
    return index


# --- in-process measurements ------------------------------------------------------------------------------


def _meter() -> CpuMeter:
    """This process with its children (the sandboxes, tar): everything else counts as `others`."""
    return CpuMeter({"bench": os.getpid()}, trees=frozenset({"bench"}))


async def starts(base: Path, backend: BackendName, count: int) -> dict[str, Any]:
    """New sandbox (fresh workspace) until its first `shell("true")` returned; closing is not timed."""
    samples = []
    meter = _meter()
    meter.start()
    for n in range(count):
        box = SessionSandbox(base / "ws" / f"s{n}", base / "state" / f"s{n}.json", backend, SandboxLimits())
        start = now()
        outcome = await run_tool(box, "shell", TRUE)
        samples.append(now() - start)
        await box.close()
        if not outcome.ok:
            raise RuntimeError(f"shell('true') failed in a new sandbox: {outcome.output[:500]}")
    cpu = meter.stop()
    return {"ms": summarize(samples, 1000), "cpu": cpu}


async def round_trips(base: Path, backend: BackendName, count: int, warmup: int = 20) -> dict[str, Any]:
    """`shell` running `true` on a running sandbox, one call after the other."""
    async with SessionSandbox(base / "ws" / "rt", base / "state" / "rt.json", backend) as box:
        for _ in range(warmup):
            await run_tool(box, "shell", TRUE)
        samples = []
        meter = _meter()
        meter.start()
        for _ in range(count):
            start = now()
            outcome = await run_tool(box, "shell", TRUE)
            samples.append(now() - start)
            if not outcome.ok:
                raise RuntimeError(f"shell('true') failed: {outcome.output[:500]}")
        cpu = meter.stop()
    return {"ms": summarize(samples, 1000), "cpu": cpu}


async def snapshots(base: Path, backend: BackendName, size: int, layout: str, reps: int) -> dict[str, Any]:
    """Snapshot (idle) and restore (wake) through `SessionSandboxes`, as the server does them; also
    `discard` (removing a workspace, which idling does after the snapshot while it holds the session).

    Restores are timed twice. First `reps` snapshot-and-restore pairs keep every restored workspace,
    so no restore comes right after this case removed files. Then each of those is discarded and its
    image restored again at once: `restore_after_discard_ms`. The two differ on an ext4 without a
    journal, which will not reuse an inode freed in the last 60 s (300 s while its inode table block
    is dirty) and so skips every such inode of the block group for each new file: creating thousands
    of files right after removing thousands costs time in proportion to both. Journaled ext4 and
    other filesystems do not do this.

    An untimed `sync` comes before each snapshot and each restore (no dirty pages of the step before
    are being written back meanwhile); files and archive stay in the page cache, as they are for a
    workspace written shortly before it idles and restored while its archive is still cached.
    """
    store = LocalSnapshotStore(base / "images")
    host = SessionSandboxes(base / "sandboxes", store, backend, SandboxLimits())
    source = new_id("chat")
    files = await asyncio.to_thread(fill, host.workspace(source), size, layout)

    async def restored(image: str) -> tuple[str, float]:
        target = new_id("chat")
        await asyncio.to_thread(os.sync)  # a session sleeps a while: the archive is written back by then
        start = now()
        await host.restore(target, image)
        took = now() - start
        written = await asyncio.to_thread(fill_size, host.workspace(target))
        if written != size:
            raise RuntimeError(f"restored {written} bytes of {size}")
        return target, took

    saves, restores, after_discard, discards, archive = [], [], [], [], 0
    kept: list[tuple[str, str]] = []
    meter = _meter()
    meter.start()
    for _ in range(reps):
        await asyncio.to_thread(os.sync)
        start = now()
        image = await host.snapshot(source, stop=True)
        saves.append(now() - start)
        assert image is not None
        archive = sum(f.stat().st_size for f in (store.root / image).iterdir())
        target, took = await restored(image)
        restores.append(took)
        kept.append((target, image))
    for target, image in kept:
        start = now()
        await host.discard(target)
        discards.append(now() - start)
        again, took = await restored(image)
        after_discard.append(took)
        await host.discard(again)
        await store.delete(image)
    cpu = meter.stop()
    await host.discard(source)
    save = summarize(saves, 1000)
    return {
        "bytes": size,
        "layout": layout,
        "files": files,
        "codec": "none",
        "archive_bytes": archive,
        "save_ms": save,
        "save_ms_per_100mb": save["p50"] * 100 * MB / size,
        "restore_ms": summarize(restores, 1000),
        "restore_after_discard_ms": summarize(after_discard, 1000),
        "discard_ms": summarize(discards, 1000),
        "cpu": cpu,
    }


def fill_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


# --- through the server -----------------------------------------------------------------------------------


async def sse(resp: httpx.Response) -> AsyncIterator[tuple[float, str, dict[str, Any], int]]:
    """(arrival time, event name, data, sequence number or -1) of each server-sent event, as it is read."""
    buf = b""
    async for chunk in resp.aiter_raw():
        at = now()
        *events, buf = (buf + chunk).replace(b"\r\n", b"\n").split(b"\n\n")
        for raw in events:
            name, data, seq = "", b"", -1
            for line in raw.split(b"\n"):
                if line.startswith(b"event:"):
                    name = line[6:].strip().decode()
                elif line.startswith(b"data:"):
                    data += line[5:].strip()
                elif line.startswith(b"id:") and line[3:].strip().isdigit():
                    seq = int(line[3:].strip())
            if name:
                yield at, name, json.loads(data) if data else {}, seq


async def timed_turn(client: httpx.AsyncClient, chat_id: str) -> dict[str, Any]:
    """One streamed turn: ms to headers, to the first `message.part.updated`, and each `turn.status`."""
    start = now()
    out: dict[str, Any] = {"statuses": []}
    async with client.stream("POST", f"/agent/v1/chat/{chat_id}/respond", json=TURN_BODY) as resp:
        out["headers_ms"] = (now() - start) * 1000
        if resp.status_code != 200:
            await resp.aread()
            raise RuntimeError(f"POST /respond: HTTP {resp.status_code} {resp.text[:300]}")
        async for at, name, data, seq in sse(resp):
            ms = (at - start) * 1000
            if name == "turn.status":
                out["statuses"].append([data.get("status"), round(ms, 3)])
            elif name == "message.part.updated":
                out.setdefault("ttft_ms", ms)
                if data.get("type") == "tool":
                    out["tool"] = data.get("part")
            elif name == "turn.completed":
                out["status"] = data.get("status")
                out["turn_ms"] = ms
                out["seq"] = seq
                break
    statuses = out["statuses"]
    out["restored"] = any(s == "restoring" for s, _ in statuses)
    for (status, at), (_, after) in itertools.pairwise(statuses):
        if status == "restoring":
            out["restore_span_ms"] = after - at
    if out.get("status") != "completed" or "ttft_ms" not in out:
        raise RuntimeError(f"turn on {chat_id} did not complete: {out}")
    return out


class IdleWatch:
    """Follows a session's stream for `session.status` idle events."""

    def __init__(self) -> None:
        self.idle_seq = -1  # sequence number of the last idle event seen
        self.connected = asyncio.Event()
        self._changed = asyncio.Event()

    async def run(self, client: httpx.AsyncClient, chat_id: str) -> None:
        async with client.stream("GET", f"/agent/v1/chat/{chat_id}/stream") as resp:
            self.connected.set()
            async for _at, name, data, seq in sse(resp):
                if name == "session.status" and data.get("status") == "idle":
                    self.idle_seq = seq
                    self._changed.set()

    def start(self, client: httpx.AsyncClient, chat_id: str) -> asyncio.Task[None]:
        self.task = asyncio.create_task(self.run(client, chat_id))
        return self.task

    async def wait_idle(self, after: int, timeout: float = 60.0) -> None:
        """Until an idle event numbered above `after` (e.g. the last event of a turn) arrived."""
        deadline = time.monotonic() + timeout
        while self.idle_seq <= after:
            self._changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the session did not go idle")
            changed = asyncio.ensure_future(self._changed.wait())
            await asyncio.wait([changed, self.task], timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            changed.cancel()
            if self.task.done():
                raise RuntimeError(f"the session stream ended: {self.task.exception()!r}")


async def _fill_session(client: httpx.AsyncClient, up: FakeUpstream, chat_id: str) -> tuple[int, int]:
    """Fill the workspace by a `shell` tool call; returns (bytes written, last event of the turn)."""
    up.script(Reply([ToolCall("shell", {"command": FILL_COMMAND})]), Reply([Text("filled", chunks=1)]))
    turn = await timed_turn(client, chat_id)
    tool = turn.get("tool") or {}
    output = str(tool.get("output"))
    if tool.get("status") != "completed" or "[exit code: 0]" not in output or not output.split()[0].isdigit():
        raise RuntimeError(f"filling the workspace failed: {tool}")
    return int(output.split()[0]), int(turn["seq"])


async def resumes(backend: BackendName, count: int, warmup: int = 1) -> dict[str, Any]:
    """TTFT of a turn on an idle session vs an active one, through a real server."""
    data_dir = Path(tempfile.mkdtemp(prefix="chambers-bench-sandbox-"))
    async with FakeUpstream() as up:
        env = {
            **server_env(up.url),
            "CHAMBERS_IDLE_TIMEOUT_MIN_MS": "100",
            "CHAMBERS_REAPER_INTERVAL_S": "0.2",
            "CHAMBERS_SANDBOX_BACKEND": backend,
        }
        server = ServerProcess(data_dir, env=env)
        try:
            started = now()
            await asyncio.to_thread(server.start, 120)
            await asyncio.to_thread(wait_until_warm, server.url)
            log(f"server ready in {now() - started:.1f} s at {server.url}")
            assert server.proc is not None and server.admin_key is not None
            return await _resumes(server, up, count, warmup, data_dir)
        finally:
            await asyncio.to_thread(server.stop)
            shutil.rmtree(data_dir, ignore_errors=True)


async def _resumes(
    server: ServerProcess, up: FakeUpstream, count: int, warmup: int, data_dir: Path
) -> dict[str, Any]:
    assert server.proc is not None
    headers = {"Authorization": f"Bearer {server.admin_key}"}
    timeout = httpx.Timeout(120.0, connect=30.0)
    async with (
        httpx.AsyncClient(base_url=server.url, headers=headers, timeout=timeout) as client,
        httpx.AsyncClient(base_url=server.url, headers=headers, timeout=httpx.Timeout(None)) as feed,
    ):
        created = []
        for body in ({"model": "openai/gpt-4o", "idleTimeoutMs": 500}, {"model": "openai/gpt-4o"}):
            resp = await client.post("/agent/v1/chat", json=body)
            resp.raise_for_status()
            created.append(resp.json()["id"])
        idle_chat, active_chat = created
        watch = IdleWatch()
        watcher = watch.start(feed, idle_chat)
        try:
            await asyncio.wait_for(watch.connected.wait(), 30)
            filled = {chat: await _fill_session(client, up, chat) for chat in (idle_chat, active_chat)}
            await watch.wait_idle(filled[idle_chat][1])
            meter = CpuMeter({"server": server.proc.pid, "bench": os.getpid()}, trees=frozenset({"server"}))
            samples: list[dict[str, Any]] = []
            for i in range(warmup + count):
                if i == warmup:
                    meter.start()
                await asyncio.sleep(0.2)  # the idling's own work (archive, database, discard) is over
                active = await timed_turn(client, active_chat)
                idle = await timed_turn(client, idle_chat)
                if i >= warmup:
                    samples.append({"active": active, "idle": idle})
                await watch.wait_idle(idle["seq"])
            cpu = meter.stop()
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
    sessions = {
        kind: [s[kind] for s in samples if s[kind]["restored"] == (kind == "idle")]
        for kind in ("idle", "active")
    }
    out: dict[str, Any] = {
        "workspace": FILL_LABEL,
        "workspace_bytes": {"idle": filled[idle_chat][0], "active": filled[active_chat][0]},
        "idle_timeout_ms": 500,
        "samples": samples,
        "misclassified": sum(
            1 for s in samples for k in ("idle", "active") if s[k]["restored"] != (k == "idle")
        ),
        "cpu": cpu,
        "server_filesystem": filesystem(data_dir),
    }
    for kind, turns in sessions.items():
        out[kind] = {
            "ttft_ms": summarize(t["ttft_ms"] for t in turns),
            "headers_ms": summarize(t["headers_ms"] for t in turns),
            "turn_ms": summarize(t["turn_ms"] for t in turns),
        }
    out["idle"]["restore_span_ms"] = summarize(
        t["restore_span_ms"] for t in sessions["idle"] if "restore_span_ms" in t
    )
    pairs = [s for s in samples if s["idle"]["restored"] and not s["active"]["restored"]]
    out["added_ttft_ms"] = summarize(s["idle"]["ttft_ms"] - s["active"]["ttft_ms"] for s in pairs)
    return out


# --- the scenario -----------------------------------------------------------------------------------------


async def run(cfg: dict[str, Any]) -> dict[str, Any]:
    name = cfg.get("backend") or os.environ.get("CHAMBERS_SANDBOX_BACKEND") or "bwrap"
    if name not in ("bwrap", "process"):
        raise ValueError(f"unknown sandbox backend {name!r}")
    backend = cast(BackendName, name)
    problem = bwrap_problem() if backend == "bwrap" else None
    if problem:
        raise RuntimeError(f"the bwrap sandbox cannot start here: {problem}")
    base = Path(tempfile.mkdtemp(prefix="chambers-bench-sandbox-"))
    out: dict[str, Any] = {"backend": backend, "filesystem": filesystem(base)}
    try:
        out["start"] = await starts(base, backend, int(cfg["starts"]))
        log(f"sandbox start to first command: p50 {out['start']['ms']['p50']:.1f} ms")
        out["round_trip"] = await round_trips(base, backend, int(cfg["round_trips"]))
        log(f"shell('true') round trip: p50 {out['round_trip']['ms']['p50']:.2f} ms")
        out["snapshots"] = []
        for megabytes, reps in cfg["snapshot_reps"].items():
            for layout in ("many", "one"):
                case = await snapshots(base, backend, int(megabytes) * MB, layout, int(reps))
                out["snapshots"].append(case)
                save, restore = case["save_ms"]["p50"], case["restore_ms"]["p50"]
                log(
                    f"snapshot {megabytes} MB ({case['files']} files): "
                    f"save p50 {save:.1f} ms, restore p50 {restore:.1f} ms"
                )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    out["resume"] = await resumes(backend, int(cfg["resumes"]))
    added = out["resume"]["added_ttft_ms"]
    log(f"idle vs active TTFT: added p50 {added.get('p50', float('nan')):.1f} ms (n={added['n']})")
    return out


def main() -> None:
    """Run with the JSON config in argv[1]; print the results as JSON on stdout."""
    cfg = json.loads(sys.argv[1])
    result = asyncio.run(run(cfg))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
