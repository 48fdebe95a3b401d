"""The `chambers` command. One module per command group; each calls the same services as the API."""

from __future__ import annotations

import typer

from chambers.cli import agents as agents_cli  # agent controller
from chambers.cli import audit as audit_cli
from chambers.cli import chat, keys, orgs, send, serve
from chambers.cli import users as users_cli

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Chambers: sandboxed agent chat sessions.")
app.command("serve")(serve.serve)
app.command("chat")(chat.chat)
app.command("send")(send.send)
app.add_typer(keys.app, name="keys")
app.add_typer(orgs.app, name="orgs")
app.add_typer(agents_cli.app, name="agents")  # agent controller
app.add_typer(users_cli.app, name="users")
app.add_typer(audit_cli.app, name="audit")


def main() -> None:
    """Entry point of the `chambers` console script."""
    app()
