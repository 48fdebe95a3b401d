"""Reaper: the periodic duties of a serving process (expire unanswered questions, snapshot idle sessions)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from chambers.core.clock import utcnow
from chambers.core.turns import TurnRunner

log = logging.getLogger("chambers.reaper")

Duty = Callable[[], Awaitable[object]]


class Reaper:
    """Runs its duties every `interval_s`; a failing duty is logged and retried on the next tick."""

    def __init__(self, interval_s: float, duties: list[tuple[str, Duty]]) -> None:
        self.interval_s = interval_s
        self.duties = duties
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    @classmethod
    def for_runner(
        cls, interval_s: float, runner: TurnRunner, extra: list[tuple[str, Duty]] | None = None
    ) -> Reaper:
        async def expire_questions() -> int:
            return await runner.expire_questions(utcnow())

        return cls(interval_s, [("questions", expire_questions), *(extra or [])])

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="reaper")

    def poke(self) -> None:
        """Run the duties now instead of at the next tick."""
        self._wake.set()

    async def tick(self) -> None:
        for name, duty in self.duties:
            try:
                await duty()
            except Exception:
                log.exception("reaper duty %s failed", name)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            self._wake.clear()
            await self.tick()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
