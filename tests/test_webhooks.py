"""Webhooks (issue 6): subscriptions API, signed at-least-once delivery, retries, ordering, disabling.

Real server processes and a real receiver on loopback (`tests/support/receiver.py`); signatures are
checked with the `standardwebhooks` library. The question event is not covered here yet: asking
questions is another issue's feature (`agent.chat.question.asked` is in the catalog).
"""

from __future__ import annotations

import base64
import ipaddress
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpcore
import httpx
import pytest
from standardwebhooks import Webhook

from chambers.core.notices import CATALOG
from chambers.webhooks.signing import SecretBox, encode_body, sign
from chambers.webhooks.transport import GuardedBackend
from chambers.webhooks.urls import refusal
from tests.conftest import auth, server_env
from tests.support.fake_upstream import FakeUpstream, Gate, Reply, Text
from tests.support.receiver import Received, Receiver
from tests.support.server import ServerProcess, free_port
from tests.support.waiting import eventually

T = TypeVar("T")

CREATED = "agent.chat.session.created"
STARTED = "agent.chat.turn.started"
COMPLETED = "agent.chat.turn.completed"
CONFLICT = "agent.chat.turn.conflict"
ENDED = "agent.chat.session.ended"
LIFECYCLE = [CREATED, STARTED, COMPLETED, CONFLICT, ENDED]
# Short first delays, then enough 1 s retries that a receiver started a little later is still in time.
PATIENT_SCHEDULE = "0.2,0.2,0.5," + ",".join(["1"] * 30)


# helpers


def client_for(proc: ServerProcess, key: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=proc.url, headers=auth(key or proc.admin_key or ""), timeout=60)


def subscribe(client: httpx.Client, url: str, **body: Any) -> dict[str, Any]:
    created = client.post("/events/v1/webhooks", json={"url": url, **body})
    assert created.status_code == 201, created.text
    found: dict[str, Any] = created.json()
    return found


def new_chat(client: httpx.Client) -> str:
    created = client.post("/agent/v1/chat", json={})
    assert created.status_code == 201, created.text
    chat_id: str = created.json()["id"]
    return chat_id


def say(client: httpx.Client, chat_id: str, text: str) -> httpx.Response:
    return client.post(f"/agent/v1/chat/{chat_id}/message", json={"parts": [{"type": "text", "text": text}]})


def run_session(client: httpx.Client, turns: int = 1) -> str:
    """Create a session, run `turns` turns, end it: session.created, (started, completed)*, ended."""
    chat_id = new_chat(client)
    for n in range(turns):
        assert say(client, chat_id, f"turn {n}").status_code == 200
    assert client.delete(f"/agent/v1/chat/{chat_id}").status_code == 200
    return chat_id


def of_chat(chat_id: str) -> Callable[[Received], bool]:
    return lambda r: r.data.get("chatId") == chat_id


def first_arrivals(received: list[Received]) -> list[Received]:
    """Each event once, in the order it first arrived (at-least-once may repeat one)."""
    seen: dict[str, Received] = {}
    for r in received:
        seen.setdefault(r.webhook_id, r)
    return list(seen.values())


def attempts(client: httpx.Client, webhook_id: str, **params: Any) -> dict[str, Any]:
    listed = client.get(f"/events/v1/webhooks/{webhook_id}/deliveries", params=params)
    assert listed.status_code == 200, listed.text
    found: dict[str, Any] = listed.json()
    return found


@pytest.fixture
def hooks(admin: httpx.Client) -> Iterator[list[str]]:
    """Ids of subscriptions a test made on the shared server; deleted afterwards."""
    made: list[str] = []
    yield made
    for webhook_id in made:
        admin.delete(f"/events/v1/webhooks/{webhook_id}")


