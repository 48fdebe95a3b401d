"""UTC time, and its one wire format: ISO 8601 with milliseconds and `Z`."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def iso(value: datetime | None) -> str | None:
    """`2026-03-03T21:23:18.434Z`, or None."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    # isoformat, not strftime: half the cost, for every event and row written out
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def as_utc(value: datetime) -> datetime:
    """Re-attach UTC to a naive datetime read back from SQLite."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
