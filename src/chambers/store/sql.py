"""SqlStore: the Store port on SQLAlchemy async (SQLite via aiosqlite, PostgreSQL via asyncpg)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import event, func, insert, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from chambers.core.clock import as_utc, iso, utcnow
from chambers.core.errors import Conflict, NotFound, SessionEnded, TurnConflict
from chambers.core.ids import new_id
from chambers.core.models import (
    ApiKey,
    ChatSession,
    Message,
    Notice,
    Org,
    Page,
    Turn,
    TurnOutcome,
    UsageEntry,
)
from chambers.store import migrate
from chambers.store.tables import (
    api_keys,
    chat_sessions,
    messages,
    orgs,
    outbox_events,
    turns,
    usage_entries,
    webhook_deliveries,
    webhook_subscriptions,
)

T = TypeVar("T")

_SESSION_TIMES = (
    "created_at",
    "updated_at",
    "last_activity_at",
    "ended_at",
    "sandbox_started_at",
    "owner_until",
)


def row_utc(row: Mapping[str, Any] | RowMapping, *names: str) -> dict[str, Any]:
    """A row as a dict, with UTC re-attached to the named datetime columns (SQLite returns naive ones)."""
    values = dict(row)
    for name in names:
        if values.get(name) is not None:
            values[name] = as_utc(values[name])
    return values


def _org(row: RowMapping) -> Org:
    return Org(**row_utc(row, "created_at"))


def _key(row: RowMapping) -> ApiKey:
    values = row_utc(row, "created_at", "revoked_at", "last_used_at")
    values.pop("key_hash", None)
    values["scopes"] = frozenset(s for s in values["scopes"].split(",") if s)
    return ApiKey(**values)


def _session(row: RowMapping) -> ChatSession:
    return ChatSession(**row_utc(row, *_SESSION_TIMES))


def _turn(row: RowMapping) -> Turn:
    values = row_utc(row, "started_at", "ended_at", "lease_until")
    values.pop("model_messages", None)
    return Turn(**values)


def _message(row: RowMapping) -> Message:
    return Message(**row_utc(row, "created_at"))


def _usage(row: RowMapping) -> UsageEntry:
    return UsageEntry(**row_utc(row, "timestamp"))


def _usage_values(entry: UsageEntry) -> dict[str, Any]:
    return {name: getattr(entry, name) for name in UsageEntry.__slots__}


class SqlStore:
    """The Store on SQLAlchemy. Build with `await SqlStore.open(url)`."""

    def __init__(self, engine: AsyncEngine, reader: AsyncEngine | None = None) -> None:
        self.engine = engine
        """For writes (and any module that shares it): on SQLite every transaction is BEGIN IMMEDIATE."""
        self.reader = reader or engine
        """For this store's reads: on SQLite a second pool of plain (deferred) connections."""
        self.dialect = engine.dialect.name

    @classmethod
    async def open(cls, url: str, *, run_migrations: bool = True) -> SqlStore:
        """Connect (creating the SQLite file's folder) and migrate to the newest schema."""
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        sqlite = url.startswith("sqlite")
        # SQLite takes one writer at a time. With one pooled writer connection, writers wait their turn
        # in the pool's queue (FIFO, woken at once) instead of in SQLite's busy handler, which polls
        # with sleeps of up to 100 ms and made write latency under load grow to seconds.
        engine = create_async_engine(url, **kwargs, **({"pool_size": 1, "max_overflow": 0} if sqlite else {}))
        reader = None
        if sqlite:
            # A deferred transaction that reads and then writes cannot wait for the write lock: SQLite
            # answers "database is locked" at once. Taking the lock up front lets busy_timeout queue it.
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
            event.listen(engine.sync_engine, "connect", _sqlite_manual_begin)
            event.listen(engine.sync_engine, "begin", _sqlite_begin_immediate)
            reader = create_async_engine(url, **kwargs)
            event.listen(reader.sync_engine, "connect", _sqlite_pragmas)
        store = cls(engine, reader)
        if run_migrations:
            await migrate.upgrade(engine)
        return store

    async def ping(self) -> None:
        async with self.reader.connect() as conn:
            await conn.execute(select(1))

    async def close(self) -> None:
        await self.engine.dispose()
        if self.reader is not self.engine:
            await self.reader.dispose()

    # organisations and keys

    async def create_org(self, org: Org) -> Org:
        try:
            async with self.engine.begin() as conn:
                await conn.execute(insert(orgs).values(id=org.id, name=org.name, created_at=org.created_at))
        except IntegrityError:  # names are unique; another process may have taken this one just now
            raise Conflict(f"organisation {org.name!r} already exists") from None
        return org

    async def get_org(self, org_id: str) -> Org | None:
        return await self._one(select(orgs).where(orgs.c.id == org_id), _org)

    async def get_org_by_name(self, name: str) -> Org | None:
        return await self._one(select(orgs).where(orgs.c.name == name), _org)

    async def list_orgs(self) -> list[Org]:
        async with self.reader.connect() as conn:
            rows = (await conn.execute(select(orgs).order_by(orgs.c.id))).mappings().all()
        return [_org(r) for r in rows]

    async def create_api_key(self, key: ApiKey, key_hash: str) -> ApiKey:
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(api_keys).values(
                    id=key.id,
                    org_id=key.org_id,
                    name=key.name,
                    prefix=key.prefix,
                    key_hash=key_hash,
                    scopes=",".join(sorted(key.scopes)),
                    created_at=key.created_at,
                )
            )
        return key

    async def find_api_key(self, key_hash: str) -> ApiKey | None:
        return await self._one(select(api_keys).where(api_keys.c.key_hash == key_hash), _key)

    async def list_api_keys(self, org_id: str | None = None) -> list[ApiKey]:
        query = select(api_keys).order_by(api_keys.c.id)
        if org_id is not None:
            query = query.where(api_keys.c.org_id == org_id)
        async with self.reader.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_key(r) for r in rows]

    async def revoke_api_key(self, key_id: str, at: datetime) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=at)
            )
        return result.rowcount > 0

    async def touch_api_key(self, key_id: str, at: datetime) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=at))

    # sessions

    async def create_session(self, session: ChatSession, notices: Sequence[Notice] = ()) -> None:
        values = {name: getattr(session, name) for name in ChatSession.__slots__}
        async with self.engine.begin() as conn:
            await conn.execute(insert(chat_sessions).values(**values))
            await _write_notices(conn, notices)

    async def get_session(self, session_id: str, org_id: str | None = None) -> ChatSession | None:
        query = select(chat_sessions).where(chat_sessions.c.id == session_id)
        if org_id is not None:
            query = query.where(chat_sessions.c.org_id == org_id)
        return await self._one(query, _session)

    async def list_sessions(
        self,
        org_id: str,
        *,
        status: str | None,
        cursor: str | None,
        limit: int,
        created_by: str | None = None,
    ) -> Page[ChatSession]:
        query = select(chat_sessions).where(chat_sessions.c.org_id == org_id)
        # Sessions backing runs (`run_…` ids, core/runs.py) are not chat sessions to list.
        query = query.where(~chat_sessions.c.id.startswith("run_", autoescape=True))
        if status is not None:
            query = query.where(chat_sessions.c.status == status)
        if created_by is not None:
            query = query.where(chat_sessions.c.created_by == created_by)
        if cursor is not None:
            query = query.where(chat_sessions.c.id < cursor)
        query = query.order_by(chat_sessions.c.id.desc()).limit(limit + 1)
        async with self.reader.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        items = [_session(r) for r in rows[:limit]]
        return Page(items=items, next_cursor=items[-1].id if len(rows) > limit else None)

    async def update_session(self, session_id: str, **fields: Any) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(chat_sessions).where(chat_sessions.c.id == session_id).values(**fields))

    async def transition_session(
        self, session_id: str, from_status: tuple[str, ...], notices: Sequence[Notice] = (), **fields: Any
    ) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(chat_sessions)
                .where(chat_sessions.c.id == session_id, chat_sessions.c.status.in_(from_status))
                .values(**fields)
            )
            if result.rowcount > 0:
                await _write_notices(conn, notices)
        return result.rowcount > 0

    async def sleep_session(self, session_id: str, notices: Sequence[Notice], **fields: Any) -> bool:
        waiting = select(turns.c.id).where(turns.c.status == "waiting_for_input").scalar_subquery()
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(chat_sessions)
                .where(
                    chat_sessions.c.id == session_id,
                    chat_sessions.c.status == "active",
                    chat_sessions.c.active_turn_id.is_(None) | chat_sessions.c.active_turn_id.in_(waiting),
                )
                .values(**fields)
            )
            if result.rowcount > 0:
                await _write_notices(conn, notices)
        return result.rowcount > 0

    async def sleep_candidates(self) -> list[ChatSession]:
        waiting = select(turns.c.id).where(turns.c.status == "waiting_for_input").scalar_subquery()
        query = select(chat_sessions).where(
            chat_sessions.c.status == "active",
            chat_sessions.c.active_turn_id.is_(None) | chat_sessions.c.active_turn_id.in_(waiting),
        )
        async with self.reader.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_session(r) for r in rows]

    async def sessions_with_sandbox(self) -> list[ChatSession]:
        query = select(chat_sessions).where(chat_sessions.c.sandbox_started_at.is_not(None))
        async with self.reader.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_session(r) for r in rows]

    async def record_notices(self, notices: Sequence[Notice]) -> None:
        async with self.engine.begin() as conn:
            await _write_notices(conn, notices)

    # turns

    async def claim_turn(self, turn: Turn, user_message: Message, notices: Sequence[Notice] = ()) -> None:
        async with self.engine.begin() as conn:
            claimed = await conn.execute(
                update(chat_sessions)
                .where(
                    chat_sessions.c.id == turn.session_id,
                    chat_sessions.c.active_turn_id.is_(None),
                    chat_sessions.c.status != "ended",
                )
                .values(
                    active_turn_id=turn.id,
                    updated_at=turn.started_at,
                    last_activity_at=turn.started_at,
                    turn_count=chat_sessions.c.turn_count + 1,
                )
            )
            if claimed.rowcount == 0:
                await refuse_claim(conn, turn.session_id)
            await conn.execute(insert(messages).values(**_message_values(user_message)))
            await conn.execute(
                insert(turns).values(
                    id=turn.id,
                    session_id=turn.session_id,
                    org_id=turn.org_id,
                    status=turn.status,
                    model=turn.model,
                    user_message_id=turn.user_message_id,
                    idempotency_key=turn.idempotency_key,
                    started_at=turn.started_at,
                    owner=turn.owner,
                    lease_until=turn.lease_until,
                )
            )
            await _write_notices(conn, notices)

    async def get_turn(self, turn_id: str) -> Turn | None:
        return await self._one(select(turns).where(turns.c.id == turn_id), _turn)

    async def find_turn_by_idempotency_key(self, session_id: str, key: str) -> Turn | None:
        return await self._one(
            select(turns).where(turns.c.session_id == session_id, turns.c.idempotency_key == key), _turn
        )

    async def finish_turn(
        self, outcome: TurnOutcome, *, lease_expired_before: datetime | None = None
    ) -> bool:
        """Record a finished turn. With `lease_expired_before`, only if it still runs on an expired lease."""
        inputs = sum(e.prompt_tokens or 0 for e in outcome.usage)
        outputs = sum(e.completion_tokens or 0 for e in outcome.usage)
        cost = sum(e.cost_micros for e in outcome.usage)
        async with self.engine.begin() as conn:
            if lease_expired_before is not None:
                closed = await conn.execute(
                    update(turns)
                    .where(
                        turns.c.id == outcome.turn_id,
                        turns.c.status == "running",
                        turns.c.lease_until < lease_expired_before,
                    )
                    .values(status=outcome.status)
                )
                if closed.rowcount == 0:
                    return False
            if outcome.assistant_message is not None:
                await conn.execute(insert(messages).values(**_message_values(outcome.assistant_message)))
            if outcome.usage:
                await conn.execute(insert(usage_entries), [_usage_values(e) for e in outcome.usage])
            await conn.execute(
                update(turns)
                .where(turns.c.id == outcome.turn_id)
                .values(
                    status=outcome.status,
                    ended_at=outcome.ended_at,
                    error=outcome.error,
                    response=outcome.response,
                    model_messages=outcome.model_messages,
                    pending=None,
                    assistant_message_id=outcome.assistant_message.id if outcome.assistant_message else None,
                )
            )
            await conn.execute(
                update(chat_sessions)
                .where(chat_sessions.c.id == outcome.session_id)
                .values(
                    active_turn_id=None,
                    updated_at=outcome.ended_at,
                    last_activity_at=outcome.ended_at,
                    input_tokens=chat_sessions.c.input_tokens + inputs,
                    output_tokens=chat_sessions.c.output_tokens + outputs,
                    cost_micros=chat_sessions.c.cost_micros + cost,
                    event_seq=func.max(chat_sessions.c.event_seq, outcome.event_seq)
                    if self.dialect == "sqlite"
                    else func.greatest(chat_sessions.c.event_seq, outcome.event_seq),
                )
            )
            await _write_notices(conn, outcome.notices)
        return True

    # leases: which replica runs a turn, which owns a session's sandbox

    async def renew_leases(self, owner: str, until: datetime) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(turns)
                .where(turns.c.owner == owner, turns.c.status == "running")
                .values(lease_until=until)
            )
            await conn.execute(
                update(chat_sessions)
                .where(chat_sessions.c.owner == owner, chat_sessions.c.status != "ended")
                .values(owner_until=until)
            )

    async def set_turn_owner(self, turn_id: str, owner: str, until: datetime) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(turns).where(turns.c.id == turn_id).values(owner=owner, lease_until=until)
            )

    async def take_session(
        self, session_id: str, owner: str, until: datetime, now: datetime
    ) -> tuple[bool, str | None]:
        """Become the owner of a session's sandbox unless another replica holds a live lease on it.
        Returns whether it worked and who owned it before."""
        async with self.engine.begin() as conn:
            row = (
                (
                    await conn.execute(
                        select(chat_sessions.c.owner, chat_sessions.c.owner_until).where(
                            chat_sessions.c.id == session_id
                        )
                    )
                )
                .mappings()
                .first()
            )
            if row is None:
                return False, None
            previous = row["owner"]
            result = await conn.execute(
                update(chat_sessions)
                .where(
                    chat_sessions.c.id == session_id,
                    chat_sessions.c.owner.is_(None)
                    | (chat_sessions.c.owner == owner)
                    | (chat_sessions.c.owner_until < now),
                )
                .values(owner=owner, owner_until=until)
            )
        return result.rowcount > 0, previous

    async def release_session(self, session_id: str, owner: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(chat_sessions)
                .where(chat_sessions.c.id == session_id, chat_sessions.c.owner == owner)
                .values(owner=None, owner_until=None)
            )

    async def expired_turns(self, now: datetime) -> list[Turn]:
        query = (
            select(turns).where(turns.c.status == "running", turns.c.lease_until < now).order_by(turns.c.id)
        )
        async with self.reader.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_turn(r) for r in rows]

    async def set_turn_status(
        self, turn_id: str, status: str, pending: dict[str, Any] | None, notices: Sequence[Notice] = ()
    ) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(turns).where(turns.c.id == turn_id).values(status=status, pending=pending)
            )
            await _write_notices(conn, notices)

    async def transition_turn(
        self, turn_id: str, from_status: str, to_status: str, pending: dict[str, Any] | None
    ) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(turns)
                .where(turns.c.id == turn_id, turns.c.status == from_status)
                .values(status=to_status, pending=pending)
            )
        return result.rowcount > 0

    async def waiting_turns(self) -> list[Turn]:
        async with self.reader.connect() as conn:
            query = select(turns).where(turns.c.status == "waiting_for_input").order_by(turns.c.id)
            rows = (await conn.execute(query)).mappings().all()
        return [_turn(r) for r in rows]

    async def interrupted_turns(self, owner: str) -> list[Turn]:
        """Turns this replica was running when it stopped (or unowned ones, from before leases)."""
        query = (
            select(turns)
            .where(turns.c.status == "running", (turns.c.owner == owner) | turns.c.owner.is_(None))
            .order_by(turns.c.id)
        )
        async with self.reader.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_turn(r) for r in rows]

    async def turn_history(self, session_id: str) -> list[Any]:
        query = (
            select(turns.c.model_messages)
            .where(turns.c.session_id == session_id, turns.c.model_messages.is_not(None))
            .order_by(turns.c.id)
        )
        async with self.reader.connect() as conn:
            rows = (await conn.execute(query)).scalars().all()
        history: list[Any] = []
        for chunk in rows:
            history.extend(chunk or [])
        return history

    async def list_messages(self, session_id: str) -> list[Message]:
        query = select(messages).where(messages.c.session_id == session_id).order_by(messages.c.id)
        async with self.reader.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_message(r) for r in rows]

    async def list_usage(self, turn_id: str) -> list[UsageEntry]:
        query = select(usage_entries).where(usage_entries.c.turn_id == turn_id).order_by(usage_entries.c.id)
        async with self.reader.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_usage(r) for r in rows]

    async def _one(self, query: Any, convert: Callable[[RowMapping], T]) -> T | None:
        async with self.reader.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        return None if row is None else convert(row)


