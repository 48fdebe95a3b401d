"""`chambers chat` driven as a person would, in a pseudo-terminal (pexpect), and `chambers send`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pexpect
import pytest

from chambers.client import Client
from tests.support.fake_upstream import FakeUpstream, Gate, Reply, Text, Tokens, ToolCall
from tests.support.server import ServerProcess

PROMPT = "you> "
ASK = ToolCall("ask_user", {"question": "Which file should I use?", "options": ["a.txt", "b.txt"]})


def cli_env(server: ServerProcess, **extra: str) -> dict[str, str]:
    """The user's environment: where the server is and the key, as `chambers chat` reads them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAMBERS_")}
    env.update(CHAMBERS_URL=server.url, CHAMBERS_API_KEY=server.admin_key or "")
    env.update(extra)
    return env


def spawn(server: ServerProcess, *args: str, **env: str) -> pexpect.spawn:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "chambers", "chat", *args],
        env=cli_env(server, **env),
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 200),
    )
    child.expect(PROMPT)
    return child


@pytest.fixture
def sdk(server: ServerProcess) -> Iterator[Client]:
    with Client(server.url, server.admin_key) as client:
        yield client


def session_of(child: pexpect.spawn) -> str:
    """The session id the terminal printed in its banner."""
    found = child.before or ""
    start = found.index("chat_")
    return found[start : start + 31]


def close(child: pexpect.spawn) -> None:
    if child.isalive():
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    child.close()


def test_the_answer_streams_as_it_comes(server: ServerProcess, upstream: FakeUpstream, sdk: Client) -> None:
    upstream.script(
        Reply([Text("The first half, ", chunks=2), Gate("half"), Text("then the rest.", chunks=3)])
    )
    child = spawn(server, "--title", "terminal test")
    chat_id = session_of(child)
    child.sendline("Tell me in two halves.")
    child.expect_exact("The first half, ")  # on screen while the model is still held at the gate
    upstream.release("half")
    child.expect_exact("then the rest.")
    child.expect(r"\d+ tokens · \$\d+\.\d{6}")
    child.expect_exact(PROMPT)
    close(child)
    assert child.exitstatus == 0
    last = sdk.chat(chat_id).messages().data[-1]
    assert last.parts[0]["text"] == "The first half, then the rest." and last.status == "completed"


def test_a_question_is_asked_at_the_prompt_and_the_reply_sent(
    server: ServerProcess, upstream: FakeUpstream
) -> None:
    upstream.script(Reply([Text("Let me check. "), ASK]), Reply([Text("Using b.txt: 3 lines.")]))
    child = spawn(server)
    child.sendline("Summarise the file.")
    child.expect_exact("Let me check.")
    child.expect_exact("? Which file should I use?")
    child.expect_exact("1) a.txt")
    child.expect_exact("2) b.txt")
    child.expect_exact("answer (1-2 or text)> ")
    child.sendline("2")  # the option's number stands for its text
    child.expect_exact("Using b.txt: 3 lines.")
    child.expect_exact(PROMPT)
    assert upstream.requests[-1].contains("b.txt")
    close(child)


def test_tool_calls_show_compactly(server: ServerProcess, upstream: FakeUpstream) -> None:
    upstream.script(
        Reply([ToolCall("shell", {"command": "echo terminal-$((6*7))"})]),
        Reply([Text("It printed 42.")]),
    )
    child = spawn(server)
    child.sendline("Run something.")
    child.expect_exact("⚙ shell echo terminal-$((6*7))")
    child.expect_exact("✓ shell ok")
    child.expect_exact("It printed 42.")
    child.expect_exact(PROMPT)
    close(child)


def test_ctrl_c_cancels_a_slow_turn(server: ServerProcess, upstream: FakeUpstream, sdk: Client) -> None:
    upstream.script(Reply([Tokens(1000)], gap=0.05), Reply([Text("Still here.")]))
    child = spawn(server)
    chat_id = session_of(child)
    child.sendline("Write a lot.")
    child.expect_exact("tok tok tok")
    child.sendintr()
    child.expect_exact("cancelling the turn")
    child.expect_exact("[turn cancelled]")
    child.expect_exact(PROMPT)
    last = sdk.chat(chat_id).messages().data[-1]
    assert last.role == "assistant" and last.status == "cancelled"
    assert 0 < last.parts[0]["text"].count("tok") < 1000
    assert sdk.chat(chat_id).refresh().activeTurnId is None
    child.sendline("Are you there?")  # the session takes the next message at once
    child.expect_exact("Still here.")
    child.expect_exact(PROMPT)
    close(child)
    assert child.exitstatus == 0


def test_a_second_ctrl_c_leaves(server: ServerProcess, upstream: FakeUpstream, sdk: Client) -> None:
    idle = spawn(server)
    idle.sendintr()
    idle.expect_exact("Ctrl-C again to leave")
    idle.sendintr()
    idle.expect(pexpect.EOF)
    idle.close()
    assert idle.exitstatus == 130

    upstream.script(Reply([Tokens(1000)], gap=0.05))
    busy = spawn(server)
    chat_id = session_of(busy)
    busy.sendline("Write a lot.")
    busy.expect_exact("tok tok")
    busy.sendintr()  # cancels...
    busy.expect_exact("cancelling the turn")
    busy.sendintr()  # ...and a second one within 2 s leaves
    busy.expect(pexpect.EOF)
    busy.close()
    assert busy.exitstatus == 130
    sdk.chat(chat_id).cancel()  # in case the first Ctrl-C's cancel was cut short by the second
    info = sdk.chat(chat_id).refresh()
    assert info.status == "active" and info.activeTurnId is None  # leaving keeps the session


