"""`chambers users`: add and list users (who sign in at POST /api/auth/login)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from chambers.cli.common import ConfigFile, DatabaseUrl, DataDir, settings_from
from chambers.cli.controller_common import operator, with_controller
from chambers.core.controller import Controller
from chambers.core.controller.models import User
from chambers.core.ports import Store

app = typer.Typer(no_args_is_help=True, help="Manage users (email + password sign-in, role admin or member).")


def _password(given: str | None) -> str:
    """--password, else the first line of a piped stdin, else a hidden prompt (asked twice)."""
    if given is not None:
        return given
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    value: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return value


@app.command("create")
def create(
    email: Annotated[str, typer.Option(help="The user's email (their sign-in name).")],
    org: Annotated[str, typer.Option(help="Organisation name.")] = "default",
    role: Annotated[str, typer.Option(help="admin or member.")] = "member",
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    password: Annotated[
        str | None, typer.Option(help="The password (else read from stdin, or prompted).", show_default=False)
    ] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
) -> None:
    """Add a user and print their id."""
    settings = settings_from(config, data_dir=data_dir, database_url=database_url)
    secret = _password(password)

    async def work(controller: Controller, store: Store) -> User:
        owner = await operator(store, org)
        return await controller.users.add(owner.org_id, email=email, password=secret, role=role, name=name)

    user = with_controller(settings, work)
    typer.echo(f"created {user.role} {user.email} in {org}", err=True)
    typer.echo(user.id)


@app.command("list")
def list_users(
    org: Annotated[str, typer.Option(help="Organisation name.")] = "default",
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
) -> None:
    """List the organisation's users."""
    settings = settings_from(config, data_dir=data_dir, database_url=database_url)

    async def work(controller: Controller, store: Store) -> list[User]:
        return await controller.users.list(await operator(store, org))

    typer.echo("ID\tEMAIL\tROLE\tNAME\tDISABLED")
    for user in with_controller(settings, work):
        disabled = user.disabled_at.isoformat() if user.disabled_at else "-"
        typer.echo(f"{user.id}\t{user.email}\t{user.role}\t{user.name or '-'}\t{disabled}")