def private_server(
    tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream, name: str, **env: str
) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp(name), env=server_env(upstream, **env))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def patient_server(
    tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream
) -> Iterator[ServerProcess]:
    """Retries soon and long: for receivers that are down for a while."""
    yield from private_server(
        tmp_path_factory,
        upstream,
        "patient",
        CHAMBERS_WEBHOOK_RETRY_SCHEDULE=PATIENT_SCHEDULE,
        CHAMBERS_WEBHOOK_POLL_INTERVAL_S="0.1",
    )


@pytest.fixture(scope="module")
def impatient_server(
    tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream
) -> Iterator[ServerProcess]:
    """Gives up fast (three attempts) and disables a subscription after two failed deliveries."""
    yield from private_server(
        tmp_path_factory,
        upstream,
        "impatient",
        CHAMBERS_WEBHOOK_RETRY_SCHEDULE="0.1,0.1",
        CHAMBERS_WEBHOOK_DISABLE_AFTER="2",
        CHAMBERS_WEBHOOK_POLL_INTERVAL_S="0.1",
    )


# the subscriptions API


def test_a_subscription_shows_its_secret_once(admin: httpx.Client, hooks: list[str]) -> None:
    created = subscribe(
        admin,
        "http://127.0.0.1:9/hook",
        eventTypes=[CREATED, ENDED, CREATED],
        description="billing sync",
    )
    hooks.append(created["id"])
    assert created["id"].startswith("whk_") and created["status"] == "active"
    assert created["eventTypes"] == [CREATED, ENDED]  # duplicates dropped, order kept
    assert created["description"] == "billing sync" and created["createdAt"].endswith("Z")
    secret = created["secret"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret.removeprefix("whsec_"))) >= 24

    shown = admin.get(f"/events/v1/webhooks/{created['id']}")
    assert shown.status_code == 200 and "secret" not in shown.json()
    assert secret not in shown.text and secret.removeprefix("whsec_") not in shown.text
    listed = admin.get("/events/v1/webhooks")
    assert created["id"] in [w["id"] for w in listed.json()["data"]]
    assert "secret" not in listed.text and secret.removeprefix("whsec_") not in listed.text

    rotated = admin.post(f"/events/v1/webhooks/{created['id']}/rotate-secret")
    assert rotated.status_code == 200
    assert rotated.json()["secret"].startswith("whsec_") and rotated.json()["secret"] != secret
    assert "secret" not in admin.get(f"/events/v1/webhooks/{created['id']}").json()


def test_a_subscription_can_be_changed_paused_and_deleted(admin: httpx.Client, hooks: list[str]) -> None:
    created = subscribe(admin, "http://127.0.0.1:9/one", eventTypes=[CREATED])
    hooks.append(created["id"])
    path = f"/events/v1/webhooks/{created['id']}"
    changed = admin.patch(path, json={"url": "http://127.0.0.1:9/two", "eventTypes": [], "description": "x"})
    assert changed.status_code == 200, changed.text
    assert changed.json()["url"].endswith("/two") and changed.json()["eventTypes"] == []
    assert admin.patch(path, json={"description": None}).json()["description"] is None

    paused = admin.patch(path, json={"status": "disabled"}).json()
    assert paused["status"] == "disabled" and paused["disabledAt"] and paused["disabledReason"]
    resumed = admin.patch(path, json={"status": "active"}).json()
    assert resumed["status"] == "active" and resumed["disabledAt"] is None
    assert resumed["consecutiveFailures"] == 0

    for bad in ({"url": None}, {"status": "paused"}, {"eventTypes": None}, {"secret": "whsec_x"}):
        refused = admin.patch(path, json=bad)
        assert refused.status_code == 400, (bad, refused.text)
        assert refused.json()["error"]["code"] == "INVALID_REQUEST"

    assert admin.delete(path).status_code == 204
    assert admin.get(path).status_code == 404
    assert admin.delete(path).status_code == 404
    assert created["id"] not in [w["id"] for w in admin.get("/events/v1/webhooks").json()["data"]]


