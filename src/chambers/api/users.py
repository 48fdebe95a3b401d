"""`/api/users`: admins add, list and disable the users of their organisation."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from chambers.api.controller_deps import Caller, controller_of
from chambers.core.clock import iso
from chambers.core.controller.models import User

router = APIRouter(prefix="/api/users", tags=["users"])


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: Annotated[StrictStr, Field(min_length=3, max_length=320)]
    name: Annotated[StrictStr, Field(min_length=1, max_length=200)] | None = None
    password: Annotated[StrictStr, Field(min_length=8, max_length=1024)]
    role: Literal["admin", "member"] = "member"


class UserOut(BaseModel):
    id: str
    email: str
    name: str | None
    role: str
    orgId: str
    createdAt: str
    disabledAt: str | None


class UserList(BaseModel):
    users: list[UserOut]


def user_out(user: User) -> UserOut:
    return UserOut(
        id=user.id,
        email=user.email,
        name=user.name,
        role=user.role,
        orgId=user.org_id,
        createdAt=iso(user.created_at) or "",
        disabledAt=iso(user.disabled_at),
    )


@router.post("", status_code=201)
async def create_user(request: Request, caller: Caller, body: UserIn) -> UserOut:
    """Add a user (admins). The password is stored as an argon2id hash."""
    user = await controller_of(request).users.create(
        caller, email=body.email, password=body.password, role=body.role, name=body.name
    )
    return user_out(user)


@router.get("")
async def list_users(request: Request, caller: Caller) -> UserList:
    return UserList(users=[user_out(u) for u in await controller_of(request).users.list(caller)])


@router.delete("/{user_id}")
async def disable_user(request: Request, caller: Caller, user_id: str) -> UserOut:
    """Disable a user (admins): their sign-ins end at once and they cannot sign in again."""
    users = controller_of(request).users
    await users.disable(caller, user_id)
    found = await users.get(user_id)
    assert found is not None
    return user_out(found)
