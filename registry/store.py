"""The registry store: tasks, runs, experts and lineage, behind one abstract API.

`open_registry(url)` picks the implementation from the database URL (every SQLAlchemy
URL maps to `SqlAlchemyStore`; SQLite and PostgreSQL through psycopg are tested) and
brings the schema to head with the packaged Alembic migrations. Each method is one
short transaction and returns entities, never rows. Expert artifacts are safetensors
blobs in a content-addressed artifact store (a local folder or any fsspec URL); their
sha256 is recorded in the database and checked before every read. Task similarity
search goes through `transferkit.registry.search` (numpy over cached vectors, or
pgvector inside PostgreSQL).

Concurrent writers (several training processes on one registry): every write
transaction takes the database's write lock before its first read (SQLite:
BEGIN IMMEDIATE, waiting up to the busy timeout), so what it checks (a free
name, a run still running) cannot change before it writes; if the lock stays
busy past the timeout, taking it is retried with backoff before the user sees
an error.
"""

from __future__ import annotations

import abc
import difflib
import hashlib
import os
import random
import re
import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, fields
from datetime import datetime, timedelta, timezone
from numbers import Integral, Real
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import platformdirs
from sqlalchemy import (
    URL,
    Engine,
    Integer,
    Select,
    Text,
    cast,
    create_engine,
    event,
    func,
    literal_column,
    make_url,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from transferkit.errors import ArtifactCorruptError, InvalidInputError, NotFoundError, RegistryError
from transferkit.registry.artifacts import ArtifactStore, LocalArtifactStore, open_artifact_store, safetensors_metadata
from transferkit.registry.curation import CurationStore, SqlCuration, restore_curation
from transferkit.registry.expert_query import expert_filters, expert_ordering, page_query
from transferkit.registry.entities import (
    RUN_STATUSES,
    ExpertCuration,
    ExpertGroup,
    ExpertRecord,
    LineageEdge,
    RunRecord,
    TaskExperts,
    TaskMatch,
    TaskRecord,
)
from transferkit.registry.liveness import abandonment, current_process
from transferkit.registry.evaluations import EvaluationStore, SqlEvaluations
from transferkit.registry.migrate import require_head, upgrade_to_head
from transferkit.registry.rows import (
    COST_COLUMNS,
    CounterRow,
    ExpertAliasRow,
    ExpertRow,
    LineageEdgeRow,
    RunRow,
    TaskRow,
)

if TYPE_CHECKING:  # torch is imported lazily: `transferkit list` should not pay for it
    import torch

REGISTRY_ENV = "TRANSFERKIT_REGISTRY"
ARTIFACTS_ENV = "TRANSFERKIT_ARTIFACTS"
LEGACY_ARTIFACTS_ENV = "TRANSFERKIT_ARTIFACT_ROOT"  # the name before fsspec URLs were accepted
CHECKPOINT_ROOT_ENV = "TRANSFERKIT_CHECKPOINT_ROOT"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# After the busy timeout, a write transaction that could not get the lock is retried for this long.
WRITE_RETRY_SECONDS = 60.0
_NAME_RACE_ATTEMPTS = 5
# Advisory-lock key space (any int4 unique to this use) for choosing default expert names on PostgreSQL.
_NAME_LOCK_SPACE = 0x746B_6E6D  # "tknm"
# A running run silent for longer than this (no heartbeat) counts as abandoned when its process cannot be checked.
DEFAULT_MAX_SILENCE = timedelta(hours=24)
MIN_ID_PREFIX = 4
_HEX = re.compile(r"[0-9a-fA-F]+")
LINEAGE_DIRECTIONS = ("ancestors", "descendants")


class ExpertReader(Protocol):
    """What rebuilding a stored expert reads: a registry, or a bundle being checked before it is imported."""

    def get_expert(self, id_or_name: str) -> ExpertRecord:
        """Resolve an expert id (or name)."""

    def load_expert_tensors(self, expert: ExpertRecord) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The expert's verified tensors and safetensors metadata."""


MAX_LINEAGE_DEPTH = 1_000_000


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
    ) -> list[ExpertRecord]:
        """Add records written by another registry exactly as they are (ids, names, times, cost), in one transaction.

        `curation` (notes, tags, aliases of the given experts) is merged in the same transaction: a note where the
        expert has none, tags set, aliases that are free here (`transferkit.registry.curation.restore_curation`).

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


class SqlAlchemyStore(SqlCuration, SqlEvaluations, RegistryStore):
    """A registry in any SQLAlchemy database, with artifacts in a content-addressed store (folder or fsspec URL)."""

    def __init__(
        self, engine: Engine, artifacts: ArtifactStore, search_index: TaskSearchIndex | None = None,
        checkpoint_root: Path | None = None,
    ) -> None:
        self.engine = engine
        self.artifacts = artifacts
        # Training checkpoints of unfinished runs, one folder per run id (see transferkit.training.checkpoint).
        self.checkpoint_root = checkpoint_root or _default_checkpoint_root(artifacts)
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._shown_url = engine.url.render_as_string(hide_password=True)
        self._search_index = search_index

    @property
    def search_index(self) -> TaskSearchIndex:
        """pgvector inside PostgreSQL when the extension can be used, else numpy over a local cache (chosen on first use)."""
        if self._search_index is None:
            from transferkit.registry.search import default_search_index  # numpy: only when searching

            self._search_index = default_search_index(self.engine)
        return self._search_index

    @search_index.setter
    def search_index(self, index: TaskSearchIndex) -> None:
        self._search_index = index

    def close(self) -> None:
        """Release pooled connections (lets tests and long-lived processes drop the database file)."""
        self.engine.dispose()

    @contextmanager
    def _transaction(self, write: bool = False) -> Iterator[Session]:
        """One short transaction; `write=True` takes the write lock before the body runs."""
        try:
            with self._sessions.begin() as session:
                if write and self.engine.dialect.name == "sqlite":
                    self._lock_sqlite_for_writing(session)
                yield session
        except OperationalError as error:
            raise RegistryError(
                f"the registry {self._shown_url} could not be read or written ({_first_line(error)}); "
                "check free disk space and permissions, then retry"
            ) from error

    def _lock_sqlite_for_writing(self, session: Session) -> None:
        """BEGIN IMMEDIATE, retried with jittered exponential backoff while another writer holds the lock.

        pysqlite would only begin a transaction at the first INSERT/UPDATE, leaving the reads before it
        outside; beginning explicitly makes the whole body one serialized transaction.
        """
        import sqlite3

        connection = session.connection().connection.driver_connection
        deadline = time.monotonic() + WRITE_RETRY_SECONDS
        delay = 0.05
        while True:
            try:
                connection.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as error:
                if not _is_lock_error(error) or time.monotonic() + delay > deadline:
                    raise RegistryError(
                        f"the registry {self._shown_url} stayed locked by another writer ({error}); "
                        "retry when the other transferkit process has finished writing"
                    ) from error
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 2.0)

    # tasks

    def upsert_task(self, task: TaskRecord) -> TaskRecord:
        _require_name(task.name, "task name")
        try:
            self._merge_task(task)
        except IntegrityError:  # another process inserted the same task between our read and our insert
            self._merge_task(task)
        return task

    def _merge_task(self, task: TaskRecord) -> None:
        with self._transaction(write=True) as session:
            # First statement of the transaction: takes SQLite's write lock at once, and on PostgreSQL the row lock
            # orders writers, so revisions commit in increasing order (what incremental search caches rely on).
            bump = update(CounterRow).where(CounterRow.name == "tasks").values(value=CounterRow.value + 1)
            revision = session.execute(bump.returning(CounterRow.value)).scalar_one()
            session.merge(TaskRow(**asdict(task), revision=revision))

    def get_task(self, name: str) -> TaskRecord | None:
        with self._transaction() as session:
            row = session.get(TaskRow, name)
            return None if row is None else _entity(TaskRecord, row)

    def list_tasks(self, names: Collection[str] | None = None, *, limit: int | None = None, offset: int = 0) -> list[TaskRecord]:
        if (limit is not None and limit < 0) or offset < 0:
            raise InvalidInputError(f"limit and offset must not be negative (got limit={limit}, offset={offset})")
        query = select(TaskRow).order_by(TaskRow.name).offset(offset).limit(limit)
        if names is not None:
            query = query.where(TaskRow.name.in_(list(names)))
        with self._transaction() as session:
            return [_entity(TaskRecord, row) for row in session.scalars(query)]

    def count_tasks(self) -> int:
        with self._transaction() as session:
            return int(session.scalar(select(func.count()).select_from(TaskRow)) or 0)

    # runs

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
        _require_name(kind, "run kind")
        row = RunRow(
            id=_new_id(),
            kind=kind,
            status="running",
            command=list(command),
            hyperparams=hyperparams,
            seed=seed,
            code_version=code_version,
            package_versions=package_versions,
            data_fingerprint=data_fingerprint,
            started_at=_now(),
            cost_extra={},
        )
        row.host, row.pid = current_process()
        row.heartbeat_at = row.started_at
        with self._transaction(write=True) as session:
            session.add(row)
            session.flush()
            return _run_entity(row)

    def finish_run(self, run_id: str, status: str, cost: dict, error: str | None = None) -> RunRecord:
        if status not in RUN_STATUSES[1:]:
            raise InvalidInputError(f"a run can only finish as one of {', '.join(RUN_STATUSES[1:])}, not {status!r}")
        cost_values = _split_cost(cost)
        with self._transaction(write=True) as session:
            row = _running_run(session, run_id)
            _close_run(row, status, cost_values, error)
            return _run_entity(row)

    def get_run(self, run_id: str) -> RunRecord:
        with self._transaction() as session:
            return _run_entity(_run_row(session, run_id))

    def list_runs(
        self, *, kind: str | None = None, statuses: Sequence[str] | None = None, limit: int | None = None, offset: int = 0
    ) -> list[RunRecord]:
        if (limit is not None and limit < 0) or offset < 0:
            raise InvalidInputError(f"limit and offset must not be negative (got limit={limit}, offset={offset})")
        query = select(RunRow).order_by(RunRow.started_at.desc(), RunRow.id.desc()).offset(offset).limit(limit)
        if kind is not None:
            query = query.where(RunRow.kind == kind)
        if statuses is not None:
            query = query.where(RunRow.status.in_(list(statuses)))
        with self._transaction() as session:
            return [_run_entity(row) for row in session.scalars(query)]

    def reopen_run(self, run_id: str, max_silence: timedelta = DEFAULT_MAX_SILENCE) -> RunRecord:
        with self._transaction(write=True) as session:
            row = _run_row(session, run_id)
            if row.status == "finished":
                raise InvalidInputError(f"run {run_id} has finished; there is nothing to resume")
            if row.status == "running" and abandonment(_run_entity(row), max_silence) is None:
                raise InvalidInputError(
                    f"run {run_id} is still running (process {row.pid} on {row.host}); wait for it to end "
                    "or stop it before resuming"
                )
            row.status, row.ended_at, row.error = "running", None, None
            row.host, row.pid = current_process()
            row.heartbeat_at = _now()
            return _run_entity(row)

    def heartbeat(self, run_id: str) -> None:
        with self._transaction(write=True) as session:
            row = _run_row(session, run_id)
            if row.status == "running":
                row.heartbeat_at = _now()

    def fail_abandoned_run(self, run_id: str, max_silence: timedelta = DEFAULT_MAX_SILENCE) -> str | None:
        with self._transaction(write=True) as session:  # checked under the lock: a resume may have just reopened it
            row = _run_row(session, run_id)
            reason = abandonment(_run_entity(row), max_silence)
            if reason is not None:
                _close_run(row, "failed", _split_cost({}), f"closed by transferkit gc: {reason}")
            return reason

    # experts

    def unique_expert_name(self, base: str) -> str:
        _require_name(base, "expert name")
        with self._transaction() as session:
            return _free_name(session, base)

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
        import safetensors.torch

        _require_name(name, "expert name")
        cost_values = None if cost is None else _split_cost(cost)
        edges = _check_lineage(lineage)
        blob = safetensors.torch.save({k: t.detach().cpu().contiguous() for k, t in tensors.items()}, tensor_metadata)
        for attempt in range(_NAME_RACE_ATTEMPTS):
            row = ExpertRow(
                id=_new_id(), name=name, task_name=task_name, method=method, config=config, backbone=backbone,
                backbone_id=backbone_id, trainable_params=int(trainable_params), metrics=metrics, dev_score=dev_score(metrics), run_id=run_id,
                extra=extra or {},
            )
            try:
                return self._insert_expert(row, name_is_base, cost_values, edges, blob)
            except IntegrityError as error:  # lost a race for the name (SQLite holds the write lock, so: other databases)
                if self.unique_expert_name(name) == name:
                    raise
                if not name_is_base or attempt == _NAME_RACE_ATTEMPTS - 1:
                    raise _name_taken(name) from error
        raise AssertionError("unreachable")

    def _insert_expert(
        self, row: ExpertRow, name_is_base: bool, cost_values: dict | None, edges: list[tuple[str, str, float | None]], blob: bytes
    ) -> ExpertRecord:
        with self._transaction(write=True) as session:
            run = _running_run(session, row.run_id) if cost_values is not None else _run_row(session, row.run_id)
            if session.get(TaskRow, row.task_name) is None:
                raise NotFoundError(
                    f"task {row.task_name!r} is not in the registry; register it (upsert_task) before its experts"
                )
            if name_is_base:
                _take_turns_naming(session, row.name)
                row.name = _free_name(session, row.name)
            elif session.scalar(select(ExpertRow.id).where(ExpertRow.name == row.name)) is not None:
                raise _name_taken(row.name)
            parents = {parent for parent, _, _ in edges}
            missing = parents - set(session.scalars(select(ExpertRow.id).where(ExpertRow.id.in_(parents))))
            if missing:
                raise NotFoundError(
                    f"lineage parent expert(s) {', '.join(sorted(missing))} do not exist; "
                    "pass the ids of stored experts (see `transferkit list`)"
                )
            # The blob goes first: a row must never point at a file that is not there yet. A crash between the
            # two leaves an unreferenced blob (removed by `transferkit gc`), never a row without its file.
            row.artifact_uri, row.artifact_sha256, row.artifact_bytes = self.artifacts.put(blob)
            row.created_at = _now()
            session.add(row)
            session.flush()  # the expert must exist before edges reference it (SQLite checks FKs per statement)
            # The child id is new, so no edge can close a cycle; the CHECK constraint rejects parent == child.
            session.add_all(LineageEdgeRow(parent_id=p, child_id=row.id, role=r, weight=w) for p, r, w in edges)
            if cost_values is not None:
                _close_run(run, "finished", cost_values, None)
            session.flush()
            return _entity(ExpertRecord, row)

    def restore(
        self,
        tasks: Sequence[TaskRecord],
        runs: Sequence[RunRecord],
        experts: Sequence[tuple[ExpertRecord, bytes]],
        edges: Sequence[LineageEdge],
        curation: Sequence[ExpertCuration] = (),
    ) -> list[ExpertRecord]:
        given = {expert.id for expert, _ in experts}
        strangers = sorted({item.expert_id for item in curation} - given)
        if strangers:
            raise InvalidInputError(f"curation is given for experts that are not being restored: {', '.join(strangers)}")
        for task in tasks:
            _require_name(task.name, "task name")
        for expert, blob in experts:
            _require_name(expert.name, "expert name")
            if hashlib.sha256(blob).hexdigest() != expert.artifact_sha256 or len(blob) != expert.artifact_bytes:
                raise InvalidInputError(f"the artifact given for expert {expert.name} ({expert.id}) does not match its sha256")
        strays = sorted({edge.child_id for edge in edges} - given)
        if strays:
            raise InvalidInputError(f"lineage edges lead into experts that are not being restored: {', '.join(strays)}")
        for child in given:  # roles are names, and no parent appears twice in one role for the same child
            _check_lineage([(e.parent_id, e.role, e.weight) for e in edges if e.child_id == child])
        run_rows = {run.id: _new_run_row(run) for run in runs}
        with self._transaction() as session:
            # Everything is checked before the first write, so a refusal leaves no blob and no row behind.
            new_tasks = [task for task in tasks if _is_new_task(session, task)]
            new_runs = [run for run in runs if _is_new_run(session, run)]
            new_experts = [(expert, blob) for expert, blob in experts if _is_new_expert(session, expert)]
            stored = set(session.scalars(select(ExpertRow.id).where(ExpertRow.id.in_({e.parent_id for e in edges}))))
            missing = sorted({edge.parent_id for edge in edges} - stored - given)
            if missing:
                raise NotFoundError(
                    f"lineage parent expert(s) {', '.join(missing)} are neither being restored nor in this registry; "
                    "restore them first (export with --with-sources)"
                )
            known_runs = set(run_rows) | set(session.scalars(select(RunRow.id).where(RunRow.id.in_({e.run_id for e, _ in new_experts}))))
            for expert, _ in new_experts:
                if expert.run_id not in known_runs:
                    raise NotFoundError(f"expert {expert.name} ({expert.id}) needs run {expert.run_id}, which is neither given nor stored")
            if new_tasks:  # restored tasks take fresh revisions, so incremental search indexes see them
                bump = update(CounterRow).where(CounterRow.name == "tasks").values(value=CounterRow.value + len(new_tasks))
                last = session.execute(bump.returning(CounterRow.value)).scalar_one()
                for revision, task in enumerate(new_tasks, start=last - len(new_tasks) + 1):
                    session.add(TaskRow(**asdict(task), revision=revision))
            session.add_all(run_rows[run.id] for run in new_runs)
            session.flush()  # tasks and runs before the experts that reference them
            for expert, blob in new_experts:
                uri, _, _ = self.artifacts.put(blob)  # the blob goes first: a row must never point at a missing file
                if uri != expert.artifact_uri:
                    raise InvalidInputError(
                        f"expert {expert.name} ({expert.id}) records artifact uri {expert.artifact_uri!r}, but its content "
                        f"is stored at {uri!r}; the record was edited"
                    )
                session.add(ExpertRow(**asdict(expert), dev_score=dev_score(expert.metrics)))  # ranked like any other
            session.flush()  # experts before the edges that reference them (SQLite checks FKs per statement)
            added = {expert.id for expert, _ in new_experts}
            session.add_all(
                LineageEdgeRow(parent_id=e.parent_id, child_id=e.child_id, role=e.role, weight=e.weight)
                for e in edges if e.child_id in added
            )
            session.flush()
            taken = dict(session.execute(select(ExpertAliasRow.alias, ExpertAliasRow.expert_id)).all())
            restore_curation(session, curation, taken)
            session.flush()
            return [expert for expert, _ in new_experts]

    def get_expert(self, id_or_name: str) -> ExpertRecord:
        with self._transaction() as session:
            row = session.get(ExpertRow, id_or_name) or session.scalar(
                select(ExpertRow).where(ExpertRow.name == id_or_name)
            )
            if row is None:  # an alias (transferkit.registry.curation): names win, so an alias never hides one
                row = session.scalar(select(ExpertRow).join(ExpertAliasRow, ExpertAliasRow.expert_id == ExpertRow.id)
                                     .where(ExpertAliasRow.alias == id_or_name))
            if row is None and len(id_or_name) >= MIN_ID_PREFIX and _HEX.fullmatch(id_or_name):
                # Ids are lowercase hex: a case-insensitive prefix on every backend, as an index range scan.
                # Every hex string starting with the prefix sorts between it and prefix + "g" (in C and
                # in natural-language collations alike: digits < letters, and "g" follows "f").
                prefix = id_or_name.lower()
                in_range = (ExpertRow.id >= prefix) & (ExpertRow.id < prefix + "g")
                matches = session.scalars(select(ExpertRow).where(in_range).order_by(ExpertRow.id).limit(10)).all()
                if len(matches) > 1:
                    listed = ", ".join(f"{m.id} ({m.name})" for m in matches)
                    raise InvalidInputError(
                        f"id prefix {id_or_name!r} matches several experts: {listed}; "
                        "give more characters of the id or the full name"
                    )
                row = matches[0] if matches else None
            if row is None:
                # Suggestions from a bounded sample of names: a typo must not read 100k rows.
                names = session.scalars(select(ExpertRow.name).order_by(ExpertRow.created_at.desc()).limit(5000)).all()
                close = difflib.get_close_matches(id_or_name, names, n=5)
                hint = f" (closest names: {', '.join(close)})" if close else ""
                raise NotFoundError(
                    f"no expert has the id, name or alias {id_or_name!r}{hint}; "
                    "run `transferkit list` to see the stored experts"
                )
            return _entity(ExpertRecord, row)

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
        if (limit is not None and limit < 0) or offset < 0:
            raise InvalidInputError(f"limit and offset must not be negative (got limit={limit}, offset={offset})")
        ids = expert_filters(select(ExpertRow.id), task_name, method, backbone_id, exclude_run_kind, tag, strategy, text)
        query = page_query(ids, order, limit, offset)
        with self._transaction() as session:
            return [_entity(ExpertRecord, row) for row in session.scalars(query)]

    def count_experts(
        self, *, task_name: str | None = None, method: str | None = None, backbone_id: str | None = None,
        tag: tuple[str, str | None] | None = None, strategy: str | None = None, text: str | None = None,
    ) -> int:
        query = select(func.count()).select_from(ExpertRow)
        query = expert_filters(query, task_name, method, backbone_id, tag=tag, strategy=strategy, text=text)
        with self._transaction() as session:
            return int(session.scalar(query) or 0)

    def count_experts_by_task_and_method(
        self, *, backbone_id: str, methods: Collection[str], exclude_run_kind: str | None = None
    ) -> list[ExpertGroup]:
        columns = (ExpertRow.task_name, ExpertRow.method)
        query = select(*columns, func.count(), func.max(ExpertRow.created_at)).select_from(ExpertRow)
        query = expert_filters(query, None, None, backbone_id, exclude_run_kind).where(ExpertRow.method.in_(list(methods)))
        query = query.group_by(*columns).order_by(*columns)
        with self._transaction() as session:
            return [ExpertGroup(task, method, count, newest) for task, method, count, newest in session.execute(query)]

    def best_experts_per_task(
        self,
        task_names: Collection[str],
        per_task: int,
        *,
        method: str | None = None,
        backbone_id: str | None = None,
        exclude_run_kind: str | None = None,
    ) -> dict[str, TaskExperts]:
        if per_task < 0:
            raise InvalidInputError(f"per_task must not be negative, got {per_task}")
        partition = {"partition_by": ExpertRow.task_name}
        ranked = select(
            ExpertRow.id,
            func.row_number().over(**partition, order_by=expert_ordering("best")[0]).label("rank"),
            func.count().over(**partition).label("total"),
        ).where(ExpertRow.task_name.in_(list(task_names)))
        ranked = expert_filters(ranked, None, method, backbone_id, exclude_run_kind).subquery()
        query = (
            select(ExpertRow, ranked.c.total)
            .join(ranked, ranked.c.id == ExpertRow.id)
            .where(ranked.c.rank <= max(per_task, 1))  # the first row carries the count even when none are wanted
            .order_by(ExpertRow.task_name, ranked.c.rank)
        )
        found: dict[str, TaskExperts] = {}
        with self._transaction() as session:
            for row, total in session.execute(query):
                group = found.setdefault(row.task_name, TaskExperts(row.task_name, int(total), []))
                if len(group.best) < per_task:
                    group.best.append(_entity(ExpertRecord, row))
        return found

    # search

    def nearest_tasks(
        self, query: Sequence[float], embedder_id: str, limit: int | None = None, among: Collection[str] | None = None
    ) -> list[TaskMatch]:
        if limit is not None and limit < 1:
            raise InvalidInputError(f"a search needs a limit of at least 1, got {limit}")
        try:
            return self.search_index.nearest(query, embedder_id, limit, among)
        except OperationalError as error:
            raise RegistryError(f"the registry {self._shown_url} could not be searched ({_first_line(error)}); retry") from error

    def lineage_edges(self, expert_id: str) -> dict[str, list[LineageEdge]]:
        order = (LineageEdgeRow.role, LineageEdgeRow.parent_id, LineageEdgeRow.child_id)
        with self._transaction() as session:

            def edges(end: Any) -> list[LineageEdge]:
                rows = session.scalars(select(LineageEdgeRow).where(end == expert_id).order_by(*order))
                return [_entity(LineageEdge, row) for row in rows]

            return {"parents": edges(LineageEdgeRow.child_id), "children": edges(LineageEdgeRow.parent_id)}

    # cost queries

    def list_lineage_edges(self) -> list[LineageEdge]:
        order = (LineageEdgeRow.child_id, LineageEdgeRow.role, LineageEdgeRow.parent_id)
        with self._transaction() as session:
            return [_entity(LineageEdge, row) for row in session.scalars(select(LineageEdgeRow).order_by(*order))]

    def list_expert_runs(
        self, *, task_name: str | None = None, since: datetime | None = None, expert_ids: Collection[str] | None = None,
        command_contains: str | None = None,
    ) -> list[tuple[ExpertRecord, RunRecord]]:
        query = select(ExpertRow, RunRow).join(RunRow, RunRow.id == ExpertRow.run_id)  # one query, not N+1
        if task_name is not None:
            query = query.where(ExpertRow.task_name == task_name)
        if since is not None:
            query = query.where(ExpertRow.created_at >= since)
        if expert_ids is not None:
            query = query.where(ExpertRow.id.in_(list(expert_ids)))
        if command_contains is not None:  # the JSON list's text; the exact argument is checked by the caller
            query = query.where(cast(RunRow.command, Text).contains(command_contains, autoescape=True))
        query = query.order_by(ExpertRow.created_at, ExpertRow.id)
        with self._transaction() as session:
            return [(_entity(ExpertRecord, e), _run_entity(r)) for e, r in session.execute(query)]

    # lineage queries

    def lineage_graph(self, expert_id: str, direction: str = "ancestors", max_depth: int = 64) -> list[LineageEdge]:
        if direction not in LINEAGE_DIRECTIONS:
            raise InvalidInputError(f"lineage direction must be one of {', '.join(LINEAGE_DIRECTIONS)}, not {direction!r}")
        if isinstance(max_depth, bool) or not isinstance(max_depth, int) or not 1 <= max_depth <= MAX_LINEAGE_DEPTH:
            raise InvalidInputError(f"lineage max_depth must be an integer from 1 to {MAX_LINEAGE_DEPTH:,}, got {max_depth!r}")
        query = self._lineage_query([expert_id], direction, max_depth)
        with self._transaction() as session:
            if session.get(ExpertRow, expert_id) is None:
                raise NotFoundError(f"no expert has the id {expert_id!r}; run `transferkit list` to see the stored experts")
            rows = session.execute(query).all()
            cycle = _find_cycle([(row.parent_id, row.child_id) for row in rows])
            if cycle:
                names = dict(session.execute(select(ExpertRow.id, ExpertRow.name).where(ExpertRow.id.in_(cycle))).all())
                path = " -> ".join(f"{names.get(node, '?')} ({node})" for node in [*cycle, cycle[0]])
                raise RegistryError(
                    f"the lineage of expert {expert_id} contains a cycle (parent -> child: {path}); transferkit never "
                    "writes one, so the lineage_edges table was edited by hand: delete one of these edges"
                )
        return [LineageEdge(row.parent_id, row.child_id, row.role, row.weight) for row in rows if row.depth <= max_depth]

    def lineage_closure(self, expert_ids: Collection[str], direction: str = "ancestors", max_depth: int = 64) -> list[LineageEdge]:
        if direction not in LINEAGE_DIRECTIONS:
            raise InvalidInputError(f"lineage direction must be one of {', '.join(LINEAGE_DIRECTIONS)}, not {direction!r}")
        if not expert_ids:
            return []
        with self._transaction() as session:
            rows = session.execute(self._lineage_query(list(expert_ids), direction, max_depth)).all()
        return [LineageEdge(row.parent_id, row.child_id, row.role, row.weight) for row in rows if row.depth <= max_depth]

    def count_children(self, parent_ids: Collection[str], roles: Collection[str]) -> dict[str, int]:
        edges = LineageEdgeRow
        query = (
            select(edges.parent_id, func.count(func.distinct(edges.child_id)))
            .where(edges.parent_id.in_(list(parent_ids)), edges.role.in_(list(roles)))
            .group_by(edges.parent_id)
        )
        with self._transaction() as session:
            return {parent: int(count) for parent, count in session.execute(query)}

    @staticmethod
    def _lineage_query(expert_ids: list[str], direction: str, max_depth: int) -> Select:
        """One recursive CTE in portable SQL (SQLite, PostgreSQL): each reachable edge with its smallest depth."""
        edges = LineageEdgeRow.__table__
        # The walk stands on `near` and moves to `far`: child -> parent for ancestors, parent -> child for descendants.
        near, far = ("child_id", "parent_id") if direction == "ancestors" else ("parent_id", "child_id")
        columns = (edges.c.parent_id, edges.c.child_id, edges.c.role, edges.c.weight)
        start = select(*columns, literal_column("1", Integer).label("depth")).where(edges.c[near].in_(expert_ids))
        walk = start.cte("lineage_walk", recursive=True)
        # UNION (not UNION ALL) merges the paths of a diamond level by level, and the depth bound ends the
        # walk even on a corrupted, cyclic table. It goes one level past max_depth so a loop shows itself.
        walk = walk.union(
            select(*columns, (walk.c.depth + 1).label("depth"))
            .select_from(edges)
            .join(walk, edges.c[near] == walk.c[far])
            .where(walk.c.depth <= max_depth)
        )
        depth = func.min(walk.c.depth).label("depth")
        return (
            select(walk.c.parent_id, walk.c.child_id, walk.c.role, walk.c.weight, depth)
            .group_by(walk.c.parent_id, walk.c.child_id, walk.c.role, walk.c.weight)
            .order_by(depth, walk.c.role, walk.c.parent_id, walk.c.child_id)
        )

    # artifacts

    def load_expert_tensors(self, expert: ExpertRecord) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        import safetensors.torch

        data = self._verified_bytes(expert)
        try:  # the digest matched, so a parse failure means the stored blob was never valid
            return safetensors.torch.load(data), safetensors_metadata(data)
        except Exception as error:  # noqa: BLE001 - safetensors raises several unrelated types
            raise ArtifactCorruptError(
                f"artifact of expert {expert.name} ({expert.id}) at {self.artifacts.location(expert.artifact_uri)} "
                f"is not a readable safetensors file ({error}); re-train the expert"
            ) from error

    def verify_artifact(self, expert: ExpertRecord) -> None:
        self._verified_bytes(expert)

    def read_artifact(self, expert: ExpertRecord) -> bytes:
        return self._verified_bytes(expert)

    def remove_unreferenced_artifacts(self, uris: Sequence[str], min_age: timedelta) -> list[str]:
        removed = []
        with self._transaction(write=True) as session:
            referenced = set(session.scalars(select(ExpertRow.artifact_uri)))
            for uri in uris:
                if uri not in referenced and self.artifacts.remove(uri, min_age):
                    removed.append(uri)
        return removed

    def _verified_bytes(self, expert: ExpertRecord) -> bytes:
        path = self.artifacts.location(expert.artifact_uri)
        expected = expert.artifact_sha256
        try:
            data = self.artifacts.get(expert.artifact_uri)
        except ArtifactCorruptError:
            raise
        except Exception as error:  # noqa: BLE001 - OSError locally; fsspec backends add their own error types
            reason = error.strerror if isinstance(error, OSError) and error.strerror else _first_line(error)
            raise ArtifactCorruptError(
                f"artifact of expert {expert.name} ({expert.id}) is missing or unreadable at {path} "
                f"({reason}; expected sha256 {expected[:12]}); "
                "restore the file from a backup or re-train the expert"
            ) from error
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise ArtifactCorruptError(
                f"artifact of expert {expert.name} ({expert.id}) at {path} is corrupt: "
                f"expected sha256 {expected[:12]}, found {actual[:12]}; "
                "restore the file from a backup or re-train the expert"
            )
        return data


def open_registry(url: str | None = None, artifacts: str | Path | None = None, *, read_only: bool = False) -> SqlAlchemyStore:
    """Open (creating or upgrading as needed) the registry at `url`, defaulting to a per-user SQLite file.

    `artifacts` is a folder or any fsspec URL for the blobs; without it (or TRANSFERKIT_ARTIFACTS), a
    SQLite registry keeps them in a folder beside its file, any other in the user data dir.
    A bare `postgresql://` URL uses the psycopg (v3) driver.

    `read_only=True` opens an existing registry without ever writing it: nothing is created or upgraded (a
    registry whose schema is not the current one is refused), a SQLite file is opened in read-only mode with
    `query_only` set, and every PostgreSQL transaction is read-only, so a write would fail in the database.
    """
    raw = url or os.environ.get(REGISTRY_ENV) or None
    shown = re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", raw) if raw else "the default registry"
    data_dir = Path(platformdirs.user_data_dir("transferkit"))
    try:
        parsed = URL.create("sqlite", database=str(data_dir / "registry.db")) if raw is None else make_url(raw)
        shown = parsed.render_as_string(hide_password=True)
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        db_file = _sqlite_file(parsed)
        if db_file is not None and read_only and not db_file.is_file():
            raise RegistryError(f"there is no registry at {shown}; pass the URL of an existing registry (nothing is created read-only)")
        if db_file is not None and not read_only:
            db_file.parent.mkdir(parents=True, exist_ok=True)
        if db_file is not None:
            parsed = parsed.set(database=str(db_file))
        beside_db = db_file.with_name(f"{db_file.stem}-artifacts") if db_file else None
        location = (
            artifacts or os.environ.get(ARTIFACTS_ENV) or os.environ.get(LEGACY_ARTIFACTS_ENV)
            or beside_db or data_dir / "artifacts"
        )
        checkpoints_beside_db = db_file.with_name(f"{db_file.stem}-checkpoints") if db_file else None
        checkpoint_root = os.environ.get(CHECKPOINT_ROOT_ENV) or checkpoints_beside_db
        if read_only:
            engine = _read_only_engine(parsed, db_file)
            require_head(engine, shown)
        else:
            engine = create_engine(parsed, pool_pre_ping=parsed.get_backend_name() != "sqlite")
            if engine.dialect.name == "sqlite":
                event.listen(engine, "connect", _configure_sqlite)
            upgrade_to_head(engine)
    except ImportError as error:
        raise RegistryError(
            f"cannot open the registry {shown} ({_first_line(error)}); install the Python driver for that database "
            "(PostgreSQL: pip install 'transferkit[postgres]') or use a SQLite URL (e.g. sqlite:////abs/path/registry.db)"
        ) from error
    except (SQLAlchemyError, OSError) as error:
        where = "a readable" if read_only else "a writable"
        raise RegistryError(
            f"cannot open the registry {shown} ({_first_line(error)}); pass a valid SQLAlchemy URL "
            f"(e.g. sqlite:////abs/path/registry.db) for {where} location via --registry or {REGISTRY_ENV}"
        ) from error
    checkpoints = Path(checkpoint_root).expanduser().resolve() if checkpoint_root else None
    return SqlAlchemyStore(engine, open_artifact_store(location), checkpoint_root=checkpoints)


def _read_only_engine(url: URL, db_file: Path | None) -> Engine:
    """An engine that cannot write: SQLite opened with mode=ro and query_only, PostgreSQL with read-only transactions."""
    if url.get_backend_name() == "sqlite":
        if db_file is not None:  # a file URI, so SQLite itself refuses to write the file
            url = url.set(database=db_file.as_uri(), query={**url.query, "mode": "ro", "uri": "true"})
        engine = create_engine(url)
        event.listen(engine, "connect", _configure_sqlite_reader)
        return engine
    if url.get_backend_name() == "postgresql":
        return create_engine(url, pool_pre_ping=True, connect_args={"options": "-c default_transaction_read_only=on"})
    raise RegistryError(f"a read-only registry must be SQLite or PostgreSQL, not {url.get_backend_name()}")


def _default_checkpoint_root(artifacts: ArtifactStore) -> Path:
    """Checkpoints are local files: beside a local artifact folder, else in the user data folder."""
    if isinstance(artifacts, LocalArtifactStore):
        return artifacts.root.with_name(f"{artifacts.root.name}-checkpoints")
    return Path(platformdirs.user_data_dir("transferkit")) / "checkpoints"


def _sqlite_file(url: URL) -> Path | None:
    """The database file of a file-based SQLite URL, made absolute; None for memory or URI-style databases."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:") or url.query.get("uri"):
        return None
    return Path(url.database).expanduser().resolve()


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    """Enforce foreign keys, and let readers and writers of several processes share the file."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        _enable_wal(cursor)
    finally:
        cursor.close()


def _configure_sqlite_reader(dbapi_connection: Any, _record: Any) -> None:
    """Refuse every write statement on this connection, and wait for writers of other processes like a writer would."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA query_only = ON")
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def _enable_wal(cursor: Any) -> None:
    """Switch the database file to WAL once; the mode is stored in the file, so later connections only read it.

    Switching needs an exclusive lock and SQLite does not always wait on the busy handler for it, so
    processes that open a new registry together retry here until the busy timeout runs out.
    """
    import sqlite3

    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if not _is_lock_error(error) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


