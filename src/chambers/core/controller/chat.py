"""The controller's chat surface (`/api/chat`): OpenAI-style histories in, a turn's text out.

A request names an agent and carries messages. Without a session one is made, and every message but
the last becomes its opening history; with one, the stored history is authoritative and only what it
lacks is added. The last message, a user message, is the new turn's prompt: it runs through the same
TurnRunner as `/agent/v1`, and its text is followed on the event bus.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from chambers.core import events as ev
from chambers.core.clock import utcnow
from chambers.core.controller.access import authorize, is_admin, require_write
from chambers.core.controller.agents import AgentService
from chambers.core.controller.gate import ControllerGate, Facts, facts_of
from chambers.core.controller.models import Agent
from chambers.core.controller.ports import ChatMessage, ControllerStore, HistoryEncoder
from chambers.core.controller.view import SEP, ViewMessage, chat_view, new_messages, render_question, title_of
from chambers.core.errors import InvalidRequest, NotFound, SessionEnded, TurnConflict
from chambers.core.events import Replay
from chambers.core.ids import new_id
from chambers.core.models import ChatSession, Message, Page, Principal, Turn
from chambers.core.ports import EventBus, Store
from chambers.core.sessions import SessionService
from chambers.core.turns import TurnRunner

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True, slots=True)
class Chunk:
    text: str


@dataclass(frozen=True, slots=True)
class Done:
    pass


@dataclass(frozen=True, slots=True)
class Failed:
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class KeepAlive:
    pass


ChatItem = Chunk | Done | Failed | KeepAlive


@dataclass(slots=True)
class ChatStart:
    """A turn under way: its session (new or not) and the stream of its text."""

    session: ChatSession
    created: bool
    turn_id: str
    items: AsyncIterator[ChatItem]


@dataclass(frozen=True, slots=True)
class SessionSummary:
    session: ChatSession
    message_count: int


class ControllerChat:
    def __init__(
        self,
        store: ControllerStore,
        main: Store,
        bus: EventBus,
        runner: TurnRunner,
        sessions: SessionService,
        agents: AgentService,
        gate: ControllerGate,
        encode_history: HistoryEncoder,
        heartbeat_s: float,
    ) -> None:
        self.store = store
        self.main = main
        self.bus = bus
        self.runner = runner
        self.sessions = sessions
        self.agents = agents
        self.gate = gate
        self.encode_history = encode_history
        self.heartbeat_s = heartbeat_s

    async def send(
        self, principal: Principal, agent_did: str, messages: Sequence[ChatMessage], session_id: str | None
    ) -> ChatStart:
        """Start the turn for the last message (errors here come before any streaming)."""
        require_write(principal)
        check_conversation(messages)
        agent = await self.agents.by_did(principal.org_id, agent_did)
        prompt = messages[-1].text
        if session_id is None:
            return await self._new_session(principal, agent, messages, prompt)
        session = await self._own_session(principal, session_id)
        if (session.agent_id or (await self.agents.default_agent(session.org_id)).id) != agent.id:
            raise InvalidRequest("sessionId: this session belongs to a different agent")
        if session.status == "ended":
            raise SessionEnded("This chat session has ended; create a new session to continue")
        waiting = await self.store.waiting_parts(session.id)
        stored = await self._view(session, waiting)
        history = new_messages(stored, messages[:-1])
        await self.gate.check(principal, agent, facts_of(session), prompt, count=False)
        if waiting is not None:
            if history:
                raise TurnConflict(session.active_turn_id or "", self.runner.policy.retry_after_s)
            return await self._answer(principal, agent, session, prompt)
        if history:
            await self._import(session, history)
        ticket = await self.runner.submit(principal, session.id, prompt)
        return ChatStart(
            session, False, ticket.turn_id, self.follow(session.id, ticket.turn_id, ticket.first_seq - 1)
        )

    async def _new_session(
        self, principal: Principal, agent: Agent, messages: Sequence[ChatMessage], prompt: str
    ) -> ChatStart:
        model = self.agents.model_of(agent)
        await self.gate.check(principal, agent, Facts(None, model), prompt, count=False)
        session = await self.sessions.create(
            principal, title=title_of(messages), model=model, agent_id=agent.id
        )
        if len(messages) > 1:
            await self._import(session, messages[:-1])
        ticket = await self.runner.submit(principal, session.id, prompt)
        return ChatStart(
            session, True, ticket.turn_id, self.follow(session.id, ticket.turn_id, ticket.first_seq - 1)
        )

    async def _answer(self, principal: Principal, agent: Agent, session: ChatSession, text: str) -> ChatStart:
        """The session's turn waits on the agent's question(s): this message answers them."""
        turn = await self.main.get_turn(session.active_turn_id or "")
        pending = (turn.pending or {}) if turn is not None else {}
        answered = pending.get("answers", {})
        open_ids = [q["requestID"] for q in pending.get("questions", []) if q["requestID"] not in answered]
        if turn is None or not open_ids:
            raise TurnConflict(session.active_turn_id or "", self.runner.policy.retry_after_s)
        await self.gate.check(principal, agent, facts_of(session), text, count=True)
        after = await self.bus.last_seq(session.id)
        for request_id in open_ids:
            await self.runner.reply(principal, session.id, request_id, text)
        return ChatStart(session, False, turn.id, self.follow(session.id, turn.id, after))

    async def _import(self, session: ChatSession, history: Sequence[ChatMessage]) -> None:
        """Store earlier messages as one completed turn: visible messages plus the model's history."""
        now = utcnow()
        turn_id = new_id("turn")
        ids = sorted(new_id("msg") for _ in history)  # ids order messages; one millisecond holds many
        stored = [
            Message(
                id=message_id,
                session_id=session.id,
                role=message.role,
                parts=_parts(message),
                created_at=now,
                turn_id=turn_id,
            )
            for message_id, message in zip(ids, history, strict=True)
        ]
        turn = Turn(
            id=turn_id,
            session_id=session.id,
            org_id=session.org_id,
            status="completed",
            user_message_id=ids[0],
            model=session.model,
            started_at=now,
            ended_at=now,
        )
        try:
            await self.store.import_history(session.id, turn, stored, self.encode_history(history))
        except TurnConflict as conflict:
            raise TurnConflict(conflict.active_turn_id, self.runner.policy.retry_after_s) from None
        if new_id("msg")[:14] <= ids[-1][:14]:  # same millisecond: the prompt's ids must sort after
            await asyncio.sleep(0.002)

    async def follow(self, session_id: str, turn_id: str, after_seq: int) -> AsyncIterator[ChatItem]:
        """The turn's text as chunks, then Done (or Failed); questions count as text and end the stream."""
        wrote = False
        last_part: str | None = None
        async for item in self.bus.subscribe(session_id, after_seq, self.heartbeat_s):
            if item is None:
                yield KeepAlive()
                continue
            for event in item.events if isinstance(item, Replay) else [item]:
                if event.turn_id != turn_id:
                    continue
                data = event.data
                if event.type == ev.MESSAGE_PART_UPDATED and data.get("type") == "text":
                    delta = str(data.get("delta") or "")
                    if not delta:
                        continue
                    if data.get("partId") != last_part and wrote:
                        delta = SEP + delta
                    last_part, wrote = data.get("partId"), True
                    yield Chunk(delta)
                elif event.type == ev.QUESTION:
                    yield Chunk((SEP if wrote else "") + render_question(data))
                    last_part, wrote = None, True
                elif event.type == ev.TURN_STATUS and data.get("status") == "waiting_for_input":
                    yield Done()
                    return
                elif event.type == ev.TURN_COMPLETED:
                    status = data.get("status")
                    if status == "completed":
                        yield Done()
                    else:
                        error = data.get("error") or {}
                        code = error.get("code") or ("CANCELLED" if status == "cancelled" else "TURN_FAILED")
                        message = error.get("message") or f"The turn ended {status}"
                        yield Failed(str(code), str(message))
                    return

    # reading

    async def list_sessions(
        self,
        principal: Principal,
        *,
        agent_did: str | None,
        everyone: bool,
        cursor: str | None,
        limit: int,
    ) -> Page[SessionSummary]:
        """The caller's sessions (an admin's `everyone`: all of the organisation's), newest first."""
        agent_id = None
        if agent_did:
            agent = await self.agents.by_did(principal.org_id, agent_did)
            await authorize(self.store, principal, agent)
            agent_id = agent.id
        created_by = None if everyone and is_admin(principal) else principal.subject_id
        page = await self.store.list_agent_sessions(
            principal.org_id, agent_id=agent_id, created_by=created_by, cursor=cursor, limit=limit
        )
        stored = await self.store.session_messages([s.id for s in page.items])
        summaries = []
        for session in page.items:
            waiting = await self.store.waiting_parts(session.id) if session.active_turn_id else None
            view = chat_view(stored.get(session.id, []), waiting, session.updated_at)
            summaries.append(SessionSummary(session, len(view)))
        return Page(summaries, page.next_cursor)

    async def messages(self, principal: Principal, session_id: str) -> list[ViewMessage]:
        session = await self._own_session(principal, session_id)
        await authorize(self.store, principal, await self.agents.of_session(session.org_id, session.agent_id))
        return await self._view(session, await self.store.waiting_parts(session.id))

    async def _view(self, session: ChatSession, waiting: list[dict[str, Any]] | None) -> list[ViewMessage]:
        stored = (await self.store.session_messages([session.id])).get(session.id, [])
        return chat_view(stored, waiting, session.last_activity_at)

    async def _own_session(self, principal: Principal, session_id: str) -> ChatSession:
        """The caller's own session (admins: any of the organisation's), or NotFound."""
        session = await self.main.get_session(session_id, principal.org_id)
        if session is None or (session.created_by != principal.subject_id and not is_admin(principal)):
            raise NotFound("Chat session not found")
        return session