def test_bad_urls_are_refused(admin: httpx.Client) -> None:
    for url in [
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "http:///no-host",
        "http://",
        "not a url",
        "//127.0.0.1/no-scheme",
        "http://user:pass@127.0.0.1/hook",
        "http://token@127.0.0.1/hook",
        "http://127.0.0.1:0/hook",
        "http://127.0.0.1:99999/hook",
        "http://[::1/hook",
        "http://127.0.0.1/a b",
        "",
    ]:
        refused = admin.post("/events/v1/webhooks", json={"url": url})
        assert refused.status_code == 400, (url, refused.text)
        assert "url" in refused.json()["error"]["message"], url


def test_private_targets_are_refused_unless_allowed(make_server: Any) -> None:
    proc: ServerProcess = make_server(CHAMBERS_WEBHOOK_ALLOW_PRIVATE_TARGETS="false")
    with client_for(proc) as client:
        for url in [
            "http://127.0.0.1:8080/hook",
            "http://localhost/hook",
            "http://[::1]/hook",
            "http://10.1.2.3/hook",
            "http://192.168.0.10/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://[::ffff:127.0.0.1]/hook",
            "http://0.0.0.0/hook",
            "http://2130706433/hook",
            "http://[fe80::1]/hook",
            "http://224.0.0.1/hook",
        ]:
            refused = client.post("/events/v1/webhooks", json={"url": url})
            assert refused.status_code == 400, (url, refused.text)
            assert "refused" in refused.json()["error"]["message"], url
        assert client.get("/events/v1/webhooks").json()["data"] == []


def test_unknown_event_types_and_extra_fields_are_refused(admin: httpx.Client, hooks: list[str]) -> None:
    url = "http://127.0.0.1:9/hook"
    unknown = admin.post(
        "/events/v1/webhooks", json={"url": url, "eventTypes": [STARTED, "chat.nope", "turn.maybe"]}
    )
    assert unknown.status_code == 400
    message = unknown.json()["error"]["message"]
    assert "chat.nope" in message and "turn.maybe" in message and STARTED not in message

    for body in [
        {"url": url, "extra": 1},
        {"url": url, "secret": "whsec_mine"},
        {"url": 5},
        {"url": url, "eventTypes": CREATED},
        {"url": url, "eventTypes": [3]},
        {"url": url, "description": "x" * 501},
        {},
    ]:
        refused = admin.post("/events/v1/webhooks", json=body)
        assert refused.status_code == 400, (body, refused.text)
        assert refused.json()["error"]["code"] == "INVALID_REQUEST"
    assert (
        admin.post(
            "/events/v1/webhooks", content=b"{oops", headers={"content-type": "application/json"}
        ).status_code
        == 400
    )

    created = subscribe(admin, url)
    hooks.append(created["id"])
    patched = admin.patch(f"/events/v1/webhooks/{created['id']}", json={"eventTypes": ["nope.nope"]})
    assert patched.status_code == 400 and "nope.nope" in patched.json()["error"]["message"]


def test_other_organisations_cannot_see_or_touch_a_subscription(
    server: ServerProcess, admin: httpx.Client, hooks: list[str]
) -> None:
    mine = subscribe(admin, "http://127.0.0.1:9/mine")
    hooks.append(mine["id"])
    server.cli("orgs", "create", "webhooks-other")
    key = server.cli("keys", "create", "--org", "webhooks-other").stdout.strip()
    reader = server.cli("keys", "create", "--scopes", "agent:read").stdout.strip()
    path = f"/events/v1/webhooks/{mine['id']}"
    with client_for(server, key) as other:
        assert other.get(path).status_code == 404
        assert other.get(path).json()["error"]["code"] == "NOT_FOUND"
        assert other.patch(path, json={"description": "mine now"}).status_code == 404
        assert other.post(f"{path}/rotate-secret").status_code == 404
        assert other.post(f"{path}/test").status_code == 404
        assert other.get(f"{path}/deliveries").status_code == 404
        assert other.delete(path).status_code == 404
        assert mine["id"] not in [w["id"] for w in other.get("/events/v1/webhooks").json()["data"]]
    with client_for(server, reader) as read_only:
        assert read_only.get(path).status_code == 200
        assert read_only.get(f"{path}/deliveries").status_code == 200
        assert read_only.post("/events/v1/webhooks", json={"url": "http://127.0.0.1:9/x"}).status_code == 403
        assert read_only.delete(path).status_code == 403
    assert admin.get(path).json()["description"] is None
    with httpx.Client(base_url=server.url) as anonymous:
        assert anonymous.get("/events/v1/webhooks").status_code == 401


