"""Registry entities: plain frozen records, independent of the storage backend.

Callers (workflows, CLI, composition) only ever see these, never ORM rows, so
the storage layer can change without touching them. `to_dict()` gives the
JSON form used by `--json` output (datetimes as ISO 8601 strings).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

# `interrupted`: stopped on a signal with a checkpoint to resume from (migration 0006).
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


@dataclass(frozen=True)
class ExpertCuration(_Record):
    """What people added to an expert: a note, MLflow-style tags (key -> value, '' for a bare key) and its aliases."""

    expert_id: str
    note: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)


@dataclass(frozen=True, repr=False)
class EvaluationRecord(_Record):
    """An expert scored on a task's split or a labelled file: official metrics, 95% interval, the data it saw."""

    id: str
    expert_id: str
    task_name: str  # a registered/catalog task, or "file:<file name>" for a labelled file
    split: str  # dev | test | file
    metric: str  # the primary metric
    score: float | None
    metrics: dict
    interval: dict | None  # {"mean", "low", "high"} of the primary metric over test examples (bootstrap)
    examples: int
    data_fingerprint: dict
    details: dict  # seed, label mapping, precision, max length, command
    created_at: datetime

    def __repr__(self) -> str:  # one readable line in a notebook; to_dict() has everything
        interval = self.interval or {}
        bounds = f" [{interval['low']:.4f}, {interval['high']:.4f}]" if "low" in interval else ""
        score = "n/a" if self.score is None else f"{self.score:.4f}"
        return (f"EvaluationRecord(id={self.id!r}, expert_id={self.expert_id!r}, {self.task_name} {self.split}: "
                f"{self.metric}={score}{bounds}, examples={self.examples})")


@dataclass(frozen=True)
class Dependent(_Record):
    """An expert built from another through lineage, and whether it still works once that parent is gone."""

    child_id: str
    child_name: str
    role: str
    needs_parent_to_load: bool  # a mixture reads its sources at load time; spot/merged children hold their own copy


@dataclass(frozen=True)
class Deletion(_Record):
    """What `delete` removed and what it left behind."""

    expert_id: str
    expert_name: str
    run_id: str  # kept: the run and its cost stay recorded
    artifact_uri: str
    artifact_shared: bool  # another expert has the same bytes, so the blob stays referenced
    orphaned: list[Dependent]
    aliases: list[str]
    tags: dict[str, str]
    evaluations: int