E = TypeVar("E")


def _entity(cls: type[E], row: Any, **overrides: Any) -> E:
    """Build an entity from the row columns of the same names."""
    return cls(**{f.name: overrides[f.name] if f.name in overrides else getattr(row, f.name) for f in fields(cls)})  # type: ignore[arg-type]


def _run_entity(row: RunRow) -> RunRecord:
    typed = {key: getattr(row, key) for key in COST_COLUMNS if getattr(row, key) is not None}
    return _entity(RunRecord, row, cost={**typed, **row.cost_extra})


def _split_cost(cost: dict) -> dict[str, Any]:
    """Row values for a cost dict: known, non-null keys in typed columns, everything else in cost_extra."""
    values: dict[str, Any] = {key: None for key in COST_COLUMNS}
    extra = {}
    for key, value in cost.items():
        kind = COST_COLUMNS.get(key)
        if kind is None or value is None:
            extra[key] = value
            continue
        if kind is str:
            valid = isinstance(value, str)
        else:  # numpy scalars are fine, bools are not
            valid = not isinstance(value, bool) and isinstance(value, Integral if kind is int else Real)
        if not valid:
            raise InvalidInputError(f"cost field {key!r} must be of type {kind.__name__}, got {value!r}")
        values[key] = kind(value)
    return {**values, "cost_extra": extra}


