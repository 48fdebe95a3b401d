"""WebhookStore: subscriptions, the delivery queue and the attempt log, on the SqlStore's Database.

The outbox rows themselves are written by `SqlStore` in the transaction of each state change
(`write_notices`); this module reads and works that queue. Claiming is safe with several processes:
a claim is a conditional UPDATE of `lease_until` (on PostgreSQL after `SELECT ... FOR UPDATE SKIP
LOCKED`), and results are written only while the claimer's lease still stands.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import and_, bindparam, delete, exists, insert, or_, select, update
from sqlalchemy.engine import Connection, RowMapping

from chambers.core.clock import as_utc
from chambers.core.ids import new_id
from chambers.core.models import Page
from chambers.store.database import Database, read_all, read_one
from chambers.store.tables import (
    outbox_events,
    webhook_attempts,
    webhook_deliveries,
    webhook_subscriptions,
)
from chambers.webhooks.models import Attempt, AttemptResult, DueDelivery, Subscription

_subs = webhook_subscriptions
_dlv = webhook_deliveries
_att = webhook_attempts
Outcome = Literal["delivered", "retry", "dead", "disabled"]
_ERROR_LIMIT = 1000
_REASON_LIMIT = 500


def _subscription(row: RowMapping) -> Subscription:
    return Subscription(
        id=row["id"],
        org_id=row["org_id"],
        url=row["url"],
        event_types=list(row["event_types"] or []),
        description=row["description"],
        status=row["status"],
        consecutive_failures=row["consecutive_failures"],
        created_at=as_utc(row["created_at"]),
        updated_at=as_utc(row["updated_at"]),
        disabled_at=as_utc(row["disabled_at"]) if row["disabled_at"] is not None else None,
        disabled_reason=row["disabled_reason"],
    )


_PUBLIC_COLUMNS = [c for c in _subs.c if c.name != "secret"]

# The delivery queue's statements, built once: the deliverer polls twice a second, and building and
# compiling this query each time held the event loop for about 2 ms.
_older = _dlv.alias("older")
_FREE = or_(_dlv.c.lease_until.is_(None), _dlv.c.lease_until < bindparam("b_now"))
_DUE = (
    select(
        _dlv.c.id,
        _dlv.c.subscription_id,
        _dlv.c.event_id,
        _dlv.c.event_type,
        _dlv.c.ordering_key,
        _dlv.c.attempts,
        _subs.c.url,
        _subs.c.secret,
        outbox_events.c.payload,
    )
    .join(_subs, _subs.c.id == _dlv.c.subscription_id)
    .join(outbox_events, outbox_events.c.id == _dlv.c.event_id)
    .where(
        _dlv.c.status == "pending",
        _dlv.c.next_attempt_at <= bindparam("b_now"),
        _FREE,
        _subs.c.status == "active",
        # Per-session order: nothing older of the same subscription and ordering key still pending.
        ~exists().where(
            _older.c.subscription_id == _dlv.c.subscription_id,
            _older.c.ordering_key == _dlv.c.ordering_key,
            _older.c.status == "pending",
            or_(
                _older.c.created_at < _dlv.c.created_at,
                and_(_older.c.created_at == _dlv.c.created_at, _older.c.event_id < _dlv.c.event_id),
            ),
        ),
    )
    .order_by(_dlv.c.next_attempt_at, _dlv.c.created_at, _dlv.c.event_id)
    .limit(bindparam("b_limit"))
)
_DUE_LOCKED = _DUE.with_for_update(of=_dlv, skip_locked=True)  # PostgreSQL: claimers skip each other
_LEASE = (
    update(_dlv)
    .where(_dlv.c.id == bindparam("b_id"), _dlv.c.status == "pending", _FREE)
    .values(lease_until=bindparam("b_lease"))
)


class WebhookStore:
    """Queries of the webhooks feature. Every method is one transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db
        """Every transaction runs through it; on SQLite reads go to their own connections, so they never
        queue behind the single writer connection (see `chambers.store.database`)."""
        self.dialect = db.dialect

    # subscriptions

    async def create(self, subscription: Subscription, sealed_secret: str) -> None:
        def create(conn: Connection) -> None:
            conn.execute(
                insert(_subs).values(
                    id=subscription.id,
                    org_id=subscription.org_id,
                    url=subscription.url,
                    event_types=subscription.event_types,
                    description=subscription.description,
                    secret=sealed_secret,
                    status=subscription.status,
                    consecutive_failures=0,
                    created_at=subscription.created_at,
                    updated_at=subscription.updated_at,
                )
            )

        await self.db.write(create)

    async def get(self, org_id: str, subscription_id: str) -> Subscription | None:
        query = select(*_PUBLIC_COLUMNS).where(_subs.c.id == subscription_id, _subs.c.org_id == org_id)

        return await read_one(self.db, query, _subscription)

    async def page(self, org_id: str, cursor: str | None, limit: int) -> Page[Subscription]:
        query = select(*_PUBLIC_COLUMNS).where(_subs.c.org_id == org_id)
        if cursor is not None:
            query = query.where(_subs.c.id < cursor)
        query = query.order_by(_subs.c.id.desc()).limit(limit + 1)

        rows = await read_all(self.db, query, _subscription)
        items = rows[:limit]
        return Page(items=items, next_cursor=items[-1].id if len(rows) > limit else None)

    async def update(
        self, org_id: str, subscription_id: str, now: datetime, **fields: Any
    ) -> Subscription | None:
        """Change the given columns. Re-enabling resets the failure count and makes waiting
        deliveries due at once; disabling keeps them pending until the subscription is enabled."""

        def change(conn: Connection) -> RowMapping | None:
            current = self._locked(conn, org_id, subscription_id)
            if current is None:
                return None
            values = dict(fields, updated_at=now)
            status = fields.get("status")
            if status == "active" and current["status"] != "active":
                values.update(consecutive_failures=0, disabled_at=None, disabled_reason=None)
                conn.execute(
                    update(_dlv)
                    .where(
                        _dlv.c.subscription_id == subscription_id,
                        _dlv.c.status == "pending",
                        _dlv.c.next_attempt_at > now,
                    )
                    .values(next_attempt_at=now)
                )
            elif status == "disabled" and current["status"] != "disabled":
                values.update(disabled_at=now, disabled_reason="disabled through the API")
            conn.execute(update(_subs).where(_subs.c.id == subscription_id).values(**values))
            changed = select(*_PUBLIC_COLUMNS).where(_subs.c.id == subscription_id)
            return conn.execute(changed).mappings().one()

        row = await self.db.write(change)
        return None if row is None else _subscription(row)

    async def set_secret(self, org_id: str, subscription_id: str, sealed_secret: str, now: datetime) -> bool:
        def change(conn: Connection) -> int:
            return conn.execute(
                update(_subs)
                .where(_subs.c.id == subscription_id, _subs.c.org_id == org_id)
                .values(secret=sealed_secret, updated_at=now)
            ).rowcount

        return await self.db.write(change) > 0

    async def delete(self, org_id: str, subscription_id: str) -> bool:
        """Remove the subscription with its queue and log (its outbox events stay)."""

        def remove(conn: Connection) -> bool:
            if self._locked(conn, org_id, subscription_id) is None:
                return False
            conn.execute(delete(_att).where(_att.c.subscription_id == subscription_id))
            conn.execute(delete(_dlv).where(_dlv.c.subscription_id == subscription_id))
            conn.execute(delete(_subs).where(_subs.c.id == subscription_id))
            return True

        return await self.db.write(remove)

    def _locked(self, conn: Connection, org_id: str, subscription_id: str) -> RowMapping | None:
        query = select(_subs.c.id, _subs.c.status).where(
            _subs.c.id == subscription_id, _subs.c.org_id == org_id
        )
        if self.dialect == "postgresql":
            query = query.with_for_update()
        return conn.execute(query).mappings().first()

    async def enqueue_test(
        self, org_id: str, subscription_id: str, event_type: str, payload: dict[str, Any], now: datetime
    ) -> tuple[str, str]:
        """An outbox event addressed to this one subscription; returns (event id, delivery id)."""
        event_id, delivery_id = new_id("evt"), new_id("dlv")

        def enqueue(conn: Connection) -> None:
            conn.execute(
                insert(outbox_events).values(
                    id=event_id,
                    org_id=org_id,
                    type=event_type,
                    session_id=None,
                    payload=payload,
                    created_at=now,
                )
            )
            conn.execute(
                insert(_dlv).values(
                    id=delivery_id,
                    subscription_id=subscription_id,
                    event_id=event_id,
                    event_type=event_type,
                    ordering_key=event_id,
                    status="pending",
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                )
            )

        await self.db.write(enqueue)
        return event_id, delivery_id

    async def attempts(self, subscription_id: str, cursor: str | None, limit: int) -> Page[Attempt]:
        """The delivery log, newest attempt first."""
        query = (
            select(_att, _dlv.c.status.label("delivery_status"))
            .join(_dlv, _dlv.c.id == _att.c.delivery_id)
            .where(_att.c.subscription_id == subscription_id)
        )
        if cursor is not None:
            query = query.where(_att.c.id < cursor)
        query = query.order_by(_att.c.id.desc()).limit(limit + 1)

        def fetch(conn: Connection) -> Sequence[RowMapping]:
            return conn.execute(query).mappings().all()

        rows = await self.db.read(fetch)
        items = [
            Attempt(
                id=r["id"],
                delivery_id=r["delivery_id"],
                event_id=r["event_id"],
                event_type=r["event_type"],
                attempt=r["attempt"],
                status_code=r["status_code"],
                error=r["error"],
                duration_ms=r["duration_ms"],
                next_retry_at=as_utc(r["next_retry_at"]) if r["next_retry_at"] is not None else None,
                created_at=as_utc(r["created_at"]),
                delivery_status=r["delivery_status"],
            )
            for r in rows[:limit]
        ]
        return Page(items=items, next_cursor=items[-1].id if len(rows) > limit else None)

    # the delivery queue

    async def claim(
        self,
        now: datetime,
        lease_until: datetime,
        limit: int,
        in_flight: Mapping[str, int] | None = None,
        per_subscription: int | None = None,
    ) -> list[DueDelivery]:
        """Lease up to `limit` due deliveries of active subscriptions.

        A delivery is due when it is pending, its next attempt time has come, nobody holds a live
        lease on it, and no older delivery of the same subscription and ordering key is still
        pending: per-session order holds even while an earlier event is being retried.
        With `per_subscription`, a subscription that already has that many deliveries in flight
        (`in_flight`, this process's count) gets no more, so one slow receiver cannot take every slot.
        """
        if limit <= 0:
            return []
        query = _DUE_LOCKED if self.dialect == "postgresql" else _DUE
        counts = dict(in_flight or {})
        full = [sid for sid, n in counts.items() if per_subscription is not None and n >= per_subscription]
        if full:
            query = query.where(_dlv.c.subscription_id.not_in(full))
        times = {"b_now": now, "b_lease": lease_until}
        wanted = {**times, "b_limit": limit if per_subscription is None else limit * 4}

        def claim(conn: Connection) -> list[DueDelivery]:
            claimed: list[DueDelivery] = []
            rows = conn.execute(query, wanted).mappings().all()
            for row in rows:
                if len(claimed) >= limit:
                    break
                taken = counts.get(row["subscription_id"], 0)
                if per_subscription is not None and taken >= per_subscription:
                    continue
                # The conditional update is the claim (on SQLite the only guard; on PostgreSQL the
                # row lock already holds it, and the condition costs nothing).
                result = conn.execute(_LEASE, {**times, "b_id": row["id"]})
                if result.rowcount == 0:
                    continue
                counts[row["subscription_id"]] = taken + 1
                claimed.append(
                    DueDelivery(
                        id=row["id"],
                        subscription_id=row["subscription_id"],
                        event_id=row["event_id"],
                        event_type=row["event_type"],
                        ordering_key=row["ordering_key"],
                        attempts=row["attempts"],
                        lease_until=lease_until,
                        url=row["url"],
                        sealed_secret=row["secret"],
                        payload=dict(row["payload"]),
                    )
                )
            return claimed

        return await self.db.write(claim)

    async def record(
        self,
        due: DueDelivery,
        result: AttemptResult,
        now: datetime,
        next_attempt_at: datetime | None,
        disable_after: int,
    ) -> Outcome | None:
        """Write an attempt's outcome while our lease stands: delivered, retried at
        `next_attempt_at`, or dead (None). A dead delivery counts as one more consecutive failure of
        its subscription, which is disabled at `disable_after`; a success resets the count.
        Returns what happened, or None when the lease was lost (or the subscription deleted) and
        nothing was written."""
        attempt = due.attempts + 1
        error = result.error[:_ERROR_LIMIT] if result.error else None
        outcome: Outcome
        if result.ok:
            outcome, status, retry_at = "delivered", "delivered", None
        elif next_attempt_at is None:
            outcome, status, retry_at = "dead", "dead", None
        else:
            outcome, status, retry_at = "retry", "pending", next_attempt_at
        values: dict[str, Any] = {
            "status": status,
            "attempts": attempt,
            "lease_until": None,
            "last_status_code": result.status_code,
            "last_error": error,
            "last_duration_ms": result.duration_ms,
        }
        if status == "delivered":
            values["delivered_at"] = now
        if retry_at is not None:
            values["next_attempt_at"] = retry_at

        def settle(conn: Connection) -> Outcome | None:
            changed = conn.execute(
                update(_dlv)
                .where(
                    _dlv.c.id == due.id,
                    _dlv.c.status == "pending",
                    _dlv.c.lease_until == due.lease_until,
                )
                .values(**values)
            )
            if changed.rowcount == 0:
                return None
            conn.execute(
                insert(_att).values(
                    id=new_id("att"),
                    delivery_id=due.id,
                    subscription_id=due.subscription_id,
                    event_id=due.event_id,
                    event_type=due.event_type,
                    attempt=attempt,
                    status_code=result.status_code,
                    error=error,
                    duration_ms=result.duration_ms,
                    next_retry_at=retry_at,
                    created_at=now,
                )
            )
            if status == "delivered":
                conn.execute(
                    update(_subs)
                    .where(_subs.c.id == due.subscription_id, _subs.c.consecutive_failures != 0)
                    .values(consecutive_failures=0)
                )
            elif status == "dead":
                conn.execute(
                    update(_subs)
                    .where(_subs.c.id == due.subscription_id)
                    .values(consecutive_failures=_subs.c.consecutive_failures + 1)
                )
                reason = (
                    f"{disable_after} consecutive failed deliveries; the last: "
                    f"{error or 'HTTP ' + str(result.status_code)}"
                )
                disabled = conn.execute(
                    update(_subs)
                    .where(
                        _subs.c.id == due.subscription_id,
                        _subs.c.status == "active",
                        _subs.c.consecutive_failures >= disable_after,
                    )
                    .values(
                        status="disabled",
                        disabled_at=now,
                        disabled_reason=reason[:_REASON_LIMIT],
                        updated_at=now,
                    )
                )
                if disabled.rowcount > 0:
                    return "disabled"
            return outcome

        return await self.db.write(settle)

    async def release(self, leases: Sequence[DueDelivery]) -> None:
        """Give leases back unused (shutdown): those deliveries are due again at once."""
        if not leases:
            return

        def give_back(conn: Connection) -> None:
            for due in leases:
                conn.execute(
                    update(_dlv)
                    .where(_dlv.c.id == due.id, _dlv.c.lease_until == due.lease_until)
                    .values(lease_until=None)
                )

        await self.db.write(give_back)

    async def prune(self, before: datetime, batch: int = 500) -> int:
        """Forget up to `batch` events made before `before` that no delivery still waits on, with their
        deliveries and attempts; returns how many events went. Pending deliveries (a receiver that is
        down, a paused subscription) keep their events however old."""
        waiting = exists().where(_dlv.c.event_id == outbox_events.c.id, _dlv.c.status == "pending")

        def forget(conn: Connection) -> int:
            ids = list(
                conn.execute(
                    select(outbox_events.c.id)
                    .where(outbox_events.c.created_at < before, ~waiting)
                    .order_by(outbox_events.c.created_at)
                    .limit(batch)
                )
                .scalars()
                .all()
            )
            if not ids:
                return 0
            deliveries = select(_dlv.c.id).where(_dlv.c.event_id.in_(ids))
            conn.execute(delete(_att).where(_att.c.delivery_id.in_(deliveries)))
            conn.execute(delete(_dlv).where(_dlv.c.event_id.in_(ids), _dlv.c.status != "pending"))
            conn.execute(delete(outbox_events).where(outbox_events.c.id.in_(ids)))
            return len(ids)

        return await self.db.write(forget)
