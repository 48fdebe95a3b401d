"""What the sync and async clients share: settings, and every endpoint as a `Call` (method, path, body,
how to read the answer), so each client only says how to send it.

Request bodies are built with the server's own pydantic models (`chambers.api.*`), so a request the
server would refuse for its shape fails here first, as a `BadRequest` with no status code. The models
of `/events/v1` and `/api` live in modules that import FastAPI; they are imported on first use only.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from chambers.api import schemas, wire
from chambers.client.errors import BadRequest, ChambersError, from_response, make_error

if TYPE_CHECKING:
    from chambers.api.agents import AgentDeleted, AgentList, AgentOut
    from chambers.api.audit import AuditPage
    from chambers.api.controller_chat import SessionList, ViewMessageList
    from chambers.api.grants import GrantList, GrantOut
    from chambers.api.login import LoggedOut, LoginOut, Me
    from chambers.api.users import UserList, UserOut
    from chambers.api.webhooks import (
        AttemptList,
        EventTypeList,
        TestSent,
        WebhookList,
        WebhookOut,
        WebhookWithSecret,
    )

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "CHAMBERS_URL"
KEY_ENV = "CHAMBERS_API_KEY"
USER_AGENT = "chambers-python"


class _Unset:
    """ "Not given" for PATCH fields, where `None` means "clear it"."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


@dataclass(frozen=True)
class Options:
    """Retry and reconnection behaviour; every client takes these as keyword arguments."""

    conflict_wait: float = 60.0
    """`send()`: at most this many seconds in total waiting on `409 TURN_CONFLICT` before raising it."""
    network_retries: int = 3
    """`send()`: retries after a connection error, with the same `Idempotency-Key`."""
    reconnect_attempts: int = 10
    """`stream()` and `respond()`: failed reconnections in a row before giving up."""
    reconnect_delay: float = 0.25
    """First wait before reconnecting, doubled after each failure..."""
    reconnect_max_delay: float = 5.0
    """...up to this."""
    stream_read_timeout: float | None = 60.0
    """A stream silent this long is treated as dropped (the server pings every 15 s by default)."""

    def backoff(self, failures: int) -> float:
        """Seconds to wait after `failures` failures in a row (0 for none)."""
        if failures <= 0:
            return 0.0
        return float(min(self.reconnect_max_delay, self.reconnect_delay * 2 ** (failures - 1)))


def resolve_url(base_url: str | None) -> str:
    return (base_url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")


def resolve_key(api_key: str | None) -> str | None:
    """The key given, else `$CHAMBERS_API_KEY`; `""` means none (sign in with a cookie instead)."""
    if api_key is not None:
        return api_key or None
    return os.environ.get(KEY_ENV) or None


def default_headers(api_key: str | None, base_url: str, extra: Mapping[str, str] | None) -> dict[str, str]:
    """Bearer auth with a key; without one (cookie sign-in on `/api`), this server's own Origin."""
    headers = {"User-Agent": USER_AGENT}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    else:
        url = httpx.URL(base_url)
        headers["Origin"] = f"{url.scheme}://{url.netloc.decode()}"
    headers.update(extra or {})
    return headers


def new_idempotency_key() -> str:
    """A fresh key for one logical send: every retry of that send reuses it."""
    return f"sdk-{uuid.uuid4().hex}"


def check(response: httpx.Response) -> None:
    """Raise the typed error of an error response (its body must have been read)."""
    if response.is_error:
        raise from_response(response)


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and how to read its answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    long: bool = False
    """No read timeout: the request stays open while a turn runs."""


def as_model(model: type[M]) -> Callable[[httpx.Response], M]:
    return lambda response: model.model_validate(response.json())


def _nothing(_response: httpx.Response) -> None:
    return None


def seg(value: str) -> str:
    """A path segment, escaped."""
    return quote(str(value), safe=":@")


def params(**given: Any) -> dict[str, Any]:
    """Query parameters without the ones left out; booleans as `true`/`false`."""
    return {
        k: ("true" if v else "false") if isinstance(v, bool) else v for k, v in given.items() if v is not None
    }


def body_of(schema: type[BaseModel], /, *, exclude_unset: bool = False, **fields: Any) -> dict[str, Any]:
    """A request body validated by the server's own model (UNSET fields left out)."""
    given = {k: v for k, v in fields.items() if v is not UNSET}
    try:
        built = schema(**given)
    except ValidationError as exc:
        raise BadRequest(describe(exc), code="INVALID_REQUEST") from None
    return built.model_dump(mode="json", exclude_unset=exclude_unset, exclude_none=not exclude_unset)


def describe(exc: ValidationError) -> str:
    """`parts.0.text: Value error, text must not be empty`, as the server words it."""
    found = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ())) or "body"
        found.append(f"{where}: {'unknown field' if err.get('type') == 'extra_forbidden' else err['msg']}")
    return "; ".join(found)


