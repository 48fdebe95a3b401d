"""The seed's two consumers of `/api/chat`, run as written (only host, agent and credentials filled in)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import auth, need
from tests.support.fake_upstream import FakeUpstream, Reply, Text
from tests.support.server import ServerProcess
from tests.test_controller import give, make_agent, make_user, sign_in

COOKIE = "next-auth.session-token"

# Seed 004, "Consuming the stream (Python)", verbatim but for the URL, agentDid and cookie value.
SEED_PYTHON = """\
import requests, json

res = requests.post(
"{url}/api/chat",
json={{
"agentDid": "{did}",
"messages": [{{"role": "user", "content": "Hello!"}}],
}},
cookies={{"next-auth.session-token": "{token}"}},
stream=True,
)

for line in res.iter_lines():
if line.startswith(b"data: "):
payload = line[6:]
if payload == b"[DONE]":
break
chunk = json.loads(payload)["chunk"]
print(chunk, end="", flush=True)
"""

# Seed 004, "Consuming the stream (JavaScript)": the URL comes from the environment and, outside a
# browser, the cookie is a header; `response.body!` loses its TypeScript `!`; the answer is printed.
SEED_JAVASCRIPT = """\
const response = await fetch(process.env.CHAMBERS_URL + "/api/chat", {
method: "POST",
credentials: "include",
headers: { "Content-Type": "application/json", "Cookie": process.env.CHAMBERS_COOKIE },
body: JSON.stringify({
agentDid: process.env.CHAMBERS_AGENT_DID,
messages: [{ role: "user", content: "Hello!" }],
}),
});

const reader = response.body.getReader();
const decoder = new TextDecoder();
let full = "";

while (true) {
const { done, value } = await reader.read();
if (done) break;

const text = decoder.decode(value);
for (const line of text.split("\\n")) {
if (line.startsWith("data: ")) {
const payload = line.slice(6);
if (payload === "[DONE]") break;
const { chunk } = JSON.parse(payload);
full += chunk;
// Update your UI with `chunk`
}
}
}
process.stdout.write(full);
"""

ANSWER = 'Hello! Here are the key trends: rising adoption, "quoted" words, and ünïcode ✓.\n\nDone.'


def indent_python(seed: str) -> str:
    """The seed's page lost its indentation; put Python's back (the code is otherwise unchanged)."""
    lines, depth, out = seed.splitlines(), 0, []
    openers = ("for ", "if ")
    for line in lines:
        stripped = line.strip()
        out.append("    " * depth + stripped)
        if stripped.startswith(openers) and stripped.endswith(":"):
            depth += 1
        elif stripped == "break":
            depth -= 1
    return "\n".join(out) + "\n"


@pytest.fixture
def seeded(make_server: Any, upstream: FakeUpstream) -> tuple[ServerProcess, str, str]:
    """A server whose sign-in cookie has the seed's name, an agent, and a member with a grant."""
    server: ServerProcess = make_server(CHAMBERS_SESSION_COOKIE_NAME=COOKIE)
    assert server.admin_key
    with httpx.Client(base_url=server.url, headers=auth(server.admin_key), timeout=30) as admin:
        agent = make_agent(admin, name="Analyst")
        user = make_user(admin)
        give(admin, agent["did"], user["id"])
    member = sign_in(server, user["email"])
    token = member.cookies[COOKIE]
    return server, agent["did"], token


def test_the_seeds_python_consumer(
    seeded: tuple[ServerProcess, str, str], upstream: FakeUpstream, tmp_path: Path
) -> None:
    server, did, token = seeded
    upstream.script(Reply([Text(ANSWER, chunk_size=7)]))
    script = tmp_path / "consumer.py"
    script.write_text(indent_python(SEED_PYTHON.format(url=server.url, did=did, token=token)))
    ran = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == ANSWER


def test_the_seeds_javascript_consumer(
    seeded: tuple[ServerProcess, str, str], upstream: FakeUpstream, tmp_path: Path
) -> None:
    need(shutil.which("node") is not None, "node is not installed")
    server, did, token = seeded
    upstream.script(Reply([Text(ANSWER, chunk_size=5)]))
    script = tmp_path / "consumer.mjs"
    script.write_text(SEED_JAVASCRIPT)
    env = {
        **os.environ,
        "CHAMBERS_URL": server.url,
        "CHAMBERS_AGENT_DID": did,
        "CHAMBERS_COOKIE": f"{COOKIE}={token}",
    }
    ran = subprocess.run(["node", str(script)], capture_output=True, text=True, timeout=60, env=env)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == ANSWER