def _close_run(row: RunRow, status: str, cost_values: dict[str, Any], error: str | None) -> None:
    row.status, row.ended_at, row.error = status, _now(), error
    for key, value in cost_values.items():
        setattr(row, key, value)


def _take_turns_naming(session: Session, base: str) -> None:
    """PostgreSQL: writers choosing a free name from one base wait for each other until commit.

    Without it, two transactions see the same free name and one fails on the unique constraint (the
    blob write inside the transaction makes that window wide). SQLite's write lock already serialises them.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:space, hashtext(:base))"), {"space": _NAME_LOCK_SPACE, "base": base})


def _free_name(session: Session, base: str) -> str:
    """`base`, or the first of `base-2`, `base-3`, ... that no expert has."""
    taken = set(
        session.scalars(
            select(ExpertRow.name).where((ExpertRow.name == base) | ExpertRow.name.startswith(f"{base}-", autoescape=True))
        )
    )
    candidate, suffix = base, 1
    while candidate in taken:
        suffix += 1
        candidate = f"{base}-{suffix}"
    return candidate


def _is_lock_error(error: Exception) -> bool:
    message = str(error).lower()
    return "locked" in message or "busy" in message


def _run_row(session: Session, run_id: str) -> RunRow:
    row = session.get(RunRow, run_id)
    if row is None:
        raise NotFoundError(
            f"no run has the id {run_id!r}; start a run (start_run) before finishing it or storing its expert"
        )
    return row


def _running_run(session: Session, run_id: str) -> RunRow:
    row = _run_row(session, run_id)
    if row.status != "running":
        raise InvalidInputError(f"run {run_id} is already {row.status}; start a new run instead of finishing it again")
    return row


def _new_run_row(run: RunRecord) -> RunRow:
    if run.status not in RUN_STATUSES:
        raise InvalidInputError(f"run {run.id} has status {run.status!r}; a run is one of {', '.join(RUN_STATUSES)}")
    _require_name(run.kind, "run kind")
    columns = {f.name: getattr(run, f.name) for f in fields(RunRecord) if f.name != "cost"}
    return RunRow(**columns, **_split_cost(run.cost))


def _is_new_task(session: Session, task: TaskRecord) -> bool:
    """True if the task is new; False if the same task is stored; refused if another task has its name."""
    row = session.get(TaskRow, task.name)
    if row is None:
        return True
    if (row.description, row.spec) != (task.description, task.spec):
        raise InvalidInputError(
            f"task {task.name!r} is already in this registry with a different description or definition; "
            "the records being restored need their own"
        )
    return False


def _is_new_run(session: Session, run: RunRecord) -> bool:
    """True if the run is new; False if the same run is stored; refused if a different run has its id."""
    row = session.get(RunRow, run.id)
    if row is None:
        return True
    if _run_entity(row) != run:
        raise InvalidInputError(f"run {run.id} is already in this registry with different content; it cannot be restored over")
    return False


def _is_new_expert(session: Session, expert: ExpertRecord) -> bool:
    """True if the expert is new; False if the same expert is stored; refused on a clash of id or name."""
    row = session.get(ExpertRow, expert.id)
    if row is not None:
        if _entity(ExpertRecord, row) != expert:
            raise InvalidInputError(
                f"expert id {expert.id} is already in this registry as {row.name} with different content; "
                "it cannot be restored over"
            )
        return False
    holder = session.scalar(select(ExpertRow.id).where(ExpertRow.name == expert.name))
    if holder is not None:
        raise InvalidInputError(
            f"an expert named {expert.name!r} already exists here with another id ({holder}); "
            "rename or remove it before restoring"
        )
    return True


def _check_lineage(lineage: Sequence[tuple[str, str, float | None]]) -> list[tuple[str, str, float | None]]:
    edges = [(parent, role, None if weight is None else float(weight)) for parent, role, weight in lineage]
    for _, role, _ in edges:
        _require_name(role, "lineage role")
    if len({(parent, role) for parent, role, _ in edges}) != len(edges):
        raise InvalidInputError("lineage lists the same (parent, role) pair twice; give each parent once per role")
    return edges


def _find_cycle(edges: Sequence[tuple[str, str]]) -> list[str]:
    """The nodes of one directed cycle among `edges` (parent -> child), in order, or [] if there is none."""
    children: dict[str, list[str]] = {}
    for parent, child in edges:
        children.setdefault(parent, []).append(child)
    state: dict[str, int] = {}  # 1 = on the current path, 2 = fully explored
    for root in children:
        if root in state:
            continue
        path, stack = [root], [iter(children.get(root, ()))]
        state[root] = 1
        while stack:
            child = next(stack[-1], None)
            if child is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(child) == 1:
                return path[path.index(child):]
            elif child not in state:
                state[child] = 1
                path.append(child)
                stack.append(iter(children.get(child, ())))
    return []


def dev_score(metrics: dict) -> float | None:
    """The primary metric on dev (`metrics["dev"][metrics["primary"]]`) if it is a number: what "best" ranks by."""
    value = (metrics.get("dev") or {}).get(metrics.get("primary"))
    return float(value) if isinstance(value, Real) and not isinstance(value, bool) else None


def _require_name(value: str, what: str) -> None:
    if not isinstance(value, str) or not value.strip() or value != value.strip():
        raise InvalidInputError(f"{what} {value!r} must be a non-empty string without surrounding spaces")


def _name_taken(name: str) -> InvalidInputError:
    return InvalidInputError(
        f"an expert named {name!r} already exists; choose another name or let transferkit pick one"
    )


def _new_id() -> str:
    return uuid.uuid4().hex[:12]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _first_line(error: BaseException) -> str:
    """The driver's own message without SQLAlchemy's statement dump and help links."""
    cause = getattr(error, "orig", None) or error
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0]
