"""Build the agent controller from Settings, on the store's engine (wiring calls this)."""

from __future__ import annotations

import logging

from chambers.config import Settings
from chambers.core.controller import Controller
from chambers.core.controller.agents import AgentKeys, AgentService
from chambers.core.controller.audit import AuditLog
from chambers.core.controller.chat import ControllerChat
from chambers.core.controller.gate import ControllerGate
from chambers.core.controller.grants import GrantService
from chambers.core.controller.users import UserService
from chambers.core.ports import EventBus, Store
from chambers.core.sessions import SessionService
from chambers.core.turns import TurnRunner
from chambers.store.controller import SqlControllerStore
from chambers.store.sql import SqlStore
from chambers.webhooks.signing import SecretBox

log = logging.getLogger("chambers.controller")


def build_controller(settings: Settings, store: Store) -> Controller:
    """Agents, users, grants, the session log and the TurnGate (the chat surface comes later)."""
    if not isinstance(store, SqlStore):
        raise TypeError("the agent controller needs the SQL store")
    cstore = SqlControllerStore(store.db)
    configured = settings.secret_key.get_secret_value() if settings.secret_key is not None else None
    keys = AgentKeys(cstore, SecretBox.from_settings(configured, settings.data_dir))
    agents = AgentService(cstore, keys, settings.default_model)
    audit = AuditLog(cstore, keys)
    return Controller(
        agents=agents,
        users=UserService(cstore, settings.session_cookie_max_age_s),
        grants=GrantService(cstore, store, agents),
        audit=audit,
        gate=ControllerGate(cstore, agents, audit),
    )


def attach_chat(
    controller: Controller,
    settings: Settings,
    store: Store,
    bus: EventBus,
    runner: TurnRunner,
    sessions: SessionService,
) -> None:
    """The `/api/chat` surface, once the runner and sessions (which take the gate) exist."""
    from chambers.agent.history import encode_history

    controller.chat = ControllerChat(
        controller.gate.store,
        store,
        bus,
        runner,
        sessions,
        controller.agents,
        controller.gate,
        encode_history,
        settings.sse_keepalive_s,
    )
