"""The session log: every turn and refusal, hash-chained and signed per agent, verifiable offline."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import httpx

from chambers.core.controller.audit import GENESIS
from tests.conftest import auth
from tests.support.fake_upstream import FakeUpstream, Reply, Text, Usage
from tests.support.server import ServerProcess
from tests.support.services import db_execute
from tests.test_controller import chat, chunks, give, make_agent, make_user, refused, sign_in


def test_the_log_records_turns_and_refusals_and_verifies(make_server: Any, upstream: FakeUpstream) -> None:
    server: ServerProcess = make_server()
    assert server.admin_key
    admin = httpx.Client(base_url=server.url, headers=auth(server.admin_key), timeout=30)
    agent = make_agent(admin, policy={"maxMessageChars": 20})
    user = make_user(admin)
    member = sign_in(server, user["email"])
    refused(chat(member, agent["did"], "no grant yet"), 403, "FORBIDDEN")
    give(admin, agent["did"], user["id"])
    upstream.script(Reply([Text("first")], usage=Usage(11, 3)), Reply([Text("second")], usage=Usage(13, 4)))
    first = chat(member, agent["did"], "one")
    session = first.headers["x-session-id"]
    assert chunks(chat(member, agent["did"], "two", session).text) == "second"
    refused(chat(member, agent["did"], "x" * 21, session), 403, "POLICY_DENIED")

    page = admin.get("/api/audit", params={"agentDid": agent["did"]}).json()
    entries = page["entries"][::-1]  # oldest first
    assert [(e["seq"], e["kind"], e["outcome"]) for e in entries] == [
        (1, "refusal", "refused"),
        (2, "turn", "completed"),
        (3, "turn", "completed"),
        (4, "refusal", "refused"),
    ]
    assert entries[0]["prevHash"] == GENESIS
    assert all(e["prevHash"] == p["hash"] for p, e in itertools.pairwise(entries))
    assert all(e["subjectId"] == user["id"] and e["agentDid"] == agent["did"] for e in entries)
    assert entries[0]["decisions"] == [{"policy": "grant", "result": "deny"}]
    assert entries[0]["error"]["code"] == "FORBIDDEN" and entries[0]["sessionId"] is None
    turn = entries[1]
    assert turn["sessionId"] == session and turn["turnId"].startswith("turn_")
    assert (turn["inputTokens"], turn["outputTokens"]) == (11, 3) and turn["costMicros"] > 0
    assert turn["startedAt"] <= turn["endedAt"] and turn["model"] == "anthropic/claude-sonnet-4.6"
    assert [d["policy"] for d in turn["decisions"]] == ["grant", "maxMessageChars"]
    assert (
        entries[3]["decisions"][-1]["policy"] == "maxMessageChars"
        and entries[3]["error"]["code"] == "POLICY_DENIED"
    )

    # Filters and the cursor.
    assert len(admin.get("/api/audit", params={"sessionId": session}).json()["entries"]) == 3
    assert len(admin.get("/api/audit", params={"subject": user["id"]}).json()["entries"]) == 4
    since = entries[2]["createdAt"]
    assert [
        e["seq"]
        for e in admin.get("/api/audit", params={"agentDid": agent["did"], "since": since}).json()["entries"]
    ] == [4, 3]
    one = admin.get("/api/audit", params={"agentDid": agent["did"], "limit": 1}).json()
    rest = admin.get("/api/audit", params={"agentDid": agent["did"], "cursor": one["nextCursor"]}).json()
    assert [e["seq"] for e in one["entries"] + rest["entries"]] == [4, 3, 2, 1] and rest["nextCursor"] is None

    verified = server.cli("audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert "session log verified" in verified.stderr and agent["did"] in verified.stdout

    # Edit one row behind the server's back: verification fails at that row.
    db_execute(
        server.env, server.data_dir, "UPDATE audit_entries SET cost_micros = 0 WHERE id = ?", turn["id"]
    )
    broken = server.cli("audit", "verify")
    assert broken.returncode == 1
    assert f"entry {turn['id']} (#2)" in broken.stderr and "altered" in broken.stderr
    db_execute(
        server.env,
        server.data_dir,
        "UPDATE audit_entries SET cost_micros = ? WHERE id = ?",
        turn["costMicros"],
        turn["id"],
    )
    assert server.cli("audit", "verify").returncode == 0

    # A recomputed hash does not help without the agent's key: the signature fails.
    db_execute(
        server.env,
        server.data_dir,
        "UPDATE audit_entries SET signature = ? WHERE id = ?",
        "A" * 86,
        entries[2]["id"],
    )
    forged = server.cli("audit", "verify")
    assert forged.returncode == 1 and f"entry {entries[2]['id']} (#3)" in forged.stderr
    assert "signature" in forged.stderr


def test_removing_the_last_entry_is_detected(make_server: Any, upstream: FakeUpstream) -> None:
    server: ServerProcess = make_server()
    assert server.admin_key
    admin = httpx.Client(base_url=server.url, headers=auth(server.admin_key), timeout=30)
    agent = make_agent(admin)
    upstream.script(Reply([Text("a")]), Reply([Text("b")]))
    chat(admin, agent["did"], "1")
    chat(admin, agent["did"], "2")
    last = admin.get("/api/audit", params={"agentDid": agent["did"], "limit": 1}).json()["entries"][0]
    db_execute(server.env, server.data_dir, "DELETE FROM audit_entries WHERE id = ?", last["id"])
    broken = server.cli("audit", "verify")
    assert broken.returncode == 1 and "removed" in broken.stderr


async def test_concurrent_appends_never_fork_the_chain(make_server: Any, upstream: FakeUpstream) -> None:
    server: ServerProcess = make_server()
    assert server.admin_key
    async with httpx.AsyncClient(base_url=server.url, headers=auth(server.admin_key), timeout=60) as admin:
        created = await admin.post("/api/agents", json={"name": "busy", "policy": {"maxMessageChars": 3}})
        did = created.json()["did"]
        upstream.script(*[Reply([Text(f"answer {i}")]) for i in range(12)])

        async def one(i: int) -> int:
            text = f"q{i}" if i % 3 else "too long"  # a third are refused (logged too)
            response = await admin.post(
                "/api/chat", json={"agentDid": did, "messages": [{"role": "user", "content": text}]}
            )
            return response.status_code

        statuses = await asyncio.gather(*(one(i) for i in range(18)))
        assert sorted(statuses) == [200] * 12 + [403] * 6
        entries = (await admin.get("/api/audit", params={"agentDid": did, "limit": 100})).json()["entries"]
    assert sorted(e["seq"] for e in entries) == list(range(1, 19))
    verified = server.cli("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