def texts(text: str | Sequence[str]) -> list[str]:
    return [text] if isinstance(text, str) else list(text)


def message_body(text: str | Sequence[str]) -> dict[str, Any]:
    parts = [{"type": "text", "text": t} for t in texts(text)]
    return body_of(schemas.MessageIn, parts=parts)


def idempotency(key: str | None) -> dict[str, str]:
    return {"Idempotency-Key": key} if key else {}


# --- /agent/v1/chat ---------------------------------------------------------------------------------------

CHATS = "/agent/v1/chat"


def chat_path(chat_id: str, *rest: str) -> str:
    return "/".join([CHATS, seg(chat_id), *rest])


def create_chat(title: str | None, model: str | None, idle_timeout_ms: int | None) -> Call[schemas.ChatOut]:
    body = body_of(schemas.CreateChat, title=title, model=model, idleTimeoutMs=idle_timeout_ms)
    return Call("POST", CHATS, as_model(schemas.ChatOut), body=body)


def list_chats(status: str | None, limit: int | None, cursor: str | None) -> Call[schemas.ChatList]:
    return Call("GET", CHATS, as_model(schemas.ChatList), params(status=status, limit=limit, cursor=cursor))


def get_chat(chat_id: str) -> Call[schemas.ChatOut]:
    return Call("GET", chat_path(chat_id), as_model(schemas.ChatOut))


def list_messages(chat_id: str) -> Call[schemas.MessageList]:
    return Call("GET", chat_path(chat_id, "messages"), as_model(schemas.MessageList))


def get_turn(chat_id: str, turn_id: str) -> Call[schemas.TurnOut]:
    return Call("GET", chat_path(chat_id, "turns", seg(turn_id)), as_model(schemas.TurnOut))


def send_message(chat_id: str, text: str | Sequence[str], key: str | None) -> Call[wire.MessageResponse]:
    return Call(
        "POST",
        chat_path(chat_id, "message"),
        as_model(wire.MessageResponse),
        body=message_body(text),
        headers=idempotency(key),
        long=True,
    )


def cancel(chat_id: str) -> Call[wire.CancelResult]:
    return Call("POST", chat_path(chat_id, "cancel"), as_model(wire.CancelResult), long=True)


def reply(chat_id: str, request_id: str, text: str) -> Call[wire.ReplyResult]:
    body = body_of(schemas.ReplyIn, text=text)
    return Call(
        "POST",
        chat_path(chat_id, "question", seg(request_id), "reply"),
        as_model(wire.ReplyResult),
        body=body,
    )


def end_chat(chat_id: str) -> Call[schemas.EndedChat]:
    return Call("DELETE", chat_path(chat_id), as_model(schemas.EndedChat), long=True)


def stream_headers(last_event_id: int | None) -> dict[str, str]:
    headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    return headers


# --- /events/v1 -------------------------------------------------------------------------------------------

HOOKS = "/events/v1/webhooks"


def create_webhook(
    url: str, event_types: Sequence[str] | None, description: str | None
) -> Call[WebhookWithSecret]:
    from chambers.api.webhooks import CreateWebhook, WebhookWithSecret

    types = list(event_types) if event_types is not None else None
    body = body_of(CreateWebhook, url=url, eventTypes=types, description=description)
    return Call("POST", HOOKS, as_model(WebhookWithSecret), body=body)


def list_webhooks(limit: int | None, cursor: str | None) -> Call[WebhookList]:
    from chambers.api.webhooks import WebhookList

    return Call("GET", HOOKS, as_model(WebhookList), params(limit=limit, cursor=cursor))


