"""Run Alembic migrations programmatically, in one write transaction of the store's `Database`."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection

from chambers.store.database import Database

MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_LOCK = 0x43484D42  # a fixed PostgreSQL advisory lock key ("CHMB")


def _config(connection: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


async def upgrade(db: Database) -> None:
    """Bring the database to the newest schema."""

    def run(connection: Connection) -> None:
        if connection.dialect.name == "postgresql":
            # Replicas starting together on one database: one migrates, the others wait, then find it done.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        command.upgrade(_config(connection), "head")

    await db.write(run)
