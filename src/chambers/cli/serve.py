"""`chambers serve`: run the HTTP server."""

from __future__ import annotations

from typing import Annotated

import typer

from chambers.cli.common import ConfigFile, DatabaseUrl, DataDir, settings_from


def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on (env CHAMBERS_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (env CHAMBERS_PORT).")] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    config: ConfigFile = None,
    log_format: Annotated[str | None, typer.Option("--log-format", help="text or json.")] = None,
) -> None:
    """Start the server: migrate the store, create the first admin key if needed, serve HTTP."""
    import uvicorn

    from chambers import logs
    from chambers.app import create_app

    settings = settings_from(
        config, host=host, port=port, data_dir=data_dir, database_url=database_url, log_format=log_format
    )
    logs.configure(settings.log_format, settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        lifespan="on",
    )
