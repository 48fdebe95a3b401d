"""SqlRunStore: the RunStore port (core/runs.py) on the SQL store's Database.

The queue is the `runs` table. A worker claims the oldest queued run with one conditional UPDATE whose
target is picked by a subquery (`FOR UPDATE SKIP LOCKED` on PostgreSQL), so two processes never take the
same run; on SQLite the UPDATE takes the write lock first, which serialises claims the same way.
Notices go to the webhook outbox in the transaction of the change they describe.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, case, insert, or_, select, update
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import Select
from sqlalchemy.sql.dml import ReturningUpdate

from chambers.core.models import Notice, Page
from chambers.core.runs import Run
from chambers.store.database import Database, read_all, read_one
from chambers.store.sql import row_utc, write_notices
from chambers.store.tables import runs, turns

_TIMES = ("created_at", "started_at", "ended_at", "lease_until")
_STORED = tuple(c.name for c in runs.columns)

# The state a client sees: a running run whose turn waits for an answer is `waiting_for_input`.
STATE = case(
    (and_(runs.c.status == "running", turns.c.status == "waiting_for_input"), "waiting_for_input"),
    else_=runs.c.status,
)


def _select() -> Select[Any]:
    return select(
        runs, turns.c.status.label("turn_status"), turns.c.pending.label("turn_pending")
    ).select_from(runs.outerjoin(turns, turns.c.id == runs.c.turn_id))


def _run(row: RowMapping) -> Run:
    values = row_utc(row, *_TIMES)
    values["submitter_scopes"] = frozenset(s for s in (values["submitter_scopes"] or "").split(",") if s)
    values["cancel_requested"] = bool(values["cancel_requested"])
    return Run(**values)


def _values(run: Run) -> dict[str, Any]:
    values = {name: getattr(run, name) for name in _STORED}
    values["submitter_scopes"] = ",".join(sorted(run.submitter_scopes))
    return values


def _claim(oldest: Select[Any]) -> ReturningUpdate[Any]:
    """Take the run `oldest` selects, if it is still queued."""
    return (
        update(runs)
        .where(runs.c.id == oldest.scalar_subquery(), runs.c.status == "queued")
        .values(
            status="running",
            attempts=runs.c.attempts + 1,
            started_at=bindparam("b_now"),
            turn_id=None,
            owner=bindparam("b_owner"),
            lease_until=bindparam("b_lease"),
        )
        .returning(runs.c.id)
    )


# Built once: the dispatcher claims at every poll, and building the statement each time cost 0.3 ms.
_OLDEST_QUEUED = select(runs.c.id).where(runs.c.status == "queued").order_by(runs.c.id).limit(1)
_CLAIM = _claim(_OLDEST_QUEUED)
# PostgreSQL: workers skip each other's locked rows.
_CLAIM_LOCKED = _claim(_OLDEST_QUEUED.with_for_update(skip_locked=True))


class SqlRunStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        """Every transaction runs through it; on SQLite reads go to their own connections, so they never
        queue behind the single writer connection (see `chambers.store.database`)."""
        self.dialect = db.dialect

    async def create_run(self, run: Run, notices: Sequence[Notice]) -> tuple[Run, bool]:
        def create(conn: Connection) -> None:
            conn.execute(insert(runs).values(**_values(run)))
            write_notices(conn, notices)

        try:
            await self.db.write(create)
        except IntegrityError:
            if run.idempotency_key is None:
                raise
            first = await self.find_run_by_key(run.org_id, run.idempotency_key)
            if first is None:
                raise
            return first, False
        return run, True

    async def find_run_by_key(self, org_id: str, key: str) -> Run | None:
        return await self._one(_select().where(runs.c.org_id == org_id, runs.c.idempotency_key == key))

    async def get_run(self, run_id: str, org_id: str | None = None) -> Run | None:
        query = _select().where(runs.c.id == run_id)
        if org_id is not None:
            query = query.where(runs.c.org_id == org_id)
        return await self._one(query)

    async def list_runs(self, org_id: str, *, state: str | None, cursor: str | None, limit: int) -> Page[Run]:
        query = _select().where(runs.c.org_id == org_id)
        if state is not None:
            query = query.where(STATE == state)
        if cursor is not None:
            query = query.where(runs.c.id < cursor)
        query = query.order_by(runs.c.id.desc()).limit(limit + 1)

        rows = await read_all(self.db, query, _run)
        items = rows[:limit]
        return Page(items=items, next_cursor=items[-1].id if len(rows) > limit else None)

    async def claim_run(
        self, owner: str, now: datetime, lease_until: datetime, started: Callable[[Run], Notice]
    ) -> Run | None:
        statement = _CLAIM_LOCKED if self.dialect == "postgresql" else _CLAIM
        values = {"b_now": now, "b_owner": owner, "b_lease": lease_until}

        def claim(conn: Connection) -> Run | None:
            claimed = conn.execute(statement, values).scalar()
            if claimed is None:
                return None
            run = _read(conn, claimed)
            write_notices(conn, [started(run)])
            return run

        return await self.db.write(claim)

    async def update_run(self, run_id: str, **fields: Any) -> None:
        def change(conn: Connection) -> None:
            conn.execute(update(runs).where(runs.c.id == run_id).values(**fields))

        await self.db.write(change)

    async def request_cancel(self, run_id: str) -> bool:
        def request(conn: Connection) -> int:
            return conn.execute(
                update(runs)
                .where(runs.c.id == run_id, runs.c.status == "running")
                .values(cancel_requested=True)
            ).rowcount

        return await self.db.write(request) > 0

    async def cancel_queued(
        self, run_id: str, now: datetime, cancelled: Callable[[Run], Notice]
    ) -> Run | None:
        def cancel(conn: Connection) -> Run | None:
            result = conn.execute(
                update(runs)
                .where(runs.c.id == run_id, runs.c.status == "queued")
                .values(status="cancelled", cancel_requested=True, ended_at=now)
            )
            if result.rowcount == 0:
                return None
            run = _read(conn, run_id)
            write_notices(conn, [cancelled(run)])
            return run

        return await self.db.write(cancel)

    async def finish_run(self, run_id: str, notices: Sequence[Notice], **fields: Any) -> bool:
        def finish(conn: Connection) -> bool:
            result = conn.execute(
                update(runs).where(runs.c.id == run_id, runs.c.status == "running").values(**fields)
            )
            if result.rowcount > 0:
                write_notices(conn, notices)
            return result.rowcount > 0

        return await self.db.write(finish)

    async def requeue_run(self, run_id: str) -> bool:
        def requeue(conn: Connection) -> int:
            return conn.execute(
                update(runs)
                .where(runs.c.id == run_id, runs.c.status == "running")
                .values(status="queued", turn_id=None, owner=None, lease_until=None)
            ).rowcount

        return await self.db.write(requeue) > 0

    async def renew_run_leases(self, owner: str, run_ids: Sequence[str], until: datetime) -> None:
        def renew(conn: Connection) -> None:
            conn.execute(
                update(runs)
                .where(runs.c.id.in_(list(run_ids)), runs.c.owner == owner, runs.c.status == "running")
                .values(lease_until=until)
            )

        await self.db.write(renew)

    async def orphaned_runs(self, owner: str, now: datetime) -> list[Run]:
        query = (
            _select()
            .where(
                runs.c.status == "running",
                or_(runs.c.owner == owner, runs.c.owner.is_(None), runs.c.lease_until < now),
            )
            .order_by(runs.c.id)
        )

        return await read_all(self.db, query, _run)

    async def adopt_run(self, run_id: str, owner: str, now: datetime, lease_until: datetime) -> bool:
        def adopt(conn: Connection) -> int:
            return conn.execute(
                update(runs)
                .where(
                    runs.c.id == run_id,
                    runs.c.status == "running",
                    or_(runs.c.owner == owner, runs.c.owner.is_(None), runs.c.lease_until < now),
                )
                .values(owner=owner, lease_until=lease_until)
            ).rowcount

        return await self.db.write(adopt) > 0

    async def _one(self, query: Select[Any]) -> Run | None:
        return await read_one(self.db, query, _run)


def _read(conn: Connection, run_id: str) -> Run:
    row = conn.execute(_select().where(runs.c.id == run_id)).mappings().one()
    return _run(row)
