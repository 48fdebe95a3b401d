"""The Python SDK (`chambers.Client`, `chambers.AsyncClient`) against a real server and the fake upstream.

Broken connections are real ones: a transport between the SDK and the server forwards every request
and, when told, loses an answer or cuts a stream mid-turn; or the server process is killed.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

import chambers
from chambers.client import (
    APIConnectionError,
    AsyncClient,
    BadRequest,
    ChambersError,
    Client,
    Forbidden,
    MessageCompleted,
    MessagePartUpdated,
    MessageResponse,
    ModelNotConfigured,
    NotFound,
    ProviderError,
    Question,
    QuestionClosed,
    QuestionPart,
    SessionEnded,
    SessionUsage,
    StreamGap,
    TextPart,
    TurnCompleted,
    TurnConflict,
    TurnStarted,
    TurnStatus,
    Unauthorized,
    UnknownEvent,
    UnknownPart,
    parse_event,
)
from chambers.client.events import ChatEvent
from tests.conftest import TEST_BUS, need
from tests.support.fake_upstream import FakeUpstream, Gate, Reply, StreamError, Text, Tokens, ToolCall
from tests.support.receiver import Receiver
from tests.support.server import ServerProcess

SEED_TURN = [
    "turn.started",
    "turn.status",
    "message.created",
    "message.part.updated",
    "message.completed",
    "session.usage",
    "turn.completed",
]
ASK = ToolCall("ask_user", {"question": "Which file should I use?", "options": ["a.txt", "b.txt"]})
PASSWORD = "correct horse battery"


# --- a transport that forwards to the real server and breaks connections on demand ------------------------


class _Cut(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, when: Callable[[bytes], bool]) -> None:
        self.inner, self.when = inner, when

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            yield chunk
            if self.when(chunk):
                raise httpx.ReadError("connection cut (injected)")

    def close(self) -> None:
        self.inner.close()


class _AsyncCut(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, when: Callable[[bytes], bool]) -> None:
        self.inner, self.when = inner, when

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            yield chunk
            if self.when(chunk):
                raise httpx.ReadError("connection cut (injected)")

    async def aclose(self) -> None:
        await self.inner.aclose()


class Faults:
    """What to break: the answer of the next request to a path (lost after the server sent it), or the
    body of the next stream from a path (cut after the first chunk that matches)."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.lose: set[str] = set()
        self.cut: dict[str, Callable[[bytes], bool]] = {}
        self.done: list[str] = []

    def seen(self, request: httpx.Request) -> str | None:
        self.requests.append(request)
        for suffix in list(self.lose):
            if request.url.path.endswith(suffix):
                self.lose.discard(suffix)
                self.done.append(f"lost {suffix}")
                return "lose"
        for suffix in list(self.cut):
            if request.url.path.endswith(suffix):
                return suffix
        return None

    def to(self, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path.endswith(path)]


class FaultyTransport(httpx.BaseTransport):
    def __init__(self, faults: Faults) -> None:
        self.faults, self.inner = faults, httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        fault = self.faults.seen(request)
        response = self.inner.handle_request(request)
        if fault == "lose":
            response.read()
            response.close()
            raise httpx.ReadError("connection reset (injected)", request=request)
        if fault is not None:
            when = self.faults.cut.pop(fault)
            self.faults.done.append(f"cut {fault}")
            assert isinstance(response.stream, httpx.SyncByteStream)
            return httpx.Response(
                response.status_code, headers=response.headers, stream=_Cut(response.stream, when)
            )
        return response


class AsyncFaultyTransport(httpx.AsyncBaseTransport):
    def __init__(self, faults: Faults) -> None:
        self.faults, self.inner = faults, httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        fault = self.faults.seen(request)
        response = await self.inner.handle_async_request(request)
        if fault == "lose":
            await response.aread()
            await response.aclose()
            raise httpx.ReadError("connection reset (injected)", request=request)
        if fault is not None:
            when = self.faults.cut.pop(fault)
            self.faults.done.append(f"cut {fault}")
            assert isinstance(response.stream, httpx.AsyncByteStream)
            return httpx.Response(
                response.status_code, headers=response.headers, stream=_AsyncCut(response.stream, when)
            )
        return response


def after_first_part(chunk: bytes) -> bool:
    return b"message.part.updated" in chunk