async def refuse_claim(conn: AsyncConnection, session_id: str, retry_after_s: int = 0) -> None:
    """Why a session could not be claimed: NotFound, SessionEnded or TurnConflict (its active turn)."""
    row = (
        (
            await conn.execute(
                select(chat_sessions.c.status, chat_sessions.c.active_turn_id).where(
                    chat_sessions.c.id == session_id
                )
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        raise NotFound("Chat session not found")
    if row["status"] == "ended":
        raise SessionEnded("This chat session has ended; create a new session to continue")
    raise TurnConflict(row["active_turn_id"] or "", retry_after_s)


async def _write_notices(conn: AsyncConnection, notices: Sequence[Notice]) -> None:
    """The outbox: each notice becomes an event plus one delivery per matching active subscription."""
    if not notices:
        return
    now = utcnow()
    subscriptions: dict[str, list[tuple[str, list[str]]]] = {}
    for notice in notices:
        if notice.org_id not in subscriptions:
            rows = await conn.execute(
                select(webhook_subscriptions.c.id, webhook_subscriptions.c.event_types).where(
                    webhook_subscriptions.c.org_id == notice.org_id,
                    webhook_subscriptions.c.status == "active",
                )
            )
            subscriptions[notice.org_id] = [(r.id, list(r.event_types or [])) for r in rows]
        event_id = new_id("evt")
        at = notice.at or now
        payload = {"type": notice.type, "timestamp": iso(at), "data": notice.data}
        await conn.execute(
            insert(outbox_events).values(
                id=event_id,
                org_id=notice.org_id,
                type=notice.type,
                session_id=notice.session_id,
                payload=payload,
                created_at=at,
            )
        )
        targets = [sid for sid, types in subscriptions[notice.org_id] if not types or notice.type in types]
        if targets:
            await conn.execute(
                insert(webhook_deliveries),
                [
                    {
                        "id": new_id("dlv"),
                        "subscription_id": sid,
                        "event_id": event_id,
                        "event_type": notice.type,
                        "ordering_key": notice.session_id or event_id,
                        "status": "pending",
                        "attempts": 0,
                        "next_attempt_at": now,
                        "created_at": now,
                    }
                    for sid in targets
                ],
            )


def _message_values(message: Message) -> dict[str, Any]:
    return {name: getattr(message, name) for name in Message.__slots__}


def _sqlite_manual_begin(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    dbapi_connection.isolation_level = None  # the driver emits no BEGIN; the "begin" event does


def _sqlite_begin_immediate(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
