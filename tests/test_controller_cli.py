"""`chambers agents`, `chambers users`: the same services as the API, from the command line."""

from __future__ import annotations

import json

import httpx

from chambers.core.controller.did import is_did
from tests.support.server import ServerProcess
from tests.test_controller import PASSWORD, sign_in


def test_agents_commands(server: ServerProcess, admin: httpx.Client) -> None:
    made = server.cli(
        "agents",
        "create",
        "--name",
        "cli agent",
        "--tools",
        "read_file,grep",
        "--policy",
        '{"maxTurnsPerSession": 3}',
    )
    assert made.returncode == 0, made.stderr
    did = made.stdout.strip()
    assert is_did(did) and did.startswith("did:key:z6Mk")
    assert admin.get(f"/api/agents/{did}").json()["policy"]["maxTurnsPerSession"] == 3

    listed = server.cli("agents", "list")
    assert did in listed.stdout and "cli agent" in listed.stdout
    shown = json.loads(server.cli("agents", "show", did).stdout)
    assert shown["did"] == did and shown["tools"] == ["grep", "read_file"]
    assert not any("private" in key.lower() for key in shown)

    updated = server.cli("agents", "update", did, "--name", "renamed", "--tools", "all", "--policy", "{}")
    assert updated.returncode == 0, updated.stderr
    after = json.loads(updated.stdout)
    assert (
        after["name"] == "renamed"
        and after["tools"] is None
        and after["policy"]["maxTurnsPerSession"] is None
    )

    bad = server.cli("agents", "create", "--name", "x", "--policy", '{"nope": 1}')
    assert bad.returncode == 1 and "nope" in bad.stderr
    assert server.cli("agents", "delete", did).returncode == 0
    assert admin.get(f"/api/agents/{did}").status_code == 404
    assert server.cli("agents", "show", did).returncode == 1


def test_users_create_with_a_password_from_stdin_or_the_flag(server: ServerProcess) -> None:
    piped = server.cli(
        "users", "create", "--email", "piped@example.com", "--role", "admin", input=PASSWORD + "\n"
    )
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.strip().startswith("usr_")
    boss = sign_in(server, "piped@example.com")
    assert boss.get("/api/auth/me").json()["role"] == "admin"

    flagged = server.cli(
        "users", "create", "--org", "default", "--email", "flag@example.com", "--password", PASSWORD
    )
    assert flagged.returncode == 0, flagged.stderr
    assert sign_in(server, "flag@example.com").get("/api/auth/me").json()["role"] == "member"
    listed = server.cli("users", "list")
    assert "piped@example.com" in listed.stdout and "flag@example.com" in listed.stdout

    again = server.cli("users", "create", "--email", "flag@example.com", "--password", PASSWORD)
    assert again.returncode == 1 and "already exists" in again.stderr
    weak = server.cli("users", "create", "--email", "weak@example.com", "--password", "short")
    assert weak.returncode == 1 and "password" in weak.stderr
