"""The session log: an append-only, hash-chained, signed record of every turn and refusal.

There is one chain per agent. Each entry carries the SHA-256 of the previous entry of its chain and
the agent's Ed25519 signature over its own canonical JSON (`json.dumps(sort_keys=True,
separators=(",", ":"))` of every field but `hash` and `signature`). The store serialises appends per
chain, so concurrent appends never fork it. Verification needs no secret: the DID is the public key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

from chambers.core.clock import iso, utcnow
from chambers.core.controller.access import require_admin
from chambers.core.controller.agents import AgentKeys
from chambers.core.controller.did import verify
from chambers.core.controller.models import Agent, AuditEntry
from chambers.core.controller.ports import AuditFilter, ControllerStore
from chambers.core.errors import NotFound
from chambers.core.ids import new_id
from chambers.core.models import Page, Principal

GENESIS = "0" * 64
VERSION = 1


def body(entry: AuditEntry) -> dict[str, Any]:
    """Everything an entry says, in its signed form."""
    return {
        "v": VERSION,
        "id": entry.id,
        "orgId": entry.org_id,
        "chain": entry.chain_id,
        "seq": entry.seq,
        "prevHash": entry.prev_hash,
        "agentId": entry.agent_id,
        "agentDid": entry.agent_did,
        "kind": entry.kind,
        "outcome": entry.outcome,
        "createdAt": iso(entry.created_at),
        "subjectId": entry.subject_id,
        "sessionId": entry.session_id,
        "turnId": entry.turn_id,
        "model": entry.model,
        "startedAt": iso(entry.started_at),
        "endedAt": iso(entry.ended_at),
        "inputTokens": entry.input_tokens,
        "outputTokens": entry.output_tokens,
        "costMicros": entry.cost_micros,
        "decisions": entry.decisions,
        "error": entry.error,
    }


def canonical(entry: AuditEntry) -> bytes:
    return json.dumps(body(entry), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entry_hash(entry: AuditEntry) -> str:
    return hashlib.sha256(canonical(entry)).hexdigest()


def to_ms(value: datetime | None) -> datetime | None:
    """Times are kept to the millisecond, the precision the signed form carries."""
    if value is None:
        return None
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


@dataclass(frozen=True, slots=True)
class Broken:
    """The first entry of a chain that fails verification, and why."""

    chain_id: str
    seq: int
    entry_id: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class ChainReport:
    chain_id: str
    agent_did: str | None
    entries: int
    head_hash: str
    broken: Broken | None


class AuditLog:
    def __init__(self, store: ControllerStore, keys: AgentKeys) -> None:
        self.store = store
        self.keys = keys

    async def append(
        self,
        agent: Agent,
        *,
        kind: Literal["turn", "refusal"],
        outcome: str,
        subject_id: str | None,
        session_id: str | None = None,
        turn_id: str | None = None,
        model: str | None = None,
        started_at: datetime | None = None,
        ended_at: datetime | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cost_micros: int = 0,
        decisions: list[dict[str, Any]] | None = None,
        error: dict[str, Any] | None = None,
    ) -> AuditEntry:
        pair = await self.keys.pair(agent)
        draft = AuditEntry(
            id=new_id("aud"),
            org_id=agent.org_id,
            chain_id=agent.id,
            seq=0,
            agent_id=agent.id,
            agent_did=agent.did,
            kind=kind,
            outcome=outcome,
            created_at=to_ms(utcnow()) or utcnow(),
            subject_id=subject_id,
            session_id=session_id,
            turn_id=turn_id,
            model=model,
            started_at=to_ms(started_at),
            ended_at=to_ms(ended_at),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_micros=cost_micros,
            decisions=json.loads(json.dumps(decisions or [])),
            error={"code": error.get("code"), "message": error.get("message")} if error else None,
        )

        def build(seq: int, prev_hash: str) -> AuditEntry:
            entry = replace(draft, seq=seq, prev_hash=prev_hash)
            data = canonical(entry)
            return replace(entry, hash=hashlib.sha256(data).hexdigest(), signature=pair.sign(data))

        return await self.store.append_audit(agent.id, build)

    async def page(
        self,
        principal: Principal,
        *,
        agent_did: str | None = None,
        subject_id: str | None = None,
        session_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page[AuditEntry]:
        """The organisation's entries, newest first (admins; deleted agents' logs included)."""
        require_admin(principal)
        agent_id = None
        if agent_did:
            agent = await self.store.agent_by_did(principal.org_id, agent_did.strip())
            if agent is None:
                raise NotFound(f"Agent {agent_did} not found")
            agent_id = agent.id
        where = AuditFilter(principal.org_id, agent_id, subject_id, session_id, since, until)
        return await self.store.list_audit(where, cursor, limit)

    async def verify(self, org_id: str | None = None, batch: int = 500) -> list[ChainReport]:
        """Check every chain (of one organisation, or all): sequence, links, hashes, signatures."""
        reports = []
        for head in await self.store.audit_chains(org_id):
            reports.append(await self._verify_chain(head.chain_id, head.seq, head.head_hash, batch))
        return reports

    async def _verify_chain(self, chain_id: str, head_seq: int, head_hash: str, batch: int) -> ChainReport:
        agent = await self.store.get_agent(chain_id)
        did = agent.did if agent is not None else None
        expected_seq, prev, count = 1, GENESIS, 0
        async for entry in self._entries(chain_id, batch):
            count += 1
            reason = _check(entry, expected_seq, prev, did)
            if reason is not None:
                return ChainReport(
                    chain_id, did, count, head_hash, Broken(chain_id, entry.seq, entry.id, reason)
                )
            expected_seq, prev = entry.seq + 1, entry.hash
        if expected_seq - 1 != head_seq or prev != (head_hash or GENESIS):
            reason = (
                f"the chain head says {head_seq} entries ending in {head_hash[:12] or '-'}…, but the log "
                f"has {expected_seq - 1} ending in {prev[:12]}… (entries were removed or added)"
            )
            return ChainReport(chain_id, did, count, head_hash, Broken(chain_id, expected_seq, None, reason))
        return ChainReport(chain_id, did, count, head_hash, None)

    async def _entries(self, chain_id: str, batch: int) -> AsyncIterator[AuditEntry]:
        after = 0
        while True:
            entries = await self.store.audit_entries(chain_id, after, batch)
            for entry in entries:
                yield entry
            if len(entries) < batch:
                return
            after = entries[-1].seq


def _check(entry: AuditEntry, expected_seq: int, prev: str, did: str | None) -> str | None:
    if entry.seq != expected_seq:
        return f"expected entry number {expected_seq}, found {entry.seq} (an entry is missing)"
    if entry.prev_hash != prev:
        return "its prevHash does not match the hash of the entry before it (the chain was cut or reordered)"
    if entry_hash(entry) != entry.hash:
        return "its content does not match its hash (the entry was altered)"
    if entry.chain_id != entry.agent_id or entry.agent_did != did:
        return f"it names agent {entry.agent_did}, but the chain belongs to {did or 'an unknown agent'}"
    if not verify(entry.agent_did, canonical(entry), entry.signature):
        return f"its signature is not valid for {entry.agent_did}"
    return None
