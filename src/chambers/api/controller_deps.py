"""What the controller's routers share: the caller (API key or sign-in cookie) and the services."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from chambers.api.auth import api_principal
from chambers.core.controller import Controller
from chambers.core.errors import Unavailable
from chambers.core.models import Principal

Caller = Annotated[Principal, Depends(api_principal)]


def controller_of(request: Request) -> Controller:
    controller: Controller | None = request.app.state.services.controller
    if controller is None:
        raise Unavailable("The agent controller is not configured on this server")
    return controller