def test_the_event_type_catalog_is_listed(admin: httpx.Client) -> None:
    listed = admin.get("/events/v1/event-types")
    assert listed.status_code == 200
    types = {t["name"]: t for t in listed.json()["data"]}
    assert set(types) == set(CATALOG) and set(LIFECYCLE) <= set(types) and "webhook.test" in types
    for name, entry in types.items():
        assert entry["description"]
        schema = entry["schema"]
        assert schema["properties"]["type"] == {"const": name}
        assert set(schema["required"]) == {"type", "timestamp", "data"}
    assert {"orgId", "chatId", "turnId"} <= set(types[COMPLETED]["schema"]["properties"]["data"]["required"])


# delivery


def test_a_session_lifecycle_arrives_signed_and_in_order(
    server: ServerProcess, admin: httpx.Client, upstream: FakeUpstream, hooks: list[str]
) -> None:
    with Receiver() as receiver:
        created = subscribe(admin, receiver.url("/life"), eventTypes=LIFECYCLE)
        hooks.append(created["id"])
        receiver.secret("/life", created["secret"])
        upstream.script(Reply([Text("first answer")]), Reply([Text("held "), Gate("hold"), Text("answer")]))

        chat_id = new_chat(admin)
        first = say(admin, chat_id, "one")
        assert first.status_code == 200
        result: dict[str, httpx.Response] = {}
        sender = threading.Thread(target=lambda: result.setdefault("r", say(admin, chat_id, "two")))
        sender.start()
        upstream.wait_for_gate("hold")
        refused = say(admin, chat_id, "three")
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "TURN_CONFLICT"
        upstream.release("hold")
        sender.join(30)
        assert result["r"].status_code == 200
        assert admin.delete(f"/agent/v1/chat/{chat_id}").status_code == 200

        got = receiver.wait_for(7, path="/life", where=of_chat(chat_id))
    assert [r.type for r in got] == [CREATED, STARTED, COMPLETED, STARTED, CONFLICT, COMPLETED, ENDED]
    assert all(r.verified for r in got), [r.verify_error for r in got]
    assert all(r.ok for r in got)
    first_turn, second_turn = first.headers["X-Turn-Id"], result["r"].headers["X-Turn-Id"]
    assert [r.data.get("turnId") for r in got] == [
        None, first_turn, first_turn, second_turn, None, second_turn, None,
    ]  # fmt: skip
    assert got[4].data["activeTurnId"] == second_turn
    assert got[2].data["status"] == "completed" and got[2].data["usage"]["totalTokens"] > 0
    org_ids = {r.data["orgId"] for r in got}
    assert len(org_ids) == 1 and all(org_ids)
    ids = [r.webhook_id for r in got]
    assert len(set(ids)) == 7 and all(i.startswith("evt_") for i in ids)
    for r in got:
        assert set(r.json) == {"type", "timestamp", "data"} and r.json["timestamp"].endswith("Z")
        assert r.headers["content-type"] == "application/json"
        assert r.headers["user-agent"].startswith("Chambers-Webhooks/")
        assert abs(int(r.headers["webhook-timestamp"]) - time.time()) < 120
        # the signature is the one the library computes over exactly these bytes
        Webhook(created["secret"]).verify(r.body, r.headers)

    log = attempts(admin, created["id"])["data"]
    delivered = [a for a in log if a["eventId"] in ids]
    assert len(delivered) == 7
    assert all(a["statusCode"] == 200 and a["error"] is None and a["attempt"] == 1 for a in delivered)
    assert all(a["deliveryStatus"] == "delivered" for a in delivered)


