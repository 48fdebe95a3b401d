"""LoadGuard: refuses new turns while this process cannot serve them well.

Past what one event loop carries, every stream slows down together and turns start failing after long
waits (docs/benchmarks.md: at twice the capacity, writes time out after 30 s). Refusing the excess at once
with `503 OVERLOADED` and `Retry-After` keeps the running turns' streams smooth and tells clients (or a
load balancer) to come back or go to another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

from chambers.core.errors import Overloaded


class LoadGuard:
    """Three signals: the number of turns running here (a fixed cap); an event loop that has run late on
    every tick for a sustained stretch (one late tick, such as a slow start-up step or a garbage
    collection, never trips it); and a store that keeps new turns waiting to be claimed (with SQLite's
    one writer, the first thing to give under load: turns failed after 30 s waits before)."""

    def __init__(
        self,
        max_running: int = 0,
        max_lag_s: float = 1.0,
        max_store_wait_s: float = 5.0,
        tick_s: float = 0.1,
        late_ticks: int = 5,
        retry_after_s: int = 5,
    ) -> None:
        self.max_running = max_running
        self.max_lag_s = max_lag_s
        self.max_store_wait_s = max_store_wait_s
        self.tick_s = tick_s
        self.late_ticks = late_ticks
        self.retry_after_s = retry_after_s
        self.lag_s = 0.0
        """How late the loop's last tick ran, in seconds."""
        self._late_in_a_row = 0
        self._claims: dict[object, float] = {}

    @classmethod
    def never(cls) -> LoadGuard:
        """A guard that refuses nothing (and watches nothing)."""
        return cls(max_running=0, max_lag_s=0, max_store_wait_s=0)

    @property
    def lagging(self) -> bool:
        """Whether the loop has run late by more than `max_lag_s` on each of the last `late_ticks` ticks."""
        return self.max_lag_s > 0 and self._late_in_a_row >= self.late_ticks

    @property
    def store_wait_s(self) -> float:
        """How long the oldest claim of a new turn has waited for the store so far."""
        return time.monotonic() - min(self._claims.values()) if self._claims else 0.0

    @property
    def store_slow(self) -> bool:
        """Whether a new turn has waited longer than `max_store_wait_s` for the store to claim it."""
        return self.max_store_wait_s > 0 and self.store_wait_s > self.max_store_wait_s

    @contextlib.contextmanager
    def claiming(self) -> Iterator[None]:
        """Around the store's claim of a new turn."""
        token = object()
        self._claims[token] = time.monotonic()
        try:
            yield
        finally:
            del self._claims[token]

    def refusal(self, running: int) -> str | None:
        """Why a new turn should not start here now, with `running` turns running (None: it may)."""
        if self.max_running and running >= self.max_running:
            return f"This server runs {running} turns, its limit (CHAMBERS_MAX_RUNNING_TURNS). Retry later"
        if self.lagging:
            return f"Overloaded: this server's event loop runs {self.lag_s * 1000:.0f} ms late. Retry later"
        if self.store_slow:
            return f"Overloaded: new turns wait {self.store_wait_s:.1f} s for the database. Retry later"
        return None

    def check(self, running: int) -> None:
        """Raise Overloaded if a new turn should not start here, with `running` turns running now."""
        reason = self.refusal(running)
        if reason is not None:
            raise Overloaded(reason, self.retry_after_s)

    def observe(self, lag_s: float) -> None:
        """Record one tick that ran `lag_s` seconds late."""
        self.lag_s = lag_s
        self._late_in_a_row = self._late_in_a_row + 1 if lag_s > self.max_lag_s else 0

    async def watch(self) -> None:
        """Measure the loop's lag for as long as the process serves (a background task)."""
        if self.max_lag_s <= 0:
            return
        while True:
            started = time.monotonic()
            await asyncio.sleep(self.tick_s)
            self.observe(max(0.0, time.monotonic() - started - self.tick_s))
