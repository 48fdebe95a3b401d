"""`chambers orgs`: create and list organisations."""

from __future__ import annotations

from typing import Annotated

import typer

from chambers.cli.common import ConfigFile, DatabaseUrl, DataDir, settings_from, with_store
from chambers.core.keys import KeyService
from chambers.core.models import Org
from chambers.core.ports import Store

app = typer.Typer(no_args_is_help=True, help="Manage organisations.")


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="The organisation's unique name.")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
) -> None:
    """Create an organisation and print its id."""
    settings = settings_from(config, data_dir=data_dir, database_url=database_url)

    async def work(store: Store) -> Org:
        return await KeyService(store).create_org(name)

    typer.echo(with_store(settings, work).id)


@app.command("list")
def list_orgs(data_dir: DataDir = None, database_url: DatabaseUrl = None, config: ConfigFile = None) -> None:
    """List organisations."""
    settings = settings_from(config, data_dir=data_dir, database_url=database_url)

    async def work(store: Store) -> list[Org]:
        return await store.list_orgs()

    for org in with_store(settings, work):
        typer.echo(f"{org.id}\t{org.name}")
