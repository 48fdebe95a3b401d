"""SqlControllerStore: the controller's ControllerStore on the SqlStore's Database (SQLite or PostgreSQL).

Session-log appends are serialised per chain by locking the chain's head row first: `UPDATE … SET
seq = seq + 1` takes the row lock on PostgreSQL (a concurrent append waits, then sees the new head)
and the database write lock on SQLite (the UPDATE is the transaction's first statement, so it never
works from a stale snapshot). The unique (chain_id, seq) constraint backs this up: a fork cannot be
written even by a buggy caller.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.engine import Connection, Row, RowMapping
from sqlalchemy.exc import IntegrityError

from chambers.core.clock import as_utc
from chambers.core.controller.models import Agent, AuditEntry, ChainHead, Grant, Login, User
from chambers.core.controller.policy import Policy
from chambers.core.controller.ports import AuditFilter, RateDecision
from chambers.core.errors import Conflict, NotFound
from chambers.core.models import ChatSession, Message, Page, Turn
from chambers.store.database import Database, read_all, read_one
from chambers.store.sql import refuse_claim, row_utc
from chambers.store.tables import (
    agents,
    audit_chains,
    audit_entries,
    chat_sessions,
    grants,
    messages,
    rate_hits,
    rate_keys,
    turns,
    user_logins,
    users,
)

GENESIS = "0" * 64
T = TypeVar("T")


def _agent(row: RowMapping) -> Agent:
    values = row_utc(row, "created_at", "updated_at", "deleted_at")
    values.pop("private_key", None)
    values["is_default"] = values.pop("default_for") is not None
    values["tools"] = None if values["tools"] is None else frozenset(values["tools"])
    values["policy"] = Policy.from_json(values["policy"] or {})
    values["sandbox"] = dict(values["sandbox"] or {})
    return Agent(**values)


def _agent_values(values: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(values)
    if "tools" in out:
        out["tools"] = None if out["tools"] is None else sorted(out["tools"])
    if "policy" in out:
        out["policy"] = out["policy"].to_json()
    return out


def _user(row: Mapping[str, Any] | RowMapping) -> User:
    values = row_utc(row, "created_at", "updated_at", "disabled_at")
    values.pop("password_hash", None)
    return User(**values)


def _grant(row: RowMapping) -> Grant:
    values = row_utc(row, "created_at", "expires_at", "revoked_at")
    values["capabilities"] = frozenset(values["capabilities"] or [])
    return Grant(**values)


# A session-log entry is appended on every turn: its statements are built once and take their values as
# parameters (see `store/sql.py`).
_ADVANCE_CHAIN = (
    update(audit_chains).where(audit_chains.c.id == bindparam("b_id")).values(seq=audit_chains.c.seq + 1)
)
_CHAIN_HEAD = select(audit_chains.c.seq, audit_chains.c.head_hash).where(
    audit_chains.c.id == bindparam("b_id")
)
_INSERT_AUDIT_ENTRY = insert(audit_entries)
_AGENT = select(agents).where(agents.c.id == bindparam("b_id"))
_MOVE_CHAIN_HEAD = (
    update(audit_chains)
    .where(audit_chains.c.id == bindparam("b_id"))
    .values(head_hash=bindparam("b_hash"), updated_at=bindparam("b_at"))
)


def _entry(row: RowMapping) -> AuditEntry:
    return AuditEntry(**row_utc(row, "created_at", "started_at", "ended_at"))


def _session(row: RowMapping) -> ChatSession:
    return ChatSession(
        **row_utc(row, "created_at", "updated_at", "last_activity_at", "ended_at", "sandbox_started_at")
    )


class SqlControllerStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        """Runs each method's transaction whole: `write` for changes, `read` for lookups (on SQLite the
        reader connections, so reads never queue behind the single writer; see `chambers.store.database`)."""
        self.dialect = db.dialect

    # agents

    async def create_agent(self, agent: Agent, sealed_key: str) -> Agent:
        values = _agent_values({name: getattr(agent, name) for name in Agent.__slots__})
        values.pop("is_default")
        values["default_for"] = agent.org_id if agent.is_default else None
        values["private_key"] = sealed_key

        def create(conn: Connection) -> None:
            conn.execute(insert(agents).values(**values))
            conn.execute(
                insert(audit_chains).values(
                    id=agent.id,
                    org_id=agent.org_id,
                    seq=0,
                    head_hash=GENESIS,
                    updated_at=agent.created_at,
                )
            )

        try:
            await self.db.write(create)
        except IntegrityError:
            if agent.is_default:  # another process made it first
                existing = await self.default_agent(agent.org_id)
                if existing is not None:
                    return existing
            raise Conflict("An agent with this identity already exists") from None
        return agent

    async def get_agent(self, agent_id: str) -> Agent | None:
        return await read_one(self.db, _AGENT, _agent, {"b_id": agent_id})

    async def agent_by_did(self, org_id: str, did: str) -> Agent | None:
        return await self._one(select(agents).where(agents.c.did == did, agents.c.org_id == org_id), _agent)

    async def default_agent(self, org_id: str) -> Agent | None:
        return await self._one(select(agents).where(agents.c.default_for == org_id), _agent)

    async def list_agents(self, org_id: str, ids: Collection[str] | None = None) -> list[Agent]:
        """Live agents of the organisation; with `ids`, those agents (deleted ones too)."""
        query = select(agents).where(agents.c.org_id == org_id)
        if ids is None:
            query = query.where(agents.c.deleted_at.is_(None))
        else:
            if not ids:
                return []
            query = query.where(agents.c.id.in_(list(ids)))
        return await self._all(query.order_by(agents.c.id), _agent)

    async def update_agent(self, agent_id: str, **fields: Any) -> None:
        values = _agent_values(fields)

        def change(conn: Connection) -> None:
            conn.execute(update(agents).where(agents.c.id == agent_id).values(**values))

        await self.db.write(change)

    async def delete_agent(self, agent_id: str, at: datetime) -> bool:
        def remove(conn: Connection) -> bool:
            done = conn.execute(
                update(agents)
                .where(agents.c.id == agent_id, agents.c.deleted_at.is_(None))
                .values(deleted_at=at, updated_at=at)
            )
            # Its grants end with it (the agent and its log stay, so the log still verifies).
            conn.execute(
                update(grants)
                .where(grants.c.agent_id == agent_id, grants.c.revoked_at.is_(None))
                .values(revoked_at=at)
            )
            return done.rowcount > 0

        return await self.db.write(remove)

    async def sealed_key(self, agent_id: str) -> str | None:
        def lookup(conn: Connection) -> Any:
            return conn.execute(select(agents.c.private_key).where(agents.c.id == agent_id)).scalar()

        value = await self.db.read(lookup)
        return None if value is None else str(value)

    # users and sign-ins

    async def create_user(self, user: User, password_hash: str) -> User:
        values = {name: getattr(user, name) for name in User.__slots__}

        def create(conn: Connection) -> None:
            conn.execute(insert(users).values(**values, password_hash=password_hash))

        try:
            await self.db.write(create)
        except IntegrityError:
            raise Conflict(f"a user with email {user.email} already exists") from None
        return user

    async def get_user(self, user_id: str) -> User | None:
        return await self._one(select(users).where(users.c.id == user_id), _user)

    async def user_by_email(self, email: str) -> tuple[User, str] | None:
        def lookup(conn: Connection) -> RowMapping | None:
            return conn.execute(select(users).where(users.c.email == email)).mappings().first()

        row = await self.db.read(lookup)
        return None if row is None else (_user(row), str(row["password_hash"]))

    async def list_users(self, org_id: str) -> list[User]:
        return await self._all(select(users).where(users.c.org_id == org_id).order_by(users.c.id), _user)

    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        def change(conn: Connection) -> None:
            conn.execute(update(users).where(users.c.id == user_id).values(password_hash=password_hash))

        await self.db.write(change)

    async def disable_user(self, user_id: str, at: datetime) -> bool:
        def disable(conn: Connection) -> bool:
            done = conn.execute(
                update(users)
                .where(users.c.id == user_id, users.c.disabled_at.is_(None))
                .values(disabled_at=at, updated_at=at)
            )
            conn.execute(delete(user_logins).where(user_logins.c.user_id == user_id))
            return done.rowcount > 0

        return await self.db.write(disable)

    async def create_login(self, login: Login, token_hash: str) -> None:
        def create(conn: Connection) -> None:
            conn.execute(
                delete(user_logins).where(
                    user_logins.c.user_id == login.user_id, user_logins.c.expires_at < login.created_at
                )
            )
            conn.execute(
                insert(user_logins).values(
                    id=login.id,
                    user_id=login.user_id,
                    token_hash=token_hash,
                    created_at=login.created_at,
                    expires_at=login.expires_at,
                )
            )

        await self.db.write(create)

    async def find_login(self, token_hash: str) -> tuple[Login, User] | None:
        query = (
            select(user_logins, users)
            .join(users, users.c.id == user_logins.c.user_id)
            .where(user_logins.c.token_hash == token_hash)
        )

        def lookup(conn: Connection) -> Row[Any] | None:
            return conn.execute(query).first()

        row = await self.db.read(lookup)
        if row is None:
            return None
        data = row._mapping
        login = Login(
            id=data[user_logins.c.id],
            user_id=data[user_logins.c.user_id],
            created_at=as_utc(data[user_logins.c.created_at]),
            expires_at=as_utc(data[user_logins.c.expires_at]),
        )
        user_row = {c.name: data[c] for c in users.c}
        return login, _user(user_row)

    async def delete_login(self, token_hash: str) -> None:
        def remove(conn: Connection) -> None:
            conn.execute(delete(user_logins).where(user_logins.c.token_hash == token_hash))

        await self.db.write(remove)

    # grants

    async def create_grant(self, grant: Grant) -> Grant:
        values = {name: getattr(grant, name) for name in Grant.__slots__}
        values["capabilities"] = sorted(grant.capabilities)

        def create(conn: Connection) -> None:
            conn.execute(insert(grants).values(**values))

        await self.db.write(create)
        return grant

    async def get_grant(self, grant_id: str) -> Grant | None:
        return await self._one(select(grants).where(grants.c.id == grant_id), _grant)

    async def list_grants(
        self, org_id: str, *, agent_id: str | None = None, subject_id: str | None = None
    ) -> list[Grant]:
        query = select(grants).where(grants.c.org_id == org_id)
        if agent_id is not None:
            query = query.where(grants.c.agent_id == agent_id)
        if subject_id is not None:
            query = query.where(grants.c.subject_id == subject_id)
        return await self._all(query.order_by(grants.c.id), _grant)

    async def revoke_grant(self, grant_id: str, at: datetime) -> bool:
        def revoke(conn: Connection) -> bool:
            done = conn.execute(
                update(grants)
                .where(grants.c.id == grant_id, grants.c.revoked_at.is_(None))
                .values(revoked_at=at)
            )
            return done.rowcount > 0

        return await self.db.write(revoke)

    async def live_grants(self, subject_id: str, now: datetime, agent_id: str | None = None) -> list[Grant]:
        query = select(grants).where(
            grants.c.subject_id == subject_id,
            grants.c.revoked_at.is_(None),
            or_(grants.c.expires_at.is_(None), grants.c.expires_at > now),
        )
        if agent_id is not None:
            query = query.where(grants.c.agent_id == agent_id)
        return [g for g in await self._all(query.order_by(grants.c.id), _grant) if g.live(now)]

    # rate limits and spend

    async def hit_rate(self, key: str, limit: int, window_s: int, now: datetime, count: bool) -> RateDecision:
        """A sliding window: the hits of the last `window_s` seconds, counted under the key's row lock."""
        since = now - timedelta(seconds=window_s)

        def hit(conn: Connection) -> RateDecision:
            touched = conn.execute(update(rate_keys).where(rate_keys.c.key == key).values(touched_at=now))
            if touched.rowcount == 0:
                conn.execute(insert(rate_keys).values(key=key, touched_at=now))
            conn.execute(delete(rate_hits).where(rate_hits.c.key == key, rate_hits.c.at <= since))
            row = conn.execute(
                select(func.count(), func.min(rate_hits.c.at)).where(rate_hits.c.key == key)
            ).one()
            hits, oldest = int(row[0]), row[1]
            if hits >= limit:
                wait = window_s
                if oldest is not None:
                    wait = math.ceil((as_utc(oldest) - since).total_seconds())
                return RateDecision(False, hits, max(1, wait))
            if count:
                conn.execute(insert(rate_hits).values(key=key, at=now))
            return RateDecision(True, hits + 1 if count else hits)

        for _attempt in range(3):
            try:
                return await self.db.write(hit)
            except IntegrityError:  # two first hits made the key row at once; go again
                continue
        raise Conflict("the rate limiter is busy; retry")

    async def subject_cost_since(self, agent_id: str, subject_id: str, since: datetime) -> int:
        query = select(func.coalesce(func.sum(audit_entries.c.cost_micros), 0)).where(
            audit_entries.c.agent_id == agent_id,
            audit_entries.c.subject_id == subject_id,
            audit_entries.c.kind == "turn",
            audit_entries.c.created_at >= since,
        )

        def total(conn: Connection) -> int:
            return int(conn.execute(query).scalar() or 0)

        return await self.db.read(total)

    # session log

    async def append_audit(self, chain_id: str, build: Callable[[int, str], AuditEntry]) -> AuditEntry:
        # `build` (hash and sign the entry) runs inside the transaction: it is synchronous and needs the
        # locked head's seq and hash.
        def append(conn: Connection) -> AuditEntry:
            # First statement: lock the head (row lock on PostgreSQL, write lock on SQLite).
            locked = conn.execute(_ADVANCE_CHAIN, {"b_id": chain_id})
            if locked.rowcount == 0:
                raise NotFound(f"no session log chain {chain_id}")
            head = conn.execute(_CHAIN_HEAD, {"b_id": chain_id}).one()
            entry = build(int(head.seq), str(head.head_hash))
            conn.execute(_INSERT_AUDIT_ENTRY, {name: getattr(entry, name) for name in AuditEntry.__slots__})
            conn.execute(_MOVE_CHAIN_HEAD, {"b_id": chain_id, "b_hash": entry.hash, "b_at": entry.created_at})
            return entry

        return await self.db.write(append)

    async def list_audit(self, where: AuditFilter, cursor: str | None, limit: int) -> Page[AuditEntry]:
        """Newest first; `cursor` is the id of the last entry of the previous page."""
        query = select(audit_entries).where(audit_entries.c.org_id == where.org_id)
        conditions = []
        if where.agent_id is not None:
            conditions.append(audit_entries.c.agent_id == where.agent_id)
        if where.subject_id is not None:
            conditions.append(audit_entries.c.subject_id == where.subject_id)
        if where.session_id is not None:
            conditions.append(audit_entries.c.session_id == where.session_id)
        if where.since is not None:
            conditions.append(audit_entries.c.created_at >= where.since)
        if where.until is not None:
            conditions.append(audit_entries.c.created_at < where.until)
        if cursor is not None:
            conditions.append(audit_entries.c.id < cursor)
        if conditions:
            query = query.where(and_(*conditions))
        rows = await self._all(query.order_by(audit_entries.c.id.desc()).limit(limit + 1), _entry)
        items = rows[:limit]
        return Page(items, items[-1].id if len(rows) > limit else None)

    async def audit_chains(self, org_id: str | None = None) -> list[ChainHead]:
        query = select(audit_chains).order_by(audit_chains.c.id)
        if org_id is not None:
            query = query.where(audit_chains.c.org_id == org_id)

        return await read_all(
            self.db, query, lambda r: ChainHead(r["id"], r["org_id"], int(r["seq"]), str(r["head_hash"]))
        )

    async def audit_entries(self, chain_id: str, after_seq: int, limit: int) -> list[AuditEntry]:
        query = (
            select(audit_entries)
            .where(audit_entries.c.chain_id == chain_id, audit_entries.c.seq > after_seq)
            .order_by(audit_entries.c.seq)
            .limit(limit)
        )
        return await self._all(query, _entry)

    # chat sessions

    async def list_agent_sessions(
        self, org_id: str, *, agent_id: str | None, created_by: str | None, cursor: str | None, limit: int
    ) -> Page[ChatSession]:
        query = select(chat_sessions).where(
            chat_sessions.c.org_id == org_id,
            ~chat_sessions.c.id.startswith("run_", autoescape=True),  # a run's hidden session is no chat
        )
        if agent_id is not None:
            query = query.where(chat_sessions.c.agent_id == agent_id)
        if created_by is not None:
            query = query.where(chat_sessions.c.created_by == created_by)
        if cursor is not None:
            query = query.where(chat_sessions.c.id < cursor)
        rows = await self._all(query.order_by(chat_sessions.c.id.desc()).limit(limit + 1), _session)
        items = rows[:limit]
        return Page(items, items[-1].id if len(rows) > limit else None)

    async def session_messages(self, session_ids: Collection[str]) -> dict[str, list[Message]]:
        if not session_ids:
            return {}
        query = select(messages).where(messages.c.session_id.in_(list(session_ids))).order_by(messages.c.id)
        out: dict[str, list[Message]] = {sid: [] for sid in session_ids}
        for message in await self._all(query, lambda r: Message(**row_utc(r, "created_at"))):
            out[message.session_id].append(message)
        return out

    async def waiting_parts(self, session_id: str) -> list[dict[str, Any]] | None:
        query = (
            select(turns.c.pending)
            .join(chat_sessions, chat_sessions.c.active_turn_id == turns.c.id)
            .where(chat_sessions.c.id == session_id, turns.c.status == "waiting_for_input")
        )

        def lookup(conn: Connection) -> Any:
            return conn.execute(query).scalar()

        pending = await self.db.read(lookup)
        if not pending:
            return None
        return list(pending.get("parts") or [])

    async def import_history(
        self, session_id: str, turn: Turn, stored: list[Message], model_messages: list[Any]
    ) -> None:
        def claim_and_import(conn: Connection) -> None:
            free = conn.execute(
                update(chat_sessions)
                .where(
                    chat_sessions.c.id == session_id,
                    chat_sessions.c.active_turn_id.is_(None),
                    chat_sessions.c.status != "ended",
                )
                .values(updated_at=turn.started_at)
            )
            if free.rowcount == 0:
                refuse_claim(conn, session_id, 2)
            conn.execute(
                insert(turns).values(
                    id=turn.id,
                    session_id=turn.session_id,
                    org_id=turn.org_id,
                    status=turn.status,
                    model=turn.model,
                    user_message_id=turn.user_message_id,
                    started_at=turn.started_at,
                    ended_at=turn.ended_at,
                    model_messages=model_messages,
                )
            )
            if stored:
                conn.execute(
                    insert(messages), [{name: getattr(m, name) for name in Message.__slots__} for m in stored]
                )

        await self.db.write(claim_and_import)

    async def _one(self, query: Any, convert: Callable[[RowMapping], T]) -> T | None:
        return await read_one(self.db, query, convert)

    async def _all(self, query: Any, convert: Callable[[RowMapping], T]) -> list[T]:
        return await read_all(self.db, query, convert)