# --- fixtures and helpers ----------------------------------------------------------------------------------


@pytest.fixture
def sdk(server: ServerProcess) -> Iterator[Client]:
    with Client(server.url, server.admin_key) as client:
        yield client


@pytest.fixture
def faults() -> Faults:
    return Faults()


@pytest.fixture
def faulty(server: ServerProcess, faults: Faults) -> Iterator[Client]:
    with Client(
        server.url, server.admin_key, transport=FaultyTransport(faults), reconnect_delay=0.05
    ) as client:
        yield client


def deltas(events: list[ChatEvent]) -> str:
    return "".join(e.delta or "" for e in events if isinstance(e, MessagePartUpdated) and e.type == "text")


def numbered(events: list[ChatEvent]) -> list[int]:
    return [e.id for e in events if e.id is not None]


def in_thread(work: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run `work` on a thread; its result or exception lands in the returned dict."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = work()
        except Exception as exc:
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def controller_routes(client: Client) -> None:
    """The controller's routes are another engineer's work: say so (by name) if they are missing."""
    try:
        client.controller.me()
    except NotFound as exc:
        if "No such route" in exc.message:
            need(False, "the controller's /api routes are missing (GET /api/auth/me: No such route)")
        raise


# --- sessions -----------------------------------------------------------------------------------------------


def test_a_session_from_create_to_end(sdk: Client, upstream: FakeUpstream) -> None:
    chat = sdk.chats.create(
        title="SDK walkthrough", model="anthropic/claude-sonnet-4.6", idle_timeout_ms=300000
    )
    assert chat.id.startswith("chat_") and chat.info is not None
    assert (chat.info.status, chat.info.title, chat.info.idleTimeoutMs) == (
        "active",
        "SDK walkthrough",
        300000,
    )
    assert sdk.chats.get(chat.id).info == chat.info

    upstream.script(Reply([Text("The timeline: crash at 9:14.")]), Reply([Text("one two three four")]))
    answer = chat.send(["Search the testimony.", "About the timeline."])
    assert isinstance(answer, MessageResponse) and answer.info.status == "completed"
    assert answer.text == "The timeline: crash at 9:14." and isinstance(answer.parts[0], TextPart)
    assert answer.usage.turnId == answer.info.turnId
    assert (answer.usage.idempotencyKey or "").startswith("sdk-")
    assert answer.usage.summary.costMicros == sum(e.costMicros for e in answer.usage.entries)
    assert upstream.requests[-1].contains("Search the testimony.\\n\\nAbout the timeline.")

    with chat.respond("count") as events:
        seen = list(events)
    assert [e.event for e in seen] == SEED_TURN[:4] + ["message.part.updated"] * (len(seen) - 7) + SEED_TURN[
        4:
    ]
    assert isinstance(seen[0], TurnStarted) and seen[0].turnId == events.turn_id
    assert numbered(seen) == list(range(seen[0].id or 0, (seen[0].id or 0) + len(seen)))
    assert events.last_event_id == seen[-1].id
    assert deltas(seen) == "one two three four"
    usage = next(e for e in seen if isinstance(e, SessionUsage))
    assert usage.turnId == events.turn_id and usage.properties.usage.totalTokens > 0
    completed = seen[-1]
    assert (
        isinstance(completed, TurnCompleted) and completed.status == "completed" and completed.error is None
    )

    history = chat.messages().data
    assert [m.role for m in history] == ["user", "assistant", "user", "assistant"]
    turn = chat.turn(events.turn_id or "")
    assert turn.status == "completed" and sdk.chats.turn(chat.id, turn.id) == turn
    assert MessageResponse.model_validate(turn.response).text == "one two three four"
    assert sdk.chats.messages(chat.id) == chat.messages()

    info = chat.refresh()
    assert info.turnCount == 2 and info.activeTurnId is None and chat.info == info
    nothing = chat.cancel()
    assert (nothing.id, nothing.cancelled, nothing.turnId) == (chat.id, False, None)

    ended = chat.end()
    assert (ended.id, ended.status) == (chat.id, "ended") and chat.end().status == "ended"
    with pytest.raises(SessionEnded) as refused:
        chat.send("Are you there?")
    assert refused.value.status_code == 409 and refused.value.code == "SESSION_ENDED"
    assert (refused.value.request_id or "").startswith("req_")
    assert chat.stream(last_event_id=0).until_turn_completed()[0].event == "turn.started"  # replay, then ends
    with chat.stream() as feed:
        assert list(feed) == []  # an ended session's feed closes at once


def test_listing_pages_through_sessions(sdk: Client) -> None:
    made = [sdk.chats.create(title=f"page {n}").id for n in range(3)]
    first = sdk.chats.list(limit=2)
    assert len(first.data) == 2 and first.nextCursor is not None
    second = sdk.chats.list(limit=2, cursor=first.nextCursor)
    assert [c.id for c in first.data] == made[::-1][:2] and second.data[0].id == made[0]
    assert set(made) <= {c.id for c in sdk.chats.iter(status="active", page_size=2)}
    with pytest.raises(BadRequest) as bad:
        sdk.chats.list(status="sleeping")
    assert bad.value.status_code == 400 and "status" in bad.value.message


def test_errors_are_typed(server: ServerProcess, sdk: Client, upstream: FakeUpstream) -> None:
    with pytest.raises(NotFound) as missing:
        sdk.chats.get("chat_nope")
    error = missing.value
    assert (error.status_code, error.code, error.message) == (404, "NOT_FOUND", "Chat session not found")
    assert error.request_id == error.headers["x-request-id"] and error.request_id.startswith("req_")
    assert "NOT_FOUND" in str(error) and "HTTP 404" in str(error) and isinstance(error, ChambersError)

    with Client(server.url, "chk_not_a_key") as stranger, pytest.raises(Unauthorized) as unknown:
        stranger.chats.list()
    assert unknown.value.status_code == 401 and unknown.value.code == "UNAUTHORIZED"

    reader_key = server.cli("keys", "create", "--scopes", "agent:read").stdout.strip()
    with Client(server.url, reader_key) as reader, pytest.raises(Forbidden) as scope:
        reader.chats.create()
    assert scope.value.status_code == 403 and "agent:write" in scope.value.message

    with pytest.raises(BadRequest) as bounds:
        sdk.chats.create(idle_timeout_ms=5)
    assert bounds.value.status_code == 400 and bounds.value.code == "INVALID_REQUEST"
    assert "idleTimeoutMs" in bounds.value.message
    with pytest.raises(BadRequest) as early:  # the server's own model refuses it before sending
        sdk.chats.create().send(" ")
    assert early.value.status_code is None and "text must not be empty" in early.value.message

    broken = sdk.chats.create(model="nosuch/model")
    with pytest.raises(ModelNotConfigured) as failed:
        broken.send("hello")
    assert failed.value.status_code == 400 and failed.value.turn_id is not None
    assert broken.turn(failed.value.turn_id).status == "failed"

    chat = sdk.chats.create()
    with pytest.raises(NotFound):
        chat.reply("toolu_nope", "x")
    with pytest.raises(NotFound):
        sdk.chat(chat.id).turn("turn_nope")


# --- 409, idempotency, cancel, questions -----------------------------------------------------------------


def test_send_waits_out_a_running_turn(sdk: Client, upstream: FakeUpstream) -> None:
    chat = sdk.chats.create()
    upstream.script(
        Reply([Text("first", chunks=1), Gate("hold"), Text(" done")]), Reply([Text("second answer")])
    )
    conflicts: list[TurnConflict] = []
    waiting = threading.Event()

    def noticed(exc: TurnConflict) -> None:
        conflicts.append(exc)
        waiting.set()

    with chat.respond("one") as events:
        next(e for e in events if isinstance(e, MessagePartUpdated))
        with pytest.raises(TurnConflict) as refused:
            chat.send("impatient", conflict_wait=0)
        assert refused.value.status_code == 409 and refused.value.code == "TURN_CONFLICT"
        assert refused.value.active_turn_id == events.turn_id and refused.value.retry_after == 2

        sender, out = in_thread(lambda: chat.send("two", on_conflict=noticed))
        assert waiting.wait(30), "send() never met the running turn"
        assert conflicts[0].active_turn_id == events.turn_id
        upstream.release("hold")
        rest = events.until_turn_completed()
    sender.join(30)
    assert "error" not in out, out.get("error")
    assert out["result"].text == "second answer" and deltas(rest).endswith(" done")
    assert [m.role for m in chat.messages().data] == ["user", "assistant", "user", "assistant"]


def test_a_lost_answer_is_retried_with_the_same_idempotency_key(
    faulty: Client, faults: Faults, upstream: FakeUpstream
) -> None:
    chat = faulty.chats.create()
    upstream.script(Reply([Text("only once")]))
    faults.lose.add("/message")
    answer = chat.send("hello")
    posts = faults.to("/message")
    assert len(posts) == 2 and faults.done == ["lost /message"]
    key = posts[0].headers["idempotency-key"]
    assert posts[1].headers["idempotency-key"] == key == answer.usage.idempotencyKey
    assert answer.text == "only once" and len(upstream.requests) == 1 and chat.refresh().turnCount == 1

    faults.lose.add("/message")
    upstream.script(Reply([Text("lost for good")]))
    with pytest.raises(APIConnectionError):
        chat.message("no retries here")  # the raw call does not retry
    assert chat.refresh().turnCount == 2


def test_cancel_and_a_question_through_the_sdk(sdk: Client, upstream: FakeUpstream) -> None:
    chat = sdk.chats.create()
    upstream.script(Reply([Tokens(1000)], gap=0.05))
    with chat.respond("write a lot") as events:
        next(e for e in events if isinstance(e, MessagePartUpdated))
        stopped = chat.cancel()
        rest = events.until_turn_completed()
    assert stopped.cancelled and stopped.turnId == events.turn_id
    message = next(e for e in rest if isinstance(e, MessageCompleted))
    assert message.status == "cancelled" and 0 < message.text.count("tok") < 1000
    assert isinstance(rest[-1], TurnCompleted) and rest[-1].status == "cancelled"

    upstream.script(Reply([Text("Let me check. "), ASK]), Reply([Text("Using a.txt.")]))
    asked: list[Question] = []
    with chat.respond("summarise the file") as events:
        for event in events:
            if isinstance(event, MessagePartUpdated) and isinstance(event.part, QuestionPart):
                assert event.part.status == "pending" and event.part.options == ["a.txt", "b.txt"]
            if isinstance(event, Question):
                asked.append(event)
                assert chat.turn(event.turnId).status == "waiting_for_input"
                replied = chat.reply(event.requestID, "a.txt")
                assert replied.resumed and replied.status == "answered" and replied.turnId == event.turnId
            if isinstance(event, TurnCompleted):
                break
    (question,) = asked
    assert question.question == "Which file should I use?" and question.id is not None
    answer = MessageResponse.model_validate(chat.turn(question.turnId).response)
    part = next(p for p in answer.parts if isinstance(p, QuestionPart))
    assert (part.status, part.answer) == ("answered", "a.txt") and answer.text.endswith("Using a.txt.")
    with pytest.raises(QuestionClosed) as closed:
        chat.reply(question.requestID, "b.txt")
    assert closed.value.code == "QUESTION_CLOSED" and closed.value.status_code == 409


# --- streams that break ---------------------------------------------------------------------------------


def test_respond_goes_on_after_its_connection_is_cut(
    faulty: Client, faults: Faults, upstream: FakeUpstream
) -> None:
    chat = faulty.chats.create()
    upstream.script(Reply([Text("one two three", chunks=3), Gate("rest"), Text(" four")]))
    faults.cut["/respond"] = after_first_part
    seen: list[ChatEvent] = []
    with chat.respond("count") as events:
        for event in events:
            seen.append(event)
            if deltas(seen) == "one two three":
                upstream.release("rest")
    assert faults.done == ["cut /respond"]
    (follow,) = faults.to("/stream")  # the rest came from the session feed, after the last id read
    assert int(follow.headers["last-event-id"]) in numbered(seen)
    assert deltas(seen) == "one two three four" and isinstance(seen[-1], TurnCompleted)
    ids = numbered(seen)
    assert ids == sorted(set(ids)) and ids == list(range(ids[0], ids[0] + len(ids)))  # no gap, no repeat


def test_stream_reconnects_with_last_event_id_after_a_cut(
    faulty: Client, faults: Faults, upstream: FakeUpstream
) -> None:
    chat = faulty.chats.create()
    upstream.script(Reply([Text("alpha beta gamma delta", chunks=4), Gate("more"), Text(" epsilon")]))
    faults.cut["/stream"] = after_first_part
    seen: list[ChatEvent] = []
    with chat.stream(last_event_id=0) as events:  # from the start of this new session: nothing missed
        sender, out = in_thread(lambda: chat.send("go"))
        for event in events:
            seen.append(event)
            if deltas(seen) == "alpha beta gamma delta":
                upstream.release("more")
            if isinstance(event, TurnCompleted):
                break
        assert events.last_event_id == seen[-1].id
    sender.join(30)
    assert out["result"].text == "alpha beta gamma delta epsilon"
    first, second = faults.to("/stream")
    assert first.headers["last-event-id"] == "0" and faults.done == ["cut /stream"]
    assert int(second.headers["last-event-id"]) in numbered(seen)
    assert deltas(seen) == "alpha beta gamma delta epsilon"
    ids = numbered(seen)
    assert ids == list(range(1, len(ids) + 1))  # every event once, in order, across the two connections


@pytest.mark.timeout(300)
def test_stream_goes_on_after_the_server_restarts(make_server: Any, upstream: FakeUpstream) -> None:
    proc: ServerProcess = make_server()
    with Client(proc.url, proc.admin_key, reconnect_delay=0.05) as client:
        chat = client.chats.create()
        upstream.script(Reply([Text("half an ans", chunks=1), Gate("never")]), Reply([Text("back again")]))
        with chat.stream(last_event_id=0) as events:
            doomed, _ = in_thread(lambda: chat.message("doomed"))
            before: list[ChatEvent] = []
            for event in events:
                before.append(event)
                if deltas(before) == "half an ans":
                    break
            upstream.wait_for_gate("never")
            proc.kill()  # the stream's connection dies with the server
            doomed.join(30)
            proc.start()
            again = chat.send("still there?")
            assert again.text == "back again"
            after: list[ChatEvent] = []
            for event in events:  # the same iterator: it reconnected by itself
                after.append(event)
                if isinstance(event, TurnCompleted) and event.turnId == again.info.turnId:
                    break
        first = before[0]
        assert isinstance(first, TurnStarted)
        assert ("CHAMBERS_REDIS_URL" in proc.env) == (TEST_BUS == "redis")
        if TEST_BUS == "redis":
            # Redis kept the session's events through the restart: the stream resumed where it broke,
            # with no gap, and saw every event exactly once, in order (the numbers jump past the ones
            # the killed process may have used; the jump is not a gap).
            assert not any(isinstance(e, StreamGap) for e in after)
            assert all(e.id is not None for e in before + after)
            ids = numbered(before + after)
            assert ids == sorted(set(ids))
            with chat.stream(last_event_id=0) as replay:  # the session's whole log, from the start
                everything: list[ChatEvent] = []
                for event in replay:
                    everything.append(event)
                    if isinstance(event, TurnCompleted) and event.turnId == again.info.turnId:
                        break
            assert before + after == everything
        else:
            # The in-process bus lost its buffer with the process: the resumed stream starts with the gap.
            gap = after[0]
            assert isinstance(gap, StreamGap) and gap.id is None and gap.requestedAfter == before[-1].id
            assert all(i > (before[-1].id or 0) for i in numbered(after))
        # Either way the restart's close of the killed turn comes first, then the new turn.
        ends = [(e.turnId, e.status) for e in after if isinstance(e, TurnCompleted)]
        assert ends == [(first.turnId, "failed"), (again.info.turnId, "completed")]
        assert deltas(after) == "back again"
        interrupted = chat.turn(first.turnId)
        assert interrupted.status == "failed" and (interrupted.error or {}).get("code") == "INTERRUPTED"


# --- webhooks ---------------------------------------------------------------------------------------------


def test_webhooks_through_the_sdk(sdk: Client) -> None:
    types = {t.name: t for t in sdk.event_types().data}
    assert "agent.chat.turn.completed" in types and types["webhook.test"].payload_schema
    with Receiver() as receiver:
        made = sdk.webhooks.create(
            receiver.url("/sdk"), event_types=["agent.chat.turn.completed"], description="billing sync"
        )
        try:
            assert made.secret.startswith("whsec_") and made.status == "active"
            assert made.eventTypes == ["agent.chat.turn.completed"]
            shown = sdk.webhooks.get(made.id)
            assert shown.id == made.id and not hasattr(shown, "secret")
            assert made.id in [w.id for w in sdk.webhooks.list(limit=100).data]

            paused = sdk.webhooks.update(made.id, status="disabled", description=None)
            assert paused.status == "disabled" and paused.description is None
            assert paused.eventTypes == ["agent.chat.turn.completed"]  # what was not given did not change
            with pytest.raises(ChambersError) as refused:
                sdk.webhooks.test(made.id)
            assert refused.value.status_code == 409
            resumed = sdk.webhooks.update(made.id, status="active", event_types=[])
            assert resumed.status == "active" and resumed.eventTypes == []

            rotated = sdk.webhooks.rotate_secret(made.id)
            assert rotated.secret.startswith("whsec_") and rotated.secret != made.secret
            receiver.secret("/sdk", rotated.secret)
            sent = sdk.webhooks.test(made.id)
            assert sent.type == "webhook.test"
            (got,) = receiver.wait_for(1, path="/sdk")
            assert got.verified and got.webhook_id == sent.eventId

            deadline = time.monotonic() + 15
            while not (log := sdk.webhooks.deliveries(made.id, limit=10).data):  # the log follows the 2xx
                assert time.monotonic() < deadline, "the delivery never showed in the log"
                time.sleep(0.05)
            assert log[0].deliveryId == sent.deliveryId and log[0].statusCode == 200
            with pytest.raises(BadRequest):
                sdk.webhooks.create(receiver.url("/sdk"), event_types=["agent.chat.nope"])
        finally:
            sdk.webhooks.delete(made.id)
    with pytest.raises(NotFound):
        sdk.webhooks.get(made.id)


# --- the agent controller (/api) -------------------------------------------------------------------------


def test_the_controller_through_the_sdk(server: ServerProcess, sdk: Client, upstream: FakeUpstream) -> None:
    controller_routes(sdk)
    me = sdk.controller.me()
    assert me.kind == "api_key" and "admin" in me.scopes

    agent = sdk.controller.agents.create(
        f"sdk-{uuid.uuid4().hex[:6]}", system_prompt="Be brief.", policy={"maxTurnsPerSession": 5}
    )
    assert agent.did.startswith("did:key:z6Mk") and agent.policy["maxTurnsPerSession"] == 5
    assert sdk.controller.agents.get(agent.did) == agent
    assert agent.did in [a.did for a in sdk.controller.agents.list().agents]
    changed = sdk.controller.agents.update(agent.did, name=agent.name + "-2", tools=["read_file"])
    assert changed.name == agent.name + "-2" and changed.tools == ["read_file"]
    assert changed.systemPrompt == "Be brief."  # not given, not changed

    upstream.script(Reply([Text("Paris.")]), Reply([Text("About 2.1 million.")]))
    with sdk.controller.chat(agent.did, "Capital of France?") as first:
        assert (first.session_id or "").startswith("chat_") and (first.turn_id or "").startswith("turn_")
        assert first.text() == "Paris."
    second = sdk.controller.chat(
        agent.did, [{"role": "user", "content": "How many people live there?"}], session_id=first.session_id
    )
    assert "".join(second) == "About 2.1 million." and second.session_id == first.session_id
    assert upstream.requests[-1].contains("Be brief.")
    sessions = sdk.controller.sessions(agent.did).sessions
    assert [(s.id, s.messageCount) for s in sessions] == [(first.session_id, 4)]
    view = sdk.controller.session_messages(first.session_id or "").messages
    assert [(m.role, m.content) for m in view][-1] == ("assistant", "About 2.1 million.")
    assert sdk.chat(first.session_id or "").refresh().agentId == agent.id  # one session, both surfaces
    entries = sdk.controller.audit(agent_did=agent.did, limit=10).entries
    assert entries and all(e["hash"] for e in entries)

    upstream.script(Reply([Text("Partial", chunks=1), StreamError("upstream fell over")]))
    failing = sdk.controller.chat(agent.did, "go")
    with pytest.raises(ProviderError) as broke:
        failing.text()
    assert broke.value.code == "PROVIDER_ERROR" and broke.value.status_code is None

    email = f"sdk-{uuid.uuid4().hex[:8]}@example.com"
    user = sdk.controller.users.create(email, PASSWORD, name="Ann")
    assert user.email == email and user.role == "member"
    assert user.id in [u.id for u in sdk.controller.users.list().users]
    with Client(server.url, "") as member:  # no key: a sign-in cookie
        signed = member.controller.login(email, PASSWORD)
        assert signed.user.id == user.id and member.controller.me().kind == "user"
        with pytest.raises(Forbidden):
            member.controller.chat(agent.did, "hi")
        grant = sdk.controller.grants.create(agent.did, user.id)
        assert grant.live and grant.capabilities == ["chat"]
        assert grant.id in [g.id for g in sdk.controller.grants.list(agent_did=agent.did).grants]
        upstream.script(Reply([Text("granted")]))
        assert member.controller.chat(agent.did, "hi").text() == "granted"
        assert [g.id for g in member.controller.grants.list().grants] == [grant.id]
        assert not sdk.controller.grants.revoke(grant.id).live
        with pytest.raises(Forbidden):
            member.controller.chat(agent.did, "again")
        assert member.controller.logout().signedOut
        with pytest.raises(Unauthorized):
            member.controller.me()
    assert sdk.controller.users.disable(user.id).disabledAt is not None
    assert sdk.controller.agents.delete(agent.did).deleted
    with pytest.raises(NotFound):
        sdk.controller.agents.get(agent.did)


# --- the async client ---------------------------------------------------------------------------------------


@pytest.fixture
async def asdk(server: ServerProcess) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(server.url, server.admin_key) as client:
        yield client


async def test_async_client_main_flows(asdk: AsyncClient, upstream: FakeUpstream) -> None:
    chat = await asdk.chats.create(title="async")
    assert (await asdk.chats.get(chat.id)).info == chat.info
    upstream.script(Reply([Text("hello async")]), Reply([Text("streamed async")]))
    answer = await chat.send("hi")
    assert answer.text == "hello async" and (answer.usage.idempotencyKey or "").startswith("sdk-")
    async with await chat.respond("stream it") as events:
        seen = [e async for e in events]
    assert seen[0].event == "turn.started" and seen[-1].event == "turn.completed"
    assert isinstance(seen[0], TurnStarted) and seen[0].turnId == events.turn_id
    assert deltas(seen) == "streamed async"
    replay = await chat.follow_turn(events.turn_id or "", 0)
    assert [e.event for e in await replay.until_turn_completed()] == [e.event for e in seen]
    assert [m.role for m in (await chat.messages()).data] == ["user", "assistant"] * 2
    assert chat.id in [c.id async for c in asdk.chats.iter(page_size=50)]

    # a question answered on the same stream
    upstream.script(Reply([Text("Let me check. "), ASK]), Reply([Text("Using b.txt.")]))
    async with await chat.respond("which file?") as events:
        async for event in events:
            if isinstance(event, Question):
                assert (await chat.reply(event.requestID, "b.txt")).resumed
            if isinstance(event, TurnCompleted):
                break
    assert upstream.requests[-1].contains("b.txt")

    # send() waits out a running turn
    upstream.script(Reply([Text("first", chunks=1), Gate("ahold"), Text(" done")]), Reply([Text("second")]))
    met = asyncio.Event()
    async with await chat.respond("one") as events:
        async for event in events:
            if isinstance(event, MessagePartUpdated):
                break
        later = asyncio.create_task(chat.send("two", on_conflict=lambda exc: met.set()))
        await asyncio.wait_for(met.wait(), 30)
        with pytest.raises(TurnConflict):
            await chat.message("now")
        upstream.release("ahold")
        rest = await events.until_turn_completed()
    assert deltas(rest) == " done" and (await later).text == "second"

    # cancel, typed errors, end
    upstream.script(Reply([Tokens(1000)], gap=0.05))
    async with await chat.respond("lots") as events:
        async for event in events:
            if isinstance(event, MessagePartUpdated):
                break
        assert (await chat.cancel()).cancelled
        ended = (await events.until_turn_completed())[-1]
        assert isinstance(ended, TurnCompleted) and ended.status == "cancelled"
    with pytest.raises(NotFound):
        await asdk.chat("chat_nope").refresh()
    assert (await chat.end()).status == "ended"
    with pytest.raises(SessionEnded):
        await chat.send("late")
    assert "agent.chat.turn.completed" in [t.name for t in (await asdk.event_types()).data]
    assert isinstance((await asdk.webhooks.list()).data, list)


async def test_async_stream_reconnects_after_a_cut(
    server: ServerProcess, faults: Faults, upstream: FakeUpstream
) -> None:
    async with AsyncClient(
        server.url, server.admin_key, transport=AsyncFaultyTransport(faults), reconnect_delay=0.05
    ) as client:
        chat = await client.chats.create()
        upstream.script(Reply([Text("alpha beta gamma", chunks=3), Gate("amore"), Text(" delta")]))
        faults.cut["/stream"] = after_first_part
        seen: list[ChatEvent] = []
        async with await chat.stream(last_event_id=0) as events:
            sending = asyncio.create_task(chat.send("go"))
            async for event in events:
                seen.append(event)
                if deltas(seen) == "alpha beta gamma":
                    upstream.release("amore")
                if isinstance(event, TurnCompleted):
                    break
        assert (await sending).text == "alpha beta gamma delta"
    assert faults.done == ["cut /stream"] and len(faults.to("/stream")) == 2
    assert (
        numbered(seen) == list(range(1, len(numbered(seen)) + 1)) and deltas(seen) == "alpha beta gamma delta"
    )


async def test_async_controller_chat(asdk: AsyncClient, upstream: FakeUpstream) -> None:
    try:
        await asdk.controller.me()
    except NotFound as exc:
        need(
            "No such route" not in exc.message, "the controller's /api routes are missing (GET /api/auth/me)"
        )
        raise
    agent = await asdk.controller.agents.create(f"async-{uuid.uuid4().hex[:6]}")
    upstream.script(Reply([Text("async controller")]))
    async with await asdk.controller.chat(agent.did, "hello") as reply:
        assert await reply.text() == "async controller" and (reply.session_id or "").startswith("chat_")
    assert (await asdk.controller.sessions(agent.did)).sessions[0].id == reply.session_id
    assert (await asdk.controller.agents.delete(agent.did)).deleted


# --- without a server -------------------------------------------------------------------------------------


def test_unknown_events_and_parts_do_not_break_an_old_client() -> None:
    new = parse_event("agent.brand.new", '{"chatId": "chat_x", "extra": 1}', "41")
    assert isinstance(new, UnknownEvent) and new.id == 41 and new.data == {"chatId": "chat_x", "extra": 1}
    odd = parse_event("turn.completed", '{"no": "turnId"}', "42")  # a known name with an unreadable body
    assert isinstance(odd, UnknownEvent) and odd.event == "turn.completed"
    gap = parse_event("stream.gap", '{"requestedAfter": 1, "oldestAvailable": null, "message": "m"}', "7")
    assert isinstance(gap, StreamGap) and gap.id is None and gap.oldestAvailable is None
    part = parse_event(
        "message.part.updated",
        '{"turnId": "t", "messageId": "m", "partId": "p", "type": "image", "part": {"type": "image"}}',
        "8",
    )
    assert isinstance(part, MessagePartUpdated) and isinstance(part.part, UnknownPart)
    status = parse_event("turn.status", '{"turnId": "t", "status": "restoring", "since": "now"}', "9")
    assert isinstance(status, TurnStatus) and status.model_extra == {"since": "now"}


def test_importing_chambers_stays_light() -> None:
    code = (
        "import sys, chambers, chambers.cli\n"
        "assert 'chambers.client' not in sys.modules and 'httpx_sse' not in sys.modules, 'eager'\n"
        "from chambers import Client, AsyncClient\n"
        "print(Client.__module__, AsyncClient.__module__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["chambers.client._sync", "chambers.client._async"]
    assert chambers.Client is Client and chambers.AsyncClient is AsyncClient


def test_the_url_and_key_come_from_the_environment(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHAMBERS_URL", server.url + "/")
    monkeypatch.setenv("CHAMBERS_API_KEY", server.admin_key or "")
    with Client() as client:
        assert client.base_url == server.url and isinstance(client.chats.list(limit=1).data, list)
    monkeypatch.delenv("CHAMBERS_URL")
    with Client(api_key="") as client:
        assert client.base_url == "http://127.0.0.1:8000" and client.api_key is None
