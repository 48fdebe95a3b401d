"""Runs (issue 12): fire-and-forget agent jobs on a bounded worker pool fed from the store's queue.

Real server processes, a real webhook receiver, and the fake LLM upstream. Runs execute concurrently,
so one FIFO script of replies cannot tell them apart: `RunUpstream` picks each reply from the request
itself (which run, by the task named in its prompt; which step, by the tool results it carries).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from tests.conftest import auth, server_env
from tests.support.fake_upstream import FakeUpstream, Gate, Reply, Text, ToolCall, Wire
from tests.support.receiver import Receiver
from tests.support.server import ServerProcess
from tests.support.sse import Sse, events, read_until

RUN_EVENTS = ["agent.run.queued", "agent.run.started", "agent.run.completed", "agent.run.failed"]
TASK = re.compile(r"task-(\d+)")

Route = Callable[[dict[str, Any]], Reply | None]


class RunUpstream(FakeUpstream):
    """The fake upstream, answering each request with `route(body)` when it returns a reply.

    It also counts the model requests open at once (`peak`): a run has at most one open at a time,
    so with replies held at a gate the count is the number of runs executing together.
    """

    def __init__(self) -> None:
        super().__init__()
        self.route: Route | None = None
        self.open_now = 0
        self.peak = 0

    def clear(self) -> None:
        self.reset()
        with self._cond:
            self.route, self.peak = None, 0

    async def _handle(self, request: Request, wire: Wire) -> Response:
        body = json.loads(await request.body() or b"{}")
        with self._cond:  # routes run under the fake's lock, so tests may read what they record
            reply = self.route(body) if self.route is not None else None
            if reply is not None:  # served next: nothing runs between here and the parent's pop
                self._queue.appendleft(reply)
            self.open_now = sum(1 for r in self.requests if r.outcome == "open") + 1
            self.peak = max(self.peak, self.open_now)
        return await super()._handle(request, wire)

    def seen(self, needle: str) -> list[Any]:
        with self._cond:
            return [r for r in self.requests if r.contains(needle)]


def task_of(body: dict[str, Any]) -> int | None:
    found = TASK.search(json.dumps(body.get("messages", [])))
    return int(found.group(1)) if found else None


def tool_results(body: dict[str, Any]) -> int:
    """How many tool results the request carries (Anthropic and OpenAI wire formats)."""
    count = 0
    for message in body.get("messages", []):
        if message.get("role") == "tool":
            count += 1
        content = message.get("content")
        if isinstance(content, list):
            count += sum(1 for b in content if isinstance(b, dict) and b.get("type") == "tool_result")
    return count


@pytest.fixture(scope="module")
def rup() -> Iterator[RunUpstream]:
    with RunUpstream() as fake:
        yield fake


@pytest.fixture
def fresh(rup: RunUpstream) -> RunUpstream:
    rup.clear()
    return rup


@pytest.fixture
def start_server(tmp_path: Path, rup: RunUpstream) -> Iterator[Callable[..., ServerProcess]]:
    made: list[ServerProcess] = []

    def start(**env: str) -> ServerProcess:
        proc = ServerProcess(tmp_path / f"server{len(made)}", env=server_env(rup, **env))
        made.append(proc)
        return proc.start()

    yield start
    for proc in made:
        proc.stop()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, rup: RunUpstream) -> Iterator[ServerProcess]:
    """A server of this module's own, so its runs never reach other modules' webhook subscriptions."""
    proc = ServerProcess(tmp_path_factory.mktemp("runs"), env=server_env(rup))
    proc.start()
    yield proc
    proc.stop()


def client_for(proc: ServerProcess, key: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=proc.url, headers=auth(key or proc.admin_key or ""), timeout=60)


def submit(client: httpx.Client, prompt: str, **body: Any) -> str:
    created = client.post("/agent/v1/runs", json={"prompt": prompt, **body})
    assert created.status_code == 202, created.text
    assert created.json()["status"] == "queued"
    run_id: str = created.json()["id"]
    return run_id


def get(client: httpx.Client, run_id: str) -> dict[str, Any]:
    found = client.get(f"/agent/v1/runs/{run_id}")
    assert found.status_code == 200, found.text
    run: dict[str, Any] = found.json()
    return run


def follow(client: httpx.Client, run_id: str, after: int | None = None) -> list[Sse]:
    """Every event of the run's stream until the server closes it (once the run is over)."""
    params = {} if after is None else {"lastEventId": after}
    with client.stream("GET", f"/agent/v1/runs/{run_id}/stream", params=params) as response:
        assert response.status_code == 200
        return list(events(response))


