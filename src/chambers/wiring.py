"""The one place that reads Settings and builds adapters and services."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from chambers import collector
from chambers.bus.memory import MemoryEventBus
from chambers.config import S3Location, Settings
from chambers.controller_runtime import attach_chat, build_controller  # agent controller
from chambers.core.clock import utcnow
from chambers.core.controller import Controller
from chambers.core.keys import KeyService
from chambers.core.lifecycle import SessionLifecycle
from chambers.core.loop import AgentLoop
from chambers.core.overload import LoadGuard
from chambers.core.ports import EventBus, ReplicaChannel, Store
from chambers.core.reaper import Reaper
from chambers.core.runs import RunRules, RunService, RunWorkerPool  # runs
from chambers.core.sessions import SessionRules, SessionService
from chambers.core.turns import TurnPolicy, TurnRunner
from chambers.core.usage import preload_prices
from chambers.sandbox.filesystems import journal_warning
from chambers.sandbox.host import SessionSandboxes
from chambers.sandbox.limits import SandboxLimits
from chambers.sandbox.snapshots import LocalSnapshotStore, SnapshotStore
from chambers.store.runs import SqlRunStore  # runs
from chambers.store.sql import SqlStore
from chambers.webhooks.runtime import Webhooks, build_webhooks

log = logging.getLogger("chambers")


@dataclass
class Services:
    """Everything a request handler or command needs, built once per process."""

    settings: Settings
    store: Store
    bus: EventBus
    keys: KeyService
    runner: TurnRunner
    sessions: SessionService
    reaper: Reaper
    sandboxes: SessionSandboxes
    lifecycle: SessionLifecycle
    extras: dict[str, Any] = field(default_factory=dict)
    _background: list[asyncio.Task[None]] = field(default_factory=list)
    webhooks: Webhooks | None = None  # subscriptions API and deliverer (src/chambers/webhooks)
    controller: Controller | None = None  # agents, users, grants, session log (core/controller)
    runs: RunService | None = None  # runs (core/runs.py)
    run_pool: RunWorkerPool | None = None  # runs: the workers of this process
    warm: bool = False
    """Whether start-up's background preload (the agent loop's imports, the price catalogue, the
    collector's settling) has finished: until then the first turns may wait on it."""
    preload_error: str | None = None

    async def readiness(self) -> dict[str, dict[str, Any]]:
        """Each dependency's health, for /readyz."""
        checks: dict[str, dict[str, Any]] = {}
        try:
            await self.store.ping()
            checks["store"] = {"ok": True}
        except Exception as exc:
            checks["store"] = {"ok": False, "error": type(exc).__name__}
        ping = getattr(self.bus, "ping", None)  # the Redis bus; the in-process one has nothing to check
        if ping is not None:
            try:
                await ping()
                checks["bus"] = {"ok": True}
            except Exception as exc:
                checks["bus"] = {"ok": False, "error": type(exc).__name__}
        # Gating: while new turns are refused here, a load balancer should send them elsewhere.
        guard, refusal = self.runner.guard, self.runner.guard.refusal(self.runner.running)
        checks["load"] = {
            "ok": refusal is None,
            "lagMs": round(guard.lag_s * 1000, 1),
            "storeWaitMs": round(guard.store_wait_s * 1000, 1),
            **({"error": refusal} if refusal else {}),
        }
        # Informative, not gating: without bubblewrap the server still chats, it only refuses tools.
        checks["sandbox"] = {**self.sandboxes.readiness(), "required": False}
        # Informative too: a cold server serves, only its first turns are slower (and benchmarks wait).
        checks["warm"] = {"ok": self.warm, "required": False}
        if self.preload_error is not None:
            checks["warm"]["error"] = self.preload_error
        return checks

    async def start(self) -> None:
        """Background duties of a serving process: recover interrupted turns, then run the reaper."""
        announce_sandbox(self.sandboxes)
        # After start-up, off the event loop: a server is healthy at once, and the first turn rarely waits.
        self._background.append(asyncio.create_task(self._preload(), name="preload"))
        await self.runner.recover()
        await self.lifecycle.recover()
        self.reaper.start()
        self._background += [
            asyncio.create_task(self.runner.serve_control(), name="control channel"),
            asyncio.create_task(self.runner.keep_leases(), name="leases"),
        ]
        self._background.append(asyncio.create_task(self.runner.guard.watch(), name="load guard"))
        if self.run_pool is not None:  # runs: after turns are recovered, so it sees how they ended
            await self.run_pool.start()
        if self.webhooks is not None:
            await self.webhooks.start()

    async def _preload(self) -> None:
        try:
            await asyncio.to_thread(self.runner.loop.preload)
            await asyncio.to_thread(preload_prices)
            collector.settle(self.settings.gc_full_every)
        except Exception as exc:  # nothing waits on it: the first turns load what they need themselves
            log.exception("start-up preload failed")
            self.preload_error = type(exc).__name__
        else:
            self.warm = True

    async def close(self) -> None:
        if self.run_pool is not None:  # runs: first, so shutdown's cancelled turns are retried later
            await self.run_pool.close()
        for task in self._background:
            task.cancel()
        if self.runner.channel is not None:
            await self.runner.channel.close()
        if self.webhooks is not None:
            await self.webhooks.close()
        await self.reaper.stop()
        await self.runner.shutdown()
        await self.runner.loop.aclose()
        await self.sandboxes.close()
        await self.bus.close()
        await self.store.close()


