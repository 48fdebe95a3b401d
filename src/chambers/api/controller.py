"""The agent controller's `/api` routers, in the order the app mounts them."""

from __future__ import annotations

from fastapi import APIRouter

from chambers.api import agents, audit, controller_chat, grants, login, users

ROUTERS: tuple[APIRouter, ...] = (
    login.router,
    agents.router,
    users.router,
    grants.router,
    controller_chat.router,
    audit.router,
)
