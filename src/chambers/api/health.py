"""Liveness and readiness probes, unauthenticated."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """The store (and, when configured, the bus and sandbox backend) can serve."""
    checks: dict[str, Any] = await request.app.state.services.readiness()
    ready = all(c.get("ok", False) for c in checks.values() if c.get("required", True))
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks}, 200 if ready else 503
    )
