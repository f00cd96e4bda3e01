"""What a registry store must do: tasks, runs, experts and lineage, whatever database holds them.

`RegistryStore` is the interface the rest of transferkit programs against (curation and evaluations
add their halves from their own modules); `transferkit.registry.sql_store.SqlAlchemyStore` implements
it for SQLAlchemy databases. Methods return entities (`transferkit.registry.entities`), never rows.
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from transferkit.registry.artifacts import ArtifactStore
from transferkit.registry.curation import CurationStore
from transferkit.registry.entities import (
    EvaluationRecord,
    ExpertCuration,
    ExpertGroup,
    ExpertRecord,
    LineageEdge,
    RunRecord,
    TaskExperts,
    TaskMatch,
    TaskRecord,
)
from transferkit.registry.evaluations import EvaluationStore
from transferkit.registry.liveness import DEFAULT_MAX_SILENCE

if TYPE_CHECKING:  # torch is imported lazily: `transferkit list` should not pay for it
    import torch


class ExpertReader(Protocol):
    """What rebuilding a stored expert reads: a registry, or a bundle being checked before it is imported."""

    def get_expert(self, id_or_name: str) -> ExpertRecord:
        """Resolve an expert id (or name)."""

    def load_expert_tensors(self, expert: ExpertRecord) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The expert's verified tensors and safetensors metadata."""