def build_agent_loop(settings: Settings) -> AgentLoop:
    """The configured agent loop: Chambers' own clients, or pydantic-ai's agent (`agent_loop`)."""
    if settings.agent_loop == "pydantic-ai":
        from chambers.agent.loop import PydanticAgentLoop
        from chambers.agent.models import ModelResolver

        return PydanticAgentLoop(ModelResolver(settings))
    from chambers.agent.direct import DirectAgentLoop
    from chambers.agent.models import ClientResolver

    return DirectAgentLoop(ClientResolver(settings))


def build_sandboxes(settings: Settings) -> SessionSandboxes:
    """Session sandboxes under the data dir, with the configured backend and limits."""
    limits = SandboxLimits(
        command_timeout_s=settings.sandbox_command_timeout_s,
        output_limit_bytes=settings.sandbox_output_limit_bytes,
        network=settings.sandbox_network,
    )
    snapshots = build_snapshots(settings)
    return SessionSandboxes(settings.data_dir / "sandboxes", snapshots, settings.sandbox_backend, limits)


def build_snapshots(settings: Settings) -> SnapshotStore:
    """S3-compatible object storage for an s3:// `snapshot_url` (replicas share it), else a directory."""
    location = settings.snapshot_location
    if isinstance(location, S3Location):
        from chambers.sandbox.s3_snapshots import S3SnapshotStore  # boto3 loads only when used

        return S3SnapshotStore(location.bucket, location.prefix, endpoint_url=settings.snapshot_endpoint_url)
    return LocalSnapshotStore(location)


def build_bus(settings: Settings) -> EventBus:
    """The Redis Streams bus when `redis_url` is set (replicas share events), else the in-process one."""
    if settings.redis_url is None:
        return MemoryEventBus(
            buffer_size=settings.event_buffer_size,
            idle_s=settings.event_buffer_idle_s,
            max_sessions=settings.event_buffer_sessions,
        )
    from chambers.bus.redis import RedisEventBus

    return RedisEventBus(
        settings.redis_url,
        prefix=settings.redis_key_prefix,
        buffer_size=settings.event_buffer_size,
        ttl_s=settings.redis_event_ttl_s,
    )


def build_channel(settings: Settings) -> ReplicaChannel | None:
    """How turns reach the replica that owns a session: none with one replica, Redis with several."""
    if settings.redis_url is None:
        return None
    from chambers.bus.channel import RedisChannel

    return RedisChannel(settings.redis_url, prefix=settings.redis_key_prefix)


def announce_sandbox(sandboxes: SessionSandboxes) -> None:
    """Say loudly which sandbox backend runs, and whether tools can run at all."""
    if sandboxes.problem is not None:
        log.error(
            "SANDBOX UNAVAILABLE: %s. Tool calls will be refused. Install bubblewrap, or set "
            "CHAMBERS_SANDBOX_BACKEND=process to run tools WITHOUT isolation.",
            sandboxes.problem,
        )
    elif sandboxes.backend == "process":
        log.warning("SANDBOX BACKEND 'process': agent tools run WITHOUT isolation (explicitly configured)")
    else:
        log.info("sandbox backend: bwrap (bubblewrap isolation)")
    log.info("snapshot store: %s", sandboxes.snapshots.describe())
    warning = journal_warning(sandboxes.root)
    if warning:
        log.warning(warning)