def test_event_type_filters_choose_what_is_sent(
    admin: httpx.Client, upstream: FakeUpstream, hooks: list[str]
) -> None:
    with Receiver() as receiver:
        only_ended = subscribe(admin, receiver.url("/ended"), eventTypes=[ENDED])
        everything = subscribe(admin, receiver.url("/all"))
        hooks.extend([only_ended["id"], everything["id"]])
        chat_id = run_session(admin)
        every = receiver.wait_for(4, path="/all", where=of_chat(chat_id))
        ended = receiver.wait_for(1, path="/ended", where=of_chat(chat_id))
    assert [r.type for r in every] == [CREATED, STARTED, COMPLETED, ENDED]
    assert [r.type for r in receiver.requests(path="/ended", where=of_chat(chat_id))] == [ENDED]
    assert ended[0].webhook_id == every[-1].webhook_id  # one event, one id, whoever receives it


def test_a_test_event_and_the_delivery_log(impatient_server: ServerProcess) -> None:
    with Receiver() as receiver, client_for(impatient_server) as client:
        created = subscribe(client, receiver.url("/test"))
        receiver.secret("/test", created["secret"])
        receiver.script("/test", 500)
        sent = client.post(f"/events/v1/webhooks/{created['id']}/test")
        assert sent.status_code == 202, sent.text
        event_id = sent.json()["eventId"]
        got = receiver.wait_for(2, path="/test")
        assert [r.status for r in got] == [500, 200]
        assert {r.webhook_id for r in got} == {event_id}  # stable across retries
        assert all(r.verified for r in got)
        assert got[1].json["type"] == "webhook.test"
        assert got[1].json["data"] == {"webhookId": created["id"]}

        def both_logged() -> list[dict[str, Any]] | None:
            data: list[dict[str, Any]] = attempts(client, created["id"])["data"]
            return data if len(data) == 2 and data[0]["deliveryStatus"] == "delivered" else None

        newest, oldest = eventually(both_logged, what="two attempts in the log")
        assert (newest["attempt"], newest["statusCode"], newest["error"]) == (2, 200, None)
        assert newest["nextRetryAt"] is None and newest["eventType"] == "webhook.test"
        assert (oldest["attempt"], oldest["statusCode"]) == (1, 500)
        assert oldest["error"].startswith("HTTP 500") and oldest["nextRetryAt"].endswith("Z")
        assert newest["eventId"] == oldest["eventId"] == event_id
        assert newest["deliveryId"] == oldest["deliveryId"] == sent.json()["deliveryId"]
        assert all(
            isinstance(a["durationMs"], int) and a["createdAt"].endswith("Z") for a in (newest, oldest)
        )

        page1 = attempts(client, created["id"], limit=1)
        page2 = attempts(client, created["id"], limit=1, cursor=page1["nextCursor"])
        assert [a["id"] for a in page1["data"] + page2["data"]] == [newest["id"], oldest["id"]]
        assert page2["nextCursor"] is None


def test_finished_events_are_pruned_after_the_retention_and_pending_ones_kept(make_server: Any) -> None:
    server: ServerProcess = make_server(
        CHAMBERS_WEBHOOK_RETENTION_DAYS=str(1 / 86400),  # a second
        CHAMBERS_WEBHOOK_PRUNE_INTERVAL_S="0.2",
        CHAMBERS_WEBHOOK_POLL_INTERVAL_S="0.1",
        CHAMBERS_WEBHOOK_RETRY_SCHEDULE="3600",
    )
    with Receiver() as receiver, client_for(server) as client:
        delivered = subscribe(client, receiver.url("/up"))
        waiting = subscribe(client, f"http://127.0.0.1:{free_port()}/nobody-listens")
        for webhook in (delivered, waiting):
            assert client.post(f"/events/v1/webhooks/{webhook['id']}/test").status_code == 202
        receiver.wait_for(1, path="/up", ok=True)
        failed_once = eventually(lambda: attempts(client, waiting["id"])["data"], what="the failed attempt")
        assert failed_once[0]["deliveryStatus"] == "pending" and failed_once[0]["statusCode"] is None

        # The delivered event and its log go once a second has passed; the one that waits stays.
        eventually(lambda: attempts(client, delivered["id"])["data"] == [], what="the delivered event pruned")
        assert attempts(client, waiting["id"])["data"] == failed_once
        # The server logs it just after its transaction, so possibly after the API showed the effect.
        eventually(lambda: "removed 1 events older than the retention" in server.log(), what="the log line")


