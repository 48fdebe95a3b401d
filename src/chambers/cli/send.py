"""`chambers send`: one message to a session, for scripts; prints the answer."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from chambers.cli.chat import ApiKey, Url


def send(
    text: Annotated[str, typer.Argument(help="The message; '-' reads it from standard input.")],
    session: Annotated[str, typer.Option("--session", help="The session (chat_...).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole response as JSON.")] = False,
    wait: Annotated[
        float, typer.Option("--wait", help="Seconds to wait for a turn already running (409).")
    ] = 60.0,
    idempotency_key: Annotated[
        str | None, typer.Option("--idempotency-key", help="Make a retry of this command safe.")
    ] = None,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """Send a message and print the answer's text (exit 1 with the error on failure).

    Waits for a running turn to end first (up to --wait seconds), and retries a dropped connection
    without running the turn twice.
    """
    from chambers.client import ChambersError, Client

    if text == "-":
        text = sys.stdin.read()
    with Client(url, api_key, conflict_wait=wait) as client:
        try:
            answer = client.chat(session).send(text, idempotency_key=idempotency_key)
        except ChambersError as exc:
            typer.echo(f"chambers: {exc.message} ({exc.code})", err=True)
            raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(answer.model_dump(mode="json"), indent=2, ensure_ascii=False))
    else:
        typer.echo(answer.text)
    if answer.info.status != "completed":
        typer.echo(f"chambers: the turn ended {answer.info.status}", err=True)
        raise typer.Exit(1)
