"""The plain-text view of a conversation that `/api/chat` clients see and send back.

One rule makes the stream and the stored history agree, so a client that resends the whole history is
recognised: an assistant message's text is its text parts and questions joined with a blank line,
exactly as the stream sent them; a question the agent asked ends the assistant message, and the
answers follow as user messages. Tool calls are not part of the text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chambers.core.controller.ports import ChatMessage
from chambers.core.models import Message

SEP = "\n\n"
"""Between the text parts (and questions) of one assistant message."""


@dataclass(frozen=True, slots=True)
class ViewMessage:
    role: str
    text: str
    created_at: datetime


def render_question(question: Mapping[str, Any]) -> str:
    text = str(question.get("question", ""))
    options = [str(o) for o in question.get("options") or []]
    if options:
        text += "\n" + "\n".join(f"- {o}" for o in options)
    return text


def chat_view(
    messages: Sequence[Message],
    waiting: Sequence[dict[str, Any]] | None = None,
    waiting_at: datetime | None = None,
) -> list[ViewMessage]:
    """The conversation as role + text, oldest first (messages without text are left out)."""
    out: list[ViewMessage] = []
    for message in messages:
        if message.role == "assistant":
            out.extend(_assistant(message.parts, message.created_at))
        else:
            text = SEP.join(p.get("text", "") for p in message.parts if p.get("type") == "text")
            if text:
                out.append(ViewMessage(message.role, text, message.created_at))
    if waiting and waiting_at is not None:
        out.extend(_assistant(waiting, waiting_at))
    return out


def _assistant(parts: Sequence[dict[str, Any]], at: datetime) -> list[ViewMessage]:
    out: list[ViewMessage] = []
    pieces: list[str] = []
    answers: list[str] = []
    asking = False

    def flush() -> None:
        nonlocal asking
        if pieces:
            out.append(ViewMessage("assistant", SEP.join(pieces), at))
            pieces.clear()
        for answer in answers:
            if not out or out[-1].role != "user" or out[-1].text != answer:
                out.append(ViewMessage("user", answer, at))
        answers.clear()
        asking = False

    for part in parts:
        if part.get("type") == "question":
            pieces.append(render_question(part))
            if part.get("answer") is not None:
                answers.append(str(part["answer"]))
            asking = True
            continue
        if asking:
            flush()
        if part.get("type") == "text" and part.get("text"):
            pieces.append(str(part["text"]))
    flush()
    return out


def new_messages(stored: Sequence[ViewMessage], sent: Sequence[ChatMessage]) -> list[ChatMessage]:
    """The sent messages the session does not have yet: those after the longest stored prefix.

    Messages without text (an assistant turn made only of tool calls) are skipped while matching.
    """
    matched, cut = 0, 0
    for index, message in enumerate(sent):
        if not message.text:
            continue
        if (
            matched < len(stored)
            and stored[matched].role == message.role
            and stored[matched].text == message.text
        ):
            matched += 1
            cut = index + 1
        else:
            break
    return list(sent[cut:])


def title_of(messages: Sequence[ChatMessage], limit: int = 60) -> str | None:
    """The first user message, on one line, cut at a word near `limit` characters."""
    for message in messages:
        if message.role == "user" and message.text.strip():
            text = " ".join(message.text.split())
            if len(text) <= limit:
                return text
            cut = text[:limit].rsplit(" ", 1)[0] if " " in text[:limit] else text[:limit]
            return cut.rstrip(" ,.;:") + "…"
    return None
