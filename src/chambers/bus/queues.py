"""Taking a subscriber's next event from its queue, or a heartbeat when none comes in time."""

from __future__ import annotations

import asyncio
from typing import Any, Final

HEARTBEAT: Final = object()
"""What `take` returns when `heartbeat_s` passed with nothing in the queue."""


async def take(queue: asyncio.Queue[Any], heartbeat_s: float | None) -> Any:
    """The queue's next item, or HEARTBEAT after `heartbeat_s` (None: wait for ever).

    A streaming turn fills the queue faster than it is read, so the item is usually there already:
    taken at once, with no timer and no task (`asyncio.wait_for` makes both for every call).
    """
    try:
        return queue.get_nowait()
    except asyncio.QueueEmpty:
        pass
    try:
        async with asyncio.timeout(heartbeat_s):
            return await queue.get()
    except TimeoutError:
        return HEARTBEAT
