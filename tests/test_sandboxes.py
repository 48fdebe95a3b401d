"""Session sandboxes through the server: tools, idle snapshot and restore, runtime billing, isolation."""

from __future__ import annotations

import time
from typing import Any

import httpx

from chambers.sandbox.filesystems import journal_warning
from tests.conftest import auth
from tests.support.fake_upstream import FakeUpstream, Gate, Reply, Text, ToolCall
from tests.support.server import ServerProcess
from tests.support.services import db_execute
from tests.support.sse import events, read_until, respond_turn
from tests.support.waiting import eventually

FAST_IDLE = {"CHAMBERS_IDLE_TIMEOUT_MIN_MS": "100", "CHAMBERS_REAPER_INTERVAL_S": "0.2"}


def say(client: httpx.Client, chat_id: str, text: str) -> dict[str, Any]:
    response = client.post(
        f"/agent/v1/chat/{chat_id}/message", json={"parts": [{"type": "text", "text": text}]}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def tool_result(upstream: FakeUpstream, needle: str) -> bool:
    return upstream.requests[-1].contains(needle)


def test_files_and_shell_state_survive_an_idle_snapshot(make_server: Any, upstream: FakeUpstream) -> None:
    proc: ServerProcess = make_server(**FAST_IDLE)
    with httpx.Client(base_url=proc.url, headers=auth(proc.admin_key or ""), timeout=60) as client:
        chat_id = client.post("/agent/v1/chat", json={"idleTimeoutMs": 1000}).json()["id"]
        upstream.script(
            Reply(
                [
                    ToolCall(
                        "shell",
                        {
                            "command": "mkdir -p work && cd work && echo hello-file > notes.txt"
                            " && export GREETING=hi-env"
                        },
                    )
                ]
            ),
            Reply([Text("Saved.")]),
        )
        started = time.monotonic()
        with client.stream("GET", f"/agent/v1/chat/{chat_id}/stream") as feed:
            first = say(client, chat_id, "write a note")
            tool = next(p for p in first["parts"] if p["type"] == "tool")
            assert (tool["name"], tool["status"]) == ("shell", "completed")
            assert any(
                e["service"] == "sandbox" and e["endpoint"] == "/sandbox/v1/tools/shell"
                for e in first["usage"]["entries"]
            )
            seen = read_until(feed, lambda e: e.event == "session.status" and e.data["status"] == "idle")
        kinds = [e.event for e in seen]
        assert "agent.worker.ready" in kinds
        idle = client.get(f"/agent/v1/chat/{chat_id}").json()
        assert idle["status"] == "idle" and idle["snapshotImageId"].startswith("im-")
        runtime_at_idle = idle["runtimeMs"]
        assert runtime_at_idle > 0

        upstream.script(
            Reply([ToolCall("shell", {"command": "pwd; cat notes.txt; echo $GREETING"})]),
            Reply([Text("All there.")]),
        )
        events = respond_turn(client, chat_id, "read it back")
        statuses = [e.data["status"] for e in events if e.event == "turn.status"]
        assert statuses[0] == "restoring" and "running" in statuses
        result = upstream.requests[-1]
        assert (
            result.contains("/workspace/work") and result.contains("hello-file") and result.contains("hi-env")
        )
        after = client.get(f"/agent/v1/chat/{chat_id}").json()
        assert after["status"] == "active"
        ended = client.delete(f"/agent/v1/chat/{chat_id}").json()
        elapsed_ms = (time.monotonic() - started) * 1000
        assert (
            ended["snapshotImageId"].startswith("im-") and ended["snapshotImageId"] != idle["snapshotImageId"]
        )
        assert runtime_at_idle < ended["runtimeMs"] < elapsed_ms  # idle time is not billed
        assert ended["cost"] > 0


def test_a_live_sandbox_is_reused_by_the_next_turn(admin: httpx.Client, upstream: FakeUpstream) -> None:
    chat_id = admin.post("/agent/v1/chat", json={}).json()["id"]
    upstream.script(Reply([ToolCall("write_file", {"path": "a.txt", "content": "A"})]), Reply([Text("one")]))
    say(admin, chat_id, "first")
    upstream.script(Reply([ToolCall("read_file", {"path": "a.txt"})]), Reply([Text("two")]))
    events = respond_turn(admin, chat_id, "second")
    tool_updates = [e for e in events if e.event == "message.part.updated" and e.data["type"] == "tool"]
    assert (
        tool_updates[-1].data["part"]["name"] == "read_file"
        and tool_updates[-1].data["part"]["status"] == "completed"
    )
    assert upstream.requests[-1].contains("A")
    with admin.stream("GET", f"/agent/v1/chat/{chat_id}/stream?lastEventId=0") as feed:
        replay = read_until(
            feed, lambda e: e.event == "turn.completed" and e.data["turnId"] == events[0].data["turnId"]
        )
    assert [e.event for e in replay].count("agent.worker.ready") == 1
    assert "agent.runtime.reused" in [e.event for e in replay]


def test_tool_errors_go_to_the_model_not_the_turn(admin: httpx.Client, upstream: FakeUpstream) -> None:
    chat_id = admin.post("/agent/v1/chat", json={}).json()["id"]
    upstream.script(
        Reply([ToolCall("read_file", {"path": "../../etc/passwd"})]),
        Reply([ToolCall("edit_file", {"path": "missing.txt", "old": "a", "new": "b"})]),
        Reply([ToolCall("shell", {"command": 42})]),
        Reply([Text("I could not.")]),
    )
    answer = say(admin, chat_id, "try bad things")
    tools = [p for p in answer["parts"] if p["type"] == "tool"]
    assert [t["status"] for t in tools] == ["error", "error", "error"]
    assert answer["parts"][-1]["text"] == "I could not." and answer["info"]["status"] == "completed"


def test_nothing_of_the_server_leaks_into_the_sandbox(
    server: ServerProcess, admin: httpx.Client, upstream: FakeUpstream
) -> None:
    chat_id = admin.post("/agent/v1/chat", json={}).json()["id"]
    data_dir = server.data_dir.resolve()
    upstream.script(
        Reply(
            [
                ToolCall(
                    "shell",
                    {"command": f"env; ls {data_dir} 2>&1; cat {data_dir}/chambers.db 2>&1 | head -c 100"},
                )
            ]
        ),
        Reply([Text("checked")]),
    )
    say(admin, chat_id, "look around")
    result = upstream.requests[-1]
    assert not result.contains("test-openai-key") and not result.contains("test-anthropic-key")
    assert not result.contains("SQLite format")
    assert result.contains("No such file or directory")


def test_a_restart_resumes_sessions_from_their_workspace(make_server: Any, upstream: FakeUpstream) -> None:
    proc: ServerProcess = make_server()
    headers = auth(proc.admin_key or "")
    with httpx.Client(base_url=proc.url, headers=headers, timeout=60) as client:
        chat_id = client.post("/agent/v1/chat", json={}).json()["id"]
        upstream.script(
            Reply([ToolCall("write_file", {"path": "keep.txt", "content": "still-here"})]),
            Reply([Text("ok")]),
        )
        say(client, chat_id, "save")
    proc.restart()
    with httpx.Client(base_url=proc.url, headers=headers, timeout=60) as client:
        upstream.script(Reply([ToolCall("read_file", {"path": "keep.txt"})]), Reply([Text("found")]))
        say(client, chat_id, "load")
        assert upstream.requests[-1].contains("still-here")
        ready = client.get("/readyz").json()["checks"]["sandbox"]
        assert ready["ok"] is True and ready["backend"] in ("bwrap", "process")


def test_the_server_warns_when_workspaces_sit_on_an_ext4_without_a_journal(server: ServerProcess) -> None:
    """Either way, the start-up log agrees with the kernel's answer for this machine's data dir."""
    eventually(lambda: "snapshot store:" in server.log(), what="the sandbox start-up lines")
    expected = journal_warning(server.data_dir / "sandboxes")
    if expected is None:
        assert "without a journal" not in server.log()
    else:
        assert expected in server.log()


def test_without_bubblewrap_the_server_says_so_and_refuses_tools(
    make_server: Any, upstream: FakeUpstream
) -> None:
    proc: ServerProcess = make_server(PATH="/nonexistent", CHAMBERS_SANDBOX_BACKEND="bwrap")
    assert "SANDBOX UNAVAILABLE" in proc.log() and "bubblewrap" in proc.log()
    ready = httpx.get(proc.url + "/readyz")
    assert ready.status_code == 200  # it still chats; only tools are refused
    assert ready.json()["checks"]["sandbox"]["ok"] is False
    with httpx.Client(base_url=proc.url, headers=auth(proc.admin_key or ""), timeout=60) as client:
        chat_id = client.post("/agent/v1/chat", json={}).json()["id"]
        upstream.script(Reply([ToolCall("shell", {"command": "id"})]), Reply([Text("no tools today")]))
        answer = say(client, chat_id, "run id")
        tool = next(p for p in answer["parts"] if p["type"] == "tool")
        assert tool["status"] == "error" and "bubblewrap" in tool["output"]
        assert answer["parts"][-1]["text"] == "no tools today"


def test_the_sandbox_lease_is_taken_once_the_answer_starts_and_before_any_tool(
    make_server: Any, upstream: FakeUpstream
) -> None:
    """An active session's lease is written after the model's first event, not before its request (the
    write would delay the first token); a turn that starts with a tool call waits for it."""
    proc: ServerProcess = make_server(CHAMBERS_REPLICA_ID="replica-a")

    def owner(chat_id: str) -> str | None:
        rows = db_execute(proc.env, proc.data_dir, "SELECT owner FROM chat_sessions WHERE id = ?", chat_id)
        found: str | None = rows[0][0]
        return found

    with httpx.Client(base_url=proc.url, headers=auth(proc.admin_key or ""), timeout=60) as client:
        chat_id = client.post("/agent/v1/chat", json={}).json()["id"]
        assert owner(chat_id) is None
        upstream.script(Reply([Gate("asked"), Text("first words"), Gate("hold"), Text(", the rest")]))
        body = {"parts": [{"type": "text", "text": "talk"}]}
        with client.stream("POST", f"/agent/v1/chat/{chat_id}/respond", json=body) as response:
            upstream.wait_for_gate("asked")  # the model has the request; the lease is not written yet
            assert owner(chat_id) is None
            upstream.release("asked")
            stream = events(response)
            next(e for e in stream if e.event == "message.part.updated")
            # Held mid-answer: the lease is this replica's before the turn ends.
            eventually(lambda: owner(chat_id) == "replica-a", what="the lease taken mid-turn")
            upstream.release("hold")
            rest = read_until(response, lambda e: e.event == "turn.completed")
            assert rest[-1].data["status"] == "completed"

        other = client.post("/agent/v1/chat", json={}).json()["id"]
        upstream.script(
            Reply([ToolCall("shell", {"command": "echo from-the-sandbox > f.txt && cat f.txt"})]),
            Reply([Text("done")]),
        )
        tool = next(p for p in say(client, other, "run it")["parts"] if p["type"] == "tool")
        assert tool["status"] == "completed" and "from-the-sandbox" in str(tool)
        assert owner(other) == "replica-a"
