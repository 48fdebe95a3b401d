"""Build the webhooks feature from Settings: the service the API calls and the deliverer task."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from chambers.config import Settings
from chambers.store.database import Database
from chambers.store.webhooks import WebhookStore
from chambers.webhooks.deliverer import Deliverer, DeliveryPolicy
from chambers.webhooks.service import WebhookService
from chambers.webhooks.signing import SecretBox

log = logging.getLogger("chambers.webhooks")


@dataclass
class Webhooks:
    service: WebhookService
    deliverer: Deliverer

    async def start(self) -> None:
        await self.deliverer.start()

    async def close(self) -> None:
        await self.deliverer.close()


def build_webhooks(settings: Settings, db: Database) -> Webhooks:
    """The webhooks feature on the store's Database (the deliverer starts with `start()`)."""
    store = WebhookStore(db)
    configured = settings.secret_key.get_secret_value() if settings.secret_key is not None else None
    if not configured and not settings.resolved_database_url.startswith("sqlite"):
        log.warning(
            "CHAMBERS_SECRET_KEY is not set: webhook secrets are encrypted with %s, which other "
            "replicas sharing this database do not have; set CHAMBERS_SECRET_KEY on every replica",
            settings.data_dir / "secret.key",
        )
    box = SecretBox.from_settings(configured, settings.data_dir)
    policy = DeliveryPolicy(
        retry_schedule=tuple(settings.webhook_retry_schedule),
        timeout_s=settings.webhook_timeout_s,
        disable_after=settings.webhook_disable_after,
        poll_interval_s=settings.webhook_poll_interval_s,
        concurrency=settings.webhook_concurrency,
        allow_private=settings.webhook_allow_private_targets,
        retention_s=settings.webhook_retention_days * 86400,
        prune_interval_s=settings.webhook_prune_interval_s,
    )
    deliverer = Deliverer(store, box, policy)
    service = WebhookService(
        store, box, allow_private=settings.webhook_allow_private_targets, on_enqueued=deliverer.wake
    )
    return Webhooks(service=service, deliverer=deliverer)
