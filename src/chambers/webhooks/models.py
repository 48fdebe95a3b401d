"""Records of the webhooks feature: subscriptions, due deliveries, attempts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

SubscriptionStatus = Literal["active", "disabled"]


@dataclass(frozen=True, slots=True)
class Subscription:
    """A webhook subscription as shown to its organisation (the secret is kept apart, on purpose)."""

    id: str
    org_id: str
    url: str
    event_types: list[str]
    description: str | None
    status: SubscriptionStatus
    consecutive_failures: int
    created_at: datetime
    updated_at: datetime
    disabled_at: datetime | None = None
    disabled_reason: str | None = None


@dataclass(frozen=True, slots=True)
class DueDelivery:
    """A delivery claimed by a deliverer, with everything needed to send it."""

    id: str
    subscription_id: str
    event_id: str
    event_type: str
    ordering_key: str
    attempts: int
    lease_until: datetime
    url: str
    sealed_secret: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one HTTP attempt came to."""

    ok: bool
    status_code: int | None
    error: str | None
    duration_ms: int


@dataclass(frozen=True, slots=True)
class Attempt:
    """One row of a subscription's delivery log."""

    id: str
    delivery_id: str
    event_id: str
    event_type: str
    attempt: int
    status_code: int | None
    error: str | None
    duration_ms: int
    next_retry_at: datetime | None
    created_at: datetime
    delivery_status: str
