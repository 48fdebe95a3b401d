"""SessionLifecycle: a session's sandbox over time. Started (billing begins), idle (snapshotted and
stopped, billing stops), woken by the next message (restored), ended.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from chambers.core import events as ev
from chambers.core import notices
from chambers.core.clock import utcnow
from chambers.core.models import ChatSession
from chambers.core.ports import EventBus, SandboxHost, Store

log = logging.getLogger("chambers.lifecycle")


def runtime_until(session: ChatSession, until: datetime) -> int:
    """Billable sandbox milliseconds, including the stretch running now."""
    running = 0
    if session.sandbox_started_at is not None:
        running = max(0, int((until - session.sandbox_started_at).total_seconds() * 1000))
    return session.runtime_ms + running


class SessionLifecycle:
    def __init__(
        self,
        store: Store,
        bus: EventBus,
        sandbox: SandboxHost | None,
        replica: str = "local",
        lease_s: float = 15.0,
    ) -> None:
        self.store = store
        self.bus = bus
        self.sandbox = sandbox
        self.replica = replica
        self.lease_s = lease_s
        self._locks: dict[str, asyncio.Lock] = {}

    def _owned_elsewhere(self, session: ChatSession, now: datetime) -> bool:
        live = session.owner_until is not None and session.owner_until > now
        return session.owner is not None and session.owner != self.replica and live

    def lock(self, session_id: str) -> asyncio.Lock:
        """Serialises sleeping and waking of one session in this process."""
        return self._locks.setdefault(session_id, asyncio.Lock())

    async def sandbox_started(self, session_id: str, turn_id: str) -> None:
        session = await self.store.get_session(session_id)
        if session is None:
            return
        if session.sandbox_started_at is None:
            await self.store.update_session(session_id, sandbox_started_at=utcnow())
        extra = {"backend": getattr(self.sandbox, "backend", None)}
        await self.store.record_notices(
            [notices.sandbox_event(notices.WORKER_READY, session.org_id, session_id, turn_id, extra)]
        )
        await self.bus.publish(
            session_id, ev.WORKER_READY, {"chatId": session_id, "turnId": turn_id, **extra}, turn_id
        )

    async def sandbox_reused(self, session_id: str, turn_id: str) -> None:
        session = await self.store.get_session(session_id)
        if session is None:
            return
        await self.store.record_notices(
            [notices.sandbox_event(notices.RUNTIME_REUSED, session.org_id, session_id, turn_id, {})]
        )
        await self.bus.publish(
            session_id, ev.RUNTIME_REUSED, {"chatId": session_id, "turnId": turn_id}, turn_id
        )

    async def sleep_idle(self, now: datetime, is_running: object = None) -> list[str]:
        """Snapshot and stop every session idle past its timeout; never one whose turn runs."""
        slept = []
        for session in await self.store.sleep_candidates():
            deadline = session.last_activity_at.timestamp() + session.idle_timeout_ms / 1000
            if deadline > now.timestamp():
                continue
            try:
                if await self.sleep(session.id):
                    slept.append(session.id)
            except Exception:  # one failing snapshot (a bucket out of reach) must not keep the rest awake
                log.exception("could not put session %s to sleep; trying again on the next pass", session.id)
        return slept

    async def sleep(self, session_id: str) -> bool:
        """Idle one session now. The workspace is removed only once the session is marked idle, so a
        turn that claims it meanwhile keeps its files."""
        async with self.lock(session_id):
            session = await self.store.get_session(session_id)
            if session is None or session.status != "active" or self._owned_elsewhere(session, utcnow()):
                return False
            if session.active_turn_id is not None:
                turn = await self.store.get_turn(session.active_turn_id)
                if turn is None or turn.status != "waiting_for_input":
                    return False
            image_id = session.snapshot_image_id
            if self.sandbox is not None and (
                self.sandbox.is_alive(session_id) or self.sandbox.has_workspace(session_id)
            ):
                image_id = await self.sandbox.snapshot(session_id, stop=True) or image_id
            now = utcnow()
            changed = await self.store.sleep_session(
                session_id,
                [notices.session_idle(session, image_id)],
                status="idle",
                snapshot_image_id=image_id,
                runtime_ms=runtime_until(session, now),
                sandbox_started_at=None,
                updated_at=now,
                owner=None,
                owner_until=None,
            )
            if not changed:
                return False
            if self.sandbox is not None:
                await self.sandbox.discard(session_id)
        await self.bus.seed(session_id, session.event_seq)
        await self.bus.publish(
            session_id,
            ev.SESSION_STATUS,
            {"chatId": session_id, "status": "idle", "snapshotImageId": image_id},
        )
        log.info("session %s is idle (snapshot %s)", session_id, image_id)
        return True

    async def acquire(self, session_id: str, turn_id: str) -> None:
        """Before a turn runs here: own the session's sandbox, and bring its files back if needed:
        from the snapshot of an idle session, or from the last snapshot when the previous owner is gone."""
        async with self.lock(session_id):
            now = utcnow()
            session = await self.store.get_session(session_id)
            if session is None:
                return
            _taken, previous = await self.store.take_session(
                session_id, self.replica, now + timedelta(seconds=self.lease_s), now
            )
            adopted = previous is not None and previous != self.replica
            if session.status == "idle":
                await self._restore(session, turn_id)
                await self.store.transition_session(
                    session_id,
                    ("idle",),
                    [notices.session_resumed(session, turn_id)],
                    status="active",
                    updated_at=utcnow(),
                )
                await self.bus.publish(
                    session_id, ev.SESSION_STATUS, {"chatId": session_id, "status": "active"}, turn_id
                )
            elif adopted and self.sandbox is not None and not self.sandbox.has_workspace(session_id):
                log.info("session %s moves here from %s; restoring its last snapshot", session_id, previous)
                await self._restore(session, turn_id)

    async def _restore(self, session: ChatSession, turn_id: str) -> None:
        await self.bus.publish(
            session.id, ev.TURN_STATUS, {"turnId": turn_id, "status": "restoring"}, turn_id
        )
        if self.sandbox is not None and session.snapshot_image_id:
            await self.sandbox.restore(session.id, session.snapshot_image_id)

    async def release(self, session_id: str) -> str | None:
        """Stop this replica's sandbox of a session (another replica ended it): snapshot, stop, forget."""
        async with self.lock(session_id):
            image_id = None
            if self.sandbox is not None and (
                self.sandbox.is_alive(session_id) or self.sandbox.has_workspace(session_id)
            ):
                image_id = await self.sandbox.snapshot(session_id, stop=True)
                await self.sandbox.discard(session_id)
            await self.store.release_session(session_id, self.replica)
        return image_id

    async def recover(self) -> None:
        """After a restart no sandbox runs: bill each cut-off stretch up to the session's last activity."""
        for session in await self.store.sessions_with_sandbox():
            runtime = runtime_until(
                session, max(session.last_activity_at, session.sandbox_started_at or session.last_activity_at)
            )
            await self.store.update_session(session.id, runtime_ms=runtime, sandbox_started_at=None)
