"""TurnRunner: claims a session, runs one turn of the agent loop in its own task, streams its events.

A turn runs in a task of its own, never inside a request handler, so a client that disconnects
does not cancel it. The store holds the claim; this process holds only the running task.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from chambers.core import events as ev
from chambers.core import notices
from chambers.core.clock import iso, utcnow
from chambers.core.errors import Conflict, NotFound, SessionEnded, TurnConflict, Unavailable
from chambers.core.events import Replay
from chambers.core.gate import Admission, OpenGate, TurnGate
from chambers.core.ids import new_id
from chambers.core.lifecycle import SessionLifecycle
from chambers.core.loop import (
    AgentLoop,
    LoopResult,
    LoopRun,
    TextDelta,
    TextStarted,
    ToolExecutor,
    ToolFinished,
    ToolOutcome,
    ToolStarted,
    TurnRequest,
)
from chambers.core.models import ChatSession, Message, Principal, Turn, TurnOutcome, TurnStatus, UsageEntry
from chambers.core.overload import LoadGuard
from chambers.core.ports import EventBus, ReplicaChannel, SandboxHost, Store
from chambers.core.usage import llm_entry, session_usage_event, tool_entry, turn_usage

log = logging.getLogger("chambers.turns")

NO_REPLY = "(no reply: the user did not answer in time)"


class QuestionClosed(Conflict):
    code = "QUESTION_CLOSED"


@dataclass(frozen=True, slots=True)
class TurnPolicy:
    """Knobs of the turn loop, from Settings."""

    retry_after_s: int = 2
    part_update_window_s: float = 0.015
    max_requests: int = 50
    tool_costs_micros: dict[str, int] = field(default_factory=dict)
    question_timeout_s: float = 3600.0
    cancel_grace_s: float = 5.0
    """How long a cancel waits for the run to stop before it forces the stop, and again after."""
    lease_s: float = 15.0
    checkpoint_turns: bool = False
    """Snapshot the sandbox after each tool-using turn, so another replica can take the session over."""


@dataclass(slots=True)
class TurnTicket:
    """What `submit` hands back: where the turn's events start, and how to await its response."""

    turn_id: str
    session_id: str
    message_id: str
    first_seq: int
    done: asyncio.Future[dict[str, Any]]


@dataclass(slots=True)
class _Active:
    turn: Turn
    ticket: TurnTicket
    run: LoopRun | None = None
    task: asyncio.Task[None] | None = None
    cancelled: bool = False
    finishing: bool = False
    """The run is over and the turn is recording its end: it must not be cancelled from here on."""


async def _make_way() -> None:
    """Let the event loop serve what waits, such as other streams' deltas, between the steps of a
    turn's end: in one piece they hold the loop for about 3 ms and delay every stream's next delta."""
    await asyncio.sleep(0)