def test_usage_status_and_end(server: ServerProcess, upstream: FakeUpstream, sdk: Client) -> None:
    upstream.script(Reply([Text("Counted.")]))
    child = spawn(server, "--model", "openai/gpt-4o")
    chat_id = session_of(child)
    child.sendline("/usage")
    child.expect(r"session: 0 in \+ 0 out = 0 tokens · \$0\.000000 · 0 turns")
    child.sendline("count")
    child.expect_exact("Counted.")
    child.expect_exact(PROMPT)
    info = sdk.chat(chat_id).refresh()
    child.sendline("/usage")
    child.expect_exact(
        f"session: {info.usage.totalInputTokens} in + {info.usage.totalOutputTokens} out"
        f" = {info.usage.totalTokens} tokens"
    )
    child.expect_exact("1 turns")
    child.expect_exact("last turn:")
    child.sendline("/status")
    child.expect_exact(f"session {chat_id} · active · openai/gpt-4o · 1 turns · no turn running")
    child.sendline("/help")
    child.expect_exact("/end")
    child.sendline("/end")
    child.expect_exact(f"session {chat_id} ended")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert sdk.chat(chat_id).refresh().status == "ended"


def test_resuming_a_session_and_talking_to_an_agent(
    server: ServerProcess, upstream: FakeUpstream, sdk: Client
) -> None:
    agent = sdk.controller.agents.create(
        f"terminal-{uuid.uuid4().hex[:6]}", system_prompt="You are the archivist."
    )
    upstream.script(
        Reply([Text("Filed it.")]), Reply([Text("Let me ask. "), ASK]), Reply([Text("Filed a.txt.")])
    )
    child = pexpect.spawn(
        sys.executable,
        ["-m", "chambers", "chat", "--agent", agent.did],
        env=cli_env(server),
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 200),
    )
    child.expect_exact(f"agent {agent.name}")
    child.expect_exact(PROMPT)
    child.sendline("File this.")
    child.expect(r"session (chat_[0-9a-z]{26})")
    chat_id = child.match.group(1)
    child.expect_exact("Filed it.")
    child.expect_exact(PROMPT)
    assert upstream.requests[-1].contains("You are the archivist.")  # the agent's prompt: via the controller
    child.sendline("And the other one?")  # the next turn, on /agent/v1, still asks and gets the reply
    child.expect_exact("? Which file should I use?")
    child.sendline("1")
    child.expect_exact("Filed a.txt.")
    child.expect_exact(PROMPT)
    close(child)
    view = sdk.controller.session_messages(chat_id).messages
    assert view[0].content == "File this."
    assert sdk.chat(chat_id).refresh().agentId == agent.id

    upstream.script(Reply([Text("Still here.")]))
    resumed = spawn(server, "--session", chat_id, "--agent", agent.did)
    resumed.sendline("Hello again")
    resumed.expect_exact("Still here.")
    resumed.expect_exact(PROMPT)
    close(resumed)


def test_plain_output_when_not_a_terminal(server: ServerProcess, upstream: FakeUpstream) -> None:
    upstream.script(Reply([Text("Plain and simple.")]))
    done = subprocess.run(
        [sys.executable, "-m", "chambers", "chat"],
        input="Say it plainly.\n/quit\n",
        env=cli_env(server),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Plain and simple." in done.stdout
    assert "\x1b[" not in done.stdout and PROMPT not in done.stdout


def test_a_missing_session_is_an_error(server: ServerProcess) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "chambers", "chat", "--session", "chat_nope"],
        env=cli_env(server),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "Chat session not found (NOT_FOUND)" in done.stderr


# chambers send


def send(
    server: ServerProcess, *args: str, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chambers", "send", *args],
        env=cli_env(server, **env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_send_prints_the_answer_or_the_whole_response(
    server: ServerProcess, upstream: FakeUpstream, sdk: Client
) -> None:
    chat = sdk.chats.create()
    upstream.script(Reply([Text("Forty-two.")]), Reply([Text("Again: forty-two.")]))
    done = send(server, "--session", chat.id, "What is the answer?")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Forty-two.\n"

    as_json = send(server, "--session", chat.id, "--json", "-", stdin="And again?")
    assert as_json.returncode == 0, as_json.stderr
    body: dict[str, Any] = json.loads(as_json.stdout)
    assert body["parts"][0]["text"] == "Again: forty-two." and body["info"]["status"] == "completed"
    assert body["usage"]["idempotencyKey"].startswith("sdk-") and body["usage"]["entries"]
    assert upstream.requests[-1].contains("And again?")


def test_send_fails_with_the_error_message(
    server: ServerProcess, upstream: FakeUpstream, sdk: Client
) -> None:
    missing = send(server, "--session", "chat_nope", "hello")
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.strip() == "chambers: Chat session not found (NOT_FOUND)"

    bad_key = send(server, "--session", "chat_nope", "hello", CHAMBERS_API_KEY="chk_wrong")
    assert bad_key.returncode == 1 and "(UNAUTHORIZED)" in bad_key.stderr

    broken = sdk.chats.create(model="nosuch/model")
    failed = send(server, "--session", broken.id, "hello")
    assert failed.returncode == 1 and "(MODEL_NOT_CONFIGURED)" in failed.stderr

    ended = sdk.chats.create()
    ended.end()
    refused = send(server, "--session", ended.id, "hello")
    assert refused.returncode == 1 and "(SESSION_ENDED)" in refused.stderr
