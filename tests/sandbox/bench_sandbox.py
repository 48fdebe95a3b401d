"""Sandbox timings (not a test): `.venv/bin/python -m tests.sandbox.bench_sandbox [bwrap|process]`.

Prints p50/p90 of: sandbox start to first command, `shell("true")`, `backend.run(["true"])`, and
snapshot save/restore of 1 MB and 100 MB workspaces with each codec.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal, cast

from chambers.sandbox import BackendName, LocalSnapshotStore, SandboxLimits, SessionSandbox

Codec = Literal["zstd", "none"]


def _report(label: str, samples: list[float]) -> None:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    p50 = statistics.median(ordered)
    print(f"{label:<44} p50 {p50 * 1000:8.2f} ms   p90 {p90 * 1000:8.2f} ms  (n={len(ordered)})")


async def _timed(action: Callable[[], Awaitable[object]], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        await action()
        samples.append(time.perf_counter() - start)
    return samples


def _fill(root: Path, total: int) -> None:
    """Source-like text (compressible) plus some random bytes, in files of 4-64 KiB."""
    rng = random.Random(7)
    words = [
        bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(2, 9)))
        for _ in range(3000)
    ]
    written = 0
    index = 0
    while written < total:
        directory = root / f"pkg{index // 50}"
        directory.mkdir(parents=True, exist_ok=True)
        size = min(rng.randint(4096, 65536), total - written)
        if index % 5 == 0:
            data = os.urandom(size)
        else:
            data = b" ".join(rng.choice(words) for _ in range(size // 5))[:size]
        (directory / f"file{index}.txt").write_bytes(data)
        written += len(data)
        index += 1


async def _snapshots(base: Path, workspace: Path, label: str, codec: Codec, runs: int) -> None:
    store = LocalSnapshotStore(base / "images", codec=codec)
    ids: list[str] = []
    saves, restores = [], []
    for _ in range(runs):
        start = time.perf_counter()
        ids.append(await store.save(workspace, {}))
        saves.append(time.perf_counter() - start)
        start = time.perf_counter()
        await store.restore(ids[-1], base / "restored")
        restores.append(time.perf_counter() - start)
    _report(f"snapshot save {label} ({codec})", saves)
    _report(f"snapshot restore {label} ({codec})", restores)
    archive = next((base / "images" / ids[-1]).glob("workspace.tar*"))
    print(f"{'':<44} archive {archive.stat().st_size / 1e6:.1f} MB")
    for image_id in ids:
        await store.delete(image_id)


async def main(backend: str) -> None:
    name = cast(BackendName, backend)
    base = Path(tempfile.mkdtemp(prefix="chambers-bench-"))
    try:
        starts = []
        for n in range(15):
            box = SessionSandbox(base / "ws" / f"s{n}", base / "state" / f"s{n}.json", name, SandboxLimits())
            start = time.perf_counter()
            result = await box.shell("true")
            starts.append(time.perf_counter() - start)
            assert result.ok, result
            await box.close()
        _report(f"{backend}: new sandbox to first shell('true')", starts)
        async with SessionSandbox(base / "ws" / "main", base / "state" / "main.json", name) as box:
            await box.shell("true")
            _report(f"{backend}: shell('true') round trip", await _timed(lambda: box.shell("true"), 200))
            _report(f"{backend}: backend.run(['true'])", await _timed(lambda: box.backend.run(["true"]), 200))
            _report(f"{backend}: write_file (small)", await _timed(lambda: box.write_file("a.txt", "x"), 100))
            _report(f"{backend}: read_file (small)", await _timed(lambda: box.read_file("a.txt"), 100))
        for size, label in ((1_000_000, "1 MB"), (100_000_000, "100 MB")):
            workspace = base / f"snap-{label.replace(' ', '')}"
            _fill(workspace, size)
            for codec in ("zstd", "none"):
                if codec != "zstd" or shutil.which("zstd"):
                    await _snapshots(base, workspace, label, codec, 5 if size < 10_000_000 else 3)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "bwrap"))
