"""Snapshots in S3-compatible object storage, end to end: a real server whose idle session lands in a
bucket (a real S3 HTTP server on loopback) and comes back from it on the next message."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import auth
from tests.support.fake_upstream import FakeUpstream, Reply, Text, ToolCall
from tests.support.s3 import AWS_ENV, S3Server, running_s3
from tests.support.server import ServerProcess
from tests.support.sse import read_until, respond_turn
from tests.support.waiting import eventually
from tests.test_sandboxes import FAST_IDLE, say


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with running_s3() as server:
        yield server


def test_an_idle_session_sleeps_in_the_bucket_and_wakes_from_it(
    make_server: Any, upstream: FakeUpstream, s3: S3Server
) -> None:
    bucket = s3.new_bucket()
    proc: ServerProcess = make_server(
        **FAST_IDLE,
        **AWS_ENV,
        CHAMBERS_SNAPSHOT_URL=f"s3://{bucket}/deploy/snapshots",
        CHAMBERS_SNAPSHOT_ENDPOINT_URL=s3.endpoint_url,
    )
    line = f"snapshot store: S3 s3://{bucket}/deploy/snapshots at {s3.endpoint_url}"
    eventually(lambda: line in proc.log(), what="the snapshot store's start-up line")  # read by a thread
    assert AWS_ENV["AWS_SECRET_ACCESS_KEY"] not in proc.log()
    with httpx.Client(base_url=proc.url, headers=auth(proc.admin_key or ""), timeout=60) as client:
        chat_id = client.post("/agent/v1/chat", json={"idleTimeoutMs": 1000}).json()["id"]
        upstream.script(
            Reply([ToolCall("shell", {"command": "mkdir -p work && echo kept-in-s3 > work/notes.txt"})]),
            Reply([Text("Saved.")]),
        )
        with client.stream("GET", f"/agent/v1/chat/{chat_id}/stream") as feed:
            say(client, chat_id, "write a note")
            read_until(feed, lambda e: e.event == "session.status" and e.data["status"] == "idle")
        image_id = client.get(f"/agent/v1/chat/{chat_id}").json()["snapshotImageId"]
        assert image_id.startswith("im-")
        folder = f"deploy/snapshots/{image_id}"
        parts = {f"{folder}/{name}" for name in ("workspace.tar", "state.json", "manifest.json")}
        assert parts <= s3.keys(bucket)
        assert not (proc.data_dir / "snapshots").exists()  # nothing went to the local default
        assert not (proc.data_dir / "sandboxes" / chat_id).exists()  # the idle workspace was freed

        upstream.script(
            Reply([ToolCall("shell", {"command": "cat work/notes.txt"})]),
            Reply([Text("All there.")]),
        )
        events = respond_turn(client, chat_id, "read it back")
        statuses = [e.data["status"] for e in events if e.event == "turn.status"]
        assert statuses[0] == "restoring" and "running" in statuses
        assert upstream.requests[-1].contains("kept-in-s3")
