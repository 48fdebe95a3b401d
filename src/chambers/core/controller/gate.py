"""ControllerGate: the TurnGate of the agent controller, on both chat surfaces.

Before any model call it checks the caller's grant and the agent's policy, refusing with FORBIDDEN,
POLICY_DENIED or RATE_LIMITED (and logging the refusal); it hands the turn runner the agent's system
prompt, tools, output cap and sandbox settings; and it logs every finished turn.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from chambers.core.clock import utcnow
from chambers.core.controller.access import authorize
from chambers.core.controller.agents import AgentService
from chambers.core.controller.audit import AuditLog
from chambers.core.controller.models import Agent
from chambers.core.controller.policy import sandbox_profile
from chambers.core.controller.ports import ControllerStore
from chambers.core.errors import ChambersError, Forbidden, PolicyDenied, RateLimited
from chambers.core.gate import Admission, AgentProfile
from chambers.core.models import ChatSession, Principal, Turn, UsageEntry

log = logging.getLogger("chambers.controller")


@dataclass(frozen=True, slots=True)
class Facts:
    """What the policy looks at about the session a message goes to (None: a session yet to be made)."""

    session_id: str | None
    model: str
    turn_count: int = 0
    cost_micros: int = 0


def facts_of(session: ChatSession) -> Facts:
    return Facts(session.id, session.model, session.turn_count, session.cost_micros)


class ControllerGate:
    def __init__(self, store: ControllerStore, agents: AgentService, audit: AuditLog) -> None:
        self.store = store
        self.agents = agents
        self.audit = audit

    async def default_agent(self, org_id: str) -> str | None:
        return (await self.agents.default_agent(org_id)).id

    async def admit(self, principal: Principal, session: ChatSession, text: str) -> Admission:
        agent = await self.agents.of_session(session.org_id, session.agent_id)
        decisions = await self.check(principal, agent, facts_of(session), text, count=True)
        return Admission(profile_of(agent), decisions)

    async def admit_reply(self, principal: Principal, session: ChatSession, text: str) -> None:
        """An answer to a question goes to the model too: the grant and the message policies hold. The
        turn's own limits (turns, cost, rate) were checked when it started and are not counted again."""
        agent = await self.agents.of_session(session.org_id, session.agent_id)
        await self.check(principal, agent, facts_of(session), text, count=False, message_only=True)

    async def check(
        self,
        principal: Principal,
        agent: Agent,
        facts: Facts,
        text: str,
        *,
        count: bool,
        message_only: bool = False,
    ) -> list[dict[str, Any]]:
        """The grant and every policy of `agent`, in order; the first refusal is logged and raised.

        With `count` false the rate limit is only looked at (a dry run before a session is made). With
        `message_only`, only the policies on the message itself (model, size): no turn, cost or rate limit.
        """
        decisions: list[dict[str, Any]] = []
        try:
            decisions.append(await authorize(self.store, principal, agent))
            await self._policies(principal, agent, facts, text, count, decisions, message_only)
        except (Forbidden, PolicyDenied, RateLimited) as refusal:
            if not decisions or decisions[-1].get("result") != "deny":
                decisions.append({"policy": "grant", "result": "deny"})
            await self._log_refusal(principal, agent, facts, decisions, refusal)
            raise
        return decisions

    async def _policies(
        self,
        principal: Principal,
        agent: Agent,
        facts: Facts,
        text: str,
        count: bool,
        decisions: list[dict[str, Any]],
        message_only: bool,
    ) -> None:
        policy = agent.policy

        def decide(name: str, ok: bool, limit: Any, value: Any, message: str) -> None:
            decisions.append(
                {"policy": name, "result": "allow" if ok else "deny", "limit": limit, "value": value}
            )
            if not ok:
                raise PolicyDenied(f"policy {name}: {message}")

        if policy.allowed_models is not None:
            allowed = list(policy.allowed_models)
            decide(
                "allowedModels",
                facts.model in allowed,
                allowed,
                facts.model,
                f"model {facts.model!r} is not allowed for agent {agent.did} (allowed: {', '.join(allowed)})",
            )
        if policy.max_message_chars is not None:
            limit = policy.max_message_chars
            decide(
                "maxMessageChars",
                len(text) <= limit,
                limit,
                len(text),
                f"the message has {len(text)} characters; agent {agent.did} accepts at most {limit}",
            )
        if message_only:
            return
        if policy.max_turns_per_session is not None:
            limit = policy.max_turns_per_session
            decide(
                "maxTurnsPerSession",
                facts.turn_count < limit,
                limit,
                facts.turn_count,
                f"this session already had {facts.turn_count} turns; the limit is {limit}",
            )
        if policy.max_cost_micros_per_session is not None:
            limit = policy.max_cost_micros_per_session
            decide(
                "maxCostMicrosPerSession",
                facts.cost_micros < limit,
                limit,
                facts.cost_micros,
                f"this session has cost {facts.cost_micros} micro-dollars; the limit is {limit}",
            )
        if policy.max_cost_micros_per_subject_per_day is not None:
            limit = policy.max_cost_micros_per_subject_per_day
            spent = await self.store.subject_cost_since(
                agent.id, principal.subject_id, start_of_day(utcnow())
            )
            decide(
                "maxCostMicrosPerSubjectPerDay",
                spent < limit,
                limit,
                spent,
                f"{principal.subject_id} has spent {spent} micro-dollars on agent {agent.did} today (UTC); "
                f"the limit is {limit}",
            )
        if policy.requests_per_minute_per_subject is not None:
            limit = policy.requests_per_minute_per_subject
            rate = await self.store.hit_rate(
                f"rpm:{agent.id}:{principal.subject_id}", limit, 60, utcnow(), count
            )
            decisions.append(
                {
                    "policy": "requestsPerMinutePerSubject",
                    "result": "allow" if rate.allowed else "deny",
                    "limit": limit,
                    "value": rate.count,
                }
            )
            if not rate.allowed:
                raise RateLimited(
                    f"policy requestsPerMinutePerSubject: {principal.subject_id} sent {limit} requests to "
                    f"agent {agent.did} in the last minute; retry in {rate.retry_after_s} s",
                    rate.retry_after_s,
                )

    async def _log_refusal(
        self,
        principal: Principal,
        agent: Agent,
        facts: Facts,
        decisions: list[dict[str, Any]],
        refusal: ChambersError,
    ) -> None:
        try:
            await self.audit.append(
                agent,
                kind="refusal",
                outcome="refused",
                subject_id=principal.subject_id,
                session_id=facts.session_id,
                model=facts.model,
                decisions=decisions,
                error={"code": refusal.code, "message": refusal.message},
            )
        except Exception:
            log.exception("could not log a refusal for agent %s", agent.id)

    async def profile(self, session: ChatSession) -> AgentProfile:
        return profile_of(await self.agents.of_session(session.org_id, session.agent_id))

    async def record(
        self,
        session: ChatSession,
        turn: Turn,
        subject_id: str | None,
        status: str,
        usage: list[UsageEntry],
        decisions: list[dict[str, Any]],
        error: dict[str, Any] | None,
    ) -> None:
        agent = await self.agents.of_session(session.org_id, session.agent_id)
        await self.audit.append(
            agent,
            kind="turn",
            outcome=status,
            subject_id=subject_id,
            session_id=session.id,
            turn_id=turn.id,
            model=turn.model,
            started_at=turn.started_at,
            ended_at=utcnow(),
            input_tokens=sum(e.prompt_tokens or 0 for e in usage),
            output_tokens=sum(e.completion_tokens or 0 for e in usage),
            cost_micros=sum(e.cost_micros for e in usage),
            decisions=decisions,
            error=error,
        )


def profile_of(agent: Agent) -> AgentProfile:
    """The agent's tools (narrowed by `allowedTools`), prompt, output cap, network and sandbox."""
    tools = agent.tools
    allowed = agent.policy.allowed_tools
    if allowed is not None:
        tools = allowed if tools is None else tools & allowed
    return AgentProfile(
        agent_id=agent.id,
        system_prompt=agent.system_prompt,
        tools=tools,
        max_output_tokens=agent.policy.max_output_tokens_per_turn,
        network=agent.policy.network,
        sandbox=sandbox_profile(agent.sandbox),
    )


def start_of_day(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