def get_webhook(webhook_id: str) -> Call[WebhookOut]:
    from chambers.api.webhooks import WebhookOut

    return Call("GET", f"{HOOKS}/{seg(webhook_id)}", as_model(WebhookOut))


def update_webhook(webhook_id: str, **changes: Any) -> Call[WebhookOut]:
    from chambers.api.webhooks import UpdateWebhook, WebhookOut

    if changes.get("eventTypes") not in (None, UNSET):
        changes["eventTypes"] = list(changes["eventTypes"])
    body = body_of(UpdateWebhook, exclude_unset=True, **changes)
    return Call("PATCH", f"{HOOKS}/{seg(webhook_id)}", as_model(WebhookOut), body=body)


def delete_webhook(webhook_id: str) -> Call[None]:
    return Call("DELETE", f"{HOOKS}/{seg(webhook_id)}", _nothing)


def rotate_secret(webhook_id: str) -> Call[WebhookWithSecret]:
    from chambers.api.webhooks import WebhookWithSecret

    return Call("POST", f"{HOOKS}/{seg(webhook_id)}/rotate-secret", as_model(WebhookWithSecret))


def test_webhook(webhook_id: str) -> Call[TestSent]:
    from chambers.api.webhooks import TestSent

    return Call("POST", f"{HOOKS}/{seg(webhook_id)}/test", as_model(TestSent))


def deliveries(webhook_id: str, limit: int | None, cursor: str | None) -> Call[AttemptList]:
    from chambers.api.webhooks import AttemptList

    return Call(
        "GET",
        f"{HOOKS}/{seg(webhook_id)}/deliveries",
        as_model(AttemptList),
        params(limit=limit, cursor=cursor),
    )


def event_types() -> Call[EventTypeList]:
    from chambers.api.webhooks import EventTypeList

    return Call("GET", "/events/v1/event-types", as_model(EventTypeList))


# --- /api (the agent controller) --------------------------------------------------------------------------


def controller_chat_body(
    agent_did: str, messages: str | Sequence[Mapping[str, Any] | BaseModel], session_id: str | None
) -> dict[str, Any]:
    from chambers.api.controller_chat import ChatIn

    if isinstance(messages, str):
        items: list[Any] = [{"role": "user", "content": messages}]
    else:
        items = [m.model_dump(exclude_none=True) if isinstance(m, BaseModel) else dict(m) for m in messages]
    return body_of(ChatIn, agentDid=agent_did, messages=items, sessionId=session_id)


def controller_chunk(data: str) -> str | ChambersError | None:
    """One `/api/chat` frame: a text chunk, an error, or None for `[DONE]` (and anything unreadable)."""
    if data.strip() == "[DONE]":
        return None
    try:
        payload = json.loads(data)
    except ValueError:
        return ""
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        error = payload["error"]
        return make_error(str(error.get("code") or "TURN_FAILED"), str(error.get("message") or "failed"))
    if isinstance(payload, dict) and isinstance(payload.get("chunk"), str):
        return str(payload["chunk"])
    return ""


def chat_sessions(
    agent_did: str | None, everyone: bool, limit: int | None, cursor: str | None
) -> Call[SessionList]:
    from chambers.api.controller_chat import SessionList

    query = params(agentDid=agent_did, all=everyone or None, limit=limit, cursor=cursor)
    return Call("GET", "/api/chat/sessions", as_model(SessionList), query)


def session_messages(session_id: str) -> Call[ViewMessageList]:
    from chambers.api.controller_chat import ViewMessageList

    return Call("GET", f"/api/chat/sessions/{seg(session_id)}/messages", as_model(ViewMessageList))


def create_agent(**fields: Any) -> Call[AgentOut]:
    from chambers.api.agents import AgentIn, AgentOut

    given = {k: v for k, v in fields.items() if v is not None}
    return Call("POST", "/api/agents", as_model(AgentOut), body=body_of(AgentIn, exclude_unset=True, **given))


def list_agents() -> Call[AgentList]:
    from chambers.api.agents import AgentList

    return Call("GET", "/api/agents", as_model(AgentList))


def get_agent(did: str) -> Call[AgentOut]:
    from chambers.api.agents import AgentOut

    return Call("GET", f"/api/agents/{seg(did)}", as_model(AgentOut))


