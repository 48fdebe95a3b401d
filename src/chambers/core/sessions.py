"""SessionService: create, read, list and end chat sessions."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from chambers.core import events as ev
from chambers.core import notices
from chambers.core.clock import utcnow
from chambers.core.errors import InvalidRequest, NotFound
from chambers.core.gate import OpenGate, TurnGate
from chambers.core.ids import new_id
from chambers.core.lifecycle import runtime_until
from chambers.core.models import ChatSession, Message, Page, Principal, Turn
from chambers.core.ports import EventBus, SandboxHost, Store
from chambers.core.turns import TurnRunner

log = logging.getLogger("chambers.sessions")


@dataclass(frozen=True, slots=True)
class SessionRules:
    default_model: str
    idle_timeout_default_ms: int
    idle_timeout_min_ms: int
    idle_timeout_max_ms: int
    runtime_hourly_rate_usd: float


class SessionService:
    def __init__(
        self,
        store: Store,
        bus: EventBus,
        runner: TurnRunner,
        rules: SessionRules,
        sandbox: SandboxHost | None = None,
        gate: TurnGate | None = None,
        eager_sandbox: bool = False,
    ) -> None:
        self.store = store
        self.gate: TurnGate = gate or OpenGate()
        self.eager_sandbox = eager_sandbox
        self._tasks: set[asyncio.Task[None]] = set()
        self.bus = bus
        self.runner = runner
        self.rules = rules
        self.sandbox = sandbox

    async def create(
        self,
        principal: Principal,
        *,
        title: str | None = None,
        model: str | None = None,
        idle_timeout_ms: int | None = None,
        agent_id: str | None = None,
        session_id: str | None = None,  # runs: a hidden session's `run_…` id (core/runs.py)
    ) -> ChatSession:
        """A new active session. Validates the model string's shape and the idle-timeout bounds."""
        model = model or self.rules.default_model
        provider, sep, name = model.partition("/")
        if not sep or not provider or not name or any(c.isspace() for c in model):
            raise InvalidRequest("model: must look like 'provider/model', e.g. 'anthropic/claude-sonnet-4.6'")
        timeout = self.rules.idle_timeout_default_ms if idle_timeout_ms is None else idle_timeout_ms
        low, high = self.rules.idle_timeout_min_ms, self.rules.idle_timeout_max_ms
        if not low <= timeout <= high:
            raise InvalidRequest(f"idleTimeoutMs: must be between {low} and {high}")
        if agent_id is None:
            agent_id = await self.gate.default_agent(principal.org_id)
        now = utcnow()
        session = ChatSession(
            id=session_id or new_id("chat"),
            org_id=principal.org_id,
            title=title,
            model=model,
            idle_timeout_ms=timeout,
            status="active",
            created_at=now,
            updated_at=now,
            last_activity_at=now,
            created_by=principal.subject_id,
            agent_id=agent_id,
        )
        await self.store.create_session(session, [notices.session_created(session)])
        if self.eager_sandbox and self.sandbox is not None:
            self._background(self.sandbox.start(session.id, "", False))
        return session

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def get(self, principal: Principal, session_id: str) -> ChatSession:
        """The caller's organisation's session, or NotFound (never Forbidden: ids don't leak)."""
        session = await self.store.get_session(session_id, principal.org_id)
        if session is None or not principal.sees(session.created_by):
            raise NotFound("Chat session not found")
        return session

    async def page(
        self, principal: Principal, *, status: str | None, cursor: str | None, limit: int
    ) -> Page[ChatSession]:
        mine = None if principal.sees(None) else principal.subject_id
        return await self.store.list_sessions(
            principal.org_id, status=status, cursor=cursor, limit=limit, created_by=mine
        )

    async def messages(self, principal: Principal, session_id: str) -> list[Message]:
        await self.get(principal, session_id)
        return await self.store.list_messages(session_id)

    async def turn(self, principal: Principal, session_id: str, turn_id: str) -> Turn:
        await self.get(principal, session_id)
        turn = await self.store.get_turn(turn_id)
        if turn is None or turn.session_id != session_id:
            raise NotFound("Turn not found")
        return turn

    async def end(self, principal: Principal, session_id: str) -> dict[str, Any]:
        """Cancel any running turn, take a final snapshot, stop the sandbox, bill runtime, mark ended."""
        session = await self.get(principal, session_id)
        if session.status != "ended":
            if session.active_turn_id is not None:  # running here, or parked on a question
                await self.runner.cancel(principal, session_id)
            image_id = session.snapshot_image_id
            sandbox = self.sandbox
            owner = self.runner.placement(session)
            if owner != self.runner.replica and self.runner.channel is not None:
                # Its sandbox runs on another replica: that one stops it; the last checkpoint stands.
                await self.runner.channel.send(owner, {"kind": "release", "session": session_id})
            elif sandbox is not None and (sandbox.is_alive(session_id) or sandbox.has_workspace(session_id)):
                image_id = await sandbox.snapshot(session_id, stop=True) or image_id
            session = await self.get(principal, session_id)
            now = utcnow()
            runtime_ms = runtime_until(session, now)
            ended = notices.session_ended(session, image_id, runtime_ms, self.runtime_cost(runtime_ms))
            changed = await self.store.transition_session(
                session_id,
                ("active", "idle"),
                [ended],
                status="ended",
                ended_at=now,
                updated_at=now,
                snapshot_image_id=image_id,
                runtime_ms=runtime_ms,
                sandbox_started_at=None,
                active_turn_id=None,
                owner=None,
                owner_until=None,
            )
            if changed and sandbox is not None:
                await sandbox.discard(session_id)
            if changed:
                await self.bus.seed(session_id, session.event_seq)
                await self.bus.publish(
                    session_id, ev.SESSION_STATUS, {"chatId": session_id, "status": "ended"}
                )
            session = await self.get(principal, session_id)
        return {
            "id": session.id,
            "status": "ended",
            "snapshotImageId": session.snapshot_image_id,
            "runtimeMs": session.runtime_ms,
            "cost": self.runtime_cost(session.runtime_ms),
        }

    def runtime_cost(self, runtime_ms: int) -> float:
        """Runtime cost in USD at the configured hourly rate."""
        return round(runtime_ms / 3_600_000 * self.rules.runtime_hourly_rate_usd, 8)
