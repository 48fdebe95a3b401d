"""`chambers chat`: talk to an agent in the terminal, over the SDK (`chambers.client`).

The answer streams as it comes; tool calls show as one line each (name and short input, then ok or
error); the agent's questions become prompts (options numbered); Ctrl-C cancels the running turn and a
second Ctrl-C within 2 s leaves. Commands: /usage, /status, /end, /help, /quit.

With `--agent DID` the session is made through the agent controller (`POST /api/chat`, which checks
the caller's grant and the agent's policy and logs the session); the turns are then followed, and the
next ones sent, on `/agent/v1` for the same session, where the same grant and policy apply and where
the events (tool calls, questions with their options, usage) are.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from chambers.client import Chat, ChatEvent, Client, EventStream

Url = Annotated[
    str | None,
    typer.Option("--url", envvar="CHAMBERS_URL", help="Server URL.", show_default=False),
]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", envvar="CHAMBERS_API_KEY", help="API key.", show_default=False),
]

HELP = """\
Type a message and press Enter; the answer streams as it comes.
  Ctrl-C      cancel the running turn (twice within 2 s: leave)
  /usage      tokens and cost of this session
  /status     the session's state
  /end        end the session (its sandbox is stopped) and leave
  /help       this help
  /quit       leave; the session stays, resume it with --session"""

DOUBLE_INTERRUPT_S = 2.0
_DONE = object()


def chat(
    agent: Annotated[
        str | None, typer.Option("--agent", help="Talk to this agent (its DID) through the controller.")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Model of a new session, e.g. openai/gpt-4o.")
    ] = None,
    session: Annotated[str | None, typer.Option("--session", help="Resume this session (chat_...).")] = None,
    title: Annotated[str | None, typer.Option("--title", help="Title of a new session.")] = None,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """Chat with an agent in the terminal: streamed answers, tool calls, questions, Ctrl-C to cancel."""
    from rich.console import Console

    from chambers.client import ChambersError, Client

    if agent and model:
        typer.echo("chambers: give --agent or --model, not both (an agent has its own model)", err=True)
        raise typer.Exit(2)
    console = Console(highlight=False, soft_wrap=True)
    with Client(url, api_key) as client:
        try:
            terminal = Terminal(client, console, agent=agent)
            terminal.open(session=session, model=model, title=title)
        except ChambersError as exc:
            typer.echo(f"chambers: {exc.message} ({exc.code})", err=True)
            raise typer.Exit(1) from None
        code = terminal.run()
    raise typer.Exit(code)


class Terminal:
    """The chat loop: reads lines, runs turns, renders their events."""

    def __init__(self, client: Client, console: Console, *, agent: str | None = None) -> None:
        self.client = client
        self.console = console
        self.agent = agent
        self.chat: Chat | None = None
        self.interactive = sys.stdin.isatty()
        self._last_interrupt = 0.0
        self._mid_line = False
        self._tools: dict[str, str] = {}
        self._last_usage: Any = None

    # output

    def write(self, text: str) -> None:
        """Answer text, exactly as it comes (no markup, no wrapping)."""
        if not text:
            return
        self.console.file.write(text)
        self.console.file.flush()
        self._mid_line = not text.endswith("\n")

    def line(self, text: str, style: str | None = None) -> None:
        """A line of our own (status, tool call, notice), after ending the answer's line if needed."""
        if self._mid_line:
            self.write("\n")
        self.console.print(text, style=style, markup=False)
        self._mid_line = False

    def read(self, prompt: str) -> str:
        """A line from the user (EOFError at the end of input, KeyboardInterrupt on Ctrl-C)."""
        if self._mid_line:
            self.write("\n")
        if self.interactive:
            self.console.print(prompt, style="bold cyan", end="", markup=False)
            self.console.file.flush()
        return input()

    # setup

    def open(self, *, session: str | None, model: str | None, title: str | None) -> None:
        """Find or make the session (or, with an agent and no session, wait for the first message)."""
        if session:
            self.chat = self.client.chats.get(session)
            info = self.chat.info
            assert info is not None
            if info.status == "ended":
                raise _error(f"session {session} has ended; start a new one")
            if self.agent:
                wanted = self.client.controller.agents.get(self.agent)
                if info.agentId is not None and info.agentId != wanted.id:
                    raise _error(f"session {session} belongs to another agent than {self.agent}")
            self.line(
                f"chambers chat · session {info.id} · {info.model} · {info.turnCount} turns so far", "bold"
            )
        elif self.agent:
            found = self.client.controller.agents.get(self.agent)
            self.line(
                f"chambers chat · agent {found.name} ({found.model}) · your first message starts a session",
                "bold",
            )
        else:
            self.chat = self.client.chats.create(title=title, model=model)
            assert self.chat.info is not None
            self.line(f"chambers chat · session {self.chat.id} · {self.chat.info.model}", "bold")
        self.line("/help for commands · Ctrl-C cancels a turn · /quit leaves", "dim")

    # the loop

    def run(self) -> int:
        """Read and answer until /quit, /end, the end of input, or a double Ctrl-C. Returns the exit code."""
        while True:
            try:
                text = self.read("you> ").strip()
            except EOFError:
                self.goodbye()
                return 0
            except KeyboardInterrupt:
                if self.interrupted_twice():
                    self.goodbye()
                    return 130
                self.line("(Ctrl-C again to leave, or /quit)", "dim")
                continue
            if not text:
                continue
            try:
                if text.startswith("/"):
                    if not self.command(text):
                        return 0
                else:
                    self.turn(text)
            except KeyboardInterrupt:
                self.goodbye()
                return 130
            except Exception as exc:  # a broken connection must not lose the terminal
                self.error(exc)

    def interrupted_twice(self) -> bool:
        now = time.monotonic()
        twice = now - self._last_interrupt < DOUBLE_INTERRUPT_S
        self._last_interrupt = now
        return twice

    def goodbye(self) -> None:
        if self.chat is not None:
            self.line(f"bye · resume with: chambers chat --session {self.chat.id}", "dim")

    def error(self, exc: BaseException) -> None:
        from chambers.client import ChambersError

        if isinstance(exc, ChambersError):
            self.line(f"error: {exc.message} ({exc.code})", "bold red")
        else:
            self.line(f"error: {type(exc).__name__}: {exc}", "bold red")

    # commands

    def command(self, text: str) -> bool:
        """Run a /command; False to leave."""
        name = text.split()[0].lower()
        if name in ("/quit", "/exit", "/q"):
            self.goodbye()
            return False
        if name in ("/help", "/?"):
            self.line(HELP)
        elif name == "/usage":
            self.usage()
        elif name == "/status":
            self.status()
        elif name == "/end":
            return not self.end()
        elif name == "/cancel":
            if self.chat is not None:
                result = self.chat.cancel()
                self.line("cancelled" if result.cancelled else "nothing to cancel", "yellow")
        else:
            self.line(f"unknown command {name}; /help lists them", "yellow")
        return True

    def usage(self) -> None:
        if self.chat is None:
            self.line("no session yet: send a message first", "dim")
            return
        info = self.chat.refresh()
        u = info.usage
        self.line(
            f"session: {u.totalInputTokens} in + {u.totalOutputTokens} out = {u.totalTokens} tokens"
            f" · {_dollars(u.costMicros)} · {info.turnCount} turns"
        )
        if self._last_usage is not None:
            last = self._last_usage
            self.line(
                f"last turn: {last.usage.totalTokens} tokens · {_dollars(last.summary.costMicros)}"
                f" · {len(last.entries)} usage entries",
                "dim",
            )

    def status(self) -> None:
        if self.chat is None:
            self.line(f"agent {self.agent}: no session yet", "dim")
            return
        info = self.chat.refresh()
        turn = f"turn {info.activeTurnId} running" if info.activeTurnId else "no turn running"
        self.line(f"session {info.id} · {info.status} · {info.model} · {info.turnCount} turns · {turn}")
        if info.title:
            self.line(f"title: {info.title}", "dim")
        if info.agentId:
            self.line(f"agent: {self.agent or info.agentId}", "dim")

    def end(self) -> bool:
        if self.chat is None:
            self.line("no session yet", "dim")
            return False
        ended = self.chat.end()
        self.line(
            f"session {ended.id} ended · sandbox runtime {ended.runtimeMs / 1000:.1f} s · ${ended.cost:.6f}",
            "bold",
        )
        return True

    # turns

    def turn(self, text: str) -> None:
        from chambers.client import ChambersError, SessionEnded, TurnConflict

        try:
            events = self.start(text)
        except TurnConflict as exc:
            self.line(
                f"a turn is already running ({exc.active_turn_id}); wait for it, or /cancel it", "yellow"
            )
            return
        except SessionEnded:
            self.line("this session has ended; start a new one with `chambers chat`", "yellow")
            return
        except ChambersError as exc:
            self.error(exc)
            return
        self.render(events)

    def start(self, text: str) -> EventStream:
        """Send the message: on /agent/v1 (`respond`), or for an agent's first message through the
        controller, then follow that turn on the session's feed."""
        if self.chat is not None:
            return self.chat.respond(text)
        assert self.agent is not None
        reply = self.client.controller.chat(self.agent, text)
        reply.close()  # the turn goes on; its events are on the session's feed
        if reply.session_id is None or reply.turn_id is None:
            raise _error("the controller did not say which session it started")
        self.chat = self.client.chat(reply.session_id)
        self.line(f"session {reply.session_id}", "dim")
        return self.chat.follow_turn(reply.turn_id, 0)

    def render(self, events: EventStream) -> None:
        """Show the turn's events as they come. A thread reads the stream, so that Ctrl-C (which only
        the main thread sees) can cancel the turn while its events go on arriving and showing."""
        inbox: queue.Queue[object] = queue.Queue()

        def pump() -> None:
            try:
                for event in events:
                    inbox.put(event)
            except Exception as exc:
                inbox.put(exc)
            finally:
                inbox.put(_DONE)

        reader = threading.Thread(target=pump, name="chambers-chat-events", daemon=True)
        reader.start()
        cancelling = False
        while True:
            try:
                item = inbox.get()
                if item is _DONE:
                    break
                if isinstance(item, Exception):
                    self.error(item)
                    break
                self.show(cast("ChatEvent", item))
            except KeyboardInterrupt:
                if self.interrupted_twice() or cancelling:
                    raise
                cancelling = True
                self.line("^C cancelling the turn… (Ctrl-C again to leave)", "yellow")
                assert self.chat is not None
                self.chat.cancel()
        reader.join()
        events.close()

    def show(self, event: ChatEvent) -> None:
        from chambers.client import (
            MessageCompleted,
            MessagePartUpdated,
            Question,
            SessionStatus,
            SessionUsage,
            StreamGap,
            ToolPart,
            TurnCompleted,
            TurnStatus,
        )

        if isinstance(event, MessagePartUpdated):
            if event.type == "text":
                self.write(event.delta if event.delta is not None else "")
            elif isinstance(event.part, ToolPart):
                self.tool(event.part)
        elif isinstance(event, Question):
            self.ask(event)
        elif isinstance(event, TurnStatus) and event.status == "restoring":
            self.line("(restoring the session's sandbox…)", "dim")
        elif isinstance(event, MessageCompleted):
            if self._mid_line:
                self.write("\n")
        elif isinstance(event, SessionUsage):
            self._last_usage = event.properties
            p = event.properties
            self.line(f"· {p.usage.totalTokens} tokens · {_dollars(p.summary.costMicros)}", "dim")
        elif isinstance(event, TurnCompleted):
            if event.status == "cancelled":
                self.line("[turn cancelled]", "yellow")
            elif event.status == "failed":
                error = event.error
                why = f"{error.code}: {error.message}" if error else "unknown error"
                self.line(f"[turn failed] {why}", "bold red")
        elif isinstance(event, SessionStatus) and event.status == "ended":
            self.line("[session ended]", "yellow")
        elif isinstance(event, StreamGap):
            self.line(
                "(some events of this session were lost; /status and the messages have the rest)", "dim"
            )

    def tool(self, part: Any) -> None:
        seen = self._tools.get(part.id)
        if part.status == "running" and seen is None:
            self._tools[part.id] = "running"
            self.line(f"⚙ {part.name} {_short(part.input)}", "cyan")
        elif part.status in ("completed", "error") and seen != "done":
            self._tools[part.id] = "done"
            if part.status == "completed":
                self.line(f"  ✓ {part.name} ok", "green")
            else:
                self.line(f"  ✗ {part.name} error: {_short(part.output)}", "red")

    def ask(self, question: Any) -> None:
        from chambers.client import ChambersError

        self.line(f"? {question.question}", "bold magenta")
        options: list[str] = list(question.options)
        for number, option in enumerate(options, 1):
            self.line(f"  {number}) {option}", "magenta")
        hint = f"answer (1-{len(options)} or text)> " if options else "answer> "
        while True:
            try:
                answer = self.read(hint).strip()
            except EOFError:
                raise KeyboardInterrupt from None  # no one left to answer: cancel the turn
            if not answer:
                continue
            if answer.isdigit() and 1 <= int(answer) <= len(options):
                answer = options[int(answer) - 1]
            assert self.chat is not None
            try:
                self.chat.reply(question.requestID, answer)
            except ChambersError as exc:
                self.error(exc)
            return


def _error(message: str) -> Exception:
    from chambers.client import ChambersError

    return ChambersError(message, code="CHAT")


def _dollars(micros: int) -> str:
    return f"${micros / 1_000_000:.6f}"


def _short(value: Any, limit: int = 60) -> str:
    """A tool's input or output on one short line."""
    if value is None:
        return ""
    if isinstance(value, dict) and len(value) == 1:
        value = next(iter(value.values()))
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
