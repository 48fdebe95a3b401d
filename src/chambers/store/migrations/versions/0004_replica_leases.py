"""replica leases on turns and sessions

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 17:31:01.885767
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:

    with op.batch_alter_table("chat_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("owner_until", sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_turns_status_lease", ["status", "lease_until"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("turns", schema=None) as batch_op:
        batch_op.drop_index("ix_turns_status_lease")
        batch_op.drop_column("lease_until")
        batch_op.drop_column("owner")

    with op.batch_alter_table("chat_sessions", schema=None) as batch_op:
        batch_op.drop_column("owner_until")
        batch_op.drop_column("owner")