def listed(client: httpx.Client, status: str) -> list[str]:
    page = client.get("/agent/v1/runs", params={"status": status, "limit": 100})
    assert page.status_code == 200, page.text
    return [r["id"] for r in page.json()["data"]]


def error_of(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()["error"]
    return response.status_code, body["code"], body["message"]


# --- the worker pool ----------------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_twenty_runs_four_at_a_time_each_in_its_own_sandbox(
    start_server: Callable[..., ServerProcess], fresh: RunUpstream
) -> None:
    proc = start_server(CHAMBERS_RUN_CONCURRENCY="4", CHAMBERS_WEBHOOK_POLL_INTERVAL_S="0.1")
    arrived: set[int] = set()

    def route(body: dict[str, Any]) -> Reply | None:
        n = task_of(body)
        if n is None:
            return None
        step = tool_results(body)
        if step == 0:
            arrived.add(n)  # held at its gate until the test lets it go
            write = ToolCall("write_file", {"path": f"file-{n}.txt", "content": f"written by {n}"})
            return Reply([Gate(f"task-{n}"), write])
        if step == 1:
            return Reply([ToolCall("shell", {"command": "ls"})])
        return Reply([Text(f"task {n} done")])

    fresh.route = route
    with Receiver() as hooks, client_for(proc) as client:
        made = client.post("/events/v1/webhooks", json={"url": hooks.url("/runs"), "eventTypes": RUN_EVENTS})
        assert made.status_code == 201, made.text
        hooks.secret("/runs", made.json()["secret"])

        with ThreadPoolExecutor(20) as pool:
            ids = dict(pool.map(lambda n: (n, submit(client, f"task-{n}: write your file")), range(20)))
        by_id = {run_id: n for n, run_id in ids.items()}

        released: set[int] = set()
        for _batch in range(5):
            # Four runs wait at their gates: the pool is full, so the other runs must still be queued.
            fresh.wait_until(lambda: len(arrived - released) >= 4, timeout=60, what="four runs at the gate")
            executing = arrived - released
            assert len(executing) == 4
            assert {by_id[i] for i in listed(client, "running")} == executing
            assert len(listed(client, "queued")) == 20 - len(arrived)
            for n in executing:
                fresh.release(f"task-{n}")
            released.update(executing)
        completed = hooks.wait_for(
            20, timeout=60, path="/runs", where=lambda r: r.type == "agent.run.completed"
        )

        assert fresh.peak == 4  # never more than four runs talking to the model at once
        assert {r.data["runId"] for r in completed} == set(ids.values())
        assert all(r.verified for r in hooks.requests(path="/runs"))
        for r in completed:
            assert r.data["usage"]["summary"]["totalTokens"] > 0
            assert r.data["snapshotImageId"].startswith("im-")
            assert r.data["metadata"] is None
        kinds = [r.type for r in hooks.requests(path="/runs")]
        assert kinds.count("agent.run.queued") == 20 and kinds.count("agent.run.started") == 20

        for n, run_id in ids.items():
            run = get(client, run_id)
            assert run["status"] == "completed" and run["attempt"] == 1, run
            tools = [p for p in run["parts"] if p["type"] == "tool"]
            assert [(t["name"], t["status"]) for t in tools] == [
                ("write_file", "completed"),
                ("shell", "completed"),
            ]
            # Its own sandbox: the workspace holds its file and nobody else's.
            assert re.findall(r"file-\d+\.txt", tools[1]["output"]) == [f"file-{n}.txt"], tools[1]
            assert run["parts"][-1] == {**run["parts"][-1], "type": "text", "text": f"task {n} done"}
            usage = run["usage"]
            assert usage["totalTokens"] > 0 and usage["summary"]["costMicros"] == sum(
                e["costMicros"] for e in usage["entries"]
            )
            llm = [e for e in usage["entries"] if e["promptTokens"] is not None]
            assert len(llm) == 3 and len(usage["entries"]) == 5  # three model requests, two tool calls
            assert run["snapshotImageId"].startswith("im-")
            assert run["startedAt"] and run["endedAt"] and run["durationMs"] >= 0
        # The hidden sessions behind the runs are not chat sessions.
        assert client.get("/agent/v1/chat", params={"limit": 100}).json()["data"] == []


