"""`chambers keys`: create, list and revoke API keys."""

from __future__ import annotations

from typing import Annotated

import typer

from chambers.cli.common import ConfigFile, DatabaseUrl, DataDir, settings_from, with_store
from chambers.core.clock import iso
from chambers.core.keys import IssuedKey, KeyService, parse_scopes
from chambers.core.models import ApiKey
from chambers.core.ports import Store

app = typer.Typer(no_args_is_help=True, help="Manage API keys.")


@app.command("create")
def create(
    org: Annotated[str, typer.Option(help="Organisation name.")] = "default",
    scopes: Annotated[str, typer.Option(help="Comma-separated: agent:read, agent:write, admin.")] = (
        "agent:read,agent:write"
    ),
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
) -> None:
    """Create a key and print only the key on stdout (shown once)."""
    settings = settings_from(config, data_dir=data_dir, database_url=database_url)

    async def work(store: Store) -> IssuedKey:
        service = KeyService(store)
        owner = await service.org_named(org)
        return await service.create_key(owner.id, parse_scopes(scopes), name=name)

    issued = with_store(settings, work)
    typer.echo(
        f"created {issued.key.id} in {org} with scopes {','.join(sorted(issued.key.scopes))}", err=True
    )
    typer.echo(issued.secret)


@app.command("list")
def list_keys(
    org: Annotated[str | None, typer.Option(help="Only this organisation.")] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
) -> None:
    """List keys (never their secrets)."""
    settings = settings_from(config, data_dir=data_dir, database_url=database_url)

    async def work(store: Store) -> list[tuple[ApiKey, str]]:
        names = {o.id: o.name for o in await store.list_orgs()}
        owner = await KeyService(store).org_named(org) if org else None
        return [(k, names.get(k.org_id, "?")) for k in await store.list_api_keys(owner.id if owner else None)]

    typer.echo("ID\tORG\tNAME\tPREFIX\tSCOPES\tCREATED\tREVOKED")
    for key, org_name in with_store(settings, work):
        typer.echo(
            f"{key.id}\t{org_name}\t{key.name}\t{key.prefix}…\t{','.join(sorted(key.scopes))}\t"
            f"{iso(key.created_at)}\t{iso(key.revoked_at) or '-'}"
        )


@app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (key_…).")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
) -> None:
    """Revoke a key; it stops working at once."""
    settings = settings_from(config, data_dir=data_dir, database_url=database_url)

    async def work(store: Store) -> None:
        await KeyService(store).revoke(key_id)

    with_store(settings, work)
    typer.echo(f"revoked {key_id}", err=True)
