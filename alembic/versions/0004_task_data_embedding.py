"""Tasks carry a second vector: the mean embedding of a sample of their training inputs.

Source selection ranks sources by how alike two tasks' data are as well as their one-sentence
descriptions. Rows written before this revision have NULL and rank by description alone until
an expert is trained for the task again.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("data_embedding", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    op.drop_column("tasks", "data_embedding")
