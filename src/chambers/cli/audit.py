"""`chambers audit verify`: check the session log's hash chains and signatures."""

from __future__ import annotations

from typing import Annotated

import typer

from chambers.cli.common import ConfigFile, DatabaseUrl, DataDir, settings_from
from chambers.cli.controller_common import with_controller
from chambers.core.controller import Controller
from chambers.core.controller.audit import ChainReport
from chambers.core.keys import KeyService
from chambers.core.ports import Store

app = typer.Typer(no_args_is_help=True, help="The session log (one signed hash chain per agent).")


@app.command("verify")
def verify(
    org: Annotated[str | None, typer.Option(help="Only this organisation (default: all).")] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
) -> None:
    """Check every chain: sequence, links, hashes and Ed25519 signatures. Exit 1 at the first break.

    Needs no secret: each entry is checked against the public key inside the agent's DID. Keep the
    printed head hashes somewhere else to detect a rewrite of the whole log later.
    """
    settings = settings_from(config, data_dir=data_dir, database_url=database_url)

    async def work(controller: Controller, store: Store) -> list[ChainReport]:
        org_id = (await KeyService(store).org_named(org)).id if org else None
        return await controller.audit.verify(org_id)

    reports = with_controller(settings, work)
    broken = [r for r in reports if r.broken is not None]
    typer.echo("STATE\tCHAIN\tAGENT\tENTRIES\tHEAD")
    for report in reports:
        state = "BROKEN" if report.broken else "ok"
        typer.echo(f"{state}\t{report.chain_id}\t{report.agent_did}\t{report.entries}\t{report.head_hash}")
    if broken:
        first = broken[0].broken
        assert first is not None
        where = (
            f"entry {first.entry_id} (#{first.seq})" if first.entry_id else f"after entry #{first.seq - 1}"
        )
        typer.echo(
            f"chambers: session log broken in chain {first.chain_id} at {where}: {first.reason}", err=True
        )
        raise typer.Exit(1)
    typer.echo(
        f"session log verified: {len(reports)} chain(s), {sum(r.entries for r in reports)} entries", err=True
    )
