"""Loaded by `bench.loop_callbacks` into the server it starts (through PYTHONPATH), nowhere else.

With CHAMBERS_BENCH_LOOP_CALLBACKS set to a file path, `chambers serve` runs on asyncio's own event loop
(uvloop's callbacks cannot be timed from Python) and times every callback the loop runs. Those of at
least CHAMBERS_BENCH_LOOP_MS milliseconds are named by their task and where its coroutine stood before
and after the step. On SIGTERM the counts go to the file as JSON, then the process exits.
"""

from __future__ import annotations

import os

_OUT = os.environ.get("CHAMBERS_BENCH_LOOP_CALLBACKS")


def _serving() -> bool:
    try:
        with open("/proc/self/cmdline", "rb") as cmdline:
            return b"chambers\x00serve" in cmdline.read()
    except OSError:
        return False


if _OUT and _serving():
    import asyncio
    import asyncio.events
    import collections
    import gc
    import json
    import signal
    import time
    from typing import Any

    import uvicorn

    _threshold_s = float(os.environ.get("CHAMBERS_BENCH_LOOP_MS", "1")) / 1000
    _durations: list[float] = []
    _long: collections.Counter[str] = collections.Counter()
    _long_ms: dict[str, float] = collections.defaultdict(float)
    _path: str = _OUT
    _gc_ms: dict[int, list[float]] = collections.defaultdict(list)
    _gc_started = 0.0
    _gc_kinds: list[dict[str, Any]] = []
    _gc_found: collections.Counter[int] = collections.Counter()

    def _on_gc(phase: str, info: dict[str, int]) -> None:
        global _gc_started
        if phase == "start":
            _gc_started = time.perf_counter()
        else:
            _gc_ms[info["generation"]].append((time.perf_counter() - _gc_started) * 1000)
            _gc_found[info["generation"]] += info["collected"]
            if info["generation"] == 2:  # what a full collection walks
                kinds = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
                _gc_kinds.append(
                    {
                        "ms": _gc_ms[2][-1],
                        "objects": sum(kinds.values()),
                        "frozen": gc.get_freeze_count(),
                        "top": kinds.most_common(12),
                    }
                )

    gc.callbacks.append(_on_gc)
    _serve = uvicorn.run

    def _on_asyncio(app: Any, **options: Any) -> None:
        _serve(app, **{**options, "loop": "asyncio"})

    uvicorn.run = _on_asyncio  # type: ignore[assignment]

    def _where(task: asyncio.Task[Any]) -> str:
        """The coroutines `task` runs, outermost first, with their current lines."""
        names: list[str] = []
        coro: Any = task.get_coro()
        while coro is not None and len(names) < 16:
            code = getattr(coro, "cr_code", None) or getattr(coro, "ag_code", None)
            if code is None:
                names.append(type(coro).__name__)
                break
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
            names.append(f"{code.co_qualname}:{frame.f_lineno if frame is not None else 'end'}")
            coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
        # The task's own coroutine, then the innermost two: what it does, and where it waits.
        return " > ".join(names if len(names) <= 3 else [names[0], "…", *names[-2:]])

    _run = asyncio.events.Handle._run

    def _timed(self: asyncio.events.Handle) -> None:
        callback = self._callback  # type: ignore[attr-defined]
        task = getattr(callback, "__self__", None)  # a task's step, in C or in Python
        before = _where(task) if isinstance(task, asyncio.Task) else ""
        started = time.perf_counter()
        _run(self)
        took = time.perf_counter() - started
        _durations.append(took)
        if took >= _threshold_s:
            if isinstance(task, asyncio.Task):
                key = f"{task.get_name()}: {before} ==> {_where(task)}"
            else:
                key = f"callback {getattr(callback, '__qualname__', type(callback).__name__)}"
            _long[key] += 1
            _long_ms[key] += took * 1000

    asyncio.events.Handle._run = _timed  # type: ignore[method-assign]

    def _dump(*_: Any) -> None:
        with open(_path, "w") as out:
            json.dump(
                {
                    "durations_ms": [d * 1000 for d in _durations],
                    "long": _long,
                    "long_ms": _long_ms,
                    "gc_ms": _gc_ms,
                    "gc_kinds": _gc_kinds,
                    "gc_found": _gc_found,
                },
                out,
            )
        os._exit(0)

    # uvicorn restores this handler after its graceful shutdown and raises SIGTERM again.
    signal.signal(signal.SIGTERM, _dump)
