"""Curation and evaluations: a note per expert, tags, aliases, and stored evaluation records.

- `experts.note`: a free-text description a person gives the expert (NULL: none).
- `expert_tags`: MLflow-style tags, one row per (expert, key); a bare `key` has the value ''.
- `expert_aliases`: a name that points at one expert (`rte-best` -> an expert id). The alias is the
  primary key, so re-pointing it is one UPDATE of one row: readers see the old or the new expert.
- `evaluations`: an expert scored on a task's split or on a labelled file (official metrics, their
  95% interval, the data fingerprint), so "which expert is best on my data" needs no retraining.

Deleting an expert deletes its tags, aliases and evaluations with it (they describe it) but never
its run, whose cost stays recorded. Existing rows gain nothing: no note, no tags, no aliases.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("experts", sa.Column("note", sa.Text(), nullable=True))
    op.create_table(
        "expert_tags",
        sa.Column("expert_id", sa.String(32), nullable=False),
        sa.Column("key", sa.String(250), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["expert_id"], ["experts.id"], name="fk_expert_tags_expert_id_experts"),
        sa.PrimaryKeyConstraint("expert_id", "key", name="pk_expert_tags"),
    )
    op.create_index("ix_expert_tags_key", "expert_tags", ["key"])
    op.create_table(
        "expert_aliases",
        sa.Column("alias", sa.String(200), nullable=False),
        sa.Column("expert_id", sa.String(32), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["expert_id"], ["experts.id"], name="fk_expert_aliases_expert_id_experts"),
        sa.PrimaryKeyConstraint("alias", name="pk_expert_aliases"),
    )
    op.create_index("ix_expert_aliases_expert_id", "expert_aliases", ["expert_id"])
    op.create_table(
        "evaluations",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("expert_id", sa.String(32), nullable=False),
        sa.Column("task_name", sa.String(200), nullable=False),
        sa.Column("split", sa.String(16), nullable=False),
        sa.Column("metric", sa.String(50), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("interval", sa.JSON(), nullable=True),
        sa.Column("examples", sa.Integer(), nullable=False),
        sa.Column("data_fingerprint", sa.JSON(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["expert_id"], ["experts.id"], name="fk_evaluations_expert_id_experts"),
        sa.PrimaryKeyConstraint("id", name="pk_evaluations"),
    )
    op.create_index("ix_evaluations_expert_id", "evaluations", ["expert_id"])
    op.create_index("ix_evaluations_task_name", "evaluations", ["task_name"])


def downgrade() -> None:
    op.drop_index("ix_evaluations_task_name", "evaluations")
    op.drop_index("ix_evaluations_expert_id", "evaluations")
    op.drop_table("evaluations")
    op.drop_index("ix_expert_aliases_expert_id", "expert_aliases")
    op.drop_table("expert_aliases")
    op.drop_index("ix_expert_tags_key", "expert_tags")
    op.drop_table("expert_tags")
    # Plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35, PostgreSQL), as in 0003: no batch copy of `experts`.
    op.drop_column("experts", "note")
