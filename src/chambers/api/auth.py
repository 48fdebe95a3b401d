"""Authentication dependencies: bearer API keys, or the controller's sign-in cookie (on every surface)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request

from chambers.core.errors import Forbidden, Unauthorized
from chambers.core.keys import require_scope
from chambers.core.models import Principal


async def principal(request: Request) -> Principal:
    """The caller behind `Authorization: Bearer <key>`."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Missing API key: send 'Authorization: Bearer <key>'")
    found: Principal = await request.app.state.services.keys.authenticate(token.strip())
    return found


def scoped(scope: str) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency that authenticates (an API key, or the sign-in cookie) and requires `scope`."""

    async def dependency(request: Request) -> Principal:
        caller = await api_principal(request)
        require_scope(caller, scope)
        if caller.kind == "user" and not caller.has("admin") and request.url.path.startswith("/events/"):
            raise Forbidden("Webhook subscriptions are managed by admins")
        return caller

    dependency.__name__ = f"require_{scope.replace(':', '_')}"
    return dependency


read_access = scoped("agent:read")
write_access = scoped("agent:write")
admin_access = scoped("admin")


# --- `/api` (agent controller): an API key or the sign-in cookie ------------------------------------------

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


async def api_principal(request: Request) -> Principal:
    """The caller of an `/api` route: `Authorization: Bearer <key>`, else the sign-in cookie.

    Cookie-authenticated writes must come from the server's own origin or a trusted one (see
    `check_origin`); API keys are not cookies, so they need no such check.
    """
    if request.headers.get("authorization"):
        return await principal(request)
    services = request.app.state.services
    token = request.cookies.get(services.settings.session_cookie_name)
    if not token or services.controller is None:
        raise Unauthorized("Sign in (POST /api/auth/login) or send 'Authorization: Bearer <key>'")
    check_origin(request)
    found: Principal = (await services.controller.users.authenticate(token))[1]
    return found


def own_origin(request: Request) -> str:
    """`scheme://host[:port]` of this request, as a browser would send it in `Origin`."""
    return f"{request.url.scheme}://{request.url.netloc}".lower()


def check_origin(request: Request) -> None:
    """Refuse a cookie-authenticated write from a foreign origin (CSRF).

    A write needs `Origin` equal to this server's origin or one of `trusted_origins`. Browsers send
    `Origin` on every POST/PATCH/DELETE, so a missing one is refused too, with one exception: a
    request with no fetch metadata (`Sec-Fetch-Site`, which browsers always send) and a JSON body is
    a script (e.g. the seed's Python and Node consumers), which a browser cannot be made to send
    cross-site without a CORS preflight this server never approves.
    """
    if request.method not in UNSAFE_METHODS:
        return
    origin = request.headers.get("origin")
    if origin is None:
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if "sec-fetch-site" not in request.headers and media == "application/json":
            return
        raise Forbidden("Cookie-authenticated writes need an Origin header from this server's origin")
    origin = origin.strip().lower().rstrip("/")
    if origin == own_origin(request) or origin in request.app.state.services.settings.trusted_origins:
        return
    raise Forbidden(f"Origin {origin} may not send cookie-authenticated writes to this server")