class _LateLease:
    """The sandbox lease of a session with nothing to restore, taken once the model's request is out (at
    the run's first event) or when a tool needs it, whichever comes first. Taken up front, its write
    transaction would share the one event loop with the request's setup and delay the first token."""

    def __init__(self, acquire: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._acquire = acquire
        self._task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.create_task(self._acquire())
        return self._task

    async def settle(self) -> BaseException | None:
        """Wait for the lease (starting it if need be); the error that stopped it, if any."""
        task = self.start()
        await asyncio.wait([task])
        return None if task.cancelled() else task.exception()

    def before(self, execute: ToolExecutor) -> ToolExecutor:
        """`execute`, run only once the sandbox is this replica's."""

        async def run(name: str, args: dict[str, Any]) -> ToolOutcome:
            if await self.settle() is not None:
                return ToolOutcome(ok=False, output="the sandbox is not available")
            return await execute(name, args)

        return run


class TurnRunner:
    """Runs turns: one at a time per session (the store's claim), many sessions at once."""

    def __init__(
        self,
        store: Store,
        bus: EventBus,
        loop: AgentLoop,
        policy: TurnPolicy,
        sandbox: SandboxHost | None = None,
        gate: TurnGate | None = None,
        lifecycle: SessionLifecycle | None = None,
        replica: str = "local",
        channel: ReplicaChannel | None = None,
        guard: LoadGuard | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.loop = loop
        self.policy = policy
        self.sandbox = sandbox
        self.gate: TurnGate = gate or OpenGate()
        self.lifecycle = lifecycle
        self.replica = replica
        self.channel = channel  # None: a single replica, nothing is ever handed over
        self.guard = guard or LoadGuard.never()
        self._active: dict[str, _Active] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._parked: dict[str, TurnTicket] = {}
        self._admissions: dict[str, tuple[str | None, Admission]] = {}  # turn -> who started it, as let in
        self._prompts: dict[str, str] = {}  # turn -> the user's text, so a local turn need not read it back
        self._tasks: set[asyncio.Task[None]] = set()

    # submitting

    async def submit(
        self, principal: Principal, session_id: str, text: str, idempotency_key: str | None = None
    ) -> TurnTicket:
        """Store the user's message, claim the session, start the turn (or TurnConflict, SessionEnded)."""
        session = await self.store.get_session(session_id, principal.org_id)
        if session is None or not principal.sees(session.created_by):
            raise NotFound("Chat session not found")
        if idempotency_key is not None:
            replay = await self._replay(session, idempotency_key)
            if replay is not None:
                return replay
        if session.status == "ended":
            raise SessionEnded("This chat session has ended; create a new session to continue")
        owner = self.placement(session)
        if owner == self.replica:  # before anything is stored
            self.guard.check(self.running)
        admission = await self.gate.admit(principal, session, text)
        now = utcnow()
        user_message = Message(
            id=new_id("msg"),
            session_id=session.id,
            role="user",
            parts=[{"id": new_id("part"), "type": "text", "text": text}],
            created_at=now,
        )
        turn = Turn(
            id=new_id("turn"),
            session_id=session.id,
            org_id=session.org_id,
            status="running",
            user_message_id=user_message.id,
            model=session.model,
            started_at=now,
            idempotency_key=idempotency_key,
            owner=owner,
            lease_until=now + timedelta(seconds=self.policy.lease_s),
        )
        user_message.turn_id = turn.id
        try:
            with self.guard.claiming():
                await self.store.claim_turn(turn, user_message, [notices.turn_started(turn)])
        except TurnConflict as conflict:
            await self.store.record_notices([notices.turn_conflict(session, conflict.active_turn_id)])
            raise TurnConflict(conflict.active_turn_id, self.policy.retry_after_s) from None
        self._admissions[turn.id] = (principal.subject_id, admission)
        self._prompts[turn.id] = text
        try:
            if turn.owner != self.replica:
                return await self._hand_off(session, turn, {"kind": "run", "turn": turn.id})
            return await self._launch(session, turn, resume=None)
        except BaseException as exc:
            self._admissions.pop(turn.id, None)
            self._prompts.pop(turn.id, None)
            await self._give_up(turn, exc, "start")
            raise

    async def _give_up(self, turn: Turn, exc: BaseException, what: str) -> None:
        """Close a turn that holds its session but could not `what` (start, resume): the event bus or the
        owning replica was out of reach, or the request was cancelled. Left alone, the session would
        refuse messages until the turn's lease ran out."""
        closing = self._fail_interrupted(turn, f"The turn could not {what}: {exc}", code="UNAVAILABLE")
        if isinstance(exc, asyncio.CancelledError):  # awaiting here would be cancelled in turn
            self._spawn(_ignore_result(closing), f"close {turn.id}")
        else:
            await closing

    def placement(self, session: ChatSession) -> str:
        """Where a turn of `session` runs: on the replica holding its sandbox, while its lease lives."""
        live = session.owner_until is not None and session.owner_until > utcnow()
        if self.channel is None or not session.owner or not live:
            return self.replica
        return session.owner

    async def _hand_off(self, session: ChatSession, turn: Turn, message: dict[str, Any]) -> TurnTicket:
        """Send the turn to the replica that owns the session's sandbox; follow it on the shared bus."""
        assert turn.owner is not None
        self._prompts.pop(turn.id, None)  # the owner reads the prompt from the store
        self._admissions.pop(turn.id, None)
        await self.bus.seed(session.id, session.event_seq)
        if message["kind"] == "run":
            started = await self.bus.publish(
                session.id,
                ev.TURN_STARTED,
                {"turnId": turn.id, "chatId": session.id, "userMessageId": turn.user_message_id},
                turn.id,
            )
            first_seq = started.seq
        else:
            first_seq = await self.bus.last_seq(session.id) + 1
        done = self._future_for(turn.id)
        ticket = TurnTicket(turn.id, session.id, turn.assistant_message_id or "", first_seq, done)
        self._spawn(self._follow(ticket), f"follow {turn.id}")
        assert self.channel is not None
        await self.channel.send(turn.owner, message)
        return ticket

    async def _follow(self, ticket: TurnTicket) -> None:
        """Resolve a ticket of a turn that runs on another replica, from the bus and the store."""
        async for item in self.bus.subscribe(
            ticket.session_id, ticket.first_seq - 1, self.policy.lease_s / 3
        ):
            events = item.events if isinstance(item, Replay) else [item] if item is not None else []
            finished = any(e.type == ev.TURN_COMPLETED and e.turn_id == ticket.turn_id for e in events)
            if not finished:
                turn = await self.store.get_turn(ticket.turn_id)
                finished = turn is not None and turn.status in ("completed", "cancelled", "failed")
            if finished:
                turn = await self.store.get_turn(ticket.turn_id)
                if turn is not None and not ticket.done.done():
                    ticket.done.set_result(turn.response or _closed_response(turn))
                return

    def _future_for(self, turn_id: str) -> asyncio.Future[dict[str, Any]]:
        """The future of a turn's response: the parked one (its first request still waits on it) or new."""
        parked = self._parked.pop(turn_id, None)
        return parked.done if parked is not None else asyncio.get_running_loop().create_future()

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replay(self, session: ChatSession, key: str) -> TurnTicket | None:
        turn = await self.store.find_turn_by_idempotency_key(session.id, key)
        if turn is None:
            return None
        active = self._active.get(session.id)
        if active is not None and active.turn.id == turn.id:
            return active.ticket
        response = turn.response
        if response is None and turn.status in ("completed", "cancelled", "failed"):
            response = _closed_response(turn)
        if response is None:
            raise TurnConflict(turn.id, self.policy.retry_after_s)
        done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        done.set_result(response)
        return TurnTicket(turn.id, session.id, response["info"]["id"], 0, done)

    async def _launch(
        self, session: ChatSession, turn: Turn, resume: dict[str, str] | None, *, announced: bool = False
    ) -> TurnTicket:
        await self.bus.seed(session.id, session.event_seq)
        message_id = turn.assistant_message_id or new_id("msg")
        turn.assistant_message_id = message_id
        if resume is None and not announced:
            started = await self.bus.publish(
                session.id,
                ev.TURN_STARTED,
                {"turnId": turn.id, "chatId": session.id, "userMessageId": turn.user_message_id},
                turn.id,
            )
            first_seq = started.seq
        else:
            first_seq = await self.bus.last_seq(session.id) + 1
        done = self._future_for(turn.id)
        ticket = TurnTicket(turn.id, session.id, message_id, first_seq, done)
        active = _Active(turn=turn, ticket=ticket)
        self._active[session.id] = active
        task = asyncio.create_task(self._drive(session, active, resume), name=f"turn {turn.id}")
        active.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return ticket

    # running

    async def _drive(self, session: ChatSession, active: _Active, resume: dict[str, str] | None) -> None:
        turn = active.turn
        builder = _MessageBuilder(self, session.id, turn.id, active.ticket.message_id)
        tool_usage: list[UsageEntry] = []
        result: LoopResult | None = None
        lease: _LateLease | None = None
        try:
            if self.lifecycle is not None:
                if session.status == "active" and session.owner in (None, self.replica):
                    lease = _LateLease(functools.partial(self.lifecycle.acquire, session.id, turn.id))
                else:  # asleep, or moving here from another replica: its files come back first
                    await self.lifecycle.acquire(session.id, turn.id)
            if resume is None:
                await builder.emit(ev.TURN_STATUS, {"turnId": turn.id, "status": "running"})
                await builder.emit(
                    ev.MESSAGE_CREATED,
                    {
                        "turnId": turn.id,
                        "messageId": builder.message_id,
                        "role": "assistant",
                        "createdAt": iso(builder.created_at),
                    },
                )
            else:
                await builder.emit(ev.TURN_STATUS, {"turnId": turn.id, "status": "running"})
            request = await self._request(session, turn, resume)
            if lease is not None and request.execute_tool is not None:
                request.execute_tool = lease.before(request.execute_tool)
            run = self.loop.start(request)
            active.run = run
            if active.cancelled:
                run.cancel()
            async for item in run:
                if isinstance(item, TextStarted):
                    await builder.text_started(item.text)
                elif isinstance(item, TextDelta):
                    await builder.text_delta(item.delta)
                elif isinstance(item, ToolStarted):
                    await builder.tool_started(item.call_id, item.name, item.args)
                elif isinstance(item, ToolFinished):
                    await builder.tool_finished(item.call_id, item.output, item.ok)
                    cost = self.policy.tool_costs_micros.get(item.name, 0)
                    tool_usage.append(tool_entry(turn, item.name, item.ok, cost, utcnow()))
                elif isinstance(item, LoopResult):
                    result = item
                if lease is not None:
                    lease.start()
        except asyncio.CancelledError:
            result = LoopResult(status="cancelled", messages=[])
        except Exception as exc:
            log.exception("turn %s crashed", turn.id)
            result = LoopResult(
                status="failed", messages=[], error={"code": "INTERNAL", "message": type(exc).__name__}
            )
        active.finishing = True
        if lease is not None:
            failure = await lease.settle()  # before the turn is recorded, never racing it
            if failure is not None:
                log.error("turn %s could not take its session's sandbox", turn.id, exc_info=failure)
                error = {"code": "INTERNAL", "message": type(failure).__name__}
                result = LoopResult(status="failed", messages=[], error=error)
        if result is None:
            result = LoopResult(status="cancelled" if active.cancelled else "failed", messages=[])
        if active.cancelled and result.status == "failed":
            result.status = "cancelled"
        try:
            if result.status == "waiting":
                await self._wait_for_answer(session, active, builder, result, tool_usage)
                if active.cancelled:  # the cancel came while the question was being saved
                    await self._cancel_waiting(session, turn)
            else:
                await self._finish(session, active, builder, result, tool_usage)
        except Exception:
            log.exception("could not finish turn %s", turn.id)
            # Followers must not wait forever: say the turn ended, even though it could not be recorded.
            error = {"code": "INTERNAL", "message": "The turn could not be recorded"}
            with contextlib.suppress(Exception):
                await builder.emit(ev.TURN_COMPLETED, {"turnId": turn.id, "status": "failed", "error": error})
            if not active.ticket.done.done():
                active.ticket.done.set_exception(RuntimeError("turn could not be recorded"))
        finally:
            if self._active.get(session.id) is active:
                del self._active[session.id]

    async def _request(self, session: ChatSession, turn: Turn, resume: dict[str, str] | None) -> TurnRequest:
        history = await self.store.turn_history(session.id)
        user_text: str | None = None
        if resume is None:
            user_text = self._prompts.pop(turn.id, None)
            if user_text is None:  # handed over from another replica
                user_text = await self._user_text(session.id, turn.user_message_id)
        else:
            pending = turn.pending or {}
            history = [*history, *pending.get("messages", [])]
        admitted = self._admissions.get(turn.id) if resume is None else None
        # Admitted here a moment ago: the agent's profile was read then. Resumed or handed over: read it.
        profile = admitted[1].profile if admitted is not None else await self.gate.profile(session)
        specs: list[Any] = []
        executor = None
        if self.sandbox is not None and profile.tools != frozenset():
            specs, executor = await self.sandbox.tools(session.id, turn.id, profile.network)
            if profile.tools is not None:
                specs = [spec for spec in specs if spec.name in profile.tools]
        return TurnRequest(
            session_id=session.id,
            turn_id=turn.id,
            model=turn.model,
            history=history,
            user_text=user_text,
            system_prompt=profile.system_prompt,
            tools=specs,
            execute_tool=executor,
            question_tool=profile.tools is None or "ask_user" in profile.tools,
            answers=resume,
            max_output_tokens=profile.max_output_tokens,
            max_requests=self.policy.max_requests,
        )

    async def _user_text(self, session_id: str, message_id: str) -> str:
        for message in reversed(await self.store.list_messages(session_id)):
            if message.id == message_id:
                return "\n".join(p.get("text", "") for p in message.parts if p.get("type") == "text")
        raise NotFound("the turn's user message is missing")

    async def _finish(
        self,
        session: ChatSession,
        active: _Active,
        builder: _MessageBuilder,
        result: LoopResult,
        tool_usage: list[UsageEntry],
    ) -> None:
        turn = active.turn
        await builder.flush()
        prior = (turn.pending or {}).get("messages", [])
        status: TurnStatus = "failed"
        if result.status == "completed":
            status = "completed"
        elif result.status == "cancelled":
            status = "cancelled"
        entries = [
            *(turn.pending or {}).get("usage", []),
            *[llm_entry(c, turn) for c in result.calls],
            *tool_usage,
        ]
        entries = [_usage_from_json(e) if isinstance(e, dict) else e for e in entries]
        now = utcnow()
        created = builder.created_at
        if turn.pending and turn.pending.get("createdAt"):
            created = datetime.fromisoformat(str(turn.pending["createdAt"]).replace("Z", "+00:00"))
        message = Message(
            id=builder.message_id,
            session_id=session.id,
            turn_id=turn.id,
            role="assistant",
            parts=[*(turn.pending or {}).get("parts", []), *builder.parts],
            created_at=created,
            status=status,
        )
        usage = turn_usage(turn, message.id, entries)
        info: dict[str, Any] = {"id": message.id, "role": "assistant", "turnId": turn.id, "status": status}
        info["createdAt"] = iso(created)
        response = {"info": info, "parts": message.parts, "usage": usage}
        if result.error:
            response["error"] = result.error
        model_messages = [*prior, *result.messages] if status != "failed" else None
        await builder.emit(
            ev.MESSAGE_COMPLETED,
            {"turnId": turn.id, "messageId": message.id, "status": status, "parts": message.parts},
        )
        await builder.emit(ev.SESSION_USAGE, session_usage_event(usage))
        if self.policy.checkpoint_turns and self.sandbox is not None and self.sandbox.is_alive(session.id):
            try:
                image_id = await self.sandbox.snapshot(session.id, stop=False)
                if image_id:
                    await self.store.update_session(session.id, snapshot_image_id=image_id)
            except Exception:
                log.exception("checkpoint of %s failed", session.id)
        await _make_way()
        last = await self.bus.last_seq(session.id)
        await self.store.finish_turn(
            TurnOutcome(
                turn_id=turn.id,
                session_id=session.id,
                status=status,
                ended_at=now,
                assistant_message=message,
                usage=entries,
                model_messages=model_messages,
                response=response,
                error=result.error,
                event_seq=last + 1,
                notices=[notices.turn_finished(turn, status, message.id, usage, result.error)],
            )
        )
        subject, admission = self._admissions.pop(turn.id, (None, None))
        decisions = admission.decisions if admission is not None else []
        await _make_way()
        try:
            await self.gate.record(session, turn, subject, status, entries, decisions, result.error)
        except Exception:
            log.exception("could not record turn %s in the session log", turn.id)
        completed: dict[str, Any] = {"turnId": turn.id, "status": status}
        if result.error:
            completed["error"] = result.error
        await builder.emit(ev.TURN_COMPLETED, completed)
        if not active.ticket.done.done():
            active.ticket.done.set_result(response)

    async def _wait_for_answer(
        self,
        session: ChatSession,
        active: _Active,
        builder: _MessageBuilder,
        result: LoopResult,
        tool_usage: list[UsageEntry],
    ) -> None:
        """The model asked the user: persist the pending turn (no LLM request stays open)."""
        turn = active.turn
        await builder.flush()
        previous = turn.pending or {}
        entries = [*previous.get("usage", []), *[_usage_json(llm_entry(c, turn)) for c in result.calls]]
        entries += [_usage_json(e) for e in tool_usage]
        questions = [
            {"requestID": q.call_id, "question": q.question, "options": q.options, "askedAt": iso(utcnow())}
            for q in result.questions
        ]
        for question in questions:
            await builder.question_asked(question)
        pending: dict[str, Any] = {
            "messages": [*previous.get("messages", []), *result.messages],
            "parts": [*previous.get("parts", []), *builder.parts],
            "usage": entries,
            "questions": questions,
            "answers": {},
            "messageId": builder.message_id,
            "createdAt": previous.get("createdAt") or iso(builder.created_at),
        }
        turn.pending = pending
        turn.status = "waiting_for_input"
        asked = [notices.question_asked(turn, q.call_id, q.question, q.options) for q in result.questions]
        await self.store.set_turn_status(turn.id, "waiting_for_input", pending, asked)
        # Persist the numbers the next events will take before sending them: the turn may resume in a
        # new process (after a crash) and must never reuse an id a client has already seen.
        upcoming = await self.bus.last_seq(session.id) + len(questions) + 1
        await self.store.update_session(session.id, event_seq=upcoming)
        for question in questions:
            await builder.emit(ev.QUESTION, {"turnId": turn.id, **_question_event(question)})
        await builder.emit(ev.TURN_STATUS, {"turnId": turn.id, "status": "waiting_for_input"})
        # The request that started the turn keeps waiting; the resumed turn resolves the same future.
        self._parked[turn.id] = active.ticket

    # questions

    async def reply(
        self, principal: Principal, session_id: str, request_id: str, text: str
    ) -> dict[str, Any]:
        """Answer a pending question; once every question of the turn is answered, the turn resumes."""
        session = await self.store.get_session(session_id, principal.org_id)
        if session is None or not principal.sees(session.created_by):
            raise NotFound("Chat session not found")
        async with self._lock(session_id):
            turn = await self.store.get_turn(session.active_turn_id) if session.active_turn_id else None
            pending = turn.pending if turn is not None and turn.status == "waiting_for_input" else None
            asked = {q["requestID"] for q in (pending or {}).get("questions", [])}
            if turn is None or pending is None or request_id not in asked:
                pending_anywhere = {
                    q["requestID"] for q in ((turn.pending if turn else None) or {}).get("questions", [])
                }
                if request_id in pending_anywhere or await self._was_asked(session_id, request_id):
                    raise QuestionClosed("This question was already answered or is no longer pending")
                raise NotFound("No pending question with this requestID")
            if request_id in pending["answers"]:
                raise QuestionClosed("This question was already answered")
            await self.gate.admit_reply(principal, session, text)
            pending["answers"][request_id] = text
            for part in pending["parts"]:
                if part.get("type") == "question" and part.get("requestID") == request_id:
                    part.update(status="answered", answer=text)
            if asked - set(pending["answers"]):
                await self.store.set_turn_status(turn.id, "waiting_for_input", pending)
                return {"requestID": request_id, "turnId": turn.id, "status": "answered", "resumed": False}
            if not await self.store.transition_turn(turn.id, "waiting_for_input", "running", pending):
                raise QuestionClosed("This question was already answered")
            turn.pending, turn.status = pending, "running"
            turn.assistant_message_id = pending.get("messageId")
            try:
                await self._resume(session, turn, dict(pending["answers"]))
            except BaseException as exc:
                await self._give_up(turn, exc, "resume")
                raise
        return {"requestID": request_id, "turnId": turn.id, "status": "answered", "resumed": True}

    async def _resume(self, session: ChatSession, turn: Turn, answers: dict[str, str]) -> None:
        """Go on with an answered turn, where the session's sandbox lives."""
        owner = self.placement(session)
        turn.owner, turn.lease_until = owner, utcnow() + timedelta(seconds=self.policy.lease_s)
        await self.store.set_turn_owner(turn.id, owner, turn.lease_until)
        if owner == self.replica:
            await self._launch(session, turn, resume=answers)
        else:
            await self._hand_off(session, turn, {"kind": "resume", "turn": turn.id})

    async def _was_asked(self, session_id: str, request_id: str) -> bool:
        for message in await self.store.list_messages(session_id):
            for part in message.parts:
                if part.get("type") == "question" and part.get("requestID") == request_id:
                    return True
        return False

    def _lock(self, session_id: str) -> asyncio.Lock:
        lock = self._locks.get(session_id)
        if lock is None:
            lock = self._locks[session_id] = asyncio.Lock()
        return lock

    async def expire_questions(self, now: Any) -> int:
        """Resume turns whose questions waited past the timeout, answering \"no reply\"."""
        expired = 0
        for turn in await self.store.waiting_turns():
            questions = (turn.pending or {}).get("questions", [])
            asked = [q.get("askedAt") for q in questions if q.get("askedAt")]
            if not asked:
                continue
            oldest = min(datetime.fromisoformat(str(a).replace("Z", "+00:00")) for a in asked)
            if (now - oldest).total_seconds() < self.policy.question_timeout_s:
                continue
            pending = dict(turn.pending or {})
            answers = dict(pending.get("answers", {}))
            for question in questions:
                answers.setdefault(question["requestID"], NO_REPLY)
            pending["answers"] = answers
            for part in pending.get("parts", []):
                if part.get("type") == "question" and part.get("status") == "pending":
                    part.update(status="expired", answer=None)
            if not await self.store.transition_turn(turn.id, "waiting_for_input", "running", pending):
                continue
            session = await self.store.get_session(turn.session_id)
            if session is None or session.status == "ended":
                continue
            turn.pending, turn.status = pending, "running"
            turn.assistant_message_id = pending.get("messageId")
            await self._resume(session, turn, answers)
            expired += 1
        return expired

    # cancelling

    async def cancel(self, principal: Principal, session_id: str) -> dict[str, Any]:
        """Stop the running turn; it ends `cancelled` with its partial answer kept."""
        session = await self.store.get_session(session_id, principal.org_id)
        if session is None or not principal.sees(session.created_by):
            raise NotFound("Chat session not found")
        active = self._active.get(session_id)
        if active is None and session.active_turn_id:
            turn = await self.store.get_turn(session.active_turn_id)
            if turn is not None and turn.status == "waiting_for_input":
                return await self._cancel_waiting(session, turn)
        if active is None and session.active_turn_id:
            turn = await self.store.get_turn(session.active_turn_id)
            remote = turn is not None and turn.owner is not None and turn.owner != self.replica
            if turn is not None and turn.status == "running" and remote and self.channel is not None:
                return await self._cancel_remote(session, turn)
        if active is None:
            return {"id": session_id, "cancelled": False, "turnId": session.active_turn_id}
        active.cancelled = True
        if active.run is not None:
            active.run.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(active.ticket.done), self.policy.cancel_grace_s)
        except (TimeoutError, RuntimeError):
            # A run that ignores the stop is forced. A turn already recording its end is left to finish:
            # stopped there, it would never announce `turn.completed`, and might keep its session busy.
            if active.task is not None and not active.finishing:
                active.task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(active.ticket.done), self.policy.cancel_grace_s)
        return {"id": session_id, "cancelled": True, "turnId": active.turn.id}

    async def _cancel_remote(self, session: ChatSession, turn: Turn) -> dict[str, Any]:
        """Ask the replica running the turn to stop it, and wait until it has."""
        after = await self.bus.last_seq(session.id)
        done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        watcher = asyncio.create_task(self._follow(TurnTicket(turn.id, session.id, "", after + 1, done)))
        assert turn.owner is not None and self.channel is not None
        await self.channel.send(turn.owner, {"kind": "cancel", "session": session.id, "turn": turn.id})
        try:
            await asyncio.wait_for(asyncio.shield(done), self.policy.cancel_grace_s * 2)
        except TimeoutError:
            watcher.cancel()
        return {"id": session.id, "cancelled": True, "turnId": turn.id}

    async def serve_control(self) -> None:
        """Follow this replica's control channel: turns handed over to it, and cancels of its turns."""
        if self.channel is None:
            return
        async for message in self.channel.listen(self.replica):
            try:
                await self._on_control(message)
            except Exception:
                log.exception("control message %s failed", message.get("kind"))

    async def _on_control(self, message: dict[str, Any]) -> None:
        kind = message.get("kind")
        if kind == "release" and self.lifecycle is not None:
            await self.lifecycle.release(str(message.get("session")))
            return
        if kind == "cancel":
            active = self._active.get(str(message.get("session")))
            if active is not None and active.turn.id == message.get("turn"):
                active.cancelled = True
                if active.run is not None:
                    active.run.cancel()
            return
        turn = await self.store.get_turn(str(message.get("turn")))
        if turn is None or turn.status != "running" or turn.session_id in self._active:
            return
        session = await self.store.get_session(turn.session_id)
        if session is None:
            return
        until = utcnow() + timedelta(seconds=self.policy.lease_s)
        await self.store.set_turn_owner(turn.id, self.replica, until)
        turn.owner, turn.lease_until = self.replica, until
        if kind == "run":
            await self._launch(session, turn, resume=None, announced=True)
        elif kind == "resume" and turn.pending:
            turn.assistant_message_id = turn.pending.get("messageId")
            await self._launch(session, turn, resume=dict(turn.pending.get("answers", {})))

    async def keep_leases(self) -> None:
        """Renew this replica's leases; close turns of replicas whose leases ran out."""
        while True:
            now = utcnow()
            try:
                await self.store.renew_leases(self.replica, now + timedelta(seconds=self.policy.lease_s))
                await self.close_orphans(now)
            except Exception:
                log.exception("lease upkeep failed")
            await asyncio.sleep(self.policy.lease_s / 3)

    async def close_orphans(self, now: datetime) -> list[str]:
        """Fail turns whose replica stopped renewing their lease (it died mid-turn)."""
        closed = []
        for turn in await self.store.expired_turns(now):
            if turn.session_id in self._active:
                continue
            if await self._fail_interrupted(
                turn, "The replica running this turn stopped", expired_before=now
            ):
                closed.append(turn.id)
        return closed

    async def _fail_interrupted(
        self,
        turn: Turn,
        why: str,
        expired_before: datetime | None = None,
        code: str = "INTERRUPTED",
    ) -> bool:
        """Close a turn that no replica runs any more as `failed`; True if this call closed it."""
        session = await self.store.get_session(turn.session_id)
        seq = (session.event_seq if session else 0) + ev.SEQ_JUMP_AFTER_CRASH
        error = {"code": code, "message": why}
        closed = await self.store.finish_turn(
            TurnOutcome(
                turn_id=turn.id,
                session_id=turn.session_id,
                status="failed",
                ended_at=utcnow(),
                assistant_message=None,
                error=error,
                response=None,
                event_seq=seq,
                notices=[notices.turn_finished(turn, "failed", None, None, error)],
            ),
            lease_expired_before=expired_before,
        )
        if closed and session is not None:
            try:
                await self.gate.record(session, turn, None, "failed", [], [], error)
            except Exception:
                log.exception("could not record turn %s in the session log", turn.id)
        if closed:
            try:
                await self.bus.seed(turn.session_id, seq)
                await self.bus.publish(
                    turn.session_id,
                    ev.TURN_COMPLETED,
                    {"turnId": turn.id, "status": "failed", "error": error},
                    turn.id,
                )
            except Unavailable as unreachable:  # the store has the outcome; streams resync from it
                log.warning("turn %s closed but not announced: %s", turn.id, unreachable)
        return closed

    async def _cancel_waiting(self, session: ChatSession, turn: Turn) -> dict[str, Any]:
        """Cancel a turn parked on a question: the question is dropped, the turn ends `cancelled`."""
        pending = dict(turn.pending or {})
        if not await self.store.transition_turn(turn.id, "waiting_for_input", "running", pending):
            return {"id": session.id, "cancelled": False, "turnId": turn.id}
        for part in pending.get("parts", []):
            if part.get("type") == "question" and part.get("status") == "pending":
                part["status"] = "dropped"
        turn.pending = {**pending, "messages": pending.get("messages", [])}
        turn.assistant_message_id = pending.get("messageId")
        await self.bus.seed(session.id, session.event_seq)
        message_id = turn.assistant_message_id or new_id("msg")
        done = self._future_for(turn.id)  # a `POST /message` that started the turn still waits on it
        active = _Active(
            turn=turn, ticket=TurnTicket(turn.id, session.id, message_id, 0, done), cancelled=True
        )
        builder = _MessageBuilder(self, session.id, turn.id, message_id)
        await self._finish(session, active, builder, LoopResult(status="cancelled", messages=[]), [])
        return {"id": session.id, "cancelled": True, "turnId": turn.id}

    async def recover(self) -> list[str]:
        """After a restart: close the turns this replica was running as failed, so their sessions take
        messages again. Other replicas' turns are left to their leases."""
        closed = []
        for turn in await self.store.interrupted_turns(self.replica):
            if await self._fail_interrupted(turn, "The server stopped while this turn was running"):
                closed.append(turn.id)
        if closed:
            log.warning("closed %d turn(s) interrupted by a restart as failed", len(closed))
        return closed

    @property
    def running(self) -> int:
        """Turns running in this process now."""
        return len(self._active)

    def is_running(self, session_id: str) -> bool:
        return session_id in self._active

    async def wait_idle(self, timeout: float) -> None:
        """Let running turns finish (shutdown)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    async def shutdown(self) -> None:
        for active in list(self._active.values()):
            if active.task is not None and not active.finishing:  # a turn's end is recorded whole
                active.task.cancel()
        await self.wait_idle(5)


class _MessageBuilder:
    """Accumulates the assistant message's parts and streams `message.part.updated`.

    The first delta of a text part goes out at once; later ones that come within the window of the
    last event are held until it closes and sent together, so long answers cost fewer events
    without delaying the first token, and no event waits longer than the window.
    """

    def __init__(self, runner: TurnRunner, session_id: str, turn_id: str, message_id: str) -> None:
        self.runner = runner
        self.session_id = session_id
        self.turn_id = turn_id
        self.message_id = message_id
        self.parts: list[dict[str, Any]] = []
        self.created_at = utcnow()
        self._text: dict[str, Any] | None = None
        self._pending = ""
        self._last_sent = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._tools: dict[str, dict[str, Any]] = {}
        self._window = runner.policy.part_update_window_s

    async def emit(self, type: str, data: dict[str, Any]) -> None:
        await self.runner.bus.publish(self.session_id, type, data, self.turn_id)

    async def text_started(self, text: str) -> None:
        await self.flush()
        self._text = {"id": new_id("part"), "type": "text", "text": ""}
        self.parts.append(self._text)
        self._last_sent = 0.0
        if text:
            await self.text_delta(text)

    async def text_delta(self, delta: str) -> None:
        if self._text is None:
            await self.text_started("")
        assert self._text is not None
        self._text["text"] += delta
        self._pending += delta
        waited = time.monotonic() - self._last_sent
        if waited >= self._window:
            await self._send_text()
        elif self._timer is None:
            # Held only until the window since the last event closes, not a whole window from now:
            # a delta that comes just early (upstream jitter, a busy loop) goes out nearly on time.
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._window - waited, lambda: loop.create_task(self.flush()))

    async def _send_text(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending or self._text is None:
            return
        delta, self._pending = self._pending, ""
        self._last_sent = time.monotonic()
        await self.emit(
            ev.MESSAGE_PART_UPDATED,
            {
                "turnId": self.turn_id,
                "messageId": self.message_id,
                "partId": self._text["id"],
                "type": "text",
                "text": self._text["text"],
                "delta": delta,
            },
        )

    async def flush(self) -> None:
        await self._send_text()

    async def tool_started(self, call_id: str, name: str, args: Any) -> None:
        await self.flush()
        self._text = None
        part = {"id": new_id("part"), "type": "tool", "callId": call_id, "name": name, "input": args}
        part.update(output=None, status="running")
        self._tools[call_id] = part
        self.parts.append(part)
        await self._send_part(part)

    async def tool_finished(self, call_id: str, output: str, ok: bool) -> None:
        part = self._tools.get(call_id)
        if part is None:
            return
        part["output"] = output
        part["status"] = "completed" if ok else "error"
        await self._send_part(part)

    async def question_asked(self, question: dict[str, Any]) -> None:
        part = {"id": new_id("part"), "type": "question", **question, "status": "pending", "answer": None}
        self.parts.append(part)
        await self._send_part(part)

    async def _send_part(self, part: dict[str, Any]) -> None:
        await self.emit(
            ev.MESSAGE_PART_UPDATED,
            {
                "turnId": self.turn_id,
                "messageId": self.message_id,
                "partId": part["id"],
                "type": part["type"],
                "part": dict(part),
            },
        )


def _closed_response(turn: Turn) -> dict[str, Any]:
    """The response of a turn that ended without one (interrupted by a restart)."""
    message_id = turn.assistant_message_id or turn.user_message_id
    info: dict[str, Any] = {"id": message_id, "role": "assistant", "turnId": turn.id, "status": turn.status}
    info["createdAt"] = iso(turn.ended_at or turn.started_at)
    usage = turn_usage(turn, message_id, [])
    return {"info": info, "parts": [], "usage": usage, "error": turn.error}


def _question_event(question: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestID": question["requestID"],
        "question": question["question"],
        "options": question["options"],
    }


def _usage_json(entry: UsageEntry) -> dict[str, Any]:
    values = {name: getattr(entry, name) for name in UsageEntry.__slots__}
    values["timestamp"] = iso(entry.timestamp)
    return values


def _usage_from_json(values: dict[str, Any]) -> UsageEntry:
    from datetime import datetime

    data = dict(values)
    data["timestamp"] = datetime.fromisoformat(str(data["timestamp"]).replace("Z", "+00:00"))
    return UsageEntry(**data)


async def _ignore_result(work: Coroutine[Any, Any, bool]) -> None:
    try:
        await work
    except Exception:
        log.exception("background work failed")