def update_agent(did: str, **changes: Any) -> Call[AgentOut]:
    from chambers.api.agents import AgentOut, AgentPatch

    body = body_of(AgentPatch, exclude_unset=True, **changes)
    return Call("PATCH", f"/api/agents/{seg(did)}", as_model(AgentOut), body=body)


def delete_agent(did: str) -> Call[AgentDeleted]:
    from chambers.api.agents import AgentDeleted

    return Call("DELETE", f"/api/agents/{seg(did)}", as_model(AgentDeleted))


def create_user(email: str, password: str, role: str, name: str | None) -> Call[UserOut]:
    from chambers.api.users import UserIn, UserOut

    body = body_of(UserIn, email=email, password=password, role=role, name=name)
    return Call("POST", "/api/users", as_model(UserOut), body=body)


def list_users() -> Call[UserList]:
    from chambers.api.users import UserList

    return Call("GET", "/api/users", as_model(UserList))


def disable_user(user_id: str) -> Call[UserOut]:
    from chambers.api.users import UserOut

    return Call("DELETE", f"/api/users/{seg(user_id)}", as_model(UserOut))


def create_grant(
    agent_did: str, subject: str, capabilities: Sequence[str], expires_at: Any
) -> Call[GrantOut]:
    from chambers.api.grants import GrantIn, GrantOut

    body = body_of(
        GrantIn,
        exclude_unset=True,
        agentDid=agent_did,
        subject=subject,
        capabilities=list(capabilities),
        expiresAt=UNSET if expires_at is None else expires_at,
    )
    return Call("POST", "/api/grants", as_model(GrantOut), body=body)


def list_grants(agent_did: str | None, subject: str | None) -> Call[GrantList]:
    from chambers.api.grants import GrantList

    return Call("GET", "/api/grants", as_model(GrantList), params(agentDid=agent_did, subject=subject))


def revoke_grant(grant_id: str) -> Call[GrantOut]:
    from chambers.api.grants import GrantOut

    return Call("DELETE", f"/api/grants/{seg(grant_id)}", as_model(GrantOut))


def audit(**filters: Any) -> Call[AuditPage]:
    from chambers.api.audit import AuditPage

    for name in ("since", "until"):
        if filters.get(name) is not None and not isinstance(filters[name], str):
            filters[name] = filters[name].isoformat()
    query = params(
        agentDid=filters.get("agent_did"),
        subject=filters.get("subject"),
        sessionId=filters.get("session_id"),
        since=filters.get("since"),
        until=filters.get("until"),
        limit=filters.get("limit"),
        cursor=filters.get("cursor"),
    )
    return Call("GET", "/api/audit", as_model(AuditPage), query)


def login(email: str, password: str) -> Call[LoginOut]:
    from chambers.api.login import LoginIn, LoginOut

    return Call(
        "POST", "/api/auth/login", as_model(LoginOut), body=body_of(LoginIn, email=email, password=password)
    )


def logout() -> Call[LoggedOut]:
    from chambers.api.login import LoggedOut

    return Call("POST", "/api/auth/logout", as_model(LoggedOut))


def me() -> Call[Me]:
    from chambers.api.login import Me

    return Call("GET", "/api/auth/me", as_model(Me))


# --- turn-scoped filtering of the session stream ---------------------------------------------------------


def belongs_to(event: wire.ChatEvent, turn_id: str) -> bool:
    """Whether a session-stream event is part of `turn_id` (a gap notice always is: it concerns all)."""
    if isinstance(event, wire.StreamGap):
        return True
    return getattr(event, "turnId", None) == turn_id


def ends_session(event: wire.ChatEvent) -> bool:
    return isinstance(event, wire.SessionStatus) and event.status == "ended"


def ends_turn(event: wire.ChatEvent, turn_id: str | None) -> bool:
    return isinstance(event, wire.TurnCompleted) and (turn_id is None or event.turnId == turn_id)


@dataclass
class Cursor:
    """Where a stream is: the last event id seen, and the turn it follows (if any)."""

    last_event_id: int | None = None
    turn_id: str | None = None

    def saw(self, event: wire.ChatEvent) -> None:
        if event.id is not None:
            self.last_event_id = event.id
