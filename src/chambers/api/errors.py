"""The error envelope `{"error": {"message", "code"}}` on every error response."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from chambers.core import errors as core

log = logging.getLogger("chambers.api")

STATUS: dict[type[core.ChambersError], int] = {
    core.InvalidRequest: 400,
    core.Unauthorized: 401,
    core.Forbidden: 403,
    core.PolicyDenied: 403,
    core.NotFound: 404,
    core.Conflict: 409,
    core.PayloadTooLarge: 413,
    core.RateLimited: 429,
    core.Unavailable: 503,
}

_HTTP_CODES = {
    400: "INVALID_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    429: "RATE_LIMITED",
}


def envelope(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error response in the documented shape."""
    return JSONResponse({"error": {"message": message, "code": code}}, status_code=status, headers=headers)


def status_of(exc: core.ChambersError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]  # type: ignore[index]
    return 500


def headers_of(exc: core.ChambersError) -> dict[str, str]:
    if isinstance(exc, core.TurnConflict):
        return {"Retry-After": str(exc.retry_after_s), "X-Active-Turn-Id": exc.active_turn_id}
    if isinstance(exc, core.RateLimited | core.Overloaded):
        return {"Retry-After": str(exc.retry_after_s)}
    return {}


def describe_validation(errors: list[Any]) -> str:
    """`parts.0.text: String should have at least 1 character` for the first few problems."""
    described = []
    for err in errors[:5]:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        where = ".".join(loc) or "body"
        msg = err.get("msg", "invalid")
        if err.get("type") == "json_invalid":
            where, msg = "body", f"malformed JSON ({err.get('ctx', {}).get('error', 'parse error')})"
        elif err.get("type") == "extra_forbidden":
            msg = "unknown field"
        elif err.get("type") == "missing" and where == "body":
            msg = "a JSON body is required"
        described.append(f"{where}: {msg}")
    return "; ".join(described)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every failure into the envelope."""

    @app.exception_handler(core.ChambersError)
    async def _domain(_request: Request, exc: core.ChambersError) -> JSONResponse:
        return envelope(status_of(exc), exc.message, exc.code, headers_of(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return envelope(400, describe_validation(list(exc.errors())), "INVALID_REQUEST")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "ERROR")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ").lower()
        if exc.status_code == 404 and message == "Not Found":
            message = "No such route"
        return envelope(exc.status_code, message, code, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return envelope(500, "Internal server error", "INTERNAL")