def check_conversation(messages: Sequence[ChatMessage]) -> None:
    """The shape rules the wire model cannot say: a last user message with text, known roles."""
    if not messages:
        raise InvalidRequest("messages: give at least one message")
    for index, message in enumerate(messages):
        if message.role not in ROLES:
            raise InvalidRequest(f"messages.{index}.role: must be one of {', '.join(ROLES)}")
        if message.tool_calls and message.role != "assistant":
            raise InvalidRequest(f"messages.{index}.tool_calls: only assistant messages carry tool calls")
        if message.role == "tool" and not message.tool_call_id and not message.name:
            raise InvalidRequest(f"messages.{index}: a tool message needs tool_call_id or name")
    last = messages[-1]
    if last.role != "user":
        raise InvalidRequest(
            f"messages.{len(messages) - 1}.role: the last message must be the user's ('user')"
        )
    if not last.text.strip():
        raise InvalidRequest(f"messages.{len(messages) - 1}.content: the new user message must not be empty")


def _parts(message: ChatMessage) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    if message.text:
        parts.append({"id": new_id("part"), "type": "text", "text": message.text})
    for call in message.tool_calls:
        try:
            args: Any = json.loads(call.arguments) if call.arguments else {}
        except ValueError:
            args = call.arguments
        parts.append(
            {
                "id": new_id("part"),
                "type": "tool",
                "callId": call.id,
                "name": call.name,
                "input": args,
                "output": None,
                "status": "completed",
            }
        )
    return parts
