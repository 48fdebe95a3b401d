"""What the controller's commands share: the controller on the store, and the operator's principal."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from chambers.config import Settings
from chambers.core.controller import Controller
from chambers.core.controller.models import ADMIN_SCOPES
from chambers.core.keys import KeyService
from chambers.core.models import Principal
from chambers.core.ports import Store

T = TypeVar("T")


def with_controller(settings: Settings, work: Callable[[Controller, Store], Awaitable[T]]) -> T:
    """Open the store, build the controller on it, run `work` (domain errors exit 1)."""
    from chambers.cli.common import with_store
    from chambers.controller_runtime import build_controller

    async def run(store: Store) -> T:
        return await work(build_controller(settings, store), store)

    return with_store(settings, run)


async def operator(store: Store, org: str) -> Principal:
    """The operator at the command line acts as an admin of the named organisation."""
    owner = await KeyService(store).org_named(org)
    return Principal(org_id=owner.id, subject_id="cli", kind="api_key", scopes=ADMIN_SCOPES)
