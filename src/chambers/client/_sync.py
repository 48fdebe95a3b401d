"""The synchronous client, `chambers.Client`."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
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


class Client:
    """A client of one Chambers server, both of its surfaces (`/agent/v1` and `/events/v1`, and `/api`).

        from chambers import Client

        with Client("http://127.0.0.1:8000", api_key="chk_...") as client:
            chat = client.chats.create(title="Contract review")
            answer = chat.send("Summarise the contract.")
            print(answer.text, answer.usage.costMicros)

    `base_url` defaults to `$CHAMBERS_URL` (else http://127.0.0.1:8000) and `api_key` to
    `$CHAMBERS_API_KEY`. Without a key, sign in on `/api` with `client.controller.login(...)`.
    The keyword arguments after `timeout` tune retries and reconnection (see `Options`).
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
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
        self.http = httpx.Client(
            base_url=self.base_url,
            headers=b.default_headers(self.api_key, self.base_url, headers),
            timeout=timeout,
            transport=transport,
        )
        """The underlying `httpx.Client` (its cookie jar holds an `/api` sign-in)."""
        self.chats = Chats(self)
        self.webhooks = Webhooks(self)
        self.controller = Controller(self)

    # plumbing

    def _request(self, call: b.Call[Any]) -> httpx.Response:
        timeout: Any = httpx.USE_CLIENT_DEFAULT
        if call.long:
            timeout = httpx.Timeout(self.http.timeout.connect, read=None)
        try:
            response = self.http.request(
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

    def _run(self, call: b.Call[T]) -> T:
        return call.parse(self._request(call))

    @contextmanager
    def _open_stream(
        self, method: str, path: str, *, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> Iterator[httpx.Response]:
        """An open SSE response; an error status raises its typed error (transport errors pass through)."""
        timeout = httpx.Timeout(self.http.timeout.connect, read=self.options.stream_read_timeout)
        with self.http.stream(
            method, path, json=body, headers={**b.stream_headers(None), **(headers or {})}, timeout=timeout
        ) as response:
            if response.is_error:
                response.read()
                b.check(response)
            yield response

    def _open_first(
        self, method: str, path: str, *, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> tuple[ExitStack, httpx.Response]:
        stack = ExitStack()
        try:
            response = stack.enter_context(self._open_stream(method, path, body=body, headers=headers))
        except httpx.TransportError as exc:
            stack.close()
            raise connection_error(exc, f"{method} {path}") from exc
        except BaseException:
            stack.close()
            raise
        return stack, response

    # the client

    def chat(self, chat_id: str) -> Chat:
        """A handle on an existing session, without a request (see `chats.get` to fetch it)."""
        return Chat(self, chat_id)

    def event_types(self) -> EventTypeList:
        """Every webhook event type with its description and JSON Schema (`GET /events/v1/event-types`)."""
        return self._run(b.event_types())

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# --- streams ----------------------------------------------------------------------------------------------


class EventStream(Iterator[wire.ChatEvent]):
    """Typed events of `respond` or `stream`; iterate it, and close it (or use `with`) when done.

    `turn_id` is the turn a `respond` runs; `last_event_id` the number of the last event read (pass it
    to `chat.stream(last_event_id=...)` to go on later from there).
    """

    def __init__(
        self, events: Generator[wire.ChatEvent, None, None], cursor: b.Cursor, first: ExitStack | None
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

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> wire.ChatEvent:
        return next(self._events)

    def until_turn_completed(self) -> list[wire.ChatEvent]:
        """Read up to and including the next `turn.completed` (or the end of the stream)."""
        seen: list[wire.ChatEvent] = []
        for event in self:
            seen.append(event)
            if isinstance(event, wire.TurnCompleted):
                break
        return seen

    def close(self) -> None:
        self._events.close()
        if self._first is not None:
            self._first.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class ControllerReply(Iterator[str]):
    """The answer of `/api/chat` as text chunks. `session_id` (from `X-Session-Id`) and `turn_id` are
    known as soon as the call returns; an error frame in the stream raises its typed error."""

    def __init__(self, stack: ExitStack, response: httpx.Response) -> None:
        self._stack = stack
        self.response = response
        self.session_id: str | None = response.headers.get("x-session-id")
        self.turn_id: str | None = response.headers.get("x-turn-id")
        self._chunks = self._read()

    def _read(self) -> Generator[str, None, None]:
        try:
            for sse in EventSource(self.response).iter_sse():
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
            self._stack.close()

    def __iter__(self) -> ControllerReply:
        return self

    def __next__(self) -> str:
        return next(self._chunks)

    def text(self) -> str:
        """Read the rest of the answer and return it whole."""
        return "".join(self)

    def close(self) -> None:
        """Stop reading (the turn goes on in the server)."""
        self._chunks.close()
        self._stack.close()

    def __enter__(self) -> ControllerReply:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# --- /agent/v1/chat ---------------------------------------------------------------------------------------


class Chats:
    """`client.chats`: create, list and fetch sessions."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def create(
        self, *, title: str | None = None, model: str | None = None, idle_timeout_ms: int | None = None
    ) -> Chat:
        """Create a session and return its handle: `client.chats.create(model="openai/gpt-4o")`."""
        info = self._client._run(b.create_chat(title, model, idle_timeout_ms))
        return Chat(self._client, info.id, info)

    def list(
        self, *, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> schemas.ChatList:
        """One page of the organisation's sessions, newest first; pass `nextCursor` back as `cursor`."""
        return self._client._run(b.list_chats(status, limit, cursor))

    def iter(self, *, status: str | None = None, page_size: int = 100) -> Iterator[schemas.ChatOut]:
        """Every session, page after page: `for info in client.chats.iter(status="active"): ...`."""
        cursor: str | None = None
        while True:
            page = self.list(status=status, limit=page_size, cursor=cursor)
            yield from page.data
            if not page.nextCursor:
                return
            cursor = page.nextCursor

    def get(self, chat_id: str) -> Chat:
        """Fetch a session; its state is in `chat.info`."""
        info = self._client._run(b.get_chat(chat_id))
        return Chat(self._client, info.id, info)

    def messages(self, chat_id: str) -> schemas.MessageList:
        return self._client._run(b.list_messages(chat_id))

    def turn(self, chat_id: str, turn_id: str) -> schemas.TurnOut:
        return self._client._run(b.get_turn(chat_id, turn_id))


class Chat:
    """One session. `info` is its last fetched state (`refresh()` updates it).

    chat = client.chats.create()
    print(chat.send("Hello!").text)              # waits for the answer
    with chat.respond("Count to five") as events:  # or stream the turn
        for event in events:
            if isinstance(event, MessagePartUpdated) and event.delta:
                print(event.delta, end="", flush=True)
    """

    def __init__(self, client: Client, chat_id: str, info: schemas.ChatOut | None = None) -> None:
        self._client = client
        self.id = chat_id
        self.info = info

    def __repr__(self) -> str:
        return f"Chat({self.id!r})"

    def refresh(self) -> schemas.ChatOut:
        """Fetch the session again (`GET /agent/v1/chat/:id`)."""
        self.info = self._client._run(b.get_chat(self.id))
        return self.info

    def messages(self) -> schemas.MessageList:
        """The conversation, oldest first."""
        return self._client._run(b.list_messages(self.id))

    def turn(self, turn_id: str) -> schemas.TurnOut:
        """One turn: status, pending questions, error, and its response once ended."""
        return self._client._run(b.get_turn(self.id, turn_id))

    def message(
        self, text: str | Sequence[str], *, idempotency_key: str | None = None
    ) -> wire.MessageResponse:
        """One `POST .../message`, no retries: it waits for the turn and returns the answer."""
        return self._client._run(b.send_message(self.id, text, idempotency_key))

    def send(
        self,
        text: str | Sequence[str],
        *,
        idempotency_key: str | None = None,
        conflict_wait: float | None = None,
        on_conflict: Callable[[TurnConflict], None] | None = None,
    ) -> wire.MessageResponse:
        """Send a message and wait for the answer, the robust way.

        - On `409 TURN_CONFLICT` or `503 OVERLOADED` it waits `Retry-After` seconds and tries again,
          for at most `conflict_wait` seconds in all (default `Options.conflict_wait`), then raises the
          error. `on_conflict` is called before each wait for a `TurnConflict`.
        - After a connection error it retries with the same `Idempotency-Key` (one is made per call
          when none is given), so a turn is never run twice: the server answers the first result.

            answer = chat.send("Summarise the contract.", conflict_wait=120)
        """
        options = self._client.options
        key = idempotency_key or b.new_idempotency_key()
        budget = options.conflict_wait if conflict_wait is None else conflict_wait
        deadline = time.monotonic() + budget
        failures = 0
        while True:
            try:
                return self.message(text, idempotency_key=key)
            except (TurnConflict, Overloaded) as exc:
                wait = min(max(exc.retry_after if exc.retry_after is not None else 2.0, 0.05), 30.0)
                if time.monotonic() + wait > deadline:
                    raise
                if on_conflict is not None and isinstance(exc, TurnConflict):
                    on_conflict(exc)
                time.sleep(wait)  # what the server asked for (Retry-After)
            except APIConnectionError:
                failures += 1
                if failures > options.network_retries:
                    raise
                time.sleep(options.backoff(failures))

    def respond(
        self, text: str | Sequence[str], *, idempotency_key: str | None = None, resume: bool = True
    ) -> EventStream:
        """Send a message and stream this turn's events, up to `turn.completed`.

        Errors before the turn (409, 400, ...) raise here. If the connection drops mid-turn and `resume`
        is true, the stream goes on from the session feed (`stream`) with `Last-Event-ID`, so no event
        is lost or repeated.
        """
        key = idempotency_key or b.new_idempotency_key()
        stack, response = self._client._open_first(
            "POST", b.chat_path(self.id, "respond"), body=b.message_body(text), headers=b.idempotency(key)
        )
        cursor = b.Cursor(turn_id=response.headers.get("x-turn-id"))
        return EventStream(self._respond(cursor, stack, response, resume), cursor, stack)

    def _respond(
        self, cursor: b.Cursor, stack: ExitStack, response: httpx.Response, resume: bool
    ) -> Generator[wire.ChatEvent, None, None]:
        problem: Exception | None = None
        try:
            with stack:
                for sse in EventSource(response).iter_sse():
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
            cursor.last_event_id = 0  # replay what is buffered; only this turn's events pass
        yield from self._follow(cursor, None, cursor.turn_id)

    def stream(self, last_event_id: int | None = None) -> EventStream:
        """The session's event feed, live; with `last_event_id`, the buffered events after it first.

        It reconnects by itself after a dropped connection, with `Last-Event-ID` and backoff
        (`Options.reconnect_*`), and ends when the session ends. When the server no longer has every
        event asked for, the first event is a `StreamGap`: rebuild from `messages()` then.

            with chat.stream() as events:
                for event in events:
                    print(event.id, event.event)
        """
        cursor = b.Cursor(last_event_id=last_event_id)
        stack, response = self._client._open_first(
            "GET", b.chat_path(self.id, "stream"), headers=b.stream_headers(last_event_id)
        )
        return EventStream(self._follow(cursor, (stack, response), None), cursor, stack)

    def follow_turn(self, turn_id: str, last_event_id: int = 0) -> EventStream:
        """One turn's events from the session feed (replaying the buffer after `last_event_id`), up to
        its `turn.completed`; reconnects like `stream`. For a turn started elsewhere (another client,
        `message`, or `/api/chat`)."""
        cursor = b.Cursor(last_event_id=last_event_id, turn_id=turn_id)
        stack, response = self._client._open_first(
            "GET", b.chat_path(self.id, "stream"), headers=b.stream_headers(last_event_id)
        )
        return EventStream(self._follow(cursor, (stack, response), turn_id), cursor, stack)

    def _follow(
        self,
        cursor: b.Cursor,
        first: tuple[ExitStack, httpx.Response] | None,
        turn_id: str | None,
    ) -> Generator[wire.ChatEvent, None, None]:
        """The session feed from `cursor`, reconnecting; with `turn_id`, only that turn, to its end."""
        options = self._client.options
        path = b.chat_path(self.id, "stream")
        failures = 0
        while True:
            received = False
            problem: Exception | None = None
            try:
                with ExitStack() as stack:
                    if first is not None:
                        stack.enter_context(first[0])
                        response, first = first[1], None
                    else:
                        response = stack.enter_context(
                            self._client._open_stream(
                                "GET", path, headers=b.stream_headers(cursor.last_event_id)
                            )
                        )
                    for sse in EventSource(response).iter_sse():
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
                if self._ended():
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
            time.sleep(options.backoff(failures))  # reconnection backoff

    def _ended(self) -> bool:
        """After the server closed a stream: did the session end (else reconnect)?"""
        return self.refresh().status == "ended"

    def cancel(self) -> wire.CancelResult:
        """Stop the running turn (it ends `cancelled`, the partial answer kept); returns once it ended."""
        return self._client._run(b.cancel(self.id))

    def reply(self, request_id: str, text: str) -> wire.ReplyResult:
        """Answer the agent's question (`Question.requestID`); the waiting turn goes on."""
        return self._client._run(b.reply(self.id, request_id, text))

    def end(self) -> schemas.EndedChat:
        """End the session (idempotent): the sandbox is snapshotted and stopped, its runtime billed."""
        return self._client._run(b.end_chat(self.id))


# --- /events/v1 -------------------------------------------------------------------------------------------


class Webhooks:
    """`client.webhooks`: subscriptions, their secrets, test events and the delivery log.

    hook = client.webhooks.create("https://example.com/hooks", event_types=["agent.chat.turn.completed"])
    secret = hook.secret  # shown only now
    """

    def __init__(self, client: Client) -> None:
        self._client = client

    def create(
        self, url: str, *, event_types: Sequence[str] | None = None, description: str | None = None
    ) -> WebhookWithSecret:
        return self._client._run(b.create_webhook(url, event_types, description))

    def list(self, *, limit: int | None = None, cursor: str | None = None) -> WebhookList:
        return self._client._run(b.list_webhooks(limit, cursor))

    def get(self, webhook_id: str) -> WebhookOut:
        return self._client._run(b.get_webhook(webhook_id))

    def update(
        self,
        webhook_id: str,
        *,
        url: str = UNSET,
        event_types: Sequence[str] = UNSET,
        description: str | None = UNSET,
        status: str = UNSET,
    ) -> WebhookOut:
        """Change only what is given; `description=None` clears it, `status="disabled"` pauses."""
        changes = {"url": url, "eventTypes": event_types, "description": description, "status": status}
        return self._client._run(b.update_webhook(webhook_id, **changes))

    def delete(self, webhook_id: str) -> None:
        self._client._run(b.delete_webhook(webhook_id))

    def rotate_secret(self, webhook_id: str) -> WebhookWithSecret:
        return self._client._run(b.rotate_secret(webhook_id))

    def test(self, webhook_id: str) -> TestSent:
        """Queue a `webhook.test` event for this subscription only."""
        return self._client._run(b.test_webhook(webhook_id))

    def deliveries(
        self, webhook_id: str, *, limit: int | None = None, cursor: str | None = None
    ) -> AttemptList:
        """Delivery attempts, newest first."""
        return self._client._run(b.deliveries(webhook_id, limit, cursor))


# --- /api -------------------------------------------------------------------------------------------------


class Controller:
    """`client.controller`: the agent controller (`/api`): chat, sessions, agents, users, grants, audit.

    reply = client.controller.chat("did:key:z6Mk...", "Hello!")
    for chunk in reply:
        print(chunk, end="")
    print(reply.session_id)  # pass it as session_id= to go on
    """

    def __init__(self, client: Client) -> None:
        self._client = client
        self.agents = Agents(client)
        self.users = Users(client)
        self.grants = Grants(client)

    def chat(
        self,
        agent_did: str,
        messages: str | Sequence[Mapping[str, Any] | BaseModel],
        session_id: str | None = None,
    ) -> ControllerReply:
        """`POST /api/chat`: OpenAI-style messages (or one string: a user message); the answer streams
        as text chunks. Refusals (grant, policy, 409 ...) raise here, before any chunk."""
        body = b.controller_chat_body(agent_did, messages, session_id)
        stack, response = self._client._open_first("POST", "/api/chat", body=body)
        return ControllerReply(stack, response)

    def sessions(
        self,
        agent_did: str | None = None,
        *,
        everyone: bool = False,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> SessionList:
        """The caller's sessions (of one agent when given); admins may pass `everyone=True`."""
        return self._client._run(b.chat_sessions(agent_did, everyone, limit, cursor))

    def session_messages(self, session_id: str) -> ViewMessageList:
        """A session's conversation as role + plain text."""
        return self._client._run(b.session_messages(session_id))

    def audit(
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
        """The signed session log, newest first (admins)."""
        return self._client._run(
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

    def login(self, email: str, password: str) -> LoginOut:
        """Sign in: the cookie lands in this client's jar and authenticates later `/api` calls."""
        return self._client._run(b.login(email, password))

    def logout(self) -> LoggedOut:
        return self._client._run(b.logout())

    def me(self) -> Me:
        """Who the caller is: a user (role) or an API key (scopes)."""
        return self._client._run(b.me())


class Agents:
    def __init__(self, client: Client) -> None:
        self._client = client

    def create(
        self,
        name: str,
        *,
        model: str | None = None,
        system_prompt: str | None = None,
        tools: Sequence[str] | None = None,
        sandbox: Mapping[str, Any] | None = None,
        policy: Mapping[str, Any] | None = None,
    ) -> AgentOut:
        """Create an agent with a fresh DID (admins)."""
        return self._client._run(
            b.create_agent(
                name=name,
                model=model,
                systemPrompt=system_prompt,
                tools=list(tools) if tools is not None else None,
                sandbox=dict(sandbox) if sandbox is not None else None,
                policy=dict(policy) if policy is not None else None,
            )
        )

    def list(self) -> AgentList:
        return self._client._run(b.list_agents())

    def get(self, did: str) -> AgentOut:
        return self._client._run(b.get_agent(did))

    def update(
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
        """Change only what is given; `None` resets a field (admins)."""
        return self._client._run(
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

    def delete(self, did: str) -> AgentDeleted:
        return self._client._run(b.delete_agent(did))


class Users:
    def __init__(self, client: Client) -> None:
        self._client = client

    def create(self, email: str, password: str, *, role: str = "member", name: str | None = None) -> UserOut:
        return self._client._run(b.create_user(email, password, role, name))

    def list(self) -> UserList:
        return self._client._run(b.list_users())

    def disable(self, user_id: str) -> UserOut:
        return self._client._run(b.disable_user(user_id))


class Grants:
    def __init__(self, client: Client) -> None:
        self._client = client

    def create(
        self,
        agent_did: str,
        subject: str,
        *,
        capabilities: Sequence[str] = ("chat",),
        expires_at: datetime | str | None = None,
    ) -> GrantOut:
        """Let a user (id or email) or an API key (`key_...`) use an agent (admins)."""
        return self._client._run(b.create_grant(agent_did, subject, capabilities, expires_at))

    def list(self, *, agent_did: str | None = None, subject: str | None = None) -> GrantList:
        return self._client._run(b.list_grants(agent_did, subject))

    def revoke(self, grant_id: str) -> GrantOut:
        return self._client._run(b.revoke_grant(grant_id))
