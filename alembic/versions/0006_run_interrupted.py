"""Runs can end `interrupted`: stopped on a signal (SIGTERM, SIGINT, SIGUSR1) with a checkpoint to resume from.

Only the CHECK constraint on `runs.status` changes. PostgreSQL replaces it in place. SQLite cannot
alter a constraint, so the table is rebuilt from its own stored definition with the new list (so
columns other revisions added are kept as they are): the rows are copied aside, `runs` is dropped
and re-created, and the rows are copied back. Experts reference runs by foreign key; inside the
migration's transaction `defer_foreign_keys` lets the drop and re-insert settle before commit, when
every reference points at a row again (a copy under a temporary name renamed into place would leave
SQLite counting the dropped rows as violations). Downgrading turns interrupted runs into `failed`
ones (their reason kept) before the old constraint returns.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

CONSTRAINT = "ck_runs_status"
OLD_STATUSES = ("running", "finished", "failed")
NEW_STATUSES = (*OLD_STATUSES, "interrupted")


def upgrade() -> None:
    _set_statuses(NEW_STATUSES)


def downgrade() -> None:
    op.execute(sa.text("UPDATE runs SET status = 'failed' WHERE status = 'interrupted'"))
    _set_statuses(OLD_STATUSES)


def _check(statuses: tuple[str, ...]) -> str:
    return "status IN (" + ", ".join(f"'{status}'" for status in statuses) + ")"


def _set_statuses(statuses: tuple[str, ...]) -> None:
    connection = op.get_bind()
    if connection.dialect.name != "sqlite":
        # op.f: the name is final (the metadata's naming convention would prefix it again).
        op.drop_constraint(op.f(CONSTRAINT), "runs", type_="check")
        op.create_check_constraint(op.f(CONSTRAINT), "runs", _check(statuses))
        return
    table_sql, index_sql = _sqlite_definition(connection)
    pattern = re.compile(rf"CONSTRAINT {CONSTRAINT} CHECK \(status IN \([^)]*\)\)")
    new_sql, replaced = pattern.subn(f"CONSTRAINT {CONSTRAINT} CHECK ({_check(statuses)})", table_sql)
    if replaced != 1:  # a hand-edited schema: refuse rather than guess (the transaction rolls back)
        raise RuntimeError(f"runs table definition has {replaced} {CONSTRAINT} constraints, expected 1: {table_sql}")
    columns = ", ".join(f'"{row[1]}"' for row in connection.exec_driver_sql("PRAGMA table_info(runs)"))
    connection.exec_driver_sql("PRAGMA defer_foreign_keys = ON")  # reset by SQLite at commit
    connection.exec_driver_sql("CREATE TABLE _runs_0006 AS SELECT * FROM runs")
    connection.exec_driver_sql("DROP TABLE runs")
    connection.exec_driver_sql(new_sql)
    connection.exec_driver_sql(f"INSERT INTO runs ({columns}) SELECT {columns} FROM _runs_0006")
    connection.exec_driver_sql("DROP TABLE _runs_0006")
    for statement in index_sql:
        connection.exec_driver_sql(statement)


def _sqlite_definition(connection: sa.Connection) -> tuple[str, list[str]]:
    """The stored CREATE TABLE statement of `runs` and the CREATE INDEX statements of its explicit indexes."""
    rows = connection.exec_driver_sql("SELECT type, sql FROM sqlite_master WHERE tbl_name = 'runs' AND sql IS NOT NULL").all()
    [table_sql] = [sql for kind, sql in rows if kind == "table"]
    return table_sql, [sql for kind, sql in rows if kind == "index"]