async def open_store(settings: Settings) -> Store:
    """The configured Store, migrated."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return await SqlStore.open(settings.resolved_database_url)


async def build_services(settings: Settings) -> Services:
    """Adapters and services for a serving process."""
    store = await open_store(settings)
    bus = build_bus(settings)
    policy = TurnPolicy(
        retry_after_s=settings.turn_retry_after_s,
        part_update_window_s=settings.part_update_window_ms / 1000,
        max_requests=settings.max_model_requests_per_turn,
        tool_costs_micros=settings.tool_costs_micros,
        question_timeout_s=settings.question_timeout_s,
        cancel_grace_s=settings.cancel_grace_s,
        lease_s=settings.lease_s,
        checkpoint_turns=settings.checkpoint_turns
        if settings.checkpoint_turns is not None
        else settings.redis_url is not None,
    )
    sandboxes = build_sandboxes(settings)
    replica = settings.resolved_replica_id
    lifecycle = SessionLifecycle(store, bus, sandboxes, replica=replica, lease_s=settings.lease_s)
    channel = build_channel(settings)
    sandboxes.on_started, sandboxes.on_reused = lifecycle.sandbox_started, lifecycle.sandbox_reused
    controller = build_controller(settings, store)
    runner = TurnRunner(
        store,
        bus,
        build_agent_loop(settings),
        policy,
        sandbox=sandboxes,
        lifecycle=lifecycle,
        gate=controller.gate,
        replica=replica,
        channel=channel,
        guard=LoadGuard(
            max_running=settings.max_running_turns,
            max_lag_s=settings.overload_lag_ms / 1000,
            max_store_wait_s=settings.overload_store_wait_ms / 1000,
            retry_after_s=settings.overload_retry_after_s,
        ),
    )
    rules = SessionRules(
        default_model=settings.default_model,
        idle_timeout_default_ms=settings.idle_timeout_default_ms,
        idle_timeout_min_ms=settings.idle_timeout_min_ms,
        idle_timeout_max_ms=settings.idle_timeout_max_ms,
        runtime_hourly_rate_usd=settings.runtime_hourly_rate_usd,
    )
    sessions = SessionService(
        store,
        bus,
        runner,
        rules,
        sandbox=sandboxes,
        eager_sandbox=settings.sandbox_eager,
        gate=controller.gate,
    )
    attach_chat(controller, settings, store, bus, runner, sessions)
    runs, run_pool = build_runs(settings, store, runner, sessions, controller, replica)  # runs

    async def sleep_idle() -> list[str]:
        return await lifecycle.sleep_idle(utcnow())

    reaper = Reaper.for_runner(settings.reaper_interval_s, runner, [("idle sessions", sleep_idle)])
    webhooks = build_webhooks(settings, store.db) if isinstance(store, SqlStore) else None
    return Services(
        settings=settings,
        store=store,
        bus=bus,
        keys=KeyService(store),
        runner=runner,
        sessions=sessions,
        reaper=reaper,
        sandboxes=sandboxes,
        lifecycle=lifecycle,
        webhooks=webhooks,
        controller=controller,
        runs=runs,
        run_pool=run_pool,
    )


def build_runs(
    settings: Settings,
    store: Store,
    runner: TurnRunner,
    sessions: SessionService,
    controller: Controller | None,
    replica: str,
) -> tuple[RunService | None, RunWorkerPool | None]:
    """Runs (core/runs.py): the service and this process's worker pool, on the SQL store."""
    if not isinstance(store, SqlStore):
        return None, None
    rules = RunRules(
        default_model=settings.default_model,
        replica=replica,
        lease_s=settings.lease_s,
        poll_interval_s=settings.run_poll_interval_s,
    )
    service = RunService(SqlRunStore(store.db), store, runner, sessions, rules, controller)
    return service, RunWorkerPool(service, settings.run_concurrency, settings.run_poll_interval_s)
