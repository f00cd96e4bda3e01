"""Registry entities: plain frozen records, independent of the storage backend.

Callers (workflows, CLI, composition) only ever see these, never ORM rows, so
the storage layer can change without touching them. `to_dict()` gives the
JSON form used by `--json` output (datetimes as ISO 8601 strings).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

# `interrupted`: stopped on a signal with a checkpoint to resume from (migration 0005).
RUN_STATUSES = ("running", "finished", "failed", "interrupted")


class _Record:
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy of the record (datetimes become ISO strings)."""
        data = asdict(self)  # type: ignore[call-overload]  # deep copy: callers may mutate it freely
        return {key: value.isoformat() if isinstance(value, datetime) else value for key, value in data.items()}


@dataclass(frozen=True)
class TaskRecord(_Record):
    """A task known to the registry, with the description and data embeddings used to find related experts."""

    name: str
    description: str
    spec: dict
    embedding: list[float] | None
    embedder_id: str | None
    data_embedding: list[float] | None = None  # mean embedding of a sample of its training inputs (same embedder)


@dataclass(frozen=True)
class RunRecord(_Record):
    """One training or composition job: what was run, on what data and code, and what it cost."""

    id: str
    kind: str
    status: str
    command: list[str]
    hyperparams: dict
    seed: int | None
    code_version: dict
    package_versions: dict
    data_fingerprint: dict
    started_at: datetime
    ended_at: datetime | None
    cost: dict
    error: str | None
    host: str | None = None  # where the process runs (None for runs recorded before liveness was tracked)
    pid: int | None = None
    heartbeat_at: datetime | None = None  # last checkpoint written


@dataclass(frozen=True)
class ExpertRecord(_Record):
    """A stored expert: its method and config, the backbone it is bound to, and its verified artifact."""

    id: str
    name: str
    task_name: str
    method: str
    config: dict
    backbone: dict
    backbone_id: str
    artifact_uri: str
    artifact_sha256: str
    artifact_bytes: int
    trainable_params: int
    metrics: dict
    run_id: str
    created_at: datetime
    extra: dict


@dataclass(frozen=True)
class LineageEdge(_Record):
    """`child_id` was derived from `parent_id` in the given role (e.g. a composition source and its weight)."""

    parent_id: str
    child_id: str
    role: str
    weight: float | None


@dataclass(frozen=True)
class ExpertGroup(_Record):
    """How many experts one (task, method) pair has (under some filter), and when the newest was created."""

    task_name: str
    method: str
    count: int
    newest: datetime


@dataclass(frozen=True)
class TaskMatch(_Record):
    """A task found by similarity search: cosine similarity of its description embedding to the query."""

    task_name: str
    similarity: float


@dataclass(frozen=True)
class TaskExperts(_Record):
    """How many experts of a task match some filter, and the best of them (primary dev metric, then newest)."""

    task_name: str
    count: int
    best: list[ExpertRecord]