def test_queued_runs_survive_a_restart_and_a_cancelled_one_never_starts(
    start_server: Callable[..., ServerProcess], fresh: RunUpstream
) -> None:
    proc = start_server(CHAMBERS_RUN_CONCURRENCY="0")  # accepts runs, executes none
    with client_for(proc) as client:
        first = submit(client, "restart-first", title="first", metadata={"batch": 7})
        doomed = submit(client, "restart-doomed")
        last = submit(client, "restart-last")
        assert set(listed(client, "queued")) == {first, doomed, last}
        cancelled = client.post(f"/agent/v1/runs/{doomed}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert error_of(client.post(f"/agent/v1/runs/{doomed}/cancel"))[:2] == (409, "RUN_FINISHED")

    proc.restart(CHAMBERS_RUN_CONCURRENCY="2")
    with client_for(proc) as client:
        for run_id in (first, last):
            follow(client, run_id)  # closes once the run's outcome is recorded
            run = get(client, run_id)
            assert run["status"] == "completed" and run["parts"][-1]["text"] == "ok", run
        assert get(client, first)["title"] == "first" and get(client, first)["metadata"] == {"batch": 7}
        never = get(client, doomed)
        assert never["status"] == "cancelled" and never["startedAt"] is None and never["attempt"] == 0
    assert fresh.seen("restart-first") and fresh.seen("restart-last")
    assert fresh.seen("restart-doomed") == []  # the model never saw the cancelled run's prompt


def test_a_run_cut_off_by_a_crash_is_retried_once_then_failed(
    start_server: Callable[..., ServerProcess], fresh: RunUpstream
) -> None:
    def route(body: dict[str, Any]) -> Reply | None:
        text = json.dumps(body.get("messages", []))
        if "crash-always" in text:
            return Reply([Text("working on it"), Gate("never")])
        if "crash-once" in text:  # only its first attempt hangs
            return Reply([Gate("never")]) if not fresh.seen("crash-once") else Reply([Text("second try")])
        return None

    fresh.route = route
    proc = start_server(CHAMBERS_RUN_CONCURRENCY="2")
    with client_for(proc) as client:
        always = submit(client, "crash-always")
        once = submit(client, "crash-once")
    fresh.wait_until(lambda: len(fresh.seen("crash-")) == 2, what="both runs at the model")
    proc.kill()

    proc.start()
    fresh.wait_until(lambda: len(fresh.seen("crash-always")) == 2, what="the retry of crash-always")
    with client_for(proc) as client:
        follow(client, once)
        retried = get(client, once)
        assert retried["status"] == "completed" and retried["attempt"] == 2, retried
        assert retried["parts"][-1]["text"] == "second try"
        assert get(client, always)["status"] == "running" and get(client, always)["attempt"] == 2
    proc.kill()

    proc.start()  # interrupted twice: it fails
    with client_for(proc) as client:
        failed = get(client, always)
        assert failed["status"] == "failed" and failed["error"]["code"] == "INTERRUPTED", failed
        assert failed["attempt"] == 2 and failed["endedAt"] is not None
    assert len(fresh.seen("crash-always")) == 2


def test_two_processes_share_the_queue_and_never_take_the_same_run(
    tmp_path: Path, fresh: RunUpstream
) -> None:
    arrived: list[int] = []

    def route(body: dict[str, Any]) -> Reply | None:
        n = task_of(body)
        if n is None or n < 500:
            return None
        arrived.append(n)
        return Reply([Gate("both-busy"), Text(f"done {n}")])

    fresh.route = route
    env = server_env(fresh, CHAMBERS_RUN_CONCURRENCY="2", CHAMBERS_WEBHOOK_POLL_INTERVAL_S="0.1")
    env.setdefault("CHAMBERS_DATABASE_URL", f"sqlite:///{tmp_path / 'shared.db'}")
    env["CHAMBERS_SECRET_KEY"] = "runs-test-secret-shared-by-both-processes-0123456789"
    first = ServerProcess(tmp_path / "first", env=env)
    second = ServerProcess(tmp_path / "second", env=env)
    try:
        first.start()
        second.start()
        with Receiver() as hooks, client_for(first) as client:
            made = client.post("/events/v1/webhooks", json={"url": hooks.url("/r"), "eventTypes": RUN_EVENTS})
            hooks.secret("/r", made.json()["secret"])
            ids = [submit(client, f"task-{500 + n}") for n in range(12)]  # all through the first
            # Two runs each: the first process cannot hold four, so the second took two from the queue.
            fresh.wait_until(lambda: len(arrived) >= 4, timeout=30, what="both processes busy")
            assert len(listed(client, "running")) == 4 and len(listed(client, "queued")) == 8
            fresh.release("both-busy")
            done = hooks.wait_for(12, timeout=60, path="/r", where=lambda r: r.type == "agent.run.completed")
            assert {r.data["runId"] for r in done} == set(ids)
        assert sorted(arrived) == list(range(500, 512))  # each run reached the model exactly once
        executed = re.compile(r"run run_[0-9a-z]+ completed")
        assert executed.search(first.log()) and executed.search(second.log())  # both took runs
    finally:
        first.stop()
        second.stop()


def test_a_run_waiting_for_an_answer_survives_a_restart(
    start_server: Callable[..., ServerProcess], fresh: RunUpstream
) -> None:
    def route(body: dict[str, Any]) -> Reply | None:
        if task_of(body) != 700:
            return None
        if tool_results(body) == 0:
            return Reply([ToolCall("ask_user", {"question": "Proceed?"})])
        return Reply([Text("Proceeding.")])

    fresh.route = route
    proc = start_server(CHAMBERS_RUN_CONCURRENCY="1", CHAMBERS_RUN_POLL_INTERVAL_S="0.2")
    with client_for(proc) as client:
        run_id = submit(client, "task-700: ask first")
        with client.stream("GET", f"/agent/v1/runs/{run_id}/stream?lastEventId=0") as response:
            asked = read_until(response, lambda e: e.event == "question")[-1]
    proc.restart()
    with client_for(proc) as client:
        waiting = get(client, run_id)
        assert waiting["status"] == "waiting_for_input" and waiting["attempt"] == 1, waiting
        assert [q["requestID"] for q in waiting["questions"]] == [asked.data["requestID"]]
        answer = client.post(
            f"/agent/v1/runs/{run_id}/question/{asked.data['requestID']}/reply", json={"text": "yes"}
        )
        assert answer.status_code == 200, answer.text
        follow(client, run_id, after=0)
        done = get(client, run_id)
        assert done["status"] == "completed" and done["attempt"] == 1, done
        assert done["parts"][-1]["text"] == "Proceeding."


# --- the API ------------------------------------------------------------------------------------------------


def test_questions_stream_and_replay(shared: ServerProcess, fresh: RunUpstream) -> None:
    def route(body: dict[str, Any]) -> Reply | None:
        if task_of(body) != 900:
            return None
        if tool_results(body) == 0:
            return Reply([ToolCall("ask_user", {"question": "Which contract?", "options": ["A", "B"]})])
        return Reply([Text("Reviewed contract B.")])

    fresh.route = route
    with client_for(shared) as client:
        run_id = submit(client, "task-900: review the contract")
        with client.stream("GET", f"/agent/v1/runs/{run_id}/stream?lastEventId=0") as response:
            seen = read_until(response, lambda e: e.event == "turn.status" and e.data["status"] != "running")
            assert seen[-1].data["status"] == "waiting_for_input"
            asked = next(e for e in seen if e.event == "question")
            waiting = get(client, run_id)
            assert waiting["status"] == "waiting_for_input"
            assert waiting["questions"][0]["requestID"] == asked.data["requestID"]
            assert run_id in listed(client, "waiting_for_input") and run_id not in listed(client, "running")
            answer = client.post(
                f"/agent/v1/runs/{run_id}/question/{asked.data['requestID']}/reply", json={"text": "B"}
            )
            assert answer.status_code == 200 and answer.json()["resumed"] is True, answer.text
            rest = list(events(response))  # the stream closes once the run is over
        names = [e.event for e in seen + rest]
        assert names[0] == "turn.started" and "turn.completed" in names and names[-1] == "session.status"
        done = get(client, run_id)
        assert done["status"] == "completed" and done["questions"] == []
        question = next(p for p in done["parts"] if p["type"] == "question")
        assert question["status"] == "answered" and question["answer"] == "B"
        assert done["parts"][-1]["text"] == "Reviewed contract B."
        # Replay: the whole feed again from the start, then the stream closes; after its end, nothing.
        replayed = follow(client, run_id, after=0)
        assert [e.event for e in replayed] == names and [e.id for e in replayed] == [
            e.id for e in seen + rest
        ]
        middle = (seen + rest)[3].id
        assert [e.id for e in follow(client, run_id, after=middle)] == [e.id for e in (seen + rest)[4:]]
        assert follow(client, run_id) == []
        closed = client.post(
            f"/agent/v1/runs/{run_id}/question/{asked.data['requestID']}/reply", json={"text": "A"}
        )
        assert error_of(closed)[:2] == (409, "QUESTION_CLOSED")


def test_cancelling_a_running_run_stops_its_turn(shared: ServerProcess, fresh: RunUpstream) -> None:
    fresh.route = lambda body: Reply([Text("half done"), Gate("held")]) if task_of(body) == 901 else None
    with client_for(shared) as client:
        run_id = submit(client, "task-901: take your time")
        fresh.wait_for_gate("held")
        cancelled = client.post(f"/agent/v1/runs/{run_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        run = cancelled.json()
        assert run["status"] == "cancelled" and run["error"] is None
        assert run["parts"][0]["text"] == "half done" and run["usage"]["summary"]["totalTokens"] >= 0
        assert error_of(client.post(f"/agent/v1/runs/{run_id}/cancel")) == (
            409,
            "RUN_FINISHED",
            "This run is already cancelled",
        )


def test_cancelling_a_run_waiting_for_an_answer(shared: ServerProcess, fresh: RunUpstream) -> None:
    fresh.route = lambda body: (
        Reply([ToolCall("ask_user", {"question": "Go on?"})]) if task_of(body) == 902 else None
    )
    with client_for(shared) as client:
        run_id = submit(client, "task-902: ask and wait")
        with client.stream("GET", f"/agent/v1/runs/{run_id}/stream?lastEventId=0") as response:
            read_until(
                response, lambda e: e.event == "turn.status" and e.data["status"] == "waiting_for_input"
            )
            cancelled = client.post(f"/agent/v1/runs/{run_id}/cancel")
            rest = list(events(response))
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
        assert [e.data["status"] for e in rest if e.event == "turn.completed"] == ["cancelled"]
        question = next(p for p in get(client, run_id)["parts"] if p["type"] == "question")
        assert question["status"] == "dropped"


def test_bad_input_is_refused_naming_the_field(shared: ServerProcess) -> None:
    with client_for(shared) as client:
        cases: list[tuple[Any, str]] = [
            ({"prompt": "a", "parts": [{"type": "text", "text": "b"}]}, "parts: give exactly one"),
            ({}, "parts: give exactly one"),
            ({"prompt": "   "}, "prompt: Value error, text must not be empty"),
            ({"parts": [{"type": "text", "text": ""}]}, "parts.0.text: Value error, text must not be empty"),
            ({"parts": []}, "parts: List should have at least 1 item"),
            ({"prompt": "x", "titel": "typo"}, "titel: unknown field"),
            ({"prompt": "x", "model": "no-slash"}, "model: must look like 'provider/model'"),
            ({"prompt": "x", "metadata": "flat"}, "metadata: Input should be a valid dictionary"),
            ({"prompt": "x", "metadata": {"k": "v" * 20_000}}, "metadata: larger than 16384 bytes"),
            ({"prompt": "x" * 200_001}, "prompt: longer than the 200000-character limit"),
            ({"parts": [{"type": "text", "text": "x"}] * 65}, "parts: at most 64 parts"),
            ({"prompt": 5}, "prompt: Input should be a valid string"),
        ]
        for body, message in cases:
            response = client.post("/agent/v1/runs", json=body)
            status, code, said = error_of(response)
            assert (status, code) == (400, "INVALID_REQUEST") and said.startswith(message), (body, said)
        assert error_of(client.get("/agent/v1/runs", params={"status": "sleeping"}))[:2] == (
            400,
            "INVALID_REQUEST",
        )
        assert error_of(client.get("/agent/v1/runs", params={"limit": 101}))[:2] == (400, "INVALID_REQUEST")
        unknown = client.post("/agent/v1/runs", json={"prompt": "x", "agentDid": "did:key:z6MkNobody"})
        assert error_of(unknown)[:2] == (404, "NOT_FOUND")
        assert error_of(client.get("/agent/v1/runs/run_nothere"))[:2] == (404, "NOT_FOUND")
        assert listed(client, "queued") == []  # nothing was queued by any of that


def test_other_organisations_and_scopes(shared: ServerProcess, fresh: RunUpstream) -> None:
    shared.cli("orgs", "create", "runs-other-org")
    other_key = shared.cli("keys", "create", "--org", "runs-other-org").stdout.strip()
    reader_key = shared.cli("keys", "create", "--scopes", "agent:read").stdout.strip()
    writer_key = shared.cli("keys", "create", "--scopes", "agent:write").stdout.strip()
    with client_for(shared) as client, client_for(shared, other_key) as other:
        mine = submit(client, "mine only")
        follow(client, mine)
        theirs = submit(other, "theirs only")
        for response in (
            other.get(f"/agent/v1/runs/{mine}"),
            other.post(f"/agent/v1/runs/{mine}/cancel"),
            other.get(f"/agent/v1/runs/{mine}/stream"),
            other.post(f"/agent/v1/runs/{mine}/question/toolu_x/reply", json={"text": "hi"}),
        ):
            assert error_of(response) == (404, "NOT_FOUND", "Run not found")
        assert mine not in [r["id"] for r in other.get("/agent/v1/runs").json()["data"]]
        assert [r["id"] for r in other.get("/agent/v1/runs").json()["data"]] == [theirs]
        assert get(other, theirs)["id"] == theirs
    with client_for(shared, reader_key) as reader, client_for(shared, writer_key) as writer:
        assert error_of(reader.post("/agent/v1/runs", json={"prompt": "x"}))[:2] == (403, "FORBIDDEN")
        assert error_of(reader.post(f"/agent/v1/runs/{mine}/cancel"))[:2] == (403, "FORBIDDEN")
        assert error_of(writer.get(f"/agent/v1/runs/{mine}"))[:2] == (403, "FORBIDDEN")
        assert error_of(writer.get("/agent/v1/runs"))[:2] == (403, "FORBIDDEN")
        assert reader.get(f"/agent/v1/runs/{mine}").status_code == 200
    assert error_of(httpx.get(f"{shared.url}/agent/v1/runs"))[:2] == (401, "UNAUTHORIZED")


def test_an_idempotency_key_returns_the_same_run(shared: ServerProcess, fresh: RunUpstream) -> None:
    shared.cli("orgs", "create", "runs-idem-org")
    other_key = shared.cli("keys", "create", "--org", "runs-idem-org").stdout.strip()
    with client_for(shared) as client, client_for(shared, other_key) as other:
        headers = {"Idempotency-Key": "nightly-2026-11-23"}
        ids = []
        lock = threading.Lock()

        def send() -> None:
            response = client.post("/agent/v1/runs", json={"prompt": "idem once"}, headers=headers)
            assert response.status_code == 202, response.text
            with lock:
                ids.append(response.json()["id"])

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: send(), range(8)))
        assert len(set(ids)) == 1
        follow(client, ids[0])
        again = client.post("/agent/v1/runs", json={"prompt": "idem once"}, headers=headers)
        assert again.status_code == 202 and again.json() == {
            **again.json(),
            "id": ids[0],
            "status": "completed",
        }
        unkeyed = submit(client, "idem once", title="no key")
        elsewhere = other.post("/agent/v1/runs", json={"prompt": "idem once"}, headers=headers)
        assert elsewhere.status_code == 202 and elsewhere.json()["id"] not in (ids[0], unkeyed)
        follow(client, unkeyed)
        follow(other, elsewhere.json()["id"])
    assert len(fresh.seen("idem once")) == 3  # the keyed run ran once, plus the two others
