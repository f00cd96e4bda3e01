"""Runs record where they execute (host, pid) and when they last showed signs of life (heartbeat).

`transferkit gc` and `--resume` use these to tell a run whose process died (SIGKILL, power loss)
from one that is still working. Rows written before this revision have NULLs: their liveness is
judged by age alone.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

COLUMNS = ("host", "pid", "heartbeat_at")


def upgrade() -> None:
    op.add_column("runs", sa.Column("host", sa.String(255), nullable=True))
    op.add_column("runs", sa.Column("pid", sa.Integer(), nullable=True))
    op.add_column("runs", sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # Plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35, PostgreSQL): a batch copy of `runs` would
    # have to drop a table that experts reference, which SQLite refuses while foreign keys are on.
    for column in reversed(COLUMNS):
        op.drop_column("runs", column)
