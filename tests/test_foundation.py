"""Foundation: health, keys and scopes, organisation isolation, the error envelope, settings, logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.conftest import auth
from tests.support.server import ServerProcess
from tests.support.waiting import eventually


def error_of(response: httpx.Response) -> dict[str, str]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "code"}, body
    return dict(body["error"])


def test_health_and_readiness_need_no_key(server: ServerProcess) -> None:
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server.url + "/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["store"]["ok"] is True
    assert ready.json()["checks"]["load"]["ok"] is True  # the event loop keeps time (tests/test_overload.py)


def test_readiness_says_when_the_start_up_preload_is_done(server: ServerProcess) -> None:
    def warm() -> dict[str, object] | None:
        check: dict[str, object] = httpx.get(server.url + "/readyz").json()["checks"]["warm"]
        assert check["required"] is False  # a cold server is ready: only its first turns wait longer
        return check if check["ok"] else None

    assert eventually(warm, what="the preload to finish") == {"ok": True, "required": False}


def test_openapi_and_docs_are_served(server: ServerProcess) -> None:
    spec = httpx.get(server.url + "/openapi.json").json()
    assert "/agent/v1/chat" in spec["paths"]
    assert httpx.get(server.url + "/docs").status_code == 200


def test_every_response_carries_a_request_id(server: ServerProcess) -> None:
    first = httpx.get(server.url + "/healthz").headers["x-request-id"]
    second = httpx.get(server.url + "/nope").headers["x-request-id"]
    assert first.startswith("req_") and second.startswith("req_") and first != second


def test_unknown_route_and_method_use_the_envelope(server: ServerProcess) -> None:
    missing = httpx.get(server.url + "/no/such/route")
    assert missing.status_code == 404 and error_of(missing)["code"] == "NOT_FOUND"
    wrong = httpx.put(server.url + "/healthz")
    assert wrong.status_code == 405 and error_of(wrong)["code"] == "METHOD_NOT_ALLOWED"


def test_missing_malformed_and_revoked_keys_are_401(server: ServerProcess) -> None:
    none = httpx.get(server.url + "/agent/v1/chat")
    assert none.status_code == 401 and error_of(none)["code"] == "UNAUTHORIZED"
    bogus = httpx.get(server.url + "/agent/v1/chat", headers=auth("chk_not-a-real-key"))
    assert bogus.status_code == 401
    basic = httpx.get(server.url + "/agent/v1/chat", headers={"Authorization": "Basic abc"})
    assert basic.status_code == 401

    created = server.cli("keys", "create", "--scopes", "agent:read", "--name", "doomed")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert httpx.get(server.url + "/agent/v1/chat", headers=auth(key)).status_code == 200
    key_id = next(
        line.split("\t")[0] for line in server.cli("keys", "list").stdout.splitlines() if "doomed" in line
    )
    assert server.cli("keys", "revoke", key_id).returncode == 0
    revoked = httpx.get(server.url + "/agent/v1/chat", headers=auth(key))
    assert revoked.status_code == 401 and error_of(revoked)["code"] == "UNAUTHORIZED"


def test_a_missing_scope_is_403_naming_it(server: ServerProcess) -> None:
    key = server.cli("keys", "create", "--scopes", "agent:read").stdout.strip()
    refused = httpx.post(server.url + "/agent/v1/chat", headers=auth(key), json={})
    assert refused.status_code == 403
    error = error_of(refused)
    assert error["code"] == "FORBIDDEN" and "agent:write" in error["message"]


def test_cli_prints_only_the_key_on_stdout(server: ServerProcess) -> None:
    created = server.cli("keys", "create", "--scopes", "agent:read,agent:write", "--name", "script")
    assert created.returncode == 0
    lines = created.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("chk_")
    listing = server.cli("keys", "list").stdout
    assert "script" in listing and lines[0] not in listing  # the secret is never shown again
    assert server.cli("keys", "create", "--scopes", "root").returncode != 0
    assert server.cli("keys", "create", "--org", "no-such-org").returncode != 0


def test_organisations_never_see_each_others_sessions(server: ServerProcess, admin: httpx.Client) -> None:
    assert server.cli("orgs", "create", "globex").returncode == 0
    assert server.cli("orgs", "create", "globex").returncode != 0  # names are unique
    other = server.cli("keys", "create", "--org", "globex").stdout.strip()
    mine = admin.post("/agent/v1/chat", json={"title": "private"}).json()["id"]
    seen = httpx.get(f"{server.url}/agent/v1/chat/{mine}", headers=auth(other))
    assert seen.status_code == 404 and error_of(seen)["code"] == "NOT_FOUND"
    listed = httpx.get(f"{server.url}/agent/v1/chat", headers=auth(other)).json()["data"]
    assert mine not in {s["id"] for s in listed}
    for method, path in [("DELETE", ""), ("POST", "/cancel"), ("GET", "/messages")]:
        response = httpx.request(method, f"{server.url}/agent/v1/chat/{mine}{path}", headers=auth(other))
        assert response.status_code == 404, (method, path)
    assert admin.get(f"/agent/v1/chat/{mine}").json()["status"] == "active"


def test_bad_bodies_get_400_and_the_server_keeps_serving(admin: httpx.Client) -> None:
    malformed = admin.post(
        "/agent/v1/chat", content=b'{"title": ', headers={"Content-Type": "application/json"}
    )
    assert malformed.status_code == 400 and "JSON" in error_of(malformed)["message"]
    wrong_type = admin.post("/agent/v1/chat", json={"idleTimeoutMs": "soon"})
    assert wrong_type.status_code == 400 and "idleTimeoutMs" in error_of(wrong_type)["message"]
    unknown = admin.post("/agent/v1/chat", json={"titel": "typo"})
    assert unknown.status_code == 400
    assert "titel" in error_of(unknown)["message"] and "unknown field" in error_of(unknown)["message"]
    assert admin.get("/healthz").status_code == 200


def test_a_body_over_the_limit_is_413(make_server: object) -> None:
    proc: ServerProcess = make_server(CHAMBERS_MAX_BODY_BYTES="4096")  # type: ignore[operator]
    headers = auth(proc.admin_key or "")
    big = httpx.post(f"{proc.url}/agent/v1/chat", headers=headers, json={"title": "x" * 10_000})
    assert big.status_code == 413 and error_of(big)["code"] == "PAYLOAD_TOO_LARGE"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold on a streamed body too
        for _ in range(10):
            yield b"x" * 1024

    streamed = httpx.post(f"{proc.url}/agent/v1/chat", headers=headers, content=chunks())
    assert streamed.status_code == 413
    assert httpx.post(f"{proc.url}/agent/v1/chat", headers=headers, json={"title": "ok"}).status_code == 201


def test_admin_key_is_printed_once_and_never_logged(make_server: object) -> None:
    proc: ServerProcess = make_server(CHAMBERS_LOG_FORMAT="json")  # type: ignore[operator]
    key = proc.admin_key
    assert key is not None
    httpx.get(f"{proc.url}/agent/v1/chat", headers=auth(key))
    assert proc.log().count(key) == 1
    proc.restart()
    assert proc.log().count(key) == 1  # not printed again on a second start
    assert httpx.get(f"{proc.url}/agent/v1/chat", headers=auth(key)).status_code == 200
    access = [
        json.loads(line) for line in proc.output if line.startswith("{") and '"chambers.access"' in line
    ]
    assert access and all({"request_id", "method", "path", "status", "duration_ms"} <= set(a) for a in access)


def test_bad_settings_stop_the_start_with_a_clear_message(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAMBERS_")}
    env.update(CHAMBERS_PORT="eighty", CHAMBERS_DATA_DIR=str(tmp_path))
    bad = subprocess.run([sys.executable, "-m", "chambers", "serve"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2
    assert "CHAMBERS_PORT" in bad.stderr and "Traceback" not in bad.stderr
    env.update(CHAMBERS_PORT="8000", CHAMBERS_IDLE_TIMEOUT_MIN_MS="5000", CHAMBERS_IDLE_TIMEOUT_MAX_MS="10")
    bounds = subprocess.run(
        [sys.executable, "-m", "chambers", "serve"], env=env, capture_output=True, text=True
    )
    assert bounds.returncode == 2 and "idle_timeout_min_ms" in bounds.stderr
    env.update(CHAMBERS_IDLE_TIMEOUT_MAX_MS="100000", CHAMBERS_REDIS_URL="localhost:6379")
    redis = subprocess.run(
        [sys.executable, "-m", "chambers", "serve"], env=env, capture_output=True, text=True
    )
    assert redis.returncode == 2 and "redis://" in redis.stderr  # not a failure to connect, later


def test_a_toml_config_file_is_read(tmp_path: Path) -> None:
    config = tmp_path / "chambers.toml"
    config.write_text('default_model = "openai/gpt-4o"\nidle_timeout_default_ms = 120000\n')
    proc = ServerProcess(tmp_path / "data", args=["--config", str(config)])
    proc.start()
    try:
        assert proc.admin_key
        created = httpx.post(f"{proc.url}/agent/v1/chat", headers=auth(proc.admin_key), json={}).json()
        assert created["model"] == "openai/gpt-4o" and created["idleTimeoutMs"] == 120000
    finally:
        proc.stop()
    missing = ServerProcess(tmp_path / "data2", args=["--config", str(tmp_path / "absent.toml")])
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAMBERS_")}
    result = subprocess.run(
        [sys.executable, "-m", "chambers", "serve", *missing.args], env=env, capture_output=True, text=True
    )
    assert result.returncode == 2 and "absent.toml" in result.stderr
