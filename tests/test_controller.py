"""The agent controller (issue 7): agents with DIDs, users and sign-in, grants, and `/api/chat`."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from chambers.core.controller.did import KeyPair, b58encode, public_key_from_did, verify
from tests.conftest import auth
from tests.support.fake_upstream import FakeUpstream, Gate, Reply, StreamError, Text, ToolCall, Usage
from tests.support.server import ServerProcess
from tests.support.services import db_execute

PASSWORD = "correct horse battery"
DEFAULT_MODEL = "anthropic/claude-sonnet-4.6"


# --- helpers shared by the test_controller_*.py files -----------------------------------------------------


def make_agent(admin: httpx.Client, **body: Any) -> dict[str, Any]:
    body.setdefault("name", f"agent-{uuid.uuid4().hex[:6]}")
    created = admin.post("/api/agents", json=body)
    assert created.status_code == 201, created.text
    agent: dict[str, Any] = created.json()
    return agent


def make_user(admin: httpx.Client, role: str = "member", **body: Any) -> dict[str, Any]:
    body.setdefault("email", f"u{uuid.uuid4().hex[:10]}@example.com")
    body.setdefault("password", PASSWORD)
    created = admin.post("/api/users", json={"role": role, **body})
    assert created.status_code == 201, created.text
    user: dict[str, Any] = created.json()
    return user


def sign_in(server: ServerProcess, email: str, password: str = PASSWORD) -> httpx.Client:
    """A browser-like client: the sign-in cookie in its jar, and its own Origin on every request."""
    client = httpx.Client(base_url=server.url, headers={"Origin": server.url}, timeout=30)
    signed = client.post("/api/auth/login", json={"email": email, "password": password})
    assert signed.status_code == 200, signed.text
    return client


def give(admin: httpx.Client, did: str, subject: str, **body: Any) -> dict[str, Any]:
    made = admin.post(
        "/api/grants", json={"agentDid": did, "subject": subject, "capabilities": ["chat"], **body}
    )
    assert made.status_code == 201, made.text
    grant: dict[str, Any] = made.json()
    return grant


def frames(text: str) -> list[str]:
    """The `data:` payloads of an SSE body, in order (comments skipped)."""
    return [line[6:] for line in text.split("\n") if line.startswith("data: ")]


def chunks(text: str) -> str:
    payloads = frames(text)
    assert payloads[-1] == "[DONE]", payloads
    return "".join(json.loads(p)["chunk"] for p in payloads[:-1])


def chat(
    client: httpx.Client, did: str, messages: list[dict[str, Any]] | str, session_id: str | None = None
) -> httpx.Response:
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    body: dict[str, Any] = {"agentDid": did, "messages": messages}
    if session_id is not None:
        body["sessionId"] = session_id
    return client.post("/api/chat", json=body)


def refused(response: httpx.Response, status: int, code: str, *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code, error
    for word in words:
        assert word in error["message"], error


def org_id(admin: httpx.Client) -> str:
    me: dict[str, Any] = admin.get("/api/auth/me").json()
    return str(me["orgId"])


# --- DIDs -------------------------------------------------------------------------------------------------


def test_did_key_matches_the_w3c_test_vector() -> None:
    # w3c-ccg/did-method-key test-vectors/ed25519-x25519.json: the all-zero seed.
    pair = KeyPair.from_private_key(bytes(32))
    assert pair.did == "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
    assert b58encode(pair.public_key) == "4zvwRjXUKGfvwnParsHAS3HuSVzV5cA4McphgmoCtajS"
    assert KeyPair.from_private_key(bytes(31) + b"\x01").did == (
        "did:key:z6MkjchhfUsD6mmvni8mCdXHw216Xrm9bQe2mBH1P5RDjVJG"
    )
    assert public_key_from_did(pair.did) == pair.public_key
    signature = pair.sign(b"entry")
    assert verify(pair.did, b"entry", signature) and not verify(pair.did, b"entrY", signature)
    assert "private" not in repr(pair)  # a logged pair does not show its seed
    with pytest.raises(ValueError):
        public_key_from_did("did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme")  # secp256k1


# --- agents -----------------------------------------------------------------------------------------------


def test_admin_creates_reads_changes_and_deletes_an_agent(server: ServerProcess, admin: httpx.Client) -> None:
    agent = make_agent(
        admin,
        name="Analyst",
        model="openai/gpt-4o",
        systemPrompt="You are terse.",
        tools=["read_file", "grep"],
        policy={"maxTurnsPerSession": 5, "network": False},
        sandbox={"cpuSeconds": 30},
    )
    assert agent["did"].startswith("did:key:z6Mk") and len(agent["did"]) == 56
    assert len(public_key_from_did(agent["did"])) == 32
    assert agent["name"] == "Analyst" and agent["model"] == "openai/gpt-4o" and agent["default"] is False
    assert agent["tools"] == ["grep", "read_file"] and agent["policy"]["maxTurnsPerSession"] == 5
    assert agent["policy"]["allowedModels"] is None and agent["sandbox"] == {"cpuSeconds": 30}
    assert not any("private" in key.lower() or "secret" in key.lower() for key in agent)

    # The private key is stored encrypted (Fernet, under the server's secret key) and never shown.
    ((stored,),) = db_execute(
        server.env, server.data_dir, "SELECT private_key FROM agents WHERE did = ?", agent["did"]
    )
    assert stored.startswith("enc:v1:") and stored not in json.dumps(admin.get("/api/agents").json())
    assert (server.data_dir / "secret.key").stat().st_mode & 0o777 == 0o600

    listed = admin.get("/api/agents").json()["agents"]
    assert agent["did"] in [a["did"] for a in listed]
    default = [a for a in listed if a["default"]]
    assert len(default) == 1 and default[0]["model"] == DEFAULT_MODEL and default[0]["tools"] is None
    assert admin.get(f"/api/agents/{agent['did']}").json() == agent

    changed = admin.patch(f"/api/agents/{agent['did']}", json={"name": "Analyst 2", "tools": None})
    assert changed.status_code == 200, changed.text
    assert changed.json()["name"] == "Analyst 2" and changed.json()["tools"] is None
    assert changed.json()["did"] == agent["did"] and changed.json()["systemPrompt"] == "You are terse."

    refused(
        admin.post("/api/agents", json={"name": "x", "tools": ["rm_rf"]}), 400, "INVALID_REQUEST", "rm_rf"
    )
    refused(
        admin.post("/api/agents", json={"name": "x", "policy": {"maxTurns": 3}}),
        400,
        "INVALID_REQUEST",
        "maxTurns",
    )
    refused(
        admin.post("/api/agents", json={"name": "x", "policy": {"maxTurnsPerSession": 0}}),
        400,
        "INVALID_REQUEST",
        "maxTurnsPerSession",
    )
    refused(admin.post("/api/agents", json={"name": "x", "model": "gpt4"}), 400, "INVALID_REQUEST", "model")
    refused(admin.delete(f"/api/agents/{default[0]['did']}"), 409, "CONFLICT", "default agent")

    assert admin.delete(f"/api/agents/{agent['did']}").json() == {"did": agent["did"], "deleted": True}
    refused(admin.get(f"/api/agents/{agent['did']}"), 404, "NOT_FOUND")
    assert agent["did"] not in [a["did"] for a in admin.get("/api/agents").json()["agents"]]


def test_members_see_only_granted_agents_and_cannot_administer(
    server: ServerProcess, admin: httpx.Client
) -> None:
    shown, hidden = make_agent(admin), make_agent(admin)
    user = make_user(admin)
    member = sign_in(server, user["email"])
    give(admin, shown["did"], user["id"])
    assert [a["did"] for a in member.get("/api/agents").json()["agents"]] == [shown["did"]]
    assert member.get(f"/api/agents/{shown['did']}").status_code == 200
    refused(member.get(f"/api/agents/{hidden['did']}"), 404, "NOT_FOUND")
    refused(member.post("/api/agents", json={"name": "mine"}), 403, "FORBIDDEN", "admin")
    refused(member.patch(f"/api/agents/{shown['did']}", json={"name": "x"}), 403, "FORBIDDEN")
    refused(
        member.post("/api/users", json={"email": "x@example.com", "password": PASSWORD}), 403, "FORBIDDEN"
    )
    refused(
        member.post("/api/grants", json={"agentDid": hidden["did"], "subject": user["id"]}), 403, "FORBIDDEN"
    )
    refused(member.get("/api/audit"), 403, "FORBIDDEN")
    mine = member.get("/api/grants").json()["grants"]
    assert [(g["agentDid"], g["subject"], g["live"]) for g in mine] == [(shown["did"], user["id"], True)]


# --- users and sign-in ------------------------------------------------------------------------------------


def test_sign_in_me_and_sign_out(server: ServerProcess, admin: httpx.Client) -> None:
    user = make_user(admin, name="Ada", email=f"Ada.{uuid.uuid4().hex[:6]}@Example.com")
    assert user["email"] == user["email"].lower() and user["role"] == "member"
    refused(
        httpx.post(
            f"{server.url}/api/auth/login", json={"email": user["email"], "password": "wrong password"}
        ),
        401,
        "UNAUTHORIZED",
    )
    client = httpx.Client(base_url=server.url, headers={"Origin": server.url}, timeout=30)
    signed = client.post("/api/auth/login", json={"email": user["email"].upper(), "password": PASSWORD})
    assert signed.status_code == 200
    cookie = signed.headers["set-cookie"]
    assert cookie.startswith("chambers_session=") and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Secure" not in cookie and "Max-Age=604800" in cookie  # plain http here
    token = client.cookies["chambers_session"]
    stored = [row[0] for row in db_execute(server.env, server.data_dir, "SELECT token_hash FROM user_logins")]
    ((hashed,),) = db_execute(
        server.env, server.data_dir, "SELECT password_hash FROM users WHERE id = ?", user["id"]
    )
    assert token not in stored and hashed.startswith("$argon2id$")

    me = client.get("/api/auth/me").json()
    assert me == {
        "id": user["id"],
        "kind": "user",
        "orgId": org_id(admin),
        "orgName": "default",
        "role": "member",
        "scopes": ["agent:read", "agent:write"],
        "email": user["email"],
        "name": "Ada",
    }
    key_me = admin.get("/api/auth/me").json()
    assert key_me["kind"] == "api_key" and key_me["id"].startswith("key_") and "admin" in key_me["scopes"]
    assert key_me["role"] is None

    # Behind a TLS-terminating proxy on loopback (uvicorn trusts X-Forwarded-Proto from 127.0.0.1).
    tls = httpx.post(
        f"{server.url}/api/auth/login",
        json={"email": user["email"], "password": PASSWORD},
        headers={"X-Forwarded-Proto": "https"},
    )
    assert "Secure" in tls.headers["set-cookie"]

    out = client.post("/api/auth/logout")
    assert out.status_code == 200 and out.json() == {"signedOut": True}
    assert 'chambers_session=""' in out.headers["set-cookie"] or "Max-Age=0" in out.headers["set-cookie"]
    # The token itself is dead, not just the cookie.
    refused(httpx.get(f"{server.url}/api/auth/me", cookies={"chambers_session": token}), 401, "UNAUTHORIZED")
    refused(httpx.get(f"{server.url}/api/agents"), 401, "UNAUTHORIZED")

    # Disabling a user ends their sign-ins at once and keeps them out.
    again = sign_in(server, user["email"])
    disabled = admin.delete(f"/api/users/{user['id']}")
    assert disabled.status_code == 200 and disabled.json()["disabledAt"]
    refused(again.get("/api/auth/me"), 401, "UNAUTHORIZED")
    refused(
        httpx.post(f"{server.url}/api/auth/login", json={"email": user["email"], "password": PASSWORD}),
        401,
        "UNAUTHORIZED",
    )

    admin_user = make_user(admin, role="admin")
    boss = sign_in(server, admin_user["email"])
    assert boss.get("/api/auth/me").json()["scopes"] == ["admin", "agent:read", "agent:write"]
    assert boss.post("/api/agents", json={"name": "by an admin user"}).status_code == 201
    refused(admin.post("/api/users", json={"email": user["email"], "password": PASSWORD}), 409, "CONFLICT")
    refused(admin.post("/api/users", json={"email": "nobody", "password": PASSWORD}), 400, "INVALID_REQUEST")
    refused(admin.post("/api/users", json={"email": "a@b.c", "password": "short"}), 400, "INVALID_REQUEST")


def test_cookie_writes_need_this_servers_origin(server: ServerProcess, admin: httpx.Client) -> None:
    agent = make_agent(admin)
    user = make_user(admin)
    give(admin, agent["did"], user["id"])
    member = sign_in(server, user["email"])
    cookies = {"chambers_session": member.cookies["chambers_session"]}
    body = {"agentDid": agent["did"], "messages": [{"role": "user", "content": "hi"}]}
    url = f"{server.url}/api/chat"

    foreign = httpx.post(url, json=body, cookies=cookies, headers={"Origin": "https://evil.example"})
    refused(foreign, 403, "FORBIDDEN", "evil.example")
    # A browser (it sends fetch metadata) that left Origin out, and a form post without Origin.
    browser = httpx.post(url, json=body, cookies=cookies, headers={"Sec-Fetch-Site": "same-site"})
    refused(browser, 403, "FORBIDDEN", "Origin")
    form = httpx.post(url, content=json.dumps(body), cookies=cookies, headers={"Content-Type": "text/plain"})
    refused(form, 403, "FORBIDDEN", "Origin")
    refused(httpx.post(f"{server.url}/api/auth/logout", cookies=cookies), 403, "FORBIDDEN")
    refused(
        httpx.delete(
            f"{server.url}/api/grants/grt_x", cookies=cookies, headers={"Origin": "http://localhost:1"}
        ),
        403,
        "FORBIDDEN",
    )
    refused(
        httpx.post(
            f"{server.url}/api/auth/login",
            json={"email": user["email"], "password": PASSWORD},
            headers={"Origin": "https://evil.example"},
        ),
        403,
        "FORBIDDEN",
    )
    # Reads need no Origin; API keys are not cookies, so they need none either.
    assert httpx.get(f"{server.url}/api/agents", cookies=cookies).status_code == 200
    assert admin.post("/api/agents", json={"name": "no origin needed"}).status_code == 201


def test_trusted_origins_may_write_with_the_cookie(make_server: Any) -> None:
    server: ServerProcess = make_server(CHAMBERS_TRUSTED_ORIGINS="https://app.example.com")
    assert server.admin_key
    with httpx.Client(base_url=server.url, headers=auth(server.admin_key), timeout=30) as admin:
        user = make_user(admin, role="admin")
    member = sign_in(server, user["email"])
    cookies = {"chambers_session": member.cookies["chambers_session"]}
    trusted = httpx.post(
        f"{server.url}/api/agents",
        json={"name": "a"},
        cookies=cookies,
        headers={"Origin": "https://app.example.com"},
    )
    assert trusted.status_code == 201, trusted.text
    other = httpx.post(
        f"{server.url}/api/agents",
        json={"name": "a"},
        cookies=cookies,
        headers={"Origin": "https://example.com"},
    )
    refused(other, 403, "FORBIDDEN")


# --- grants and /api/chat ---------------------------------------------------------------------------------


def test_a_member_needs_a_live_grant_and_loses_it_at_once(
    server: ServerProcess, admin: httpx.Client, upstream: FakeUpstream
) -> None:
    agent = make_agent(admin)
    user = make_user(admin)
    member = sign_in(server, user["email"])
    before = len(upstream.requests)

    refused(
        chat(member, agent["did"], "Hello!"), 403, "FORBIDDEN", f"no 'chat' grant on agent {agent['did']}"
    )
    assert len(upstream.requests) == before

    grant = give(admin, agent["did"], user["email"])
    assert grant["subject"] == user["id"] and grant["capabilities"] == ["chat"] and grant["live"] is True
    upstream.script(Reply([Text("The key trends in Q1", chunks=4)], usage=Usage(20, 6)))
    answer = chat(member, agent["did"], "Summarise the key trends.")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert answer.headers["x-session-id"].startswith("chat_")
    payloads = frames(answer.text)
    assert len(payloads) >= 3 and payloads[-1] == "[DONE]"  # deltas may be coalesced, never dropped
    assert all(p.startswith('{"chunk": "') for p in payloads[:-1])  # the seed's framing, byte for byte
    assert chunks(answer.text) == "The key trends in Q1"
    assert "data: [DONE]\n\n" in answer.text

    revoked = admin.delete(f"/api/grants/{grant['id']}")
    assert revoked.status_code == 200 and revoked.json()["live"] is False and revoked.json()["revokedAt"]
    calls = len(upstream.requests)
    refused(chat(member, agent["did"], "Again?"), 403, "FORBIDDEN", "no 'chat' grant")
    session = answer.headers["x-session-id"]
    refused(chat(member, agent["did"], "Again?", session), 403, "FORBIDDEN", "no 'chat' grant")
    refused(member.get(f"/api/chat/sessions/{session}/messages"), 403, "FORBIDDEN")
    assert len(upstream.requests) == calls

    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    expired = give(admin, agent["did"], user["id"], expiresAt=past)
    assert expired["live"] is False
    refused(chat(member, agent["did"], "Still there?"), 403, "FORBIDDEN", "no 'chat' grant")

    soon = datetime.now(UTC) + timedelta(seconds=2)
    give(admin, agent["did"], user["id"], expiresAt=soon.isoformat())
    upstream.script(Reply([Text("yes")]))
    assert chunks(chat(member, agent["did"], "Now?").text) == "yes"
    time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.05)  # let the clock pass expiry
    refused(chat(member, agent["did"], "And now?"), 403, "FORBIDDEN", "no 'chat' grant")
    assert len(upstream.requests) == calls + 1


def test_resending_the_whole_history_does_not_duplicate_it(
    server: ServerProcess, admin: httpx.Client, upstream: FakeUpstream
) -> None:
    agent = make_agent(admin)
    user = make_user(admin)
    give(admin, agent["did"], user["id"])
    member = sign_in(server, user["email"])
    upstream.script(
        Reply([Text("Paris.")]),
        Reply([Text("About 2.1 million.")]),
        Reply([Text("Yes, the Louvre.")]),
        Reply([Text("You are welcome.")]),
    )
    history: list[dict[str, Any]] = [
        {"role": "system", "content": "Answer in one line."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    first = chat(member, agent["did"], history)
    session = first.headers["x-session-id"]
    history.append({"role": "assistant", "content": chunks(first.text)})
    history.append({"role": "user", "content": [{"type": "text", "text": "How many people live there?"}]})
    second = chat(member, agent["did"], history, session)  # the whole history again
    assert second.headers["x-session-id"] == session
    history.append({"role": "assistant", "content": chunks(second.text)})
    third = chat(
        member, agent["did"], [{"role": "user", "content": "Any museums?"}], session
    )  # only the new one
    assert chunks(third.text) == "Yes, the Louvre."
    history += [
        {"role": "user", "content": "Any museums?"},
        {"role": "assistant", "content": "Yes, the Louvre."},
        {"role": "user", "content": "Thanks!"},
    ]
    assert chunks(chat(member, agent["did"], history, session).text) == "You are welcome."

    expected = [
        ("system", "Answer in one line."),
        ("user", "What is the capital of France?"),
        ("assistant", "Paris."),
        ("user", "How many people live there?"),
        ("assistant", "About 2.1 million."),
        ("user", "Any museums?"),
        ("assistant", "Yes, the Louvre."),
        ("user", "Thanks!"),
        ("assistant", "You are welcome."),
    ]
    messages = member.get(f"/api/chat/sessions/{session}/messages").json()["messages"]
    assert [(m["role"], m["content"]) for m in messages] == expected
    assert all(m["createdAt"].endswith("Z") for m in messages)
    last = upstream.requests[-1]
    assert json.dumps(last.json).count("What is the capital of France?") == 1
    assert json.dumps(last.json).count("How many people live there?") == 1

    listed = member.get("/api/chat/sessions", params={"agentDid": agent["did"]}).json()["sessions"]
    assert [(s["id"], s["title"], s["messageCount"], s["status"]) for s in listed] == [
        (session, "What is the capital of France?", len(expected), "active")
    ]
    assert listed[0]["createdAt"] <= listed[0]["updatedAt"]
    # Another member sees neither the session nor its messages.
    other = make_user(admin)
    give(admin, agent["did"], other["id"])
    stranger = sign_in(server, other["email"])
    assert stranger.get("/api/chat/sessions", params={"agentDid": agent["did"]}).json()["sessions"] == []
    refused(stranger.get(f"/api/chat/sessions/{session}/messages"), 404, "NOT_FOUND")
    refused(chat(stranger, agent["did"], "hi", session), 404, "NOT_FOUND")
    everyone = admin.get("/api/chat/sessions", params={"agentDid": agent["did"], "all": "true"}).json()
    assert session in [s["id"] for s in everyone["sessions"]]


def test_a_session_is_one_session_on_both_surfaces(admin: httpx.Client, upstream: FakeUpstream) -> None:
    agent = make_agent(admin, systemPrompt="You are the archivist.")
    upstream.script(Reply([Text("Filed.")]), Reply([Text("Still filed.")]))
    made = chat(admin, agent["did"], "File this.")
    session = made.headers["x-session-id"]
    seen = admin.get(f"/agent/v1/chat/{session}").json()
    assert seen["agentId"] == agent["id"] and seen["title"] == "File this." and seen["turnCount"] == 1
    follow = admin.post(
        f"/agent/v1/chat/{session}/message", json={"parts": [{"type": "text", "text": "And?"}]}
    )
    assert follow.status_code == 200 and follow.json()["parts"][0]["text"] == "Still filed."
    assert upstream.requests[-1].contains("You are the archivist.") and upstream.requests[-1].contains(
        "File this."
    )
    parts = admin.get(f"/agent/v1/chat/{session}/messages").json()["data"]
    assert [m["role"] for m in parts] == ["user", "assistant", "user", "assistant"]
    view = admin.get(f"/api/chat/sessions/{session}/messages").json()["messages"]
    assert [m["content"] for m in view] == ["File this.", "Filed.", "And?", "Still filed."]

    # And the other way: a session made on /agent/v1 belongs to the default agent.
    default = next(a for a in admin.get("/api/agents").json()["agents"] if a["default"])
    created = admin.post("/agent/v1/chat", json={"title": "From v1"}).json()
    assert created["agentId"] == default["id"]
    upstream.script(Reply([Text("v1 answer")]), Reply([Text("api answer")]))
    assert (
        admin.post(
            f"/agent/v1/chat/{created['id']}/message",
            json={"parts": [{"type": "text", "text": "v1 question"}]},
        ).status_code
        == 200
    )
    listed = admin.get("/api/chat/sessions", params={"agentDid": default["did"]}).json()["sessions"]
    assert created["id"] in [s["id"] for s in listed]
    went_on = chat(admin, default["did"], "api question", created["id"])
    assert chunks(went_on.text) == "api answer" and upstream.requests[-1].contains("v1 question")
    refused(
        chat(admin, agent["did"], "wrong agent", created["id"]), 400, "INVALID_REQUEST", "different agent"
    )


def test_api_keys_need_a_grant_except_on_the_default_agent(
    server: ServerProcess, admin: httpx.Client, upstream: FakeUpstream
) -> None:
    agent = make_agent(admin)
    made = server.cli("keys", "create", "--scopes", "agent:read,agent:write")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    writer = httpx.Client(base_url=server.url, headers=auth(key), timeout=30)
    key_id = writer.get("/api/auth/me").json()["id"]

    upstream.script(Reply([Text("default ok")]))
    own = writer.post("/agent/v1/chat", json={}).json()["id"]
    assert (
        writer.post(
            f"/agent/v1/chat/{own}/message", json={"parts": [{"type": "text", "text": "hi"}]}
        ).status_code
        == 200
    )

    upstream.script(Reply([Text("made by the admin")]))
    theirs = chat(admin, agent["did"], "start").headers["x-session-id"]
    calls = len(upstream.requests)
    denied = writer.post(f"/agent/v1/chat/{theirs}/message", json={"parts": [{"type": "text", "text": "hi"}]})
    refused(denied, 403, "FORBIDDEN", f"no 'chat' grant on agent {agent['did']}")
    refused(
        writer.post(f"/agent/v1/chat/{theirs}/respond", json={"parts": [{"type": "text", "text": "hi"}]}),
        403,
        "FORBIDDEN",
        "no 'chat' grant",
    )
    refused(chat(writer, agent["did"], "hi"), 403, "FORBIDDEN", "no 'chat' grant")
    assert len(upstream.requests) == calls

    give(admin, agent["did"], key_id)
    upstream.script(Reply([Text("granted")]), Reply([Text("granted too")]))
    assert (
        writer.post(
            f"/agent/v1/chat/{theirs}/message", json={"parts": [{"type": "text", "text": "hi"}]}
        ).status_code
        == 200
    )
    assert chunks(chat(writer, agent["did"], "hi").text) == "granted too"
    assert agent["did"] in [a["did"] for a in writer.get("/api/agents").json()["agents"]]

    reader = server.cli("keys", "create", "--scopes", "agent:read").stdout.strip()
    refused(
        chat(httpx.Client(base_url=server.url, headers=auth(reader)), agent["did"], "hi"),
        403,
        "FORBIDDEN",
        "agent:write",
    )


def test_bad_chat_requests_are_refused_before_streaming(admin: httpx.Client, upstream: FakeUpstream) -> None:
    agent = make_agent(admin)
    did = agent["did"]
    calls = len(upstream.requests)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"agentDid": did, "messages": []}, "messages"),
        ({"agentDid": did, "messages": [{"role": "assistant", "content": "hi"}]}, "last message"),
        ({"agentDid": did, "messages": [{"role": "robot", "content": "hi"}]}, "role"),
        ({"agentDid": did, "messages": [{"role": "user", "content": "  "}]}, "must not be empty"),
        ({"agentDid": did, "messages": [{"role": "user"}]}, "content is required"),
        ({"agentDid": did, "messages": [{"role": "user", "content": 5}]}, "string or a list"),
        (
            {
                "agentDid": did,
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
            },
            "only 'text' content blocks",
        ),
        ({"agentDid": did, "messages": [{"role": "user", "content": "hi", "mood": "ok"}]}, "unknown field"),
        (
            {
                "agentDid": did,
                "messages": [
                    {"role": "user", "content": "x", "tool_calls": [{"id": "c", "function": {"name": "f"}}]},
                    {"role": "user", "content": "hi"},
                ],
            },
            "only assistant messages carry tool calls",
        ),
        (
            {
                "agentDid": did,
                "messages": [{"role": "tool", "content": "42"}, {"role": "user", "content": "hi"}],
            },
            "tool_call_id",
        ),
        ({"messages": [{"role": "user", "content": "hi"}]}, "agentDid"),
    ]
    for body, words in cases:
        refused(admin.post("/api/chat", json=body), 400, "INVALID_REQUEST", words)
    refused(chat(admin, "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp", "hi"), 404, "NOT_FOUND")
    refused(chat(admin, did, "hi", "chat_nope"), 404, "NOT_FOUND")
    assert len(upstream.requests) == calls


def test_tool_history_is_imported_for_the_model(admin: httpx.Client, upstream: FakeUpstream) -> None:
    agent = make_agent(admin)
    upstream.script(Reply([Text("It is 21 degrees.")]))
    history: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "21C, sunny"},
        {"role": "user", "content": "So?"},
    ]
    answer = chat(admin, agent["did"], history)
    assert chunks(answer.text) == "It is 21 degrees."
    sent = upstream.requests[-1]
    assert sent.contains("21C, sunny") and sent.contains("call_1") and sent.contains("Weather in Paris?")
    view = admin.get(f"/api/chat/sessions/{answer.headers['x-session-id']}/messages").json()["messages"]
    assert [m["role"] for m in view] == ["user", "tool", "user", "assistant"]
    upstream.script(Reply([Text("Still 21.")]))
    again = chat(
        admin,
        agent["did"],
        [
            *history,
            {"role": "assistant", "content": "It is 21 degrees."},
            {"role": "user", "content": "Sure?"},
        ],
        answer.headers["x-session-id"],
    )
    assert chunks(again.text) == "Still 21."
    assert json.dumps(upstream.requests[-1].json).count("21C, sunny") == 1


def test_a_failure_after_the_stream_began_is_an_error_frame(
    admin: httpx.Client, upstream: FakeUpstream
) -> None:
    agent = make_agent(admin)
    upstream.script(Reply([Text("Partial ans", chunks=1), StreamError("upstream fell over")]))
    answer = chat(admin, agent["did"], "go")
    assert answer.status_code == 200
    payloads = frames(answer.text)
    assert json.loads(payloads[0]) == {"chunk": "Partial ans"}
    error = json.loads(payloads[-2])["error"]
    assert set(error) == {"message", "code"} and error["code"] == "PROVIDER_ERROR"
    assert payloads[-1] == "[DONE]"


def test_a_second_message_while_a_turn_runs_is_409(
    server: ServerProcess, admin: httpx.Client, upstream: FakeUpstream
) -> None:
    agent = make_agent(admin)
    upstream.script(Reply([Text("slow", chunks=1), Gate("hold"), Text(" answer", chunks=1)]))
    with admin.stream(
        "POST",
        "/api/chat",
        json={"agentDid": agent["did"], "messages": [{"role": "user", "content": "take your time"}]},
    ) as response:
        session = response.headers["x-session-id"]
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data: ")) == 'data: {"chunk": "slow"}'
        busy = chat(admin, agent["did"], "hurry", session)
        refused(busy, 409, "TURN_CONFLICT")
        assert busy.headers["retry-after"] and busy.headers["x-active-turn-id"].startswith("turn_")
        upstream.release("hold")
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest == ['data: {"chunk": " answer"}', "data: [DONE]"]


def test_the_agents_question_is_streamed_and_the_next_message_answers_it(
    server: ServerProcess, admin: httpx.Client, upstream: FakeUpstream
) -> None:
    agent = make_agent(admin)
    ask = ToolCall("ask_user", {"question": "Which colour?", "options": ["red", "blue"]})
    upstream.script(Reply([Text("Let me ask."), ask]), Reply([Text("Blue it is.")]))
    asked = chat(admin, agent["did"], "Paint the shed.")
    session = asked.headers["x-session-id"]
    assert chunks(asked.text) == "Let me ask.\n\nWhich colour?\n- red\n- blue"
    listed = admin.get(f"/api/chat/sessions/{session}/messages").json()["messages"]
    assert [(m["role"], m["content"]) for m in listed][-1] == (
        "assistant",
        "Let me ask.\n\nWhich colour?\n- red\n- blue",
    )

    history = [
        {"role": "user", "content": "Paint the shed."},
        {"role": "assistant", "content": chunks(asked.text)},
        {"role": "user", "content": "blue"},
    ]
    answered = chat(admin, agent["did"], history, session)
    assert chunks(answered.text) == "Blue it is."
    assert upstream.requests[-1].contains("blue")
    view = admin.get(f"/api/chat/sessions/{session}/messages").json()["messages"]
    assert [(m["role"], m["content"]) for m in view] == [
        ("user", "Paint the shed."),
        ("assistant", "Let me ask.\n\nWhich colour?\n- red\n- blue"),
        ("user", "blue"),
        ("assistant", "Blue it is."),
    ]
