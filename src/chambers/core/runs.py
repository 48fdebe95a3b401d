"""Runs: fire-and-forget agent jobs on the same machinery as chat.

A run owns a hidden chat session (fresh context, its own sandbox; its id starts with `run_`, so chat
listings leave it out) and runs exactly one turn on it through the TurnRunner, so policies, grants,
usage, events and questions behave as in chat. At the end the session is ended (final snapshot, sandbox
torn down) and the run records the result.

Runs wait in a queue kept in the store. A bounded `RunWorkerPool` per process claims the oldest queued
run with a conditional update, so several processes never take the same one. A claimed run carries its
replica's name and a lease the pool renews; a run left `running` by a stopped replica (this one, after a
restart, or another whose lease ran out) is retried once on a fresh session, then failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from chambers.core import events as ev
from chambers.core import notices
from chambers.core.clock import utcnow
from chambers.core.controller import Controller
from chambers.core.controller.gate import Facts
from chambers.core.errors import ChambersError, Conflict, InvalidRequest, NotFound
from chambers.core.ids import new_id
from chambers.core.models import Notice, Page, Principal, Turn
from chambers.core.ports import Store
from chambers.core.sessions import SessionService
from chambers.core.turns import TurnRunner, TurnTicket

log = logging.getLogger("chambers.runs")

RunState = Literal["queued", "running", "waiting_for_input", "completed", "failed", "cancelled"]
STATES: tuple[RunState, ...] = ("queued", "running", "waiting_for_input", "completed", "failed", "cancelled")
FINISHED = frozenset({"completed", "failed", "cancelled"})
MAX_ATTEMPTS = 2
"""A run interrupted by a stopped server is retried once; interrupted again, it fails."""
SESSION_PREFIX = "run"
"""Hidden sessions get `run_…` ids: the sandbox host accepts them, chat listings skip them."""


class RunFinished(Conflict):
    code = "RUN_FINISHED"


@dataclass(slots=True)
class Run:
    """A run as stored. `status` is the stored one; `state` adds `waiting_for_input` from its turn."""

    id: str
    org_id: str
    status: str
    prompt: str
    model: str
    created_at: datetime
    submitter_kind: str
    submitter_scopes: frozenset[str]
    submitted_by: str | None = None
    title: str | None = None
    metadata: dict[str, Any] | None = None
    agent_id: str | None = None
    agent_did: str | None = None
    idempotency_key: str | None = None
    attempts: int = 0
    session_id: str | None = None
    turn_id: str | None = None
    cancel_requested: bool = False
    owner: str | None = None
    lease_until: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    parts: list[dict[str, Any]] | None = None
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    snapshot_image_id: str | None = None
    runtime_ms: int = 0
    turn_status: str | None = None
    """The status of the run's current turn (read with the run, never written through it)."""
    turn_pending: dict[str, Any] | None = None

    @property
    def state(self) -> RunState:
        if self.status == "running" and self.turn_status == "waiting_for_input":
            return "waiting_for_input"
        state: RunState = self.status  # type: ignore[assignment]
        return state

    @property
    def questions(self) -> list[dict[str, Any]]:
        """The questions the run's turn waits on (empty unless waiting for input)."""
        if self.state != "waiting_for_input":
            return []
        pending = self.turn_pending or {}
        answered = pending.get("answers", {})
        return [q for q in pending.get("questions", []) if q.get("requestID") not in answered]

    @property
    def duration_ms(self) -> int | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return max(0, int((self.ended_at - self.started_at).total_seconds() * 1000))

    def principal(self) -> Principal:
        """The submitter, as the turn's gate sees it (grants and policies apply as for chat)."""
        kind: Literal["api_key", "user"] = "user" if self.submitter_kind == "user" else "api_key"
        return Principal(self.org_id, self.submitted_by or "", kind, self.submitter_scopes)