def test_a_failing_subscription_is_disabled(impatient_server: ServerProcess) -> None:
    with Receiver() as receiver, client_for(impatient_server) as client:
        receiver.answer("/down", 503)
        created = subscribe(client, receiver.url("/down"))
        path = f"/events/v1/webhooks/{created['id']}"
        for _ in range(2):  # two deliveries, each tried three times (schedule 0.1,0.1)
            assert client.post(f"{path}/test").status_code == 202
        receiver.wait_for(6, path="/down")

        def disabled() -> dict[str, Any] | None:
            shown: dict[str, Any] = client.get(path).json()
            return shown if shown["status"] == "disabled" else None

        shown = eventually(disabled, what="the subscription to be disabled")
        assert shown["consecutiveFailures"] == 2 and shown["disabledAt"]
        assert "2 consecutive failed deliveries" in shown["disabledReason"]
        log = attempts(client, created["id"])["data"]
        assert len(log) == 6 and all(a["statusCode"] == 503 for a in log)
        assert all(a["deliveryStatus"] == "dead" for a in log)
        assert sorted(a["attempt"] for a in log) == [1, 1, 2, 2, 3, 3]
        assert all((a["nextRetryAt"] is None) == (a["attempt"] == 3) for a in log)
        refused = client.post(f"{path}/test")
        assert refused.status_code == 409

        receiver.answer("/down", 200)
        enabled = client.patch(path, json={"status": "active"}).json()
        assert enabled["status"] == "active" and enabled["consecutiveFailures"] == 0
        assert enabled["disabledReason"] is None
        assert client.post(f"{path}/test").status_code == 202
        receiver.wait_for(1, path="/down", ok=True)


def test_deliveries_wait_for_a_receiver_that_is_down_and_keep_order(
    patient_server: ServerProcess, upstream: FakeUpstream
) -> None:
    receiver = Receiver(port=free_port())  # not started yet: connections are refused
    with client_for(patient_server) as client:
        run_session(client)  # warm up the server's first turn, before anything is timed
        created = subscribe(client, receiver.url("/later"))
        receiver.secret("/later", created["secret"])
        chats = [run_session(client, turns=2) for _ in range(2)]

        def refused_logged() -> list[dict[str, Any]] | None:
            log: list[dict[str, Any]] = attempts(client, created["id"])["data"]
            return log if len(log) >= 2 else None

        log = eventually(refused_logged, what="failed attempts")
        assert all(a["statusCode"] is None and "ConnectError" in a["error"] for a in log)
        receiver.script("/later", 500, 500, 500)
        receiver.start()
        try:
            expected = [CREATED, STARTED, COMPLETED, STARTED, COMPLETED, ENDED]
            for chat_id in chats:
                got = receiver.wait_for(len(expected), path="/later", ok=True, where=of_chat(chat_id))
                assert [r.type for r in first_arrivals(got)] == expected
                assert all(r.verified for r in got)
            failed = receiver.requests(path="/later", ok=False)
            delivered = {r.webhook_id for r in receiver.requests(path="/later", ok=True)}
            assert len(failed) == 3 and {r.webhook_id for r in failed} <= delivered
            assert len(delivered) == 2 * len(expected)
        finally:
            receiver.stop()
        client.delete(f"/events/v1/webhooks/{created['id']}")


