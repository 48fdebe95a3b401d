"""Capability grants: an admin lets a user or an API key use one agent, until expiry or revocation.

Grants are checked on every request against the store, so a revoked or expired grant stops working
at once, on every server process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from chambers.core.clock import utcnow
from chambers.core.controller.access import is_admin, require_admin
from chambers.core.controller.agents import AgentService
from chambers.core.controller.models import CAPABILITIES, Grant
from chambers.core.controller.ports import ControllerStore
from chambers.core.errors import InvalidRequest, NotFound
from chambers.core.ids import new_id
from chambers.core.models import Principal
from chambers.core.ports import Store


@dataclass(frozen=True, slots=True)
class GrantView:
    grant: Grant
    agent_did: str


class GrantService:
    def __init__(self, store: ControllerStore, main: Store, agents: AgentService) -> None:
        self.store = store
        self.main = main
        self.agents = agents

    async def create(
        self,
        principal: Principal,
        *,
        agent_did: str,
        subject: str,
        capabilities: Sequence[str],
        expires_at: datetime | None = None,
    ) -> GrantView:
        require_admin(principal)
        agent = await self.agents.by_did(principal.org_id, agent_did)
        caps = [c for c in capabilities]
        if not caps:
            raise InvalidRequest(f"capabilities: give at least one of {', '.join(CAPABILITIES)}")
        unknown = [c for c in caps if c not in CAPABILITIES]
        if unknown:
            raise InvalidRequest(
                f"capabilities: unknown capability {unknown[0]!r} (known: {', '.join(CAPABILITIES)})"
            )
        subject_id = await self._subject(principal.org_id, subject)
        grant = Grant(
            id=new_id("grt"),
            org_id=principal.org_id,
            agent_id=agent.id,
            subject_id=subject_id,
            capabilities=frozenset(caps),
            created_at=utcnow(),
            created_by=principal.subject_id,
            expires_at=expires_at,
        )
        await self.store.create_grant(grant)
        return GrantView(grant, agent.did)

    async def _subject(self, org_id: str, subject: str) -> str:
        """A user id, a user's email or an API key id, of this organisation."""
        subject = subject.strip()
        if subject.startswith("usr_"):
            user = await self.store.get_user(subject)
            if user is not None and user.org_id == org_id:
                return user.id
        elif subject.startswith("key_"):
            if any(k.id == subject for k in await self.main.list_api_keys(org_id)):
                return subject
        elif "@" in subject:
            found = await self.store.user_by_email(subject.lower())
            if found is not None and found[0].org_id == org_id:
                return found[0].id
        raise InvalidRequest(
            f"subject: no user or API key {subject!r} in this organisation (give usr_…, key_… or an email)"
        )

    async def list(
        self, principal: Principal, *, agent_did: str | None = None, subject: str | None = None
    ) -> list[GrantView]:
        """Admins: the organisation's grants; others: their own."""
        agent_id = (await self.agents.by_did(principal.org_id, agent_did)).id if agent_did else None
        if not is_admin(principal):
            subject = principal.subject_id
        elif subject is not None:
            subject = await self._subject(principal.org_id, subject)
        grants = await self.store.list_grants(principal.org_id, agent_id=agent_id, subject_id=subject)
        dids = {
            a.id: a.did for a in await self.store.list_agents(principal.org_id, {g.agent_id for g in grants})
        }
        return [GrantView(g, dids.get(g.agent_id, "")) for g in grants]

    async def revoke(self, principal: Principal, grant_id: str) -> GrantView:
        require_admin(principal)
        grant = await self.store.get_grant(grant_id)
        if grant is None or grant.org_id != principal.org_id:
            raise NotFound("Grant not found")
        await self.store.revoke_grant(grant_id, utcnow())
        revoked = await self.store.get_grant(grant_id)
        agent = await self.store.get_agent(grant.agent_id)
        assert revoked is not None
        return GrantView(revoked, agent.did if agent else "")