@dataclass(frozen=True, slots=True)
class RunOutcome:
    status: Literal["completed", "failed", "cancelled"]
    parts: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class RunStore(Protocol):
    """The runs' queue and records. Conditional updates make each transition happen once."""

    async def create_run(self, run: Run, notices: Sequence[Notice]) -> tuple[Run, bool]:
        """Insert `run`; with an idempotency key already used in the org, the first run and False."""
        ...

    async def find_run_by_key(self, org_id: str, key: str) -> Run | None: ...
    async def get_run(self, run_id: str, org_id: str | None = None) -> Run | None: ...
    async def list_runs(
        self, org_id: str, *, state: str | None, cursor: str | None, limit: int
    ) -> Page[Run]: ...
    async def claim_run(
        self, owner: str, now: datetime, lease_until: datetime, started: Callable[[Run], Notice]
    ) -> Run | None:
        """Take the oldest queued run (queued -> running, attempts + 1), writing `started(run)`."""
        ...

    async def update_run(self, run_id: str, **fields: Any) -> None: ...
    async def request_cancel(self, run_id: str) -> bool:
        """Flag a running run for cancellation (its worker stops its turn)."""
        ...

    async def cancel_queued(
        self, run_id: str, now: datetime, cancelled: Callable[[Run], Notice]
    ) -> Run | None:
        """queued -> cancelled, with its notice; None when the run was no longer queued."""
        ...

    async def finish_run(self, run_id: str, notices: Sequence[Notice], **fields: Any) -> bool:
        """running -> a final status, with its notices, once."""
        ...

    async def requeue_run(self, run_id: str) -> bool: ...
    async def renew_run_leases(self, owner: str, run_ids: Sequence[str], until: datetime) -> None: ...
    async def orphaned_runs(self, owner: str, now: datetime) -> list[Run]:
        """Running runs this replica left behind, and those whose lease ran out."""
        ...

    async def adopt_run(self, run_id: str, owner: str, now: datetime, lease_until: datetime) -> bool:
        """Take over an orphaned run (one replica only)."""
        ...


@dataclass(frozen=True, slots=True)
class RunRules:
    default_model: str
    replica: str = "local"
    lease_s: float = 15.0
    poll_interval_s: float = 1.0
    cancel_wait_s: float = 10.0


def check_model(model: str) -> str:
    provider, sep, name = model.partition("/")
    if not sep or not provider or not name or any(c.isspace() for c in model):
        raise InvalidRequest("model: must look like 'provider/model', e.g. 'anthropic/claude-sonnet-4.6'")
    return model