def test_deliveries_survive_a_restart(patient_server: ServerProcess, upstream: FakeUpstream) -> None:
    receiver = Receiver(port=free_port())
    with client_for(patient_server) as client:
        created = subscribe(client, receiver.url("/restart"))
        receiver.secret("/restart", created["secret"])
        chat_id = run_session(client)
        eventually(lambda: attempts(client, created["id"])["data"], what="a failed attempt")
    patient_server.restart()
    with receiver, client_for(patient_server) as client:
        got = receiver.wait_for(4, path="/restart", ok=True, where=of_chat(chat_id), timeout=30)
        assert [r.type for r in first_arrivals(got)] == [CREATED, STARTED, COMPLETED, ENDED]
        assert all(r.verified for r in got)
        client.delete(f"/events/v1/webhooks/{created['id']}")


def test_a_slow_receiver_delays_neither_turns_nor_other_subscriptions(
    admin: httpx.Client, upstream: FakeUpstream, hooks: list[str]
) -> None:
    run_session(admin)  # the server's first turn may be slow for its own reasons
    with Receiver() as slow, Receiver() as fast:
        slow.answer("/slow", 200, delay=3)
        hooks.append(subscribe(admin, slow.url("/slow"))["id"])
        hooks.append(subscribe(admin, fast.url("/fast"))["id"])
        chat_id = new_chat(admin)
        started = time.monotonic()
        assert say(admin, chat_id, "quick").status_code == 200
        turn_s = time.monotonic() - started
        fast.wait_for(3, path="/fast", where=of_chat(chat_id), timeout=10)
        slow_so_far = slow.requests(path="/slow", where=of_chat(chat_id))
        assert turn_s < 2.5, f"the turn took {turn_s:.2f} s"
        # The slow receiver answers one request per 3 s (in order, per session): it cannot have
        # answered more than the first event by the time the fast one has all three.
        assert len(slow_so_far) <= 1
        slow.wait_for(1, path="/slow", where=of_chat(chat_id), timeout=15)


# the parts, directly


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("93.184.216.34", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("100.64.0.1", False),
        ("169.254.169.254", False),
        ("0.0.0.0", False),
        ("224.0.0.251", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("192.0.2.10", False),
        ("::", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("2002:7f00:1::1", False),
        ("64:ff9b::7f00:1", False),
        ("2001:db8::1", False),
    ],
)
def test_address_rules(address: str, allowed: bool) -> None:
    assert (refusal(ipaddress.ip_address(address)) is None) is allowed


async def test_the_delivery_connection_itself_refuses_private_addresses() -> None:
    with Receiver() as receiver:
        guarded = GuardedBackend(allow_private=False)
        for host in ("127.0.0.1", "localhost"):
            with pytest.raises(httpcore.ConnectError, match="loopback"):
                await guarded.connect_tcp(host, receiver.port)
        stream = await GuardedBackend(allow_private=True).connect_tcp("127.0.0.1", receiver.port)
        await stream.aclose()


def test_signatures_verify_with_the_standard_library(tmp_path: Path) -> None:
    box = SecretBox.from_settings(None, tmp_path)
    assert (tmp_path / "secret.key").stat().st_mode & 0o777 == 0o600
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    sealed = box.seal(secret)
    assert secret not in sealed and secret.removeprefix("whsec_") not in sealed
    assert SecretBox.from_settings(None, tmp_path).open(sealed) == secret  # the same key file
    rotated = SecretBox.from_settings("new-key,old-key", tmp_path)
    assert rotated.open(SecretBox.from_settings("old-key", tmp_path).seal(secret)) == secret

    body = encode_body({"type": "webhook.test", "timestamp": "2026-01-01T00:00:00.000Z", "data": {}})
    signed = sign(secret, "evt_1", body)
    assert Webhook(secret).verify(signed.body, signed.headers)["type"] == "webhook.test"
    assert signed.headers["webhook-id"] == "evt_1"
