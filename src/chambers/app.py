"""create_app(settings): the FastAPI application, its routers, middleware and lifespan."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from chambers import __version__
from chambers.api import chat, errors, health
from chambers.api import webhooks as webhooks_api
from chambers.api.controller import ROUTERS as CONTROLLER_ROUTERS  # agent controller (/api)
from chambers.api.middleware import BodyLimit, RequestLog
from chambers.api.runs import router as runs_router  # runs
from chambers.api.web import router as web_router  # web UI
from chambers.config import Settings
from chambers.wiring import Services, build_services

log = logging.getLogger("chambers")


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    """The application. Services are built in the lifespan unless given (tests of the wiring)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        built = services or await build_services(settings)
        app.state.services = built
        issued = await built.keys.bootstrap()
        if issued is not None:
            _announce_admin_key(issued.secret)
        log.info("store: %s", settings.resolved_database_url.split("://", 1)[0])
        await built.start()
        try:
            yield
        finally:
            await built.close()

    app = FastAPI(
        title="Chambers",
        version=__version__,
        summary="Long-lived, sandboxed, multi-turn chat sessions with LLM agents.",
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(health.router)
    app.include_router(chat.router)
    app.include_router(webhooks_api.router)
    app.include_router(runs_router)  # runs
    for router in CONTROLLER_ROUTERS:  # agent controller (/api)
        app.include_router(router)
    app.include_router(web_router)  # web UI
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(RequestLog)
    return app


def _announce_admin_key(secret: str) -> None:
    # Printed to stdout once, outside logging, so it never lands in a log pipeline.
    banner = (
        "\n"
        "  Chambers created organisation 'default' and its admin API key.\n"
        "  It is shown only this once; store it now:\n\n"
        f"    {secret}\n\n"
        "  Use it as: Authorization: Bearer <key>\n"
    )
    sys.stdout.write(banner + "\n")
    sys.stdout.flush()
