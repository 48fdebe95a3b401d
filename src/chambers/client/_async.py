"""The asynchronous client, `chambers.AsyncClient`: the same surface as `Client`, awaited.

async with AsyncClient() as client:
    chat = await client.chats.create()
    answer = await chat.send("Hello!")
    async with await chat.respond("Count to five") as events:
        async for event in events:
            ...
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from httpx_sse import EventSource
from pydantic import BaseModel

from chambers.api import schemas, wire
from chambers.client import _base as b
from chambers.client.errors import (
    APIConnectionError,
    ChambersError,
    Overloaded,
    ServerError,
    TurnConflict,
    connection_error,
)

if TYPE_CHECKING:
    from datetime import datetime

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
UNSET = b.UNSET


class AsyncClient:
    """The async twin of `chambers.Client`; the same arguments, every call awaited."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        conflict_wait: float = 60.0,
        network_retries: int = 3,
        reconnect_attempts: int = 10,
        reconnect_delay: float = 0.25,
        reconnect_max_delay: float = 5.0,
        stream_read_timeout: float | None = 60.0,
    ) -> None:
        self.base_url = b.resolve_url(base_url)
        self.api_key = b.resolve_key(api_key)
        self.options = b.Options(
            conflict_wait=conflict_wait,
            network_retries=network_retries,
            reconnect_attempts=reconnect_attempts,
            reconnect_delay=reconnect_delay,
            reconnect_max_delay=reconnect_max_delay,
            stream_read_timeout=stream_read_timeout,
        )
        self.http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=b.default_headers(self.api_key, self.base_url, headers),
            timeout=timeout,
            transport=transport,
        )
        self.chats = AsyncChats(self)
        self.webhooks = AsyncWebhooks(self)
        self.controller = AsyncController(self)

    async def _request(self, call: b.Call[Any]) -> httpx.Response:
        timeout: Any = httpx.USE_CLIENT_DEFAULT
        if call.long:
            timeout = httpx.Timeout(self.http.timeout.connect, read=None)
        try:
            response = await self.http.request(
                call.method,
                call.path,
                params=call.params,
                json=call.body,
                headers=call.headers,
                timeout=timeout,
            )
        except httpx.TransportError as exc:
            raise connection_error(exc, f"{call.method} {call.path}") from exc
        b.check(response)
        return response

    async def _run(self, call: b.Call[T]) -> T:
        return call.parse(await self._request(call))

    @asynccontextmanager
    async def _open_stream(
        self, method: str, path: str, *, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[httpx.Response]:
        timeout = httpx.Timeout(self.http.timeout.connect, read=self.options.stream_read_timeout)
        async with self.http.stream(
            method, path, json=body, headers={**b.stream_headers(None), **(headers or {})}, timeout=timeout
        ) as response:
            if response.is_error:
                await response.aread()
                b.check(response)
            yield response

    async def _open_first(
        self, method: str, path: str, *, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> tuple[AsyncExitStack, httpx.Response]:
        stack = AsyncExitStack()
        try:
            response = await stack.enter_async_context(
                self._open_stream(method, path, body=body, headers=headers)
            )
        except httpx.TransportError as exc:
            await stack.aclose()
            raise connection_error(exc, f"{method} {path}") from exc
        except BaseException:
            await stack.aclose()
            raise
        return stack, response

    def chat(self, chat_id: str) -> AsyncChat:
        """A handle on an existing session, without a request."""
        return AsyncChat(self, chat_id)

    async def event_types(self) -> EventTypeList:
        return await self._run(b.event_types())

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class AsyncEventStream(AsyncIterator[wire.ChatEvent]):
    """Typed events of `respond` or `stream` (`async for`); `aclose()` it or use `async with`."""

    def __init__(
        self,
        events: AsyncGenerator[wire.ChatEvent, None],
        cursor: b.Cursor,
        first: AsyncExitStack | None,
    ) -> None:
        self._events = events
        self._cursor = cursor
        self._first = first

    @property
    def turn_id(self) -> str | None:
        return self._cursor.turn_id

    @property
    def last_event_id(self) -> int | None:
        return self._cursor.last_event_id

    def __aiter__(self) -> AsyncEventStream:
        return self

    async def __anext__(self) -> wire.ChatEvent:
        return await self._events.__anext__()

    async def until_turn_completed(self) -> list[wire.ChatEvent]:
        seen: list[wire.ChatEvent] = []
        async for event in self:
            seen.append(event)
            if isinstance(event, wire.TurnCompleted):
                break
        return seen

    async def aclose(self) -> None:
        await self._events.aclose()
        if self._first is not None:
            await self._first.aclose()

    async def __aenter__(self) -> AsyncEventStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class AsyncControllerReply(AsyncIterator[str]):
    """The answer of `/api/chat` as text chunks, with `session_id` and `turn_id`."""

    def __init__(self, stack: AsyncExitStack, response: httpx.Response) -> None:
        self._stack = stack
        self.response = response
        self.session_id: str | None = response.headers.get("x-session-id")
        self.turn_id: str | None = response.headers.get("x-turn-id")
        self._chunks = self._read()

    async def _read(self) -> AsyncGenerator[str, None]:
        try:
            async for sse in EventSource(self.response).aiter_sse():
                item = b.controller_chunk(sse.data)
                if item is None:
                    return
                if isinstance(item, ChambersError):
                    raise item
                if item:
                    yield item
        except httpx.TransportError as exc:
            raise connection_error(exc, "the /api/chat stream broke") from exc
        finally:
            await self._stack.aclose()

    def __aiter__(self) -> AsyncControllerReply:
        return self

    async def __anext__(self) -> str:
        return await self._chunks.__anext__()

    async def text(self) -> str:
        return "".join([chunk async for chunk in self])

    async def aclose(self) -> None:
        await self._chunks.aclose()
        await self._stack.aclose()

    async def __aenter__(self) -> AsyncControllerReply:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class AsyncChats:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(
        self, *, title: str | None = None, model: str | None = None, idle_timeout_ms: int | None = None
    ) -> AsyncChat:
        info = await self._client._run(b.create_chat(title, model, idle_timeout_ms))
        return AsyncChat(self._client, info.id, info)

    async def list(
        self, *, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> schemas.ChatList:
        return await self._client._run(b.list_chats(status, limit, cursor))

    async def iter(
        self, *, status: str | None = None, page_size: int = 100
    ) -> AsyncIterator[schemas.ChatOut]:
        cursor: str | None = None
        while True:
            page = await self.list(status=status, limit=page_size, cursor=cursor)
            for info in page.data:
                yield info
            if not page.nextCursor:
                return
            cursor = page.nextCursor

    async def get(self, chat_id: str) -> AsyncChat:
        info = await self._client._run(b.get_chat(chat_id))
        return AsyncChat(self._client, info.id, info)

    async def messages(self, chat_id: str) -> schemas.MessageList:
        return await self._client._run(b.list_messages(chat_id))

    async def turn(self, chat_id: str, turn_id: str) -> schemas.TurnOut:
        return await self._client._run(b.get_turn(chat_id, turn_id))


class AsyncChat:
    """One session (async). See `chambers.client.Chat` for what each method does."""

    def __init__(self, client: AsyncClient, chat_id: str, info: schemas.ChatOut | None = None) -> None:
        self._client = client
        self.id = chat_id
        self.info = info

    def __repr__(self) -> str:
        return f"AsyncChat({self.id!r})"

    async def refresh(self) -> schemas.ChatOut:
        self.info = await self._client._run(b.get_chat(self.id))
        return self.info

    async def messages(self) -> schemas.MessageList:
        return await self._client._run(b.list_messages(self.id))

    async def turn(self, turn_id: str) -> schemas.TurnOut:
        return await self._client._run(b.get_turn(self.id, turn_id))

    async def message(
        self, text: str | Sequence[str], *, idempotency_key: str | None = None
    ) -> wire.MessageResponse:
        return await self._client._run(b.send_message(self.id, text, idempotency_key))

    async def send(
        self,
        text: str | Sequence[str],
        *,
        idempotency_key: str | None = None,
        conflict_wait: float | None = None,
        on_conflict: Callable[[TurnConflict], None] | None = None,
    ) -> wire.MessageResponse:
        """`Chat.send`, awaited: waits out `TURN_CONFLICT` and `OVERLOADED`, retries connection errors."""
        options = self._client.options
        key = idempotency_key or b.new_idempotency_key()
        budget = options.conflict_wait if conflict_wait is None else conflict_wait
        deadline = time.monotonic() + budget
        failures = 0
        while True:
            try:
                return await self.message(text, idempotency_key=key)
            except (TurnConflict, Overloaded) as exc:
                wait = min(max(exc.retry_after if exc.retry_after is not None else 2.0, 0.05), 30.0)
                if time.monotonic() + wait > deadline:
                    raise
                if on_conflict is not None and isinstance(exc, TurnConflict):
                    on_conflict(exc)
                await asyncio.sleep(wait)  # what the server asked for (Retry-After)
            except APIConnectionError:
                failures += 1
                if failures > options.network_retries:
                    raise
                await asyncio.sleep(options.backoff(failures))

    async def respond(
        self, text: str | Sequence[str], *, idempotency_key: str | None = None, resume: bool = True
    ) -> AsyncEventStream:
        key = idempotency_key or b.new_idempotency_key()
        stack, response = await self._client._open_first(
            "POST", b.chat_path(self.id, "respond"), body=b.message_body(text), headers=b.idempotency(key)
        )
        cursor = b.Cursor(turn_id=response.headers.get("x-turn-id"))
        return AsyncEventStream(self._respond(cursor, stack, response, resume), cursor, stack)

    async def _respond(
        self, cursor: b.Cursor, stack: AsyncExitStack, response: httpx.Response, resume: bool
    ) -> AsyncGenerator[wire.ChatEvent, None]:
        problem: Exception | None = None
        try:
            async with stack:
                async for sse in EventSource(response).aiter_sse():
                    event = wire.parse_event(sse.event, sse.data, sse.id)
                    cursor.saw(event)
                    yield event
                    if b.ends_turn(event, cursor.turn_id):
                        return
        except httpx.TransportError as exc:
            problem = exc
        if not resume or cursor.turn_id is None:
            if problem is not None:
                raise connection_error(problem, "the respond stream broke")
            return
        if cursor.last_event_id is None:
            cursor.last_event_id = 0
        async for event in self._follow(cursor, None, cursor.turn_id):
            yield event

    async def stream(self, last_event_id: int | None = None) -> AsyncEventStream:
        cursor = b.Cursor(last_event_id=last_event_id)
        stack, response = await self._client._open_first(
            "GET", b.chat_path(self.id, "stream"), headers=b.stream_headers(last_event_id)
        )
        return AsyncEventStream(self._follow(cursor, (stack, response), None), cursor, stack)

    async def follow_turn(self, turn_id: str, last_event_id: int = 0) -> AsyncEventStream:
        """One turn's events from the session feed, up to its `turn.completed` (see `Chat.follow_turn`)."""
        cursor = b.Cursor(last_event_id=last_event_id, turn_id=turn_id)
        stack, response = await self._client._open_first(
            "GET", b.chat_path(self.id, "stream"), headers=b.stream_headers(last_event_id)
        )
        return AsyncEventStream(self._follow(cursor, (stack, response), turn_id), cursor, stack)

    async def _follow(
        self,
        cursor: b.Cursor,
        first: tuple[AsyncExitStack, httpx.Response] | None,
        turn_id: str | None,
    ) -> AsyncGenerator[wire.ChatEvent, None]:
        options = self._client.options
        path = b.chat_path(self.id, "stream")
        failures = 0
        while True:
            received = False
            problem: Exception | None = None
            try:
                async with AsyncExitStack() as stack:
                    if first is not None:
                        await stack.enter_async_context(first[0])
                        response, first = first[1], None
                    else:
                        response = await stack.enter_async_context(
                            self._client._open_stream(
                                "GET", path, headers=b.stream_headers(cursor.last_event_id)
                            )
                        )
                    async for sse in EventSource(response).aiter_sse():
                        event = wire.parse_event(sse.event, sse.data, sse.id)
                        received, failures = True, 0
                        cursor.saw(event)
                        if turn_id is not None and not b.belongs_to(event, turn_id):
                            if b.ends_session(event):
                                return
                            continue
                        yield event
                        if b.ends_session(event) or (turn_id is not None and b.ends_turn(event, turn_id)):
                            return
                if (await self.refresh()).status == "ended":
                    return
            except (httpx.TransportError, APIConnectionError, ServerError) as exc:
                problem = exc
            if not received:
                failures += 1
            if failures > options.reconnect_attempts:
                raise APIConnectionError(
                    f"lost the event stream of {self.id} after {failures} attempts: {problem or 'closed'}",
                    code="CONNECTION_ERROR",
                ) from problem
            await asyncio.sleep(options.backoff(failures))  # reconnection backoff

    async def cancel(self) -> wire.CancelResult:
        return await self._client._run(b.cancel(self.id))

    async def reply(self, request_id: str, text: str) -> wire.ReplyResult:
        return await self._client._run(b.reply(self.id, request_id, text))

    async def end(self) -> schemas.EndedChat:
        return await self._client._run(b.end_chat(self.id))


class AsyncWebhooks:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(
        self, url: str, *, event_types: Sequence[str] | None = None, description: str | None = None
    ) -> WebhookWithSecret:
        return await self._client._run(b.create_webhook(url, event_types, description))

    async def list(self, *, limit: int | None = None, cursor: str | None = None) -> WebhookList:
        return await self._client._run(b.list_webhooks(limit, cursor))

    async def get(self, webhook_id: str) -> WebhookOut:
        return await self._client._run(b.get_webhook(webhook_id))

    async def update(
        self,
        webhook_id: str,
        *,
        url: str = UNSET,
        event_types: Sequence[str] = UNSET,
        description: str | None = UNSET,
        status: str = UNSET,
    ) -> WebhookOut:
        changes = {"url": url, "eventTypes": event_types, "description": description, "status": status}
        return await self._client._run(b.update_webhook(webhook_id, **changes))

    async def delete(self, webhook_id: str) -> None:
        await self._client._run(b.delete_webhook(webhook_id))

    async def rotate_secret(self, webhook_id: str) -> WebhookWithSecret:
        return await self._client._run(b.rotate_secret(webhook_id))

    async def test(self, webhook_id: str) -> TestSent:
        return await self._client._run(b.test_webhook(webhook_id))

    async def deliveries(
        self, webhook_id: str, *, limit: int | None = None, cursor: str | None = None
    ) -> AttemptList:
        return await self._client._run(b.deliveries(webhook_id, limit, cursor))


class AsyncController:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self.agents = AsyncAgents(client)
        self.users = AsyncUsers(client)
        self.grants = AsyncGrants(client)

    async def chat(
        self,
        agent_did: str,
        messages: str | Sequence[Mapping[str, Any] | BaseModel],
        session_id: str | None = None,
    ) -> AsyncControllerReply:
        body = b.controller_chat_body(agent_did, messages, session_id)
        stack, response = await self._client._open_first("POST", "/api/chat", body=body)
        return AsyncControllerReply(stack, response)

    async def sessions(
        self,
        agent_did: str | None = None,
        *,
        everyone: bool = False,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> SessionList:
        return await self._client._run(b.chat_sessions(agent_did, everyone, limit, cursor))

    async def session_messages(self, session_id: str) -> ViewMessageList:
        return await self._client._run(b.session_messages(session_id))

    async def audit(
        self,
        *,
        agent_did: str | None = None,
        subject: str | None = None,
        session_id: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> AuditPage:
        return await self._client._run(
            b.audit(
                agent_did=agent_did,
                subject=subject,
                session_id=session_id,
                since=since,
                until=until,
                limit=limit,
                cursor=cursor,
            )
        )

    async def login(self, email: str, password: str) -> LoginOut:
        return await self._client._run(b.login(email, password))

    async def logout(self) -> LoggedOut:
        return await self._client._run(b.logout())

    async def me(self) -> Me:
        return await self._client._run(b.me())


class AsyncAgents:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(
        self,
        name: str,
        *,
        model: str | None = None,
        system_prompt: str | None = None,
        tools: Sequence[str] | None = None,
        sandbox: Mapping[str, Any] | None = None,
        policy: Mapping[str, Any] | None = None,
    ) -> AgentOut:
        return await self._client._run(
            b.create_agent(
                name=name,
                model=model,
                systemPrompt=system_prompt,
                tools=list(tools) if tools is not None else None,
                sandbox=dict(sandbox) if sandbox is not None else None,
                policy=dict(policy) if policy is not None else None,
            )
        )

    async def list(self) -> AgentList:
        return await self._client._run(b.list_agents())

    async def get(self, did: str) -> AgentOut:
        return await self._client._run(b.get_agent(did))

    async def update(
        self,
        did: str,
        *,
        name: str = UNSET,
        model: str | None = UNSET,
        system_prompt: str | None = UNSET,
        tools: Sequence[str] | None = UNSET,
        sandbox: Mapping[str, Any] | None = UNSET,
        policy: Mapping[str, Any] | None = UNSET,
    ) -> AgentOut:
        return await self._client._run(
            b.update_agent(
                did,
                name=name,
                model=model,
                systemPrompt=system_prompt,
                tools=list(tools) if tools not in (None, UNSET) else tools,
                sandbox=dict(sandbox) if sandbox not in (None, UNSET) else sandbox,
                policy=dict(policy) if policy not in (None, UNSET) else policy,
            )
        )

    async def delete(self, did: str) -> AgentDeleted:
        return await self._client._run(b.delete_agent(did))


class AsyncUsers:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(
        self, email: str, password: str, *, role: str = "member", name: str | None = None
    ) -> UserOut:
        return await self._client._run(b.create_user(email, password, role, name))

    async def list(self) -> UserList:
        return await self._client._run(b.list_users())

    async def disable(self, user_id: str) -> UserOut:
        return await self._client._run(b.disable_user(user_id))


class AsyncGrants:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(
        self,
        agent_did: str,
        subject: str,
        *,
        capabilities: Sequence[str] = ("chat",),
        expires_at: datetime | str | None = None,
    ) -> GrantOut:
        return await self._client._run(b.create_grant(agent_did, subject, capabilities, expires_at))

    async def list(self, *, agent_did: str | None = None, subject: str | None = None) -> GrantList:
        return await self._client._run(b.list_grants(agent_did, subject))

    async def revoke(self, grant_id: str) -> GrantOut:
        return await self._client._run(b.revoke_grant(grant_id))
