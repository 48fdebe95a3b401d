"""WebhookService: the rules of subscriptions (per organisation), behind the `/events/v1` API."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from chambers.core import notices
from chambers.core.clock import iso, utcnow
from chambers.core.errors import Conflict, InvalidRequest, NotFound
from chambers.core.ids import new_id
from chambers.core.models import Page, Principal
from chambers.core.notices import CATALOG, EventType
from chambers.store.webhooks import WebhookStore
from chambers.webhooks.models import Attempt, Subscription, SubscriptionStatus
from chambers.webhooks.signing import SecretBox, new_secret
from chambers.webhooks.urls import validate_target

MAX_EVENT_TYPES = 100
_UNSET: Any = object()


def check_event_types(names: Sequence[str]) -> list[str]:
    """The list without duplicates (order kept); every name must be in the catalog."""
    unique = list(dict.fromkeys(names))
    unknown = [n for n in unique if n not in CATALOG]
    if unknown:
        raise InvalidRequest(
            f"eventTypes: unknown event type{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}"
            " (GET /events/v1/event-types lists them)"
        )
    if len(unique) > MAX_EVENT_TYPES:
        raise InvalidRequest(f"eventTypes: at most {MAX_EVENT_TYPES} types")
    return unique


class WebhookService:
    """Create, read, change, delete subscriptions; rotate secrets; send test events; read the log."""

    def __init__(
        self,
        store: WebhookStore,
        box: SecretBox,
        *,
        allow_private: bool,
        on_enqueued: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.box = box
        self.allow_private = allow_private
        self.on_enqueued = on_enqueued

    @staticmethod
    def event_types() -> list[EventType]:
        return list(CATALOG.values())

    async def create(
        self,
        principal: Principal,
        url: str,
        event_types: Sequence[str] | None = None,
        description: str | None = None,
    ) -> tuple[Subscription, str]:
        """A new active subscription and its secret (returned this once)."""
        types = check_event_types(event_types or [])
        await validate_target(url, self.allow_private)
        now = utcnow()
        subscription = Subscription(
            id=new_id("whk"),
            org_id=principal.org_id,
            url=url,
            event_types=types,
            description=description,
            status="active",
            consecutive_failures=0,
            created_at=now,
            updated_at=now,
        )
        secret = new_secret()
        await self.store.create(subscription, self.box.seal(secret))
        return subscription, secret

    async def get(self, principal: Principal, subscription_id: str) -> Subscription:
        """The caller's organisation's subscription, or NotFound (another org's ids don't leak)."""
        found = await self.store.get(principal.org_id, subscription_id)
        if found is None:
            raise NotFound("Webhook subscription not found")
        return found

    async def page(self, principal: Principal, cursor: str | None, limit: int) -> Page[Subscription]:
        return await self.store.page(principal.org_id, cursor, limit)

    async def update(
        self,
        principal: Principal,
        subscription_id: str,
        *,
        url: str = _UNSET,
        event_types: Sequence[str] = _UNSET,
        description: str | None = _UNSET,
        status: SubscriptionStatus = _UNSET,
    ) -> Subscription:
        """Change what is given; re-enabling resets the failure count and resumes waiting deliveries."""
        await self.get(principal, subscription_id)
        fields: dict[str, Any] = {}
        if event_types is not _UNSET:
            fields["event_types"] = check_event_types(event_types)
        if url is not _UNSET:
            fields["url"] = await validate_target(url, self.allow_private)
        if description is not _UNSET:
            fields["description"] = description
        if status is not _UNSET:
            fields["status"] = status
        updated = await self.store.update(principal.org_id, subscription_id, utcnow(), **fields)
        if updated is None:
            raise NotFound("Webhook subscription not found")
        if status == "active":
            self.on_enqueued()
        return updated

    async def delete(self, principal: Principal, subscription_id: str) -> None:
        """Remove the subscription, its pending deliveries and its log."""
        if not await self.store.delete(principal.org_id, subscription_id):
            raise NotFound("Webhook subscription not found")

    async def rotate_secret(self, principal: Principal, subscription_id: str) -> tuple[Subscription, str]:
        """A new secret, effective at once for every later attempt (retries included)."""
        secret = new_secret()
        if not await self.store.set_secret(
            principal.org_id, subscription_id, self.box.seal(secret), utcnow()
        ):
            raise NotFound("Webhook subscription not found")
        return await self.get(principal, subscription_id), secret

    async def send_test(self, principal: Principal, subscription_id: str) -> tuple[str, str]:
        """Queue a `webhook.test` event for this subscription only; returns (event id, delivery id)."""
        subscription = await self.get(principal, subscription_id)
        if subscription.status != "active":
            raise Conflict("This webhook subscription is disabled; enable it to send a test event")
        now = utcnow()
        payload = {"type": notices.TEST, "timestamp": iso(now), "data": {"webhookId": subscription.id}}
        ids = await self.store.enqueue_test(principal.org_id, subscription.id, notices.TEST, payload, now)
        self.on_enqueued()
        return ids

    async def attempts(
        self, principal: Principal, subscription_id: str, cursor: str | None, limit: int
    ) -> Page[Attempt]:
        await self.get(principal, subscription_id)
        return await self.store.attempts(subscription_id, cursor, limit)
