"""Scale: compact task embeddings with a change counter for search caches, and each expert's dev score as a column.

- `tasks.embedding` becomes float32 little-endian bytes (was a JSON list of floats: ~5x the size and a
  JSON parse per task, which dominated reading 100k embeddings).
- `tasks.revision`: the value of the `tasks` counter in `registry_counters` when the row was last written.
  Writers increment the counter in the same transaction (a row lock on PostgreSQL), so revisions are
  unique and commit in increasing order: a search cache that has seen revision R only needs the rows
  with revision > R.
- `registry_counters` also holds `registry_id`, a random number naming this database, so a cache
  built for a database that was deleted and re-created at the same URL is never reused.
- `experts.dev_score`: the primary dev metric (`metrics["dev"][metrics["primary"]]`), so "best expert
  of a task" is an indexed query instead of reading every expert's metrics JSON.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import json
import secrets

import numpy as np
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

COUNTERS = sa.table("registry_counters", sa.column("name", sa.String), sa.column("value", sa.BigInteger))


def upgrade() -> None:
    # Plain ALTER statements, no batch table copies: SQLite (3.35+) adds, drops and renames these columns in
    # place, and copying `tasks` would trip the foreign keys that experts hold on it.
    connection = op.get_bind()
    op.create_table(
        "registry_counters",
        sa.Column("name", sa.String(50), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_registry_counters"),
    )
    tasks = connection.execute(sa.text("SELECT name, embedding FROM tasks ORDER BY name")).all()
    experts = connection.execute(sa.text("SELECT id, metrics FROM experts")).all()
    op.add_column("tasks", sa.Column("revision", sa.BigInteger(), nullable=False, server_default="0"))
    op.add_column("tasks", sa.Column("embedding_f32", sa.LargeBinary(), nullable=True))
    op.create_index("ix_tasks_revision", "tasks", ["revision"])
    for number, (name, embedding) in enumerate(tasks, start=1):
        values = _json(embedding)
        blob = None if values is None else np.asarray(values, dtype="<f4").tobytes()
        connection.execute(
            sa.text("UPDATE tasks SET embedding_f32 = :blob, revision = :revision WHERE name = :name"),
            {"blob": blob, "revision": number, "name": name},
        )
    op.drop_column("tasks", "embedding")
    op.alter_column("tasks", "embedding_f32", new_column_name="embedding", existing_type=sa.LargeBinary())
    op.bulk_insert(
        COUNTERS,
        [{"name": "tasks", "value": len(tasks)}, {"name": "registry_id", "value": secrets.randbits(62)}],
    )

    op.add_column("experts", sa.Column("dev_score", sa.Float(), nullable=True))
    for expert_id, metrics in experts:
        score = dev_score(_json(metrics) or {})
        if score is not None:
            connection.execute(
                sa.text("UPDATE experts SET dev_score = :score WHERE id = :id"), {"score": score, "id": expert_id}
            )


def downgrade() -> None:
    connection = op.get_bind()
    tasks = connection.execute(sa.text("SELECT name, embedding FROM tasks")).all()
    op.drop_column("experts", "dev_score")
    op.drop_index("ix_tasks_revision", "tasks")
    op.drop_column("tasks", "revision")
    op.add_column("tasks", sa.Column("embedding_json", sa.JSON(), nullable=True))
    restore = sa.text("UPDATE tasks SET embedding_json = :values WHERE name = :name").bindparams(
        sa.bindparam("values", type_=sa.JSON(none_as_null=True))
    )
    for name, blob in tasks:
        values = None if blob is None else np.frombuffer(blob, dtype="<f4").tolist()
        connection.execute(restore, {"values": values, "name": name})
    op.drop_column("tasks", "embedding")
    op.alter_column("tasks", "embedding_json", new_column_name="embedding", existing_type=sa.JSON())
    op.drop_table("registry_counters")


def dev_score(metrics: dict) -> float | None:
    """The expert's primary metric on dev, if it has a numeric one (same rule as the store's)."""
    value = (metrics.get("dev") or {}).get(metrics.get("primary"))
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _json(value: object) -> object:
    """JSON columns come back parsed from PostgreSQL and as text from SQLite (read here through plain SQL)."""
    return json.loads(value) if isinstance(value, (str, bytes)) else value