class RunService:
    """Submit, read, cancel and answer runs; execute them for the worker pool."""

    def __init__(
        self,
        store: RunStore,
        main: Store,
        runner: TurnRunner,
        sessions: SessionService,
        rules: RunRules,
        controller: Controller | None = None,
    ) -> None:
        self.store = store
        self.main = main
        self.runner = runner
        self.sessions = sessions
        self.rules = rules
        self.controller = controller
        self.wake: Callable[[], None] = lambda: None
        """Set by the worker pool: called when a run was queued in this process."""
        self._attention: dict[str, asyncio.Event] = {}
        self._executing: dict[str, asyncio.Event] = {}
        self._changed = asyncio.Condition()

    # submitting and reading

    async def submit(
        self,
        principal: Principal,
        text: str,
        *,
        model: str | None = None,
        agent_did: str | None = None,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[Run, bool]:
        """Queue a run; with a known idempotency key, the first run instead (and False)."""
        if idempotency_key is not None:
            known = await self.store.find_run_by_key(principal.org_id, idempotency_key)
            if known is not None:
                return known, False
        agent_id = None
        if self.controller is not None:
            agents = self.controller.agents
            if agent_did is not None:
                agent = await agents.usable_by_did(principal, agent_did)
                agent_id = agent.id
            else:
                agent = await agents.default_agent(principal.org_id)
            model = check_model(model or agents.model_of(agent))
            # A dry run of the gate: grants and policies refuse at once; the turn checks them again.
            await self.controller.gate.check(principal, agent, Facts(None, model), text, count=False)
        elif agent_did is not None:
            raise NotFound(f"Agent {agent_did} not found")
        run = Run(
            id=new_id("run"),
            org_id=principal.org_id,
            status="queued",
            prompt=text,
            model=check_model(model or self.rules.default_model),
            created_at=utcnow(),
            submitter_kind=principal.kind,
            submitter_scopes=principal.scopes,
            submitted_by=principal.subject_id,
            title=title,
            metadata=metadata,
            agent_id=agent_id,
            agent_did=agent_did,
            idempotency_key=idempotency_key,
        )
        stored, created = await self.store.create_run(run, [notices.run_queued(_facts(run))])
        if created:
            self.wake()
        return stored, created

    async def get(self, principal: Principal, run_id: str) -> Run:
        """The caller's organisation's run, or NotFound (ids of other organisations don't leak)."""
        run = await self.store.get_run(run_id, principal.org_id)
        if run is None:
            raise NotFound("Run not found")
        return run

    async def page(
        self, principal: Principal, *, state: str | None, cursor: str | None, limit: int
    ) -> Page[Run]:
        return await self.store.list_runs(principal.org_id, state=state, cursor=cursor, limit=limit)

    async def wait_changed(self, run: Run, timeout: float) -> Run:
        """The run again, once it changed in this process or after `timeout` (other processes)."""
        if timeout > 0:
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout)
        return await self.store.get_run(run.id) or run

    async def _announce(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # cancelling and answering

    async def cancel(self, principal: Principal, run_id: str) -> Run:
        """A queued run is cancelled and never starts; a running one has its turn stopped."""
        run = await self.get(principal, run_id)
        if run.status == "queued":
            cancelled = await self.store.cancel_queued(run.id, utcnow(), _cancelled_notice)
            if cancelled is not None:
                await self._announce()
                return cancelled
            run = await self.get(principal, run_id)  # claimed meanwhile
        if run.status in FINISHED:
            raise RunFinished(f"This run is already {run.status}")
        await self.store.request_cancel(run.id)
        attention = self._attention.get(run.id)
        if attention is not None:  # its worker is here: tell it now rather than at its next poll
            attention.set()
        executing = self._executing.get(run.id)
        if executing is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(executing.wait(), self.rules.cancel_wait_s)
        return await self.get(principal, run_id)

    async def reply(self, principal: Principal, run_id: str, request_id: str, text: str) -> dict[str, Any]:
        """Answer a question of a run waiting for input; its turn goes on."""
        run = await self.get(principal, run_id)
        if run.session_id is None:
            raise NotFound("No pending question with this requestID")
        answer = await self.runner.reply(principal, run.session_id, request_id, text)
        return {"runId": run.id, **answer}

    # execution (the worker pool calls these)

    async def claim_next(self) -> Run | None:
        now = utcnow()
        return await self.store.claim_run(self.rules.replica, now, self._lease(now), _started_notice)

    def _lease(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.rules.lease_s)

    async def renew(self, run_ids: Sequence[str]) -> None:
        if run_ids:
            now = utcnow()
            await self.store.renew_run_leases(self.rules.replica, run_ids, self._lease(now))

    async def execute(self, run: Run) -> None:
        """Run one attempt of a claimed run, or follow the turn of an adopted one, and settle it."""
        executing = self._executing.setdefault(run.id, asyncio.Event())
        self._attention.setdefault(run.id, asyncio.Event())
        try:
            if run.turn_id is None:
                await self._finish(run, await self._attempt(run))
            else:  # adopted after a restart: its turn waits for an answer (or runs elsewhere)
                await self._settle(run, await self._await_turn(run, None))
        except asyncio.CancelledError:
            raise  # the server stops: the run stays `running` and is recovered at the next start
        except Exception:
            log.exception("run %s crashed", run.id)
            with contextlib.suppress(Exception):
                await self._finish(run, RunOutcome("failed", error=_internal("the run crashed")))
        finally:
            executing.set()
            self._executing.pop(run.id, None)
            self._attention.pop(run.id, None)

    async def _attempt(self, run: Run) -> RunOutcome:
        principal = run.principal()
        if await self._cancel_requested(run.id):
            return RunOutcome("cancelled")
        floor = 0
        if run.session_id is not None:  # a retry: event ids go on above the previous attempt's
            previous = await self.main.get_session(run.session_id)
            floor = (previous.event_seq + ev.SEQ_JUMP_AFTER_CRASH) if previous is not None else 0
        try:
            session = await self.sessions.create(
                principal,
                title=run.title,
                model=run.model,
                agent_id=run.agent_id,
                session_id=new_id(SESSION_PREFIX),
            )
        except ChambersError as exc:
            return RunOutcome("failed", error={"code": exc.code, "message": exc.message})
        if floor:
            await self.main.update_session(session.id, event_seq=floor)
        run.session_id = session.id
        await self.store.update_run(run.id, session_id=session.id)
        await self._announce()
        try:
            ticket = await self.runner.submit(principal, session.id, run.prompt)
        except ChambersError as exc:  # refused by the gate (grant, policy, rate limit) and the like
            return RunOutcome("failed", error={"code": exc.code, "message": exc.message})
        run.turn_id = ticket.turn_id
        await self.store.update_run(run.id, turn_id=ticket.turn_id)
        turn = await self._await_turn(run, ticket)
        return _outcome_of(turn) if turn is not None else RunOutcome("failed", error=_internal("lost turn"))

    async def _await_turn(self, run: Run, ticket: TurnTicket | None) -> Turn | None:
        """Until the run's turn ends: woken by its ticket, a cancel here, or the poll interval."""
        assert run.turn_id is not None and run.session_id is not None
        attention = self._attention.setdefault(run.id, asyncio.Event())
        cancel_sent = False
        while True:
            turn = await self.main.get_turn(run.turn_id)
            if turn is None or turn.status in FINISHED:
                if ticket is not None and not ticket.done.done():
                    # Let the turn send its last events before the session ends (bounded wait).
                    await asyncio.wait({ticket.done}, timeout=self.rules.poll_interval_s)
                if ticket is not None and ticket.done.done() and not ticket.done.cancelled():
                    ticket.done.exception()  # the stored turn is the outcome; its failure is logged there
                return turn
            if not cancel_sent and await self._cancel_requested(run.id):
                cancel_sent = True
                await self.runner.cancel(run.principal(), run.session_id)
                continue
            waiting: set[asyncio.Future[Any]] = set()
            woken = asyncio.ensure_future(attention.wait())
            waiting.add(woken)
            if ticket is not None and not ticket.done.done():
                waiting.add(ticket.done)
            try:
                await asyncio.wait(
                    waiting, timeout=self.rules.poll_interval_s, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                woken.cancel()
            attention.clear()

    async def _cancel_requested(self, run_id: str) -> bool:
        run = await self.store.get_run(run_id)
        return run is not None and run.cancel_requested

    async def _finish(self, run: Run, outcome: RunOutcome) -> None:
        """End the hidden session (final snapshot, sandbox torn down), then record the outcome."""
        image_id, runtime_ms = await self._end_session(run)
        now = utcnow()
        fresh = await self.store.get_run(run.id) or run
        fresh.status, fresh.ended_at = outcome.status, now
        fresh.usage, fresh.error, fresh.parts = outcome.usage, outcome.error, outcome.parts
        fresh.snapshot_image_id = image_id
        finished = await self.store.finish_run(
            run.id,
            [notices.run_finished(_facts(fresh), outcome.status, outcome.usage, outcome.error)],
            status=outcome.status,
            ended_at=now,
            parts=outcome.parts,
            usage=outcome.usage,
            error=outcome.error,
            snapshot_image_id=image_id,
            runtime_ms=runtime_ms,
            owner=None,
            lease_until=None,
        )
        if finished:
            log.info("run %s %s", run.id, outcome.status)
        await self._announce()

    async def _end_session(self, run: Run) -> tuple[str | None, int]:
        if run.session_id is None:
            return None, 0
        try:
            ended = await self.sessions.end(run.principal(), run.session_id)
        except Exception:
            log.exception("could not end the session of run %s", run.id)
            return None, 0
        return ended.get("snapshotImageId"), int(ended.get("runtimeMs") or 0)

    # recovery

    async def recover(self, *, at_start: bool) -> list[Run]:
        """Runs a stopped replica left `running`: finished ones are recorded, interrupted ones retried
        once (then failed), and those whose turn waits for an answer are returned, to be followed."""
        now = utcnow()
        follow: list[Run] = []
        owner = self.rules.replica
        for run in await self.store.orphaned_runs(owner, now):
            if not at_start and run.owner == owner:
                continue  # ours and alive: a worker of this process has it
            if not await self.store.adopt_run(run.id, owner, now, self._lease(now)):
                continue
            turn = await self.main.get_turn(run.turn_id) if run.turn_id else None
            if turn is not None and turn.status in ("waiting_for_input", "running"):
                follow.append(run)  # parked on a question, or still running on another replica
            else:
                await self._settle(run, turn)
        return follow

    async def _settle(self, run: Run, turn: Turn | None) -> None:
        """An adopted run whose turn is over (or never began): record it, or retry it once."""
        if turn is not None and not _interrupted(turn, run):
            await self._finish(run, _outcome_of(turn))
        elif run.cancel_requested:
            await self._finish(run, RunOutcome("cancelled"))
        elif run.attempts < MAX_ATTEMPTS:
            await self._end_session(run)
            if await self.store.requeue_run(run.id):
                log.warning(
                    "run %s was interrupted; it is queued again for attempt %d", run.id, run.attempts + 1
                )
                self.wake()
        else:
            error = {
                "code": "INTERRUPTED",
                "message": f"The server stopped while this run was running ({run.attempts} attempts)",
            }
            await self._finish(run, RunOutcome("failed", error=error))


class RunWorkerPool:
    """At most `concurrency` runs at a time in this process, fed from the store's queue.

    Woken at once by a submit in this process; polls every `poll_interval_s` for runs queued elsewhere,
    renews the leases of its runs, and adopts runs of replicas that stopped.
    """

    def __init__(self, service: RunService, concurrency: int, poll_interval_s: float) -> None:
        self.service = service
        self.concurrency = concurrency
        self.poll_interval_s = poll_interval_s
        self._wake = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._dispatcher: asyncio.Task[None] | None = None

    @property
    def busy(self) -> int:
        return len(self._tasks)

    async def start(self) -> None:
        for run in await self.service.recover(at_start=True):
            self._spawn(run)
        self.service.wake = self.wake
        # Always running: it renews leases and adopts orphans; it claims runs only when concurrency > 0.
        self._dispatcher = asyncio.create_task(self._dispatch(), name="run dispatcher")

    def wake(self) -> None:
        self._wake.set()

    async def _dispatch(self) -> None:
        renewed = 0.0
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            try:
                if loop.time() - renewed >= self.service.rules.lease_s / 3:
                    renewed = loop.time()
                    await self.service.renew(list(self._tasks))
                    for run in await self.service.recover(at_start=False):
                        self._spawn(run)
                while len(self._tasks) < self.concurrency:
                    claimed = await self.service.claim_next()
                    if claimed is None:
                        break
                    self._spawn(claimed)
            except Exception:
                log.exception("run dispatcher failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)

    def _spawn(self, run: Run) -> None:
        if run.id in self._tasks:
            return
        task = asyncio.create_task(self.service.execute(run), name=f"run {run.id}")
        self._tasks[run.id] = task
        task.add_done_callback(lambda _t: self._done(run.id))

    def _done(self, run_id: str) -> None:
        self._tasks.pop(run_id, None)
        self._wake.set()

    async def close(self) -> None:
        """Stop claiming; running runs stay `running` in the store and are retried at the next start."""
        tasks = [t for t in [self._dispatcher, *self._tasks.values()] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()


# helpers


def _interrupted(turn: Turn, run: Run) -> bool:
    """The turn ended because its server stopped, not on its own."""
    if turn.status == "failed":
        return (turn.error or {}).get("code") == "INTERRUPTED"
    return turn.status == "cancelled" and not run.cancel_requested  # stopped by a shutdown


def _outcome_of(turn: Turn) -> RunOutcome:
    status: Literal["completed", "failed", "cancelled"] = (
        "completed" if turn.status == "completed" else "cancelled" if turn.status == "cancelled" else "failed"
    )
    response = turn.response or {}
    error = response.get("error") or turn.error
    if status == "failed" and error is None:
        error = _internal("the turn failed")
    return RunOutcome(status, list(response.get("parts") or []), response.get("usage"), error)


def _internal(message: str) -> dict[str, Any]:
    return {"code": "INTERNAL", "message": message}


def _facts(run: Run) -> notices.RunFacts:
    return notices.RunFacts(
        org_id=run.org_id,
        run_id=run.id,
        model=run.model,
        title=run.title,
        metadata=run.metadata,
        attempt=run.attempts,
        duration_ms=run.duration_ms,
        snapshot_image_id=run.snapshot_image_id,
        at=run.ended_at or run.started_at or run.created_at,
    )


def _started_notice(run: Run) -> Notice:
    return notices.run_started(_facts(run))


def _cancelled_notice(run: Run) -> Notice:
    return notices.run_finished(_facts(run), "cancelled", None, None)