class RegistryStore(CurationStore, EvaluationStore, abc.ABC):
    """What the rest of transferkit may ask of a registry, whatever stores it (curation and evaluations in their own modules)."""

    # Expert blobs; training checkpoints of unfinished runs live in `checkpoint_root / <run id>`.
    artifacts: ArtifactStore
    checkpoint_root: Path

    @abc.abstractmethod
    def upsert_task(self, task: TaskRecord) -> TaskRecord:
        """Insert the task or replace the stored one with the same name."""

    @abc.abstractmethod
    def get_task(self, name: str) -> TaskRecord | None:
        """The task with this exact name, if registered."""

    @abc.abstractmethod
    def list_tasks(self, names: Collection[str] | None = None, *, limit: int | None = None, offset: int = 0) -> list[TaskRecord]:
        """All registered tasks (or those of `names` that exist), by name; one page with `limit` / `offset`."""

    @abc.abstractmethod
    def count_tasks(self) -> int:
        """How many tasks are registered."""

    @abc.abstractmethod
    def start_run(
        self,
        kind: str,
        command: list[str],
        hyperparams: dict,
        seed: int | None,
        code_version: dict,
        package_versions: dict,
        data_fingerprint: dict,
    ) -> RunRecord:
        """Record a job as `running` before it does any work, so even a crash leaves a trace."""

    @abc.abstractmethod
    def finish_run(self, run_id: str, status: str, cost: dict, error: str | None = None) -> RunRecord:
        """Close a running run as `finished`, `failed` or `interrupted` (stopped on a signal, resumable) with what it cost."""

    @abc.abstractmethod
    def get_run(self, run_id: str) -> RunRecord:
        """The run with this id (NotFoundError otherwise)."""

    @abc.abstractmethod
    def list_runs(
        self, *, kind: str | None = None, statuses: Sequence[str] | None = None, limit: int | None = None, offset: int = 0
    ) -> list[RunRecord]:
        """Runs of this kind and these statuses (default: all), newest first; one page with `limit` / `offset`."""

    @abc.abstractmethod
    def reopen_run(self, run_id: str, max_silence: timedelta = DEFAULT_MAX_SILENCE) -> RunRecord:
        """Make a failed, interrupted or abandoned running run `running` again for this process (resume).

        A run whose process may still be alive is refused (InvalidInputError), so two processes never
        continue the same run.
        """

    @abc.abstractmethod
    def heartbeat(self, run_id: str) -> None:
        """Record that a running run's process is alive (called with every checkpoint)."""

    @abc.abstractmethod
    def fail_abandoned_run(self, run_id: str, max_silence: timedelta = DEFAULT_MAX_SILENCE) -> str | None:
        """Close a `running` run whose process is gone as `failed`; returns why, or None if it was left alone."""

    @abc.abstractmethod
    def unique_expert_name(self, base: str) -> str:
        """`base` if no expert has that name, else the first free `base-2`, `base-3`, ..."""

    @abc.abstractmethod
    def register_expert(
        self,
        *,
        run_id: str,
        name: str,
        task_name: str,
        method: str,
        config: dict,
        backbone: dict,
        backbone_id: str,
        trainable_params: int,
        metrics: dict,
        tensors: dict[str, torch.Tensor],
        tensor_metadata: dict[str, str],
        lineage: Sequence[tuple[str, str, float | None]] = (),
        extra: dict | None = None,
        cost: dict | None = None,
        name_is_base: bool = False,
    ) -> ExpertRecord:
        """Store the artifact, then atomically the expert, its lineage (parent_id, role, weight) and the run's cost.

        With `name_is_base`, `name` is a default chosen by transferkit: the expert gets the first free
        name `name`, `name-2`, ... at the moment it is stored, so concurrent jobs never collide on it.
        """

    @abc.abstractmethod
    def restore(
        self,
        tasks: Sequence[TaskRecord],
        runs: Sequence[RunRecord],
        experts: Sequence[tuple[ExpertRecord, bytes]],
        edges: Sequence[LineageEdge],
        curation: Sequence[ExpertCuration] = (),
        evaluations: Sequence[EvaluationRecord] = (),
    ) -> list[ExpertRecord]:
        """Add records written by another registry exactly as they are (ids, names, times, cost), in one transaction.

        `curation` (notes, tags, aliases of the given experts) is merged in the same transaction: a note where the
        expert has none, tags set, aliases that are free here (`transferkit.registry.curation.restore_curation`).
        `evaluations` of the given experts are added unless stored already (an id with other content is refused).

        `experts` pairs each expert with its artifact bytes; `edges` are the lineage edges into those experts.
        Tasks, runs and experts already stored with the same content are kept as they are. A stored record with
        different content, a name held by another expert, an edge into an expert not given, or a lineage parent
        that is neither given nor stored is refused before anything is written. Returns the experts added.
        """

    @abc.abstractmethod
    def get_expert(self, id_or_name: str) -> ExpertRecord:
        """Resolve an exact id, exact name or unique id prefix (at least 4 characters)."""

    @abc.abstractmethod
    def list_experts(
        self,
        *,
        task_name: str | None = None,
        method: str | None = None,
        backbone_id: str | None = None,
        exclude_run_kind: str | None = None,
        tag: tuple[str, str | None] | None = None,
        strategy: str | None = None,
        text: str | None = None,
        order: str = "newest",
        limit: int | None = None,
        offset: int = 0,
    ) -> list[ExpertRecord]:
        """Experts matching all given filters, one page at a time; `tag` is (key, value), value None for any value.

        `order="newest"`: newest first; `"best"`: highest primary dev metric first (experts without one last),
        then newest; or a sort key such as `params` or `-cost` (see `transferkit.registry.expert_query`).
        `exclude_run_kind` drops experts made by runs of that kind (e.g. "transfer"); `strategy` keeps those
        made with that transfer strategy; `text` keeps those whose id, name, task, method, backbone, note,
        tags or aliases mention every one of its words.
        """

    @abc.abstractmethod
    def count_experts(
        self, *, task_name: str | None = None, method: str | None = None, backbone_id: str | None = None,
        tag: tuple[str, str | None] | None = None, strategy: str | None = None, text: str | None = None,
    ) -> int:
        """How many experts match the filters (for 'n of total' displays)."""

    @abc.abstractmethod
    def count_experts_by_task_and_method(
        self, *, backbone_id: str, methods: Collection[str], exclude_run_kind: str | None = None
    ) -> list[ExpertGroup]:
        """Experts on one backbone with one of `methods`, counted per (task, method), with the newest creation time."""

    @abc.abstractmethod
    def best_experts_per_task(
        self,
        task_names: Collection[str],
        per_task: int,
        *,
        method: str | None = None,
        backbone_id: str | None = None,
        exclude_run_kind: str | None = None,
    ) -> dict[str, TaskExperts]:
        """For each task with matching experts: their count and the `per_task` best, in one query."""

    # search

    @abc.abstractmethod
    def nearest_tasks(
        self, query: Sequence[float], embedder_id: str, limit: int | None = None, among: Collection[str] | None = None
    ) -> list[TaskMatch]:
        """Tasks embedded by `embedder_id` ranked by cosine similarity to `query` (ties by name), optionally only `among`."""

    @abc.abstractmethod
    def lineage_edges(self, expert_id: str) -> dict[str, list[LineageEdge]]:
        """Edges into (`parents`) and out of (`children`) one expert."""

    # cost queries

    @abc.abstractmethod
    def list_lineage_edges(self) -> list[LineageEdge]:
        """Every lineage edge in the registry (amortized cost needs the whole graph)."""

    @abc.abstractmethod
    def list_expert_runs(
        self, *, task_name: str | None = None, since: datetime | None = None, expert_ids: Collection[str] | None = None,
        command_contains: str | None = None,
    ) -> list[tuple[ExpertRecord, RunRecord]]:
        """(expert, the run that made it) pairs, oldest first, optionally for one task / created at or after `since` /
        these exact expert ids / runs whose recorded command has an argument containing `command_contains`."""

    @abc.abstractmethod
    def lineage_closure(self, expert_ids: Collection[str], direction: str = "ancestors", max_depth: int = 64) -> list[LineageEdge]:
        """Every edge reachable from any of these experts (as `lineage_graph`, for several at once; no cycle check)."""

    @abc.abstractmethod
    def count_children(self, parent_ids: Collection[str], roles: Collection[str]) -> dict[str, int]:
        """How many distinct experts have each of these experts as a parent in one of `roles` (absent: none)."""

    # lineage queries

    @abc.abstractmethod
    def lineage_graph(self, expert_id: str, direction: str = "ancestors", max_depth: int = 64) -> list[LineageEdge]:
        """Every edge reachable from the expert with this exact id, nearest first, at most `max_depth` edges away.

        `direction="ancestors"` follows edges to parents (what it was made from, their sources, ...),
        `"descendants"` follows them to children (what was made from it). Each edge appears once.

        Cycles are impossible by construction: edges are only written together with a brand-new child
        expert (nothing can point at an id that does not exist yet) and a CHECK forbids self-edges.
        The traversal still checks: a cycle found in a corrupted table raises RegistryError naming
        the experts on it. An unknown id raises NotFoundError.
        """

    @abc.abstractmethod
    def load_expert_tensors(self, expert: ExpertRecord) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The expert's tensors and safetensors metadata, after checking the artifact's sha256."""

    @abc.abstractmethod
    def verify_artifact(self, expert: ExpertRecord) -> None:
        """Check the artifact exists and matches its recorded sha256 (ArtifactCorruptError otherwise)."""

    @abc.abstractmethod
    def read_artifact(self, expert: ExpertRecord) -> bytes:
        """The artifact's bytes, after checking its sha256 (for copying an expert elsewhere unchanged)."""

    @abc.abstractmethod
    def remove_unreferenced_artifacts(self, uris: Sequence[str], min_age: timedelta) -> list[str]:
        """Delete those blobs among `uris` that no expert references and that are older than `min_age`.

        Runs under the write lock (SQLite), so no expert being stored right now can lose its blob.
        Returns the URIs removed.
        """
