"""The web UI (issue 9): real headless Chromium (Debian's) against a real server and the fake upstream.

The UI uses only the public endpoints, with the sign-in cookie: `/api/...` and `/agent/v1/...`. Nothing
here sleeps to synchronise: Playwright's `expect` waits for what the page shows, and the server's own
event stream says when a turn has ended.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.conftest import auth, need, server_env
from tests.support.browser import DESKTOP, PHONE, CuttingProxy, browser_problem, launch, screenshot, sign_in
from tests.support.fake_upstream import FakeUpstream, Gate, Reply, Text, Tokens, ToolCall
from tests.support.server import ServerProcess
from tests.support.sse import read_until, turn_done

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

PASSWORD = "correct horse battery"
WAIT_MS = 15_000


# --- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream) -> Iterator[ServerProcess]:
    """A server of this module's own (its lists hold only what these tests made)."""
    proc = ServerProcess(
        tmp_path_factory.mktemp("web"), env=server_env(upstream, CHAMBERS_WEBHOOK_POLL_INTERVAL_S="0.1")
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def site_admin(site: ServerProcess) -> Iterator[httpx.Client]:
    assert site.admin_key
    with httpx.Client(base_url=site.url, headers=auth(site.admin_key), timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    problem = browser_problem()
    need(problem is None, problem or "")
    from playwright.sync_api import expect

    expect.set_options(timeout=WAIT_MS)
    with launch() as found:
        yield found


@dataclass
class Member:
    email: str
    name: str
    agent: dict[str, Any]


def make_member(admin: httpx.Client, agent_name: str | None = None, **agent: Any) -> Member:
    """A member user with a `chat` grant on a new agent, made through the HTTP API."""
    made = admin.post("/api/agents", json={"name": agent_name or f"agent-{uuid.uuid4().hex[:6]}", **agent})
    assert made.status_code == 201, made.text
    email = f"m{uuid.uuid4().hex[:10]}@example.com"
    user = admin.post(
        "/api/users", json={"email": email, "password": PASSWORD, "role": "member", "name": "Mia Member"}
    )
    assert user.status_code == 201, user.text
    grant = admin.post(
        "/api/grants", json={"agentDid": made.json()["did"], "subject": email, "capabilities": ["chat"]}
    )
    assert grant.status_code == 201, grant.text
    return Member(email, "Mia Member", made.json())


@pytest.fixture
def member(site_admin: httpx.Client) -> Member:
    return make_member(site_admin)


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    made = browser.new_context(viewport=DESKTOP)
    made.set_default_timeout(WAIT_MS)
    yield made
    made.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on(  # a CSP violation is only a console message
        "console",
        lambda message: errors.append(message.text) if "Content Security Policy" in message.text else None,
    )
    opened.errors = errors  # type: ignore[attr-defined]
    return opened


def signed_in(page: Page, site: ServerProcess, member: Member) -> Page:
    sign_in(page, site.url, member.email, PASSWORD)
    from playwright.sync_api import expect

    expect(page.get_by_role("heading", name=f"New session with {member.agent['name']}")).to_be_visible()
    return page


def prompt(page: Page) -> Any:
    return page.get_by_role("textbox", name="Message")


def send(page: Page, text: str) -> None:
    box = prompt(page)
    box.fill(text)
    box.press("Enter")


def assistant(page: Page) -> Any:
    return page.locator(".msg.assistant")


def chat_id_of(page: Page) -> str:
    """The session id in the page's address (`#/chat/<did>/<chat id>`)."""
    from playwright.sync_api import expect

    expect(page).to_have_url(re.compile(r"/chat_[0-9a-z]+$"))
    return page.url.rsplit("/", 1)[-1]


def wait_turn_completed(admin: httpx.Client, chat_id: str, turn_id: str) -> dict[str, Any]:
    """Block until turn `turn_id` has ended (or find that it has), by reading the session's event feed
    from the start; its `turn.completed` data."""
    with admin.stream(
        "GET", f"/agent/v1/chat/{chat_id}/stream", headers={"Last-Event-ID": "0"}, timeout=60
    ) as response:
        seen = read_until(response, turn_done(turn_id))
    return seen[-1].data


# --- serving the UI ---------------------------------------------------------------------------------------


def test_the_ui_is_served_with_types_caching_and_a_strict_csp(site: ServerProcess) -> None:
    index = httpx.get(site.url + "/")
    assert index.status_code == 200 and index.headers["content-type"] == "text/html; charset=utf-8"
    csp = index.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp and "http" not in csp
    assert (
        index.headers["x-content-type-options"] == "nosniff" and index.headers["cache-control"] == "no-cache"
    )
    assert '<script type="module" src="/assets/app.js">' in index.text

    script = httpx.get(site.url + "/assets/app.js")
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert script.headers["cache-control"] == "no-cache" and script.headers["etag"]
    again = httpx.get(site.url + "/assets/app.js", headers={"If-None-Match": script.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    style = httpx.get(site.url + "/assets/app.css")
    assert style.headers["content-type"] == "text/css; charset=utf-8"

    vendored = httpx.get(site.url + "/assets/vendor/purify-3.4.18.es.mjs")
    assert vendored.status_code == 200 and vendored.headers["content-type"].startswith("text/javascript")
    assert vendored.headers["cache-control"] == "public, max-age=31536000, immutable"

    for missing in (
        "/assets/nope.js",
        "/assets/../api/web.py",
        "/assets/%2e%2e/api/web.py",
        "/assets/index.html",
    ):
        gone = httpx.get(site.url + missing)
        assert gone.status_code == 404, missing
        assert gone.json()["error"]["code"] == "NOT_FOUND"


def test_agent_v1_takes_the_sign_in_cookie_and_checks_the_origin_of_writes(
    site: ServerProcess, member: Member
) -> None:
    with httpx.Client(base_url=site.url, timeout=30) as browser_like:
        assert browser_like.get("/agent/v1/chat").status_code == 401
        signed = browser_like.post(
            "/api/auth/login",
            json={"email": member.email, "password": PASSWORD},
            headers={"Origin": site.url},
        )
        assert signed.status_code == 200
        assert browser_like.get("/agent/v1/chat").status_code == 200  # the cookie, no API key

        started = browser_like.post(
            "/api/chat",
            json={"agentDid": member.agent["did"], "messages": [{"role": "user", "content": "hi"}]},
            headers={"Origin": site.url},
        )
        chat_id = started.headers["X-Session-Id"]
        assert browser_like.get(f"/agent/v1/chat/{chat_id}/messages").status_code == 200

        body = {"parts": [{"type": "text", "text": "again"}]}
        foreign = browser_like.post(
            f"/agent/v1/chat/{chat_id}/message",
            json=body,
            headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
        )
        assert foreign.status_code == 403 and "Origin" in foreign.json()["error"]["message"]
        no_origin = browser_like.post(
            f"/agent/v1/chat/{chat_id}/cancel", headers={"Sec-Fetch-Site": "same-site"}
        )
        assert no_origin.status_code == 403
        own = browser_like.post(f"/agent/v1/chat/{chat_id}/cancel", headers={"Origin": site.url})
        assert own.status_code == 200


def test_a_member_cannot_read_another_members_session_on_agent_v1(
    site: ServerProcess, site_admin: httpx.Client, member: Member
) -> None:
    other = make_member(site_admin)
    with httpx.Client(base_url=site.url, headers={"Origin": site.url}, timeout=30) as owner:
        owner.post("/api/auth/login", json={"email": member.email, "password": PASSWORD})
        started = owner.post(
            "/api/chat",
            json={"agentDid": member.agent["did"], "messages": [{"role": "user", "content": "mine"}]},
        )
        chat_id = started.headers["X-Session-Id"]
    with httpx.Client(base_url=site.url, headers={"Origin": site.url}, timeout=30) as stranger:
        stranger.post("/api/auth/login", json={"email": other.email, "password": PASSWORD})
        assert stranger.get(f"/api/chat/sessions/{chat_id}/messages").status_code == 404  # /api: as it should
        assert stranger.get(f"/agent/v1/chat/{chat_id}/messages").status_code == 404
        assert stranger.delete(f"/agent/v1/chat/{chat_id}").status_code == 404
        assert stranger.post(f"/agent/v1/chat/{chat_id}/cancel", json={}).status_code == 404
        listed = stranger.get("/agent/v1/chat").json()["data"]
        assert chat_id not in {s["id"] for s in listed}
        hook = stranger.post("/events/v1/webhooks", json={"url": "https://example.com/hook"})
        assert hook.status_code == 403


# --- signing in -------------------------------------------------------------------------------------------


def test_sign_in_shows_who_is_signed_in_and_sign_out_ends_it(
    page: Page, site: ServerProcess, member: Member
) -> None:
    from playwright.sync_api import expect

    page.goto(site.url + "/")
    expect(page.get_by_role("heading", name="Sign in to Chambers")).to_be_visible()
    page.get_by_label("Email").fill(member.email)
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert").filter(has_text="Wrong email or password")).to_be_visible()

    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    banner = page.get_by_role("banner")
    expect(banner.get_by_text("Mia Member")).to_be_visible()
    expect(banner.locator("#who-role")).to_have_text("member")
    expect(banner.get_by_role("link", name="Admin")).to_be_hidden()  # members see no admin pages
    expect(page.get_by_role("combobox", name="Agent")).to_have_value(member.agent["did"])

    page.goto(site.url + "/#/admin/users")
    expect(page.get_by_text("These pages are for admins.")).to_be_visible()

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in to Chambers")).to_be_visible()
    page.reload()
    expect(page.get_by_role("heading", name="Sign in to Chambers")).to_be_visible()
    assert not page.errors  # type: ignore[attr-defined]


# --- chatting ---------------------------------------------------------------------------------------------


def test_an_answer_streams_in_and_lands_in_the_session_list(
    page: Page, site: ServerProcess, member: Member, upstream: FakeUpstream
) -> None:
    from playwright.sync_api import expect

    signed_in(page, site, member)
    upstream.script(
        Reply(
            [
                Text("The answer is forty", chunks=4),
                Gate("g"),
                Text("-two, **really**.\n\n```python\nprint(42)\n```\n"),
            ]
        )
    )
    box = prompt(page)
    box.fill("What is the answer?")
    box.press("Shift+Enter")  # a new line, not a send
    box.type("Be brief.")
    expect(box).to_have_value("What is the answer?\nBe brief.")
    box.press("Enter")

    expect(page.locator(".msg.user").last).to_contain_text("What is the answer?")
    expect(page.locator(".msg.user").last).to_contain_text("Be brief.")
    expect(assistant(page)).to_contain_text("The answer is forty")  # the partial answer, mid-turn
    expect(page.get_by_role("status")).to_have_text("The agent is working…")
    expect(page.get_by_role("button", name="Stop the running turn (Esc)")).to_be_visible()

    upstream.release("g")
    text = assistant(page).locator(".part-text")
    expect(text.locator("strong")).to_have_text("really")  # Markdown, rendered
    expect(text.locator("pre code.hljs .hljs-built_in")).to_have_text("print")  # highlighted code
    expect(text).to_have_text("The answer is forty-two, really.\nprint(42)")
    expect(assistant(page).locator(".usage")).to_contain_text("tokens")
    expect(page.get_by_role("button", name="Stop the running turn (Esc)")).to_be_hidden()
    expect(page.locator("#chat-total")).not_to_have_text("Total: 0 tokens · $0")

    session = page.locator(".sessions a").first
    expect(session).to_contain_text("What is the answer?")
    expect(session.locator(".badge")).to_have_text("active")
    expect(session).to_have_attribute("aria-current", "page")
    assert not page.errors  # type: ignore[attr-defined]


def test_a_tool_call_is_a_collapsible_block_with_input_and_output(
    page: Page, site: ServerProcess, member: Member, upstream: FakeUpstream
) -> None:
    from playwright.sync_api import expect

    signed_in(page, site, member)
    upstream.script(
        Reply([Text("Let me run it."), ToolCall("shell", {"command": "echo hi"})]),
        Reply([Text("It printed hi.")]),
    )
    send(page, "Run echo hi")
    expect(assistant(page)).to_contain_text("It printed hi.")
    tool = page.locator("details.tool")
    expect(tool).to_have_count(1)
    expect(tool.locator("summary")).to_contain_text("shell")
    expect(tool.locator("summary .badge")).to_have_text("completed")
    expect(tool.locator(".tool-body")).to_be_hidden()  # collapsed until opened
    tool.locator("summary").click()
    expect(tool.locator(".tool-body pre").first).to_contain_text('"command": "echo hi"')
    expect(tool.locator(".tool-output")).to_have_text(re.compile(r"^hi\s+\[exit code: 0\]$"))


def test_a_question_is_answered_with_an_option_button(
    page: Page, site: ServerProcess, member: Member, upstream: FakeUpstream
) -> None:
    from playwright.sync_api import expect

    signed_in(page, site, member)
    ask = ToolCall("ask_user", {"question": "Which file should I use?", "options": ["a.txt", "b.txt"]})
    upstream.script(Reply([Text("Let me check."), ask]), Reply([Text("Using b.txt.")]))
    send(page, "Summarise the file")
    question = page.get_by_role("group", name="Which file should I use?")
    expect(question).to_be_visible()
    expect(page.get_by_role("status")).to_have_text("The agent is waiting for your answer.")
    expect(question.get_by_role("textbox", name="Your answer")).to_be_editable()
    question.get_by_role("button", name="b.txt").click()

    expect(assistant(page)).to_contain_text("Using b.txt.")
    expect(question).to_contain_text("Answered: b.txt")
    expect(page.get_by_role("button", name="Stop the running turn (Esc)")).to_be_hidden()
    expect(page.get_by_role("status")).to_have_text("")
    assert upstream.requests[-1].contains("b.txt")  # the answer went back to the model


def test_a_question_takes_a_free_text_answer(
    page: Page, site: ServerProcess, member: Member, upstream: FakeUpstream
) -> None:
    from playwright.sync_api import expect

    signed_in(page, site, member)
    ask = ToolCall("ask_user", {"question": "What should the title be?", "options": []})
    upstream.script(Reply([ask]), Reply([Text("Titled it.")]))
    send(page, "Write a report")
    question = page.get_by_role("group", name="What should the title be?")
    question.get_by_role("textbox", name="Your answer").fill("Quarterly numbers")
    question.get_by_role("button", name="Answer").click()
    expect(assistant(page)).to_contain_text("Titled it.")
    expect(question).to_contain_text("Answered: Quarterly numbers")


@pytest.mark.parametrize("how", ["button", "escape"])
def test_stop_cancels_a_slow_turn(
    page: Page, site: ServerProcess, member: Member, upstream: FakeUpstream, how: str
) -> None:
    from playwright.sync_api import expect

    signed_in(page, site, member)
    upstream.script(Reply([Tokens(1000)], gap=0.05))  # 50 s if nobody stops it
    send(page, "Count slowly")
    expect(assistant(page)).to_contain_text("tok tok tok")
    stop = page.get_by_role("button", name="Stop the running turn (Esc)")
    if how == "button":
        stop.click()
    else:
        page.keyboard.press("Escape")
    expect(assistant(page).locator(".outcome")).to_have_text("Stopped")
    expect(stop).to_be_hidden()
    expect(page.get_by_role("status")).to_have_text("Stopped.")
    partial = assistant(page).locator(".part-text").inner_text()
    assert 0 < partial.count("tok") < 1000  # the partial answer is kept

    upstream.script(Reply([Text("Back again.")]))
    send(page, "Still there?")
    expect(assistant(page).nth(1)).to_contain_text("Back again.")  # the session takes messages at once


def test_a_reload_finds_the_conversation_even_mid_turn(
    page: Page, site: ServerProcess, member: Member, upstream: FakeUpstream
) -> None:
    from playwright.sync_api import expect

    signed_in(page, site, member)
    upstream.script(
        Reply([Text("First answer.")]),
        Reply([Text("Second, part one;", chunks=2), Gate("r"), Text(" part two.")]),
    )
    send(page, "Hello")
    expect(assistant(page)).to_have_text(re.compile("First answer."))
    expect(assistant(page).locator(".usage")).to_be_visible()
    expect(page.get_by_role("button", name="Stop the running turn (Esc)")).to_be_hidden()  # the turn ended
    send(page, "And again")
    expect(assistant(page).nth(1)).to_contain_text("Second, part one;")

    page.reload()  # mid-turn: the history, then the running turn replayed from the event buffer
    expect(page.locator(".msg.user")).to_have_text([re.compile("Hello"), re.compile("And again")])
    expect(assistant(page).first.locator(".part-text")).to_have_text("First answer.")
    expect(assistant(page).first.locator(".usage")).to_contain_text("tokens")  # from the replayed usage
    expect(assistant(page).nth(1)).to_contain_text("Second, part one;")
    expect(page.get_by_role("button", name="Stop the running turn (Esc)")).to_be_visible()

    upstream.release("r")
    expect(assistant(page).nth(1).locator(".part-text")).to_have_text("Second, part one; part two.")
    expect(page.locator(".sessions a[aria-current=page]")).to_contain_text("Hello")
    page.reload()
    expect(assistant(page)).to_have_count(2)
    expect(assistant(page).nth(1).locator(".part-text")).to_have_text("Second, part one; part two.")


def test_a_dropped_connection_resumes_from_the_last_event_without_duplicates(
    browser: Browser, site: ServerProcess, site_admin: httpx.Client, member: Member, upstream: FakeUpstream
) -> None:
    from playwright.sync_api import expect

    proxy = CuttingProxy(site.port)  # the browser reaches the server through it
    context = browser.new_context(viewport=DESKTOP)
    try:
        page = context.new_page()
        sign_in(page, proxy.url, member.email, PASSWORD)
        expect(prompt(page)).to_be_editable()
        first, second = "Alpha beta gamma, ", "delta epsilon zeta eta theta iota kappa."
        upstream.script(Reply([Text(first, chunks=3), Gate("cut"), Text(second, chunk_size=4)]))
        send(page, "Recite")
        chat_id = chat_id_of(page)
        part = assistant(page).locator(".part-text")
        expect(part).to_have_text(first.strip())

        context.set_offline(True)  # no reconnecting for now...
        assert proxy.cut() > 0  # ...and the live feed is gone, mid-turn
        expect(page.get_by_role("status")).to_have_text("Connection lost: reconnecting…")
        turn_id = site_admin.get(f"/agent/v1/chat/{chat_id}").json()["activeTurnId"]
        assert turn_id
        upstream.release("cut")
        done = wait_turn_completed(site_admin, chat_id, turn_id)  # the rest happens while we're away
        assert done["status"] == "completed"
        expect(part).to_have_text(first.strip())  # nothing arrived meanwhile

        context.set_offline(False)  # back: the feed resumes after the last event it saw
        expect(part).to_have_text(first + second)
        expect(assistant(page).locator(".outcome")).to_have_count(0)
        expect(page.get_by_role("button", name="Stop the running turn (Esc)")).to_be_hidden()
        expect(assistant(page)).to_have_count(1)
        expect(assistant(page).locator(".part")).to_have_count(1)
        assert part.inner_text() == first + second  # exact: nothing missing, nothing twice
        stored = site_admin.get(f"/agent/v1/chat/{chat_id}/messages").json()["data"]
        assert stored[-1]["parts"][0]["text"] == first + second
    finally:
        context.close()
        proxy.close()


def test_the_feed_retries_a_refused_stream_request(
    page: Page, site: ServerProcess, member: Member, upstream: FakeUpstream
) -> None:
    from playwright.sync_api import Route, expect

    signed_in(page, site, member)
    aborted: list[str] = []

    def once(route: Route) -> None:
        if not aborted:
            aborted.append(route.request.url)
            route.abort("connectionreset")
        else:
            route.continue_()

    page.route(re.compile(r"/agent/v1/chat/[^/]+/stream$"), once)
    # The reply waits until the feed's first request has been refused, so the text can only reach the
    # page through the feed's retry (not through the history the page loads before opening the feed).
    upstream.script(Reply([Gate("refused"), Text("Made it through.")]))
    with page.expect_event("requestfailed", lambda r: r.url.endswith("/stream")):
        send(page, "Hello")
    upstream.release("refused")
    expect(assistant(page).locator(".part-text")).to_have_text("Made it through.")
    assert len(aborted) == 1


def test_ending_a_session_and_starting_a_new_one(
    page: Page, site: ServerProcess, member: Member, upstream: FakeUpstream
) -> None:
    from playwright.sync_api import expect

    signed_in(page, site, member)
    send(page, "First session")
    expect(assistant(page)).to_contain_text("ok")
    page.get_by_role("button", name="End session").click()
    page.get_by_role("alertdialog").get_by_role("button", name="End session").click()
    expect(page.locator("#chat-status-badge")).to_have_text("ended")
    expect(page.locator(".sessions a .badge").first).to_have_text("ended")
    expect(prompt(page)).to_be_disabled()

    page.get_by_role("button", name="New session").click()
    expect(page.get_by_role("heading", name=f"New session with {member.agent['name']}")).to_be_visible()
    send(page, "Second session")
    expect(page.locator(".sessions a")).to_have_count(2)
    expect(page.locator(".sessions a").first).to_contain_text("Second session")  # newest first
    expect(page.locator(".sessions a .badge")).to_have_text(["active", "ended"])


def test_phone_width_folds_the_session_list_into_a_menu(
    browser: Browser, site: ServerProcess, member: Member, upstream: FakeUpstream
) -> None:
    from playwright.sync_api import expect

    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    try:
        page = context.new_page()
        signed_in(page, site, member)
        sidebar = page.get_by_role("complementary", name="Agents and sessions")
        expect(sidebar).not_to_be_in_viewport()
        send(page, "Hi from a phone")
        expect(assistant(page)).to_contain_text("ok")
        menu = page.get_by_role("button", name="Show sessions")
        expect(menu).to_have_attribute("aria-expanded", "false")
        menu.click()
        expect(sidebar).to_be_in_viewport()
        expect(sidebar.locator(".sessions a")).to_contain_text(["Hi from a phone"])
        page.keyboard.press("Escape")
        expect(sidebar).not_to_be_in_viewport()
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0  # nothing sticks out sideways
    finally:
        context.close()


# --- admin pages ------------------------------------------------------------------------------------------


def make_admin(admin: httpx.Client) -> Member:
    email = f"a{uuid.uuid4().hex[:10]}@example.com"
    made = admin.post(
        "/api/users", json={"email": email, "password": PASSWORD, "role": "admin", "name": "Ada Admin"}
    )
    assert made.status_code == 201, made.text
    return Member(email, "Ada Admin", {})


def test_admin_pages_manage_agents_users_grants_and_webhooks(
    page: Page, site: ServerProcess, site_admin: httpx.Client, upstream: FakeUpstream
) -> None:
    from playwright.sync_api import expect

    from tests.support.receiver import Receiver

    boss = make_admin(site_admin)
    sign_in(page, site.url, boss.email, PASSWORD)
    expect(page.locator("#who-role")).to_have_text("admin")
    page.get_by_role("link", name="Admin").click()
    expect(page.get_by_role("heading", name="Agents", exact=True)).to_be_visible()

    # agents: create, with the policy checked as JSON here and by the server
    name = f"Reviewer {uuid.uuid4().hex[:4]}"
    page.get_by_role("button", name="New agent").click()
    form = page.get_by_role("form", name="New agent")
    form.get_by_label("Name").fill(name)
    policy = form.get_by_label("Policy (JSON)")
    policy.fill('{"maxTurnsPerSession": ')
    expect(form.locator(".field-error").filter(has_text="Policy is not valid JSON")).to_be_visible()
    expect(policy).to_have_attribute("aria-invalid", "true")
    policy.fill('{"maxTurnsPerSession": 0}')
    form.get_by_role("button", name="Create agent").click()
    expect(form.get_by_role("alert")).to_contain_text("policy.maxTurnsPerSession: must be at least 1")
    policy.fill('{"maxTurnsPerSession": 5}')
    form.get_by_role("button", name="Create agent").click()
    row = page.get_by_role("row").filter(has_text=name)
    expect(row).to_contain_text("maxTurnsPerSession: 5")
    row.get_by_role("button", name="Edit").click()
    edit = page.get_by_role("form", name=f"Edit agent {name}")
    expect(edit.get_by_label("Policy (JSON)")).to_have_value(re.compile(r'"maxTurnsPerSession": 5'))
    edit.get_by_label("Policy (JSON)").fill('{"maxTurnsPerSession": 7, "network": true}')
    edit.get_by_role("button", name="Save").click()
    expect(page.get_by_role("row").filter(has_text=name)).to_contain_text("maxTurnsPerSession: 7")
    did = next(a["did"] for a in site_admin.get("/api/agents").json()["agents"] if a["name"] == name)
    assert site_admin.get(f"/api/agents/{did}").json()["policy"]["network"] is True

    # users
    page.get_by_role("navigation", name="Admin").get_by_role("link", name="Users").click()
    email = f"new{uuid.uuid4().hex[:8]}@example.com"
    add = page.get_by_role("form", name="Add a user")
    add.get_by_label("Email").fill(email)
    add.get_by_label("Name").fill("Nia New")
    add.get_by_label("Password").fill(PASSWORD)
    add.get_by_role("button", name="Add user").click()
    expect(page.get_by_role("row").filter(has_text=email)).to_contain_text("member")

    # grants
    page.get_by_role("navigation", name="Admin").get_by_role("link", name="Grants").click()
    grant = page.get_by_role("form", name="Grant an agent")
    grant.get_by_label("Agent").select_option(label=name)
    grant.get_by_label("Subject").fill(email)
    grant.get_by_role("button", name="Grant chat").click()
    granted = page.get_by_role("row").filter(has_text=email)
    expect(granted).to_contain_text(name)
    expect(granted.locator(".badge")).to_have_text("live")
    granted.get_by_role("button", name="Revoke").click()
    page.get_by_role("alertdialog").get_by_role("button", name="Yes").click()
    expect(page.get_by_role("row").filter(has_text=email).locator(".badge")).to_have_text("revoked")

    # API keys: no HTTP API, the CLI
    page.get_by_role("navigation", name="Admin").get_by_role("link", name="API keys").click()
    expect(page.get_by_text("chambers keys create", exact=False)).to_be_visible()

    # webhooks and their delivery log
    with Receiver() as receiver:
        page.get_by_role("navigation", name="Admin").get_by_role("link", name="Webhooks").click()
        hook = page.get_by_role("form", name="Add a webhook subscription")
        hook.get_by_label("URL").fill(receiver.url("/ui"))
        hook.get_by_label("Description").fill("UI test")
        hook.get_by_role("button", name="Subscribe").click()
        expect(page.get_by_text("It is shown only this once")).to_be_visible()
        expect(page.locator(".callout code")).to_have_text(re.compile(r"^whsec_"))
        row = page.get_by_role("row").filter(has_text=receiver.url("/ui"))
        row.get_by_role("button", name="Send test").click()
        receiver.wait_for(1, path="/ui")
        row.get_by_role("link", name="Deliveries").click()
        expect(page.get_by_role("heading", name="Delivery log")).to_be_visible()
        delivered = page.get_by_role("row").filter(has_text="webhook.test")
        expect(delivered.first).to_contain_text("delivered", timeout=WAIT_MS)
        expect(delivered.first).to_contain_text("200")
    assert not page.errors  # type: ignore[attr-defined]


def test_the_session_log_lists_turns_and_refusals(
    page: Page, site: ServerProcess, site_admin: httpx.Client, member: Member, upstream: FakeUpstream
) -> None:
    from playwright.sync_api import expect

    with httpx.Client(base_url=site.url, headers={"Origin": site.url}, timeout=30) as client:
        client.post("/api/auth/login", json={"email": member.email, "password": PASSWORD})
        done = client.post(
            "/api/chat",
            json={"agentDid": member.agent["did"], "messages": [{"role": "user", "content": "hi"}]},
        )
        assert done.status_code == 200
        chat_id = done.headers["X-Session-Id"]
    boss = make_admin(site_admin)
    sign_in(page, site.url, boss.email, PASSWORD)
    page.goto(site.url + "/#/admin/audit")
    filters = page.get_by_role("form", name="Filter the session log")
    filters.get_by_label("Session").fill(chat_id)
    filters.get_by_role("button", name="Filter").click()
    rows = page.locator("table.audit tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(member.agent["name"])
    expect(rows.first).to_contain_text(member.email)
    expect(rows.first.locator(".badge")).to_have_text("completed")
    rows.first.get_by_text("Details").click()
    expect(rows.first.locator("pre")).to_contain_text('"signature"')


# --- screenshots for docs/web.md --------------------------------------------------------------------------


def test_screenshots_of_the_main_views(make_server: Any, browser: Browser, upstream: FakeUpstream) -> None:
    """docs/screenshots/*.png at desktop (1280x800) and phone (390x844) width, on a fresh server."""
    from playwright.sync_api import expect

    fresh: ServerProcess = make_server()
    assert fresh.admin_key
    with httpx.Client(base_url=fresh.url, headers=auth(fresh.admin_key), timeout=30) as admin:
        mia = make_member(
            admin,
            "Research assistant",
            systemPrompt="You help with research notes.",
            policy={"maxTurnsPerSession": 50, "maxMessageChars": 20000},
        )
        admin.post(
            "/api/agents",
            json={"name": "Code reviewer", "model": "openai/gpt-4o", "tools": ["read_file", "grep"]},
        )
        boss = make_admin(admin)
        reviewer = next(a for a in admin.get("/api/agents").json()["agents"] if a["name"] == "Code reviewer")
    with httpx.Client(base_url=fresh.url, headers={"Origin": fresh.url}, timeout=30) as client:
        client.post("/api/auth/login", json={"email": mia.email, "password": PASSWORD})
        refused = client.post(  # no grant on this agent: a refusal in the session log
            "/api/chat", json={"agentDid": reviewer["did"], "messages": [{"role": "user", "content": "hi"}]}
        )
        assert refused.status_code == 403

    shots: list[Path] = []
    context = browser.new_context(viewport=DESKTOP)
    try:
        page = context.new_page()
        page.goto(fresh.url + "/")
        expect(page.get_by_role("heading", name="Sign in to Chambers")).to_be_visible()
        for size, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
            page.set_viewport_size(viewport)
            shots.append(screenshot(page, f"sign-in-{size}"))

        page.set_viewport_size(DESKTOP)
        signed_in(page, fresh, mia)
        upstream.script(
            Reply([Text("I'll look at the workspace first."), ToolCall("shell", {"command": "ls -a"})]),
            Reply(
                [
                    Text(
                        "The workspace is **empty**. A minimal script to start from:\n\n"
                        '```python\ndef main() -> None:\n    print("hello, notes")\n```\n'
                    ),
                    ToolCall(
                        "ask_user",
                        {
                            "question": "Shall I save it as notes.py?",
                            "options": ["Yes, save it", "No, thanks"],
                        },
                    ),
                ]
            ),
            Reply([Text("Saved `notes.py`.")]),
        )
        send(page, "What is in my workspace?")
        expect(page.get_by_role("group", name="Shall I save it as notes.py?")).to_be_visible()
        page.locator("details.tool summary").click()
        expect(page.locator(".tool-output")).to_be_visible()
        page.locator("#messages").evaluate("box => { box.scrollTop = box.scrollHeight; }")
        for size, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
            page.set_viewport_size(viewport)
            shots.append(screenshot(page, f"chat-{size}"))
        page.get_by_role("button", name="Yes, save it").click()
        expect(assistant(page)).to_contain_text("Saved notes.py.")
        page.get_by_role("button", name="Sign out").click()

        page.set_viewport_size(DESKTOP)
        sign_in(page, fresh.url, boss.email, PASSWORD)
        page.goto(fresh.url + "/#/admin/agents")
        page.get_by_role("row").filter(has_text="Research assistant").get_by_role(
            "button", name="Edit"
        ).click()
        page.get_by_label("Policy (JSON)").fill('{"maxTurnsPerSession": 50,}')
        expect(page.get_by_text("Policy is not valid JSON")).to_be_visible()
        for size, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
            page.set_viewport_size(viewport)
            shots.append(screenshot(page, f"admin-agents-{size}"))

        page.set_viewport_size(DESKTOP)
        page.goto(fresh.url + "/#/admin/audit")
        expect(page.locator("table.audit tbody tr").first).to_contain_text("completed")
        for size, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
            page.set_viewport_size(viewport)
            shots.append(screenshot(page, f"session-log-{size}"))
    finally:
        context.close()
    for shot in shots:
        assert shot.stat().st_size > 10_000, shot  # a real picture, not a blank page
