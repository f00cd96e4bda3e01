"""Tasks restored from a bundle before this revision were written with revision 0, below every
search index's starting point, so task similarity search (and source ranking) never saw them.
Give each such row a fresh revision from the `tasks` counter, as every other task write does.
Downgrading changes nothing: the new revisions are valid there too.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    connection = op.get_bind()
    names = connection.execute(sa.text("SELECT name FROM tasks WHERE revision = 0 ORDER BY name")).scalars().all()
    if not names:
        return
    last = connection.execute(sa.text("SELECT value FROM registry_counters WHERE name = 'tasks'")).scalar_one()
    for offset, name in enumerate(names, start=1):
        connection.execute(sa.text("UPDATE tasks SET revision = :revision WHERE name = :name"), {"revision": last + offset, "name": name})
    connection.execute(sa.text("UPDATE registry_counters SET value = :value WHERE name = 'tasks'"), {"value": last + len(names)})


def downgrade() -> None:
    pass
