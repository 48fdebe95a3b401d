"""`/api/auth`: sign in with email and password (an HttpOnly cookie), sign out, and who am I."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from chambers.api.auth import check_origin
from chambers.api.controller_deps import Caller, controller_of
from chambers.api.users import UserOut, user_out
from chambers.core.clock import iso
from chambers.core.errors import Forbidden

router = APIRouter(prefix="/api/auth", tags=["sign-in"])


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: Annotated[StrictStr, Field(min_length=1, max_length=320)]
    password: Annotated[StrictStr, Field(min_length=1, max_length=1024)]


class LoginOut(BaseModel):
    user: UserOut
    expiresAt: str


class Me(BaseModel):
    id: str
    kind: str
    orgId: str
    orgName: str | None
    role: str | None = None
    scopes: list[str]
    email: str | None = None
    name: str | None = None


class LoggedOut(BaseModel):
    signedOut: bool


def secure(request: Request) -> bool:
    """HTTPS as the client sees it (uvicorn applies X-Forwarded-Proto from trusted proxies)."""
    return request.url.scheme == "https"


@router.post("/login")
async def login(request: Request, response: Response, body: LoginIn) -> LoginOut:
    """Check email and password; set the HttpOnly, SameSite=Lax sign-in cookie."""
    if request.headers.get("origin") is not None:
        try:
            check_origin(request)
        except Forbidden:
            raise Forbidden("Sign-in from a foreign origin is refused") from None
    services = request.app.state.services
    signed = await controller_of(request).users.sign_in(body.email, body.password)
    response.set_cookie(
        services.settings.session_cookie_name,
        signed.token,
        max_age=services.settings.session_cookie_max_age_s,
        path="/",
        httponly=True,
        samesite="lax",
        secure=secure(request),
    )
    response.headers["Cache-Control"] = "no-store"
    return LoginOut(user=user_out(signed.user), expiresAt=iso(signed.login.expires_at) or "")


@router.post("/logout")
async def logout(request: Request, response: Response) -> LoggedOut:
    """End the sign-in behind the cookie (it stops working at once) and clear the cookie."""
    services = request.app.state.services
    name = services.settings.session_cookie_name
    token = request.cookies.get(name)
    if token:
        check_origin(request)
        await controller_of(request).users.sign_out(token)
    response.delete_cookie(name, path="/", httponly=True, samesite="lax", secure=secure(request))
    return LoggedOut(signedOut=bool(token))


@router.get("/me")
async def me(request: Request, caller: Caller) -> Me:
    """The caller, for either credential: a user (role) or an API key (scopes)."""
    services = request.app.state.services
    org = await services.store.get_org(caller.org_id)
    out = Me(
        id=caller.subject_id,
        kind=caller.kind,
        orgId=caller.org_id,
        orgName=org.name if org else None,
        scopes=sorted(caller.scopes),
    )
    if caller.kind == "user":
        user = await controller_of(request).users.get(caller.subject_id)
        if user is not None:
            out.role, out.email, out.name = user.role, user.email, user.name
    return out
