"""SQLAlchemy rows: the storage shape of the registry entities.

The schema is created and changed only by the Alembic migrations in
`alembic/versions/`; these classes must match them (a test compares the two).
Task embeddings are stored as float32 little-endian bytes (compact and fast to read
by the 100k; entities still see a list of floats). `tasks.revision` and the
`registry_counters` table let search caches fetch only what changed (migration 0002).
Run cost is split into typed columns (queryable, e.g. total device-seconds) plus
`cost_extra` JSON for everything else; `transferkit.registry.mapping` merges them back into one dict.
"""

from __future__ import annotations

import struct
from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone, so its values are naive UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("registry datetimes must be timezone-aware")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Float32Vector(TypeDecorator[list[float]]):
    """A list of floats stored as float32 little-endian bytes."""

    impl = LargeBinary
    cache_ok = True

    # struct, not numpy: every CLI command imports these rows, and numpy costs ~0.1 s to import.
    def process_bind_param(self, value: list[float] | None, dialect: Dialect) -> bytes | None:
        if value is None:
            return None
        values = [float(v) for v in value]
        return struct.pack(f"<{len(values)}f", *values)

    def process_result_value(self, value: bytes | None, dialect: Dialect) -> list[float] | None:
        return None if value is None else list(struct.unpack(f"<{len(value) // 4}f", value))


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class TaskRow(Base):
    __tablename__ = "tasks"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    description: Mapped[str] = mapped_column(Text)
    spec: Mapped[dict] = mapped_column(JSON)
    embedding: Mapped[list[float] | None] = mapped_column(Float32Vector)
    embedder_id: Mapped[str | None] = mapped_column(String(200))
    revision: Mapped[int] = mapped_column(BigInteger, index=True, server_default="0")
    # Mean embedding of a sample of the task's training inputs, by the same embedder (migration 0004).
    data_embedding: Mapped[list[float] | None] = mapped_column(Float32Vector)


class CounterRow(Base):
    """Named counters: `tasks` (the latest task revision) and `registry_id` (random, names this database)."""

    __tablename__ = "registry_counters"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class RunRow(Base):
    __tablename__ = "runs"
    __table_args__ = (CheckConstraint("status IN ('running', 'finished', 'failed', 'interrupted')", name="status"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(16))
    command: Mapped[list] = mapped_column(JSON)
    hyperparams: Mapped[dict] = mapped_column(JSON)
    seed: Mapped[int | None] = mapped_column(BigInteger)
    code_version: Mapped[dict] = mapped_column(JSON)
    package_versions: Mapped[dict] = mapped_column(JSON)
    data_fingerprint: Mapped[dict] = mapped_column(JSON)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    wall_seconds: Mapped[float | None] = mapped_column(Float)
    device_kind: Mapped[str | None] = mapped_column(String(50))
    device_name: Mapped[str | None] = mapped_column(String(200))
    device_count: Mapped[int | None] = mapped_column(Integer)
    device_seconds: Mapped[float | None] = mapped_column(Float)
    peak_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    examples: Mapped[int | None] = mapped_column(BigInteger)
    tokens: Mapped[int | None] = mapped_column(BigInteger)
    energy_joules: Mapped[float | None] = mapped_column(Float)
    cost_extra: Mapped[dict] = mapped_column(JSON)
    # Where the run's process executes and when it last wrote a checkpoint (gc and --resume judge liveness by them).
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


# Typed cost columns of `runs` and the Python type each value is stored as.
COST_COLUMNS: dict[str, type] = {
    "wall_seconds": float,
    "device_kind": str,
    "device_name": str,
    "device_count": int,
    "device_seconds": float,
    "peak_memory_bytes": int,
    "examples": int,
    "tokens": int,
    "energy_joules": float,
}


class ExpertRow(Base):
    __tablename__ = "experts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    task_name: Mapped[str] = mapped_column(String(200), ForeignKey("tasks.name"), index=True)
    method: Mapped[str] = mapped_column(String(50), index=True)
    config: Mapped[dict] = mapped_column(JSON)
    backbone: Mapped[dict] = mapped_column(JSON)
    backbone_id: Mapped[str] = mapped_column(String(200), index=True)
    artifact_uri: Mapped[str] = mapped_column(Text)
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    artifact_bytes: Mapped[int] = mapped_column(BigInteger)
    trainable_params: Mapped[int] = mapped_column(BigInteger)
    metrics: Mapped[dict] = mapped_column(JSON)
    dev_score: Mapped[float | None] = mapped_column(Float)  # metrics["dev"][metrics["primary"]], for ranking in SQL
    run_id: Mapped[str] = mapped_column(String(32), ForeignKey("runs.id"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    extra: Mapped[dict] = mapped_column(JSON)
    # A person's description of the expert (migration 0005); curation, so not part of `ExpertRecord`.
    note: Mapped[str | None] = mapped_column(Text)


class LineageEdgeRow(Base):
    __tablename__ = "lineage_edges"
    __table_args__ = (CheckConstraint("parent_id <> child_id", name="not_self"),)

    parent_id: Mapped[str] = mapped_column(String(32), ForeignKey("experts.id"), primary_key=True)
    child_id: Mapped[str] = mapped_column(String(32), ForeignKey("experts.id"), primary_key=True, index=True)
    role: Mapped[str] = mapped_column(String(50), primary_key=True)
    weight: Mapped[float | None] = mapped_column(Float)


class ExpertTagRow(Base):
    """An MLflow-style tag of an expert; a bare key has the value ''."""

    __tablename__ = "expert_tags"

    expert_id: Mapped[str] = mapped_column(String(32), ForeignKey("experts.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(250), primary_key=True, index=True)
    value: Mapped[str] = mapped_column(Text)


class ExpertAliasRow(Base):
    """A name pointing at one expert; the alias is the key, so moving it rewrites one row."""

    __tablename__ = "expert_aliases"

    alias: Mapped[str] = mapped_column(String(200), primary_key=True)
    expert_id: Mapped[str] = mapped_column(String(32), ForeignKey("experts.id"), index=True)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class EvaluationRow(Base):
    """An expert scored on a task split or a labelled file."""

    __tablename__ = "evaluations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    expert_id: Mapped[str] = mapped_column(String(32), ForeignKey("experts.id"), index=True)
    task_name: Mapped[str] = mapped_column(String(200), index=True)  # a task, or "file:<name>" for a labelled file
    split: Mapped[str] = mapped_column(String(16))
    metric: Mapped[str] = mapped_column(String(50))  # the primary metric
    score: Mapped[float | None] = mapped_column(Float)  # its value, for ranking in SQL
    metrics: Mapped[dict] = mapped_column(JSON)
    interval: Mapped[dict | None] = mapped_column(JSON)
    examples: Mapped[int] = mapped_column(Integer)
    data_fingerprint: Mapped[dict] = mapped_column(JSON)
    details: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
