"""The deliverer: a background task per server process that works the durable delivery queue.

Loop: claim due deliveries (leased, so several processes can share the queue), POST each one signed
(Standard Webhooks), record the attempt, then mark the delivery delivered, schedule its next attempt
from the retry schedule (with +-10% jitter), or mark it dead once the schedule is exhausted. Deliveries
run concurrently (bounded overall and per subscription), off the request path. Everything is in the
store, so delivery resumes after a restart; a lease left by a killed process expires on its own.
Finished events older than the retention are pruned with their deliveries and attempt log.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import time
from dataclasses import dataclass
from datetime import timedelta

import httpx

from chambers.core.clock import utcnow
from chambers.store.webhooks import WebhookStore
from chambers.webhooks.models import AttemptResult, DueDelivery
from chambers.webhooks.signing import SecretBox, SecretUnreadable, encode_body, sign
from chambers.webhooks.transport import webhook_client

log = logging.getLogger("chambers.webhooks")

_LEASE_MARGIN_S = 15.0
_BODY_EXCERPT = 200
_DRAIN_LIMIT = 16 * 1024


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    retry_schedule: tuple[float, ...]
    timeout_s: float
    disable_after: int
    poll_interval_s: float
    concurrency: int = 16
    per_subscription: int = 4
    allow_private: bool = False
    jitter: float = 0.1
    shutdown_grace_s: float = 3.0
    retention_s: float = 7 * 86400.0
    prune_interval_s: float = 600.0

    def retry_delay(self, attempts_made: int) -> float | None:
        """Seconds before the next attempt after `attempts_made` failures, or None: give up."""
        if attempts_made > len(self.retry_schedule):
            return None
        base = self.retry_schedule[attempts_made - 1]
        return max(0.0, base * random.uniform(1 - self.jitter, 1 + self.jitter))


class Deliverer:
    """Claims and sends deliveries until closed."""

    def __init__(self, store: WebhookStore, box: SecretBox, policy: DeliveryPolicy) -> None:
        self.store = store
        self.box = box
        self.policy = policy
        self._client: httpx.AsyncClient | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._in_flight: dict[asyncio.Task[None], DueDelivery] = {}
        self._per_subscription: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._timers: list[float] = []  # monotonic times of retries this process scheduled
        self._stopping = False
        self._next_prune = time.monotonic() + policy.prune_interval_s

    async def start(self) -> None:
        if self._loop_task is not None:
            return
        self._client = webhook_client(
            self.policy.allow_private, self.policy.timeout_s, max(self.policy.concurrency, 1)
        )
        self._loop_task = asyncio.create_task(self._run(), name="webhook-deliverer")

    def wake(self) -> None:
        """New work may be due (a test event, a finished delivery unblocking the next in order)."""
        self._wake.set()

    async def close(self) -> None:
        """Stop claiming, let attempts in flight finish briefly, then give back the leases left."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        if self._in_flight:
            _done, unfinished = await asyncio.wait(
                list(self._in_flight), timeout=self.policy.shutdown_grace_s
            )
            leftover = [self._in_flight[t] for t in unfinished if t in self._in_flight]
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
            try:
                await self.store.release(leftover)
            except Exception:
                log.warning("webhook deliverer: could not release %d leases", len(leftover))
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                await self._fill()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                log.exception("webhook deliverer: claiming deliveries failed")
            if time.monotonic() >= self._next_prune:
                await self._prune()
            await self._sleep(min(self.policy.poll_interval_s * (2 ** min(failures, 6)), 30.0))

    async def _prune(self) -> None:
        """Keep the outbox bounded: finished events older than the retention go, in batches. Every
        replica does this; the deletes are idempotent, so they need no coordination."""
        self._next_prune = time.monotonic() + self.policy.prune_interval_s
        before = utcnow() - timedelta(seconds=self.policy.retention_s)
        try:
            removed = 0
            while not self._stopping and (pruned := await self.store.prune(before)):
                removed += pruned
            if removed:
                log.info("webhook outbox: removed %d events older than the retention", removed)
        except Exception:
            log.exception("webhook outbox: pruning failed; trying again later")

    async def _sleep(self, longest: float) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0] <= now:
            heapq.heappop(self._timers)
        timeout = longest
        if self._timers:
            timeout = min(timeout, max(self._timers[0] - now, 0.0))
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            pass
        self._wake.clear()

    async def _fill(self) -> None:
        free = self.policy.concurrency - len(self._in_flight)
        if free <= 0 or self._stopping:
            return
        now = utcnow()
        lease = now + timedelta(seconds=self.policy.timeout_s + _LEASE_MARGIN_S)
        claimed = await self.store.claim(
            now, lease, free, self._per_subscription, self.policy.per_subscription
        )
        for due in claimed:
            task = asyncio.create_task(self._deliver(due), name=f"webhook-{due.id}")
            self._in_flight[task] = due
            self._per_subscription[due.subscription_id] = (
                self._per_subscription.get(due.subscription_id, 0) + 1
            )
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        due = self._in_flight.pop(task, None)
        if due is not None:
            left = self._per_subscription.get(due.subscription_id, 1) - 1
            if left > 0:
                self._per_subscription[due.subscription_id] = left
            else:
                self._per_subscription.pop(due.subscription_id, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook delivery task failed", exc_info=task.exception())
        self._wake.set()  # a slot is free, and the next event in this order may be due

    async def _deliver(self, due: DueDelivery) -> None:
        result = await self.attempt(due)
        attempts_made = due.attempts + 1
        delay = None if result.ok else self.policy.retry_delay(attempts_made)
        now = utcnow()
        next_at = None if delay is None else now + timedelta(seconds=delay)
        outcome = await self.store.record(due, result, now, next_at, self.policy.disable_after)
        what = result.error or f"HTTP {result.status_code}"
        if outcome is None:
            log.info("webhook %s to %s: lease lost, result dropped", due.event_id, due.subscription_id)
        elif outcome == "delivered":
            log.info(
                "webhook %s (%s) delivered to %s on attempt %d in %d ms",
                due.event_id,
                due.event_type,
                due.subscription_id,
                attempts_made,
                result.duration_ms,
            )
        elif outcome == "retry":
            assert delay is not None
            heapq.heappush(self._timers, time.monotonic() + delay)
            log.info(
                "webhook %s to %s failed (attempt %d: %s); retry in %.1f s",
                due.event_id,
                due.subscription_id,
                attempts_made,
                what,
                delay,
            )
        else:
            log.warning(
                "webhook %s to %s failed %d times (%s); giving up",
                due.event_id,
                due.subscription_id,
                attempts_made,
                what,
            )
            if outcome == "disabled":
                log.warning(
                    "webhook subscription %s disabled after %d consecutive failed deliveries",
                    due.subscription_id,
                    self.policy.disable_after,
                )

    async def attempt(self, due: DueDelivery) -> AttemptResult:
        """One signed POST; never raises for a failure of the target."""
        assert self._client is not None
        started = time.monotonic()

        def result(ok: bool, status: int | None, error: str | None) -> AttemptResult:
            elapsed = int((time.monotonic() - started) * 1000)
            return AttemptResult(ok=ok, status_code=status, error=error, duration_ms=elapsed)

        try:
            secret = self.box.open(due.sealed_secret)
        except SecretUnreadable as exc:
            return result(False, None, str(exc))
        signed = sign(secret, due.event_id, encode_body(due.payload))
        try:
            async with asyncio.timeout(self.policy.timeout_s):
                request = self._client.build_request(
                    "POST", due.url, content=signed.body, headers=signed.headers
                )
                response = await self._client.send(request, stream=True)
                try:
                    excerpt = await _excerpt(response)
                finally:
                    await response.aclose()
        except TimeoutError:
            return result(False, None, f"timed out after {self.policy.timeout_s:g} s")
        except httpx.TimeoutException:
            return result(False, None, f"timed out after {self.policy.timeout_s:g} s")
        except httpx.HTTPError as exc:
            return result(False, None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        except (OSError, ValueError) as exc:
            return result(False, None, f"{type(exc).__name__}: {exc}")
        status = response.status_code
        if 200 <= status < 300:
            return result(True, status, None)
        if 300 <= status < 400:
            where = response.headers.get("location", "")
            return result(False, status, f"HTTP {status}: redirects are not followed ({where[:200]})")
        return result(False, status, f"HTTP {status}" + (f": {excerpt}" if excerpt else ""))


async def _excerpt(response: httpx.Response) -> str:
    """The start of the response body (a receiver's error message). A short body is read whole, so
    the connection can be reused; a long one is cut off and its connection dropped."""
    taken = b""
    async for chunk in response.aiter_bytes():
        taken += chunk
        if len(taken) >= _DRAIN_LIMIT:
            break
    return taken[:_BODY_EXCERPT].decode("utf-8", "replace").strip()
