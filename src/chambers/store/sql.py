"""SqlStore: the Store port on SQLAlchemy, its transactions run by a `Database` (store/database.py)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import Executable

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
from chambers.store.database import Database, open_database, ping, read_all, read_one
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

    def __init__(self, db: Database) -> None:
        self.db = db
        """Runs the transactions; the controller, runs and webhooks stores share it."""
        self.dialect = db.dialect

    @classmethod
    async def open(cls, url: str, *, run_migrations: bool = True) -> SqlStore:
        """Connect (creating the SQLite file's folder) and migrate to the newest schema."""
        store = cls(await open_database(url))
        if run_migrations:
            await migrate.upgrade(store.db)
        return store

    async def ping(self) -> None:
        await self.db.read(ping)

    async def close(self) -> None:
        await self.db.close()

    # organisations and keys

    async def create_org(self, org: Org) -> Org:
        try:
            await self._write(insert(orgs).values(id=org.id, name=org.name, created_at=org.created_at))
        except IntegrityError:  # names are unique; another process may have taken this one just now
            raise Conflict(f"organisation {org.name!r} already exists") from None
        return org

    async def get_org(self, org_id: str) -> Org | None:
        return await self._one(select(orgs).where(orgs.c.id == org_id), _org)

    async def get_org_by_name(self, name: str) -> Org | None:
        return await self._one(select(orgs).where(orgs.c.name == name), _org)

    async def list_orgs(self) -> list[Org]:
        return await self._all(select(orgs).order_by(orgs.c.id), _org)

    async def create_api_key(self, key: ApiKey, key_hash: str) -> ApiKey:
        await self._write(
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
        return await read_one(self.db, _KEY_BY_HASH, _key, {"b_hash": key_hash})

    async def list_api_keys(self, org_id: str | None = None) -> list[ApiKey]:
        query = select(api_keys).order_by(api_keys.c.id)
        if org_id is not None:
            query = query.where(api_keys.c.org_id == org_id)
        return await self._all(query, _key)

    async def revoke_api_key(self, key_id: str, at: datetime) -> bool:
        revoked = await self._write(
            update(api_keys)
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=at)
        )
        return revoked > 0

    async def touch_api_key(self, key_id: str, at: datetime) -> None:
        await self._write(update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=at))

    # sessions

    async def create_session(self, session: ChatSession, notices: Sequence[Notice] = ()) -> None:
        values = {name: getattr(session, name) for name in ChatSession.__slots__}

        def create(conn: Connection) -> None:
            conn.execute(_INSERT_SESSION, values)
            write_notices(conn, notices)

        await self.db.write(create)

    async def get_session(self, session_id: str, org_id: str | None = None) -> ChatSession | None:
        if org_id is None:
            return await read_one(self.db, _SESSION, _session, {"b_id": session_id})
        return await read_one(self.db, _ORG_SESSION, _session, {"b_id": session_id, "b_org": org_id})

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
        rows = await self._all(query, _session)
        items = rows[:limit]
        return Page(items=items, next_cursor=items[-1].id if len(rows) > limit else None)

    async def update_session(self, session_id: str, **fields: Any) -> None:
        await self._write(update(chat_sessions).where(chat_sessions.c.id == session_id).values(**fields))

    async def transition_session(
        self, session_id: str, from_status: tuple[str, ...], notices: Sequence[Notice] = (), **fields: Any
    ) -> bool:
        change = (
            update(chat_sessions)
            .where(chat_sessions.c.id == session_id, chat_sessions.c.status.in_(from_status))
            .values(**fields)
        )
        return await self.db.write(functools.partial(_update_and_announce, change, notices))

    async def sleep_session(self, session_id: str, notices: Sequence[Notice], **fields: Any) -> bool:
        waiting = select(turns.c.id).where(turns.c.status == "waiting_for_input").scalar_subquery()
        change = (
            update(chat_sessions)
            .where(
                chat_sessions.c.id == session_id,
                chat_sessions.c.status == "active",
                chat_sessions.c.active_turn_id.is_(None) | chat_sessions.c.active_turn_id.in_(waiting),
            )
            .values(**fields)
        )
        return await self.db.write(functools.partial(_update_and_announce, change, notices))

    async def sleep_candidates(self) -> list[ChatSession]:
        waiting = select(turns.c.id).where(turns.c.status == "waiting_for_input").scalar_subquery()
        query = select(chat_sessions).where(
            chat_sessions.c.status == "active",
            chat_sessions.c.active_turn_id.is_(None) | chat_sessions.c.active_turn_id.in_(waiting),
        )
        return await self._all(query, _session)

    async def sessions_with_sandbox(self) -> list[ChatSession]:
        query = select(chat_sessions).where(chat_sessions.c.sandbox_started_at.is_not(None))
        return await self._all(query, _session)

    async def record_notices(self, notices: Sequence[Notice]) -> None:
        await self.db.write(functools.partial(write_notices, notices=notices))

    # turns

    async def claim_turn(self, turn: Turn, user_message: Message, notices: Sequence[Notice] = ()) -> None:
        def claim(conn: Connection) -> None:
            at = turn.started_at
            claimed = conn.execute(_CLAIM_SESSION, {"b_id": turn.session_id, "b_turn": turn.id, "b_at": at})
            if claimed.rowcount == 0:
                refuse_claim(conn, turn.session_id)
            conn.execute(_INSERT_MESSAGE, _message_values(user_message))
            conn.execute(
                _INSERT_TURN,
                {
                    "id": turn.id,
                    "session_id": turn.session_id,
                    "org_id": turn.org_id,
                    "status": turn.status,
                    "model": turn.model,
                    "user_message_id": turn.user_message_id,
                    "idempotency_key": turn.idempotency_key,
                    "started_at": at,
                    "owner": turn.owner,
                    "lease_until": turn.lease_until,
                },
            )
            write_notices(conn, notices)

        await self.db.write(claim)

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

        def finish(conn: Connection) -> bool:
            if lease_expired_before is not None:
                closed = conn.execute(
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
                conn.execute(_INSERT_MESSAGE, _message_values(outcome.assistant_message))
            if outcome.usage:
                conn.execute(insert(usage_entries), [_usage_values(e) for e in outcome.usage])
            conn.execute(
                _FINISH_TURN,
                {
                    "b_id": outcome.turn_id,
                    "status": outcome.status,
                    "ended_at": outcome.ended_at,
                    "error": outcome.error,
                    "response": outcome.response,
                    "model_messages": outcome.model_messages,
                    "assistant_message_id": outcome.assistant_message.id
                    if outcome.assistant_message
                    else None,
                },
            )
            conn.execute(
                _RELEASE_SESSION[self.dialect == "sqlite"],
                {
                    "b_id": outcome.session_id,
                    "b_at": outcome.ended_at,
                    "b_inputs": inputs,
                    "b_outputs": outputs,
                    "b_cost": cost,
                    "b_seq": outcome.event_seq,
                },
            )
            write_notices(conn, outcome.notices)
            return True

        return await self.db.write(finish)

    # leases: which replica runs a turn, which owns a session's sandbox

    async def renew_leases(self, owner: str, until: datetime) -> None:
        def renew(conn: Connection) -> None:
            conn.execute(
                update(turns)
                .where(turns.c.owner == owner, turns.c.status == "running")
                .values(lease_until=until)
            )
            conn.execute(
                update(chat_sessions)
                .where(chat_sessions.c.owner == owner, chat_sessions.c.status != "ended")
                .values(owner_until=until)
            )

        await self.db.write(renew)

    async def set_turn_owner(self, turn_id: str, owner: str, until: datetime) -> None:
        await self._write(update(turns).where(turns.c.id == turn_id).values(owner=owner, lease_until=until))

    async def take_session(
        self, session_id: str, owner: str, until: datetime, now: datetime
    ) -> tuple[bool, str | None]:
        """Become the owner of a session's sandbox unless another replica holds a live lease on it.
        Returns whether it worked and who owned it before."""

        def take(conn: Connection) -> tuple[bool, str | None]:
            row = conn.execute(_SESSION_OWNER, {"b_id": session_id}).first()
            if row is None:
                return False, None
            previous: str | None = row[0]
            result = conn.execute(
                _TAKE_SESSION, {"b_id": session_id, "b_owner": owner, "b_until": until, "b_now": now}
            )
            return result.rowcount > 0, previous

        return await self.db.write(take)

    async def release_session(self, session_id: str, owner: str) -> None:
        await self._write(
            update(chat_sessions)
            .where(chat_sessions.c.id == session_id, chat_sessions.c.owner == owner)
            .values(owner=None, owner_until=None)
        )

    async def expired_turns(self, now: datetime) -> list[Turn]:
        query = (
            select(turns).where(turns.c.status == "running", turns.c.lease_until < now).order_by(turns.c.id)
        )
        return await self._all(query, _turn)

    async def set_turn_status(
        self, turn_id: str, status: str, pending: dict[str, Any] | None, notices: Sequence[Notice] = ()
    ) -> None:
        change = update(turns).where(turns.c.id == turn_id).values(status=status, pending=pending)

        def set_status(conn: Connection) -> None:
            conn.execute(change)
            write_notices(conn, notices)

        await self.db.write(set_status)

    async def transition_turn(
        self, turn_id: str, from_status: str, to_status: str, pending: dict[str, Any] | None
    ) -> bool:
        changed = await self._write(
            update(turns)
            .where(turns.c.id == turn_id, turns.c.status == from_status)
            .values(status=to_status, pending=pending)
        )
        return changed > 0

    async def waiting_turns(self) -> list[Turn]:
        query = select(turns).where(turns.c.status == "waiting_for_input").order_by(turns.c.id)
        return await self._all(query, _turn)

    async def interrupted_turns(self, owner: str) -> list[Turn]:
        """Turns this replica was running when it stopped (or unowned ones, from before leases)."""
        query = (
            select(turns)
            .where(turns.c.status == "running", (turns.c.owner == owner) | turns.c.owner.is_(None))
            .order_by(turns.c.id)
        )
        return await self._all(query, _turn)

    async def turn_history(self, session_id: str) -> list[Any]:
        params = {"b_id": session_id}
        rows = await self.db.read(lambda conn: conn.execute(_HISTORY, params).scalars().all())
        history: list[Any] = []
        for chunk in rows:
            history.extend(chunk or [])
        return history

    async def list_messages(self, session_id: str) -> list[Message]:
        query = select(messages).where(messages.c.session_id == session_id).order_by(messages.c.id)
        return await self._all(query, _message)

    async def list_usage(self, turn_id: str) -> list[UsageEntry]:
        query = select(usage_entries).where(usage_entries.c.turn_id == turn_id).order_by(usage_entries.c.id)
        return await self._all(query, _usage)

    async def _one(self, query: Executable, convert: Callable[[RowMapping], T]) -> T | None:
        return await read_one(self.db, query, convert)

    async def _all(self, query: Executable, convert: Callable[[RowMapping], T]) -> list[T]:
        return await read_all(self.db, query, convert)

    async def _write(self, statement: Executable) -> int:
        """One statement in its own write transaction; the number of rows it changed."""
        return await self.db.write(lambda conn: _rowcount(conn.execute(statement)))


def _rowcount(result: Any) -> int:
    count: int = result.rowcount
    return count


def _update_and_announce(change: Executable, notices: Sequence[Notice], conn: Connection) -> bool:
    """Run `change`; if it changed a row, write `notices` to the outbox in the same transaction."""
    if _rowcount(conn.execute(change)) == 0:
        return False
    write_notices(conn, notices)
    return True


def refuse_claim(conn: Connection, session_id: str, retry_after_s: int = 0) -> None:
    """Why a session could not be claimed: NotFound, SessionEnded or TurnConflict (its active turn)."""
    row = (
        conn.execute(
            select(chat_sessions.c.status, chat_sessions.c.active_turn_id).where(
                chat_sessions.c.id == session_id
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


# The statements of a turn's hot path, built once: values go in as parameters, so SQLAlchemy neither
# coerces each value into a bound parameter nor computes a new cache key per call (about 0.5 ms of a
# turn claim's 0.86 ms on the benchmark machine).
_KEY_BY_HASH = select(api_keys).where(api_keys.c.key_hash == bindparam("b_hash"))
_INSERT_SESSION = insert(chat_sessions)
_SESSION = select(chat_sessions).where(chat_sessions.c.id == bindparam("b_id"))
_ORG_SESSION = _SESSION.where(chat_sessions.c.org_id == bindparam("b_org"))
_HISTORY = (
    select(turns.c.model_messages)
    .where(turns.c.session_id == bindparam("b_id"), turns.c.model_messages.is_not(None))
    .order_by(turns.c.id)
)
_INSERT_MESSAGE = insert(messages)
_INSERT_TURN = insert(turns)
_INSERT_OUTBOX_EVENT = insert(outbox_events)
_CLAIM_SESSION = (
    update(chat_sessions)
    .where(
        chat_sessions.c.id == bindparam("b_id"),
        chat_sessions.c.active_turn_id.is_(None),
        chat_sessions.c.status != "ended",
    )
    .values(
        active_turn_id=bindparam("b_turn"),
        updated_at=bindparam("b_at"),
        last_activity_at=bindparam("b_at"),
        turn_count=chat_sessions.c.turn_count + 1,
    )
)
_FINISH_TURN = update(turns).where(turns.c.id == bindparam("b_id")).values(pending=None)
_RELEASE_SESSION = {
    sqlite: update(chat_sessions)
    .where(chat_sessions.c.id == bindparam("b_id"))
    .values(
        active_turn_id=None,
        updated_at=bindparam("b_at"),
        last_activity_at=bindparam("b_at"),
        input_tokens=chat_sessions.c.input_tokens + bindparam("b_inputs"),
        output_tokens=chat_sessions.c.output_tokens + bindparam("b_outputs"),
        cost_micros=chat_sessions.c.cost_micros + bindparam("b_cost"),
        # Two-argument max() is SQLite's; PostgreSQL calls it greatest().
        event_seq=(func.max if sqlite else func.greatest)(chat_sessions.c.event_seq, bindparam("b_seq")),
    )
    for sqlite in (True, False)
}
_SESSION_OWNER = select(chat_sessions.c.owner).where(chat_sessions.c.id == bindparam("b_id"))
_TAKE_SESSION = (
    update(chat_sessions)
    .where(
        chat_sessions.c.id == bindparam("b_id"),
        chat_sessions.c.owner.is_(None)
        | (chat_sessions.c.owner == bindparam("b_owner"))
        | (chat_sessions.c.owner_until < bindparam("b_now")),
    )
    .values(owner=bindparam("b_owner"), owner_until=bindparam("b_until"))
)
_ACTIVE_SUBSCRIPTIONS = select(webhook_subscriptions.c.id, webhook_subscriptions.c.event_types).where(
    webhook_subscriptions.c.org_id == bindparam("b_org"), webhook_subscriptions.c.status == "active"
)


def write_notices(conn: Connection, notices: Sequence[Notice]) -> None:
    """The outbox: each notice becomes an event plus one delivery per matching active subscription."""
    if not notices:
        return
    now = utcnow()
    subscriptions: dict[str, list[tuple[str, list[str]]]] = {}
    for notice in notices:
        if notice.org_id not in subscriptions:
            rows = conn.execute(_ACTIVE_SUBSCRIPTIONS, {"b_org": notice.org_id})
            subscriptions[notice.org_id] = [(r.id, list(r.event_types or [])) for r in rows]
        event_id = new_id("evt")
        at = notice.at or now
        payload = {"type": notice.type, "timestamp": iso(at), "data": notice.data}
        conn.execute(
            _INSERT_OUTBOX_EVENT,
            {
                "id": event_id,
                "org_id": notice.org_id,
                "type": notice.type,
                "session_id": notice.session_id,
                "payload": payload,
                "created_at": at,
            },
        )
        targets = [sid for sid, types in subscriptions[notice.org_id] if not types or notice.type in types]
        if targets:
            conn.execute(
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
