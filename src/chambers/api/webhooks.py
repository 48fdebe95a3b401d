"""`/events/v1`: webhook subscriptions, their delivery log, and the event-type catalog."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from chambers.api.auth import read_access, write_access
from chambers.core.clock import iso
from chambers.core.errors import InvalidRequest, Unavailable
from chambers.core.models import Principal
from chambers.webhooks.models import Attempt, Subscription
from chambers.webhooks.service import MAX_EVENT_TYPES, WebhookService

router = APIRouter(prefix="/events/v1", tags=["webhooks"])

Reader = Annotated[Principal, Depends(read_access)]
Writer = Annotated[Principal, Depends(write_access)]
Cursor = Annotated[str | None, Query(max_length=64)]
Limit = Annotated[int, Query(ge=1, le=100)]
Url = Annotated[StrictStr, Field(min_length=1, max_length=2000)]
EventTypes = Annotated[list[StrictStr], Field(max_length=MAX_EVENT_TYPES)]
Description = Annotated[StrictStr, Field(max_length=500)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateWebhook(_Strict):
    url: Url
    eventTypes: EventTypes | None = None
    description: Description | None = None


class UpdateWebhook(_Strict):
    url: Url | None = None
    eventTypes: EventTypes | None = None
    description: Description | None = None
    status: Literal["active", "disabled"] | None = None


class WebhookOut(BaseModel):
    id: str
    url: str
    eventTypes: list[str]
    description: str | None
    status: str
    consecutiveFailures: int
    disabledAt: str | None
    disabledReason: str | None
    createdAt: str
    updatedAt: str


class WebhookWithSecret(WebhookOut):
    secret: str


class WebhookList(BaseModel):
    data: list[WebhookOut]
    nextCursor: str | None


class TestSent(BaseModel):
    eventId: str
    deliveryId: str
    type: str


class AttemptOut(BaseModel):
    id: str
    deliveryId: str
    eventId: str
    eventType: str
    attempt: int
    statusCode: int | None
    error: str | None
    durationMs: int
    nextRetryAt: str | None
    createdAt: str
    deliveryStatus: str


class AttemptList(BaseModel):
    data: list[AttemptOut]
    nextCursor: str | None


class EventTypeOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    name: str
    description: str
    reserved: bool
    payload_schema: dict[str, Any] = Field(alias="schema")


class EventTypeList(BaseModel):
    data: list[EventTypeOut]


def webhook_out(subscription: Subscription) -> WebhookOut:
    return WebhookOut(
        id=subscription.id,
        url=subscription.url,
        eventTypes=subscription.event_types,
        description=subscription.description,
        status=subscription.status,
        consecutiveFailures=subscription.consecutive_failures,
        disabledAt=iso(subscription.disabled_at),
        disabledReason=subscription.disabled_reason,
        createdAt=iso(subscription.created_at) or "",
        updatedAt=iso(subscription.updated_at) or "",
    )


def with_secret(subscription: Subscription, secret: str) -> WebhookWithSecret:
    return WebhookWithSecret(**webhook_out(subscription).model_dump(), secret=secret)


def attempt_out(attempt: Attempt) -> AttemptOut:
    return AttemptOut(
        id=attempt.id,
        deliveryId=attempt.delivery_id,
        eventId=attempt.event_id,
        eventType=attempt.event_type,
        attempt=attempt.attempt,
        statusCode=attempt.status_code,
        error=attempt.error,
        durationMs=attempt.duration_ms,
        nextRetryAt=iso(attempt.next_retry_at),
        createdAt=iso(attempt.created_at) or "",
        deliveryStatus=attempt.delivery_status,
    )


def service_of(request: Request) -> WebhookService:
    webhooks = getattr(request.app.state.services, "webhooks", None)
    if webhooks is None:
        raise Unavailable("Webhooks are not available with this store")
    service: WebhookService = webhooks.service
    return service


@router.get("/event-types")
async def event_types(request: Request, principal: Reader) -> EventTypeList:
    """Every event type: its name, what it means, and the JSON Schema of its payload."""
    return EventTypeList(
        data=[
            EventTypeOut(name=e.name, description=e.description, reserved=e.reserved, schema=e.schema())
            for e in service_of(request).event_types()
        ]
    )


@router.post("/webhooks", status_code=201)
async def create_webhook(request: Request, principal: Writer, body: CreateWebhook) -> WebhookWithSecret:
    """Subscribe a URL to events (all types when `eventTypes` is empty or absent). The signing
    secret is in this response only; store it now (or rotate it later)."""
    subscription, secret = await service_of(request).create(
        principal, body.url, body.eventTypes, body.description
    )
    return with_secret(subscription, secret)


@router.get("/webhooks")
async def list_webhooks(
    request: Request, principal: Reader, cursor: Cursor = None, limit: Limit = 50
) -> WebhookList:
    """The organisation's subscriptions, newest first (without secrets)."""
    page = await service_of(request).page(principal, cursor, limit)
    return WebhookList(data=[webhook_out(s) for s in page.items], nextCursor=page.next_cursor)


@router.get("/webhooks/{webhook_id}")
async def get_webhook(request: Request, principal: Reader, webhook_id: str) -> WebhookOut:
    return webhook_out(await service_of(request).get(principal, webhook_id))


@router.patch("/webhooks/{webhook_id}")
async def update_webhook(
    request: Request, principal: Writer, webhook_id: str, body: UpdateWebhook
) -> WebhookOut:
    """Change the URL, event types, description or status; `active` re-enables a disabled one."""
    given = body.model_fields_set
    for name in ("url", "eventTypes", "status"):
        if name in given and getattr(body, name) is None:
            raise InvalidRequest(f"{name}: must not be null")
    changes: dict[str, Any] = {}
    if "url" in given:
        changes["url"] = body.url
    if "eventTypes" in given:
        changes["event_types"] = body.eventTypes
    if "description" in given:
        changes["description"] = body.description
    if "status" in given:
        changes["status"] = body.status
    return webhook_out(await service_of(request).update(principal, webhook_id, **changes))


@router.delete("/webhooks/{webhook_id}", status_code=204)
async def delete_webhook(request: Request, principal: Writer, webhook_id: str) -> Response:
    """Remove the subscription with its pending deliveries and its log."""
    await service_of(request).delete(principal, webhook_id)
    return Response(status_code=204)


@router.post("/webhooks/{webhook_id}/rotate-secret")
async def rotate_secret(request: Request, principal: Writer, webhook_id: str) -> WebhookWithSecret:
    """Replace the signing secret; the new one is in this response only and signs from now on."""
    subscription, secret = await service_of(request).rotate_secret(principal, webhook_id)
    return with_secret(subscription, secret)


@router.post("/webhooks/{webhook_id}/test", status_code=202)
async def send_test(request: Request, principal: Writer, webhook_id: str) -> TestSent:
    """Queue a `webhook.test` event for this subscription only."""
    event_id, delivery_id = await service_of(request).send_test(principal, webhook_id)
    return TestSent(eventId=event_id, deliveryId=delivery_id, type="webhook.test")


@router.get("/webhooks/{webhook_id}/deliveries")
async def deliveries(
    request: Request, principal: Reader, webhook_id: str, cursor: Cursor = None, limit: Limit = 50
) -> AttemptList:
    """Delivery attempts, newest first: event, attempt number, status code, error, duration, next retry."""
    page = await service_of(request).attempts(principal, webhook_id, cursor, limit)
    return AttemptList(data=[attempt_out(a) for a in page.items], nextCursor=page.next_cursor)
